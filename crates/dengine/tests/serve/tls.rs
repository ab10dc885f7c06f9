//! TLS on both ports (`--cert-file` ... `--peer-client-cert-auth`, etcd's
//! flags): 3 members that talk to each other over mutual TLS, etcdctl and
//! the `dengine` client with and without the right certificates, a peer
//! with a certificate from another CA refused (logged and counted), and a
//! renewed certificate served without a restart.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

use crate::etcdctl::etcdctl;
use crate::harness::{Cluster, binary};
use crate::observe::{get, labelled, samples};

/// A CA: its certificate (PEM) and what signs with it.
pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

pub fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).expect("self-signed").pem();
    Ca {
        pem,
        issuer: Issuer::new(params, key),
    }
}

/// A certificate for 127.0.0.1 and localhost, good for both ends of a
/// connection (as etcd's peers use theirs); (certificate, key) as PEM.
pub fn leaf(ca: &Ca, common_name: &str) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &ca.issuer).expect("signed");
    (cert.pem(), key.serialize_pem())
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

pub fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Waits until member `i` reports a leader on its health endpoint.
pub fn wait_healthy(c: &Cluster, i: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((200, _)) = get(c, i, "/health") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "member {i} has no leader:\n{}",
            c.log(i)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn counter(c: &Cluster, i: usize, metric: &str, labels: &[&str]) -> f64 {
    let (_, body) = get(c, i, "/metrics").expect("metrics");
    labelled(&samples(&body), metric, labels)
        + samples(&body)
            .iter()
            .find(|(n, _)| n == metric)
            .map_or(0.0, |(_, v)| *v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_speak_mutual_tls_and_refuse_strangers_and_reload_certificates() {
    let certs = tempfile::tempdir().expect("tempdir");
    let dir = certs.path();
    let ca1 = ca("dengine test CA");
    let ca2 = ca("another CA");
    let ca_file = write(dir, "ca.pem", &ca1.pem);
    let ca2_file = write(dir, "ca2.pem", &ca2.pem);
    let (peer_cert, peer_key) = leaf(&ca1, "member");
    let (serve_cert, serve_key) = leaf(&ca1, "member");
    let (client_cert, client_key) = leaf(&ca1, "root");
    let (rogue_cert, rogue_key) = leaf(&ca2, "rogue");
    let peer_cert = write(dir, "peer.pem", &peer_cert);
    let peer_key = write(dir, "peer-key.pem", &peer_key);
    let serve_cert_file = write(dir, "server.pem", &serve_cert);
    let serve_key_file = write(dir, "server-key.pem", &serve_key);
    let client_cert = write(dir, "client.pem", &client_cert);
    let client_key = write(dir, "client-key.pem", &client_key);
    let rogue_cert = write(dir, "rogue.pem", &rogue_cert);
    let rogue_key = write(dir, "rogue-key.pem", &rogue_key);

    let flags: Vec<String> = [
        "--cert-file",
        &s(&serve_cert_file),
        "--key-file",
        &s(&serve_key_file),
        "--trusted-ca-file",
        &s(&ca_file),
        "--client-cert-auth",
        "--peer-cert-file",
        &s(&peer_cert),
        "--peer-key-file",
        &s(&peer_key),
        "--peer-trusted-ca-file",
        &s(&ca_file),
        "--peer-client-cert-auth",
    ]
    .iter()
    .map(|f| f.to_string())
    .collect();
    let mut c = Cluster::new(3).with_tls(&flags);
    c.start_all();
    for i in 0..3 {
        wait_healthy(&c, i);
    }
    let tls = |ca: &Path, cert: &Path, key: &Path| -> Vec<String> {
        vec![
            "--cacert".into(),
            s(ca),
            "--cert".into(),
            s(cert),
            "--key".into(),
            s(key),
        ]
    };
    let good = tls(&ca_file, &client_cert, &client_key);
    let with = |args: &[String], more: &[&str]| -> Vec<String> {
        args.iter()
            .cloned()
            .chain(more.iter().map(|m| m.to_string()))
            .collect()
    };
    let run = |endpoint: &str, args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        etcdctl(endpoint, &args, None)
    };

    // etcdctl with the CA and a client certificate: writes on one member
    // reach the others over the peers' mutual TLS.
    let (out, err, ok) = run(
        &c.members[0].endpoint(),
        &with(&good, &["put", "k", "over tls"]),
    );
    assert!(ok, "put over TLS: {err}");
    assert_eq!(out.trim(), "OK");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (out, _, _) = run(
            &c.members[2].endpoint(),
            &with(&good, &["get", "k", "--consistency=s"]),
        );
        if out == "k\nover tls\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the write did not reach member 2: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // No client certificate, a certificate of another CA, or no TLS at
    // all: refused.
    let short = ["--command-timeout", "2s", "--dial-timeout", "2s"];
    let (_, _, ok) = run(
        &c.members[0].endpoint(),
        &with(
            &["--cacert".to_string(), s(&ca_file)],
            &[&short[..], &["get", "k"]].concat(),
        ),
    );
    assert!(!ok, "a client without a certificate was served");
    let (_, _, ok) = run(
        &c.members[0].endpoint(),
        &with(
            &tls(&ca_file, &rogue_cert, &rogue_key),
            &[&short[..], &["get", "k"]].concat(),
        ),
    );
    assert!(!ok, "a client with another CA's certificate was served");
    let plain = c.members[0].endpoint().replace("https://", "http://");
    let (_, _, ok) = run(&plain, &with(&[], &[&short[..], &["get", "k"]].concat()));
    assert!(!ok, "a client without TLS was served");
    assert!(
        counter(
            &c,
            0,
            "dengine_tls_handshakes_refused_total",
            &["port=\"client\""]
        ) >= 2.0
    );

    // A stranger on the peer port, with a certificate of another CA.
    let (_, _, ok) = run(
        &c.members[1].peer_url(),
        &with(
            &tls(&ca_file, &rogue_cert, &rogue_key),
            &[&short[..], &["get", "k"]].concat(),
        ),
    );
    assert!(!ok);
    assert!(
        counter(
            &c,
            1,
            "dengine_tls_handshakes_refused_total",
            &["port=\"peer\""]
        ) >= 1.0
    );
    assert!(c.log(1).contains("TLS handshake refused"), "{}", c.log(1));

    // dengine's own client.
    let out = std::process::Command::new(binary())
        .args(["--endpoints", &c.members[1].endpoint()])
        .args(&good)
        .args(["get", "k"])
        .output()
        .expect("dengine get");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("over tls"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = std::process::Command::new(binary())
        .args(["--endpoints", &c.members[1].endpoint(), "get", "k"])
        .output()
        .expect("dengine get");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--cacert"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A renewed certificate (from another CA, to tell them apart) is
    // served to new connections without a restart; the peers, on their
    // own files, carry on.
    let (new_cert, new_key) = leaf(&ca2, "member");
    std::fs::write(&serve_key_file, new_key).expect("write key");
    std::fs::write(&serve_cert_file, new_cert).expect("write cert");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (out, _, ok) = run(
            &c.members[0].endpoint(),
            &with(
                &tls(&ca2_file, &client_cert, &client_key),
                &["get", "k", "--print-value-only"],
            ),
        );
        if ok {
            assert_eq!(out.trim(), "over tls");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was not served:\n{}",
            c.log(0)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let (_, _, ok) = run(
        &c.members[0].endpoint(),
        &with(&good, &[&short[..], &["get", "k"]].concat()),
    );
    assert!(!ok, "the old certificate is still served");
    assert!(counter(&c, 0, "dengine_tls_reloads_total", &[]) >= 1.0);
    let (_, err, ok) = run(
        &c.members[0].endpoint(),
        &with(
            &tls(&ca2_file, &client_cert, &client_key),
            &["put", "k2", "after the renewal"],
        ),
    );
    assert!(ok, "a write after the renewal: {err}");
}

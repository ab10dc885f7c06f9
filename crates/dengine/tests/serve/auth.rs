//! etcd's auth against real members, driven by etcdctl (a client nobody
//! here wrote): users, roles and a permission on a prefix; `auth enable`
//! (etcdctl makes the root role itself on etcd's "root user does not have
//! root role"); requests without a user, with a wrong password, outside
//! the user's prefix, refused with etcd's errors; a token from one member
//! used on the others; the auth store kept across a SIGKILL; and, over
//! TLS with client certificates, the certificate's common name as the
//! user.

use std::time::{Duration, Instant};

use dengine::grpc::proto::etcdserverpb as pb;
use pb::auth_client::AuthClient;
use pb::kv_client::KvClient;

use crate::etcdctl::etcdctl;
use crate::harness::Cluster;
use crate::tls::{ca, leaf, s, wait_healthy, write};

fn ok(endpoint: &str, args: &[&str]) -> String {
    let (out, err, success) = etcdctl(endpoint, args, None);
    assert!(success, "etcdctl {args:?} failed: {err}");
    out
}

fn refused(endpoint: &str, args: &[&str]) -> String {
    let (out, err, success) = etcdctl(endpoint, args, None);
    assert!(!success, "etcdctl {args:?} succeeded: {out}");
    err
}

/// `who`'s flags, then `args`.
fn with<'a>(who: &[&'a str], args: &[&'a str]) -> Vec<&'a str> {
    [who, args].concat()
}

async fn channel(endpoint: &str) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(endpoint.to_string())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

/// Puts with `token` through member `endpoint` (raw gRPC: the token
/// metadata as etcd's clients send it).
async fn put_with_token(endpoint: &str, token: &str, key: &str) -> Result<(), tonic::Status> {
    let mut kv = KvClient::new(channel(endpoint).await);
    let mut req = tonic::Request::new(pb::PutRequest {
        key: key.as_bytes().to_vec(),
        value: b"by token".to_vec(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("token", token.parse().expect("token metadata"));
    kv.put(req).await.map(|_| ())
}

/// alice's token from member `endpoint` (raw gRPC).
async fn alice_token(endpoint: &str) -> String {
    AuthClient::new(channel(endpoint).await)
        .authenticate(pb::AuthenticateRequest {
            name: "alice".into(),
            password: "alicepw".into(),
        })
        .await
        .expect("authenticate")
        .into_inner()
        .token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_roles_and_permissions_work_with_etcdctl() {
    let mut c = Cluster::new(3);
    c.start_and_wait().await;
    let e: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    let (e0, e1, e2) = (e[0].as_str(), e[1].as_str(), e[2].as_str());

    assert_eq!(
        ok(e0, &["user", "add", "root:rootpw"]),
        "User root created\n"
    );
    assert_eq!(ok(e0, &["role", "add", "app"]), "Role app created\n");
    assert_eq!(
        ok(
            e0,
            &[
                "role",
                "grant-permission",
                "app",
                "readwrite",
                "app/",
                "--prefix=true"
            ]
        ),
        "Role app updated\n"
    );
    assert_eq!(
        ok(e1, &["user", "add", "alice:alicepw"]),
        "User alice created\n"
    );
    assert_eq!(
        ok(e1, &["user", "grant-role", "alice", "app"]),
        "Role app is granted to user alice\n"
    );
    let err = refused(e0, &["user", "add", "alice:again"]);
    assert!(
        err.contains("etcdserver: user name already exists"),
        "{err}"
    );
    ok(e0, &["put", "secret", "s"]);
    assert_eq!(ok(e2, &["auth", "enable"]), "Authentication Enabled\n");

    // Without a user, with a wrong password, outside the prefix: etcd's
    // errors.
    let err = refused(e0, &["get", "secret"]);
    assert!(err.contains("etcdserver: user name is empty"), "{err}");
    let err = refused(e0, &["--user", "alice:wrong", "get", "app/x"]);
    assert!(
        err.contains("etcdserver: authentication failed, invalid user ID or password"),
        "{err}"
    );
    let alice = ["--user", "alice:alicepw"];
    let as_alice = |args: &[&'static str]| with(&alice, args);
    assert_eq!(ok(e0, &as_alice(&["put", "app/x", "1"])), "OK\n");
    assert_eq!(ok(e1, &as_alice(&["get", "app/x"])), "app/x\n1\n");
    assert_eq!(
        ok(e2, &as_alice(&["get", "app/", "--prefix", "--keys-only"])),
        "app/x\n\n"
    );
    for args in [
        &["put", "secret", "mine"][..],
        &["get", "secret"],
        &["del", "secret"],
        &["get", "", "--prefix"],
        &["user", "list"],
        &["auth", "disable"],
    ] {
        let err = refused(e1, &as_alice(args));
        assert!(
            err.contains("etcdserver: permission denied"),
            "{args:?}: {err}"
        );
    }
    let txn = "mod(\"secret\") > \"0\"\n\nput app/y 2\n\n\n";
    let (_, err, success) = etcdctl(e0, &as_alice(&["txn"]), Some(txn));
    assert!(!success, "a txn comparing a key alice may not read ran");
    assert!(err.contains("etcdserver: permission denied"), "{err}");

    let root = ["--user", "root:rootpw"];
    let as_root = |args: &[&'static str]| with(&root, args);
    assert_eq!(ok(e2, &as_root(&["user", "list"])), "alice\nroot\n");
    assert_eq!(ok(e2, &as_root(&["role", "list"])), "app\nroot\n");
    assert_eq!(
        ok(e0, &as_root(&["user", "get", "alice"])),
        "User: alice\nRoles: app\n"
    );
    let role = ok(e0, &as_root(&["role", "get", "app"]));
    assert!(role.contains("[app/, app0) (prefix app/)"), "{role}");
    assert_eq!(ok(e0, &as_root(&["get", "secret"])), "secret\ns\n");
    let err = refused(e0, &as_root(&["user", "delete", "root"]));
    assert!(err.contains("etcdserver: invalid auth management"), "{err}");

    // A lease's keys are shown only to who may read every one of them
    // (etcd since 3.4.26); its TTL, to anyone.
    let granted = ok(e0, &as_root(&["lease", "grant", "600"]));
    let lease = granted
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    let lease = lease.as_str();
    ok(
        e0,
        &with(&root, &["put", "secret/leased", "x", "--lease", lease]),
    );
    let err = refused(e1, &with(&alice, &["lease", "timetolive", lease, "--keys"]));
    assert!(err.contains("etcdserver: permission denied"), "{err}");
    let ttl = ok(e1, &with(&alice, &["lease", "timetolive", lease]));
    assert!(ttl.contains("granted with TTL(600s)"), "{ttl}");
    let keys = ok(e1, &with(&root, &["lease", "timetolive", lease, "--keys"]));
    assert!(keys.contains("secret/leased"), "{keys}");

    // A token from member 0 works on members 1 and 2 (clients send it to
    // any member) at once, before they may have applied its entry (etcd
    // waits for it; this failed now and then before dengine did); a
    // made-up one is refused.
    let mut token = String::new();
    for round in 0..5 {
        token = alice_token(e0).await;
        let member = [e1, e2][round % 2];
        put_with_token(member, &token, "app/from-another")
            .await
            .unwrap_or_else(|e| panic!("put with a fresh token, round {round}: {e:?}"));
    }
    let denied = put_with_token(e2, &token, "elsewhere")
        .await
        .expect_err("outside");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert_eq!(denied.message(), "etcdserver: permission denied");
    let bad = put_with_token(e2, "made.up", "app/z")
        .await
        .expect_err("bad token");
    assert_eq!(bad.code(), tonic::Code::Unauthenticated);
    assert_eq!(bad.message(), "etcdserver: invalid auth token");

    // dengine's own command line, with --user: the token is taken at
    // connect and sent with every request.
    let dengine = |args: &[&str]| {
        let out = std::process::Command::new(crate::harness::binary())
            .args(["--endpoints", &e.join(",")])
            .args(args)
            .output()
            .expect("dengine");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.status.success(),
        )
    };
    let (_, err, success) = dengine(&["--user", "alice:alicepw", "put", "app/cli", "v"]);
    assert!(success, "dengine put as alice: {err}");
    let (out, err, success) =
        dengine(&["--user", "alice", "--password", "alicepw", "get", "app/cli"]);
    assert!(success, "dengine get as alice: {err}");
    assert!(out.contains('v'), "{out}");
    let (_, err, success) = dengine(&["--user", "alice:alicepw", "get", "secret"]);
    assert!(
        !success && err.contains("etcdserver: permission denied"),
        "{err}"
    );
    let (_, err, success) = dengine(&["--user", "alice:nope", "get", "app/cli"]);
    assert!(
        !success && err.contains("etcdserver: authentication failed"),
        "{err}"
    );
    let (_, err, success) = dengine(&["get", "app/cli"]);
    assert!(
        !success && err.contains("etcdserver: user name is empty"),
        "{err}"
    );

    // The auth store survives a SIGKILL: member 1 restarts with its
    // users and rules.
    c.kill(1);
    c.start(1);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (out, _, success) = etcdctl(e1, &as_alice(&["get", "app/x", "--consistency=s"]), None);
        if success {
            assert_eq!(out, "app/x\n1\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "member 1 did not come back:\n{}",
            c.log(1)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let err = refused(e1, &as_alice(&["get", "secret", "--consistency=s"]));
    assert!(err.contains("etcdserver: permission denied"), "{err}");

    assert_eq!(
        ok(e1, &as_root(&["auth", "disable"])),
        "Authentication Disabled\n"
    );
    assert_eq!(ok(e2, &["get", "secret"]), "secret\ns\n");
}

/// With `--client-cert-auth`, a request without a token is its
/// certificate's common name's (etcd's behaviour).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificates_common_name_is_its_user() {
    let certs = tempfile::tempdir().expect("tempdir");
    let dir = certs.path();
    let ca1 = ca("dengine auth test CA");
    let ca_file = write(dir, "ca.pem", &ca1.pem);
    let (server_cert, server_key) = leaf(&ca1, "member");
    let server_cert = write(dir, "server.pem", &server_cert);
    let server_key = write(dir, "server-key.pem", &server_key);
    let client = |name: &str| -> Vec<String> {
        let (cert, key) = leaf(&ca1, name);
        vec![
            "--cacert".into(),
            s(&ca_file),
            "--cert".into(),
            s(&write(dir, &format!("{name}.pem"), &cert)),
            "--key".into(),
            s(&write(dir, &format!("{name}-key.pem"), &key)),
        ]
    };
    let root = client("root");
    let alice = client("alice");
    let stranger = client("mallory");
    let flags: Vec<String> = [
        "--cert-file",
        &s(&server_cert),
        "--key-file",
        &s(&server_key),
        "--trusted-ca-file",
        &s(&ca_file),
        "--client-cert-auth",
        "--peer-cert-file",
        &s(&server_cert),
        "--peer-key-file",
        &s(&server_key),
        "--peer-trusted-ca-file",
        &s(&ca_file),
    ]
    .iter()
    .map(|f| f.to_string())
    .collect();
    let mut c = Cluster::new(1).with_tls(&flags);
    c.start_all();
    wait_healthy(&c, 0);
    let e0 = c.members[0].endpoint();
    let run = |who: &[String], args: &[&str]| {
        let all: Vec<&str> = who
            .iter()
            .map(String::as_str)
            .chain(args.iter().copied())
            .collect();
        etcdctl(&e0, &all, None)
    };
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "add", "alice:alicepw"],
        &["role", "add", "app"],
        &[
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "app/",
            "--prefix=true",
        ],
        &["user", "grant-role", "alice", "app"],
        &["auth", "enable"],
    ] {
        let (_, err, success) = run(&root, args);
        assert!(success, "{args:?}: {err}");
    }
    let (out, err, success) = run(&alice, &["put", "app/cn", "by name"]);
    assert!(success, "alice by certificate: {err}");
    assert_eq!(out, "OK\n");
    let (_, err, success) = run(&alice, &["put", "other", "x"]);
    assert!(
        !success && err.contains("etcdserver: permission denied"),
        "{err}"
    );
    let (_, err, success) = run(&stranger, &["get", "app/cn"]);
    assert!(
        !success && err.contains("etcdserver: permission denied"),
        "{err}"
    );
    let (out, err, success) = run(&root, &["get", "app/cn"]);
    assert!(success, "root by certificate: {err}");
    assert_eq!(out, "app/cn\nby name\n");
    // A token still wins over the certificate.
    let (_, err, success) = run(&root, &["--user", "alice:alicepw", "get", "other"]);
    assert!(
        !success && err.contains("etcdserver: permission denied"),
        "{err}"
    );
}

/// `--auth-token jwt,...`: signed tokens any member checks without the
/// log; a token made before a change of the auth store is old for writes
/// (etcd's "revision of auth store is old": clients authenticate again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_are_checked_by_every_member() {
    let keys = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate().expect("key");
    let private = write(keys.path(), "jwt.key", &key.serialize_pem());
    let public = write(keys.path(), "jwt.pub", &key.public_key_pem());
    let spec = format!(
        "jwt,pub-key={},priv-key={},sign-method=ES256,ttl=5m",
        s(&public),
        s(&private)
    );
    let mut c = Cluster::new(3);
    c.extra.extend(["--auth-token".to_string(), spec]);
    c.start_and_wait().await;
    let e: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    let (e0, e2) = (e[0].as_str(), e[2].as_str());
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "add", "alice:alicepw"],
        &["role", "add", "app"],
        &[
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "app/",
            "--prefix=true",
        ],
        &["user", "grant-role", "alice", "app"],
        &["auth", "enable"],
    ] {
        ok(e0, args);
    }
    assert_eq!(
        ok(e2, &["--user", "alice:alicepw", "put", "app/jwt", "1"]),
        "OK\n"
    );

    let token = alice_token(e0).await;
    assert_eq!(token.matches('.').count(), 2, "not a JWT: {token}");
    put_with_token(e2, &token, "app/by-jwt")
        .await
        .expect("member 2 checks member 0's token");
    let denied = put_with_token(e2, &token, "secret")
        .await
        .expect_err("outside");
    assert_eq!(denied.message(), "etcdserver: permission denied");
    let mut forged = token.clone();
    forged.pop();
    let bad = put_with_token(e2, &forged, "app/x")
        .await
        .expect_err("forged");
    assert_eq!(bad.message(), "etcdserver: invalid auth token");

    // The auth store changes: the token is old for writes.
    ok(e0, &["--user", "root:rootpw", "role", "add", "other"]);
    let old = put_with_token(e0, &token, "app/late")
        .await
        .expect_err("old token");
    assert_eq!(old.code(), tonic::Code::InvalidArgument);
    assert_eq!(old.message(), "etcdserver: revision of auth store is old");
    // etcdctl authenticates afresh for each run: it goes on working.
    assert_eq!(
        ok(e0, &["--user", "alice:alicepw", "get", "app/by-jwt"]),
        "app/by-jwt\nby token\n"
    );
}

/// dengine's own command line manages users, roles and auth, and prints
/// what etcdctl prints for the same questions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dengine_command_line_manages_users_and_roles_as_etcdctl() {
    let mut c = Cluster::new(1);
    c.start_and_wait().await;
    let e0 = c.members[0].endpoint();
    let dengine = |args: &[&str]| {
        let out = std::process::Command::new(crate::harness::binary())
            .args(["--endpoints", &e0])
            .args(args)
            .output()
            .expect("dengine");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (stdout, stderr, out.status.success())
    };
    let said = |args: &[&str]| {
        let (out, err, success) = dengine(args);
        assert!(success, "dengine {args:?}: {err}");
        out
    };
    assert_eq!(said(&["user", "add", "root:rootpw"]), "User root created\n");
    assert_eq!(said(&["role", "add", "app"]), "Role app created\n");
    assert_eq!(
        said(&[
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "app/",
            "--prefix"
        ]),
        "Role app updated\n"
    );
    assert_eq!(
        said(&["role", "grant-permission", "app", "read", "shared"]),
        "Role app updated\n"
    );
    assert_eq!(
        said(&["user", "add", "bob", "--new-user-password", "bobpw"]),
        "User bob created\n"
    );
    said(&["user", "grant-role", "bob", "app"]);
    let (_, err, success) = dengine(&["user", "add", "bob:again"]);
    assert!(
        !success && err.contains("etcdserver: user name already exists"),
        "{err}"
    );

    // The same answers as etcdctl's.
    for args in [
        &["user", "list"][..],
        &["role", "list"],
        &["user", "get", "bob"],
        &["role", "get", "app"],
    ] {
        let theirs = ok(&e0, args);
        assert_eq!(said(args), theirs, "{args:?}");
    }
    // etcdctl 3.4 has no `auth status`; this is 3.5's answer.
    let status = said(&["auth", "status"]);
    assert!(
        status.starts_with("Authentication Status: false\nAuthRevision: "),
        "{status}"
    );
    assert!(said(&["role", "get", "app"]).contains("\t[app/, app0) (prefix app/)\n"));

    assert_eq!(said(&["auth", "enable"]), "Authentication Enabled\n");
    let bob = ["--user", "bob:bobpw"];
    said(&with(&bob, &["put", "app/x", "1"]));
    let (_, err, success) = dengine(&with(&bob, &["put", "shared", "1"]));
    assert!(
        !success && err.contains("etcdserver: permission denied"),
        "{err}"
    );
    let (_, err, success) = dengine(&with(&bob, &["user", "list"]));
    assert!(
        !success && err.contains("etcdserver: permission denied"),
        "{err}"
    );
    let root = ["--user", "root:rootpw"];
    assert_eq!(
        said(&with(&root, &["user", "passwd", "bob:newpw"])),
        "Password updated\n"
    );
    let (_, err, success) = dengine(&with(&bob, &["get", "app/x"]));
    assert!(!success && err.contains("authentication failed"), "{err}");
    said(&with(&["--user", "bob:newpw"], &["get", "app/x"]));
    assert_eq!(
        said(&with(
            &root,
            &["role", "revoke-permission", "app", "shared"]
        )),
        "Permission of key shared is revoked from role app\n"
    );
    assert_eq!(
        said(&with(&root, &["user", "revoke-role", "bob", "app"])),
        "Role app is revoked from user bob\n"
    );
    let (_, err, success) = dengine(&with(&["--user", "bob:newpw"], &["get", "app/x"]));
    assert!(
        !success && err.contains("etcdserver: permission denied"),
        "{err}"
    );
    assert_eq!(
        said(&with(&root, &["auth", "disable"])),
        "Authentication Disabled\n"
    );
    assert_eq!(said(&["user", "delete", "bob"]), "User bob deleted\n");
    assert_eq!(said(&["role", "delete", "app"]), "Role app deleted\n");
    // `auth enable` made the root role, as etcdctl's does.
    assert_eq!(said(&["role", "list"]), "root\n");
}

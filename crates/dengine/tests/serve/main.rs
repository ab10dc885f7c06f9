//! `dengine serve` as operators run it: real processes on 127.0.0.1,
//! clients nobody here wrote (the `etcd-client` crate, `etcdctl`), kills
//! with SIGKILL, and bad input on both ports.

#![cfg(all(unix, feature = "server", feature = "sled"))]

mod allocator;
mod auth;
mod backup;
mod bad_input;
mod check_perf;
mod cli;
mod client;
mod cluster_cmd;
mod concurrency;
mod corrupt_check;
mod differential;
mod differential_auth;
mod differential_cluster;
mod differential_lock;
mod differential_watch;
#[cfg(feature = "failpoints")]
mod disk_faults;
mod disk_full;
mod etcdctl;
mod harness;
mod kubernetes;
mod lease;
mod membership;
mod mvcc_watch;
mod observe;
mod peer_link;
mod quota;
mod readme;
mod repair;
mod tls;
mod tracing;
mod watch_history;
mod workers;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{GetOptions, PutOptions};
use harness::{Cluster, client, index_of, wait_leader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_take_writes_and_linearizable_reads_through_each() {
    let mut c = Cluster::new(3);
    c.start_all();
    let leader = wait_leader(&c, 0, Duration::from_secs(10)).await;
    for i in 0..3 {
        assert_eq!(wait_leader(&c, i, Duration::from_secs(10)).await, leader);
    }
    for i in 0..3 {
        let mut cl = client(&c, i).await;
        let key = format!("k{i}");
        let put = cl
            .put(
                key.clone(),
                format!("v{i}"),
                Some(PutOptions::new().with_prev_key()),
            )
            .await
            .expect("put");
        assert!(put.prev_key().is_none());
        let h = put.header().expect("header");
        assert_ne!(h.cluster_id(), 0);
        assert!(h.revision() >= 2, "revision {}", h.revision());
        // Every member sees every write at once (linearizable reads).
        for j in 0..3 {
            let mut other = client(&c, j).await;
            let got = other.get(key.clone(), None).await.expect("get");
            assert_eq!(got.kvs().len(), 1, "member {j} reads {key}");
            assert_eq!(got.kvs()[0].value(), format!("v{i}").as_bytes());
            assert_eq!(
                got.header().expect("header").member_id(),
                member_id(&c, j).await
            );
        }
    }
    // A serializable read is served by the member itself.
    let mut cl = client(&c, 2).await;
    let got = cl
        .get(
            "k",
            Some(GetOptions::new().with_prefix().with_serializable()),
        )
        .await
        .expect("serializable get");
    assert!(got.kvs().len() <= 3);
    let all = cl
        .get("k", Some(GetOptions::new().with_prefix()))
        .await
        .expect("prefix get");
    assert_eq!(all.count(), 3);
    // Revisions: one per write, 1 before the first.
    assert_eq!(all.header().expect("header").revision(), 4);
}

async fn member_id(c: &Cluster, i: usize) -> u64 {
    let mut cl = client(c, i).await;
    cl.status()
        .await
        .expect("status")
        .header()
        .expect("header")
        .member_id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_under_load_loses_no_acknowledged_write_and_rejoins() {
    let mut c = Cluster::new(3);
    c.start_all();
    let leader_id = wait_leader(&c, 0, Duration::from_secs(10)).await;
    let leader = index_of(&c, leader_id).await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();

    // Writers through every member; each records what was acknowledged.
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..6 {
        let addr = c.members[w % 3].addr();
        let (acked, stop) = (acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut cl = match etcd_client::Client::connect([addr], None).await {
                Ok(cl) => cl,
                Err(_) => return,
            };
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (k, v) = (format!("w{w}-{n}"), format!("{n}"));
                if cl.put(k.clone(), v.clone(), None).await.is_ok() {
                    acked.lock().expect("lock").insert(k, v);
                }
                n += 1;
            }
        }));
    }
    // Writes under way (on a loaded machine the writers' first puts can
    // take a while), then a little more load before the kill.
    let waiting = Instant::now();
    while acked.lock().expect("lock").is_empty() && waiting.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = acked.lock().expect("lock").len();
    assert!(before > 0, "writes were acknowledged before the kill");
    c.kill(leader);
    let killed_at = Instant::now();

    // A new leader serves a write soon after (election timeout 300 ms).
    let mut cl = client(&c, followers[0]).await;
    let served_in = loop {
        if cl.put("after-kill", "1", None).await.is_ok() {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "no leader took over"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!("a new leader served a write {served_in:?} after the kill");
    // Timeouts of 300 ms election (randomized up to 2x) plus a pre-vote
    // round: generous, so a loaded machine does not fail it.
    assert!(served_in < Duration::from_secs(3), "took {served_in:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }

    // The killed member restarts from its data directory and catches up.
    c.start(leader);
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() > before, "writes went on after the kill");
    for i in 0..3 {
        wait_leader(&c, i, Duration::from_secs(10)).await;
        let mut cl = client(&c, i).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let got = loop {
            let got = cl
                .get("w", Some(GetOptions::new().with_prefix()))
                .await
                .expect("get");
            let have: BTreeMap<String, String> = got
                .kvs()
                .iter()
                .map(|kv| {
                    (
                        kv.key_str().expect("utf8").to_string(),
                        kv.value_str().expect("utf8").to_string(),
                    )
                })
                .collect();
            if acked.iter().all(|(k, v)| have.get(k) == Some(v)) || Instant::now() > deadline {
                break have;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let lost: Vec<_> = acked.keys().filter(|k| !got.contains_key(*k)).collect();
        assert!(
            lost.is_empty(),
            "member {i} lost acknowledged writes: {lost:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_the_same_command_line_restarts() {
    let mut c = Cluster::new(1);
    c.start(0);
    wait_leader(&c, 0, Duration::from_secs(10)).await;
    let mut cl = client(&c, 0).await;
    cl.put("a", "1", None).await.expect("put");
    drop(cl);
    let status = c.terminate(0, Duration::from_secs(5));
    assert!(status.success(), "exit status {status}");
    let record = std::fs::read_to_string(c.dir(0).join("cluster.json")).expect("record");
    assert!(record.contains("\"m0\""), "{record}");

    // Same command line, and a changed --initial-cluster-token, which a
    // restart ignores (the data directory says which cluster it is).
    c.token = "another-token".into();
    c.start(0);
    wait_leader(&c, 0, Duration::from_secs(10)).await;
    let mut cl = client(&c, 0).await;
    let got = cl.get("a", None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), b"1");
    assert!(c.log(0).contains("restarting from the data directory"));
}

#[test]
fn bad_flags_exit_2_with_one_line_and_create_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let port = harness::free_port();
    let bad_file = dir.path().join("bad.toml");
    std::fs::write(&bad_file, "name = \"x\"\nbogus = 1\n").expect("write");
    let bad_node = dir.path().join("bad-node.toml");
    std::fs::write(&bad_node, "[node]\ntick_ms = \"fast\"\n").expect("write");
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--config-file".into(), path(&bad_file)], "bogus"),
        (vec!["--config-file".into(), path(&bad_node)], "tick_ms"),
        (
            vec!["--config-file".into(), path(&dir.path().join("none.toml"))],
            "no such file",
        ),
        (
            vec!["--max-peer-message-bytes".into(), "1000".into()],
            "must be at least",
        ),
        (
            vec![
                "--experimental-watch-progress-notify-interval".into(),
                "soon".into(),
            ],
            "expected a duration",
        ),
        (
            vec!["--listen-client-urls".into(), "127.0.0.1:2379".into()],
            "expected http://host:port",
        ),
        (
            vec![
                "--initial-cluster".into(),
                "other=http://127.0.0.1:1".into(),
            ],
            "no member named",
        ),
        (
            vec!["--election-timeout".into(), "100".into()],
            "at least 5 times",
        ),
        (vec!["--storage".into(), "floppy".into()], "floppy"),
        (
            vec!["--initial-cluster-state".into(), "maybe".into()],
            "maybe",
        ),
        (
            vec![
                "--listen-peer-urls".into(),
                format!("https://127.0.0.1:{port}"),
            ],
            "https",
        ),
        (
            vec!["--cert-file".into(), "/nowhere/cert.pem".into()],
            "--cert-file needs --key-file",
        ),
        (vec!["--peer-client-cert-auth".into()], "over TLS"),
        (
            vec![
                "--listen-peer-urls".into(),
                format!("https://127.0.0.1:{port}"),
                "--peer-cert-file".into(),
                "/nowhere/peer.pem".into(),
                "--peer-key-file".into(),
                "/nowhere/peer-key.pem".into(),
            ],
            "/nowhere/peer.pem",
        ),
    ];
    for (args, want) in cases {
        let out = std::process::Command::new(harness::binary())
            .arg("serve")
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", harness::free_port()),
            ])
            .args(&args)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!data.exists(), "{args:?} created the data directory");
    }
}

#[test]
fn a_config_file_sets_what_flags_do_not_and_flags_win() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (client, peer) = (harness::free_port(), harness::free_port());
    let file = dir.path().join("dengine.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"from-file\"\ndata_dir = \"{}\"\nlisten_client_urls = [\"http://127.0.0.1:1\"]\n\
             listen_peer_urls = [\"http://127.0.0.1:{peer}\"]\n[node]\nrequest_timeout_ms = 2000\n",
            data.display()
        ),
    )
    .expect("write");
    let mut child = std::process::Command::new(harness::binary())
        .arg("serve")
        .arg("--config-file")
        .arg(&file)
        // The flag wins over the file's client URL.
        .args([
            "--listen-client-urls",
            &format!("http://127.0.0.1:{client}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start");
    let record = data.join("cluster.json");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        if let Ok(t) = std::fs::read_to_string(&record) {
            break t;
        }
        assert!(std::time::Instant::now() < deadline, "no cluster record");
        std::thread::sleep(Duration::from_millis(20));
    };
    let listening = std::net::TcpStream::connect(("127.0.0.1", client)).is_ok();
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("\"from-file\""), "{text}");
    assert!(listening, "the client URL of the flag is served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_a_leader_says_so() {
    use dengine::grpc::proto::etcdserverpb as pb;
    use dengine::grpc::proto::etcdserverpb::kv_client::KvClient;
    // One member of three: it can never elect a leader alone.
    let mut c = Cluster::new(3);
    c.start(0);
    let channel = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ep = tonic::transport::Endpoint::from_shared(c.members[0].endpoint()).expect("url");
            match ep.connect().await {
                Ok(ch) => break ch,
                Err(e) if Instant::now() > deadline => panic!("connect: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    };
    let mut kv = KvClient::new(channel);
    // With `hasleader`, at once.
    let mut req = tonic::Request::new(pb::RangeRequest {
        key: b"k".to_vec(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("hasleader", "true".parse().expect("ascii"));
    let started = Instant::now();
    let e = kv.range(req).await.expect_err("no leader");
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert_eq!(e.message(), "etcdserver: no leader");
    assert!(started.elapsed() < Duration::from_millis(500));
    // A write without it waits about two election timeouts, then says so.
    let e = kv
        .put(pb::PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await
        .expect_err("no leader");
    assert_eq!(e.message(), "etcdserver: no leader");
    // A serializable read needs no leader.
    let got = kv
        .range(pb::RangeRequest {
            key: b"k".to_vec(),
            serializable: true,
            ..Default::default()
        })
        .await
        .expect("serializable read")
        .into_inner();
    assert_eq!(got.count, 0);
}

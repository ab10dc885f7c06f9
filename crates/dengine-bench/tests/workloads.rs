//! Every workload of `dengine-bench` against a real member (gRPC over
//! TCP, sled, in this process): each runs to its budget with no error,
//! counts what it did, and reports the figures it promises.

use std::net::TcpListener;
use std::time::Duration;

use clap::Parser;
use dengine_bench::Cli;
use dengine_grpc::server::{Server, ServerConfig};
use dengine_runtime::{Config, StorageKind};

fn port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

async fn member(dir: &std::path::Path) -> (Server, String) {
    member_at(dir, (port(), port())).await
}

/// A member on the client and peer ports given (its data in `dir`, kept
/// from one start to the next).
async fn member_at(dir: &std::path::Path, (client, peer): (u16, u16)) -> (Server, String) {
    let url = |p: u16| format!("http://127.0.0.1:{p}");
    let cfg = ServerConfig {
        name: "m0".into(),
        listen_client_urls: vec![url(client)],
        advertise_client_urls: vec![url(client)],
        listen_peer_urls: vec![url(peer)],
        initial_advertise_peer_urls: vec![url(peer)],
        initial_cluster: format!("m0={}", url(peer)),
        initial_cluster_token: "bench".into(),
        node: Config {
            storage: StorageKind::Sled,
            data_dir: dir.join("m0"),
            tick_ms: 10,
            election_ticks: 20,
            heartbeat_ticks: 2,
            ..Config::default()
        },
        ..ServerConfig::default()
    };
    let server = Server::start(cfg).await.expect("start");
    server
        .node()
        .wait_for(Duration::from_secs(10), |m| m.leader.is_some())
        .await
        .expect("a leader");
    (server, format!("127.0.0.1:{client}"))
}

async fn bench(endpoint: &str, args: &[&str]) -> dengine_bench::Report {
    let pid = std::process::id().to_string();
    let mut argv = vec![
        "dengine-bench",
        "--endpoints",
        endpoint,
        "--quiet",
        "--pids",
        &pid,
    ];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv).expect("flags");
    dengine_bench::run(cli).await.expect("runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_runs_against_a_member_and_reports_its_figures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, endpoint) = member(dir.path()).await;

    let put = bench(
        &endpoint,
        &["--clients", "8", "--conns", "2", "--total", "400", "put"],
    )
    .await;
    assert_eq!((put.ops, put.errors.len()), (400, 0), "{:?}", put.errors);
    assert_eq!(put.latency.len(), 400);
    let json = put.json();
    assert_eq!(json["workload"], "put");
    assert!(json["ops_per_sec"].as_f64().is_some_and(|r| r > 0.0));
    assert!(json["latency_ms"]["p99"].as_f64().is_some_and(|p| p > 0.0));
    // The member runs in this process: its pid's CPU and memory are read.
    assert!(json["servers"][0]["cpu_us_per_op"].as_f64().is_some());
    assert!(
        json["servers"][0]["peak_rss_bytes"]
            .as_u64()
            .is_some_and(|b| b > 0)
    );

    for args in [
        &[
            "--clients",
            "4",
            "--total",
            "200",
            "range",
            "--consistency",
            "l",
        ][..],
        &[
            "--clients",
            "4",
            "--total",
            "200",
            "range",
            "--consistency",
            "s",
        ],
        &[
            "--clients",
            "4",
            "--total",
            "200",
            "--sequential-keys",
            "txn-put",
        ],
        &[
            "--clients",
            "4",
            "--total",
            "200",
            "mixed",
            "--read-ratio",
            "0.5",
        ],
        &[
            "--clients",
            "4",
            "--total",
            "200",
            "lease-keepalive",
            "--leases",
            "20",
        ],
    ] {
        let r = bench(&endpoint, args).await;
        assert_eq!(
            (r.ops, r.errors.len()),
            (200, 0),
            "{args:?}: {:?}",
            r.errors
        );
    }

    // A duration instead of a count.
    let timed = bench(&endpoint, &["--clients", "2", "--duration", "300ms", "put"]).await;
    assert!(timed.ops > 0 && timed.seconds < 5.0);

    // A refusal is counted by its code and etcd's message, read from the
    // answer's trailers.
    let refused = bench(
        &endpoint,
        &[
            "--clients",
            "2",
            "--total",
            "6",
            "--val-size",
            "2000000",
            "put",
        ],
    )
    .await;
    assert_eq!(refused.ops, 0);
    assert_eq!(
        refused
            .errors
            .get("InvalidArgument: etcdserver: request is too large"),
        Some(&6),
        "{:?}",
        refused.errors
    );

    // 20 watchers over 4 streams see every one of 30 puts.
    let w = bench(
        &endpoint,
        &[
            "--conns",
            "2",
            "--total",
            "30",
            "watch",
            "--watchers",
            "20",
            "--streams",
            "4",
            "--put-rate",
            "200",
        ],
    )
    .await;
    assert_eq!(w.extra["puts"], 30);
    assert_eq!(w.extra["events_expected"], 600);
    assert_eq!((w.ops, w.errors.len()), (600, 0), "{:?}", w.errors);

    // Nothing listens there: a clear error, not a hang.
    let dead = format!("127.0.0.1:{}", port());
    let cli = Cli::try_parse_from(["dengine-bench", "--endpoints", &dead, "--quiet", "put"])
        .expect("flags");
    let err = dengine_bench::run(cli).await.expect_err("no member");
    assert!(err.contains("the leader is not among --endpoints"), "{err}");

    server.shutdown().await.expect("stop");
}

/// A lean connection whose member went away is opened again once the
/// member is back: the call that found it gone fails as unavailable, the
/// next ones succeed, on every clone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lean_channel_connects_again_when_its_member_is_back() {
    use dengine_proto::etcdserverpb as pb;
    const PUT: &str = "/etcdserverpb.KV/Put";
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = (port(), port());
    let (server, endpoint) = member_at(dir.path(), ports).await;
    let mut first = dengine_bench::lean::connect(&format!("http://{endpoint}"))
        .await
        .expect("connects");
    let mut second = first.clone();
    let put = pb::PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    };
    let done: pb::PutResponse = first.unary(PUT, &put).await.expect("a put");
    let before = done.header.expect("a header").revision;
    server.shutdown().await.expect("stopped");
    let gone = first.unary::<_, pb::PutResponse>(PUT, &put).await;
    assert_eq!(
        gone.map(drop).map_err(|s| s.code()),
        Err(tonic::Code::Unavailable)
    );
    let (server, _) = member_at(dir.path(), ports).await;
    let mut revisions = Vec::new();
    for which in [0, 1, 0] {
        let channel = if which == 0 { &mut first } else { &mut second };
        // A clone still on the old connection finds it gone first.
        let mut answer = channel.unary::<_, pb::PutResponse>(PUT, &put).await;
        if answer.is_err() {
            answer = channel.unary(PUT, &put).await;
        }
        let header = answer.expect("a put after the restart").header;
        revisions.push(header.expect("a header").revision);
    }
    assert_eq!(revisions, [before + 1, before + 2, before + 3]);
    server.shutdown().await.expect("stopped");
}

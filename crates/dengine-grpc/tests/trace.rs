//! One write's trace crosses members: a client sends a put with a W3C
//! `traceparent` to a follower; the follower forwards it to the leader,
//! the leader replicates it to both followers, and every member's spans
//! of it (the call, the forwarded proposal, replication, the leader's
//! fsync, each follower's append, the apply) land under the client's one
//! trace id. Three members in one process, on real sockets and sled, with
//! OpenTelemetry's in-memory span exporter behind the tracing bridge.
#![cfg(feature = "otel")]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use dengine_grpc::proto::etcdserverpb as pb;
use dengine_grpc::server::{Server, ServerConfig};

mod common;
use common::{kv, member_config, port};
use opentelemetry::trace::TracerProvider;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn config(i: usize, ports: &[(u16, u16)], dir: &std::path::Path) -> ServerConfig {
    ServerConfig {
        trace_requests: true,
        ..member_config(i, ports, dir, "trace")
    }
}

/// Spans of the test's trace, by name, with the members they were made on.
fn spans_of_trace(exporter: &InMemorySpanExporter) -> BTreeMap<String, BTreeSet<String>> {
    let spans: Vec<SpanData> = exporter.get_finished_spans().expect("spans");
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in spans {
        if s.span_context.trace_id().to_string() != TRACE_ID {
            continue;
        }
        let node = s
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == "node")
            .map(|kv| kv.value.to_string())
            .unwrap_or_default();
        out.entry(s.name.to_string()).or_default().insert(node);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_is_one_trace_across_three_members() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("dengine-test")));
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    let dir = tempfile::tempdir().expect("tempdir");
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (port(), port())).collect();
    let mut servers = Vec::new();
    for i in 0..3 {
        servers.push(
            Server::start(config(i, &ports, dir.path()))
                .await
                .expect("start"),
        );
    }
    let m = servers[0]
        .node()
        .wait_for(Duration::from_secs(10), |m| m.leader.is_some())
        .await
        .expect("a leader");
    let leader = m.leader.expect("leader");
    let follower = (0..3)
        .find(|&i| servers[i].node().id() != leader)
        .expect("a follower");
    // Every member knows the leader before the write, so that the
    // follower forwards it rather than answering "no leader".
    for s in &servers {
        s.node()
            .wait_for(Duration::from_secs(10), |m| m.leader == Some(leader))
            .await
            .expect("the same leader");
    }

    let mut kv = kv(ports[follower].0).await;
    let mut put = tonic::Request::new(pb::PutRequest {
        key: b"traced".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    });
    put.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{CLIENT_SPAN}-01")
            .parse()
            .expect("ascii"),
    );
    kv.put(put).await.expect("put");

    let ids: Vec<String> = servers
        .iter()
        .map(|s| s.node().id().0.to_string())
        .collect();
    let leader_id = leader.0.to_string();
    let follower_id = ids[follower].clone();
    let followers: BTreeSet<String> = ids.iter().filter(|id| **id != leader_id).cloned().collect();
    let expected: Vec<(&str, BTreeSet<String>)> = vec![
        ("/etcdserverpb.KV/Put", BTreeSet::from([follower_id])),
        ("raft.forwarded", BTreeSet::from([leader_id.clone()])),
        ("raft.replicate", BTreeSet::from([leader_id.clone()])),
        ("raft.fsync", BTreeSet::from([leader_id.clone()])),
        ("raft.apply", BTreeSet::from([leader_id.clone()])),
        ("raft.follower.append", followers),
    ];
    // The followers' spans end once the write is durable there: soon.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = spans_of_trace(&exporter);
        let missing: Vec<_> = expected
            .iter()
            .filter(|(name, nodes)| got.get(*name) != Some(nodes))
            .collect();
        if missing.is_empty() {
            // One trace, on all three members.
            let members: BTreeSet<&String> = got.values().flatten().collect();
            assert_eq!(members.len(), 3, "{got:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "spans missing or on the wrong members: {missing:?}; the trace has {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The client's span is the root's parent: the call's span is its child.
    let spans = exporter.get_finished_spans().expect("spans");
    let call = spans
        .iter()
        .find(|s| {
            s.name == "/etcdserverpb.KV/Put" && s.span_context.trace_id().to_string() == TRACE_ID
        })
        .expect("the call's span");
    assert_eq!(call.parent_span_id.to_string(), CLIENT_SPAN);
    assert!(call.parent_span_is_remote);

    drop(kv);
    for s in servers {
        s.shutdown().await.expect("stop");
    }
    let _ = provider.shutdown();
}

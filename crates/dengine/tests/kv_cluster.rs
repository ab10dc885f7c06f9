//! The key-value state machine on a 3-node cluster with disk storage:
//! replicas agree on every key and revision, through snapshots, restarts
//! of one node and of the whole cluster (a store that keeps its own state
//! is never applied twice).

use std::collections::BTreeMap;
use std::time::Duration;

mod common;
use dengine::kv::{KvCommand, KvStateMachine, PutRequest, RangeRequest, RangeResponse};
use dengine::{Config, InMemoryNetwork, Node, NodeBuilder, NodeId, ReadPolicy, StorageKind};

const WAIT: Duration = Duration::from_secs(15);

fn config(id: u64, storage: StorageKind, dir: &std::path::Path) -> Config {
    Config {
        snapshot_threshold: 25,
        compaction_lag: 5,
        ..common::fast(id, storage, dir.join(format!("node-{id}")))
    }
}

async fn start(
    id: u64,
    storage: StorageKind,
    dir: &std::path::Path,
    net: &InMemoryNetwork,
) -> Node<KvStateMachine> {
    let c = config(id, storage, dir);
    let kv = KvStateMachine::open(&c).expect("the store opens");
    NodeBuilder::new(c, kv)
        .initial_members([1, 2, 3].map(NodeId))
        .network(net)
        .build()
        .await
        .expect("node starts")
}

async fn put(node: &Node<KvStateMachine>, k: &str, v: &str) -> dengine::LogIndex {
    let cmd = KvCommand::Put(PutRequest {
        key: k.into(),
        value: v.into(),
        prev_kv: false,
        ..Default::default()
    });
    let done = node.propose(cmd.encode()).await.expect("propose");
    done.response.expect("put applies");
    done.index
}

/// Every key and the revision, as the node holds them.
async fn contents(node: &Node<KvStateMachine>) -> (RangeResponse, i64) {
    node.read(ReadPolicy::Stale, |kv: &KvStateMachine| {
        let all = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        };
        (kv.range(&all).expect("range"), kv.revision())
    })
    .await
    .expect("read")
}

async fn start_all(
    storage: StorageKind,
    dir: &std::path::Path,
    net: &InMemoryNetwork,
) -> BTreeMap<u64, Node<KvStateMachine>> {
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        nodes.insert(id, start(id, storage, dir, net).await);
    }
    nodes
}

async fn scenario(storage: StorageKind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = InMemoryNetwork::new();
    let mut nodes: BTreeMap<u64, _> = start_all(storage, dir.path(), &net).await;
    let l = common::leader(&nodes, WAIT).await;
    for i in 0..60 {
        put(&nodes[&l], &format!("k{}", i % 20), &format!("v{i}")).await;
    }
    // A follower stops; the others go on past a snapshot; it comes back
    // from its own store and log and catches up.
    let f = *nodes.keys().find(|&&id| id != l).expect("follower");
    nodes
        .remove(&f)
        .expect("follower")
        .shutdown()
        .await
        .expect("shutdown");
    let mut last = dengine::LogIndex(0);
    for i in 60..120 {
        last = put(&nodes[&l], &format!("k{}", i % 30), &format!("v{i}")).await;
    }
    nodes.insert(f, start(f, storage, dir.path(), &net).await);
    for n in nodes.values() {
        n.wait_for(WAIT, |m| m.applied >= last)
            .await
            .expect("caught up");
    }
    let want = contents(&nodes[&l]).await;
    assert_eq!(want.1, 121, "one revision per put after the initial 1");
    assert_eq!(want.0.count, 30);
    for (id, n) in &nodes {
        assert_eq!(contents(n).await, want, "node {id} differs from the leader");
    }

    // The whole cluster stops and starts again: same keys, same revision.
    for (_, n) in std::mem::take(&mut nodes) {
        n.shutdown().await.expect("shutdown");
    }
    nodes = start_all(storage, dir.path(), &net).await;
    let l = common::leader(&nodes, WAIT).await;
    let last = put(&nodes[&l], "after", "restart").await;
    for n in nodes.values() {
        n.wait_for(WAIT, |m| m.applied >= last)
            .await
            .expect("caught up");
    }
    for (id, n) in &nodes {
        let (r, rev) = contents(n).await;
        assert_eq!(rev, want.1 + 1, "node {id}: nothing applied twice");
        assert_eq!(r.count, want.0.count + 1, "node {id}");
    }
    for n in nodes.values() {
        n.shutdown().await.expect("shutdown");
    }
}

#[cfg(feature = "sled")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_replicas_agree_through_snapshots_and_restarts_on_sled() {
    scenario(StorageKind::Sled).await;
}

#[cfg(feature = "rocksdb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_replicas_agree_through_snapshots_and_restarts_on_rocksdb() {
    scenario(StorageKind::Rocksdb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_replicas_agree_in_memory() {
    let net = InMemoryNetwork::new();
    let dir = std::path::Path::new("unused");
    let nodes: BTreeMap<u64, _> = start_all(StorageKind::Memory, dir, &net).await;
    let l = common::leader(&nodes, WAIT).await;
    let mut last = dengine::LogIndex(0);
    for i in 0..80 {
        last = put(&nodes[&l], &format!("k{}", i % 7), "v").await;
    }
    for n in nodes.values() {
        n.wait_for(WAIT, |m| m.applied >= last)
            .await
            .expect("caught up");
    }
    let want = contents(&nodes[&l]).await;
    assert_eq!(want.1, 81);
    for n in nodes.values() {
        assert_eq!(contents(n).await, want);
        n.shutdown().await.expect("shutdown");
    }
}

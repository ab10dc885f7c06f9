//! A replicated key-value store: three nodes in one process on durable
//! storage, etcd's data model, a compare-and-swap, a leader lost and the
//! store still answering.
//!
//! ```text
//! cargo run -p dengine --example kv_cluster [-- --storage memory|sled|rocksdb]
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use dengine::kv::{
    Compare, CompareOp, CompareTarget, KvCommand, KvResponse, KvStateMachine, OpResponse,
    PutRequest, RangeRequest, TxnOp, TxnRequest,
};
use dengine::{Config, InMemoryNetwork, Node, NodeBuilder, NodeId, ReadPolicy, StorageKind};

type Kv = Node<KvStateMachine>;

async fn start(
    id: u64,
    storage: StorageKind,
    dir: &std::path::Path,
    net: &InMemoryNetwork,
) -> Result<Kv, Box<dyn std::error::Error>> {
    let config = Config {
        node_id: id,
        storage,
        data_dir: dir.join(format!("node-{id}")),
        ..Config::default()
    };
    let kv = KvStateMachine::open(&config)?;
    Ok(NodeBuilder::new(config, kv)
        .initial_members([1, 2, 3].map(NodeId))
        .network(net)
        .build()
        .await?)
}

async fn leader(nodes: &BTreeMap<u64, Kv>) -> Result<&Kv, Box<dyn std::error::Error>> {
    let any = nodes.values().next().ok_or("no node")?;
    let m = any
        .wait_for(Duration::from_secs(10), |m| {
            m.leader.is_some_and(|l| nodes.contains_key(&l.0))
        })
        .await?;
    let id = m.leader.ok_or("no leader")?.0;
    nodes.get(&id).ok_or_else(|| "leader not found".into())
}

async fn write(node: &Kv, cmd: KvCommand) -> Result<KvResponse, Box<dyn std::error::Error>> {
    Ok(node.propose(cmd.encode()).await?.response?)
}

fn put(key: &str, value: &str) -> KvCommand {
    KvCommand::Put(PutRequest {
        key: key.into(),
        value: value.into(),
        prev_kv: true,
        ..Default::default()
    })
}

/// Sets `key` to `new` only if its value is `old`.
fn compare_and_swap(key: &str, old: &str, new: &str) -> KvCommand {
    KvCommand::Txn(TxnRequest {
        compare: vec![Compare {
            key: key.into(),
            range_end: vec![],
            target: CompareTarget::Value(old.into()),
            op: CompareOp::Equal,
        }],
        success: vec![TxnOp::Put(PutRequest {
            key: key.into(),
            value: new.into(),
            prev_kv: false,
            ..Default::default()
        })],
        failure: vec![],
    })
}

async fn show(node: &Kv, prefix: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let req = RangeRequest {
        key: prefix.into(),
        range_end: end,
        ..Default::default()
    };
    let (found, revision) = node
        .read(ReadPolicy::Linearizable, move |kv: &KvStateMachine| {
            (kv.range(&req), kv.revision())
        })
        .await?;
    for kv in found?.kvs {
        println!(
            "  {} = {}  (version {}, modified at revision {})",
            String::from_utf8_lossy(&kv.key),
            String::from_utf8_lossy(&kv.value),
            kv.version,
            kv.mod_revision
        );
    }
    println!("  store revision {revision}");
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let storage = match std::env::args()
        .skip_while(|a| a != "--storage")
        .nth(1)
        .as_deref()
    {
        Some("memory") => StorageKind::Memory,
        Some("rocksdb") => StorageKind::Rocksdb,
        Some("sled") | None => StorageKind::Sled,
        Some(other) => return Err(format!("unknown storage {other}").into()),
    };
    let dir = std::env::temp_dir().join(format!("dengine-kv-example-{}", std::process::id()));
    let net = InMemoryNetwork::new();
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        nodes.insert(id, start(id, storage, &dir, &net).await?);
    }

    let l = leader(&nodes).await?;
    println!("leader: node {}", l.status().id);
    for (k, v) in [("app/color", "red"), ("app/size", "large"), ("other", "x")] {
        let r = write(l, put(k, v)).await?;
        println!("put {k} = {v} -> revision {}", r.revision);
    }
    let swapped = write(l, compare_and_swap("app/color", "red", "blue")).await?;
    let stale = write(l, compare_and_swap("app/color", "red", "green")).await?;
    for (what, r) in [("red -> blue", swapped), ("red -> green", stale)] {
        if let OpResponse::Txn { succeeded, .. } = r.op {
            println!(
                "compare-and-swap {what}: {}",
                if succeeded { "done" } else { "refused" }
            );
        }
    }
    println!("keys under app/:");
    show(l, "app/").await?;

    // Lose the leader: the other two elect a new one and keep every write.
    let old = l.status().id.0;
    if let Some(n) = nodes.remove(&old) {
        n.shutdown().await?;
    }
    println!("node {old} stopped");
    let l = leader(&nodes).await?;
    println!("new leader: node {}", l.status().id);
    write(l, put("app/size", "small")).await?;
    show(l, "app/").await?;

    for n in nodes.values() {
        n.shutdown().await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

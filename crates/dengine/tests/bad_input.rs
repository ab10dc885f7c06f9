//! Bad input at start gets a clear error and changes nothing: invalid
//! settings, a data directory of another cluster or node, corrupted data.

#![cfg(feature = "sled")]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod common;
use dengine::{Config, Error, NodeBuilder, NodeId, StateMachine, StorageKind};

#[derive(Default)]
struct Nothing;

impl StateMachine for Nothing {
    type Response = ();
    fn apply(&mut self, _: dengine::EntryId, _: &[u8]) {}
    fn snapshot(&mut self, _: &mut dyn Write) -> std::io::Result<()> {
        Ok(())
    }
    fn restore(&mut self, _: &mut dyn Read) -> std::io::Result<()> {
        Ok(())
    }
}

/// A state machine that keeps its own state: it says it has applied up
/// to `0.0`, so the node does not restore a snapshot at or below that.
struct Persistent(Arc<AtomicU64>);

impl StateMachine for Persistent {
    type Response = ();
    fn apply(&mut self, _: dengine::EntryId, _: &[u8]) {}
    fn snapshot(&mut self, _: &mut dyn Write) -> std::io::Result<()> {
        Ok(())
    }
    fn restore(&mut self, _: &mut dyn Read) -> std::io::Result<()> {
        Ok(())
    }
    fn applied_index(&self) -> Option<dengine::LogIndex> {
        Some(dengine::LogIndex(self.0.load(Ordering::SeqCst)))
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dengine-bad-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn config(dir: &std::path::Path, node: u64, cluster: u64) -> Config {
    Config {
        cluster_id: cluster,
        ..common::fast(node, StorageKind::Sled, dir.to_path_buf())
    }
}

/// Starts a single-node cluster in `dir`, writes a few commands, stops.
async fn make_node_data(dir: &std::path::Path, node: u64, cluster: u64) {
    let n = NodeBuilder::new(config(dir, node, cluster), Nothing)
        .initial_members([NodeId(node)])
        .build()
        .await
        .expect("start");
    n.wait_for(Duration::from_secs(10), |m| m.leader.is_some())
        .await
        .expect("leader");
    for i in 0..10u8 {
        n.propose(vec![i]).await.expect("propose");
    }
    n.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_settings_are_refused_before_anything_is_created() {
    let dir = temp_dir("settings");
    let mut c = config(&dir, 1, 1);
    c.heartbeat_ticks = c.election_ticks;
    let e = NodeBuilder::new(c, Nothing)
        .initial_members([1].map(NodeId))
        .build()
        .await
        .err();
    assert!(
        matches!(&e, Some(Error::Config(m)) if m.contains("election_tick")),
        "{e:?}"
    );
    let mut c = config(&dir, 1, 1);
    c.node_id = 0;
    let e = NodeBuilder::new(c, Nothing)
        .initial_members([1].map(NodeId))
        .build()
        .await
        .err();
    assert!(
        matches!(&e, Some(Error::Config(m)) if m.contains("node_id")),
        "{e:?}"
    );
    assert!(
        !dir.exists(),
        "a refused start must not create the data directory"
    );
    let e = Config::from_toml("tick_ms = \"fast\"").err();
    assert!(
        matches!(&e, Some(Error::Config(m)) if m.contains("tick_ms")),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_another_cluster_or_node_is_refused() {
    let dir = temp_dir("identity");
    make_node_data(&dir, 1, 7).await;
    let e = NodeBuilder::new(config(&dir, 1, 8), Nothing)
        .build()
        .await
        .err();
    assert!(
        matches!(&e, Some(Error::Config(m)) if m.contains("cluster 7") && m.contains("cluster 8")),
        "{e:?}"
    );
    let e = NodeBuilder::new(config(&dir, 2, 7), Nothing)
        .build()
        .await
        .err();
    assert!(
        matches!(&e, Some(Error::Config(m)) if m.contains("node 1")),
        "{e:?}"
    );
    // Nothing was overwritten: the rightful owner still starts with its data.
    let n = NodeBuilder::new(config(&dir, 1, 7), Nothing)
        .build()
        .await
        .expect("owner starts");
    let m = n
        .wait_for(Duration::from_secs(10), |m| m.applied.0 >= 11)
        .await
        .expect("the owner's log is intact");
    assert!(m.last_index.0 >= 11);
    n.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_snapshot_file_is_refused_at_start() {
    let dir = temp_dir("corrupt");
    let snapshotting = Config {
        snapshot_threshold: 4,
        ..config(&dir, 1, 1)
    };
    let n = NodeBuilder::new(snapshotting.clone(), Nothing)
        .initial_members([1].map(NodeId))
        .build()
        .await
        .expect("start");
    n.wait_for(Duration::from_secs(10), |m| m.leader.is_some())
        .await
        .expect("leader");
    for i in 0..12u8 {
        n.propose(vec![i]).await.expect("propose");
    }
    n.wait_for(Duration::from_secs(10), |m| m.snapshot_made_at.0 >= 4)
        .await
        .expect("a snapshot was made");
    n.shutdown().await.expect("shutdown");

    // Flip one bit of the newest snapshot (its end frame's checksum).
    let mut snaps: Vec<PathBuf> = std::fs::read_dir(dir.join("snapshots"))
        .expect("snapshot dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "snap"))
        .collect();
    snaps.sort();
    let path = snaps.pop().expect("a snapshot file");
    let mut bytes = std::fs::read(&path).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");

    let e = NodeBuilder::new(snapshotting, Nothing).build().await.err();
    assert!(
        matches!(&e, Some(Error::Storage(m)) if m.contains("snapshot") && m.contains("corrupt")),
        "{e:?}"
    );
    assert_eq!(
        std::fs::read(&path).expect("read"),
        bytes,
        "the file was left as found"
    );

    // A state machine already past the snapshot does not restore it, and
    // the damage is found at start all the same, the file named.
    let index: u64 = path
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.split('-').nth(1))
        .and_then(|i| i.parse().ok())
        .expect("snap-<index>-<term>.snap");
    let past = Persistent(Arc::new(AtomicU64::new(index)));
    let snapshotting = Config {
        snapshot_threshold: 4,
        ..config(&dir, 1, 1)
    };
    let e = NodeBuilder::new(snapshotting, past).build().await.err();
    assert!(
        matches!(&e, Some(Error::Storage(m))
            if m.contains(&path.display().to_string()) && m.contains("corrupt")),
        "{e:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

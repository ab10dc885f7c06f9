//! A state machine that keeps its state durably compacts the log by
//! checkpoint (`StateMachine::checkpoint`), writing no snapshot of its
//! data, and writes its data only when a follower needs it, as etcd does:
//! a follower the compacted log left behind still catches up, and every
//! node starts again from its own state and log with nothing applied
//! twice or lost; a leader restarted with its state machine past the
//! commit index its log made durable can still write that snapshot.

#![cfg(feature = "sled")]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

mod common;
use dengine::core::storage::MemStorage;
use dengine::{Config, InMemoryNetwork, LogIndex, Node, NodeBuilder, NodeId, StorageKind};

const WAIT: Duration = Duration::from_secs(20);

/// What a ledger keeps on "disk": it outlives the node in this process,
/// as a file would outlive the process.
#[derive(Default)]
struct Disk {
    sum: u64,
    applied: LogIndex,
}

/// What the runtime asked of a ledger.
#[derive(Default)]
struct Counts {
    checkpoints: AtomicU64,
    data_snapshots: AtomicU64,
    restores: AtomicU64,
}

/// Adds each command (a u64) to a sum. Like the key-value store on a
/// durable backend, it stores its state only when asked to checkpoint:
/// after a restart it is where its last checkpoint left it, and the log
/// replays the rest.
struct Ledger {
    sum: u64,
    applied: LogIndex,
    disk: Arc<Mutex<Disk>>,
    counts: Arc<Counts>,
    /// Stores its state at every flush too, as the key-value store writes
    /// its pending writes out between checkpoints: after a restart it can
    /// be past its last checkpoint, and past the commit index the log
    /// made durable.
    stores_at_flush: bool,
}

impl Ledger {
    fn open(member: &Member) -> Ledger {
        let d = member.disk.lock().unwrap_or_else(PoisonError::into_inner);
        Ledger {
            sum: d.sum,
            applied: d.applied,
            disk: Arc::clone(&member.disk),
            counts: Arc::clone(&member.counts),
            stores_at_flush: member.store.is_some(),
        }
    }
}

impl dengine::StateMachine for Ledger {
    type Response = u64;

    fn apply(&mut self, at: dengine::EntryId, command: &[u8]) -> u64 {
        let mut v = [0u8; 8];
        v.copy_from_slice(&command[..8]);
        self.sum += u64::from_le_bytes(v);
        self.applied = at.index;
        self.sum
    }

    fn flush(&mut self, applied: LogIndex) -> std::io::Result<()> {
        self.applied = applied;
        if self.stores_at_flush {
            let mut d = self.disk.lock().unwrap_or_else(PoisonError::into_inner);
            d.sum = self.sum;
            d.applied = applied;
        }
        Ok(())
    }

    fn applied_index(&self) -> Option<LogIndex> {
        Some(
            self.disk
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .applied,
        )
    }

    fn checkpoint(&mut self) -> std::io::Result<Option<LogIndex>> {
        let mut d = self.disk.lock().unwrap_or_else(PoisonError::into_inner);
        d.sum = self.sum;
        d.applied = self.applied;
        self.counts.checkpoints.fetch_add(1, Ordering::SeqCst);
        Ok(Some(d.applied))
    }

    fn snapshot(&mut self, out: &mut dyn Write) -> std::io::Result<()> {
        self.counts.data_snapshots.fetch_add(1, Ordering::SeqCst);
        // Slow, as a large state's is: the follower's probes come while
        // it is being made, and must wait for it, not ask for another.
        std::thread::sleep(Duration::from_millis(200));
        common::save_u64(out, self.sum)
    }

    fn restore(&mut self, input: &mut dyn Read) -> std::io::Result<()> {
        self.counts.restores.fetch_add(1, Ordering::SeqCst);
        self.sum = common::load_u64(input)?;
        Ok(())
    }
}

#[derive(Default)]
struct Member {
    disk: Arc<Mutex<Disk>>,
    counts: Arc<Counts>,
    /// A log the test can reach between restarts; its ledger then also
    /// stores its state at every flush. Otherwise the log is on disk.
    store: Option<MemStorage>,
}

fn config(id: u64, dir: &Path) -> Config {
    Config {
        snapshot_threshold: 20,
        compaction_lag: 5,
        ..common::fast(id, StorageKind::Sled, dir.join(format!("node-{id}")))
    }
}

async fn start(id: u64, member: &Member, dir: &Path, net: &InMemoryNetwork) -> Node<Ledger> {
    let mut builder = NodeBuilder::new(config(id, dir), Ledger::open(member))
        .initial_members([1, 2, 3].map(NodeId))
        .network(net);
    if let Some(store) = &member.store {
        builder = builder.store(Arc::new(store.clone()));
    }
    builder.build().await.expect("node starts")
}

/// Proposes `values` one at a time, on whichever node leads; the last
/// index.
async fn add(nodes: &BTreeMap<u64, Node<Ledger>>, values: std::ops::Range<u64>) -> LogIndex {
    let mut last = LogIndex(0);
    for v in values {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let l = common::leader(nodes, WAIT).await;
            match nodes[&l].propose(v.to_le_bytes().to_vec()).await {
                Ok(done) => {
                    last = done.index;
                    break;
                }
                // A leader that lost its place: ask the next.
                Err(e) if tokio::time::Instant::now() < deadline => {
                    eprintln!("propose {v} on {l}: {e}; again");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("propose {v}: {e}"),
            }
        }
    }
    last
}

async fn sum(node: &Node<Ledger>) -> u64 {
    node.read(dengine::ReadPolicy::Stale, |l: &Ledger| l.sum)
        .await
        .expect("read")
}

/// Snapshot files in a node's data directory.
fn snapshot_files(dir: &Path, id: u64) -> Vec<String> {
    let snaps = dir.join(format!("node-{id}")).join("snapshots");
    let Ok(entries) = std::fs::read_dir(&snaps) else {
        return Vec::new();
    };
    entries
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

/// Starts `members`, writes 1 to 30, and stops a follower: the running
/// nodes, the leader and the follower stopped.
async fn start_and_stop_a_follower(
    members: &BTreeMap<u64, Member>,
    dir: &Path,
    net: &InMemoryNetwork,
) -> (BTreeMap<u64, Node<Ledger>>, u64, u64) {
    let mut nodes = BTreeMap::new();
    for (id, m) in members {
        nodes.insert(*id, start(*id, m, dir, net).await);
    }
    add(&nodes, 1..31).await;
    let l = common::leader(&nodes, WAIT).await;
    let f = *nodes.keys().find(|&&id| id != l).expect("follower");
    nodes
        .remove(&f)
        .expect("follower")
        .shutdown()
        .await
        .expect("shutdown");
    (nodes, l, f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_compacted_by_checkpoints_and_data_is_written_only_for_a_follower() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = InMemoryNetwork::new();
    let members: BTreeMap<u64, Member> = (1..=3).map(|id| (id, Member::default())).collect();
    // A follower stops; the others go on far past their snapshots.
    let (mut nodes, _, f) = start_and_stop_a_follower(&members, dir.path(), &net).await;
    let last = add(&nodes, 31..131).await;
    let total: u64 = (1..131).sum();
    for (id, n) in &nodes {
        n.wait_for(WAIT, |m| m.applied >= last && m.snapshot_made_at.0 > 40)
            .await
            .unwrap_or_else(|e| panic!("node {id} did not apply and compact: {e}"));
        let c = &members[id].counts;
        assert!(
            c.checkpoints.load(Ordering::SeqCst) >= 2,
            "node {id} compacted by checkpoint"
        );
        assert_eq!(
            c.data_snapshots.load(Ordering::SeqCst),
            0,
            "node {id} wrote its data with nobody needing it"
        );
        assert_eq!(
            snapshot_files(dir.path(), *id),
            Vec::<String>::new(),
            "node {id}"
        );
        assert_eq!(sum(n).await, total, "node {id}");
    }

    // It comes back behind the compacted log: a snapshot with the data
    // is made for it, and it catches up.
    nodes.insert(f, start(f, &members[&f], dir.path(), &net).await);
    nodes[&f]
        .wait_for(WAIT, |m| m.applied >= last)
        .await
        .expect("the follower catches up");
    assert_eq!(sum(&nodes[&f]).await, total, "the follower's state");
    let made: u64 = members
        .values()
        .map(|m| m.counts.data_snapshots.load(Ordering::SeqCst))
        .sum();
    assert!(made >= 1, "a snapshot with data was made for the follower");
    for (id, m) in &members {
        assert!(
            m.counts.data_snapshots.load(Ordering::SeqCst) <= 1,
            "node {id} made another snapshot with data while one was being made"
        );
    }
    assert!(
        members[&f].counts.restores.load(Ordering::SeqCst) >= 1,
        "the follower installed it"
    );
    assert!(nodes[&f].status().snapshots_installed >= 1);

    // Every node starts again from its own state and log: nothing is
    // applied twice, nothing is missing, though the logs start after
    // snapshots that hold no data.
    for (_, n) in std::mem::take(&mut nodes) {
        n.shutdown().await.expect("shutdown");
    }
    for (id, m) in &members {
        nodes.insert(*id, start(*id, m, dir.path(), &net).await);
    }
    let last = add(&nodes, 1000..1001).await;
    for (id, n) in &nodes {
        n.wait_for(WAIT, |m| m.applied >= last)
            .await
            .unwrap_or_else(|e| panic!("node {id} after the restart: {e}"));
        assert_eq!(sum(n).await, total + 1000, "node {id} after the restart");
    }
    for n in nodes.values() {
        n.shutdown().await.expect("shutdown");
    }
}

/// A leader restarts with its state machine past the commit index its log
/// made durable (the runtime holds a hard state that changes only the
/// commit index back for up to a tick, and the state machine stores its
/// state when it likes). The one member it can make a quorum with is a
/// follower the compacted log left behind: it needs a snapshot with the
/// data, which the state machine can write only at its own index. Before
/// `RawNode::state_machine_restored` the core asked for it at the durable
/// commit index, every attempt failed ("asked at .. but the state machine
/// is at .."), and the cluster never committed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_restarted_past_its_durable_commit_makes_the_snapshot_a_follower_needs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = InMemoryNetwork::new();
    let members: BTreeMap<u64, Member> = (1..=3)
        .map(|id| {
            let m = Member {
                store: Some(MemStorage::new()),
                ..Member::default()
            };
            (id, m)
        })
        .collect();
    // A follower stops; the others compact their logs far past it.
    let (mut nodes, l, f) = start_and_stop_a_follower(&members, dir.path(), &net).await;
    let mut last = add(&nodes, 31..131).await;
    let mut next = 131;
    // Until the leader's state machine is at least 2 past its last
    // checkpoint: its commit index can then be set back between them.
    loop {
        let m = nodes[&l]
            .wait_for(WAIT, |m| m.applied >= last && m.snapshot_made_at.0 > 40)
            .await
            .expect("the leader applies and compacts");
        if m.applied.0 >= m.snapshot_made_at.0 + 2 {
            break;
        }
        last = add(&nodes, next..next + 1).await;
        next += 1;
    }
    let total: u64 = (1..next).sum();
    for (_, n) in std::mem::take(&mut nodes) {
        n.shutdown().await.expect("shutdown");
    }

    // The leader's log made durable a commit index short of its state
    // machine, as after a crash while a commit-only hard state was held.
    let kept = members[&l]
        .disk
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .applied;
    {
        let mut s = members[&l]
            .store
            .as_ref()
            .expect("a store of the test's")
            .lock();
        let from = s.snapshot.last_index;
        assert!(
            kept.0 >= from.0 + 2,
            "state machine at {kept}, snapshot at {from}"
        );
        s.hard_state.commit = LogIndex(from.0 + 1);
    }

    // It comes back with the follower only: the follower needs a snapshot
    // with the data to make a quorum.
    for id in [l, f] {
        nodes.insert(id, start(id, &members[&id], dir.path(), &net).await);
    }
    nodes[&f]
        .wait_for(WAIT, |m| m.applied >= kept && m.commit > kept)
        .await
        .unwrap_or_else(|e| panic!("the follower did not catch up past {kept}: {e}"));
    assert_eq!(sum(&nodes[&f]).await, total, "the follower's state");
    assert!(nodes[&f].status().snapshots_installed >= 1, "by snapshot");
    assert_eq!(
        nodes[&l].status().snapshot_failures,
        0,
        "the leader was asked for a snapshot it could not write"
    );
    add(&nodes, 1000..1001).await;
    assert_eq!(sum(&nodes[&l]).await, total + 1000);
    for n in nodes.values() {
        n.shutdown().await.expect("shutdown");
    }
}

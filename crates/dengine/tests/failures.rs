//! A part of the node that dies takes the node down with it, visibly: a
//! panic in the state machine, in the disk thread or in the core task
//! stops the node with the cause, callers get an error instead of waiting
//! forever, and the rest of the cluster goes on without it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

mod common;
use dengine::core::Message;
use dengine::core::storage::MemStorage;
use dengine::core::{
    Entry, HardState, InitialState, LogIndex, LogStorage, LogStore, MetaStore, SnapshotMeta,
    StorageError, StoreIdentity, Term,
};
use dengine::snapshot::SnapshotData;
use dengine::{
    Config, EntryId, Error, InMemoryNetwork, Node, NodeBuilder, NodeId, ReadPolicy, SnapshotDone,
    StateMachine, StorageKind, Transport, Unreachable,
};

const WAIT: Duration = Duration::from_secs(20);

/// Counts commands; panics on `boom` while its trigger is set (each node
/// has its own trigger, so only the chosen replica panics).
struct Fragile {
    count: u64,
    trigger: Arc<AtomicBool>,
}

impl StateMachine for Fragile {
    type Response = u64;
    fn apply(&mut self, _: EntryId, command: &[u8]) -> u64 {
        if command == b"boom" && self.trigger.load(Ordering::SeqCst) {
            panic!("boom in apply");
        }
        self.count += 1;
        self.count
    }
    fn snapshot(&mut self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        common::save_u64(out, self.count)
    }
    fn restore(&mut self, input: &mut dyn std::io::Read) -> std::io::Result<()> {
        self.count = common::load_u64(input)?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_apply_stops_that_node_and_the_others_go_on() {
    let net = InMemoryNetwork::new();
    let mut nodes = BTreeMap::new();
    let mut triggers = BTreeMap::new();
    for id in 1..=3u64 {
        let trigger = Arc::new(AtomicBool::new(false));
        let sm = Fragile {
            count: 0,
            trigger: trigger.clone(),
        };
        let node = NodeBuilder::new(common::fast(id, StorageKind::Memory, "unused".into()), sm)
            .initial_members([1, 2, 3].map(NodeId))
            .network(&net)
            .build()
            .await
            .expect("start");
        nodes.insert(id, node);
        triggers.insert(id, trigger);
    }
    let m = nodes[&1]
        .wait_for(WAIT, |m| m.leader.is_some())
        .await
        .expect("leader");
    let leader = m.leader.expect("leader").0;
    nodes[&leader].propose(b"a".to_vec()).await.expect("write");
    // Only the leader's replica panics on the next entry.
    triggers[&leader].store(true, Ordering::SeqCst);
    let e = nodes[&leader]
        .propose(b"boom".to_vec())
        .await
        .expect_err("the leader's state machine panicked");
    assert!(
        matches!(&e, Error::Fatal(why) if why.contains("boom in apply")),
        "{e:?}"
    );
    let status = nodes[&leader].status();
    assert!(
        status
            .fatal
            .as_deref()
            .is_some_and(|f| f.contains("panicked") && f.contains("boom in apply")),
        "status says why: {:?}",
        status.fatal
    );
    // The dead node answers at once, with the cause.
    let e = nodes[&leader]
        .propose(b"b".to_vec())
        .await
        .expect_err("stopped");
    assert!(matches!(e, Error::Fatal(_)), "{e:?}");
    let e = nodes[&leader]
        .read(ReadPolicy::Stale, |s: &Fragile| s.count)
        .await
        .expect_err("stopped");
    assert!(matches!(e, Error::Fatal(_)), "{e:?}");
    // It no longer leads: the others elect a leader among themselves and
    // take writes (they applied `boom` themselves, without panicking).
    let survivor = *nodes.keys().find(|&&id| id != leader).expect("another");
    let m = nodes[&survivor]
        .wait_for(WAIT, |m| m.leader.is_some_and(|l| l.0 != leader))
        .await
        .expect("a new leader");
    let new_leader = &nodes[&m.leader.expect("leader").0];
    let out = new_leader.propose(b"c".to_vec()).await.expect("write");
    assert_eq!(out.response, 3, "a, boom and c");
    for n in nodes.values() {
        let _ = n.shutdown().await;
    }
}

/// What the wrapped store does on its next write.
const WRITE_OK: u8 = 0;
const WRITE_PANICS: u8 = 1;
const WRITE_HANGS: u8 = 2;

/// A memory store whose writes can be made to panic or to hang.
struct Faulty {
    inner: MemStorage,
    mode: Arc<AtomicU8>,
}

impl LogStorage for Faulty {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        self.inner.initial_state()
    }
    fn entries(&self, lo: LogIndex, hi: LogIndex, max: u64) -> Result<Vec<Entry>, StorageError> {
        self.inner.entries(lo, hi, max)
    }
    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        self.inner.term(index)
    }
    fn first_index(&self) -> Result<LogIndex, StorageError> {
        self.inner.first_index()
    }
    fn last_index(&self) -> Result<LogIndex, StorageError> {
        self.inner.last_index()
    }
    fn snapshot_meta(&self) -> Result<SnapshotMeta, StorageError> {
        self.inner.snapshot_meta()
    }
}

impl MetaStore for Faulty {
    fn identity(&self) -> Result<Option<StoreIdentity>, StorageError> {
        self.inner.identity()
    }
    fn set_identity(&self, id: StoreIdentity) -> Result<(), StorageError> {
        self.inner.set_identity(id)
    }
    fn save_snapshot_meta(&self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        self.inner.save_snapshot_meta(meta)
    }
}

impl LogStore for Faulty {
    fn write(
        &self,
        snapshot: Option<&SnapshotMeta>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        match self.mode.load(Ordering::SeqCst) {
            WRITE_PANICS => panic!("the disk caught fire"),
            WRITE_HANGS => {
                while self.mode.load(Ordering::SeqCst) == WRITE_HANGS {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            _ => {}
        }
        self.inner.write(snapshot, entries, hard_state)
    }
    fn sync(&self) -> Result<(), StorageError> {
        self.inner.sync()
    }
    fn compact(&self, index: LogIndex) -> Result<(), StorageError> {
        self.inner.compact(index)
    }
}

async fn single(
    storage: StorageKind,
    dir: &std::path::Path,
    mode: &Arc<AtomicU8>,
    request_timeout_ms: u64,
) -> Node<common::Strings> {
    let config = Config {
        request_timeout_ms,
        ..common::fast(1, storage, dir.to_path_buf())
    };
    let store = Arc::new(Faulty {
        inner: MemStorage::new(),
        mode: mode.clone(),
    });
    let node =
        common::lone_leader(NodeBuilder::new(config, common::Strings::default()).store(store))
            .await;
    node.propose(b"before".to_vec()).await.expect("write");
    node
}

/// With a disk backend, writes go through the disk thread: a panic there
/// is caught and stops the node; nothing after it is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_disk_thread_stops_the_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mode = Arc::new(AtomicU8::new(WRITE_OK));
    // A generous timeout: the panic hook prints a backtrace before the
    // disk thread reports the panic, and under load (CI) that took longer
    // than half a second, so the proposal timed out first.
    let node = single(StorageKind::Sled, dir.path(), &mode, 30_000).await;
    mode.store(WRITE_PANICS, Ordering::SeqCst);
    let e = node
        .propose(b"after".to_vec())
        .await
        .expect_err("not durable");
    assert!(
        matches!(&e, Error::Fatal(why) if why.contains("disk caught fire")),
        "{e:?}"
    );
    let m = node.status();
    assert!(
        m.fatal
            .as_deref()
            .is_some_and(|f| f.contains("disk thread panicked")),
        "{:?}",
        m.fatal
    );
    node.shutdown().await.expect("shutdown");
}

/// A transport that panics when the core task sends through it.
struct Exploding;

impl Transport for Exploding {
    fn send(&self, _: Message) -> Result<(), Unreachable> {
        panic!("the transport exploded");
    }
    fn send_snapshot(&self, _: Message, _: SnapshotData, _: SnapshotDone) {
        panic!("the transport exploded");
    }
}

/// A panic in the core task (here from the transport, which the core task
/// calls) ends it, and the supervisor stops the node in its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_core_task_stops_the_node() {
    // Two voters, one of them started: it campaigns, and sends.
    let node = NodeBuilder::new(
        common::fast(1, StorageKind::Memory, "unused".into()),
        common::Strings::default(),
    )
    .initial_members([1, 2].map(NodeId))
    .transport(Arc::new(Exploding))
    .build()
    .await
    .expect("start");
    let m = node
        .wait_for(WAIT, |m| m.fatal.is_some())
        .await
        .expect("the node stops");
    assert!(
        m.fatal
            .as_deref()
            .is_some_and(|f| f.contains("core task panicked") && f.contains("exploded")),
        "status says why: {:?}",
        m.fatal
    );
    // Requests fail at once with the cause.
    let e = node.propose(b"later".to_vec()).await.expect_err("stopped");
    assert!(
        matches!(&e, Error::Fatal(why) if why.contains("exploded")),
        "{e:?}"
    );
    let e = node
        .read(ReadPolicy::Stale, |s: &common::Strings| s.0.len())
        .await
        .expect_err("stopped");
    assert!(matches!(e, Error::Fatal(_)), "{e:?}");
    node.shutdown().await.expect("shutdown");
}

/// A disk that hangs (here a write that never returns) holds every write
/// back: proposals still return, with `Timeout`, within the request
/// timeout, and reads that need no write are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_on_a_node_whose_disk_hangs_time_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mode = Arc::new(AtomicU8::new(WRITE_OK));
    let node = single(StorageKind::Sled, dir.path(), &mode, 500).await;
    mode.store(WRITE_HANGS, Ordering::SeqCst);
    let started = Instant::now();
    let first = node.propose(b"stuck".to_vec()).await;
    assert_eq!(first.map(|_| ()), Err(Error::Timeout));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let read = node
        .read(ReadPolicy::Linearizable, |s: &common::Strings| s.0.len())
        .await;
    assert_eq!(read, Ok(1), "only `before` was written");
    // Let the write finish so the node can shut down.
    mode.store(WRITE_OK, Ordering::SeqCst);
    node.shutdown().await.expect("shutdown");
}

/// A read query that panics fails that read alone, at once and saying
/// why; the reads around it get their answers, and the node goes on
/// serving reads and writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_read_query_fails_only_its_own_read() {
    let net = InMemoryNetwork::new();
    let trigger = Arc::new(AtomicBool::new(false));
    let sm = Fragile { count: 0, trigger };
    let config = common::fast(1, StorageKind::Memory, "unused".into());
    let node = common::lone_leader(NodeBuilder::new(config, sm).network(&net)).await;
    node.propose(b"a".to_vec()).await.expect("write");
    for policy in [ReadPolicy::Stale, ReadPolicy::Linearizable] {
        let started = Instant::now();
        let reads: Vec<_> = (0..20)
            .map(|i| {
                let node = node.clone();
                tokio::spawn(async move {
                    node.read(policy, move |s: &Fragile| {
                        assert!(i != 7, "boom in read {i}");
                        s.count
                    })
                    .await
                })
            })
            .collect();
        for (i, read) in reads.into_iter().enumerate() {
            let outcome = read.await.expect("the read's task");
            match outcome {
                Err(Error::Invalid(why)) if i == 7 => {
                    assert!(why.contains("boom in read 7"), "{why}");
                }
                Ok(count) if i != 7 => assert_eq!(count, 1),
                other => panic!("{policy:?} read {i}: {other:?}"),
            }
        }
        // Failed at once, not after the wait for a node that stopped.
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "{:?}",
            started.elapsed()
        );
    }
    let out = node.propose(b"b".to_vec()).await.expect("write after");
    assert_eq!(out.response, 2);
    assert!(node.status().fatal.is_none());
    let _ = node.shutdown().await;
}

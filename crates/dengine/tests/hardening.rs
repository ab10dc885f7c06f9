//! The runtime under conditions the one-write-at-a-time tests never make:
//! snapshots under concurrent load, a core loop that stalls across a
//! lease, floods past every bound, a slow state machine.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;
use common::Strings;
use dengine::core::{LogStorage, Message, MessageBody, Term};
use dengine::{
    Config, Error, InMemoryNetwork, LogIndex, Node, NodeBuilder, NodeId, ReadPolicy, StateMachine,
    StorageKind,
};

const WAIT: Duration = Duration::from_secs(20);

fn config(id: u64) -> Config {
    common::fast(id, StorageKind::Memory, "unused".into())
}

async fn leader_of<SM: StateMachine>(nodes: &BTreeMap<u64, Node<SM>>) -> u64 {
    let any = nodes.values().next().expect("a node");
    let m = any
        .wait_for(WAIT, |m| m.leader.is_some_and(|l| nodes.contains_key(&l.0)))
        .await
        .expect("a leader");
    m.leader.expect("leader").0
}

/// Bug: the core asked for a snapshot at the *reported* applied index in
/// the Ready that handed out more entries; the apply worker, already past
/// it, refused; the request was asked again at once. Under pipelined load
/// no snapshot was ever made and the log never compacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_made_and_the_log_compacted_while_load_runs() {
    let net = InMemoryNetwork::new();
    let mut nodes = BTreeMap::new();
    let mut stores = BTreeMap::new();
    for id in 1..=3 {
        let store = Arc::new(dengine::core::storage::MemStorage::new());
        let c = Config {
            snapshot_threshold: 200,
            compaction_lag: 0,
            ..config(id)
        };
        let node = NodeBuilder::new(c, Strings::default())
            .initial_members([1, 2, 3].map(NodeId))
            .network(&net)
            .store(store.clone())
            .build()
            .await
            .expect("start");
        nodes.insert(id, node);
        stores.insert(id, store);
    }
    let leader = leader_of(&nodes).await;
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut proposers = Vec::new();
    for p in 0..64 {
        let node = nodes[&leader].clone();
        let (stop, written) = (stop.clone(), written.clone());
        proposers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if node.propose(format!("{p}-{i}").into_bytes()).await.is_ok() {
                    written.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    // While the load runs: snapshots are made, and the log's first index
    // moves (it is compacted behind them).
    // Sampled every 20 ms for a second of load: the snapshot index and the
    // log's first index must keep moving, not once but all along.
    let mut made_at = Vec::new();
    let mut firsts = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        made_at.push(nodes[&leader].status().snapshot_made_at.0);
        firsts.push(stores[&leader].first_index().expect("first index").0);
    }
    made_at.dedup();
    firsts.dedup();
    let status = nodes[&leader].status();
    eprintln!(
        "{} written; snapshots seen at {} indexes, log start at {}; {} snapshot failures",
        written.load(Ordering::Relaxed),
        made_at.len(),
        firsts.len(),
        status.snapshot_failures
    );
    assert!(
        made_at.len() >= 10 && firsts.len() >= 10,
        "snapshots starve under load: made at {made_at:?}, log starts at {firsts:?}, {} failures",
        status.snapshot_failures
    );
    assert!(
        !stop.swap(true, Ordering::Relaxed),
        "the load was still running when the log was compacted"
    );
    for p in proposers {
        p.await.expect("proposer");
    }
    let m = nodes[&leader].status();
    // The request is taken where the state machine is: it cannot miss.
    assert_eq!(
        m.snapshot_failures, 0,
        "snapshots failed under load (asked at an index the state machine had passed)"
    );
    for n in nodes.values() {
        n.shutdown().await.expect("shutdown");
    }
}

/// A node on a runtime of its own, one thread, that the test can stall:
/// while stalled, its core loop runs not at all (a long GC-like pause, a
/// blocked worker).
struct Stallable {
    node: Node<Register>,
    stall: tokio::sync::mpsc::UnboundedSender<Duration>,
    thread: Option<std::thread::JoinHandle<()>>,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Stallable {
    async fn start(c: Config, net: &InMemoryNetwork) -> Stallable {
        let (node_tx, node_rx) = tokio::sync::oneshot::channel();
        let (stall_tx, mut stall_rx) = tokio::sync::mpsc::unbounded_channel::<Duration>();
        let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
        let net = net.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let node = NodeBuilder::new(c, Register::default())
                    .initial_members([1, 2, 3].map(NodeId))
                    .network(&net)
                    .build()
                    .await
                    .expect("start");
                let _ = node_tx.send(node.clone());
                loop {
                    tokio::select! {
                        d = stall_rx.recv() => match d {
                            // Blocks the runtime's only thread.
                            Some(d) => std::thread::sleep(d),
                            None => break,
                        },
                        _ = &mut done_rx => break,
                    }
                }
                let _ = node.shutdown().await;
            });
        });
        let node = node_rx.await.expect("node started");
        Stallable {
            node,
            stall: stall_tx,
            thread: Some(thread),
            done: Some(done_tx),
        }
    }
}

impl Drop for Stallable {
    fn drop(&mut self) {
        if let Some(d) = self.done.take() {
            let _ = d.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A register: the last value written.
#[derive(Default)]
struct Register(u64);

impl StateMachine for Register {
    type Response = ();
    fn apply(&mut self, _: dengine::EntryId, command: &[u8]) {
        if let Ok(b) = command.try_into() {
            self.0 = u64::from_le_bytes(b);
        }
    }
    fn snapshot(&mut self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        common::save_u64(out, self.0)
    }
    fn restore(&mut self, input: &mut dyn std::io::Read) -> std::io::Result<()> {
        self.0 = common::load_u64(input)?;
        Ok(())
    }
}

/// Bug: ticks came from a timer that a stalled loop skips, so a leader's
/// lease, counted in its own ticks, outlasted the moment the others
/// elected a new leader. Here the leader stalls (and is cut off) while the
/// others elect a leader and write; a lease read queued during the stall
/// must not return the old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_leader_serves_no_lease_read_after_it_was_deposed() {
    let net = InMemoryNetwork::new();
    let stallable = Stallable::start(config(1), &net).await;
    let mut others = BTreeMap::new();
    for id in 2..=3 {
        let node = NodeBuilder::new(config(id), Register::default())
            .initial_members([1, 2, 3].map(NodeId))
            .network(&net)
            .build()
            .await
            .expect("start");
        others.insert(id, node);
    }
    let old = &stallable.node;
    // Node 1 leads.
    let m = old
        .wait_for(WAIT, |m| m.leader.is_some())
        .await
        .expect("leader");
    if m.leader != Some(NodeId(1)) {
        let leader = &others[&m.leader.expect("leader").0];
        leader
            .transfer_leadership(NodeId(1))
            .await
            .expect("transfer to node 1");
    }
    old.propose(1u64.to_le_bytes().to_vec())
        .await
        .expect("write 1");
    // A lease read works while it leads.
    assert_eq!(old.read(ReadPolicy::Lease, |r: &Register| r.0).await, Ok(1));

    // Stall the leader and cut it off; the others elect and write 2.
    let term_before = old.status().term;
    stallable
        .stall
        .send(Duration::from_millis(1500))
        .expect("stall");
    net.isolate(NodeId(1));
    let started = Instant::now();
    let (new_leader, new_term) = loop {
        let m = others[&2].status();
        if let Some(l) = m.leader
            && l != NodeId(1)
            && m.term > term_before
        {
            break (l, m.term);
        }
        assert!(started.elapsed() < Duration::from_secs(1), "no new leader");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    others[&new_leader.0]
        .propose(2u64.to_le_bytes().to_vec())
        .await
        .expect("write 2 on the new leader");
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "the stall must outlast the new leader's write"
    );
    // Queued while the old leader is stalled; served (or refused) after.
    let read = old.read(ReadPolicy::Lease, |r: &Register| r.0).await;
    assert_ne!(
        read,
        Ok(1),
        "a deposed leader served a stale lease read (new leader {new_leader} in term {new_term})"
    );
    net.heal(NodeId(1));
    for n in others.values() {
        n.shutdown().await.expect("shutdown");
    }
}

/// Past every bound the node refuses instead of queueing: peer messages
/// beyond the inbox, reads beyond `max_pending_requests`; reads that wait
/// on a cut-off leader expire with the request timeout and give their
/// place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_are_refused_and_waiting_reads_expire_in_a_cluster() {
    let net = InMemoryNetwork::new();
    let c = |id| Config {
        max_pending_requests: 16,
        request_timeout_ms: 1_000,
        check_quorum: false,
        lease_reads: false,
        ..config(id)
    };
    let stallable = Stallable::start(c(1), &net).await;
    let mut others = BTreeMap::new();
    for id in 2..=3 {
        let node = NodeBuilder::new(c(id), Register::default())
            .initial_members([1, 2, 3].map(NodeId))
            .network(&net)
            .build()
            .await
            .expect("start");
        others.insert(id, node);
    }
    let node = stallable.node.clone();
    let m = node
        .wait_for(WAIT, |m| m.leader.is_some())
        .await
        .expect("leader");
    if m.leader != Some(NodeId(1)) {
        others[&m.leader.expect("leader").0]
            .transfer_leadership(NodeId(1))
            .await
            .expect("transfer to node 1");
    }
    node.propose(7u64.to_le_bytes().to_vec())
        .await
        .expect("write");

    // Stalled, the node's inbox fills: the rest is refused, not queued.
    stallable
        .stall
        .send(Duration::from_millis(400))
        .expect("stall");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let heartbeat = Message {
        from: NodeId(2),
        to: NodeId(1),
        term: Term(0),
        body: MessageBody::Heartbeat {
            commit: dengine::LogIndex(0),
            read_round: 0,
        },
    };
    let mut refused = 0;
    for _ in 0..20_000 {
        if node.deliver(heartbeat.clone(), None) == Err(Error::Overloaded) {
            refused += 1;
        }
    }
    assert!(refused > 0, "the inbox took 20,000 messages");
    // Reads beyond the limit are refused at once; those under it are
    // served once the node runs again.
    let mut reads = Vec::new();
    for _ in 0..40 {
        let n = node.clone();
        reads.push(tokio::spawn(async move {
            n.read(ReadPolicy::Stale, |r: &Register| r.0).await
        }));
    }
    let (mut served, mut overloaded) = (0, 0);
    for r in reads {
        match r.await.expect("read task") {
            Ok(7) => served += 1,
            Err(Error::Overloaded) => overloaded += 1,
            other => panic!("unexpected read outcome: {other:?}"),
        }
    }
    assert!(
        overloaded >= 40 - 16 && served >= 1,
        "{served} served, {overloaded} refused"
    );

    // A cut-off leader without check-quorum stays leader; linearizable
    // reads on it wait for a round that never completes, and expire.
    net.isolate(NodeId(1));
    let started = Instant::now();
    let mut reads = Vec::new();
    for _ in 0..16 {
        let n = node.clone();
        reads.push(tokio::spawn(async move {
            n.read(ReadPolicy::Linearizable, |r: &Register| r.0).await
        }));
    }
    for r in reads {
        assert_eq!(r.await.expect("read task"), Err(Error::Timeout));
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // Their places were given back: a stale read is served at once.
    assert_eq!(
        node.read(ReadPolicy::Stale, |r: &Register| r.0).await,
        Ok(7)
    );
    net.heal(NodeId(1));
    for n in others.values() {
        n.shutdown().await.expect("shutdown");
    }
}

/// A state machine whose `apply` takes longer than an election timeout.
struct Slow(u64);

impl StateMachine for Slow {
    type Response = ();
    fn apply(&mut self, _: dengine::EntryId, _: &[u8]) {
        std::thread::sleep(Duration::from_millis(150));
        self.0 += 1;
    }
    fn snapshot(&mut self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        common::save_u64(out, self.0)
    }
    fn restore(&mut self, input: &mut dyn std::io::Read) -> std::io::Result<()> {
        self.0 = common::load_u64(input)?;
        Ok(())
    }
}

/// Bug: apply ran on the runtime's workers, so a slow state machine
/// stalled every node's protocol task on a small runtime, and followers
/// elected new leaders for nothing. A slow state machine gets a thread of
/// its own now (after its first job longer than 50 ms, as this one's is).
#[tokio::test(flavor = "current_thread")]
async fn a_slow_state_machine_does_not_stall_the_protocol() {
    let net = InMemoryNetwork::new();
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        let node = NodeBuilder::new(config(id), Slow(0))
            .initial_members([1, 2, 3].map(NodeId))
            .network(&net)
            .build()
            .await
            .expect("start");
        nodes.insert(id, node);
    }
    // The first slow batch runs on the runtime of each node in turn; it
    // moves apply to a thread of its own. On this one-thread runtime each
    // of those runs may cost an election: a leader that catches up on the
    // ticks it missed steps down before it reads its followers' answers.
    // Those elections are over once a write goes through a leader after
    // every node applied its first batch.
    let leader = leader_of(&nodes).await;
    nodes[&leader].propose(vec![1]).await.expect("propose");
    for n in nodes.values() {
        n.wait_for(WAIT, |m| m.applied >= LogIndex(3))
            .await
            .expect("applied");
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    let leader = loop {
        let leader = leader_of(&nodes).await;
        match nodes[&leader].propose(vec![1]).await {
            Ok(_) => break leader,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "no write went through a leader: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let term = nodes[&leader].status().term;
    for _ in 0..6 {
        nodes[&leader].propose(vec![1]).await.expect("propose");
    }
    for n in nodes.values() {
        let m = n.status();
        assert_eq!(
            (m.term, m.leader),
            (term, Some(NodeId(leader))),
            "an election happened while the state machine was slow"
        );
    }
    for n in nodes.values() {
        n.shutdown().await.expect("shutdown");
    }
}

/// Bug: at start the newest snapshot file won, even one that was received
/// or made but never recorded in the log (a crash came between), and the
/// state machine was restored from it. The log's own record decides now,
/// and unrecorded files are removed.
#[cfg(feature = "sled")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_starts_from_the_snapshot_the_log_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Config {
        snapshot_threshold: 20,
        compaction_lag: 0,
        ..common::fast(1, StorageKind::Sled, dir.path().join("n1"))
    };
    let node = NodeBuilder::new(c.clone(), Strings::default())
        .initial_members([NodeId(1)])
        .build()
        .await
        .expect("start");
    node.wait_for(WAIT, |m| m.leader.is_some())
        .await
        .expect("leader");
    for i in 0..50 {
        node.propose(format!("k{i}").into_bytes())
            .await
            .expect("write");
    }
    let m = node
        .wait_for(WAIT, |m| m.snapshot_made_at.0 > 0)
        .await
        .expect("a snapshot");
    node.shutdown().await.expect("shutdown");

    // A newer snapshot file nobody recorded, holding other state.
    let meta = dengine::core::SnapshotMeta {
        last_index: dengine::LogIndex(m.snapshot_made_at.0 + 1_000),
        last_term: m.term,
        conf_state: m.membership.clone(),
    };
    let fake = dengine::snapshot::SnapshotData::from_bytes(meta.clone(), b"intruder\n");
    let mut bytes = Vec::new();
    for f in fake.frames() {
        bytes.extend_from_slice(&f.expect("frame"));
    }
    let planted = dir.path().join("n1/snapshots").join(format!(
        "snap-{:020}-{:020}.snap",
        meta.last_index.0, meta.last_term.0
    ));
    std::fs::write(&planted, bytes).expect("plant");

    let node = NodeBuilder::new(c, Strings::default())
        .build()
        .await
        .expect("restart");
    node.wait_for(WAIT, |m| m.leader.is_some())
        .await
        .expect("leader");
    let keys = node
        .read(ReadPolicy::Linearizable, |s: &Strings| s.0.clone())
        .await
        .expect("read");
    assert!(
        !keys.contains("intruder"),
        "restored from an unrecorded file"
    );
    assert_eq!(keys.len(), 50);
    assert!(!planted.exists(), "the unrecorded file was removed");
    node.shutdown().await.expect("shutdown");
}

/// A counter whose snapshot view waits at a gate the test opens.
struct Gated {
    count: u64,
    gate: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

impl StateMachine for Gated {
    type Response = u64;
    fn apply(&mut self, _: dengine::EntryId, _: &[u8]) -> u64 {
        self.count += 1;
        self.count
    }
    fn snapshot(&mut self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        common::save_u64(out, self.count)
    }
    fn snapshot_view(&mut self) -> Option<dengine::SnapshotView> {
        let (count, gate) = (self.count, self.gate.clone());
        Some(Box::new(move |out: &mut dyn std::io::Write| {
            let (open, opened) = &*gate;
            let open = open.lock().unwrap_or_else(|e| e.into_inner());
            let (_open, _) = opened
                .wait_timeout_while(open, WAIT, |open| !*open)
                .unwrap_or_else(|e| e.into_inner());
            common::save_u64(out, count)
        }))
    }
    fn restore(&mut self, input: &mut dyn std::io::Read) -> std::io::Result<()> {
        self.count = common::load_u64(input)?;
        Ok(())
    }
}

/// Issue 8: writing a snapshot stopped every apply and read for its whole
/// length (the state machine was written from on the apply worker). A
/// state machine that offers a view has it written on a thread of its
/// own: here the view waits at a gate, and the node goes on applying,
/// answering writes and reads, until the gate opens and the snapshot at
/// the view's index is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_goes_on_while_a_snapshot_is_written_from_a_view() {
    let gate = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let c = Config {
        snapshot_threshold: 10,
        compaction_lag: 0,
        ..config(1)
    };
    let sm = Gated {
        count: 0,
        gate: gate.clone(),
    };
    let node = common::lone_leader(NodeBuilder::new(c, sm)).await;
    // Past the threshold: the snapshot is asked for, and its view waits.
    let mut last = LogIndex::ZERO;
    for _ in 0..12 {
        last = node.propose(vec![1]).await.expect("propose").index;
    }
    let first = Instant::now();
    for _ in 0..40 {
        tokio::time::timeout(WAIT, node.propose(vec![1]))
            .await
            .expect("a write waited for the snapshot")
            .expect("propose");
    }
    let count = tokio::time::timeout(
        WAIT,
        node.read(ReadPolicy::Linearizable, |sm: &Gated| sm.count),
    )
    .await
    .expect("a read waited for the snapshot")
    .expect("read");
    assert_eq!(count, 52);
    let m = node.status();
    assert_eq!(
        m.snapshot_made_at,
        LogIndex::ZERO,
        "the view was still at its gate, {:?} after the writes began",
        first.elapsed()
    );
    {
        let (open, opened) = &*gate;
        *open.lock().expect("gate") = true;
        opened.notify_all();
    }
    let m = node
        .wait_for(WAIT, |m| m.snapshot_made_at > LogIndex::ZERO)
        .await
        .expect("the snapshot is made once the gate opens");
    assert!(
        m.snapshot_made_at >= LogIndex(10) && m.snapshot_made_at <= last,
        "made at {:?}: not where the view was taken, at most {last:?}",
        m.snapshot_made_at
    );
    assert_eq!(m.snapshot_failures, 0);
    node.shutdown().await.expect("shutdown");
}

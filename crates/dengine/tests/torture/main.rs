//! The runtime torture test: real `Node`s in one process under faults
//! drawn from a seed, their client history checked for linearizability and
//! their replicas compared at the end.
//!
//! Faults: message loss, duplication and delay; nodes cut off and healed;
//! snapshot transfers that break off; crashes that lose every write not
//! yet synced, then restarts from what was synced; slow and failing
//! fsyncs; a panic in one replica's state machine; membership changes
//! (a fresh node added as learner then voter, a voter removed) and
//! leadership transfers. Snapshots every few dozen entries, so snapshots
//! and installs happen under load. Many concurrent clients write and read
//! with every read policy. On odd seeds the registers keep their state
//! durably and checkpoint (`StateMachine::checkpoint`), so the log is
//! compacted without snapshot data and a lagging node gets a snapshot made
//! for it; a crash loses what they held in memory.
//!
//! Checks: the history of writes and linearizable / lease reads is
//! linearizable (dengine-sim's checker, unknown outcomes allowed); no
//! request waits past a watchdog; no node stops for a reason other than an
//! injected fault; snapshots are made and never fail; at the end, with the
//! faults healed, every member applies a last write and all replicas hold
//! the same registers.
//!
//! The faults are drawn from the seed, but a real runtime's threads are
//! scheduled by the OS: a seed names a fault schedule, not one exact run.
//!
//! `cargo xtask ci` runs a few short seeds; `cargo xtask torture --seeds N`
//! runs more (settings through `DENGINE_TORTURE_*`, see [`Settings`]).

#![cfg(feature = "sled")]

mod net;
mod sm;
mod store;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dengine::core::NodeId;
use dengine::{Config, Error, Node, NodeBuilder, ReadPolicy, StorageKind};
use dengine_sim::SimRng;
use dengine_sim::linearizability::{CheckResult, KvInput, KvModel, KvOutput, Operation, check};

use net::{FaultNet, LinkFaults};
use sm::{PANIC_KEY, Registers, SmDisk, command};
use store::{CrashStore, DiskFaults, Durable};

/// What to run, from `DENGINE_TORTURE_SEEDS`, `_START`, `_SECONDS`, `_NODES`.
struct Settings {
    seeds: u64,
    start: u64,
    seconds: u64,
    nodes: u64,
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Settings {
    fn from_env() -> Settings {
        Settings {
            seeds: env("DENGINE_TORTURE_SEEDS", 3),
            start: env("DENGINE_TORTURE_START", 1),
            seconds: env("DENGINE_TORTURE_SECONDS", 4),
            nodes: env("DENGINE_TORTURE_NODES", 3),
        }
    }
}

const KEYS: u64 = 24;
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1_000);
/// A request that neither answers nor times out by then is a bug.
const WATCHDOG: Duration = Duration::from_secs(4);
const CLIENTS: u64 = 8;

#[test]
fn the_runtime_stays_linearizable_under_faults() {
    // The panics the harness injects are expected: keep them quiet.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let injected = info
            .payload()
            .downcast_ref::<&str>()
            .is_some_and(|m| m.starts_with("torture: injected"));
        if !injected {
            default_hook(info);
        }
    }));
    let s = Settings::from_env();
    let mut failed = Vec::new();
    for seed in s.start..s.start + s.seeds {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let report = rt.block_on(run_seed(seed, &s));
        rt.shutdown_timeout(Duration::from_secs(5));
        println!("torture: seed {seed}: {report}");
        if !report.violations.is_empty() {
            println!(
                "torture: seed {seed} FAILED: {:#?}\n  rerun: cargo xtask torture --start {seed} --seeds 1 --nodes {} --seconds {}",
                report.violations, s.nodes, s.seconds
            );
            failed.push(seed);
        }
    }
    assert!(failed.is_empty(), "torture: seeds {failed:?} failed");
}

/// What one seed did and found.
#[derive(Default)]
struct Report {
    writes_ok: u64,
    writes_unknown: u64,
    reads: u64,
    faults: BTreeMap<&'static str, u64>,
    snapshots_made: u64,
    snapshots_installed: u64,
    violations: Vec<String>,
    /// The registers kept their state durably and checkpointed.
    durable_sm: bool,
}

impl Report {
    /// Counts a node's snapshots (before it crashes, and at the end); a
    /// failed one is a violation.
    fn count_snapshots(&mut self, id: u64, m: &dengine::Metrics) {
        self.snapshots_made += u64::from(m.snapshot_made_at.0 > 0);
        self.snapshots_installed += m.snapshots_installed;
        if m.snapshot_failures > 0 {
            self.violations.push(format!(
                "node {id}: {} snapshots failed, the last because {:?}",
                m.snapshot_failures, m.last_snapshot_failure
            ));
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let steps: u64 = self.faults.values().sum();
        write!(
            f,
            "{}; {} writes acknowledged, {} of unknown outcome, {} reads checked; {} fault steps {:?}; {} snapshots made, {} installed; {} violations",
            if self.durable_sm {
                "registers kept durably, checkpointed"
            } else {
                "registers in memory"
            },
            self.writes_ok,
            self.writes_unknown,
            self.reads,
            steps,
            self.faults,
            self.snapshots_made,
            self.snapshots_installed,
            self.violations.len()
        )
    }
}

/// One node of the cluster, running or crashed.
struct Member {
    faults: Arc<DiskFaults>,
    store: Arc<CrashStore>,
    trigger: Arc<AtomicBool>,
    /// The registers' own durable state, on seeds where they keep one.
    sm_disk: Option<Arc<SmDisk>>,
    node: Option<Node<Registers>>,
}

struct Cluster {
    dir: PathBuf,
    net: Arc<FaultNet>,
    members: BTreeMap<u64, Member>,
    next_id: u64,
    /// Also says whether the registers keep their state durably.
    report: Report,
}

fn config(id: u64, dir: &Path) -> Config {
    Config {
        node_id: id,
        // A disk kind, so writes go through the disk thread and snapshots
        // to files; the log itself is the crash store given to the node.
        storage: StorageKind::Sled,
        data_dir: dir.join(format!("n{id}")),
        tick_ms: 10,
        election_ticks: 10,
        heartbeat_ticks: 2,
        lease_drift_ticks: 2,
        snapshot_threshold: 48,
        compaction_lag: 8,
        request_timeout_ms: REQUEST_TIMEOUT.as_millis() as u64,
        ..Config::default()
    }
}

impl Cluster {
    async fn start(
        &mut self,
        id: u64,
        durable: Option<(Durable, Option<Arc<SmDisk>>)>,
        voters: &[u64],
    ) {
        let faults = Arc::new(DiskFaults::default());
        let (store, sm_disk) = match durable {
            Some((d, sm_disk)) => (CrashStore::recover(d, faults.clone()), sm_disk),
            None => (
                CrashStore::new(faults.clone()),
                self.report.durable_sm.then(Arc::default),
            ),
        };
        let store = Arc::new(store);
        let trigger = Arc::new(AtomicBool::new(false));
        let registers = Registers::new(trigger.clone(), sm_disk.clone());
        let mut builder = NodeBuilder::new(config(id, &self.dir), registers)
            .store(store.clone())
            .transport(self.net.link(NodeId(id)));
        if !voters.is_empty() {
            builder = builder.initial_members(voters.iter().map(|&v| NodeId(v)));
        }
        match builder.build().await {
            Ok(node) => {
                self.net.attach(node.clone());
                self.members.insert(
                    id,
                    Member {
                        faults,
                        store,
                        trigger,
                        sm_disk,
                        node: Some(node),
                    },
                );
            }
            Err(e) => self
                .report
                .violations
                .push(format!("node {id} failed to start: {e}")),
        }
    }

    /// Crashes node `id` (losing what it had not synced) and restarts it.
    async fn crash_and_restart(&mut self, id: u64) {
        let Some(m) = self.members.get_mut(&id) else {
            return;
        };
        let durable = m.store.crash();
        let sm_disk = m.sm_disk.as_ref().map(|d| {
            d.crash();
            d.recover()
        });
        if let Some(node) = m.node.take() {
            self.report.count_snapshots(id, &node.status());
            self.net.detach(NodeId(id));
            let _ = node.shutdown().await;
        }
        self.members.remove(&id);
        self.start(id, Some((durable, sm_disk)), &[]).await;
    }

    fn live(&self) -> Vec<(u64, Node<Registers>)> {
        self.members
            .iter()
            .filter_map(|(&id, m)| m.node.clone().map(|n| (id, n)))
            .collect()
    }

    fn leader(&self) -> Option<Node<Registers>> {
        let live = self.live();
        live.iter().find_map(|(_, n)| {
            let l = n.status().leader?;
            live.iter()
                .find(|(id, _)| *id == l.0)
                .map(|(_, n)| n.clone())
        })
    }

    /// Restarts nodes that stopped, checking that only an injected fault
    /// stopped them.
    async fn restart_stopped(&mut self) {
        let stopped: Vec<(u64, String)> = self
            .live()
            .into_iter()
            .filter_map(|(id, n)| n.status().fatal.map(|f| (id, f)))
            .collect();
        for (id, why) in stopped {
            if !why.contains("injected") {
                self.report
                    .violations
                    .push(format!("node {id} stopped for no injected fault: {why}"));
            }
            self.crash_and_restart(id).await;
        }
    }

    async fn nemesis_step(&mut self, rng: &mut SimRng) {
        let live = self.live();
        let Some((victim, victim_node)) = rng.pick(&live).cloned() else {
            return;
        };
        let kind = rng.below(10);
        let name = match kind {
            0 | 1 => {
                self.net.isolate(NodeId(victim));
                "isolate"
            }
            2 => {
                self.net.heal_all();
                "heal"
            }
            3 => {
                self.crash_and_restart(victim).await;
                "crash"
            }
            4 => {
                if let Some(leader) = self.leader() {
                    let voters: Vec<NodeId> =
                        leader.status().membership.voters.into_iter().collect();
                    if let Some(&to) = rng.pick(&voters) {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(2),
                            leader.transfer_leadership(to),
                        )
                        .await;
                    }
                }
                "transfer"
            }
            5 => {
                self.membership_change(rng).await;
                "membership"
            }
            6 => {
                let m = &self.members[&victim];
                m.faults.failing_syncs.store(1, Ordering::SeqCst);
                "fsync fails"
            }
            7 => {
                let m = &self.members[&victim];
                let slow = !m.faults.slow.load(Ordering::Relaxed);
                m.faults.slow.store(slow, Ordering::Relaxed);
                "slow disk"
            }
            8 => {
                self.net.set_faults(LinkFaults {
                    loss: rng.unit() * 0.1,
                    duplicate: rng.unit() * 0.05,
                    delay: rng.unit() * 0.2,
                    max_delay_ms: rng.range(2, 40),
                    snapshot_failure: rng.unit() * 0.5,
                });
                "link faults"
            }
            _ => {
                // One replica's state machine panics on the next marker.
                if let Some(leader) = self.leader() {
                    self.members[&victim].trigger.store(true, Ordering::SeqCst);
                    let _ = victim_node; // the node that will stop
                    let _ = leader.propose(command(PANIC_KEY, 0)).await;
                }
                "apply panics"
            }
        };
        *self.report.faults.entry(name).or_default() += 1;
    }

    /// Adds a fresh node (learner, then voter) when there are few voters,
    /// else removes a voter other than the leader.
    async fn membership_change(&mut self, rng: &mut SimRng) {
        let Some(leader) = self.leader() else { return };
        let conf = leader.status().membership;
        let wait = Duration::from_secs(3);
        if conf.voters.len() <= 3 {
            let id = self.next_id;
            self.next_id += 1;
            self.start(id, None, &[]).await;
            let added = tokio::time::timeout(wait, leader.add_learner(NodeId(id))).await;
            if matches!(added, Ok(Ok(_))) {
                let _ = tokio::time::timeout(wait, leader.add_voter(NodeId(id))).await;
            }
        } else {
            let others: Vec<NodeId> = conf
                .voters
                .iter()
                .copied()
                .filter(|&v| v != leader.id())
                .collect();
            if let Some(&gone) = rng.pick(&others) {
                let removed = tokio::time::timeout(wait, leader.remove_node(gone)).await;
                if matches!(removed, Ok(Ok(_)))
                    && let Some(m) = self.members.remove(&gone.0)
                    && let Some(node) = m.node
                {
                    self.net.detach(gone);
                    let _ = node.shutdown().await;
                }
            }
        }
    }
}

/// The history, shared by the clients.
type History = Arc<Mutex<Vec<Operation<KvInput, KvOutput>>>>;

/// Whether a failed write certainly did not take effect.
fn not_applied(e: &Error) -> bool {
    matches!(
        e,
        Error::NotLeader { .. }
            | Error::Overloaded
            | Error::Dropped(_)
            | Error::TransferInProgress
            | Error::Invalid(_)
    )
}

/// What the clients share with the harness.
struct Shared {
    /// The nodes clients may send to.
    nodes: Mutex<Vec<Node<Registers>>>,
    history: History,
    stop: AtomicBool,
    /// The next value to write (every write is unique).
    values: AtomicU64,
    /// Requests that waited past the watchdog.
    stuck: Mutex<Vec<String>>,
    epoch: Instant,
}

async fn client(id: u64, mut rng: SimRng, shared: Arc<Shared>) {
    let Shared {
        nodes,
        history,
        stop,
        values,
        stuck,
        epoch,
    } = &*shared;
    let epoch = *epoch;
    let now = move || epoch.elapsed().as_nanos() as u64;
    while !stop.load(Ordering::Relaxed) {
        let candidates = nodes.lock().expect("lock").clone();
        // The leader if anyone knows it, else anyone (who may refuse).
        let target = candidates
            .iter()
            .find(|n| {
                let m = n.status();
                m.leader == Some(n.id())
            })
            .cloned()
            .or_else(|| rng.pick(&candidates).cloned());
        let Some(node) = target else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let key = rng.below(KEYS);
        let call = now();
        if rng.chance(0.5) {
            let value = values.fetch_add(1, Ordering::Relaxed);
            let out = tokio::time::timeout(WATCHDOG, node.propose(command(key, value))).await;
            let output = match out {
                Err(_) => {
                    stuck
                        .lock()
                        .expect("lock")
                        .push(format!("client {id}: a write waited past {WATCHDOG:?}"));
                    None
                }
                Ok(Ok(_)) => Some(KvOutput::Ok),
                Ok(Err(e)) if not_applied(&e) => continue,
                Ok(Err(_)) => None,
            };
            history.lock().expect("lock").push(Operation {
                client: id,
                input: KvInput::Put { key, value },
                call,
                output,
                ret: now(),
            });
        } else {
            let policy = if rng.chance(0.5) {
                ReadPolicy::Linearizable
            } else {
                ReadPolicy::Lease
            };
            let read = node.read(policy, move |r: &Registers| r.values.get(&key).copied());
            match tokio::time::timeout(WATCHDOG, read).await {
                Err(_) => stuck
                    .lock()
                    .expect("lock")
                    .push(format!("client {id}: a read waited past {WATCHDOG:?}")),
                Ok(Ok(v)) => history.lock().expect("lock").push(Operation {
                    client: id,
                    input: KvInput::Get { key },
                    call,
                    output: Some(KvOutput::Value(v)),
                    ret: now(),
                }),
                Ok(Err(_)) => {}
            }
        }
        // A little think time keeps the history small enough to check.
        tokio::time::sleep(Duration::from_micros(rng.range(200, 3_000))).await;
    }
}

async fn run_seed(seed: u64, s: &Settings) -> Report {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = SimRng::new(seed);
    let net = FaultNet::new(rng.next_u64());
    let mut cluster = Cluster {
        dir: dir.path().to_path_buf(),
        net,
        members: BTreeMap::new(),
        next_id: s.nodes + 1,
        report: Report {
            // Odd seeds: registers that keep their state and checkpoint.
            durable_sm: seed % 2 == 1,
            ..Report::default()
        },
    };
    let voters: Vec<u64> = (1..=s.nodes).collect();
    for &id in &voters {
        cluster.start(id, None, &voters).await;
    }

    let shared = Arc::new(Shared {
        nodes: Mutex::default(),
        history: History::default(),
        stop: AtomicBool::new(false),
        values: AtomicU64::new(1),
        stuck: Mutex::default(),
        epoch: Instant::now(),
    });
    let publish = |c: &Cluster| {
        *shared.nodes.lock().expect("lock") = c.live().into_iter().map(|(_, n)| n).collect();
    };
    publish(&cluster);
    let mut clients = Vec::new();
    for id in 0..CLIENTS {
        clients.push(tokio::spawn(client(id, rng.fork(), shared.clone())));
    }

    // The fault phase.
    let until = Instant::now() + Duration::from_secs(s.seconds);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.range(50, 250))).await;
        cluster.nemesis_step(&mut rng).await;
        cluster.restart_stopped().await;
        publish(&cluster);
    }

    // Faults end: everything heals, stopped nodes come back.
    cluster.net.heal_all();
    cluster.net.set_faults(LinkFaults::default());
    for m in cluster.members.values() {
        m.faults.slow.store(false, Ordering::Relaxed);
        m.faults.failing_syncs.store(0, Ordering::Relaxed);
    }
    cluster.restart_stopped().await;
    publish(&cluster);
    tokio::time::sleep(Duration::from_millis(500)).await;
    shared.stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    cluster.restart_stopped().await;
    converge(&mut cluster).await;

    let mut report = std::mem::take(&mut cluster.report);
    report
        .violations
        .extend(shared.stuck.lock().expect("lock").drain(..));
    let history = std::mem::take(&mut *shared.history.lock().expect("lock"));
    for op in &history {
        match (&op.input, &op.output) {
            (KvInput::Put { .. }, Some(_)) => report.writes_ok += 1,
            (KvInput::Put { .. }, None) => report.writes_unknown += 1,
            (KvInput::Get { .. }, _) => report.reads += 1,
        }
    }
    match check(&KvModel, history, 50_000_000) {
        CheckResult::Ok => {}
        CheckResult::Unknown => {
            println!("torture: seed {seed}: the linearizability check ran out of budget")
        }
        CheckResult::Illegal { description, .. } => report
            .violations
            .push(format!("not linearizable: {description}")),
    }
    for (_, m) in std::mem::take(&mut cluster.members) {
        if let Some(node) = m.node {
            let _ = node.shutdown().await;
        }
    }
    report
}

/// With faults over: a last write reaches every member of the final
/// membership, and every replica then holds the same registers.
async fn converge(cluster: &mut Cluster) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (leader, last) = loop {
        if let Some(leader) = cluster.leader()
            && let Ok(p) = leader.propose(command(0, 0)).await
        {
            break (leader, p.index);
        }
        if Instant::now() > deadline {
            let states: Vec<String> = cluster
                .live()
                .iter()
                .map(|(id, n)| {
                    let m = n.status();
                    format!(
                        "node {id}: {:?} term {} leader {:?} commit {} applied {} voters {:?} learners {:?} fatal {:?}",
                        m.role, m.term, m.leader, m.commit, m.applied, m.membership.voters, m.membership.learners, m.fatal
                    )
                })
                .collect();
            cluster.report.violations.push(format!(
                "no leader took a write after the faults healed: {states:#?}"
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let conf = leader.status().membership;
    let mut states = BTreeMap::new();
    for (id, node) in cluster.live() {
        let member = conf.voters.contains(&NodeId(id)) || conf.learners.contains(&NodeId(id));
        if !member {
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if node.wait_for(left, |m| m.applied >= last).await.is_err() {
            cluster.report.violations.push(format!(
                "node {id} did not apply the last write at {last}: {:?}",
                node.status()
            ));
            continue;
        }
        match node
            .read(ReadPolicy::Stale, |r: &Registers| r.values.clone())
            .await
        {
            Ok(values) => {
                states.insert(id, values);
            }
            Err(e) => cluster
                .report
                .violations
                .push(format!("node {id} could not be read: {e}")),
        }
        cluster.report.count_snapshots(id, &node.status());
    }
    let mut distinct: Vec<&BTreeMap<u64, u64>> = states.values().collect();
    distinct.dedup();
    if distinct.len() > 1 {
        cluster
            .report
            .violations
            .push(format!("replicas differ at the end: {states:?}"));
    }
    if cluster.report.snapshots_made == 0 {
        cluster
            .report
            .violations
            .push("no snapshot was made under load".into());
    }
}

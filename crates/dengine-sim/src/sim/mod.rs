//! The simulation: nodes, network, disks and clients in one thread, in
//! virtual time, every choice drawn from one seeded generator.

mod client;
mod leader_chase;
mod nemesis;
mod node;

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use dengine_core::{Config, LogIndex, Message, MessageBody, NodeId, Role};

use crate::disk::SimDisk;
use crate::faults::FaultProfile;
use crate::invariants::{Invariants, Violation};
use crate::linearizability::{self, CheckResult, Model, Operation};
use crate::rng::SimRng;
use crate::state_machine::{KvWorkload, Workload};
use client::Client;
use leader_chase::LeaderChase;
use node::SimNode;

/// Virtual length of one tick of a node running at the nominal rate.
pub const TICK_US: u64 = 10_000;

/// What to run.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// The seed every choice derives from.
    pub seed: u64,
    /// Initial voters (3 or 5 usually).
    pub nodes: usize,
    /// Events processed while faults are injected; the liveness phase
    /// follows.
    pub steps: u64,
    /// Record a readable trace.
    pub trace: bool,
    /// Faults; `None` derives them from the seed.
    pub faults: Option<FaultProfile>,
    /// Concurrent clients.
    pub clients: usize,
    /// After faults stop, a leader must be elected and writes complete
    /// within this much virtual time.
    pub liveness_us: u64,
    /// Search budget of the linearizability checker per key.
    pub check_budget: u64,
    /// Stop the run at the step that broke a safety property (the default):
    /// a broken change then costs a fraction of a second per failing seed
    /// instead of a whole run, and the report and trace end where it broke.
    /// `false` runs on to the end, to see what followed.
    pub stop_at_first_violation: bool,
}

impl SimOptions {
    /// Defaults for `seed`: 3 nodes, 100,000 fault-phase steps.
    pub fn new(seed: u64) -> SimOptions {
        SimOptions {
            seed,
            nodes: 3,
            steps: 100_000,
            trace: false,
            faults: None,
            clients: 4,
            liveness_us: 20_000_000,
            check_budget: 20_000_000,
            stop_at_first_violation: true,
        }
    }
}

/// Fault injection points for test code: deliberately broken nodes live in
/// tests, never in the shipped core.
pub trait Hooks {
    /// Sees (and may change) every message a node sends.
    fn on_send(&mut self, _msg: &mut Message) {}
    /// Whether nodes send the messages of a persist batch before it is
    /// durable (a broken node that acknowledges early).
    fn ack_before_durable(&self) -> bool {
        false
    }
    /// Whether a node whose state machine keeps its state durably tells
    /// the core where it stood when it restarts
    /// (`RawNode::state_machine_restored`); a broken node does not.
    fn tell_core_where_state_machine_stood(&self) -> bool {
        true
    }
}

/// No hooks: the real protocol.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHooks;
impl Hooks for NoHooks {}

/// The outcome of one run.
#[derive(Clone, Debug)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// The faults of the run.
    pub profile: FaultProfile,
    /// Events processed.
    pub steps: u64,
    /// Virtual time at the end, microseconds.
    pub virtual_us: u64,
    /// Client operations that completed, failed for sure, or whose outcome
    /// is unknown.
    pub ops_ok: u64,
    /// See `ops_ok`.
    pub ops_failed: u64,
    /// See `ops_ok`.
    pub ops_unknown: u64,
    /// Safety and liveness violations.
    pub violations: Vec<Violation>,
    /// The linearizability verdict on the client history.
    pub linearizability: CheckResult,
    /// The readable trace, if asked for.
    pub trace: Vec<String>,
    /// Each node's state at the end, one line per node.
    pub final_state: Vec<String>,
    /// The run stopped at its first safety violation instead of running
    /// to its end (see [`SimOptions::stop_at_first_violation`]).
    pub stopped_at_violation: bool,
}

impl SimReport {
    /// Whether the run found nothing wrong.
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.linearizability == CheckResult::Ok
    }
}

/// A message in flight with the snapshot data travelling beside it.
#[derive(Clone, Debug)]
pub(crate) struct Envelope {
    pub(crate) msg: Message,
    pub(crate) snapshot: Option<Vec<u8>>,
}

#[derive(Debug)]
pub(crate) enum Event {
    Tick(NodeId, u64),
    Deliver(Envelope),
    DiskDone(NodeId, u64),
    Client(usize),
    ClientTimeout(usize, u64),
    Nemesis,
    /// The transport tells the sender whether a snapshot got through.
    SnapshotStatus(NodeId, NodeId, bool),
    /// The leader chase looks at a leader of a term, a number of times
    /// (see `leader_chase`).
    ChaseLeader(NodeId, dengine_core::Term, u32),
    /// A node the leader chase held apart rejoins (a numbered hold).
    ChaseRejoin(NodeId, u64),
    /// The leader chase looks at a leader of a term that committed an
    /// index it has not synced.
    ChaseUnsynced(NodeId, dengine_core::Term, LogIndex),
    /// The clients of the old leader of a lease race look at it (so many
    /// more times).
    LeaseRace(NodeId, u32),
    /// The runtime's timer for held commit notices fires (node, epoch).
    CommitNotices(NodeId, u64),
}

struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap, the earliest event goes first.
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

type Hist<W> =
    Operation<<<W as Workload>::Model as Model>::Input, <<W as Workload>::Model as Model>::Output>;

/// One simulated cluster run.
pub(crate) struct Sim<'h, W: Workload> {
    pub(crate) now: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    pub(crate) rng: SimRng,
    pub(crate) opts: SimOptions,
    pub(crate) profile: FaultProfile,
    /// The profile as drawn, for the report (`profile` calms down when
    /// faults end).
    pub(crate) drawn_profile: FaultProfile,
    pub(crate) workload: W,
    pub(crate) hooks: &'h mut dyn Hooks,
    pub(crate) nodes: BTreeMap<NodeId, SimNode<W::Sm>>,
    pub(crate) next_node_id: u64,
    pub(crate) cut: BTreeSet<(NodeId, NodeId)>,
    pub(crate) clients: Vec<Client>,
    pub(crate) history: Vec<Hist<W>>,
    /// Ops that surely did not take effect; left out of the check.
    pub(crate) failed_ops: BTreeSet<usize>,
    /// Writes acknowledged to a client: (index, op id).
    pub(crate) acked_writes: Vec<(LogIndex, u64)>,
    /// The op id of the command applied at each index.
    pub(crate) applied_ops: BTreeMap<LogIndex, u64>,
    /// Query bytes of reads in flight, by op id.
    pub(crate) read_queries: BTreeMap<u64, Vec<u8>>,
    /// Nodes added recently, not yet seen in the membership: id → when.
    pub(crate) joining: BTreeMap<NodeId, u64>,
    /// The latest delivery time scheduled on each link.
    link_clock: BTreeMap<(NodeId, NodeId), u64>,
    pub(crate) inv: Invariants,
    chase: LeaderChase,
    pub(crate) trace: Vec<String>,
    pub(crate) faults_active: bool,
    pub(crate) faults_ended_at: Option<u64>,
    pub(crate) writes_after_faults: u64,
    pub(crate) steps: u64,
    stopped_at_violation: bool,
}

/// Runs the key-value workload.
pub fn run_kv(opts: &SimOptions) -> SimReport {
    run(opts, KvWorkload::default(), &mut NoHooks)
}

/// Runs one simulation of `workload` under `opts`.
pub fn run<W: Workload>(opts: &SimOptions, workload: W, hooks: &mut dyn Hooks) -> SimReport {
    let mut rng = SimRng::new(opts.seed);
    let profile = match &opts.faults {
        Some(p) => p.clone(),
        None => FaultProfile::from_seed(&mut rng.fork()),
    };
    let mut sim = Sim {
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        rng,
        opts: opts.clone(),
        drawn_profile: profile.clone(),
        profile,
        workload,
        hooks,
        nodes: BTreeMap::new(),
        next_node_id: opts.nodes as u64 + 1,
        cut: BTreeSet::new(),
        clients: Vec::new(),
        history: Vec::new(),
        failed_ops: BTreeSet::new(),
        acked_writes: Vec::new(),
        applied_ops: BTreeMap::new(),
        read_queries: BTreeMap::new(),
        joining: BTreeMap::new(),
        link_clock: BTreeMap::new(),
        inv: Invariants::default(),
        chase: LeaderChase::default(),
        trace: Vec::new(),
        faults_active: true,
        faults_ended_at: None,
        writes_after_faults: 0,
        steps: 0,
        stopped_at_violation: false,
    };
    sim.run();
    sim.report()
}

impl<W: Workload> Sim<'_, W> {
    pub(crate) fn schedule(&mut self, delay: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at: self.now + delay,
            seq: self.seq,
            event,
        });
    }

    pub(crate) fn log(&mut self, line: impl FnOnce() -> String) {
        if self.opts.trace {
            let l = line();
            self.trace.push(format!("{:>12} {l}", self.now));
        }
    }

    pub(crate) fn node_config(&mut self, id: NodeId) -> Config {
        let mut c = Config::new(id);
        c.seed = self.rng.next_u64();
        c.election_tick = 10;
        c.heartbeat_tick = 1;
        c.max_inflight_msgs = 16;
        c.max_msg_bytes = self.profile.max_msg_bytes;
        c.snapshot_threshold = self.profile.snapshot_threshold;
        c.compaction_lag = self.profile.compaction_lag;
        c.lease_reads = true;
        c.lease_drift_ticks = 2;
        // Both ways of telling followers the commit: at once, or held back.
        c.defer_commit_notices = self.rng.next_u64().is_multiple_of(2);
        c
    }

    fn run(&mut self) {
        let voters: Vec<NodeId> = (1..=self.opts.nodes as u64).map(NodeId).collect();
        for &id in &voters {
            self.start_node(id, SimDisk::bootstrap(&voters));
        }
        for c in 0..self.opts.clients {
            self.clients
                .push(Client::new(NodeId(1 + c as u64 % self.opts.nodes as u64)));
            let d = self.rng.range(0, 50_000);
            self.schedule(d, Event::Client(c));
        }
        let d = self.profile.nemesis_interval_us;
        self.schedule(d, Event::Nemesis);
        let mut liveness_deadline = u64::MAX;
        while let Some(s) = self.queue.pop() {
            self.now = s.at;
            self.steps += 1;
            if self.faults_active && self.steps >= self.opts.steps {
                self.end_faults();
                liveness_deadline = self.now + self.opts.liveness_us;
            }
            if self.now > liveness_deadline {
                break;
            }
            self.dispatch(s.event);
            if self.opts.stop_at_first_violation && !self.inv.violations.is_empty() {
                self.stop_at_violation();
                return;
            }
            if self.faults_ended_at.is_some() && self.live_and_converged() {
                break;
            }
        }
        self.final_checks();
    }

    /// Ends the run at the step that broke a property. The end-of-run
    /// checks are skipped: writes acknowledged but not yet applied everywhere
    /// would read as lost, and liveness means nothing in a broken cluster.
    fn stop_at_violation(&mut self) {
        self.stopped_at_violation = true;
        let n = self.inv.violations.len();
        self.log(|| format!("STOP at the first violation ({n} found at this step)"));
        let lines: Vec<String> = self.inv.violations.iter().map(|v| v.to_string()).collect();
        for l in lines {
            self.log(|| format!("VIOLATION {l}"));
        }
    }

    fn dispatch(&mut self, e: Event) {
        match e {
            Event::Tick(id, epoch) => self.on_tick(id, epoch),
            Event::Deliver(env) => self.deliver(env),
            Event::DiskDone(id, epoch) => self.on_disk_done(id, epoch),
            Event::Client(c) => self.client_start(c),
            Event::ClientTimeout(c, op) => self.client_timeout(c, op),
            Event::Nemesis => self.nemesis(),
            Event::ChaseLeader(id, term, looks) => self.chase_leader_due(id, term, looks),
            Event::ChaseRejoin(id, hold) => self.chase_rejoin_due(id, hold),
            Event::ChaseUnsynced(id, term, commit) => self.chase_unsynced_due(id, term, commit),
            Event::LeaseRace(id, looks) => self.lease_race_due(id, looks),
            Event::CommitNotices(id, epoch) => self.on_commit_notices(id, epoch),
            Event::SnapshotStatus(from, to, ok) => {
                if let Some(raw) = self.nodes.get_mut(&from).and_then(|n| n.raw.as_mut()) {
                    let _ = raw.report_snapshot(to, ok);
                    self.drain(from);
                }
            }
        }
    }

    /// Sends `msg` through the simulated network.
    pub(crate) fn send(&mut self, mut msg: Message) {
        self.hooks.on_send(&mut msg);
        if self.opts.trace {
            let d = describe(&msg);
            let (from, to) = (msg.from, msg.to);
            self.log(|| format!("n{from} -> n{to} {d}"));
        }
        if let MessageBody::InstallSnapshot { .. } = &msg.body
            && let Some(n) = self.nodes.get_mut(&msg.from)
            && !n.snapshot_has_data
        {
            // The newest snapshot is a checkpoint: as the runtime does,
            // ask the core for one with the data, and fail this transfer
            // (the follower is offered the new snapshot once made).
            if !n.data_snapshot_wanted {
                n.data_snapshot_wanted = true;
                if let Some(raw) = n.raw.as_mut() {
                    raw.request_snapshot();
                }
            }
            let d = self.profile.delay_min_us;
            self.schedule(d, Event::SnapshotStatus(msg.from, msg.to, false));
            return;
        }
        let snapshot = match &msg.body {
            MessageBody::InstallSnapshot { meta } => self.nodes.get(&msg.from).map(|n| {
                let d = n.disk.state();
                debug_assert_eq!(d.snapshot.last_index, meta.last_index);
                d.snapshot_data.clone()
            }),
            _ => None,
        };
        let is_snapshot = snapshot.is_some();
        if self.cut.contains(&(msg.from, msg.to)) || self.rng.chance(self.profile.loss) {
            if is_snapshot {
                // The sending transport notices the stream failed.
                self.schedule(
                    self.profile.delay_max_us,
                    Event::SnapshotStatus(msg.from, msg.to, false),
                );
            }
            return;
        }
        let copies = if self.rng.chance(self.profile.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = self
                .rng
                .range(self.profile.delay_min_us, self.profile.delay_max_us);
            if self.rng.chance(self.profile.delay_tail) {
                delay += self.rng.range(50_000, 300_000);
            }
            let link = (msg.from, msg.to);
            if !self.rng.chance(self.profile.reorder) {
                // First in, first out on the link unless this one overtakes.
                let last = self.link_clock.get(&link).copied().unwrap_or(0);
                delay = delay.max(last.saturating_sub(self.now));
            }
            let at = self.now + delay;
            let e = self.link_clock.entry(link).or_insert(0);
            *e = (*e).max(at);
            let env = Envelope {
                msg: msg.clone(),
                snapshot: snapshot.clone(),
            };
            self.schedule(delay, Event::Deliver(env));
        }
    }

    fn deliver(&mut self, env: Envelope) {
        let Envelope { msg, snapshot } = env;
        let to = msg.to;
        if self.cut.contains(&(msg.from, to)) {
            if snapshot.is_some() {
                let d = self.profile.delay_max_us;
                self.schedule(d, Event::SnapshotStatus(msg.from, to, false));
            }
            return;
        }
        let Some(node) = self.nodes.get_mut(&to) else {
            return;
        };
        if node.raw.is_none() {
            if snapshot.is_some() {
                let d = self.profile.delay_max_us;
                self.schedule(d, Event::SnapshotStatus(msg.from, to, false));
            }
            return;
        }
        let Some(raw) = node.raw.as_mut() else {
            return;
        };
        let mut snapshot_from = None;
        if let (MessageBody::InstallSnapshot { meta }, Some(data)) = (&msg.body, snapshot) {
            node.incoming.insert(meta.last_index, data);
            snapshot_from = Some(msg.from);
        }
        let from = msg.from;
        let term = msg.term;
        let is_append_ack = matches!(msg.body, MessageBody::AppendEntriesResponse { .. });
        let d = self.opts.trace.then(|| describe(&msg));
        let res = raw.step(msg);
        if let Some(f) = snapshot_from {
            let d = self
                .rng
                .range(self.profile.delay_min_us, self.profile.delay_max_us);
            self.schedule(d, Event::SnapshotStatus(f, to, true));
        }
        if let Some(d) = d {
            self.log(|| format!("n{to} <- n{from} t{term} {d}"));
        }
        if let Err(e) = res {
            if e.is_fatal() {
                let at = self.now;
                self.inv.violations.push(Violation {
                    at,
                    property: "no fatal error",
                    detail: format!("node {to}: {e}"),
                });
            }
            self.log(|| format!("n{to} refused message from n{from}: {e}"));
        }
        self.drain(to);
        if is_append_ack {
            self.watch_figure8_window(to);
        }
    }

    fn on_tick(&mut self, id: NodeId, epoch: u64) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if node.epoch != epoch {
            return;
        }
        let Some(raw) = node.raw.as_mut() else {
            return;
        };
        let res = raw.tick();
        let next = (TICK_US as f64 * node.rate) as u64;
        if let Err(e) = res {
            self.log(|| format!("n{id} tick error: {e}"));
        }
        self.schedule(next.max(1), Event::Tick(id, epoch));
        self.drain(id);
    }

    /// Sends the commit notices node `id` holds back, as the runtime's
    /// timer does.
    fn on_commit_notices(&mut self, id: NodeId, epoch: u64) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if node.epoch != epoch {
            return;
        }
        node.notices_scheduled = false;
        let Some(raw) = node.raw.as_mut() else {
            return;
        };
        if let Err(e) = raw.send_commit_notices() {
            self.log(|| format!("n{id} commit notices error: {e}"));
        }
        self.drain(id);
    }

    /// Stops injecting faults: heals the network, restarts crashed members
    /// and starts the liveness phase.
    pub(crate) fn end_faults(&mut self) {
        if !self.faults_active {
            return;
        }
        self.faults_active = false;
        self.faults_ended_at = Some(self.now);
        self.cut.clear();
        self.forget_chase();
        self.profile.loss = 0.0;
        self.profile.duplicate = 0.0;
        self.profile.delay_tail = 0.0;
        let down: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.raw.is_none() && !n.removed)
            .map(|(&id, _)| id)
            .collect();
        for id in down {
            self.restart_node(id);
        }
        self.log(|| "faults end: network healed, crashed nodes restarted".to_string());
    }

    /// The current leader: a live node in the leader role with the highest term.
    pub(crate) fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|(&id, n)| n.raw.as_ref().map(|r| (id, r.status())))
            .filter(|(_, s)| s.soft_state.role == Role::Leader)
            .max_by_key(|(_, s)| s.hard_state.term)
            .map(|(id, _)| id)
    }

    /// Members of the newest membership known to the leader (or all nodes).
    pub(crate) fn members(&self) -> BTreeSet<NodeId> {
        match self.leader().and_then(|l| self.nodes[&l].raw.as_ref()) {
            Some(r) => r.status().conf_state.members(),
            None => self
                .nodes
                .iter()
                .filter(|(_, n)| !n.removed)
                .map(|(&id, _)| id)
                .collect(),
        }
    }

    fn live_and_converged(&self) -> bool {
        let Some(end) = self.faults_ended_at else {
            return false;
        };
        if self.writes_after_faults < 3 || self.now < end + 2_000_000 {
            return false;
        }
        self.converged().is_ok()
    }

    /// Whether every live member applied everything acknowledged.
    fn converged(&self) -> Result<(), String> {
        let Some(leader) = self.leader() else {
            return Err("no leader".to_string());
        };
        let max_acked = self
            .acked_writes
            .iter()
            .map(|(i, _)| *i)
            .max()
            .unwrap_or(LogIndex::ZERO);
        let members = self.members();
        for id in members {
            let Some(n) = self.nodes.get(&id) else {
                continue;
            };
            if n.raw.is_none() {
                return Err(format!("member {id} is down"));
            }
            if n.applied < max_acked {
                return Err(format!(
                    "member {id} applied {} < acknowledged {max_acked} (leader {leader})",
                    n.applied
                ));
            }
        }
        Ok(())
    }

    fn final_checks(&mut self) {
        let at = self.now;
        // No acknowledged write is lost: each is applied, as itself.
        let acked = std::mem::take(&mut self.acked_writes);
        for &(index, op) in &acked {
            match self.inv.applied_at(index) {
                Some(_) if self.applied_ops.get(&index) == Some(&op) => {}
                other => self.inv.violations.push(Violation {
                    at,
                    property: "acknowledged write lost",
                    detail: format!(
                        "op {op} acknowledged at index {index}, applied there: {other:?}"
                    ),
                }),
            }
        }
        self.acked_writes = acked;
        if self.faults_ended_at.is_some() {
            if let Err(why) = self.converged() {
                self.inv.violations.push(Violation {
                    at,
                    property: "liveness",
                    detail: format!(
                        "not converged {}us after faults ended: {why}",
                        self.opts.liveness_us
                    ),
                });
            } else if self.writes_after_faults == 0 {
                self.inv.violations.push(Violation {
                    at,
                    property: "liveness",
                    detail: "no write completed after faults ended".to_string(),
                });
            }
        }
    }

    fn report(mut self) -> SimReport {
        let model = self.workload.model();
        let history: Vec<Hist<W>> = std::mem::take(&mut self.history)
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !self.failed_ops.contains(i))
            .map(|(_, op)| op)
            .collect();
        let ops_unknown = history.iter().filter(|o| o.output.is_none()).count() as u64;
        let ops_ok = history.len() as u64 - ops_unknown;
        let linearizability = linearizability::check(&model, history, self.opts.check_budget);
        let final_state = self
            .nodes
            .iter()
            .map(|(id, n)| {
                let d = n.disk.state();
                let core = match &n.raw {
                    Some(r) => format!("{:?}", r.status()),
                    None if n.removed => "removed".to_string(),
                    None => "down".to_string(),
                };
                format!(
                    "n{id}: applied {} disk {}..={} queue {} | {core}",
                    n.applied,
                    d.first_index(),
                    d.last_index(),
                    n.disk_queue.len()
                )
            })
            .collect();
        SimReport {
            seed: self.opts.seed,
            profile: self.drawn_profile.clone(),
            steps: self.steps,
            virtual_us: self.now,
            ops_ok,
            ops_failed: self.failed_ops.len() as u64,
            ops_unknown,
            violations: self.inv.violations,
            linearizability,
            trace: self.trace,
            final_state,
            stopped_at_violation: self.stopped_at_violation,
        }
    }
}

/// A one-line description of a message for traces.
pub(crate) fn describe(m: &Message) -> String {
    match &m.body {
        MessageBody::RequestVote {
            pre_vote,
            last_log,
            transfer,
        } => format!(
            "{} last=({},{}){}",
            if *pre_vote { "PreVote" } else { "Vote" },
            last_log.index,
            last_log.term,
            if *transfer { " transfer" } else { "" }
        ),
        MessageBody::RequestVoteResponse { pre_vote, granted } => format!(
            "{} {}",
            if *pre_vote { "PreVoteResp" } else { "VoteResp" },
            if *granted { "granted" } else { "rejected" }
        ),
        MessageBody::AppendEntries {
            prev,
            entries,
            commit,
        } => format!(
            "App prev=({},{}) n={} commit={}",
            prev.index,
            prev.term,
            entries.len(),
            commit
        ),
        MessageBody::AppendEntriesResponse { result } => match result {
            Ok(i) => format!("AppResp ok={i}"),
            Err(r) => format!(
                "AppResp reject={} hint=({},{})",
                r.rejected, r.hint.index, r.hint.term
            ),
        },
        MessageBody::Heartbeat { commit, read_round } => {
            format!("Heartbeat commit={commit} round={read_round}")
        }
        MessageBody::HeartbeatResponse { read_round } => {
            format!("HeartbeatResp round={read_round}")
        }
        MessageBody::InstallSnapshot { meta } => {
            format!("Snapshot ({},{})", meta.last_index, meta.last_term)
        }
        MessageBody::TimeoutNow => "TimeoutNow".to_string(),
        MessageBody::ReadIndex { id } => format!("ReadIndex {}", id.0),
        MessageBody::ReadIndexResponse { id, index } => format!("ReadIndexResp {} {index:?}", id.0),
    }
}

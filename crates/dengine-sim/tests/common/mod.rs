//! Deliberately broken nodes, built only here through the simulator's
//! [`Hooks`], and the fault setups the tests run them under.
//!
//! Shared by several test crates, each using only part of it.
#![allow(dead_code)]

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::Instant;

use dengine_core::{LogIndex, Message, MessageBody, NodeId, Term};
use dengine_sim::linearizability::CheckResult;
use dengine_sim::{FaultProfile, Hooks, KvWorkload, NoHooks, SimOptions, SimReport, run};

/// The safety properties the simulator checks (liveness is left out: a
/// broken node that only stalls the cluster proves nothing about safety).
pub const SAFETY: &[&str] = &[
    "election safety",
    "leader append-only",
    "log matching",
    "leader completeness",
    "state machine safety",
    "acknowledged write lost",
    // Not Raft's, but the core's promise to a state machine that keeps
    // its state: a snapshot it is asked for is one it can write.
    "snapshot asked where the state machine is",
];

/// How a failed linearizability check is named among the properties.
pub const LINEARIZABILITY: &str = "linearizability";

/// Liveness window of runs with broken nodes. Their liveness is not judged,
/// and a broken cluster can spin in its liveness phase (a leader that was
/// told entries are durable which a crash then lost re-probes that follower
/// forever, sending ever more messages), so the phase is kept short. The
/// control runs use the default window and must pass it.
pub const BROKEN_LIVENESS_US: u64 = 1_000_000;

/// A node that grants every vote it is asked for: it rewrites its
/// `RequestVoteResponse { granted: false }` to `granted: true`.
#[derive(Debug, Default)]
pub struct GrantEveryVote {
    /// Only this node lies; `None`: every node does.
    pub liar: Option<NodeId>,
    /// Pre-vote responses are flipped too.
    pub pre_votes: bool,
    /// Responses flipped so far.
    pub flipped: u64,
}

impl Hooks for GrantEveryVote {
    fn on_send(&mut self, msg: &mut Message) {
        if self.liar.is_some_and(|l| l != msg.from) {
            return;
        }
        if let MessageBody::RequestVoteResponse { pre_vote, granted } = &mut msg.body
            && !*granted
            && (self.pre_votes || !*pre_vote)
        {
            *granted = true;
            self.flipped += 1;
        }
    }
}

/// Nodes that send the messages of a write (append acknowledgements,
/// votes) as soon as it is queued, before it is durable.
#[derive(Debug, Default)]
pub struct AckBeforeDurable {
    /// How often the simulator asked (once per write queued and synced).
    pub asked: Cell<u64>,
}

impl Hooks for AckBeforeDurable {
    fn ack_before_durable(&self) -> bool {
        self.asked.set(self.asked.get() + 1);
        true
    }
}

/// Nodes whose durable state machine survives a crash, but that restart
/// without telling the core where it stood.
#[derive(Debug, Default)]
pub struct ForgetStateMachineOnRestart {
    /// Restarts of such a node.
    pub asked: Cell<u64>,
}

impl Hooks for ForgetStateMachineOnRestart {
    fn tell_core_where_state_machine_stood(&self) -> bool {
        self.asked.set(self.asked.get() + 1);
        false
    }
}

/// A leader that tells followers everything it sends them is committed:
/// `AppendEntries.commit` becomes the last index the message carries, so a
/// follower commits (and applies) whatever it receives.
#[derive(Debug, Default)]
pub struct CommitWhatIsSent {
    /// Messages whose commit index was raised.
    pub raised: u64,
}

impl Hooks for CommitWhatIsSent {
    fn on_send(&mut self, msg: &mut Message) {
        if let MessageBody::AppendEntries {
            prev,
            entries,
            commit,
        } = &mut msg.body
        {
            let last = LogIndex(prev.index.0 + entries.len() as u64);
            if last > *commit {
                *commit = last;
                self.raised += 1;
            }
        }
    }
}

/// Leaders that count replicas of entries of *any* term toward commit,
/// the Raft paper's Figure 8 mistake, as far as test code can make it: the
/// commit index they send followers is the highest index a majority of the
/// voters holds, whatever the term of its entry. Followers count when they
/// send their acknowledgement (after their sync); the leader counts for the
/// entries before the first of its term (in its log, synced, before it
/// campaigned), never for unsynced ones. Followers then apply an older-term
/// entry that a majority holds, which a leader elected from a log ending in
/// a later term overwrites.
#[derive(Debug, Default)]
pub struct CommitByCountingAnyTerm {
    /// The voters (the setups using it change no membership).
    pub voters: Vec<NodeId>,
    /// Per leader and term, each follower's acknowledged match.
    acks: BTreeMap<(NodeId, Term), BTreeMap<NodeId, LogIndex>>,
    /// Per leader and term, the index before the first entry of its term.
    leader_holds: BTreeMap<(NodeId, Term), LogIndex>,
    /// Messages whose commit index was raised.
    pub raised: u64,
}

impl CommitByCountingAnyTerm {
    /// Leaders of a cluster of voters `1..=n`.
    pub fn of(n: u64) -> CommitByCountingAnyTerm {
        CommitByCountingAnyTerm {
            voters: (1..=n).map(NodeId).collect(),
            ..CommitByCountingAnyTerm::default()
        }
    }

    /// The highest index a majority of the voters acknowledged to the
    /// leader of this term.
    fn on_majority(&self, leader_term: (NodeId, Term)) -> LogIndex {
        let Some(acks) = self.acks.get(&leader_term) else {
            return LogIndex::ZERO;
        };
        let mut held: Vec<LogIndex> = self
            .voters
            .iter()
            .map(|v| {
                if *v == leader_term.0 {
                    self.leader_holds.get(&leader_term).copied()
                } else {
                    acks.get(v).copied()
                }
                .unwrap_or(LogIndex::ZERO)
            })
            .collect();
        held.sort_unstable_by(|a, b| b.cmp(a));
        held[self.voters.len() / 2]
    }

    fn acked(&self, leader_term: (NodeId, Term), by: NodeId) -> LogIndex {
        self.acks
            .get(&leader_term)
            .and_then(|a| a.get(&by).copied())
            .unwrap_or(LogIndex::ZERO)
    }
}

impl Hooks for CommitByCountingAnyTerm {
    fn on_send(&mut self, msg: &mut Message) {
        let leader_term = (msg.from, msg.term);
        // What the follower is known to hold: the commit must not pass it.
        let cap = match &msg.body {
            MessageBody::AppendEntriesResponse { result: Ok(i) } => {
                let m = self
                    .acks
                    .entry((msg.to, msg.term))
                    .or_default()
                    .entry(msg.from)
                    .or_insert(LogIndex::ZERO);
                *m = (*m).max(*i);
                return;
            }
            MessageBody::AppendEntries { prev, entries, .. } => {
                if let Some(own) = entries.iter().find(|e| e.term == msg.term) {
                    let before = LogIndex(own.index.0 - 1);
                    let held = self.leader_holds.entry(leader_term).or_insert(before);
                    *held = (*held).min(before);
                }
                LogIndex(prev.index.0 + entries.len() as u64)
            }
            MessageBody::Heartbeat { .. } => self.acked(leader_term, msg.to),
            _ => return,
        };
        let raise = self.on_majority(leader_term).min(cap);
        if let MessageBody::AppendEntries { commit, .. } | MessageBody::Heartbeat { commit, .. } =
            &mut msg.body
            && raise > *commit
        {
            *commit = raise;
            self.raised += 1;
        }
    }
}

/// A cluster size, fault profile and seed range to run.
#[derive(Clone, Debug)]
pub struct Setup {
    /// For messages.
    pub name: &'static str,
    /// Initial voters.
    pub nodes: usize,
    /// Fault-phase steps per seed.
    pub steps: u64,
    /// The faults.
    pub profile: FaultProfile,
    /// The seeds a broken variant must be caught within, and the control
    /// group passes.
    pub seeds: Range<u64>,
}

impl Setup {
    /// Options for a run of the real protocol.
    pub fn options(&self, seed: u64) -> SimOptions {
        let mut o = SimOptions::new(seed);
        o.nodes = self.nodes;
        o.steps = self.steps;
        o.faults = Some(self.profile.clone());
        o
    }

    /// Options for a run with broken nodes: a short liveness window.
    pub fn broken_options(&self, seed: u64) -> SimOptions {
        let mut o = self.options(seed);
        o.liveness_us = BROKEN_LIVENESS_US;
        o
    }
}

/// Elections under partitions and loss: competing candidacies in one term.
pub fn elections() -> Setup {
    let mut p = FaultProfile::calm();
    p.partitions = true;
    p.loss = 0.05;
    p.delay_max_us = 10_000;
    p.nemesis_interval_us = 100_000;
    Setup {
        name: "elections (3 nodes, partitions, 5% loss)",
        nodes: 3,
        steps: 20_000,
        profile: p,
        seeds: 0..20,
    }
}

/// Frequent crashes with slow disks, so that writes are in flight when a
/// node crashes, and partitions that force elections.
pub fn crashes_with_slow_disks() -> Setup {
    let mut p = FaultProfile::calm();
    p.crashes = true;
    p.partitions = true;
    p.nemesis_interval_us = 30_000;
    p.disk_latency_us = (5_000, 50_000);
    Setup {
        name: "crashes with slow disks (3 nodes, crashes, partitions, sync 5..50ms)",
        nodes: 3,
        steps: 20_000,
        profile: p,
        seeds: 0..20,
    }
}

/// Partitions, crashes and loss on five nodes: a leader and one follower
/// are not a majority, so entries a follower received can still be
/// replaced by a new leader.
pub fn five_nodes_partitions_crashes() -> Setup {
    let mut p = FaultProfile::calm();
    p.partitions = true;
    p.crashes = true;
    p.loss = 0.05;
    p.delay_max_us = 10_000;
    p.nemesis_interval_us = 100_000;
    Setup {
        name: "5 nodes, partitions, crashes, 5% loss",
        nodes: 5,
        steps: 20_000,
        profile: p,
        seeds: 0..20,
    }
}

/// The leader chase alone, with small append messages: bursts of short
/// terms and strikes in the Figure 8 window.
pub fn leader_chase() -> Setup {
    let mut p = FaultProfile::calm();
    p.chase_leaders = true;
    p.max_msg_bytes = 100;
    p.delay_max_us = 2_000;
    p.nemesis_interval_us = 100_000;
    Setup {
        name: "leader chase (3 nodes, appends of 100 bytes)",
        nodes: 3,
        steps: 20_000,
        profile: p,
        seeds: 0..20,
    }
}

/// State machines that keep their state durably, with frequent crashes
/// while writes and commit indexes are in flight, partitions, and
/// snapshots: a node restarts with its state machine past the commit
/// index its disk holds, and followers left behind need a snapshot with
/// data, which a restarted leader makes.
pub fn durable_state_machines() -> Setup {
    let mut p = FaultProfile::calm();
    p.crashes = true;
    p.partitions = true;
    p.durable_state_machine = true;
    p.snapshot_threshold = 10;
    p.compaction_lag = 1;
    p.nemesis_interval_us = 30_000;
    p.disk_latency_us = (500, 5_000);
    Setup {
        name: "durable state machines (3 nodes, crashes, partitions, snapshot/10)",
        nodes: 3,
        steps: 20_000,
        profile: p,
        seeds: 0..20,
    }
}

/// Every fault kind at once.
pub fn every_fault() -> FaultProfile {
    FaultProfile {
        loss: 0.05,
        duplicate: 0.03,
        delay_min_us: 100,
        delay_max_us: 10_000,
        reorder: 0.1,
        delay_tail: 0.02,
        partitions: true,
        crashes: true,
        membership: true,
        transfers: true,
        chase_leaders: true,
        max_msg_bytes: 300,
        snapshot_threshold: 20,
        compaction_lag: 2,
        drift: 0.05,
        nemesis_interval_us: 100_000,
        disk_latency_us: (500, 20_000),
        durable_state_machine: true,
    }
}

/// The safety properties `r` reports broken, with `"linearizability"` if
/// the history was found not linearizable.
pub fn safety_failures(r: &SimReport) -> BTreeSet<&'static str> {
    let mut s: BTreeSet<&'static str> = r
        .violations
        .iter()
        .map(|v| v.property)
        .filter(|p| SAFETY.contains(p))
        .collect();
    if matches!(r.linearizability, CheckResult::Illegal { .. }) {
        s.insert(LINEARIZABILITY);
    }
    s
}

/// Every property `r` reports broken, liveness included.
pub fn all_failures(r: &SimReport) -> BTreeSet<&'static str> {
    let mut s: BTreeSet<&'static str> = r.violations.iter().map(|v| v.property).collect();
    match r.linearizability {
        CheckResult::Ok => {}
        CheckResult::Illegal { .. } => {
            s.insert(LINEARIZABILITY);
        }
        CheckResult::Unknown => {
            s.insert("linearizability (undecided)");
        }
    }
    s
}

/// A seed on which a broken variant was caught.
#[derive(Debug)]
pub struct Caught {
    /// The seed.
    pub seed: u64,
    /// Its run.
    pub report: SimReport,
    /// How often the breakage took effect in that run.
    pub fired: u64,
}

/// Runs `setup`'s seeds in order with fresh broken `hooks` until one breaks
/// a property of `expected`, and returns it. `fired` tells how often a hook
/// took effect. Panics if no seed of the range breaks one.
pub fn first_caught<H: Hooks>(
    setup: &Setup,
    expected: &[&str],
    mut hooks: impl FnMut() -> H,
    fired: impl Fn(&H) -> u64,
) -> Caught {
    let started = Instant::now();
    let mut seen = Vec::new();
    for seed in setup.seeds.clone() {
        let mut h = hooks();
        let r = run(&setup.broken_options(seed), KvWorkload::default(), &mut h);
        let broken = safety_failures(&r);
        println!(
            "{}: seed {seed}: hook fired {} times, broke {:?} (all: {:?})",
            setup.name,
            fired(&h),
            broken,
            all_failures(&r)
        );
        if broken.iter().any(|p| expected.contains(p)) {
            println!(
                "{}: caught at seed {seed} after {} seeds in {:.2}s",
                setup.name,
                seen.len() + 1,
                started.elapsed().as_secs_f64()
            );
            if let Some(v) = r.violations.iter().find(|v| expected.contains(&v.property)) {
                println!("{}: first: {v}", setup.name);
            }
            return Caught {
                seed,
                fired: fired(&h),
                report: r,
            };
        }
        seen.push((seed, all_failures(&r)));
    }
    panic!(
        "{}: no seed of {:?} broke any of {expected:?}; saw {seen:?}",
        setup.name, setup.seeds
    );
}

/// Runs every seed of `setup` with the real protocol and the default
/// liveness window; panics naming the first seed that fails.
pub fn control(setup: &Setup) {
    let started = Instant::now();
    for seed in setup.seeds.clone() {
        let r = run(&setup.options(seed), KvWorkload::default(), &mut NoHooks);
        assert!(
            r.passed(),
            "{}: the real protocol fails seed {seed}: {:?} {:?}",
            setup.name,
            r.violations,
            r.linearizability
        );
    }
    println!(
        "{}: real nodes pass seeds {:?} in {:.2}s",
        setup.name,
        setup.seeds,
        started.elapsed().as_secs_f64()
    );
}

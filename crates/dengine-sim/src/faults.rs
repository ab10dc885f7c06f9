//! Which faults a run injects, derived from its seed.

use crate::rng::SimRng;

/// The faults of one run. [`FaultProfile::from_seed`] mixes them so that a
/// batch of seeds covers every kind.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultProfile {
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Smallest one-way network delay, in microseconds.
    pub delay_min_us: u64,
    /// Largest usual one-way delay (which also reorders messages).
    pub delay_max_us: u64,
    /// Probability that a message overtakes earlier ones on its link (links
    /// are otherwise first-in first-out, like a TCP stream).
    pub reorder: f64,
    /// Probability that a message is delayed far longer (a tail).
    pub delay_tail: f64,
    /// Partitions (symmetric, one-way, isolating the leader) come and go.
    pub partitions: bool,
    /// Nodes crash (losing unsynced writes) and restart.
    pub crashes: bool,
    /// Learners are added and promoted, voters removed, joint changes made.
    pub membership: bool,
    /// Leadership transfers.
    pub transfers: bool,
    /// The leader chase: new leaders are cut off (or crashed) soon after
    /// their entries reached a minority, and a leader is cut off the
    /// moment an entry of an older term is on a majority while nothing of
    /// its own term is committed (the Raft paper's Figure 8 window).
    pub chase_leaders: bool,
    /// Largest append message, in bytes (`Config::max_msg_bytes`; at least
    /// one entry goes). Small values split a catch-up into many messages,
    /// so acknowledgements of older-term entries come before those of the
    /// leader's own.
    pub max_msg_bytes: u64,
    /// Snapshot every this many applied entries (0: never), compacting
    /// the log behind it, so lagging nodes need snapshots.
    pub snapshot_threshold: u64,
    /// Entries kept behind a snapshot.
    pub compaction_lag: u64,
    /// Largest clock-rate deviation of a node, as a fraction (each node's
    /// ticks run at a fixed rate within `1 ± drift`). Kept within what the
    /// lease configuration declares.
    pub drift: f64,
    /// Mean time between nemesis actions, in microseconds.
    pub nemesis_interval_us: u64,
    /// Disk sync latency range, microseconds.
    pub disk_latency_us: (u64, u64),
    /// The state machines keep their state durably: a crash leaves a
    /// node's state machine where it was, which can be past the commit
    /// index its disk holds, and it restarts from there rather than from
    /// the snapshot (`RawNode::state_machine_restored`).
    pub durable_state_machine: bool,
}

impl FaultProfile {
    /// No faults at all.
    pub fn calm() -> FaultProfile {
        FaultProfile {
            loss: 0.0,
            duplicate: 0.0,
            delay_min_us: 100,
            delay_max_us: 1_000,
            delay_tail: 0.0,
            reorder: 0.0,
            partitions: false,
            crashes: false,
            membership: false,
            transfers: false,
            chase_leaders: false,
            max_msg_bytes: 64 * 1024,
            snapshot_threshold: 0,
            compaction_lag: 0,
            drift: 0.0,
            nemesis_interval_us: 200_000,
            disk_latency_us: (100, 1_000),
            durable_state_machine: false,
        }
    }

    /// A random mix of faults.
    pub fn from_seed(rng: &mut SimRng) -> FaultProfile {
        let mut p = FaultProfile::calm();
        if rng.chance(0.5) {
            p.loss = rng.range(1, 10) as f64 / 100.0;
        }
        if rng.chance(0.3) {
            p.duplicate = rng.range(1, 5) as f64 / 100.0;
        }
        p.delay_max_us = *rng.pick(&[500, 2_000, 10_000, 30_000]).unwrap_or(&2_000);
        if rng.chance(0.3) {
            p.delay_tail = 0.02;
        }
        if rng.chance(0.4) {
            p.reorder = rng.range(1, 20) as f64 / 100.0;
        }
        p.partitions = rng.chance(0.5);
        p.crashes = rng.chance(0.5);
        p.membership = rng.chance(0.4);
        p.transfers = rng.chance(0.3);
        if rng.chance(0.6) {
            p.snapshot_threshold = rng.range(10, 80);
            p.compaction_lag = rng.range(0, 5);
        }
        if rng.chance(0.5) {
            p.drift = rng.range(1, 10) as f64 / 100.0;
        }
        p.nemesis_interval_us = rng.range(50_000, 400_000);
        p.disk_latency_us = if rng.chance(0.2) {
            (500, 20_000)
        } else {
            (50, 1_500)
        };
        // Drawn last, so that the faults drawn above stay what they were
        // for every seed.
        p.chase_leaders = rng.chance(0.5);
        // The Figure 8 window opens when followers acknowledge a new
        // leader's older-term entries before its own: small messages make
        // that common, so the chase gets them more often.
        if rng.chance(if p.chase_leaders { 0.7 } else { 0.3 }) {
            p.max_msg_bytes = *rng.pick(&[1, 100, 300]).unwrap_or(&1);
        }
        p.durable_state_machine = rng.chance(0.5);
        p
    }

    /// A short description for reports.
    pub fn describe(&self) -> String {
        let mut kinds = Vec::new();
        if self.loss > 0.0 {
            kinds.push(format!("loss={:.0}%", self.loss * 100.0));
        }
        if self.duplicate > 0.0 {
            kinds.push(format!("dup={:.0}%", self.duplicate * 100.0));
        }
        kinds.push(format!(
            "delay={}..{}us",
            self.delay_min_us, self.delay_max_us
        ));
        if self.reorder > 0.0 {
            kinds.push(format!("reorder={:.0}%", self.reorder * 100.0));
        }
        if self.delay_tail > 0.0 {
            kinds.push("delay-tail".to_string());
        }
        for (on, name) in [
            (self.partitions, "partitions"),
            (self.crashes, "crashes"),
            (self.membership, "membership"),
            (self.transfers, "transfers"),
            (self.chase_leaders, "chase-leaders"),
            (self.durable_state_machine, "durable-sm"),
        ] {
            if on {
                kinds.push(name.to_string());
            }
        }
        if self.max_msg_bytes < 1024 {
            kinds.push(format!("msg<={}B", self.max_msg_bytes));
        }
        if self.snapshot_threshold > 0 {
            kinds.push(format!("snapshot/{}", self.snapshot_threshold));
        }
        if self.drift > 0.0 {
            kinds.push(format!("drift={:.0}%", self.drift * 100.0));
        }
        kinds.join(" ")
    }
}

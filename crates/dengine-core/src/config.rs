//! Settings of one protocol instance.

use crate::error::Error;
use crate::types::NodeId;

/// Settings of a [`crate::RawNode`]. Time is counted in ticks: the caller
/// calls [`crate::RawNode::tick`] at a fixed interval of its choosing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node's id (not 0).
    pub id: NodeId,
    /// A follower that hears no leader for a random number of ticks in
    /// `[election_tick, 2 * election_tick)` campaigns. Default 10.
    pub election_tick: u32,
    /// A leader sends heartbeats every `heartbeat_tick` ticks; must be less
    /// than `election_tick`. Default 1.
    pub heartbeat_tick: u32,
    /// Seed for the randomized election timeouts; give each node its own.
    pub seed: u64,
    /// Run a pre-vote round before raising the term, so a node that rejoins
    /// after a partition does not disrupt the cluster. Default true.
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum within an election timeout
    /// steps down, and followers that hear from a live leader ignore vote
    /// requests. Required for lease reads. Default true.
    pub check_quorum: bool,
    /// Largest total entry size in one append message. Default 1 MiB.
    pub max_msg_bytes: u64,
    /// Most append messages in flight to one follower. Default 256.
    pub max_inflight_msgs: usize,
    /// Most entry bytes in flight to one follower (0: no limit). Default 16 MiB.
    pub max_inflight_bytes: u64,
    /// Most bytes of proposals appended but not committed; past it proposals
    /// get [`Error::Overloaded`] (0: no limit). Default 64 MiB.
    pub max_uncommitted_bytes: u64,
    /// Ask for a snapshot once this many entries were applied since the last
    /// one (0: never). Default 10,000.
    pub snapshot_threshold: u64,
    /// Entries kept in the log behind a snapshot, so that slightly lagging
    /// followers still get entries rather than the snapshot. Default 1,000.
    pub compaction_lag: u64,
    /// Enable lease reads. Needs `check_quorum`. Default true.
    pub lease_reads: bool,
    /// Largest clock drift between nodes, in ticks per election timeout: a
    /// lease lasts `election_tick - lease_drift_ticks` ticks from the moment
    /// the heartbeats that confirmed it were sent. Must be less than
    /// `election_tick`. Default 2.
    pub lease_drift_ticks: u32,
    /// A leadership transfer that has not finished after this many ticks is
    /// abandoned. Default: `election_tick`.
    pub transfer_timeout_ticks: u32,
    /// Most entries handed out for applying in one [`crate::Ready`] by size
    /// (always at least one). Default 4 MiB.
    pub max_apply_bytes: u64,
    /// Most bytes of entries handed out for applying and not yet reported
    /// applied: past it the core waits for the state machine (back-pressure
    /// from a slow state machine, instead of a growing queue). One batch
    /// always goes out. Default 64 MiB.
    pub max_applying_bytes: u64,
    /// Hold back the messages that carry nothing but a new commit index
    /// (to a follower with its whole log and nothing in flight) until
    /// [`crate::RawNode::send_commit_notices`] or the next tick, and drop
    /// each one an append to the same follower overtakes (every append
    /// carries the commit index). At one request at a time, the next
    /// request's append usually comes first: one message, and one trip
    /// through each follower, fewer per write. The cost is that a follower
    /// learns the last commit of a burst up to that long after the leader.
    /// Default false (sent at once, as etcd's raft does).
    pub defer_commit_notices: bool,
}

impl Config {
    /// Defaults for node `id`, with `seed` equal to the id.
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            election_tick: 10,
            heartbeat_tick: 1,
            seed: id.0,
            pre_vote: true,
            check_quorum: true,
            max_msg_bytes: 1 << 20,
            max_inflight_msgs: 256,
            max_inflight_bytes: 16 << 20,
            max_uncommitted_bytes: 64 << 20,
            snapshot_threshold: 10_000,
            compaction_lag: 1_000,
            lease_reads: true,
            lease_drift_ticks: 2,
            transfer_timeout_ticks: 10,
            max_apply_bytes: 4 << 20,
            max_applying_bytes: 64 << 20,
            defer_commit_notices: false,
        }
    }

    /// Checks every setting; a bad one is an [`Error::Config`] naming it.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |s: &str| Err(Error::Config(s.to_string()));
        if self.id.is_none() {
            return bad("id must not be 0");
        }
        if self.heartbeat_tick == 0 {
            return bad("heartbeat_tick must be at least 1");
        }
        if self.election_tick <= self.heartbeat_tick {
            return bad("election_tick must be greater than heartbeat_tick");
        }
        if self.max_inflight_msgs == 0 {
            return bad("max_inflight_msgs must be at least 1");
        }
        if self.max_msg_bytes == 0 {
            return bad("max_msg_bytes must be at least 1");
        }
        if self.lease_reads && !self.check_quorum {
            return bad("lease_reads needs check_quorum");
        }
        if self.lease_reads && self.lease_drift_ticks >= self.election_tick {
            return bad("lease_drift_ticks must be less than election_tick");
        }
        if self.transfer_timeout_ticks == 0 {
            return bad("transfer_timeout_ticks must be at least 1");
        }
        if self.max_apply_bytes == 0 || self.max_applying_bytes == 0 {
            return bad("max_apply_bytes and max_applying_bytes must be at least 1");
        }
        Ok(())
    }
}

//! The node's metrics, recorded through the `metrics` facade: the program
//! that embeds the node picks an exporter (`dengine serve` serves
//! Prometheus text), and without one every call here costs a load of the
//! facade's recorder and nothing else.
//!
//! Names follow Prometheus' conventions (`dengine_` prefix, base units,
//! `_total` counters); where etcd has the same metric its name is recorded
//! too, so etcd's dashboards and alerts read a dengine member unchanged.
//! Gauges of the node's state are set where [`Metrics`] is published (at
//! once for a change of state, at most once per tick for progress), not on
//! every turn of the loop.

use std::time::Duration;

use dengine_core::Role;
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

use super::ReadPolicy;
use super::metrics::Metrics;
use crate::Error;

/// Gives every metric its help text and unit (once per process is enough;
/// more is harmless).
pub fn describe() {
    describe_gauge!(
        "dengine_server_has_leader",
        "1 if this member knows a leader, else 0."
    );
    describe_gauge!(
        "etcd_server_has_leader",
        "etcd's name of dengine_server_has_leader."
    );
    describe_gauge!(
        "dengine_server_is_leader",
        "1 if this member is the leader, else 0."
    );
    describe_gauge!(
        "etcd_server_is_leader",
        "etcd's name of dengine_server_is_leader."
    );
    describe_gauge!(
        "dengine_server_leader_id",
        "The id of the leader this member knows (0: none)."
    );
    describe_gauge!("dengine_raft_term", "The member's current term.");
    describe_gauge!(
        "dengine_raft_role",
        "The member's role: 0 follower, 1 pre-candidate, 2 candidate, 3 leader."
    );
    describe_gauge!(
        "dengine_raft_commit_index",
        "The highest log index known committed."
    );
    describe_gauge!(
        "etcd_server_proposals_committed_total",
        "etcd's name of dengine_raft_commit_index."
    );
    describe_gauge!(
        "dengine_raft_applied_index",
        "The highest log index applied to the state machine."
    );
    describe_gauge!(
        "etcd_server_proposals_applied_total",
        "etcd's name of dengine_raft_applied_index."
    );
    describe_gauge!(
        "dengine_raft_last_index",
        "The last index in the member's log."
    );
    describe_gauge!("dengine_raft_voters", "Voters in the membership in force.");
    describe_counter!(
        "dengine_server_leader_changes_total",
        "Times this member saw a new leader."
    );
    describe_counter!(
        "etcd_server_leader_changes_seen_total",
        "etcd's name of dengine_server_leader_changes_total."
    );
    describe_counter!(
        "dengine_raft_elections_started_total",
        "Vote rounds this member started as a candidate (pre-votes not counted)."
    );
    describe_counter!(
        "dengine_raft_elections_won_total",
        "Elections this member won."
    );
    describe_counter!(
        "dengine_proposals_total",
        "Commands proposed through this member (taken off its queue)."
    );
    describe_counter!(
        "dengine_proposals_failed_total",
        "Proposals and reads refused, by reason."
    );
    describe_counter!(
        "etcd_server_proposals_failed_total",
        "etcd's name of dengine_proposals_failed_total (all reasons)."
    );
    describe_counter!(
        "dengine_reads_total",
        "Reads asked of this member, by consistency (stale, lease, linearizable)."
    );
    describe_histogram!(
        "dengine_disk_fsync_duration_seconds",
        Unit::Seconds,
        "Time of one sync of the log."
    );
    describe_histogram!(
        "etcd_disk_wal_fsync_duration_seconds",
        Unit::Seconds,
        "etcd's name of dengine_disk_fsync_duration_seconds."
    );
    describe_histogram!(
        "dengine_disk_batch_entries",
        Unit::Count,
        "Log entries made durable by one sync."
    );
    describe_counter!(
        "dengine_snapshots_made_total",
        "Snapshots of the state machine this member made."
    );
    describe_counter!(
        "dengine_snapshots_failed_total",
        "Snapshots of the state machine that failed."
    );
    describe_counter!(
        "dengine_snapshots_installed_total",
        "Snapshots received from a leader and installed."
    );
    describe_gauge!(
        "dengine_server_fatal",
        "1 once the member stopped on a fatal error."
    );
    describe_histogram!(
        "dengine_proposal_commit_duration_seconds",
        Unit::Seconds,
        "From a batch of proposals taken off the queue together to their entries committed and handed to the state machine (on the member that proposed them; one sample per batch)."
    );
    describe_histogram!(
        "dengine_apply_duration_seconds",
        Unit::Seconds,
        "From a batch of committed entries handed to the state machine to applied and answered (one sample per batch)."
    );
    describe_histogram!(
        "dengine_read_duration_seconds",
        Unit::Seconds,
        "Time of one read through the node, by consistency."
    );
    describe_gauge!(
        "dengine_raft_follower_match_index",
        "On the leader: the highest index known durable on each member and matching the leader's log."
    );
    describe_gauge!(
        "dengine_raft_follower_lag_entries",
        "On the leader: entries each member is behind the leader's last index (a member that stepped down keeps its last figures: read with dengine_server_is_leader == 1)."
    );
    describe_gauge!(
        "dengine_proposal_queue_length",
        "Proposals waiting for the protocol task."
    );
    describe_gauge!(
        "dengine_disk_jobs_in_flight",
        "Batches of log writes handed to the disk thread and not yet durable."
    );
    describe_histogram!(
        "dengine_snapshot_duration_seconds",
        Unit::Seconds,
        "Time to write a snapshot of the state machine (made) or to restore one from a leader (installed)."
    );
    describe_histogram!(
        "dengine_snapshot_size_bytes",
        Unit::Bytes,
        "Size of each snapshot made or installed, as stored and sent."
    );
    describe_counter!(
        "dengine_raft_votes_refused_total",
        "Votes this member refused to candidates, by kind (pre_vote, vote)."
    );
}

/// A role as a number, for a gauge.
fn role_number(role: Role) -> f64 {
    match role {
        Role::Follower => 0.0,
        Role::PreCandidate => 1.0,
        Role::Candidate => 2.0,
        Role::Leader => 3.0,
    }
}

/// Records a publication of the node's state: `before` is the previous
/// one (so that changes are counted once).
pub(crate) fn record_state(before: &Metrics, now: &Metrics) {
    let has_leader = if now.leader.is_some() { 1.0 } else { 0.0 };
    gauge!("dengine_server_has_leader").set(has_leader);
    gauge!("etcd_server_has_leader").set(has_leader);
    let is_leader = if now.role == Role::Leader { 1.0 } else { 0.0 };
    gauge!("dengine_server_is_leader").set(is_leader);
    gauge!("etcd_server_is_leader").set(is_leader);
    gauge!("dengine_server_leader_id").set(now.leader.map_or(0.0, |l| l.0 as f64));
    gauge!("dengine_raft_term").set(now.term.0 as f64);
    gauge!("dengine_raft_role").set(role_number(now.role));
    gauge!("dengine_raft_commit_index").set(now.commit.0 as f64);
    gauge!("etcd_server_proposals_committed_total").set(now.commit.0 as f64);
    gauge!("dengine_raft_applied_index").set(now.applied.0 as f64);
    gauge!("etcd_server_proposals_applied_total").set(now.applied.0 as f64);
    gauge!("dengine_raft_last_index").set(now.last_index.0 as f64);
    gauge!("dengine_raft_voters").set(now.membership.voters.len() as f64);
    gauge!("dengine_server_fatal").set(if now.fatal.is_some() { 1.0 } else { 0.0 });
    let c = Counted::between(before, now);
    if c.leader_changed {
        counter!("dengine_server_leader_changes_total").increment(1);
        counter!("etcd_server_leader_changes_seen_total").increment(1);
    }
    if c.election_started {
        counter!("dengine_raft_elections_started_total").increment(1);
    }
    if c.election_won {
        counter!("dengine_raft_elections_won_total").increment(1);
    }
    if c.snapshot_made {
        counter!("dengine_snapshots_made_total").increment(1);
    }
    counter!("dengine_snapshots_failed_total").increment(c.snapshot_failures);
    counter!("dengine_snapshots_installed_total").increment(c.snapshots_installed);
}

/// What one publication of the node's state adds to the counters.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counted {
    /// A leader is known, and not the one known before.
    leader_changed: bool,
    /// The node became a candidate, or stayed one into a new term: a vote
    /// round began (pre-vote rounds raise no term and are not counted).
    election_started: bool,
    /// The node became the leader.
    election_won: bool,
    /// A newer snapshot of its own state was made.
    snapshot_made: bool,
    snapshot_failures: u64,
    snapshots_installed: u64,
}

impl Counted {
    fn between(before: &Metrics, now: &Metrics) -> Counted {
        Counted {
            leader_changed: now.leader.is_some() && now.leader != before.leader,
            election_started: now.role == Role::Candidate
                && (before.role != Role::Candidate || before.term != now.term),
            election_won: now.role == Role::Leader && before.role != Role::Leader,
            snapshot_made: now.snapshot_made_at > before.snapshot_made_at,
            snapshot_failures: now
                .snapshot_failures
                .saturating_sub(before.snapshot_failures),
            snapshots_installed: now
                .snapshots_installed
                .saturating_sub(before.snapshots_installed),
        }
    }
}

/// Records one sync of the log and the entries it made durable.
pub(crate) fn record_sync(took: Duration, entries: usize) {
    let seconds = took.as_secs_f64();
    histogram!("dengine_disk_fsync_duration_seconds").record(seconds);
    histogram!("etcd_disk_wal_fsync_duration_seconds").record(seconds);
    histogram!("dengine_disk_batch_entries").record(entries as f64);
}

/// Records proposals taken off the queue.
pub(crate) fn record_proposals(n: usize) {
    counter!("dengine_proposals_total").increment(n as u64);
}

/// Records a proposal or read that failed, with why.
pub(crate) fn record_refused(e: &Error) {
    counter!("dengine_proposals_failed_total", "reason" => reason(e)).increment(1);
    counter!("etcd_server_proposals_failed_total").increment(1);
}

/// An error's kind, as a label.
fn reason(e: &Error) -> &'static str {
    match e {
        Error::NotLeader { .. } => "not_leader",
        Error::Timeout => "timeout",
        Error::Overloaded => "overloaded",
        Error::Dropped(_) => "dropped",
        Error::TransferInProgress => "transfer_in_progress",
        Error::TransferFailed(_) => "transfer_failed",
        Error::ConfChange(_) => "conf_change",
        Error::Invalid(_) => "invalid",
        Error::Config(_) => "config",
        Error::Shutdown => "shutdown",
        Error::Storage(_) => "storage",
        Error::Fatal(_) => "fatal",
    }
}

/// A read policy as a label.
fn consistency(policy: ReadPolicy) -> &'static str {
    match policy {
        ReadPolicy::Stale => "stale",
        ReadPolicy::Lease => "lease",
        ReadPolicy::Linearizable => "linearizable",
    }
}

/// Records a read asked of the node, by its consistency.
pub(crate) fn record_read(policy: ReadPolicy) {
    counter!("dengine_reads_total", "consistency" => consistency(policy)).increment(1);
}

/// Records how long a read took (served or failed).
pub(crate) fn record_read_time(policy: ReadPolicy, took: Duration) {
    histogram!("dengine_read_duration_seconds", "consistency" => consistency(policy))
        .record(took.as_secs_f64());
}

/// Records a batch of proposals committed `took` after they were taken
/// off the queue. One sample per batch, not per proposal: exporters store
/// each sample (`record_many` is a loop), which at a million proposals a
/// second cost a third of the CPU.
pub(crate) fn record_commit_time(took: Duration) {
    histogram!("dengine_proposal_commit_duration_seconds").record(took.as_secs_f64());
}

/// Records a batch of entries applied `took` after it was handed out (one
/// sample per batch, as [`record_commit_time`]).
pub(crate) fn record_apply_time(took: Duration) {
    histogram!("dengine_apply_duration_seconds").record(took.as_secs_f64());
}

/// Records a member's replication progress, as the leader sees it.
pub(crate) fn record_follower(member: dengine_core::NodeId, matched: u64, last_index: u64) {
    let member = format!("{:x}", member.0);
    gauge!("dengine_raft_follower_match_index", "member" => member.clone()).set(matched as f64);
    gauge!("dengine_raft_follower_lag_entries", "member" => member)
        .set(last_index.saturating_sub(matched) as f64);
}

/// Records the depths of the node's queues.
pub(crate) fn record_queues(proposals: usize, disk_jobs: usize) {
    gauge!("dengine_proposal_queue_length").set(proposals as f64);
    gauge!("dengine_disk_jobs_in_flight").set(disk_jobs as f64);
}

/// Records a snapshot made or installed (`what`), its time and size.
pub(crate) fn record_snapshot(what: &'static str, took: Duration, bytes: u64) {
    histogram!("dengine_snapshot_duration_seconds", "kind" => what).record(took.as_secs_f64());
    histogram!("dengine_snapshot_size_bytes", "kind" => what).record(bytes as f64);
}

/// Records a vote this member refused.
pub(crate) fn record_vote_refused(pre_vote: bool) {
    let kind = if pre_vote { "pre_vote" } else { "vote" };
    counter!("dengine_raft_votes_refused_total", "kind" => kind).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use dengine_core::{ConfState, LogIndex, NodeId, Term};

    fn state(role: Role, term: u64, leader: Option<u64>) -> Metrics {
        Metrics {
            id: NodeId(1),
            role,
            term: Term(term),
            leader: leader.map(NodeId),
            commit: LogIndex(0),
            applied: LogIndex(0),
            last_index: LogIndex(0),
            membership: ConfState::default(),
            snapshots_installed: 0,
            snapshot_made_at: LogIndex(0),
            snapshot_failures: 0,
            last_snapshot_failure: None,
            fatal: None,
        }
    }

    #[test]
    fn elections_and_leaders_are_counted_once_each() {
        let follower = state(Role::Follower, 1, Some(2));
        let pre = state(Role::PreCandidate, 1, None);
        let candidate = state(Role::Candidate, 2, None);
        let again = state(Role::Candidate, 3, None);
        let leader = state(Role::Leader, 3, Some(1));
        let counted = |a: &Metrics, b: &Metrics| Counted::between(a, b);
        // A pre-vote round is not an election; the vote round after it is.
        assert_eq!(counted(&follower, &pre), Counted::default());
        let started = Counted {
            election_started: true,
            ..Counted::default()
        };
        assert_eq!(counted(&pre, &candidate), started);
        // A candidate that times out starts another round in a new term.
        assert_eq!(counted(&candidate, &again), started);
        assert_eq!(counted(&candidate, &candidate), Counted::default());
        assert_eq!(
            counted(&again, &leader),
            Counted {
                leader_changed: true,
                election_won: true,
                ..Counted::default()
            }
        );
        assert_eq!(counted(&leader, &leader), Counted::default());
        // Losing the leader is no change of leader; a new one is.
        assert!(!counted(&follower, &pre).leader_changed);
        assert!(counted(&pre, &follower).leader_changed);
    }

    #[test]
    fn snapshot_counters_add_what_grew() {
        let before = state(Role::Follower, 1, Some(2));
        let mut now = before.clone();
        now.snapshot_made_at = LogIndex(100);
        now.snapshot_failures = 2;
        now.snapshots_installed = 1;
        assert_eq!(
            Counted::between(&before, &now),
            Counted {
                snapshot_made: true,
                snapshot_failures: 2,
                snapshots_installed: 1,
                ..Counted::default()
            }
        );
        assert_eq!(Counted::between(&now, &now), Counted::default());
    }
}

//! What a node reports about itself ([`Metrics`]), and how the core task
//! publishes it: a change of state at once, progress at most once a tick.

use dengine_core::{ConfState, LogIndex, NodeId, Role, Term};

use super::core_loop::CoreLoop;
use super::telemetry;
use crate::state_machine::StateMachine;

/// What a node reports about itself.
///
/// A change of role, term, leader, membership, snapshots or a fatal error
/// is published at once. `commit`, `applied` and `last_index` move with
/// every batch, so their changes are published at most once per tick (a
/// watcher sees them at most a tick late): publishing takes the channel's
/// lock and wakes every watcher, and doing it on every turn of the core
/// loop cost about a tenth of the in-process benchmark's throughput at one
/// proposer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// This node.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its term.
    pub term: Term,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// The highest index known committed.
    pub commit: LogIndex,
    /// The highest index applied to the state machine (never goes back).
    pub applied: LogIndex,
    /// The last index in its log.
    pub last_index: LogIndex,
    /// The membership in force.
    pub membership: ConfState,
    /// How many snapshots this node installed from a leader since it started.
    pub snapshots_installed: u64,
    /// The index of the newest snapshot this node made of its own state.
    pub snapshot_made_at: LogIndex,
    /// How many snapshots of its own state failed since it started.
    pub snapshot_failures: u64,
    /// Why the last of them failed.
    pub last_snapshot_failure: Option<String>,
    /// Set once the node stopped on a fatal error: why.
    pub fatal: Option<String>,
}

impl<SM: StateMachine> CoreLoop<SM> {
    /// Publishes what changed: state at once, progress at most once per
    /// tick (see [`Metrics`]); `now` publishes progress in any case.
    pub(super) fn publish_metrics(&mut self, now: bool) {
        let ss = self.raw.soft_state();
        let hs = self.raw.hard_state();
        let last_index = self.raw.last_index();
        let leader = (!ss.leader.is_none()).then_some(ss.leader);
        let p = &self.published;
        let state_same = p.role == ss.role
            && p.term == hs.term
            && p.leader == leader
            && p.fatal == self.fatal
            && p.snapshots_installed == self.snapshots_installed
            && p.snapshot_made_at == self.snapshot_made_at
            && p.snapshot_failures == self.snapshot_failures
            && p.last_snapshot_failure == self.last_snapshot_failure
            && p.membership == *self.raw.conf_state();
        let progress_same =
            p.commit == hs.commit && p.applied == self.applied && p.last_index == last_index;
        let progress_due = now || self.clock.ticks() != self.progress_tick;
        if state_same && (progress_same || !progress_due) {
            return;
        }
        log_changes(
            self.raw.id(),
            p,
            ss.role,
            hs.term,
            leader,
            self.raw.conf_state(),
        );
        let m = &mut self.published;
        m.role = ss.role;
        m.term = hs.term;
        m.leader = leader;
        m.commit = hs.commit;
        m.applied = self.applied;
        m.last_index = last_index;
        m.fatal.clone_from(&self.fatal);
        m.snapshots_installed = self.snapshots_installed;
        m.snapshot_made_at = self.snapshot_made_at;
        m.snapshot_failures = self.snapshot_failures;
        m.last_snapshot_failure
            .clone_from(&self.last_snapshot_failure);
        if m.membership != *self.raw.conf_state() {
            m.membership = self.raw.conf_state().clone();
        }
        self.progress_tick = self.clock.ticks();
        for (member, matched) in self.raw.matched() {
            telemetry::record_follower(member, matched.0, last_index.0);
        }
        telemetry::record_queues(self.queue.len(), self.disk_jobs);
        let published = &self.published;
        self.metrics.send_modify(|m| {
            telemetry::record_state(m, published);
            m.clone_from(published);
        });
    }
}

/// Logs, once each, a change of role or of leader and a change of
/// membership, against what was last published.
fn log_changes(
    id: NodeId,
    before: &Metrics,
    role: Role,
    term: dengine_core::Term,
    leader: Option<NodeId>,
    conf: &ConfState,
) {
    // Ids in hex, as etcd and the server's logs write member ids.
    let hex = |ids: &std::collections::BTreeSet<NodeId>| {
        ids.iter()
            .map(|i| format!("{:x}", i.0))
            .collect::<Vec<_>>()
            .join(",")
    };
    if before.role != role || before.leader != leader {
        tracing::info!(
            node = %format!("{:x}", id.0),
            term = term.0,
            role = ?role,
            leader = %leader.map(|l| format!("{:x}", l.0)).unwrap_or_default(),
            was = ?before.role,
            "role or leader changed"
        );
    }
    if before.membership != *conf {
        tracing::info!(
            node = %format!("{:x}", id.0),
            voters = %hex(&conf.voters),
            learners = %hex(&conf.learners),
            joint = !conf.voters_outgoing.is_empty(),
            "membership changed"
        );
    }
}

//! Membership changes: proposing them (one at a time), and putting a
//! committed change in force when it is handed out for applying.

use super::Raft;
use crate::confchange;
use crate::error::{ConfChangeError, Error, Result};
use crate::storage::LogStorage;
use crate::types::{ConfChange, ConfState, Entry, EntryPayload, LogIndex, NodeId, Role};

impl<S: LogStorage> Raft<S> {
    /// Checks that this node may take a proposal now.
    pub(crate) fn check_can_propose(&self) -> Result<()> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader {
                leader: (!self.leader.is_none()).then_some(self.leader),
            });
        }
        if let Some(to) = self.transfer.target {
            return Err(Error::TransferInProgress(to));
        }
        Ok(())
    }

    /// Proposes a membership change; returns its log index.
    pub(crate) fn propose_conf_change(&mut self, cc: ConfChange) -> Result<LogIndex> {
        self.check_can_propose()?;
        if self.pending_conf_index > self.log.applying {
            return Err(ConfChangeError::Pending(self.pending_conf_index).into());
        }
        // Validate against the membership in force; the same check runs
        // again on every node when the entry is applied.
        confchange::apply_conf_change(self.tracker.conf(), &cc)?;
        let index = self.log.last_index().next();
        self.pending_conf_index = index;
        self.append_entries(vec![Entry {
            term: self.term,
            index,
            payload: EntryPayload::ConfChange(Box::new(cc)),
        }])?;
        Ok(index)
    }

    /// A committed membership change at `index` is handed out: it takes
    /// effect now, on every node in the same log order.
    pub(crate) fn apply_committed_conf_change(
        &mut self,
        index: LogIndex,
        cc: &ConfChange,
    ) -> Result<()> {
        let known = self.tracker.ids();
        match confchange::apply_conf_change(self.tracker.conf(), cc) {
            Ok(conf) => self.install_conf(index, conf),
            Err(e) => {
                // Deterministic: every node refuses the same entry the same way.
                tracing::warn!(id = %self.id, %index, error = %e, "committed membership change refused");
                return Ok(());
            }
        }
        if self.role != Role::Leader {
            return Ok(());
        }
        let conf = self.tracker.conf().clone();
        if !conf.is_joint() && !conf.voters.contains(&self.id) {
            // Removed (or demoted): keep leading, counted in no quorum, and
            // hand over to a voter once it has the whole log. Stepping down at
            // once can leave the remaining voters unable to elect anyone: the
            // removed leader may hold the longest log, and a voter that has
            // not learnt the new membership committed still needs its vote.
            tracing::debug!(id = %self.id, "no longer a voter: handing leadership over");
            self.hand_over_leadership()?;
        }
        if let Some(t) = self.transfer.target
            && !conf.is_voter(t)
        {
            self.transfer.abort();
        }
        self.maybe_auto_leave(index)?;
        // A smaller or different quorum may commit more now; new members
        // need their first appends.
        if let Some(pr) = self.tracker.get_mut(self.id) {
            pr.become_replicate();
            pr.maybe_update(self.log.stable_last_index());
        }
        self.maybe_commit()?;
        // A new member's `next` is past the leader's log, so an append would
        // carry nothing and not be sent: probe it now, not at the next heartbeat.
        for id in self.tracker.ids() {
            if id != self.id && !known.contains(&id) {
                self.maybe_send_append(id, true)?;
            }
        }
        self.bcast_append()
    }

    /// A leader in a joint configuration with `auto_leave` proposes leaving
    /// it once every membership change it knows of was handed out (up to
    /// `handed_out`). Checked whenever entries are handed out, not only when
    /// the joint entry is: a leader may inherit the joint configuration from
    /// its predecessor (applied as a follower, or committed behind later
    /// entries).
    pub(crate) fn maybe_auto_leave(&mut self, handed_out: LogIndex) -> Result<()> {
        let conf = self.tracker.conf();
        if self.role != Role::Leader
            || !conf.is_joint()
            || !conf.auto_leave
            || self.pending_conf_index > handed_out
        {
            return Ok(());
        }
        let leave = self.log.last_index().next();
        self.pending_conf_index = leave;
        tracing::debug!(id = %self.id, index = %leave, "leaving the joint configuration");
        self.append_entries(vec![Entry {
            term: self.term,
            index: leave,
            payload: EntryPayload::ConfChange(Box::new(ConfChange::leave_joint())),
        }])
    }

    /// A leader that is no longer a voter transfers leadership to the voter
    /// with the most of its log.
    pub(crate) fn hand_over_leadership(&mut self) -> Result<()> {
        if self.role != Role::Leader || self.transfer.target.is_some() {
            return Ok(());
        }
        let me = self.id;
        let target = self
            .tracker
            .iter()
            .filter(|&(id, p)| {
                id != me && !p.is_learner && self.tracker.conf().voters.contains(&id)
            })
            .max_by_key(|&(id, p)| (p.matched, std::cmp::Reverse(id)))
            .map(|(id, _)| id);
        match target {
            Some(t) => self.transfer_leader(t),
            None => Ok(()),
        }
    }

    /// Puts `conf` in force as of log index `index`.
    pub(crate) fn install_conf(&mut self, index: LogIndex, conf: ConfState) {
        let next = self.log.last_index().next();
        let was_voter = self.tracker.is_voter(self.id);
        self.tracker.apply_conf(conf.clone(), next);
        if conf.contains(self.id) {
            self.removed_voter = false;
        } else if was_voter {
            self.removed_voter = true;
        }
        if index <= self.conf_history.front().map_or(LogIndex::ZERO, |c| c.0) {
            self.conf_history.clear();
        }
        self.conf_history.push_back((index, conf));
        self.conf_changed = true;
        if matches!(self.role, Role::Candidate | Role::PreCandidate) && !self.promotable() {
            self.become_follower(self.term, NodeId::NONE);
        }
    }

    /// The membership in force at `index` (at or after the applied index).
    pub(crate) fn conf_at(&self, index: LogIndex) -> ConfState {
        self.conf_history
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .or(self.conf_history.front())
            .map(|(_, c)| c.clone())
            .unwrap_or_default()
    }

    /// Forgets membership history older than the applied index.
    pub(crate) fn prune_conf_history(&mut self) {
        let applied = self.log.applied;
        while self.conf_history.len() >= 2 && self.conf_history[1].0 <= applied {
            self.conf_history.pop_front();
        }
    }
}

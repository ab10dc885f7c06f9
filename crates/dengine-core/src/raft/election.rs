//! Elections: pre-vote, vote, and becoming leader.

use super::Raft;
use crate::error::Result;
use crate::message::MessageBody;
use crate::quorum::VoteResult;
use crate::storage::LogStorage;
use crate::types::{Entry, EntryId, EntryPayload, NodeId, Role, Term};

impl<S: LogStorage> Raft<S> {
    /// Starts an election: a pre-vote round first when configured, unless
    /// `transfer` (a leadership transfer asked this node to campaign now).
    pub(crate) fn start_election(&mut self, transfer: bool) -> Result<()> {
        if !self.promotable() {
            tracing::debug!(id = %self.id, "not a voter: will not campaign");
            return Ok(());
        }
        if self.log.has_next_committed() {
            // Committed membership changes not yet in force might make this
            // node a non-voter; campaigning on a stale membership is unsafe.
            tracing::debug!(id = %self.id, "committed entries not yet handed out: not campaigning");
            return Ok(());
        }
        if self.term >= Term::LIMIT {
            // Terms are exhausted: peers refuse requests past the limit
            // (and past u64::MAX a term would wrap to 0, where a vote could
            // repeat one already cast).
            tracing::warn!(id = %self.id, term = %self.term,
                "term is at Term::LIMIT: not campaigning");
            return Ok(());
        }
        if self.cfg.pre_vote && !transfer {
            self.become_pre_candidate();
        } else if !self.become_candidate() {
            return Ok(());
        }
        self.request_votes(transfer)
    }

    fn become_pre_candidate(&mut self) {
        // Neither the term nor the vote changes: a pre-vote round that fails
        // leaves no trace, so a node rejoining after a partition cannot
        // disrupt the cluster by raising the term.
        self.tracker.reset_votes();
        self.role = Role::PreCandidate;
        self.leader = NodeId::NONE;
        self.election_elapsed = 0;
        self.reset_randomized_election_timeout();
        tracing::debug!(id = %self.id, term = %self.term, "became pre-candidate");
    }

    /// Becomes a candidate in the next term. Returns `false` (and changes
    /// nothing) if the term is `u64::MAX`, which has no next term.
    fn become_candidate(&mut self) -> bool {
        let Some(term) = self.term.checked_next() else {
            return false;
        };
        self.reset(term);
        self.vote = self.id;
        self.role = Role::Candidate;
        tracing::debug!(id = %self.id, term = %self.term, "became candidate");
        true
    }

    fn request_votes(&mut self, transfer: bool) -> Result<()> {
        let pre_vote = self.role == Role::PreCandidate;
        let term = if pre_vote {
            // A pre-candidate's term is below `Term::LIMIT` (`start_election`).
            match self.term.checked_next() {
                Some(t) => t,
                None => return Ok(()),
            }
        } else {
            self.term
        };
        let last_log = self.log.last_id()?;
        self.tracker.record_vote(self.id, true);
        if self.tally_and_act(pre_vote)? {
            return Ok(());
        }
        let voters: Vec<NodeId> = self
            .tracker
            .conf()
            .voters
            .iter()
            .chain(&self.tracker.conf().voters_outgoing)
            .copied()
            .filter(|&id| id != self.id)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for to in voters {
            self.send_with_term(
                to,
                term,
                MessageBody::RequestVote {
                    pre_vote,
                    last_log,
                    transfer,
                },
            );
        }
        Ok(())
    }

    /// Counts votes; on a win moves on (pre-vote → real vote, vote → leader),
    /// on a loss falls back to follower. Returns whether the round ended.
    fn tally_and_act(&mut self, pre_vote: bool) -> Result<bool> {
        let (_, _, result) = self.tracker.tally_votes();
        match result {
            VoteResult::Won if pre_vote => {
                if self.become_candidate() {
                    self.request_votes(false)?;
                } else {
                    self.become_follower(self.term, NodeId::NONE);
                }
                Ok(true)
            }
            VoteResult::Won => {
                self.become_leader()?;
                Ok(true)
            }
            VoteResult::Lost => {
                self.become_follower(self.term, NodeId::NONE);
                Ok(true)
            }
            VoteResult::Pending => Ok(false),
        }
    }

    pub(crate) fn handle_vote_response(
        &mut self,
        from: NodeId,
        pre_vote: bool,
        granted: bool,
    ) -> Result<()> {
        let expecting_pre = self.role == Role::PreCandidate;
        if pre_vote != expecting_pre {
            return Ok(());
        }
        self.tracker.record_vote(from, granted);
        self.tally_and_act(pre_vote).map(|_| ())
    }

    /// Grants or refuses a (pre-)vote. Term checks were done by `step`.
    pub(crate) fn handle_vote_request(
        &mut self,
        from: NodeId,
        term: Term,
        pre_vote: bool,
        last_log: EntryId,
    ) -> Result<()> {
        let can_vote = self.vote == from
            || (self.vote.is_none() && self.leader.is_none())
            || (pre_vote && term > self.term);
        let granted = can_vote && self.log.is_up_to_date(last_log)?;
        if granted && !pre_vote {
            self.vote = from;
            self.election_elapsed = 0;
        }
        tracing::debug!(id = %self.id, %from, %term, pre_vote, granted, "vote request");
        // A granted pre-vote answers in the candidate's future term so it
        // counts; a refusal carries our own term so a stale candidate learns it.
        let reply_term = if pre_vote && granted { term } else { self.term };
        self.send_with_term(
            from,
            reply_term,
            MessageBody::RequestVoteResponse { pre_vote, granted },
        );
        Ok(())
    }

    pub(crate) fn become_leader(&mut self) -> Result<()> {
        let term = self.term;
        self.reset(term);
        self.role = Role::Leader;
        self.leader = self.id;
        let last = self.log.last_index();
        self.tracker.reset_progress(last.next());
        // Our own durable log counts as matched; the no-op below counts once
        // it is durable too.
        let stable = self.log.stable_last_index();
        if let Some(pr) = self.tracker.get_mut(self.id) {
            pr.become_replicate();
            pr.maybe_update(stable);
        }
        // Conservatively assume an unapplied membership change may be in the
        // log: a new one waits until everything up to here was handed out.
        self.pending_conf_index = last;
        self.reads.become_leader(self.id);
        self.tracker.reset_recent_active(self.id);
        tracing::debug!(id = %self.id, term = %self.term, "became leader");
        // The no-op lets the leader commit entries of earlier terms (§5.4.2)
        // and learn the commit index before serving reads.
        let noop = Entry {
            term: self.term,
            index: last.next(),
            payload: EntryPayload::Blank,
        };
        self.append_entries(vec![noop])?;
        if self.removed_voter {
            // Elected to bring the voters up to date, not to stay.
            self.hand_over_leadership()?;
        }
        Ok(())
    }

    /// Campaigns because the leader asked (leadership transfer).
    pub(crate) fn handle_timeout_now(&mut self, from: NodeId) -> Result<()> {
        if !self.promotable() {
            tracing::debug!(id = %self.id, %from, "TimeoutNow ignored: not a voter");
            return Ok(());
        }
        tracing::debug!(id = %self.id, %from, "TimeoutNow: campaigning at once");
        self.start_election(true)
    }
}

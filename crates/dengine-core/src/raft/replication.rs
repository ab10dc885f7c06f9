//! Log replication: the leader's sending and acknowledgement handling, and
//! the follower's side of AppendEntries, heartbeats and snapshots.

use super::{Raft, Role};
use crate::error::{Error, Result, StorageError};
use crate::log::AppendOutcome;
use crate::message::{AppendRejection, MessageBody};
use crate::storage::LogStorage;
use crate::tracker::ProgressState;
use crate::types::{Entry, EntryId, LogIndex, NodeId, SnapshotMeta};

impl<S: LogStorage> Raft<S> {
    /// Appends entries built by this leader and starts replicating them.
    /// They count toward commit on this node only once they are durable.
    pub(crate) fn append_entries(&mut self, ents: Vec<Entry>) -> Result<()> {
        let (Some(first), Some(last)) = (ents.first(), ents.last()) else {
            return Ok(());
        };
        debug_assert_eq!(first.index, self.log.last_index().next());
        let bytes: u64 = ents.iter().map(Entry::size).sum();
        self.uncommitted_bytes += bytes;
        self.uncommitted_queue.push_back((last.index, bytes));
        self.log.append(ents);
        self.bcast_append()
    }

    /// Sends every follower what it is missing, as far as flow control allows.
    pub(crate) fn bcast_append(&mut self) -> Result<()> {
        for id in self.tracker.ids() {
            if id != self.id {
                self.send_append_loop(id)?;
            }
        }
        Ok(())
    }

    /// Sends appends to `to` until it is paused or has everything.
    pub(crate) fn send_append_loop(&mut self, to: NodeId) -> Result<()> {
        while self.maybe_send_append(to, false)? {}
        Ok(())
    }

    /// Sends one append (or a snapshot) to `to` unless its progress is
    /// paused. Returns whether a message went out.
    pub(crate) fn maybe_send_append(&mut self, to: NodeId, send_if_empty: bool) -> Result<bool> {
        let Some(pr) = self.tracker.get(to) else {
            return Ok(false);
        };
        if pr.is_paused() {
            return Ok(false);
        }
        let next = pr.next;
        let prev_index = next.prev();
        let prev_term = match self.log.term(prev_index) {
            Ok(t) => t,
            Err(StorageError::Compacted(_)) => return self.send_snapshot(to),
            Err(e) => return Err(e.into()),
        };
        let entries = match self.log.entries_from(next, self.cfg.max_msg_bytes) {
            Ok(e) => e,
            Err(StorageError::Compacted(_)) => return self.send_snapshot(to),
            Err(e) => return Err(e.into()),
        };
        if entries.is_empty() && !send_if_empty {
            return Ok(false);
        }
        let bytes: u64 = entries.iter().map(Entry::size).sum();
        let last = entries.last().map_or(prev_index, |e| e.index);
        let had_entries = !entries.is_empty();
        if let Some(pr) = self.tracker.get_mut(to) {
            pr.sent_append(last, bytes, had_entries);
        }
        let commit = self.log.committed;
        self.send(
            to,
            MessageBody::AppendEntries {
                prev: EntryId::new(prev_term, prev_index),
                entries,
                commit,
            },
        );
        Ok(true)
    }

    fn send_snapshot(&mut self, to: NodeId) -> Result<bool> {
        let meta = self.log.storage.snapshot_meta()?;
        if meta.last_index == LogIndex::ZERO {
            return Err(StorageError::Fatal(
                "log is compacted but storage has no snapshot".to_string(),
            )
            .into());
        }
        if let Some(pr) = self.tracker.get_mut(to) {
            pr.become_snapshot(meta.last_index);
        }
        tracing::debug!(id = %self.id, %to, index = %meta.last_index, "sending snapshot");
        self.send(to, MessageBody::InstallSnapshot { meta });
        Ok(true)
    }

    /// Tells followers whose log is complete the new commit index. A
    /// follower with entries still to receive learns it from those appends;
    /// one with appends in flight learns it when the last of them is
    /// acknowledged (see [`Raft::handle_append_response`]), so that under
    /// load, when appends are always in flight, no message carries only a
    /// commit index: the next append carries it.
    fn bcast_commit(&mut self) -> Result<()> {
        let last = self.log.last_index();
        let commit = self.log.committed;
        for id in self.tracker.ids() {
            if id == self.id {
                continue;
            }
            let Some(pr) = self.tracker.get(id) else {
                continue;
            };
            if pr.state != ProgressState::Replicate {
                continue;
            }
            if pr.next <= last {
                self.send_append_loop(id)?;
            } else if !pr.has_appends_in_flight() {
                self.send_commit(id, commit)?;
            }
        }
        Ok(())
    }

    /// Tells `to` the commit index, at once or, with
    /// [`crate::Config::defer_commit_notices`], when the held notice is
    /// sent ([`Raft::send_commit_notices`]) unless an append carries it
    /// first.
    fn send_commit(&mut self, to: NodeId, commit: LogIndex) -> Result<()> {
        if self.cfg.defer_commit_notices {
            if let Some(pr) = self.tracker.get_mut(to) {
                pr.hold_commit_notice();
            }
            return Ok(());
        }
        self.send_commit_now(to, commit)
    }

    /// Sends the commit notices held back (see [`Raft::send_commit`]) to
    /// the followers no append reached since.
    pub(crate) fn send_commit_notices(&mut self) -> Result<()> {
        if self.role != Role::Leader {
            return Ok(());
        }
        let (me, commit) = (self.id, self.log.committed);
        // Empty, so no allocation, on the ticks with none due.
        let due: Vec<NodeId> = self
            .tracker
            .iter_mut()
            .filter_map(|(id, pr)| (id != me && pr.take_commit_notice()).then_some(id))
            .collect();
        for id in due {
            self.send_commit_now(id, commit)?;
        }
        Ok(())
    }

    /// Whether a commit notice is held back for some follower.
    pub(crate) fn has_commit_notices_due(&self) -> bool {
        self.role == Role::Leader && self.tracker.iter().any(|(_, pr)| pr.commit_notice_due)
    }

    /// Tells `to` the commit index with an empty append anchored at its
    /// `matched` entry, which it durably has, so the append matches even if
    /// earlier appends are still in flight.
    fn send_commit_now(&mut self, to: NodeId, commit: LogIndex) -> Result<()> {
        let Some(matched) = self.tracker.get(to).map(|p| p.matched) else {
            return Ok(());
        };
        let term = match self.log.term(matched) {
            Ok(t) => t,
            // Behind the compaction point: it gets a snapshot instead.
            Err(StorageError::Compacted(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let prev = EntryId::new(term, matched);
        self.send(
            to,
            MessageBody::AppendEntries {
                prev,
                entries: Vec::new(),
                commit: commit.min(matched),
            },
        );
        Ok(())
    }

    /// Recomputes the commit index from the quorum; tells followers if it moved.
    pub(crate) fn maybe_commit(&mut self) -> Result<bool> {
        let mci = self.tracker.committed();
        if !self.log.maybe_commit(mci, self.term)? {
            return Ok(false);
        }
        let committed = self.log.committed;
        while let Some(&(idx, bytes)) = self.uncommitted_queue.front() {
            if idx > committed {
                break;
            }
            self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(bytes);
            self.uncommitted_queue.pop_front();
        }
        self.release_reads_waiting_for_commit()?;
        self.bcast_commit()?;
        Ok(true)
    }

    pub(crate) fn handle_append_response(
        &mut self,
        from: NodeId,
        result: std::result::Result<LogIndex, AppendRejection>,
    ) -> Result<()> {
        let last = self.log.last_index();
        let Some(pr) = self.tracker.get_mut(from) else {
            return Err(Error::UnknownNode(from));
        };
        // Refused before anything changes, liveness included. A follower
        // answers appends of this leader's term, whose `prev` and entries
        // lie in its log, and the log of a leader only grows in its term.
        match result {
            Ok(index) if index > last => {
                return Err(Error::Malformed(
                    "acknowledged index is past the leader's log",
                ));
            }
            Err(rej) if rej.rejected > last => {
                return Err(Error::Malformed("rejected index is past the leader's log"));
            }
            _ => {}
        }
        pr.recent_active = true;
        match result {
            Err(rej) => {
                let mut hint = rej.hint.index;
                if rej.hint.term > crate::types::Term::ZERO {
                    hint = self
                        .log
                        .find_conflict_by_term(rej.hint.index, rej.hint.term)?
                        .index;
                }
                let Some(pr) = self.tracker.get_mut(from) else {
                    return Ok(());
                };
                if pr.maybe_decr_to(rej.rejected, hint) {
                    tracing::debug!(id = %self.id, %from, rejected = %rej.rejected,
                        next = %pr.next, "append rejected; backing off");
                    self.maybe_send_append(from, true)?;
                    self.send_append_loop(from)?;
                }
            }
            Ok(index) => {
                let updated = pr.maybe_update(index);
                if updated || (pr.matched == index && pr.state == ProgressState::Probe) {
                    match pr.state {
                        ProgressState::Probe => pr.become_replicate(),
                        ProgressState::Snapshot if pr.matched >= pr.pending_snapshot => {
                            pr.snapshot_done(true);
                            pr.become_replicate();
                        }
                        _ => {}
                    }
                    if updated && !self.maybe_commit()? && index <= self.log.committed {
                        // A follower that lagged behind the commit index and
                        // has nothing more to receive learns it now rather
                        // than at the next heartbeat: with its last append
                        // in flight acknowledged (until then, that append's
                        // acknowledgement is still to come).
                        if self
                            .tracker
                            .get(from)
                            .is_some_and(|p| p.next > last && !p.has_appends_in_flight())
                        {
                            self.send_commit(from, self.log.committed)?;
                        }
                    }
                }
                self.send_append_loop(from)?;
                self.maybe_finish_transfer(from)?;
            }
        }
        Ok(())
    }

    pub(crate) fn handle_heartbeat_response(
        &mut self,
        from: NodeId,
        read_round: u64,
    ) -> Result<()> {
        let last = self.log.last_index();
        let Some(pr) = self.tracker.get_mut(from) else {
            return Err(Error::UnknownNode(from));
        };
        pr.on_heartbeat_response();
        if pr.matched < last {
            // Resend even if nothing new: an ack may have been lost.
            self.maybe_send_append(from, true)?;
            self.send_append_loop(from)?;
        }
        self.ack_read_round(from, read_round)
    }

    /// Follower side of AppendEntries.
    pub(crate) fn handle_append(
        &mut self,
        from: NodeId,
        prev: EntryId,
        entries: Vec<Entry>,
        commit: LogIndex,
    ) -> Result<()> {
        // The shape of `entries` was checked by `step` (`validate_entries`).
        if prev.index < self.log.committed {
            // Everything up to our commit index is already settled here.
            let committed = self.log.committed;
            self.send(
                from,
                MessageBody::AppendEntriesResponse {
                    result: Ok(committed),
                },
            );
            return Ok(());
        }
        match self.log.maybe_append(prev, entries)? {
            AppendOutcome::Appended(last_new) => {
                self.log.commit_to(commit.min(last_new));
                self.send(
                    from,
                    MessageBody::AppendEntriesResponse {
                        result: Ok(last_new),
                    },
                );
            }
            AppendOutcome::Mismatch => {
                let probe = prev.index.min(self.log.last_index());
                let hint = self.log.find_conflict_by_term(probe, prev.term)?;
                tracing::debug!(id = %self.id, %from, prev_index = %prev.index,
                    prev_term = %prev.term, hint_index = %hint.index, "rejecting append");
                self.send(
                    from,
                    MessageBody::AppendEntriesResponse {
                        result: Err(AppendRejection {
                            rejected: prev.index,
                            hint,
                        }),
                    },
                );
            }
            AppendOutcome::ConflictsWithCommitted(index) => {
                tracing::error!(id = %self.id, %from, %index,
                    "leader sent an entry conflicting with a committed one; dropped");
                return Err(Error::Malformed("append conflicts with a committed entry"));
            }
        }
        Ok(())
    }

    pub(crate) fn handle_heartbeat(
        &mut self,
        from: NodeId,
        commit: LogIndex,
        read_round: u64,
    ) -> Result<()> {
        // The leader caps `commit` at what it knows we have; cap again at our
        // log in case the message is stale.
        self.log.commit_to(commit.min(self.log.last_index()));
        self.send(from, MessageBody::HeartbeatResponse { read_round });
        Ok(())
    }

    /// Follower side of InstallSnapshot. The snapshot's data arrived beside
    /// the message; the runtime installs it when it persists the batch.
    pub(crate) fn handle_snapshot(&mut self, from: NodeId, meta: SnapshotMeta) -> Result<()> {
        if meta.conf_state.voters.is_empty() {
            return Err(Error::Malformed("snapshot with no voters"));
        }
        let index = meta.last_index;
        if index <= self.log.committed {
            let committed = self.log.committed;
            self.send(
                from,
                MessageBody::AppendEntriesResponse {
                    result: Ok(committed),
                },
            );
            return Ok(());
        }
        if self.log.matches(meta.last_id())? {
            // We already have the entries: no need to install.
            self.log.commit_to(index);
        } else {
            tracing::debug!(id = %self.id, %from, %index, "installing snapshot");
            self.log.restore(meta.clone());
            self.last_snapshot_index = index;
            self.install_conf(index, meta.conf_state);
        }
        self.send(
            from,
            MessageBody::AppendEntriesResponse { result: Ok(index) },
        );
        Ok(())
    }

    /// The runtime's report on a snapshot it tried to send.
    pub(crate) fn report_snapshot(&mut self, to: NodeId, success: bool) -> Result<()> {
        if let Some(pr) = self.tracker.get_mut(to)
            && pr.state == ProgressState::Snapshot
        {
            pr.snapshot_done(success);
            if success {
                // The follower's acknowledgement comes as an append response;
                // probe meanwhile.
                self.maybe_send_append(to, true)?;
            }
        }
        Ok(())
    }

    /// The transport could not reach `to`: stop pipelining, probe instead.
    pub(crate) fn report_unreachable(&mut self, to: NodeId) {
        if let Some(pr) = self.tracker.get_mut(to)
            && pr.state == ProgressState::Replicate
        {
            pr.become_probe();
        }
    }

    /// The runtime made a persist batch durable.
    pub(crate) fn on_persisted(&mut self, p: crate::rawnode::Persisted) -> Result<()> {
        if let Some(index) = p.snapshot {
            self.log.stable_snap_to(index);
        }
        if let Some(id) = p.entries_to {
            self.log.stable_to(id);
        }
        if let Some(tv) = p.term_vote
            && tv.0 >= self.durable_term_vote.0
        {
            self.durable_term_vote = tv;
        }
        if self.role == crate::types::Role::Leader {
            let stable = self.log.stable_last_index();
            if let Some(pr) = self.tracker.get_mut(self.id)
                && pr.maybe_update(stable)
            {
                self.maybe_commit()?;
            }
        }
        Ok(())
    }
}

/// Entries must follow `prev` one index at a time, with terms that never go
/// down and never exceed the sender's term. No index arithmetic here can
/// overflow, whatever the indexes (an entry after `u64::MAX` does not
/// follow it).
pub(super) fn validate_entries(
    prev: EntryId,
    entries: &[Entry],
    term: crate::types::Term,
) -> Result<()> {
    let mut before = prev.index;
    let mut last_term = prev.term;
    for e in entries {
        if before.checked_next() != Some(e.index) {
            return Err(Error::Malformed("entries do not follow prev"));
        }
        if e.term < last_term || e.term > term {
            return Err(Error::Malformed("entry terms out of order"));
        }
        before = e.index;
        last_term = e.term;
    }
    if prev.term > term {
        return Err(Error::Malformed("prev term is past the sender's term"));
    }
    Ok(())
}

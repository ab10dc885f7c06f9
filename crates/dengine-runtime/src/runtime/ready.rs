//! Carrying out the core's `Ready`s: messages to the transport, writes to
//! the disk thread (or the in-memory store), committed entries and reads to
//! the apply thread, and the commit-only hard state held back.

use std::time::Instant;

use dengine_core::{ConfState, Entry, LogIndex, Message, MessageBody, Ready};

use super::core_loop::{CoreLoop, DataSnapshot};
use super::telemetry;
use super::{ApplyJob, DiskJob, SnapshotKind};
use crate::error::Error;
use crate::state_machine::StateMachine;
use crate::transport::SnapshotDone;

impl<SM: StateMachine> CoreLoop<SM> {
    pub(super) fn send(&mut self, msg: Message) {
        if let MessageBody::InstallSnapshot { meta } = &msg.body {
            let to = msg.to;
            let done = SnapshotDone::new(to, self.events_tx.clone());
            match self.snapshots.get(&meta.last_index).cloned() {
                Some(data) => self.transport.send_snapshot(msg, data, done),
                None => {
                    // The newest snapshot is a checkpoint of a state
                    // machine that keeps its own state: write its data
                    // now (at the last index handed out to apply, which
                    // the core then offers), as etcd sends its database
                    // as it is when a follower needs it.
                    if self.data_snapshot == DataSnapshot::None {
                        tracing::info!(to = %to, index = %meta.last_index,
                            "a follower needs a snapshot with the state machine's data; making one");
                        self.data_snapshot = DataSnapshot::Wanted;
                        self.raw.request_snapshot();
                    }
                    // Reported failed when dropped: the progress probes
                    // again, and is offered the new snapshot once made.
                    drop(done);
                }
            }
            return;
        }
        if let MessageBody::RequestVoteResponse {
            pre_vote,
            granted: false,
        } = msg.body
        {
            telemetry::record_vote_refused(pre_vote);
        }
        let to = msg.to;
        let spans = match &msg.body {
            MessageBody::AppendEntries { entries, .. } if !self.traces.is_empty() => {
                match (entries.first(), entries.last()) {
                    (Some(f), Some(l)) => self.traces.for_append(f.index, l.index),
                    _ => Vec::new(),
                }
            }
            _ => Vec::new(),
        };
        let sent = if spans.is_empty() {
            self.transport.send(msg)
        } else {
            self.transport.send_traced(msg, spans)
        };
        if sent.is_err() {
            self.raw.report_unreachable(to);
        }
    }

    pub(super) fn drain_ready(&mut self) {
        while self.fatal.is_none() && self.raw.has_ready() {
            match self.raw.ready() {
                Ok(rd) => self.handle_ready(rd),
                Err(e) => {
                    self.fail(e.into());
                    return;
                }
            }
        }
    }

    pub(super) fn handle_ready(&mut self, rd: Ready) {
        for m in rd.messages {
            self.send(m);
        }
        if let Some(mut batch) = rd.persist {
            if !self.traces.is_empty()
                && let (Some(f), Some(l)) = (batch.entries.first(), batch.entries.last())
            {
                let id = self.raw.id();
                self.traces.writing(id, f.index, l.index);
            }
            let data = batch
                .snapshot
                .as_ref()
                .and_then(|m| self.incoming.remove(&m.last_index));
            if let (Some(meta), Some(d)) = (&batch.snapshot, &data) {
                // Installed in the state machine after everything handed out
                // before it (the apply thread works in order).
                let _ = self.apply.send(ApplyJob::Restore(meta.clone(), d.clone()));
                tracing::info!(node = %self.raw.id(), index = meta.last_index.0, term = meta.last_term.0,
                    "installing a snapshot from the leader");
                self.snapshots_installed += 1;
                self.keep_snapshot(d.clone());
                for (_, stale) in self.incoming.extract_if(.., |&i, _| i <= meta.last_index) {
                    self.snapshot_store.discard(&stale);
                }
            }
            match &self.inline_store {
                Some(store) => {
                    let persisted = batch.persisted();
                    let res = store
                        .write_owned(
                            batch.snapshot.as_ref(),
                            std::mem::take(&mut batch.entries),
                            batch.hard_state.as_ref(),
                        )
                        .and_then(|()| store.sync());
                    if let Err(e) = res {
                        self.fail(Error::Storage(e.to_string()));
                        return;
                    }
                    if let Err(e) = self.raw.on_persisted(persisted) {
                        self.fail(e.into());
                        return;
                    }
                    self.persisted_traces(&persisted);
                    for m in batch.messages {
                        self.send(m);
                    }
                }
                None if self.held_commit.hold(&mut batch) => {}
                None => {
                    self.disk_jobs += 1;
                    if self.disk.send(DiskJob::Write(batch)).is_err() {
                        self.worker_gone("the disk thread");
                        return;
                    }
                }
            }
        }
        if rd.conf_state.is_some() {
            // Published before the change goes to the apply thread: a
            // caller whose change is answered once applied then reads a
            // membership that has it (the etcd differential test saw a
            // removed member still listed in the answer to its removal).
            self.publish_metrics(false);
        }
        if !rd.committed_entries.is_empty() {
            self.hand_out(rd.committed_entries);
        }
        for rs in rd.read_states {
            let Some((_, job)) = self.reads.remove(&rs.id.0) else {
                continue;
            };
            match rs.result {
                Ok(index) => {
                    let _ = self.apply.send(ApplyJob::Read(index, job));
                }
                Err(e) => job(Err(e.into())),
            }
        }
        // After this Ready's entries: the apply thread takes it once it has
        // applied everything handed out, which is where the core asks it.
        if let Some(meta) = rd.snapshot_request {
            let kind = if self.data_snapshot == DataSnapshot::Wanted {
                self.data_snapshot = DataSnapshot::Making;
                SnapshotKind::Data
            } else {
                SnapshotKind::Compaction
            };
            let _ = self.apply.send(ApplyJob::Snapshot(meta, kind));
        }
        if let Some(to) = rd.compact_to {
            let _ = self.disk.send(DiskJob::Compact(to));
        }
    }

    /// Hands the commit-only hard state held back to the disk thread: at
    /// once (`now`), or if a whole tick passed since it was held.
    pub(super) fn flush_held_commit(&mut self, now: bool) {
        let batch = if now {
            self.held_commit.take()
        } else {
            self.held_commit.on_tick()
        };
        if let Some(batch) = batch {
            self.disk_jobs += 1;
            if self.disk.send(DiskJob::Write(batch)).is_err() {
                self.worker_gone("the disk thread");
            }
        }
    }

    /// Passes committed entries to the apply thread with the replies that
    /// wait for them; a reply whose entry was replaced learns it now.
    pub(super) fn hand_out(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let proposals = self.proposals.take_for(&entries);
        let spans = match (self.traces.is_empty(), entries.first(), entries.last()) {
            (false, Some(f), Some(l)) => {
                let id = self.raw.id();
                self.traces.committed(id, f.index, l.index)
            }
            _ => Vec::new(),
        };
        let mut changes = Vec::new();
        // The membership each change puts in force, for the state machine.
        let memberships: Vec<(LogIndex, ConfState)> = entries
            .iter()
            .filter(|e| matches!(e.payload, dengine_core::EntryPayload::ConfChange(_)))
            .map(|e| (e.index, self.raw.conf_state_at(e.index)))
            .collect();
        // Membership changes are rare: skip the lookups when none waits.
        if !self.changes.is_empty() {
            for e in &entries {
                if let Some((term, reply)) = self.changes.remove(&e.index) {
                    if term == e.term {
                        changes.push((e.index, reply));
                    } else {
                        let _ = reply.send(Err(Error::Dropped(e.index)));
                    }
                }
            }
        }
        if self
            .apply
            .send(ApplyJob::Entries(
                entries,
                proposals,
                changes,
                memberships,
                Instant::now(),
                spans,
            ))
            .is_err()
        {
            self.worker_gone("the apply worker");
        }
    }

    /// Ends the fsync spans of traced entries a batch made durable.
    pub(super) fn persisted_traces(&mut self, persisted: &dengine_core::Persisted) {
        if !self.traces.is_empty()
            && let Some(last) = persisted.entries_to
        {
            self.traces.persisted(last.index);
        }
    }
}

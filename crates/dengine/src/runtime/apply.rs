//! The apply thread: runs the application's state machine on committed
//! entries in order, answers proposals and reads, takes and restores
//! snapshots.
//!
//! A thread of its own, so that a slow `apply`, a state machine writing to
//! disk, or a snapshot of the whole state never blocks the async runtime's
//! workers. Answers still wake proposers cheaply: one batch of entries
//! answers all its proposers, and waking a task is a push onto the
//! runtime's queue. A panic here (in `apply`, `snapshot`, `restore` or a
//! read) is caught and stops the node with `Event::Fatal`: the state
//! machine may be half-changed and cannot be trusted any more.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::Receiver;

use dengine_core::{EntryPayload, LogIndex};
use tokio::sync::mpsc::UnboundedSender;

use super::{ApplyJob, Event, ReadJob, panic_message};
use crate::error::Error;
use crate::snapshot::SnapshotStore;
use crate::state_machine::StateMachine;

pub(crate) fn spawn_apply_thread<SM: StateMachine>(
    sm: SM,
    applied: LogIndex,
    snapshots: SnapshotStore,
    jobs: Receiver<ApplyJob<SM>>,
    events: UnboundedSender<Event>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("dengine-apply".into())
        .spawn(move || {
            let mut worker = Applier {
                sm,
                applied,
                snapshots,
                events: events.clone(),
                reads: BTreeMap::new(),
            };
            let run = std::panic::catch_unwind(AssertUnwindSafe(|| worker.run(&jobs)));
            if let Err(panic) = run {
                let why = format!("the state machine panicked: {}", panic_message(&*panic));
                tracing::error!(error = %why, "apply thread stopped");
                let _ = events.send(Event::Fatal(why));
            }
        })
}

struct Applier<SM: StateMachine> {
    sm: SM,
    applied: LogIndex,
    snapshots: SnapshotStore,
    events: UnboundedSender<Event>,
    /// Reads waiting for the state machine to reach their index.
    reads: BTreeMap<LogIndex, Vec<ReadJob<SM>>>,
}

impl<SM: StateMachine> Drop for Applier<SM> {
    fn drop(&mut self) {
        for (_, jobs) in std::mem::take(&mut self.reads) {
            for job in jobs {
                job(Err(Error::Shutdown));
            }
        }
    }
}

/// Whether the thread goes on.
enum Flow {
    Continue,
    Stop,
}

impl<SM: StateMachine> Applier<SM> {
    fn run(&mut self, jobs: &Receiver<ApplyJob<SM>>) {
        while let Ok(job) = jobs.recv() {
            let flow = match job {
                ApplyJob::Entries(entries, proposals, changes) => {
                    self.entries(entries, proposals, changes)
                }
                ApplyJob::Read(index, job) => {
                    self.reads.entry(index).or_default().push(job);
                    Flow::Continue
                }
                ApplyJob::Snapshot(meta) => {
                    self.snapshot(meta);
                    Flow::Continue
                }
                ApplyJob::Restore(meta, data) => self.restore(meta, &data),
                ApplyJob::Stop => Flow::Stop,
            };
            if let Flow::Stop = flow {
                break;
            }
            self.run_reads();
        }
    }

    fn entries(
        &mut self,
        entries: Vec<dengine_core::Entry>,
        proposals: Vec<(LogIndex, super::ProposeReply<SM::Response>)>,
        changes: Vec<(
            LogIndex,
            tokio::sync::oneshot::Sender<Result<LogIndex, Error>>,
        )>,
    ) -> Flow {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Flow::Continue;
        };
        let before = self.applied;
        // Both come in index order, as the entries do.
        let mut answers = Vec::with_capacity(proposals.len());
        let mut change_answers = Vec::with_capacity(changes.len());
        let mut proposals = proposals.into_iter().peekable();
        let mut changes = changes.into_iter().peekable();
        for e in entries {
            // A state machine that keeps its own state may be past entries
            // the log hands out again after a restart.
            if e.index <= self.applied {
                continue;
            }
            // Replies have entries of their own kind at their index; none
            // can wait below this one.
            while proposals.next_if(|(i, _)| *i < e.index).is_some() {}
            while changes.next_if(|(i, _)| *i < e.index).is_some() {}
            match &e.payload {
                EntryPayload::Normal(data) => {
                    let r = self.sm.apply(e.id(), data);
                    if let Some((_, reply)) = proposals.next_if(|(i, _)| *i == e.index) {
                        answers.push((reply, e.index, r));
                    }
                }
                EntryPayload::ConfChange(_) => {
                    if let Some((_, reply)) = changes.next_if(|(i, _)| *i == e.index) {
                        change_answers.push((reply, e.index));
                    }
                }
                EntryPayload::Blank => {}
            }
            self.applied = e.index;
        }
        // Nobody hears of the batch before the state machine holds it (and
        // stored it, if it keeps its own state).
        if self.applied > before
            && let Err(e) = self.sm.flush(self.applied)
        {
            let msg = format!(
                "state machine failed to store entries through {}: {e}",
                self.applied
            );
            for (reply, _, _) in answers {
                let _ = reply.send(Err(Error::Fatal(msg.clone())));
            }
            for (reply, _) in change_answers {
                let _ = reply.send(Err(Error::Fatal(msg.clone())));
            }
            let _ = self.events.send(Event::Fatal(msg));
            return Flow::Stop;
        }
        for (reply, index, r) in answers {
            let _ = reply.send(Ok((index, r)));
        }
        for (reply, index) in change_answers {
            let _ = reply.send(Ok(index));
        }
        // The core handed out no more than `last`.
        if self
            .events
            .send(Event::Applied(self.applied.min(last)))
            .is_err()
        {
            return Flow::Stop;
        }
        Flow::Continue
    }

    /// Writes a snapshot at `meta`'s index: the core asks at the last
    /// index it handed out, and this thread takes the request after every
    /// entry handed out before it, so the state machine is exactly there.
    /// (A state machine that keeps its own state may be further on after a
    /// restart; the request then fails and is asked again later.)
    ///
    /// Applying pauses while the snapshot is written: the state machine
    /// is one object, written from while nothing changes it.
    fn snapshot(&mut self, meta: dengine_core::SnapshotMeta) {
        if meta.last_index != self.applied {
            let _ = self.events.send(Event::SnapshotFailed(format!(
                "asked at {} but the state machine is at {}",
                meta.last_index, self.applied
            )));
            return;
        }
        let sm = &mut self.sm;
        // A failed attempt's temporary file is removed when its writer drops.
        let made = self.snapshots.writer(meta.clone()).and_then(|mut w| {
            sm.snapshot(&mut w)?;
            w.finish()
        });
        let _ = match made {
            Ok(data) => self.events.send(Event::SnapshotMade(meta, data)),
            Err(e) => {
                tracing::warn!(error = %e, index = %meta.last_index, "state machine snapshot failed");
                self.events.send(Event::SnapshotFailed(e.to_string()))
            }
        };
    }

    fn restore(
        &mut self,
        meta: dengine_core::SnapshotMeta,
        data: &crate::snapshot::SnapshotData,
    ) -> Flow {
        if let Err(e) = crate::snapshot::restore(&mut self.sm, data) {
            let _ = self.events.send(Event::Fatal(format!(
                "restoring the snapshot at {}: {e}",
                meta.last_index
            )));
            return Flow::Stop;
        }
        self.applied = meta.last_index;
        if self.events.send(Event::Applied(self.applied)).is_err() {
            return Flow::Stop;
        }
        Flow::Continue
    }

    /// Reads run once the state machine reached their index.
    fn run_reads(&mut self) {
        while let Some(entry) = self.reads.first_entry() {
            if *entry.key() > self.applied {
                break;
            }
            for job in entry.remove() {
                // A query that panics loses its answer (its caller sees the
                // read fail), not the node: reads do not change the state.
                let sm = &self.sm;
                if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| job(Ok(sm)))) {
                    tracing::warn!(error = %panic_message(&*panic), "a read query panicked");
                }
            }
        }
    }
}

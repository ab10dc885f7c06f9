//! The apply worker: runs the application's state machine on committed
//! entries in order, answers proposals and reads, takes and restores
//! snapshots.
//!
//! It starts as a task on the runtime: handing entries to it and waking
//! the proposers it answers are then pushes onto a worker's queue, where a
//! thread of its own would cost a system call and a trip through the
//! scheduler per hand-off (measured: the in-process benchmark ran 4 times
//! slower at one proposer and half as fast at 256 with a thread). But a
//! state machine may be slow (one that writes to disk, or just heavy), and
//! a slow job on a runtime worker stalls the protocol tasks that share it.
//! So every job is timed, and one that takes longer than 50 ms, or the
//! third within a second longer than 10 ms, moves the worker to a thread
//! of its own for the rest of the node's life (one job a little slow is
//! more often the machine's stall than the state machine's: `slow_jobs`).
//! Snapshots and restores, which read or write the whole state, always
//! run on the blocking pool; a state machine that offers a
//! snapshot view has its snapshots written on a thread of their own while
//! applying goes on (`snapshot_thread`).
//!
//! A panic (in `apply`, `snapshot`, `restore` or `flush`) is caught and
//! stops the node with `Event::Fatal`: the state machine may be
//! half-changed and cannot be trusted any more. A read query that panics
//! fails only its own read (its caller gets `Error::Invalid` saying so).

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use dengine_core::{EntryPayload, LogIndex};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;

use super::snapshot_thread::SnapshotThread;
use super::{ApplyJob, Event, ReadJob, SnapshotKind, panic_message};
use crate::error::Error;
use crate::snapshot::SnapshotStore;
use crate::state_machine::StateMachine;

use super::slow_jobs::SlowJobs;

/// Starts the apply worker. The returned receiver completes (with an
/// error: its sender is dropped) once the worker has finished, wherever it
/// ran.
pub(crate) fn spawn_applier<SM: StateMachine>(
    sm: SM,
    applied: LogIndex,
    snapshots: SnapshotStore,
    jobs: UnboundedReceiver<ApplyJob<SM>>,
    events: UnboundedSender<Event>,
) -> oneshot::Receiver<()> {
    let (done, finished) = oneshot::channel();
    let worker = Applier {
        sm,
        applied,
        snapshots,
        events,
        reads: BTreeMap::new(),
        writing: None,
    };
    tokio::spawn(on_runtime(worker, jobs, done));
    finished
}

/// What a job's run came to.
enum Outcome {
    Continue,
    Stop,
    Panicked(String),
}

/// Runs `job`, catching a panic.
fn run_job<SM: StateMachine>(worker: &mut Applier<SM>, job: ApplyJob<SM>) -> Outcome {
    match std::panic::catch_unwind(AssertUnwindSafe(|| worker.handle(job))) {
        Ok(true) => Outcome::Stop,
        Ok(false) => Outcome::Continue,
        Err(panic) => Outcome::Panicked(panic_message(&*panic)),
    }
}

/// The worker as a task, until a job proves slow.
async fn on_runtime<SM: StateMachine>(
    mut worker: Applier<SM>,
    mut jobs: UnboundedReceiver<ApplyJob<SM>>,
    done: oneshot::Sender<()>,
) {
    let mut slow = SlowJobs::default();
    while let Some(job) = jobs.recv().await {
        let whole_state = matches!(job, ApplyJob::Snapshot(..) | ApplyJob::Restore(..));
        let started = Instant::now();
        let outcome = if whole_state {
            // Off the runtime, and back with the state machine.
            let events = worker.events.clone();
            match tokio::task::spawn_blocking(move || {
                let outcome = run_job(&mut worker, job);
                (worker, outcome)
            })
            .await
            {
                Ok((w, outcome)) => {
                    worker = w;
                    outcome
                }
                Err(e) => {
                    // `run_job` catches panics: the pool itself failed, and
                    // the state machine went with it.
                    let _ = events.send(Event::Fatal(format!(
                        "the blocking pool lost the state machine: {e}"
                    )));
                    return;
                }
            }
        } else {
            run_job(&mut worker, job)
        };
        match outcome {
            Outcome::Continue => {}
            Outcome::Stop => return,
            Outcome::Panicked(why) => {
                worker.panicked(&why);
                return;
            }
        }
        if !whole_state && slow.record(Instant::now(), started.elapsed()) {
            tracing::info!(
                took_ms = started.elapsed().as_millis() as u64,
                "the state machine is slow: apply moves to a thread of its own"
            );
            let spawned = std::thread::Builder::new()
                .name("dengine-apply".into())
                .spawn(move || on_thread(worker, jobs, done));
            if let Err(e) = spawned {
                // The worker went with the closure: nothing can apply now.
                tracing::error!(error = %e, "starting the apply thread failed");
            }
            return;
        }
    }
}

/// The worker on a thread of its own.
fn on_thread<SM: StateMachine>(
    mut worker: Applier<SM>,
    mut jobs: UnboundedReceiver<ApplyJob<SM>>,
    done: oneshot::Sender<()>,
) {
    while let Some(job) = jobs.blocking_recv() {
        match run_job(&mut worker, job) {
            Outcome::Continue => {}
            Outcome::Stop => break,
            Outcome::Panicked(why) => {
                worker.panicked(&why);
                break;
            }
        }
    }
    drop(done);
}

struct Applier<SM: StateMachine> {
    sm: SM,
    applied: LogIndex,
    snapshots: SnapshotStore,
    events: UnboundedSender<Event>,
    /// Reads waiting for the state machine to reach their index.
    reads: BTreeMap<LogIndex, Vec<ReadJob<SM>>>,
    /// The snapshot being written from a view, if any.
    writing: Option<SnapshotThread>,
}

impl<SM: StateMachine> Drop for Applier<SM> {
    fn drop(&mut self) {
        // Before the state machine goes: the view may read its storage.
        self.stop_writing();
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
    /// Stops the node: the state machine panicked and cannot be trusted.
    fn panicked(&self, why: &str) {
        let why = format!("the state machine panicked: {why}");
        tracing::error!(error = %why, "apply stopped");
        let _ = self.events.send(Event::Fatal(why));
    }

    /// Carries out one job; true to stop.
    fn handle(&mut self, job: ApplyJob<SM>) -> bool {
        let flow = match job {
            ApplyJob::Entries(entries, proposals, changes, memberships, handed_out, spans) => {
                let flow = self.entries(entries, proposals, changes, memberships);
                super::telemetry::record_apply_time(handed_out.elapsed());
                // Traced entries' apply spans end here, answered.
                drop(spans);
                flow
            }
            ApplyJob::Read(index, job) => {
                self.reads.entry(index).or_default().push(job);
                Flow::Continue
            }
            ApplyJob::Snapshot(meta, kind) => self.snapshot(meta, kind),
            ApplyJob::Restore(meta, data) => self.restore(meta, &data),
            ApplyJob::Stop => Flow::Stop,
        };
        if let Flow::Stop = flow {
            return true;
        }
        self.run_reads();
        false
    }

    fn entries(
        &mut self,
        entries: Vec<dengine_core::Entry>,
        proposals: Vec<(LogIndex, super::ProposeReply<SM::Response>)>,
        changes: Vec<(
            LogIndex,
            tokio::sync::oneshot::Sender<Result<LogIndex, Error>>,
        )>,
        memberships: Vec<(LogIndex, dengine_core::ConfState)>,
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
        let mut memberships = memberships.into_iter().peekable();
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
                EntryPayload::ConfChange(cc) => {
                    while memberships.next_if(|(i, _)| *i < e.index).is_some() {}
                    if let Some((_, members)) = memberships.next_if(|(i, _)| *i == e.index) {
                        self.sm.apply_membership(e.id(), cc, &members);
                    }
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
    /// A state machine that keeps its own state may be further on after a
    /// restart (its state was durable past the commit index the log had
    /// made durable), but the core is told where it stood
    /// ([`dengine_core::RawNode::state_machine_restored`]) and asks
    /// nothing below that. Were it asked all the same, a compaction would
    /// be made, since its state is durable through the index asked, and a
    /// snapshot with data would fail, to be asked again after a backoff.
    ///
    /// For compaction, a state machine that keeps its state durably only
    /// makes it durable ([`StateMachine::checkpoint`]): nothing is
    /// written out.
    ///
    /// Otherwise from the state machine's view, if it offers one, on a
    /// thread of its own while applying goes on; otherwise here, and
    /// applying pauses while the snapshot is written.
    fn snapshot(&mut self, meta: dengine_core::SnapshotMeta, kind: SnapshotKind) -> Flow {
        let mismatch = |events: &UnboundedSender<Event>, applied: LogIndex| {
            let _ = events.send(Event::SnapshotFailed(format!(
                "asked at {} but the state machine is at {applied}",
                meta.last_index
            )));
        };
        if meta.last_index > self.applied {
            mismatch(&self.events, self.applied);
            return Flow::Continue;
        }
        if kind == SnapshotKind::Compaction {
            let started = Instant::now();
            match self.sm.checkpoint() {
                Ok(None) => {}
                Ok(Some(durable)) if durable >= meta.last_index => {
                    super::telemetry::record_snapshot("checkpoint", started.elapsed(), 0);
                    let _ = self.events.send(Event::SnapshotMade(meta, None));
                    return Flow::Continue;
                }
                Ok(Some(durable)) => {
                    let _ = self.events.send(Event::SnapshotFailed(format!(
                        "the state machine made its state durable through {durable}, \
                         short of {}",
                        meta.last_index
                    )));
                    return Flow::Continue;
                }
                Err(e) => {
                    let _ = self.events.send(Event::Fatal(format!(
                        "state machine failed to make its state durable through {}: {e}",
                        meta.last_index
                    )));
                    return Flow::Stop;
                }
            }
        }
        if meta.last_index != self.applied {
            // Data written now would be of a later index than the meta.
            mismatch(&self.events, self.applied);
            return Flow::Continue;
        }
        self.write_snapshot(meta);
        Flow::Continue
    }

    /// Writes the state machine's data as the snapshot at `meta`.
    fn write_snapshot(&mut self, meta: dengine_core::SnapshotMeta) {
        if self.writing.as_ref().is_some_and(SnapshotThread::running) {
            // The core asks for one at a time: this is not expected.
            let _ = self.events.send(Event::SnapshotFailed(
                "the last snapshot is still being written".into(),
            ));
            return;
        }
        self.stop_writing();
        if let Some(view) = self.sm.snapshot_view() {
            let started =
                SnapshotThread::start(view, meta, self.snapshots.clone(), self.events.clone());
            match started {
                Ok(thread) => self.writing = Some(thread),
                Err(e) => {
                    let _ = self.events.send(Event::SnapshotFailed(format!(
                        "starting the snapshot's thread: {e}"
                    )));
                }
            }
            return;
        }
        let sm = &mut self.sm;
        let started = Instant::now();
        // A failed attempt's temporary file is removed when its writer drops.
        let made = self.snapshots.writer(meta.clone()).and_then(|mut w| {
            sm.snapshot(&mut w)?;
            w.finish()
        });
        super::snapshot_thread::report(made, meta, started, &self.events, true);
    }

    /// Stops the snapshot being written from a view, if any, and waits
    /// for its thread.
    fn stop_writing(&mut self) {
        if let Some(thread) = self.writing.take() {
            thread.stop();
        }
    }

    fn restore(
        &mut self,
        meta: dengine_core::SnapshotMeta,
        data: &crate::snapshot::SnapshotData,
    ) -> Flow {
        // The snapshot being written is older than this one, and its view
        // may read what the restore replaces.
        self.stop_writing();
        let started = std::time::Instant::now();
        let restored = crate::snapshot::restore(&mut self.sm, data);
        if restored.is_ok() {
            super::telemetry::record_snapshot("installed", started.elapsed(), data.len());
        }
        if let Err(e) = restored {
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
                // A query that panics fails its own read, not the node:
                // the job catches it and answers so (`Node::read`).
                job(Ok(&self.sm));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use dengine_core::{ConfState, EntryId, SnapshotMeta, Term};

    use super::*;

    /// A state machine that keeps its own state, durable through its
    /// applied index at every checkpoint.
    struct Durable(LogIndex);

    impl StateMachine for Durable {
        type Response = ();
        fn apply(&mut self, at: EntryId, _: &[u8]) {
            self.0 = at.index;
        }
        fn snapshot(&mut self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
            out.write_all(&self.0.0.to_le_bytes())
        }
        fn restore(&mut self, _: &mut dyn std::io::Read) -> std::io::Result<()> {
            Ok(())
        }
        fn applied_index(&self) -> Option<LogIndex> {
            Some(self.0)
        }
        fn checkpoint(&mut self) -> std::io::Result<Option<LogIndex>> {
            Ok(Some(self.0))
        }
    }

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_index: LogIndex(index),
            last_term: Term(1),
            conf_state: ConfState::default(),
        }
    }

    /// After a restart the state machine may be past the index the core
    /// asks a snapshot at: a compaction is made (its state is durable
    /// through it), a snapshot with data is not (it would be of a later
    /// index); past what it applied, neither is.
    #[test]
    fn a_state_machine_ahead_of_the_request_checkpoints_but_writes_no_data() {
        let (events, mut reports) = tokio::sync::mpsc::unbounded_channel();
        let mut worker = Applier {
            sm: Durable(LogIndex(11)),
            applied: LogIndex(11),
            snapshots: SnapshotStore::memory(),
            events,
            reads: BTreeMap::new(),
            writing: None,
        };
        assert!(matches!(
            worker.snapshot(meta(9), SnapshotKind::Compaction),
            Flow::Continue
        ));
        match reports.try_recv() {
            Ok(Event::SnapshotMade(m, None)) => assert_eq!(m.last_index, LogIndex(9)),
            _ => panic!("a checkpoint at 9"),
        }
        worker.snapshot(meta(9), SnapshotKind::Data);
        match reports.try_recv() {
            Ok(Event::SnapshotFailed(why)) => {
                assert_eq!(why, "asked at 9 but the state machine is at 11");
            }
            _ => panic!("no data snapshot at 9"),
        }
        worker.snapshot(meta(12), SnapshotKind::Compaction);
        assert!(matches!(reports.try_recv(), Ok(Event::SnapshotFailed(_))));
        assert!(reports.try_recv().is_err());
    }
}

//! The disk thread: writes persist batches and makes them durable in
//! groups, one fsync for everything that was waiting (group commit).
//!
//! A group whose only change is the commit index is written but not
//! synced, as etcd's `raft.MustSync` decides: nothing is promised on a
//! commit index being durable (a node that restarts with an older one
//! learns it again from the leader, and committed entries are never
//! replaced), while entries, a snapshot, and a changed term or vote are
//! what acknowledgements and votes promise. The next synced group makes
//! the commit durable too (the log is written in order). Under light load
//! that was every other fsync of every member: one for a write's entry,
//! one for the commit that followed it.
//!
//! Such a group is not even written at once: its hard state waits, in
//! memory, for the next group that writes anything (whose own hard state,
//! if any, supersedes it), or for the disk to be idle for [`IDLE_WRITE`].
//! A write of the log is a device round trip (the write-ahead log writes
//! with `O_DIRECT`), and under light load every write's commit cost one,
//! in front of the next write's entry.
//!
//! The acknowledgements of appends that waited for a group's sync are sent
//! from here, straight to the transport, the moment the sync returns:
//! handing them to the core task first cost a follower one more wake-up
//! on every write's path (the leader waits for them to commit). Every
//! other message that waited (votes, and whatever a node sends before its
//! new term is durable) still goes back to the core task, which sends it
//! with what only it knows (snapshot data, traces, telemetry).
//!
//! Reports go to the core task through [`DiskReports`], which wakes it
//! only for those that let it move on at once.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use dengine_core::{Message, MessageBody, NodeId};

use super::{DiskJob, DiskReports, Event, Store, panic_message};
use crate::error::Error;
use crate::snapshot::SnapshotStore;
use crate::transport::Transport;

/// Most jobs gathered into one sync.
const MAX_GROUP: usize = 4096;

/// How long a hard state that changes only the commit index waits to be
/// written when no other write comes.
pub(crate) const IDLE_WRITE: Duration = Duration::from_millis(100);

pub(crate) fn spawn_disk_thread(
    store: Store,
    snapshots: SnapshotStore,
    transport: Arc<dyn Transport>,
    jobs: Receiver<DiskJob>,
    reports: Arc<DiskReports>,
    events: UnboundedSender<Event>,
) -> std::io::Result<JoinHandle<()>> {
    // The acknowledgements it sends go through the transport as if from
    // the node's tasks: inside the runtime, where a transport may spawn.
    let runtime = tokio::runtime::Handle::try_current().ok();
    std::thread::Builder::new()
        .name("dengine-disk".into())
        .spawn(move || {
            let _inside = runtime.as_ref().map(|r| r.enter());
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run(&store, &snapshots, &*transport, &jobs, &reports)
            }));
            let why = match run {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(panic) => format!("the disk thread panicked: {}", panic_message(&*panic)),
            };
            // Nothing after this write can be trusted to be durable: the
            // node stops rather than acknowledge anything else.
            tracing::error!(error = %why, "disk thread stopped");
            let _ = events.send(Event::Fatal(why));
        })
}

fn run(
    store: &Store,
    snapshots: &SnapshotStore,
    transport: &dyn Transport,
    jobs: &Receiver<DiskJob>,
    reports: &DiskReports,
) -> Result<(), Error> {
    // The term and vote of the last hard state written (and synced: a
    // group that changes them is synced).
    let mut term_vote = {
        let hs = store.initial_state()?.hard_state;
        (hs.term, hs.vote)
    };
    // A commit-only hard state not yet written (see the module's docs).
    let mut deferred: Option<dengine_core::HardState> = None;
    loop {
        let first = match deferred {
            None => match jobs.recv() {
                Ok(job) => job,
                Err(_) => return Ok(()),
            },
            Some(h) => match jobs.recv_timeout(IDLE_WRITE) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    store.write(None, &[], Some(&h))?;
                    deferred = None;
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    store.write(None, &[], Some(&h))?;
                    return Ok(());
                }
            },
        };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        let mut written = Vec::new();
        let mut saved = Vec::new();
        let mut stop = false;
        // The newest snapshot the log now starts after, if this group
        // recorded one: older snapshot files are no longer needed.
        let mut prune: Option<dengine_core::LogIndex> = None;
        // Consecutive plain writes are merged into one store write: one
        // transaction and one fsync for the whole group.
        let mut merged = Merged::default();
        // Older than anything in the group: any hard state there wins.
        merged.add(Vec::new(), deferred.take());
        let mut entries = 0;
        let mut must_sync = false;
        // Whether the group changes nothing but the commit index.
        let mut commit_only = true;
        // Whether it makes a new term or vote durable.
        let mut new_term_vote = false;
        for job in group {
            commit_only &= matches!(&job,
                DiskJob::Write(b) if b.entries.is_empty() && b.snapshot.is_none());
            if let DiskJob::Write(batch) = &job {
                let changes_term_vote = batch
                    .hard_state
                    .is_some_and(|h| (h.term, h.vote) != term_vote);
                new_term_vote |= changes_term_vote;
                must_sync |=
                    !batch.entries.is_empty() || batch.snapshot.is_some() || changes_term_vote;
                if let Some(h) = batch.hard_state {
                    term_vote = (h.term, h.vote);
                }
            }
            match job {
                DiskJob::Write(mut batch) if batch.snapshot.is_none() => {
                    // The entries move into the merged write (no copy).
                    let persisted = batch.persisted();
                    entries += batch.entries.len();
                    merged.add(std::mem::take(&mut batch.entries), batch.hard_state);
                    written.push((persisted, batch.messages));
                }
                DiskJob::Write(batch) => {
                    // The snapshot's data was made durable when it was
                    // received, before the log says it starts after it.
                    merged.flush(store)?;
                    prune = prune.max(batch.snapshot.as_ref().map(|m| m.last_index));
                    store.write(
                        batch.snapshot.as_ref(),
                        &batch.entries,
                        batch.hard_state.as_ref(),
                    )?;
                    entries += batch.entries.len();
                    written.push((batch.persisted(), batch.messages));
                }
                DiskJob::Compact(index) => {
                    merged.flush(store)?;
                    store.compact(index)?;
                }
                DiskJob::SaveSnapshot(meta, data) => {
                    // The data is durable already (the apply task wrote
                    // it), or the state machine's own state is, through
                    // this index (a checkpoint: no data).
                    merged.flush(store)?;
                    prune = prune.max(Some(meta.last_index));
                    store.save_snapshot_meta(&meta)?;
                    saved.push((meta, data));
                }
                DiskJob::Stop => stop = true,
            }
        }
        if commit_only && !must_sync && !stop {
            deferred = merged.hard_state.take();
        }
        merged.flush(store)?;
        if must_sync || !saved.is_empty() {
            let started = std::time::Instant::now();
            #[cfg(feature = "failpoints")]
            crate::failpoints::before_sync()?;
            store.sync()?;
            super::telemetry::record_sync(started.elapsed(), entries);
        }
        if let Some(recorded) = prune
            && let Err(e) = snapshots.prune(recorded)
        {
            // Old snapshots only cost space; the node works on.
            tracing::warn!(error = %e, "removing old snapshots failed");
        }
        if !written.is_empty() {
            let unreachable = send_acknowledgements(transport, &mut written);
            if reports
                .persisted(written, unreachable, new_term_vote)
                .is_err()
            {
                return Ok(());
            }
        }
        for (meta, data) in saved {
            if reports.other(Event::SnapshotSaved(meta, data)).is_err() {
                return Ok(());
            }
        }
        if stop {
            return Ok(());
        }
    }
}

/// Sends the append acknowledgements among the messages that waited for
/// `written` to be durable (it is, now), leaving the rest for the core
/// task. Returns the peers found unreachable, for the core to hear of.
fn send_acknowledgements(
    transport: &dyn Transport,
    written: &mut [(dengine_core::Persisted, Vec<Message>)],
) -> Vec<NodeId> {
    let mut unreachable = Vec::new();
    for (_, messages) in written.iter_mut() {
        let acks = messages.extract_if(.., |m| {
            matches!(m.body, MessageBody::AppendEntriesResponse { .. })
        });
        for m in acks {
            let to = m.to;
            if transport.send(m).is_err() {
                unreachable.push(to);
            }
        }
    }
    unreachable
}

/// Plain writes gathered into one: later entries replace earlier ones from
/// their first index on (as the store would), the last hard state wins.
#[derive(Default)]
struct Merged {
    entries: Vec<dengine_core::Entry>,
    hard_state: Option<dengine_core::HardState>,
}

impl Merged {
    fn add(
        &mut self,
        entries: Vec<dengine_core::Entry>,
        hard_state: Option<dengine_core::HardState>,
    ) {
        if let Some(first) = entries.first() {
            match self.entries.first().map(|e| e.index) {
                Some(start) if first.index >= start => {
                    self.entries.truncate((first.index.0 - start.0) as usize);
                    self.entries.extend(entries);
                }
                // The first batch, or one that rewrites from before this
                // group's entries: it replaces them all.
                _ => self.entries = entries,
            }
        }
        if hard_state.is_some() {
            self.hard_state = hard_state;
        }
    }

    fn flush(&mut self, store: &Store) -> Result<(), Error> {
        if self.entries.is_empty() && self.hard_state.is_none() {
            return Ok(());
        }
        store.write(None, &self.entries, self.hard_state.as_ref())?;
        self.entries.clear();
        self.hard_state = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use dengine_core::storage::MemStorage;
    use dengine_core::{
        Entry, EntryPayload, HardState, InitialState, LogIndex, LogStorage, LogStore, MetaStore,
        NodeId, PersistBatch, SnapshotMeta, StorageError, StoreIdentity, Term,
    };

    use tokio::sync::mpsc::UnboundedReceiver;

    use super::*;
    use crate::transport::{SnapshotData, SnapshotDone, Unreachable};

    /// A transport that records what it was given and how many syncs the
    /// store had made by then; it refuses messages to node 9.
    struct Recording {
        store: Arc<Counting>,
        sent: std::sync::Mutex<Vec<(Message, usize)>>,
    }

    impl Transport for Recording {
        fn send(&self, msg: Message) -> Result<(), Unreachable> {
            let to = msg.to;
            let syncs = self.store.syncs.load(Ordering::SeqCst);
            self.sent.lock().expect("lock").push((msg, syncs));
            if to == NodeId(9) {
                return Err(Unreachable);
            }
            Ok(())
        }

        fn send_snapshot(&self, _: Message, _: SnapshotData, done: SnapshotDone) {
            done.failed();
        }
    }

    fn recording(store: &Arc<Counting>) -> Arc<Recording> {
        Arc::new(Recording {
            store: store.clone(),
            sent: Default::default(),
        })
    }

    /// A memory store that counts its syncs.
    #[derive(Default)]
    struct Counting {
        inner: MemStorage,
        syncs: AtomicUsize,
    }

    impl LogStorage for Counting {
        fn initial_state(&self) -> Result<InitialState, StorageError> {
            self.inner.initial_state()
        }
        fn entries(
            &self,
            lo: LogIndex,
            hi: LogIndex,
            max_bytes: u64,
        ) -> Result<Vec<Entry>, StorageError> {
            self.inner.entries(lo, hi, max_bytes)
        }
        fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
            self.inner.term(index)
        }
        fn first_index(&self) -> Result<LogIndex, StorageError> {
            self.inner.first_index()
        }
        fn last_index(&self) -> Result<LogIndex, StorageError> {
            self.inner.last_index()
        }
        fn snapshot_meta(&self) -> Result<SnapshotMeta, StorageError> {
            self.inner.snapshot_meta()
        }
    }

    impl MetaStore for Counting {
        fn identity(&self) -> Result<Option<StoreIdentity>, StorageError> {
            self.inner.identity()
        }
        fn set_identity(&self, id: StoreIdentity) -> Result<(), StorageError> {
            self.inner.set_identity(id)
        }
        fn save_snapshot_meta(&self, meta: &SnapshotMeta) -> Result<(), StorageError> {
            self.inner.save_snapshot_meta(meta)
        }
    }

    impl LogStore for Counting {
        fn write(
            &self,
            snapshot: Option<&SnapshotMeta>,
            entries: &[Entry],
            hard_state: Option<&HardState>,
        ) -> Result<(), StorageError> {
            self.inner.write(snapshot, entries, hard_state)
        }
        fn sync(&self) -> Result<(), StorageError> {
            self.syncs.fetch_add(1, Ordering::SeqCst);
            self.inner.sync()
        }
        fn compact(&self, index: LogIndex) -> Result<(), StorageError> {
            self.inner.compact(index)
        }
    }

    fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term: Term(term),
            vote: NodeId(vote),
            commit: LogIndex(commit),
        }
    }

    fn entry(index: u64) -> Entry {
        Entry {
            term: Term(1),
            index: LogIndex(index),
            payload: EntryPayload::Blank,
        }
    }

    /// Only entries, a snapshot or a new term or vote are synced; a
    /// hard state that changes only the commit index is reported persisted
    /// at once, and written with the next write or once the disk is idle.
    #[test]
    fn a_commit_alone_is_written_later_and_not_synced() {
        let counting = Arc::new(Counting::default());
        let store: Store = counting.clone();
        let (jobs, rx) = std::sync::mpsc::channel();
        let (reports, mut persisted) = reports();
        let transport = recording(&counting);
        let thread = spawn_disk_thread(
            store,
            SnapshotStore::memory(),
            transport,
            rx,
            reports.clone(),
            closed_events(),
        )
        .expect("spawn");
        // Each job waits for the one before, so each is a group alone.
        let mut run = |batch: PersistBatch| {
            jobs.send(DiskJob::Write(batch)).expect("send");
            match next_report(&reports, &mut persisted) {
                Event::Persisted(done, _) => assert_eq!(done.len(), 1),
                _ => panic!("a persisted batch"),
            }
            counting.syncs.load(Ordering::SeqCst)
        };
        let written_commit = || counting.initial_state().expect("state").hard_state.commit.0;
        let vote = |term, vote, commit| PersistBatch {
            hard_state: Some(hard_state(term, vote, commit)),
            ..Default::default()
        };
        assert_eq!(run(vote(1, 1, 0)), 1, "a vote is synced");
        let append = |index| PersistBatch {
            entries: vec![entry(index)],
            ..Default::default()
        };
        assert_eq!(run(append(1)), 2, "entries are synced");
        assert_eq!(run(vote(1, 1, 1)), 2, "a commit alone is not");
        assert_eq!(written_commit(), 0, "nor written at once");
        assert_eq!(run(append(2)), 3);
        assert_eq!(written_commit(), 1, "but with the next write");
        assert_eq!(run(vote(1, 1, 2)), 3);
        let waited = std::time::Instant::now();
        while written_commit() != 2 {
            assert!(
                waited.elapsed() < IDLE_WRITE * 50,
                "a commit alone is written once the disk is idle"
            );
            std::thread::sleep(IDLE_WRITE / 10);
        }
        assert_eq!(counting.syncs.load(Ordering::SeqCst), 3, "and not synced");
        assert_eq!(run(vote(2, 0, 2)), 4, "a new term is synced");
        assert_eq!(run(vote(2, 3, 2)), 5, "a new vote is synced");
        assert_eq!(run(vote(2, 3, 2)), 5, "nothing new, no sync");
        assert_eq!(run(vote(2, 3, 3)), 5);
        jobs.send(DiskJob::Stop).expect("stop");
        thread.join().expect("the disk thread ends");
        assert_eq!(written_commit(), 3, "a commit waiting is written on stop");
    }

    /// Reports that wake the test for each (nothing published: every
    /// report wakes).
    fn reports() -> (Arc<DiskReports>, UnboundedReceiver<Event>) {
        let (events, woken) = tokio::sync::mpsc::unbounded_channel();
        (Arc::new(DiskReports::new(events)), woken)
    }

    /// The channel for the disk thread's fatal errors, unused here.
    fn closed_events() -> UnboundedSender<Event> {
        tokio::sync::mpsc::unbounded_channel().0
    }

    /// Waits for the disk thread's next report (a report that changes
    /// nothing at once, as a commit alone, wakes no one: it is looked for).
    fn next_report(reports: &DiskReports, woken: &mut UnboundedReceiver<Event>) -> Event {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let mut taken = reports.take();
            if !taken.is_empty() {
                assert_eq!(taken.len(), 1, "one report at a time");
                return taken.remove(0);
            }
            match woken.try_recv() {
                Ok(ev) => assert!(matches!(ev, Event::DiskReports), "a wake-up"),
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
            assert!(std::time::Instant::now() < deadline, "no report came");
        }
    }

    fn message(to: u64, body: MessageBody) -> Message {
        Message {
            from: NodeId(1),
            to: NodeId(to),
            term: Term(1),
            body,
        }
    }

    /// The acknowledgements of a batch's entries leave from the disk
    /// thread once they are synced, not before; the core hears of the
    /// peers they could not reach, and gets every other message to send.
    #[test]
    fn acknowledgements_are_sent_after_the_sync_and_the_rest_go_to_the_core() {
        let counting = Arc::new(Counting::default());
        let store: Store = counting.clone();
        let transport = recording(&counting);
        let (jobs, rx) = std::sync::mpsc::channel();
        let (reports, mut persisted) = reports();
        let thread = spawn_disk_thread(
            store,
            SnapshotStore::memory(),
            transport.clone(),
            rx,
            reports.clone(),
            closed_events(),
        )
        .expect("spawn");
        let ack = |to| {
            message(
                to,
                MessageBody::AppendEntriesResponse {
                    result: Ok(LogIndex(1)),
                },
            )
        };
        let vote = message(
            3,
            MessageBody::RequestVoteResponse {
                pre_vote: false,
                granted: true,
            },
        );
        let batch = PersistBatch {
            entries: vec![entry(1)],
            hard_state: Some(hard_state(1, 3, 0)),
            messages: vec![ack(2), vote.clone(), ack(9)],
            ..Default::default()
        };
        jobs.send(DiskJob::Write(batch)).expect("send");
        let Event::Persisted(done, unreachable) = next_report(&reports, &mut persisted) else {
            panic!("a persisted batch");
        };
        let sent = transport.sent.lock().expect("lock").clone();
        assert_eq!(
            sent,
            vec![(ack(2), 1), (ack(9), 1)],
            "both acknowledgements were sent, each after the one sync"
        );
        assert_eq!(unreachable, vec![NodeId(9)]);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].1, vec![vote], "the vote is the core's to send");
        jobs.send(DiskJob::Stop).expect("stop");
        thread.join().expect("the disk thread ends");
    }
}

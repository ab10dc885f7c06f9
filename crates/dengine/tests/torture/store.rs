//! A log store that loses what was not synced when its node crashes, and
//! can be told to make a sync slow or fail.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dengine::core::storage::MemStorage;
use dengine::core::{
    Entry, HardState, InitialState, LogIndex, LogStorage, LogStore, MetaStore, SnapshotMeta,
    StorageError, StoreIdentity, Term,
};

/// One change to the store, replayed to rebuild what survived a crash.
#[derive(Clone)]
enum Op {
    Write(Option<SnapshotMeta>, Vec<Entry>, Option<HardState>),
    Compact(LogIndex),
    SaveMeta(SnapshotMeta),
}

/// What a crash leaves: the identity and every synced change, in order.
#[derive(Clone, Default)]
pub struct Durable {
    identity: Option<StoreIdentity>,
    ops: Vec<Op>,
}

/// Faults the harness turns on for one store.
#[derive(Default)]
pub struct DiskFaults {
    /// The next syncs (this many) fail.
    pub failing_syncs: AtomicU32,
    /// Syncs take a few milliseconds.
    pub slow: AtomicBool,
}

/// A memory store with a durable part that only `sync` adds to.
pub struct CrashStore {
    visible: MemStorage,
    durable: Mutex<Durable>,
    pending: Mutex<Vec<Op>>,
    /// Set when the node crashed: nothing more reaches the durable part.
    crashed: AtomicBool,
    pub faults: Arc<DiskFaults>,
}

fn injected(what: &str) -> StorageError {
    StorageError::Fatal(format!("injected fault: {what}"))
}

impl CrashStore {
    /// An empty store.
    pub fn new(faults: Arc<DiskFaults>) -> CrashStore {
        CrashStore::recover(Durable::default(), faults)
    }

    /// The store as it was at its last sync before a crash.
    pub fn recover(durable: Durable, faults: Arc<DiskFaults>) -> CrashStore {
        let visible = MemStorage::new();
        if let Some(id) = durable.identity {
            let _ = visible.set_identity(id);
        }
        for op in &durable.ops {
            // Replaying what succeeded before succeeds again.
            let _ = match op {
                Op::Write(s, e, h) => visible.write(s.as_ref(), e, h.as_ref()),
                Op::Compact(i) => visible.compact(*i),
                Op::SaveMeta(m) => visible.save_snapshot_meta(m),
            };
        }
        CrashStore {
            visible,
            durable: Mutex::new(durable),
            pending: Mutex::new(Vec::new()),
            crashed: AtomicBool::new(false),
            faults,
        }
    }

    /// Crashes: what was not synced is lost; returns what survives. Under
    /// the durable part's lock, so no sync lands after the crash (the
    /// node's threads go on a moment longer than a real crash allows, and
    /// a sync that counted as done would let them prune snapshot files the
    /// surviving state still needs).
    pub fn crash(&self) -> Durable {
        let durable = self.durable.lock().expect("lock");
        self.crashed.store(true, Ordering::SeqCst);
        durable.clone()
    }

    fn record(&self, op: Op) -> Result<(), StorageError> {
        if self.crashed.load(Ordering::SeqCst) {
            return Err(injected("the node crashed"));
        }
        self.pending.lock().expect("lock").push(op);
        Ok(())
    }
}

impl LogStorage for CrashStore {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        self.visible.initial_state()
    }
    fn entries(&self, lo: LogIndex, hi: LogIndex, max: u64) -> Result<Vec<Entry>, StorageError> {
        self.visible.entries(lo, hi, max)
    }
    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        self.visible.term(index)
    }
    fn first_index(&self) -> Result<LogIndex, StorageError> {
        self.visible.first_index()
    }
    fn last_index(&self) -> Result<LogIndex, StorageError> {
        self.visible.last_index()
    }
    fn snapshot_meta(&self) -> Result<SnapshotMeta, StorageError> {
        self.visible.snapshot_meta()
    }
}

impl MetaStore for CrashStore {
    fn identity(&self) -> Result<Option<StoreIdentity>, StorageError> {
        self.visible.identity()
    }
    fn set_identity(&self, id: StoreIdentity) -> Result<(), StorageError> {
        self.visible.set_identity(id)?;
        self.durable.lock().expect("lock").identity = Some(id);
        Ok(())
    }
    fn save_snapshot_meta(&self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        // Durable at the next sync, like the log's own writes.
        self.record(Op::SaveMeta(meta.clone()))?;
        self.visible.save_snapshot_meta(meta)
    }
}

impl LogStore for CrashStore {
    fn write(
        &self,
        snapshot: Option<&SnapshotMeta>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        self.record(Op::Write(
            snapshot.cloned(),
            entries.to_vec(),
            hard_state.copied(),
        ))?;
        self.visible.write(snapshot, entries, hard_state)
    }

    fn sync(&self) -> Result<(), StorageError> {
        if self.crashed.load(Ordering::SeqCst) {
            return Err(injected("the node crashed"));
        }
        if self.faults.slow.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(3));
        }
        let failing = &self.faults.failing_syncs;
        if failing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            // A failed fsync: nothing pending may be trusted, and the node
            // must stop (it does: storage errors are fatal).
            self.pending.lock().expect("lock").clear();
            return Err(injected("fsync failed"));
        }
        let ops = std::mem::take(&mut *self.pending.lock().expect("lock"));
        let mut durable = self.durable.lock().expect("lock");
        if self.crashed.load(Ordering::SeqCst) {
            return Err(injected("the node crashed"));
        }
        durable.ops.extend(ops);
        Ok(())
    }

    fn compact(&self, index: LogIndex) -> Result<(), StorageError> {
        self.record(Op::Compact(index))?;
        self.visible.compact(index)
    }
}

//! An in-memory log store: for tests, examples and nodes that need no
//! durability. Everything written is "durable" at once (until the process
//! ends).

use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::StorageError;
use crate::rawnode::{PersistBatch, bootstrap_entry};
use crate::storage::checks::{
    check_append, check_compaction, check_identity, check_read, hard_state_after_install,
    is_newer_snapshot, within_bytes,
};
use crate::storage::{InitialState, LogStorage, LogStore, MetaStore, StoreIdentity};
use crate::types::{ConfState, Entry, EntryId, HardState, LogIndex, NodeId, SnapshotMeta, Term};

/// The contents of a [`MemStorage`].
#[derive(Clone, Debug, Default)]
pub struct MemStorageCore {
    /// The stored hard state.
    pub hard_state: HardState,
    /// The newest snapshot's metadata.
    pub snapshot: SnapshotMeta,
    /// The newest snapshot's data.
    pub snapshot_data: Vec<u8>,
    /// The entry just before `entries` (compacted away or covered by the
    /// snapshot).
    pub base: EntryId,
    /// The log: `entries[0].index == base.index + 1`.
    pub entries: Vec<Entry>,
    /// The applied index recorded with the state machine.
    pub applied: LogIndex,
    /// The membership as of `applied`.
    pub conf_state: ConfState,
    /// Who the store belongs to.
    pub identity: Option<StoreIdentity>,
}

impl MemStorageCore {
    /// The first index in the log.
    pub fn first_index(&self) -> LogIndex {
        self.base.index.next()
    }

    /// The last index in the log (the base's if it is empty).
    pub fn last_index(&self) -> LogIndex {
        self.entries.last().map_or(self.base.index, |e| e.index)
    }

    /// The term at `index`, if the log holds it or it is the base.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.base.index {
            return Some(self.base.term);
        }
        let first = self.first_index();
        if index < first {
            return None;
        }
        self.entries
            .get((index.0 - first.0) as usize)
            .map(|e| e.term)
    }

    /// [`LogStorage::term`] over these contents.
    pub fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        if index < self.base.index {
            return Err(StorageError::Compacted(index));
        }
        self.term_at(index).ok_or(StorageError::Unavailable(index))
    }

    /// [`LogStorage::entries`] over these contents.
    pub fn entries(
        &self,
        lo: LogIndex,
        hi: LogIndex,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        if !check_read(lo, hi, self.first_index(), self.last_index())? {
            return Ok(Vec::new());
        }
        let start = (lo.0 - self.first_index().0) as usize;
        let end = (hi.0 - self.first_index().0) as usize;
        // Count first, then copy in one go (no regrowth of the result).
        Ok(within_bytes(&self.entries[start..end], max_bytes).to_vec())
    }

    /// Appends `ents`, replacing anything stored at or after the first one.
    pub fn append(&mut self, ents: &[Entry]) -> Result<(), StorageError> {
        self.make_room_for(ents)?;
        self.entries.extend_from_slice(ents);
        Ok(())
    }

    /// [`append`](Self::append), taking the entries without a copy.
    pub fn append_owned(&mut self, ents: Vec<Entry>) -> Result<(), StorageError> {
        self.make_room_for(&ents)?;
        self.entries.extend(ents);
        Ok(())
    }

    /// Checks that `ents` may be appended and removes the stored entries
    /// they replace.
    fn make_room_for(&mut self, ents: &[Entry]) -> Result<(), StorageError> {
        check_append(ents, self.first_index(), self.last_index())?;
        if let Some(first) = ents.first() {
            let keep = (first.index.0 - self.first_index().0) as usize;
            self.entries.truncate(keep);
        }
        Ok(())
    }

    /// Replaces the log with a snapshot received from a leader (entries
    /// after it that match are kept).
    pub fn install_snapshot(&mut self, meta: SnapshotMeta, data: Vec<u8>) {
        if self.term_at(meta.last_index) == Some(meta.last_term) {
            self.entries.retain(|e| e.index > meta.last_index);
        } else {
            self.entries.clear();
        }
        self.base = meta.last_id();
        self.applied = meta.last_index;
        self.conf_state = meta.conf_state.clone();
        if let Some(hs) = hard_state_after_install(&self.hard_state, &meta) {
            self.hard_state = hs;
        }
        self.snapshot = meta;
        self.snapshot_data = data;
    }

    /// Stores a snapshot this node made of its own state machine.
    pub fn store_snapshot(&mut self, meta: SnapshotMeta, data: Vec<u8>) {
        if is_newer_snapshot(&self.snapshot, &meta) {
            self.snapshot = meta;
            self.snapshot_data = data;
        }
    }

    /// Deletes entries up to `index`, which a stored snapshot must cover.
    pub fn compact(&mut self, index: LogIndex) -> Result<(), StorageError> {
        if !check_compaction(index, self.base.index, self.snapshot.last_index)? {
            return Ok(());
        }
        let term = self
            .term_at(index)
            .ok_or(StorageError::Unavailable(index))?;
        self.entries.retain(|e| e.index > index);
        self.base = EntryId::new(term, index);
        Ok(())
    }
}

/// An in-memory log store. Clones share the same contents, so a test can
/// keep a handle while a [`crate::RawNode`] owns another.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    core: Arc<Mutex<MemStorageCore>>,
}

impl MemStorage {
    /// An empty store: a node that will join an existing cluster.
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// A store for one of the initial voters of a new cluster.
    pub fn bootstrap(voters: impl IntoIterator<Item = NodeId>) -> MemStorage {
        let s = MemStorage::new();
        {
            let mut c = s.lock();
            c.entries = vec![bootstrap_entry(voters)];
            c.hard_state = HardState {
                term: Term(1),
                vote: NodeId::NONE,
                commit: LogIndex(1),
            };
        }
        s
    }

    /// Locks the contents.
    pub fn lock(&self) -> MutexGuard<'_, MemStorageCore> {
        // A test that panicked while holding the lock already failed.
        match self.core.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Writes a batch (durably, as far as memory goes).
    pub fn persist(
        &self,
        batch: &PersistBatch,
        snapshot_data: Vec<u8>,
    ) -> Result<(), StorageError> {
        let mut c = self.lock();
        if let Some(meta) = &batch.snapshot {
            c.install_snapshot(meta.clone(), snapshot_data);
        }
        c.append(&batch.entries)?;
        if let Some(hs) = batch.hard_state {
            c.hard_state = hs;
        }
        Ok(())
    }
}

impl LogStorage for MemStorage {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        let c = self.lock();
        // Never older than the snapshot the log starts after: once the
        // entries behind a snapshot of this node's own are compacted, the
        // membership and applied index they carried live only in its
        // metadata (as in every other store).
        let (applied, conf_state) = if c.snapshot.last_index > c.applied {
            (c.snapshot.last_index, c.snapshot.conf_state.clone())
        } else {
            (c.applied, c.conf_state.clone())
        };
        Ok(InitialState {
            hard_state: c.hard_state,
            conf_state,
            applied,
        })
    }

    fn entries(
        &self,
        lo: LogIndex,
        hi: LogIndex,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.lock().entries(lo, hi, max_bytes)
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        self.lock().term(index)
    }

    fn first_index(&self) -> Result<LogIndex, StorageError> {
        Ok(self.lock().first_index())
    }

    fn last_index(&self) -> Result<LogIndex, StorageError> {
        Ok(self.lock().last_index())
    }

    fn snapshot_meta(&self) -> Result<SnapshotMeta, StorageError> {
        Ok(self.lock().snapshot.clone())
    }
}

impl MetaStore for MemStorage {
    fn identity(&self) -> Result<Option<StoreIdentity>, StorageError> {
        Ok(self.lock().identity)
    }

    fn set_identity(&self, id: StoreIdentity) -> Result<(), StorageError> {
        let mut c = self.lock();
        if check_identity(c.identity, id)? {
            c.identity = Some(id);
        }
        Ok(())
    }

    fn save_snapshot_meta(&self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        let mut c = self.lock();
        if is_newer_snapshot(&c.snapshot, meta) {
            c.snapshot = meta.clone();
        }
        Ok(())
    }
}

impl LogStore for MemStorage {
    fn write(
        &self,
        snapshot: Option<&SnapshotMeta>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        // The store keeps its own entries: one copy here, none below.
        self.write_owned(snapshot, entries.to_vec(), hard_state)
    }

    fn write_owned(
        &self,
        snapshot: Option<&SnapshotMeta>,
        entries: Vec<Entry>,
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        let mut c = self.lock();
        if let Some(meta) = snapshot {
            let data = std::mem::take(&mut c.snapshot_data);
            c.install_snapshot(meta.clone(), data);
        }
        c.append_owned(entries)?;
        if let Some(hs) = hard_state {
            c.hard_state = *hs;
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn compact(&self, index: LogIndex) -> Result<(), StorageError> {
        self.lock().compact(index)
    }
}

#[cfg(test)]
mod owned_write_tests {
    use super::*;
    use crate::types::{EntryPayload, HardState, LogIndex, Term};

    fn ents(term: u64, from: u64, to: u64) -> Vec<Entry> {
        (from..=to)
            .map(|i| Entry {
                term: Term(term),
                index: LogIndex(i),
                payload: EntryPayload::Normal(vec![i as u8].into()),
            })
            .collect()
    }

    #[test]
    fn writes_by_slice_and_by_value_leave_the_log_they_describe() {
        let hs = HardState {
            term: Term(2),
            ..HardState::default()
        };
        for owned in [false, true] {
            let s = MemStorage::new();
            let write = |batch: Vec<Entry>, hard: Option<&HardState>| {
                if owned {
                    s.write_owned(None, batch, hard)
                } else {
                    s.write(None, &batch, hard)
                }
            };
            // Appends, then a suffix replaced by a new term's entries, then
            // an append that does not follow the log (refused).
            assert!(write(ents(1, 1, 5), None).is_ok());
            assert!(write(ents(2, 4, 7), Some(&hs)).is_ok());
            assert!(write(ents(2, 9, 9), None).is_err());
            let mut expected = ents(1, 1, 3);
            expected.extend(ents(2, 4, 7));
            assert_eq!(
                s.entries(LogIndex(1), LogIndex(8), u64::MAX),
                Ok(expected),
                "owned: {owned}"
            );
            assert_eq!(s.initial_state().map(|i| i.hard_state), Ok(hs));
        }
    }
}

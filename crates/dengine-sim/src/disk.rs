//! A simulated disk: it holds only what was synced. Writes wait in the
//! node's disk queue until their sync completes; a crash loses the queue
//! (and may tear the first write), so a node that acknowledges before its
//! data is durable is caught.

use std::cell::RefCell;
use std::rc::Rc;

use dengine_core::{
    Entry, EntryId, HardState, InitialState, LogIndex, LogStorage, NodeId, SnapshotMeta,
    StorageError, Term, bootstrap_entry,
};

/// The synced contents of one node's disk.
#[derive(Clone, Debug, Default)]
pub struct DiskState {
    /// Term, vote, commit.
    pub hard_state: HardState,
    /// The entry before `entries` (compacted or covered by the snapshot).
    pub base: EntryId,
    /// The log after `base`.
    pub entries: Vec<Entry>,
    /// The newest snapshot.
    pub snapshot: SnapshotMeta,
    /// Its data.
    pub snapshot_data: Vec<u8>,
}

impl DiskState {
    /// The first index in the log.
    pub fn first_index(&self) -> LogIndex {
        self.base.index.next()
    }

    /// The last index in the log.
    pub fn last_index(&self) -> LogIndex {
        self.entries.last().map_or(self.base.index, |e| e.index)
    }

    /// The term at `index`, if the log holds it (or it is the base).
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.base.index {
            return Some(self.base.term);
        }
        if index < self.first_index() {
            return None;
        }
        self.entries
            .get((index.0 - self.first_index().0) as usize)
            .map(|e| e.term)
    }

    /// Appends, replacing anything at or after the first entry's index.
    pub fn append(&mut self, ents: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = ents.first() else {
            return Ok(());
        };
        if first.index < self.first_index() || first.index > self.last_index().next() {
            return Err(StorageError::Fatal(format!(
                "append at {} outside {}..={}",
                first.index,
                self.first_index(),
                self.last_index().next()
            )));
        }
        self.entries
            .truncate((first.index.0 - self.first_index().0) as usize);
        self.entries.extend_from_slice(ents);
        Ok(())
    }

    /// Installs a snapshot received from the leader.
    pub fn install_snapshot(&mut self, meta: SnapshotMeta, data: Vec<u8>) {
        if self.term_at(meta.last_index) == Some(meta.last_term) {
            self.entries.retain(|e| e.index > meta.last_index);
        } else {
            self.entries.clear();
        }
        self.base = meta.last_id();
        if self.hard_state.commit < meta.last_index {
            self.hard_state.commit = meta.last_index;
        }
        self.snapshot = meta;
        self.snapshot_data = data;
    }

    /// Stores a snapshot of this node's own state machine.
    pub fn store_snapshot(&mut self, meta: SnapshotMeta, data: Vec<u8>) {
        if meta.last_index > self.snapshot.last_index {
            self.snapshot = meta;
            self.snapshot_data = data;
        }
    }

    /// Deletes entries up to `index` (covered by the snapshot).
    pub fn compact(&mut self, index: LogIndex) -> Result<(), StorageError> {
        if index <= self.base.index {
            return Ok(());
        }
        if index > self.snapshot.last_index {
            return Err(StorageError::Fatal(format!(
                "compaction to {index} past snapshot {}",
                self.snapshot.last_index
            )));
        }
        let term = self
            .term_at(index)
            .ok_or(StorageError::Unavailable(index))?;
        self.entries.retain(|e| e.index > index);
        self.base = EntryId::new(term, index);
        Ok(())
    }
}

/// A shared handle on a node's disk; the core reads it through
/// [`LogStorage`], the simulator writes it when syncs complete.
#[derive(Clone, Debug, Default)]
pub struct SimDisk(Rc<RefCell<DiskState>>);

impl SimDisk {
    /// An empty disk (a node joining an existing cluster).
    pub fn empty() -> SimDisk {
        SimDisk::default()
    }

    /// The disk of an initial voter of a new cluster.
    pub fn bootstrap(voters: &[NodeId]) -> SimDisk {
        let d = SimDisk::default();
        {
            let mut s = d.0.borrow_mut();
            s.entries = vec![bootstrap_entry(voters.iter().copied())];
            s.hard_state = HardState {
                term: Term(1),
                vote: NodeId::NONE,
                commit: LogIndex(1),
            };
        }
        d
    }

    /// Reads the contents.
    pub fn state(&self) -> std::cell::Ref<'_, DiskState> {
        self.0.borrow()
    }

    /// Changes the contents.
    pub fn state_mut(&self) -> std::cell::RefMut<'_, DiskState> {
        self.0.borrow_mut()
    }
}

impl LogStorage for SimDisk {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        let s = self.0.borrow();
        Ok(InitialState {
            hard_state: s.hard_state,
            // The state machine is rebuilt from the snapshot at restart.
            conf_state: s.snapshot.conf_state.clone(),
            applied: s.snapshot.last_index,
        })
    }

    fn entries(
        &self,
        lo: LogIndex,
        hi: LogIndex,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let s = self.0.borrow();
        if lo < s.first_index() {
            return Err(StorageError::Compacted(lo));
        }
        if hi > s.last_index().next() {
            return Err(StorageError::Unavailable(hi));
        }
        let a = (lo.0 - s.first_index().0) as usize;
        let b = (hi.0 - s.first_index().0) as usize;
        let mut out = Vec::new();
        let mut size = 0;
        for e in &s.entries[a..b] {
            size += e.size();
            if !out.is_empty() && size > max_bytes {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        let s = self.0.borrow();
        if index < s.base.index {
            return Err(StorageError::Compacted(index));
        }
        s.term_at(index).ok_or(StorageError::Unavailable(index))
    }

    fn first_index(&self) -> Result<LogIndex, StorageError> {
        Ok(self.0.borrow().first_index())
    }

    fn last_index(&self) -> Result<LogIndex, StorageError> {
        Ok(self.0.borrow().last_index())
    }

    fn snapshot_meta(&self) -> Result<SnapshotMeta, StorageError> {
        Ok(self.0.borrow().snapshot.clone())
    }
}

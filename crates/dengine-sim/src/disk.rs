//! A simulated disk: it holds only what was synced. Writes wait in the
//! node's disk queue until their sync completes; a crash loses the queue
//! (and may tear the first write), so a node that acknowledges before its
//! data is durable is caught.

use std::cell::RefCell;
use std::rc::Rc;

use dengine_core::{
    Entry, HardState, InitialState, LogIndex, LogStorage, NodeId, SnapshotMeta, StorageError, Term,
    bootstrap_entry, storage::MemStorageCore,
};

/// The synced contents of one node's disk: the same log logic as the
/// in-memory store (`MemStorageCore`); the simulator adds the sync queue.
pub type DiskState = MemStorageCore;

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
        self.0.borrow().entries(lo, hi, max_bytes)
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        self.0.borrow().term(index)
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

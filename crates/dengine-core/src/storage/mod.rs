//! Durable storage as the protocol sees it, and the traits backends
//! implement.
//!
//! The core never writes: it tells the runtime what to persist through
//! [`crate::Ready`], and reads back what is stable through [`LogStorage`].
//! Entries the node has appended but not yet made durable live in the core's
//! own unstable log and are never read from here. The runtime writes through
//! [`LogStore`] and [`MetaStore`], which every backend implements and which
//! `testing::store_suite` checks; [`MemStorage`] is the in-memory backend.
//! The rules they share (which appends are allowed, and so on) are in
//! [`checks`].

pub mod checks;
mod mem;

pub use checks::StoreRefusal;
pub use mem::{MemStorage, MemStorageCore};

use crate::error::StorageError;
use crate::types::{ConfState, Entry, HardState, LogIndex, SnapshotMeta, Term};

/// What a node finds in storage when it starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InitialState {
    /// The persisted hard state.
    pub hard_state: HardState,
    /// The membership as of `applied`.
    pub conf_state: ConfState,
    /// The last index the state machine has durably applied (at least the
    /// snapshot's index). Committed entries after it are handed out again.
    pub applied: LogIndex,
}

/// Read access to the durable log.
///
/// Indexes: the log holds entries `first_index()..=last_index()`; the entry
/// just before `first_index()` was compacted away (a snapshot returned by
/// [`LogStorage::snapshot_meta`] covers it), and `term(first_index() - 1)`
/// must still answer with its term. An empty log with no snapshot has
/// `first_index() == 1` and `last_index() == 0`.
pub trait LogStorage {
    /// The state to start from.
    fn initial_state(&self) -> Result<InitialState, StorageError>;

    /// Entries in `[lo, hi)`, stopping early once their total
    /// [`Entry::size`] would exceed `max_bytes` (always at least one entry
    /// when `lo < hi`). `Err(Compacted)` if `lo < first_index()`.
    fn entries(
        &self,
        lo: LogIndex,
        hi: LogIndex,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError>;

    /// The term of the entry at `index`, for `first_index() - 1 <= index <=
    /// last_index()`. `Err(Compacted)` below, `Err(Unavailable)` above.
    fn term(&self, index: LogIndex) -> Result<Term, StorageError>;

    /// The first index still in the log.
    fn first_index(&self) -> Result<LogIndex, StorageError>;

    /// The last index in the log (the snapshot's index if the log is empty).
    fn last_index(&self) -> Result<LogIndex, StorageError>;

    /// The newest snapshot's metadata (default metadata if there is none).
    fn snapshot_meta(&self) -> Result<SnapshotMeta, StorageError>;
}

/// Which cluster and node a store belongs to, recorded when it is created
/// so that a data directory is never opened by the wrong node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StoreIdentity {
    /// The cluster's id.
    pub cluster_id: u64,
    /// The node's id.
    pub node_id: crate::types::NodeId,
}

/// Metadata of a store: who it belongs to and which snapshot its log
/// starts from. The hard state is written with the log (see [`LogStore`]).
pub trait MetaStore {
    /// The identity recorded in the store, if any.
    fn identity(&self) -> Result<Option<StoreIdentity>, StorageError>;
    /// Records the identity (durably). Refuses to overwrite a different one.
    fn set_identity(&self, id: StoreIdentity) -> Result<(), StorageError>;
    /// Records the newest snapshot the node made of its own state machine,
    /// so that [`LogStorage::snapshot_meta`] returns it (durably).
    fn save_snapshot_meta(&self, meta: &SnapshotMeta) -> Result<(), StorageError>;
}

/// The write side of durable log storage, implemented by each backend and
/// checked by one conformance suite (`testing::store_suite`).
///
/// Methods take `&self`: the runtime reads the stable log from the protocol
/// task while a disk thread writes. Writes become durable only at
/// [`LogStore::sync`], and in the order they were made.
pub trait LogStore: LogStorage + MetaStore + Send + Sync {
    /// Writes one persist batch: installs its snapshot as the log's new base
    /// (keeping later entries only if the log holds the snapshot's last entry
    /// with its term), appends its entries (first removing any stored entry
    /// at or after the first one's index), and stores its hard state.
    fn write(
        &self,
        snapshot: Option<&SnapshotMeta>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError>;

    /// [`write`](Self::write), with the entries given by value: a store
    /// that keeps entries as they are (the memory store) takes them without
    /// a copy. By default, writes them as a slice.
    fn write_owned(
        &self,
        snapshot: Option<&SnapshotMeta>,
        entries: Vec<Entry>,
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        self.write(snapshot, &entries, hard_state)
    }

    /// Makes every write so far durable (one fsync for a group of writes).
    fn sync(&self) -> Result<(), StorageError>;

    /// Deletes entries up to `index`, which a snapshot must cover; the
    /// term of `index` is kept as the log's base.
    fn compact(&self, index: LogIndex) -> Result<(), StorageError>;
}

impl<T: LogStorage + ?Sized> LogStorage for std::sync::Arc<T> {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        (**self).initial_state()
    }
    fn entries(
        &self,
        lo: LogIndex,
        hi: LogIndex,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        (**self).entries(lo, hi, max_bytes)
    }
    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        (**self).term(index)
    }
    fn first_index(&self) -> Result<LogIndex, StorageError> {
        (**self).first_index()
    }
    fn last_index(&self) -> Result<LogIndex, StorageError> {
        (**self).last_index()
    }
    fn snapshot_meta(&self) -> Result<SnapshotMeta, StorageError> {
        (**self).snapshot_meta()
    }
}

//! The conformance suite every [`LogStore`] backend runs.
//!
//! A backend's tests implement [`StoreHarness`] (how to create, reopen,
//! crash and damage its store) and call [`run_all`]. Each case panics with
//! its name and what differed.

use crate::error::StorageError;
use crate::storage::{LogStorage, LogStore, MetaStore, StoreIdentity};
use crate::types::{
    ConfState, Entry, EntryPayload, HardState, LogIndex, NodeId, SnapshotMeta, Term,
};

/// How the suite drives one backend.
pub trait StoreHarness {
    /// The backend's store.
    type Store: LogStore;

    /// A new, empty store in a fresh location.
    fn create(&mut self) -> Self::Store;

    /// Closes `store` cleanly and opens the same location again.
    fn reopen(&mut self, store: Self::Store) -> Result<Self::Store, StorageError>;

    /// Stops `store` as a crash would, right after `write`s that were never
    /// synced (they may be lost, or partly written), then opens the same
    /// location again. `None` if the backend keeps everything it was given
    /// (memory).
    fn crash_and_reopen(&mut self, store: Self::Store)
    -> Option<Result<Self::Store, StorageError>>;

    /// Closes `store`, damages the stored record of entry `index` on disk,
    /// and opens the location again. `None` if the backend has no disk.
    fn corrupt_entry_and_reopen(
        &mut self,
        store: Self::Store,
        index: LogIndex,
    ) -> Option<Result<Self::Store, StorageError>>;
}

fn ent(index: u64, term: u64) -> Entry {
    Entry {
        term: Term(term),
        index: LogIndex(index),
        payload: EntryPayload::Normal(format!("e{index}t{term}").into_bytes().into()),
    }
}

fn ents(lo: u64, hi: u64, term: u64) -> Vec<Entry> {
    (lo..=hi).map(|i| ent(i, term)).collect()
}

fn must<T>(case: &str, r: Result<T, StorageError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("[{case}] unexpected storage error: {e}"),
    }
}

fn all_entries<S: LogStorage>(case: &str, s: &S) -> Vec<Entry> {
    let lo = must(case, s.first_index());
    let hi = must(case, s.last_index());
    must(case, s.entries(lo, hi.next(), u64::MAX))
}

fn append<S: LogStore>(case: &str, s: &S, e: &[Entry]) {
    must(case, s.write(None, e, None));
    must(case, s.sync());
}

fn meta(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta {
        last_index: LogIndex(index),
        last_term: Term(term),
        conf_state: ConfState::with_voters([NodeId(1), NodeId(2), NodeId(3)]),
    }
}

/// Runs every case.
pub fn run_all<H: StoreHarness>(h: &mut H) {
    empty_store(h);
    append_and_read(h);
    overwrite_conflicting_suffix(h);
    entries_respect_max_bytes(h);
    compact_behind_snapshot(h);
    refused_writes_change_nothing(h);
    install_snapshot(h);
    hard_state_round_trip(h);
    identity_round_trip(h);
    reopen_after_close(h);
    reopen_after_crash(h);
    corruption_is_detected(h);
}

/// A new store is empty.
pub fn empty_store<H: StoreHarness>(h: &mut H) {
    let c = "empty store";
    let s = h.create();
    assert_eq!(must(c, s.first_index()), LogIndex(1), "[{c}] first index");
    assert_eq!(must(c, s.last_index()), LogIndex(0), "[{c}] last index");
    assert_eq!(
        must(c, s.term(LogIndex(0))),
        Term(0),
        "[{c}] term of index 0"
    );
    assert!(
        matches!(s.term(LogIndex(1)), Err(StorageError::Unavailable(_))),
        "[{c}] term past the end"
    );
    let init = must(c, s.initial_state());
    assert_eq!(init.hard_state, HardState::default(), "[{c}] hard state");
    assert_eq!(
        must(c, s.snapshot_meta()),
        SnapshotMeta::default(),
        "[{c}] snapshot"
    );
    assert_eq!(must(c, s.identity()), None, "[{c}] identity");
}

/// Appended entries read back exactly, with their terms.
pub fn append_and_read<H: StoreHarness>(h: &mut H) {
    let c = "append and read";
    let s = h.create();
    append(c, &s, &ents(1, 3, 1));
    append(c, &s, &ents(4, 6, 2));
    assert_eq!(
        all_entries(c, &s),
        [ents(1, 3, 1), ents(4, 6, 2)].concat(),
        "[{c}] entries"
    );
    assert_eq!(must(c, s.term(LogIndex(3))), Term(1), "[{c}] term 3");
    assert_eq!(must(c, s.term(LogIndex(6))), Term(2), "[{c}] term 6");
    assert_eq!(
        must(c, s.entries(LogIndex(2), LogIndex(5), u64::MAX)),
        [ents(2, 3, 1), ents(4, 4, 2)].concat(),
        "[{c}] a range"
    );
    assert!(
        matches!(
            s.entries(LogIndex(5), LogIndex(9), u64::MAX),
            Err(StorageError::Unavailable(_))
        ),
        "[{c}] a range past the end"
    );
}

/// Writing at an index replaces the stored suffix from there.
pub fn overwrite_conflicting_suffix<H: StoreHarness>(h: &mut H) {
    let c = "overwrite conflicting suffix";
    let s = h.create();
    append(c, &s, &ents(1, 5, 1));
    append(c, &s, &ents(3, 4, 2));
    assert_eq!(
        must(c, s.last_index()),
        LogIndex(4),
        "[{c}] last index after truncation"
    );
    assert_eq!(
        all_entries(c, &s),
        [ents(1, 2, 1), ents(3, 4, 2)].concat(),
        "[{c}] entries"
    );
    // Truncating to a single entry, then growing again.
    append(c, &s, &ents(2, 2, 3));
    assert_eq!(
        all_entries(c, &s),
        [ents(1, 1, 1), ents(2, 2, 3)].concat(),
        "[{c}] truncated"
    );
    append(c, &s, &ents(3, 3, 3));
    assert_eq!(must(c, s.last_index()), LogIndex(3), "[{c}] grown again");
}

/// `entries` stops at `max_bytes` but returns at least one entry.
pub fn entries_respect_max_bytes<H: StoreHarness>(h: &mut H) {
    let c = "entries respect max_bytes";
    let s = h.create();
    append(c, &s, &ents(1, 10, 1));
    let one = must(c, s.entries(LogIndex(1), LogIndex(11), 0));
    assert_eq!(one, ents(1, 1, 1), "[{c}] at least one");
    let size = ent(1, 1).size();
    let three = must(c, s.entries(LogIndex(1), LogIndex(11), size * 3));
    assert_eq!(
        three.len(),
        3,
        "[{c}] three entries fit in 3 entries' bytes"
    );
}

/// Compaction behind a snapshot moves the first index and keeps the base term.
pub fn compact_behind_snapshot<H: StoreHarness>(h: &mut H) {
    let c = "compact behind snapshot";
    let s = h.create();
    append(c, &s, &[ents(1, 4, 1), ents(5, 8, 2)].concat());
    must(c, s.save_snapshot_meta(&meta(6, 2)));
    must(c, s.compact(LogIndex(5)));
    must(c, s.sync());
    assert_eq!(must(c, s.first_index()), LogIndex(6), "[{c}] first index");
    assert_eq!(must(c, s.last_index()), LogIndex(8), "[{c}] last index");
    assert_eq!(must(c, s.term(LogIndex(5))), Term(2), "[{c}] base term");
    assert!(
        matches!(s.term(LogIndex(4)), Err(StorageError::Compacted(_))),
        "[{c}] term below base"
    );
    assert!(
        matches!(
            s.entries(LogIndex(3), LogIndex(7), u64::MAX),
            Err(StorageError::Compacted(_))
        ),
        "[{c}] entries below base"
    );
    assert_eq!(
        must(c, s.snapshot_meta()),
        meta(6, 2),
        "[{c}] snapshot meta"
    );
    let s = must(c, h.reopen(s));
    // What the compacted entries carried (membership, applied index) is
    // known from the snapshot's metadata: a node restarts from there.
    let init = must(c, s.initial_state());
    assert_eq!(
        (init.applied, &init.conf_state),
        (LogIndex(6), &meta(6, 2).conf_state),
        "[{c}] initial state after reopen"
    );
    assert_eq!(
        must(c, s.first_index()),
        LogIndex(6),
        "[{c}] first index after reopen"
    );
    assert_eq!(
        must(c, s.term(LogIndex(5))),
        Term(2),
        "[{c}] base term after reopen"
    );
    assert_eq!(
        must(c, s.snapshot_meta()),
        meta(6, 2),
        "[{c}] snapshot after reopen"
    );
    assert_eq!(
        all_entries(c, &s),
        ents(6, 8, 2),
        "[{c}] entries after reopen"
    );
}

/// Appends with a gap, with a hole, or below the first index, compactions
/// past the snapshot and older snapshot metadata are refused (or ignored)
/// and change nothing.
pub fn refused_writes_change_nothing<H: StoreHarness>(h: &mut H) {
    let c = "refused writes change nothing";
    let s = h.create();
    append(c, &s, &ents(1, 4, 1));
    must(c, s.save_snapshot_meta(&meta(2, 1)));
    must(c, s.compact(LogIndex(2)));
    let fatal = |r: Result<(), StorageError>| matches!(r, Err(StorageError::Fatal(_)));
    assert!(
        fatal(s.write(None, &ents(6, 7, 1), None)),
        "[{c}] an append leaving a gap"
    );
    assert!(
        fatal(s.write(None, &[ent(4, 2), ent(6, 2)], None)),
        "[{c}] entries that are not consecutive"
    );
    assert!(
        matches!(
            s.write(None, &ents(2, 3, 2), None),
            Err(StorageError::Compacted(LogIndex(2)))
        ),
        "[{c}] an append below the first index"
    );
    assert!(
        fatal(s.compact(LogIndex(3))),
        "[{c}] a compaction past the snapshot"
    );
    must(c, s.save_snapshot_meta(&meta(1, 1)));
    assert_eq!(
        must(c, s.snapshot_meta()),
        meta(2, 1),
        "[{c}] an older snapshot's metadata replaced a newer one"
    );
    must(c, s.compact(LogIndex(1)));
    must(c, s.sync());
    assert_eq!(all_entries(c, &s), ents(3, 4, 1), "[{c}] entries");
    assert_eq!(must(c, s.term(LogIndex(2))), Term(1), "[{c}] base term");
    let s = must(c, h.reopen(s));
    assert_eq!(
        all_entries(c, &s),
        ents(3, 4, 1),
        "[{c}] entries after reopen"
    );
}

/// A snapshot from the leader replaces the log, keeping a matching tail.
pub fn install_snapshot<H: StoreHarness>(h: &mut H) {
    let c = "install snapshot";
    let s = h.create();
    append(c, &s, &ents(1, 5, 1));
    // Matching: the log holds (3, 1), so 4..=5 stay.
    must(c, s.write(Some(&meta(3, 1)), &[], None));
    must(c, s.sync());
    assert_eq!(
        must(c, s.first_index()),
        LogIndex(4),
        "[{c}] first index (matching)"
    );
    assert_eq!(all_entries(c, &s), ents(4, 5, 1), "[{c}] kept tail");
    assert_eq!(
        must(c, s.snapshot_meta()),
        meta(3, 1),
        "[{c}] snapshot meta"
    );
    // Not matching: everything goes, the base is the snapshot.
    must(c, s.write(Some(&meta(9, 4)), &ents(10, 11, 4), None));
    must(c, s.sync());
    assert_eq!(
        must(c, s.first_index()),
        LogIndex(10),
        "[{c}] first index (conflicting)"
    );
    assert_eq!(must(c, s.term(LogIndex(9))), Term(4), "[{c}] base term");
    assert_eq!(
        all_entries(c, &s),
        ents(10, 11, 4),
        "[{c}] entries after the snapshot"
    );
    let s = must(c, h.reopen(s));
    assert_eq!(
        must(c, s.snapshot_meta()),
        meta(9, 4),
        "[{c}] snapshot after reopen"
    );
    assert_eq!(
        all_entries(c, &s),
        ents(10, 11, 4),
        "[{c}] entries after reopen"
    );
    let init = must(c, s.initial_state());
    assert!(
        init.applied >= LogIndex(9),
        "[{c}] applied covers the snapshot"
    );
}

/// The hard state survives a reopen.
pub fn hard_state_round_trip<H: StoreHarness>(h: &mut H) {
    let c = "hard state round trip";
    let s = h.create();
    let hs = HardState {
        term: Term(7),
        vote: NodeId(3),
        commit: LogIndex(2),
    };
    must(c, s.write(None, &ents(1, 2, 7), Some(&hs)));
    must(c, s.sync());
    assert_eq!(
        must(c, s.initial_state()).hard_state,
        hs,
        "[{c}] before reopen"
    );
    let s = must(c, h.reopen(s));
    assert_eq!(
        must(c, s.initial_state()).hard_state,
        hs,
        "[{c}] after reopen"
    );
}

/// The identity survives a reopen and is never overwritten.
pub fn identity_round_trip<H: StoreHarness>(h: &mut H) {
    let c = "identity round trip";
    let s = h.create();
    let id = StoreIdentity {
        cluster_id: 77,
        node_id: NodeId(2),
    };
    must(c, s.set_identity(id));
    must(c, s.set_identity(id));
    let other = StoreIdentity {
        cluster_id: 78,
        node_id: NodeId(2),
    };
    assert!(
        s.set_identity(other).is_err(),
        "[{c}] a different identity must be refused"
    );
    let s = must(c, h.reopen(s));
    assert_eq!(must(c, s.identity()), Some(id), "[{c}] after reopen");
}

/// Everything synced is there after a clean reopen.
pub fn reopen_after_close<H: StoreHarness>(h: &mut H) {
    let c = "reopen after close";
    let s = h.create();
    append(c, &s, &ents(1, 50, 1));
    append(c, &s, &ents(40, 60, 2));
    let s = must(c, h.reopen(s));
    assert_eq!(
        all_entries(c, &s),
        [ents(1, 39, 1), ents(40, 60, 2)].concat(),
        "[{c}] entries"
    );
    append(c, &s, &ents(61, 61, 2));
    let s = must(c, h.reopen(s));
    assert_eq!(
        must(c, s.last_index()),
        LogIndex(61),
        "[{c}] appended after reopen"
    );
}

/// After a crash, everything synced is there and the log is a clean prefix
/// of what was written: unsynced writes are wholly there or cut at an entry
/// boundary, never garbage.
pub fn reopen_after_crash<H: StoreHarness>(h: &mut H) {
    let c = "reopen after crash";
    let s = h.create();
    let hs = HardState {
        term: Term(1),
        vote: NodeId(1),
        commit: LogIndex(10),
    };
    must(c, s.write(None, &ents(1, 10, 1), Some(&hs)));
    must(c, s.sync());
    // Written, never synced.
    must(c, s.write(None, &ents(11, 400, 1), None));
    let Some(reopened) = h.crash_and_reopen(s) else {
        return;
    };
    let s = must(c, reopened);
    let last = must(c, s.last_index());
    assert!(
        last >= LogIndex(10),
        "[{c}] synced entries lost: last index {last}"
    );
    assert!(
        last <= LogIndex(400),
        "[{c}] entries that were never written: {last}"
    );
    assert_eq!(
        all_entries(c, &s),
        ents(1, last.0, 1),
        "[{c}] log is a clean prefix"
    );
    assert_eq!(
        must(c, s.initial_state()).hard_state,
        hs,
        "[{c}] hard state"
    );
    // The store keeps working.
    append(c, &s, &ents(last.0 + 1, last.0 + 1, 2));
    assert_eq!(
        must(c, s.last_index()),
        last.next(),
        "[{c}] append after crash"
    );
}

/// A damaged record is reported when the store opens, naming the index.
pub fn corruption_is_detected<H: StoreHarness>(h: &mut H) {
    let c = "corruption is detected";
    let s = h.create();
    append(c, &s, &ents(1, 20, 1));
    let Some(reopened) = h.corrupt_entry_and_reopen(s, LogIndex(7)) else {
        return;
    };
    match reopened {
        Ok(_) => panic!("[{c}] a corrupted entry was not detected on open"),
        Err(StorageError::Fatal(msg)) => {
            assert!(
                msg.contains('7'),
                "[{c}] the error must name the index: {msg}"
            )
        }
        Err(e) => panic!("[{c}] corruption must be a fatal error, got {e}"),
    }
}

/// The in-memory store passes the suite (its harness, for reference).
#[derive(Debug, Default)]
pub struct MemHarness;

impl StoreHarness for MemHarness {
    type Store = crate::storage::MemStorage;

    fn create(&mut self) -> Self::Store {
        crate::storage::MemStorage::new()
    }

    fn reopen(&mut self, store: Self::Store) -> Result<Self::Store, StorageError> {
        Ok(store)
    }

    fn crash_and_reopen(
        &mut self,
        _store: Self::Store,
    ) -> Option<Result<Self::Store, StorageError>> {
        None
    }

    fn corrupt_entry_and_reopen(
        &mut self,
        _store: Self::Store,
        _index: LogIndex,
    ) -> Option<Result<Self::Store, StorageError>> {
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_store_passes_the_suite() {
        super::run_all(&mut super::MemHarness);
    }
}

//! The core's storage conformance suite, run on [`SledStore`], and checks
//! of what only a disk store has: damage detected on open, identities.

use std::path::{Path, PathBuf};

use dengine_core::codec;
use dengine_core::testing::store_suite::{self, StoreHarness};
use dengine_core::{
    Entry, EntryId, EntryPayload, LogIndex, LogStorage, LogStore, MetaStore, NodeId, SnapshotMeta,
    StorageError, StoreIdentity, Term,
};
use dengine_storage_sled::{
    KEY_BASE, KEY_HARD_STATE, KEY_SNAPSHOT, LOG_TREE, META_TREE, SledStore, log_key,
};

/// Each store of the suite lives in its own directory under one temporary
/// directory, removed when the harness drops.
struct SledHarness {
    root: tempfile::TempDir,
    next: u32,
}

impl SledHarness {
    fn new() -> SledHarness {
        SledHarness {
            root: tempfile::tempdir().expect("temporary directory"),
            next: 0,
        }
    }
}

impl StoreHarness for SledHarness {
    type Store = SledStore;

    fn create(&mut self) -> SledStore {
        self.next += 1;
        let path = self.root.path().join(format!("store-{}", self.next));
        SledStore::open(path).expect("open a new store")
    }

    fn reopen(&mut self, store: SledStore) -> Result<SledStore, StorageError> {
        let path = store.path().to_path_buf();
        drop(store);
        SledStore::open(path)
    }

    fn crash_and_reopen(&mut self, store: SledStore) -> Option<Result<SledStore, StorageError>> {
        // The closest to a crash in one process: drop the store without
        // calling `sync`. sled flushes on drop, so the unsynced writes will
        // most likely all be there; the suite accepts that. The real crash
        // test (SIGKILL of a child process mid-write) lives in the `dengine`
        // facade crate.
        let path = store.path().to_path_buf();
        drop(store);
        Some(SledStore::open(path))
    }

    fn corrupt_entry_and_reopen(
        &mut self,
        store: SledStore,
        index: LogIndex,
    ) -> Option<Result<SledStore, StorageError>> {
        let path = store.path().to_path_buf();
        drop(store);
        corrupt_log_record(&path, index);
        Some(SledStore::open(path))
    }
}

/// Flips a byte in the body of the stored record of entry `index` (after
/// the 4-byte checksum), so that the checksum no longer matches.
fn corrupt_log_record(path: &Path, index: LogIndex) {
    with_raw_tree(path, LOG_TREE, |log| {
        let mut rec = log
            .get(log_key(index))
            .expect("read the record")
            .expect("the record exists")
            .to_vec();
        let last = rec.len() - 1;
        rec[last] ^= 0x40;
        log.insert(log_key(index), rec).expect("write the record");
    });
}

/// Opens the raw sled database at `path`, runs `f` on one tree, flushes
/// and closes it.
fn with_raw_tree(path: &Path, tree: &str, f: impl FnOnce(&sled::Tree)) {
    let db = dengine_storage_sled::open_raw(path).expect("open the raw database");
    let t = db.open_tree(tree).expect("open the tree");
    f(&t);
    db.flush().expect("flush the raw database");
}

fn ent(index: u64, term: u64) -> Entry {
    Entry {
        term: Term(term),
        index: LogIndex(index),
        payload: EntryPayload::Normal(vec![index as u8; 16]),
    }
}

fn ents(lo: u64, hi: u64, term: u64) -> Vec<Entry> {
    (lo..=hi).map(|i| ent(i, term)).collect()
}

fn fatal_message(r: Result<SledStore, StorageError>) -> String {
    match r {
        Ok(_) => panic!("the store opened although it is damaged"),
        Err(StorageError::Fatal(msg)) => msg,
        Err(e) => panic!("expected a fatal error, got {e}"),
    }
}

/// A store with entries 1..=20 (term 1), closed; returns its directory.
fn store_with_20_entries(root: &Path) -> PathBuf {
    let path = root.join("s");
    let s = SledStore::open(&path).unwrap();
    s.write(None, &ents(1, 20, 1), None).unwrap();
    s.sync().unwrap();
    drop(s);
    path
}

#[test]
fn sled_store_passes_the_conformance_suite() {
    store_suite::run_all(&mut SledHarness::new());
}

#[test]
fn a_corrupt_entry_is_reported_with_path_and_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with_20_entries(dir.path());
    corrupt_log_record(&path, LogIndex(13));
    let msg = fatal_message(SledStore::open(&path));
    assert!(msg.contains("log entry 13 is corrupt"), "{msg}");
    assert!(msg.contains("checksum mismatch"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

#[test]
fn a_torn_record_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with_20_entries(dir.path());
    with_raw_tree(&path, LOG_TREE, |log| {
        let rec = log.get(log_key(LogIndex(20))).unwrap().unwrap();
        log.insert(log_key(LogIndex(20)), &rec[..rec.len() / 2])
            .unwrap();
    });
    let msg = fatal_message(SledStore::open(&path));
    assert!(msg.contains("log entry 20 is corrupt"), "{msg}");
}

#[test]
fn a_missing_entry_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with_20_entries(dir.path());
    with_raw_tree(&path, LOG_TREE, |log| {
        log.remove(log_key(LogIndex(9))).unwrap();
    });
    let msg = fatal_message(SledStore::open(&path));
    assert!(msg.contains("log entry 9 is missing"), "{msg}");
}

#[test]
fn an_entry_under_the_wrong_key_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with_20_entries(dir.path());
    with_raw_tree(&path, LOG_TREE, |log| {
        // A valid record (checksum fine) of entry 5, stored under key 6.
        log.insert(log_key(LogIndex(6)), codec::encode_entry(&ent(5, 1)))
            .unwrap();
    });
    let msg = fatal_message(SledStore::open(&path));
    assert!(
        msg.contains("log entry 6 is corrupt: its record holds entry 5"),
        "{msg}"
    );
}

#[test]
fn entries_at_or_below_the_base_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with_20_entries(dir.path());
    // A base of 3 with entry 1..=3 still stored (and no snapshot): both
    // wrong; the snapshot check comes first.
    with_raw_tree(&path, META_TREE, |meta| {
        meta.insert(
            KEY_BASE,
            codec::encode_entry_id(&EntryId::new(Term(1), LogIndex(3))),
        )
        .unwrap();
    });
    let msg = fatal_message(SledStore::open(&path));
    assert!(msg.contains("past the snapshot"), "{msg}");
    // With a snapshot covering the base, the leftover entries 1..=3 are
    // still refused.
    with_raw_tree(&path, META_TREE, |meta| {
        let snap = SnapshotMeta {
            last_index: LogIndex(3),
            last_term: Term(1),
            ..SnapshotMeta::default()
        };
        meta.insert(KEY_SNAPSHOT, codec::encode_snapshot_meta(&snap))
            .unwrap();
    });
    let msg = fatal_message(SledStore::open(&path));
    assert!(
        msg.contains("log entry 1 is stored but the log starts after its base (entry 3)"),
        "{msg}"
    );
}

#[test]
fn a_corrupt_meta_record_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with_20_entries(dir.path());
    with_raw_tree(&path, META_TREE, |meta| {
        meta.insert(KEY_HARD_STATE, &[1u8, 2, 3, 4, 5, 6][..])
            .unwrap();
    });
    let msg = fatal_message(SledStore::open(&path));
    assert!(msg.contains("meta record `hard_state` is corrupt"), "{msg}");
}

#[test]
fn a_different_identity_is_refused_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node");
    let mine = StoreIdentity {
        cluster_id: 7,
        node_id: NodeId(1),
    };
    let s = SledStore::open(&path).unwrap();
    s.set_identity(mine).unwrap();
    drop(s);

    let s = SledStore::open(&path).unwrap();
    assert_eq!(s.identity().unwrap(), Some(mine));
    s.set_identity(mine).unwrap();
    let other = StoreIdentity {
        cluster_id: 8,
        node_id: NodeId(3),
    };
    match s.set_identity(other) {
        Err(StorageError::Fatal(msg)) => {
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains("cluster 7 node 1"), "{msg}");
            assert!(msg.contains("cluster 8 node 3"), "{msg}");
        }
        r => panic!("a different identity must be refused as fatal, got {r:?}"),
    }
    drop(s);
    let s = SledStore::open(&path).unwrap();
    assert_eq!(
        s.identity().unwrap(),
        Some(mine),
        "the identity is unchanged"
    );
}

#[test]
fn appends_must_be_consecutive_and_leave_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path().join("s")).unwrap();
    s.write(None, &ents(1, 3, 1), None).unwrap();
    assert!(matches!(
        s.write(None, &ents(5, 6, 1), None),
        Err(StorageError::Fatal(_))
    ));
    assert!(matches!(
        s.write(None, &[ent(4, 1), ent(6, 1)], None),
        Err(StorageError::Fatal(_))
    ));
    // A refused write changed nothing.
    assert_eq!(s.last_index().unwrap(), LogIndex(3));
    s.save_snapshot_meta(&SnapshotMeta {
        last_index: LogIndex(2),
        last_term: Term(1),
        ..SnapshotMeta::default()
    })
    .unwrap();
    s.compact(LogIndex(2)).unwrap();
    assert!(matches!(
        s.write(None, &ents(2, 2, 1), None),
        Err(StorageError::Compacted(LogIndex(2)))
    ));
    assert!(matches!(
        s.compact(LogIndex(3)),
        Err(StorageError::Fatal(_))
    ));
}

#[test]
fn readers_see_whole_writes_while_another_thread_writes() {
    let dir = tempfile::tempdir().unwrap();
    let s = std::sync::Arc::new(SledStore::open(dir.path().join("s")).unwrap());
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || {
            for round in 0..200u64 {
                // Each write replaces the tail 1..=10 with one term.
                s.write(None, &ents(1, 10, round + 1), None).unwrap();
            }
            s.sync().unwrap();
        })
    };
    for _ in 0..500 {
        let last = s.last_index().unwrap();
        if last.0 == 0 {
            continue;
        }
        let got = s.entries(LogIndex(1), last.next(), u64::MAX).unwrap();
        assert_eq!(got.len(), 10);
        assert!(got.iter().all(|e| e.term == got[0].term), "a torn read");
    }
    writer.join().unwrap();
}

/// Rough throughput, run by hand:
/// `cargo test -p dengine-storage-sled --release -- --ignored --nocapture`.
#[test]
#[ignore = "a timing, not a test; run by hand in release"]
fn timing_write_and_sync() {
    use std::time::Instant;
    let dir = tempfile::tempdir().unwrap();

    let s = SledStore::open(dir.path().join("single")).unwrap();
    let t = Instant::now();
    for i in 1..=10_000u64 {
        s.write(None, &[ent(i, 1)], None).unwrap();
        s.sync().unwrap();
    }
    let single = t.elapsed();
    drop(s);

    let s = SledStore::open(dir.path().join("batched")).unwrap();
    let t = Instant::now();
    for b in 0..100u64 {
        s.write(None, &ents(b * 100 + 1, b * 100 + 100, 1), None)
            .unwrap();
        s.sync().unwrap();
    }
    let batched = t.elapsed();
    eprintln!(
        "10,000 x (1-entry write + sync): {single:?} ({:.0} us each); \
         100 x (100-entry write + sync): {batched:?} ({:.0} us each)",
        single.as_micros() as f64 / 10_000.0,
        batched.as_micros() as f64 / 100.0
    );
}

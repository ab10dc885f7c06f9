//! The RocksDB store against the shared conformance suite, plus its own
//! checks.

use std::path::PathBuf;

use dengine_core::testing::store_suite::{self, StoreHarness};
use dengine_core::{
    Entry, EntryPayload, LogIndex, LogStore, MetaStore, NodeId, StorageError, StoreIdentity, Term,
};
use dengine_storage_rocksdb::{LOG_CF, RocksStore, log_key};
use tempfile::TempDir;

/// Creates each store in its own temporary directory (removed when the
/// harness is dropped).
#[derive(Default)]
struct RocksHarness {
    dirs: Vec<TempDir>,
}

impl RocksHarness {
    /// The directory `store` lives in.
    fn path_of(store: &RocksStore) -> PathBuf {
        store.path().to_path_buf()
    }
}

impl StoreHarness for RocksHarness {
    type Store = RocksStore;

    fn create(&mut self) -> RocksStore {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("cannot create a temporary directory: {e}"),
        };
        let path = dir.path().join("db");
        self.dirs.push(dir);
        match RocksStore::open(&path) {
            Ok(s) => s,
            Err(e) => panic!("cannot create a store: {e}"),
        }
    }

    fn reopen(&mut self, store: RocksStore) -> Result<RocksStore, StorageError> {
        let path = Self::path_of(&store);
        drop(store);
        RocksStore::open(path)
    }

    fn crash_and_reopen(&mut self, store: RocksStore) -> Option<Result<RocksStore, StorageError>> {
        // Dropping without `sync` is the closest to a crash we can get in
        // one process: unsynced writes are in the OS page cache, not on
        // disk. The test that kills a node with SIGKILL lives in the
        // `dengine` facade crate.
        let path = Self::path_of(&store);
        drop(store);
        Some(RocksStore::open(path))
    }

    fn corrupt_entry_and_reopen(
        &mut self,
        store: RocksStore,
        index: LogIndex,
    ) -> Option<Result<RocksStore, StorageError>> {
        Some(damage_and_reopen(store, |db, cf| {
            let mut record = match db.get_cf(cf, log_key(index)) {
                Ok(Some(r)) => r,
                Ok(None) => panic!("no record for entry {index}"),
                Err(e) => panic!("cannot read entry {index}: {e}"),
            };
            // Flip one byte of the body (after the 4-byte CRC).
            assert!(record.len() > 4, "record too short");
            let last = record.len() - 1;
            record[last] ^= 0x5a;
            if let Err(e) = db.put_cf(cf, log_key(index), &record) {
                panic!("cannot write the damaged record: {e}");
            }
        }))
    }
}

/// Closes `store`, changes the raw log column family with `damage`, and
/// opens the store again.
fn damage_and_reopen(
    store: RocksStore,
    damage: impl FnOnce(&rocksdb::DB, &rocksdb::ColumnFamily),
) -> Result<RocksStore, StorageError> {
    let path = store.path().to_path_buf();
    drop(store);
    {
        let db = match rocksdb::DB::open_cf_descriptors(
            &rocksdb::Options::default(),
            &path,
            RocksStore::column_families(),
        ) {
            Ok(db) => db,
            Err(e) => panic!("cannot open the raw database: {e}"),
        };
        let Some(cf) = db.cf_handle(LOG_CF) else {
            panic!("no log column family");
        };
        damage(&db, cf);
    }
    RocksStore::open(path)
}

fn store_with_entries(h: &mut RocksHarness, n: u64) -> RocksStore {
    let s = h.create();
    let ents: Vec<Entry> = (1..=n)
        .map(|i| Entry {
            term: Term(1),
            index: LogIndex(i),
            payload: EntryPayload::Normal(vec![i as u8; 16].into()),
        })
        .collect();
    s.write(None, &ents, None).expect("write");
    s.sync().expect("sync");
    s
}

#[test]
fn rocksdb_store_passes_the_conformance_suite() {
    store_suite::run_all(&mut RocksHarness::default());
}

#[test]
fn corruption_error_names_the_path_and_the_index() {
    let mut h = RocksHarness::default();
    let s = store_with_entries(&mut h, 30);
    let path = s.path().to_path_buf();
    let Some(Err(StorageError::Fatal(msg))) = h.corrupt_entry_and_reopen(s, LogIndex(23)) else {
        panic!("corruption not reported as fatal");
    };
    assert!(msg.contains("index 23"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("checksum"), "{msg}");
}

#[test]
fn a_torn_record_is_detected_on_open() {
    let mut h = RocksHarness::default();
    let s = store_with_entries(&mut h, 30);
    let r = damage_and_reopen(s, |db, cf| {
        let Ok(Some(rec)) = db.get_cf(cf, log_key(LogIndex(30))) else {
            panic!("no record 30");
        };
        db.put_cf(cf, log_key(LogIndex(30)), &rec[..rec.len() / 2])
            .expect("put");
    });
    match r {
        Err(StorageError::Fatal(msg)) => assert!(msg.contains("index 30"), "{msg}"),
        r => panic!("a torn record was not detected: {r:?}"),
    }
}

#[test]
fn a_missing_entry_is_detected_on_open() {
    let mut h = RocksHarness::default();
    let s = store_with_entries(&mut h, 30);
    let r = damage_and_reopen(s, |db, cf| {
        db.delete_cf(cf, log_key(LogIndex(12))).expect("delete");
    });
    match r {
        Err(StorageError::Fatal(msg)) => assert!(msg.contains("entry 12 is missing"), "{msg}"),
        r => panic!("a gap in the log was not detected: {r:?}"),
    }
}

#[test]
fn a_record_under_the_wrong_key_is_detected_on_open() {
    let mut h = RocksHarness::default();
    let s = store_with_entries(&mut h, 30);
    let r = damage_and_reopen(s, |db, cf| {
        let Ok(Some(rec)) = db.get_cf(cf, log_key(LogIndex(8))) else {
            panic!("no record 8");
        };
        db.put_cf(cf, log_key(LogIndex(9)), &rec).expect("put");
    });
    match r {
        Err(StorageError::Fatal(msg)) => assert!(msg.contains("index 9"), "{msg}"),
        r => panic!("a misplaced record was not detected: {r:?}"),
    }
}

#[test]
fn a_different_identity_is_refused_after_reopen() {
    let mut h = RocksHarness::default();
    let s = h.create();
    let id = StoreIdentity {
        cluster_id: 5,
        node_id: NodeId(1),
    };
    s.set_identity(id).expect("set identity");
    let s = h.reopen(s).expect("reopen");
    assert_eq!(s.identity().expect("identity"), Some(id));
    let other = StoreIdentity {
        cluster_id: 5,
        node_id: NodeId(2),
    };
    match s.set_identity(other) {
        Err(StorageError::Fatal(msg)) => {
            assert!(msg.contains("cluster 5 node 1"), "{msg}");
            assert!(msg.contains("cluster 5 node 2"), "{msg}");
        }
        r => panic!("a different identity was not refused: {r:?}"),
    }
    s.set_identity(id).expect("the same identity again");
    assert_eq!(s.identity().expect("identity"), Some(id));
}

#[test]
fn store_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<RocksStore>();
}

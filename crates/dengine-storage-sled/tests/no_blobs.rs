//! Entries of every size are durable: the store never leaves sled a value
//! large enough to be written as a blob file (which sled does not fsync;
//! see the crate docs, "Large values").

use std::path::{Path, PathBuf};

use dengine_core::{
    Entry, EntryPayload, LogIndex, LogStorage, LogStore, MetaStore, SnapshotMeta, StorageError,
    Term,
};
use dengine_storage_sled::{LOG_TREE, SledStore, VALUE_MAX_BYTES, chunk_key, log_key};

const MIB: usize = 1024 * 1024;

/// The files sled wrote as blobs in the database at `path` (it keeps them
/// under `blobs/`, one file each).
fn blob_files(path: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(path.join("blobs")) {
        Ok(dir) => dir.map(|f| f.expect("a directory entry").path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("cannot list the blobs of {}: {e}", path.display()),
    }
}

/// An entry of `len` bytes whose bytes depend on its index and position.
fn entry(index: u64, term: u64, len: usize) -> Entry {
    let payload = (0..len)
        .map(|i| (i as u64).wrapping_mul(31).wrapping_add(index) as u8)
        .collect();
    Entry {
        term: Term(term),
        index: LogIndex(index),
        payload: EntryPayload::Normal(payload),
    }
}

/// The largest value in the store's `log` tree (the store closed).
fn largest_value(path: &Path) -> usize {
    let db = dengine_storage_sled::open_raw(path).unwrap();
    let log = db.open_tree(LOG_TREE).unwrap();
    log.iter().map(|kv| kv.unwrap().1.len()).max().unwrap_or(0)
}

fn all_entries(s: &SledStore) -> Vec<Entry> {
    let (first, last) = (s.first_index().unwrap(), s.last_index().unwrap());
    s.entries(first, last.next(), u64::MAX).unwrap()
}

fn assert_durable_layout(path: &Path) {
    assert_eq!(blob_files(path), Vec::<PathBuf>::new(), "blob files");
    let largest = largest_value(path);
    assert!(largest <= VALUE_MAX_BYTES, "a value of {largest} bytes");
}

/// The check below can fail: sled does write a 1 MiB value as a blob.
#[test]
fn sled_writes_a_large_value_as_a_blob() {
    let dir = tempfile::tempdir().unwrap();
    let db = dengine_storage_sled::open_raw(dir.path()).unwrap();
    db.insert(b"k", vec![7u8; MIB]).unwrap();
    db.flush().unwrap();
    drop(db);
    assert!(
        !blob_files(dir.path()).is_empty(),
        "no blob for a 1 MiB value"
    );
}

#[test]
fn entries_of_1_mib_are_stored_without_blobs_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let s = SledStore::open(&path).unwrap();
    // Large entries in one write, between small ones; then one at a time.
    let mut want: Vec<Entry> = vec![entry(1, 1, 10)];
    want.extend((2..=5).map(|i| entry(i, 1, MIB)));
    want.push(entry(6, 1, 100));
    s.write(None, &want, None).unwrap();
    for i in 7..=9 {
        let e = entry(i, 1, MIB + i as usize);
        s.write(None, std::slice::from_ref(&e), None).unwrap();
        want.push(e);
    }
    s.sync().unwrap();
    assert_eq!(all_entries(&s), want);
    drop(s);
    assert_durable_layout(&path);

    let s = SledStore::open(&path).unwrap();
    assert_eq!(all_entries(&s), want, "after reopen");
    // Reads starting at, and limited to, single large entries.
    assert_eq!(
        s.entries(LogIndex(3), LogIndex(10), 1).unwrap(),
        want[2..3],
        "one entry"
    );
    // Replace the suffix from a large entry, then compact past others.
    let tail = [entry(4, 2, MIB / 2), entry(5, 2, 3 * MIB)];
    s.write(None, &tail, None).unwrap();
    want.truncate(3);
    want.extend(tail);
    s.save_snapshot_meta(&SnapshotMeta {
        last_index: LogIndex(3),
        last_term: Term(1),
        ..SnapshotMeta::default()
    })
    .unwrap();
    s.compact(LogIndex(3)).unwrap();
    s.sync().unwrap();
    want.drain(..3);
    assert_eq!(all_entries(&s), want);
    drop(s);
    assert_durable_layout(&path);

    let s = SledStore::open(&path).unwrap();
    assert_eq!(all_entries(&s), want, "after the second reopen");
    assert_eq!(s.term(LogIndex(3)).unwrap(), Term(1), "base term");
}

fn fatal_message(r: Result<SledStore, StorageError>) -> String {
    match r {
        Ok(_) => panic!("the store opened although it is damaged"),
        Err(StorageError::Fatal(msg)) => msg,
        Err(e) => panic!("expected a fatal error, got {e}"),
    }
}

/// A store `root/name` holding entries 1 (small), 2 (three chunks and a
/// bit) and 3 (small); closed.
fn store_with_a_chunked_entry(root: &Path, name: &str) -> PathBuf {
    let path = root.join(name);
    let s = SledStore::open(&path).unwrap();
    let ents = [
        entry(1, 1, 10),
        entry(2, 1, 3 * VALUE_MAX_BYTES),
        entry(3, 1, 10),
    ];
    s.write(None, &ents, None).unwrap();
    s.sync().unwrap();
    path
}

fn edit_log(path: &Path, f: impl FnOnce(&sled::Tree)) {
    let db = dengine_storage_sled::open_raw(path).unwrap();
    f(&db.open_tree(LOG_TREE).unwrap());
    db.flush().unwrap();
}

#[test]
fn damaged_chunks_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with_a_chunked_entry(dir.path(), "middle");
    edit_log(&path, |log| {
        log.remove(chunk_key(LogIndex(2), 2)).unwrap();
    });
    let msg = fatal_message(SledStore::open(&path));
    assert!(
        msg.contains("log entry 2 is corrupt: chunk 2 of the run at 2 is missing"),
        "{msg}"
    );

    let path = store_with_a_chunked_entry(dir.path(), "last");
    edit_log(&path, |log| {
        log.remove(chunk_key(LogIndex(2), 3)).unwrap();
    });
    let msg = fatal_message(SledStore::open(&path));
    assert!(
        msg.contains("log entry 2 is corrupt: record truncated"),
        "{msg}"
    );

    let path = store_with_a_chunked_entry(dir.path(), "first");
    edit_log(&path, |log| {
        log.remove(log_key(LogIndex(2))).unwrap();
    });
    let msg = fatal_message(SledStore::open(&path));
    assert!(
        msg.contains("log entry 2 is missing: chunk 1 of the run at 2 is stored without"),
        "{msg}"
    );

    // Two small entries in one run, stored in two chunks: valid records,
    // but a lost last chunk could have hidden the second.
    let path = dir.path().join("several");
    edit_log(&path, |log| {
        let mut run = Vec::new();
        for e in [entry(1, 1, 10), entry(2, 1, 10)] {
            let record = dengine_core::codec::encode_entry(&e);
            run.extend_from_slice(&(record.len() as u32).to_le_bytes());
            run.extend_from_slice(&record);
        }
        let (a, b) = run.split_at(20);
        log.insert(log_key(LogIndex(1)), a).unwrap();
        log.insert(chunk_key(LogIndex(1), 1), b).unwrap();
    });
    let msg = fatal_message(SledStore::open(&path));
    assert!(
        msg.contains("the run at 1 is stored in 2 chunks but holds 2 entries"),
        "{msg}"
    );
}

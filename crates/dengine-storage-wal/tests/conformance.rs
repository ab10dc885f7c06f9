//! The core's storage conformance suite, run on [`WalStore`], and what
//! only the write-ahead log has: torn ends cut at every byte, segments
//! started and deleted, damage reported with the entry it hits.

use std::path::{Path, PathBuf};

use dengine_core::testing::store_suite::{self, StoreHarness};
use dengine_core::{
    ConfState, HardState, LogIndex, LogStorage, LogStore, MetaStore, NodeId, SnapshotMeta,
    StorageError, StoreIdentity, Term,
};
use dengine_storage_wal::frame::written_end;
use dengine_storage_wal::{WalOptions, WalStore};

mod common;
use common::{all, ents, names};

struct WalHarness {
    root: tempfile::TempDir,
    next: u32,
}

impl WalHarness {
    fn new() -> WalHarness {
        WalHarness {
            root: tempfile::tempdir().expect("temporary directory"),
            next: 0,
        }
    }
}

fn last_segment(dir: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segs.sort();
    segs.pop().expect("a segment")
}

impl StoreHarness for WalHarness {
    type Store = WalStore;

    fn create(&mut self) -> WalStore {
        self.next += 1;
        WalStore::open(self.root.path().join(format!("store-{}", self.next)))
            .expect("open a new store")
    }

    fn reopen(&mut self, store: WalStore) -> Result<WalStore, StorageError> {
        let path = store.path().to_path_buf();
        drop(store);
        WalStore::open(path)
    }

    fn crash_and_reopen(&mut self, store: WalStore) -> Option<Result<WalStore, StorageError>> {
        // The unsynced write is the last record: a crash leaves part of it.
        let path = store.path().to_path_buf();
        drop(store);
        // Segments are written over zeros (prepared ahead): a torn write
        // leaves zeros from a sector boundary where its last sectors were
        // to go.
        let seg = last_segment(&path);
        let mut bytes = std::fs::read(&seg).unwrap();
        let end = written_end(&bytes);
        bytes[(end - 100) / 512 * 512..end].fill(0);
        std::fs::write(&seg, &bytes).unwrap();
        Some(WalStore::open(path))
    }

    fn corrupt_entry_and_reopen(
        &mut self,
        store: WalStore,
        index: LogIndex,
    ) -> Option<Result<WalStore, StorageError>> {
        let path = store.path().to_path_buf();
        drop(store);
        // The suite's entries carry "e<index>t<term>".
        let marker = format!("e{index}t");
        let seg = last_segment(&path);
        let mut bytes = std::fs::read(&seg).unwrap();
        let at = bytes
            .windows(marker.len())
            .position(|w| w == marker.as_bytes())
            .expect("the entry's payload");
        bytes[at] ^= 0x20;
        std::fs::write(&seg, bytes).unwrap();
        Some(WalStore::open(path))
    }
}

#[test]
fn wal_store_passes_the_conformance_suite() {
    store_suite::run_all(&mut WalHarness::new());
}

fn fatal(r: Result<WalStore, StorageError>) -> String {
    match r {
        Ok(_) => panic!("the store opened although it is damaged"),
        Err(StorageError::Fatal(msg)) => msg,
        Err(e) => panic!("expected a fatal error, got {e}"),
    }
}

#[test]
fn a_crash_cut_at_any_byte_of_the_unsynced_end_keeps_a_clean_prefix() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("s");
    let hs = HardState {
        term: Term(2),
        vote: NodeId(1),
        commit: LogIndex(20),
    };
    let s = WalStore::open(&dir).unwrap();
    s.write(None, &ents(1, 20, 1, 100), Some(&hs)).unwrap();
    s.sync().unwrap();
    drop(s);
    let seg = last_segment(&dir);
    let synced = std::fs::read(&seg).unwrap();
    let s = WalStore::open(&dir).unwrap();
    // Two unsynced writes: 21..=40, then 41..=60 (which replaces nothing).
    s.write(None, &ents(21, 40, 2, 700), None).unwrap();
    s.write(None, &ents(41, 60, 2, 10), None).unwrap();
    drop(s);
    let full = std::fs::read(&seg).unwrap();
    // The segment was prepared as zeros: the records end before the file.
    let (synced_end, full_end) = (written_end(&synced), written_end(&full));
    assert!(full_end > synced_end + 14_000, "{synced_end} {full_end}");
    let backup = root.path().join("full");
    for cut in (synced_end..=full_end).step_by(7).chain([full_end - 1]) {
        // Cut, or leave the length and zero the rest (a file that grew but
        // whose data never reached the disk).
        for zeroed in [false, true] {
            let _ = std::fs::remove_dir_all(&backup);
            // Disks write whole sectors: zeros start at a sector boundary.
            let keep = if zeroed { cut.div_ceil(512) * 512 } else { cut };
            let mut bytes = full[..keep.min(full.len())].to_vec();
            if zeroed {
                // Not all of the prepared zeros: each open syncs what the
                // test wrote, and a few kilobytes are as good a test.
                bytes.resize(full_end.div_ceil(512) * 512 + 4096, 0);
            }
            std::fs::write(&seg, &bytes).unwrap();
            let s = WalStore::open(&dir).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            let last = s.last_index().unwrap().0;
            assert!([20, 40, 60].contains(&last), "cut at {cut}: last {last}");
            let want = [
                ents(1, 20, 1, 100),
                ents(21, 40, 2, 700),
                ents(41, 60, 2, 10),
            ]
            .concat();
            assert_eq!(all(&s), want[..last as usize], "cut at {cut}");
            assert_eq!(s.initial_state().unwrap().hard_state, hs);
            // It goes on from there, and that survives a reopen.
            s.write(None, &ents(last + 1, last + 1, 3, 5), None)
                .unwrap();
            s.sync().unwrap();
            drop(s);
            let s = WalStore::open(&dir).unwrap_or_else(|e| {
                panic!("reopen after cut {cut} zeroed {zeroed} last {last}: {e}")
            });
            assert_eq!(s.last_index().unwrap(), LogIndex(last + 1), "cut at {cut}");
            drop(s);
        }
    }
}

#[test]
fn segments_roll_over_and_compaction_deletes_the_ones_it_covers() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("s");
    let options = WalOptions {
        segment_bytes: 4096,
    };
    let s = WalStore::open_with(&dir, options.clone()).unwrap();
    let id = StoreIdentity {
        cluster_id: 7,
        node_id: NodeId(2),
    };
    s.set_identity(id).unwrap();
    let mut want = Vec::new();
    for lo in (1..=300).step_by(10) {
        let batch = ents(lo, lo + 9, 1, 90);
        let hs = HardState {
            term: Term(1),
            vote: NodeId(2),
            commit: LogIndex(lo + 9),
        };
        s.write(None, &batch, Some(&hs)).unwrap();
        s.sync().unwrap();
        want.extend(batch);
    }
    let many = s.segments().len();
    assert!(many >= 8, "{many} segments");
    drop(s);
    let s = WalStore::open_with(&dir, options.clone()).unwrap();
    assert_eq!(all(&s), want);
    assert_eq!(s.identity().unwrap(), Some(id));
    // A snapshot at 200, then compaction to it: the segments holding only
    // entries up to 200 go.
    let meta = SnapshotMeta {
        last_index: LogIndex(200),
        last_term: Term(1),
        conf_state: ConfState::with_voters([NodeId(1), NodeId(2)]),
    };
    s.save_snapshot_meta(&meta).unwrap();
    s.compact(LogIndex(200)).unwrap();
    let left = s.segments().len();
    assert!(left < many / 2, "{left} of {many} segments left");
    assert_eq!(all(&s), want[200..]);
    drop(s);
    for _ in 0..2 {
        let s = WalStore::open_with(&dir, options.clone()).unwrap();
        assert_eq!(s.first_index().unwrap(), LogIndex(201));
        assert_eq!(s.term(LogIndex(200)).unwrap(), Term(1));
        assert_eq!(all(&s), want[200..]);
        assert_eq!(s.identity().unwrap(), Some(id));
        assert_eq!(s.snapshot_meta().unwrap(), meta);
        let init = s.initial_state().unwrap();
        assert_eq!(init.hard_state.commit, LogIndex(300));
        assert_eq!(init.applied, LogIndex(200));
    }
    // A snapshot from a leader that replaces the whole log survives a
    // reopen, with what is written after it.
    let s = WalStore::open_with(&dir, options.clone()).unwrap();
    let leader = SnapshotMeta {
        last_index: LogIndex(500),
        last_term: Term(3),
        conf_state: ConfState::with_voters([NodeId(1), NodeId(2)]),
    };
    s.write(Some(&leader), &ents(501, 510, 3, 20), None)
        .unwrap();
    s.sync().unwrap();
    drop(s);
    let s = WalStore::open_with(&dir, options).unwrap();
    assert_eq!(s.first_index().unwrap(), LogIndex(501));
    assert_eq!(all(&s), ents(501, 510, 3, 20));
    assert_eq!(s.initial_state().unwrap().hard_state.commit, LogIndex(500));
}

#[test]
fn damage_in_an_older_segment_names_the_entry() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("s");
    let options = WalOptions {
        segment_bytes: 2048,
    };
    let s = WalStore::open_with(&dir, options.clone()).unwrap();
    for lo in (1..=100).step_by(5) {
        s.write(None, &ents(lo, lo + 4, 1, 100), None).unwrap();
    }
    s.sync().unwrap();
    let first = s.segments()[0].clone();
    drop(s);
    let mut bytes = std::fs::read(&first).unwrap();
    // Entry 3's payload is 100 bytes of 4 (a sector's tag may cut it).
    let at = bytes
        .windows(40)
        .position(|w| w.iter().all(|&b| b == 4))
        .unwrap();
    bytes[at + 20] ^= 1;
    std::fs::write(&first, &bytes).unwrap();
    let msg = fatal(WalStore::open_with(&dir, options.clone()));
    assert!(msg.contains("log entry 3 is corrupt"), "{msg}");
    assert!(msg.contains("0000000000000001.wal"), "{msg}");
    // Cut short, an older segment is damage, not a torn end.
    bytes[at + 20] ^= 1;
    std::fs::write(&first, &bytes[..written_end(&bytes) - 10]).unwrap();
    let msg = fatal(WalStore::open_with(&dir, options.clone()));
    assert!(
        msg.contains("never wholly written, and segments follow"),
        "{msg}"
    );
    // A segment missing between others.
    std::fs::write(&first, &bytes).unwrap();
    let s = WalStore::open_with(&dir, options.clone()).unwrap();
    let second = s.segments()[1].clone();
    drop(s);
    std::fs::remove_file(&second).unwrap();
    let msg = fatal(WalStore::open_with(&dir, options));
    assert!(msg.contains("0000000000000002.wal is missing"), "{msg}");
}

#[test]
fn a_store_is_opened_by_one_owner_at_a_time() {
    let root = tempfile::tempdir().unwrap();
    let s = WalStore::open(root.path()).unwrap();
    let msg = fatal(WalStore::open(root.path()));
    assert!(msg.contains("in use"), "{msg}");
    drop(s);
    WalStore::open(root.path()).unwrap();
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

#[test]
fn segments_are_written_over_zeros_prepared_ahead_twice_as_large_each_time() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("s");
    let options = WalOptions {
        segment_bytes: 2 * 1024 * 1024,
    };
    let s = WalStore::open_with(&dir, options.clone()).unwrap();
    // A new store's first segment is 256 KiB of zeros, synced.
    let first = s.segments()[0].clone();
    assert_eq!(file_len(&first), 256 * 1024);
    let mut want = Vec::new();
    let mut lo = 1;
    while s.segments().len() < 5 {
        let batch = ents(lo, lo + 9, 1, 10_000);
        s.write(None, &batch, None).unwrap();
        s.sync().unwrap();
        want.extend(batch);
        lo += 10;
    }
    let segments = s.segments();
    // Each full segment is as long as the zeros it was written over (its
    // last record may run past them), and the next is twice as large, up
    // to the configured size.
    for (seg, zeros) in segments.iter().zip([256, 512, 1024, 2048]) {
        let len = file_len(seg);
        assert!(
            (zeros * 1024..zeros * 1024 + 110_000).contains(&len),
            "{}: {len}",
            seg.display()
        );
    }
    assert_eq!(file_len(&segments[4]), 2 * 1024 * 1024);
    // The last one's records end in its zeros; the store reads back whole.
    let last = std::fs::read(&segments[4]).unwrap();
    assert!(written_end(&last) < last.len());
    drop(s);
    let s = WalStore::open_with(&dir, options.clone()).unwrap();
    assert_eq!(all(&s), want);
    // Once the current segment is half full, the next one is prepared
    // beside it under a name that is never read as a segment.
    while written_end(&std::fs::read(&segments[4]).unwrap()) < 1024 * 1024 + 1000 {
        let batch = ents(lo, lo + 9, 1, 10_000);
        s.write(None, &batch, None).unwrap();
        s.sync().unwrap();
        want.extend(batch);
        lo += 10;
    }
    let batch = ents(lo, lo + 9, 1, 10_000);
    s.write(None, &batch, None).unwrap();
    want.extend(batch);
    assert!(
        names(&dir).contains(&"0000000000000006.wal.prep".to_string()),
        "{:?}",
        names(&dir)
    );
    drop(s);
    // Closed, the store leaves no prepared file; one a crash left is
    // removed when it opens.
    assert!(!names(&dir).iter().any(|n| n.ends_with(".prep")));
    std::fs::write(dir.join("0000000000000006.wal.prep"), [0u8; 100]).unwrap();
    let s = WalStore::open_with(&dir, options).unwrap();
    assert!(!names(&dir).iter().any(|n| n.ends_with(".prep")));
    assert_eq!(all(&s), want);
}

#[test]
fn what_a_crash_left_after_the_last_record_is_cleared_before_appending() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("s");
    let s = WalStore::open(&dir).unwrap();
    s.write(None, &ents(1, 10, 1, 100), None).unwrap();
    s.sync().unwrap();
    // A large write that a crash tears: its first sectors reached the
    // disk, its last did not.
    s.write(None, &ents(11, 20, 1, 2000), None).unwrap();
    drop(s);
    let seg = last_segment(&dir);
    let mut bytes = std::fs::read(&seg).unwrap();
    let end = written_end(&bytes);
    bytes[(end - 3000) / 512 * 512..end].fill(0);
    std::fs::write(&seg, &bytes).unwrap();
    let s = WalStore::open(&dir).unwrap();
    assert_eq!(s.last_index().unwrap(), LogIndex(10));
    // A short write where the torn one began: the torn one's remains
    // must not follow it, or the next open would find them damaged.
    s.write(None, &ents(11, 11, 2, 10), None).unwrap();
    s.sync().unwrap();
    drop(s);
    let s = WalStore::open(&dir).unwrap();
    let want = [ents(1, 10, 1, 100), ents(11, 11, 2, 10)].concat();
    assert_eq!(all(&s), want);
}

//! Segment files used again: a segment a compaction covers is written
//! over by a later one instead of a file of new zeros. What the later one
//! reads back is its own records only, a crash that tears its last write
//! leaves a clean prefix, and damage is still found. Segments written in
//! the layout before tagged sectors (frames over zeros) still open, take
//! appends and are never used again.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use dengine_core::{
    ConfState, Entry, LogIndex, LogStorage, LogStore, MetaStore, SnapshotMeta, StorageError, Term,
};
use dengine_storage_wal::{WalOptions, WalStore};

mod common;
use common::{all, ents, names};

const SECTOR: usize = 512;
const TAG: usize = 8;

/// Fails naming the first entry that differs (the entries are too large
/// to print).
fn assert_same(got: &[Entry], want: &[Entry], what: &str) {
    let index = |e: &[Entry]| (e.first().map(|e| e.index.0), e.last().map(|e| e.index.0));
    assert_eq!(
        (got.len(), index(got)),
        (want.len(), index(want)),
        "{what}: entries held"
    );
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!("{what}: entry {} differs", got[i].index);
    }
}

fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

/// Compacts the store up to `index` (with a snapshot there).
fn compact(s: &WalStore, index: u64) {
    let meta = SnapshotMeta {
        last_index: LogIndex(index),
        last_term: Term(1),
        conf_state: ConfState::default(),
    };
    s.save_snapshot_meta(&meta).unwrap();
    s.compact(LogIndex(index)).unwrap();
}

/// Writes batches of 10 entries from `*lo` on, synced, into `want`,
/// until `done` says so.
fn fill(s: &WalStore, lo: &mut u64, want: &mut Vec<Entry>, done: impl Fn(&WalStore) -> bool) {
    while !done(s) {
        let batch = ents(*lo, *lo + 9, 1, 3000);
        s.write(None, &batch, None).unwrap();
        s.sync().unwrap();
        want.extend(batch);
        *lo += 10;
    }
}

/// A store whose current segment is written over an older segment's
/// file: its directory, the entries it holds, the next index, and that
/// segment's path.
fn store_on_a_file_used_again(root: &Path) -> (PathBuf, WalOptions, Vec<Entry>, u64, PathBuf) {
    let dir = root.join("s");
    // The first segment is 256 KiB: all are of the full size.
    let options = WalOptions {
        segment_bytes: 256 * 1024,
    };
    let s = WalStore::open_with(&dir, options.clone()).unwrap();
    let (mut lo, mut want) = (1, Vec::new());
    fill(&s, &mut lo, &mut want, |s| s.segments().len() >= 3);
    let first = s.segments()[0].clone();
    let first_inode = inode(&first);
    // Covered, the first segment's file is kept, not deleted.
    // All but the last batch.
    let upto = lo - 11;
    compact(&s, upto);
    want.retain(|e| e.index.0 > upto);
    assert!(!first.exists());
    assert!(
        names(&dir).contains(&"recycled.wal.prep".to_string()),
        "{:?}",
        names(&dir)
    );
    // The next segment but one is written over it.
    let before = s.segments().len();
    fill(&s, &mut lo, &mut want, |s| s.segments().len() > before);
    let last = s.segments().last().unwrap().clone();
    assert_eq!(inode(&last), first_inode, "{:?}", names(&dir));
    assert!(
        !names(&dir).iter().any(|n| n.starts_with("recycled")),
        "{:?}",
        names(&dir)
    );
    // A few records in it, not many: most of the older segment's bytes
    // are still there after them.
    let batch = ents(lo, lo + 9, 1, 3000);
    s.write(None, &batch, None).unwrap();
    s.sync().unwrap();
    want.extend(batch);
    lo += 10;
    assert_same(&all(&s), &want, "");
    drop(s);
    (dir, options, want, lo, last)
}

#[test]
fn a_segment_written_over_an_older_one_reads_back_its_own_records_only() {
    let root = tempfile::tempdir().unwrap();
    let (dir, options, mut want, mut lo, last) = store_on_a_file_used_again(root.path());
    // The older segment's bytes are in the file, after the records: its
    // last 64 KiB were not written over.
    let bytes = std::fs::read(&last).unwrap();
    assert!(bytes[bytes.len() - 65_536..].iter().any(|&b| b != 0));
    for _ in 0..2 {
        let s = WalStore::open_with(&dir, options.clone()).unwrap();
        assert_same(&all(&s), &want, "");
        // It goes on from there, over the older segment's bytes.
        let batch = ents(lo, lo + 2, 2, 100);
        s.write(None, &batch, None).unwrap();
        s.sync().unwrap();
        want.extend(batch);
        lo += 3;
    }
    let s = WalStore::open_with(&dir, options).unwrap();
    assert_same(&all(&s), &want, "");
}

#[test]
fn a_torn_write_over_an_older_segment_leaves_a_clean_prefix_and_damage_is_found() {
    let root = tempfile::tempdir().unwrap();
    let (dir, options, want, lo, last) = store_on_a_file_used_again(root.path());
    let synced = std::fs::read(&last).unwrap();
    // An unsynced write of 20 KB.
    let s = WalStore::open_with(&dir, options.clone()).unwrap();
    let unsynced = ents(lo, lo + 9, 3, 2000);
    s.write(None, &unsynced, None).unwrap();
    drop(s);
    let full = std::fs::read(&last).unwrap();
    // The sectors the write put records in (not the zeros after them in
    // its last block).
    let sector = |b: &[u8], i: usize| b[i * SECTOR..(i + 1) * SECTOR].to_vec();
    let changed: Vec<usize> = (0..full.len() / SECTOR)
        .filter(|&i| sector(&full, i) != sector(&synced, i))
        .filter(|&i| sector(&full, i).iter().any(|&b| b != 0))
        .collect();
    assert!(changed.len() > 30, "{} sectors changed", changed.len());
    // The write's sectors from any one on never reached the disk: the
    // older segment's are there instead.
    for &from in changed.iter().step_by(3) {
        let mut torn = full.clone();
        for &i in changed.iter().filter(|&&i| i >= from) {
            torn[i * SECTOR..(i + 1) * SECTOR]
                .copy_from_slice(&synced[i * SECTOR..(i + 1) * SECTOR]);
        }
        std::fs::write(&last, &torn).unwrap();
        let s = WalStore::open_with(&dir, options.clone())
            .unwrap_or_else(|e| panic!("torn from sector {from}: {e}"));
        assert_same(&all(&s), &want, &format!("torn from sector {from}"));
        // What follows is not followed by the torn write's remains.
        s.write(None, &ents(lo, lo, 4, 10), None).unwrap();
        s.sync().unwrap();
        drop(s);
        let s = WalStore::open_with(&dir, options.clone()).unwrap();
        assert_eq!(
            s.last_index().unwrap(),
            LogIndex(lo),
            "torn from sector {from}"
        );
        drop(s);
    }
    // Whole, the write reads back.
    std::fs::write(&last, &full).unwrap();
    let s = WalStore::open_with(&dir, options.clone()).unwrap();
    assert_same(&all(&s), &[want.clone(), unsynced].concat(), "whole");
    drop(s);

    // A synced entry damaged is found and named, not taken for a torn end:
    // entry lo-1 is the last one synced, 3000 bytes of one value.
    let mut damaged = synced.clone();
    let mark = ((lo - 1) % 251) as u8 + 1;
    let at = damaged
        .windows(400)
        .position(|w| w.iter().all(|&b| b == mark))
        .unwrap();
    damaged[at + 200] ^= 1;
    std::fs::write(&last, &damaged).unwrap();
    match WalStore::open_with(&dir, options.clone()) {
        Err(StorageError::Fatal(msg)) => assert!(msg.contains("corrupt"), "{msg}"),
        other => panic!("damage went unseen: {:?}", other.map(|s| all(&s).len())),
    }
    // So is a damaged sector tag after the records.
    let mut damaged = synced.clone();
    let end = changed[0] * SECTOR;
    let after = (end / SECTOR + 40) * SECTOR;
    damaged[after + 2] ^= 1;
    std::fs::write(&last, &damaged).unwrap();
    assert!(WalStore::open_with(&dir, options).is_err());
}

#[test]
fn segments_of_the_layout_before_open_take_appends_and_are_deleted_not_used_again() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("s");
    let options = WalOptions {
        segment_bytes: 256 * 1024,
    };
    let s = WalStore::open_with(&dir, options.clone()).unwrap();
    let mut want = ents(1, 20, 1, 3000);
    s.write(None, &want, None).unwrap();
    s.sync().unwrap();
    let seg = s.segments()[0].clone();
    drop(s);
    let legacy_inode = inode(&seg);
    // The same segment as a store before tagged sectors wrote it: its
    // frames one after another, then zeros.
    let bytes = std::fs::read(&seg).unwrap();
    let mut frames: Vec<u8> = bytes
        .chunks(SECTOR)
        .flat_map(|s| s[TAG..].to_vec())
        .collect();
    let end = frames.iter().rposition(|&b| b != 0).unwrap() + 1;
    frames.truncate(end);
    frames.resize(bytes.len(), 0);
    std::fs::write(&seg, &frames).unwrap();
    let s = WalStore::open_with(&dir, options.clone()).unwrap();
    assert_same(&all(&s), &want, "");
    // Appended to in its own layout, and read back so.
    let (mut lo, more) = (21, ents(21, 30, 1, 3000));
    s.write(None, &more, None).unwrap();
    s.sync().unwrap();
    want.extend(more);
    lo += 10;
    drop(s);
    let s = WalStore::open_with(&dir, options.clone()).unwrap();
    assert_same(&all(&s), &want, "");
    assert_eq!(&std::fs::read(&seg).unwrap()[..end], &frames[..end]);
    // Later segments are tagged; once covered, the old one is deleted,
    // not kept to be written over.
    fill(&s, &mut lo, &mut want, |s| s.segments().len() >= 3);
    let upto = lo - 11;
    compact(&s, upto);
    assert!(!seg.exists());
    let recycled = dir.join("recycled.wal.prep");
    assert!(!recycled.exists() || inode(&recycled) != legacy_inode);
    want.retain(|e| e.index.0 > upto);
    drop(s);
    let s = WalStore::open_with(&dir, options).unwrap();
    assert_same(&all(&s), &want, "");
}

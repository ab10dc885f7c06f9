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
    KEY_BASE, KEY_HARD_STATE, KEY_SNAPSHOT, LOG_TREE, META_TREE, RUN_MAX_BYTES, RUN_MAX_ENTRIES,
    SledStore, VALUE_MAX_BYTES, chunk_key, log_key,
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

/// One run of the `log` tree as stored: its key (the index of its first
/// entry) and its records, in order.
#[derive(Clone, Debug)]
struct Run {
    start: u64,
    records: Vec<Vec<u8>>,
}

/// Splits a run's value into its records (each stored as its length, u32
/// little-endian, then its bytes). Panics on torn framing.
fn split_run(mut value: &[u8]) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    while !value.is_empty() {
        let (len, rest) = value.split_first_chunk::<4>().expect("a length");
        let len = u32::from_le_bytes(*len) as usize;
        records.push(rest[..len].to_vec());
        value = &rest[len..];
    }
    records
}

/// The value of a run holding `records`.
fn join_run(records: &[Vec<u8>]) -> Vec<u8> {
    let mut value = Vec::new();
    for r in records {
        value.extend_from_slice(&(r.len() as u32).to_le_bytes());
        value.extend_from_slice(r);
    }
    value
}

/// The runs of the closed store at `path`, their chunks joined.
fn read_runs(path: &Path) -> Vec<Run> {
    let mut runs: Vec<(u64, Vec<u8>)> = Vec::new();
    with_raw_tree(path, LOG_TREE, |log| {
        for item in log.iter() {
            let (key, value) = item.expect("read a run");
            let (start, n) = key.split_at(8);
            let start = u64::from_be_bytes(start.try_into().expect("8 bytes"));
            if n.is_empty() {
                runs.push((start, value.to_vec()));
            } else {
                let run = runs.last_mut().expect("a chunk after its run's first key");
                assert_eq!(run.0, start, "a chunk of the run before");
                run.1.extend_from_slice(&value);
            }
        }
    });
    runs.into_iter()
        .map(|(start, bytes)| Run {
            start,
            records: split_run(&bytes),
        })
        .collect()
}

/// Stores `run` (the bytes of a run) in chunks, as the store does.
fn put_run(log: &sled::Tree, start: u64, run: &[u8]) {
    let mut pieces = run.chunks(VALUE_MAX_BYTES);
    let first = pieces.next().unwrap_or(&[]);
    log.insert(log_key(LogIndex(start)), first)
        .expect("write a run");
    for (n, piece) in (1..).zip(pieces) {
        log.insert(chunk_key(LogIndex(start), n), piece)
            .expect("write a chunk");
    }
}

/// The first indexes of the runs of the closed store at `path`.
fn run_starts(path: &Path) -> Vec<u64> {
    read_runs(path).iter().map(|r| r.start).collect()
}

/// Reads the runs of the closed store at `path`, lets `f` change them, and
/// stores them back in place of the whole log tree.
fn edit_runs(path: &Path, f: impl FnOnce(&mut Vec<Run>)) {
    let mut runs = read_runs(path);
    f(&mut runs);
    with_raw_tree(path, LOG_TREE, |log| {
        log.clear().expect("clear the log");
        for run in &runs {
            put_run(log, run.start, &join_run(&run.records));
        }
    });
}

/// The run holding entry `index` and the entry's position in it.
fn find(runs: &mut [Run], index: u64) -> (&mut Run, usize) {
    let run = runs
        .iter_mut()
        .rev()
        .find(|r| r.start <= index)
        .expect("a run holds the entry");
    let pos = (index - run.start) as usize;
    assert!(pos < run.records.len(), "the run holds entry {index}");
    (run, pos)
}

/// Flips a byte in the body of the stored record of entry `index` (after
/// the 4-byte checksum), so that the checksum no longer matches.
fn corrupt_log_record(path: &Path, index: LogIndex) {
    edit_runs(path, |runs| {
        let (run, pos) = find(runs, index.0);
        let rec = &mut run.records[pos];
        let last = rec.len() - 1;
        rec[last] ^= 0x40;
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
        payload: EntryPayload::Normal(vec![index as u8; 16].into()),
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

/// A store `root/name` with entries 1..=20 (term 1) written in four
/// batches, so stored as the runs 1..=5, 6..=10, 11..=15 and 16..=20;
/// closed. Returns its directory.
fn store_with_20_entries(root: &Path, name: &str) -> PathBuf {
    let path = root.join(name);
    let s = SledStore::open(&path).unwrap();
    for lo in [1, 6, 11, 16] {
        s.write(None, &ents(lo, lo + 4, 1), None).unwrap();
    }
    s.sync().unwrap();
    drop(s);
    assert_eq!(run_starts(&path), [1, 6, 11, 16]);
    path
}

/// Every entry of `s`, checked against `want`, with each entry's term.
fn assert_log(s: &SledStore, want: &[Entry]) {
    let first = want
        .first()
        .map_or(s.last_index().unwrap().next(), |e| e.index);
    assert_eq!(s.first_index().unwrap(), first, "first index");
    assert_eq!(
        s.last_index().unwrap(),
        want.last().map_or(first.prev(), |e| e.index),
        "last index"
    );
    let got = s
        .entries(first, s.last_index().unwrap().next(), u64::MAX)
        .unwrap();
    assert_eq!(got, want, "entries");
    // Reads starting in the middle of runs: from every entry of a short
    // log, from some fifty of a long one.
    let step = (want.len() / 50).max(1);
    for e in want {
        assert_eq!(s.term(e.index).unwrap(), e.term, "term of {}", e.index);
        if !(e.index.0 - first.0).is_multiple_of(step as u64) {
            continue;
        }
        let from = s
            .entries(e.index, s.last_index().unwrap().next(), u64::MAX)
            .unwrap();
        assert_eq!(
            from[..],
            want[(e.index.0 - first.0) as usize..],
            "from {}",
            e.index
        );
    }
}

#[test]
fn sled_store_passes_the_conformance_suite() {
    store_suite::run_all(&mut SledHarness::new());
}

#[test]
fn a_corrupt_entry_is_reported_with_path_and_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with_20_entries(dir.path(), "s");
    corrupt_log_record(&path, LogIndex(13));
    let msg = fatal_message(SledStore::open(&path));
    assert!(msg.contains("log entry 13 is corrupt"), "{msg}");
    assert!(msg.contains("checksum mismatch"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

#[test]
fn a_torn_record_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    // The last run (16..=20) cut inside the record of entry 20, then
    // inside its length.
    for (name, in_length) in [("body", false), ("length", true)] {
        let path = store_with_20_entries(dir.path(), name);
        with_raw_tree(&path, LOG_TREE, |log| {
            let run = log.get(log_key(LogIndex(16))).unwrap().unwrap();
            let record = codec::encode_entry(&ent(20, 1)).len();
            let keep = if in_length {
                run.len() - record - 2
            } else {
                run.len() - 10
            };
            log.insert(log_key(LogIndex(16)), &run[..keep]).unwrap();
        });
        let msg = fatal_message(SledStore::open(&path));
        assert!(
            msg.contains("log entry 20 is corrupt: record truncated"),
            "{name}: {msg}"
        );
    }
}

#[test]
fn a_missing_entry_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    // A run removed from the middle.
    let path = store_with_20_entries(dir.path(), "run");
    edit_runs(&path, |runs| runs.retain(|r| r.start != 6));
    let msg = fatal_message(SledStore::open(&path));
    assert!(
        msg.contains("log entry 6 is missing (the next stored entry is 11)"),
        "{msg}"
    );
    // A run stored without one of its entries.
    let path = store_with_20_entries(dir.path(), "entry");
    edit_runs(&path, |runs| {
        let (run, pos) = find(runs, 9);
        run.records.remove(pos);
    });
    let msg = fatal_message(SledStore::open(&path));
    assert!(msg.contains("log entry 9 is missing"), "{msg}");
    // A run with no entries.
    let path = store_with_20_entries(dir.path(), "empty");
    with_raw_tree(&path, LOG_TREE, |log| {
        log.insert(log_key(LogIndex(21)), &[][..]).unwrap();
    });
    let msg = fatal_message(SledStore::open(&path));
    assert!(
        msg.contains("log entry 21 is missing: the run stored under it is empty"),
        "{msg}"
    );
    // The first run gone: the log no longer starts after its base.
    let path = store_with_20_entries(dir.path(), "first");
    edit_runs(&path, |runs| runs.retain(|r| r.start != 1));
    let msg = fatal_message(SledStore::open(&path));
    assert!(msg.contains("log entry 1 is missing"), "{msg}");
}

#[test]
fn an_entry_under_the_wrong_key_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    // A valid record (checksum fine) of entry 5, stored in entry 6's place.
    let path = store_with_20_entries(dir.path(), "record");
    edit_runs(&path, |runs| {
        let (run, pos) = find(runs, 6);
        run.records[pos] = codec::encode_entry(&ent(5, 1));
    });
    let msg = fatal_message(SledStore::open(&path));
    assert!(
        msg.contains("log entry 6 is corrupt: its record holds entry 5"),
        "{msg}"
    );
    // A run under a key one past its first entry: a hole before it, and
    // its entries one place off.
    let path = store_with_20_entries(dir.path(), "key");
    edit_runs(&path, |runs| {
        let (run, _) = find(runs, 6);
        run.start = 7;
    });
    let msg = fatal_message(SledStore::open(&path));
    assert!(
        msg.contains("log entry 6 is missing (the next stored entry is 7)"),
        "{msg}"
    );
    // Runs that overlap.
    let path = store_with_20_entries(dir.path(), "overlap");
    edit_runs(&path, |runs| {
        let (run, _) = find(runs, 6);
        run.start = 5;
        run.records.insert(0, codec::encode_entry(&ent(5, 1)));
    });
    let msg = fatal_message(SledStore::open(&path));
    assert!(
        msg.contains("log entry 5 is stored twice: the run at 5 overlaps the run before it, which ends at entry 5"),
        "{msg}"
    );
}

#[test]
fn entries_at_or_below_the_base_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with_20_entries(dir.path(), "s");
    let set_base = |index: u64, with_snapshot: bool| {
        with_raw_tree(&path, META_TREE, |meta| {
            meta.insert(
                KEY_BASE,
                codec::encode_entry_id(&EntryId::new(Term(1), LogIndex(index))),
            )
            .unwrap();
            if with_snapshot {
                let snap = SnapshotMeta {
                    last_index: LogIndex(index),
                    last_term: Term(1),
                    ..SnapshotMeta::default()
                };
                meta.insert(KEY_SNAPSHOT, codec::encode_snapshot_meta(&snap))
                    .unwrap();
            }
        });
    };
    // A base of 5 with the run 1..=5 still stored (and no snapshot): both
    // wrong; the snapshot check comes first.
    set_base(5, false);
    let msg = fatal_message(SledStore::open(&path));
    assert!(msg.contains("past the snapshot"), "{msg}");
    // With a snapshot covering the base, the leftover run 1..=5 (wholly at
    // or below the base) is still refused.
    set_base(5, true);
    let msg = fatal_message(SledStore::open(&path));
    assert!(
        msg.contains(
            "log entry 1 is stored but the log starts after its base (entry 5): \
             the run at 1 ends at entry 5"
        ),
        "{msg}"
    );
    // A run that holds the base is fine: its entries up to the base are
    // ignored.
    set_base(3, true);
    let s = SledStore::open(&path).unwrap();
    assert_log(&s, &ents(4, 20, 1));
    assert_eq!(s.term(LogIndex(3)).unwrap(), Term(1));
    assert!(matches!(
        s.entries(LogIndex(3), LogIndex(5), u64::MAX),
        Err(StorageError::Compacted(_))
    ));
}

#[test]
fn a_store_in_the_old_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old");
    // One key per entry, the value the bare record.
    with_raw_tree(&path, LOG_TREE, |log| {
        for e in ents(1, 3, 1) {
            log.insert(log_key(e.index), codec::encode_entry(&e))
                .unwrap();
        }
    });
    let msg = fatal_message(SledStore::open(&path));
    assert!(
        msg.contains("log entry 1 is stored in the old layout (one key per entry)"),
        "{msg}"
    );
}

#[test]
fn runs_survive_overwrites_and_compactions_in_the_middle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let s = SledStore::open(&path).unwrap();
    for lo in [1, 11, 21] {
        s.write(None, &ents(lo, lo + 9, 1), None).unwrap();
    }
    // Replace the suffix from 15, in the middle of the run 11..=20.
    s.write(None, &ents(15, 17, 2), None).unwrap();
    assert_log(&s, &[ents(1, 14, 1), ents(15, 17, 2)].concat());
    s.write(None, &ents(18, 25, 2), None).unwrap();
    let want = [ents(1, 14, 1), ents(15, 25, 2)].concat();
    assert_log(&s, &want);
    // max_bytes across runs (11..=14, 15..=17, 18..=25).
    let size = ent(1, 1).size();
    let got = s.entries(LogIndex(13), LogIndex(26), size * 6).unwrap();
    assert_eq!(got, want[12..18]);
    // Compact into the middle of the run 11..=14: the run 1..=10 goes, the
    // run 11..=14 stays whole.
    s.save_snapshot_meta(&SnapshotMeta {
        last_index: LogIndex(13),
        last_term: Term(1),
        ..SnapshotMeta::default()
    })
    .unwrap();
    s.compact(LogIndex(13)).unwrap();
    s.sync().unwrap();
    let want = [ents(14, 14, 1), ents(15, 25, 2)].concat();
    assert_log(&s, &want);
    assert_eq!(s.term(LogIndex(13)).unwrap(), Term(1), "base term");
    drop(s);
    assert_eq!(run_starts(&path), [11, 15, 18]);

    let s = SledStore::open(&path).unwrap();
    assert_log(&s, &want);
    assert_eq!(s.term(LogIndex(13)).unwrap(), Term(1), "base term");
    assert!(matches!(
        s.term(LogIndex(12)),
        Err(StorageError::Compacted(_))
    ));
    // Replace the suffix from the first entry, which sits in a run
    // starting below the base: what would be left of that run lies at or
    // below the base, so the run goes.
    s.write(None, &ents(14, 15, 3), None).unwrap();
    s.sync().unwrap();
    assert_log(&s, &ents(14, 15, 3));
    drop(s);
    assert_eq!(run_starts(&path), [14]);

    let s = SledStore::open(&path).unwrap();
    assert_log(&s, &ents(14, 15, 3));
    assert_eq!(s.term(LogIndex(13)).unwrap(), Term(1), "base term");
    // Compact everything, then keep going.
    s.save_snapshot_meta(&SnapshotMeta {
        last_index: LogIndex(15),
        last_term: Term(3),
        ..SnapshotMeta::default()
    })
    .unwrap();
    s.compact(LogIndex(15)).unwrap();
    s.sync().unwrap();
    assert_log(&s, &[]);
    drop(s);
    assert_eq!(run_starts(&path), [0u64; 0]);
    let s = SledStore::open(&path).unwrap();
    assert_eq!(s.first_index().unwrap(), LogIndex(16));
    assert_eq!(s.last_index().unwrap(), LogIndex(15));
    assert_eq!(s.term(LogIndex(15)).unwrap(), Term(3));
    s.write(None, &ents(16, 17, 3), None).unwrap();
    s.sync().unwrap();
    drop(s);
    let s = SledStore::open(&path).unwrap();
    assert_log(&s, &ents(16, 17, 3));
}

#[test]
fn snapshot_installs_work_on_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let s = SledStore::open(&path).unwrap();
    s.write(None, &ents(1, 10, 1), None).unwrap();
    let snap = |index: u64, term: u64| SnapshotMeta {
        last_index: LogIndex(index),
        last_term: Term(term),
        ..SnapshotMeta::default()
    };
    // Matching in the middle of the run 1..=10, with entries replacing the
    // suffix from 8: the run is cut to 1..=7 and stays (it holds the base).
    s.write(Some(&snap(5, 1)), &ents(8, 9, 2), None).unwrap();
    s.sync().unwrap();
    let want = [ents(6, 7, 1), ents(8, 9, 2)].concat();
    assert_log(&s, &want);
    drop(s);
    assert_eq!(run_starts(&path), [1, 8]);
    let s = SledStore::open(&path).unwrap();
    assert_log(&s, &want);
    assert_eq!(s.term(LogIndex(5)).unwrap(), Term(1), "base term");
    // Matching at the last entry of the run 1..=7: it goes.
    s.write(Some(&snap(7, 1)), &[], None).unwrap();
    s.sync().unwrap();
    assert_log(&s, &ents(8, 9, 2));
    drop(s);
    assert_eq!(run_starts(&path), [8]);
    let s = SledStore::open(&path).unwrap();
    // Not matching: every run goes.
    s.write(Some(&snap(20, 5)), &ents(21, 22, 5), None).unwrap();
    s.sync().unwrap();
    assert_log(&s, &ents(21, 22, 5));
    drop(s);
    assert_eq!(run_starts(&path), [21]);
    let s = SledStore::open(&path).unwrap();
    assert_log(&s, &ents(21, 22, 5));
    assert_eq!(s.term(LogIndex(20)).unwrap(), Term(5), "base term");
}

/// Checks that `runs` are contiguous, within the caps, and each one full:
/// closed only because its next entry would have broken a cap.
fn assert_runs_are_full(runs: &[Run]) {
    for (i, run) in runs.iter().enumerate() {
        let bytes = join_run(&run.records).len();
        assert!(!run.records.is_empty(), "run {} is empty", run.start);
        assert!(run.records.len() <= RUN_MAX_ENTRIES, "run {}", run.start);
        assert!(
            run.records.len() == 1 || bytes <= RUN_MAX_BYTES,
            "run {} holds {bytes} bytes",
            run.start
        );
        if let Some(after) = runs.get(i + 1) {
            assert_eq!(after.start, run.start + run.records.len() as u64);
            let next = after.records[0].len();
            assert!(
                run.records.len() == RUN_MAX_ENTRIES || bytes + 4 + next > RUN_MAX_BYTES,
                "run {} was closed early",
                run.start
            );
        }
    }
}

#[test]
fn long_appends_are_split_into_runs() {
    let dir = tempfile::tempdir().unwrap();
    // Many small entries in one write.
    let path = dir.path().join("small");
    let s = SledStore::open(&path).unwrap();
    let n = 3000;
    s.write(None, &ents(1, n, 1), None).unwrap();
    s.sync().unwrap();
    drop(s);
    let runs = read_runs(&path);
    assert!(runs.len() > 1);
    assert_eq!(runs[0].start, 1);
    assert_runs_are_full(&runs);
    let s = SledStore::open(&path).unwrap();
    assert_log(&s, &ents(1, n, 1));
    drop(s);
    // Entries of a third of the byte cap, then one over the cap.
    let path = dir.path().join("large");
    let s = SledStore::open(&path).unwrap();
    let big = |index: u64, len: usize| Entry {
        term: Term(1),
        index: LogIndex(index),
        payload: EntryPayload::Normal(vec![index as u8; len].into()),
    };
    let mut want: Vec<Entry> = (1..=7).map(|i| big(i, RUN_MAX_BYTES / 3 - 64)).collect();
    want.push(big(8, RUN_MAX_BYTES + 1));
    want.push(big(9, 10));
    s.write(None, &want, None).unwrap();
    s.sync().unwrap();
    drop(s);
    let runs = read_runs(&path);
    assert_runs_are_full(&runs);
    let starts: Vec<u64> = runs.iter().map(|r| r.start).collect();
    assert_eq!(starts, [1, 4, 7, 8, 9]);
    let s = SledStore::open(&path).unwrap();
    assert_log(&s, &want);
}

#[test]
fn a_corrupt_meta_record_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_with_20_entries(dir.path(), "s");
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

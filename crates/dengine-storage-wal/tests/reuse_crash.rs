//! A process writing the log, with segment files used again, killed with
//! SIGKILL at moments it does not choose: each time the store opens
//! again, every entry it was told was durable is there, and the log is a
//! clean prefix of what it wrote.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use dengine_core::{
    ConfState, Entry, LogIndex, LogStorage, LogStore, MetaStore, SnapshotMeta, Term,
};
use dengine_storage_wal::{WalOptions, WalStore};

mod common;

/// Entry `index`, as the writer writes it.
fn entry(index: u64) -> Entry {
    common::ent(index, 1, 3000)
}

/// Set in the child: the store's directory.
const CHILD: &str = "DENGINE_WAL_REUSE_CRASH_DIR";
const TEST: &str = "a_writer_killed_at_any_moment_loses_nothing_it_synced";

fn options() -> WalOptions {
    // Every segment of the full size (the first one is 256 KiB), so that
    // files are used again within the first second.
    WalOptions {
        segment_bytes: 256 * 1024,
    }
}

/// The child: writes batches of 10 entries for good, syncing each and
/// then saying so, and compacts behind itself; says when a segment is
/// written over a file an older one had.
fn child(dir: &Path) {
    let store = WalStore::open_with(dir, options()).expect("open");
    let mut out = std::io::stdout().lock();
    let mut next = store.last_index().expect("last").0 + 1;
    let mut kept = false;
    loop {
        let batch: Vec<Entry> = (next..next + 10).map(entry).collect();
        store.write(None, &batch, None).expect("write");
        store.sync().expect("sync");
        writeln!(out, "synced {}", next + 9).expect("stdout");
        next += 10;
        if next % 100 == 1 {
            let upto = next - 51;
            let meta = SnapshotMeta {
                last_index: LogIndex(upto),
                last_term: Term(1),
                conf_state: ConfState::default(),
            };
            store.save_snapshot_meta(&meta).expect("meta");
            store.compact(LogIndex(upto)).expect("compact");
        }
        // A file kept to be used again, then taken for a new segment.
        let kept_now = dir.join("recycled.wal.prep").exists();
        if kept && !kept_now {
            writeln!(out, "reused").expect("stdout");
        }
        kept = kept_now;
    }
}

#[test]
fn a_writer_killed_at_any_moment_loses_nothing_it_synced() {
    if let Ok(dir) = std::env::var(CHILD) {
        child(Path::new(&dir));
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("s");
    let mut reused = false;
    for (round, ms) in [150u64, 420, 90, 610, 230, 370, 60, 510, 280, 700]
        .into_iter()
        .enumerate()
    {
        let mut writer = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the writer");
        std::thread::sleep(Duration::from_millis(ms));
        writer.kill().expect("SIGKILL");
        writer.wait().expect("reaped");
        let mut synced = 0;
        let lines = BufReader::new(writer.stdout.take().expect("stdout")).lines();
        for line in lines.map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("synced ") {
                synced = n.parse().expect("an index");
            }
            reused |= line == "reused";
        }
        let store = WalStore::open_with(&dir, options())
            .unwrap_or_else(|e| panic!("round {round}: the store does not open: {e}"));
        let (first, last) = (
            store.first_index().expect("first").0,
            store.last_index().expect("last").0,
        );
        assert!(
            last >= synced,
            "round {round}: synced {synced}, last {last}"
        );
        assert!(
            last <= synced + 10,
            "round {round}: synced {synced}, last {last}"
        );
        let entries = store
            .entries(LogIndex(first), LogIndex(last + 1), u64::MAX)
            .expect("entries");
        assert_eq!(entries.len() as u64, last + 1 - first, "round {round}");
        for e in &entries {
            assert!(
                *e == entry(e.index.0),
                "round {round}: entry {} differs",
                e.index
            );
        }
    }
    assert!(reused, "no segment was written over an older one's file");
}

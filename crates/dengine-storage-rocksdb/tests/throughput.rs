//! Rough write throughput: one fsync per entry against one fsync per group.
//! Ignored by default; run with
//! `cargo test -p dengine-storage-rocksdb --test throughput -- --ignored --nocapture`
//! (add `--release` for figures that mean something).

use std::time::Instant;

use dengine_core::{Entry, EntryPayload, LogIndex, LogStore, Term};
use dengine_storage_rocksdb::RocksStore;

fn entry(index: u64) -> Entry {
    Entry {
        term: Term(1),
        index: LogIndex(index),
        payload: EntryPayload::Normal(vec![7u8; 128].into()),
    }
}

#[test]
#[ignore = "timing, not a check; run by hand"]
fn single_entry_syncs_against_batches() {
    let dir = tempfile::tempdir().expect("temp dir");

    let s = RocksStore::open(dir.path().join("single")).expect("open");
    let t = Instant::now();
    for i in 1..=10_000 {
        s.write(None, &[entry(i)], None).expect("write");
        s.sync().expect("sync");
    }
    let single = t.elapsed();
    drop(s);

    let s = RocksStore::open(dir.path().join("batched")).expect("open");
    let t = Instant::now();
    for b in 0..100 {
        let ents: Vec<Entry> = (1..=100).map(|i| entry(b * 100 + i)).collect();
        s.write(None, &ents, None).expect("write");
    }
    s.sync().expect("sync");
    let batched = t.elapsed();

    println!(
        "10,000 x (1-entry write + sync): {single:?} ({:.0} entries/s)",
        10_000.0 / single.as_secs_f64()
    );
    println!(
        "100 x (100-entry write) + 1 sync: {batched:?} ({:.0} entries/s)",
        10_000.0 / batched.as_secs_f64()
    );
}

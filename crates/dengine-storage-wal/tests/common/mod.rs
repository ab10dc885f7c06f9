//! Helpers the store's integration tests share.

#![allow(dead_code)] // each test file uses its own share of them

use std::path::Path;

use dengine_core::{Entry, EntryPayload, LogIndex, LogStorage, Term};
use dengine_storage_wal::WalStore;

/// Entry `index` of `term`, whose payload is `len` bytes of one value
/// that depends on the index (never zero).
pub fn ent(index: u64, term: u64, len: usize) -> Entry {
    Entry {
        term: Term(term),
        index: LogIndex(index),
        payload: EntryPayload::Normal(vec![(index % 251) as u8 + 1; len].into()),
    }
}

/// Entries `lo..=hi`, as [`ent`] makes them.
pub fn ents(lo: u64, hi: u64, term: u64, len: usize) -> Vec<Entry> {
    (lo..=hi).map(|i| ent(i, term, len)).collect()
}

/// Every entry the store holds.
pub fn all(s: &WalStore) -> Vec<Entry> {
    s.entries(
        s.first_index().unwrap(),
        s.last_index().unwrap().next(),
        u64::MAX,
    )
    .unwrap()
}

/// The names in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

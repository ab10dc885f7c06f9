//! Segment files under fuzzing (see `dengine_core::testing::fuzz`): a
//! segment damaged in any way either opens (a torn end is cut, as after a
//! crash) or is refused with an error naming it; never a panic. A store
//! that opens answers every read without a panic too.

use dengine_core::testing::fuzz::Corpus;
use dengine_core::{
    Bytes, ConfState, Entry, EntryPayload, HardState, LogIndex, LogStorage, LogStore, MetaStore,
    NodeId, SnapshotMeta, StoreIdentity, Term,
};
use dengine_storage_wal::WalStore;

/// The files of a small store: the segment's bytes (the seed) and the
/// name it has.
fn segment_of_a_store() -> (String, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = WalStore::open(dir.path()).expect("open");
    store
        .set_identity(StoreIdentity {
            cluster_id: 9,
            node_id: NodeId(1),
        })
        .expect("identity");
    let entries: Vec<Entry> = (1..=12u64)
        .map(|i| Entry {
            term: Term(1 + i / 5),
            index: LogIndex(i),
            payload: if i == 1 {
                EntryPayload::Blank
            } else {
                EntryPayload::Normal(Bytes::from(vec![i as u8; (i * 7) as usize]))
            },
        })
        .collect();
    let hard = HardState {
        term: Term(3),
        vote: NodeId(1),
        commit: LogIndex(10),
    };
    store
        .write(None, &entries[..6], Some(&hard))
        .expect("write");
    store.write(None, &entries[6..], None).expect("write");
    let meta = SnapshotMeta {
        last_index: LogIndex(4),
        last_term: Term(1),
        conf_state: ConfState::default(),
    };
    store.save_snapshot_meta(&meta).expect("meta");
    store.compact(LogIndex(3)).expect("compact");
    store.sync().expect("sync");
    drop(store);
    let mut segments: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segments.sort();
    let last = segments.pop().expect("a segment");
    let name = last
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    // Without the zeros it was prepared with: mutations land in records.
    let mut bytes = std::fs::read(&last).expect("read");
    bytes.truncate(dengine_storage_wal::frame::written_end(&bytes));
    (name, bytes)
}

#[test]
fn damaged_segments_open_or_are_refused_cleanly() {
    let (name, segment) = segment_of_a_store();
    let corpus = Corpus::load("wal-segment", vec![segment]);
    let dir = tempfile::tempdir().expect("tempdir");
    corpus.run(|bytes| {
        let store_dir = dir.path().join("store");
        let _ = std::fs::remove_dir_all(&store_dir);
        std::fs::create_dir_all(&store_dir).expect("dir");
        std::fs::write(store_dir.join(&name), bytes).expect("write");
        let Ok(store) = WalStore::open(&store_dir) else {
            return;
        };
        let _ = store.initial_state();
        let _ = store.identity();
        let _ = store.snapshot_meta();
        if let (Ok(first), Ok(last)) = (store.first_index(), store.last_index())
            && first <= LogIndex(last.0.saturating_add(1))
            && last.0 - first.0.min(last.0) < 10_000
        {
            let _ = store.entries(first, LogIndex(last.0 + 1), u64::MAX);
            let _ = store.term(last);
        }
    });
}

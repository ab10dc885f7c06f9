//! The log record codec under fuzzing (see `dengine_core::testing::fuzz`):
//! every record read back from a disk goes through these decoders, so a
//! damaged record must come back as an error, never as a panic, and a
//! record that decodes must encode to the same bytes.

use std::collections::BTreeSet;

use bytes::Bytes;
use dengine_core::codec::{
    decode_entry, decode_entry_id, decode_hard_state, decode_identity, decode_snapshot_meta,
    encode_entry, encode_entry_id, encode_hard_state, encode_identity, encode_snapshot_meta,
};
use dengine_core::testing::fuzz::Corpus;
use dengine_core::{
    ConfChange, ConfChangeStep, ConfChangeTransition, ConfState, Entry, EntryId, EntryPayload,
    HardState, LogIndex, NodeId, SnapshotMeta, Term,
};

fn entries() -> Vec<Entry> {
    vec![
        Entry {
            term: Term(3),
            index: LogIndex(7),
            payload: EntryPayload::Blank,
        },
        Entry {
            term: Term(3),
            index: LogIndex(8),
            payload: EntryPayload::Normal(Bytes::from_static(b"a put of a small value")),
        },
        Entry {
            term: Term(u64::MAX),
            index: LogIndex(u64::MAX),
            payload: EntryPayload::Normal(Bytes::from(vec![7u8; 300])),
        },
        Entry {
            term: Term(4),
            index: LogIndex(9),
            payload: EntryPayload::ConfChange(Box::new(ConfChange {
                transition: ConfChangeTransition::JointExplicit,
                steps: vec![
                    ConfChangeStep::AddVoter(NodeId(1)),
                    ConfChangeStep::AddLearner(NodeId(2)),
                    ConfChangeStep::Remove(NodeId(3)),
                ],
                context: b"{\"peer_urls\":[\"http://10.0.0.1:2380\"]}".to_vec(),
            })),
        },
    ]
}

fn conf_state() -> ConfState {
    ConfState {
        voters: BTreeSet::from([NodeId(1), NodeId(2), NodeId(3)]),
        voters_outgoing: BTreeSet::from([NodeId(1)]),
        learners: BTreeSet::from([NodeId(9)]),
        learners_next: BTreeSet::from([NodeId(3)]),
        auto_leave: true,
    }
}

#[test]
fn entries_decode_or_fail_cleanly() {
    let seeds = entries().iter().map(encode_entry).collect();
    Corpus::load("core-entry", seeds).run(|bytes| {
        if let Ok(entry) = decode_entry(bytes) {
            assert_eq!(decode_entry(&encode_entry(&entry)), Ok(entry));
        }
    });
}

#[test]
fn hard_states_decode_or_fail_cleanly() {
    let seeds = vec![
        encode_hard_state(&HardState::default()),
        encode_hard_state(&HardState {
            term: Term(5),
            vote: NodeId(2),
            commit: LogIndex(40),
        }),
    ];
    Corpus::load("core-hard-state", seeds).run(|bytes| {
        if let Ok(h) = decode_hard_state(bytes) {
            assert_eq!(decode_hard_state(&encode_hard_state(&h)), Ok(h));
        }
    });
}

#[test]
fn snapshot_metadata_decodes_or_fails_cleanly() {
    let seeds = vec![
        encode_snapshot_meta(&SnapshotMeta::default()),
        encode_snapshot_meta(&SnapshotMeta {
            last_index: LogIndex(100),
            last_term: Term(4),
            conf_state: conf_state(),
        }),
    ];
    Corpus::load("core-snapshot-meta", seeds).run(|bytes| {
        if let Ok(m) = decode_snapshot_meta(bytes) {
            assert_eq!(decode_snapshot_meta(&encode_snapshot_meta(&m)), Ok(m));
        }
    });
}

#[test]
fn small_records_decode_or_fail_cleanly() {
    let seeds = vec![
        encode_entry_id(&EntryId {
            term: Term(2),
            index: LogIndex(9),
        }),
        encode_identity(0xdead_beef, NodeId(7)),
    ];
    Corpus::load("core-small-records", seeds).run(|bytes| {
        if let Ok(id) = decode_entry_id(bytes) {
            assert_eq!(decode_entry_id(&encode_entry_id(&id)), Ok(id));
        }
        if let Ok((cluster, node)) = decode_identity(bytes) {
            assert_eq!(
                decode_identity(&encode_identity(cluster, node)),
                Ok((cluster, node))
            );
        }
    });
}

//! The peer protocol's conversions: every engine message survives the trip
//! to the wire and back (through protobuf bytes too), and malformed wire
//! messages are refused with the right error, never a panic.

use std::collections::BTreeSet;

use bytes::Bytes;
use dengine_core::{
    AppendRejection, ConfChange, ConfChangeStep, ConfChangeTransition, ConfState, Entry, EntryId,
    EntryPayload, LogIndex, Message, MessageBody, NodeId, ReadId, SnapshotMeta, Term,
};
use dengine_grpc::peer::{WireError, message_from_wire, message_to_wire};
use dengine_proto::peer as wire;
use dengine_proto::prost::Message as _;
use proptest::collection::{btree_set, vec};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Strategies for arbitrary engine messages. Numbers cover the whole u64
// range: the conversions must not care what the values mean.

fn node_id() -> impl Strategy<Value = NodeId> {
    any::<u64>().prop_map(NodeId)
}

fn log_index() -> impl Strategy<Value = LogIndex> {
    any::<u64>().prop_map(LogIndex)
}

fn entry_id() -> impl Strategy<Value = EntryId> {
    (any::<u64>(), any::<u64>()).prop_map(|(t, i)| EntryId::new(Term(t), LogIndex(i)))
}

fn node_set() -> impl Strategy<Value = BTreeSet<NodeId>> {
    btree_set(node_id(), 0..5)
}

fn conf_state() -> impl Strategy<Value = ConfState> {
    (
        node_set(),
        node_set(),
        node_set(),
        node_set(),
        any::<bool>(),
    )
        .prop_map(
            |(voters, voters_outgoing, learners, learners_next, auto_leave)| ConfState {
                voters,
                voters_outgoing,
                learners,
                learners_next,
                auto_leave,
            },
        )
}

fn conf_change() -> impl Strategy<Value = ConfChange> {
    let transition = prop_oneof![
        Just(ConfChangeTransition::Auto),
        Just(ConfChangeTransition::JointImplicit),
        Just(ConfChangeTransition::JointExplicit),
    ];
    let step = prop_oneof![
        node_id().prop_map(ConfChangeStep::AddVoter),
        node_id().prop_map(ConfChangeStep::AddLearner),
        node_id().prop_map(ConfChangeStep::Remove),
    ];
    (transition, vec(step, 0..4), vec(any::<u8>(), 0..16)).prop_map(
        |(transition, steps, context)| ConfChange {
            transition,
            steps,
            context,
        },
    )
}

fn entry() -> impl Strategy<Value = Entry> {
    let payload = prop_oneof![
        Just(EntryPayload::Blank),
        vec(any::<u8>(), 0..64).prop_map(|d| EntryPayload::Normal(d.into())),
        conf_change().prop_map(|c| EntryPayload::ConfChange(Box::new(c))),
    ];
    (any::<u64>(), any::<u64>(), payload).prop_map(|(term, index, payload)| Entry {
        term: Term(term),
        index: LogIndex(index),
        payload,
    })
}

fn body() -> impl Strategy<Value = MessageBody> {
    prop_oneof![
        (any::<bool>(), entry_id(), any::<bool>()).prop_map(|(pre_vote, last_log, transfer)| {
            MessageBody::RequestVote {
                pre_vote,
                last_log,
                transfer,
            }
        }),
        (any::<bool>(), any::<bool>())
            .prop_map(|(pre_vote, granted)| MessageBody::RequestVoteResponse { pre_vote, granted }),
        (entry_id(), vec(entry(), 0..6), log_index()).prop_map(|(prev, entries, commit)| {
            MessageBody::AppendEntries {
                prev,
                entries,
                commit,
            }
        }),
        log_index().prop_map(|matched| MessageBody::AppendEntriesResponse {
            result: Ok(matched)
        }),
        (log_index(), entry_id()).prop_map(|(rejected, hint)| {
            MessageBody::AppendEntriesResponse {
                result: Err(AppendRejection { rejected, hint }),
            }
        }),
        (log_index(), any::<u64>())
            .prop_map(|(commit, read_round)| MessageBody::Heartbeat { commit, read_round }),
        any::<u64>().prop_map(|read_round| MessageBody::HeartbeatResponse { read_round }),
        (log_index(), any::<u64>(), conf_state()).prop_map(
            |(last_index, last_term, conf_state)| {
                MessageBody::InstallSnapshot {
                    meta: SnapshotMeta {
                        last_index,
                        last_term: Term(last_term),
                        conf_state,
                    },
                }
            }
        ),
        Just(MessageBody::TimeoutNow),
        any::<u64>().prop_map(|id| MessageBody::ReadIndex { id: ReadId(id) }),
        (any::<u64>(), proptest::option::of(log_index())).prop_map(|(id, index)| {
            MessageBody::ReadIndexResponse {
                id: ReadId(id),
                index,
            }
        }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (node_id(), node_id(), any::<u64>(), body()).prop_map(|(from, to, term, body)| Message {
        from,
        to,
        term: Term(term),
        body,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Core -> wire -> core is the identity, directly and through the
    /// protobuf encoding a peer actually receives.
    #[test]
    fn round_trip(original in message()) {
        let on_wire = message_to_wire(original.clone());
        prop_assert_eq!(message_from_wire(on_wire.clone()), Ok(original.clone()));

        let encoded = Bytes::from(on_wire.encode_to_vec());
        let decoded = wire::Message::decode(encoded).expect("our own encoding decodes");
        prop_assert_eq!(&decoded, &on_wire);
        prop_assert_eq!(message_from_wire(decoded), Ok(original));
    }

    /// Arbitrary bytes that protobuf accepts as a message convert to an
    /// engine message or an error, never a panic.
    #[test]
    fn garbage_never_panics(data in vec(any::<u8>(), 0..256)) {
        if let Ok(decoded) = wire::Message::decode(data.as_slice()) {
            let _ = message_from_wire(decoded);
        }
    }

    /// Flipping one byte of a valid encoding gives a message, an error or a
    /// protobuf decode error, never a panic.
    #[test]
    fn corrupted_encoding_never_panics(original in message(), at in any::<usize>(), xor in 1u8..) {
        let mut encoded = message_to_wire(original).encode_to_vec();
        let at = at % encoded.len();
        encoded[at] ^= xor;
        if let Ok(decoded) = wire::Message::decode(encoded.as_slice()) {
            let _ = message_from_wire(decoded);
        }
    }
}

/// A received append's payloads are copies, in one buffer of their own:
/// decoded, they are slices of the stream's read buffer, which they would
/// otherwise keep alive (with every other message in it) for as long as
/// the entries live.
#[test]
fn received_payloads_keep_no_part_of_the_message_alive() {
    let sent = Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(3),
        body: MessageBody::AppendEntries {
            prev: EntryId::new(Term(3), LogIndex(9)),
            entries: (10..14u64)
                .map(|i| Entry {
                    term: Term(3),
                    index: LogIndex(i),
                    payload: if i == 12 {
                        EntryPayload::Blank
                    } else {
                        EntryPayload::Normal(Bytes::from(vec![i as u8; 300]))
                    },
                })
                .collect(),
            commit: LogIndex(9),
        },
    };
    // As a stream reads it: a slice of a larger buffer.
    let mut buffer = vec![0u8; 1 << 16];
    let encoded = message_to_wire(sent.clone()).encode_to_vec();
    buffer[100..100 + encoded.len()].copy_from_slice(&encoded);
    let buffer = Bytes::from(buffer);
    let decoded = wire::Message::decode(buffer.slice(100..100 + encoded.len())).expect("decodes");
    let received = message_from_wire(decoded).expect("converts");
    assert_eq!(received, sent);
    let inside = |p: *const u8| {
        let start = buffer.as_ptr() as usize;
        (start..start + buffer.len()).contains(&(p as usize))
    };
    let MessageBody::AppendEntries { entries, .. } = &received.body else {
        panic!("an append");
    };
    let mut payloads = 0;
    for e in entries {
        if let EntryPayload::Normal(data) = &e.payload {
            payloads += 1;
            assert!(
                !inside(data.as_ptr()),
                "entry {} points into the message",
                e.index.0
            );
        }
    }
    assert_eq!(payloads, 3);
}

// ---------------------------------------------------------------------------
// Malformed wire messages.

fn with_body(body: wire::message::Body) -> wire::Message {
    wire::Message {
        from: 1,
        to: 2,
        term: 3,
        body: Some(body),
        traceparent: Vec::new(),
    }
}

fn missing(field: &'static str) -> Result<Message, WireError> {
    Err(WireError::MissingField { field })
}

fn wire_id() -> Option<wire::EntryId> {
    Some(wire::EntryId { term: 1, index: 1 })
}

fn append_of(entry: wire::Entry) -> wire::Message {
    with_body(wire::message::Body::AppendEntries(wire::AppendEntries {
        prev: wire_id(),
        entries: vec![entry],
        commit: 0,
    }))
}

fn conf_change_entry(change: wire::ConfChange) -> wire::Message {
    append_of(wire::Entry {
        term: 1,
        index: 2,
        payload: Some(wire::entry::Payload::ConfChange(change)),
    })
}

#[test]
fn a_message_without_body_is_refused() {
    let message = wire::Message {
        from: 1,
        to: 2,
        term: 3,
        body: None,
        traceparent: Vec::new(),
    };
    assert_eq!(message_from_wire(message), missing("Message.body"));
}

#[test]
fn a_body_of_an_unknown_kind_is_refused_as_missing() {
    // Field 14 of Message, an empty length-delimited value: a body kind a
    // newer peer might send. Protobuf skips the unknown field, so the
    // oneof is empty.
    let decoded = wire::Message::decode(&[0x08, 1, 0x72, 0][..]).expect("decodes");
    assert_eq!(decoded.from, 1);
    assert_eq!(message_from_wire(decoded), missing("Message.body"));
}

#[test]
fn a_vote_request_without_last_log_is_refused() {
    let message = with_body(wire::message::Body::RequestVote(wire::RequestVote {
        pre_vote: true,
        last_log: None,
        transfer: false,
    }));
    assert_eq!(message_from_wire(message), missing("RequestVote.last_log"));
}

#[test]
fn an_append_without_prev_is_refused() {
    let message = with_body(wire::message::Body::AppendEntries(wire::AppendEntries {
        prev: None,
        entries: vec![],
        commit: 0,
    }));
    assert_eq!(message_from_wire(message), missing("AppendEntries.prev"));
}

#[test]
fn an_entry_without_payload_is_refused() {
    let message = append_of(wire::Entry {
        term: 1,
        index: 2,
        payload: None,
    });
    assert_eq!(message_from_wire(message), missing("Entry.payload"));
}

#[test]
fn an_append_response_without_result_is_refused() {
    let message = with_body(wire::message::Body::AppendEntriesResponse(
        wire::AppendEntriesResponse { result: None },
    ));
    assert_eq!(
        message_from_wire(message),
        missing("AppendEntriesResponse.result")
    );
}

#[test]
fn a_rejection_without_hint_is_refused() {
    let message = with_body(wire::message::Body::AppendEntriesResponse(
        wire::AppendEntriesResponse {
            result: Some(wire::append_entries_response::Result::Rejected(
                wire::AppendRejection {
                    rejected: 5,
                    hint: None,
                },
            )),
        },
    ));
    assert_eq!(message_from_wire(message), missing("AppendRejection.hint"));
}

#[test]
fn a_snapshot_without_meta_or_configuration_is_refused() {
    let message = with_body(wire::message::Body::InstallSnapshot(
        wire::InstallSnapshot { meta: None },
    ));
    assert_eq!(message_from_wire(message), missing("InstallSnapshot.meta"));

    let message = with_body(wire::message::Body::InstallSnapshot(
        wire::InstallSnapshot {
            meta: Some(wire::SnapshotMeta {
                last_index: 10,
                last_term: 2,
                conf_state: None,
            }),
        },
    ));
    assert_eq!(
        message_from_wire(message),
        missing("SnapshotMeta.conf_state")
    );
}

#[test]
fn an_unknown_transition_is_refused() {
    let message = conf_change_entry(wire::ConfChange {
        transition: 3,
        steps: vec![],
        context: Bytes::new(),
    });
    assert_eq!(
        message_from_wire(message),
        Err(WireError::UnknownEnumValue {
            field: "ConfChange.transition",
            value: 3,
        })
    );
}

#[test]
fn an_unknown_step_kind_is_refused() {
    let message = conf_change_entry(wire::ConfChange {
        transition: 0,
        steps: vec![
            wire::ConfChangeStep { kind: 0, node: 4 },
            wire::ConfChangeStep { kind: -1, node: 5 },
        ],
        context: Bytes::new(),
    });
    assert_eq!(
        message_from_wire(message),
        Err(WireError::UnknownEnumValue {
            field: "ConfChangeStep.kind",
            value: -1,
        })
    );
}

#[test]
fn errors_name_the_field() {
    let missing = WireError::MissingField {
        field: "AppendEntries.prev",
    };
    assert_eq!(
        missing.to_string(),
        "malformed peer message: required field `AppendEntries.prev` is missing"
    );
    let unknown = WireError::UnknownEnumValue {
        field: "ConfChangeStep.kind",
        value: 9,
    };
    assert_eq!(
        unknown.to_string(),
        "malformed peer message: `ConfChangeStep.kind` holds unknown enum value 9"
    );
}

// ---------------------------------------------------------------------------
// Lenient where the engine has one reading.

#[test]
fn duplicate_ids_in_a_configuration_count_once() {
    let message = with_body(wire::message::Body::InstallSnapshot(
        wire::InstallSnapshot {
            meta: Some(wire::SnapshotMeta {
                last_index: 10,
                last_term: 2,
                conf_state: Some(wire::ConfState {
                    voters: vec![3, 1, 3],
                    ..Default::default()
                }),
            }),
        },
    ));
    let Ok(Message {
        body: MessageBody::InstallSnapshot { meta },
        ..
    }) = message_from_wire(message)
    else {
        panic!("a valid snapshot message was refused");
    };
    assert_eq!(
        meta.conf_state,
        ConfState::with_voters([NodeId(1), NodeId(3)])
    );
}

#[test]
fn an_empty_normal_payload_is_not_blank() {
    let entry = |payload| Entry {
        term: Term(1),
        index: LogIndex(1),
        payload,
    };
    for payload in [EntryPayload::Blank, EntryPayload::Normal(Bytes::new())] {
        let original = Message {
            from: NodeId(1),
            to: NodeId(2),
            term: Term(1),
            body: MessageBody::AppendEntries {
                prev: EntryId::default(),
                entries: vec![entry(payload)],
                commit: LogIndex(0),
            },
        };
        let encoded = message_to_wire(original.clone()).encode_to_vec();
        let decoded = wire::Message::decode(encoded.as_slice()).expect("decodes");
        assert_eq!(message_from_wire(decoded), Ok(original));
    }
}

/// Payloads go to the wire without a copy: the engine's buffer moves into
/// the wire entry. (What is received is copied once, see
/// `received_payloads_keep_no_part_of_the_message_alive`.)
#[test]
fn payloads_are_not_copied_to_the_wire() {
    let data = Bytes::from(b"a payload shared with the wire".to_vec());
    let original = Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(1),
        body: MessageBody::AppendEntries {
            prev: EntryId::default(),
            entries: vec![Entry {
                term: Term(1),
                index: LogIndex(1),
                payload: EntryPayload::Normal(data.clone()),
            }],
            commit: LogIndex(0),
        },
    };
    let to_wire = message_to_wire(original);
    let wire_payload = match &to_wire.body {
        Some(wire::message::Body::AppendEntries(a)) => match &a.entries[0].payload {
            Some(wire::entry::Payload::Normal(d)) => d.clone(),
            other => panic!("a normal payload, got {other:?}"),
        },
        other => panic!("an append, got {other:?}"),
    };
    assert_eq!(wire_payload.as_ptr(), data.as_ptr());
}

//! [`dengine_core::Message`] to and from [`dengine_proto::peer::Message`].
//!
//! Field names in errors are the protobuf ones (`Message.body`,
//! `AppendEntries.prev`, ...), as a peer's developer would look them up in
//! `peer.proto`.

use std::collections::BTreeSet;

use bytes::Bytes;
use dengine_core::{
    AppendRejection, ConfChange, ConfChangeStep, ConfChangeTransition, ConfState, Entry, EntryId,
    EntryPayload, LogIndex, Message, MessageBody, NodeId, ReadId, SnapshotMeta, Term,
};
use dengine_proto::peer as wire;
use wire::append_entries_response::Result as AppendResult;
use wire::conf_change::Transition as WireTransition;
use wire::conf_change_step::Kind as WireStepKind;
use wire::entry::Payload as WirePayload;
use wire::message::Body as WireBody;

/// Why a message received from a peer cannot be turned into an engine
/// message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A field the engine needs is absent: a `oneof` with no member set (for
    /// example a message body of a kind this version does not know, which
    /// protobuf drops as an unknown field), or a sub-message that was not
    /// sent.
    #[error("malformed peer message: required field `{field}` is missing")]
    MissingField {
        /// The field, as `Message.field` in `peer.proto`.
        field: &'static str,
    },
    /// An enum field holds a value `peer.proto` (as this version knows it)
    /// does not define.
    #[error("malformed peer message: `{field}` holds unknown enum value {value}")]
    UnknownEnumValue {
        /// The field, as `Message.field` in `peer.proto`.
        field: &'static str,
        /// The value received.
        value: i32,
    },
}

/// The wire form of an engine message.
///
/// Takes the message by value so that entry payloads and change contexts
/// move into the wire message without a copy (a payload is already a
/// shared [`Bytes`]; a context's `Vec<u8>` becomes a [`Bytes`] in place).
#[must_use]
pub fn message_to_wire(message: Message) -> wire::Message {
    wire::Message {
        from: message.from.get(),
        to: message.to.get(),
        term: message.term.get(),
        body: Some(body_to_wire(message.body)),
        traceparent: Vec::new(),
    }
}

/// The engine message a peer sent, checked for every part the engine
/// needs.
///
/// # Errors
///
/// [`WireError::MissingField`] if a required field is absent, and
/// [`WireError::UnknownEnumValue`] if an enum field holds a value
/// `peer.proto` does not define. The values themselves are not judged:
/// terms and indexes out of range, or a sender that is not a member, are
/// for the engine and the transport to refuse.
pub fn message_from_wire(message: wire::Message) -> Result<Message, WireError> {
    let body = message.body.ok_or(missing("Message.body"))?;
    Ok(Message {
        from: NodeId(message.from),
        to: NodeId(message.to),
        term: Term(message.term),
        body: body_from_wire(body)?,
    })
}

/// The error for an absent required field.
fn missing(field: &'static str) -> WireError {
    WireError::MissingField { field }
}

fn body_to_wire(body: MessageBody) -> WireBody {
    match body {
        MessageBody::RequestVote {
            pre_vote,
            last_log,
            transfer,
        } => WireBody::RequestVote(wire::RequestVote {
            pre_vote,
            last_log: Some(entry_id_to_wire(last_log)),
            transfer,
        }),
        MessageBody::RequestVoteResponse { pre_vote, granted } => {
            WireBody::RequestVoteResponse(wire::RequestVoteResponse { pre_vote, granted })
        }
        MessageBody::AppendEntries {
            prev,
            entries,
            commit,
        } => WireBody::AppendEntries(wire::AppendEntries {
            prev: Some(entry_id_to_wire(prev)),
            entries: entries.into_iter().map(entry_to_wire).collect(),
            commit: commit.get(),
        }),
        MessageBody::AppendEntriesResponse { result } => {
            let result = match result {
                Ok(matched) => AppendResult::Matched(matched.get()),
                Err(AppendRejection { rejected, hint }) => {
                    AppendResult::Rejected(wire::AppendRejection {
                        rejected: rejected.get(),
                        hint: Some(entry_id_to_wire(hint)),
                    })
                }
            };
            WireBody::AppendEntriesResponse(wire::AppendEntriesResponse {
                result: Some(result),
            })
        }
        MessageBody::Heartbeat { commit, read_round } => WireBody::Heartbeat(wire::Heartbeat {
            commit: commit.get(),
            read_round,
        }),
        MessageBody::HeartbeatResponse { read_round } => {
            WireBody::HeartbeatResponse(wire::HeartbeatResponse { read_round })
        }
        MessageBody::InstallSnapshot { meta } => WireBody::InstallSnapshot(wire::InstallSnapshot {
            meta: Some(snapshot_meta_to_wire(meta)),
        }),
        MessageBody::TimeoutNow => WireBody::TimeoutNow(wire::TimeoutNow {}),
        MessageBody::ReadIndex { id } => WireBody::ReadIndex(wire::ReadIndex { id: id.0 }),
        MessageBody::ReadIndexResponse { id, index } => {
            WireBody::ReadIndexResponse(wire::ReadIndexResponse {
                id: id.0,
                index: index.map(LogIndex::get),
            })
        }
    }
}

fn body_from_wire(body: WireBody) -> Result<MessageBody, WireError> {
    Ok(match body {
        WireBody::RequestVote(vote) => MessageBody::RequestVote {
            pre_vote: vote.pre_vote,
            last_log: entry_id_from_wire(vote.last_log, "RequestVote.last_log")?,
            transfer: vote.transfer,
        },
        WireBody::RequestVoteResponse(response) => MessageBody::RequestVoteResponse {
            pre_vote: response.pre_vote,
            granted: response.granted,
        },
        WireBody::AppendEntries(append) => MessageBody::AppendEntries {
            prev: entry_id_from_wire(append.prev, "AppendEntries.prev")?,
            entries: entries_from_wire(append.entries)?,
            commit: LogIndex(append.commit),
        },
        WireBody::AppendEntriesResponse(response) => {
            let result = match response
                .result
                .ok_or(missing("AppendEntriesResponse.result"))?
            {
                AppendResult::Matched(matched) => Ok(LogIndex(matched)),
                AppendResult::Rejected(rejection) => Err(AppendRejection {
                    rejected: LogIndex(rejection.rejected),
                    hint: entry_id_from_wire(rejection.hint, "AppendRejection.hint")?,
                }),
            };
            MessageBody::AppendEntriesResponse { result }
        }
        WireBody::Heartbeat(heartbeat) => MessageBody::Heartbeat {
            commit: LogIndex(heartbeat.commit),
            read_round: heartbeat.read_round,
        },
        WireBody::HeartbeatResponse(response) => MessageBody::HeartbeatResponse {
            read_round: response.read_round,
        },
        WireBody::InstallSnapshot(install) => MessageBody::InstallSnapshot {
            meta: snapshot_meta_from_wire(install.meta.ok_or(missing("InstallSnapshot.meta"))?)?,
        },
        WireBody::TimeoutNow(wire::TimeoutNow {}) => MessageBody::TimeoutNow,
        WireBody::ReadIndex(read) => MessageBody::ReadIndex {
            id: ReadId(read.id),
        },
        WireBody::ReadIndexResponse(response) => MessageBody::ReadIndexResponse {
            id: ReadId(response.id),
            index: response.index.map(LogIndex),
        },
    })
}

fn entry_id_to_wire(id: EntryId) -> wire::EntryId {
    wire::EntryId {
        term: id.term.get(),
        index: id.index.get(),
    }
}

/// `id`, which the field `field` requires.
fn entry_id_from_wire(
    id: Option<wire::EntryId>,
    field: &'static str,
) -> Result<EntryId, WireError> {
    let id = id.ok_or(missing(field))?;
    Ok(EntryId::new(Term(id.term), LogIndex(id.index)))
}

fn entry_to_wire(entry: Entry) -> wire::Entry {
    let payload = match entry.payload {
        EntryPayload::Blank => WirePayload::Blank(wire::Blank {}),
        // The same shared buffer: no copy.
        EntryPayload::Normal(data) => WirePayload::Normal(data),
        EntryPayload::ConfChange(change) => WirePayload::ConfChange(conf_change_to_wire(*change)),
    };
    wire::Entry {
        term: entry.term.get(),
        index: entry.index.get(),
        payload: Some(payload),
    }
}

/// An append's entries, their payloads copied into one buffer of exactly
/// their size.
///
/// A received payload is a slice of the stream's read buffer, which
/// holds whole messages and grows to the largest: kept, a few hundred
/// bytes of payload keep that whole buffer alive for as long as the
/// entry lives (in the unstable log, the disk and apply queues), and the
/// stream reads the next messages into a new buffer of the same size.
/// Measured on a follower under 1,024 writing clients: 40 MB of such
/// buffers alive at its peak. One copy per append instead frees the read
/// buffer as soon as the message is converted.
fn entries_from_wire(entries: Vec<wire::Entry>) -> Result<Vec<Entry>, WireError> {
    let size = entries
        .iter()
        .map(|e| match &e.payload {
            Some(WirePayload::Normal(data)) => data.len(),
            _ => 0,
        })
        .sum();
    let mut own = bytes::BytesMut::with_capacity(size);
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let payload = match entry.payload.ok_or(missing("Entry.payload"))? {
            WirePayload::Normal(data) => {
                own.extend_from_slice(&data);
                EntryPayload::Normal(own.split().freeze())
            }
            other => payload_from_wire(other)?,
        };
        out.push(Entry {
            term: Term(entry.term),
            index: LogIndex(entry.index),
            payload,
        });
    }
    Ok(out)
}

fn payload_from_wire(payload: WirePayload) -> Result<EntryPayload, WireError> {
    Ok(match payload {
        WirePayload::Blank(wire::Blank {}) => EntryPayload::Blank,
        WirePayload::Normal(data) => EntryPayload::Normal(data),
        WirePayload::ConfChange(change) => {
            EntryPayload::ConfChange(Box::new(conf_change_from_wire(change)?))
        }
    })
}

fn conf_change_to_wire(change: ConfChange) -> wire::ConfChange {
    let transition = match change.transition {
        ConfChangeTransition::Auto => WireTransition::Auto,
        ConfChangeTransition::JointImplicit => WireTransition::JointImplicit,
        ConfChangeTransition::JointExplicit => WireTransition::JointExplicit,
    };
    wire::ConfChange {
        transition: transition.into(),
        steps: change
            .steps
            .into_iter()
            .map(conf_change_step_to_wire)
            .collect(),
        // Moves the vector into the `Bytes`: no copy.
        context: Bytes::from(change.context),
    }
}

fn conf_change_from_wire(change: wire::ConfChange) -> Result<ConfChange, WireError> {
    let transition = match WireTransition::try_from(change.transition) {
        Ok(WireTransition::Auto) => ConfChangeTransition::Auto,
        Ok(WireTransition::JointImplicit) => ConfChangeTransition::JointImplicit,
        Ok(WireTransition::JointExplicit) => ConfChangeTransition::JointExplicit,
        Err(_) => {
            return Err(WireError::UnknownEnumValue {
                field: "ConfChange.transition",
                value: change.transition,
            });
        }
    };
    Ok(ConfChange {
        transition,
        steps: change
            .steps
            .into_iter()
            .map(conf_change_step_from_wire)
            .collect::<Result<_, _>>()?,
        // A copy: the core keeps a change's context as a `Vec<u8>` (changes
        // are rare and their contexts small).
        context: Vec::from(change.context),
    })
}

fn conf_change_step_to_wire(step: ConfChangeStep) -> wire::ConfChangeStep {
    let (kind, node) = match step {
        ConfChangeStep::AddVoter(node) => (WireStepKind::AddVoter, node),
        ConfChangeStep::AddLearner(node) => (WireStepKind::AddLearner, node),
        ConfChangeStep::Remove(node) => (WireStepKind::Remove, node),
    };
    wire::ConfChangeStep {
        kind: kind.into(),
        node: node.get(),
    }
}

fn conf_change_step_from_wire(step: wire::ConfChangeStep) -> Result<ConfChangeStep, WireError> {
    let node = NodeId(step.node);
    match WireStepKind::try_from(step.kind) {
        Ok(WireStepKind::AddVoter) => Ok(ConfChangeStep::AddVoter(node)),
        Ok(WireStepKind::AddLearner) => Ok(ConfChangeStep::AddLearner(node)),
        Ok(WireStepKind::Remove) => Ok(ConfChangeStep::Remove(node)),
        Err(_) => Err(WireError::UnknownEnumValue {
            field: "ConfChangeStep.kind",
            value: step.kind,
        }),
    }
}

fn snapshot_meta_to_wire(meta: SnapshotMeta) -> wire::SnapshotMeta {
    wire::SnapshotMeta {
        last_index: meta.last_index.get(),
        last_term: meta.last_term.get(),
        conf_state: Some(conf_state_to_wire(meta.conf_state)),
    }
}

fn snapshot_meta_from_wire(meta: wire::SnapshotMeta) -> Result<SnapshotMeta, WireError> {
    let conf_state = meta.conf_state.ok_or(missing("SnapshotMeta.conf_state"))?;
    Ok(SnapshotMeta {
        last_index: LogIndex(meta.last_index),
        last_term: Term(meta.last_term),
        conf_state: conf_state_from_wire(conf_state),
    })
}

/// Ids in ascending order, as the sets hold them.
fn ids_to_wire(ids: BTreeSet<NodeId>) -> Vec<u64> {
    ids.into_iter().map(NodeId::get).collect()
}

/// A set of ids; an id listed twice counts once.
fn ids_from_wire(ids: Vec<u64>) -> BTreeSet<NodeId> {
    ids.into_iter().map(NodeId).collect()
}

fn conf_state_to_wire(state: ConfState) -> wire::ConfState {
    wire::ConfState {
        voters: ids_to_wire(state.voters),
        voters_outgoing: ids_to_wire(state.voters_outgoing),
        learners: ids_to_wire(state.learners),
        learners_next: ids_to_wire(state.learners_next),
        auto_leave: state.auto_leave,
    }
}

fn conf_state_from_wire(state: wire::ConfState) -> ConfState {
    ConfState {
        voters: ids_from_wire(state.voters),
        voters_outgoing: ids_from_wire(state.voters_outgoing),
        learners: ids_from_wire(state.learners),
        learners_next: ids_from_wire(state.learners_next),
        auto_leave: state.auto_leave,
    }
}

//! Messages exchanged between nodes.
//!
//! The core never encodes messages: the transport chooses a wire format. A
//! snapshot's data never travels inside a [`Message`]; an
//! [`MessageBody::InstallSnapshot`] carries only metadata, and the runtime
//! streams the data beside it (see the crate docs).

use crate::types::{Entry, EntryId, LogIndex, NodeId, SnapshotMeta, Term};

/// An opaque id the application gives a read request, returned with the
/// read's outcome so the application can match them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReadId(pub u64);

/// A message from one node to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The sender.
    pub from: NodeId,
    /// The recipient.
    pub to: NodeId,
    /// The sender's term (for pre-vote requests: the term it would campaign in).
    pub term: Term,
    /// What the message says.
    pub body: MessageBody,
}

/// Why an append was refused, with what the follower knows so the leader can
/// skip a whole conflicting term instead of one index at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendRejection {
    /// The `prev` index of the refused append.
    pub rejected: LogIndex,
    /// The follower's best guess at the last entry it shares with the leader:
    /// its last entry at or below `rejected` whose term is at most the term of
    /// the refused `prev`.
    pub hint: EntryId,
}

/// The body of a [`Message`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// A (pre-)candidate asks for a vote.
    RequestVote {
        /// Pre-vote: the term is not raised and nothing is persisted.
        pre_vote: bool,
        /// The candidate's last log entry.
        last_log: EntryId,
        /// Sent because of a leadership transfer: voters that still hear
        /// from a live leader grant it anyway.
        transfer: bool,
    },
    /// The answer to [`MessageBody::RequestVote`].
    RequestVoteResponse {
        /// Answers a pre-vote.
        pre_vote: bool,
        /// Whether the vote was granted.
        granted: bool,
    },
    /// The leader replicates entries following `prev`.
    AppendEntries {
        /// The entry just before `entries`.
        prev: EntryId,
        /// Entries to append; may be empty (a probe).
        entries: Vec<Entry>,
        /// The leader's commit index.
        commit: LogIndex,
    },
    /// The answer to [`MessageBody::AppendEntries`] or
    /// [`MessageBody::InstallSnapshot`].
    AppendEntriesResponse {
        /// `Ok(index)`: the follower's log now durably matches the leader's
        /// up to `index`. `Err`: the `prev` entry did not match.
        result: Result<LogIndex, AppendRejection>,
    },
    /// Leader liveness, commit propagation and read confirmation.
    Heartbeat {
        /// The leader's commit index, capped at what the follower has.
        commit: LogIndex,
        /// The newest read round the leader wants confirmed.
        read_round: u64,
    },
    /// The answer to [`MessageBody::Heartbeat`].
    HeartbeatResponse {
        /// The read round being confirmed.
        read_round: u64,
    },
    /// The leader sends a snapshot. Its data travels beside the message.
    InstallSnapshot {
        /// Which snapshot.
        meta: SnapshotMeta,
    },
    /// The leader asks the transfer target to campaign at once.
    TimeoutNow,
    /// A follower asks the leader for a read index on behalf of its client.
    ReadIndex {
        /// The follower's id for the read.
        id: ReadId,
    },
    /// The answer to [`MessageBody::ReadIndex`].
    ReadIndexResponse {
        /// The follower's id for the read.
        id: ReadId,
        /// `Some(index)`: the read may be served once `index` is applied.
        /// `None`: the receiver could not serve it (not leader any more).
        index: Option<LogIndex>,
    },
}

impl MessageBody {
    /// A short name for traces.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageBody::RequestVote { pre_vote: true, .. } => "PreVote",
            MessageBody::RequestVote { .. } => "Vote",
            MessageBody::RequestVoteResponse { pre_vote: true, .. } => "PreVoteResp",
            MessageBody::RequestVoteResponse { .. } => "VoteResp",
            MessageBody::AppendEntries { .. } => "App",
            MessageBody::AppendEntriesResponse { .. } => "AppResp",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResp",
            MessageBody::InstallSnapshot { .. } => "Snapshot",
            MessageBody::TimeoutNow => "TimeoutNow",
            MessageBody::ReadIndex { .. } => "ReadIndex",
            MessageBody::ReadIndexResponse { .. } => "ReadIndexResp",
        }
    }

    /// Approximate size of the payload in bytes (entries only).
    pub fn entries_size(&self) -> u64 {
        match self {
            MessageBody::AppendEntries { entries, .. } => entries.iter().map(Entry::size).sum(),
            _ => 0,
        }
    }
}

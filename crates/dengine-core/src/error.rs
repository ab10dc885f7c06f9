//! Errors of the protocol core.
//!
//! [`Error`] splits into what a caller can retry or act on (not the leader,
//! a transfer in progress, a pending membership change) and what is fatal
//! (a storage failure); see [`Error::is_retryable`].

use crate::types::{LogIndex, NodeId};

/// Errors reading durable storage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The requested index is below the first index still kept (it was
    /// compacted into a snapshot).
    #[error("log index {0} is compacted")]
    Compacted(LogIndex),
    /// The requested index is past the end of the log.
    #[error("log index {0} is not in the log")]
    Unavailable(LogIndex),
    /// The store failed or found corruption; the node cannot go on.
    #[error("storage failure: {0}")]
    Fatal(String),
}

/// Why a membership change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfChangeError {
    /// Another change is proposed and not yet applied.
    #[error("a membership change at index {0} is still pending")]
    Pending(LogIndex),
    /// The result would have no voter (or a joint configuration would be
    /// entered from one that has no voter, leaving its outgoing half empty).
    #[error("the change would leave no voter")]
    NoVoters,
    /// Leaving a joint configuration that is not joint.
    #[error("the configuration is not joint")]
    NotJoint,
    /// Changing voters while in a joint configuration (leave it first).
    #[error("the configuration is joint; leave it before changing again")]
    AlreadyJoint,
    /// A simple change may change at most one voter.
    #[error("a simple change may change at most one voter; use a joint change")]
    TooManyVoterChanges,
    /// Node id 0 is reserved.
    #[error("node id 0 is reserved")]
    ReservedNodeId,
    /// The same node appears twice in one change.
    #[error("node {0} appears more than once in the change")]
    DuplicateNode(NodeId),
    /// Removing a node that is not a member.
    #[error("node {0} is not a member")]
    NotAMember(NodeId),
    /// A configuration breaks the membership invariants (a node both voter
    /// and learner, a staged learner that is not an outgoing voter, ...).
    /// Seen on the input, it means a corrupt configuration; on a result, a bug.
    #[error("membership invariant violated: {0}")]
    Invariant(String),
}

/// Errors from the protocol core's API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// This node is not the leader; `leader` is the one it knows of, if any.
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
    },
    /// A leadership transfer is in progress; proposals are refused until it
    /// ends.
    #[error("leadership transfer to {0} in progress")]
    TransferInProgress(NodeId),
    /// Too many uncommitted bytes; retry later.
    #[error("too many uncommitted entries; retry later")]
    Overloaded,
    /// A membership change was refused.
    #[error(transparent)]
    ConfChange(#[from] ConfChangeError),
    /// A message named a node that is not a member (and is not an expected
    /// joiner); it was dropped.
    #[error("message from unknown node {0}")]
    UnknownNode(NodeId),
    /// A message addressed to another node.
    #[error("message addressed to node {to}, this is node {this}")]
    WrongRecipient {
        /// Whom the message was for.
        to: NodeId,
        /// This node.
        this: NodeId,
    },
    /// The message is malformed (for example entries that do not follow
    /// their `prev`, or an index past the log); it was dropped.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// The transfer target is not a voter or is this node.
    #[error("invalid leadership transfer target {0}")]
    InvalidTransferTarget(NodeId),
    /// The configuration given to the core is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A runtime report that does not fit the core's state (for example an
    /// applied index past what was handed out).
    #[error("invalid report from the runtime: {0}")]
    InvalidReport(&'static str),
    /// A request was lost (for example a read forwarded to a leader that
    /// never answered); retry.
    #[error("request dropped: {0}")]
    Dropped(&'static str),
    /// Storage failed; the node must stop.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl Error {
    /// Whether the caller may retry (possibly elsewhere, or later). Fatal
    /// errors (storage failures) mean the node must stop.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Error::Storage(StorageError::Fatal(_)))
    }

    /// Whether the node must stop.
    pub fn is_fatal(&self) -> bool {
        !self.is_retryable()
    }
}

/// Shorthand for results of the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

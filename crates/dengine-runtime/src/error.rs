//! Errors of the embedded API, split into what a caller can retry and what
//! means the node has stopped.

use dengine_core::{LogIndex, NodeId};

/// An error from a [`crate::Node`] call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// This node is not the leader; retry on `leader` if known.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
    },
    /// No answer in time; the request may or may not have taken effect.
    #[error("timed out")]
    Timeout,
    /// Too many requests in flight; retry later.
    #[error("overloaded: too many requests in flight")]
    Overloaded,
    /// The proposal was appended but lost its place in the log (a new leader
    /// overwrote it); it did not take effect.
    #[error("proposal at index {0} was dropped by a leader change")]
    Dropped(LogIndex),
    /// A leadership transfer is in progress; retry shortly.
    #[error("leadership transfer in progress")]
    TransferInProgress,
    /// A membership change was refused.
    #[error("membership change refused: {0}")]
    ConfChange(String),
    /// The request is invalid (for example a transfer to a non-voter).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The settings are invalid; nothing was started or changed.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The node has shut down.
    #[error("node is shut down")]
    Shutdown,
    /// Storage failed or holds corrupt data; the node has stopped.
    #[error("fatal storage error: {0}")]
    Storage(String),
    /// The node stopped on a fatal error (a task died, the state machine
    /// panicked or failed to store its state); the text says why.
    #[error("node stopped: {0}")]
    Fatal(String),
    /// A leadership transfer ended without the target becoming leader.
    #[error("leadership transfer failed: {0}")]
    TransferFailed(String),
}

impl Error {
    /// Whether retrying (perhaps on another node, or later) can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NotLeader { .. }
                | Error::Timeout
                | Error::Overloaded
                | Error::Dropped(_)
                | Error::TransferInProgress
                | Error::TransferFailed(_)
        )
    }

    /// Whether the node has stopped for good.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Error::Storage(_) | Error::Shutdown | Error::Fatal(_))
    }
}

impl From<dengine_core::Error> for Error {
    fn from(e: dengine_core::Error) -> Self {
        use dengine_core::Error as E;
        match e {
            E::NotLeader { leader } => Error::NotLeader { leader },
            E::TransferInProgress(_) => Error::TransferInProgress,
            E::Overloaded => Error::Overloaded,
            E::ConfChange(c) => Error::ConfChange(c.to_string()),
            E::Dropped(_) => Error::Timeout,
            E::Storage(s) => Error::Storage(s.to_string()),
            E::Config(s) => Error::Config(s),
            other => Error::Invalid(other.to_string()),
        }
    }
}

impl From<dengine_core::StorageError> for Error {
    fn from(e: dengine_core::StorageError) -> Self {
        Error::Storage(e.to_string())
    }
}

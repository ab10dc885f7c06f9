//! The application's replicated state machine.

use std::io::{Read, Write};

use dengine_core::LogIndex;

/// A deterministic state machine replicated by the cluster.
///
/// Commands arrive as the bytes that were proposed, in log order, exactly
/// once per node lifetime (after a restart, entries after the last snapshot
/// are applied again on top of the restored snapshot). Anything time-based
/// must come from the command itself, never from the local clock, or the
/// replicas diverge.
pub trait StateMachine: Send + 'static {
    /// What a proposer gets back.
    type Response: Send + 'static;

    /// Applies a committed command.
    fn apply(&mut self, index: LogIndex, command: &[u8]) -> Self::Response;

    /// Writes the whole state as a stream (snapshots are never required to
    /// fit in one buffer of the state machine's making).
    fn snapshot(&mut self, out: &mut dyn Write) -> std::io::Result<()>;

    /// Replaces the state with a snapshot read from `input`.
    fn restore(&mut self, input: &mut dyn Read) -> std::io::Result<()>;
}

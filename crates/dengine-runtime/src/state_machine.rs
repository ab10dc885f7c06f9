//! The application's replicated state machine.

use std::io::{Read, Write};

use dengine_core::{ConfChange, ConfState, EntryId, LogIndex};

/// A point-in-time view of a state machine that writes its snapshot (see
/// [`StateMachine::snapshot_view`]).
pub type SnapshotView = Box<dyn FnOnce(&mut dyn Write) -> std::io::Result<()> + Send>;

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

    /// Applies a committed command. `at` is the entry's place in the log:
    /// its index, and the term of the leader that proposed it (an etcd
    /// response header's `raft_term`, say).
    fn apply(&mut self, at: EntryId, command: &[u8]) -> Self::Response;

    /// A membership change was committed at `at` and is now in force:
    /// `change` as it was proposed (its `context` holds what the proposer
    /// attached, such as the addresses of a member it adds) and `members`
    /// the membership from this entry on. Called in log order among the
    /// commands, on every replica, so a state machine can keep the
    /// members' metadata in its replicated state. Default: nothing.
    fn apply_membership(&mut self, at: EntryId, change: &ConfChange, members: &ConfState) {
        let _ = (at, change, members);
    }

    /// Writes the whole state as a stream (snapshots are never required to
    /// fit in one buffer of the state machine's making).
    fn snapshot(&mut self, out: &mut dyn Write) -> std::io::Result<()>;

    /// The state as it is now, to be written as a snapshot on another
    /// thread while this state machine goes on applying: a state machine
    /// whose state is large (and mostly immutable, or copy-on-write) takes
    /// what it needs here, quickly, and the returned view writes the same
    /// bytes [`StateMachine::snapshot`] would have written now. The node
    /// stops no apply or read while the view writes; the view's writes
    /// fail once the node stops. Default `None`: the node calls
    /// [`StateMachine::snapshot`], and applies nothing meanwhile.
    fn snapshot_view(&mut self) -> Option<SnapshotView> {
        None
    }

    /// Replaces the state with a snapshot read from `input`. The runtime
    /// calls [`StateMachine::flush`] with the snapshot's index afterwards.
    fn restore(&mut self, input: &mut dyn Read) -> std::io::Result<()>;

    /// Called after each batch of [`StateMachine::apply`] calls (and after a
    /// restore) with the index through which the log is now applied,
    /// before any read runs against the state and before the batch's
    /// proposers get their responses. A state machine that stages writes
    /// makes them visible here, and one that keeps its state on disk
    /// writes them (with `applied`) in one atomic batch. An error stops
    /// the node: its state can no longer be trusted. Default: nothing.
    fn flush(&mut self, applied: LogIndex) -> std::io::Result<()> {
        let _ = applied;
        Ok(())
    }

    /// For a state machine that keeps its state durably itself: the index
    /// its state reflects after a restart (what the last successful
    /// [`StateMachine::flush`] stored). The runtime then restores a
    /// snapshot only if it is newer, and re-applies nothing at or below
    /// this index. Default `None`: the state is rebuilt from the newest
    /// snapshot and the log at every start.
    fn applied_index(&self) -> Option<LogIndex> {
        None
    }

    /// For a state machine that keeps its state durably itself (see
    /// [`StateMachine::applied_index`]): makes everything applied so far
    /// durable (written and synced) and returns the index its durable
    /// state now reflects, which the next start's
    /// [`StateMachine::applied_index`] reports at least.
    ///
    /// The node then compacts its log behind that index without writing
    /// the state out as a snapshot (etcd's way: its database is the
    /// snapshot), and writes one, from [`StateMachine::snapshot_view`] or
    /// [`StateMachine::snapshot`], only when a follower needs the state.
    /// A state machine whose state is large saves writing all of it at
    /// every snapshot threshold. An error stops the node, as a failed
    /// [`StateMachine::flush`] does. Default `Ok(None)`: every snapshot
    /// writes the whole state.
    fn checkpoint(&mut self) -> std::io::Result<Option<LogIndex>> {
        Ok(None)
    }
}

//! The node runtime: one tokio task drives the protocol core and never
//! blocks; a disk thread makes writes durable in groups (one fsync for every
//! write waiting), and an apply task runs the state machine. Both report
//! back to the core task as events.
//!
//! The durability contract of `dengine_core` is kept here: a persist
//! batch's messages (acknowledgements, votes) are sent only after the disk
//! thread's fsync, and the core counts its own entries only once told they
//! are durable. The leader's appends to followers go out at once, in
//! parallel with its own write.

mod apply;
mod core_loop;
mod disk;
mod pending;

use std::sync::Arc;

use dengine_core::{ConfChange, LogIndex, Message, NodeId, PersistBatch, SnapshotMeta};
use tokio::sync::oneshot;

pub(crate) use core_loop::CoreLoop;
pub use core_loop::Metrics;

use crate::error::Error;
use crate::snapshot::SnapshotData;
use crate::state_machine::StateMachine;

/// How a read is made consistent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadPolicy {
    /// Linearizable: confirmed by a quorum round (ReadIndex).
    Linearizable,
    /// Linearizable while the leader's lease holds (no round), under the
    /// configured clock-drift bound; falls back to a round otherwise.
    Lease,
    /// Whatever this node has applied: fast, possibly stale.
    Stale,
}

/// A read waiting for the state machine: runs on the apply task.
pub(crate) type ReadJob<SM> = Box<dyn FnOnce(Result<&SM, Error>) + Send>;

/// A proposal's answer.
pub(crate) type ProposeReply<R> = oneshot::Sender<Result<(LogIndex, R), Error>>;

/// Requests from the application.
pub(crate) enum Request<SM: StateMachine> {
    Read {
        policy: ReadPolicy,
        job: ReadJob<SM>,
    },
    ConfChange {
        change: ConfChange,
        reply: oneshot::Sender<Result<LogIndex, Error>>,
    },
    Transfer {
        to: NodeId,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Shutdown,
}

/// Events from the network, the disk and the apply task.
pub(crate) enum Event {
    Message(Message, Option<SnapshotData>),
    SnapshotReport(NodeId, bool),
    Persisted(Vec<PersistBatch>),
    Applied(LogIndex),
    SnapshotMade(SnapshotMeta, SnapshotData),
    SnapshotSaved(SnapshotMeta, SnapshotData),
    /// A snapshot from another node, copied into this node's store.
    SnapshotImported(Message, SnapshotData),
    /// Copying a snapshot in failed (the message was dropped).
    ImportFailed(LogIndex),
    SnapshotFailed,
    Fatal(String),
}

/// Work for the disk thread.
pub(crate) enum DiskJob {
    Write(PersistBatch),
    Compact(LogIndex),
    SaveSnapshot(SnapshotMeta, SnapshotData),
    Stop,
}

/// Work for the apply task.
pub(crate) enum ApplyJob<SM: StateMachine> {
    Entries(
        Vec<dengine_core::Entry>,
        Vec<(LogIndex, ProposeReply<SM::Response>)>,
        Vec<(LogIndex, oneshot::Sender<Result<LogIndex, Error>>)>,
    ),
    Read(LogIndex, ReadJob<SM>),
    Snapshot(SnapshotMeta),
    Restore(SnapshotMeta, SnapshotData),
    Stop,
}

/// Shared by the node handle and the runtime.
pub(crate) struct Channels<SM: StateMachine> {
    pub(crate) requests: tokio::sync::mpsc::Sender<Request<SM>>,
    pub(crate) events: tokio::sync::mpsc::UnboundedSender<Event>,
}

impl<SM: StateMachine> Clone for Channels<SM> {
    fn clone(&self) -> Self {
        Channels {
            requests: self.requests.clone(),
            events: self.events.clone(),
        }
    }
}

pub(crate) use apply::spawn_apply_task;
pub(crate) use disk::spawn_disk_thread;
pub(crate) use pending::ProposalQueue;

/// The storage handle the runtime works with.
pub(crate) type Store = Arc<dyn dengine_core::LogStore>;

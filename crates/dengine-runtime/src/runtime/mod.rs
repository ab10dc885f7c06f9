//! The node runtime: one tokio task drives the protocol core and never
//! blocks; a disk thread makes writes durable in groups (one fsync for every
//! write waiting), and an apply worker runs the state machine (a task until
//! a job proves slow, then a thread of its own: see `apply`). Both report
//! back to the core task as events. A supervisor watches all three: any
//! of them dying (a panic included) stops the node with the cause.
//!
//! The durability contract of `dengine_core` is kept here: a persist
//! batch's messages (acknowledgements, votes) are sent only after the disk
//! thread's fsync, and the core counts its own entries only once told they
//! are durable. The leader's appends to followers go out at once, in
//! parallel with its own write.
//!
//! ## Who owns which fact
//! - **Protocol state** (term, commit, membership, the log's shape): the
//!   core task, in its `RawNode`; published through [`Metrics`].
//! - **Applied index**: the apply thread, reported to the core task with
//!   `Event::Applied`; the published figure only moves forward.
//! - **Durable log**: the disk thread, reported with `Event::Persisted`
//!   through a queue the core empties at every turn (`disk_reports`).
//! - **Snapshots**: files in the snapshot store; the core task keeps the
//!   handles of the ones it may send or is about to install. A state
//!   machine that checkpoints ([`crate::StateMachine::checkpoint`]) makes
//!   snapshots with no file (the log's metadata only) until a follower
//!   needs its data: the core task then asks the core for a snapshot now
//!   (`RawNode::request_snapshot`) and has the apply thread write the data.
//! - **Time**: the core task's tick clock, derived from `Instant` (a late
//!   loop catches up on every tick it missed before it serves anything).
//!
//! ## Bounds
//! Every queue is bounded, by a limit or by construction: proposals and
//! requests by `max_pending_requests` (past it, `Overloaded`); reads of
//! every policy by the same limit, each expiring with the request timeout;
//! inbound peer messages by [`INBOX`] (past it they are dropped: Raft
//! sends again); disk jobs by [`MAX_DISK_JOBS`] in flight (past it the core
//! takes no proposals and drops peers' appends until the disk catches up);
//! entries waiting to be applied by the core's `max_applying_bytes`.

mod apply;
mod clock;
mod commit_notices;
mod core_loop;
mod disk;
mod disk_reports;
mod held_commit;
mod metrics;
mod pending;
mod ready;
mod slow_jobs;
mod snapshot_thread;
pub(crate) mod supervisor;
pub mod telemetry;
pub(crate) mod traces;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dengine_core::{ConfChange, LogIndex, Message, NodeId, PersistBatch, Persisted, SnapshotMeta};
use tokio::sync::oneshot;

pub(crate) use core_loop::{CoreLoop, DataSnapshot};
pub use metrics::Metrics;

use crate::error::Error;
use crate::snapshot::SnapshotData;
use crate::state_machine::StateMachine;

/// Inbound peer messages waiting for the core task; more are dropped.
pub(crate) const INBOX: usize = 8192;
/// Persist batches handed to the disk thread and not yet durable; past
/// this the core takes no new work that would add to them.
pub(crate) const MAX_DISK_JOBS: usize = 1024;

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

/// A read waiting for the state machine: runs on the apply thread.
pub(crate) type ReadJob<SM> = Box<dyn FnOnce(Result<&SM, Error>) + Send>;

/// A proposal's answer.
pub(crate) type ProposeReply<R> = oneshot::Sender<Result<(LogIndex, R), Error>>;

/// A message from a peer, with the snapshot data of an `InstallSnapshot`.
/// With the spans a traced append continues (empty when not traced).
pub(crate) type Inbound = (Message, Option<SnapshotData>, Vec<tracing::Span>);

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
    Status {
        reply: oneshot::Sender<dengine_core::Status>,
    },
    Shutdown,
}

/// Events from the disk and apply threads, transports and helpers. Each
/// answers a job the core task handed out (or a snapshot send), so their
/// number is bounded by those.
pub(crate) enum Event {
    SnapshotReport(NodeId, bool),
    /// Batches made durable: what each persisted, and the messages that
    /// waited for it and are the core task's to send (the disk thread sent
    /// the append acknowledgements itself); then the peers those sends
    /// found unreachable.
    Persisted(Vec<(Persisted, Vec<Message>)>, Vec<NodeId>),
    Applied(LogIndex),
    /// A snapshot made: with the state machine's data, or without
    /// (`None`: the state machine made its state durable itself, see
    /// [`crate::StateMachine::checkpoint`]).
    SnapshotMade(SnapshotMeta, Option<SnapshotData>),
    /// A snapshot made whose metadata is now durable in the log store.
    SnapshotSaved(SnapshotMeta, Option<SnapshotData>),
    /// A snapshot from another node, copied into this node's store.
    SnapshotImported(Message, SnapshotData),
    /// Copying a snapshot in failed (the message was dropped).
    ImportFailed(LogIndex),
    SnapshotFailed(String),
    Fatal(String),
    /// The disk thread queued a report that lets the core move on: it
    /// takes the queue (see `disk_reports`), as it does at every turn.
    DiskReports,
}

/// Work for the disk thread.
pub(crate) enum DiskJob {
    Write(PersistBatch),
    Compact(LogIndex),
    SaveSnapshot(SnapshotMeta, Option<SnapshotData>),
    Stop,
}

/// What a snapshot the core asked for is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SnapshotKind {
    /// Whatever lets the log be compacted: a state machine that keeps its
    /// state durably only makes it durable ([`crate::StateMachine::checkpoint`]);
    /// any other writes its data.
    Compaction,
    /// The state machine's data, to send to a follower.
    Data,
}

/// Work for the apply thread.
pub(crate) enum ApplyJob<SM: StateMachine> {
    /// Committed entries, the proposals waiting for them, the membership
    /// changes waiting for them, and the membership each change among
    /// them put in force, when they were handed out, and the spans of
    /// traced entries among them (ended once applied).
    Entries(
        Vec<dengine_core::Entry>,
        Vec<(LogIndex, ProposeReply<SM::Response>)>,
        Vec<(LogIndex, oneshot::Sender<Result<LogIndex, Error>>)>,
        Vec<(LogIndex, dengine_core::ConfState)>,
        std::time::Instant,
        Vec<tracing::Span>,
    ),
    Read(LogIndex, ReadJob<SM>),
    Snapshot(SnapshotMeta, SnapshotKind),
    Restore(SnapshotMeta, SnapshotData),
    Stop,
}

/// Shared by the node handle and the runtime.
pub(crate) struct Channels<SM: StateMachine> {
    pub(crate) requests: tokio::sync::mpsc::Sender<Request<SM>>,
    pub(crate) inbox: tokio::sync::mpsc::Sender<Inbound>,
    pub(crate) events: tokio::sync::mpsc::UnboundedSender<Event>,
}

impl<SM: StateMachine> Clone for Channels<SM> {
    fn clone(&self) -> Self {
        Channels {
            requests: self.requests.clone(),
            inbox: self.inbox.clone(),
            events: self.events.clone(),
        }
    }
}

/// Counts reads in flight (of every policy) against a limit.
pub(crate) struct ReadLimit {
    in_flight: AtomicUsize,
    limit: usize,
}

/// One read's place under the limit, given back when dropped (the read
/// answered, failed or expired).
pub(crate) struct ReadSlot(Arc<ReadLimit>);

impl ReadLimit {
    pub(crate) fn new(limit: usize) -> Arc<ReadLimit> {
        Arc::new(ReadLimit {
            in_flight: AtomicUsize::new(0),
            limit,
        })
    }

    /// A slot for one more read, or `Overloaded`.
    pub(crate) fn acquire(self: &Arc<Self>) -> Result<ReadSlot, Error> {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if before >= self.limit {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::Overloaded);
        }
        Ok(ReadSlot(self.clone()))
    }
}

impl Drop for ReadSlot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(crate) use apply::spawn_applier;
pub(crate) use clock::TickClock;
pub(crate) use commit_notices::CommitNoticeTimer;
pub(crate) use disk::spawn_disk_thread;
pub(crate) use disk_reports::DiskReports;
pub(crate) use pending::ProposalQueue;
pub(crate) use supervisor::supervise;

/// The storage handle the runtime works with.
pub(crate) type Store = Arc<dyn dengine_core::LogStore>;

/// The text of a panic's payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with no message".to_string()
    }
}

//! How nodes reach each other. A [`Transport`] sends; inbound messages are
//! handed to the receiving node with [`crate::Node::deliver`].
//!
//! [`InMemoryNetwork`] connects nodes in one process (tests, benchmarks,
//! single-binary clusters) and can cut nodes off to test failures.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use dengine_core::{Message, NodeId};
use tokio::sync::mpsc::UnboundedSender;

use crate::runtime::Event;
pub use crate::snapshot::SnapshotData;

/// A peer could not be reached (no connection, or its send queue is
/// full): the message was dropped. Raft sends again; the core also stops
/// streaming appends to that peer until it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreachable;

/// Sends messages to peers. Sending never blocks the protocol task: a
/// transport queues, and drops what it cannot deliver (Raft retries).
///
/// Messages are sent from the node's core task, and acknowledgements of
/// appends from its disk thread the moment they are durable; both run
/// inside the node's tokio runtime (`tokio::spawn` works from either).
pub trait Transport: Send + Sync + 'static {
    /// Queues `msg` for its peer (`msg.to`). `Err(Unreachable)` when the
    /// peer is known to be unreachable or its queue is full.
    fn send(&self, msg: Message) -> Result<(), Unreachable>;

    /// Sends an append whose entries include traced writes: `spans` are
    /// the leader's spans of them, for a transport that carries trace
    /// context to the follower (and hands the follower's spans to
    /// [`crate::Node::deliver_traced`]). By default the spans are dropped
    /// and the message sent as [`Transport::send`] sends it.
    fn send_traced(&self, msg: Message, spans: Vec<tracing::Span>) -> Result<(), Unreachable> {
        drop(spans);
        self.send(msg)
    }

    /// Sends a snapshot: the `InstallSnapshot` message and its data,
    /// streamed frame by frame ([`SnapshotData::frames`]) into the peer's
    /// [`crate::Node::snapshot_receiver`]. Report the outcome through
    /// `done` (dropping it unreported counts as a failure).
    fn send_snapshot(&self, msg: Message, data: SnapshotData, done: SnapshotDone);
}

/// How a snapshot send ended, reported back to the sending node once.
/// Dropped without a report, it reports a failure (the leader then probes
/// the follower and sends again).
pub struct SnapshotDone {
    to: NodeId,
    events: Option<UnboundedSender<Event>>,
}

impl SnapshotDone {
    pub(crate) fn new(to: NodeId, events: UnboundedSender<Event>) -> SnapshotDone {
        SnapshotDone {
            to,
            events: Some(events),
        }
    }

    /// The peer the snapshot is for.
    pub fn to(&self) -> NodeId {
        self.to
    }

    /// The peer received the whole snapshot and took it.
    pub fn delivered(mut self) {
        self.report(true);
    }

    /// The transfer failed.
    pub fn failed(mut self) {
        self.report(false);
    }

    fn report(&mut self, delivered: bool) {
        if let Some(events) = self.events.take() {
            let _ = events.send(Event::SnapshotReport(self.to, delivered));
        }
    }
}

impl Drop for SnapshotDone {
    fn drop(&mut self) {
        self.report(false);
    }
}

impl std::fmt::Debug for SnapshotDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotDone")
            .field("to", &self.to)
            .finish()
    }
}

/// Hands a message to a node of the network; false if it was dropped.
pub(crate) type Deliver = Arc<dyn Fn(Message, Option<SnapshotData>) -> bool + Send + Sync>;

#[derive(Default)]
struct Net {
    nodes: BTreeMap<NodeId, Deliver>,
    down: BTreeSet<NodeId>,
}

/// Nodes of one process wired together by function calls.
#[derive(Default, Clone)]
pub struct InMemoryNetwork {
    inner: Arc<RwLock<Net>>,
}

impl InMemoryNetwork {
    /// An empty network.
    pub fn new() -> InMemoryNetwork {
        InMemoryNetwork::default()
    }

    fn lock(&self) -> std::sync::RwLockWriteGuard<'_, Net> {
        match self.inner.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Net> {
        match self.inner.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Registers how to reach node `id`.
    pub(crate) fn register(&self, id: NodeId, deliver: Deliver) {
        self.lock().nodes.insert(id, deliver);
    }

    /// Forgets node `id` (it shut down).
    pub fn unregister(&self, id: NodeId) {
        self.lock().nodes.remove(&id);
    }

    /// Cuts node `id` off: nothing reaches it or leaves it.
    pub fn isolate(&self, id: NodeId) {
        self.lock().down.insert(id);
    }

    /// Reconnects node `id`.
    pub fn heal(&self, id: NodeId) {
        self.lock().down.remove(&id);
    }

    /// A transport for node `from`.
    pub fn transport(&self, from: NodeId) -> Arc<dyn Transport> {
        Arc::new(MemTransport {
            from,
            net: self.clone(),
        })
    }

    /// How `from` reaches `to` now, if it can.
    fn route(&self, from: NodeId, to: NodeId) -> Option<Deliver> {
        let net = self.read();
        let up = !net.down.contains(&from) && !net.down.contains(&to);
        net.nodes.get(&to).filter(|_| up).cloned()
    }
}

struct MemTransport {
    from: NodeId,
    net: InMemoryNetwork,
}

impl Transport for MemTransport {
    fn send(&self, msg: Message) -> Result<(), Unreachable> {
        match self.net.route(self.from, msg.to) {
            Some(deliver) => {
                // A full inbox drops the message like a lossy link would.
                deliver(msg, None);
                Ok(())
            }
            None => Err(Unreachable),
        }
    }

    fn send_snapshot(&self, msg: Message, data: SnapshotData, done: SnapshotDone) {
        match self.net.route(self.from, msg.to) {
            Some(deliver) if deliver(msg, Some(data)) => done.delivered(),
            _ => done.failed(),
        }
    }
}

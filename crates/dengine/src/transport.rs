//! How nodes reach each other. A [`Transport`] sends; inbound messages are
//! handed to the receiving node with [`crate::Node::deliver`].
//!
//! [`InMemoryNetwork`] connects nodes in one process (tests, benchmarks,
//! single-binary clusters) and can cut nodes off to test failures.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use dengine_core::{Message, MessageBody, NodeId};

pub use crate::snapshot::SnapshotData;

/// Sends messages to peers. Sending never blocks the protocol task: a
/// transport queues, and drops what it cannot deliver (Raft retries).
pub trait Transport: Send + Sync + 'static {
    /// Sends `msg` (with `snapshot` data for snapshot messages). The
    /// transport must report the outcome of a snapshot send through the
    /// sender's [`crate::Node::report_snapshot`].
    fn send(&self, msg: Message, snapshot: Option<SnapshotData>);
}

type Deliver = Arc<dyn Fn(Message, Option<SnapshotData>) + Send + Sync>;
type Report = Arc<dyn Fn(NodeId, bool) + Send + Sync>;

#[derive(Default)]
struct Net {
    nodes: BTreeMap<NodeId, (Deliver, Report)>,
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
    pub(crate) fn register(&self, id: NodeId, deliver: Deliver, report: Report) {
        self.lock().nodes.insert(id, (deliver, report));
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
}

struct MemTransport {
    from: NodeId,
    net: InMemoryNetwork,
}

impl Transport for MemTransport {
    fn send(&self, msg: Message, snapshot: Option<SnapshotData>) {
        let is_snapshot = matches!(msg.body, MessageBody::InstallSnapshot { .. });
        let to = msg.to;
        let (target, report) = {
            let net = self.net.read();
            let up = !net.down.contains(&self.from) && !net.down.contains(&to);
            let target = net.nodes.get(&to).filter(|_| up).map(|(d, _)| d.clone());
            let report = net.nodes.get(&self.from).map(|(_, r)| r.clone());
            (target, report)
        };
        let delivered = target.is_some();
        if let Some(deliver) = target {
            deliver(msg, snapshot);
        }
        if is_snapshot && let Some(report) = report {
            report(to, delivered);
        }
    }
}

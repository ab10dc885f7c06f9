//! The application's handle on a running node, and how to start one.

use std::sync::{Arc, Mutex};

use dengine_core::{
    ConfChange, ConfChangeStep, ConfChangeTransition, LogIndex, LogStorage, LogStore, Message,
    NodeId, RawNode, StoreIdentity, bootstrap_entry,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{Config, StorageKind};
use crate::error::Error;
use crate::runtime::{
    Channels, CoreLoop, Event, Metrics, ProposalQueue, ReadPolicy, Request, Store,
    spawn_apply_task, spawn_disk_thread,
};
use crate::snapshot::{SnapshotData, SnapshotReceiver, SnapshotStore};
use crate::state_machine::StateMachine;
use crate::transport::{InMemoryNetwork, Transport};

/// A proposal's outcome: where it landed and what the state machine said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposed<R> {
    /// The log index of the command.
    pub index: LogIndex,
    /// The state machine's response.
    pub response: R,
}

/// Starts a [`Node`].
pub struct NodeBuilder<SM: StateMachine> {
    config: Config,
    state_machine: SM,
    transport: Option<Arc<dyn Transport>>,
    network: Option<InMemoryNetwork>,
    initial_members: Vec<NodeId>,
    store: Option<Store>,
}

impl<SM: StateMachine> NodeBuilder<SM> {
    /// A builder for a node with these settings and state machine.
    pub fn new(config: Config, state_machine: SM) -> Self {
        NodeBuilder {
            config,
            state_machine,
            transport: None,
            network: None,
            initial_members: Vec::new(),
            store: None,
        }
    }

    /// The voters of a new cluster, this node among them. Only used when
    /// the node's storage is empty; a node started without members joins an
    /// existing cluster once a member adds it.
    pub fn initial_members(mut self, members: impl IntoIterator<Item = u64>) -> Self {
        self.initial_members = members.into_iter().map(NodeId).collect();
        self
    }

    /// Connects the node to an in-process network.
    pub fn network(mut self, net: &InMemoryNetwork) -> Self {
        self.network = Some(net.clone());
        self
    }

    /// Uses a custom transport (inbound messages go to [`Node::deliver`]).
    pub fn transport(mut self, t: Arc<dyn Transport>) -> Self {
        self.transport = Some(t);
        self
    }

    /// Uses an already opened store instead of the one the settings name.
    pub fn store(mut self, store: Arc<dyn LogStore>) -> Self {
        self.store = Some(store);
        self
    }

    fn open_store(config: &Config) -> Result<Store, Error> {
        match config.storage {
            StorageKind::Memory => Ok(Arc::new(dengine_core::storage::MemStorage::new())),
            #[cfg(feature = "sled")]
            StorageKind::Sled => {
                std::fs::create_dir_all(&config.data_dir).map_err(|e| {
                    Error::Config(format!("data_dir {}: {e}", config.data_dir.display()))
                })?;
                let s = dengine_storage_sled::SledStore::open(config.data_dir.join("log"))?;
                Ok(Arc::new(s))
            }
            #[cfg(feature = "rocksdb")]
            StorageKind::Rocksdb => {
                std::fs::create_dir_all(&config.data_dir).map_err(|e| {
                    Error::Config(format!("data_dir {}: {e}", config.data_dir.display()))
                })?;
                let s = dengine_storage_rocksdb::RocksStore::open(config.data_dir.join("log"))?;
                Ok(Arc::new(s))
            }
            #[allow(unreachable_patterns)]
            _ => Err(Error::Config(format!(
                "storage {:?} is not compiled in",
                config.storage
            ))),
        }
    }

    /// Validates the settings, opens storage (checking it belongs to this
    /// cluster and node), restores the state machine and starts the node.
    /// Must be called inside a tokio runtime.
    pub fn build(self) -> Result<Node<SM>, Error> {
        let NodeBuilder {
            config,
            mut state_machine,
            transport,
            network,
            initial_members,
            store,
        } = self;
        config.validate()?;
        let id = NodeId(config.node_id);
        let store = match store {
            Some(s) => s,
            None => Self::open_store(&config)?,
        };
        let identity = StoreIdentity {
            cluster_id: config.cluster_id,
            node_id: id,
        };
        match store.identity()? {
            Some(found) if found != identity => {
                return Err(Error::Config(format!(
                    "data in {} belongs to cluster {} node {}, not cluster {} node {}",
                    config.data_dir.display(),
                    found.cluster_id,
                    found.node_id,
                    config.cluster_id,
                    config.node_id
                )));
            }
            Some(_) => {}
            None => store.set_identity(identity)?,
        }
        let fresh = store.last_index()? == LogIndex::ZERO
            && store.initial_state()?.hard_state == Default::default();
        if fresh && !initial_members.is_empty() {
            if !initial_members.contains(&id) {
                return Err(Error::Config(format!(
                    "initial_members {initial_members:?} must include this node {id}"
                )));
            }
            let hs = dengine_core::HardState {
                term: dengine_core::Term(1),
                vote: NodeId::NONE,
                commit: LogIndex(1),
            };
            store.write(None, &[bootstrap_entry(initial_members)], Some(&hs))?;
            store.sync()?;
        }

        let snapshots = match config.storage {
            StorageKind::Memory => SnapshotStore::memory(),
            _ => {
                let dir = config.data_dir.join("snapshots");
                SnapshotStore::open(dir.clone()).map_err(|e| {
                    Error::Storage(format!("snapshot directory {}: {e}", dir.display()))
                })?
            }
        };
        // A state machine that keeps its own state may be at or past the
        // newest snapshot already; otherwise it starts from the snapshot.
        let mut applied = state_machine.applied_index().unwrap_or(LogIndex::ZERO);
        let latest = snapshots
            .latest()
            .map_err(|e| Error::Storage(format!("reading the newest snapshot: {e}")))?;
        let mut snapshot_at = LogIndex::ZERO;
        let mut known_snapshots = std::collections::BTreeMap::new();
        if let Some(data) = latest {
            snapshot_at = data.meta().last_index;
            if applied < snapshot_at {
                let name = data
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                crate::snapshot::restore(&mut state_machine, &data)
                    .map_err(|e| Error::Storage(format!("restoring snapshot {name}: {e}")))?;
                applied = snapshot_at;
            }
            known_snapshots.insert(snapshot_at, data);
        }
        let init = store.initial_state()?;
        if init.applied > applied {
            return Err(Error::Storage(format!(
                "the log starts after a snapshot at {} that is missing from {}",
                init.applied,
                config.data_dir.display()
            )));
        }

        let raw = RawNode::new(config.core_config(), store.clone())?;
        let (req_tx, req_rx) = mpsc::channel(config.max_pending_requests);
        let queue = Arc::new(ProposalQueue::new(config.max_pending_requests));
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (disk_tx, disk_rx) = std::sync::mpsc::channel();
        let (apply_tx, apply_rx) = mpsc::unbounded_channel();
        let disk = spawn_disk_thread(store.clone(), snapshots.clone(), disk_rx, ev_tx.clone())
            .map_err(|e| Error::Storage(format!("starting the disk thread: {e}")))?;
        let apply = spawn_apply_task(
            state_machine,
            applied,
            snapshots.clone(),
            apply_rx,
            ev_tx.clone(),
        );
        let loop_events = ev_tx.clone();
        let channels = Channels {
            requests: req_tx,
            events: ev_tx,
        };
        let transport = match (transport, &network) {
            (Some(t), _) => t,
            (None, Some(net)) => net.transport(id),
            (None, None) => Arc::new(NoTransport),
        };
        let st = raw.status();
        let (metrics_tx, metrics_rx) = watch::channel(Metrics {
            id,
            role: st.soft_state.role,
            term: st.hard_state.term,
            leader: None,
            commit: st.hard_state.commit,
            applied,
            last_index: st.last_index,
            membership: st.conf_state,
            fatal: None,
            snapshots_installed: 0,
            snapshot_made_at: snapshot_at,
        });
        let core = CoreLoop {
            raw,
            transport,
            requests: req_rx,
            events: ev_rx,
            events_tx: loop_events,
            disk: disk_tx,
            apply: apply_tx,
            metrics: metrics_tx,
            tick: config.tick(),
            proposals: Default::default(),
            queue: queue.clone(),
            changes: Default::default(),
            reads: Default::default(),
            next_read: 0,
            snapshots: known_snapshots,
            incoming: Default::default(),
            snapshot_store: snapshots.clone(),
            importing: Default::default(),
            applied,
            fatal: None,
            batch: Vec::new(),
            ticks: 0,
            snapshots_installed: 0,
            snapshot_made_at: snapshot_at,
            timeout_ticks: (config.request_timeout_ms / config.tick_ms).max(1),
            inline_store: (config.storage == StorageKind::Memory).then(|| store.clone()),
        };
        let task = tokio::spawn(core.run());
        let node = Node {
            inner: Arc::new(Inner {
                id,
                config,
                channels,
                metrics: metrics_rx,
                handles: Mutex::new(Some((task, disk, apply))),
                network: network.clone(),
                snapshots,
                queue,
            }),
        };
        if let Some(net) = network {
            let a = node.channels().events.clone();
            let b = node.channels().events.clone();
            net.register(
                id,
                Arc::new(move |m: Message, d: Option<SnapshotData>| {
                    let _ = a.send(Event::Message(m, d));
                }),
                Arc::new(move |to: NodeId, ok: bool| {
                    let _ = b.send(Event::SnapshotReport(to, ok));
                }),
            );
        }
        Ok(node)
    }
}

struct NoTransport;
impl Transport for NoTransport {
    fn send(&self, msg: Message, _: Option<SnapshotData>) {
        tracing::trace!(to = %msg.to, "no transport configured; message dropped");
    }
}

type Handles = (
    tokio::task::JoinHandle<()>,
    std::thread::JoinHandle<()>,
    tokio::task::JoinHandle<()>,
);

struct Inner<SM: StateMachine> {
    id: NodeId,
    config: Config,
    channels: Channels<SM>,
    metrics: watch::Receiver<Metrics>,
    handles: Mutex<Option<Handles>>,
    network: Option<InMemoryNetwork>,
    snapshots: SnapshotStore,
    queue: Arc<ProposalQueue<SM::Response>>,
}

/// A running node. Cheap to clone; every clone talks to the same node.
pub struct Node<SM: StateMachine> {
    inner: Arc<Inner<SM>>,
}

impl<SM: StateMachine> Clone for Node<SM> {
    fn clone(&self) -> Self {
        Node {
            inner: self.inner.clone(),
        }
    }
}

impl<SM: StateMachine> Node<SM> {
    fn channels(&self) -> &Channels<SM> {
        &self.inner.channels
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    fn submit(&self, req: Request<SM>) -> Result<(), Error> {
        self.inner
            .channels
            .requests
            .try_send(req)
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Error::Overloaded,
                mpsc::error::TrySendError::Closed(_) => Error::Shutdown,
            })
    }

    async fn wait<T>(&self, rx: oneshot::Receiver<Result<T, Error>>) -> Result<T, Error> {
        match tokio::time::timeout(self.inner.config.request_timeout(), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Shutdown),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Replicates `command`; resolves once it is committed and applied on
    /// this node, with the state machine's response.
    pub async fn propose(&self, command: Vec<u8>) -> Result<Proposed<SM::Response>, Error> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .queue
            .push((command, reply))
            .map_err(|(e, _)| e)?;
        // No timer per proposal: the core answers `Timeout` itself.
        let (index, response) = rx.await.map_err(|_| Error::Shutdown)??;
        Ok(Proposed { index, response })
    }

    /// Runs `query` on the state machine under `policy`.
    pub async fn read<R: Send + 'static>(
        &self,
        policy: ReadPolicy,
        query: impl FnOnce(&SM) -> R + Send + 'static,
    ) -> Result<R, Error> {
        let (tx, rx) = oneshot::channel();
        let job = Box::new(move |sm: Result<&SM, Error>| {
            let _ = tx.send(sm.map(query));
        });
        self.submit(Request::Read { policy, job })?;
        self.wait(rx).await
    }

    /// Proposes a membership change; resolves once it is applied here.
    pub async fn change_membership(&self, change: ConfChange) -> Result<LogIndex, Error> {
        let (reply, rx) = oneshot::channel();
        self.submit(Request::ConfChange { change, reply })?;
        self.wait(rx).await
    }

    async fn one_step(&self, step: ConfChangeStep) -> Result<LogIndex, Error> {
        self.change_membership(ConfChange {
            transition: ConfChangeTransition::Auto,
            steps: vec![step],
        })
        .await
    }

    /// Adds `id` as a learner (it receives the log but does not vote).
    pub async fn add_learner(&self, id: u64) -> Result<LogIndex, Error> {
        self.one_step(ConfChangeStep::AddLearner(NodeId(id))).await
    }

    /// Makes `id` a voter (adding it, or promoting a learner).
    pub async fn add_voter(&self, id: u64) -> Result<LogIndex, Error> {
        self.one_step(ConfChangeStep::AddVoter(NodeId(id))).await
    }

    /// Removes `id` from the cluster.
    pub async fn remove_node(&self, id: u64) -> Result<LogIndex, Error> {
        self.one_step(ConfChangeStep::Remove(NodeId(id))).await
    }

    /// Hands leadership to `to` (this node must be the leader).
    pub async fn transfer_leadership(&self, to: u64) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.submit(Request::Transfer {
            to: NodeId(to),
            reply,
        })?;
        self.wait(rx).await
    }

    /// The node's current state.
    pub fn status(&self) -> Metrics {
        self.inner.metrics.borrow().clone()
    }

    /// A channel that sees every change of the node's state.
    pub fn metrics(&self) -> watch::Receiver<Metrics> {
        self.inner.metrics.clone()
    }

    /// Waits until `pred` holds for the node's state, or `timeout` passes.
    pub async fn wait_for(
        &self,
        timeout: std::time::Duration,
        mut pred: impl FnMut(&Metrics) -> bool,
    ) -> Result<Metrics, Error> {
        let mut rx = self.metrics();
        let fut = async {
            loop {
                {
                    let m = rx.borrow_and_update();
                    if pred(&m) {
                        return Ok(m.clone());
                    }
                }
                if rx.changed().await.is_err() {
                    return Err(Error::Shutdown);
                }
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .unwrap_or(Err(Error::Timeout))
    }

    /// Hands an inbound message (from a custom transport) to the node.
    pub fn deliver(&self, msg: Message, snapshot: Option<SnapshotData>) {
        let _ = self
            .inner
            .channels
            .events
            .send(Event::Message(msg, snapshot));
    }

    /// Starts receiving a snapshot a leader is sending (for transports): push
    /// each frame of the leader's [`SnapshotData::frames`] in order, then
    /// [`SnapshotReceiver::finish`] and pass the result to
    /// [`Node::deliver`] with the `InstallSnapshot` message. The frames go
    /// straight to this node's snapshot directory (or memory for memory
    /// storage), checked one by one.
    pub fn snapshot_receiver(
        &self,
        meta: dengine_core::SnapshotMeta,
    ) -> std::io::Result<SnapshotReceiver> {
        self.inner.snapshots.receiver(meta)
    }

    /// Tells the node whether a snapshot it sent to `to` arrived.
    pub fn report_snapshot(&self, to: NodeId, delivered: bool) {
        let _ = self
            .inner
            .channels
            .events
            .send(Event::SnapshotReport(to, delivered));
    }

    /// Stops the node: pending requests fail with `Shutdown`, the disk
    /// thread and the apply task finish what they have, and storage is
    /// closed.
    pub async fn shutdown(&self) -> Result<(), Error> {
        if let Some(net) = &self.inner.network {
            net.unregister(self.inner.id);
        }
        let _ = self.inner.channels.requests.send(Request::Shutdown).await;
        let handles = match self.inner.handles.lock() {
            Ok(mut h) => h.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some((task, disk, apply)) = handles {
            let _ = task.await;
            let _ = apply.await;
            let joined = tokio::task::spawn_blocking(move || {
                let _ = disk.join();
            })
            .await;
            if joined.is_err() {
                return Err(Error::Shutdown);
            }
        }
        Ok(())
    }
}

impl<T: crate::typed::TypedStateMachine> Node<crate::typed::Typed<T>> {
    /// Proposes a typed command (encoded with [`crate::typed::encode`]);
    /// resolves with the state machine's response once it is applied here.
    pub async fn propose_command(
        &self,
        command: &T::Command,
    ) -> Result<Proposed<T::Response>, Error> {
        let bytes = crate::typed::encode(command).map_err(|e| Error::Invalid(e.to_string()))?;
        let p = self.propose(bytes).await?;
        match p.response {
            Ok(response) => Ok(Proposed {
                index: p.index,
                response,
            }),
            Err(e) => Err(Error::Invalid(e.to_string())),
        }
    }
}

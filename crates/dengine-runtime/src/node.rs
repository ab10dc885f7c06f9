//! The application's handle on a running node, and how to start one.

use std::sync::{Arc, Mutex};

use dengine_core::{
    ConfChange, ConfChangeStep, ConfChangeTransition, LogIndex, LogStore, Message, NodeId,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{Config, StorageKind};
use crate::error::Error;
use crate::runtime::supervisor::Threads;
use crate::runtime::telemetry;
use crate::runtime::{
    Channels, CommitNoticeTimer, CoreLoop, DataSnapshot, DiskReports, Metrics, ProposalQueue,
    ReadLimit, ReadPolicy, Request, Store, TickClock, spawn_applier, spawn_disk_thread, supervise,
};
use crate::snapshot::{SnapshotData, SnapshotReceiver, SnapshotStore};
use crate::state_machine::StateMachine;
use crate::transport::{InMemoryNetwork, SnapshotDone, Transport, Unreachable};

mod open;

use open::{Bootstrap, Opened, open_and_restore};

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
    bootstrap_context: Vec<u8>,
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
            bootstrap_context: Vec::new(),
            store: None,
        }
    }

    /// The voters of a new cluster, this node among them. Only used when
    /// the node's storage is empty; a node started without members joins an
    /// existing cluster once a member adds it.
    pub fn initial_members(mut self, members: impl IntoIterator<Item = NodeId>) -> Self {
        self.initial_members = members.into_iter().collect();
        self
    }

    /// Bytes the first entry of a new cluster (the membership change that
    /// makes the initial members its voters) carries as its `context`,
    /// handed to [`StateMachine::apply_membership`] like the context of any
    /// later change: the members' metadata, say. It must be the same on
    /// every initial member. Only used when the storage is empty.
    pub fn bootstrap_context(mut self, context: Vec<u8>) -> Self {
        self.bootstrap_context = context;
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

    /// Validates the settings, opens storage (checking it belongs to this
    /// cluster and node), restores the state machine and starts the node.
    /// Must be called inside a tokio runtime; opening storage and restoring
    /// a snapshot run on the blocking pool, never on the async workers.
    pub async fn build(self) -> Result<Node<SM>, Error> {
        let NodeBuilder {
            config,
            state_machine,
            transport,
            network,
            initial_members,
            bootstrap_context,
            store,
        } = self;
        config.validate()?;
        let id = NodeId(config.node_id);
        let inline = config.storage == StorageKind::Memory && store.is_none();
        let opened = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || {
                let bootstrap = Bootstrap {
                    voters: initial_members,
                    context: bootstrap_context,
                };
                open_and_restore(&config, store, bootstrap, state_machine)
            })
            .await
            .map_err(|e| Error::Fatal(format!("opening the node's storage panicked: {e}")))??
        };
        let Opened {
            raw,
            store,
            state_machine,
            applied,
            snapshots,
            known_snapshot,
        } = opened;
        let snapshot_at = known_snapshot
            .as_ref()
            .map_or(LogIndex::ZERO, |d| d.meta().last_index);

        let (req_tx, req_rx) = mpsc::channel(config.max_pending_requests);
        let (inbox_tx, inbox_rx) = mpsc::channel(crate::runtime::INBOX);
        let queue = Arc::new(ProposalQueue::new(config.max_pending_requests));
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (disk_tx, disk_rx) = std::sync::mpsc::channel();
        let (apply_tx, apply_rx) = mpsc::unbounded_channel();
        let transport = match (transport, &network) {
            (Some(t), _) => t,
            (None, Some(net)) => net.transport(id),
            (None, None) => Arc::new(NoTransport),
        };
        let disk_reports = Arc::new(DiskReports::new(ev_tx.clone()));
        let disk = spawn_disk_thread(
            store.clone(),
            snapshots.clone(),
            transport.clone(),
            disk_rx,
            disk_reports.clone(),
            ev_tx.clone(),
        )
        .map_err(|e| Error::Storage(format!("starting the disk thread: {e}")))?;
        let apply = spawn_applier(
            state_machine,
            applied,
            snapshots.clone(),
            apply_rx,
            ev_tx.clone(),
        );
        let loop_events = ev_tx.clone();
        let channels = Channels {
            requests: req_tx,
            inbox: inbox_tx,
            events: ev_tx,
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
            snapshot_failures: 0,
            last_snapshot_failure: None,
        });
        let timeout_ticks = (config.request_timeout_ms / config.tick_ms).max(1);
        let core = CoreLoop {
            raw,
            transport,
            requests: req_rx,
            inbox: inbox_rx,
            events: ev_rx,
            events_tx: loop_events,
            disk_reports,
            disk: disk_tx,
            apply: apply_tx,
            metrics: metrics_tx.clone(),
            clock: TickClock::new(config.tick(), std::time::Instant::now()),
            proposals: Default::default(),
            queue: queue.clone(),
            changes: Default::default(),
            reads: Default::default(),
            next_read: 0,
            snapshots: known_snapshot
                .into_iter()
                .map(|d| (d.meta().last_index, d))
                .collect(),
            incoming: Default::default(),
            snapshot_store: snapshots.clone(),
            importing: Default::default(),
            data_snapshot: DataSnapshot::None,
            applied,
            fatal: None,
            batch: Vec::new(),
            traces: Default::default(),
            snapshots_installed: 0,
            snapshot_made_at: snapshot_at,
            snapshot_failures: 0,
            last_snapshot_failure: None,
            timeout_ticks,
            // Only the built-in memory store, which never blocks, is written
            // from the core task; a store of the application's goes through
            // the disk thread whatever the settings say.
            inline_store: inline.then(|| store.clone()),
            disk_jobs: 0,
            held_commit: Default::default(),
            commit_notices: CommitNoticeTimer::new(config.commit_notice_hold()),
            transfer: None,
            published: metrics_tx.borrow().clone(),
            progress_tick: 0,
        };
        let task = tokio::spawn(core.run());
        let supervisor = tokio::spawn(supervise(
            task,
            Threads { disk, apply },
            metrics_tx,
            queue.clone(),
        ));
        let reads = ReadLimit::new(config.max_pending_requests);
        let node = Node {
            inner: Arc::new(Inner {
                id,
                config,
                channels,
                metrics: metrics_rx,
                supervisor: Mutex::new(Some(supervisor)),
                network: network.clone(),
                snapshots,
                queue,
                reads,
            }),
        };
        if let Some(net) = network {
            let inbox = node.channels().inbox.clone();
            net.register(
                id,
                Arc::new(move |m: Message, d: Option<SnapshotData>| {
                    inbox.try_send((m, d, Vec::new())).is_ok()
                }),
            );
        }
        Ok(node)
    }
}

struct NoTransport;
impl Transport for NoTransport {
    fn send(&self, msg: Message) -> Result<(), Unreachable> {
        tracing::trace!(to = %msg.to, "no transport configured; message dropped");
        Err(Unreachable)
    }

    fn send_snapshot(&self, msg: Message, _: SnapshotData, done: SnapshotDone) {
        tracing::trace!(to = %msg.to, "no transport configured; snapshot dropped");
        done.failed();
    }
}

struct Inner<SM: StateMachine> {
    id: NodeId,
    config: Config,
    channels: Channels<SM>,
    metrics: watch::Receiver<Metrics>,
    /// Ends once the node's tasks and threads are all done.
    supervisor: Mutex<Option<tokio::task::JoinHandle<()>>>,
    network: Option<InMemoryNetwork>,
    snapshots: SnapshotStore,
    queue: Arc<ProposalQueue<SM::Response>>,
    reads: Arc<ReadLimit>,
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
                mpsc::error::TrySendError::Closed(_) => self.stopped(),
            })
    }

    /// Waits for an answer, at most the request timeout.
    async fn wait<T>(&self, rx: oneshot::Receiver<Result<T, Error>>) -> Result<T, Error> {
        match tokio::time::timeout(self.inner.config.request_timeout(), rx).await {
            Ok(Ok(r)) => r,
            // The answer was dropped unanswered: a part of the node died.
            Ok(Err(_)) => Err(self.stopped_soon().await),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Replicates `command`; resolves once it is committed and applied on
    /// this node, with the state machine's response, or with `Timeout`
    /// once the request timeout has passed (the outcome is then unknown).
    /// The command's bytes are shared, never copied, on their way to the
    /// log and to every follower (a `Vec<u8>` or `Bytes` both convert
    /// without a copy).
    pub async fn propose(
        &self,
        command: impl Into<dengine_core::Bytes>,
    ) -> Result<Proposed<SM::Response>, Error> {
        let outcome = self.propose_unrecorded(command.into()).await;
        if let Err(e) = &outcome {
            telemetry::record_refused(e);
        }
        outcome
    }

    async fn propose_unrecorded(
        &self,
        command: dengine_core::Bytes,
    ) -> Result<Proposed<SM::Response>, Error> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .queue
            .push((command, reply, crate::runtime::traces::current()))
            .map_err(|(e, _)| e)?;
        // No timer per proposal (it cost a third of the throughput at 256
        // proposers): the core answers `Timeout` itself once the request
        // timeout has passed on its clock, and if the core task or the
        // apply worker dies the answer is dropped and this fails at once.
        // (A core task blocked for good inside a call would also stall the
        // runtime's timers, so a timer here would not help there.)
        let (index, response) = match rx.await {
            Ok(answer) => answer?,
            Err(_) => return Err(self.stopped_soon().await),
        };
        Ok(Proposed { index, response })
    }

    /// Runs `query` on the state machine under `policy`.
    pub async fn read<R: Send + 'static>(
        &self,
        policy: ReadPolicy,
        query: impl FnOnce(&SM) -> R + Send + 'static,
    ) -> Result<R, Error> {
        telemetry::record_read(policy);
        let started = std::time::Instant::now();
        let outcome = self.read_unrecorded(policy, query).await;
        telemetry::record_read_time(policy, started.elapsed());
        if let Err(e) = &outcome {
            telemetry::record_refused(e);
        }
        outcome
    }

    async fn read_unrecorded<R: Send + 'static>(
        &self,
        policy: ReadPolicy,
        query: impl FnOnce(&SM) -> R + Send + 'static,
    ) -> Result<R, Error> {
        let slot = self.inner.reads.acquire()?;
        let (tx, rx) = oneshot::channel();
        let job = Box::new(move |sm: Result<&SM, Error>| {
            // A query that panics fails its own read, at once and saying
            // why (dropped unanswered, its caller would wait to learn
            // whether the node had stopped, then hear `Shutdown`).
            let answer = sm.and_then(|sm| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| query(sm))).map_err(
                    |panic| {
                        let why = crate::runtime::panic_message(&*panic);
                        tracing::warn!(error = %why, "a read query panicked");
                        Error::Invalid(format!("the read query panicked: {why}"))
                    },
                )
            });
            // The place is given back before the answer leaves: a caller
            // woken by it may read again at once and must find it free.
            drop(slot);
            let _ = tx.send(answer);
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
            context: Vec::new(),
        })
        .await
    }

    /// Adds `id` as a learner (it receives the log but does not vote).
    pub async fn add_learner(&self, id: NodeId) -> Result<LogIndex, Error> {
        self.one_step(ConfChangeStep::AddLearner(id)).await
    }

    /// Makes `id` a voter (adding it, or promoting a learner).
    pub async fn add_voter(&self, id: NodeId) -> Result<LogIndex, Error> {
        self.one_step(ConfChangeStep::AddVoter(id)).await
    }

    /// Removes `id` from the cluster.
    pub async fn remove_node(&self, id: NodeId) -> Result<LogIndex, Error> {
        self.one_step(ConfChangeStep::Remove(id)).await
    }

    /// Hands leadership to `to` (this node must be the leader).
    pub async fn transfer_leadership(&self, to: NodeId) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.submit(Request::Transfer { to, reply })?;
        self.wait(rx).await
    }

    /// The protocol's own view of the node: its logs' indexes, the
    /// membership, and on the leader each member's replication progress
    /// (how far its log is known to match, for a learner's promotion).
    pub async fn raft_status(&self) -> Result<dengine_core::Status, Error> {
        let (reply, rx) = oneshot::channel();
        self.submit(Request::Status { reply })?;
        rx.await.map_err(|_| Error::Shutdown)
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

    /// Hands an inbound message (from a custom transport) to the node, with
    /// the snapshot data of an `InstallSnapshot` message. The node's inbox
    /// is bounded: when it is full the message is dropped and this says
    /// `Overloaded` (Raft sends again); `Shutdown` once the node stopped.
    pub fn deliver(&self, msg: Message, snapshot: Option<SnapshotData>) -> Result<(), Error> {
        self.deliver_traced(msg, snapshot, Vec::new())
    }

    /// [`Node::deliver`] for an append that carries traced writes:
    /// `spans` (made by the transport as children of the leader's spans)
    /// end once the entries are durable on this node.
    pub fn deliver_traced(
        &self,
        msg: Message,
        snapshot: Option<SnapshotData>,
        spans: Vec<tracing::Span>,
    ) -> Result<(), Error> {
        self.inner
            .channels
            .inbox
            .try_send((msg, snapshot, spans))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Error::Overloaded,
                mpsc::error::TrySendError::Closed(_) => self.stopped(),
            })
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

    /// Stops the node: pending requests fail with `Shutdown`, the disk
    /// thread and the apply thread finish what they have, and storage is
    /// closed. Returns once all of them are done.
    pub async fn shutdown(&self) -> Result<(), Error> {
        if let Some(net) = &self.inner.network {
            net.unregister(self.inner.id);
        }
        // Fails only if the core task is gone already.
        let _ = self.inner.channels.requests.send(Request::Shutdown).await;
        let supervisor = match self.inner.supervisor.lock() {
            Ok(mut h) => h.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(s) = supervisor
            && s.await.is_err()
        {
            return Err(Error::Shutdown);
        }
        Ok(())
    }

    /// Why the node stopped, once the core task (or the supervisor) has
    /// published it: an answer dropped by a dying thread can arrive a
    /// moment before the cause does.
    async fn stopped_soon(&self) -> Error {
        let mut rx = self.metrics();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            rx.wait_for(|m| m.fatal.is_some()),
        )
        .await;
        self.stopped()
    }

    /// The error for a request to a node whose core task is gone: why it
    /// stopped if it failed, else `Shutdown`.
    fn stopped(&self) -> Error {
        match &self.inner.metrics.borrow().fatal {
            Some(why) => Error::Fatal(why.clone()),
            None => Error::Shutdown,
        }
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

#[cfg(all(test, feature = "sled"))]
mod tests {
    use super::open::open_store;
    use super::*;
    use dengine_core::{Entry, EntryPayload, LogIndex, LogStorage, LogStore, Term};

    fn config(dir: &std::path::Path) -> Config {
        Config {
            storage: StorageKind::Sled,
            data_dir: dir.to_path_buf(),
            ..Config::default()
        }
    }

    fn entry(i: u64) -> Entry {
        Entry {
            term: Term(1),
            index: LogIndex(i),
            payload: EntryPayload::Normal(vec![i as u8].into()),
        }
    }

    #[test]
    fn a_new_data_dir_gets_the_write_ahead_log_and_an_old_one_keeps_its_sled_log() {
        let new = tempfile::tempdir().unwrap();
        let store = open_store(&config(new.path())).unwrap();
        store.write(None, &[entry(1)], None).unwrap();
        store.sync().unwrap();
        drop(store);
        assert!(new.path().join("wal").is_dir());
        assert!(!new.path().join("log").exists());
        let store = open_store(&config(new.path())).unwrap();
        assert_eq!(store.last_index().unwrap(), LogIndex(1));
        drop(store);

        let old = tempfile::tempdir().unwrap();
        {
            let sled = dengine_storage_sled::SledStore::open(old.path().join("log")).unwrap();
            sled.write(None, &[entry(1), entry(2)], None).unwrap();
            sled.sync().unwrap();
        }
        let store = open_store(&config(old.path())).unwrap();
        assert_eq!(
            store.last_index().unwrap(),
            LogIndex(2),
            "the sled log is read"
        );
        assert!(!old.path().join("wal").exists());
    }
}

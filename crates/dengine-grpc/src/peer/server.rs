//! The receiving side of the peer protocol: the `Peer` gRPC service.
//!
//! Every call's identity is checked first ([`check_caller`]). Raft
//! streams hand each message to the node; a malformed one ends that
//! stream with `INVALID_ARGUMENT` (the sender opens another) and changes
//! nothing. Snapshot calls write frames straight into the node's snapshot
//! store; a transfer that breaks keeps what arrived, so the next call for
//! the same snapshot resumes there.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dengine_core::{LogIndex, Message, MessageBody, NodeId, SnapshotMeta, Term};
use dengine_proto::peer as wire;
use dengine_proto::peer::peer_server::Peer;
use dengine_runtime::snapshot::{SnapshotData, SnapshotReceiver};
use dengine_runtime::{Error, Node, StateMachine};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::convert::message_from_wire;
use super::{KnownMembers, PeerIdentity, check_caller};
use crate::telemetry::peers::{KindCounts, LinkMeter};

/// What the peer service needs of a node: somewhere to deliver messages
/// and to receive snapshots into. Implemented for every [`Node`].
pub trait PeerInbox: Send + Sync + 'static {
    /// Hands a message (and a snapshot's data) to the node.
    fn deliver(&self, msg: Message, snapshot: Option<SnapshotData>) -> Result<(), Error>;
    /// Hands a message carrying traced entries to the node, with the spans
    /// made for them here (see [`Node::deliver_traced`]). By default the
    /// spans are dropped.
    fn deliver_traced(&self, msg: Message, spans: Vec<tracing::Span>) -> Result<(), Error> {
        drop(spans);
        self.deliver(msg, None)
    }
    /// Starts receiving the snapshot `meta` describes.
    fn snapshot_receiver(&self, meta: SnapshotMeta) -> std::io::Result<SnapshotReceiver>;
}

impl<SM: StateMachine> PeerInbox for Node<SM> {
    fn deliver(&self, msg: Message, snapshot: Option<SnapshotData>) -> Result<(), Error> {
        Node::deliver(self, msg, snapshot)
    }

    fn deliver_traced(&self, msg: Message, spans: Vec<tracing::Span>) -> Result<(), Error> {
        Node::deliver_traced(self, msg, None, spans)
    }

    fn snapshot_receiver(&self, meta: SnapshotMeta) -> std::io::Result<SnapshotReceiver> {
        Node::snapshot_receiver(self, meta)
    }
}

/// Proposes the writes other members forward to this one (their clients'
/// writes, when this member leads). The server of the key-value store
/// supplies it; without one, `Forward` is `UNIMPLEMENTED`.
pub trait ForwardTarget: Send + Sync + 'static {
    /// Proposes `commands` together and answers each, in order. `spans`
    /// is empty, or holds each command's span (children of the forwarding
    /// member's spans), to propose it in.
    fn forward(
        &self,
        commands: Vec<bytes::Bytes>,
        spans: Vec<tracing::Span>,
    ) -> Pin<Box<dyn std::future::Future<Output = Vec<wire::ForwardResult>> + Send + '_>>;
}

/// Answers the membership calls of the peer protocol: the changes other
/// members pass to this one (when it leads), and the list a joining
/// member asks for. The key-value server supplies it; without one, both
/// calls are `UNIMPLEMENTED`.
pub trait MembersTarget: Send + Sync + 'static {
    /// Runs a change a member passed on: etcd's request of `method`,
    /// encoded; answers etcd's response, encoded, or etcd's status.
    fn change(
        &self,
        method: wire::member_change_request::Method,
        request: bytes::Bytes,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<bytes::Bytes, Status>> + Send + '_>>;

    /// The cluster's id and its members.
    fn list(&self) -> wire::MembersResponse;
}

/// Answers `HashKv`: the hash of this member's key-value history up to a
/// revision, for a peer's start-up check. The key-value server supplies
/// it; without one, the call is `UNIMPLEMENTED`.
pub trait HashTarget: Send + Sync + 'static {
    /// The hash up to `revision`, or the status of a revision compacted or
    /// not reached yet.
    fn hash_kv(
        &self,
        revision: i64,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<wire::HashKvResponse, Status>> + Send + '_>>;
}

/// How long a broken transfer's frames are kept for a resume.
const PARTIAL_KEPT: Duration = Duration::from_secs(120);

/// Counters of the peer service, for metrics and tests.
#[derive(Debug, Default)]
pub struct PeerServiceStats {
    /// Calls refused by the identity check.
    pub refused_calls: AtomicU64,
    /// Streams ended because a message did not decode or was misaddressed.
    pub malformed: AtomicU64,
    /// Messages handed to the node.
    pub delivered: AtomicU64,
    /// Messages the node's inbox had no room for (dropped).
    pub inbox_full: AtomicU64,
    /// Snapshots received whole.
    pub snapshots_received: AtomicU64,
    /// Snapshot calls that resumed a broken transfer at a non-zero offset.
    pub snapshot_resumes: AtomicU64,
}

type PartialKey = (NodeId, LogIndex, Term);

/// Resolves once `stop` is `true` (never without one).
pub(crate) async fn until_stopped(stop: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    let Some(stop) = stop else {
        return std::future::pending().await;
    };
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Most traced entries of one append that get a span on the follower.
const MAX_TRACES_PER_MESSAGE: usize = 64;

/// The `Peer` service of one node.
#[derive(Clone)]
pub struct PeerService {
    node: Arc<dyn PeerInbox>,
    forward: Option<Arc<dyn ForwardTarget>>,
    member_calls: Option<Arc<dyn MembersTarget>>,
    hashes: Option<Arc<dyn HashTarget>>,
    identity: PeerIdentity,
    members: KnownMembers,
    partial: Arc<Mutex<HashMap<PartialKey, (SnapshotReceiver, Instant)>>>,
    stats: Arc<PeerServiceStats>,
    /// Whether a refused caller was logged already (logged once).
    logged_refusal: Arc<std::sync::atomic::AtomicBool>,
    /// Fault injection: cut the next snapshot call after this many chunks
    /// (taken once).
    cut_after: Arc<Mutex<Option<usize>>>,
    /// Becomes `true` when the member stops: its `Raft` streams end (they
    /// never end on their own, and a graceful stop waits for every call).
    stopping: Option<tokio::sync::watch::Receiver<bool>>,
}

impl PeerService {
    /// The service for `node`, member `identity.me`, taking calls from
    /// `members`.
    pub fn new(node: Arc<dyn PeerInbox>, identity: PeerIdentity, members: KnownMembers) -> Self {
        PeerService {
            node,
            forward: None,
            member_calls: None,
            hashes: None,
            identity,
            members,
            partial: Arc::new(Mutex::new(HashMap::new())),
            stats: Arc::new(PeerServiceStats::default()),
            logged_refusal: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            cut_after: Arc::new(Mutex::new(None)),
            stopping: None,
        }
    }

    /// Ends the `Raft` streams this service serves once `stop` is `true`.
    pub fn with_stop(mut self, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stopping = Some(stop);
        self
    }

    /// Fault injection for tests: the next snapshot call is cut after
    /// `chunks` chunks, as a broken connection would cut it.
    #[doc(hidden)]
    pub fn cut_next_snapshot_after(self, chunks: Option<usize>) -> Self {
        *self.cut_after.lock().unwrap_or_else(|p| p.into_inner()) = chunks;
        self
    }

    /// Takes forwarded writes with `target`.
    pub fn with_forward(mut self, target: Arc<dyn ForwardTarget>) -> Self {
        self.forward = Some(target);
        self
    }

    /// Answers membership calls with `target`.
    pub fn with_members(mut self, target: Arc<dyn MembersTarget>) -> Self {
        self.member_calls = Some(target);
        self
    }

    /// Answers `HashKv` with `target`.
    pub fn with_hashes(mut self, target: Arc<dyn HashTarget>) -> Self {
        self.hashes = Some(target);
        self
    }

    /// The counters of this service.
    pub fn stats(&self) -> Arc<PeerServiceStats> {
        self.stats.clone()
    }

    fn caller<T>(&self, req: &Request<T>) -> Result<NodeId, Status> {
        self.check_identity(req.metadata(), req.remote_addr())
    }

    /// Checks a call's (or a fast link's greeting's) identity; a refusal
    /// is counted, and logged once.
    pub(crate) fn check_identity(
        &self,
        md: &tonic::metadata::MetadataMap,
        remote: Option<std::net::SocketAddr>,
    ) -> Result<NodeId, Status> {
        check_caller(md, &self.identity, &self.members).inspect_err(|s| {
            self.stats.refused_calls.fetch_add(1, Ordering::Relaxed);
            if !self.logged_refusal.swap(true, Ordering::Relaxed) {
                tracing::warn!(reason = s.message(), remote = ?remote,
                    "peer call refused (logged once; counted in the peer stats)");
            }
        })
    }

    /// Ends what serves `Raft` messages once the member stops.
    pub(crate) fn stopping(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.stopping.clone()
    }

    /// Hands a batch's messages from `from` to the node. A malformed or
    /// misaddressed message is an error that ends the stream (or fast
    /// link) it came on; a full inbox drops the message.
    pub(crate) fn deliver_batch(
        &self,
        from: NodeId,
        batch: wire::RaftBatch,
        meter: &LinkMeter,
    ) -> Result<(), Status> {
        if self.members.was_removed(from) {
            // The stream (or link) was opened before the sender was
            // removed. It ends refused as removed, and the sender stops:
            // a removed follower never applies its own removal (the
            // leader stops talking to it), and the others drop their
            // links to it, so this refusal may be all it hears.
            self.stats.refused_calls.fetch_add(1, Ordering::Relaxed);
            let mut status = Status::permission_denied(format!(
                "peer messages from {:x} refused: it was removed from cluster {:x}",
                from.0, self.identity.cluster_id
            ));
            status.metadata_mut().insert(
                super::REMOVED,
                tonic::metadata::MetadataValue::from_static("1"),
            );
            return Err(status);
        }
        let bytes = prost::Message::encoded_len(&batch);
        let mut kinds = KindCounts::default();
        for mut m in batch.messages {
            let traceparents = std::mem::take(&mut m.traceparent);
            let msg = message_from_wire(m)
                .map_err(|e| self.malformed(Status::invalid_argument(e.to_string())))?;
            kinds.add(&msg.body);
            self.check_message(from, &msg)
                .map_err(|s| self.malformed(s))?;
            if matches!(msg.body, MessageBody::InstallSnapshot { .. }) {
                // Its data comes on a Snapshot call, never here.
                return Err(self.malformed(Status::invalid_argument(
                    "InstallSnapshot on a Raft stream (snapshots have their own call)",
                )));
            }
            let delivered = if traceparents.is_empty() {
                self.node.deliver(msg, None)
            } else {
                let spans = self.follower_spans(&traceparents);
                self.node.deliver_traced(msg, spans)
            };
            match delivered {
                Ok(()) => {
                    self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                }
                Err(Error::Overloaded) => {
                    self.stats.inbox_full.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => return Err(Status::unavailable(format!("node: {e}"))),
            }
        }
        meter.batch(bytes, &kinds);
        Ok(())
    }

    fn lock_partial(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<PartialKey, (SnapshotReceiver, Instant)>> {
        match self.partial.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Checks one decoded message against the call it came on.
    fn check_message(&self, from: NodeId, msg: &Message) -> Result<(), Status> {
        if msg.from != from || msg.to != self.identity.me {
            return Err(Status::invalid_argument(format!(
                "message from {} to {} on a stream from {} to {}",
                msg.from, msg.to, from, self.identity.me
            )));
        }
        Ok(())
    }

    /// The spans of an append's traced entries on this follower, children
    /// of the leader's (at most a few per append: a peer cannot make this
    /// member keep many).
    fn follower_spans(&self, traceparents: &[String]) -> Vec<tracing::Span> {
        traceparents
            .iter()
            .take(MAX_TRACES_PER_MESSAGE)
            .map(|tp| {
                let span = tracing::info_span!("raft.follower.append", node = self.identity.me.0);
                crate::telemetry::trace::set_remote_parent(&span, tp);
                span
            })
            .collect()
    }

    /// The spans forwarded writes are proposed in on this member: children
    /// of the forwarding member's, one per command ("" for an untraced one).
    fn forwarded_spans(&self, traceparents: &[String]) -> Vec<tracing::Span> {
        traceparents
            .iter()
            .map(|tp| {
                if tp.is_empty() {
                    return tracing::Span::none();
                }
                let span = tracing::info_span!("raft.forwarded", node = self.identity.me.0);
                crate::telemetry::trace::set_remote_parent(&span, tp);
                span
            })
            .collect()
    }

    pub(crate) fn malformed(&self, s: Status) -> Status {
        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(reason = s.message(), "malformed peer message; stream ended");
        s
    }
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<wire::SnapshotProgress, Status>> + Send>>;

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(
        &self,
        request: Request<Streaming<wire::RaftBatch>>,
    ) -> Result<Response<wire::RaftStreamClosed>, Status> {
        let from = self.caller(&request)?;
        let meter = LinkMeter::receiving(from);
        let mut stream = request.into_inner();
        let mut stopping = self.stopping.clone();
        loop {
            let batch = tokio::select! {
                batch = stream.message() => match batch? {
                    Some(batch) => batch,
                    None => break,
                },
                () = until_stopped(&mut stopping) => break,
            };
            self.deliver_batch(from, batch, &meter)?;
        }
        Ok(Response::new(wire::RaftStreamClosed {}))
    }

    async fn forward(
        &self,
        request: Request<wire::ForwardRequest>,
    ) -> Result<Response<wire::ForwardResponse>, Status> {
        self.caller(&request)?;
        let Some(target) = &self.forward else {
            return Err(Status::unimplemented(
                "Forward is not served by this member",
            ));
        };
        let req = request.into_inner();
        let spans = if req.traceparent.len() == req.commands.len() {
            self.forwarded_spans(&req.traceparent)
        } else {
            Vec::new()
        };
        let results = target.forward(req.commands, spans).await;
        Ok(Response::new(wire::ForwardResponse { results }))
    }

    async fn change_members(
        &self,
        request: Request<wire::MemberChangeRequest>,
    ) -> Result<Response<wire::MemberChangeResponse>, Status> {
        self.caller(&request)?;
        let Some(target) = &self.member_calls else {
            return Err(Status::unimplemented(
                "ChangeMembers is not served by this member",
            ));
        };
        let req = request.into_inner();
        let method = req.method();
        let response = target.change(method, req.request).await?;
        Ok(Response::new(wire::MemberChangeResponse { response }))
    }

    async fn members(
        &self,
        _request: Request<wire::MembersRequest>,
    ) -> Result<Response<wire::MembersResponse>, Status> {
        let Some(target) = &self.member_calls else {
            return Err(Status::unimplemented(
                "Members is not served by this member",
            ));
        };
        Ok(Response::new(target.list()))
    }

    async fn hash_kv(
        &self,
        request: Request<wire::HashKvRequest>,
    ) -> Result<Response<wire::HashKvResponse>, Status> {
        self.caller(&request)?;
        let Some(target) = &self.hashes else {
            return Err(Status::unimplemented("HashKv is not served by this member"));
        };
        let revision = request.into_inner().revision;
        Ok(Response::new(target.hash_kv(revision).await?))
    }

    type SnapshotStream = ProgressStream;

    async fn snapshot(
        &self,
        request: Request<Streaming<wire::SnapshotChunk>>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let from = self.caller(&request)?;
        let mut chunks = request.into_inner();
        let first = chunks
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("snapshot call without a header"))?;
        let header = first
            .header
            .ok_or_else(|| Status::invalid_argument("the first snapshot chunk has no header"))?;
        let msg = header
            .message
            .ok_or_else(|| Status::invalid_argument("snapshot header without its message"))
            .and_then(|m| message_from_wire(m).map_err(|e| Status::invalid_argument(e.to_string())))
            .map_err(|s| self.malformed(s))?;
        self.check_message(from, &msg)
            .map_err(|s| self.malformed(s))?;
        let MessageBody::InstallSnapshot { meta } = &msg.body else {
            return Err(self.malformed(Status::invalid_argument(
                "snapshot header whose message is not InstallSnapshot",
            )));
        };
        let key = (from, meta.last_index, meta.last_term);
        let resumed = {
            let mut partial = self.lock_partial();
            partial.retain(|_, (_, at)| at.elapsed() < PARTIAL_KEPT);
            partial.remove(&key).map(|(r, _)| r)
        };
        let receiver = match resumed {
            Some(r) => {
                self.stats.snapshot_resumes.fetch_add(1, Ordering::Relaxed);
                r
            }
            None => self
                .node
                .snapshot_receiver(meta.clone())
                .map_err(|e| Status::unavailable(format!("receiving snapshot: {e}")))?,
        };
        let (tx, rx) = mpsc::channel(4);
        let cut_after = self
            .cut_after
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let receive = Receive {
            service: self.clone(),
            key,
            msg,
            receiver: Some(receiver),
            total_len: header.total_len,
            cut_after,
        };
        tokio::spawn(receive.run(chunks, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// One snapshot call in progress.
struct Receive {
    service: PeerService,
    key: PartialKey,
    msg: Message,
    receiver: Option<SnapshotReceiver>,
    total_len: u64,
    /// Fault injection: end the call after this many chunks.
    cut_after: Option<usize>,
}

type Answers = mpsc::Sender<Result<wire::SnapshotProgress, Status>>;

impl Receive {
    async fn run(mut self, mut chunks: Streaming<wire::SnapshotChunk>, answers: Answers) {
        let outcome = self.receive(&mut chunks, &answers).await;
        match outcome {
            Ok(()) => {}
            Err(status) => {
                let _ = answers.send(Err(status)).await;
            }
        }
        // Whatever arrived of an unfinished transfer waits for a resume.
        if let Some(r) = self.receiver.take() {
            self.service
                .lock_partial()
                .insert(self.key, (r, Instant::now()));
        }
    }

    async fn receive(
        &mut self,
        chunks: &mut Streaming<wire::SnapshotChunk>,
        answers: &Answers,
    ) -> Result<(), Status> {
        let received = |r: &Option<SnapshotReceiver>| r.as_ref().map_or(0, |r| r.received_len());
        let progress = |received, complete| wire::SnapshotProgress { received, complete };
        answers
            .send(Ok(progress(received(&self.receiver), false)))
            .await
            .map_err(|_| Status::cancelled("sender went away"))?;
        let mut taken = 0usize;
        while let Some(chunk) = chunks.message().await? {
            let Some(receiver) = self.receiver.as_mut() else {
                break;
            };
            if self.cut_after == Some(taken) {
                return Err(Status::unavailable("snapshot call cut (fault injection)"));
            }
            taken += 1;
            if chunk.offset != receiver.received_len() {
                return Err(Status::invalid_argument(format!(
                    "snapshot chunk at offset {}, expected {}",
                    chunk.offset,
                    receiver.received_len()
                )));
            }
            let mut rest: &[u8] = &chunk.frames;
            while !rest.is_empty() {
                let len = frame_len(rest).ok_or_else(|| {
                    Status::invalid_argument("snapshot chunk ends inside a frame")
                })?;
                let (frame, tail) = rest.split_at(len);
                receiver.push(frame).map_err(|e| {
                    Status::data_loss(format!(
                        "snapshot frame at offset {} refused: {e}",
                        receiver.received_len()
                    ))
                })?;
                rest = tail;
            }
            let got = receiver.received_len();
            if got > self.total_len {
                return Err(Status::invalid_argument(
                    "more snapshot bytes than announced",
                ));
            }
            if got == self.total_len {
                return self.complete(answers).await;
            }
            let _ = answers.send(Ok(progress(got, false))).await;
        }
        Ok(())
    }

    /// Makes the snapshot durable and hands it to the node.
    async fn complete(&mut self, answers: &Answers) -> Result<(), Status> {
        let Some(receiver) = self.receiver.take() else {
            return Ok(());
        };
        let total = receiver.received_len();
        let data = tokio::task::spawn_blocking(move || receiver.finish())
            .await
            .map_err(|e| Status::internal(format!("finishing the snapshot: {e}")))?
            .map_err(|e| Status::data_loss(format!("finishing the snapshot: {e}")))?;
        self.service
            .node
            .deliver(self.msg.clone(), Some(data))
            .map_err(|e| Status::unavailable(format!("node: {e}")))?;
        self.service
            .stats
            .snapshots_received
            .fetch_add(1, Ordering::Relaxed);
        let _ = answers
            .send(Ok(wire::SnapshotProgress {
                received: total,
                complete: true,
            }))
            .await;
        Ok(())
    }
}

/// The length of the frame at the start of `bytes` (header included), if
/// it is all there.
fn frame_len(bytes: &[u8]) -> Option<usize> {
    let head = bytes.first_chunk::<4>()?;
    let len = u32::from_le_bytes(*head) as usize;
    let total = len.checked_add(8)?;
    (bytes.len() >= total).then_some(total)
}

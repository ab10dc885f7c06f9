//! The sending side of the peer protocol: a [`Transport`] over gRPC.
//!
//! Per peer, one bounded queue and one task. The task keeps one
//! long-lived `Raft` stream open and sends what the queue holds in
//! batches: it never waits for an answer before sending the next batch
//! (the core's in-flight window is the flow control, HTTP/2's windows the
//! back-pressure). When the peer is slow or down the queue fills and new
//! messages are dropped (Raft sends again), so memory stays bounded. A
//! broken stream is opened again after a capped, jittered backoff.
//!
//! Where the peer is reached over plain TCP, Raft messages go on the fast
//! link instead (`super::fast`), written to the socket by the sender; the
//! queue and its stream serve a peer that turned the fast link down.
//!
//! Snapshots go on a call of their own per transfer, as the snapshot
//! file's frames; a broken transfer is resumed where the receiver says it
//! stopped, a few times, before the leader hears it failed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dengine_core::{Message, NodeId};
use dengine_proto::peer::peer_client::PeerClient;
use dengine_runtime::snapshot::SnapshotData;
use dengine_runtime::{SnapshotDone, Transport, Unreachable};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use super::fast::FastLink;
use super::feed::{Feed, LinkShared};
use super::{PeerIdentity, backoff};
use crate::telemetry::peers::LinkMeter;
use crate::tls::Tls;

/// Tuning of the peer links.
#[derive(Clone, Debug)]
pub struct PeerLinkConfig {
    /// Messages queued per peer before new ones are dropped.
    pub queue_len: usize,
    /// Most bytes of entries in one batch on the wire (a batch holds at
    /// least one message, whatever its size).
    pub max_batch_bytes: u64,
    /// Largest gRPC message sent or received on peer calls.
    pub max_message_bytes: usize,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// Bytes of frames in one snapshot chunk.
    pub snapshot_chunk_bytes: usize,
    /// Attempts at one snapshot transfer (each resuming the last) before
    /// the leader hears it failed.
    pub snapshot_attempts: u32,
    /// Fault injection for tests: the first snapshot call this member
    /// receives is cut after this many chunks (as a broken connection
    /// would cut it). `None` in production.
    #[doc(hidden)]
    pub cut_first_snapshot_after_chunks: Option<usize>,
    /// TLS towards peers whose URL is `https://` (this member's peer
    /// certificate as its identity, the peer CA to check theirs). The
    /// server sets it from [`crate::server::ServerConfig::peer_tls`].
    pub tls: Option<Arc<Tls>>,
    /// Raft messages to peers reached over plain TCP go on the fast link
    /// (`peer::fast`) rather than the `Raft` gRPC stream; the member's
    /// server also takes fast links on its peer port. Off, this member
    /// speaks only gRPC to its peers, as members before the fast link did.
    pub fast_link: bool,
}

impl Default for PeerLinkConfig {
    fn default() -> Self {
        PeerLinkConfig {
            queue_len: 4096,
            max_batch_bytes: 4 << 20,
            max_message_bytes: 16 << 20,
            connect_timeout: Duration::from_secs(1),
            snapshot_chunk_bytes: 1 << 20,
            snapshot_attempts: 5,
            cut_first_snapshot_after_chunks: None,
            tls: None,
            fast_link: true,
        }
    }
}

/// Counters of one transport, for metrics and tests.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Messages dropped because a peer's queue was full.
    pub dropped: AtomicU64,
    /// Batches written to peer streams.
    pub batches: AtomicU64,
    /// Messages written to peer streams.
    pub messages: AtomicU64,
    /// Raft gRPC streams opened (the first and every reconnect).
    pub streams_opened: AtomicU64,
    /// Fast links opened (the first and every reconnect).
    pub fast_links_opened: AtomicU64,
    /// Peers that turned the fast link down (their messages then go on
    /// the `Raft` stream).
    pub fast_declined: AtomicU64,
    /// Snapshot bytes sent (resumed transfers count only what was sent).
    pub snapshot_bytes: AtomicU64,
    /// Snapshot transfers that resumed at a non-zero offset.
    pub snapshot_resumes: AtomicU64,
}

/// A message on its way to a peer, with the trace context of the traced
/// entries it carries (almost always none).
pub(crate) type Outgoing = (Message, Vec<String>);

struct Link {
    queue: mpsc::Sender<Outgoing>,
    meter: Arc<LinkMeter>,
    channel: Channel,
    /// Whether the stream to this peer is up (messages to a peer that is
    /// down are reported unreachable, so the leader probes instead of
    /// streaming into the void).
    up: Arc<AtomicBool>,
    /// The fast link, for a peer reached over plain TCP (unless the peer
    /// turned it down: then the queue and its `Raft` stream serve).
    fast: Option<Arc<FastLink>>,
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(fast) = &self.fast {
            fast.close();
        }
    }
}

struct Inner {
    identity: PeerIdentity,
    config: PeerLinkConfig,
    links: RwLock<HashMap<NodeId, Link>>,
    stats: Arc<LinkStats>,
    /// Set once a peer refused this member as removed from the cluster.
    removed: tokio::sync::watch::Sender<bool>,
}

/// A [`Transport`] that reaches peers over gRPC (see the module docs).
#[derive(Clone)]
pub struct GrpcTransport {
    inner: Arc<Inner>,
}

impl GrpcTransport {
    /// A transport for the member `identity.me` of cluster
    /// `identity.cluster_id`, with no peers yet. Must be made inside a
    /// tokio runtime (each peer gets a task).
    pub fn new(identity: PeerIdentity, config: PeerLinkConfig) -> GrpcTransport {
        GrpcTransport {
            inner: Arc::new(Inner {
                identity,
                config,
                links: RwLock::new(HashMap::new()),
                stats: Arc::new(LinkStats::default()),
                removed: tokio::sync::watch::channel(false).0,
            }),
        }
    }

    /// Becomes `true` once a peer refuses this member as removed from the
    /// cluster (a member removed while it could not hear of it learns it
    /// this way).
    pub fn removed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.removed.subscribe()
    }

    /// The counters of this transport.
    pub fn stats(&self) -> Arc<LinkStats> {
        self.inner.stats.clone()
    }

    /// Adds (or replaces) peer `id`, reached at `url` (`http://host:port`).
    pub fn add_peer(&self, id: NodeId, url: &str) -> Result<(), tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(crate::tls::plain_scheme(url))?
            .connect_timeout(self.inner.config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = crate::tls::peer_channel(&endpoint, url, self.inner.config.tls.as_ref());
        let (tx, rx) = mpsc::channel(self.inner.config.queue_len.max(1));
        let up = Arc::new(AtomicBool::new(true));
        let meter = Arc::new(LinkMeter::sending(id));
        let shared = Arc::new(LinkShared {
            queue: tokio::sync::Mutex::new(rx),
            generation: AtomicU64::new(0),
            up: up.clone(),
            meter: meter.clone(),
            max_batch_bytes: self.inner.config.max_batch_bytes,
            stats: self.inner.stats.clone(),
        });
        tokio::spawn(stream_messages(
            self.inner.clone(),
            id,
            channel.clone(),
            shared,
        ));
        let fast = self.fast_address(url).map(|addr| {
            let fast = Arc::new(FastLink::new(
                id,
                up.clone(),
                meter.clone(),
                self.inner.stats.clone(),
                self.inner.config.max_batch_bytes as usize * 4,
                self.inner.config.max_message_bytes,
            ));
            tokio::spawn(fast.clone().run(
                addr,
                self.inner.identity.clone(),
                self.inner.config.connect_timeout,
                self.inner.removed.clone(),
            ));
            fast
        });
        let link = Link {
            queue: tx,
            meter,
            channel,
            up,
            fast,
        };
        // Replacing a link drops its queue's sender: the old task ends.
        self.write().insert(id, link);
        Ok(())
    }

    /// Where the fast link to a peer at `url` connects (`host:port`), if
    /// it is to have one: enabled, plain TCP, and no peer TLS.
    fn fast_address(&self, url: &str) -> Option<String> {
        if !self.inner.config.fast_link || self.inner.config.tls.is_some() {
            return None;
        }
        let rest = url.strip_prefix("http://")?;
        let authority = rest.split('/').next()?;
        (!authority.is_empty()).then(|| authority.to_string())
    }

    /// Whether the stream to peer `id` is up (an unknown peer is not).
    pub fn is_connected(&self, id: NodeId) -> bool {
        self.read()
            .get(&id)
            .is_some_and(|l| l.up.load(Ordering::Relaxed))
    }

    /// The connection to peer `id` (shared by every call to it).
    pub fn channel(&self, id: NodeId) -> Option<Channel> {
        self.read().get(&id).map(|l| l.channel.clone())
    }

    /// Forgets peer `id` (it left the cluster); its task ends.
    pub fn remove_peer(&self, id: NodeId) {
        self.write().remove(&id);
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<NodeId, Link>> {
        match self.inner.links.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<NodeId, Link>> {
        match self.inner.links.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

impl Transport for GrpcTransport {
    fn send(&self, msg: Message) -> Result<(), Unreachable> {
        self.queue(msg, Vec::new())
    }

    fn send_traced(&self, msg: Message, spans: Vec<tracing::Span>) -> Result<(), Unreachable> {
        let traceparents = spans
            .iter()
            .filter_map(crate::telemetry::trace::traceparent)
            .collect();
        self.queue(msg, traceparents)
    }

    fn send_snapshot(&self, msg: Message, data: SnapshotData, done: SnapshotDone) {
        self.send_snapshot_data(msg, data, done);
    }
}

impl GrpcTransport {
    fn queue(&self, msg: Message, traceparents: Vec<String>) -> Result<(), Unreachable> {
        let links = self.read();
        let Some(link) = links.get(&msg.to) else {
            return Err(Unreachable);
        };
        if let Some(fast) = &link.fast
            && !fast.declined()
        {
            return fast.send((msg, traceparents));
        }
        let up = link.up.load(Ordering::Relaxed);
        match link.queue.try_send((msg, traceparents)) {
            Ok(()) if up => Ok(()),
            // Queued for when the stream is back, but the leader should
            // probe rather than pipeline meanwhile.
            Ok(()) => Err(Unreachable),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.inner.stats.dropped.fetch_add(1, Ordering::Relaxed);
                link.meter.dropped(1);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Unreachable),
        }
    }

    fn send_snapshot_data(&self, msg: Message, data: SnapshotData, done: SnapshotDone) {
        let channel = match self.read().get(&msg.to) {
            Some(link) => link.channel.clone(),
            None => {
                done.failed();
                return;
            }
        };
        tokio::spawn(super::snapshot_send::send_snapshot(
            self.inner.identity.clone(),
            self.inner.config.clone(),
            self.inner.stats.clone(),
            channel,
            msg,
            data,
            done,
        ));
    }
}

/// Attaches the identity metadata every peer call carries.
pub(crate) fn with_identity<T>(identity: &PeerIdentity, to: NodeId, body: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(body);
    identity.stamp(req.metadata_mut(), to);
    req
}

/// Keeps the `Raft` stream to peer `to` open; its body takes what the
/// link's queue holds (see [`Feed`]).
async fn stream_messages(inner: Arc<Inner>, to: NodeId, channel: Channel, shared: Arc<LinkShared>) {
    let mut failures = 0u32;
    loop {
        // A stream is opened for a message to send, not before.
        let first = match shared.queue.lock().await.recv().await {
            Some(m) => m,
            None => return, // the peer was removed
        };
        let reached = Arc::new(AtomicBool::new(false));
        let feed = Feed::new(shared.clone(), first, reached.clone());
        let mut client = PeerClient::new(channel.clone())
            .max_decoding_message_size(inner.config.max_message_bytes)
            .max_encoding_message_size(inner.config.max_message_bytes);
        let req = with_identity(&inner.identity, to, feed);
        inner.stats.streams_opened.fetch_add(1, Ordering::Relaxed);
        shared.meter.stream_opened();
        let ended = client.raft(req).await;
        // The body, should the connection still hold it, takes no more.
        shared.generation.fetch_add(1, Ordering::AcqRel);
        if reached.load(Ordering::Relaxed) {
            failures = 0;
        }
        match ended {
            Ok(_) => tracing::debug!(peer = %to, "peer stream closed by the peer"),
            Err(status) => {
                if status.metadata().get(super::REMOVED).is_some() {
                    inner.removed.send_replace(true);
                }
                if failures == 0 {
                    tracing::warn!(peer = %to, code = ?status.code(), message = status.message(),
                        "peer stream failed; reconnecting");
                }
            }
        }
        shared.up.store(false, Ordering::Relaxed);
        failures = failures.saturating_add(1);
        tokio::time::sleep(backoff(failures)).await;
        // What queued while the link was down is stale by now (Raft sends
        // again what still matters), except that keeping it would replay
        // old appends: drop it.
        let mut queue = shared.queue.lock().await;
        while queue.try_recv().is_ok() {
            inner.stats.dropped.fetch_add(1, Ordering::Relaxed);
            shared.meter.dropped(1);
        }
    }
}

//! The caller's side of a fast link: messages written to the socket by
//! the thread that sends them, and a task that connects, greets, writes
//! what could not go at once, and finds out when the connection is gone.

use std::io::ErrorKind;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dengine_core::NodeId;
use dengine_proto::peer as wire;
use dengine_runtime::Unreachable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::{ACCEPTED, GREETING_LEN, REMOVED, REPLY, greeting, put_frame};
use crate::peer::convert::message_to_wire;
use crate::peer::transport::{LinkStats, Outgoing};
use crate::peer::{PeerIdentity, backoff};
use crate::telemetry::peers::{KindCounts, LinkMeter};

/// Greetings in a row closed unanswered after which a peer is taken not
/// to speak the fast link (one closed while it stopped is answered on a
/// later attempt).
const DECLINED_AFTER: u32 = 3;

/// One peer's fast link (see the module docs of `fast`).
pub(crate) struct FastLink {
    to: NodeId,
    state: Mutex<State>,
    /// Wakes the link's task: bytes wait to be written, or the link closed.
    wake: Notify,
    closed: AtomicBool,
    /// The peer does not speak the fast link: messages go on the `Raft`
    /// stream instead.
    declined: AtomicBool,
    /// Whether the link to the peer is up (shared with the gRPC stream).
    up: Arc<AtomicBool>,
    meter: Arc<LinkMeter>,
    stats: Arc<LinkStats>,
    /// Most bytes waiting to be written; past it, messages are dropped.
    max_pending: usize,
    /// Largest frame sent.
    max_message_bytes: usize,
}

#[derive(Default)]
struct State {
    /// The connection, once greeted.
    conn: Option<Arc<TcpStream>>,
    /// Frames not yet written, in order (a partial frame first).
    pending: Vec<u8>,
}

/// How a greeting was answered.
enum Greeted {
    Accepted(TcpStream),
    /// The peer answered something else: it does not speak the fast link.
    Declined,
    /// The peer closed the connection without an answer: a member that
    /// does not speak the fast link does (HTTP/2 drops a connection whose
    /// preface is wrong), and so does one that is stopping.
    Closed,
    Removed(String),
    Refused(String),
}

impl FastLink {
    /// A link to `to`, not yet connected; [`FastLink::run`] drives it.
    pub(crate) fn new(
        to: NodeId,
        up: Arc<AtomicBool>,
        meter: Arc<LinkMeter>,
        stats: Arc<LinkStats>,
        max_pending: usize,
        max_message_bytes: usize,
    ) -> FastLink {
        FastLink {
            to,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            declined: AtomicBool::new(false),
            up,
            meter,
            stats,
            max_pending,
            max_message_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the peer turned the fast link down (an older member).
    pub(crate) fn declined(&self) -> bool {
        self.declined.load(Ordering::Relaxed)
    }

    /// Ends the link (the peer was removed or replaced).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Writes `msg` to the connection now if nothing waits before it, else
    /// queues it for the link's task. With no connection the message is
    /// dropped and the peer reported unreachable; with too much waiting it
    /// is dropped (Raft sends again).
    pub(crate) fn send(&self, (msg, traceparent): Outgoing) -> Result<(), Unreachable> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(conn) = &state.conn else {
            self.dropped();
            return Err(Unreachable);
        };
        if state.pending.len() >= self.max_pending {
            self.dropped();
            return Ok(());
        }
        let mut kinds = KindCounts::default();
        kinds.add(&msg.body);
        let mut wire = message_to_wire(msg);
        wire.traceparent = traceparent;
        let batch = wire::RaftBatch {
            messages: vec![wire],
        };
        let len = prost::Message::encoded_len(&batch);
        if len > self.max_message_bytes {
            tracing::warn!(peer = %self.to, bytes = len,
                "a message larger than the peer links carry; dropped");
            self.dropped();
            return Ok(());
        }
        let start = state.pending.len();
        put_frame(&mut state.pending, &batch, len);
        self.meter.batch(len, &kinds);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.messages.fetch_add(1, Ordering::Relaxed);
        if start == 0 {
            // A failed write is the link task's to find (its read fails
            // too): the frame stays queued until then.
            if let Ok(n) = conn.try_write(&state.pending) {
                state.pending.drain(..n);
            }
        }
        if !state.pending.is_empty() {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Counts a message dropped.
    fn dropped(&self) {
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        self.meter.dropped(1);
    }

    /// Keeps the link to `addr` (`host:port`) up until it is closed or the
    /// peer turns it down.
    pub(crate) async fn run(
        self: Arc<Self>,
        addr: String,
        identity: PeerIdentity,
        connect_timeout: Duration,
        removed: tokio::sync::watch::Sender<bool>,
    ) {
        let mut failures = 0u32;
        // Greetings in a row the peer closed without an answer.
        let mut unanswered = 0u32;
        while !self.closed.load(Ordering::Relaxed) {
            let greeted = greet(&addr, &identity, self.to, connect_timeout).await;
            unanswered = match greeted {
                Ok(Greeted::Closed) => unanswered + 1,
                _ => 0,
            };
            let greeted = match greeted {
                Ok(Greeted::Closed) if unanswered >= DECLINED_AFTER => Ok(Greeted::Declined),
                other => other,
            };
            match greeted {
                Ok(Greeted::Accepted(stream)) => {
                    let stream = Arc::new(stream);
                    self.lock().conn = Some(stream.clone());
                    self.up.store(true, Ordering::Relaxed);
                    self.stats.fast_links_opened.fetch_add(1, Ordering::Relaxed);
                    self.meter.stream_opened();
                    failures = 0;
                    let ended = self.drive(&stream).await;
                    {
                        // What waited is stale by the next connection
                        // (Raft sends again what still matters).
                        let mut state = self.lock();
                        state.conn = None;
                        state.pending.clear();
                    }
                    match ended {
                        Ok(()) => return, // closed
                        Err(e) => tracing::warn!(peer = %self.to, error = %e,
                            "fast peer link broke; reconnecting"),
                    }
                }
                Ok(Greeted::Declined) => {
                    tracing::info!(peer = %self.to,
                        "peer does not speak the fast Raft link; using the Raft gRPC stream");
                    self.declined.store(true, Ordering::Relaxed);
                    self.stats.fast_declined.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(Greeted::Removed(why)) => {
                    tracing::warn!(peer = %self.to, reason = why, "peer link refused");
                    removed.send_replace(true);
                }
                Ok(Greeted::Closed) => {
                    tracing::debug!(peer = %self.to, "peer closed the fast link unanswered");
                }
                Ok(Greeted::Refused(why)) => {
                    if failures == 0 {
                        tracing::warn!(peer = %self.to, reason = why, "peer link refused");
                    }
                }
                Err(e) => {
                    if failures == 0 {
                        tracing::warn!(peer = %self.to, error = %e, "peer link failed; reconnecting");
                    }
                }
            }
            self.up.store(false, Ordering::Relaxed);
            failures = failures.saturating_add(1);
            tokio::select! {
                () = tokio::time::sleep(backoff(failures)) => {}
                () = self.wake.notified() => {}
            }
        }
    }

    /// Writes what waits as the socket takes it, until the link is closed
    /// (`Ok`) or the connection fails or is closed by the peer.
    async fn drive(&self, stream: &TcpStream) -> std::io::Result<()> {
        loop {
            if self.closed.load(Ordering::Relaxed) {
                return Ok(());
            }
            let written = {
                let mut state = self.lock();
                if state.pending.is_empty() {
                    None
                } else {
                    Some(
                        stream
                            .try_write(&state.pending)
                            .map(|n| drop(state.pending.drain(..n))),
                    )
                }
            };
            let waiting = match written {
                Some(Ok(())) => continue,
                Some(Err(e)) if e.kind() == ErrorKind::WouldBlock => true,
                Some(Err(e)) => return Err(e),
                None => false,
            };
            tokio::select! {
                ready = stream.writable(), if waiting => ready?,
                () = self.wake.notified(), if !waiting => {}
                ready = stream.readable() => {
                    ready?;
                    // The peer sends nothing after its answer: this is
                    // the connection closing (or a peer gone wrong).
                    let mut byte = [0u8; 1];
                    match stream.try_read(&mut byte) {
                        Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                        Ok(_) => return Err(std::io::Error::new(
                            ErrorKind::InvalidData, "the peer wrote on a fast link")),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
}

/// Connects to `addr` and greets the member `to`.
async fn greet(
    addr: &str,
    identity: &PeerIdentity,
    to: NodeId,
    within: Duration,
) -> std::io::Result<Greeted> {
    let timed_out = || std::io::Error::new(ErrorKind::TimedOut, "connecting timed out");
    let mut stream = tokio::time::timeout(within, TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out())??;
    stream.set_nodelay(true)?;
    let hello: [u8; GREETING_LEN] = greeting(identity.cluster_id, identity.me.0, to.0);
    stream.write_all(&hello).await?;
    let mut head = [0u8; REPLY.len() + 3];
    match tokio::time::timeout(within, stream.read_exact(&mut head)).await {
        Err(_) => return Err(timed_out()),
        Ok(Err(e))
            if matches!(
                e.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
            ) =>
        {
            return Ok(Greeted::Closed);
        }
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) => {}
    }
    if &head[..REPLY.len()] != REPLY {
        return Ok(Greeted::Declined);
    }
    let code = head[REPLY.len()];
    let len = u16::from_le_bytes([head[REPLY.len() + 1], head[REPLY.len() + 2]]);
    let mut reason = vec![0u8; usize::from(len)];
    tokio::time::timeout(within, stream.read_exact(&mut reason))
        .await
        .map_err(|_| timed_out())??;
    let reason = String::from_utf8_lossy(&reason).into_owned();
    Ok(match code {
        ACCEPTED => Greeted::Accepted(stream),
        REMOVED => Greeted::Removed(reason),
        _ => Greeted::Refused(reason),
    })
}

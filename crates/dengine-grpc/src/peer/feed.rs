//! The body of one `Raft` stream to a peer: batches taken straight from
//! the peer's send queue as the HTTP/2 connection asks for them.
//!
//! The queue used to be emptied by the link's task into a small channel
//! the stream's body read from: every message woke that task, then the
//! connection's body task, then the connection. The body now takes from
//! the queue itself, so a message sent by the core (or by the disk thread,
//! for an acknowledgement) wakes the body's task directly: one hand-off
//! less on every message, which at one client is a few per write.
//!
//! A stream that ended is not always dropped at once (the connection may
//! still hold its body for a while). The link numbers its streams, and a
//! body whose number is no longer the current one ends without taking
//! anything, so a dead stream never swallows what a new one should send.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use dengine_proto::peer as wire;
use futures_util::Stream;
use tokio::sync::{Mutex, mpsc};

use super::convert::message_to_wire;
use super::transport::Outgoing;
use crate::telemetry::peers::{KindCounts, LinkMeter};

/// What a link's streams share with the link's task.
pub(crate) struct LinkShared {
    /// The peer's send queue: read by the current stream's body, and by
    /// the link's task while no stream is up.
    pub(crate) queue: Mutex<mpsc::Receiver<Outgoing>>,
    /// The number of the current stream (bumped when one ends).
    pub(crate) generation: AtomicU64,
    /// Whether the stream to the peer is up.
    pub(crate) up: Arc<AtomicBool>,
    pub(crate) meter: Arc<LinkMeter>,
    /// Most bytes of entries in one batch.
    pub(crate) max_batch_bytes: u64,
    pub(crate) stats: Arc<super::transport::LinkStats>,
}

/// The body of stream number `generation` (see the module docs).
pub(crate) struct Feed {
    shared: Arc<LinkShared>,
    generation: u64,
    /// The message that opened the stream, sent first.
    first: Option<Outgoing>,
    /// Whether a batch was handed to the connection yet.
    yielded: bool,
    /// Set once the connection took a second batch: the peer is reachable.
    /// The first proves nothing: it is taken as soon as the connection is
    /// made, and a peer that refuses the stream (a removed member, say)
    /// ends it right after; the link would then never back off further.
    reached: Arc<AtomicBool>,
}

impl Feed {
    /// The body of the current stream, starting with `first`; `reached`
    /// is set once the peer proves reachable.
    pub(crate) fn new(shared: Arc<LinkShared>, first: Outgoing, reached: Arc<AtomicBool>) -> Feed {
        let generation = shared.generation.load(Ordering::Acquire);
        Feed {
            shared,
            generation,
            first: Some(first),
            yielded: false,
            reached,
        }
    }
}

impl Stream for Feed {
    type Item = wire::RaftBatch;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<wire::RaftBatch>> {
        let this = &mut *self;
        if this.shared.generation.load(Ordering::Acquire) != this.generation {
            return Poll::Ready(None);
        }
        // Only the link's task locks the queue otherwise, and only once
        // this stream is no longer the current one: should the two meet,
        // this body looks again at once rather than wait unwoken.
        let Ok(mut queue) = this.shared.queue.try_lock() else {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        };
        let first = match this.first.take() {
            Some(m) => m,
            None => match queue.poll_recv(cx) {
                Poll::Ready(Some(m)) => m,
                // The peer was removed: the stream ends.
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            },
        };
        let batch = take_batch(&this.shared, first, &mut queue);
        if this.yielded && !this.reached.load(Ordering::Relaxed) {
            this.reached.store(true, Ordering::Relaxed);
            this.shared.up.store(true, Ordering::Relaxed);
        }
        this.yielded = true;
        let n = batch.messages.len() as u64;
        this.shared.stats.batches.fetch_add(1, Ordering::Relaxed);
        this.shared.stats.messages.fetch_add(n, Ordering::Relaxed);
        Poll::Ready(Some(batch))
    }
}

/// `first` and whatever else waits, up to the batch's byte budget
/// (counted in the link's meter as it goes on the wire).
fn take_batch(
    shared: &LinkShared,
    first: Outgoing,
    queue: &mut mpsc::Receiver<Outgoing>,
) -> wire::RaftBatch {
    let mut kinds = KindCounts::default();
    let mut bytes = 0;
    let mut messages = Vec::new();
    let mut next = Some(first);
    while let Some((m, traceparent)) = next.take() {
        kinds.add(&m.body);
        bytes += m.body.entries_size();
        let mut wire = message_to_wire(m);
        wire.traceparent = traceparent;
        messages.push(wire);
        if bytes >= shared.max_batch_bytes {
            break;
        }
        next = queue.try_recv().ok();
    }
    let batch = wire::RaftBatch { messages };
    shared
        .meter
        .batch(prost::Message::encoded_len(&batch), &kinds);
    batch
}

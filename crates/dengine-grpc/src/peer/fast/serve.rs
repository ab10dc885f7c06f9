//! The member's side of fast links: the peer port's connections told
//! apart, and each fast link read and handed to the node.

use std::time::Duration;

use dengine_core::NodeId;
use dengine_proto::peer as wire;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tonic::metadata::{MetadataMap, MetadataValue};

use super::{
    ACCEPTED, FRAME_HEADER, FrameError, GREETING_LEN, MAGIC, REFUSED, REMOVED, answer, frame_len,
    parse_greeting,
};
use crate::peer::server::{PeerService, until_stopped};
use crate::peer::{CLUSTER_ID, FROM, TO};
use crate::telemetry::peers::LinkMeter;

/// How long a new connection may take to say what it is, and a caller to
/// greet.
const GREETING_WITHIN: Duration = Duration::from_secs(10);

/// The connections `listener` accepts (with Nagle's algorithm off) that
/// are not fast links, for the gRPC server; fast links are served here,
/// each in a task of its own, with `service`. Accepting stops once the
/// gRPC server no longer takes connections.
pub(crate) fn split_incoming(
    listener: TcpListener,
    service: PeerService,
    max_message_bytes: usize,
) -> impl tokio_stream::Stream<Item = std::io::Result<TcpStream>> {
    let (grpc, incoming) = mpsc::channel::<std::io::Result<TcpStream>>(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = grpc.closed() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, say: the next accept may work.
                    tracing::debug!(error = %e, "accepting a peer connection failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "setting TCP_NODELAY failed");
            }
            let grpc = grpc.clone();
            let service = service.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                match tokio::time::timeout(GREETING_WITHIN, stream.peek(&mut first)).await {
                    Ok(Ok(1)) if first[0] == MAGIC[0] => {
                        serve_link(stream, service, max_message_bytes).await;
                    }
                    Ok(Ok(_)) => {
                        let _ = grpc.send(Ok(stream)).await;
                    }
                    // Silent, or gone before it said anything.
                    _ => {}
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(incoming)
}

/// Serves one fast link until the caller closes it, sends something
/// malformed, or the member stops.
async fn serve_link(mut stream: TcpStream, service: PeerService, max_message_bytes: usize) {
    let remote = stream.peer_addr().ok();
    let mut greeting = [0u8; GREETING_LEN];
    match tokio::time::timeout(GREETING_WITHIN, stream.read_exact(&mut greeting)).await {
        Ok(Ok(_)) => {}
        _ => return,
    }
    let Some((cluster, from, to)) = parse_greeting(&greeting) else {
        return;
    };
    let mut md = MetadataMap::new();
    md.insert(CLUSTER_ID, MetadataValue::from(cluster));
    md.insert(FROM, MetadataValue::from(from));
    md.insert(TO, MetadataValue::from(to));
    let mut stopping = service.stopping();
    if stopping.as_ref().is_some_and(|s| *s.borrow()) {
        // Closed unanswered: the caller tries again, and finds the member
        // back, or gone.
        return;
    }
    let from: NodeId = match service.check_identity(&md, remote) {
        Ok(from) => from,
        Err(status) => {
            let code = if status.metadata().get(crate::peer::REMOVED).is_some() {
                REMOVED
            } else {
                REFUSED
            };
            let _ = stream.write_all(&answer(code, status.message())).await;
            return;
        }
    };
    if stream.write_all(&answer(ACCEPTED, "")).await.is_err() {
        return;
    }
    let meter = LinkMeter::receiving(from);
    let mut buf = bytes::BytesMut::with_capacity(64 * 1024);
    loop {
        let read = tokio::select! {
            read = stream.read_buf(&mut buf) => read,
            () = until_stopped(&mut stopping) => return,
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            let len = match frame_len(&buf, max_message_bytes) {
                Ok(Some(len)) => len,
                Ok(None) => {
                    // Room for the rest of a frame begun (its length was
                    // found within bounds).
                    if let Some(h) = buf.get(..FRAME_HEADER)
                        && let Ok(h) = <[u8; FRAME_HEADER]>::try_from(h)
                    {
                        let whole = FRAME_HEADER + u32::from_le_bytes(h) as usize;
                        buf.reserve(whole.saturating_sub(buf.len()));
                    }
                    break;
                }
                Err(FrameError::TooLong(len)) => {
                    service.malformed(tonic::Status::invalid_argument(format!(
                        "a fast link frame of {len} bytes from {from}: more than a message may be"
                    )));
                    return;
                }
            };
            let frame = buf.split_to(FRAME_HEADER + len);
            let batch: wire::RaftBatch = match prost::Message::decode(&frame[FRAME_HEADER..]) {
                Ok(b) => b,
                Err(e) => {
                    service.malformed(tonic::Status::invalid_argument(format!(
                        "a fast link frame from {from} does not decode: {e}"
                    )));
                    return;
                }
            };
            if service.deliver_batch(from, batch, &meter).is_err() {
                // Counted and logged as malformed (or the node is gone).
                return;
            }
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
    }
}

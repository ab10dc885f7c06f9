//! Sending one snapshot to a follower: the snapshot file's frames in
//! chunks on a `Snapshot` call, resumed where the receiver stopped when a
//! call breaks, a few times, before the leader hears it failed.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use dengine_core::{Message, NodeId};
use dengine_proto::peer as wire;
use dengine_proto::peer::peer_client::PeerClient;
use dengine_runtime::SnapshotDone;
use dengine_runtime::snapshot::SnapshotData;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use super::convert::message_to_wire;
use super::transport::{LinkStats, PeerLinkConfig, with_identity};
use super::{PeerIdentity, backoff};

/// Sends `data` (the snapshot of the `InstallSnapshot` message `msg`) and
/// reports the outcome through `done`.
pub(crate) async fn send_snapshot(
    identity: PeerIdentity,
    config: PeerLinkConfig,
    stats: Arc<LinkStats>,
    channel: Channel,
    msg: Message,
    data: SnapshotData,
    done: SnapshotDone,
) {
    let to = msg.to;
    let index = data.meta().last_index;
    let header = wire::SnapshotHeader {
        message: Some(message_to_wire(msg)),
        total_len: data.len(),
    };
    for attempt in 1..=config.snapshot_attempts.max(1) {
        let t = Transfer {
            identity: &identity,
            config: &config,
            stats: &stats,
            to,
        };
        match t.run(channel.clone(), header.clone(), data.clone()).await {
            Ok(()) => {
                tracing::info!(peer = %to, index = %index, bytes = data.len(), "snapshot sent");
                done.delivered();
                return;
            }
            Err(why) => {
                tracing::warn!(peer = %to, index = %index, attempt, reason = %why,
                    "snapshot transfer broke; resuming");
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
    }
    done.failed();
}

struct Transfer<'a> {
    identity: &'a PeerIdentity,
    config: &'a PeerLinkConfig,
    stats: &'a LinkStats,
    to: NodeId,
}

impl Transfer<'_> {
    async fn run(
        &self,
        channel: Channel,
        header: wire::SnapshotHeader,
        data: SnapshotData,
    ) -> Result<(), String> {
        let (tx, rx) = mpsc::channel::<wire::SnapshotChunk>(2);
        let first = wire::SnapshotChunk {
            header: Some(header),
            offset: 0,
            frames: Bytes::new(),
        };
        tx.send(first)
            .await
            .map_err(|_| "stream closed".to_string())?;
        let mut client = PeerClient::new(channel)
            .max_decoding_message_size(self.config.max_message_bytes)
            .max_encoding_message_size(self.config.max_message_bytes);
        let req = with_identity(
            self.identity,
            self.to,
            tokio_stream::wrappers::ReceiverStream::new(rx),
        );
        let mut answers = client
            .snapshot(req)
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        let status = |s: tonic::Status| format!("{:?}: {}", s.code(), s.message());
        let start = match answers.message().await.map_err(status)? {
            Some(p) if p.complete => return Ok(()),
            Some(p) => p.received,
            None => return Err("the receiver hung up before answering".into()),
        };
        if start > 0 {
            self.stats.snapshot_resumes.fetch_add(1, Ordering::Relaxed);
            tracing::info!(peer = %self.to, offset = start, "snapshot transfer resumes");
        }
        // Frames are read from the file off the async workers.
        let (chunks_tx, mut chunks) = mpsc::channel::<Result<wire::SnapshotChunk, String>>(2);
        let chunk_bytes = self.config.snapshot_chunk_bytes.max(1);
        tokio::task::spawn_blocking(move || read_chunks(&data, start, chunk_bytes, &chunks_tx));
        let mut sending = true;
        loop {
            tokio::select! {
                chunk = chunks.recv(), if sending => match chunk {
                    Some(Ok(c)) => {
                        let n = c.frames.len() as u64;
                        if tx.send(c).await.is_err() {
                            // The call ended: its status comes as an answer.
                            sending = false;
                            continue;
                        }
                        self.stats.snapshot_bytes.fetch_add(n, Ordering::Relaxed);
                    }
                    Some(Err(e)) => return Err(format!("reading the snapshot: {e}")),
                    None => sending = false,
                },
                answer = answers.message() => match answer.map_err(status)? {
                    Some(p) if p.complete => return Ok(()),
                    Some(_) => {}
                    None => return Err("the receiver ended the call before the snapshot was whole".into()),
                },
            }
        }
    }
}

/// Reads the frames from `start` and sends them in chunks of about
/// `chunk_bytes` (whole frames only).
fn read_chunks(
    data: &SnapshotData,
    start: u64,
    chunk_bytes: usize,
    out: &mpsc::Sender<Result<wire::SnapshotChunk, String>>,
) {
    let mut offset = start;
    let mut buf: Vec<u8> = Vec::with_capacity(chunk_bytes);
    let flush = |buf: &mut Vec<u8>, offset: &mut u64| -> bool {
        let frames = Bytes::from(std::mem::take(buf));
        let n = frames.len() as u64;
        let ok = out
            .blocking_send(Ok(wire::SnapshotChunk {
                header: None,
                offset: *offset,
                frames,
            }))
            .is_ok();
        *offset += n;
        ok
    };
    for frame in data.frames_from(start) {
        match frame {
            Ok(f) => {
                buf.extend_from_slice(&f);
                if buf.len() >= chunk_bytes && !flush(&mut buf, &mut offset) {
                    return;
                }
            }
            Err(e) => {
                let _ = out.blocking_send(Err(e.to_string()));
                return;
            }
        }
    }
    if !buf.is_empty() {
        flush(&mut buf, &mut offset);
    }
}

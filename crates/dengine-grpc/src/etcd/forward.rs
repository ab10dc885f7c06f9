//! Writes sent to a member that does not lead are forwarded to the leader
//! over the peer protocol, batched: whatever waits to go to the same
//! leader goes in one `Forward` call, and the leader proposes it as one
//! batch. Followers never answer a write themselves.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dengine_core::NodeId;
use dengine_kv::{KvError, KvResponse, KvStateMachine};
use dengine_proto::peer as wire;
use dengine_proto::peer::forward_error::Kind;
use dengine_proto::peer::forward_result::Result as WireResult;
use dengine_proto::peer::peer_client::PeerClient;
use dengine_runtime::{Error, Node, typed};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use super::errors;
use crate::peer::{ForwardTarget, GrpcTransport, PeerIdentity};

/// The format of a forwarded response (the first byte).
const RESPONSE_VERSION: u8 = 1;

/// Most writes in one forwarded batch.
const MAX_BATCH: usize = 4096;

/// What a forwarded write comes back as.
pub type Outcome = Result<KvResponse, Status>;

struct Forwarded {
    to: NodeId,
    command: Bytes,
    reply: oneshot::Sender<Outcome>,
    /// The trace context of the request, when it is traced.
    traceparent: Option<String>,
}

/// Sends writes to the leader in batches (see the module docs).
#[derive(Clone)]
pub struct Forwarder {
    queue: mpsc::Sender<Forwarded>,
}

impl Forwarder {
    /// A forwarder over `transport`'s connections; forwarded calls give up
    /// after `timeout`. Must be made inside a tokio runtime.
    pub fn new(
        identity: PeerIdentity,
        transport: GrpcTransport,
        timeout: Duration,
        queue_len: usize,
    ) -> Forwarder {
        let (tx, rx) = mpsc::channel(queue_len.max(1));
        tokio::spawn(run(identity, transport, timeout, rx));
        Forwarder { queue: tx }
    }

    /// Forwards `command` to `leader` and waits for its outcome.
    pub async fn forward(&self, leader: NodeId, command: Bytes) -> Outcome {
        let (reply, answer) = oneshot::channel();
        let item = Forwarded {
            to: leader,
            command,
            reply,
            traceparent: crate::telemetry::trace::traceparent(&tracing::Span::current()),
        };
        self.queue.try_send(item).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => errors::too_many_requests(),
            mpsc::error::TrySendError::Closed(_) => errors::stopped(),
        })?;
        answer.await.unwrap_or_else(|_| Err(errors::stopped()))
    }
}

async fn run(
    identity: PeerIdentity,
    transport: GrpcTransport,
    timeout: Duration,
    mut queue: mpsc::Receiver<Forwarded>,
) {
    while let Some(first) = queue.recv().await {
        let mut by_leader: HashMap<NodeId, Vec<Forwarded>> = HashMap::new();
        by_leader.entry(first.to).or_default().push(first);
        for _ in 1..MAX_BATCH {
            match queue.try_recv() {
                Ok(f) => by_leader.entry(f.to).or_default().push(f),
                Err(_) => break,
            }
        }
        for (to, items) in by_leader {
            let Some(channel) = transport.channel(to) else {
                for f in items {
                    let _ = f.reply.send(Err(errors::leader_changed()));
                }
                continue;
            };
            let identity = identity.clone();
            // One task per batch (not per write): the next batch need not
            // wait for this one's answer.
            tokio::spawn(async move {
                let mut items = items;
                let traceparent = if items.iter().any(|f| f.traceparent.is_some()) {
                    items
                        .iter_mut()
                        .map(|f| f.traceparent.take().unwrap_or_default())
                        .collect()
                } else {
                    Vec::new()
                };
                let (commands, replies): (Vec<Bytes>, Vec<_>) =
                    items.into_iter().map(|f| (f.command, f.reply)).unzip();
                let mut req = crate::peer::with_identity(
                    &identity,
                    to,
                    wire::ForwardRequest {
                        commands,
                        traceparent,
                    },
                );
                req.set_timeout(timeout);
                match PeerClient::new(channel).forward(req).await {
                    Ok(resp) => {
                        let mut results = resp.into_inner().results.into_iter();
                        for reply in replies {
                            let outcome = match results.next() {
                                Some(r) => decode_result(r),
                                None => Err(Status::internal(
                                    "etcdserver: the leader answered fewer writes than it was sent",
                                )),
                            };
                            let _ = reply.send(outcome);
                        }
                    }
                    Err(status) => {
                        tracing::debug!(leader = %to, code = ?status.code(), message = status.message(),
                            "forwarding writes failed");
                        // The leader never got them if it could not be
                        // reached (it died, and no other is known yet):
                        // "no leader" tells the client it may send them
                        // again. Otherwise whether it took them is unknown.
                        let error = if never_sent(&status) {
                            errors::no_leader
                        } else {
                            errors::timed_out_connection_lost
                        };
                        for reply in replies {
                            let _ = reply.send(Err(error()));
                        }
                    }
                }
            });
        }
    }
}

/// Whether a forward surely never reached the leader: the connection to
/// it could not be made.
fn never_sent(status: &Status) -> bool {
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        if e.to_string().contains("tcp connect error") {
            return true;
        }
        source = e.source();
    }
    status.message().contains("tcp connect error")
}

fn decode_result(r: wire::ForwardResult) -> Outcome {
    match r.result {
        Some(WireResult::Response(bytes)) => {
            let decoded = typed::split_version(&bytes).and_then(|(v, body)| {
                if v == RESPONSE_VERSION {
                    typed::decode_body::<KvResponse>(body)
                } else {
                    Err(typed::CommandError::UnknownVersion(v))
                }
            });
            decoded.map_err(|e| Status::internal(format!("etcdserver: {e}")))
        }
        Some(WireResult::Error(e)) => Err(match Kind::try_from(e.kind) {
            Ok(Kind::NotLeader) | Ok(Kind::Dropped) | Ok(Kind::Stopped) => errors::leader_changed(),
            Ok(Kind::Timeout) => errors::timed_out(),
            Ok(Kind::Overloaded) => errors::too_many_requests(),
            Ok(Kind::Invalid) => Status::invalid_argument(format!("etcdserver: {}", e.message)),
            Ok(Kind::Compacted) => errors::compacted(),
            Ok(Kind::LeaseNotFound) => errors::lease_not_found(),
            Ok(Kind::LeaseExists) => Status::failed_precondition(errors::LEASE_EXISTS),
            Ok(Kind::NoSpace) => errors::no_space(),
            Ok(Kind::Corrupt) => errors::corrupt(),
            Ok(Kind::FutureRevision) => errors::future_revision(),
            Ok(Kind::Auth) => match dengine_kv::AuthError::from_message(&e.message) {
                Some(a) => errors::from_auth(&a),
                None => Status::unknown(format!("etcdserver: {}", e.message)),
            },
            _ => Status::unknown(format!("etcdserver: {}", e.message)),
        }),
        None => Err(Status::internal("etcdserver: empty forwarded result")),
    }
}

fn error_result(kind: Kind, message: String, leader: NodeId) -> wire::ForwardResult {
    wire::ForwardResult {
        result: Some(WireResult::Error(wire::ForwardError {
            kind: kind as i32,
            message,
            leader: leader.0,
        })),
    }
}

/// The leader's side of forwarding: proposes forwarded writes on the
/// key-value node.
pub struct KvForwardTarget {
    /// The node.
    pub node: Node<KvStateMachine>,
}

impl ForwardTarget for KvForwardTarget {
    fn forward(
        &self,
        commands: Vec<Bytes>,
        spans: Vec<tracing::Span>,
    ) -> Pin<Box<dyn Future<Output = Vec<wire::ForwardResult>> + Send + '_>> {
        use tracing::Instrument;
        Box::pin(async move {
            // Polled together, the proposals reach the node's queue in one
            // go and become one batch. A traced write is proposed in its
            // span, so the node's spans of it join the trace.
            let mut spans = spans.into_iter();
            let proposals = commands.into_iter().map(|c| {
                let span = spans.next().unwrap_or_else(tracing::Span::none);
                self.node.propose(c).instrument(span)
            });
            let outcomes = futures_util::future::join_all(proposals).await;
            outcomes.into_iter().map(encode_outcome).collect()
        })
    }
}

fn encode_outcome(
    outcome: Result<dengine_runtime::Proposed<Result<KvResponse, KvError>>, Error>,
) -> wire::ForwardResult {
    match outcome {
        Ok(p) => match p.response {
            Ok(resp) => match typed::encode_version(RESPONSE_VERSION, &resp) {
                Ok(bytes) => wire::ForwardResult {
                    result: Some(WireResult::Response(Bytes::from(bytes))),
                },
                Err(e) => error_result(Kind::Other, e.to_string(), NodeId::NONE),
            },
            Err(KvError::InvalidRequest(m)) => error_result(Kind::Invalid, m, NodeId::NONE),
            Err(e @ KvError::Compacted) => {
                error_result(Kind::Compacted, e.to_string(), NodeId::NONE)
            }
            Err(e @ KvError::LeaseNotFound) => {
                error_result(Kind::LeaseNotFound, e.to_string(), NodeId::NONE)
            }
            Err(e @ KvError::LeaseExists) => {
                error_result(Kind::LeaseExists, e.to_string(), NodeId::NONE)
            }
            Err(e @ KvError::NoSpace) => error_result(Kind::NoSpace, e.to_string(), NodeId::NONE),
            Err(e @ KvError::Corrupt) => error_result(Kind::Corrupt, e.to_string(), NodeId::NONE),
            Err(e @ KvError::FutureRevision) => {
                error_result(Kind::FutureRevision, e.to_string(), NodeId::NONE)
            }
            Err(KvError::Auth(a)) => error_result(Kind::Auth, a.to_string(), NodeId::NONE),
            Err(e) => error_result(Kind::Other, e.to_string(), NodeId::NONE),
        },
        Err(Error::NotLeader { leader }) => error_result(
            Kind::NotLeader,
            "not the leader".into(),
            leader.unwrap_or(NodeId::NONE),
        ),
        Err(Error::Timeout) => error_result(Kind::Timeout, "timed out".into(), NodeId::NONE),
        Err(Error::Overloaded) => error_result(Kind::Overloaded, "overloaded".into(), NodeId::NONE),
        Err(Error::Dropped(i)) => {
            error_result(Kind::Dropped, format!("dropped at {i}"), NodeId::NONE)
        }
        Err(e @ (Error::Shutdown | Error::Fatal(_) | Error::Storage(_))) => {
            error_result(Kind::Stopped, e.to_string(), NodeId::NONE)
        }
        Err(Error::Invalid(m)) => error_result(Kind::Invalid, m, NodeId::NONE),
        Err(e) => error_result(Kind::Other, e.to_string(), NodeId::NONE),
    }
}

/// Shares one target between services.
pub fn target(node: Node<KvStateMachine>) -> Arc<dyn ForwardTarget> {
    Arc::new(KvForwardTarget { node })
}

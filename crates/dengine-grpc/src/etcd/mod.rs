//! etcd's v3 API on the client port, served by a key-value node.
//!
//! - [`KvService`]: the `KV` service, `Range` (at any revision back to
//!   the last compaction), `Put`, `DeleteRange`, `Txn`, `Compact`;
//! - [`WatchService`]: the `Watch` service (see [`watch`]);
//! - [`LeaseService`]: the `Lease` service (see [`lease`]);
//! - [`MaintenanceService`]: the `Maintenance` service, `Status`, `Alarm` (no alarms exist yet);
//! - [`ClusterService`]: the `Cluster` service (see [`cluster`]);
//! - [`LockService`], [`ElectionService`]: etcd's `Lock` and `Election`
//!   services (distributed locks and leader election on leases);
//! - every other method of etcd's services answers `UNIMPLEMENTED`
//!   naming the method.
//!
//! Any member takes any request. Writes go to the leader: proposed here
//! when this member leads, else forwarded ([`forward`]). Linearizable
//! reads confirm the read index with the leader (ReadIndex) and are then
//! served from this member's own state; serializable reads are served
//! from it at once.

pub mod auth;
pub mod cluster;
pub mod compactor;
mod concurrency;
pub mod corruption;
pub mod errors;
pub mod forward;
mod kv;
pub mod lease;
mod maintenance;
pub mod quota;
pub mod range;
pub mod txn;
mod unary_kv;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use dengine_core::NodeId;
use dengine_kv::{AuthView, KvCommand, KvResponse, KvStateMachine};
use dengine_proto::etcdserverpb as pb;
use dengine_runtime::{Error, Metrics, Node, ReadPolicy};
use tokio::sync::watch as signal;
use tonic::Status;

pub use auth::{AuthService, AuthSettings, Caller, Credentials};
pub use cluster::{ClusterService, MembersView};
pub use concurrency::{ElectionService, LockService};
pub use forward::Forwarder;
pub use kv::KvService;
pub use lease::{LeaseService, Lessor};
pub use maintenance::MaintenanceService;
pub(crate) use unary_kv::UnaryKvLayer;
pub use watch::{WatchHub, WatchService};

/// The etcd API level served: clients gate features on `Status.version`
/// (Kubernetes turns watch progress requests off below 3.4.31 and for
/// 3.5.0 to 3.5.12), so it names the etcd release whose behaviour dengine
/// matches. dengine's own version is in the `dengine-version` metadata of
/// `Status` responses and in `dengine --version`.
pub const ETCD_API_VERSION: &str = "3.5.17";

/// The limits a client's request meets, as etcd's flags set them.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most operations in one txn (`--max-txn-ops`, 128).
    pub max_txn_ops: usize,
    /// Most bytes in one request (`--max-request-bytes`, 1.5 MiB).
    pub max_request_bytes: usize,
    /// Most gRPC streams (calls) at once on one client connection
    /// (`--max-concurrent-streams`; etcd's default, no limit).
    pub max_concurrent_streams: u32,
    /// Most watchers on one watch stream (`--max-watchers-per-stream`,
    /// 10,000); past it a create is cancelled with
    /// [`TOO_MANY_WATCHERS`].
    pub max_watchers_per_stream: usize,
    /// Most leases alive at once (`--max-leases`, 1,000,000), so that
    /// clients that grant and never revoke cannot grow a member's memory
    /// without bound; past it a grant fails with
    /// [`errors::TOO_MANY_LEASES`]. Checked by the member that takes the
    /// grant against what it has applied, so concurrent grants may pass
    /// it by a few.
    pub max_leases: usize,
}

/// The cancel reason of a watch past [`Limits::max_watchers_per_stream`]
/// (dengine's own: etcd has no such limit).
pub const TOO_MANY_WATCHERS: &str = "etcdserver: too many watchers on this stream";

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_txn_ops: 128,
            max_request_bytes: 1536 * 1024,
            max_concurrent_streams: u32::MAX,
            max_watchers_per_stream: 10_000,
            max_leases: 1_000_000,
        }
    }
}

/// Whether the client asked for a member with a leader (the `hasleader`
/// metadata etcd's clients send with `WithRequireLeader`).
fn wants_leader(md: &tonic::metadata::MetadataMap) -> bool {
    md.get("hasleader")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "true")
}

/// What every etcd service of one member shares.
pub struct EtcdCore {
    node: Node<KvStateMachine>,
    metrics: signal::Receiver<Metrics>,
    cluster_id: u64,
    member_id: NodeId,
    forwarder: Forwarder,
    limits: Limits,
    /// How long a write waits for a leader to be known.
    leader_wait: Duration,
    members: MembersView,
    /// Where the node's data lives; `None` in memory.
    data_dir: Option<std::path::PathBuf>,
    /// The space quota and the store's size.
    quota: quota::Quota,
    /// Users, roles and tokens, as the store applied them.
    auth: AuthView,
    /// JWT tokens, when the member makes them (else simple tokens).
    jwt: Option<Arc<auth::jwt::Jwt>>,
}

impl EtcdCore {
    /// The shared core of the services of `node`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node: Node<KvStateMachine>,
        cluster_id: u64,
        forwarder: Forwarder,
        limits: Limits,
        leader_wait: Duration,
        members: MembersView,
        data_dir: Option<std::path::PathBuf>,
        quota: quota::Quota,
        auth: AuthView,
        jwt: Option<Arc<auth::jwt::Jwt>>,
    ) -> Arc<EtcdCore> {
        Arc::new(EtcdCore {
            metrics: node.metrics(),
            member_id: node.id(),
            node,
            cluster_id,
            forwarder,
            limits,
            leader_wait,
            members,
            quota,
            data_dir,
            auth,
            jwt,
        })
    }

    /// A response header as etcd fills it.
    fn header(&self, revision: i64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id.0,
            revision,
            raft_term: self.metrics.borrow().term.0,
        })
    }

    /// The header of a Cluster call's answer: etcd's cluster service
    /// fills in no revision (etcd 3.4.23 answers 0; the differential
    /// cluster test found it).
    fn cluster_header(&self) -> Option<pb::ResponseHeader> {
        self.header(0)
    }

    fn leader_now(&self) -> Option<NodeId> {
        self.metrics.borrow().leader
    }

    /// Fails with "etcdserver: no leader" when the client asked for a
    /// member with a leader (`hasleader` metadata) and none is known.
    fn check_has_leader(&self, md: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        if wants_leader(md) && self.leader_now().is_none() {
            return Err(errors::no_leader());
        }
        Ok(())
    }

    /// The election timeout (a write waits two for a leader).
    fn election_timeout(&self) -> Duration {
        self.leader_wait / 2
    }

    /// The leader, waiting a little (an election) when none is known.
    async fn leader(&self) -> Result<NodeId, Status> {
        if let Some(l) = self.leader_now() {
            return Ok(l);
        }
        self.node
            .wait_for(self.leader_wait, |m| m.leader.is_some())
            .await
            .ok()
            .and_then(|m| m.leader)
            .ok_or_else(errors::no_leader)
    }

    /// Runs a write: proposed here when this member leads, else forwarded.
    async fn write(&self, cmd: &KvCommand) -> Result<KvResponse, Status> {
        let bytes = bytes::Bytes::from(cmd.encode());
        if bytes.len() > self.limits.max_request_bytes {
            return Err(errors::request_too_large());
        }
        self.check_quota(cmd, bytes.len() as u64).await?;
        let leader = self.leader().await?;
        if leader != self.member_id {
            return self.forwarder.forward(leader, bytes).await;
        }
        match self.node.propose(bytes.clone()).await {
            Ok(p) => p.response.map_err(|e| errors::from_kv(&e)),
            // Leadership moved before the proposal reached the core: it
            // was not proposed, so it is safe to send it on.
            Err(Error::NotLeader {
                leader: Some(other),
            }) if other != self.member_id => self.forwarder.forward(other, bytes).await,
            Err(e) => Err(errors::from_runtime(&e)),
        }
    }

    /// Runs `query` on the store under the read's consistency.
    async fn read<R: Send + 'static>(
        &self,
        serializable: bool,
        query: impl FnOnce(&KvStateMachine) -> R + Send + 'static,
    ) -> Result<R, Status> {
        let policy = if serializable {
            ReadPolicy::Stale
        } else {
            ReadPolicy::Linearizable
        };
        self.node
            .read(policy, query)
            .await
            .map_err(|e| errors::from_runtime(&e))
    }
}

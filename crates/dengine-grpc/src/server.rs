//! A whole member: the key-value node, its peer transport, and etcd's API
//! on the client port; what `dengine serve` runs.
//!
//! Start-up checks everything before it touches the disk: flags, URLs,
//! the member list, and that the ports can be bound. A data directory
//! that holds a cluster record restarts that member (the `initial_*`
//! settings are then ignored, as etcd does); one of another cluster is
//! refused by the node's storage.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dengine_core::NodeId;
use dengine_kv::KvStateMachine;
use dengine_proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use dengine_proto::peer::peer_server::PeerServer;
use dengine_proto::v3electionpb::election_server::ElectionServer;
use dengine_proto::v3lockpb::lock_server::LockServer;
use dengine_runtime::{Config, Node, NodeBuilder, StorageKind};
use tokio::net::TcpListener;
use tower_layer::Layer;

use crate::tls::{Tls, TlsFiles};

/// Serves `router` (the peer port's: the client port has `client_port`)
/// on what `listener` accepts (over TLS with `tls`) until `stopped`, in a
/// task of its own. (A macro: the router's type is long to spell out.)
macro_rules! serve {
    ($router:expr, $listener:expr, $tls:expr, $port:expr, $stopped:expr) => {
        match $tls {
            Some(tls) => tokio::spawn($router.serve_with_incoming_shutdown(
                crate::tls::incoming($listener, Arc::clone(tls), $port),
                until($stopped.clone()),
            )),
            None => tokio::spawn(
                $router.serve_with_incoming_shutdown(no_delay($listener), until($stopped.clone())),
            ),
        }
    };
}
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::etcd::compactor::{self, AutoCompaction};
use crate::etcd::{
    AuthService, AuthSettings, ClusterService, ElectionService, EtcdCore, Forwarder, KvService,
    LeaseService, Lessor, Limits, LockService, MaintenanceService, MembersView, WatchHub,
    WatchService, cluster, forward, lease,
};
use crate::members::{self, ClusterRecord, Member, MembersError};
use crate::peer::{GrpcTransport, KnownMembers, PeerIdentity, PeerLinkConfig, PeerService};
use dengine_kv::{LeaseChange, MemberAttrsRequest, MemberInfo};

/// Whether this member starts a new cluster or joins one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClusterState {
    /// Bootstrap a new cluster with the initial members.
    #[default]
    New,
    /// Join a cluster that exists (a member must add this one).
    Existing,
}

/// Everything a member needs to start (etcd's flags, and the node's
/// settings).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// This member's name (`--name`).
    pub name: String,
    /// URLs to take client connections on (`--listen-client-urls`).
    pub listen_client_urls: Vec<String>,
    /// URLs clients are told to use (`--advertise-client-urls`).
    pub advertise_client_urls: Vec<String>,
    /// URLs to take peer connections on (`--listen-peer-urls`).
    pub listen_peer_urls: Vec<String>,
    /// URLs peers reach this member at (`--initial-advertise-peer-urls`).
    pub initial_advertise_peer_urls: Vec<String>,
    /// The initial members, `name=url,...` (`--initial-cluster`).
    pub initial_cluster: String,
    /// New or existing (`--initial-cluster-state`).
    pub initial_cluster_state: ClusterState,
    /// The token that names the cluster (`--initial-cluster-token`).
    pub initial_cluster_token: String,
    /// The node's settings (its ids are set from the cluster; `data_dir`
    /// and `storage` are taken as they are).
    pub node: Config,
    /// Limits on client requests.
    pub limits: Limits,
    /// Tuning of the peer links.
    pub peer: PeerLinkConfig,
    /// Automatic compaction (`--auto-compaction-mode`,
    /// `--auto-compaction-retention`; off by default, as etcd).
    pub auto_compaction: AutoCompaction,
    /// The store's space quota in bytes (`--quota-backend-bytes`; `None`:
    /// no quota). Default 2 GiB, as etcd.
    pub quota_backend_bytes: Option<u64>,
    /// Free bytes kept on the data directory's filesystem
    /// (`--disk-reserve-bytes`; 0: none): below it, this member raises
    /// its `NOSPACE` alarm, so writes that grow the store fail before the
    /// disk is full; it disarms it once twice as much is free. 64 MiB by
    /// default.
    pub disk_reserve_bytes: u64,
    /// How often watchers that asked for progress notifications get one
    /// (`--experimental-watch-progress-notify-interval`, 10 minutes).
    pub watch_progress_notify_interval: Duration,
    /// Runs every client call in a span (`grpc.request`), a child of the
    /// caller's W3C `traceparent` when it sent one, so a write's spans on
    /// every member join one trace (across members with the `otel`
    /// feature). Off by default: then no span is made per request.
    pub trace_requests: bool,
    /// TLS on the client port (`--cert-file`, `--key-file`,
    /// `--trusted-ca-file`, `--client-cert-auth`): used by the
    /// `https://` client URLs, which need it.
    pub client_tls: Option<TlsFiles>,
    /// TLS on the peer port and towards peers (`--peer-cert-file`,
    /// `--peer-key-file`, `--peer-trusted-ca-file`,
    /// `--peer-client-cert-auth`): used by the `https://` peer URLs,
    /// which need it.
    pub peer_tls: Option<TlsFiles>,
    /// How passwords are hashed (`--bcrypt-cost`).
    pub auth: AuthSettings,
    /// How long a simple token lives unused (`--auth-token-ttl`, 300 s).
    pub auth_token_ttl: Duration,
    /// Compares this member's key-value history with its peers' before
    /// serving clients, and refuses to start when no peer agrees with it
    /// (`--experimental-initial-corrupt-check`; see
    /// [`crate::etcd::corruption`]). On by default (etcd's default is off).
    pub initial_corrupt_check: bool,
    /// How often the leader compares its peers' key-value history with its
    /// own, raising the `CORRUPT` alarm for a member that differs
    /// (`--experimental-corrupt-check-time`; `None`, the default as in
    /// etcd: never; see [`crate::etcd::corruption::run_periodic`]).
    pub corrupt_check_interval: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            name: "default".into(),
            listen_client_urls: vec!["http://127.0.0.1:2379".into()],
            advertise_client_urls: vec!["http://127.0.0.1:2379".into()],
            listen_peer_urls: vec!["http://127.0.0.1:2380".into()],
            initial_advertise_peer_urls: vec!["http://127.0.0.1:2380".into()],
            initial_cluster: "default=http://127.0.0.1:2380".into(),
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "dengine-cluster".into(),
            node: Config {
                data_dir: PathBuf::from("dengine-data"),
                ..Config::default()
            },
            limits: Limits::default(),
            peer: PeerLinkConfig::default(),
            auto_compaction: AutoCompaction::Off,
            quota_backend_bytes: Some(crate::etcd::quota::DEFAULT_QUOTA_BYTES),
            disk_reserve_bytes: crate::etcd::quota::DEFAULT_DISK_RESERVE_BYTES,
            watch_progress_notify_interval: Duration::from_secs(600),
            trace_requests: false,
            client_tls: None,
            peer_tls: None,
            auth: AuthSettings::default(),
            auth_token_ttl: dengine_kv::DEFAULT_TOKEN_TTL,
            initial_corrupt_check: true,
            corrupt_check_interval: None,
        }
    }
}

/// Why a member could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The settings are wrong; nothing was created.
    #[error("{0}")]
    Config(String),
    /// The member list or the cluster record.
    #[error(transparent)]
    Members(#[from] MembersError),
    /// A port could not be bound.
    #[error("cannot listen on {url}: {source}")]
    Listen {
        /// The URL.
        url: String,
        /// Why.
        source: std::io::Error,
    },
    /// The node failed to start.
    #[error("node: {0}")]
    Node(#[from] dengine_runtime::Error),
    /// The store differs from the peers' (the initial corruption check).
    #[error("{0}")]
    Inconsistent(String),
}

/// The socket address of `http://host:port`.
fn socket_addr(url: &str) -> Result<SocketAddr, ServerError> {
    members::check_url(url)?;
    let rest = url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    use std::net::ToSocketAddrs;
    rest.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| ServerError::Config(format!("URL {url:?}: the host does not resolve")))
}

/// Who this member is and who the others are: from the record, else from
/// the flags (a new cluster) or from the cluster's members (joining one
/// that exists).
async fn identity(cfg: &ServerConfig) -> Result<(ClusterRecord, bool), ServerError> {
    if let Some(record) = ClusterRecord::load(&cfg.node.data_dir)? {
        return Ok((record, false));
    }
    let record = identity_from_flags(cfg)?;
    if cfg.initial_cluster_state == ClusterState::Existing {
        return Ok((crate::join::ask_members(cfg, &record).await?, true));
    }
    Ok((record, true))
}

/// The record of the member `cfg` describes in a new cluster (for a
/// restore from a backup, which always makes one).
pub(crate) fn new_cluster_record(cfg: &ServerConfig) -> Result<ClusterRecord, ServerError> {
    let mut cfg = cfg.clone();
    cfg.initial_cluster_state = ClusterState::New;
    identity_from_flags(&cfg)
}

/// Who this member is by the flags alone.
fn identity_from_flags(cfg: &ServerConfig) -> Result<ClusterRecord, ServerError> {
    if cfg.name.is_empty() {
        return Err(ServerError::Config("--name is empty".into()));
    }
    if cfg.initial_cluster_token.is_empty() {
        return Err(ServerError::Config(
            "--initial-cluster-token is empty".into(),
        ));
    }
    let named = members::parse_initial_cluster(&cfg.initial_cluster)?;
    let Some(my_urls) = named.get(&cfg.name) else {
        return Err(ServerError::Config(format!(
            "--initial-cluster has no member named {:?} (--name)",
            cfg.name
        )));
    };
    let mut advertised = cfg.initial_advertise_peer_urls.clone();
    advertised.sort();
    let mut listed = my_urls.clone();
    listed.sort();
    if advertised != listed {
        return Err(ServerError::Config(format!(
            "--initial-cluster gives {:?} the peer URLs {listed:?}, but \
             --initial-advertise-peer-urls says {advertised:?}",
            cfg.name
        )));
    }
    let token = &cfg.initial_cluster_token;
    let members: Vec<Member> = named
        .iter()
        .map(|(name, urls)| Member {
            id: members::member_id(token, name),
            name: name.clone(),
            peer_urls: urls.clone(),
            client_urls: if *name == cfg.name {
                cfg.advertise_client_urls.clone()
            } else {
                Vec::new()
            },
        })
        .collect();
    let ids: Vec<NodeId> = members.iter().map(|m| m.id).collect();
    let unique: std::collections::BTreeSet<_> = ids.iter().collect();
    if unique.len() != ids.len() {
        return Err(ServerError::Config(
            "two member names give the same id; rename one".into(),
        ));
    }
    let record = ClusterRecord {
        version: ClusterRecord::VERSION,
        cluster_id: members::cluster_id(token, ids.iter().copied()),
        member_id: members::member_id(token, &cfg.name),
        initial_voters: match cfg.initial_cluster_state {
            ClusterState::New => ids.iter().map(|i| i.0).collect(),
            ClusterState::Existing => Vec::new(),
        },
        members,
    };
    Ok(record)
}

/// The context of a new cluster's first entry: its initial members (the
/// same on each of them, from `--initial-cluster`), so every member's list
/// of members starts with their names and peer URLs. Client URLs are
/// published by each member when it starts.
fn bootstrap_context(record: &ClusterRecord) -> Vec<u8> {
    if record.initial_voters.is_empty() {
        return Vec::new();
    }
    let initial: Vec<MemberInfo> = record
        .members
        .iter()
        .map(|m| MemberInfo {
            id: m.id.0,
            name: m.name.clone(),
            peer_urls: m.peer_urls.clone(),
            client_urls: Vec::new(),
        })
        .collect();
    dengine_kv::encode_context(&initial)
}

/// A running member (see the module docs).
pub struct Server {
    node: Node<KvStateMachine>,
    client_addrs: Vec<SocketAddr>,
    peer_addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<(), tonic::transport::Error>>>,
    record: ClusterRecord,
    transport: GrpcTransport,
    peer_service: PeerService,
    removed: watch::Receiver<bool>,
}

impl Server {
    /// Starts a member. Must be called inside a tokio runtime.
    pub async fn start(mut cfg: ServerConfig) -> Result<Server, ServerError> {
        // Everything is checked before anything is created.
        let client_tls = port_tls(
            "client",
            &cfg.listen_client_urls,
            cfg.client_tls.as_ref(),
            "--cert-file and --key-file",
        )?;
        let peer_tls = port_tls(
            "peer",
            &cfg.listen_peer_urls,
            cfg.peer_tls.as_ref(),
            "--peer-cert-file and --peer-key-file",
        )?;
        if cfg.peer.tls.is_none() {
            cfg.peer.tls = peer_tls.clone();
        }
        let client_addrs = cfg
            .listen_client_urls
            .iter()
            .map(|u| socket_addr(u))
            .collect::<Result<Vec<_>, _>>()?;
        let peer_addrs = cfg
            .listen_peer_urls
            .iter()
            .map(|u| socket_addr(u))
            .collect::<Result<Vec<_>, _>>()?;
        for u in cfg
            .advertise_client_urls
            .iter()
            .chain(&cfg.initial_advertise_peer_urls)
        {
            members::check_url(u)?;
        }
        if client_addrs.is_empty() || peer_addrs.is_empty() {
            return Err(ServerError::Config(
                "at least one client URL and one peer URL are needed".into(),
            ));
        }
        let (record, fresh) = identity(&cfg).await?;
        let mut node_cfg = cfg.node.clone();
        node_cfg.node_id = record.member_id.0;
        node_cfg.cluster_id = record.cluster_id;
        node_cfg.validate()?;
        if cfg.limits.max_request_bytes as u64 > node_cfg.max_msg_bytes.max(1) * 8 {
            tracing::warn!(
                max_request_bytes = cfg.limits.max_request_bytes,
                "requests may be larger than the replication messages carry comfortably"
            );
        }
        let bind = |addr: SocketAddr, url: &str| {
            let url = url.to_string();
            async move {
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::Listen { url, source })
            }
        };
        let mut client_listeners = Vec::new();
        for (a, u) in client_addrs.iter().zip(&cfg.listen_client_urls) {
            client_listeners.push(bind(*a, u).await?);
        }
        let mut peer_listeners = Vec::new();
        for (a, u) in peer_addrs.iter().zip(&cfg.listen_peer_urls) {
            peer_listeners.push(bind(*a, u).await?);
        }
        if fresh {
            if cfg.node.storage != StorageKind::Memory {
                record.save(&cfg.node.data_dir)?;
            }
        } else {
            tracing::info!(data_dir = %cfg.node.data_dir.display(),
                "restarting from the data directory; --initial-cluster* settings are ignored");
        }

        let identity = PeerIdentity {
            cluster_id: record.cluster_id,
            me: record.member_id,
        };
        let transport = GrpcTransport::new(identity.clone(), cfg.peer.clone());
        for m in record.members.iter().filter(|m| m.id != record.member_id) {
            let Some(url) = m.peer_urls.first() else {
                continue;
            };
            transport
                .add_peer(m.id, url)
                .map_err(|e| ServerError::Config(format!("peer URL {url:?}: {e}")))?;
        }
        let mut kv = KvStateMachine::open(&node_cfg)?;
        let auth = kv.auth();
        auth.set_token_ttl(cfg.auth_token_ttl);
        let hub = WatchHub::default();
        let election_timeout = node_cfg.tick() * node_cfg.election_ticks;
        let lessor = Arc::new(Lessor::new(record.member_id.0, election_timeout));
        // Leases restored from disk start their whole TTL again.
        lessor.changed(LeaseChange::All(kv.leases()));
        let (members_tx, members_rx) = watch::channel(kv.members().clone());
        // The members the start-up check asks: those the store lists, else
        // (nothing applied yet) those the record names.
        let listed = kv.members();
        let check_peers: Vec<NodeId> = record
            .members
            .iter()
            .map(|m| m.id)
            .chain(listed.members.keys().map(|&id| NodeId(id)))
            .filter(|id| *id != record.member_id && !listed.removed.contains(&id.0))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        kv.set_event_sink(hub.sink(Some(lessor.clone()), Some(members_tx)));
        let node = NodeBuilder::new(node_cfg.clone(), kv)
            .initial_members(record.initial_voters.iter().map(|&i| NodeId(i)))
            .bootstrap_context(bootstrap_context(&record))
            .transport(Arc::new(transport.clone()))
            .build()
            .await?;

        let known = KnownMembers::new(record.members.iter().map(|m| m.id));
        let forwarder = Forwarder::new(
            identity.clone(),
            transport.clone(),
            node_cfg.request_timeout(),
            node_cfg.max_pending_requests,
        );
        let leader_wait = node_cfg.tick() * node_cfg.election_ticks * 2;
        let data_dir = (node_cfg.storage != StorageKind::Memory).then(|| node_cfg.data_dir.clone());
        let core = EtcdCore::new(
            node.clone(),
            record.cluster_id,
            forwarder,
            cfg.limits.clone(),
            leader_wait,
            MembersView::new(members_rx.clone(), record.members.clone()),
            data_dir.clone(),
            crate::etcd::quota::Quota::new(
                cfg.quota_backend_bytes,
                cfg.disk_reserve_bytes,
                data_dir.as_deref(),
            ),
            auth,
            cfg.auth.jwt.clone(),
        );
        let cluster = ClusterService::new(
            core.clone(),
            transport.clone(),
            identity.clone(),
            node_cfg.request_timeout(),
        );
        let (stop, stopped) = watch::channel(false);
        let peer_service =
            PeerService::new(Arc::new(node.clone()), identity.clone(), known.clone())
                .with_forward(forward::target(node.clone()))
                .with_members(Arc::new(cluster.clone()))
                .with_hashes(Arc::new(crate::etcd::corruption::Hashes::new(core.clone())))
                .with_stop(stopped.clone())
                .cut_next_snapshot_after(cfg.peer.cut_first_snapshot_after_chunks);

        let mut tasks = Vec::new();
        let compactor = compactor::run(core.clone(), cfg.auto_compaction, stopped.clone());
        tasks.push(tokio::spawn(async move {
            compactor.await;
            Ok(())
        }));
        let measuring = crate::etcd::quota::run(core.clone(), stopped.clone());
        tasks.push(tokio::spawn(async move {
            measuring.await;
            Ok(())
        }));
        if let Some(every) = cfg.corrupt_check_interval {
            let checking = crate::etcd::corruption::run_periodic(
                core.clone(),
                transport.clone(),
                identity.clone(),
                every,
                stopped.clone(),
            );
            tasks.push(tokio::spawn(async move {
                checking.await;
                Ok(())
            }));
        }
        let expiry = lease::run_expiry(core.clone(), lessor.clone(), stopped.clone());
        tasks.push(tokio::spawn(async move {
            expiry.await;
            Ok(())
        }));
        let me = record.me().cloned();
        let attrs = MemberAttrsRequest {
            id: record.member_id.0,
            name: me.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
            peer_urls: cfg.initial_advertise_peer_urls.clone(),
            client_urls: cfg.advertise_client_urls.clone(),
        };
        let publishing = cluster::publish(core.clone(), attrs, stopped.clone());
        tasks.push(tokio::spawn(async move {
            publishing.await;
            Ok(())
        }));
        let (removed_tx, removed) = watch::channel(false);
        let following = crate::join::follow_members(
            crate::join::Followed {
                me: record.member_id,
                list: members_rx,
                transport: transport.clone(),
                known,
                recorded: record.members.clone(),
                removed: removed_tx,
            },
            stopped.clone(),
        );
        tasks.push(tokio::spawn(async move {
            following.await;
            Ok(())
        }));
        let max_client = cfg.limits.max_request_bytes + 512 * 1024;
        let client_addrs: Vec<SocketAddr> = client_listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect();
        let peer_addrs: Vec<SocketAddr> = peer_listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect();
        // Peers are served before the check: theirs asks this member too.
        for listener in peer_listeners {
            let peer = PeerServer::new(peer_service.clone())
                .max_decoding_message_size(cfg.peer.max_message_bytes)
                .max_encoding_message_size(cfg.peer.max_message_bytes);
            let router = tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(peer);
            if peer_tls.is_none() && cfg.peer.fast_link {
                // Fast Raft links are told from gRPC calls as they come.
                let incoming = crate::peer::split_incoming(
                    listener,
                    peer_service.clone(),
                    cfg.peer.max_message_bytes,
                );
                tasks.push(tokio::spawn(
                    router.serve_with_incoming_shutdown(incoming, until(stopped.clone())),
                ));
            } else {
                tasks.push(serve!(router, listener, peer_tls.as_ref(), "peer", stopped));
            }
        }
        if cfg.initial_corrupt_check {
            let check = crate::etcd::corruption::InitialCheck {
                core: &core,
                transport: &transport,
                identity: &identity,
                peers: check_peers,
                data_dir: &node_cfg.data_dir,
                name: &cfg.name,
                within: node_cfg.request_timeout(),
            };
            if let Err(why) = check.run().await {
                let _ = wind_down(&stop, tasks, &node).await;
                return Err(ServerError::Inconsistent(why));
            }
        }
        // Made here, after the process' metrics recorder (if any) is in.
        let requests = crate::telemetry::RequestMetricsLayer::new();
        let traces = crate::telemetry::TraceLayer::new(cfg.trace_requests, record.member_id.0);
        for listener in client_listeners {
            let kv = KvServer::new(KvService::new(core.clone()))
                .max_decoding_message_size(max_client)
                .max_encoding_message_size(usize::MAX);
            // Puts, ranges, txns and deletes skip tonic's router and codec
            // (same answers).
            let unary_kv = crate::etcd::UnaryKvLayer::new(KvService::new(core.clone()), max_client);
            let routes = tonic::service::Routes::new(kv)
                .add_service(MaintenanceServer::new(MaintenanceService::new(
                    core.clone(),
                )))
                .add_service(ClusterServer::new(cluster.clone()))
                .add_service(
                    WatchServer::new(
                        WatchService::new(core.clone(), hub.clone())
                            .with_progress_interval(cfg.watch_progress_notify_interval),
                    )
                    .max_encoding_message_size(usize::MAX),
                )
                .add_service(LeaseServer::new(LeaseService::new(
                    core.clone(),
                    lessor.clone(),
                )))
                .add_service(LockServer::new(LockService::new(
                    core.clone(),
                    hub.clone(),
                    lessor.clone(),
                )))
                .add_service(ElectionServer::new(ElectionService::new(
                    core.clone(),
                    hub.clone(),
                    lessor.clone(),
                )))
                .add_service(AuthServer::new(AuthService::new(
                    core.clone(),
                    cfg.auth.clone(),
                )))
                .prepare();
            // Outermost first: metrics see every request, traces too, then
            // the direct KV path, then tonic's routes.
            let service = requests.layer(traces.layer(unary_kv.layer(routes)));
            let settings = crate::client_port::Http2Settings {
                max_concurrent_streams: cfg.limits.max_concurrent_streams,
                keepalive_interval: Duration::from_secs(10),
                keepalive_timeout: Duration::from_secs(20),
            };
            let stop = stopped.clone();
            tasks.push(match client_tls.as_ref() {
                Some(tls) => tokio::spawn(crate::client_port::serve(
                    crate::tls::incoming(listener, Arc::clone(tls), "client"),
                    service,
                    settings,
                    stop,
                )),
                None => tokio::spawn(crate::client_port::serve(
                    no_delay(listener),
                    service,
                    settings,
                    stop,
                )),
            });
        }
        tracing::info!(member = %format!("{:x}", record.member_id.0),
            cluster = %format!("{:x}", record.cluster_id),
            clients = ?client_addrs, peers = ?peer_addrs, "member started");
        Ok(Server {
            node,
            client_addrs,
            peer_addrs,
            stop,
            tasks,
            record,
            transport,
            peer_service,
            removed,
        })
    }

    /// Resolves once this member has been removed from the cluster (it
    /// should then stop, as etcd's members do).
    pub async fn removed(&self) {
        let mut removed = self.removed.clone();
        while !*removed.borrow_and_update() {
            if removed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// The addresses clients connect to (the bound ones: a port of 0 in
    /// the settings shows here as the port the system chose).
    pub fn client_addrs(&self) -> &[SocketAddr] {
        &self.client_addrs
    }

    /// The addresses peers connect to.
    pub fn peer_addrs(&self) -> &[SocketAddr] {
        &self.peer_addrs
    }

    /// The node.
    pub fn node(&self) -> &Node<KvStateMachine> {
        &self.node
    }

    /// What the data directory records of the cluster.
    pub fn record(&self) -> &ClusterRecord {
        &self.record
    }

    /// The peer transport (its counters).
    pub fn transport(&self) -> &GrpcTransport {
        &self.transport
    }

    /// The peer service (its counters).
    pub fn peer_service(&self) -> &PeerService {
        &self.peer_service
    }

    /// Stops taking connections, lets in-flight requests finish or fail,
    /// then stops the node (flushing and closing its stores).
    pub async fn shutdown(self) -> Result<(), ServerError> {
        wind_down(&self.stop, self.tasks, &self.node).await
    }
}

/// Stops the member's tasks (3 s of grace in all for them to finish what
/// is in flight), then the node.
async fn wind_down(
    stop: &watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<(), tonic::transport::Error>>>,
    node: &Node<KvStateMachine>,
) -> Result<(), ServerError> {
    let _ = stop.send(true);
    let grace = tokio::time::sleep(Duration::from_secs(3));
    tokio::pin!(grace);
    for task in tasks {
        tokio::select! {
            _ = task => {}
            _ = &mut grace => break,
        }
    }
    node.shutdown().await?;
    Ok(())
}

/// The TLS settings of one port, loaded, when its listen URLs ask for TLS
/// (`https://`); an error when they do and no files were given, or the
/// files do not load. Every URL of one port must use the same scheme.
fn port_tls(
    port: &str,
    urls: &[String],
    files: Option<&TlsFiles>,
    flags: &str,
) -> Result<Option<Arc<Tls>>, ServerError> {
    let https = urls.iter().filter(|u| crate::tls::is_https(u)).count();
    if https == 0 {
        if files.is_some() {
            tracing::warn!(
                port,
                "TLS files are set but the listen URLs are http://: serving without TLS"
            );
        }
        return Ok(None);
    }
    if https != urls.len() {
        return Err(ServerError::Config(format!(
            "the {port} URLs mix http:// and https://; use one scheme"
        )));
    }
    let Some(files) = files else {
        return Err(ServerError::Config(format!(
            "https {port} URLs need {flags}"
        )));
    };
    Tls::load(files.clone())
        .map(Some)
        .map_err(|e| ServerError::Config(format!("{port} TLS: {e}")))
}

/// The connections `listener` accepts, with Nagle's algorithm off.
/// tonic's `tcp_nodelay` applies only to listeners it binds itself: on
/// these, a response written in two parts (a range's data, then its
/// trailers) waited for the client's delayed ACK, 40 ms a read.
fn no_delay(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        if let Ok(stream) = &accepted
            && let Err(e) = stream.set_nodelay(true)
        {
            tracing::debug!(error = %e, "setting TCP_NODELAY failed");
        }
        accepted
    })
}

/// Resolves once `stop` says so.
async fn until(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

//! The flags of `dengine serve`, and how the command line, the
//! environment and the config file are merged into one set of them.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Where the log and the store are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// sled (the default).
    Sled,
    /// RocksDB (needs the `rocksdb` feature).
    Rocksdb,
    /// Memory: nothing survives a restart.
    Memory,
}

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object per line, its fields as keys.
    Json,
}

/// New or existing cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialState {
    /// Bootstrap a new cluster.
    New,
    /// Join an existing cluster.
    Existing,
}

/// The flags of `dengine serve` (every one also `DENGINE_<NAME>` in the
/// environment and `<name>` in the config file, with `_` for `-`).
#[derive(Args, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeArgs {
    /// Human-readable name of this member.
    #[arg(long, env = "DENGINE_NAME")]
    pub(crate) name: Option<String>,
    /// Where the member keeps its data.
    #[arg(long, env = "DENGINE_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic (comma-separated).
    #[arg(long, env = "DENGINE_LISTEN_CLIENT_URLS", value_delimiter = ',')]
    pub(crate) listen_client_urls: Option<Vec<String>>,
    /// This member's client URLs to advertise (comma-separated).
    #[arg(long, env = "DENGINE_ADVERTISE_CLIENT_URLS", value_delimiter = ',')]
    pub(crate) advertise_client_urls: Option<Vec<String>>,
    /// URLs to listen on for peer traffic (comma-separated).
    #[arg(long, env = "DENGINE_LISTEN_PEER_URLS", value_delimiter = ',')]
    pub(crate) listen_peer_urls: Option<Vec<String>>,
    /// This member's peer URLs to advertise (comma-separated).
    #[arg(
        long,
        env = "DENGINE_INITIAL_ADVERTISE_PEER_URLS",
        value_delimiter = ','
    )]
    pub(crate) initial_advertise_peer_urls: Option<Vec<String>>,
    /// The initial members: name=peer-url,... (ignored on restart).
    #[arg(long, env = "DENGINE_INITIAL_CLUSTER")]
    pub(crate) initial_cluster: Option<String>,
    /// new: bootstrap a cluster; existing: join one (ignored on restart).
    #[arg(long, env = "DENGINE_INITIAL_CLUSTER_STATE")]
    pub(crate) initial_cluster_state: Option<InitialState>,
    /// The token that names the cluster: its id derives from it.
    #[arg(long, env = "DENGINE_INITIAL_CLUSTER_TOKEN")]
    pub(crate) initial_cluster_token: Option<String>,
    /// Time between heartbeats, in milliseconds (etcd's default 100).
    #[arg(long, env = "DENGINE_HEARTBEAT_INTERVAL")]
    pub(crate) heartbeat_interval: Option<u64>,
    /// Election timeout, in milliseconds (etcd's default 1000).
    #[arg(long, env = "DENGINE_ELECTION_TIMEOUT")]
    pub(crate) election_timeout: Option<u64>,
    /// Applied entries between snapshots (etcd's default 100000).
    #[arg(long, env = "DENGINE_SNAPSHOT_COUNT")]
    pub(crate) snapshot_count: Option<u64>,
    /// Largest client request in bytes (etcd's default 1572864).
    #[arg(long, env = "DENGINE_MAX_REQUEST_BYTES")]
    pub(crate) max_request_bytes: Option<usize>,
    /// Most operations in one txn (etcd's default 128).
    #[arg(long, env = "DENGINE_MAX_TXN_OPS")]
    pub(crate) max_txn_ops: Option<usize>,
    /// Most gRPC calls at once on one client connection (etcd's default:
    /// no limit).
    #[arg(long, env = "DENGINE_MAX_CONCURRENT_STREAMS")]
    pub(crate) max_concurrent_streams: Option<u32>,
    /// Most watchers on one watch stream (dengine's own; 10000).
    #[arg(long, env = "DENGINE_MAX_WATCHERS_PER_STREAM")]
    pub(crate) max_watchers_per_stream: Option<usize>,
    /// Most leases alive at once (dengine's own; 1000000): past it a
    /// grant fails with "etcdserver: too many leases".
    #[arg(long, env = "DENGINE_MAX_LEASES")]
    pub(crate) max_leases: Option<usize>,
    /// Largest message between members in bytes (dengine's own; 16 MiB).
    #[arg(long, env = "DENGINE_MAX_PEER_MESSAGE_BYTES")]
    pub(crate) max_peer_message_bytes: Option<usize>,
    /// Send Raft messages to peers reached over plain TCP on the fast
    /// link (a TCP connection of their own to the peer port, without
    /// HTTP/2), and take fast links on this member's peer port (dengine's
    /// own; true). Peers that do not speak it get the gRPC stream either
    /// way; false speaks only gRPC to peers.
    #[arg(
        long,
        env = "DENGINE_PEER_FAST_LINK",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub(crate) peer_fast_link: Option<bool>,
    /// Threads of the async runtime that serves gRPC and runs the Raft
    /// core (dengine's own). By default one less than the cores this
    /// process may use, at least one: the disk and apply threads have one
    /// of their own. On 2 cores, one worker did 3-5% more puts and 25% more
    /// reads than two, with 7-30% less CPU per request (benches/README.md).
    #[arg(long, env = "DENGINE_WORKER_THREADS")]
    pub(crate) worker_threads: Option<usize>,
    /// Storage engine: sled, rocksdb or memory.
    #[arg(long, env = "DENGINE_STORAGE")]
    pub(crate) storage: Option<Storage>,
    /// How the history is compacted on its own: periodic (by time, the
    /// default) or revision (by count), as etcd.
    #[arg(long, env = "DENGINE_AUTO_COMPACTION_MODE")]
    pub(crate) auto_compaction_mode: Option<String>,
    /// How much history to keep: for periodic a duration (1h, 30m, 10s)
    /// or a number of hours, for revision a number of revisions; 0 (the
    /// default) turns automatic compaction off.
    #[arg(long, env = "DENGINE_AUTO_COMPACTION_RETENTION")]
    pub(crate) auto_compaction_retention: Option<String>,
    /// The store's space quota in bytes: past it, writes that grow the
    /// store fail and the NOSPACE alarm is raised, as etcd. 0 (the
    /// default): 2 GiB; negative: no quota.
    #[arg(
        long,
        env = "DENGINE_QUOTA_BACKEND_BYTES",
        allow_negative_numbers = true
    )]
    pub(crate) quota_backend_bytes: Option<i64>,
    /// Free bytes to keep on the data directory's disk (dengine's own):
    /// below it, this member raises the NOSPACE alarm and writes that
    /// grow the store fail, as past the quota, while reads go on; it
    /// disarms the alarm itself once twice as much is free. 64 MiB by
    /// default; 0: none (a full disk then stops the member).
    #[arg(long, env = "DENGINE_DISK_RESERVE_BYTES")]
    pub(crate) disk_reserve_bytes: Option<u64>,
    /// How often watchers that asked for progress notifications get one
    /// when they had no events, as a duration (10m, 5s, 500ms); etcd's
    /// flag of the same name, 10m by default.
    #[arg(
        long = "experimental-watch-progress-notify-interval",
        env = "DENGINE_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL"
    )]
    pub(crate) experimental_watch_progress_notify_interval: Option<String>,
    /// URLs to serve metrics and health on (comma-separated, http only):
    /// `/metrics` (Prometheus), `/health` (etcd's), `/livez`, `/readyz`.
    #[arg(long, env = "DENGINE_LISTEN_METRICS_URLS", value_delimiter = ',')]
    pub(crate) listen_metrics_urls: Option<Vec<String>>,
    /// How logs are written: text (for people, the default) or json (one
    /// object per line).
    #[arg(long, env = "DENGINE_LOG_FORMAT")]
    pub(crate) log_format: Option<LogFormat>,
    /// The least level logged: debug, info (the default), warn or error
    /// (etcd's values; without it `DENGINE_LOG` or `RUST_LOG` may give a
    /// filter).
    #[arg(long, env = "DENGINE_LOG_LEVEL")]
    pub(crate) log_level: Option<String>,
    /// Export traces of client calls and of the writes they make, over
    /// OTLP/gRPC (etcd's flag; also under its 3.5 name
    /// `--experimental-enable-distributed-tracing`). Needs the `otel`
    /// feature (on by default).
    #[arg(
        long,
        alias = "experimental-enable-distributed-tracing",
        env = "DENGINE_ENABLE_DISTRIBUTED_TRACING",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub(crate) enable_distributed_tracing: Option<bool>,
    /// The OTLP/gRPC collector spans go to, host:port or URL
    /// (localhost:4317 by default, as etcd).
    #[arg(
        long,
        alias = "experimental-distributed-tracing-address",
        env = "DENGINE_DISTRIBUTED_TRACING_ADDRESS"
    )]
    pub(crate) distributed_tracing_address: Option<String>,
    /// The spans' service name ("dengine" by default).
    #[arg(
        long,
        alias = "experimental-distributed-tracing-service-name",
        env = "DENGINE_DISTRIBUTED_TRACING_SERVICE_NAME"
    )]
    pub(crate) distributed_tracing_service_name: Option<String>,
    /// The spans' service instance id (the member's name by default).
    #[arg(
        long,
        alias = "experimental-distributed-tracing-instance-id",
        env = "DENGINE_DISTRIBUTED_TRACING_INSTANCE_ID"
    )]
    pub(crate) distributed_tracing_instance_id: Option<String>,
    /// Traces started by this member per million client calls (0 by
    /// default, as etcd: then only calls that carry a sampled trace
    /// context are traced).
    #[arg(
        long,
        alias = "experimental-distributed-tracing-sampling-rate",
        env = "DENGINE_DISTRIBUTED_TRACING_SAMPLING_RATE"
    )]
    pub(crate) distributed_tracing_sampling_rate: Option<u32>,
    /// The certificate (PEM) served on https:// client URLs.
    #[arg(long, env = "DENGINE_CERT_FILE")]
    pub(crate) cert_file: Option<PathBuf>,
    /// The private key (PEM) of `--cert-file`.
    #[arg(long, env = "DENGINE_KEY_FILE")]
    pub(crate) key_file: Option<PathBuf>,
    /// The CA certificates (PEM) that sign client certificates (with
    /// `--client-cert-auth`).
    #[arg(long, env = "DENGINE_TRUSTED_CA_FILE")]
    pub(crate) trusted_ca_file: Option<PathBuf>,
    /// Refuse clients without a certificate signed by `--trusted-ca-file`.
    #[arg(
        long,
        env = "DENGINE_CLIENT_CERT_AUTH",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub(crate) client_cert_auth: Option<bool>,
    /// The certificate (PEM) served on https:// peer URLs, and presented to
    /// peers when connecting to them.
    #[arg(long, env = "DENGINE_PEER_CERT_FILE")]
    pub(crate) peer_cert_file: Option<PathBuf>,
    /// The private key (PEM) of `--peer-cert-file`.
    #[arg(long, env = "DENGINE_PEER_KEY_FILE")]
    pub(crate) peer_key_file: Option<PathBuf>,
    /// The CA certificates (PEM) that sign the peers' certificates (checked
    /// when connecting to a peer, and with `--peer-client-cert-auth` when
    /// a peer connects).
    #[arg(long, env = "DENGINE_PEER_TRUSTED_CA_FILE")]
    pub(crate) peer_trusted_ca_file: Option<PathBuf>,
    /// Refuse peers without a certificate signed by
    /// `--peer-trusted-ca-file`.
    #[arg(
        long,
        env = "DENGINE_PEER_CLIENT_CERT_AUTH",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub(crate) peer_client_cert_auth: Option<bool>,
    /// How clients' auth tokens are made: `simple` (etcd's default:
    /// random tokens every member keeps in memory) or
    /// `jwt,pub-key=FILE,priv-key=FILE,sign-method=ES256|RS256|...,ttl=5m`
    /// (signed tokens any member checks).
    #[arg(long, env = "DENGINE_AUTH_TOKEN")]
    pub(crate) auth_token: Option<String>,
    /// How long a simple token lives unused, in seconds (etcd's default,
    /// 300).
    #[arg(long, env = "DENGINE_AUTH_TOKEN_TTL")]
    pub(crate) auth_token_ttl: Option<u64>,
    /// bcrypt's cost for the passwords stored (etcd's default, 10; 4 to
    /// 31).
    #[arg(long, env = "DENGINE_BCRYPT_COST")]
    pub(crate) bcrypt_cost: Option<u32>,
    /// Before serving clients, compare this member's key-value history
    /// with its peers' (etcd's HashKV) and refuse to start when no peer
    /// agrees with it (etcd's flag; on by default here, off in etcd).
    #[arg(
        long,
        env = "DENGINE_EXPERIMENTAL_INITIAL_CORRUPT_CHECK",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub(crate) experimental_initial_corrupt_check: Option<bool>,
    /// How often the leader compares its peers' key-value history with its
    /// own and raises the CORRUPT alarm for a member that differs (writes
    /// then fail with "etcdserver: corrupt cluster"), as a duration (5m,
    /// 30s); etcd's flag, 0 (never) by default.
    #[arg(long, env = "DENGINE_EXPERIMENTAL_CORRUPT_CHECK_TIME")]
    pub(crate) experimental_corrupt_check_time: Option<String>,
    /// A TOML file with any of these settings (names with `_`), and a
    /// `[node]` table of the node's own settings (tick_ms, ...).
    #[arg(long, env = "DENGINE_CONFIG_FILE")]
    #[serde(skip)]
    pub(crate) config_file: Option<PathBuf>,
    /// The node's own settings, from the config file's `[node]` table.
    #[arg(skip)]
    pub(crate) node: Option<toml_value::Table>,
}

/// A TOML table kept as it is (for the `[node]` settings).
pub(crate) mod toml_value {
    /// Keys to values.
    pub type Table = std::collections::BTreeMap<String, figment::value::Value>;
}

/// The environment variables of the flags above: the node's own
/// `DENGINE_*` overrides are the others.
pub(crate) const FLAG_VARS: &[&str] = &[
    "DENGINE_NAME",
    "DENGINE_DATA_DIR",
    "DENGINE_LISTEN_CLIENT_URLS",
    "DENGINE_ADVERTISE_CLIENT_URLS",
    "DENGINE_LISTEN_PEER_URLS",
    "DENGINE_INITIAL_ADVERTISE_PEER_URLS",
    "DENGINE_INITIAL_CLUSTER",
    "DENGINE_INITIAL_CLUSTER_STATE",
    "DENGINE_INITIAL_CLUSTER_TOKEN",
    "DENGINE_HEARTBEAT_INTERVAL",
    "DENGINE_ELECTION_TIMEOUT",
    "DENGINE_SNAPSHOT_COUNT",
    "DENGINE_MAX_REQUEST_BYTES",
    "DENGINE_MAX_TXN_OPS",
    "DENGINE_MAX_CONCURRENT_STREAMS",
    "DENGINE_MAX_WATCHERS_PER_STREAM",
    "DENGINE_MAX_LEASES",
    "DENGINE_MAX_PEER_MESSAGE_BYTES",
    "DENGINE_WORKER_THREADS",
    "DENGINE_STORAGE",
    "DENGINE_AUTO_COMPACTION_MODE",
    "DENGINE_AUTO_COMPACTION_RETENTION",
    "DENGINE_QUOTA_BACKEND_BYTES",
    "DENGINE_DISK_RESERVE_BYTES",
    "DENGINE_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL",
    "DENGINE_LISTEN_METRICS_URLS",
    "DENGINE_LOG_FORMAT",
    "DENGINE_LOG_LEVEL",
    "DENGINE_ENABLE_DISTRIBUTED_TRACING",
    "DENGINE_DISTRIBUTED_TRACING_ADDRESS",
    "DENGINE_DISTRIBUTED_TRACING_SERVICE_NAME",
    "DENGINE_DISTRIBUTED_TRACING_INSTANCE_ID",
    "DENGINE_DISTRIBUTED_TRACING_SAMPLING_RATE",
    "DENGINE_CERT_FILE",
    "DENGINE_KEY_FILE",
    "DENGINE_TRUSTED_CA_FILE",
    "DENGINE_CLIENT_CERT_AUTH",
    "DENGINE_PEER_CERT_FILE",
    "DENGINE_PEER_KEY_FILE",
    "DENGINE_PEER_TRUSTED_CA_FILE",
    "DENGINE_PEER_CLIENT_CERT_AUTH",
    "DENGINE_AUTH_TOKEN",
    "DENGINE_AUTH_TOKEN_TTL",
    "DENGINE_BCRYPT_COST",
    "DENGINE_CONFIG_FILE",
    "DENGINE_LOG",
];

/// Settings as the file gives them, overridden by what the command line
/// (and the environment, through clap) set.
pub(crate) fn merge(cli: ServeArgs) -> Result<ServeArgs, String> {
    let Some(path) = cli.config_file.clone() else {
        return Ok(cli);
    };
    if !path.is_file() {
        return Err(format!("--config-file {}: no such file", path.display()));
    }
    let file: ServeArgs = Figment::from(Serialized::defaults(ServeArgs::default()))
        .merge(Toml::file(&path))
        .extract()
        .map_err(|e| format!("--config-file {}: {e}", path.display()))?;
    Ok(ServeArgs {
        name: cli.name.or(file.name),
        data_dir: cli.data_dir.or(file.data_dir),
        listen_client_urls: cli.listen_client_urls.or(file.listen_client_urls),
        advertise_client_urls: cli.advertise_client_urls.or(file.advertise_client_urls),
        listen_peer_urls: cli.listen_peer_urls.or(file.listen_peer_urls),
        initial_advertise_peer_urls: cli
            .initial_advertise_peer_urls
            .or(file.initial_advertise_peer_urls),
        initial_cluster: cli.initial_cluster.or(file.initial_cluster),
        initial_cluster_state: cli.initial_cluster_state.or(file.initial_cluster_state),
        initial_cluster_token: cli.initial_cluster_token.or(file.initial_cluster_token),
        heartbeat_interval: cli.heartbeat_interval.or(file.heartbeat_interval),
        election_timeout: cli.election_timeout.or(file.election_timeout),
        snapshot_count: cli.snapshot_count.or(file.snapshot_count),
        max_request_bytes: cli.max_request_bytes.or(file.max_request_bytes),
        max_txn_ops: cli.max_txn_ops.or(file.max_txn_ops),
        max_concurrent_streams: cli.max_concurrent_streams.or(file.max_concurrent_streams),
        worker_threads: cli.worker_threads.or(file.worker_threads),
        max_watchers_per_stream: cli.max_watchers_per_stream.or(file.max_watchers_per_stream),
        max_leases: cli.max_leases.or(file.max_leases),
        max_peer_message_bytes: cli.max_peer_message_bytes.or(file.max_peer_message_bytes),
        peer_fast_link: cli.peer_fast_link.or(file.peer_fast_link),
        storage: cli.storage.or(file.storage),
        auto_compaction_mode: cli.auto_compaction_mode.or(file.auto_compaction_mode),
        auto_compaction_retention: cli
            .auto_compaction_retention
            .or(file.auto_compaction_retention),
        quota_backend_bytes: cli.quota_backend_bytes.or(file.quota_backend_bytes),
        disk_reserve_bytes: cli.disk_reserve_bytes.or(file.disk_reserve_bytes),
        experimental_watch_progress_notify_interval: cli
            .experimental_watch_progress_notify_interval
            .or(file.experimental_watch_progress_notify_interval),
        listen_metrics_urls: cli.listen_metrics_urls.or(file.listen_metrics_urls),
        log_format: cli.log_format.or(file.log_format),
        log_level: cli.log_level.or(file.log_level),
        enable_distributed_tracing: cli
            .enable_distributed_tracing
            .or(file.enable_distributed_tracing),
        distributed_tracing_address: cli
            .distributed_tracing_address
            .or(file.distributed_tracing_address),
        distributed_tracing_service_name: cli
            .distributed_tracing_service_name
            .or(file.distributed_tracing_service_name),
        distributed_tracing_instance_id: cli
            .distributed_tracing_instance_id
            .or(file.distributed_tracing_instance_id),
        distributed_tracing_sampling_rate: cli
            .distributed_tracing_sampling_rate
            .or(file.distributed_tracing_sampling_rate),
        cert_file: cli.cert_file.or(file.cert_file),
        key_file: cli.key_file.or(file.key_file),
        trusted_ca_file: cli.trusted_ca_file.or(file.trusted_ca_file),
        client_cert_auth: cli.client_cert_auth.or(file.client_cert_auth),
        peer_cert_file: cli.peer_cert_file.or(file.peer_cert_file),
        peer_key_file: cli.peer_key_file.or(file.peer_key_file),
        peer_trusted_ca_file: cli.peer_trusted_ca_file.or(file.peer_trusted_ca_file),
        peer_client_cert_auth: cli.peer_client_cert_auth.or(file.peer_client_cert_auth),
        auth_token: cli.auth_token.or(file.auth_token),
        auth_token_ttl: cli.auth_token_ttl.or(file.auth_token_ttl),
        bcrypt_cost: cli.bcrypt_cost.or(file.bcrypt_cost),
        experimental_initial_corrupt_check: cli
            .experimental_initial_corrupt_check
            .or(file.experimental_initial_corrupt_check),
        experimental_corrupt_check_time: cli
            .experimental_corrupt_check_time
            .or(file.experimental_corrupt_check_time),
        config_file: Some(path),
        node: file.node,
    })
}

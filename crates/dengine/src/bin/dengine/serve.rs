//! `dengine serve`: etcd's flags where etcd has them, a TOML config file,
//! and `DENGINE_*` environment overrides. Precedence: flags, then the
//! environment, then the file, then the defaults. Bad settings print one
//! line naming the problem and exit with code 2, before anything is
//! created.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use dengine::grpc::etcd::auth::jwt::{Jwt, JwtOptions};
use dengine::grpc::etcd::{AuthSettings, Limits};
use dengine::grpc::server::{ClusterState, Server, ServerConfig, ServerError};
use dengine::grpc::tls::TlsFiles;
use dengine::{Config, StorageKind};
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
    name: Option<String>,
    /// Where the member keeps its data.
    #[arg(long, env = "DENGINE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic (comma-separated).
    #[arg(long, env = "DENGINE_LISTEN_CLIENT_URLS", value_delimiter = ',')]
    listen_client_urls: Option<Vec<String>>,
    /// This member's client URLs to advertise (comma-separated).
    #[arg(long, env = "DENGINE_ADVERTISE_CLIENT_URLS", value_delimiter = ',')]
    advertise_client_urls: Option<Vec<String>>,
    /// URLs to listen on for peer traffic (comma-separated).
    #[arg(long, env = "DENGINE_LISTEN_PEER_URLS", value_delimiter = ',')]
    listen_peer_urls: Option<Vec<String>>,
    /// This member's peer URLs to advertise (comma-separated).
    #[arg(
        long,
        env = "DENGINE_INITIAL_ADVERTISE_PEER_URLS",
        value_delimiter = ','
    )]
    initial_advertise_peer_urls: Option<Vec<String>>,
    /// The initial members: name=peer-url,... (ignored on restart).
    #[arg(long, env = "DENGINE_INITIAL_CLUSTER")]
    initial_cluster: Option<String>,
    /// new: bootstrap a cluster; existing: join one (ignored on restart).
    #[arg(long, env = "DENGINE_INITIAL_CLUSTER_STATE")]
    initial_cluster_state: Option<InitialState>,
    /// The token that names the cluster: its id derives from it.
    #[arg(long, env = "DENGINE_INITIAL_CLUSTER_TOKEN")]
    initial_cluster_token: Option<String>,
    /// Time between heartbeats, in milliseconds (etcd's default 100).
    #[arg(long, env = "DENGINE_HEARTBEAT_INTERVAL")]
    heartbeat_interval: Option<u64>,
    /// Election timeout, in milliseconds (etcd's default 1000).
    #[arg(long, env = "DENGINE_ELECTION_TIMEOUT")]
    election_timeout: Option<u64>,
    /// Applied entries between snapshots (etcd's default 100000).
    #[arg(long, env = "DENGINE_SNAPSHOT_COUNT")]
    snapshot_count: Option<u64>,
    /// Largest client request in bytes (etcd's default 1572864).
    #[arg(long, env = "DENGINE_MAX_REQUEST_BYTES")]
    max_request_bytes: Option<usize>,
    /// Most operations in one txn (etcd's default 128).
    #[arg(long, env = "DENGINE_MAX_TXN_OPS")]
    max_txn_ops: Option<usize>,
    /// Most gRPC calls at once on one client connection (etcd's default:
    /// no limit).
    #[arg(long, env = "DENGINE_MAX_CONCURRENT_STREAMS")]
    max_concurrent_streams: Option<u32>,
    /// Most watchers on one watch stream (dengine's own; 10000).
    #[arg(long, env = "DENGINE_MAX_WATCHERS_PER_STREAM")]
    max_watchers_per_stream: Option<usize>,
    /// Most leases alive at once (dengine's own; 1000000): past it a
    /// grant fails with "etcdserver: too many leases".
    #[arg(long, env = "DENGINE_MAX_LEASES")]
    max_leases: Option<usize>,
    /// Largest message between members in bytes (dengine's own; 16 MiB).
    #[arg(long, env = "DENGINE_MAX_PEER_MESSAGE_BYTES")]
    max_peer_message_bytes: Option<usize>,
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
    peer_fast_link: Option<bool>,
    /// Threads of the async runtime that serves gRPC and runs the Raft
    /// core (dengine's own). By default one less than the cores this
    /// process may use, at least one: the disk and apply threads have one
    /// of their own. On 2 cores, one worker did 3-5% more puts and 25% more
    /// reads than two, with 7-30% less CPU per request (benches/README.md).
    #[arg(long, env = "DENGINE_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// Storage engine: sled, rocksdb or memory.
    #[arg(long, env = "DENGINE_STORAGE")]
    storage: Option<Storage>,
    /// How the history is compacted on its own: periodic (by time, the
    /// default) or revision (by count), as etcd.
    #[arg(long, env = "DENGINE_AUTO_COMPACTION_MODE")]
    auto_compaction_mode: Option<String>,
    /// How much history to keep: for periodic a duration (1h, 30m, 10s)
    /// or a number of hours, for revision a number of revisions; 0 (the
    /// default) turns automatic compaction off.
    #[arg(long, env = "DENGINE_AUTO_COMPACTION_RETENTION")]
    auto_compaction_retention: Option<String>,
    /// The store's space quota in bytes: past it, writes that grow the
    /// store fail and the NOSPACE alarm is raised, as etcd. 0 (the
    /// default): 2 GiB; negative: no quota.
    #[arg(
        long,
        env = "DENGINE_QUOTA_BACKEND_BYTES",
        allow_negative_numbers = true
    )]
    quota_backend_bytes: Option<i64>,
    /// Free bytes to keep on the data directory's disk (dengine's own):
    /// below it, this member raises the NOSPACE alarm and writes that
    /// grow the store fail, as past the quota, while reads go on; it
    /// disarms the alarm itself once twice as much is free. 64 MiB by
    /// default; 0: none (a full disk then stops the member).
    #[arg(long, env = "DENGINE_DISK_RESERVE_BYTES")]
    disk_reserve_bytes: Option<u64>,
    /// How often watchers that asked for progress notifications get one
    /// when they had no events, as a duration (10m, 5s, 500ms); etcd's
    /// flag of the same name, 10m by default.
    #[arg(
        long = "experimental-watch-progress-notify-interval",
        env = "DENGINE_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL"
    )]
    experimental_watch_progress_notify_interval: Option<String>,
    /// URLs to serve metrics and health on (comma-separated, http only):
    /// `/metrics` (Prometheus), `/health` (etcd's), `/livez`, `/readyz`.
    #[arg(long, env = "DENGINE_LISTEN_METRICS_URLS", value_delimiter = ',')]
    listen_metrics_urls: Option<Vec<String>>,
    /// How logs are written: text (for people, the default) or json (one
    /// object per line).
    #[arg(long, env = "DENGINE_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// The least level logged: debug, info (the default), warn or error
    /// (etcd's values; without it `DENGINE_LOG` or `RUST_LOG` may give a
    /// filter).
    #[arg(long, env = "DENGINE_LOG_LEVEL")]
    log_level: Option<String>,
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
    enable_distributed_tracing: Option<bool>,
    /// The OTLP/gRPC collector spans go to, host:port or URL
    /// (localhost:4317 by default, as etcd).
    #[arg(
        long,
        alias = "experimental-distributed-tracing-address",
        env = "DENGINE_DISTRIBUTED_TRACING_ADDRESS"
    )]
    distributed_tracing_address: Option<String>,
    /// The spans' service name ("dengine" by default).
    #[arg(
        long,
        alias = "experimental-distributed-tracing-service-name",
        env = "DENGINE_DISTRIBUTED_TRACING_SERVICE_NAME"
    )]
    distributed_tracing_service_name: Option<String>,
    /// The spans' service instance id (the member's name by default).
    #[arg(
        long,
        alias = "experimental-distributed-tracing-instance-id",
        env = "DENGINE_DISTRIBUTED_TRACING_INSTANCE_ID"
    )]
    distributed_tracing_instance_id: Option<String>,
    /// Traces started by this member per million client calls (0 by
    /// default, as etcd: then only calls that carry a sampled trace
    /// context are traced).
    #[arg(
        long,
        alias = "experimental-distributed-tracing-sampling-rate",
        env = "DENGINE_DISTRIBUTED_TRACING_SAMPLING_RATE"
    )]
    distributed_tracing_sampling_rate: Option<u32>,
    /// The certificate (PEM) served on https:// client URLs.
    #[arg(long, env = "DENGINE_CERT_FILE")]
    cert_file: Option<PathBuf>,
    /// The private key (PEM) of `--cert-file`.
    #[arg(long, env = "DENGINE_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// The CA certificates (PEM) that sign client certificates (with
    /// `--client-cert-auth`).
    #[arg(long, env = "DENGINE_TRUSTED_CA_FILE")]
    trusted_ca_file: Option<PathBuf>,
    /// Refuse clients without a certificate signed by `--trusted-ca-file`.
    #[arg(
        long,
        env = "DENGINE_CLIENT_CERT_AUTH",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    client_cert_auth: Option<bool>,
    /// The certificate (PEM) served on https:// peer URLs, and presented to
    /// peers when connecting to them.
    #[arg(long, env = "DENGINE_PEER_CERT_FILE")]
    peer_cert_file: Option<PathBuf>,
    /// The private key (PEM) of `--peer-cert-file`.
    #[arg(long, env = "DENGINE_PEER_KEY_FILE")]
    peer_key_file: Option<PathBuf>,
    /// The CA certificates (PEM) that sign the peers' certificates (checked
    /// when connecting to a peer, and with `--peer-client-cert-auth` when
    /// a peer connects).
    #[arg(long, env = "DENGINE_PEER_TRUSTED_CA_FILE")]
    peer_trusted_ca_file: Option<PathBuf>,
    /// Refuse peers without a certificate signed by
    /// `--peer-trusted-ca-file`.
    #[arg(
        long,
        env = "DENGINE_PEER_CLIENT_CERT_AUTH",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    peer_client_cert_auth: Option<bool>,
    /// How clients' auth tokens are made: `simple` (etcd's default:
    /// random tokens every member keeps in memory) or
    /// `jwt,pub-key=FILE,priv-key=FILE,sign-method=ES256|RS256|...,ttl=5m`
    /// (signed tokens any member checks).
    #[arg(long, env = "DENGINE_AUTH_TOKEN")]
    auth_token: Option<String>,
    /// How long a simple token lives unused, in seconds (etcd's default,
    /// 300).
    #[arg(long, env = "DENGINE_AUTH_TOKEN_TTL")]
    auth_token_ttl: Option<u64>,
    /// bcrypt's cost for the passwords stored (etcd's default, 10; 4 to
    /// 31).
    #[arg(long, env = "DENGINE_BCRYPT_COST")]
    bcrypt_cost: Option<u32>,
    /// Before serving clients, compare this member's key-value history
    /// with its peers' (etcd's HashKV) and refuse to start when no peer
    /// agrees with it (etcd's flag; on by default here, off in etcd).
    #[arg(
        long,
        env = "DENGINE_EXPERIMENTAL_INITIAL_CORRUPT_CHECK",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    experimental_initial_corrupt_check: Option<bool>,
    /// How often the leader compares its peers' key-value history with its
    /// own and raises the CORRUPT alarm for a member that differs (writes
    /// then fail with "etcdserver: corrupt cluster"), as a duration (5m,
    /// 30s); etcd's flag, 0 (never) by default.
    #[arg(long, env = "DENGINE_EXPERIMENTAL_CORRUPT_CHECK_TIME")]
    experimental_corrupt_check_time: Option<String>,
    /// A TOML file with any of these settings (names with `_`), and a
    /// `[node]` table of the node's own settings (tick_ms, ...).
    #[arg(long, env = "DENGINE_CONFIG_FILE")]
    #[serde(skip)]
    config_file: Option<PathBuf>,
    /// The node's own settings, from the config file's `[node]` table.
    #[arg(skip)]
    node: Option<toml_value::Table>,
}

/// A TOML table kept as it is (for the `[node]` settings).
mod toml_value {
    /// Keys to values.
    pub type Table = std::collections::BTreeMap<String, figment::value::Value>;
}

/// The environment variables of the flags above: the node's own
/// `DENGINE_*` overrides are the others.
const FLAG_VARS: &[&str] = &[
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
fn merge(cli: ServeArgs) -> Result<ServeArgs, String> {
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

/// The member's settings from the merged arguments.
fn server_config(a: ServeArgs) -> Result<ServerConfig, String> {
    let d = ServerConfig::default();
    let trace_requests = a.enable_distributed_tracing.unwrap_or(false);
    let name = a.name.unwrap_or_else(|| d.name.clone());
    let listen_peer_urls = a.listen_peer_urls.unwrap_or(d.listen_peer_urls);
    let initial_advertise_peer_urls = a
        .initial_advertise_peer_urls
        .unwrap_or_else(|| listen_peer_urls.clone());
    let listen_client_urls = a.listen_client_urls.unwrap_or(d.listen_client_urls);
    let advertise_client_urls = a
        .advertise_client_urls
        .unwrap_or_else(|| listen_client_urls.clone());
    let initial_cluster = a.initial_cluster.unwrap_or_else(|| {
        initial_advertise_peer_urls
            .iter()
            .map(|u| format!("{name}={u}"))
            .collect::<Vec<_>>()
            .join(",")
    });

    // The node's own settings: defaults, the file's [node] table, then
    // DENGINE_<FIELD> variables that are not flags.
    let mut node: Config = match a.node {
        Some(table) => Figment::from(Serialized::defaults(Config::default()))
            .merge(Serialized::defaults(table))
            .extract()
            .map_err(|e| format!("[node] settings: {e}"))?,
        None => Config::default(),
    };
    let vars = std::env::vars()
        .filter(|(k, _)| k.starts_with("DENGINE_") && !FLAG_VARS.contains(&k.as_str()));
    node.apply_env(vars).map_err(|e| e.to_string())?;
    node.data_dir = a.data_dir.unwrap_or_else(|| PathBuf::from("dengine-data"));
    node.storage = match a.storage.unwrap_or(Storage::Sled) {
        Storage::Sled => StorageKind::Sled,
        Storage::Rocksdb => StorageKind::Rocksdb,
        Storage::Memory => StorageKind::Memory,
    };
    let heartbeat = a.heartbeat_interval.unwrap_or(100);
    let election = a.election_timeout.unwrap_or(1000);
    if heartbeat == 0 {
        return Err("--heartbeat-interval must be at least 1 ms".into());
    }
    if election < 5 * heartbeat {
        return Err(format!(
            "--election-timeout ({election} ms) must be at least 5 times \
             --heartbeat-interval ({heartbeat} ms)"
        ));
    }
    if election > 50_000 {
        return Err(format!(
            "--election-timeout ({election} ms) is longer than 50000 ms"
        ));
    }
    // Two ticks per heartbeat: time is counted finely enough for the
    // lease's drift allowance.
    node.tick_ms = (heartbeat / 2).max(1);
    node.heartbeat_ticks = (heartbeat / node.tick_ms) as u32;
    node.election_ticks = (election / node.tick_ms) as u32;
    if let Some(n) = a.snapshot_count {
        node.snapshot_threshold = n;
    }
    let dl = Limits::default();
    let limits = Limits {
        max_txn_ops: a.max_txn_ops.unwrap_or(dl.max_txn_ops),
        max_request_bytes: a.max_request_bytes.unwrap_or(dl.max_request_bytes),
        max_concurrent_streams: a
            .max_concurrent_streams
            .unwrap_or(dl.max_concurrent_streams),
        max_watchers_per_stream: a
            .max_watchers_per_stream
            .unwrap_or(dl.max_watchers_per_stream),
        max_leases: a.max_leases.unwrap_or(dl.max_leases),
    };
    if limits.max_txn_ops == 0 {
        return Err("--max-txn-ops must be at least 1".into());
    }
    if limits.max_concurrent_streams == 0 || limits.max_watchers_per_stream == 0 {
        return Err(
            "--max-concurrent-streams and --max-watchers-per-stream must be at least 1".into(),
        );
    }
    let auto_compaction = dengine::grpc::etcd::compactor::parse(
        a.auto_compaction_mode.as_deref().unwrap_or("periodic"),
        a.auto_compaction_retention.as_deref().unwrap_or("0"),
    )?;
    let watch_progress_notify_interval = match a.experimental_watch_progress_notify_interval {
        None => d.watch_progress_notify_interval,
        Some(text) => dengine::grpc::etcd::compactor::parse_duration(&text)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                format!(
                    "--experimental-watch-progress-notify-interval {text:?}: expected a \
                     duration such as 10m, 5s or 500ms"
                )
            })?,
    };
    let corrupt_check_interval = match a.experimental_corrupt_check_time {
        None => None,
        Some(text) if text.trim() == "0" => None,
        Some(text) => {
            let every = dengine::grpc::etcd::compactor::parse_duration(&text).ok_or_else(|| {
                format!(
                    "--experimental-corrupt-check-time {text:?}: expected a duration such \
                     as 5m, 30s or 0 (never)"
                )
            })?;
            (!every.is_zero()).then_some(every)
        }
    };
    let mut peer = d.peer;
    if let Some(n) = a.max_peer_message_bytes {
        peer.max_message_bytes = n;
    }
    if let Some(fast) = a.peer_fast_link {
        peer.fast_link = fast;
    }
    // A batch or an append must fit in one peer message, with room for
    // the framing around the entries.
    let needed = node.max_msg_bytes.max(peer.max_batch_bytes) as usize + 64 * 1024;
    if peer.max_message_bytes < needed {
        return Err(format!(
            "--max-peer-message-bytes ({}) must be at least {needed} (the largest batch \
             of entries, {} bytes, and its framing)",
            peer.max_message_bytes,
            node.max_msg_bytes.max(peer.max_batch_bytes)
        ));
    }
    let (auth, auth_token_ttl) =
        auth_settings(a.auth_token.as_deref(), a.auth_token_ttl, a.bcrypt_cost)?;
    Ok(ServerConfig {
        auth,
        auth_token_ttl,
        name,
        listen_client_urls,
        advertise_client_urls,
        listen_peer_urls,
        initial_advertise_peer_urls,
        initial_cluster,
        initial_cluster_state: match a.initial_cluster_state {
            Some(InitialState::Existing) => ClusterState::Existing,
            _ => ClusterState::New,
        },
        initial_cluster_token: a.initial_cluster_token.unwrap_or(d.initial_cluster_token),
        node,
        limits,
        peer,
        auto_compaction,
        quota_backend_bytes: match a.quota_backend_bytes.unwrap_or(0) {
            0 => Some(dengine::grpc::etcd::quota::DEFAULT_QUOTA_BYTES),
            n if n < 0 => None,
            n => Some(n as u64),
        },
        disk_reserve_bytes: a
            .disk_reserve_bytes
            .unwrap_or(dengine::grpc::etcd::quota::DEFAULT_DISK_RESERVE_BYTES),
        watch_progress_notify_interval,
        trace_requests,
        client_tls: tls_files(
            a.cert_file,
            a.key_file,
            a.trusted_ca_file,
            a.client_cert_auth,
            "--cert-file",
        )?,
        peer_tls: tls_files(
            a.peer_cert_file,
            a.peer_key_file,
            a.peer_trusted_ca_file,
            a.peer_client_cert_auth,
            "--peer-cert-file",
        )?,
        initial_corrupt_check: a
            .experimental_initial_corrupt_check
            .unwrap_or(d.initial_corrupt_check),
        corrupt_check_interval,
    })
}

/// How passwords are hashed and tokens made, from `--auth-token`,
/// `--auth-token-ttl` and `--bcrypt-cost`.
fn auth_settings(
    token: Option<&str>,
    ttl: Option<u64>,
    cost: Option<u32>,
) -> Result<(AuthSettings, Duration), String> {
    let jwt = match token.map(|t| (t, t.split(',').next().unwrap_or(""))) {
        None | Some((_, "simple")) => None,
        Some((spec, "jwt")) => {
            let options = JwtOptions::parse(spec).map_err(|e| format!("--auth-token: {e}"))?;
            Some(Arc::new(
                Jwt::load(&options).map_err(|e| format!("--auth-token: {e}"))?,
            ))
        }
        Some((_, other)) => {
            return Err(format!(
                "--auth-token {other:?}: expected simple or jwt,pub-key=FILE,priv-key=FILE,\
                 sign-method=METHOD[,ttl=DURATION]"
            ));
        }
    };
    let ttl = ttl.unwrap_or(300);
    if ttl == 0 {
        return Err("--auth-token-ttl must be at least 1 second".into());
    }
    let cost = cost.unwrap_or(10);
    if !(4..=31).contains(&cost) {
        return Err(format!("--bcrypt-cost {cost}: must be 4 to 31"));
    }
    Ok((
        AuthSettings {
            bcrypt_cost: cost,
            jwt,
        },
        Duration::from_secs(ttl),
    ))
}

/// One port's TLS files from its flags: none without a certificate; a
/// certificate needs its key, and client certificate authentication a CA.
fn tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    client_cert_auth: Option<bool>,
    flag: &str,
) -> Result<Option<TlsFiles>, String> {
    let client_cert_auth = client_cert_auth.unwrap_or(false);
    let key_flag = flag.replace("cert-file", "key-file");
    match (cert, key) {
        (None, None) if client_cert_auth => Err(format!(
            "{}: client certificates can only be asked for over TLS ({flag} and {key_flag})",
            flag.replace("cert-file", "client-cert-auth")
        )),
        (None, None) => Ok(None),
        (Some(_), None) => Err(format!("{flag} needs {key_flag}")),
        (None, Some(_)) => Err(format!("{key_flag} needs {flag}")),
        (Some(cert_file), Some(key_file)) => {
            if client_cert_auth && ca.is_none() {
                return Err(format!(
                    "{} needs {}",
                    flag.replace("cert-file", "client-cert-auth"),
                    flag.replace("cert-file", "trusted-ca-file")
                ));
            }
            Ok(Some(TlsFiles {
                cert_file,
                key_file,
                trusted_ca_file: ca,
                client_cert_auth,
            }))
        }
    }
}

/// What the member says about itself: logs and metrics.
pub struct Observe {
    /// Where `/metrics` and `/health` are served.
    pub metrics_urls: Vec<String>,
    /// How logs are written.
    pub log_format: LogFormat,
    /// The log filter.
    pub log_filter: tracing_subscriber::EnvFilter,
    /// Where traces go, when they are on.
    pub tracing: Option<crate::otel::TracingSettings>,
}

/// The logging and metrics settings of the merged arguments.
fn observe(a: &ServeArgs) -> Result<Observe, String> {
    use tracing_subscriber::EnvFilter;
    let log_filter = match a.log_level.as_deref() {
        Some(level @ ("debug" | "info" | "warn" | "error")) => EnvFilter::new(level),
        // etcd's levels above error: only errors are logged.
        Some("panic" | "fatal") => EnvFilter::new("error"),
        Some(other) => {
            return Err(format!(
                "--log-level {other:?}: expected debug, info, warn or error"
            ));
        }
        None => EnvFilter::try_from_env("DENGINE_LOG")
            .or_else(|_| EnvFilter::try_from_default_env())
            .unwrap_or_else(|_| EnvFilter::new("info")),
    };
    Ok(Observe {
        // Checked where they are bound (`observe::bind`), before the node
        // starts.
        metrics_urls: a.listen_metrics_urls.clone().unwrap_or_default(),
        log_format: a.log_format.unwrap_or_default(),
        log_filter,
        tracing: a.enable_distributed_tracing.unwrap_or(false).then(|| {
            crate::otel::TracingSettings {
                address: a
                    .distributed_tracing_address
                    .clone()
                    .unwrap_or_else(|| crate::otel::DEFAULT_ADDRESS.into()),
                service_name: a
                    .distributed_tracing_service_name
                    .clone()
                    .unwrap_or_else(|| "dengine".into()),
                instance_id: a
                    .distributed_tracing_instance_id
                    .clone()
                    .or_else(|| a.name.clone())
                    .unwrap_or_else(|| "default".into()),
                sampling_per_million: a.distributed_tracing_sampling_rate.unwrap_or(0),
            }
        }),
    })
}

/// Logs to stderr through `filter`; spans also to `traces`, when on
/// (filtered on their own, so a quiet log still traces).
fn init_logging(
    format: LogFormat,
    filter: tracing_subscriber::EnvFilter,
    traces: Option<crate::otel::TraceLayer>,
) {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    let logs = match format {
        // Colours only for a terminal: a log file gets plain text.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(traces)
        .with(logs.with_filter(filter))
        .try_init();
}

/// A member's settings from its flags, environment and config file.
pub fn config(args: ServeArgs) -> Result<ServerConfig, String> {
    merge(args).and_then(server_config)
}

/// The async runtime's worker threads: as set, or one less than the cores
/// this process may use (at least one), since the disk and apply threads
/// need a core too. With a worker per core, on 2 cores, requests hopped
/// between the two workers and woke them from sleep: 7-30% more CPU per
/// request.
fn worker_threads(a: &ServeArgs) -> Result<usize, String> {
    match a.worker_threads {
        Some(0) => Err("--worker-threads must be at least 1".into()),
        Some(n) => Ok(n),
        None => Ok(std::thread::available_parallelism()
            .map_or(1, |n| n.get().saturating_sub(1))
            .max(1)),
    }
}

/// Runs `dengine serve` to the end; the exit code.
pub fn run(args: ServeArgs) -> ExitCode {
    let settings =
        merge(args).and_then(|a| Ok((observe(&a)?, worker_threads(&a)?, server_config(a)?)));
    let (observe, workers, cfg) = match settings {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dengine serve: {e}");
            return ExitCode::from(2);
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().worker_threads(workers);
    // Responses that apply finished together are then flushed together
    // (one write, not one each): see .cargo/config.toml.
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    let rt = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dengine serve: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The span exporter's connection lives on the runtime.
    let tracing = match &observe.tracing {
        Some(settings) => {
            let _in_runtime = rt.enter();
            match crate::otel::start(settings) {
                Ok(t) => Some(t),
                Err(e) => {
                    eprintln!("dengine serve: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        None => None,
    };
    let (layer, tracing) = tracing.unzip();
    init_logging(observe.log_format, observe.log_filter, layer);
    tracing::info!(
        workers = rt.metrics().num_workers(),
        "async runtime started"
    );
    let code = rt.block_on(serve(cfg, observe.metrics_urls));
    if let Some(t) = tracing {
        t.shutdown();
    }
    code
}

async fn serve(cfg: ServerConfig, metrics_urls: Vec<String>) -> ExitCode {
    // Bound and recorded before the node starts: a taken port is a bad
    // setting (exit 2), and every metric from the start is kept.
    let metrics = if metrics_urls.is_empty() {
        None
    } else {
        let bound = crate::observe::bind(&metrics_urls).await;
        match bound.and_then(|l| Ok((l, crate::observe::install()?))) {
            Ok(m) => Some(m),
            Err(e) => {
                eprintln!("dengine serve: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let data_dir = cfg.node.data_dir.clone();
    let storage = cfg.node.storage;
    let name = cfg.name.clone();
    let server = match Server::start(cfg).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dengine serve: {e}");
            return match e {
                ServerError::Config(_) | ServerError::Members(_) | ServerError::Listen { .. } => {
                    ExitCode::from(2)
                }
                ServerError::Node(dengine::Error::Config(_)) => ExitCode::from(2),
                // Not a bad setting: what the store holds (exit 1).
                ServerError::Inconsistent(_) => ExitCode::FAILURE,
                _ => ExitCode::FAILURE,
            };
        }
    };
    let record = server.record();
    let client = server
        .client_addrs()
        .first()
        .map(|a| format!("http://{a}"))
        .unwrap_or_default();
    println!(
        "dengine {} serving member {name} (id {:x}) of cluster {:x}",
        env!("CARGO_PKG_VERSION"),
        record.member_id.0,
        record.cluster_id
    );
    for a in server.client_addrs() {
        println!("  clients: http://{a}  (etcd v3 API)");
    }
    for a in server.peer_addrs() {
        println!("  peers:   http://{a}");
    }
    if let Some((listeners, handle)) = metrics {
        for a in crate::observe::serve(listeners, handle, server.node().metrics()) {
            println!("  metrics: http://{a}/metrics  (and /health, /livez, /readyz)");
        }
    }
    println!("  data:    {} ({storage:?})", data_dir.display());
    println!(
        "try: etcdctl --endpoints={client} put hello world && etcdctl --endpoints={client} get hello"
    );
    let mut node_state = server.node().metrics();
    tokio::select! {
        _ = wait_for_signal() => tracing::info!("stopping"),
        _ = server.removed() => {
            eprintln!("dengine serve: this member was removed from the cluster; stopping");
        }
        failed = node_state.wait_for(|m| m.fatal.is_some()) => {
            // The node stopped (a failed fsync, a dead thread): nothing it
            // holds can be trusted to go on, so the process ends and its
            // supervisor restarts it from what is on disk.
            let why = failed.ok().and_then(|m| m.fatal.clone()).unwrap_or_default();
            eprintln!("dengine serve: the node stopped: {why}");
            let _ = tokio::time::timeout(Duration::from_secs(5), server.shutdown()).await;
            return ExitCode::FAILURE;
        }
    }
    match tokio::time::timeout(Duration::from_secs(10), server.shutdown()).await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("dengine serve: stopping: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("dengine serve: stopping took longer than 10 s");
            ExitCode::FAILURE
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
#[path = "serve_config_fuzz.rs"]
mod config_fuzz;

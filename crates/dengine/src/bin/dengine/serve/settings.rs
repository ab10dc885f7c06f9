//! A member's settings ([`ServerConfig`]) from its merged flags.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dengine::grpc::etcd::auth::jwt::{Jwt, JwtOptions};
use dengine::grpc::etcd::{AuthSettings, Limits};
use dengine::grpc::server::{ClusterState, ServerConfig};
use dengine::grpc::tls::TlsFiles;
use dengine::{Config, StorageKind};
use figment::Figment;
use figment::providers::Serialized;

use super::args::{FLAG_VARS, InitialState, ServeArgs, Storage};

/// The member's settings from the merged arguments.
pub(crate) fn server_config(a: ServeArgs) -> Result<ServerConfig, String> {
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

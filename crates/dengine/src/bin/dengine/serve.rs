//! `dengine serve`: etcd's flags where etcd has them, a TOML config file,
//! and `DENGINE_*` environment overrides. Precedence: flags, then the
//! environment, then the file, then the defaults. Bad settings print one
//! line naming the problem and exit with code 2, before anything is
//! created.

use std::process::ExitCode;
use std::time::Duration;

use dengine::grpc::server::{Server, ServerConfig, ServerError};

mod args;
mod settings;

use args::merge;
pub use args::{LogFormat, ServeArgs};
use settings::server_config;

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

//! Throughput and latency of a 3-node cluster in one process, over the
//! in-memory network, measured the way openraft's `benchmarks/minimal`
//! measures itself: one log entry per proposal, empty payloads, a proposal
//! is done when applied on the leader.
//!
//! ```text
//! cargo run --release -p dengine --example bench -- [--storage memory|sled|rocksdb]
//!     [--proposers 1,16,256] [--seconds 5] [--payload 0] [--runs 1] [--sm count|kv]
//!     [--metrics off|on]
//! ```
//! `--sm count` (the default) measures the protocol alone; `--sm kv` runs
//! the key-value state machine on the node's backend (puts over 100,000
//! keys). `--metrics on` installs a Prometheus recorder, as `dengine
//! serve --listen-metrics-urls` does, to measure what the metrics cost.
//! Settings can be overridden with `DENGINE_<FIELD>=value` as for any node.
//! Prints one line per proposer count: proposals/s, p50, p99, max latency
//! (with `--runs N`, each run on a fresh cluster, then the median run by
//! throughput, as openraft reports medians).
//! Throughput counts every proposal; latency is timed on every 8th proposal
//! of each proposer (a uniform sample: reading the clock twice per
//! proposal costs more than a tenth of the CPU at a million proposals/s,
//! which openraft's benchmark, timing only the whole run, does not pay).
//! `cpu` is the process's CPU time (user + system, all threads, from
//! `/proc/self/stat`; Linux only) divided by the proposals made: on a
//! shared machine it varies far less than throughput does.
//!
//! It runs on the allocator `dengine serve` runs on, mimalloc with its
//! arenas' eager commit off (the binary's `allocator` module, shared):
//! with glibc's malloc, about 5% more CPU per proposal (6 alternated
//! pairs, `--sm kv --payload 256 --proposers 256`).

#[path = "../src/bin/dengine/allocator.rs"]
mod allocator;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dengine::kv::{KvCommand, KvStateMachine, PutRequest};
use dengine::{Config, InMemoryNetwork, Node, NodeBuilder, NodeId, StateMachine, StorageKind};
use dengine_bench::procfs::own_cpu_seconds;

/// Counts applied commands; nothing else (the protocol is what is measured).
#[derive(Default)]
struct Count(u64);

impl StateMachine for Count {
    type Response = ();
    fn apply(&mut self, _: dengine::EntryId, _: &[u8]) {
        self.0 += 1;
    }
    fn snapshot(&mut self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        out.write_all(&self.0.to_le_bytes())
    }
    fn restore(&mut self, input: &mut dyn std::io::Read) -> std::io::Result<()> {
        let mut b = [0u8; 8];
        input.read_exact(&mut b)?;
        self.0 = u64::from_le_bytes(b);
        Ok(())
    }
}

/// Latency is timed on one proposal in this many.
const SAMPLE: u64 = 8;

/// What the benchmark runs: how to open the state machine and what a
/// proposal is.
trait Bench: StateMachine + Sized {
    fn open(config: &Config) -> Result<Self, dengine::Error>;
    /// The `seq`-th command of a proposer.
    fn command(proposer: u64, seq: u64, payload: usize) -> Vec<u8>;
}

impl Bench for Count {
    fn open(_: &Config) -> Result<Self, dengine::Error> {
        Ok(Count::default())
    }
    fn command(_: u64, _: u64, payload: usize) -> Vec<u8> {
        vec![0u8; payload]
    }
}

/// The key-value store on the node's backend: puts of `payload`-byte
/// values over 100,000 keys.
impl Bench for KvStateMachine {
    fn open(config: &Config) -> Result<Self, dengine::Error> {
        KvStateMachine::open(config)
    }
    fn command(proposer: u64, seq: u64, payload: usize) -> Vec<u8> {
        let key = (proposer.wrapping_mul(7919) + seq.wrapping_mul(104_729)) % 100_000;
        KvCommand::Put(PutRequest {
            key: format!("key{key:06}").into_bytes(),
            value: vec![b'v'; payload],
            prev_kv: false,
            ..Default::default()
        })
        .encode()
    }
}

struct Args {
    storage: StorageKind,
    proposers: Vec<usize>,
    seconds: u64,
    payload: usize,
    runs: usize,
    sm: String,
    /// Whether a Prometheus recorder takes the metrics (`--metrics on`):
    /// what `dengine serve --listen-metrics-urls` pays.
    metrics: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        storage: StorageKind::Memory,
        proposers: vec![1, 16, 256],
        seconds: 5,
        payload: 0,
        runs: 1,
        sm: "count".to_string(),
        metrics: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(f) = it.next() {
        let v = it.next().ok_or(format!("{f} needs a value"))?;
        match f.as_str() {
            "--storage" => {
                a.storage = match v.as_str() {
                    "memory" => StorageKind::Memory,
                    "sled" => StorageKind::Sled,
                    "rocksdb" => StorageKind::Rocksdb,
                    _ => return Err(format!("unknown storage {v}")),
                }
            }
            "--proposers" => {
                a.proposers = v
                    .split(',')
                    .map(|p| p.parse().map_err(|e| format!("--proposers: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--seconds" => a.seconds = v.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--payload" => a.payload = v.parse().map_err(|e| format!("--payload: {e}"))?,
            "--sm" => {
                if v != "count" && v != "kv" {
                    return Err(format!("unknown --sm {v} (count or kv)"));
                }
                a.sm = v;
            }
            "--runs" => {
                a.runs = v.parse().map_err(|e| format!("--runs: {e}"))?;
                if a.runs == 0 {
                    return Err("--runs must be at least 1".into());
                }
            }
            "--metrics" => {
                a.metrics = match v.as_str() {
                    "on" => true,
                    "off" => false,
                    _ => return Err(format!("--metrics {v}: on or off")),
                }
            }
            _ => return Err(format!("unknown argument {f}")),
        }
    }
    Ok(a)
}

async fn cluster<SM: Bench>(
    storage: StorageKind,
    dir: &std::path::Path,
) -> Result<(Vec<Node<SM>>, usize), dengine::Error> {
    let net = InMemoryNetwork::new();
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let mut config = Config {
            node_id: id,
            storage,
            data_dir: dir.join(format!("n{id}")),
            tick_ms: 10,
            election_ticks: 30,
            heartbeat_ticks: 3,
            snapshot_threshold: 1_000_000,
            max_pending_requests: 1 << 20,
            ..Config::default()
        };
        // Any setting can be tuned for a run with DENGINE_<FIELD>=value.
        config.apply_env(std::env::vars())?;
        nodes.push(
            NodeBuilder::new(config.clone(), SM::open(&config)?)
                .initial_members([1, 2, 3].map(NodeId))
                .network(&net)
                .build()
                .await?,
        );
    }
    let m = nodes[0]
        .wait_for(Duration::from_secs(10), |m| m.leader.is_some())
        .await?;
    let leader = m.leader.map_or(1, |l| l.0) as usize - 1;
    // Wait until the leader has committed its first entry.
    nodes[leader]
        .wait_for(Duration::from_secs(10), |m| {
            m.commit.0 >= 2 && m.applied.0 >= 2
        })
        .await?;
    Ok((nodes, leader))
}

async fn run_once<SM: Bench>(
    node: &Node<SM>,
    proposers: usize,
    seconds: u64,
    payload: usize,
) -> (u64, Vec<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for proposer in 0..proposers as u64 {
        let node = node.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut done = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = done.is_multiple_of(SAMPLE).then(Instant::now);
                match node.propose(SM::command(proposer, done, payload)).await {
                    Ok(_) => {
                        done += 1;
                        if let Some(t) = t {
                            lat.push(t.elapsed().as_micros() as u64);
                        }
                    }
                    Err(e) if e.is_retryable() => tokio::task::yield_now().await,
                    Err(e) => panic!("proposal failed: {e}"),
                }
            }
            (done, lat)
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut total = 0;
    for t in tasks {
        if let Ok((n, l)) = t.await {
            total += n;
            all.extend(l);
        }
    }
    all.sort_unstable();
    (total, all)
}

/// One run's figures: proposals/s, p50, p99 and max latency in ms, and
/// the process's CPU µs per proposal (`NaN` where unknown).
type RunFigures = (f64, f64, f64, f64, f64);

/// One result line: throughput, latency percentiles and CPU of a run.
fn print_line(label: &str, p: usize, (rate, p50, p99, max, cpu): RunFigures) {
    println!(
        "{label:<8}proposers={p:>5}  {rate:>10.0} proposals/s  p50={p50:.2}ms  p99={p99:.2}ms  max={max:.2}ms  cpu={cpu:.2}us/proposal"
    );
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn main() -> std::process::ExitCode {
    allocator::exec_with_eager_commit_off();
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if args.metrics {
        // As `dengine serve`: histograms in buckets, drained every 5 s.
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(&[0.0001, 0.001, 0.01, 0.1, 1.0])
            .and_then(|b| b.install_recorder());
        match recorder {
            Ok(handle) => {
                dengine::describe_metrics();
                std::thread::spawn(move || {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(5));
                        handle.run_upkeep();
                    }
                });
            }
            Err(e) => {
                eprintln!("bench: metrics: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        match args.sm.as_str() {
            "kv" => measure::<KvStateMachine>(&args).await,
            _ => measure::<Count>(&args).await,
        }
    })
}

/// Runs every proposer count `args.runs` times and prints the lines.
async fn measure<SM: Bench>(args: &Args) -> std::process::ExitCode {
    {
        println!(
            "storage={:?} sm={} payload={}B seconds={} runs={} (3 nodes, in-process network, done when applied on the leader)",
            args.storage, args.sm, args.payload, args.seconds, args.runs
        );
        for &p in &args.proposers {
            let mut results = Vec::new();
            for run in 0..args.runs {
                // A fresh cluster per run: runs do not inherit a long log.
                let dir = std::env::temp_dir()
                    .join(format!("dengine-bench-{}-{p}-{run}", std::process::id()));
                let _ = std::fs::remove_dir_all(&dir);
                let (nodes, leader) = match cluster::<SM>(args.storage, &dir).await {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("bench: cluster failed to start: {e}");
                        return std::process::ExitCode::FAILURE;
                    }
                };
                let cpu_before = own_cpu_seconds();
                let (n, lat) = run_once(&nodes[leader], p, args.seconds, args.payload).await;
                let cpu_us = match (cpu_before, own_cpu_seconds()) {
                    (Some(a), Some(b)) if n > 0 => (b - a) * 1e6 / n as f64,
                    _ => f64::NAN,
                };
                let r = (
                    n as f64 / args.seconds as f64,
                    pct(&lat, 0.50),
                    pct(&lat, 0.99),
                    pct(&lat, 1.0),
                    cpu_us,
                );
                if args.runs > 1 {
                    print_line(&format!("  run {}", run + 1), p, r);
                }
                results.push(r);
                for n in &nodes {
                    let _ = n.shutdown().await;
                }
                let _ = std::fs::remove_dir_all(&dir);
            }
            results.sort_by(|a, b| a.0.total_cmp(&b.0));
            let label = if args.runs > 1 { "median" } else { "" };
            print_line(label, p, results[results.len() / 2]);
        }
        std::process::ExitCode::SUCCESS
    }
}

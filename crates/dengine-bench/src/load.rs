//! Running a workload: connections, the clients' loop, the budget of
//! operations or time, progress, and the figures.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dengine_proto::etcdserverpb as pb;
use dengine_proto::etcdserverpb::lease_client::LeaseClient;
use dengine_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use hdrhistogram::Histogram;
use tonic::transport::{Channel, Endpoint};

use crate::args::{Cli, Consistency, Global, Target, Workload};
use crate::keys::Keys;
use crate::lean::{self, LeanChannel};
use crate::procfs;
use crate::report::{Report, ServerUse, error_kind, new_histogram};

/// Largest value the generator will send (etcd's default request limit
/// is 1.5 MiB; larger only measures the refusal).
const MAX_VALUE: usize = 16 << 20;

/// How many operations may still start: a count, or a deadline.
#[derive(Debug)]
pub struct Budget {
    total: Option<u64>,
    deadline: Option<Instant>,
    issued: AtomicU64,
    /// Operations finished (for progress).
    pub done: AtomicU64,
}

impl Budget {
    /// `--total` or `--duration` (10,000 operations when neither).
    pub fn new(g: &Global) -> Budget {
        let total = match (g.total, g.duration) {
            (None, None) => Some(10_000),
            (t, _) => t,
        };
        Budget {
            total,
            deadline: g.duration.map(|d| Instant::now() + d),
            issued: AtomicU64::new(0),
            done: AtomicU64::new(0),
        }
    }

    /// Whether one more operation may start (and counts it).
    pub fn take(&self) -> bool {
        if let Some(d) = self.deadline
            && Instant::now() >= d
        {
            return false;
        }
        match self.total {
            Some(t) => self.issued.fetch_add(1, Ordering::Relaxed) < t,
            None => true,
        }
    }
}

/// What the clients of one run gathered.
pub struct Gathered {
    /// Operations that succeeded.
    pub ops: u64,
    /// Failed operations by kind.
    pub errors: BTreeMap<String, u64>,
    /// Latencies of the operations that succeeded, in microseconds.
    pub latency: Histogram<u64>,
    /// Figures of one workload only.
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// When the measured part started (after any setup, such as granting
    /// leases or creating watchers).
    pub started: Instant,
}

impl Default for Gathered {
    fn default() -> Self {
        Gathered::new()
    }
}

impl Gathered {
    /// Nothing yet, started now.
    pub fn new() -> Gathered {
        Gathered {
            ops: 0,
            errors: BTreeMap::new(),
            latency: new_histogram(),
            extra: serde_json::Map::new(),
            started: Instant::now(),
        }
    }

    /// Adds another client's figures.
    pub fn merge(&mut self, other: Gathered) {
        self.ops += other.ops;
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
        let _ = self.latency.add(&other.latency);
    }

    /// Counts one operation that took `took`.
    pub fn ok(&mut self, took: Duration) {
        self.ops += 1;
        self.latency
            .saturating_record(took.as_micros().clamp(1, u128::from(u64::MAX)) as u64);
    }

    /// Counts one failed operation.
    pub fn failed(&mut self, status: &tonic::Status) {
        *self.errors.entry(error_kind(status)).or_default() += 1;
    }
}

/// `host:port` as a URL.
fn url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

/// One connection to `url`.
pub async fn connect(url: &str) -> Result<Channel, String> {
    Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("{url}: {e}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connecting to {url}: {e}"))
}

/// The endpoint of the member that leads, asked of each endpoint.
async fn find_leader(urls: &[String]) -> Result<String, String> {
    let mut last = String::from("no endpoint");
    for u in urls {
        let channel = match connect(u).await {
            Ok(c) => c,
            Err(e) => {
                last = e;
                continue;
            }
        };
        match MaintenanceClient::new(channel)
            .status(pb::StatusRequest {})
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                let me = r.header.map(|h| h.member_id).unwrap_or(0);
                if r.leader != 0 && r.leader == me {
                    return Ok(u.clone());
                }
                last = format!("{u} does not lead (leader {:x})", r.leader);
            }
            Err(s) => last = format!("{u}: {}", error_kind(&s)),
        }
    }
    Err(format!(
        "--target leader: the leader is not among --endpoints ({last})"
    ))
}

/// Runs the workload `cli` names; the report.
pub async fn run(cli: Cli) -> Result<Report, String> {
    let g = cli.global;
    if g.endpoints.is_empty() || g.conns == 0 || g.clients == 0 {
        return Err("--endpoints, --conns and --clients need at least one".into());
    }
    if g.key_size == 0 || g.key_space_size == 0 {
        return Err("--key-size and --key-space-size must be at least 1".into());
    }
    if g.val_size > MAX_VALUE {
        return Err(format!("--val-size: at most {MAX_VALUE} bytes"));
    }
    let urls: Vec<String> = g.endpoints.iter().map(|e| url(e)).collect();
    let targets = match g.target {
        Target::Leader => vec![find_leader(&urls).await?],
        Target::All => urls.clone(),
    };
    // The closed-loop workloads' unary calls go over `lean` connections;
    // the streams of the others over tonic's.
    let unary_only = !matches!(
        cli.workload,
        Workload::Watch { .. } | Workload::LeaseKeepalive { .. }
    );
    let mut channels = Vec::with_capacity(g.conns);
    let mut lean_channels = Vec::with_capacity(g.conns);
    for i in 0..g.conns {
        let target = &targets[i % targets.len()];
        if unary_only {
            lean_channels.push(lean::connect(target).await?);
        } else {
            channels.push(connect(target).await?);
        }
    }
    let budget = Arc::new(Budget::new(&g));
    let progress = (!g.quiet).then(|| tokio::spawn(report_progress(budget.clone())));
    let cpu_before = cpu_now(&g.pids);
    let gathered = match &cli.workload {
        Workload::Watch {
            watchers,
            streams,
            put_rate,
        } => crate::watch::run(&g, &channels, &budget, *watchers, *streams, *put_rate).await?,
        Workload::LeaseKeepalive { leases } => {
            lease_keepalive(&g, &channels, &budget, *leases).await?
        }
        w => closed_loop(&g, &lean_channels, &budget, w).await,
    };
    let seconds = gathered.started.elapsed().as_secs_f64();
    let cpu_after = cpu_now(&g.pids);
    if let Some(p) = progress {
        p.abort();
    }
    let per_op = |before: Option<f64>, after: Option<f64>| {
        let (b, a) = (before?, after?);
        (gathered.ops > 0).then(|| (a - b) * 1e6 / gathered.ops as f64)
    };
    let servers = g
        .pids
        .iter()
        .enumerate()
        .map(|(i, &pid)| ServerUse {
            pid,
            cpu_us_per_op: per_op(cpu_before.1[i], cpu_after.1[i]),
            peak_rss_bytes: procfs::peak_rss_bytes(pid),
        })
        .collect();
    Ok(Report {
        workload: cli.workload.name(),
        endpoints: targets,
        conns: g.conns,
        clients: g.clients,
        ops: gathered.ops,
        errors: gathered.errors,
        seconds,
        latency: gathered.latency,
        client_cpu_us_per_op: per_op(cpu_before.0, cpu_after.0),
        servers,
        extra: gathered.extra,
    })
}

/// This process' CPU seconds and each server's.
fn cpu_now(pids: &[u32]) -> (Option<f64>, Vec<Option<f64>>) {
    (
        procfs::own_cpu_seconds(),
        pids.iter().map(|&p| procfs::cpu_seconds(p)).collect(),
    )
}

/// A line on stderr each second: operations so far and the last second's rate.
async fn report_progress(budget: Arc<Budget>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = 0;
    let started = Instant::now();
    loop {
        tick.tick().await;
        let done = budget.done.load(Ordering::Relaxed);
        eprintln!(
            "{:>5.0} s: {done} ops, {} ops/s",
            started.elapsed().as_secs_f64(),
            done - last
        );
        last = done;
    }
}

/// One request of a closed-loop workload.
enum Op {
    Put,
    Range(bool),
    Txn,
}

/// `clients` tasks, each sending one request at a time until the budget
/// runs out.
async fn closed_loop(
    g: &Global,
    channels: &[LeanChannel],
    budget: &Arc<Budget>,
    workload: &Workload,
) -> Gathered {
    let (read_ratio, serializable) = match workload {
        Workload::Range { consistency } => (1.0, *consistency == Consistency::S),
        Workload::Mixed {
            read_ratio,
            consistency,
        } => (*read_ratio, *consistency == Consistency::S),
        _ => (0.0, false),
    };
    let txn = matches!(workload, Workload::TxnPut);
    let value = vec![b'v'; g.val_size];
    let mut tasks = Vec::with_capacity(g.clients);
    let started = Instant::now();
    for c in 0..g.clients {
        let mut kv = channels[c % channels.len()].clone();
        let mut keys = Keys::new(
            c,
            g.clients,
            g.key_size,
            g.key_space_size,
            g.sequential_keys,
        );
        let budget = budget.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Gathered::new();
            // The value is sent from here each time, not copied.
            let mut put = pb::PutRequest {
                value: value.clone(),
                ..Default::default()
            };
            while budget.take() {
                let op = if txn {
                    Op::Txn
                } else if read_ratio >= 1.0 || (read_ratio > 0.0 && keys.rng().unit() < read_ratio)
                {
                    Op::Range(serializable)
                } else {
                    Op::Put
                };
                let key = keys.next_key();
                let t = Instant::now();
                let res = match op {
                    Op::Put => {
                        put.key = key;
                        kv.unary::<_, pb::PutResponse>("/etcdserverpb.KV/Put", &put)
                            .await
                            .map(drop)
                    }
                    Op::Range(serializable) => kv
                        .unary::<_, pb::RangeResponse>(
                            "/etcdserverpb.KV/Range",
                            &pb::RangeRequest {
                                key,
                                serializable,
                                ..Default::default()
                            },
                        )
                        .await
                        .map(drop),
                    Op::Txn => kv
                        .unary::<_, pb::TxnResponse>(
                            "/etcdserverpb.KV/Txn",
                            &cas(key, value.clone()),
                        )
                        .await
                        .map(drop),
                };
                match res {
                    Ok(()) => got.ok(t.elapsed()),
                    Err(s) => got.failed(&s),
                }
                budget.done.fetch_add(1, Ordering::Relaxed);
            }
            got
        }));
    }
    gather(tasks, started).await
}

/// The clients' figures together, measured from `started` (a client task
/// that failed contributes nothing).
pub async fn gather(tasks: Vec<tokio::task::JoinHandle<Gathered>>, started: Instant) -> Gathered {
    let mut all = Gathered::new();
    all.started = started;
    for t in tasks {
        if let Ok(got) = t.await {
            all.merge(got);
        }
    }
    all
}

/// A compare-and-swap shaped txn: if `key`'s version is at least 0 (it
/// always is), put `value`; else read the key.
fn cas(key: Vec<u8>, value: Vec<u8>) -> pb::TxnRequest {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    pb::TxnRequest {
        compare: vec![pb::Compare {
            result: CompareResult::Greater as i32,
            target: CompareTarget::Version as i32,
            key: key.clone(),
            target_union: Some(TargetUnion::Version(-1)),
            ..Default::default()
        }],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: key.clone(),
                value,
                ..Default::default()
            })),
        }],
        failure: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                key,
                ..Default::default()
            })),
        }],
    }
}

/// Grants `leases`, then `clients` tasks keep them alive in turn, each
/// over a `LeaseKeepAlive` stream of its own: one keep-alive and its
/// answer is one operation.
async fn lease_keepalive(
    g: &Global,
    channels: &[Channel],
    budget: &Arc<Budget>,
    leases: usize,
) -> Result<Gathered, String> {
    let leases = leases.max(1);
    let mut ids = Vec::with_capacity(leases);
    let mut grants = tokio::task::JoinSet::new();
    for i in 0..leases {
        let mut lease = LeaseClient::new(channels[i % channels.len()].clone());
        grants.spawn(async move {
            lease
                .lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 0 })
                .await
        });
        if grants.len() >= 64 {
            ids.push(granted(grants.join_next().await)?);
        }
    }
    while let Some(r) = grants.join_next().await {
        ids.push(granted(Some(r))?);
    }
    let ids = Arc::new(ids);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(g.clients);
    for c in 0..g.clients {
        let mut lease = LeaseClient::new(channels[c % channels.len()].clone());
        let budget = budget.clone();
        let ids = ids.clone();
        let clients = g.clients;
        tasks.push(tokio::spawn(async move {
            let mut got = Gathered::new();
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let mut answers = match lease
                .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
            {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    got.failed(&s);
                    return got;
                }
            };
            let mut next = c;
            while budget.take() {
                let id = ids[next % ids.len()];
                next += clients;
                let t = Instant::now();
                if tx.send(pb::LeaseKeepAliveRequest { id }).await.is_err() {
                    break;
                }
                match answers.message().await {
                    Ok(Some(_)) => got.ok(t.elapsed()),
                    Ok(None) => break,
                    Err(s) => {
                        got.failed(&s);
                        break;
                    }
                }
                budget.done.fetch_add(1, Ordering::Relaxed);
            }
            got
        }));
    }
    let mut all = gather(tasks, started).await;
    all.extra.insert("leases".into(), leases.into());
    Ok(all)
}

type Granted = Option<
    Result<Result<tonic::Response<pb::LeaseGrantResponse>, tonic::Status>, tokio::task::JoinError>,
>;

/// The id of a granted lease.
fn granted(r: Granted) -> Result<i64, String> {
    match r {
        Some(Ok(Ok(r))) => Ok(r.into_inner().id),
        Some(Ok(Err(s))) => Err(format!("granting leases: {}", error_kind(&s))),
        Some(Err(e)) => Err(format!("granting leases: {e}")),
        None => Err("granting leases: no answer".into()),
    }
}

//! What a run measured, as a table or one JSON line.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

/// Latencies in microseconds, 1 µs to 10 minutes, 3 significant figures.
pub fn new_histogram() -> Histogram<u64> {
    // Constant bounds, valid: this cannot fail.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// A server process' share.
#[derive(Debug, Clone)]
pub struct ServerUse {
    /// Its pid.
    pub pid: u32,
    /// Its CPU per operation, in microseconds.
    pub cpu_us_per_op: Option<f64>,
    /// Its peak resident memory.
    pub peak_rss_bytes: Option<u64>,
}

/// The outcome of a run.
#[derive(Debug)]
pub struct Report {
    /// The workload, as named on the command line.
    pub workload: String,
    /// The endpoints requests went to.
    pub endpoints: Vec<String>,
    /// gRPC connections.
    pub conns: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Operations that succeeded (events received, for watch).
    pub ops: u64,
    /// Failed operations by kind (code and message).
    pub errors: BTreeMap<String, u64>,
    /// Seconds the measured part took.
    pub seconds: f64,
    /// Latencies in microseconds.
    pub latency: Histogram<u64>,
    /// This process' CPU per operation, in microseconds.
    pub client_cpu_us_per_op: Option<f64>,
    /// The server processes given with `--pids`.
    pub servers: Vec<ServerUse>,
    /// Figures of one workload only (watch: puts, events expected).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ops as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// Percentile `q` (0-100) in milliseconds.
    fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q / 100.0) as f64 / 1000.0
    }

    /// The report as one JSON object.
    pub fn json(&self) -> serde_json::Value {
        let servers: Vec<serde_json::Value> = self
            .servers
            .iter()
            .map(|s| {
                serde_json::json!({
                    "pid": s.pid,
                    "cpu_us_per_op": s.cpu_us_per_op,
                    "peak_rss_bytes": s.peak_rss_bytes,
                })
            })
            .collect();
        let mut v = serde_json::json!({
            "workload": self.workload,
            "endpoints": self.endpoints,
            "conns": self.conns,
            "clients": self.clients,
            "ops": self.ops,
            "errors": self.errors,
            "seconds": self.seconds,
            "ops_per_sec": self.rate(),
            "latency_ms": {
                "mean": self.latency.mean() / 1000.0,
                "p50": self.ms(50.0),
                "p90": self.ms(90.0),
                "p99": self.ms(99.0),
                "p99_9": self.ms(99.9),
                "max": self.latency.max() as f64 / 1000.0,
            },
            "client_cpu_us_per_op": self.client_cpu_us_per_op,
            "servers": servers,
        });
        if let Some(obj) = v.as_object_mut() {
            for (k, x) in &self.extra {
                obj.insert(k.clone(), x.clone());
            }
        }
        v
    }

    /// Prints the report: the table, or one JSON line with `--json`.
    pub fn print_as(&self, json: bool) {
        if json {
            println!("{}", self.json());
            return;
        }
        let errors: u64 = self.errors.values().sum();
        println!(
            "{}: {} ops in {:.2} s: {:.1} ops/s, {} errors ({} clients, {} conns)",
            self.workload,
            self.ops,
            self.seconds,
            self.rate(),
            errors,
            self.clients,
            self.conns
        );
        println!(
            "latency ms: mean {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            self.latency.mean() / 1000.0,
            self.ms(50.0),
            self.ms(90.0),
            self.ms(99.0),
            self.ms(99.9),
            self.latency.max() as f64 / 1000.0
        );
        for (k, v) in &self.extra {
            println!("{k}: {v}");
        }
        for (kind, n) in &self.errors {
            println!("error x{n}: {kind}");
        }
        if let Some(c) = self.client_cpu_us_per_op {
            println!("client CPU: {c:.1} us/op");
        }
        for s in &self.servers {
            let cpu = s
                .cpu_us_per_op
                .map_or("?".to_string(), |c| format!("{c:.1} us/op"));
            let rss = s.peak_rss_bytes.map_or("?".to_string(), |b| {
                format!("{:.1} MiB", b as f64 / 1048576.0)
            });
            println!("server pid {}: CPU {cpu}, peak RSS {rss}", s.pid);
        }
    }
}

/// An error's kind, for counting: its code and (the start of) its message.
pub fn error_kind(status: &tonic::Status) -> String {
    let mut message = status.message().to_string();
    if message.len() > 120 {
        let mut cut = 120;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    format!("{:?}: {message}", status.code())
}

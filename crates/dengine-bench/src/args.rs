//! The command line: etcd's benchmark flags, and the workloads.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// A load generator for etcd's v3 API (dengine or etcd).
#[derive(Parser, Debug)]
#[command(name = "dengine-bench", version)]
pub struct Cli {
    /// The settings every workload shares.
    #[command(flatten)]
    pub global: Global,
    /// What to run.
    #[command(subcommand)]
    pub workload: Workload,
}

/// Settings of every workload (etcd's benchmark flags).
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Client URLs of the members (host:port or http://host:port),
    /// comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379",
        global = true
    )]
    pub endpoints: Vec<String>,
    /// gRPC connections, shared by the clients.
    #[arg(long, default_value_t = 1, global = true)]
    pub conns: usize,
    /// Requests in flight at once (one at a time per client).
    #[arg(long, default_value_t = 1, global = true)]
    pub clients: usize,
    /// Operations to run (10,000 when neither this nor --duration is given).
    #[arg(long, global = true)]
    pub total: Option<u64>,
    /// How long to run instead (10s, 500ms, 2m).
    #[arg(long, global = true, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Bytes of each key.
    #[arg(long, default_value_t = 8, global = true)]
    pub key_size: usize,
    /// Bytes of each value.
    #[arg(long, default_value_t = 256, global = true)]
    pub val_size: usize,
    /// Distinct keys written and read.
    #[arg(long, default_value_t = 100_000, global = true)]
    pub key_space_size: u64,
    /// Keys in order (0, 1, 2, ...) instead of at random.
    #[arg(long, global = true)]
    pub sequential_keys: bool,
    /// Send every request to the leader, or spread them over all endpoints.
    #[arg(long, value_enum, default_value_t = Target::Leader, global = true)]
    pub target: Target,
    /// Server processes whose CPU time and peak memory to report,
    /// comma-separated pids.
    #[arg(long, value_delimiter = ',', global = true)]
    pub pids: Vec<u32>,
    /// Print one JSON line instead of the table.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(long, global = true)]
    pub quiet: bool,
}

/// Where requests go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// The member that leads (found with Maintenance.Status).
    Leader,
    /// Every endpoint, connections spread over them.
    All,
}

/// A read's consistency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    /// Linearizable.
    L,
    /// Serializable.
    S,
}

/// The workloads.
#[derive(Subcommand, Debug, Clone)]
pub enum Workload {
    /// Puts of random (or sequential) keys.
    Put,
    /// Reads of one random key each.
    Range {
        /// l: linearizable, s: serializable.
        #[arg(long, value_enum, default_value_t = Consistency::L)]
        consistency: Consistency,
    },
    /// A compare-and-swap shaped txn per operation: if the key's version
    /// is at least 0, put it, else read it.
    TxnPut,
    /// Reads and puts mixed at random.
    Mixed {
        /// The share of reads, 0 to 1.
        #[arg(long, default_value_t = 0.9)]
        read_ratio: f64,
        /// l: linearizable, s: serializable.
        #[arg(long, value_enum, default_value_t = Consistency::L)]
        consistency: Consistency,
    },
    /// Watchers of the whole key space, fed by a steady put rate: events
    /// delivered per second and their latency from put to delivery.
    Watch {
        /// Watchers in all.
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        /// Watch streams they are spread over (each on a connection).
        #[arg(long, default_value_t = 10)]
        streams: usize,
        /// Puts per second that make the events (--total counts puts).
        #[arg(long, default_value_t = 100)]
        put_rate: u64,
    },
    /// Keep-alives of many leases, each client on a stream of its own.
    LeaseKeepalive {
        /// Leases granted first and kept alive in turn.
        #[arg(long, default_value_t = 1000)]
        leases: usize,
    },
}

impl Workload {
    /// The workload's name, as on the command line.
    pub fn name(&self) -> String {
        match self {
            Workload::Put => "put".into(),
            Workload::Range { consistency } => format!("range-{consistency:?}").to_lowercase(),
            Workload::TxnPut => "txn-put".into(),
            Workload::Mixed {
                read_ratio,
                consistency,
            } => format!("mixed-{read_ratio}-{consistency:?}").to_lowercase(),
            Workload::Watch { .. } => "watch".into(),
            Workload::LeaseKeepalive { .. } => "lease-keepalive".into(),
        }
    }
}

/// `10s`, `500ms`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration such as 10s or 500ms"))?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(format!("{s:?}: must be more than 0"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_etcds_tools_write_them() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("s").is_err());
    }
}

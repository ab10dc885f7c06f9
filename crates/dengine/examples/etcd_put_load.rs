//! A put load against any etcd v3 endpoint (dengine or etcd itself) with
//! the `etcd-client` crate, so both are measured with the same client:
//!
//! ```sh
//! cargo run --release -p dengine --example etcd_put_load -- \
//!     --endpoints 127.0.0.1:2379 --clients 64 --conns 8 --seconds 10
//! ```
//!
//! `clients` tasks each send one put at a time (8-byte keys drawn from a
//! space of 100,000, 256-byte values) over `conns` connections, spread
//! over the endpoints. Prints throughput and latency percentiles. The
//! full load generator with etcd's benchmark flags comes with the
//! benchmarks issue; this is the minimum to compare the two servers.

use std::time::{Duration, Instant};

struct Args {
    endpoints: Vec<String>,
    clients: usize,
    conns: usize,
    seconds: u64,
    key_space: u64,
    val_size: usize,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        endpoints: vec!["127.0.0.1:2379".into()],
        clients: 1,
        conns: 1,
        seconds: 10,
        key_space: 100_000,
        val_size: 256,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--endpoints" => a.endpoints = value.split(',').map(str::to_string).collect(),
            "--clients" => a.clients = num(&value)? as usize,
            "--conns" => a.conns = num(&value)? as usize,
            "--seconds" => a.seconds = num(&value)?,
            "--key-space" => a.key_space = num(&value)?,
            "--val-size" => a.val_size = num(&value)? as usize,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.clients == 0 || a.conns == 0 || a.key_space == 0 {
        return Err("--clients, --conns and --key-space must be at least 1".into());
    }
    Ok(a)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("etcd_put_load: {e}");
            std::process::exit(2);
        }
    };
    let mut conns = Vec::new();
    for i in 0..args.conns {
        let ep = args.endpoints[i % args.endpoints.len()].clone();
        match etcd_client::Client::connect([ep.clone()], None).await {
            Ok(c) => conns.push(c.kv_client()),
            Err(e) => {
                eprintln!("etcd_put_load: connecting to {ep}: {e}");
                std::process::exit(1);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let mut kv = conns[c % conns.len()].clone();
        let (space, val) = (args.key_space, vec![b'v'; args.val_size]);
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::new();
            let mut errors = 0u64;
            // A cheap generator per client: keys spread over the space.
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (c as u64 + 1);
            while Instant::now() < deadline {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = format!("{:08}", x % space);
                let t = Instant::now();
                match kv.put(key, val.clone(), None).await {
                    Ok(_) => lat.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((lat, e)) = t.await {
            all.extend(lat);
            errors += e;
        }
    }
    let secs = started.elapsed().as_secs_f64().max(args.seconds as f64);
    all.sort_unstable();
    println!(
        "clients={:4} conns={:3} puts/s={:9.0} p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms errors={}",
        args.clients,
        args.conns,
        all.len() as f64 / secs,
        percentile(&all, 0.50),
        percentile(&all, 0.90),
        percentile(&all, 0.99),
        percentile(&all, 1.0),
        errors
    );
}

//! Watch throughput against any etcd v3 endpoint (dengine or etcd itself)
//! with the `etcd-client` crate:
//!
//! ```sh
//! cargo run --release -p dengine --example watch_load -- \
//!     --endpoints 127.0.0.1:2379 --watchers 1000 --streams 10 --puts 5000 --clients 16
//! ```
//!
//! `watchers` watchers of one prefix, spread over `streams` watch streams
//! (each on a connection of its own), then `puts` puts of 256-byte values
//! under that prefix from `clients` tasks. Every put is an event for every
//! watcher. Prints the events delivered per second (from the first put to
//! the last event received by every watcher) and the puts per second.

use std::time::{Duration, Instant};

use etcd_client::{Client, WatchOptions};

struct Args {
    endpoints: Vec<String>,
    watchers: usize,
    streams: usize,
    puts: usize,
    clients: usize,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        endpoints: vec!["127.0.0.1:2379".into()],
        watchers: 1000,
        streams: 10,
        puts: 5000,
        clients: 16,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--endpoints" => a.endpoints = value.split(',').map(str::to_string).collect(),
            "--watchers" => a.watchers = num(&value)?,
            "--streams" => a.streams = num(&value)?,
            "--puts" => a.puts = num(&value)?,
            "--clients" => a.clients = num(&value)?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.watchers == 0 || a.streams == 0 || a.clients == 0 || a.streams > a.watchers {
        return Err("--watchers, --streams, --clients at least 1; streams at most watchers".into());
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = parse()?;
    let prefix = format!("watch-load/{}/", std::process::id());
    // The watchers, created before any put.
    let mut counters = Vec::new();
    for s in 0..a.streams {
        let n = a.watchers / a.streams + usize::from(s < a.watchers % a.streams);
        let endpoint = a.endpoints[s % a.endpoints.len()].clone();
        let mut cl = Client::connect([endpoint], None).await?;
        let opts = || Some(WatchOptions::new().with_prefix());
        let mut stream = cl.watch(prefix.clone(), opts()).await?;
        for _ in 1..n {
            stream.watch(prefix.clone(), opts()).await?;
        }
        let mut created = 0;
        while created < n {
            let r = stream.message().await?.ok_or("watch stream ended")?;
            created += usize::from(r.created());
        }
        let want = n * a.puts;
        counters.push(tokio::spawn(async move {
            let _keep = cl;
            let mut seen = 0usize;
            while seen < want {
                match stream.message().await {
                    Ok(Some(r)) => seen += r.events().len(),
                    _ => break,
                }
            }
            (seen, Instant::now())
        }));
    }
    let start = Instant::now();
    let mut writers = Vec::new();
    for c in 0..a.clients {
        let endpoint = a.endpoints[c % a.endpoints.len()].clone();
        let prefix = prefix.clone();
        let (clients, puts) = (a.clients, a.puts);
        writers.push(tokio::spawn(async move {
            let mut cl = Client::connect([endpoint], None).await?;
            let value = vec![b'v'; 256];
            for i in (c..puts).step_by(clients) {
                cl.put(format!("{prefix}{i:08}"), value.clone(), None)
                    .await?;
            }
            Ok::<_, etcd_client::Error>(())
        }));
    }
    for w in writers {
        w.await??;
    }
    let wrote = start.elapsed();
    let mut delivered = 0;
    let mut last = start;
    for c in counters {
        let (seen, at) = tokio::time::timeout(Duration::from_secs(300), c).await??;
        delivered += seen;
        last = last.max(at);
    }
    let took = last.duration_since(start).as_secs_f64();
    println!(
        "watchers={} streams={} puts={} clients={}: {:.0} puts/s, {} events delivered \
         ({} expected) in {:.2} s: {:.0} events/s",
        a.watchers,
        a.streams,
        a.puts,
        a.clients,
        a.puts as f64 / wrote.as_secs_f64(),
        delivered,
        a.watchers * a.puts,
        took,
        delivered as f64 / took
    );
    Ok(())
}

//! The watch workload: watchers of the whole key space spread over a few
//! streams, and one writer putting at a steady rate. Each put's value
//! starts with the moment it was sent, so every event received gives the
//! latency from put to delivery. An operation is one event delivered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dengine_proto::etcdserverpb as pb;
use dengine_proto::etcdserverpb::kv_client::KvClient;
use dengine_proto::etcdserverpb::watch_client::WatchClient;
use tonic::transport::Channel;

use crate::args::Global;
use crate::keys::Keys;
use crate::load::{Budget, Gathered};

/// How long to wait, once the puts are done, for the last events.
const DRAIN: Duration = Duration::from_secs(10);

/// Runs the watch workload (see the module docs).
pub async fn run(
    g: &Global,
    channels: &[Channel],
    budget: &Arc<Budget>,
    watchers: usize,
    streams: usize,
    put_rate: u64,
) -> Result<Gathered, String> {
    let watchers = watchers.max(1);
    let streams = streams.clamp(1, watchers);
    let epoch = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let (created_tx, mut created_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut readers = Vec::with_capacity(streams);
    for s in 0..streams {
        let mine = watchers / streams + usize::from(s < watchers % streams);
        let mut client = WatchClient::new(channels[s % channels.len()].clone())
            .max_decoding_message_size(usize::MAX);
        let (tx, rx) = tokio::sync::mpsc::channel(mine.max(1));
        for _ in 0..mine {
            let create = pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                    pb::WatchCreateRequest {
                        // Every key: from the smallest to the end.
                        key: vec![0],
                        range_end: vec![0],
                        ..Default::default()
                    },
                )),
            };
            tx.send(create)
                .await
                .map_err(|_| "watch stream closed".to_string())?;
        }
        let mut events = client
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| format!("opening a watch stream: {}", crate::report::error_kind(&s)))?
            .into_inner();
        let received = received.clone();
        let mut stop = stop.clone();
        let created = created_tx.clone();
        readers.push(tokio::spawn(async move {
            // The sender stays open while the stream is read.
            let _keep = tx;
            let mut got = Gathered::new();
            loop {
                let msg = tokio::select! {
                    m = events.message() => m,
                    _ = stop.wait_for(|s| *s) => break,
                };
                match msg {
                    Ok(Some(r)) => {
                        if r.created {
                            let _ = created.send(());
                        }
                        let now = epoch.elapsed();
                        for e in &r.events {
                            let sent =
                                e.kv.as_ref()
                                    .and_then(|kv| kv.value.get(..8))
                                    .and_then(|b| b.try_into().ok())
                                    .map(u64::from_be_bytes);
                            if let Some(sent) = sent {
                                got.ok(now.saturating_sub(Duration::from_nanos(sent)));
                                received.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(s) => {
                        got.failed(&s);
                        break;
                    }
                }
            }
            got
        }));
    }
    drop(created_tx);
    // Every watcher created before the first put.
    for _ in 0..watchers {
        match tokio::time::timeout(Duration::from_secs(30), created_rx.recv()).await {
            Ok(Some(())) => {}
            _ => return Err("the watchers were not all created within 30 s".into()),
        }
    }

    let started = Instant::now();
    let mut kv = KvClient::new(channels[0].clone());
    let mut keys = Keys::new(0, 1, g.key_size, g.key_space_size, g.sequential_keys);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / put_rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut puts = 0u64;
    let mut put_errors = Gathered::new();
    while budget.take() {
        tick.tick().await;
        let mut value = (epoch.elapsed().as_nanos() as u64).to_be_bytes().to_vec();
        value.resize(g.val_size.max(8), b'v');
        match kv
            .put(pb::PutRequest {
                key: keys.next_key(),
                value,
                ..Default::default()
            })
            .await
        {
            Ok(_) => puts += 1,
            Err(s) => put_errors.failed(&s),
        }
        budget.done.fetch_add(1, Ordering::Relaxed);
    }
    let expected = puts * watchers as u64;
    let deadline = Instant::now() + DRAIN;
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop_tx.send(true);
    let mut all = crate::load::gather(readers, started).await;
    for (k, n) in put_errors.errors {
        *all.errors.entry(format!("put {k}")).or_default() += n;
    }
    all.extra.insert("watchers".into(), watchers.into());
    all.extra.insert("puts".into(), puts.into());
    all.extra.insert("events_expected".into(), expected.into());
    Ok(all)
}

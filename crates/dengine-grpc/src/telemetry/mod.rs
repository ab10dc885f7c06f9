//! The server's metrics, recorded through the `metrics` facade as the
//! runtime's are: client calls by method and code ([`requests`]), the peer
//! links' messages and bytes ([`peers`]), and watchers.

pub mod peers;
pub mod requests;
pub mod trace;

pub use requests::RequestMetricsLayer;
pub use trace::TraceLayer;

/// Gives the metrics of this crate their help text (once per process is
/// enough; more is harmless).
pub fn describe_metrics() {
    requests::describe();
    peers::describe();
    metrics::describe_gauge!("dengine_watch_streams", "Watch calls open on this member.");
    metrics::describe_gauge!(
        "dengine_watchers",
        "Watchers open on this member, over all its watch calls."
    );
    metrics::describe_gauge!(
        "etcd_debugging_mvcc_watcher_total",
        "etcd's name of dengine_watchers."
    );
    metrics::describe_gauge!(
        "etcd_debugging_mvcc_watch_stream_total",
        "etcd's name of dengine_watch_streams."
    );
    metrics::describe_counter!(
        "dengine_watch_events_sent_total",
        "Events sent to watchers."
    );
    metrics::describe_counter!(
        "etcd_debugging_mvcc_events_total",
        "etcd's name of dengine_watch_events_sent_total."
    );
}

/// A watch call opened (`1`) or ended (`-1`).
pub(crate) fn record_watch_stream(delta: f64) {
    metrics::gauge!("dengine_watch_streams").increment(delta);
    metrics::gauge!("etcd_debugging_mvcc_watch_stream_total").increment(delta);
}

/// Watchers were added (positive) or removed (negative).
pub(crate) fn record_watchers(delta: f64) {
    if delta != 0.0 {
        metrics::gauge!("dengine_watchers").increment(delta);
        metrics::gauge!("etcd_debugging_mvcc_watcher_total").increment(delta);
    }
}

/// `n` events were sent to a watcher.
pub(crate) fn record_watch_events(n: usize) {
    metrics::counter!("dengine_watch_events_sent_total").increment(n as u64);
    metrics::counter!("etcd_debugging_mvcc_events_total").increment(n as u64);
}

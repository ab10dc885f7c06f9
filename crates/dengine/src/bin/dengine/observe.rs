//! The member's metrics and health over HTTP, on `--listen-metrics-urls`
//! (etcd's flag): `/metrics` (Prometheus text), `/health` (etcd's JSON:
//! healthy when the member knows a leader), `/livez` and `/readyz`.
//!
//! A small HTTP/1.1 responder of its own: one GET per connection, its
//! head read up to [`MAX_HEAD`] bytes within [`READ_TIMEOUT`], answered
//! and closed. Scrapers and probes ask nothing more of it.

use std::net::SocketAddr;
use std::time::Duration;

use dengine::Metrics;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The most bytes of a request's head read.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request's head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Histogram buckets in seconds (etcd's for its disk and request
/// latencies: 1 ms to about 8 s, doubling), and for counts.
const SECONDS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
    2.048, 4.096, 8.192,
];
const COUNTS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
/// Sizes: 1 KiB to 4 GiB, by fours.
const BYTES: &[f64] = &[
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
    1073741824.0,
    4294967296.0,
];

/// Installs the Prometheus recorder for the process (before the node
/// starts, so that every metric lands in it) and describes the metrics.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets(SECONDS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_entries".into()),
                COUNTS,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_bytes".into()),
                BYTES,
            )
        })
        .map_err(|e| format!("metrics: {e}"))?
        .install_recorder()
        .map_err(|e| format!("metrics: {e}"))?;
    dengine::describe_metrics();
    dengine::kv::describe_metrics();
    dengine::grpc::describe_metrics();
    Ok(handle)
}

/// Binds every `http://host:port` of `urls`.
pub async fn bind(urls: &[String]) -> Result<Vec<TcpListener>, String> {
    let mut out = Vec::new();
    for url in urls {
        let addr = url
            .strip_prefix("http://")
            .map(|a| a.trim_end_matches('/'))
            .ok_or_else(|| format!("--listen-metrics-urls {url:?}: expected http://host:port"))?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("--listen-metrics-urls {url:?}: {e}"))?;
        out.push(listener);
    }
    Ok(out)
}

/// Serves the listeners until the process ends; returns their addresses.
pub fn serve(
    listeners: Vec<TcpListener>,
    handle: PrometheusHandle,
    node: watch::Receiver<Metrics>,
) -> Vec<SocketAddr> {
    let addrs = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    // Histograms are kept in buckets that must be drained now and then.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    for listener in listeners {
        let handle = handle.clone();
        let node = node.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of descriptors, say: try again shortly.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let handle = handle.clone();
                let node = node.clone();
                tokio::spawn(async move {
                    let _ = answer(stream, &handle, &node).await;
                });
            }
        });
    }
    addrs
}

/// Reads one request and answers it.
async fn answer(
    mut stream: TcpStream,
    handle: &PrometheusHandle,
    node: &watch::Receiver<Metrics>,
) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => {
            return respond(&mut stream, 431, "text/plain", "request head too large\n").await;
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => return respond(&mut stream, 408, "text/plain", "request timeout\n").await,
    };
    let mut words = head.split(' ');
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" {
        return respond(&mut stream, 405, "text/plain", "only GET\n").await;
    }
    let state = node.borrow().clone();
    match path {
        "/metrics" => {
            let text = handle.render();
            respond(&mut stream, 200, "text/plain; version=0.0.4", &text).await
        }
        "/health" => {
            let (code, body) = health(&state);
            respond(&mut stream, code, "application/json", &body).await
        }
        "/livez" => match &state.fatal {
            None => respond(&mut stream, 200, "text/plain", "ok\n").await,
            Some(why) => respond(&mut stream, 503, "text/plain", &format!("fatal: {why}\n")).await,
        },
        "/readyz" => match health(&state) {
            (200, _) => respond(&mut stream, 200, "text/plain", "ok\n").await,
            (code, body) => respond(&mut stream, code, "application/json", &body).await,
        },
        _ => respond(&mut stream, 404, "text/plain", "not found\n").await,
    }
}

/// etcd's `/health`: `{"health":"true","reason":""}` with 200 when the
/// member knows a leader; 503 and etcd's reason when not.
fn health(state: &Metrics) -> (u16, String) {
    health_of(state.leader.is_some(), state.fatal.as_deref())
}

fn health_of(has_leader: bool, fatal: Option<&str>) -> (u16, String) {
    if let Some(why) = fatal {
        let reason = format!("STOPPED: {why}").replace(['"', '\\'], "'");
        return (
            503,
            format!("{{\"health\":\"false\",\"reason\":\"{reason}\"}}"),
        );
    }
    if !has_leader {
        return (
            503,
            "{\"health\":\"false\",\"reason\":\"RAFT NO LEADER\"}".to_string(),
        );
    }
    (200, "{\"health\":\"true\",\"reason\":\"\"}".to_string())
}

/// The request line of a request whose head ends within [`MAX_HEAD`]
/// bytes (`None`: it does not).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]);
            return Ok(Some(head.lines().next().unwrap_or("").to_string()));
        }
        if buf.len() >= MAX_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn respond(
    stream: &mut TcpStream,
    code: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_etcds_json() {
        assert_eq!(
            health_of(false, None),
            (
                503,
                "{\"health\":\"false\",\"reason\":\"RAFT NO LEADER\"}".into()
            )
        );
        assert_eq!(
            health_of(true, None),
            (200, "{\"health\":\"true\",\"reason\":\"\"}".into())
        );
        assert_eq!(
            health_of(true, Some("disk \"full\"")),
            (
                503,
                "{\"health\":\"false\",\"reason\":\"STOPPED: disk 'full'\"}".into()
            )
        );
    }
}

//! Client requests by service, method and gRPC code, counted as etcd's
//! `go-grpc-prometheus` counts them (`grpc_server_started_total`,
//! `grpc_server_handled_total`, with the same labels), so etcd's
//! dashboards read a dengine member unchanged; handling time goes to
//! `grpc_server_handling_seconds`.
//!
//! A tower layer around the client server: a call is started when its
//! request arrives and handled when its status is known (in the response
//! head for an error without a body, else in the trailers at the end of
//! the body; a body dropped before its end was cancelled). The counters
//! of every known method are made once, when the layer is made, so a
//! call costs a table lookup and two atomic increments.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use metrics::{Counter, Histogram, counter, histogram};
use tonic::Code;

/// etcd's services and their methods: (service, method, kind of call).
const METHODS: &[(&str, &str, &str)] = &[
    ("etcdserverpb.KV", "Range", UNARY),
    ("etcdserverpb.KV", "Put", UNARY),
    ("etcdserverpb.KV", "DeleteRange", UNARY),
    ("etcdserverpb.KV", "Txn", UNARY),
    ("etcdserverpb.KV", "Compact", UNARY),
    ("etcdserverpb.Watch", "Watch", BIDI),
    ("etcdserverpb.Lease", "LeaseGrant", UNARY),
    ("etcdserverpb.Lease", "LeaseRevoke", UNARY),
    ("etcdserverpb.Lease", "LeaseKeepAlive", BIDI),
    ("etcdserverpb.Lease", "LeaseTimeToLive", UNARY),
    ("etcdserverpb.Lease", "LeaseLeases", UNARY),
    ("etcdserverpb.Cluster", "MemberAdd", UNARY),
    ("etcdserverpb.Cluster", "MemberRemove", UNARY),
    ("etcdserverpb.Cluster", "MemberUpdate", UNARY),
    ("etcdserverpb.Cluster", "MemberList", UNARY),
    ("etcdserverpb.Cluster", "MemberPromote", UNARY),
    ("etcdserverpb.Maintenance", "Alarm", UNARY),
    ("etcdserverpb.Maintenance", "Status", UNARY),
    ("etcdserverpb.Maintenance", "Defragment", UNARY),
    ("etcdserverpb.Maintenance", "Hash", UNARY),
    ("etcdserverpb.Maintenance", "HashKV", UNARY),
    ("etcdserverpb.Maintenance", "Snapshot", SERVER_STREAM),
    ("etcdserverpb.Maintenance", "MoveLeader", UNARY),
    ("etcdserverpb.Maintenance", "Downgrade", UNARY),
    ("etcdserverpb.Auth", "AuthEnable", UNARY),
    ("etcdserverpb.Auth", "AuthDisable", UNARY),
    ("etcdserverpb.Auth", "AuthStatus", UNARY),
    ("etcdserverpb.Auth", "Authenticate", UNARY),
    ("etcdserverpb.Auth", "UserAdd", UNARY),
    ("etcdserverpb.Auth", "UserGet", UNARY),
    ("etcdserverpb.Auth", "UserList", UNARY),
    ("etcdserverpb.Auth", "UserDelete", UNARY),
    ("etcdserverpb.Auth", "UserChangePassword", UNARY),
    ("etcdserverpb.Auth", "UserGrantRole", UNARY),
    ("etcdserverpb.Auth", "UserRevokeRole", UNARY),
    ("etcdserverpb.Auth", "RoleAdd", UNARY),
    ("etcdserverpb.Auth", "RoleGet", UNARY),
    ("etcdserverpb.Auth", "RoleList", UNARY),
    ("etcdserverpb.Auth", "RoleDelete", UNARY),
    ("etcdserverpb.Auth", "RoleGrantPermission", UNARY),
    ("etcdserverpb.Auth", "RoleRevokePermission", UNARY),
    ("v3lockpb.Lock", "Lock", UNARY),
    ("v3lockpb.Lock", "Unlock", UNARY),
    ("v3electionpb.Election", "Campaign", UNARY),
    ("v3electionpb.Election", "Proclaim", UNARY),
    ("v3electionpb.Election", "Leader", UNARY),
    ("v3electionpb.Election", "Observe", SERVER_STREAM),
    ("v3electionpb.Election", "Resign", UNARY),
];

const UNARY: &str = "unary";
const BIDI: &str = "bidi_stream";
const SERVER_STREAM: &str = "server_stream";

/// gRPC's codes by number, as go-grpc-prometheus names them.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The meters of one method.
struct MethodMeter {
    service: &'static str,
    method: &'static str,
    kind: &'static str,
    started: Counter,
    /// By code; each made when first used (17 series per method, most
    /// never seen, would crowd the output).
    handled: [OnceLock<Counter>; 17],
    seconds: Histogram,
}

impl MethodMeter {
    fn new(service: &'static str, method: &'static str, kind: &'static str) -> MethodMeter {
        let labels = [
            ("grpc_service", service),
            ("grpc_method", method),
            ("grpc_type", kind),
        ];
        MethodMeter {
            service,
            method,
            kind,
            started: counter!("grpc_server_started_total", &labels),
            handled: std::array::from_fn(|_| OnceLock::new()),
            seconds: histogram!("grpc_server_handling_seconds", &labels),
        }
    }

    fn handled(&self, code: Code, took: std::time::Duration) {
        let i = (code as usize).min(CODES.len() - 1);
        self.handled[i]
            .get_or_init(|| {
                counter!("grpc_server_handled_total",
                    "grpc_service" => self.service,
                    "grpc_method" => self.method,
                    "grpc_type" => self.kind,
                    "grpc_code" => CODES[i])
            })
            .increment(1);
        self.seconds.record(took.as_secs_f64());
    }
}

/// Every method's meters, and where each path's are.
struct Meters {
    methods: Vec<MethodMeter>,
    by_path: HashMap<String, usize>,
    /// A path that is not one of etcd's methods.
    unknown: MethodMeter,
}

/// Counts the calls of the service it wraps (see the module docs). Make
/// it after the process' recorder is installed.
#[derive(Clone)]
pub struct RequestMetricsLayer {
    meters: Arc<Meters>,
}

impl Default for RequestMetricsLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestMetricsLayer {
    /// Meters for every method of etcd's API.
    pub fn new() -> RequestMetricsLayer {
        let methods = METHODS
            .iter()
            .map(|&(service, method, kind)| MethodMeter::new(service, method, kind))
            .collect();
        let by_path = METHODS
            .iter()
            .enumerate()
            .map(|(i, (service, method, _))| (format!("/{service}/{method}"), i))
            .collect();
        RequestMetricsLayer {
            meters: Arc::new(Meters {
                methods,
                by_path,
                unknown: MethodMeter::new("unknown", "unknown", UNARY),
            }),
        }
    }
}

impl<S> tower_layer::Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> RequestMetrics<S> {
        RequestMetrics {
            inner,
            meters: self.meters.clone(),
        }
    }
}

/// The service [`RequestMetricsLayer`] makes.
#[derive(Clone)]
pub struct RequestMetrics<S> {
    inner: S,
    meters: Arc<Meters>,
}

/// Which method a call is for, and when it started.
struct Call {
    meters: Arc<Meters>,
    /// Its place in `meters.methods`; `None`: the unknown method.
    method: Option<usize>,
    started: Instant,
}

impl Call {
    fn meter(&self) -> &MethodMeter {
        self.method
            .and_then(|i| self.meters.methods.get(i))
            .unwrap_or(&self.meters.unknown)
    }

    fn handled(&self, code: Code) {
        self.meter().handled(code, self.started.elapsed());
    }
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for RequestMetrics<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
{
    type Response = http::Response<MeteredBody<RB>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let call = Call {
            meters: self.meters.clone(),
            method: self.meters.by_path.get(req.uri().path()).copied(),
            started: Instant::now(),
        };
        call.meter().started.increment(1);
        MeteredFuture {
            inner: self.inner.call(req),
            call: Some(call),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response of a metered call, on its way.
    pub struct MeteredFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, RB, E> Future for MeteredFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = Result<http::Response<MeteredBody<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx));
        let call = this.call.take();
        Poll::Ready(match res {
            Ok(resp) => {
                // An error with no body carries its status in the head
                // ("trailers-only"); otherwise it comes in the trailers.
                let call = match (status_code(resp.headers()), call) {
                    (Some(code), Some(call)) => {
                        call.handled(code);
                        None
                    }
                    (_, call) => call,
                };
                Ok(resp.map(|body| MeteredBody { inner: body, call }))
            }
            Err(e) => {
                if let Some(call) = call {
                    call.handled(Code::Internal);
                }
                Err(e)
            }
        })
    }
}

/// The `grpc-status` in `headers`, if there is one.
fn status_code(headers: &http::HeaderMap) -> Option<Code> {
    let v = headers.get("grpc-status")?;
    let n: i32 = v.to_str().ok()?.parse().ok()?;
    Some(Code::from_i32(n))
}

pin_project_lite::pin_project! {
    /// A response body that counts its call as handled when its status
    /// passes (or when it is dropped unfinished: cancelled).
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }

    impl<B> PinnedDrop for MeteredBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(call) = this.project().call.take() {
                call.handled(Code::Cancelled);
            }
        }
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(trailers) = f.trailers_ref()
                    && let Some(call) = this.call.take()
                {
                    call.handled(status_code(trailers).unwrap_or(Code::Unknown));
                }
            }
            Some(Err(_)) => {
                if let Some(call) = this.call.take() {
                    call.handled(Code::Internal);
                }
            }
            None => {
                // Ended without trailers: gRPC says the status is missing.
                if let Some(call) = this.call.take() {
                    call.handled(Code::Unknown);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Describes the metrics of this module.
pub(crate) fn describe() {
    metrics::describe_counter!(
        "grpc_server_started_total",
        "Client calls started, by service, method and type (as etcd's go-grpc-prometheus)."
    );
    metrics::describe_counter!(
        "grpc_server_handled_total",
        "Client calls finished, by service, method, type and gRPC code."
    );
    metrics::describe_histogram!(
        "grpc_server_handling_seconds",
        metrics::Unit::Seconds,
        "Time from a client call's request to its status, by method."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_name_at_its_number() {
        assert_eq!(CODES[Code::Ok as usize], "OK");
        assert_eq!(CODES[Code::Cancelled as usize], "Canceled");
        assert_eq!(CODES[Code::ResourceExhausted as usize], "ResourceExhausted");
        assert_eq!(CODES[Code::Unauthenticated as usize], "Unauthenticated");
        let mut paths: Vec<_> = METHODS.iter().map(|(s, m, _)| (s, m)).collect();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), METHODS.len(), "a method listed twice");
    }

    #[test]
    fn the_status_is_read_from_a_head_or_trailers() {
        let mut h = http::HeaderMap::new();
        assert_eq!(status_code(&h), None);
        h.insert("grpc-status", http::HeaderValue::from_static("8"));
        assert_eq!(status_code(&h), Some(Code::ResourceExhausted));
        h.insert("grpc-status", http::HeaderValue::from_static("x"));
        assert_eq!(status_code(&h), None);
    }
}

//! The client port's connections: HTTP/2 (hyper) serving the etcd
//! services, with every request of a connection run inside that
//! connection's own task.
//!
//! tonic's server spawns a task for every request (hyper's default
//! executor) and wraps every request in its own service chain. Each put
//! was handed from its connection's task to a task of its own and back,
//! often across the two worker threads. Here a connection's requests are
//! futures polled by the connection's task itself ([`StreamsHere`]): a
//! request costs no spawn and no wake-up of another thread, and one that
//! waits (for a commit, a watch event) costs nothing while it waits. The
//! price is that one connection's requests share one thread at a time;
//! the work they do there is small (decoding, encoding: reads and writes
//! run on the node's own threads, and an answer of a MiB or more is
//! encoded on a thread of its own, see `etcd::unary_kv`), and the
//! connection's framing was already one task's work. At 256 clients over 32 connections, a leader
//! spent about a tenth less CPU per put this way.
//!
//! What tonic's server did for each request is done here too: the
//! connection's address and TLS identity go into the request's extensions
//! (auth reads the client certificate from there), a `grpc-timeout` header
//! bounds the wait for the response (answered `CANCELLED`, "Timeout
//! expired", as tonic does), a panicking request ends that request alone,
//! and a stop closes connections gracefully (in-flight requests finish).

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::{HeaderMap, Request, Response};
use http_body::{Body as HttpBody, Frame};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::Connected;

/// The HTTP/2 settings of a client connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Http2Settings {
    /// Streams a client may have open at once on a connection.
    pub max_concurrent_streams: u32,
    /// How often an idle connection is pinged.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
}

/// How many times one poll of a connection's task goes round its
/// connection and requests while new requests keep coming.
const ROUNDS_PER_POLL: usize = 4;

type BoxedRequest = Pin<Box<dyn Future<Output = ()> + Send>>;

/// hyper's executor for a connection's requests: it queues them for the
/// connection's task ([`Driven`]) to poll, instead of spawning a task for
/// each.
#[derive(Clone, Default)]
struct StreamsHere {
    queue: Arc<Mutex<Vec<BoxedRequest>>>,
}

impl<F> hyper::rt::Executor<F> for StreamsHere
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, request: F) {
        // A panic in one request must not take the connection (and every
        // other request on it) down, as it would not with a task each.
        let request = AssertUnwindSafe(request).catch_unwind().map(|outcome| {
            if outcome.is_err() {
                tracing::error!("a client request panicked; its stream was reset");
            }
        });
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::pin(request));
    }
}

/// A connection and the requests it has started, driven by one task.
struct Driven<C> {
    connection: Pin<Box<C>>,
    started: StreamsHere,
    requests: FuturesUnordered<BoxedRequest>,
}

impl<C: Future> Driven<C> {
    /// Takes the requests the connection has started since last time.
    fn take_started(&mut self) -> bool {
        let mut queue = self
            .started
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let any = !queue.is_empty();
        self.requests.extend(queue.drain(..));
        any
    }

    /// Polls the connection (reading frames, writing what the requests
    /// queued), then the requests; again while that started new ones, a
    /// few times at most before letting the worker's other tasks run.
    fn poll_all(&mut self, cx: &mut Context<'_>) -> Poll<C::Output> {
        for _ in 0..ROUNDS_PER_POLL {
            if let Poll::Ready(out) = self.connection.as_mut().poll(cx) {
                return Poll::Ready(out);
            }
            let started = self.take_started();
            while let Poll::Ready(Some(())) = self.requests.poll_next_unpin(cx) {}
            if !started {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Serves `service` on each connection `incoming` yields, until `stopped`
/// says so; then closes the connections gracefully and returns once they
/// are closed. (It does not fail: the result is the type of the other
/// ports' tasks.)
pub(crate) async fn serve<I, IO, S, B>(
    incoming: I,
    service: S,
    settings: Http2Settings,
    stopped: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error>
where
    I: tokio_stream::Stream<Item = std::io::Result<IO>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    S: tower_service::Service<Request<Body>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Each connection holds a receiver: when all are gone, all are closed.
    let (closing_tx, closing_rx) = watch::channel(false);
    {
        let mut incoming = std::pin::pin!(incoming);
        let mut stop = stopped;
        loop {
            let io = tokio::select! {
                _ = until(&mut stop) => break,
                io = incoming.next() => io,
            };
            match io {
                Some(Ok(io)) => {
                    let per_request = PerRequest {
                        inner: service.clone(),
                        info: io.connect_info(),
                    };
                    tokio::spawn(connection(io, per_request, settings, closing_rx.clone()));
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "accepting a client connection failed");
                }
                None => break,
            }
        }
    }
    let _ = closing_tx.send(true);
    drop(closing_rx);
    closing_tx.closed().await;
    Ok(())
}

/// Serves one connection until it closes; closes it gracefully once
/// `closing` says so.
async fn connection<IO, S, C, B>(
    io: IO,
    per_request: PerRequest<S, C>,
    settings: Http2Settings,
    mut closing: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower_service::Service<Request<Body>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    C: Clone + Send + Sync + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = StreamsHere::default();
    let mut builder = hyper::server::conn::http2::Builder::new(started.clone());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout)
        // gRPC servers (etcd's among them) send no `date`.
        .auto_date_header(false);
    let mut driven = Driven {
        connection: Box::pin(builder.serve_connection(TokioIo::new(io), per_request)),
        started,
        requests: FuturesUnordered::new(),
    };
    let mut shutting = false;
    let mut close_signal = Box::pin(async move { until(&mut closing).await });
    let outcome = std::future::poll_fn(|cx| {
        if !shutting && close_signal.as_mut().poll(cx).is_ready() {
            shutting = true;
            driven.connection.as_mut().graceful_shutdown();
        }
        driven.poll_all(cx)
    })
    .await;
    if let Err(e) = outcome {
        tracing::debug!(error = %e, "a client connection ended");
    }
}

/// Resolves once `stop` says so (or its sender is gone).
async fn until(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// The service of one connection: the request gets the connection's
/// address (and TLS identity) and its `grpc-timeout`.
struct PerRequest<S, C> {
    inner: S,
    info: C,
}

impl<S, C, B> hyper::service::Service<Request<Incoming>> for PerRequest<S, C>
where
    S: tower_service::Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone,
    C: Clone + Send + Sync + 'static,
{
    type Response = Response<OrTimedOut<B>>;
    type Error = Infallible;
    type Future = Timed<S::Future>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.answer(request.map(Body::new))
    }
}

impl<S, C, B> PerRequest<S, C>
where
    S: tower_service::Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone,
    C: Clone + Send + Sync + 'static,
{
    /// The answer to `request`, once the service gives it or its
    /// `grpc-timeout` passes.
    fn answer(&self, mut request: Request<Body>) -> Timed<S::Future> {
        request.extensions_mut().insert(self.info.clone());
        let sleep = grpc_timeout(request.headers()).map(|d| Box::pin(tokio::time::sleep(d)));
        // Every service of the stack is always ready (the layers pass
        // readiness on, and tonic's routes are always ready), so the
        // request is called at once, on a clone, as tonic's server does.
        let mut inner = self.inner.clone();
        Timed {
            inner: inner.call(request),
            sleep,
        }
    }
}

pin_project_lite::pin_project! {
    /// A response bounded by the request's `grpc-timeout`.
    pub(crate) struct Timed<F> {
        #[pin]
        inner: F,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<F, B> Future for Timed<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = Result<Response<OrTimedOut<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(Ok(response)) = this.inner.poll(cx) {
            return Poll::Ready(Ok(response.map(|body| OrTimedOut::Answer { body })));
        }
        let timed_out = this
            .sleep
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
        if timed_out {
            return Poll::Ready(Ok(
                Status::cancelled("Timeout expired").into_http::<OrTimedOut<B>>()
            ));
        }
        Poll::Pending
    }
}

pin_project_lite::pin_project! {
    /// A response's body: the service's, or none (the status of a
    /// request that timed out is all in its headers).
    #[project = OrTimedOutProj]
    pub(crate) enum OrTimedOut<B> {
        /// The service's answer.
        Answer { #[pin] body: B },
        /// A trailers-only answer.
        TimedOut,
    }
}

// Derived, it would ask `B: Default`.
#[allow(clippy::derivable_impls)]
impl<B> Default for OrTimedOut<B> {
    fn default() -> Self {
        OrTimedOut::TimedOut
    }
}

impl<B> HttpBody for OrTimedOut<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project() {
            OrTimedOutProj::Answer { body } => body.poll_frame(cx).map_err(Into::into),
            OrTimedOutProj::TimedOut => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            OrTimedOut::Answer { body } => body.is_end_stream(),
            OrTimedOut::TimedOut => true,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            OrTimedOut::Answer { body } => body.size_hint(),
            OrTimedOut::TimedOut => http_body::SizeHint::with_exact(0),
        }
    }
}

/// The request's `grpc-timeout`, read as tonic reads it (at most 8 digits
/// and a unit); one it cannot read is ignored, as tonic does.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests;

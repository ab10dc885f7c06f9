//! A direct path for etcd's busiest calls: `KV/Put`, `KV/Range`,
//! `KV/Txn` (every write of Kubernetes) and `KV/DeleteRange`.
//!
//! Through tonic, every unary call goes through its router, the
//! generated `KvServer` dispatch and the generic unary codec (a decoding
//! stream over the body, an encoding stream for the response, each
//! boxed): a profile of a leader at 256 clients put those layers at about
//! a fifth of its CPU, more than the handler itself. This layer, inside
//! the request metrics and traces, answers these calls itself: it reads
//! the one message of the body, decodes it, calls the same [`KvService`]
//! handler, and answers with one data frame and the `grpc-status`
//! trailer. Everything else (a compressed request, any other method)
//! goes on to tonic, before the body is touched. An answer of a MiB or
//! more (a range of many keys) is encoded on a blocking thread, so that
//! the connection's task, which polls all of the connection's requests,
//! is not held up by it.
//!
//! What a client sees is what tonic would answer: the same statuses, with
//! the same messages, for a body that is empty, cut short, too large, or
//! flagged compressed, or that does not decode; an error is answered
//! trailers-only, as tonic does.

use std::future::Future;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use dengine_proto::etcdserverpb::kv_server::Kv;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Request as HttpRequest, Response as HttpResponse};
use http_body::{Body as HttpBody, Frame};
use tonic::Status;
use tonic::body::Body;
use tonic::metadata::MetadataMap;

use super::kv::KvService;

/// The calls answered here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Put,
    Range,
    Txn,
    DeleteRange,
}

/// The call `req` makes, if it is one answered here.
fn call_of<B>(req: &HttpRequest<B>) -> Option<Call> {
    // tonic answers a compressed request (with its refusal, since the
    // server accepts no compression); that must stay its answer.
    if req
        .headers()
        .get("grpc-encoding")
        .is_some_and(|v| v.as_bytes() != b"identity")
    {
        return None;
    }
    match req.uri().path() {
        "/etcdserverpb.KV/Put" => Some(Call::Put),
        "/etcdserverpb.KV/Range" => Some(Call::Range),
        "/etcdserverpb.KV/Txn" => Some(Call::Txn),
        "/etcdserverpb.KV/DeleteRange" => Some(Call::DeleteRange),
        _ => None,
    }
}

/// Puts [`UnaryKv`] in front of a service (the tonic router).
#[derive(Clone)]
pub(crate) struct UnaryKvLayer {
    kv: KvService,
    max_request: usize,
}

impl UnaryKvLayer {
    /// Answers with `kv`, refusing request messages over `max_request`
    /// bytes (as the tonic service is told with
    /// `max_decoding_message_size`).
    pub(crate) fn new(kv: KvService, max_request: usize) -> UnaryKvLayer {
        UnaryKvLayer { kv, max_request }
    }
}

impl<S> tower_layer::Layer<S> for UnaryKvLayer {
    type Service = UnaryKv<S>;

    fn layer(&self, inner: S) -> UnaryKv<S> {
        UnaryKv {
            inner,
            kv: self.kv.clone(),
            max_request: self.max_request,
        }
    }
}

/// Answers `KV/Put`, `KV/Range`, `KV/Txn` and `KV/DeleteRange` itself,
/// and passes anything else to `inner` (see the module docs).
#[derive(Clone)]
pub(crate) struct UnaryKv<S> {
    inner: S,
    kv: KvService,
    max_request: usize,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower_service::Service<HttpRequest<B>> for UnaryKv<S>
where
    S: tower_service::Service<HttpRequest<B>, Response = HttpResponse<Body>>,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    type Response = HttpResponse<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<HttpResponse<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: HttpRequest<B>) -> Self::Future {
        match call_of(&req) {
            None => Box::pin(self.inner.call(req)),
            Some(call) => {
                let kv = self.kv.clone();
                let limit = self.max_request;
                Box::pin(async move { Ok(answer(&kv, call, limit, req).await) })
            }
        }
    }
}

async fn answer<B>(
    kv: &KvService,
    call: Call,
    limit: usize,
    req: HttpRequest<B>,
) -> HttpResponse<Body>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    let message = match read_message(body, limit).await {
        Ok(m) => m,
        Err(status) => return status.into_http(),
    };
    let metadata = MetadataMap::from_headers(parts.headers);
    let extensions = parts.extensions;
    match call {
        Call::Put => serve(&message, metadata, extensions, |r| kv.put(r)).await,
        Call::Range => serve(&message, metadata, extensions, |r| kv.range(r)).await,
        Call::Txn => serve(&message, metadata, extensions, |r| kv.txn(r)).await,
        Call::DeleteRange => serve(&message, metadata, extensions, |r| kv.delete_range(r)).await,
    }
}

/// Decodes `message` as the handler's request, with the request's
/// metadata and extensions, and answers with what the handler answers.
async fn serve<Req, Resp, F, Fut>(
    message: &[u8],
    metadata: MetadataMap,
    extensions: http::Extensions,
    handler: F,
) -> HttpResponse<Body>
where
    Req: prost::Message + Default,
    Resp: prost::Message + 'static,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let answer = match decode::<Req>(message) {
        Ok(m) => handler(tonic::Request::from_parts(metadata, extensions, m)).await,
        Err(status) => return status.into_http(),
    };
    let len = answer.as_ref().map_or(0, |a| a.get_ref().encoded_len());
    if len < ENCODE_APART_BYTES {
        return respond(answer, len);
    }
    // A large answer (a range of many keys) is encoded on a thread of its
    // own: the connection's task, which polls every request of the
    // connection (`client_port`), goes on serving the others meanwhile.
    tokio::task::spawn_blocking(move || respond(answer, len))
        .await
        .unwrap_or_else(|_| Status::internal("encoding the response failed").into_http())
}

/// Answers of this many encoded bytes or more are encoded apart (see
/// [`serve`]).
const ENCODE_APART_BYTES: usize = 1 << 20;

/// The length-prefixed message header: a compression flag and a length.
const HEADER: usize = 5;

/// The first message of a unary request's body, read to the body's end,
/// with tonic's statuses for what is wrong with it. What follows the
/// message is read (as tonic reads a unary body to its end) but not kept:
/// what is buffered stays within the size limit and one frame.
async fn read_message<B>(body: B, limit: usize) -> Result<Bytes, Status>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut body = pin!(body);
    let mut buf = BytesMut::new();
    let mut len: Option<usize> = None;
    while let Some(data) = next_data(body.as_mut()).await? {
        if buf.is_empty() && data.len() >= HEADER {
            // The usual case, the whole message in one frame: no copy.
            let n = header_len(&data, limit)?;
            if data.len() >= HEADER + n {
                return drain(body, data.slice(HEADER..HEADER + n)).await;
            }
        }
        buf.extend_from_slice(&data);
        if len.is_none() && buf.len() >= HEADER {
            len = Some(header_len(&buf, limit)?);
        }
        if let Some(n) = len
            && buf.len() >= HEADER + n
        {
            buf.truncate(HEADER + n);
            return drain(body, buf.freeze().slice(HEADER..)).await;
        }
    }
    if buf.is_empty() {
        Err(Status::internal("Missing request message."))
    } else {
        Err(Status::internal("Unexpected EOF decoding stream."))
    }
}

/// The next data frame of `body` (trailers are skipped: nothing reads
/// them), or `None` at its end.
async fn next_data<B>(mut body: Pin<&mut B>) -> Result<Option<Bytes>, Status>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.map_err(|e| Status::from_error(e.into()))?;
        if let Ok(data) = frame.into_data() {
            return Ok(Some(data));
        }
    }
    Ok(None)
}

/// Reads `body` to its end, then gives back `message`.
async fn drain<B>(mut body: Pin<&mut B>, message: Bytes) -> Result<Bytes, Status>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    while next_data(body.as_mut()).await?.is_some() {}
    Ok(message)
}

/// The length in a message header at the start of `buf`, checked as
/// tonic checks it.
fn header_len(buf: &[u8], limit: usize) -> Result<usize, Status> {
    match buf[0] {
        0 => {}
        1 => {
            return Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ));
        }
        f => {
            return Err(Status::internal(format!(
                "protocol error: received message with invalid compression flag: {f} (valid flags are 0 and 1), while sending request"
            )));
        }
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > limit {
        return Err(Status::out_of_range(format!(
            "Error, decoded message length too large: found {len} bytes, the limit is: {limit} bytes"
        )));
    }
    Ok(len)
}

fn decode<M: prost::Message + Default>(message: &[u8]) -> Result<M, Status> {
    M::decode(message).map_err(|e| Status::internal(e.to_string()))
}

/// The trailer every answer ends with. A name built once: inserting one
/// given as a string copies a name that is not a standard header into a
/// new allocation each time.
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The HTTP response for a handler's answer, whose message encodes to
/// `len` bytes: the message in one data frame and `grpc-status: 0` in the
/// trailers, or the error trailers-only.
fn respond<M: prost::Message>(
    answer: Result<tonic::Response<M>, Status>,
    len: usize,
) -> HttpResponse<Body> {
    let answer = match answer {
        Ok(a) => a,
        Err(status) => return status.into_http(),
    };
    let (metadata, message, extensions) = answer.into_parts();
    let Ok(len32) = u32::try_from(len) else {
        return Status::out_of_range("response message too large").into_http();
    };
    let mut data = BytesMut::with_capacity(HEADER + len);
    data.put_u8(0);
    data.put_u32(len32);
    // Cannot fail: the buffer has room for the message.
    let _ = message.encode(&mut data);
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
    let mut response = HttpResponse::new(Body::new(UnaryBody {
        data: Some(data.freeze()),
        trailers: Some(trailers),
    }));
    *response.headers_mut() = metadata.into_headers();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    *response.extensions_mut() = extensions;
    response
}

/// A response body of one data frame, then trailers.
struct UnaryBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl HttpBody for UnaryBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

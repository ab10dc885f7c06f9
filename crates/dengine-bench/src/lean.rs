//! The closed-loop workloads' client: unary gRPC calls made with `h2`
//! itself, from the task of the client that makes them.
//!
//! tonic's channel hands each request from the caller's task to a buffer
//! task, then to hyper's connection task, which starts a task of its own
//! for the response (and another to send the body, when it is not sent at
//! once): at 256 clients that was about 16 µs of CPU per operation, as
//! much as the leader's, on a machine whose two cores the load generator
//! shares with the servers it measures. Here the caller's task opens the
//! stream, sends the request and reads the answer itself; only the
//! connection's reading and writing run in a task of their own.
//!
//! It speaks gRPC as any client does (etcd's servers and dengine's are
//! driven by the very same code): a `POST` to the method's path with
//! `content-type: application/grpc` and `te: trailers`, the message after
//! its 5-byte prefix, the answer's status from its trailers (or from its
//! headers, for an answer with no body).

use std::future::poll_fn;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, TE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Uri};
use prost::Message;
use tonic::{Code, Status};

/// The windows hyper's client (under tonic) opens with: a connection's
/// clients never wait on flow control for answers of their size.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

/// One HTTP/2 connection, shared by the clients that hold a clone. When
/// it fails (the member restarted, say), the first client to find out
/// connects again and the others take the new connection, as tonic's
/// channel would.
#[derive(Clone)]
pub struct LeanChannel {
    send: h2::client::SendRequest<Bytes>,
    authority: Authority,
    /// Which connection of the shared ones `send` is.
    generation: u64,
    shared: Arc<Shared>,
}

struct Shared {
    url: String,
    /// The current connection, and its generation.
    current: tokio::sync::Mutex<(u64, h2::client::SendRequest<Bytes>)>,
}

/// A connection to `url` (`http://host:port`).
pub async fn connect(url: &str) -> Result<LeanChannel, String> {
    let (send, authority) = open(url).await?;
    Ok(LeanChannel {
        send: send.clone(),
        authority,
        generation: 0,
        shared: Arc::new(Shared {
            url: url.to_string(),
            current: tokio::sync::Mutex::new((0, send)),
        }),
    })
}

/// Opens an HTTP/2 connection to `url`; its sender and authority.
async fn open(url: &str) -> Result<(h2::client::SendRequest<Bytes>, Authority), String> {
    let fault = |e: &dyn std::fmt::Display| format!("connecting to {url}: {e}");
    let uri: Uri = url.parse().map_err(|e| fault(&e))?;
    if uri.scheme() != Some(&Scheme::HTTP) {
        return Err(fault(&"only http:// endpoints are supported"));
    }
    let authority = uri.authority().cloned().ok_or_else(|| fault(&"no host"))?;
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(authority.as_str()),
    )
    .await
    .map_err(|e| fault(&e))?
    .map_err(|e| fault(&e))?;
    tcp.set_nodelay(true).map_err(|e| fault(&e))?;
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake::<_, Bytes>(tcp)
        .await
        .map_err(|e| fault(&e))?;
    tokio::spawn(async move {
        // Its end (the run is over, or the server went away) shows in the
        // calls made on it.
        let _ = connection.await;
    });
    Ok((send, authority))
}

impl LeanChannel {
    /// Calls the unary method at `path` (`/package.Service/Method`) with
    /// `request`; its answer, or the status it failed with.
    pub async fn unary<Q: Message, R: Message + Default>(
        &mut self,
        path: &'static str,
        request: &Q,
    ) -> Result<R, Status> {
        if let Err(e) = poll_fn(|cx| self.send.poll_ready(cx)).await {
            self.reconnect().await;
            return Err(h2_status(e));
        }
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(PathAndQuery::from_static(path))
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut head = Request::new(());
        *head.method_mut() = Method::POST;
        *head.uri_mut() = uri;
        let headers = head.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        let (answer, mut body) = self.send.send_request(head, false).map_err(h2_status)?;
        body.send_data(framed(request)?, true).map_err(h2_status)?;

        let answer = answer.await.map_err(h2_status)?;
        let (parts, mut recv) = answer.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(Status::unknown(format!(
                "the answer's HTTP status is {}",
                parts.status
            )));
        }
        // An answer with no body carries its status in its headers.
        if recv.is_end_stream() {
            return Err(match Status::from_header_map(&parts.headers) {
                Some(status) if status.code() != Code::Ok => status,
                _ => Status::internal("an answer without a message"),
            });
        }
        let mut message = BytesMut::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.map_err(h2_status)?;
            // Gives the window back, or the connection's answers stop once
            // the window is used up.
            let _ = recv.flow_control().release_capacity(chunk.len());
            message.extend_from_slice(&chunk);
        }
        let trailers = recv.trailers().await.map_err(h2_status)?;
        match trailers.as_ref().and_then(Status::from_header_map) {
            Some(status) if status.code() != Code::Ok => Err(status),
            Some(_) => unframed(message),
            None => Err(Status::internal("an answer without a grpc-status")),
        }
    }

    /// Takes the shared connection, after opening a new one if it is
    /// still the one that failed. (The call that found it failed counts
    /// as failed; the next goes over the new one.)
    async fn reconnect(&mut self) {
        let mut current = self.shared.current.lock().await;
        if current.0 == self.generation {
            match open(&self.shared.url).await {
                Ok((send, _)) => *current = (current.0 + 1, send),
                // Still down: the next call tries again.
                Err(_) => return,
            }
        }
        self.generation = current.0;
        self.send = current.1.clone();
    }
}

/// `request` after gRPC's prefix: not compressed, and its length.
fn framed<Q: Message>(request: &Q) -> Result<Bytes, Status> {
    let len = request.encoded_len();
    let prefix = u32::try_from(len).map_err(|_| Status::internal("a request over 4 GiB"))?;
    let mut out = BytesMut::with_capacity(5 + len);
    out.put_u8(0);
    out.put_u32(prefix);
    request
        .encode(&mut out)
        .map_err(|e| Status::internal(e.to_string()))?;
    Ok(out.freeze())
}

/// The one message of a unary answer.
fn unframed<R: Message + Default>(message: BytesMut) -> Result<R, Status> {
    let Some((prefix, rest)) = message.split_first_chunk::<5>() else {
        return Err(Status::internal("an answer without a message"));
    };
    if prefix[0] != 0 {
        return Err(Status::internal("a compressed answer (none was asked for)"));
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if rest.len() != len {
        return Err(Status::internal(format!(
            "an answer of {} bytes where its prefix says {len}",
            rest.len()
        )));
    }
    R::decode(rest).map_err(|e| Status::internal(format!("an answer that does not decode: {e}")))
}

/// An HTTP/2 failure as the status tonic would have given it.
fn h2_status(e: h2::Error) -> Status {
    let code = if e.is_io() || e.is_go_away() {
        Code::Unavailable
    } else if e.reason() == Some(h2::Reason::CANCEL) {
        Code::Cancelled
    } else {
        Code::Internal
    };
    Status::new(code, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dengine_proto::etcdserverpb as pb;

    #[test]
    fn a_message_framed_comes_back_unframed() {
        let put = pb::PutRequest {
            key: b"k".to_vec(),
            value: vec![7; 300],
            ..Default::default()
        };
        let framed = framed(&put).expect("framed");
        assert_eq!(framed[0], 0);
        assert_eq!(
            u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize,
            framed.len() - 5
        );
        let back: pb::PutRequest = unframed(BytesMut::from(&framed[..])).expect("unframed");
        assert_eq!(back, put);
        // Cut short, or longer than its prefix says: refused.
        let short = BytesMut::from(&framed[..framed.len() - 1]);
        assert!(unframed::<pb::PutRequest>(short).is_err());
        let mut long = BytesMut::from(&framed[..]);
        long.put_u8(0);
        assert!(unframed::<pb::PutRequest>(long).is_err());
        assert!(unframed::<pb::PutRequest>(BytesMut::from(&[0u8, 0][..])).is_err());
    }
}

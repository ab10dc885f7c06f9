//! The client port's connections, served for real over TCP to tonic's
//! client: what tonic's server did for each request still happens with
//! the requests run inside their connection's task.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dengine_proto::etcdserverpb as pb;
use dengine_proto::etcdserverpb::kv_client::KvClient;
use dengine_proto::etcdserverpb::kv_server::{Kv, KvServer};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use super::*;

/// A KV service whose `Range` does what its key says: `addr` answers the
/// port of the caller's address as the request saw it (`-1` if it had
/// none), `slow` answers after 300 ms, `never` does not answer, `panic`
/// panics; anything else answers at once.
struct Scripted;

#[tonic::async_trait]
impl Kv for Scripted {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let count = match request.remote_addr() {
            Some(addr) if addr.ip().is_loopback() => i64::from(addr.port()),
            _ => -1,
        };
        match request.get_ref().key.as_slice() {
            b"slow" => tokio::time::sleep(Duration::from_millis(300)).await,
            b"never" => std::future::pending::<()>().await,
            b"panic" => panic!("a scripted panic"),
            _ => {}
        }
        Ok(Response::new(pb::RangeResponse {
            count,
            ..Default::default()
        }))
    }

    async fn put(&self, _: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        Err(Status::unimplemented("put"))
    }

    async fn delete_range(
        &self,
        _: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        Err(Status::unimplemented("delete_range"))
    }

    async fn txn(&self, _: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        Err(Status::unimplemented("txn"))
    }

    async fn compact(
        &self,
        _: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        Err(Status::unimplemented("compact"))
    }
}

fn settings() -> Http2Settings {
    Http2Settings {
        max_concurrent_streams: 100,
        keepalive_interval: Duration::from_secs(10),
        keepalive_timeout: Duration::from_secs(20),
    }
}

/// Serves [`Scripted`] on a free port until `stop` is sent `true`.
async fn start() -> (
    SocketAddr,
    watch::Sender<bool>,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = watch::channel(false);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let served = tokio::spawn(serve(
        incoming,
        KvServer::new(Scripted),
        settings(),
        stopped,
    ));
    (addr, stop, served)
}

/// One connection to `addr`: every client made from it shares it.
async fn connect(addr: SocketAddr) -> KvClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    KvClient::new(channel)
}

async fn range(client: &mut KvClient<Channel>, key: &str) -> Result<i64, Status> {
    let request = pb::RangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    };
    Ok(client.range(request).await?.into_inner().count)
}

/// A `slow` range on `client`'s connection, under way when this returns.
async fn slow_request_in_flight(
    client: &KvClient<Channel>,
) -> tokio::task::JoinHandle<Result<i64, Status>> {
    let mut client = client.clone();
    let slow = tokio::spawn(async move { range(&mut client, "slow").await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    slow
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_carries_its_connections_address() {
    let (addr, stop, served) = start().await;
    let mut client = connect(addr).await;
    let port = range(&mut client, "addr").await.expect("range");
    assert!(port > 0, "the request saw no caller address ({port})");
    assert_ne!(port, i64::from(addr.port()), "that is the server's port");
    let _ = stop.send(true);
    served.await.expect("joined").expect("served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_one_connection_run_side_by_side() {
    let (addr, stop, served) = start().await;
    let client = connect(addr).await;
    let started = Instant::now();
    let slow: Vec<_> = (0..8)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { range(&mut client, "slow").await })
        })
        .collect();
    for answer in slow {
        answer.await.expect("joined").expect("range");
    }
    // One after the other, eight would take 2.4 s; side by side, 0.3 s.
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "took {:?}",
        started.elapsed()
    );
    let _ = stop.send(true);
    served.await.expect("joined").expect("served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_request_fails_alone() {
    let (addr, stop, served) = start().await;
    let mut client = connect(addr).await;
    let slow = slow_request_in_flight(&client).await;
    let panicked = range(&mut client, "panic").await;
    assert!(panicked.is_err(), "a panicking request was answered");
    // The request in flight on the same connection, and the next one, are
    // answered.
    assert!(slow.await.expect("joined").expect("slow range") > 0);
    assert!(range(&mut client, "addr").await.expect("range") > 0);
    let _ = stop.send(true);
    served.await.expect("joined").expect("served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_lets_requests_in_flight_finish_then_closes() {
    let (addr, stop, served) = start().await;
    let mut client = connect(addr).await;
    let slow = slow_request_in_flight(&client).await;
    let _ = stop.send(true);
    assert!(slow.await.expect("joined").expect("answered") > 0);
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("the server did not stop")
        .expect("joined")
        .expect("served");
    // The listener is closed: no new connection is served.
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        match Channel::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect()
            .await
        {
            Err(_) => true,
            Ok(channel) => range(&mut KvClient::new(channel), "addr").await.is_err(),
        }
    })
    .await
    .unwrap_or(true);
    assert!(refused, "a stopped server answered");
    assert!(
        range(&mut client, "addr").await.is_err(),
        "a closed connection answered"
    );
}

#[tokio::test]
async fn a_grpc_timeout_answers_cancelled_as_tonic_does() {
    let per_request = PerRequest {
        inner: KvServer::new(Scripted),
        info: (),
    };
    // The message, framed as gRPC frames it: no compression, its length,
    // its bytes. (All of them are ASCII here, so a `String` can carry them
    // as the body.)
    let encoded = prost::Message::encode_to_vec(&pb::RangeRequest {
        key: b"never".to_vec(),
        ..Default::default()
    });
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    framed.extend_from_slice(&encoded);
    let http = http::Request::builder()
        .method("POST")
        .uri("/etcdserverpb.KV/Range")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "50m")
        .body(Body::new(String::from_utf8(framed).expect("ASCII")))
        .expect("request");
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(5), per_request.answer(http))
        .await
        .expect("no answer within 5 s")
        .expect("infallible");
    assert!(started.elapsed() >= Duration::from_millis(50));
    let status = Status::from_header_map(answer.headers()).expect("a status in the headers");
    assert_eq!(status.code(), Code::Cancelled);
    assert_eq!(status.message(), "Timeout expired");
}

#[test]
fn grpc_timeout_is_read_as_tonic_reads_it() {
    let cases = [
        ("1H", Some(Duration::from_secs(3600))),
        ("2M", Some(Duration::from_secs(120))),
        ("3S", Some(Duration::from_secs(3))),
        ("40m", Some(Duration::from_millis(40))),
        ("50u", Some(Duration::from_micros(50))),
        ("60n", Some(Duration::from_nanos(60))),
        ("99999999S", Some(Duration::from_secs(99_999_999))),
        // More than 8 digits, no digits, no unit, another unit, a sign.
        ("123456789S", None),
        ("S", None),
        ("100", None),
        ("5x", None),
        ("-5S", None),
        ("", None),
    ];
    for (value, expected) in cases {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().expect("value"));
        assert_eq!(grpc_timeout(&headers), expected, "{value:?}");
    }
    assert_eq!(grpc_timeout(&HeaderMap::new()), None);
}

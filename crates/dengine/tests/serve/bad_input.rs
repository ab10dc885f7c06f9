//! Bad input on both ports: garbage bytes, a peer of another cluster, an
//! oversized request, a client that hangs up mid-request, a txn with
//! duplicate keys. Each gets the right error; nothing is lost; the
//! members keep serving.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use dengine::grpc::proto::peer as wire;
use dengine::grpc::proto::peer::peer_client::PeerClient;
use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use crate::harness::{Cluster, client};

fn garbage(port: u16) {
    for chunk in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff"[..],
        &[0u8; 4096][..],
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
    ] {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(chunk);
            let _ = s.flush();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_etcd_errors_and_changes_nothing() {
    let mut c = Cluster::new(3);
    c.start_and_wait().await;
    let mut cl = client(&c, 0).await;
    cl.put("keep", "me", None).await.expect("put");

    // Garbage bytes on every port.
    for m in &c.members {
        garbage(m.client_port);
        garbage(m.peer_port);
    }

    // A peer of another cluster, and a stranger in this one.
    let peer = format!("http://127.0.0.1:{}", c.members[1].peer_port);
    let channel = tonic::transport::Endpoint::from_shared(peer)
        .expect("url")
        .connect()
        .await
        .expect("connect to the peer port");
    for (cluster, from, code) in [
        ("12345", "1", tonic::Code::FailedPrecondition),
        ("", "1", tonic::Code::FailedPrecondition),
    ] {
        let mut req = tonic::Request::new(wire::ForwardRequest {
            commands: vec![bytes::Bytes::from_static(b"\x02junk")],
            traceparent: Vec::new(),
        });
        if !cluster.is_empty() {
            req.metadata_mut()
                .insert("dengine-cluster-id", cluster.parse().expect("ascii"));
        }
        req.metadata_mut()
            .insert("dengine-from", from.parse().expect("ascii"));
        req.metadata_mut()
            .insert("dengine-to", "2".parse().expect("ascii"));
        let e = PeerClient::new(channel.clone())
            .forward(req)
            .await
            .expect_err("refused");
        assert_eq!(e.code(), code, "{e:?}");
    }
    assert!(c.log(1).contains("peer call refused"), "logged once");

    // An oversized request: etcd's error below the gRPC limit, gRPC's
    // own above it.
    let big = vec![b'x'; 1_600_000];
    let e = cl.put("big", big, None).await.expect_err("too large");
    assert!(
        e.to_string().contains("etcdserver: request is too large"),
        "{e}"
    );
    let huge = vec![b'x'; 3_000_000];
    let e = cl.put("huge", huge, None).await.expect_err("too large");
    assert!(
        e.to_string().contains("ResourceExhausted") || e.to_string().contains("too large"),
        "{e}"
    );

    // Hanging up mid-request: a put dropped before its answer.
    let mut hasty = client(&c, 2).await;
    let _ = tokio::time::timeout(
        Duration::from_micros(50),
        hasty.put("hasty", vec![b'h'; 500_000], None),
    )
    .await;
    drop(hasty);

    // A txn with a key put twice.
    let txn = Txn::new()
        .when([Compare::version("keep", CompareOp::Greater, 0)])
        .and_then([TxnOp::put("dup", "1", None), TxnOp::put("dup", "2", None)]);
    let e = cl.txn(txn).await.expect_err("duplicate key");
    assert!(
        e.to_string()
            .contains("etcdserver: duplicate key given in txn request"),
        "{e}"
    );
    let e = cl.put("", "v", None).await.expect_err("empty key");
    assert!(
        e.to_string().contains("etcdserver: key is not provided"),
        "{e}"
    );

    // Every member still serves, and nothing was lost or half-written.
    for i in 0..3 {
        let mut cl = client(&c, i).await;
        let got = cl.get("keep", None).await.expect("get");
        assert_eq!(got.kvs()[0].value(), b"me");
        assert!(cl.get("dup", None).await.expect("get").kvs().is_empty());
        assert!(cl.get("big", None).await.expect("get").kvs().is_empty());
        cl.put(format!("after-{i}"), "ok", None)
            .await
            .expect("put after");
    }
}

/// A request body of the frames given, one data frame each.
struct RawBody(std::collections::VecDeque<bytes::Bytes>);

impl http_body::Body for RawBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// Calls `method` of etcd's KV service with `frames` as the raw request
/// body's data frames; returns the call's status (from the head of a trailers-only
/// answer, or from the trailers).
async fn raw_call(
    channel: &mut tonic::transport::Channel,
    endpoint: &str,
    method: &str,
    frames: &[&[u8]],
) -> tonic::Status {
    use tonic::codegen::Service;
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("{endpoint}/etcdserverpb.KV/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(RawBody(
            frames
                .iter()
                .map(|f| bytes::Bytes::copy_from_slice(f))
                .collect(),
        )))
        .expect("request");
    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .expect("ready");
    let resp = channel.call(req).await.expect("an HTTP answer");
    if let Some(status) = tonic::Status::from_header_map(resp.headers()) {
        return status;
    }
    let mut body = std::pin::pin!(resp.into_body());
    while let Some(frame) =
        std::future::poll_fn(|cx| http_body::Body::poll_frame(body.as_mut(), cx)).await
    {
        let frame = frame.expect("body frame");
        if let Some(trailers) = frame.trailers_ref() {
            return tonic::Status::from_header_map(trailers).expect("a status in the trailers");
        }
    }
    panic!("no status in the answer to {method}");
}

/// Puts, ranges, txns and deletes are answered without tonic's codec
/// (see `dengine-grpc`'s `etcd/unary_kv.rs`); whatever is wrong with
/// their bodies must get tonic's own answer, which `Compact` (still
/// served by tonic) gives for the same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_kv_bodies_get_tonics_answers() {
    let mut c = Cluster::new(1);
    c.start_and_wait().await;
    let endpoint = c.members[0].endpoint();
    let mut channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    // Each case as the data frames of the body: a message may come in
    // pieces, which is read differently from one in a single frame.
    let cases: [(&str, &[&[u8]], tonic::Code); 8] = [
        ("an empty body", &[], tonic::Code::Internal),
        ("a cut header", &[&[0, 0, 0]], tonic::Code::Internal),
        (
            "a cut message",
            &[&[0, 0, 0, 0, 9, 0x0a, 1]],
            tonic::Code::Internal,
        ),
        (
            "a cut message in two frames",
            &[&[0, 0, 0], &[0, 9, 0x0a, 1]],
            tonic::Code::Internal,
        ),
        (
            "a compressed flag",
            &[&[1, 0, 0, 0, 0]],
            tonic::Code::Internal,
        ),
        ("a bad flag", &[&[7, 0, 0, 0, 0]], tonic::Code::Internal),
        (
            "a length past the limit",
            &[&[0, 0xff, 0xff, 0xff, 0xff]],
            tonic::Code::OutOfRange,
        ),
        (
            "a length past the limit in two frames",
            &[&[0, 0xff], &[0xff, 0xff, 0xff, 0]],
            tonic::Code::OutOfRange,
        ),
    ];
    for (what, frames, code) in cases {
        let tonic_answer = raw_call(&mut channel, &endpoint, "Compact", frames).await;
        assert_eq!(tonic_answer.code(), code, "{what}: {tonic_answer:?}");
        for method in ["Put", "Range", "Txn", "DeleteRange"] {
            let ours = raw_call(&mut channel, &endpoint, method, frames).await;
            assert_eq!(
                (ours.code(), ours.message()),
                (tonic_answer.code(), tonic_answer.message()),
                "{what} to {method}"
            );
        }
    }
    // Bytes that are no protobuf message: tonic's code, prost's reason.
    let garbage = [0u8, 0, 0, 0, 2, 0xff, 0xff];
    for method in ["Put", "Range", "Txn", "DeleteRange", "Compact"] {
        let s = raw_call(&mut channel, &endpoint, method, &[&garbage]).await;
        assert_eq!(s.code(), tonic::Code::Internal, "{method}: {s:?}");
        assert!(s.message().contains("varint"), "{method}: {s:?}");
    }
    // A well-formed put and range through the same raw path.
    let put = [0u8, 0, 0, 0, 6, 0x0a, 1, b'k', 0x12, 1, b'v'];
    assert_eq!(
        raw_call(&mut channel, &endpoint, "Put", &[&put])
            .await
            .code(),
        tonic::Code::Ok
    );
    // The same put of another key in three frames, the header split.
    let pieces: [&[u8]; 3] = [&[0, 0], &[0, 0, 7, 0x0a, 2, b'k'], &[b'2', 0x12, 1, b'w']];
    assert_eq!(
        raw_call(&mut channel, &endpoint, "Put", &pieces)
            .await
            .code(),
        tonic::Code::Ok
    );
    let mut cl = client(&c, 0).await;
    let got = cl.get("k", None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), b"v");
    let got = cl.get("k2", None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), b"w");
}

//! The retry rules, against a real gRPC server (over TCP) that fails on
//! cue: a write is sent again only when it surely was not applied; a read
//! is sent again after any passing failure; a member that cannot be
//! reached is passed over.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dengine_client::{Client, ClientOptions, ErrorKind};
use dengine_proto::etcdserverpb::kv_server::{Kv, KvServer};
use dengine_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use tonic::{Request, Response, Status};

/// A key-value service that answers each call with the next scripted
/// failure, or success once the script is empty, and counts the calls.
#[derive(Default)]
struct Scripted {
    failures: Mutex<VecDeque<Status>>,
    calls: Mutex<usize>,
}

impl Scripted {
    fn answer<T>(&self, ok: T) -> Result<Response<T>, Status> {
        *self.calls.lock().expect("lock") += 1;
        match self.failures.lock().expect("lock").pop_front() {
            Some(status) => Err(status),
            None => Ok(Response::new(ok)),
        }
    }
}

/// The service as the server holds it, shared with the test.
struct Shared(Arc<Scripted>);

impl std::ops::Deref for Shared {
    type Target = Scripted;
    fn deref(&self) -> &Scripted {
        &self.0
    }
}

fn header() -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision: 7,
        ..Default::default()
    })
}

#[tonic::async_trait]
impl Kv for Shared {
    async fn range(&self, _: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        self.answer(RangeResponse {
            header: header(),
            ..Default::default()
        })
    }
    async fn put(&self, _: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.answer(PutResponse {
            header: header(),
            ..Default::default()
        })
    }
    async fn delete_range(
        &self,
        _: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        self.answer(DeleteRangeResponse::default())
    }
    async fn txn(&self, _: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        self.answer(TxnResponse::default())
    }
    async fn compact(
        &self,
        _: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        self.answer(CompactionResponse::default())
    }
}

/// Serves `kv` on a free port; its endpoint.
async fn serve(kv: Arc<Scripted>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(KvServer::new(Shared(kv)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

fn options() -> ClientOptions {
    ClientOptions::default()
        .with_deadline(Duration::from_secs(3))
        .with_backoff(Duration::from_millis(5), Duration::from_millis(20))
        .with_discover_members(false)
}

async fn scripted(failures: Vec<Status>) -> (Client, Arc<Scripted>) {
    let kv = Arc::new(Scripted::default());
    kv.failures.lock().expect("lock").extend(failures);
    let endpoint = serve(kv.clone()).await;
    let client = Client::connect_with([endpoint], options())
        .await
        .expect("connect");
    (client, kv)
}

fn calls(kv: &Scripted) -> usize {
    *kv.calls.lock().expect("lock")
}

#[tokio::test]
async fn a_write_refused_before_it_was_applied_is_sent_again() {
    let (client, kv) = scripted(vec![
        Status::unavailable("etcdserver: no leader"),
        Status::resource_exhausted("etcdserver: too many requests"),
    ])
    .await;
    client.put("k", "v", None).await.expect("put");
    assert_eq!(calls(&kv), 3);
}

#[tokio::test]
async fn a_write_that_may_have_been_applied_is_not_sent_again() {
    for failure in [
        Status::unavailable("etcdserver: leader changed"),
        Status::unavailable("etcdserver: request timed out"),
        Status::unavailable("etcdserver: server stopped"),
        Status::unavailable("connection reset"),
    ] {
        let text = failure.message().to_string();
        let (client, kv) = scripted(vec![failure]).await;
        let e = client.put("k", "v", None).await.expect_err(&text);
        assert!(e.is_unknown_outcome(), "{text}: {e}");
        assert_eq!(calls(&kv), 1, "{text}");
    }
}

#[tokio::test]
async fn reads_are_sent_again_after_any_passing_failure() {
    let (client, kv) = scripted(vec![
        Status::unavailable("etcdserver: leader changed"),
        Status::unavailable("etcdserver: request timed out"),
    ])
    .await;
    let r = client.get("k", None).await.expect("get");
    assert_eq!(r.header.expect("header").revision, 7);
    assert_eq!(calls(&kv), 3);
}

#[tokio::test]
async fn final_errors_come_back_at_once_with_their_kind() {
    let (client, kv) = scripted(vec![Status::invalid_argument(
        "etcdserver: key is not provided",
    )])
    .await;
    let e = client.get("", None).await.expect_err("empty key");
    assert_eq!(e.kind(), Some(ErrorKind::EmptyKey));
    assert_eq!(calls(&kv), 1);
}

#[tokio::test]
async fn a_member_that_cannot_be_reached_is_passed_over_even_by_writes() {
    let kv = Arc::new(Scripted::default());
    let up = serve(kv.clone()).await;
    // A port nobody listens on.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    let client = Client::connect_with([down.clone(), up], options())
        .await
        .expect("connect");
    for _ in 0..6 {
        client.put("k", "v", None).await.expect("put");
    }
    assert_eq!(calls(&kv), 6);
}

#[tokio::test]
async fn a_write_left_unanswered_is_unknown_and_a_read_there_is_not() {
    // A server that takes the request and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            keep.lock().expect("lock").push(socket);
        }
    });
    let options = options().with_request_timeout(Duration::from_millis(300));
    let client = Client::connect_with([format!("http://{addr}")], options)
        .await
        .expect("connect");
    let e = client.put("k", "v", None).await.expect_err("no answer");
    assert!(e.is_unknown_outcome(), "{e}");
    let e = client.get("k", None).await.expect_err("no answer");
    assert!(!e.is_unknown_outcome(), "a read is never unknown: {e}");
}

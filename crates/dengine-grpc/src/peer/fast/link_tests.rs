//! The fast link between a real transport and a real peer service on
//! local sockets; the node behind the service records what it is handed.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dengine_core::{LogIndex, Message, MessageBody, NodeId, SnapshotMeta, Term};
use dengine_proto::peer::peer_server::PeerServer;
use dengine_runtime::snapshot::{SnapshotData, SnapshotReceiver};
use dengine_runtime::{Error, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{ACCEPTED, FRAME_HEADER, REFUSED, REPLY, greeting};
use crate::peer::{
    GrpcTransport, KnownMembers, PeerIdentity, PeerInbox, PeerLinkConfig, PeerService,
};

const CLUSTER: u64 = 0xc1;

/// A node that records the messages it is handed.
#[derive(Default)]
struct Recording(Mutex<Vec<Message>>);

impl PeerInbox for Recording {
    fn deliver(&self, msg: Message, _: Option<SnapshotData>) -> Result<(), Error> {
        self.0.lock().expect("lock").push(msg);
        Ok(())
    }

    fn snapshot_receiver(&self, _: SnapshotMeta) -> std::io::Result<SnapshotReceiver> {
        Err(std::io::Error::other("no snapshots in this test"))
    }
}

impl Recording {
    fn indexes(&self) -> Vec<u64> {
        self.0
            .lock()
            .expect("lock")
            .iter()
            .map(|m| match m.body {
                MessageBody::AppendEntriesResponse { result: Ok(i) } => i.0,
                _ => u64::MAX,
            })
            .collect()
    }
}

/// Member 2's peer port, serving fast links unless `grpc_only`.
struct Member {
    port: u16,
    node: Arc<Recording>,
    service: PeerService,
    members: KnownMembers,
    stop: watch::Sender<bool>,
}

impl Member {
    async fn start(grpc_only: bool) -> Member {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Member::start_on(listener, grpc_only)
    }

    /// Member 2 on `listener`.
    fn start_on(listener: TcpListener, grpc_only: bool) -> Member {
        let port = listener.local_addr().expect("addr").port();
        let node = Arc::new(Recording::default());
        let members = KnownMembers::new([NodeId(1), NodeId(2)]);
        let (stop, stopped) = watch::channel(false);
        let identity = PeerIdentity {
            cluster_id: CLUSTER,
            me: NodeId(2),
        };
        let service =
            PeerService::new(node.clone(), identity, members.clone()).with_stop(stopped.clone());
        let router =
            tonic::transport::Server::builder().add_service(PeerServer::new(service.clone()));
        let until = async move {
            let mut stopped = stopped;
            let _ = stopped.wait_for(|s| *s).await;
        };
        if grpc_only {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, until));
        } else {
            let incoming = super::split_incoming(listener, service.clone(), 1 << 20);
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, until));
        }
        Member {
            port,
            node,
            service,
            members,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Member 1's transport, with member 2 at `url`.
fn transport(url: &str) -> GrpcTransport {
    let t = GrpcTransport::new(
        PeerIdentity {
            cluster_id: CLUSTER,
            me: NodeId(1),
        },
        PeerLinkConfig::default(),
    );
    t.add_peer(NodeId(2), url).expect("peer");
    t
}

fn ack(index: u64) -> Message {
    Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(1),
        body: MessageBody::AppendEntriesResponse {
            result: Ok(LogIndex(index)),
        },
    }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_go_on_the_fast_link_in_order() {
    let member = Member::start(false).await;
    let t = transport(&member.url());
    let stats = t.stats();
    until("the fast link", || {
        stats.fast_links_opened.load(Ordering::Relaxed) == 1
    })
    .await;
    // Sent from a thread outside the runtime too, as the disk thread
    // sends acknowledgements.
    let sender = t.clone();
    std::thread::spawn(move || {
        for i in 1..=2000 {
            sender.send(ack(i)).expect("reachable");
        }
    })
    .join()
    .expect("sender");
    until("every message", || member.node.indexes().len() == 2000).await;
    assert_eq!(member.node.indexes(), (1..=2000).collect::<Vec<_>>());
    assert_eq!(
        stats.streams_opened.load(Ordering::Relaxed),
        0,
        "no Raft stream"
    );
    assert_eq!(stats.fast_declined.load(Ordering::Relaxed), 0);
    assert!(t.is_connected(NodeId(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_the_fast_link_gets_messages_on_the_raft_stream() {
    let member = Member::start(true).await;
    let t = transport(&member.url());
    let stats = t.stats();
    until("the fast link declined", || {
        stats.fast_declined.load(Ordering::Relaxed) == 1
    })
    .await;
    for i in 1..=100 {
        let _ = t.send(ack(i));
    }
    until("the messages", || member.node.indexes().len() == 100).await;
    assert_eq!(member.node.indexes(), (1..=100).collect::<Vec<_>>());
    assert_eq!(stats.streams_opened.load(Ordering::Relaxed), 1);
    assert_eq!(stats.fast_links_opened.load(Ordering::Relaxed), 0);
}

/// The answer to `hello`, and whether the member then closed the link.
async fn greet_raw(port: u16, hello: &[u8]) -> (Vec<u8>, TcpStream) {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(hello).await.expect("greet");
    let mut head = [0u8; 7];
    s.read_exact(&mut head).await.expect("an answer");
    let len = u16::from_le_bytes([head[5], head[6]]);
    let mut reason = vec![0u8; usize::from(len)];
    s.read_exact(&mut reason).await.expect("its reason");
    let mut answer = head.to_vec();
    answer.extend(reason);
    (answer, s)
}

async fn closed(mut s: TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greetings_from_another_cluster_or_a_removed_member_are_refused() {
    let member = Member::start(false).await;
    let (answer, s) = greet_raw(member.port, &greeting(CLUSTER + 1, 1, 2)).await;
    assert_eq!(&answer[..4], REPLY);
    assert_eq!(answer[4], REFUSED);
    let reason = String::from_utf8_lossy(&answer[7..]).into_owned();
    assert!(reason.contains("refused"), "{reason}");
    assert!(closed(s).await, "the member closes a refused link");
    let (answer, _) = greet_raw(member.port, &greeting(CLUSTER, 1, 3)).await;
    assert_eq!(answer[4], REFUSED, "a link meant for another member");
    let refused = member.service.stats().refused_calls.load(Ordering::Relaxed);
    assert_eq!(refused, 2);

    // Member 1 removed: its transport hears it, and stops.
    member.members.replace([NodeId(2)], [NodeId(1)]);
    let t = transport(&member.url());
    let removed = t.removed();
    until("the removal", || *removed.borrow()).await;
    assert_eq!(t.stats().fast_links_opened.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_or_oversized_frame_closes_the_link() {
    let member = Member::start(false).await;
    let hello = greeting(CLUSTER, 1, 2);
    let (answer, mut s) = greet_raw(member.port, &hello).await;
    assert_eq!(answer[4], ACCEPTED);
    let mut frame = 3u32.to_le_bytes().to_vec();
    frame.extend([0xff, 0xff, 0xff]);
    s.write_all(&frame).await.expect("write");
    assert!(closed(s).await, "closed on a frame that does not decode");

    let (_, mut s) = greet_raw(member.port, &hello).await;
    let too_long = (1u32 << 20) + 1;
    s.write_all(&too_long.to_le_bytes()).await.expect("write");
    assert!(
        closed(s).await,
        "closed on a frame longer than a message may be"
    );
    let malformed = member.service.stats().malformed.load(Ordering::Relaxed);
    assert_eq!(malformed, 2);
    assert!(member.node.indexes().is_empty());
    assert_eq!(FRAME_HEADER, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_comes_back_when_the_member_does() {
    let first = Member::start(false).await;
    let port = first.port;
    let t = transport(&first.url());
    let stats = t.stats();
    until("the fast link", || {
        stats.fast_links_opened.load(Ordering::Relaxed) == 1
    })
    .await;
    first.stop.send_replace(true);
    until("the link down", || !t.is_connected(NodeId(2))).await;
    assert!(
        t.send(ack(1)).is_err(),
        "a peer that is down is unreachable"
    );
    drop(first);

    // The same port again (the listener of the first is closed once its
    // server ended).
    let listener = loop {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let second = Member::start_on(listener, false);
    until("the link again", || {
        stats.fast_links_opened.load(Ordering::Relaxed) == 2
    })
    .await;
    t.send(ack(7)).expect("reachable again");
    until("the message", || second.node.indexes() == vec![7]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_while_its_link_is_up_hears_it_at_its_next_message() {
    for grpc_only in [false, true] {
        let member = Member::start(grpc_only).await;
        let t = transport(&member.url());
        t.send(ack(1)).ok();
        until("a message through", || {
            if member.node.indexes().is_empty() {
                let _ = t.send(ack(1));
            }
            !member.node.indexes().is_empty()
        })
        .await;
        member.members.replace([NodeId(2)], [NodeId(1)]);
        let removed = t.removed();
        until("the removal heard", || {
            let _ = t.send(ack(2));
            *removed.borrow()
        })
        .await;
        assert!(
            !member.node.indexes().contains(&2),
            "nothing from a removed member reaches the node (gRPC only: {grpc_only})"
        );
    }
}

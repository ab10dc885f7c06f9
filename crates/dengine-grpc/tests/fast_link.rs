//! Three members in one process, on real sockets and sled, one of which
//! speaks only gRPC to its peers (as a member from before the fast link
//! would): the other two reach each other on the fast link and reach it
//! on the `Raft` stream, and the cluster takes writes through any member
//! whichever leads.

use std::sync::atomic::Ordering;
use std::time::Duration;

use dengine_grpc::proto::etcdserverpb as pb;
use dengine_grpc::server::Server;

mod common;
use common::{kv, member_config, port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_the_fast_link_takes_part_over_the_raft_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (port(), port())).collect();
    let mut servers = Vec::new();
    for i in 0..3 {
        let mut cfg = member_config(i, &ports, dir.path(), "fast");
        cfg.peer.fast_link = i != 0;
        servers.push(Server::start(cfg).await.expect("start"));
    }
    servers[0]
        .node()
        .wait_for(Duration::from_secs(10), |m| m.leader.is_some())
        .await
        .expect("a leader");
    for (i, (client_port, _)) in ports.iter().enumerate() {
        let mut client = kv(*client_port).await;
        for j in 0..20 {
            client
                .put(pb::PutRequest {
                    key: format!("k{i}-{j}").into_bytes(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })
                .await
                .expect("put");
        }
    }
    // Every member has every write (member 0 too: it reads its own state).
    // Polled: a member publishes its progress (commit and applied
    // indexes) at most once per tick, so the highest commit index
    // published may trail the last acknowledged write, and waiting for
    // members to apply up to it read one write short (59 of 60, once in
    // a clean-clone CI run).
    let mut client = kv(ports[0].0).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let all = loop {
        let all = client
            .range(pb::RangeRequest {
                key: b"k".to_vec(),
                range_end: b"l".to_vec(),
                serializable: true,
                count_only: true,
                ..Default::default()
            })
            .await
            .expect("range")
            .into_inner();
        if all.count == 60 || tokio::time::Instant::now() >= deadline {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(all.count, 60);

    // Member 0 opened no fast link, only Raft streams (at least to the
    // leader, or to both as the leader); the others found that it
    // declined theirs, and reached each other on one (links are made
    // when a peer is added, whether or not a message is waiting).
    let stats0 = servers[0].transport().stats();
    assert_eq!(stats0.fast_links_opened.load(Ordering::Relaxed), 0);
    assert!(stats0.streams_opened.load(Ordering::Relaxed) >= 1);
    for s in &servers[1..] {
        let stats = s.transport().stats();
        assert_eq!(stats.fast_declined.load(Ordering::Relaxed), 1);
        assert!(stats.fast_links_opened.load(Ordering::Relaxed) >= 1);
    }
    for s in servers {
        s.shutdown().await.expect("stop");
    }
}

//! A member that was down while the others compacted their logs catches
//! up through a snapshot of many frames sent over gRPC; the transfer is
//! cut midway once and resumes from the last frame the receiver holds,
//! not from frame 0. Three members in one process, on real sockets and
//! sled.

use std::sync::atomic::Ordering;
use std::time::Duration;

use dengine_grpc::proto::etcdserverpb as pb;
use dengine_grpc::server::{Server, ServerConfig};

mod common;
use common::{kv, member_config, port};

fn config(i: usize, ports: &[(u16, u16)], dir: &std::path::Path) -> ServerConfig {
    let mut cfg = member_config(i, ports, dir, "resume");
    // Snapshot often and keep nothing behind: the member that was down
    // can only catch up through a snapshot.
    cfg.node.snapshot_threshold = 50;
    cfg.node.compaction_lag = 0;
    // Small chunks: the snapshot travels in many of them.
    cfg.peer.snapshot_chunk_bytes = 16 * 1024;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_catches_up_by_a_snapshot_that_resumes_after_a_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (port(), port())).collect();
    let mut servers = Vec::new();
    for i in 0..3 {
        servers.push(Some(
            Server::start(config(i, &ports, dir.path()))
                .await
                .expect("start"),
        ));
    }
    let s0 = servers[0].as_ref().expect("running");
    let m = s0
        .node()
        .wait_for(Duration::from_secs(10), |m| m.leader.is_some())
        .await
        .expect("a leader");
    let leader = m.leader.expect("leader");
    let lagging = (0..3)
        .find(|&i| servers[i].as_ref().map(|s| s.node().id()) != Some(leader))
        .expect("a follower");
    let leader_ix = (0..3)
        .find(|&i| servers[i].as_ref().map(|s| s.node().id()) == Some(leader))
        .expect("the leader");

    // The follower goes down; the others write ~1 MB and compact past it.
    servers[lagging]
        .take()
        .expect("running")
        .shutdown()
        .await
        .expect("stop");
    let mut client = kv(ports[leader_ix].0).await;
    let value = vec![b'v'; 4096];
    for i in 0..300 {
        client
            .put(pb::PutRequest {
                key: format!("key-{i:04}").into_bytes(),
                value: value.clone(),
                ..Default::default()
            })
            .await
            .expect("put");
    }
    let leader_server = servers[leader_ix].as_ref().expect("running");
    leader_server
        .node()
        .wait_for(Duration::from_secs(10), |m| m.snapshot_made_at.0 >= 250)
        .await
        .expect("the leader made a snapshot");

    // Back up, with its first snapshot call cut after 5 chunks.
    let mut cfg = config(lagging, &ports, dir.path());
    cfg.peer.cut_first_snapshot_after_chunks = Some(5);
    let back = Server::start(cfg).await.expect("restart");
    let target = leader_server.node().status().applied;
    back.node()
        .wait_for(Duration::from_secs(20), |m| m.applied >= target)
        .await
        .expect("the member caught up");
    assert!(
        back.node().status().snapshots_installed >= 1,
        "by a snapshot"
    );
    let received = back.peer_service().stats();
    assert!(
        received.snapshot_resumes.load(Ordering::Relaxed) >= 1,
        "the receiver resumed a transfer"
    );
    let sent = leader_server.transport().stats();
    assert!(
        sent.snapshot_resumes.load(Ordering::Relaxed) >= 1,
        "the sender resumed"
    );
    // Resumed, not restarted: fewer bytes sent than two whole snapshots.
    // The snapshot is of an index of at least 250, so it holds at least
    // 240 of the values (the log's first entries are the cluster's own:
    // its first membership, a leader's blank entry, the members
    // publishing their URLs).
    let bytes = sent.snapshot_bytes.load(Ordering::Relaxed);
    assert!(
        bytes > 240 * 4096,
        "the whole snapshot was sent ({bytes} bytes)"
    );
    assert!(
        bytes < 2 * 300 * 4096,
        "{bytes} bytes: the transfer started over"
    );

    // Its own reads see every write.
    let mut own = kv(ports[lagging].0).await;
    let got = own
        .range(pb::RangeRequest {
            key: b"key-".to_vec(),
            range_end: b"key.".to_vec(),
            count_only: true,
            serializable: true,
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    assert_eq!(got.count, 300);

    back.shutdown().await.expect("stop");
    for s in servers.into_iter().flatten() {
        s.shutdown().await.expect("stop");
    }
}

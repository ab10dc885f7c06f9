//! `--peer-fast-link`: a member's peer port answers the fast link's
//! greeting by default, and does not with the flag off; a cluster with it
//! off takes writes over gRPC alone.

use std::io::{Read, Write};
use std::time::Duration;

use crate::harness::{Cluster, client};

/// The first bytes a member's peer port answers to a fast link greeting
/// from another cluster (the protocol of `dengine-grpc`'s `peer::fast`);
/// empty if it closed the connection without a word.
fn answer_to_a_stranger(peer_port: u16) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", peer_port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut hello = b"DENGINE-RAFT/1\n".to_vec();
    for id in [0xdead_u64, 1, 2] {
        hello.extend(id.to_le_bytes());
    }
    s.write_all(&hello).expect("greet");
    let mut answer = [0u8; 5];
    let mut got = 0;
    while got < answer.len() {
        match s.read(&mut answer[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    answer[..got].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_link_is_on_by_default_and_off_with_the_flag() {
    let mut on = Cluster::new(1);
    on.start_and_wait().await;
    let answer = answer_to_a_stranger(on.members[0].peer_port);
    assert_eq!(
        answer,
        [b'D', b'R', b'L', b'1', 2],
        "refused as from another cluster"
    );

    let mut off = Cluster::new(3);
    off.extra
        .extend(["--peer-fast-link".into(), "false".into()]);
    off.start_and_wait().await;
    let answer = answer_to_a_stranger(off.members[0].peer_port);
    assert!(
        !answer.starts_with(b"DRL1"),
        "a member with the fast link off does not answer it: {answer:?}"
    );
    let mut cl = client(&off, 0).await;
    for i in 0..10 {
        cl.put(format!("k{i}"), "v", None).await.expect("put");
    }
    let all = cl
        .get("k", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .expect("get");
    assert_eq!(all.count(), 10);
}

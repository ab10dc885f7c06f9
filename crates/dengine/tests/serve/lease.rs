//! Leases over gRPC through the `etcd-client` crate: grant, attach,
//! keep alive, time to live, list, revoke, expiry (a delete event), and
//! no early expiry when the leader changes.

use std::time::{Duration, Instant};

use etcd_client::{EventType, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, WatchOptions};

use crate::harness::{Cluster, client, index_of, status_of, wait_leader};

async fn exists(cl: &mut etcd_client::Client, key: &str) -> bool {
    !cl.get(key, None).await.expect("get").kvs().is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_keep_their_keys_while_renewed_and_delete_them_when_they_end() {
    let mut c = Cluster::new(3);
    let leader = c.start_and_wait().await;
    let follower = (index_of(&c, leader).await + 1) % 3;
    let mut cl = client(&c, follower).await;

    // Grant (an ID chosen by the server, and one chosen by the client).
    let a = cl.lease_grant(2, None).await.expect("grant");
    assert!(a.id() > 0);
    assert_eq!(a.ttl(), 2);
    let b = cl
        .lease_grant(60, Some(LeaseGrantOptions::new().with_id(77)))
        .await
        .expect("grant 77");
    assert_eq!(b.id(), 77);
    let e = cl
        .lease_grant(60, Some(LeaseGrantOptions::new().with_id(77)))
        .await
        .expect_err("taken");
    assert_eq!(
        status_of(e),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: lease already exists".into()
        )
    );
    let e = cl
        .put("x", "1", Some(PutOptions::new().with_lease(5)))
        .await
        .expect_err("no lease 5");
    assert_eq!(
        status_of(e),
        (
            tonic::Code::NotFound,
            "etcdserver: requested lease not found".into()
        )
    );

    // Attach keys; list; time to live with keys.
    cl.put("l/a1", "1", Some(PutOptions::new().with_lease(a.id())))
        .await
        .expect("put");
    cl.put("l/b1", "1", Some(PutOptions::new().with_lease(77)))
        .await
        .expect("put");
    cl.put("l/b2", "1", Some(PutOptions::new().with_lease(77)))
        .await
        .expect("put");
    let got = cl.get("l/b1", None).await.expect("get");
    assert_eq!(got.kvs()[0].lease(), 77);
    let mut ids: Vec<i64> = cl
        .leases()
        .await
        .expect("leases")
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    ids.sort();
    let mut want = vec![a.id(), 77];
    want.sort();
    assert_eq!(ids, want);
    let ttl = cl
        .lease_time_to_live(77, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("ttl");
    assert_eq!(ttl.granted_ttl(), 60);
    assert!((55..=60).contains(&ttl.ttl()), "{}", ttl.ttl());
    assert_eq!(ttl.keys(), [b"l/b1".to_vec(), b"l/b2".to_vec()]);
    let gone = cl.lease_time_to_live(12345, None).await.expect("ttl");
    assert_eq!(gone.ttl(), -1, "an unknown lease, as etcd answers");

    // Kept alive for three TTLs, lease a keeps its key.
    let mut watch = cl
        .watch("l/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    assert!(
        watch
            .message()
            .await
            .expect("watch")
            .expect("created")
            .created()
    );
    let (mut keeper, mut replies) = cl.lease_keep_alive(a.id()).await.expect("keep alive");
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        keeper.keep_alive().await.expect("keep alive");
        let r = replies.message().await.expect("reply").expect("open");
        assert_eq!((r.id(), r.ttl()), (a.id(), 2));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(exists(&mut cl, "l/a1").await, "renewed, it stays");
    // Then it expires: its key's delete event comes within a few TTLs.
    drop(keeper);
    drop(replies);
    let r = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("the expiry within 10 s")
        .expect("watch")
        .expect("open");
    let e = &r.events()[0];
    assert_eq!(e.event_type(), EventType::Delete);
    assert_eq!(e.kv().expect("kv").key(), b"l/a1");
    assert!(!exists(&mut cl, "l/a1").await);

    // Revoking deletes every key of the lease at one revision.
    let revoked = cl.lease_revoke(77).await.expect("revoke");
    let r = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("the revocation")
        .expect("watch")
        .expect("open");
    let revs: Vec<i64> = r
        .events()
        .iter()
        .map(|e| e.kv().expect("kv").mod_revision())
        .collect();
    assert_eq!(revs, [revoked.header().expect("header").revision(); 2]);
    let e = cl.lease_revoke(77).await.expect_err("gone");
    assert_eq!(status_of(e).1, "etcdserver: requested lease not found");
    assert!(cl.leases().await.expect("leases").leases().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_does_not_expire_early_when_the_leader_dies() {
    let mut c = Cluster::new(3);
    let leader = c.start_and_wait().await;
    let old = index_of(&c, leader).await;
    let other = (old + 1) % 3;
    let mut cl = client(&c, other).await;
    let lease = cl.lease_grant(3, None).await.expect("grant").id();
    cl.put("k", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put");
    let (mut keeper, mut replies) = cl.lease_keep_alive(lease).await.expect("keep alive");
    keeper.keep_alive().await.expect("keep alive");
    replies.message().await.expect("reply").expect("open");
    let renewed = Instant::now();
    drop((keeper, replies));
    // The leader dies late in the lease's TTL, so no renewal can reach
    // the cluster before the TTL is up.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    c.kill(old);
    let deadline = Instant::now() + Duration::from_secs(10);
    while wait_leader(&c, other, Duration::from_secs(10)).await == leader {
        assert!(Instant::now() < deadline, "no new leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The new leader gave the lease its whole TTL again when it took over
    // (etcd's Promote): 4.5 s after the last renewal, 1.5 s past the TTL,
    // the key is still there.
    while renewed.elapsed() < Duration::from_millis(4500) {
        assert!(
            exists(&mut cl, "k").await,
            "expired early, at {:?}",
            renewed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // With no more renewals it does expire.
    let deadline = Instant::now() + Duration::from_secs(15);
    while exists(&mut cl, "k").await {
        assert!(Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Past `--max-leases`, a grant fails with a clear error instead of
/// growing the members' memory; a revoke makes room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_past_the_lease_limit_are_refused() {
    let mut c = Cluster::new(1);
    c.extra.extend(["--max-leases".into(), "3".into()]);
    c.start_and_wait().await;
    let mut cl = client(&c, 0).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(cl.lease_grant(60, None).await.expect("grant").id());
    }
    let e = cl.lease_grant(60, None).await.expect_err("past the limit");
    assert_eq!(
        status_of(e),
        (
            tonic::Code::ResourceExhausted,
            "etcdserver: too many leases".into()
        )
    );
    assert_eq!(cl.leases().await.expect("leases").leases().len(), 3);
    cl.lease_revoke(ids[0]).await.expect("revoke");
    cl.lease_grant(60, None).await.expect("room again");
}

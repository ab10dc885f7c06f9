//! etcd's `Lock` and `Election` services through the `etcd-client` crate,
//! on members that do and do not lead, and `etcdctl lock` / `etcdctl
//! elect` (etcd's client-side recipes over txns, leases and watches).

use std::time::Duration;

use etcd_client::{GetOptions, LockOptions, ProclaimOptions, ResignOptions};

use crate::etcdctl::ok;
use crate::harness::{Cluster, client, status_of};

/// `f`'s outcome within 10 s.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("{what} took over 10 s"))
}

/// The next observation, within 5 s.
async fn next(o: &mut etcd_client::ObserveStream) -> Option<etcd_client::LeaderResponse> {
    tokio::time::timeout(Duration::from_secs(5), o.message())
        .await
        .expect("an observation within 5 s")
        .expect("observe stream")
}

/// Whether `f` is still pending after `wait`.
async fn still_waiting<T>(f: &mut tokio::task::JoinHandle<T>, wait: Duration) -> bool {
    tokio::time::timeout(wait, f).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_and_elections_wait_for_their_turn() {
    let mut c = Cluster::new(3);
    c.start_and_wait().await;
    let mut a = client(&c, 0).await;
    let b = client(&c, 1).await;
    let lease = |cl: &mut etcd_client::Client| {
        let mut cl = cl.clone();
        async move {
            within("grant", cl.lease_grant(60, None))
                .await
                .expect("grant")
                .id()
        }
    };

    // Lock: the second holder waits until the first unlocks.
    let (l1, l2) = (lease(&mut a).await, lease(&mut a).await);
    let first = within(
        "lock",
        a.lock("job", Some(LockOptions::new().with_lease(l1))),
    )
    .await
    .expect("lock");
    let key1 = first.key().to_vec();
    assert_eq!(key1, format!("job/{l1:x}").into_bytes());
    let mut waiter = {
        let mut b = b.clone();
        tokio::spawn(async move { b.lock("job", Some(LockOptions::new().with_lease(l2))).await })
    };
    assert!(still_waiting(&mut waiter, Duration::from_millis(500)).await);
    within("unlock", a.unlock(key1)).await.expect("unlock");
    let second = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter gets the lock")
        .expect("task")
        .expect("lock");
    assert_eq!(second.key(), format!("job/{l2:x}").as_bytes());
    // A holder whose lease ends releases the lock.
    let l3 = lease(&mut a).await;
    let mut waiter = {
        let mut a = a.clone();
        tokio::spawn(async move { a.lock("job", Some(LockOptions::new().with_lease(l3))).await })
    };
    assert!(still_waiting(&mut waiter, Duration::from_millis(300)).await);
    within("revoke", a.lease_revoke(l2)).await.expect("revoke");
    let third = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the lock passes on when its lease ends")
        .expect("task")
        .expect("lock");
    assert_eq!(third.key(), format!("job/{l3:x}").as_bytes());
    // A waiter whose client gives up leaves no key behind.
    let l4 = lease(&mut a).await;
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        a.lock("job", Some(LockOptions::new().with_lease(l4))),
    )
    .await;
    assert!(gave_up.is_err(), "the lock is held by l3");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let held = within("get", a.get("job/", Some(GetOptions::new().with_prefix())))
            .await
            .expect("get");
        let keys: Vec<&[u8]> = held.kvs().iter().map(|kv| kv.key()).collect();
        if keys == [format!("job/{l3:x}").as_bytes()] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{keys:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let e = within(
        "lock",
        a.lock("other", Some(LockOptions::new().with_lease(0x7777))),
    )
    .await
    .expect_err("no such lease");
    assert_eq!(status_of(e).1, "etcdserver: requested lease not found");

    // Election: a campaign wins at once, the next waits; values are
    // proclaimed and observed; resigning hands leadership on.
    let e = within("leader", a.leader("vote"))
        .await
        .expect_err("nobody campaigns yet");
    assert_eq!(
        status_of(e),
        (tonic::Code::Unknown, "election: no leader".into())
    );
    let (e1, e2) = (lease(&mut a).await, lease(&mut a).await);
    let won = within("campaign", a.campaign("vote", "alice", e1))
        .await
        .expect("campaign");
    let leader = won.leader().expect("leader key").clone();
    assert_eq!(leader.key(), format!("vote/{e1:x}").as_bytes());
    let mut observer = within("observe", b.clone().observe("vote"))
        .await
        .expect("observe");
    let seen = |r: Option<etcd_client::LeaderResponse>| {
        r.and_then(|r| r.kv().map(|kv| kv.value().to_vec()))
    };
    assert_eq!(seen(next(&mut observer).await), Some(b"alice".to_vec()));
    let mut rival = {
        let mut b = b.clone();
        tokio::spawn(async move { b.campaign("vote", "bob", e2).await })
    };
    assert!(still_waiting(&mut rival, Duration::from_millis(500)).await);
    a.proclaim(
        "alice-2",
        Some(ProclaimOptions::new().with_leader(leader.clone())),
    )
    .await
    .expect("proclaim");
    assert_eq!(seen(next(&mut observer).await), Some(b"alice-2".to_vec()));
    let got = within("leader", a.leader("vote")).await.expect("leader");
    assert_eq!(got.kv().map(|kv| kv.value()), Some(&b"alice-2"[..]));
    within(
        "resign",
        a.resign(Some(ResignOptions::new().with_leader(leader.clone()))),
    )
    .await
    .expect("resign");
    let won = tokio::time::timeout(Duration::from_secs(5), rival)
        .await
        .expect("the rival wins once alice resigns")
        .expect("task")
        .expect("campaign");
    assert_eq!(
        won.leader().map(|l| l.key().to_vec()),
        Some(format!("vote/{e2:x}").into_bytes())
    );
    assert_eq!(seen(next(&mut observer).await), Some(b"bob".to_vec()));
    // The resigned leader's key no longer leads.
    let e = within(
        "proclaim",
        a.proclaim("stale", Some(ProclaimOptions::new().with_leader(leader))),
    )
    .await
    .expect_err("not the leader");
    assert_eq!(
        status_of(e),
        (tonic::Code::Unknown, "election: not leader".into())
    );

    // etcdctl's own recipes agree with the services.
    let endpoint = c.members[2].endpoint();
    assert_eq!(
        ok(&endpoint, &["lock", "cli-lock", "echo", "held"]),
        "held\n"
    );
    // `elect -l` prints the leader, then listens for changes until killed.
    let mut listen = std::process::Command::new("etcdctl")
        .args(["--endpoints", &endpoint, "elect", "-l", "vote"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("etcdctl");
    std::thread::sleep(Duration::from_secs(2));
    let _ = listen.kill();
    let out = listen.wait_with_output().expect("etcdctl output");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listed, format!("vote/{e2:x}\nbob\n"));
}

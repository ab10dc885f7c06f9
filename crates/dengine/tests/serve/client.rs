//! dengine's own Rust client (`dengine-client`) against real processes:
//! its API, and what it promises while the leader is killed. Each test
//! runs against a dengine cluster and against an etcd cluster (Debian's
//! `etcd-server`): the client speaks etcd's API, not only dengine's.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dengine_client::{
    Client, ClientOptions, CompareOp, Comparison, DeleteOptions, Error, ErrorKind, GetOptions,
    PutOptions, Txn, TxnOp, WatchOptions, Watcher,
};

use crate::harness::{Cluster, index_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_speaks_every_part_of_the_api() {
    every_part_of_the_api(Cluster::new(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_speaks_every_part_of_the_api_with_etcd() {
    every_part_of_the_api(Cluster::etcd(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_leader_kill_writes_are_acked_failed_or_unknown_and_the_watch_loses_nothing() {
    through_a_leader_kill(Cluster::new(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_an_etcd_leader_kill_the_client_keeps_the_same_promises() {
    through_a_leader_kill(Cluster::etcd(3)).await;
}

async fn connect(c: &Cluster) -> Client {
    connect_with(
        c,
        ClientOptions::default().with_deadline(Duration::from_secs(8)),
    )
    .await
}

async fn connect_with(c: &Cluster, options: ClientOptions) -> Client {
    let endpoints: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    Client::connect_with(endpoints, options)
        .await
        .expect("connect")
}

async fn next(w: &mut Watcher) -> dengine_client::proto::etcdserverpb::WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), w.message())
        .await
        .expect("a watch response within 10 s")
        .expect("the watch goes on")
        .expect("no watch error")
}

async fn every_part_of_the_api(mut c: Cluster) {
    let leader = c.start_and_wait().await;
    let client = connect(&c).await;
    assert_eq!(client.leader(), Some(leader));
    assert_eq!(client.endpoints().len(), 3);

    // Keys and values.
    let put = client.put("a/1", "one", None).await.expect("put");
    let first = put.header.expect("header").revision;
    client.put("a/2", "two", None).await.expect("put");
    let prev = client
        .put("a/1", "uno", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("put with prev");
    assert_eq!(prev.prev_kv.expect("prev").value, b"one");
    let all = client
        .get("a/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("prefix");
    assert_eq!(all.count, 2);
    let old = client
        .get("a/1", Some(GetOptions::new().with_revision(first)))
        .await
        .expect("past revision");
    assert_eq!(old.kvs[0].value, b"one");
    let stale = client
        .get(
            "a/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_serializable()
                    .with_keys_only(),
            ),
        )
        .await
        .expect("serializable");
    assert!(stale.kvs.iter().all(|kv| kv.value.is_empty()));

    // A transaction: compare-and-swap, both branches.
    let swap = |expect: &'static str| {
        Txn::new()
            .when([Comparison::value("a/1", CompareOp::Equal, expect)])
            .and_then([TxnOp::put("a/1", "swapped", None)])
            .or_else([TxnOp::get("a/1", None)])
    };
    assert!(client.txn(swap("uno")).await.expect("txn").succeeded);
    assert!(!client.txn(swap("uno")).await.expect("txn").succeeded);

    // Errors are etcd's, by kind and text.
    let e = client.put("", "v", None).await.expect_err("empty key");
    assert_eq!(e.kind(), Some(ErrorKind::EmptyKey));
    assert_eq!(e.to_string(), "etcdserver: key is not provided");
    let future = client
        .get("a/1", Some(GetOptions::new().with_revision(1_000_000)))
        .await
        .expect_err("future revision");
    assert_eq!(future.kind(), Some(ErrorKind::FutureRevision));

    // Leases: granted, kept alive past their TTL, revoked with their keys.
    let lease = client.lease_grant(2, None).await.expect("grant").id;
    client
        .put("a/leased", "x", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("leased put");
    let alive = client.lease_keep_alive(lease).await.expect("keep alive");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(alive.ttl().is_some());
    let ttl = client.lease_time_to_live(lease, true).await.expect("ttl");
    assert!(ttl.ttl > 0, "lease kept alive: {ttl:?}");
    assert_eq!(ttl.keys, vec![b"a/leased".to_vec()]);
    assert!(
        client
            .lease_leases()
            .await
            .expect("leases")
            .leases
            .iter()
            .any(|l| l.id == lease)
    );
    client.lease_revoke(lease).await.expect("revoke");
    assert_eq!(client.get("a/leased", None).await.expect("get").count, 0);
    let gone = client.lease_keep_alive(lease).await.expect_err("revoked");
    assert_eq!(gone.kind(), Some(ErrorKind::LeaseNotFound));

    // The cluster: members, every member's status, a leadership move.
    let members = client.member_list().await.expect("members").members;
    assert_eq!(members.len(), 3);
    let statuses = client.statuses().await;
    assert_eq!(statuses.len(), 3);
    for s in &statuses {
        assert_eq!(
            s.status.as_ref().expect("status").leader,
            leader,
            "{}",
            s.endpoint
        );
    }
    let target = members
        .iter()
        .map(|m| m.id)
        .find(|&id| id != leader)
        .expect("a follower");
    client.move_leader(target).await.expect("move leader");
    client.refresh().await;
    assert_eq!(client.leader(), Some(target));
    client
        .put("a/3", "after the move", None)
        .await
        .expect("put after move");

    // History: compaction, then reading below it is refused.
    let now = client
        .get("a/3", None)
        .await
        .expect("get")
        .header
        .expect("h")
        .revision;
    client.compact(now, true).await.expect("compact");
    let e = client
        .get("a/1", Some(GetOptions::new().with_revision(first)))
        .await
        .expect_err("compacted");
    assert_eq!(e.kind(), Some(ErrorKind::Compacted));
    let deleted = client
        .delete(
            "a/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .expect("delete prefix");
    assert_eq!(deleted.deleted, 3);

    // A watch below the compaction ends with the oldest revision left.
    let mut w = client
        .watch(
            "a/",
            Some(WatchOptions::new().with_prefix().with_start_revision(first)),
        )
        .await
        .expect("watch");
    // (etcd creates it, then cancels it with the compacted revision.)
    assert!(next(&mut w).await.created);
    match tokio::time::timeout(Duration::from_secs(10), w.message()).await {
        Ok(Some(Err(Error::WatchCompacted { compact_revision }))) => {
            assert_eq!(compact_revision, now)
        }
        other => panic!("expected a compacted watch, got {other:?}"),
    }

    // A backup of one member.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("backup.db");
    let mut calls = 0;
    let size = client
        .snapshot_to_file(&c.members[0].endpoint(), &path, |_, _| calls += 1)
        .await
        .expect("snapshot");
    assert!(size > 0 && calls > 0);
    assert_eq!(std::fs::metadata(&path).expect("file").len(), size);
}

/// What the writers saw.
#[derive(Default)]
struct Outcomes {
    /// Key -> value, for writes acknowledged.
    acked: BTreeMap<String, String>,
    /// Acknowledged after the leader was killed.
    acked_after_kill: usize,
    unknown: BTreeSet<String>,
    /// Writes that failed cleanly (surely not applied).
    failed: BTreeSet<String>,
}

async fn through_a_leader_kill(mut c: Cluster) {
    let leader = c.start_and_wait().await;
    let leader_index = index_of(&c, leader).await;
    // A write sent to a member with no leader waits there (etcd holds it
    // until its own timeout): give up on an attempt after 2 s.
    let options = ClientOptions::default()
        .with_deadline(Duration::from_secs(8))
        .with_request_timeout(Duration::from_secs(2));
    let client = connect_with(&c, options).await;
    // One watcher pinned to each member (a client of that member alone):
    // the leader's must resume on it after it restarts, the others go on.
    let mut watchers = Vec::new();
    for m in &c.members {
        let options = ClientOptions::default().with_discover_members(false);
        let pinned = Client::connect_with([m.endpoint()], options)
            .await
            .expect("connect");
        let mut w = pinned
            .watch("w/", Some(WatchOptions::new().with_prefix()))
            .await
            .expect("watch");
        assert!(next(&mut w).await.created);
        watchers.push((pinned, w));
    }

    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = Instant::now() + Duration::from_secs(9);
    let mut writers = Vec::new();
    for w in 0..4 {
        let (client, outcomes, killed) = (client.clone(), outcomes.clone(), killed.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while Instant::now() < stop {
                let key = format!("w/{w}/{i}");
                let value = format!("v{w}.{i}");
                i += 1;
                let r = client.put(key.clone(), value.clone(), None).await;
                let after_kill = killed.load(std::sync::atomic::Ordering::SeqCst);
                let mut o = outcomes.lock().expect("lock");
                match r {
                    Ok(_) => {
                        o.acked.insert(key, value);
                        if after_kill {
                            o.acked_after_kill += 1;
                        }
                    }
                    Err(e) if e.is_unknown_outcome() => {
                        o.unknown.insert(key);
                    }
                    Err(_) => {
                        o.failed.insert(key);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.kill(leader_index);
    killed.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.start(leader_index);
    for w in writers {
        w.await.expect("writer");
    }
    let o = std::mem::take(&mut *outcomes.lock().expect("lock"));
    assert!(
        o.acked.len() > 50,
        "only {} writes acknowledged",
        o.acked.len()
    );
    assert!(
        o.acked_after_kill > 0,
        "no write acknowledged after the kill"
    );

    // Every acknowledged write is there; no cleanly failed one is.
    let all = client
        .get("w/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("read back");
    let present: BTreeMap<String, String> = all
        .kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect();
    for (k, v) in &o.acked {
        assert_eq!(present.get(k), Some(v), "acknowledged {k} is missing");
    }
    for k in &o.failed {
        assert!(
            !present.contains_key(k),
            "{k} failed cleanly but was applied"
        );
    }
    for k in present.keys() {
        assert!(
            o.acked.contains_key(k) || o.unknown.contains(k),
            "{k} is present but was never acknowledged or unknown"
        );
    }

    // Every watcher saw every write once, in revision order, through the
    // kill (the leader's through its restart).
    let last = all.header.expect("header").revision;
    let expected: BTreeSet<String> = present.keys().cloned().collect();
    for (i, (_, watch)) in watchers.iter_mut().enumerate() {
        let mut seen = BTreeSet::new();
        let mut revision = 0;
        while revision < last {
            let r = next(watch).await;
            for e in r.events {
                let kv = e.kv.expect("kv");
                assert!(
                    kv.mod_revision > revision,
                    "member {i}'s watcher: revision {} after {revision}",
                    kv.mod_revision
                );
                revision = kv.mod_revision;
                let key = String::from_utf8_lossy(&kv.key).into_owned();
                assert!(
                    seen.insert(key.clone()),
                    "member {i}'s watcher: {key} delivered twice"
                );
            }
        }
        assert_eq!(
            seen, expected,
            "member {i}'s watcher saw other writes than the store holds"
        );
    }
    eprintln!(
        "acked {} ({} after the kill), unknown {}, failed {}",
        o.acked.len(),
        o.acked_after_kill,
        o.unknown.len(),
        o.failed.len()
    );
}

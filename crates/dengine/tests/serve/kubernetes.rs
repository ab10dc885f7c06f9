//! Kubernetes-shaped traffic through the `etcd-client` crate, as
//! kube-apiserver issues it (its etcd3 store): guarded creates, optimistic
//! updates and deletes, paginated lists at one revision, list-then-watch
//! from the next revision, progress requests, the compactor's guarded
//! txn and `Compact`; while a member is killed and restarted.

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};

use crate::harness::{Cluster, client, index_of, next, same_hash};

/// kube-apiserver's create: put only if the key does not exist, else read
/// it. Returns (succeeded, the revision of the write or of the key).
async fn create(cl: &mut Client, key: &str, value: &str) -> (bool, i64) {
    let txn = Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, value, None)])
        .or_else([TxnOp::get(key, None)]);
    let r = cl.txn(txn).await.expect("create txn");
    let rev = r.header().expect("header").revision();
    if r.succeeded() {
        return (true, rev);
    }
    match &r.op_responses()[0] {
        TxnOpResponse::Get(g) => (false, g.kvs()[0].mod_revision()),
        other => panic!("{other:?}"),
    }
}

/// kube-apiserver's update (or delete, with no value) guarded by the
/// mod revision it read.
async fn guarded(cl: &mut Client, key: &str, value: Option<&str>, rev: i64) -> bool {
    let write = match value {
        Some(v) => TxnOp::put(key, v, None),
        None => TxnOp::delete(key, None),
    };
    let txn = Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, rev)])
        .and_then([write])
        .or_else([TxnOp::get(key, None)]);
    cl.txn(txn).await.expect("guarded txn").succeeded()
}

/// The end of the range of keys with `prefix` (etcd's prefix end).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("a prefix") += 1;
    end
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_apiserver_request_patterns_work_while_a_member_restarts() {
    let mut c = Cluster::new(3);
    let leader = c.start_and_wait().await;
    // Clients on the leader and on a follower; the other follower is
    // killed and restarted (a leader killed makes writes fail until the
    // next election, and kube-apiserver retries them: not what this test
    // is about).
    let leader = index_of(&c, leader).await;
    let (reader, victim) = ((leader + 1) % 3, (leader + 2) % 3);
    let mut cl = client(&c, leader).await;
    let pods = "/registry/pods/default/";

    // Creates: the second of the same key reads what the first wrote.
    let (ok, rev) = create(&mut cl, "/registry/pods/default/p0", "v1").await;
    assert!(ok);
    assert_eq!(
        create(&mut cl, "/registry/pods/default/p0", "v9").await,
        (false, rev)
    );
    // Optimistic update: with the revision read, then with a stale one.
    assert!(guarded(&mut cl, "/registry/pods/default/p0", Some("v2"), rev).await);
    assert!(!guarded(&mut cl, "/registry/pods/default/p0", Some("v3"), rev).await);

    // A member dies; the rest goes on without it.
    c.kill(victim);
    for i in 1..25 {
        assert!(create(&mut cl, &format!("{pods}p{i:02}"), "v1").await.0);
    }
    let got = cl
        .get("/registry/pods/default/p0", None)
        .await
        .expect("get");
    let p0 = got.kvs()[0].mod_revision();
    assert!(
        guarded(&mut cl, "/registry/pods/default/p0", None, p0).await,
        "guarded delete"
    );

    // A paginated list at one revision, while writes go on.
    let mut other = client(&c, reader).await;
    let first = other
        .get(pods, Some(GetOptions::new().with_prefix().with_limit(10)))
        .await
        .expect("page 1");
    let at = first.header().expect("header").revision();
    assert!(first.more());
    assert_eq!(first.count(), 24);
    assert!(create(&mut cl, &format!("{pods}p99"), "late").await.0);
    let mut keys: Vec<String> = first
        .kvs()
        .iter()
        .map(|kv| kv.key_str().expect("utf-8").to_string())
        .collect();
    loop {
        let mut from = keys.last().expect("a key").clone().into_bytes();
        from.push(0);
        let page = other
            .get(
                from,
                Some(
                    GetOptions::new()
                        .with_range(prefix_end(pods))
                        .with_limit(10)
                        .with_revision(at),
                ),
            )
            .await
            .expect("next page");
        keys.extend(
            page.kvs()
                .iter()
                .map(|kv| kv.key_str().expect("utf-8").to_string()),
        );
        if !page.more() {
            break;
        }
    }
    let want: Vec<String> = (1..25).map(|i| format!("{pods}p{i:02}")).collect();
    assert_eq!(keys, want, "the list at {at}, without the later write");

    // List, then watch from the list's revision + 1 with previous values
    // and progress notifications: the later write, then what follows.
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(at + 1)
        .with_prev_key()
        .with_progress_notify();
    let mut watch = other.watch(pods, Some(opts)).await.expect("watch");
    assert!(next(&mut watch).await.created());
    let r = next(&mut watch).await;
    let e = &r.events()[0];
    assert_eq!(
        e.kv().expect("kv").key_str().expect("utf-8"),
        format!("{pods}p99")
    );
    assert_eq!(e.kv().expect("kv").version(), 1);
    c.start(victim);
    let got = cl.get(format!("{pods}p01"), None).await.expect("get");
    let rev = got.kvs()[0].mod_revision();
    assert!(guarded(&mut cl, &format!("{pods}p01"), Some("v2"), rev).await);
    let r = next(&mut watch).await;
    let e = &r.events()[0];
    assert_eq!(e.event_type(), EventType::Put);
    assert_eq!(e.prev_kv().expect("prev").value(), b"v1");
    assert_eq!(e.kv().expect("kv").value(), b"v2");
    let last = e.kv().expect("kv").mod_revision();
    watch.request_progress().await.expect("progress");
    let p = next(&mut watch).await;
    assert!(p.events().is_empty());
    assert_eq!(p.header().expect("header").revision(), last);

    // The compactor: a txn guarded by the version of its own key, then
    // Compact. A second compactor with the stale version loses the txn.
    let key = "compact_rev_key";
    let compactor = |version: i64, rev: i64| {
        Txn::new()
            .when([Compare::version(key, CompareOp::Equal, version)])
            .and_then([TxnOp::put(key, rev.to_string(), None)])
            .or_else([TxnOp::get(key, None)])
    };
    let won = cl.txn(compactor(0, at)).await.expect("compactor txn");
    assert!(won.succeeded());
    cl.compact(at, None).await.expect("compact");
    let lost = other.txn(compactor(0, at)).await.expect("compactor txn");
    assert!(!lost.succeeded());
    let e = other
        .get(
            pods,
            Some(GetOptions::new().with_prefix().with_revision(at - 1)),
        )
        .await
        .expect_err("compacted");
    assert!(
        e.to_string()
            .contains("required revision has been compacted"),
        "{e}"
    );
    // The watcher goes on after the compaction.
    assert!(create(&mut cl, &format!("{pods}p100"), "v1").await.0);
    let r = next(&mut watch).await;
    assert_eq!(
        r.events()[0].kv().expect("kv").key_str().expect("utf-8"),
        format!("{pods}p100")
    );

    // The restarted member caught up: the same history everywhere.
    let now = cl
        .get(key, None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();
    assert_eq!(same_hash(&c, now).await.1, at);
}

/// The value of object `i` of the big list: 1 KiB, its own.
fn object(i: usize) -> String {
    format!("{i:05}-").repeat(1024 / 6 + 1)[..1024].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaginated_list_of_megabytes_comes_whole_while_writes_go_on() {
    // kube-apiserver lists a whole resource without a limit when asked
    // to; its answer, over 1 MiB here, is encoded apart from the
    // connection's task, and writes on the same connection go on.
    let mut c = Cluster::new(3);
    let leader = c.start_and_wait().await;
    let leader = index_of(&c, leader).await;
    let mut cl = client(&c, leader).await;
    let prefix = "/registry/configmaps/big/";
    const OBJECTS: usize = 2000;
    for chunk in (0..OBJECTS).collect::<Vec<_>>().chunks(100) {
        let puts: Vec<TxnOp> = chunk
            .iter()
            .map(|&i| TxnOp::put(format!("{prefix}c{i:05}"), object(i), None))
            .collect();
        assert!(
            cl.txn(Txn::new().and_then(puts))
                .await
                .expect("txn")
                .succeeded()
        );
    }
    for round in 0..3 {
        let mut lister = cl.clone();
        let list = tokio::spawn(async move {
            lister
                .get(prefix, Some(GetOptions::new().with_prefix()))
                .await
                .expect("list")
        });
        // Writes on the same connection while the list is answered.
        let mut writer = cl.clone();
        for i in 0..20 {
            let key = format!("/registry/events/e{round}-{i}");
            writer.put(key, "v", None).await.expect("put");
        }
        let got = list.await.expect("joined");
        assert_eq!(got.count(), OBJECTS as i64);
        assert_eq!(got.kvs().len(), OBJECTS);
        for (i, kv) in got.kvs().iter().enumerate() {
            assert_eq!(kv.key_str().expect("utf-8"), format!("{prefix}c{i:05}"));
            assert_eq!(kv.value_str().expect("utf-8"), object(i));
        }
    }
}

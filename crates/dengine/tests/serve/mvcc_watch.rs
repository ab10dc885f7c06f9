//! The history over gRPC: reads at past revisions, compaction, and watch
//! with etcd's guarantees (ordered, unique, atomic, reliable, resumable,
//! bookmarkable, correct prev_kv and create vs modify), through the
//! `etcd-client` crate, on followers as well as the leader.

use std::time::{Duration, Instant};

use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, WatchOptions, WatchResponse,
};

use crate::harness::{Cluster, client, index_of, next, same_hash, status_of, wait_leader};

/// (type, key, value, create, mod, version, prev value) of an event.
type Seen = (EventType, String, String, i64, i64, i64, Option<String>);

fn seen(resp: &WatchResponse) -> Vec<Seen> {
    resp.events()
        .iter()
        .map(|e| {
            let kv = e.kv().expect("kv");
            (
                e.event_type(),
                kv.key_str().expect("utf-8").to_string(),
                kv.value_str().expect("utf-8").to_string(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                e.prev_kv()
                    .map(|p| p.value_str().expect("utf-8").to_string()),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_revisions_compaction_and_watch_on_every_member() {
    let mut c = Cluster::new(3);
    let leader = c.start_and_wait().await;
    let follower = (index_of(&c, leader).await + 1) % 3;
    let mut w = client(&c, follower).await;
    let mut cl = client(&c, 0).await;

    // Revisions 2..=6.
    cl.put("w/a", "1", None).await.expect("put");
    cl.put("w/b", "1", None).await.expect("put");
    cl.put("w/a", "2", None).await.expect("put");
    cl.delete("w/b", None).await.expect("delete");
    let txn = Txn::new()
        .when([Compare::version("w/a", CompareOp::Equal, 2)])
        .and_then([TxnOp::put("w/c", "1", None), TxnOp::put("w/d", "1", None)]);
    assert!(cl.txn(txn).await.expect("txn").succeeded());

    // Reads at past revisions, on a follower, serializable and not.
    let at = |rev: i64| Some(GetOptions::new().with_prefix().with_revision(rev));
    let kvs = |r: etcd_client::GetResponse| -> Vec<(String, String)> {
        r.kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key_str().expect("utf-8").into(),
                    kv.value_str().expect("utf-8").into(),
                )
            })
            .collect()
    };
    let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
    assert_eq!(kvs(w.get("w/", at(1)).await.expect("at 1")), []);
    assert_eq!(
        kvs(w.get("w/", at(3)).await.expect("at 3")),
        [pair("w/a", "1"), pair("w/b", "1")]
    );
    assert_eq!(
        kvs(w.get("w/", at(5)).await.expect("at 5")),
        [pair("w/a", "2")]
    );
    let got = w.get("w/", at(6)).await.expect("at 6");
    assert_eq!(got.header().expect("header").revision(), 6);
    assert_eq!(got.count(), 3);
    let serializable = GetOptions::new()
        .with_prefix()
        .with_revision(4)
        .with_serializable();
    let got = w.get("w/", Some(serializable)).await.expect("serializable");
    assert_eq!(kvs(got), [pair("w/a", "2"), pair("w/b", "1")]);
    let e = w.get("w/", at(7)).await.expect_err("a future revision");
    assert_eq!(
        status_of(e),
        (
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision".into()
        )
    );

    // A watch on the follower from revision 2, with previous values.
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(2)
        .with_prev_key();
    let mut stream = w.watch("w/", Some(opts)).await.expect("watch");
    let created = next(&mut stream).await;
    assert!(created.created() && !created.canceled());
    assert_eq!(created.watch_id(), 0, "etcd numbers watchers from 0");
    let mut events = Vec::new();
    let mut responses = Vec::new();
    while events.len() < 6 {
        let r = next(&mut stream).await;
        assert_eq!(r.watch_id(), 0);
        responses.push(seen(&r));
        events.extend(seen(&r));
    }
    use EventType::{Delete, Put};
    let s = |s: &str| s.to_string();
    assert_eq!(
        events,
        [
            (Put, s("w/a"), s("1"), 2, 2, 1, None),
            (Put, s("w/b"), s("1"), 3, 3, 1, None),
            (Put, s("w/a"), s("2"), 2, 4, 2, Some(s("1"))),
            (Delete, s("w/b"), s(""), 0, 5, 0, Some(s("1"))),
            (Put, s("w/c"), s("1"), 6, 6, 1, None),
            (Put, s("w/d"), s("1"), 6, 6, 1, None),
        ],
        "ordered, unique, with create vs modify and prev_kv as etcd"
    );
    // Atomic: no revision's events are split between responses.
    let mut revisions: Vec<i64> = responses
        .iter()
        .flat_map(|r| {
            let mut revs: Vec<i64> = r.iter().map(|e| e.4).collect();
            revs.dedup();
            revs
        })
        .collect();
    let all = revisions.len();
    revisions.dedup();
    assert_eq!(revisions.len(), all, "a revision split: {responses:?}");

    // Live events, written through another member; a txn's in one
    // response.
    cl.put("w/e", "live", None).await.expect("put");
    let r = next(&mut stream).await;
    assert_eq!(seen(&r), [(Put, s("w/e"), s("live"), 7, 7, 1, None)]);
    let txn = Txn::new().and_then([TxnOp::put("w/e", "again", None), TxnOp::delete("w/c", None)]);
    cl.txn(txn).await.expect("txn");
    let r = next(&mut stream).await;
    assert_eq!(
        seen(&r),
        [
            (Put, s("w/e"), s("again"), 7, 8, 2, Some(s("live"))),
            (Delete, s("w/c"), s(""), 0, 8, 0, Some(s("1"))),
        ]
    );
    // Bookmarkable: a progress notification at R once every event up to
    // R was sent.
    stream.request_progress().await.expect("progress");
    let p = next(&mut stream).await;
    assert_eq!(p.watch_id(), -1);
    assert!(p.events().is_empty());
    assert_eq!(p.header().expect("header").revision(), 8);

    // Compaction, through a third member.
    let mut third = client(&c, (follower + 1) % 3).await;
    let done = third.compact(5, None).await.expect("compact");
    assert_eq!(done.header().expect("header").revision(), 8);
    let compacted = (
        tonic::Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted".to_string(),
    );
    let e = third.compact(5, None).await.expect_err("again");
    assert_eq!(status_of(e), compacted);
    let e = third.compact(9, None).await.expect_err("future");
    assert_eq!(status_of(e).0, tonic::Code::OutOfRange);
    // Every member forgets the history before 5, and keeps 5 on.
    for i in 0..3 {
        let mut m = client(&c, i).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let opts = GetOptions::new()
                .with_prefix()
                .with_revision(4)
                .with_serializable();
            match m.get("w/", Some(opts)).await {
                Err(e) => {
                    assert_eq!(status_of(e), compacted, "member {i}");
                    break;
                }
                Ok(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Ok(_) => panic!("member {i} still reads revision 4"),
            }
        }
        assert_eq!(
            kvs(m.get("w/", at(5)).await.expect("at 5")),
            [pair("w/a", "2")],
            "member {i}"
        );
    }
    // A watch from a compacted revision is cancelled with the compacted
    // revision, and the stream goes on.
    let old = WatchOptions::new().with_prefix().with_start_revision(3);
    stream.watch("w/", Some(old)).await.expect("watch");
    let r = next(&mut stream).await;
    assert!(r.created(), "{r:?}");
    assert_eq!(r.watch_id(), 1);
    let r = next(&mut stream).await;
    assert!(r.canceled() && r.compact_revision() == 5, "{r:?}");
    // The first watcher still gets live events.
    cl.put("w/f", "1", None).await.expect("put");
    let r = next(&mut stream).await;
    assert_eq!(r.watch_id(), 0);
    assert_eq!(seen(&r)[0].1, "w/f");
    stream.cancel(0).await.expect("cancel");
    let r = next(&mut stream).await;
    assert!(r.canceled() && r.watch_id() == 0, "{r:?}");

    // Every member holds the same history.
    assert_eq!(same_hash(&c, 9).await.1, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_resumes_after_its_member_and_the_leader_die_with_no_gap() {
    let mut c = Cluster::new(3);
    let leader = c.start_and_wait().await;
    let leader = index_of(&c, leader).await;
    let writer_at = (leader + 1) % 3;
    let mut writer = client(&c, writer_at).await;
    let first = writer.put("r/0", "0", None).await.expect("put");
    let first = first.header().expect("header").revision();

    // Writes go on while the watcher's member (the leader) is killed and
    // restarted; the watcher moves to another member and resumes at the
    // revision after the last one it saw.
    let writes = tokio::spawn(async move {
        let mut done = 0;
        for i in 1..300 {
            if writer
                .put(format!("r/{i}"), i.to_string(), None)
                .await
                .is_ok()
            {
                done += 1;
            }
        }
        done
    });
    let mut members = [leader, writer_at].into_iter().cycle();
    let mut revisions: Vec<i64> = Vec::new();
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !writes.is_finished() || revisions.last() != Some(&current(&c, writer_at).await) {
        assert!(Instant::now() < deadline, "saw {} events", revisions.len());
        let m = members.next().expect("cycle");
        let Ok(mut cl) = etcd_client::Client::connect([c.members[m].addr()], None).await else {
            continue;
        };
        let from = revisions.last().map_or(first, |r| r + 1);
        let opts = WatchOptions::new().with_prefix().with_start_revision(from);
        let Ok(mut stream) = cl.watch("r/", Some(opts)).await else {
            continue;
        };
        loop {
            let got = tokio::time::timeout(Duration::from_secs(2), stream.message()).await;
            let Ok(Ok(Some(r))) = got else { break };
            assert!(!r.canceled(), "{r:?}");
            revisions.extend(
                r.events()
                    .iter()
                    .map(|e| e.kv().expect("kv").mod_revision()),
            );
            if !killed && revisions.len() > 50 {
                killed = true;
                c.kill(leader);
                c.start(leader);
                break;
            }
        }
    }
    let done = writes.await.expect("writer");
    let want: Vec<i64> = (first..first + revisions.len() as i64).collect();
    same_hash(&c, *revisions.last().expect("events")).await;
    assert_eq!(revisions, want, "every revision once, in order");
    assert!(
        revisions.len() as i64 > done,
        "{} events, {done} puts",
        revisions.len()
    );
}

/// The store's revision on member `i`.
async fn current(c: &Cluster, i: usize) -> i64 {
    let mut cl = client(c, i).await;
    let opts = GetOptions::new().with_serializable().with_count_only();
    match cl.get("r/", Some(opts)).await {
        Ok(r) => r.header().map_or(0, |h| h.revision()),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_watchers_and_a_watcher_that_stops_reading() {
    let mut c = Cluster::new(1);
    c.start_all();
    wait_leader(&c, 0, Duration::from_secs(10)).await;
    let mut cl = client(&c, 0).await;

    // A watcher that reads nothing while 6,000 commands apply (more than
    // the hub keeps for a slow stream): its stream falls behind to the
    // history, and it still gets every event, once, in order.
    let mut slow = cl
        .watch("s/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    assert!(next(&mut slow).await.created());

    // 10,000 watchers on 10 streams, each on a key of its own, plus one
    // on every key.
    let mut streams = Vec::new();
    for s in 0..10 {
        let mut stream = cl.watch(format!("t/{s}/0"), None).await.expect("watch");
        for w in 1..1000 {
            stream
                .watch(format!("t/{s}/{w}"), None)
                .await
                .expect("watch");
        }
        let mut created = 0;
        while created < 1000 {
            let r = next(&mut stream).await;
            assert!(r.created(), "{r:?}");
            created += 1;
        }
        streams.push(stream);
    }
    let mut writes = Vec::new();
    for i in 0..6000 {
        let mut cl = cl.clone();
        writes.push(tokio::spawn(async move {
            cl.put(format!("s/{}", i % 100), i.to_string(), None)
                .await
                .map(|_| ())
        }));
        if writes.len() >= 64 {
            for w in writes.drain(..) {
                w.await.expect("task").expect("put");
            }
        }
    }
    for w in writes {
        w.await.expect("task").expect("put");
    }
    let first = {
        let mut revisions = Vec::new();
        while revisions.len() < 6000 {
            let r = next(&mut slow).await;
            assert!(!r.canceled(), "{r:?}");
            revisions.extend(
                r.events()
                    .iter()
                    .map(|e| e.kv().expect("kv").mod_revision()),
            );
        }
        let first = revisions[0];
        let want: Vec<i64> = (first..first + 6000).collect();
        assert_eq!(revisions, want, "every event once, in order");
        first
    };

    // One write to each of the 10,000 keys, 100 to a txn: each watcher
    // gets its key's event.
    for s in 0..10 {
        for part in 0..10 {
            let ops: Vec<TxnOp> = (part * 100..part * 100 + 100)
                .map(|w| TxnOp::put(format!("t/{s}/{w}"), "x", None))
                .collect();
            cl.txn(Txn::new().and_then(ops)).await.expect("txn");
        }
    }
    for (s, stream) in streams.iter_mut().enumerate() {
        let mut got = std::collections::BTreeSet::new();
        while got.len() < 1000 {
            let r = next(stream).await;
            for e in r.events() {
                let key = e.kv().expect("kv").key_str().expect("utf-8").to_string();
                assert!(key.starts_with(&format!("t/{s}/")), "{key}");
                assert!(got.insert((r.watch_id(), key)), "a duplicate");
            }
        }
        for (id, key) in &got {
            assert_eq!(*key, format!("t/{s}/{id}"), "watcher {id} got {key}");
        }
        assert_eq!(got.len(), 1000);
    }
    assert!(first > 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_auto_compaction_keeps_its_retention() {
    let mut c = Cluster::new(1);
    c.extra
        .extend(["--auto-compaction-retention".to_string(), "2s".to_string()]);
    c.start_all();
    wait_leader(&c, 0, Duration::from_secs(10)).await;
    let mut cl = client(&c, 0).await;
    let start = Instant::now();
    let mut puts: Vec<(Instant, i64)> = Vec::new();
    while start.elapsed() < Duration::from_millis(4500) {
        let r = cl.put("p", "v", None).await.expect("put");
        puts.push((Instant::now(), r.header().expect("header").revision()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let now = Instant::now();
    let compacted = cl.hash_kv(0).await.expect("hash").compact_version();
    // Compacted at a revision of about two seconds ago: after every put
    // older than 3 s, before every put of the last 1.9 s.
    let rev_at = |age: Duration| {
        puts.iter()
            .rev()
            .find(|(at, _)| now.duration_since(*at) >= age)
            .map_or(0, |&(_, r)| r)
    };
    let (older, newer) = (
        rev_at(Duration::from_secs(3)),
        rev_at(Duration::from_millis(1900)),
    );
    assert!(
        older <= compacted && compacted <= newer,
        "compacted at {compacted}, not between {older} and {newer}"
    );
    let e = cl
        .get("p", Some(GetOptions::new().with_revision(older - 1)))
        .await
        .expect_err("compacted");
    assert!(
        e.to_string()
            .contains("required revision has been compacted"),
        "{e}"
    );
    let last = puts.last().expect("puts").1;
    cl.get("p", Some(GetOptions::new().with_revision(last - 5)))
        .await
        .expect("kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_filters_fragments_and_refusals() {
    let mut c = Cluster::new(1);
    c.start_all();
    wait_leader(&c, 0, Duration::from_secs(10)).await;
    let mut cl = client(&c, 0).await;
    // Revisions 2..=4: three values of 600 KB, together more than a
    // request may carry (1.5 MiB).
    for k in ["f/a", "f/b", "f/c"] {
        cl.put(k, vec![b'x'; 600 * 1024], None).await.expect("put");
    }
    let from2 = || WatchOptions::new().with_prefix().with_start_revision(2);
    let mut stream = cl.watch("f/", Some(from2())).await.expect("watch");
    assert!(next(&mut stream).await.created());
    assert_eq!(next(&mut stream).await.events().len(), 3, "one response");
    // Asked for fragments, the same events come in more than one.
    stream
        .watch("f/", Some(from2().with_fragment()))
        .await
        .expect("watch");
    assert!(next(&mut stream).await.created());
    let mut parts = 0;
    let mut events = 0;
    while events < 3 {
        events += next(&mut stream).await.events().len();
        parts += 1;
    }
    assert!(parts > 1, "{parts} responses");
    // Filters: no puts, only the delete.
    stream
        .watch(
            "f/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_filters([etcd_client::WatchFilterType::NoPut]),
            ),
        )
        .await
        .expect("watch");
    let created = next(&mut stream).await;
    assert!(created.created());
    let nodelete = created.watch_id();
    cl.put("f/d", "small", None).await.expect("put");
    cl.delete("f/a", None).await.expect("delete");
    let mut got = Vec::new();
    while !got.iter().any(|(id, _)| *id == nodelete) {
        let r = next(&mut stream).await;
        for e in r.events() {
            got.push((r.watch_id(), e.event_type()));
        }
    }
    let mine: Vec<_> = got.iter().filter(|(id, _)| *id == nodelete).collect();
    assert_eq!(mine, [&(nodelete, EventType::Delete)], "{got:?}");
    // A watch id in use, and an empty range, are refused as etcd does.
    stream
        .watch("x", Some(WatchOptions::new().with_watch_id(nodelete)))
        .await
        .expect("watch");
    let mut r = next(&mut stream).await;
    while !r.canceled() {
        r = next(&mut stream).await;
    }
    assert!(r.created());
    assert_eq!(r.watch_id(), -1);
    assert_eq!(
        r.cancel_reason(),
        "mvcc: duplicate watch ID provided on the WatchStream"
    );
    stream
        .watch("b", Some(WatchOptions::new().with_range("a")))
        .await
        .expect("watch");
    let r = next(&mut stream).await;
    assert!(r.created() && r.canceled(), "{r:?}");
    assert_eq!(r.cancel_reason(), "mvcc: watcher range is empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notifications_come_at_the_configured_interval() {
    let mut c = Cluster::new(3);
    c.extra.extend([
        "--experimental-watch-progress-notify-interval".into(),
        "300ms".into(),
    ]);
    c.start_and_wait().await;
    let mut cl = client(&c, 1).await;
    let put = cl.put("elsewhere", "x", None).await.expect("put");
    let revision = put.header().expect("header").revision();
    let notified = WatchOptions::new().with_progress_notify();
    let mut with = cl.watch("quiet", Some(notified)).await.expect("watch");
    let mut without = cl.watch("quiet", None).await.expect("watch");
    assert!(next(&mut with).await.created());
    assert!(next(&mut without).await.created());
    // Two notifications within a couple of seconds, each at the store's
    // revision, with no event.
    let started = Instant::now();
    for _ in 0..2 {
        let r = next(&mut with).await;
        assert!(r.events().is_empty() && !r.canceled(), "{r:?}");
        assert_eq!(r.header().expect("header").revision(), revision);
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // A watcher that did not ask gets none.
    let quiet = tokio::time::timeout(Duration::from_millis(800), without.message()).await;
    assert!(quiet.is_err(), "{quiet:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_requires_a_leader_ends_when_its_member_has_none() {
    let mut c = Cluster::new(3);
    c.start_and_wait().await;
    let connect = |require: bool| {
        let addr = c.members[0].addr();
        async move {
            let opts = etcd_client::ConnectOptions::new().with_require_leader(require);
            etcd_client::Client::connect([addr], Some(opts))
                .await
                .expect("connect")
        }
    };
    let mut strict = connect(true).await.watch("k", None).await.expect("watch");
    let mut lenient = connect(false).await.watch("k", None).await.expect("watch");
    assert!(next(&mut strict).await.created());
    assert!(next(&mut lenient).await.created());
    // The other two members go: member 0 is left without a leader.
    c.kill(1);
    c.kill(2);
    let ended = tokio::time::timeout(Duration::from_secs(10), strict.message())
        .await
        .expect("the stream ends within 10 s");
    let e = ended.expect_err("ends with an error");
    assert_eq!(
        status_of(e),
        (
            tonic::Code::Unavailable,
            "etcdserver: no leader".to_string()
        )
    );
    // A watch that did not ask stays open.
    let quiet = tokio::time::timeout(Duration::from_millis(500), lenient.message()).await;
    assert!(quiet.is_err(), "{quiet:?}");
}

/// `--max-watchers-per-stream`: past it, a create is answered created and
/// cancelled with the reason, and the stream's other watchers go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_past_the_limit_of_a_stream_are_cancelled() {
    let mut c = Cluster::new(1);
    c.extra
        .extend(["--max-watchers-per-stream".to_string(), "3".to_string()]);
    c.start_all();
    wait_leader(&c, 0, Duration::from_secs(10)).await;
    let mut cl = client(&c, 0).await;
    let mut stream = cl.watch("w/0", None).await.expect("watch");
    assert!(next(&mut stream).await.created());
    for i in 1..3 {
        stream.watch(format!("w/{i}"), None).await.expect("watch");
        let r = next(&mut stream).await;
        assert!(r.created() && !r.canceled(), "{r:?}");
    }
    stream.watch("w/3", None).await.expect("watch");
    let r = next(&mut stream).await;
    assert!(r.created() && r.canceled(), "{r:?}");
    assert_eq!(
        r.cancel_reason(),
        "etcdserver: too many watchers on this stream"
    );
    cl.put("w/2", "x", None).await.expect("put");
    let r = next(&mut stream).await;
    assert_eq!(r.events().len(), 1, "{r:?}");
    assert_eq!(r.events()[0].kv().map(|kv| kv.key()), Some(&b"w/2"[..]));
}

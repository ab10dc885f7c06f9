//! A watch history check, as etcd's robustness suite makes it, with the
//! leader killed in the middle: a watcher with `prev_kv` and progress
//! notifications follows a prefix while puts, deletes and multi-key txns
//! run; when its member (the leader) is killed it resumes on another one
//! from the revision after the last it saw. The whole stream must be
//! ordered (revisions increase), unique (each write once), atomic (a
//! revision's events in one response), reliable (no revision missing),
//! resumable (the resume leaves no gap), bookmarkable (a progress
//! notification at R only after every event up to R), with correct
//! `prev_kv` and create/modify counters, and must replay into the store's
//! final state.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, WatchOptions};

use crate::harness::{Cluster, client, index_of};

/// What the checker keeps of a key: (value, create, mod, version).
type Model = BTreeMap<Vec<u8>, (Vec<u8>, i64, i64, i64)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_history_keeps_etcds_guarantees_across_a_leader_change() {
    let mut c = Cluster::new(3);
    let leader = c.start_and_wait().await;
    let leader = index_of(&c, leader).await;
    let writer_at = (leader + 1) % 3;
    let mut writer = client(&c, writer_at).await;
    let start = writer
        .put("marker", "x", None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision()
        + 1;

    // Puts, deletes, and txns that write three keys at one revision.
    let writes = tokio::spawn(async move {
        for i in 0..240u32 {
            let key = format!("h/{}", i % 7);
            let outcome = match i % 6 {
                0..=2 => writer.put(key, i.to_string(), None).await.map(|_| ()),
                3 => writer.delete(key, None).await.map(|_| ()),
                _ => {
                    let keys = [i % 7, (i + 1) % 7, (i + 2) % 7].map(|k| format!("h/{k}"));
                    let txn = Txn::new()
                        .when([Compare::version("marker", CompareOp::Greater, 0)])
                        .and_then(keys.map(|k| TxnOp::put(k, format!("t{i}"), None)));
                    writer.txn(txn).await.map(|_| ())
                }
            };
            // A write whose outcome is unknown (the leader died) is fine:
            // the checker reads what happened from the history.
            let _ = outcome;
        }
    });

    let mut responses: Vec<(i64, Vec<etcd_client::Event>, bool)> = Vec::new();
    let mut last_seen = start - 1;
    let mut killed = false;
    let mut members = [leader, writer_at].into_iter().cycle();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let target = client(&c, writer_at).await.get("marker", None).await;
        let current = target.ok().and_then(|r| r.header().map(|h| h.revision()));
        if writes.is_finished() && current == Some(last_seen) {
            break;
        }
        assert!(Instant::now() < deadline, "saw up to {last_seen}");
        let m = members.next().expect("cycle");
        let Ok(mut cl) = etcd_client::Client::connect([c.members[m].addr()], None).await else {
            continue;
        };
        let opts = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_progress_notify()
            .with_start_revision(last_seen + 1);
        let Ok(mut stream) = cl.watch("h/", Some(opts)).await else {
            continue;
        };
        // Asked every 200 ms, and once the stream's first event came: a
        // stream whose events all came within 200 ms (a fast machine)
        // still checks one. Not before an event: a member that lags the
        // one the last stream was on reports its own revision, below
        // what was delivered (as etcd does).
        let created = Instant::now();
        let mut asked: Option<Instant> = None;
        let mut events_here = false;
        loop {
            let due = match asked {
                None => events_here || created.elapsed() > Duration::from_millis(200),
                Some(at) => at.elapsed() > Duration::from_millis(200),
            };
            if due {
                let _ = stream.request_progress().await;
                asked = Some(Instant::now());
            }
            let got = tokio::time::timeout(Duration::from_secs(2), stream.message()).await;
            let Ok(Ok(Some(r))) = got else { break };
            assert!(!r.canceled(), "{r:?}");
            if r.created() {
                continue;
            }
            let revision = r.header().expect("header").revision();
            let events = r.events().to_vec();
            let progress = events.is_empty();
            if let Some(e) = events.last() {
                last_seen = e.kv().expect("kv").mod_revision();
                events_here = true;
            }
            responses.push((revision, events, progress));
            if !killed && last_seen > start + 60 {
                killed = true;
                c.kill(leader);
                c.start(leader);
                break;
            }
        }
    }
    writes.await.expect("writer");
    assert!(killed, "the leader was killed mid-history");

    // Ordered, unique, atomic, reliable, resumable.
    let mut revisions: Vec<i64> = Vec::new();
    let mut seen_keys = std::collections::BTreeSet::new();
    for (_, events, _) in &responses {
        let mut in_response: Vec<i64> = events
            .iter()
            .map(|e| e.kv().expect("kv").mod_revision())
            .collect();
        in_response.dedup();
        for rev in in_response {
            assert!(
                revisions.last().is_none_or(|last| *last < rev),
                "revision {rev} after {revisions:?}: out of order, or split over responses"
            );
            revisions.push(rev);
        }
        for e in events {
            let kv = e.kv().expect("kv");
            assert!(
                seen_keys.insert((kv.mod_revision(), kv.key().to_vec())),
                "an event twice: {e:?}"
            );
        }
    }
    let want: Vec<i64> = (start..=last_seen).collect();
    assert_eq!(
        revisions, want,
        "every revision once, in order, none missing"
    );
    // A txn's three puts came in one response at one revision.
    assert!(
        responses.iter().any(|(_, events, _)| events.len() >= 3),
        "no txn seen whole"
    );

    // Bookmarkable: a progress notification at R comes after every event
    // up to R, and no event up to R comes after it.
    let notifications = responses.iter().filter(|(_, _, p)| *p).count();
    assert!(notifications > 0, "no progress notification to check");
    let mut delivered = start - 1;
    for (revision, events, progress) in &responses {
        if *progress {
            assert!(
                *revision >= delivered,
                "progress at {revision} before event {delivered}"
            );
            delivered = delivered.max(*revision);
        } else {
            let first = events[0].kv().expect("kv").mod_revision();
            assert!(
                first > delivered,
                "event at {first} after progress or events up to {delivered}"
            );
            delivered = events
                .last()
                .expect("events")
                .kv()
                .expect("kv")
                .mod_revision();
        }
    }

    // prev_kv and create/modify counters, replayed into a model.
    let mut model = Model::new();
    for (_, events, _) in &responses {
        for e in events {
            let kv = e.kv().expect("kv");
            let key = kv.key().to_vec();
            let before = model.get(&key).cloned();
            let prev = e.prev_kv().map(|p| {
                (
                    p.value().to_vec(),
                    p.create_revision(),
                    p.mod_revision(),
                    p.version(),
                )
            });
            assert_eq!(prev, before, "prev_kv of {e:?}");
            match e.event_type() {
                etcd_client::EventType::Put => {
                    let (create, version) = match &before {
                        None => (kv.mod_revision(), 1),
                        Some((_, create, _, version)) => (*create, version + 1),
                    };
                    assert_eq!(
                        (kv.create_revision(), kv.version()),
                        (create, version),
                        "counters of {e:?}"
                    );
                    model.insert(
                        key,
                        (kv.value().to_vec(), create, kv.mod_revision(), version),
                    );
                }
                etcd_client::EventType::Delete => {
                    assert!(before.is_some(), "a delete of a missing key: {e:?}");
                    model.remove(&key);
                }
            }
        }
    }
    let mut cl = client(&c, 0).await;
    let opts = GetOptions::new().with_prefix().with_revision(last_seen);
    let stored: Model = cl
        .get("h/", Some(opts))
        .await
        .expect("get")
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                (
                    kv.value().to_vec(),
                    kv.create_revision(),
                    kv.mod_revision(),
                    kv.version(),
                ),
            )
        })
        .collect();
    assert_eq!(model, stored, "the events replay into the store");
}

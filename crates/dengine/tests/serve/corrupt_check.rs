//! Damage to a member's key-value store is found at start. A record whose
//! checksum fails stops the member as the store opens, naming the record's
//! revision; a record rewritten whole (its checksum right, its content not
//! what the log said) is found by the initial corruption check, which
//! compares the store's hash with the peers'. Without the check the member
//! serves the damaged store, and its hash differs from the others' (so the
//! damage in this test is real). A healthy member restarting next to the
//! damaged one starts, and names it.

use std::path::Path;
use std::time::{Duration, Instant};

use dengine::kv::{Change, KvBackend, LogBackend};

use crate::harness::{Cluster, client};

/// Rewrites the record holding `from` in the store of the member in `dir`
/// so that it holds `with` (as long) instead: with its checksum made
/// again, or left as it was.
fn rewrite(dir: &Path, from: &[u8], with: &[u8], reseal: bool) {
    assert_eq!(with.len(), from.len());
    let mut store = LogBackend::open(&dir.join("kv")).expect("open the member's store");
    let mut found = Vec::new();
    store
        .scan(b"r", Some(b"s"), &mut |k, v| {
            if v.windows(from.len()).any(|w| w == from) {
                found.push((k.to_vec(), v.to_vec()));
            }
            Ok(true)
        })
        .expect("scan");
    assert_eq!(found.len(), 1, "one record holds the value");
    let (key, mut record) = found.remove(0);
    let at = record
        .windows(from.len())
        .position(|w| w == from)
        .expect("the value");
    record[at..at + with.len()].copy_from_slice(with);
    if reseal {
        record = dengine::core::codec::seal(&record[4..]);
    }
    store
        .write(vec![Change::Put(key, record)])
        .expect("rewrite the record");
    store.sync().expect("sync");
}

/// Member `i`'s hash of the history up to `revision`.
async fn hash_of(c: &Cluster, i: usize, revision: i64) -> u32 {
    let mut cl = client(c, i).await;
    cl.hash_kv(revision).await.expect("hash_kv").hash()
}

/// Starts member 2 with `extra` flags and waits for it to exit; its status
/// and what it logged.
fn start_expecting_exit(c: &mut Cluster, extra: &[&str]) -> (std::process::ExitStatus, String) {
    let before = c.log(2).len();
    let kept = c.extra.clone();
    c.extra.extend(extra.iter().map(|s| s.to_string()));
    c.start(2);
    c.extra = kept;
    let status = c.wait_exit(2, Duration::from_secs(30));
    (status, c.log(2)[before..].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_found_at_start_and_the_member_refused() {
    let mut c = Cluster::new(3);
    c.start_and_wait().await;
    let mut cl = client(&c, 0).await;
    for i in 0..100 {
        let value = format!("value-{i:03}-original");
        cl.put(format!("k/{i:03}"), value, None).await.expect("put");
    }
    let revision = cl
        .get("k/099", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();
    let damaged_at = cl.get("k/042", None).await.expect("get").kvs()[0].mod_revision();
    let mut m2 = client(&c, 2).await;
    let id2 = m2
        .status()
        .await
        .expect("status")
        .header()
        .expect("header")
        .member_id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while m2
        .get(
            "k/099",
            Some(etcd_client::GetOptions::new().with_serializable()),
        )
        .await
        .map_or(true, |r| r.kvs().is_empty())
    {
        assert!(Instant::now() < deadline, "member 2 did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = c.terminate(2, Duration::from_secs(20));
    assert!(status.success(), "member 2 stopped with {status}");

    // A record whose checksum fails: found as the store opens, by revision.
    rewrite(
        c.dir(2),
        b"value-042-original",
        b"value-042-DAMAGED!",
        false,
    );
    let (status, log) = start_expecting_exit(&mut c, &[]);
    assert!(!status.success(), "a damaged member started: {status}");
    assert!(
        log.contains("key-value store") && log.contains("is corrupt: checksum mismatch"),
        "the refusal does not name the damaged record:\n{log}"
    );
    assert!(
        log.contains(&c.dir(2).join("kv").display().to_string())
            && log.contains(&format!("the record of revision {damaged_at}.0")),
        "the refusal does not name the store and the revision:\n{log}"
    );

    // A record rewritten whole, checksum and all: only the peers can tell.
    rewrite(c.dir(2), b"value-042-DAMAGED!", b"value-042-REWRITE!", true);
    let (status, log) = start_expecting_exit(&mut c, &[]);
    assert!(!status.success(), "a member no peer agrees with started");
    assert!(
        log.contains("found data inconsistency with peers")
            && log.contains(&c.dir(2).join("kv").display().to_string())
            && log.contains("dengine member repair m2"),
        "the refusal does not say what is wrong and what to do:\n{log}"
    );

    // Without the check it starts, and serves what the log never said.
    c.extra
        .push("--experimental-initial-corrupt-check=false".into());
    c.start(2);
    c.extra.pop();
    let mut m2 = client(&c, 2).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let value = loop {
        if let Ok(r) = m2
            .get(
                "k/042",
                Some(etcd_client::GetOptions::new().with_serializable()),
            )
            .await
            && let Some(kv) = r.kvs().first()
        {
            break kv.value().to_vec();
        }
        assert!(Instant::now() < deadline, "member 2 does not serve");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(value, b"value-042-REWRITE!");
    let (h0, h2) = (
        hash_of(&c, 0, revision).await,
        hash_of(&c, 2, revision).await,
    );
    assert_ne!(h0, h2, "the damaged store hashes as the others");
    assert_eq!(h0, hash_of(&c, 1, revision).await);

    // A healthy member restarting next to it starts (member 0 agrees with
    // it), and names member 2 as the one that differs.
    let before = c.log(1).len();
    let status = c.terminate(1, Duration::from_secs(20));
    assert!(status.success());
    c.start(1);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut m1 = loop {
        if let Ok(mut m1) = etcd_client::Client::connect([c.members[1].endpoint()], None).await
            && m1.status().await.is_ok()
        {
            break m1;
        }
        assert!(
            Instant::now() < deadline,
            "member 1 did not start:\n{}",
            c.log(1)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    m1.put("after", "restart", None)
        .await
        .expect("a put through member 1");
    let log = c.log(1)[before..].to_string();
    assert!(
        log.contains("found data inconsistency with peers") && log.contains(&format!("{id2:x}")),
        "member 1 does not name member 2 ({id2:x}) as differing:\n{log}"
    );

    // The periodic check: every member restarted with it (member 2 still
    // without the start-up check). Whichever leads finds member 2's store
    // is the one that differs (if member 2 leads, no peer agrees with it)
    // and raises its CORRUPT alarm; then writes fail with etcd's error,
    // reads go on.
    for i in [0, 1, 2] {
        let status = c.terminate(i, Duration::from_secs(20));
        assert!(status.success());
        let flags = [
            "--experimental-corrupt-check-time",
            "1s",
            "--experimental-initial-corrupt-check",
            "false",
        ];
        let n = if i == 2 { 4 } else { 2 };
        c.extra.extend(flags[..n].iter().map(|s| s.to_string()));
        c.start(i);
        c.extra.truncate(c.extra.len() - n);
        crate::harness::wait_leader(&c, i, Duration::from_secs(20)).await;
    }
    let mut cl = client(&c, 0).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alarms = cl
            .alarm(
                etcd_client::AlarmAction::Get,
                etcd_client::AlarmType::None,
                None,
            )
            .await
            .expect("alarm list");
        let corrupt: Vec<u64> = alarms
            .alarms()
            .iter()
            .filter(|a| a.alarm() == etcd_client::AlarmType::Corrupt)
            .map(|a| a.member_id())
            .collect();
        if !corrupt.is_empty() {
            assert_eq!(corrupt, vec![id2], "the alarm is raised for member 2 only");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no CORRUPT alarm was raised:\n{}\n{}",
            c.log(0),
            c.log(1)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refused = cl
        .put("k/after", "x", None)
        .await
        .expect_err("a write while the CORRUPT alarm is raised");
    assert_eq!(
        crate::harness::status_of(refused),
        (tonic::Code::DataLoss, "etcdserver: corrupt cluster".into())
    );
    let got = cl.get("k/042", None).await.expect("a read goes on");
    assert_eq!(got.kvs()[0].value(), b"value-042-original");
}

//! A log sync that fails (`FAILPOINTS=fsync-error-after=N`, feature
//! `failpoints`: the error an fsync returning EIO gives) stops that
//! member's process: it exits with a failure naming the sync, instead of
//! going on as if the write were durable. The other two go on; every
//! write acknowledged is there; the member, restarted without the fault,
//! catches up to the same state.

use std::time::Duration;

use crate::harness::{Cluster, client, same_hash, wait_leader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_stops_the_member_and_loses_nothing_acknowledged() {
    let mut c = Cluster::new(3);
    c.start(0);
    c.start(1);
    c.start_with_env(2, &[("FAILPOINTS", "fsync-error-after=40")]);
    for i in 0..3 {
        wait_leader(&c, i, Duration::from_secs(10)).await;
    }
    let mut cl = client(&c, 0).await;
    let mut acknowledged = Vec::new();
    for i in 0..300 {
        let key = format!("k/{i:03}");
        if cl.put(key.as_str(), "v", None).await.is_ok() {
            acknowledged.push(key);
        }
    }
    let status = c.wait_exit(2, Duration::from_secs(30));
    assert!(!status.success(), "member 2 exited with {status}");
    let log = c.log(2);
    assert!(
        log.contains("injected by FAILPOINTS") && log.contains("the node stopped"),
        "member 2's log does not say why it stopped:\n{log}"
    );
    // Two members of three go on taking writes (after an election, if
    // member 2 led): each is retried until it is taken. (A count of the
    // puts above taken during the fault depends on the machine's load.)
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for i in 0..20 {
        let key = format!("after/{i:02}");
        while let Err(e) = cl.put(key.as_str(), "v", None).await {
            assert!(
                std::time::Instant::now() < deadline,
                "two members of three take no writes: {e}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        acknowledged.push(key);
    }
    let got = cl
        .get("", Some(etcd_client::GetOptions::new().with_all_keys()))
        .await
        .expect("get");
    let keys: Vec<String> = got
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect();
    for k in &acknowledged {
        assert!(keys.contains(k), "{k} was acknowledged and is gone");
    }

    // Restarted without the fault, it catches up from its data directory
    // and the others.
    c.start(2);
    wait_leader(&c, 2, Duration::from_secs(20)).await;
    let revision = got.header().map_or(0, |h| h.revision());
    let _ = same_hash(&c, revision).await;
}

//! A member whose log is damaged refuses to start, naming the segment and
//! the entries; `dengine member repair` replaces it (its directory moved
//! aside, removed, added again), and started again it fetches a snapshot
//! from the others and holds every acknowledged write.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::{Cluster, binary, client, same_hash, wait_leader};

/// The write-ahead log's segment files of the member in `dir`.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir.join("wal"))
        .expect("the member's wal")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    found.sort();
    found
}

/// Flips a byte in the middle of what the first segment holds, so that
/// records after it still read: damage, not a torn write.
fn damage(segment: &Path) {
    let mut bytes = std::fs::read(segment).expect("segment");
    let end = bytes
        .iter()
        .rposition(|b| *b != 0)
        .expect("a segment with records");
    let at = end / 2;
    bytes[at] ^= 0x5a;
    std::fs::write(segment, bytes).expect("damage the segment");
}

/// Runs `dengine member repair NAME --data-dir DIR` against `endpoints`:
/// whether it succeeded, its stdout and its stderr.
fn repair(endpoints: &str, name: &str, dir: &Path) -> (bool, String, String) {
    let out = std::process::Command::new(binary())
        .args([
            "--endpoints",
            endpoints,
            "member",
            "repair",
            name,
            "--data-dir",
        ])
        .arg(dir)
        .output()
        .expect("dengine member repair");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_member_is_named_refused_and_repaired_from_the_cluster() {
    let mut c = Cluster::new(3);
    // Snapshots often, so that the log is compacted and the repaired
    // member is sent a snapshot, not only entries.
    c.extra.extend(["--snapshot-count".into(), "50".into()]);
    c.start_and_wait().await;
    let mut cl = client(&c, 0).await;
    for i in 0..200 {
        let key = format!("k/{i:03}");
        cl.put(key.as_str(), key.as_str(), None).await.expect("put");
    }
    // Member 2 has the writes, then stops; its log is damaged.
    let mut m2 = client(&c, 2).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while m2
        .get(
            "k/199",
            Some(etcd_client::GetOptions::new().with_serializable()),
        )
        .await
        .map_or(true, |r| r.kvs().is_empty())
    {
        assert!(Instant::now() < deadline, "member 2 did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.kill(2);
    let segment = segments(c.dir(2)).into_iter().next().expect("a segment");
    damage(&segment);

    // It refuses to start, and says where the damage is.
    c.start(2);
    let status = c.wait_exit(2, Duration::from_secs(20));
    assert!(!status.success(), "a damaged member started: {status}");
    let log = c.log(2);
    let file = segment.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        // The segment, and what is wrong: "log entries A to B are
        // corrupt", or for another record its offset.
        log.contains(&format!("segment {file}:")),
        "the log does not name the damaged segment {file}:\n{log}"
    );

    // The others go on meanwhile (after an election, if it led).
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Err(e) = cl.put("k/200", "k/200", None).await {
        assert!(Instant::now() < deadline, "two of three take no write: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Repaired from the cluster.
    let endpoints = format!("{},{}", c.members[0].endpoint(), c.members[1].endpoint());
    let (success, stdout, stderr) = repair(&endpoints, "m2", c.dir(2));
    assert!(success, "repair failed: {stdout}{stderr}");
    assert!(
        stdout.contains("member m2 replaced")
            && stdout.contains("--initial-cluster-state existing"),
        "{stdout}"
    );
    let kept: Vec<_> = std::fs::read_dir(c.dir(2).parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("m2.damaged-"))
        .collect();
    assert_eq!(kept.len(), 1, "the damaged files are kept aside");

    // A running member is not repaired.
    let (success, _, stderr) = repair(&endpoints, "m0", c.dir(0));
    assert!(!success);
    assert!(stderr.contains("stop it before repairing it"), "{stderr}");
    assert!(c.dir(0).is_dir(), "a running member's files are untouched");

    c.members[2].joining = true;
    c.start(2);
    wait_leader(&c, 2, Duration::from_secs(20)).await;
    cl.put("k/201", "k/201", None).await.expect("put");
    let mut m2 = client(&c, 2).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = m2
            .get(
                "k/",
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_serializable(),
                ),
            )
            .await;
        if let Ok(got) = got
            && got.kvs().len() == 202
        {
            assert!(got.kvs().iter().all(|kv| kv.key() == kv.value()));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the repaired member did not catch up:\n{}",
            c.log(2)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let revision = cl
        .get("k/201", None)
        .await
        .expect("get")
        .header()
        .unwrap()
        .revision();
    same_hash(&c, revision).await;
}

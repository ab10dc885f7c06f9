//! Backups: `etcdctl snapshot save` from a member of a running cluster,
//! `dengine snapshot restore` into the data directories of a new 3-member
//! cluster, which then serves the backup's keys, history and leases, with
//! equal stores on every member and new writes above the backup's
//! revision.

use std::process::Command;
use std::time::Duration;

use crate::etcdctl::{etcdctl, ok};
use crate::harness::{Cluster, binary, client, wait_leader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_a_new_cluster() {
    let mut old = Cluster::new(3);
    old.start_all();
    for i in 0..3 {
        wait_leader(&old, i, Duration::from_secs(10)).await;
    }
    let e0 = old.members[0].endpoint();
    for i in 0..30 {
        ok(&e0, &["put", &format!("k{i:02}"), &format!("v{i}")]);
    }
    ok(&e0, &["put", "k00", "again"]);
    ok(&e0, &["del", "k29"]);
    let granted = ok(&e0, &["lease", "grant", "600"]);
    let lease = granted
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    ok(&e0, &["put", "leased", "x", "--lease", &lease]);
    let revision = client(&old, 1)
        .await
        .get("k00", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();

    // etcdctl saves it (its own rule: 32 bytes past a multiple of 512).
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("backup.db");
    let file_s = file.to_str().expect("utf-8 path");
    let saved = ok(&old.members[1].endpoint(), &["snapshot", "save", file_s]);
    assert_eq!(saved, format!("Snapshot saved at {file_s}\n"));
    let size = std::fs::metadata(&file).expect("saved").len();
    assert_eq!(size % 512, 32, "{size}");
    drop(old);

    // A damaged copy is refused before anything is written.
    let mut bytes = std::fs::read(&file).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    let damaged = dir.path().join("damaged.db");
    std::fs::write(&damaged, &bytes).expect("write");

    let mut new = Cluster::new(3);
    let restore = |new: &Cluster, i: usize, from: &std::path::Path| {
        let m = &new.members[i];
        Command::new(binary())
            .args(["snapshot", "restore"])
            .arg(from)
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.dir)
            .args(["--initial-cluster", &new.initial_cluster()])
            .args(["--initial-advertise-peer-urls", &m.peer_url()])
            .args(["--initial-cluster-token", &new.token])
            .output()
            .expect("dengine snapshot restore")
    };
    let refused = restore(&new, 0, &damaged);
    assert_eq!(refused.status.code(), Some(2));
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("SHA-256 does not match"), "{why}");
    assert!(!new.members[0].dir.exists(), "nothing is written");
    for i in 0..3 {
        let done = restore(&new, i, &file);
        let out = String::from_utf8_lossy(&done.stdout);
        assert!(
            done.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&done.stderr)
        );
        assert!(
            out.contains(&format!("restored revision {revision}")),
            "{out}"
        );
    }
    let again = restore(&new, 0, &file);
    assert!(String::from_utf8_lossy(&again.stderr).contains("is not empty"));

    new.start_all();
    for i in 0..3 {
        wait_leader(&new, i, Duration::from_secs(10)).await;
    }
    let all = (0..3)
        .map(|i| new.members[i].endpoint())
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(ok(&all, &["get", "k00"]), "k00\nagain\n");
    assert_eq!(ok(&all, &["get", "k29"]), "");
    // The history came along: the first value of k00 and k29 before its
    // delete.
    assert_eq!(ok(&all, &["get", "k00", "--rev", "2"]), "k00\nv0\n");
    assert_eq!(ok(&all, &["get", "k29", "--rev", "31"]), "k29\nv29\n");
    let ttl = ok(&all, &["lease", "timetolive", &lease, "--keys"]);
    assert!(ttl.contains("attached keys([leased])"), "{ttl}");
    // The new cluster's members are the new ones only.
    let members = ok(&all, &["member", "list"]);
    assert_eq!(members.lines().count(), 3, "{members}");
    for m in &new.members {
        assert!(members.contains(&m.peer_url()), "{members}");
    }
    // New writes go on above the backup's revision, the same on every
    // member.
    let mut cl = client(&new, 2).await;
    let put = cl.put("after", "restore", None).await.expect("put");
    let rev = put.header().expect("header").revision();
    assert_eq!(rev, revision + 1);
    let (_, err, success) = etcdctl(&all, &["endpoint", "hashkv", "--cluster"], None);
    assert!(success, "{err}");
    crate::harness::same_hash(&new, rev).await;
}

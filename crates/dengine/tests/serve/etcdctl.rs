//! `etcdctl` (Debian's `etcd-client`, a client nobody here wrote) against
//! a 3-member cluster: its commands and their exact outputs.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{Cluster, wait_leader};

/// Runs etcdctl against `endpoint`; (stdout, stderr, success).
pub fn etcdctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> (String, String, bool) {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "--command-timeout", "5s"])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "etcdctl could not run ({e}): install Debian's etcd-client \
             (`cargo xtask ci` does when root) or put etcdctl on PATH"
        )
    });
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("etcdctl");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

pub fn ok(endpoint: &str, args: &[&str]) -> String {
    let (out, err, success) = etcdctl(endpoint, args, None);
    assert!(success, "etcdctl {args:?} failed: {err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_works_against_a_cluster() {
    let mut c = Cluster::new(3);
    c.start_and_wait().await;
    let (e0, e1, e2) = (
        c.members[0].endpoint(),
        c.members[1].endpoint(),
        c.members[2].endpoint(),
    );
    let e0 = e0.as_str();

    assert_eq!(ok(e0, &["put", "foo/a", "1"]), "OK\n");
    assert_eq!(ok(&e1, &["put", "foo/b", "2"]), "OK\n");
    assert_eq!(ok(&e2, &["put", "foo/c", "3"]), "OK\n");
    assert_eq!(ok(e0, &["put", "zed", "z"]), "OK\n");

    assert_eq!(ok(&e2, &["get", "foo/a"]), "foo/a\n1\n");
    assert_eq!(ok(e0, &["get", "missing"]), "");
    assert_eq!(
        ok(&e1, &["get", "foo/", "--prefix"]),
        "foo/a\n1\nfoo/b\n2\nfoo/c\n3\n"
    );
    assert_eq!(
        ok(e0, &["get", "foo/", "--prefix", "--keys-only"]),
        "foo/a\n\nfoo/b\n\nfoo/c\n\n"
    );
    assert_eq!(
        ok(e0, &["get", "foo/", "--prefix", "--limit", "2"]),
        "foo/a\n1\nfoo/b\n2\n"
    );
    assert_eq!(
        ok(e0, &["get", "foo/b", "--from-key"]),
        "foo/b\n2\nfoo/c\n3\nzed\nz\n"
    );
    assert_eq!(
        ok(e0, &["get", "", "--from-key", "--keys-only"]),
        "foo/a\n\nfoo/b\n\nfoo/c\n\nzed\n\n"
    );
    let limited = ok(
        e0,
        &["get", "foo/", "--prefix", "--limit", "1", "-w", "json"],
    );
    assert!(limited.contains("\"count\":3"), "{limited}");
    assert!(limited.contains("\"more\":true"), "{limited}");

    // JSON: keys and values base64, revisions as etcd counts them.
    let json = ok(&e1, &["get", "foo/a", "-w", "json"]);
    assert!(json.contains("\"key\":\"Zm9vL2E=\""), "{json}");
    assert!(json.contains("\"value\":\"MQ==\""), "{json}");
    assert!(json.contains("\"create_revision\":2"), "{json}");
    assert!(json.contains("\"mod_revision\":2"), "{json}");
    assert!(json.contains("\"version\":1"), "{json}");
    assert!(json.contains("\"revision\":5"), "{json}");
    assert!(json.contains("\"count\":1"), "{json}");

    // Txn from stdin: the success branch, then the failure branch.
    let txn = "value(\"foo/a\") = \"1\"\n\nput foo/a 10\n\nput foo/a 20\n\n";
    let (out, err, success) = etcdctl(e0, &["txn"], Some(txn));
    assert!(success, "{err}");
    assert_eq!(out, "SUCCESS\n\nOK\n");
    let (out, err, success) = etcdctl(&e2, &["txn"], Some(txn));
    assert!(success, "{err}");
    assert_eq!(out, "FAILURE\n\nOK\n");
    assert_eq!(ok(&e1, &["get", "foo/a"]), "foo/a\n20\n");
    let txn = "mod(\"foo/b\") > \"0\"\n\nget foo/b\n\n\n";
    let (out, err, success) = etcdctl(e0, &["txn"], Some(txn));
    assert!(success, "{err}");
    assert_eq!(out, "SUCCESS\n\nfoo/b\n2\n");

    // Delete a prefix, with the previous values.
    assert_eq!(
        ok(&e2, &["del", "foo/", "--prefix", "--prev-kv"]),
        "3\nfoo/a\n20\nfoo/b\n2\nfoo/c\n3\n"
    );
    assert_eq!(ok(e0, &["get", "foo/", "--prefix"]), "");
    assert_eq!(ok(e0, &["del", "nothing"]), "0\n");

    // Status of every member, as a table.
    let all = format!("{e0},{e1},{e2}");
    let table = ok(&all, &["endpoint", "status", "-w", "table"]);
    assert!(table.contains("IS LEADER"), "{table}");
    assert_eq!(table.matches("3.5.17").count(), 3, "{table}");
    assert_eq!(table.matches(" true ").count(), 1, "one leader: {table}");
    for e in [e0, &e1, &e2] {
        assert!(table.contains(e), "{table}");
    }
    // etcdctl 3.4 reports health on stderr.
    let (out, err, success) = etcdctl(&all, &["endpoint", "health"], None);
    assert!(success, "{err}");
    let health = out + &err;
    assert_eq!(health.matches("is healthy").count(), 3, "{health}");

    // Errors arrive with etcd's text.
    let (_, err, success) = etcdctl(e0, &["put", "", "v"], None);
    assert!(!success);
    assert!(err.contains("key is not provided"), "{err}");
}

/// `etcdctl watch` in the background while writes run, `get --rev` and
/// `compaction --physical`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_reads_the_history_watches_and_compacts() {
    let mut c = Cluster::new(3);
    c.start_and_wait().await;
    let (e0, e1) = (c.members[0].endpoint(), c.members[1].endpoint());
    let e0 = e0.as_str();
    // Revisions 2..=5.
    assert_eq!(ok(e0, &["put", "h/a", "1"]), "OK\n");
    assert_eq!(ok(&e1, &["put", "h/a", "2"]), "OK\n");
    assert_eq!(ok(e0, &["put", "h/b", "x"]), "OK\n");
    assert_eq!(ok(e0, &["del", "h/a"]), "1\n");
    assert_eq!(ok(&e1, &["get", "h/a", "--rev", "2"]), "h/a\n1\n");
    assert_eq!(ok(&e1, &["get", "h/a", "--rev", "3"]), "h/a\n2\n");
    assert_eq!(
        ok(&e1, &["get", "h/", "--prefix", "--rev", "5"]),
        "h/b\nx\n"
    );

    // A watch from revision 2 with previous values, while more writes run.
    let mut watch = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &e1,
            "watch",
            "--rev",
            "2",
            "--prefix",
            "--prev-kv",
            "h/",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl watch");
    assert_eq!(ok(e0, &["put", "h/b", "y"]), "OK\n");
    std::thread::sleep(Duration::from_millis(1500));
    let _ = watch.kill();
    let out = watch.wait_with_output().expect("watch output");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "PUT\nh/a\n1\nPUT\nh/a\n1\nh/a\n2\nPUT\nh/b\nx\nDELETE\nh/a\n2\nh/a\n\n\
         PUT\nh/b\nx\nh/b\ny\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(
        ok(e0, &["compaction", "--physical", "4"]),
        "compacted revision 4\n"
    );
    let (_, err, success) = etcdctl(&e1, &["get", "h/a", "--rev", "3"], None);
    assert!(!success);
    assert!(
        err.contains("etcdserver: mvcc: required revision has been compacted"),
        "{err}"
    );
    assert_eq!(
        ok(&e1, &["get", "h/", "--prefix", "--rev", "4"]),
        "h/a\n2\nh/b\nx\n"
    );
}

/// `etcdctl lease grant|keep-alive --once|timetolive --keys|list|revoke`
/// and `put --lease`, with their outputs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_leases() {
    let mut c = Cluster::new(3);
    c.start_and_wait().await;
    let (e0, e1) = (c.members[0].endpoint(), c.members[1].endpoint());
    let e0 = e0.as_str();
    let granted = ok(e0, &["lease", "grant", "60"]);
    let id = granted
        .strip_prefix("lease ")
        .and_then(|s| s.strip_suffix(" granted with TTL(60s)\n"))
        .unwrap_or_else(|| panic!("{granted:?}"))
        .to_string();
    assert!(u64::from_str_radix(&id, 16).is_ok(), "{id}");
    assert_eq!(ok(&e1, &["put", "--lease", &id, "lk", "v"]), "OK\n");
    assert_eq!(
        ok(e0, &["lease", "list"]),
        format!("found 1 leases\n{id}\n")
    );
    assert_eq!(
        ok(&e1, &["lease", "keep-alive", "--once", &id]),
        format!("lease {id} keepalived with TTL(60)\n")
    );
    let ttl = ok(e0, &["lease", "timetolive", "--keys", &id]);
    let re = format!("lease {id} granted with TTL(60s), remaining(");
    assert!(ttl.starts_with(&re), "{ttl}");
    assert!(ttl.ends_with("s), attached keys([lk])\n"), "{ttl}");
    assert_eq!(
        ok(&e1, &["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
    assert_eq!(ok(e0, &["get", "lk"]), "");
    assert_eq!(
        ok(e0, &["lease", "timetolive", &id]),
        format!("lease {id} already expired\n")
    );
}

/// `etcdctl endpoint hashkv -w table`, `move-leader`, `defrag`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_maintenance() {
    let mut c = Cluster::new(3);
    let leader = c.start_and_wait().await;
    let eps: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    let all = eps.join(",");
    for i in 0..20 {
        ok(&eps[i % 3], &["put", &format!("m/{i}"), "v"]);
    }
    ok(&eps[0], &["compaction", "10"]);
    // The same hash on every member, once each has applied everything.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let table = ok(&all, &["endpoint", "hashkv", "-w", "table"]);
        let hashes: Vec<&str> = table
            .lines()
            .filter(|l| l.contains("127.0.0.1"))
            .filter_map(|l| l.split('|').nth(2))
            .map(str::trim)
            .collect();
        assert_eq!(hashes.len(), 3, "{table}");
        if hashes.iter().all(|h| *h == hashes[0]) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{table}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Leadership moves to the member named.
    let leader_hex = format!("{leader:x}");
    let status = ok(&all, &["endpoint", "status", "-w", "json"]);
    let target = status
        .split("\"member_id\":")
        .skip(1)
        .filter_map(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .filter_map(|s| s.parse::<u64>().ok())
        .find(|&id| id != leader)
        .expect("a follower's id");
    let moved = ok(&all, &["move-leader", &format!("{target:x}")]);
    assert_eq!(
        moved,
        format!("Leadership transferred from {leader_hex} to {target:x}\n")
    );
    let now = wait_leader(&c, 0, Duration::from_secs(10)).await;
    assert_eq!(now, target);
    let (_, err, success) = etcdctl(&all, &["move-leader", "12345"], None);
    assert!(!success);
    assert!(err.contains("etcdserver: bad leader transferee"), "{err}");
    for e in &eps {
        let (out, err, success) = etcdctl(e, &["defrag"], None);
        assert!(success, "{err}");
        assert_eq!(
            out + &err,
            format!("Finished defragmenting etcd member[{e}]\n")
        );
    }
}

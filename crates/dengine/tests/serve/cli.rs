//! The `dengine` client commands against a 3-member cluster: each command,
//! its text and `-w json` output, and its errors.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Cluster, binary, free_port};

/// Runs `dengine ARGS` against `endpoints` (stdin from `input`).
fn dengine(endpoints: &str, args: &[&str], input: Option<&str>) -> Output {
    let mut child = Command::new(binary())
        .args(args)
        .env("DENGINE_ENDPOINTS", endpoints)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run dengine");
    if let Some(text) = input
        && let Some(mut stdin) = child.stdin.take()
    {
        stdin.write_all(text.as_bytes()).expect("stdin");
    }
    drop(child.stdin.take());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("dengine {args:?} ran past 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs a command that must succeed; its stdout.
fn ok(endpoints: &str, args: &[&str]) -> String {
    let out = dengine(endpoints, args, None);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dengine {args:?} failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs a command with `-w json`; its output parsed.
fn json(endpoints: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-w", "json"]);
    let text = ok(endpoints, &all);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
}

/// Runs a command that must fail; its stderr (one line).
fn fails(endpoints: &str, args: &[&str]) -> String {
    let out = dengine(endpoints, args, None);
    assert!(!out.status.success(), "dengine {args:?} succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_command_against_a_cluster() {
    let mut c = Cluster::new(3);
    c.start_and_wait().await;
    let e: String = c
        .members
        .iter()
        .map(|m| m.endpoint())
        .collect::<Vec<_>>()
        .join(",");
    let e = e.as_str();

    // Keys and values.
    assert_eq!(ok(e, &["put", "greeting", "hello"]), "OK\n");
    assert_eq!(ok(e, &["get", "greeting"]), "greeting\nhello\n");
    let got = json(e, &["get", "greeting"]);
    assert_eq!(got["kvs"][0]["key"], "greeting");
    assert_eq!(got["kvs"][0]["value"], "hello");
    assert_eq!(got["count"], 1);
    let first = got["header"]["revision"].as_i64().expect("revision");
    ok(e, &["put", "a/1", "x"]);
    let prev = json(e, &["put", "a/1", "y", "--prev-kv"]);
    assert_eq!(prev["prev_kv"]["value"], "x");
    ok(e, &["put", "a/2", "z"]);
    assert_eq!(
        ok(e, &["get", "a/", "--prefix", "--keys-only"]),
        "a/1\na/2\n"
    );
    assert_eq!(ok(e, &["get", "a/", "--prefix", "--count-only"]), "2\n");
    assert_eq!(
        ok(
            e,
            &[
                "get",
                "a/",
                "--prefix",
                "--limit",
                "1",
                "--consistency",
                "s"
            ]
        ),
        "a/1\ny\n"
    );
    assert_eq!(ok(e, &["get", "a/1", "a/3"]), "a/1\ny\na/2\nz\n");
    // The global flags go before the command too, as with etcdctl.
    let single = c.members[0].endpoint();
    assert_eq!(
        ok(
            "",
            &[
                "--endpoints",
                &single,
                "get",
                "greeting",
                "--rev",
                &first.to_string()
            ]
        ),
        "greeting\nhello\n"
    );

    // A transaction in etcdctl's format, from stdin.
    let txn = "value(\"greeting\") = \"hello\"\n\nput greeting bye\n\nget greeting\n";
    let out = dengine(e, &["txn"], Some(txn));
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "SUCCESS\n\nOK\n");
    let out = dengine(e, &["txn", "-w", "json"], Some(txn));
    let again: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(again["succeeded"], false);
    assert_eq!(again["responses"][0]["get"]["kvs"][0]["value"], "bye");

    // Leases.
    let lease = json(e, &["lease", "grant", "60"]);
    let id = lease["id"].as_str().expect("id").to_string();
    assert_eq!(lease["ttl"], 60);
    ok(e, &["put", "leased", "v", "--lease", &id]);
    let ttl = json(e, &["lease", "timetolive", &id, "--keys"]);
    assert_eq!(ttl["keys"][0], "leased");
    assert!(ok(e, &["lease", "list"]).contains(&id));
    assert!(ok(e, &["lease", "keep-alive", "--once", &id]).contains("keepalived"));
    assert_eq!(
        ok(e, &["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
    assert_eq!(ok(e, &["get", "leased"]), "");
    let gone = fails(e, &["lease", "keep-alive", "--once", &id]);
    assert!(gone.contains("requested lease not found"), "{gone}");

    // Members, status, leadership.
    let members = json(e, &["member", "list"]);
    let list = members["members"].as_array().expect("members");
    assert_eq!(list.len(), 3);
    let table = ok(e, &["member", "list", "-w", "table"]);
    assert!(table.starts_with("ID "), "{table}");
    let status = json(e, &["status"]);
    let rows = status["members"].as_array().expect("rows");
    assert_eq!(rows.len(), 3);
    assert_eq!(rows.iter().filter(|r| r["role"] == "leader").count(), 1);
    assert!(rows.iter().all(|r| r["errors"] == ""));
    let text = ok(e, &["status"]);
    assert!(text.starts_with("MEMBER "), "{text}");
    let follower = rows
        .iter()
        .find(|r| r["role"] == "follower")
        .and_then(|r| r["id"].as_str())
        .expect("a follower")
        .to_string();
    ok(e, &["leader", "transfer", &follower]);
    let status = json(e, &["status"]);
    let leader = status["members"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["role"] == "leader")
        .and_then(|r| r["id"].as_str())
        .map(str::to_string);
    assert_eq!(leader.as_deref(), Some(follower.as_str()));

    // Membership: a learner added, started, promoted, updated, removed.
    let new = c.add_member();
    let (name, peer) = (c.members[new].name.clone(), c.members[new].peer_url());
    let added = json(
        e,
        &["member", "add", &name, "--peer-urls", &peer, "--learner"],
    );
    let id = added["member"]["id"].as_str().expect("id").to_string();
    assert_eq!(added["member"]["is_learner"], true);
    let initial = added["initial_cluster"].as_str().expect("initial cluster");
    assert!(initial.contains(&format!("{name}={peer}")), "{initial}");
    c.start(new);
    // Promoted once it has caught up with the leader.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = dengine(e, &["member", "promote", &id], None);
        if out.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the learner was not promoted: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let listed = json(e, &["member", "list"]);
    let members = listed["members"].as_array().expect("members");
    assert_eq!(members.len(), 4);
    assert!(members.iter().all(|m| m["is_learner"] == false));
    assert_eq!(
        ok(e, &["member", "update", &id, "--peer-urls", &peer]),
        format!("member {id} updated\n")
    );
    assert_eq!(
        ok(e, &["member", "remove", &id]),
        format!("member {id} removed\n")
    );
    let listed = json(e, &["member", "list"]);
    assert_eq!(listed["members"].as_array().expect("members").len(), 3);

    // History: compaction, and a read below it says what is left.
    let now = json(e, &["get", "greeting"])["header"]["revision"]
        .as_i64()
        .expect("revision");
    assert_eq!(
        ok(e, &["compact", &now.to_string()]),
        format!("compacted revision {now}\n")
    );
    let below = fails(e, &["get", "greeting", "--rev", &first.to_string()]);
    assert!(
        below.contains(&format!("the oldest left is {now}")),
        "{below}"
    );

    // Deletes.
    assert_eq!(ok(e, &["del", "a/", "--prefix"]), "2\n");

    // A backup.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("backup.db");
    let saved = ok(e, &["snapshot", "save", file.to_str().expect("path")]);
    assert!(saved.starts_with("snapshot saved to"), "{saved}");
    assert!(std::fs::metadata(&file).expect("backup").len() > 0);

    // A watch prints the changes after the revision it starts at.
    let mut watch = Command::new(binary())
        .args(["watch", "w", "--prefix", "--rev", &(now + 1).to_string()])
        .env("DENGINE_ENDPOINTS", e)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("watch");
    ok(e, &["put", "w/1", "one"]);
    ok(e, &["del", "w/1"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = watch.kill();
    let out = watch.wait_with_output().expect("watch output");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "PUT\nw/1\none\nDELETE\nw/1\n\n"
    );

    // Errors a person can act on.
    let bad = fails(e, &["put", "", "v"]);
    assert!(bad.contains("key is not provided"), "{bad}");
    let nobody = format!("127.0.0.1:{}", free_port());
    let down = fails(&nobody, &["--command-timeout", "1s", "get", "x"]);
    assert!(
        down.contains("cannot reach the cluster") && down.contains(&nobody),
        "{down}"
    );
    let usage = dengine(e, &["get"], None);
    assert_eq!(usage.status.code(), Some(2));
    let out = dengine(e, &["txn"], Some("valu(\"k\") = \"v\"\n\n\n"));
    assert_eq!(out.status.code(), Some(2));
}

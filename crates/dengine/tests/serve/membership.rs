//! Changing the members of a running cluster with `etcdctl member`: a
//! learner added through a member that does not lead, started with
//! `--initial-cluster-state existing`, caught up, promoted, its peer URL
//! checked against the others', the leader killed and restarted with four
//! voters, then the new member removed, which stops it; etcd's errors and
//! outputs on the way.

use std::time::{Duration, Instant};

use crate::etcdctl::{etcdctl, ok};
use crate::harness::{Cluster, client, index_of, wait_leader};

/// `etcdctl member list` as (id, status, name, peer URLs, client URLs,
/// learner) rows.
fn member_list(endpoint: &str) -> Vec<Vec<String>> {
    ok(endpoint, &["member", "list"])
        .lines()
        .map(|l| l.split(", ").map(str::to_string).collect())
        .collect()
}

/// Whether etcdctl's report is "Member <id> <what> ..." (etcdctl pads the
/// id to 16 characters with spaces: `%16x`).
fn reports(out: &str, id: &str, what: &str) -> bool {
    let words: Vec<&str> = out.split_whitespace().take(3).collect();
    words == ["Member", id, what]
}

/// Runs `args` until etcdctl succeeds (a learner catching up, say).
fn ok_within(endpoint: &str, args: &[&str], within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (out, err, success) = etcdctl(endpoint, args, None);
        if success {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "etcdctl {args:?} still fails after {within:?}: {err}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The error etcdctl prints for `args`, which must fail with `want`;
/// tried again while it fails for a leader change (a removed leader hands
/// leadership over).
fn refused_with(endpoint: &str, args: &[&str], want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let err = refused(endpoint, args);
        let transient = err.contains("etcdserver: leader changed") || err.contains("no leader");
        if err.contains(want) || !transient || Instant::now() > deadline {
            return err;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The error etcdctl prints for `args`, which must fail.
fn refused(endpoint: &str, args: &[&str]) -> String {
    let (out, err, success) = etcdctl(endpoint, args, None);
    assert!(!success, "etcdctl {args:?} should fail: {out}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_added_promoted_updated_and_removed_with_etcdctl() {
    // An id of fewer than 16 digits comes padded.
    assert!(reports(
        "Member  afc0 promoted in cluster 1",
        "afc0",
        "promoted"
    ));
    let mut c = Cluster::new(3);
    let leader = c.start_and_wait().await;
    let follower = (index_of(&c, leader).await + 1) % 3;
    let via = c.members[follower].endpoint();
    let all = (0..3)
        .map(|i| c.members[i].endpoint())
        .collect::<Vec<_>>()
        .join(",");

    // Every member knows every member's name and URLs (the client URLs
    // each published when it started), so `--cluster` reaches them all.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = member_list(&via);
        let complete = rows.len() == 3
            && rows.iter().all(|r| {
                let i = c.members.iter().position(|m| m.name == r[2]);
                i.is_some_and(|i| {
                    r[1] == "started"
                        && r[3] == c.members[i].peer_url()
                        && r[4] == c.members[i].endpoint()
                        && r[5] == "false"
                })
            });
        if complete {
            break;
        }
        assert!(Instant::now() < deadline, "member list: {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let table = ok(&via, &["endpoint", "status", "--cluster", "-w", "table"]);
    for m in &c.members {
        assert!(table.contains(&m.endpoint()), "{table}");
    }

    // A learner, added through a member that does not lead.
    let new = c.add_member();
    let new_peer = c.members[new].peer_url();
    let added = ok(
        &via,
        &["member", "add", "m3", "--peer-urls", &new_peer, "--learner"],
    );
    let first = added.lines().next().unwrap_or_default();
    let words: Vec<&str> = first.split_whitespace().collect();
    assert!(
        words.len() == 6 && words[0] == "Member" && words[2] == "added",
        "{added}"
    );
    let id = words[1].to_string();
    assert!(
        added.contains(&format!("m3={new_peer}"))
            && added.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{added}"
    );
    // etcd's refusals: a peer URL in use, a second learner, bad URLs.
    let err = refused(&via, &["member", "add", "x", "--peer-urls", &new_peer]);
    assert!(
        err.contains("etcdserver: Peer URLs already exists"),
        "{err}"
    );
    let err = refused(
        &via,
        &[
            "member",
            "add",
            "x",
            "--peer-urls",
            "http://127.0.0.1:1",
            "--learner",
        ],
    );
    assert!(
        err.contains("etcdserver: too many learner members in cluster"),
        "{err}"
    );
    let err = refused(&via, &["member", "promote", &id]);
    assert!(
        err.contains("can only promote a learner member which is in sync with leader"),
        "an unstarted learner is not in sync: {err}"
    );

    c.start(new);
    wait_leader(&c, new, Duration::from_secs(15)).await;
    for i in 0..20 {
        ok(&all, &["put", &format!("k{i}"), &format!("v{i}")]);
    }
    let promoted = ok_within(&via, &["member", "promote", &id], Duration::from_secs(15));
    assert!(reports(&promoted, &id, "promoted"), "{promoted}");
    let err = refused(&via, &["member", "promote", &id]);
    assert!(
        err.contains("etcdserver: can only promote a learner member"),
        "{err}"
    );
    // The new member serves linearizable reads of what was written before
    // it joined.
    let new_endpoint = c.members[new].endpoint();
    assert_eq!(ok(&new_endpoint, &["get", "k19"]), "k19\nv19\n");

    // Peer URLs: one in use is refused, an unknown member is not found.
    let taken = c.members[0].peer_url();
    let err = refused(&via, &["member", "update", &id, "--peer-urls", &taken]);
    assert!(
        err.contains("etcdserver: Peer URLs already exists"),
        "{err}"
    );
    let err = refused(
        &via,
        &[
            "member",
            "update",
            "1234",
            "--peer-urls",
            "http://127.0.0.1:2",
        ],
    );
    assert!(err.contains("etcdserver: member not found"), "{err}");
    let err = refused(&via, &["member", "remove", "1234"]);
    assert!(err.contains("etcdserver: member not found"), "{err}");

    // Four voters: the leader killed and restarted, the cluster goes on
    // (three of four is a quorum) and the restarted member still knows
    // the new one.
    let old = index_of(&c, leader).await;
    c.kill(old);
    let other = (old + 1) % 3;
    ok_within(
        &c.members[other].endpoint(),
        &["put", "during", "kill"],
        Duration::from_secs(15),
    );
    c.start(old);
    wait_leader(&c, old, Duration::from_secs(15)).await;
    let rows = member_list(&c.members[old].endpoint());
    let row = rows
        .iter()
        .find(|r| r[0] == id)
        .expect("the new member is listed");
    assert_eq!(
        (
            row[2].as_str(),
            row[3].as_str(),
            row[4].as_str(),
            row[5].as_str()
        ),
        ("m3", new_peer.as_str(), new_endpoint.as_str(), "false"),
        "{rows:?}"
    );

    // Removing the new member stops it.
    let removed = ok(&via, &["member", "remove", &id]);
    assert!(reports(&removed, &id, "removed"), "{removed}");
    let status = c.wait_exit(new, Duration::from_secs(15));
    assert!(
        status.success(),
        "a removed member stops cleanly: {status:?}"
    );
    assert!(
        c.log(new).contains("removed from the cluster"),
        "{}",
        c.log(new)
    );
    let rows = member_list(&via);
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|r| r[0] != id), "{rows:?}");
    // Its id does not come back: removing it again finds no member.
    let err = refused_with(&via, &["member", "remove", &id], "member not found");
    assert!(err.contains("etcdserver: member not found"), "{err}");

    // The three members hold the same store.
    let mut cl = client(&c, 0).await;
    let revision = cl
        .put("last", "x", None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();
    let mut hashes = Vec::new();
    for i in 0..3 {
        let mut m = client(&c, i).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let h = loop {
            match m.hash_kv(revision).await {
                Ok(h) => break h.hash(),
                Err(e) if Instant::now() > deadline => panic!("member {i}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        hashes.push(h);
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");

    // etcd's strict reconfiguration checks: with a member down, adding a
    // voter or removing a live one could leave no working quorum, and is
    // refused; removing the member that is down is not.
    let leader = index_of(&c, wait_leader(&c, 0, Duration::from_secs(10)).await).await;
    let (down, live) = ((leader + 1) % 3, (leader + 2) % 3);
    let id_of = |rows: &[Vec<String>], i: usize| {
        rows.iter()
            .find(|r| r[2] == c.members[i].name)
            .map(|r| r[0].clone())
            .expect("listed")
    };
    let rows = member_list(&via);
    let (down_id, live_id) = (id_of(&rows, down), id_of(&rows, live));
    c.kill(down);
    let at = c.members[leader].endpoint();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (out, err, success) = etcdctl(
            &at,
            &["member", "add", "y", "--peer-urls", "http://127.0.0.1:3"],
            None,
        );
        assert!(!success, "a voter added with a member down: {out}");
        if err.contains("etcdserver: unhealthy cluster") {
            break;
        }
        assert!(Instant::now() < deadline, "{err}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let err = refused_with(&at, &["member", "remove", &live_id], "unhealthy cluster");
    assert!(err.contains("etcdserver: unhealthy cluster"), "{err}");
    let removed = ok(&at, &["member", "remove", &down_id]);
    assert!(reports(&removed, &down_id, "removed"), "{removed}");
}

//! Metrics and health over HTTP (`--listen-metrics-urls`): a write moves
//! the counters and histograms it should, the text parses as Prometheus',
//! and `/health` follows whether the member knows a leader.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::{Cluster, client, index_of, wait_leader};

/// `GET path` on member `i`'s metrics port: the status code and body.
pub fn get(c: &Cluster, i: usize, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", c.members[i].metrics_port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let code = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// Every sample of a Prometheus text: name (with labels) to value. Panics
/// on a line that is not a comment, a blank or `name{labels} value`.
pub fn samples(text: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let bare = name.split('{').next().unwrap_or("");
        assert!(
            !bare.is_empty()
                && bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !bare.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line:?}"
        );
        assert_eq!(
            name.contains('{'),
            name.ends_with('}'),
            "bad labels in {line:?}"
        );
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        out.push((name.to_string(), value));
    }
    out
}

/// The value of the sample named exactly `name`.
fn value(samples: &[(String, f64)], name: &str) -> f64 {
    samples
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no sample {name}"))
}

/// The value of the sample of metric `metric` whose labels include every
/// one of `labels` (`name="value"`), or 0 if there is none (a counter not
/// yet made).
pub fn labelled(samples: &[(String, f64)], metric: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .find(|(n, _)| {
            n.strip_prefix(metric).is_some_and(|rest| {
                rest.starts_with('{') && labels.iter().all(|l| rest.contains(l))
            })
        })
        .map_or(0.0, |(_, v)| *v)
}

/// The next response of a watch stream, within a few seconds.
async fn next(w: &mut etcd_client::WatchStream) -> etcd_client::WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), w.message())
        .await
        .expect("watch answers in time")
        .expect("watch")
        .expect("a response")
}

/// Waits until member `i`'s `/health` answers `code`; the body.
fn wait_health(c: &Cluster, i: usize, code: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let got = get(c, i, "/health");
        if let Ok((got_code, body)) = &got
            && *got_code == code
        {
            return body.clone();
        }
        assert!(
            Instant::now() < deadline,
            "member {i}'s /health is not {code} after {within:?}: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_writes_and_health_follows_the_leader() {
    let mut c = Cluster::new(3);
    c.start_all();
    let leader_id = wait_leader(&c, 0, Duration::from_secs(20)).await;
    let leader = index_of(&c, leader_id).await;
    for i in 0..3 {
        let body = wait_health(&c, i, 200, Duration::from_secs(10));
        assert_eq!(body, r#"{"health":"true","reason":""}"#);
        assert_eq!(get(&c, i, "/livez").unwrap(), (200, "ok\n".into()));
        assert_eq!(get(&c, i, "/readyz").unwrap(), (200, "ok\n".into()));
        assert_eq!(get(&c, i, "/nothing").unwrap().0, 404);
    }

    let (_, text) = get(&c, leader, "/metrics").unwrap();
    let before = samples(&text);
    let mut kv = client(&c, leader).await;
    let lines_before = c.log(leader).lines().count();
    for n in 0..50 {
        kv.put(format!("k{n}"), "v", None).await.expect("put");
    }
    // Nothing is logged per request at info level.
    let logged = c.log(leader).lines().count() - lines_before;
    assert!(
        logged < 5,
        "{logged} lines logged for 50 puts: {}",
        c.log(leader)
    );
    // Role changes are logged once each, with their fields.
    assert!(
        c.log(leader)
            .lines()
            .any(|l| l.contains("role or leader changed") && l.contains("role=Leader")),
        "{}",
        c.log(leader)
    );
    // A compaction is logged once on every member that applies it.
    kv.compact(10, None).await.expect("compact");
    // The store's gauges move once per applied batch, the state gauges at
    // most a tick late: give them a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, text) = get(&c, leader, "/metrics").unwrap();
    assert_eq!(code, 200);
    let after = samples(&text);
    let moved = |name: &str| value(&after, name) - value(&before, name);
    assert!(moved("dengine_proposals_total") >= 50.0, "{text}");
    assert!(moved("etcd_disk_wal_fsync_duration_seconds_count") >= 1.0);
    assert!(moved("dengine_disk_fsync_duration_seconds_count") >= 1.0);
    assert!(value(&after, "dengine_mvcc_revision") >= 51.0);
    assert_eq!(
        value(&after, "etcd_debugging_mvcc_current_revision"),
        value(&after, "dengine_mvcc_revision")
    );
    assert!(value(&after, "dengine_mvcc_keys") >= 50.0);
    assert_eq!(value(&after, "etcd_server_has_leader"), 1.0);
    assert_eq!(value(&after, "etcd_server_is_leader"), 1.0);
    assert_eq!(value(&after, "dengine_server_leader_id"), leader_id as f64);
    assert!(value(&after, "dengine_raft_applied_index") >= 50.0);
    assert!(value(&after, "etcd_server_leader_changes_seen_total") >= 1.0);
    assert!(text.contains("# TYPE etcd_disk_wal_fsync_duration_seconds histogram"));
    assert!(text.contains("# HELP dengine_proposals_total "));
    // Client calls by method and code, with go-grpc-prometheus' labels.
    let put_ok = [
        r#"grpc_method="Put""#,
        r#"grpc_code="OK""#,
        r#"grpc_type="unary""#,
    ];
    let handled =
        |s: &[(String, f64)], labels: &[&str]| labelled(s, "grpc_server_handled_total", labels);
    assert!(
        handled(&after, &put_ok) - handled(&before, &put_ok) >= 50.0,
        "{text}"
    );
    assert!(
        labelled(
            &after,
            "grpc_server_started_total",
            &[r#"grpc_service="etcdserverpb.KV""#, r#"grpc_method="Put""#]
        ) >= 50.0
    );
    // Each write's latency, proposal to commit and commit to apply.
    // One sample per batch; sequential puts are a batch each.
    assert!(moved("dengine_proposal_commit_duration_seconds_count") >= 50.0);
    assert!(moved("dengine_apply_duration_seconds_count") >= 50.0);
    // The leader's view of each member, and what went over the links.
    let mut members = kv
        .member_list()
        .await
        .expect("member list")
        .members()
        .iter()
        .map(|m| m.id())
        .collect::<Vec<_>>();
    members.sort();
    assert_eq!(members.len(), 3);
    for id in &members {
        let label = format!(r#"member="{id:x}""#);
        assert!(
            labelled(&after, "dengine_raft_follower_match_index", &[&label]) >= 50.0,
            "member {id:x}: {text}"
        );
        if *id != leader_id {
            let to = format!(r#"to="{id:x}""#);
            assert!(labelled(&after, "dengine_peer_sent_bytes_total", &[&to]) > 0.0);
            assert!(
                labelled(
                    &after,
                    "etcd_network_peer_sent_bytes_total",
                    &[&format!(r#"To="{id:x}""#)]
                ) > 0.0
            );
            assert!(
                labelled(
                    &after,
                    "dengine_peer_sent_messages_total",
                    &[&to, r#"type="append""#]
                ) >= 1.0
            );
        }
    }
    // A follower counts what it received from the leader.
    let follower = (leader + 1) % 3;
    let (_, text) = get(&c, follower, "/metrics").unwrap();
    let from = format!(r#"From="{leader_id:x}""#);
    assert!(
        labelled(
            &samples(&text),
            "etcd_network_peer_received_bytes_total",
            &[&from]
        ) > 0.0,
        "{text}"
    );

    // A refused call is counted with its code: a read at a future
    // revision is OutOfRange, as etcd answers it.
    let future = etcd_client::GetOptions::new().with_revision(1_000_000);
    assert!(kv.get("k0", Some(future)).await.is_err());
    let out_of_range = [r#"grpc_method="Range""#, r#"grpc_code="OutOfRange""#];
    let (_, text) = get(&c, leader, "/metrics").unwrap();
    assert_eq!(handled(&samples(&text), &out_of_range), 1.0, "{text}");

    // Watchers and the events sent to them.
    let mut watch = kv.watch("w", None).await.expect("watch");
    let created = next(&mut watch).await;
    assert!(created.created());
    kv.put("w", "1", None).await.expect("put");
    assert_eq!(next(&mut watch).await.events().len(), 1);
    let (_, text) = get(&c, leader, "/metrics").unwrap();
    let s = samples(&text);
    assert_eq!(value(&s, "dengine_watchers"), 1.0);
    assert_eq!(value(&s, "etcd_debugging_mvcc_watcher_total"), 1.0);
    assert_eq!(value(&s, "dengine_watch_streams"), 1.0);
    assert!(value(&s, "etcd_debugging_mvcc_events_total") >= 1.0);
    watch.cancel(created.watch_id()).await.expect("cancel");
    assert!(next(&mut watch).await.canceled());
    let (_, text) = get(&c, leader, "/metrics").unwrap();
    assert_eq!(value(&samples(&text), "dengine_watchers"), 0.0);
    drop(watch);

    for i in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !c.log(i).contains("compacted the history") {
            assert!(
                Instant::now() < deadline,
                "member {i} did not log the compaction: {}",
                c.log(i)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = c.log(i);
        let compactions: Vec<_> = log
            .lines()
            .filter(|l| l.contains("compacted the history"))
            .collect();
        assert_eq!(compactions.len(), 1, "{log}");
        assert!(compactions[0].contains("revision=10"), "{log}");
    }

    // Alone, a member knows no leader: unhealthy, with etcd's reason;
    // healthy again once the others are back.
    let alone = (leader + 1) % 3;
    for i in 0..3 {
        if i != alone {
            c.kill(i);
        }
    }
    let body = wait_health(&c, alone, 503, Duration::from_secs(10));
    assert_eq!(body, r#"{"health":"false","reason":"RAFT NO LEADER"}"#);
    assert_eq!(get(&c, alone, "/readyz").unwrap().0, 503);
    assert_eq!(get(&c, alone, "/livez").unwrap().0, 200);
    let (_, text) = get(&c, alone, "/metrics").unwrap();
    assert_eq!(value(&samples(&text), "etcd_server_has_leader"), 0.0);
    for i in 0..3 {
        if i != alone {
            c.start(i);
        }
    }
    wait_health(&c, alone, 200, Duration::from_secs(20));
}

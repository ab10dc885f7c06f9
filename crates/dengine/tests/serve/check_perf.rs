//! `etcdctl check perf --load=s`: a minute of etcdctl's own load (puts
//! with a lease from 50 clients, then a delete of its prefix) against a
//! 3-member cluster. The command must run to its end and report its
//! figures; whether they meet etcdctl's bar on a loaded CI machine is
//! printed, not asserted (speed is shown by the benchmarks, not tests).

use std::process::{Command, Stdio};

use crate::harness::{Cluster, client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_check_perf_runs_to_its_end() {
    let mut c = Cluster::new(3);
    c.start_and_wait().await;
    let all = (0..3)
        .map(|i| c.members[i].endpoint())
        .collect::<Vec<_>>()
        .join(",");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("etcdctl")
            .args(["--endpoints", &all, "check", "perf", "--load=s"])
            .stdin(Stdio::null())
            .output()
            .expect("etcdctl check perf")
    })
    .await
    .expect("etcdctl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("etcdctl check perf --load=s:\n{stdout}");
    // Each figure comes as etcdctl's passing line ("PASS: Stddev is ...")
    // or its failing one ("Stddev too high: ..."): which one depends on the
    // machine's load, not on the server.
    for (pass, fail) in [
        ("Throughput is", "Throughput too low"),
        ("Slowest request took", "Slowest request took too long"),
        ("Stddev is", "Stddev too high"),
    ] {
        assert!(
            stdout.contains(pass) || stdout.contains(fail),
            "etcdctl check perf did not report {pass:?} or {fail:?}:\n{stdout}\n{stderr}"
        );
    }
    assert!(!stderr.contains("Error"), "{stderr}");
    // It cleans up after itself: its prefix is empty again.
    let mut cl = client(&c, 0).await;
    let left = cl
        .get(
            "/etcdctl-check-perf/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await
        .expect("get");
    assert_eq!(left.count(), 0);
}

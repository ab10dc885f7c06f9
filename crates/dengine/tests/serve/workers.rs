//! `dengine serve --worker-threads`: how many threads its async runtime
//! runs, and its default (one less than the cores, at least one).

use std::time::Duration;

use crate::harness::{Cluster, wait_leader};

/// Starts a one-member cluster with `args` added, waits until it serves,
/// and returns how many workers its runtime reported it runs. (Counting
/// threads would not do: the runtime's blocking threads have the workers'
/// name.)
async fn workers_with(args: &[&str]) -> usize {
    let mut c = Cluster::new(1);
    let mut command = c.command(0);
    command.args(args).env_remove("DENGINE_WORKER_THREADS");
    let log = std::fs::File::create(&c.members[0].log).expect("log file");
    let child = command
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("start dengine serve");
    c.members[0].child = Some(child);
    wait_leader(&c, 0, Duration::from_secs(20)).await;
    let log = std::fs::read_to_string(&c.members[0].log).expect("read the log");
    let line = log
        .lines()
        .find(|l| l.contains("async runtime started"))
        .unwrap_or_else(|| panic!("no runtime line in the log:\n{log}"));
    let workers = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("workers="))
        .unwrap_or_else(|| panic!("no worker count in {line:?}"));
    workers.parse().expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_the_worker_threads_asked_for_or_one_less_than_the_cores() {
    assert_eq!(workers_with(&["--worker-threads", "3"]).await, 3);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(
        workers_with(&[]).await,
        cores.saturating_sub(1).max(1),
        "the default on {cores} cores"
    );

    let c = Cluster::new(1);
    let out = c
        .command(0)
        .args(["--worker-threads", "0"])
        .output()
        .expect("run dengine serve");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--worker-threads must be at least 1"), "{err}");
}

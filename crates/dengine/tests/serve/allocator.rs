//! `dengine serve` runs with mimalloc's eager commit of its arenas off
//! (the binary starts itself again with the option in its environment),
//! unless the environment already chooses.

use std::time::Duration;

use crate::harness::{Cluster, binary, wait_leader};

const OPTION: &str = "MIMALLOC_ARENA_EAGER_COMMIT";

/// The NUL-separated strings of `/proc/PID/FILE`.
fn proc_strings(pid: u32, file: &str) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/{file}")).expect("read /proc");
    raw.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Starts a one-member cluster with `OPTION` set to `value` (or removed),
/// waits until it serves, and returns what its process's environment
/// holds for `OPTION`, and its command line.
async fn member_option(value: Option<&str>) -> (Option<String>, Vec<String>) {
    let mut c = Cluster::new(1);
    let mut command = c.command(0);
    match value {
        Some(v) => command.env(OPTION, v),
        None => command.env_remove(OPTION),
    };
    let log = std::fs::File::create(&c.members[0].log).expect("log file");
    let child = command
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("start dengine serve");
    let pid = child.id();
    c.members[0].child = Some(child);
    // Serving, so the process the pid names runs the member (after its
    // exec, if it made one).
    wait_leader(&c, 0, Duration::from_secs(20)).await;
    let prefix = format!("{OPTION}=");
    let found = proc_strings(pid, "environ")
        .into_iter()
        .find_map(|s| s.strip_prefix(&prefix).map(str::to_string));
    (found, proc_strings(pid, "cmdline"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_with_eager_commit_off_unless_the_environment_chooses() {
    let (option, cmdline) = member_option(None).await;
    assert_eq!(
        option.as_deref(),
        Some("0"),
        "the member set the option itself"
    );
    assert_eq!(cmdline.first().map(String::as_str), Some(binary()));
    assert_eq!(cmdline.get(1).map(String::as_str), Some("serve"));

    let (option, _) = member_option(Some("1")).await;
    assert_eq!(
        option.as_deref(),
        Some("1"),
        "the environment's choice stands"
    );
}

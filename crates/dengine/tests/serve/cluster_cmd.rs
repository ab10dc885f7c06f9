//! `dengine cluster up|status|down`, the local cluster for newcomers, run
//! as they would: its members outlive `up`, `down` stops them and keeps
//! their data, and `up` starts the same cluster again.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::harness::binary;

/// What a finished command printed and how it exited.
struct Run {
    stdout: String,
    stderr: String,
    code: Option<i32>,
}

/// Runs `dengine cluster ARGS`; an error if it cannot run or takes longer
/// than `within` (then it is killed).
fn try_cluster(args: &[&str], within: Duration) -> Result<Run, String> {
    let child = Command::new(binary())
        .arg("cluster")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running dengine cluster {args:?}: {e}"))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(within) {
        Ok(Ok(out)) => Ok(Run {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            code: out.status.code(),
        }),
        Ok(Err(e)) => Err(format!("dengine cluster {args:?}: {e}")),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            Err(format!(
                "dengine cluster {args:?} took longer than {within:?}"
            ))
        }
    }
}

/// Runs `dengine cluster ARGS` (blocking this worker thread only).
fn cluster(args: &[&str], within: Duration) -> Run {
    tokio::task::block_in_place(|| try_cluster(args, within)).unwrap_or_else(|e| panic!("{e}"))
}

/// The members of the state file in `dir`: (name, pid, client URL).
fn members(dir: &Path) -> Vec<(String, u32, String)> {
    let text = std::fs::read_to_string(dir.join("cluster.state")).unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [name, pid, client, _peer] => {
                Some((name.to_string(), pid.parse().ok()?, client.to_string()))
            }
            _ => None,
        })
        .collect()
}

/// Whether `pid` is a running dengine process (a zombie is not).
fn alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.windows(b"dengine".len()).any(|w| w == b"dengine"))
}

/// On drop (also on a panic): `cluster down`, then SIGKILL to any member
/// still alive; on a panic, the members' logs.
struct Guard {
    dir: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let dir = self.dir.to_string_lossy().into_owned();
        let _ = try_cluster(&["down", "--dir", &dir], Duration::from_secs(30));
        for (_, pid, _) in members(&self.dir) {
            if pid != 0 && alive(pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        if std::thread::panicking() {
            for (name, _, _) in members(&self.dir) {
                let log = std::fs::read_to_string(self.dir.join(format!("{name}.log")))
                    .unwrap_or_default();
                eprintln!("---- log of {name} ----\n{log}");
            }
        }
    }
}

/// An etcd client for the member at `url` alone (`http://127.0.0.1:P`).
async fn etcd(url: &str) -> etcd_client::Client {
    let addr = url.trim_start_matches("http://").to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match etcd_client::Client::connect([addr.clone()], None).await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("connecting to {url}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The value of `key` read through the member at `url` (retried for up to
/// 10 s).
async fn read(url: &str, key: &str) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = etcd(url).await;
        match c.get(key, None).await {
            Ok(r) => return r.kvs().first().map(|kv| kv.value().to_vec()),
            Err(e) if Instant::now() > deadline => panic!("get {key} through {url}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_up_status_down_and_up_again_keeps_the_data() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("c");
    let d = dir.to_string_lossy().into_owned();
    let _guard = Guard { dir: dir.clone() };

    // Bad sizes and a directory without a cluster.
    let bad = cluster(&["up", "-n", "2", "--dir", &d], Duration::from_secs(10));
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);
    assert_eq!(bad.stderr.lines().count(), 1, "{}", bad.stderr);
    let none = cluster(&["down", "--dir", &d], Duration::from_secs(10));
    assert_eq!(none.code, Some(1), "{}", none.stderr);
    assert!(none.stderr.contains("no cluster"), "{}", none.stderr);

    // Up: three members that outlive the command, and how to reach them.
    let up = cluster(&["up", "-n", "3", "--dir", &d], Duration::from_secs(30));
    assert_eq!(up.code, Some(0), "{}\n{}", up.stdout, up.stderr);
    let first = members(&dir);
    assert_eq!(first.len(), 3, "{first:?}");
    let endpoints = first
        .iter()
        .map(|(_, _, url)| url.as_str())
        .collect::<Vec<_>>()
        .join(",");
    assert!(
        up.stdout
            .contains(&format!("export DENGINE_ENDPOINTS={endpoints}")),
        "{}",
        up.stdout
    );
    for (name, pid, url) in &first {
        assert!(alive(*pid), "{name} (pid {pid}) runs after `up` exited");
        assert!(up.stdout.contains(url.as_str()), "{}", up.stdout);
    }

    // Status: all run, one leads.
    let st = cluster(&["status", "--dir", &d], Duration::from_secs(20));
    assert_eq!(st.code, Some(0), "{}\n{}", st.stdout, st.stderr);
    let lines: Vec<&str> = st.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", st.stdout);
    assert!(lines.iter().all(|l| l.contains("running")), "{}", st.stdout);
    let leaders = lines.iter().filter(|l| l.ends_with(" leader")).count();
    let followers = lines.iter().filter(|l| l.ends_with(" follower")).count();
    assert_eq!((leaders, followers), (1, 2), "{}", st.stdout);

    // etcd's API through the members.
    let mut c = etcd(&first[0].2).await;
    c.put("greeting", "hello", None).await.expect("put");
    assert_eq!(
        read(&first[2].2, "greeting").await.as_deref(),
        Some(&b"hello"[..])
    );

    // Up again while it runs: refused, nothing changes.
    let again = cluster(&["up", "--dir", &d], Duration::from_secs(10));
    assert_ne!(again.code, Some(0), "{}", again.stdout);
    assert!(again.stderr.contains("runs already"), "{}", again.stderr);
    assert_eq!(members(&dir), first);

    // Down: every member stops; the state file stays.
    let down = cluster(&["down", "--dir", &d], Duration::from_secs(30));
    assert_eq!(down.code, Some(0), "{}\n{}", down.stdout, down.stderr);
    assert_eq!(
        down.stdout
            .lines()
            .filter(|l| l.ends_with(": stopped"))
            .count(),
        3,
        "{}",
        down.stdout
    );
    for (name, pid, _) in &first {
        assert!(!alive(*pid), "{name} (pid {pid}) runs after `down`");
    }
    assert_eq!(members(&dir), first);
    let st = cluster(&["status", "--dir", &d], Duration::from_secs(20));
    assert_eq!(st.code, Some(1), "{}", st.stdout);
    assert_eq!(
        st.stdout
            .lines()
            .filter(|l| l.ends_with(" stopped"))
            .count(),
        3,
        "{}",
        st.stdout
    );

    // Up once more: the same members (ports, data), new processes.
    let up = cluster(&["up", "--dir", &d], Duration::from_secs(30));
    assert_eq!(up.code, Some(0), "{}\n{}", up.stdout, up.stderr);
    let second = members(&dir);
    assert_eq!(second.len(), 3);
    for ((name, pid, url), (name0, pid0, url0)) in second.iter().zip(&first) {
        assert_eq!((name, url), (name0, url0));
        assert_ne!(pid, pid0, "{name} got a new process");
        assert!(alive(*pid), "{name} (pid {pid}) runs");
    }
    assert_eq!(
        read(&second[1].2, "greeting").await.as_deref(),
        Some(&b"hello"[..])
    );

    let down = cluster(&["down", "--dir", &d], Duration::from_secs(30));
    assert_eq!(down.code, Some(0), "{}\n{}", down.stdout, down.stderr);
    for (name, pid, _) in &second {
        assert!(!alive(*pid), "{name} (pid {pid}) runs after `down`");
    }
}

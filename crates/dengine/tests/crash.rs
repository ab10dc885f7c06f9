//! Crash test with real processes: a child process runs a 3-node cluster on
//! disk under write load and prints every write the cluster acknowledged;
//! the test kills it with SIGKILL at random moments, restarts it on the same
//! data, and checks that every acknowledged write is still there.
//!
//! The child is this test binary itself, started with `CRASH_CHILD_DIR` set
//! (it then runs the ignored `crash_child` test). With `CRASH_CHILD_SM=kv`
//! it runs the key-value state machine, which keeps its own state on disk:
//! then no write may be lost and none may be applied twice after a restart
//! (every key is written once, so each has version 1 and the store's
//! revision is one more than the number of keys).

#![cfg(all(unix, any(feature = "sled", feature = "rocksdb")))]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::Strings;
use dengine::kv::{KvCommand, KvStateMachine, PutRequest, RangeRequest};
use dengine::{
    Config, InMemoryNetwork, Node, NodeBuilder, NodeId, ReadPolicy, StateMachine, StorageKind,
};

fn storage_from_env() -> StorageKind {
    match std::env::var("CRASH_CHILD_STORAGE").as_deref() {
        Ok("rocksdb") => StorageKind::Rocksdb,
        _ => StorageKind::Sled,
    }
}

/// What the child proposes and reads: the same test on either state machine.
trait Machine: StateMachine + Sized {
    fn open(config: &Config) -> Self;
    fn command(key: &str) -> Vec<u8>;
    fn ok(response: &Self::Response) -> bool;
    /// Every key held, and a line of extra facts to check.
    fn contents(&self) -> (Vec<String>, String);
}

impl Machine for Strings {
    fn open(_: &Config) -> Self {
        Strings::default()
    }
    fn command(key: &str) -> Vec<u8> {
        key.as_bytes().to_vec()
    }
    fn ok(_: &()) -> bool {
        true
    }
    fn contents(&self) -> (Vec<String>, String) {
        (self.0.iter().cloned().collect(), String::new())
    }
}

impl Machine for KvStateMachine {
    fn open(config: &Config) -> Self {
        KvStateMachine::open(config).unwrap_or_else(|e| panic!("kv store: {e}"))
    }
    fn command(key: &str) -> Vec<u8> {
        KvCommand::Put(PutRequest {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
            prev_kv: false,
            ..Default::default()
        })
        .encode()
    }
    fn ok(response: &Self::Response) -> bool {
        response.is_ok()
    }
    fn contents(&self) -> (Vec<String>, String) {
        let all = self
            .range(&RangeRequest {
                key: vec![0],
                range_end: vec![0],
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("range: {e}"));
        let max_version = all.kvs.iter().map(|kv| kv.version).max().unwrap_or(0);
        let keys = all
            .kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect();
        (
            keys,
            format!(
                "revision={} keys={} max_version={max_version}",
                self.revision(),
                all.count
            ),
        )
    }
}

async fn start<SM: Machine>(dir: &Path, storage: StorageKind) -> (Vec<Node<SM>>, Node<SM>) {
    let net = InMemoryNetwork::new();
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let config = Config {
            snapshot_threshold: 300,
            compaction_lag: 50,
            ..common::fast(id, storage, dir.join(format!("n{id}")))
        };
        let sm = SM::open(&config);
        let n = NodeBuilder::new(config, sm)
            .initial_members([1, 2, 3].map(NodeId))
            .network(&net)
            .build()
            .await
            .unwrap_or_else(|e| panic!("node {id} failed to start: {e}"));
        nodes.push(n);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(l) = nodes
            .iter()
            .find(|n| n.status().role == dengine::core::Role::Leader)
        {
            let l = l.clone();
            return (nodes, l);
        }
        assert!(Instant::now() < deadline, "no leader after restart");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The child: writes under load, printing `ACK <key>` for each
/// acknowledged write, or (in verify mode) prints `HAVE <key>` for every key.
#[test]
#[ignore = "run by crash tests as a child process"]
fn crash_child() {
    let Ok(dir) = std::env::var("CRASH_CHILD_DIR") else {
        return;
    };
    let verify = std::env::var("CRASH_CHILD_VERIFY").is_ok();
    let round: u64 = std::env::var("CRASH_CHILD_ROUND")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = PathBuf::from(dir);
    if std::env::var("CRASH_CHILD_SM").as_deref() == Ok("kv") {
        rt.block_on(child_main::<KvStateMachine>(dir, verify, round));
    } else {
        rt.block_on(child_main::<Strings>(dir, verify, round));
    }
}

async fn child_main<SM: Machine>(dir: PathBuf, verify: bool, round: u64) {
    {
        let (_nodes, leader) = start::<SM>(&dir, storage_from_env()).await;
        let out = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
        if verify {
            let (keys, facts) = leader
                .read(ReadPolicy::Linearizable, |sm: &SM| sm.contents())
                .await
                .expect("verify read");
            let mut o = out.lock().expect("stdout");
            for k in keys {
                writeln!(o, "HAVE {k}").expect("stdout");
            }
            writeln!(o, "FACTS {facts}").expect("stdout");
            writeln!(o, "DONE").expect("stdout");
            o.flush().expect("stdout");
            return;
        }
        println!("READY");
        let mut tasks = Vec::new();
        for w in 0..16u64 {
            let leader = leader.clone();
            let out = out.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let key = format!("r{round}-w{w}-{i}");
                    let done = leader.propose(SM::command(&key)).await;
                    if done.is_ok_and(|p| SM::ok(&p.response)) {
                        let mut o = out.lock().expect("stdout");
                        writeln!(o, "ACK {key}").expect("stdout");
                        o.flush().expect("stdout");
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

fn child(dir: &Path, storage: &str, sm: &str, round: u64, verify: bool) -> std::process::Child {
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "crash_child",
        "--ignored",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env("CRASH_CHILD_DIR", dir)
    .env("CRASH_CHILD_STORAGE", storage)
    .env("CRASH_CHILD_SM", sm)
    .env("CRASH_CHILD_ROUND", round.to_string())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    if verify {
        cmd.env("CRASH_CHILD_VERIFY", "1");
    }
    cmd.spawn().expect("spawn child")
}

/// The text after `tag` on a line; libtest may print its own
/// "test crash_child ... " before the child's first line.
fn after<'a>(line: &'a str, tag: &str) -> Option<&'a str> {
    line.find(tag).map(|i| &line[i + tag.len()..])
}

fn run_crash_rounds(storage: &str, sm: &str, rounds: u64) {
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "dengine-crash-{storage}-{sm}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    // Deterministic "random" kill times.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ rounds;
    for round in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let run_for = Duration::from_millis(150 + x % 600);
        let mut c = child(&dir, storage, sm, round, false);
        let stdout = c.stdout.take().expect("child stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait for the cluster, then let it write for a while.
        let start = Instant::now();
        let mut ready_at = None;
        while start.elapsed() < Duration::from_secs(30) {
            match rx.recv_timeout(Duration::from_millis(10)) {
                Ok(l) if l.ends_with("READY") => ready_at = Some(Instant::now()),
                Ok(l) => {
                    if let Some(k) = after(&l, "ACK ") {
                        acked.insert(k.to_string(), round);
                    }
                }
                Err(_) => {}
            }
            if ready_at.is_some_and(|t| t.elapsed() >= run_for) {
                break;
            }
        }
        assert!(
            ready_at.is_some(),
            "round {round}: the child never became ready"
        );
        c.kill().expect("SIGKILL");
        let _ = c.wait();
        // Acks printed before the kill still count.
        let _ = reader.join();
        while let Ok(l) = rx.try_recv() {
            if let Some(k) = after(&l, "ACK ") {
                acked.insert(k.to_string(), round);
            }
        }
    }
    assert!(!acked.is_empty(), "no write was acknowledged");

    let mut v = child(&dir, storage, sm, rounds, true);
    let stdout = v.stdout.take().expect("child stdout");
    let mut have = BTreeSet::new();
    let mut facts = String::new();
    let mut done = false;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if line.ends_with("DONE") {
            done = true;
            break;
        }
        if let Some(k) = after(&line, "HAVE ") {
            have.insert(k.to_string());
        }
        if let Some(f) = after(&line, "FACTS ") {
            facts = f.to_string();
        }
    }
    let _ = v.kill();
    let _ = v.wait();
    assert!(done, "the verifier did not finish");
    let lost: Vec<_> = acked.keys().filter(|k| !have.contains(*k)).collect();
    if lost.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost after SIGKILL, e.g. {:?} (data left in {})",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)],
        dir.display()
    );
    if sm == "kv" {
        // Every key was put once: applied twice, it would have version 2
        // and the revision would run ahead of the key count.
        let want = format!(
            "revision={} keys={} max_version=1",
            have.len() + 1,
            have.len()
        );
        assert_eq!(facts, want, "a write was applied twice after a restart");
    }
    eprintln!(
        "{storage}/{sm}: {} acknowledged writes over {rounds} SIGKILLs, none lost ({facts})",
        acked.len()
    );
}

#[cfg(feature = "sled")]
#[test]
fn sigkill_loses_no_acknowledged_write_sled() {
    run_crash_rounds("sled", "keys", 5);
}

#[cfg(feature = "sled")]
#[test]
fn sigkill_loses_no_write_and_applies_none_twice_kv_on_sled() {
    run_crash_rounds("sled", "kv", 5);
}

#[cfg(feature = "rocksdb")]
#[test]
fn sigkill_loses_no_acknowledged_write_rocksdb() {
    run_crash_rounds("rocksdb", "keys", 5);
}

#[cfg(feature = "rocksdb")]
#[test]
fn sigkill_loses_no_write_and_applies_none_twice_kv_on_rocksdb() {
    run_crash_rounds("rocksdb", "kv", 5);
}

//! Real `dengine serve` processes on 127.0.0.1 with free ports, each with
//! its own data directory and log file; every process is killed when the
//! cluster is dropped (also when a test fails).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_dengine")
}

/// A port nobody listens on right now, for a member to bind a moment
/// later. Not one the kernel picks (`127.0.0.1:0`): those come from the
/// ephemeral range, where the next outgoing connection of any test may
/// take the port before the member binds it, and two picks in a row may
/// give the same port (seen in CI: two members of one cluster given one
/// peer port). Ports come instead from below the ephemeral range
/// (32768-60999 by default), a block of 150 per process (by pid, so that
/// tests running at once in other processes use other blocks), each
/// handed out once per round and checked free before it is.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const BLOCK: u32 = 150;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 10_000 + (std::process::id() % 150) * BLOCK;
    for _ in 0..4 * BLOCK {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % BLOCK;
        let port = u16::try_from(base + n).expect("ports below 32768");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {base}..{}", base + BLOCK);
}

/// One member's settings and process.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    /// Where `dengine serve` serves `/metrics` and `/health`.
    pub metrics_port: u16,
    pub dir: PathBuf,
    pub child: Option<Child>,
    pub log: PathBuf,
    /// Started with `--initial-cluster-state existing` (added by
    /// `MemberAdd` to a cluster that runs).
    pub joining: bool,
    /// `http`, or `https` for a cluster with TLS (see [`Cluster::with_tls`]).
    pub scheme: &'static str,
}

impl Member {
    /// `http://127.0.0.1:<client port>` (`https` with TLS).
    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.client_port)
    }

    /// `127.0.0.1:<client port>` (for etcd-client).
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// `http://127.0.0.1:<peer port>` (`https` with TLS).
    pub fn peer_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.peer_port)
    }
}

/// A cluster of `dengine serve` processes.
pub struct Cluster {
    pub members: Vec<Member>,
    pub token: String,
    /// Extra flags for every member.
    pub extra: Vec<String>,
    /// The program each member runs: `dengine serve`, or etcd itself.
    pub program: Program,
    _dir: tempfile::TempDir,
}

/// What a cluster's members run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Program {
    /// `dengine serve` (the binary under test).
    Dengine,
    /// etcd, at this path (same flags, for tests that compare).
    Etcd(PathBuf),
}

/// etcd's binary (Debian's `etcd-server`, which `cargo xtask ci` installs
/// when root on Debian), or a panic that says how to get it.
pub fn etcd_binary() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("etcd"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "this test runs etcd itself for comparison and found no `etcd` on PATH: \
             run `apt-get install -y etcd-server` (as root), or put etcd 3.4+ on PATH"
        )
    })
}

impl Cluster {
    /// `n` members, none started.
    pub fn new(n: usize) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let members = (0..n)
            .map(|i| {
                let name = format!("m{i}");
                Member {
                    client_port: free_port(),
                    peer_port: free_port(),
                    metrics_port: free_port(),
                    dir: dir.path().join(&name),
                    log: dir.path().join(format!("{name}.log")),
                    name,
                    child: None,
                    joining: false,
                    scheme: "http",
                }
            })
            .collect();
        Cluster {
            members,
            token: format!("test-{}", std::process::id()),
            extra: vec![
                "--heartbeat-interval".into(),
                "20".into(),
                "--election-timeout".into(),
                "300".into(),
            ],
            program: Program::Dengine,
            _dir: dir,
        }
    }

    /// The same cluster with https client and peer URLs; `flags` are the
    /// TLS flags every member gets.
    pub fn with_tls(mut self, flags: &[String]) -> Cluster {
        for m in &mut self.members {
            m.scheme = "https";
        }
        self.extra.extend(flags.iter().cloned());
        self
    }

    /// `n` etcd members, none started (see [`etcd_binary`]).
    pub fn etcd(n: usize) -> Cluster {
        let mut c = Cluster::new(n);
        c.program = Program::Etcd(etcd_binary());
        c
    }

    /// The `--initial-cluster` value.
    pub fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The command that starts member `i`.
    pub fn command(&self, i: usize) -> Command {
        let m = &self.members[i];
        let mut cmd = match &self.program {
            Program::Dengine => {
                let mut cmd = Command::new(binary());
                cmd.arg("serve").env("DENGINE_LOG", "info").args([
                    "--listen-metrics-urls".to_string(),
                    format!("http://127.0.0.1:{}", m.metrics_port),
                ]);
                cmd
            }
            Program::Etcd(path) => Command::new(path),
        };
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.dir)
            .args(["--listen-client-urls", &m.endpoint()])
            .args(["--advertise-client-urls", &m.endpoint()])
            .args(["--listen-peer-urls", &m.peer_url()])
            .args(["--initial-advertise-peer-urls", &m.peer_url()])
            .args(["--initial-cluster", &self.initial_cluster()])
            .args(["--initial-cluster-token", &self.token])
            .args(if m.joining {
                &["--initial-cluster-state", "existing"][..]
            } else {
                &[]
            })
            .args(&self.extra)
            .stdin(Stdio::null());
        cmd
    }

    /// Starts member `i` (its output goes to its log file).
    pub fn start(&mut self, i: usize) {
        self.start_with_env(i, &[]);
    }

    /// Starts member `i` with more environment variables.
    pub fn start_with_env(&mut self, i: usize, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.members[i].log)
            .expect("log file");
        let err = log.try_clone().expect("log file");
        let child = self
            .command(i)
            .envs(env.iter().copied())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start dengine serve");
        self.members[i].child = Some(child);
    }

    /// A new member, not started, that joins the running cluster (after a
    /// `MemberAdd` of its peer URL); its index.
    pub fn add_member(&mut self) -> usize {
        let i = self.members.len();
        let name = format!("m{i}");
        let dir = self.members[0]
            .dir
            .parent()
            .expect("cluster dir")
            .to_path_buf();
        self.members.push(Member {
            client_port: free_port(),
            peer_port: free_port(),
            metrics_port: free_port(),
            dir: dir.join(&name),
            log: dir.join(format!("{name}.log")),
            name,
            child: None,
            joining: true,
            scheme: self.members[0].scheme,
        });
        i
    }

    /// Waits for member `i` to exit by itself; its exit status.
    pub fn wait_exit(&mut self, i: usize, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            let c = self.members[i].child.as_mut().expect("running");
            if let Some(s) = c.try_wait().expect("wait") {
                self.members[i].child = None;
                return s;
            }
            if Instant::now() > deadline {
                let log = self.log(i);
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "member {i} did not exit within {within:?}; the end of its log:\n{}",
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts every member and waits until each knows a leader; the
    /// leader's id.
    pub async fn start_and_wait(&mut self) -> u64 {
        self.start_all();
        let leader = wait_leader(self, 0, Duration::from_secs(10)).await;
        for i in 1..self.members.len() {
            wait_leader(self, i, Duration::from_secs(10)).await;
        }
        leader
    }

    /// Starts every member.
    pub fn start_all(&mut self) {
        for i in 0..self.members.len() {
            self.start(i);
        }
    }

    /// SIGKILL to member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM to member `i`; its exit status.
    pub fn terminate(&mut self, i: usize, within: Duration) -> std::process::ExitStatus {
        let mut c = self.members[i].child.take().expect("running");
        let pid = c.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = c.try_wait().expect("wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("member {i} did not stop within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Member `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.members[i].log).unwrap_or_default()
    }

    /// The data directory of member `i`.
    pub fn dir(&self, i: usize) -> &Path {
        &self.members[i].dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            for (i, m) in self.members.iter().enumerate() {
                eprintln!("---- log of {} ----\n{}", m.name, self.log(i));
            }
        }
    }
}

/// An etcd client for member `i` alone.
pub async fn client(c: &Cluster, i: usize) -> etcd_client::Client {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match etcd_client::Client::connect([c.members[i].addr()], None).await {
            Ok(client) => return client,
            Err(e) if Instant::now() > deadline => panic!("connecting to member {i}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Waits until member `i` knows a leader; returns the leader's id.
pub async fn wait_leader(c: &Cluster, i: usize, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(mut client) = etcd_client::Client::connect([c.members[i].addr()], None).await
            && let Ok(s) = client.status().await
            && s.leader() != 0
        {
            return s.leader();
        }
        if Instant::now() > deadline {
            panic!("member {i} knows no leader after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The index of the member whose id is `id`.
pub async fn index_of(c: &Cluster, id: u64) -> usize {
    for i in 0..c.members.len() {
        if c.members[i].child.is_none() {
            continue;
        }
        let mut client = client(c, i).await;
        if let Ok(s) = client.status().await
            && s.header().map(|h| h.member_id()) == Some(id)
        {
            return i;
        }
    }
    panic!("no running member has id {id:x}");
}

/// The next watch response, within a bound.
pub async fn next(stream: &mut etcd_client::WatchStream) -> etcd_client::WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a watch response within 10 s")
        .expect("watch stream")
        .expect("the stream goes on")
}

/// The gRPC code and message of a client error.
pub fn status_of(e: etcd_client::Error) -> (tonic::Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("not a gRPC status: {other}"),
    }
}

/// The `HashKV` of every member at `revision` (waiting for each to
/// apply it), which must be equal; (hash, compact revision).
pub async fn same_hash(c: &Cluster, revision: i64) -> (u32, i64) {
    let mut hashes = Vec::new();
    for i in 0..c.members.len() {
        let mut m = client(c, i).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let h = loop {
            match m.hash_kv(revision).await {
                Ok(h) => break h,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("member {i}: HashKV at {revision}: {e}"),
            }
        };
        hashes.push((h.hash(), h.compact_version()));
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    hashes[0]
}

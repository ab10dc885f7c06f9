//! The members: real `dengine serve` processes, started, killed, paused
//! and restarted by the harness. Each member's output goes to a log file
//! of its own, kept with the results of a failed run.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::net::{self, Net};

/// Timing flags every member gets: short enough that a run sees many
/// elections, long enough for a debug build on a busy machine.
const TIMING: [&str; 4] = ["--heartbeat-interval", "50", "--election-timeout", "600"];

/// One member.
struct Member {
    child: Option<Child>,
    paused: bool,
}

/// A cluster of `dengine serve` processes.
pub struct Cluster {
    net: Net,
    binary: String,
    dir: PathBuf,
    token: String,
    members: Vec<Member>,
}

impl Cluster {
    /// A cluster of `n` members (none started), their data and logs under
    /// `dir`.
    pub fn new(net: Net, binary: &str, dir: &Path, n: usize, token: &str) -> Cluster {
        Cluster {
            net,
            binary: binary.to_string(),
            dir: dir.to_path_buf(),
            token: token.to_string(),
            members: (0..n)
                .map(|_| Member {
                    child: None,
                    paused: false,
                })
                .collect(),
        }
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The network the members are on.
    pub fn net(&self) -> &Net {
        &self.net
    }

    /// Member `k`'s name.
    pub fn name(k: usize) -> String {
        format!("n{}", k + 1)
    }

    /// Member `k`'s log file.
    pub fn log_path(&self, k: usize) -> PathBuf {
        self.dir.join(format!("{}.log", Cluster::name(k)))
    }

    fn initial_cluster(&self) -> String {
        (0..self.members.len())
            .map(|k| format!("{}={}", Cluster::name(k), self.net.peer_url(k)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts member `k` (again, after a kill: same data directory).
    pub fn start(&mut self, k: usize) -> Result<(), String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(k))
            .map_err(|e| format!("log of {}: {e}", Cluster::name(k)))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let url = self.net.client_url(k);
        let peer = self.net.peer_url(k);
        let child = self
            .net
            .command(k, &self.binary)
            .arg("serve")
            .args(["--name", &Cluster::name(k)])
            .arg("--data-dir")
            .arg(self.dir.join(Cluster::name(k)))
            .args(["--listen-client-urls", &url])
            .args(["--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster()])
            .args(["--initial-cluster-token", &self.token])
            .args(TIMING)
            .env("DENGINE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.binary))?;
        self.members[k] = Member {
            child: Some(child),
            paused: false,
        };
        Ok(())
    }

    /// Whether member `k` runs (started, not killed; it may be paused).
    pub fn is_running(&self, k: usize) -> bool {
        self.members[k].child.is_some()
    }

    /// Whether member `k` is paused (SIGSTOP).
    pub fn is_paused(&self, k: usize) -> bool {
        self.members[k].paused
    }

    /// SIGKILL to member `k`, and waits for it to be gone.
    pub fn kill(&mut self, k: usize) {
        if let Some(mut child) = self.members[k].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.members[k].paused = false;
    }

    /// SIGSTOP to member `k`.
    pub fn pause(&mut self, k: usize) -> Result<(), String> {
        let pid = self.pid(k)?;
        net::signal(pid, "STOP")?;
        self.members[k].paused = true;
        Ok(())
    }

    /// SIGCONT to member `k` if it is paused.
    pub fn resume(&mut self, k: usize) -> Result<(), String> {
        if self.members[k].paused {
            net::signal(self.pid(k)?, "CONT")?;
            self.members[k].paused = false;
        }
        Ok(())
    }

    fn pid(&self, k: usize) -> Result<u32, String> {
        self.members[k]
            .child
            .as_ref()
            .map(Child::id)
            .ok_or_else(|| format!("{} is not running", Cluster::name(k)))
    }

    /// A member that exited by itself (a crash): its name and status.
    pub fn exited(&mut self) -> Option<(String, String)> {
        for (k, m) in self.members.iter_mut().enumerate() {
            if let Some(child) = m.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                m.child = None;
                return Some((Cluster::name(k), status.to_string()));
            }
        }
        None
    }

    /// Kills every member (continuing paused ones first).
    pub fn stop_all(&mut self) {
        for k in 0..self.members.len() {
            let _ = self.resume(k);
            self.kill(k);
        }
    }

    /// Waits a little for a member's client port to take connections.
    pub async fn settle() {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

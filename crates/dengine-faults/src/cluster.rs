//! The members: real `dengine serve` processes, started, killed, paused
//! and restarted by the harness. Each member's output goes to a log file
//! of its own, kept with the results of a failed run.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::net::{self, Net};

/// Size of each member's disk (a tmpfs) when the disk is a fault.
const DISK_BYTES: u64 = 256 << 20;

/// What the `fill` fault leaves free: half the members' default
/// `--disk-reserve-bytes` (64 MiB).
const FILL_LEAVES_BYTES: u64 = 32 << 20;

/// Timing flags every member gets: short enough that a run sees many
/// elections, long enough for a debug build on a busy machine.
const TIMING: [&str; 4] = ["--heartbeat-interval", "50", "--election-timeout", "600"];

/// One member.
struct Member {
    child: Option<Child>,
    paused: bool,
    /// Added to the cluster that runs (after a replacement): started with
    /// `--initial-cluster-state existing`.
    joining: bool,
}

/// A cluster of `dengine serve` processes.
pub struct Cluster {
    net: Net,
    binary: String,
    dir: PathBuf,
    token: String,
    members: Vec<Member>,
    /// Whether each member's data directory is a tmpfs of its own.
    disks: bool,
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
                    joining: false,
                })
                .collect(),
            disks: false,
        }
    }

    /// Makes each member's data directory a tmpfs of 256 MiB (as
    /// root), so that the `fill` fault fills only that member's disk.
    pub fn mount_disks(&mut self) -> Result<(), String> {
        self.disks = true;
        for k in 0..self.members.len() {
            let dir = self.data_dir(k);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let out = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={DISK_BYTES}"), "tmpfs"])
                .arg(&dir)
                .output()
                .map_err(|e| format!("mount: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "mounting a tmpfs on {}: {}",
                    dir.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(())
    }

    /// Unmounts what [`Cluster::mount_disks`] mounted (the members must
    /// be stopped).
    pub fn unmount_disks(&mut self) {
        if !std::mem::take(&mut self.disks) {
            return;
        }
        for k in 0..self.members.len() {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.data_dir(k))
                .status();
        }
    }

    /// Fills member `k`'s disk until 32 MiB are free; the
    /// bytes left free.
    pub fn fill(&self, k: usize) -> Result<u64, String> {
        if !self.disks {
            return Err("the members' disks are not tmpfs of their own".into());
        }
        let dir = self.data_dir(k);
        let free = free_bytes(&dir)?;
        let mut left = free.saturating_sub(FILL_LEAVES_BYTES);
        let file = std::fs::File::create(dir.join(FILLER)).map_err(|e| e.to_string())?;
        let mut w = std::io::BufWriter::new(file);
        let chunk = vec![0x5au8; 1 << 20];
        while left > 0 {
            let n = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            std::io::Write::write_all(&mut w, &chunk[..n]).map_err(|e| e.to_string())?;
            left -= n as u64;
        }
        std::io::Write::flush(&mut w).map_err(|e| e.to_string())?;
        free_bytes(&dir)
    }

    /// Frees what [`Cluster::fill`] took.
    pub fn unfill(&self, k: usize) -> Result<(), String> {
        match std::fs::remove_file(self.data_dir(k).join(FILLER)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
            _ => Ok(()),
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

    /// Member `k`'s data directory.
    pub fn data_dir(&self, k: usize) -> PathBuf {
        self.dir.join(Cluster::name(k))
    }

    /// Member `k`'s peer URL.
    pub fn peer_url(&self, k: usize) -> String {
        self.net.peer_url(k)
    }

    /// Deletes member `k`'s data (it must be stopped): it will start as a
    /// new member joining the cluster that runs.
    pub fn wipe(&mut self, k: usize) -> Result<(), String> {
        if self.is_running(k) {
            return Err(format!("{} is running", Cluster::name(k)));
        }
        // What is in it, not the directory itself: it may be a mount.
        let dir = self.data_dir(k);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let path = e.path();
                let gone = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                gone.map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        self.members[k].joining = true;
        Ok(())
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
            .arg(self.data_dir(k))
            .args(["--listen-client-urls", &url])
            .args(["--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster()])
            .args(["--initial-cluster-token", &self.token])
            .args(if self.members[k].joining {
                &["--initial-cluster-state", "existing"][..]
            } else {
                &[]
            })
            .args(TIMING)
            .env("DENGINE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.binary))?;
        self.members[k].child = Some(child);
        self.members[k].paused = false;
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
        self.unmount_disks();
    }
}

/// The file the `fill` fault writes in a member's data directory.
const FILLER: &str = "filler";

/// Bytes free on the filesystem of `dir`.
fn free_bytes(dir: &Path) -> Result<u64, String> {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .map_err(|e| format!("df: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| format!("df said: {}", String::from_utf8_lossy(&out.stdout)))
}

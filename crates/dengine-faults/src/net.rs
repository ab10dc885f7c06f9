//! Where the members live on the network, and the network faults.
//!
//! With network namespaces (root on Linux), each member has a namespace of
//! its own with one address, `10.99.0.K`, on a veth pair whose other end is
//! plugged into a bridge in a namespace of its own (the *hub*). The harness
//! runs its clients inside the hub, so they reach every member. Nothing is
//! created in the namespace the harness was started from; every name starts
//! with the run's tag (`df` and the harness' pid), so runs do not collide
//! and what a killed run left behind is found and removed by the next one.
//!
//! Faults are made inside the members' namespaces: a *cut* from one member
//! to another is a blackhole route on the sender's side (so a cut both ways
//! is two routes), and a *degraded* link is a queueing discipline on the
//! member's interface: `netem` (delay, jitter and loss) where the kernel has
//! it, else a token bucket with a tiny rate (delay and tail drops).
//!
//! Without namespaces (not root, or a kernel or container that refuses
//! them) the members listen on 127.0.0.1 with ports of their own, and the
//! network faults are not available: the nemesis says so and uses the
//! process faults only.

use std::process::{Command, Stdio};

/// The prefix of every namespace a run makes.
pub const TAG_PREFIX: &str = "df";

/// How the members are reached and how the network is broken.
#[derive(Clone, Debug)]
pub enum Net {
    /// A namespace per member, the clients in the hub.
    Namespaces {
        /// The run's tag (the prefix of each namespace's name).
        tag: String,
        /// Number of members.
        members: usize,
        /// How a link is degraded on this kernel.
        degrade: Degrade,
    },
    /// Every member on 127.0.0.1; no network faults.
    Loopback {
        /// Each member's client and peer port.
        ports: Vec<(u16, u16)>,
    },
}

/// The queueing discipline used to degrade a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Degrade {
    /// `netem delay 60ms 30ms loss 15%`.
    Netem,
    /// `tbf` at 200 kbit/s with at most 300 ms of queue (the kernel has no
    /// netem).
    TokenBucket,
}

impl Net {
    /// The namespace of member `k` (0-based).
    fn member_ns(tag: &str, k: usize) -> String {
        format!("{tag}-n{}", k + 1)
    }

    /// The hub's namespace name for `tag`.
    pub fn hub_ns(tag: &str) -> String {
        format!("{tag}-hub")
    }

    /// Member `k`'s client URL.
    pub fn client_url(&self, k: usize) -> String {
        match self {
            Net::Namespaces { .. } => format!("http://10.99.0.{}:2379", k + 1),
            Net::Loopback { ports } => format!("http://127.0.0.1:{}", ports[k].0),
        }
    }

    /// Member `k`'s peer URL.
    pub fn peer_url(&self, k: usize) -> String {
        match self {
            Net::Namespaces { .. } => format!("http://10.99.0.{}:2380", k + 1),
            Net::Loopback { ports } => format!("http://127.0.0.1:{}", ports[k].1),
        }
    }

    /// A command that runs `program` as member `k` (inside its namespace).
    pub fn command(&self, k: usize, program: &str) -> Command {
        match self {
            Net::Namespaces { tag, .. } => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", &Net::member_ns(tag, k), program]);
                cmd
            }
            Net::Loopback { .. } => Command::new(program),
        }
    }

    /// Whether network faults can be made.
    pub fn has_faults(&self) -> bool {
        matches!(self, Net::Namespaces { .. })
    }

    /// Drops everything `from` sends to `to`.
    pub fn cut(&self, from: usize, to: usize) -> Result<(), String> {
        let Net::Namespaces { tag, .. } = self else {
            return Err("no network faults without namespaces".into());
        };
        ip(&[
            "-n",
            &Net::member_ns(tag, from),
            "route",
            "replace",
            "blackhole",
            &format!("10.99.0.{}/32", to + 1),
        ])
    }

    /// Degrades everything member `k` sends (its clients' answers too).
    pub fn degrade(&self, k: usize) -> Result<(), String> {
        let Net::Namespaces { tag, degrade, .. } = self else {
            return Err("no network faults without namespaces".into());
        };
        let ns = Net::member_ns(tag, k);
        let mut args = vec!["-n", &ns, "qdisc", "replace", "dev", "eth0", "root"];
        match degrade {
            Degrade::Netem => args.extend(["netem", "delay", "60ms", "30ms", "loss", "15%"]),
            Degrade::TokenBucket => {
                args.extend(["tbf", "rate", "200kbit", "burst", "4kb", "latency", "300ms"])
            }
        }
        run("tc", &args)
    }

    /// Takes every cut and degradation away.
    pub fn heal(&self) -> Result<(), String> {
        let Net::Namespaces { tag, members, .. } = self else {
            return Ok(());
        };
        for k in 0..*members {
            let ns = Net::member_ns(tag, k);
            ip(&["-n", &ns, "route", "flush", "type", "blackhole"])?;
            // No qdisc to delete is not an error worth reporting.
            let _ = run_quiet("tc", &["-n", &ns, "qdisc", "del", "dev", "eth0", "root"]);
        }
        Ok(())
    }
}

/// Makes the namespaces of a run: the hub with its bridge, and one per
/// member plugged into it. On failure, removes what it made.
pub fn setup(tag: &str, members: usize) -> Result<Net, String> {
    let made = (|| {
        let hub = Net::hub_ns(tag);
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "addr", "add", "10.99.0.254/24", "dev", "br0"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for k in 0..members {
            let ns = Net::member_ns(tag, k);
            let port = format!("h{}", k + 1);
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.99.0.{}/24", k + 1),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        // netem is a module many small kernels leave out; probe it on the
        // first member's link, then take it away.
        let first = Net::member_ns(tag, 0);
        let degrade = match run_quiet(
            "tc",
            &[
                "-n", &first, "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", "1ms",
            ],
        ) {
            Ok(()) => {
                let _ = run_quiet("tc", &["-n", &first, "qdisc", "del", "dev", "eth0", "root"]);
                Degrade::Netem
            }
            Err(_) => Degrade::TokenBucket,
        };
        Ok(Net::Namespaces {
            tag: tag.to_string(),
            members,
            degrade,
        })
    })();
    if made.is_err() {
        teardown(tag);
    }
    made
}

/// Whether this process may make network namespaces (tries one).
pub fn namespaces_available() -> Result<(), String> {
    let probe = format!("{TAG_PREFIX}{}-probe", std::process::id());
    ip(&["netns", "add", &probe])?;
    let up = ip(&["-n", &probe, "link", "set", "lo", "up"]);
    let _ = ip(&["netns", "del", &probe]);
    up
}

/// Kills whatever still runs in the run's namespaces and deletes them.
/// Never fails: it is also the cleanup after a failure.
pub fn teardown(tag: &str) {
    for ns in namespaces_of(tag) {
        kill_all_in(&ns);
        let _ = ip(&["netns", "del", &ns]);
    }
}

/// Removes what earlier runs left behind: namespaces whose tag names a
/// process that is gone (a run killed before it could clean up).
pub fn remove_stale() {
    let mut tags: Vec<String> = list_namespaces()
        .into_iter()
        .filter_map(|ns| ns.split_once('-').map(|(tag, _)| tag.to_string()))
        .filter(|tag| {
            tag.strip_prefix(TAG_PREFIX)
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect();
    tags.sort();
    tags.dedup();
    for tag in tags {
        eprintln!("faults: removing the namespaces a stopped run left: {tag}-*");
        teardown(&tag);
    }
}

fn namespaces_of(tag: &str) -> Vec<String> {
    let prefix = format!("{tag}-");
    list_namespaces()
        .into_iter()
        .filter(|ns| ns.starts_with(&prefix))
        .collect()
}

fn list_namespaces() -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(TAG_PREFIX))
        .map(str::to_string)
        .collect()
}

fn kill_all_in(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if pid.parse::<u32>().is_ok() {
            // A stopped process must be continued to die of SIGKILL
            // promptly in every kernel; both are harmless otherwise.
            let _ = run_quiet("kill", &["-s", "CONT", "--", pid]);
            let _ = run_quiet("kill", &["-s", "KILL", "--", pid]);
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn run_quiet(program: &str, args: &[&str]) -> Result<(), String> {
    let status = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{program} exited with {status}"))
    }
}

/// Sends `signal` (a name: `KILL`, `STOP`, `CONT`) to process `pid`.
pub fn signal(pid: u32, signal: &str) -> Result<(), String> {
    run("kill", &["-s", signal, "--", &pid.to_string()])
}

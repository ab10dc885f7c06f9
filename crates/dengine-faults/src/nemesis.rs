//! The nemesis: faults chosen by the seed, one at a time, each held for a
//! while and then healed, logged with the time they began and ended.

use std::time::{Duration, Instant};

use dengine_sim::SimRng;

use crate::cluster::Cluster;
use crate::history::History;
use crate::workload;

/// The kinds of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// SIGKILL a member (the leader half the time), restart it later.
    Kill,
    /// SIGSTOP a member (the leader half the time), SIGCONT it later.
    Pause,
    /// Cut one member (the leader half the time) from the others both
    /// ways; clients still reach it.
    Isolate,
    /// Split the members into a minority and a majority.
    Split,
    /// Cut what one member sends to the others, not what it receives.
    OneWay,
    /// Delay and drop what one member sends (netem, or a tiny token
    /// bucket where the kernel has no netem).
    Degrade,
    /// Move the leadership to another member (etcd's MoveLeader).
    Transfer,
    /// A membership change: stop a member, remove it from the cluster,
    /// delete its data and add it again (a new id), then start it empty:
    /// it joins and catches up from a snapshot or the log.
    Replace,
    /// Fill a member's disk (its data directory is a small tmpfs) past
    /// its `--disk-reserve-bytes`, then free it: writes fail with
    /// "database space exceeded" meanwhile, and the member rides it out.
    Fill,
}

impl Kind {
    /// Every kind, in the order they are listed.
    pub const ALL: [Kind; 9] = [
        Kind::Kill,
        Kind::Pause,
        Kind::Isolate,
        Kind::Split,
        Kind::OneWay,
        Kind::Degrade,
        Kind::Transfer,
        Kind::Replace,
        Kind::Fill,
    ];

    /// The kind's name on the command line and in the log.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Pause => "pause",
            Kind::Isolate => "isolate",
            Kind::Split => "split",
            Kind::OneWay => "one-way",
            Kind::Degrade => "degrade",
            Kind::Transfer => "transfer",
            Kind::Replace => "replace",
            Kind::Fill => "fill",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether the kind needs root (network namespaces and mounts).
    pub fn needs_root(self) -> bool {
        matches!(
            self,
            Kind::Isolate | Kind::Split | Kind::OneWay | Kind::Degrade | Kind::Fill
        )
    }
}

/// The members' ids (from MemberList) and their client URLs, to find the
/// leader.
pub struct Members {
    /// Member k's id.
    pub ids: Vec<u64>,
    /// Member k's client URL.
    pub urls: Vec<String>,
}

impl Members {
    /// The member the reachable members name as leader, if one does.
    pub async fn leader(&self, cluster: &Cluster) -> Option<usize> {
        for (k, url) in self.urls.iter().enumerate() {
            if !cluster.is_running(k) || cluster.is_paused(k) {
                continue;
            }
            let Some(mut c) = workload::connect(url).await else {
                continue;
            };
            let status = tokio::time::timeout(Duration::from_millis(500), c.status()).await;
            if let Ok(Ok(s)) = status
                && s.leader() != 0
            {
                return self.ids.iter().position(|id| *id == s.leader());
            }
        }
        None
    }
}

/// The nemesis' log: a line per fault begun or ended.
pub struct Log {
    start: Instant,
    lines: Vec<String>,
    /// Faults made, by kind.
    pub counts: std::collections::BTreeMap<&'static str, u64>,
}

impl Log {
    /// An empty log whose clock starts with the history's.
    pub fn new(start: Instant) -> Log {
        Log {
            start,
            lines: Vec::new(),
            counts: Default::default(),
        }
    }

    /// Logs (and prints) a line.
    pub fn line(&mut self, what: String) {
        let line = format!("{:8.3}s {what}", self.start.elapsed().as_secs_f64());
        println!("nemesis: {line}");
        self.lines.push(line);
    }

    /// The lines so far.
    pub fn text(&self) -> String {
        self.lines.join("\n") + "\n"
    }
}

/// Makes faults of `kinds` until `until`, then heals every one. A member
/// that exits by itself (not killed) is a violation: it is recorded and
/// the member started again.
pub async fn run(
    cluster: &mut Cluster,
    members: &mut Members,
    kinds: &[Kind],
    rng: &mut SimRng,
    until: Instant,
    history: &History,
    log: &mut Log,
) {
    let n = cluster.len();
    // Every kind once first (in a seeded order), so that a short run
    // covers them all; then at random.
    let mut first: Vec<Kind> = kinds.to_vec();
    for i in (1..first.len()).rev() {
        first.swap(i, rng.below(i as u64 + 1) as usize);
    }
    first.reverse();
    while Instant::now() < until && !kinds.is_empty() {
        sleep_checking(
            cluster,
            history,
            log,
            Duration::from_millis(rng.range(300, 1500)),
        )
        .await;
        if Instant::now() >= until {
            break;
        }
        let kind = first
            .pop()
            .unwrap_or_else(|| kinds[rng.below(kinds.len() as u64) as usize]);
        let leader = members.leader(cluster).await;
        // The target: the leader half the time (when there is one).
        let target = match leader {
            Some(l) if rng.chance(0.5) => l,
            _ => rng.below(n as u64) as usize,
        };
        let named = |k: usize| {
            format!(
                "{}{}",
                Cluster::name(k),
                if Some(k) == leader { " (leader)" } else { "" }
            )
        };
        let hold = Duration::from_millis(rng.range(800, 4000));
        let net = cluster.net().clone();
        match kind {
            Kind::Kill => {
                log.line(format!("kill {}", named(target)));
                cluster.kill(target);
                sleep_checking(cluster, history, log, hold).await;
                log.line(format!("restart {}", Cluster::name(target)));
                if let Err(e) = cluster.start(target) {
                    log.line(format!("restart failed: {e}"));
                }
            }
            Kind::Pause => {
                if !cluster.is_running(target) {
                    first.push(kind);
                    continue;
                }
                log.line(format!("pause {}", named(target)));
                if let Err(e) = cluster.pause(target) {
                    log.line(format!("pause failed: {e}"));
                }
                sleep_checking(cluster, history, log, hold).await;
                log.line(format!("resume {}", Cluster::name(target)));
                let _ = cluster.resume(target);
            }
            Kind::Isolate | Kind::OneWay => {
                log.line(format!(
                    "{} {}",
                    if kind == Kind::Isolate {
                        "isolate"
                    } else {
                        "cut what is sent by"
                    },
                    named(target)
                ));
                for other in (0..n).filter(|o| *o != target) {
                    report(log, net.cut(target, other));
                    if kind == Kind::Isolate {
                        report(log, net.cut(other, target));
                    }
                }
                sleep_checking(cluster, history, log, hold).await;
                log.line("heal".into());
                report(log, net.heal());
            }
            Kind::Split => {
                let mut order: Vec<usize> = (0..n).collect();
                for i in (1..n).rev() {
                    order.swap(i, rng.below(i as u64 + 1) as usize);
                }
                let (minority, majority) = order.split_at(n / 2);
                log.line(format!(
                    "split {{{}}} from {{{}}}",
                    minority
                        .iter()
                        .map(|k| named(*k))
                        .collect::<Vec<_>>()
                        .join(", "),
                    majority
                        .iter()
                        .map(|k| named(*k))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                for a in minority {
                    for b in majority {
                        report(log, net.cut(*a, *b));
                        report(log, net.cut(*b, *a));
                    }
                }
                sleep_checking(cluster, history, log, hold).await;
                log.line("heal".into());
                report(log, net.heal());
            }
            Kind::Degrade => {
                log.line(format!("degrade what {} sends", named(target)));
                report(log, net.degrade(target));
                sleep_checking(cluster, history, log, hold).await;
                log.line("heal".into());
                report(log, net.heal());
            }
            Kind::Transfer => {
                let Some(l) = leader else {
                    first.push(kind);
                    continue;
                };
                let to = (l + 1 + rng.below(n as u64 - 1) as usize) % n;
                log.line(format!(
                    "move the leadership from {} to {}",
                    named(l),
                    Cluster::name(to)
                ));
                let moved = match workload::connect(&members.urls[l]).await {
                    Some(mut c) => {
                        tokio::time::timeout(Duration::from_secs(3), c.move_leader(members.ids[to]))
                            .await
                            .map_err(|_| "timed out".to_string())
                            .and_then(|r| r.map(|_| ()).map_err(|e| e.to_string()))
                    }
                    None => Err("leader unreachable".into()),
                };
                if let Err(e) = moved {
                    log.line(format!("  (the move failed: {e})"));
                }
            }
            Kind::Fill => {
                log.line(format!("fill the disk of {}", named(target)));
                match cluster.fill(target) {
                    Ok(free) => log.line(format!("  {free} bytes left free")),
                    Err(e) => log.line(format!("  (filling failed: {e})")),
                }
                sleep_checking(cluster, history, log, hold).await;
                log.line(format!("free the disk of {}", Cluster::name(target)));
                report(log, cluster.unfill(target));
            }
            Kind::Replace => {
                log.line(format!(
                    "replace {} (stop, remove, delete its data, add again)",
                    named(target)
                ));
                cluster.kill(target);
                let replaced = replace(cluster, members, target).await;
                match &replaced {
                    Ok(id) => log.line(format!("  {} is member {id:x} now", Cluster::name(target))),
                    Err(e) => log.line(format!(
                        "  (the replacement failed: {e}; restarting it as it was)"
                    )),
                }
                sleep_checking(cluster, history, log, hold).await;
                log.line(format!(
                    "start {}{}",
                    Cluster::name(target),
                    if replaced.is_ok() { " empty" } else { "" }
                ));
                if replaced.is_ok() {
                    history.reincarnated(target);
                }
                if let Err(e) = cluster.start(target) {
                    log.line(format!("start failed: {e}"));
                }
            }
        }
        *log.counts.entry(kind.name()).or_default() += 1;
    }
    heal_all(cluster, log).await;
}

/// Asks the running members other than `k`, in turn, until one answers
/// or 20 s pass; what `call` made of the answer.
async fn ask_others<T, F, Fut>(
    cluster: &Cluster,
    members: &Members,
    k: usize,
    mut call: F,
) -> Result<T, String>
where
    F: FnMut(etcd_client::Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::from("no member to ask");
    while Instant::now() < deadline {
        for o in (0..cluster.len()).filter(|o| *o != k) {
            if !cluster.is_running(o) || cluster.is_paused(o) {
                continue;
            }
            let Some(c) = workload::connect(&members.urls[o]).await else {
                continue;
            };
            match tokio::time::timeout(Duration::from_secs(3), call(c)).await {
                Ok(Ok(t)) => return Ok(t),
                Ok(Err(e)) => last = e,
                Err(_) => last = "timed out".into(),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last)
}

/// Removes member `k` (stopped) from the cluster, deletes its data and
/// adds it again with the same peer URL; its new id. When the removal
/// fails, nothing is deleted.
async fn replace(cluster: &mut Cluster, members: &mut Members, k: usize) -> Result<u64, String> {
    let old = members.ids[k];
    ask_others(cluster, members, k, |mut c| async move {
        match c.member_remove(old).await {
            Ok(_) => Ok(()),
            // A try that timed out may have removed it.
            Err(e) if e.to_string().contains("member not found") => Ok(()),
            Err(e) => Err(format!("remove: {e}")),
        }
    })
    .await?;
    cluster.wipe(k)?;
    let peer = cluster.peer_url(k);
    let new = ask_others(cluster, members, k, |mut c| {
        let peer = peer.clone();
        async move {
            match c.member_add([peer.clone()], None).await {
                Ok(r) => r
                    .member()
                    .map(|m| m.id())
                    .ok_or_else(|| "add: no member".to_string()),
                // A try that timed out may have added it: find it.
                Err(e) if e.to_string().contains("already exists") => {
                    let list = c.member_list().await.map_err(|e| format!("list: {e}"))?;
                    list.members()
                        .iter()
                        .find(|m| m.peer_urls().contains(&peer))
                        .map(|m| m.id())
                        .ok_or_else(|| format!("add: {e}"))
                }
                Err(e) => Err(format!("add: {e}")),
            }
        }
    })
    .await?;
    members.ids[k] = new;
    Ok(new)
}

/// Heals the network, resumes paused members and starts killed ones.
pub async fn heal_all(cluster: &mut Cluster, log: &mut Log) {
    log.line("heal everything".into());
    let net = cluster.net().clone();
    report(log, net.heal());
    for k in 0..cluster.len() {
        let _ = cluster.resume(k);
        if !cluster.is_running(k)
            && let Err(e) = cluster.start(k)
        {
            log.line(format!("start {} failed: {e}", Cluster::name(k)));
        }
    }
}

fn report(log: &mut Log, done: Result<(), String>) {
    if let Err(e) = done {
        log.line(format!("  (fault command failed: {e})"));
    }
}

/// Sleeps, looking every 100 ms for a member that exited by itself.
async fn sleep_checking(cluster: &mut Cluster, history: &History, log: &mut Log, d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100).min(until - Instant::now())).await;
        if let Some((name, status)) = cluster.exited() {
            history.violation(format!("{name} exited by itself ({status}); see its log"));
            log.line(format!(
                "{name} exited by itself ({status}); starting it again"
            ));
            if let Some(k) = (0..cluster.len()).find(|k| Cluster::name(*k) == name) {
                let _ = cluster.start(k);
            }
        }
    }
}

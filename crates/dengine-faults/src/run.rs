//! One run: start the cluster, load it with clients while the nemesis
//! works, heal, let it settle, check, and keep the evidence of a failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dengine_sim::SimRng;
use etcd_client::GetOptions;

use crate::check;
use crate::cluster::Cluster;
use crate::history::{self, History, Input};
use crate::nemesis::{self, Kind, Members};
use crate::net::Net;
use crate::workload::{self, Shared};

/// What a run is asked to do.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The `dengine` binary.
    pub binary: String,
    /// Members (3 or 5).
    pub members: usize,
    /// How long the nemesis works.
    pub duration: Duration,
    /// The seed of the nemesis and of the clients' choices.
    pub seed: u64,
    /// The fault kinds the nemesis may use.
    pub kinds: Vec<Kind>,
    /// Where a failed run keeps its evidence.
    pub results: PathBuf,
    /// The command line that runs this seed again (printed on failure).
    pub rerun: String,
}

/// The outcome of a run.
pub struct Outcome {
    /// Every violation found (empty: the run passed).
    pub violations: Vec<String>,
    /// One line per figure, for the summary.
    pub summary: Vec<String>,
}

/// Runs the cluster on `net` under the nemesis and checks the history.
pub async fn run(settings: &Settings, net: Net) -> Result<Outcome, String> {
    let mut kinds: Vec<Kind> = if net.has_faults() {
        settings.kinds.clone()
    } else {
        let (network, process): (Vec<Kind>, Vec<Kind>) =
            settings.kinds.iter().partition(|k| k.needs_root());
        if !network.is_empty() {
            println!(
                "faults: not root or no network namespaces, so no network or disk faults ({} left out)",
                network
                    .iter()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        process
    };
    let dir = std::env::temp_dir().join(format!("dengine-faults-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let token = format!("faults-{}", settings.seed);
    let mut cluster = Cluster::new(
        net.clone(),
        &settings.binary,
        &dir,
        settings.members,
        &token,
    );
    let urls: Vec<String> = (0..settings.members).map(|k| net.client_url(k)).collect();
    if kinds.contains(&Kind::Fill)
        && let Err(e) = cluster.mount_disks()
    {
        // Namespaces without mounts (a container that allows one and not
        // the other): the run goes on without this one kind.
        println!("faults: {e}; no fill faults");
        cluster.unmount_disks();
        kinds.retain(|k| *k != Kind::Fill);
    }
    for k in 0..settings.members {
        cluster.start(k)?;
    }
    let result = drive(settings, &kinds, &mut cluster, &urls).await;
    cluster.stop_all();
    cluster.unmount_disks();
    match result {
        Ok((outcome, evidence)) => {
            if !outcome.violations.is_empty() {
                keep_evidence(settings, &cluster, &outcome, &evidence);
            }
            let _ = std::fs::remove_dir_all(&dir);
            Ok(outcome)
        }
        Err(e) => {
            let evidence = Evidence {
                history: Vec::new(),
                nemesis: String::new(),
            };
            let outcome = Outcome {
                violations: vec![e.clone()],
                summary: Vec::new(),
            };
            keep_evidence(settings, &cluster, &outcome, &evidence);
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

/// What a failed run keeps besides the members' logs.
struct Evidence {
    history: Vec<serde_json::Value>,
    nemesis: String,
}

async fn drive(
    settings: &Settings,
    kinds: &[Kind],
    cluster: &mut Cluster,
    urls: &[String],
) -> Result<(Outcome, Evidence), String> {
    let mut members = wait_for_cluster(urls).await?;
    let mut rng = SimRng::new(settings.seed);
    let mut first = workload::connect(&urls[0])
        .await
        .ok_or("no client for n1")?;
    let opened = workload::open_accounts(&mut first).await?;

    let shared = Arc::new(Shared {
        history: History::new(),
        next_value: AtomicU64::new(1),
        refused_for_space: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let stop_at = Arc::new(AtomicU64::new(0));
    let give_up = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    let mut banks = Vec::new();
    let mut watchers = Vec::new();
    for (k, url) in urls.iter().enumerate() {
        for c in 0..2 {
            let id = (k * 2 + c) as u64;
            clients.push(tokio::spawn(workload::registers(
                shared.clone(),
                id,
                k,
                url.clone(),
                rng.fork(),
            )));
        }
        banks.push(tokio::spawn(workload::bank(
            shared.clone(),
            k,
            url.clone(),
            opened,
            rng.fork(),
        )));
        watchers.push(tokio::spawn(workload::watcher(
            url.clone(),
            1,
            stop_at.clone(),
            give_up.clone(),
        )));
    }

    let mut log = nemesis::Log::new(shared.history.started());
    log.line(format!(
        "seed {}, {} members, faults: {}",
        settings.seed,
        urls.len(),
        kinds
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let until = Instant::now() + settings.duration;
    nemesis::run(
        cluster,
        &mut members,
        kinds,
        &mut rng,
        until,
        &shared.history,
        &mut log,
    )
    .await;
    // A little load after the last heal, so recovery is exercised too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    shared.stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let mut transfers = 0;
    for b in banks {
        transfers += b.await.unwrap_or(0);
    }
    log.line("clients stopped".into());

    // Settle: every member at the same revision, the same hash.
    let h = &shared.history;
    let settled = settle(urls, &members, cluster).await;
    let final_revision = match settled {
        Ok((revision, hash)) => {
            log.line(format!(
                "settled at revision {revision}, hash {hash:#x} on every member"
            ));
            revision
        }
        Err(e) => {
            h.violation(e);
            0
        }
    };
    if final_revision > 0 {
        // The bank's total, once more, on every member.
        for (k, url) in urls.iter().enumerate() {
            if let Some(mut c) = workload::connect(url).await {
                let options = GetOptions::new().with_prefix().with_serializable();
                if let Ok(resp) = c.get("b/", Some(options)).await {
                    let total: u64 = resp
                        .kvs()
                        .iter()
                        .filter_map(|kv| std::str::from_utf8(kv.value()).ok()?.parse::<u64>().ok())
                        .sum();
                    if total != workload::ACCOUNTS * workload::BALANCE {
                        h.violation(format!("bank: n{} ends with {total}", k + 1));
                    }
                }
            }
        }
    }
    stop_at.store(final_revision.max(1) as u64, Ordering::Relaxed);
    let watch_deadline = Instant::now() + Duration::from_secs(20);
    let mut watched = Vec::new();
    for w in watchers {
        let left = watch_deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, w).await {
            Ok(Ok(got)) => watched.push(Some(got)),
            _ => watched.push(None),
        }
    }
    give_up.store(true, Ordering::Relaxed);

    // The reference: the store's whole history, read by a new watch.
    let reference = if final_revision > 0 {
        let stop = Arc::new(AtomicU64::new(final_revision as u64));
        let w = workload::watcher(urls[0].clone(), 1, stop, Arc::new(AtomicBool::new(false)));
        match tokio::time::timeout(Duration::from_secs(30), w).await {
            Ok(w) => Some(w.events),
            Err(_) => {
                h.violation("the reference watch did not reach the final revision in 30 s".into());
                None
            }
        }
    } else {
        None
    };
    let mut resumes = 0;
    if let Some(reference) = &reference {
        for (k, w) in watched.iter().enumerate() {
            match w {
                Some(w) => {
                    resumes += w.resumes;
                    for v in
                        check::watch_stream(&Cluster::name(k), &w.events, reference, final_revision)
                    {
                        h.violation(v);
                    }
                }
                None => h.violation(format!(
                    "watcher of n{} did not reach revision {final_revision} within 20 s of the end",
                    k + 1
                )),
            }
        }
    }

    let ops = h.ops();
    let mut undecided = false;
    match check::linearizable(&ops) {
        Ok(u) => undecided = u,
        Err(e) => h.violation(e),
    }
    let serial = h.serial_reads();
    for v in check::serial_monotonic(&serial) {
        h.violation(v);
    }

    let mut summary = Vec::new();
    let mut by_kind: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for op in &ops {
        let kind = match op.input {
            Input::Put { .. } => "put",
            Input::Get { .. } => "get",
            Input::Cas { .. } => "cas",
        };
        let e = by_kind.entry(kind).or_default();
        if op.output.is_some() {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    summary.push(format!(
        "operations: {} ({}), {} serializable reads, {transfers} bank transfers, {} writes refused for space",
        ops.len(),
        by_kind
            .iter()
            .map(|(k, (ok, unknown))| format!("{k} {ok} answered + {unknown} unknown"))
            .collect::<Vec<_>>()
            .join(", "),
        serial.len(),
        shared.refused_for_space.load(Ordering::Relaxed)
    ));
    summary.push(format!(
        "faults: {}",
        log.counts
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    summary.push(format!(
        "watch: {} events in the store's history, {} watchers, {resumes} resumes",
        reference.as_ref().map_or(0, Vec::len),
        watched.len()
    ));
    if undecided {
        summary.push("linearizability: some register's search ran out of budget (undecided, not a violation)".into());
    }
    let evidence = Evidence {
        history: ops.iter().map(history::op_json).collect(),
        nemesis: log.text(),
    };
    Ok((
        Outcome {
            violations: h.violations(),
            summary,
        },
        evidence,
    ))
}

/// Waits for every member to name the same leader; the members' ids.
async fn wait_for_cluster(urls: &[String]) -> Result<Members, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut leaders = Vec::new();
        for url in urls {
            if let Some(mut c) = workload::connect(url).await
                && let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), c.status()).await
            {
                leaders.push(s.leader());
            }
        }
        if leaders.len() == urls.len()
            && leaders[0] != 0
            && leaders.iter().all(|l| *l == leaders[0])
        {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the cluster had no leader within 60 s (saw {leaders:?})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut c = workload::connect(&urls[0])
        .await
        .ok_or("no client for n1")?;
    let list = c
        .member_list()
        .await
        .map_err(|e| format!("member list: {e}"))?;
    let mut ids = vec![0; urls.len()];
    for m in list.members() {
        if let Some(k) = m
            .name()
            .strip_prefix('n')
            .and_then(|n| n.parse::<usize>().ok())
            && (1..=urls.len()).contains(&k)
        {
            ids[k - 1] = m.id();
        }
    }
    if ids.contains(&0) {
        return Err(format!("member list did not name every member: {ids:?}"));
    }
    Ok(Members {
        ids,
        urls: urls.to_vec(),
    })
}

/// Waits until every member has the leader's revision and compares their
/// HashKV at it; the revision and hash, or what differed.
async fn settle(
    urls: &[String],
    members: &Members,
    cluster: &Cluster,
) -> Result<(i64, u32), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(leader) = members.leader(cluster).await else {
            last = "no leader".into();
            continue;
        };
        let Some(mut c) = workload::connect(&urls[leader]).await else {
            continue;
        };
        // A linearizable read: the revision every member must reach.
        let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(2), c.get("r/", None)).await
        else {
            last = "the leader did not answer a read".into();
            continue;
        };
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut hashes = Vec::new();
        for url in urls {
            let Some(mut c) = workload::connect(url).await else {
                break;
            };
            match tokio::time::timeout(Duration::from_secs(2), c.hash_kv(revision)).await {
                Ok(Ok(h)) if h.header().is_some_and(|hd| hd.revision() >= revision) => {
                    hashes.push(h.hash())
                }
                Ok(Ok(_)) => break,
                Ok(Err(e)) => {
                    last = format!("hash_kv: {e}");
                    break;
                }
                Err(_) => break,
            }
        }
        if hashes.len() == urls.len() {
            if hashes.iter().all(|h| *h == hashes[0]) {
                return Ok((revision, hashes[0]));
            }
            return Err(format!(
                "the members' HashKV at revision {revision} differ: {hashes:x?}"
            ));
        }
    }
    Err(format!(
        "the members did not reach one revision within 60 s of the end ({last})"
    ))
}

fn keep_evidence(settings: &Settings, cluster: &Cluster, outcome: &Outcome, evidence: &Evidence) {
    let dir = settings.results.join(format!(
        "seed-{}-{}",
        settings.seed,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    ));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("faults: cannot keep the evidence in {}: {e}", dir.display());
        return;
    }
    let write = |name: &str, text: String| {
        let _ = std::fs::write(dir.join(name), text);
    };
    write("violations.txt", outcome.violations.join("\n") + "\n");
    write("nemesis.log", evidence.nemesis.clone());
    write(
        "history.jsonl",
        evidence
            .history
            .iter()
            .map(|v| v.to_string() + "\n")
            .collect(),
    );
    write("rerun.txt", settings.rerun.clone() + "\n");
    for k in 0..cluster.len() {
        let _ = std::fs::copy(
            cluster.log_path(k),
            dir.join(format!("{}.log", Cluster::name(k))),
        );
    }
    println!("faults: the evidence is in {}", dir.display());
}

/// Where the evidence of failed runs goes by default.
pub fn default_results(root: &Path) -> PathBuf {
    root.join("target").join("faults")
}

//! `cargo xtask bench compare`: dengine against etcd on this machine, in
//! the same run, with the same load generator (`dengine-bench`, which
//! speaks only etcd's API).
//!
//! ```text
//! cargo xtask bench compare [--seconds N] [--rounds N] [--quick] [--systems etcd,dengine]
//! ```
//!
//! For each round and each system in turn (the order alternates between
//! rounds): a fresh local 3-member cluster of real processes, data under
//! `target/bench-compare` (one disk for both), every point of the matrix
//! against its leader, then the cluster is stopped. Both systems
//! acknowledge a write once it is fsynced on a majority: etcd runs with
//! its defaults (no `--unsafe-no-fsync`), dengine with its own. The
//! results go to `benches/results/<date>.md` and `.json`, as measured.

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crate::step;

/// One point of the matrix: a name and `dengine-bench`'s arguments.
struct Point {
    name: &'static str,
    args: Vec<&'static str>,
}

fn matrix(quick: bool) -> Vec<Point> {
    let p = |name, args: &[&'static str]| Point {
        name,
        args: args.to_vec(),
    };
    let mut all = vec![
        p("put, 1 client", &["--conns", "1", "--clients", "1", "put"]),
        p(
            "put, 16 clients",
            &["--conns", "4", "--clients", "16", "put"],
        ),
        p(
            "put, 64 clients",
            &["--conns", "8", "--clients", "64", "put"],
        ),
        p(
            "put, 256 clients",
            &["--conns", "32", "--clients", "256", "put"],
        ),
        p(
            "put, 1024 clients",
            &["--conns", "64", "--clients", "1024", "put"],
        ),
        p(
            "range l, 64 clients",
            &[
                "--conns",
                "8",
                "--clients",
                "64",
                "range",
                "--consistency",
                "l",
            ],
        ),
        p(
            "range l, 256 clients",
            &[
                "--conns",
                "32",
                "--clients",
                "256",
                "range",
                "--consistency",
                "l",
            ],
        ),
        p(
            "range s, 64 clients",
            &[
                "--conns",
                "8",
                "--clients",
                "64",
                "range",
                "--consistency",
                "s",
            ],
        ),
        p(
            "range s, 256 clients",
            &[
                "--conns",
                "32",
                "--clients",
                "256",
                "range",
                "--consistency",
                "s",
            ],
        ),
        p(
            "txn-put, 64 clients",
            &["--conns", "8", "--clients", "64", "txn-put"],
        ),
        p(
            "mixed 90/10, 64 clients",
            &[
                "--conns",
                "8",
                "--clients",
                "64",
                "mixed",
                "--read-ratio",
                "0.9",
            ],
        ),
        p(
            "watch, 1000 watchers",
            &[
                "--conns",
                "10",
                "watch",
                "--watchers",
                "1000",
                "--streams",
                "10",
                "--put-rate",
                "100",
            ],
        ),
    ];
    if quick {
        all.retain(|p| {
            matches!(
                p.name,
                "put, 1 client"
                    | "put, 256 clients"
                    | "range l, 64 clients"
                    | "watch, 1000 watchers"
            )
        });
    }
    all
}

struct Settings {
    seconds: u64,
    rounds: usize,
    quick: bool,
    systems: Vec<String>,
}

fn parse(args: &[String]) -> Result<Settings, String> {
    let mut s = Settings {
        seconds: 10,
        rounds: 2,
        quick: false,
        systems: vec!["etcd".into(), "dengine".into()],
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--seconds" => s.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--rounds" => s.rounds = value()?.parse().map_err(|e| format!("--rounds: {e}"))?,
            "--systems" => s.systems = value()?.split(',').map(str::to_string).collect(),
            "--quick" => {
                s.quick = true;
                s.seconds = 3;
                s.rounds = 1;
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if s.seconds == 0 || s.rounds == 0 {
        return Err("--seconds and --rounds must be at least 1".into());
    }
    if let Some(bad) = s.systems.iter().find(|x| *x != "etcd" && *x != "dengine") {
        return Err(format!("--systems: unknown system {bad:?} (etcd, dengine)"));
    }
    Ok(s)
}

/// Runs the comparison.
pub fn run(args: &[String]) -> ExitCode {
    match compare(args) {
        Ok(path) => {
            println!("compare: results in {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("compare: {e}");
            ExitCode::FAILURE
        }
    }
}

fn compare(args: &[String]) -> Result<PathBuf, String> {
    let s = parse(args)?;
    let root = step::workspace_root();
    if s.systems.iter().any(|x| x == "etcd") {
        crate::sysdeps::ensure_etcd()?;
    }
    // What is built is what is measured: the commit and whether the tree
    // had changes are taken now, not when the results are written (edits
    // made while the benchmark runs do not change the binaries).
    let source = Source::of(&root);
    println!("==> building dengine and dengine-bench (release)");
    let built = step::cargo()
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "dengine",
            "--bin",
            "dengine",
            "-p",
            "dengine-bench",
            "--bin",
            "dengine-bench",
        ])
        .status()
        .map_err(|e| format!("cargo build: {e}"))?;
    if !built.success() {
        return Err("building the release binaries failed".into());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| root.join(d))
        .unwrap_or_else(|| root.join("target"));
    let dengine = target.join("release/dengine");
    let bench = target.join("release/dengine-bench");
    let data = target.join("bench-compare");
    let points = matrix(s.quick);
    let mut rows: Vec<serde_json::Value> = Vec::new();
    for round in 0..s.rounds {
        let mut order = s.systems.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for system in &order {
            let program = match system.as_str() {
                "etcd" => PathBuf::from("etcd"),
                _ => dengine.clone(),
            };
            let dir = data.join(format!("{system}-{round}"));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            println!("==> round {}: {system}", round + 1);
            let cluster = LocalCluster::start(system, &program, &dir)?;
            cluster.wait_ready(&bench)?;
            for p in &points {
                let mut cmd = Command::new(&bench);
                cmd.args([
                    "--endpoints",
                    &cluster.endpoints().join(","),
                    "--json",
                    "--quiet",
                ])
                .args(["--duration", &format!("{}s", s.seconds)])
                .args([
                    "--pids",
                    &cluster
                        .pids()
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                ])
                .args(&p.args);
                let out = cmd.output().map_err(|e| format!("dengine-bench: {e}"))?;
                let line = String::from_utf8_lossy(&out.stdout);
                let mut v: serde_json::Value = match serde_json::from_str(line.trim()) {
                    Ok(v) => v,
                    Err(_) => serde_json::json!({
                        "failed": String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    }),
                };
                if let Some(o) = v.as_object_mut() {
                    o.insert("system".into(), system.clone().into());
                    o.insert("round".into(), (round + 1).into());
                    o.insert("point".into(), p.name.into());
                }
                println!("  {:<24} {}", p.name, summary(&v));
                rows.push(v);
            }
            drop(cluster);
            let size = dir_bytes(&dir);
            let _ = fs::remove_dir_all(&dir);
            let settled = settle_disk();
            println!(
                "  removed {} MiB of data; the disk settled in {:.1} s",
                size >> 20,
                settled.as_secs_f64()
            );
        }
    }
    write_results(&root, &s, &source, &rows)
}

/// Waits until what deleting a cluster's data left the disk to do is
/// done, so that it is not charged to the next system: `sync`, then a
/// pause. With the file system mounted `discard` (this machine's root
/// is), freeing gigabytes of files sends the device discards when the
/// journal commits, which the next cluster's writes could wait behind.
/// (In the first run with it, every `sync` returned at once.)
fn settle_disk() -> Duration {
    let started = Instant::now();
    let _ = Command::new("sync").status();
    let took = started.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    took
}

/// The bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// A short line for the terminal.
fn summary(v: &serde_json::Value) -> String {
    if let Some(f) = v.get("failed") {
        return format!("FAILED: {f}");
    }
    format!(
        "{:>10.0} ops/s  p50 {:.2} ms  p99 {:.2} ms  server CPU {:.1} us/op",
        v["ops_per_sec"].as_f64().unwrap_or(0.0),
        v["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
        v["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
        server_cpu(v).unwrap_or(f64::NAN),
    )
}

/// The servers' CPU per operation, all members together.
fn server_cpu(v: &serde_json::Value) -> Option<f64> {
    let servers = v["servers"].as_array()?;
    servers.iter().map(|s| s["cpu_us_per_op"].as_f64()).sum()
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("a free port: {e}"))
}

/// Three local members of one system; stopped when dropped.
struct LocalCluster {
    children: Vec<Child>,
    client_ports: Vec<u16>,
}

impl LocalCluster {
    fn start(system: &str, program: &Path, dir: &Path) -> Result<LocalCluster, String> {
        let mut ports = Vec::new();
        for _ in 0..3 {
            ports.push((free_port()?, free_port()?));
        }
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = LocalCluster {
            children: Vec::new(),
            client_ports: ports.iter().map(|(c, _)| *c).collect(),
        };
        for (i, (client, peer)) in ports.iter().enumerate() {
            let log = fs::File::create(dir.join(format!("m{i}.log"))).map_err(|e| e.to_string())?;
            let err = log.try_clone().map_err(|e| e.to_string())?;
            let mut cmd = Command::new(program);
            if system == "dengine" {
                cmd.arg("serve");
            }
            cmd.args(["--name", &format!("m{i}")])
                .args([
                    "--data-dir",
                    &dir.join(format!("m{i}")).display().to_string(),
                ])
                .args([
                    "--listen-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                ])
                .args([
                    "--advertise-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                ])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                ])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "compare"])
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err);
            let child = cmd
                .spawn()
                .map_err(|e| format!("starting {}: {e}", program.display()))?;
            cluster.children.push(child);
        }
        Ok(cluster)
    }

    fn endpoints(&self) -> Vec<String> {
        self.client_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// Waits until a few puts go through the leader.
    fn wait_ready(&self, bench: &Path) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new(bench)
                .args([
                    "--endpoints",
                    &self.endpoints().join(","),
                    "--quiet",
                    "--total",
                    "10",
                    "put",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("the cluster took no write within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = Command::new("kill")
                .args(["-s", "TERM", "--", &c.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for c in &mut self.children {
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Mean of the rounds' values of one figure.
fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// The source the binaries are built from.
struct Source {
    commit: String,
    /// Whether tracked files had uncommitted changes.
    dirty: bool,
}

impl Source {
    fn of(root: &Path) -> Source {
        let git = |args: &[&str]| {
            let root = root.display().to_string();
            let mut all = vec!["-C", root.as_str()];
            all.extend_from_slice(args);
            output_of("git", &all)
        };
        Source {
            commit: git(&["rev-parse", "--short", "HEAD"]).unwrap_or_default(),
            dirty: git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty()),
        }
    }
}

fn write_results(
    root: &Path,
    s: &Settings,
    source: &Source,
    rows: &[serde_json::Value],
) -> Result<PathBuf, String> {
    let dir = root.join("benches/results");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let date = output_of("date", &["-u", "+%Y-%m-%d"]).unwrap_or_else(|| "undated".into());
    let (commit, dirty) = (source.commit.clone(), source.dirty);
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let disk = output_of(
        "findmnt",
        &[
            "-no",
            "SOURCE,FSTYPE",
            "--target",
            &root.display().to_string(),
        ],
    )
    .unwrap_or_default();
    let etcd_version = output_of("etcd", &["--version"])
        .and_then(|v| v.lines().next().map(str::to_string))
        .unwrap_or_default();
    let machine = serde_json::json!({
        "date": date, "commit": commit, "dirty": dirty, "cpu": cpu, "cores": cores,
        "disk": disk, "etcd": etcd_version, "seconds_per_point": s.seconds, "rounds": s.rounds,
    });
    let json = serde_json::json!({ "machine": machine, "runs": rows });
    let json_path = dir.join(format!("{date}.json"));
    fs::write(&json_path, format!("{json:#}\n"))
        .map_err(|e| format!("{}: {e}", json_path.display()))?;

    // Per point and system, the rounds' figures.
    let mut by: BTreeMap<(String, String), Vec<&serde_json::Value>> = BTreeMap::new();
    for r in rows {
        let point = r["point"].as_str().unwrap_or("").to_string();
        let system = r["system"].as_str().unwrap_or("").to_string();
        by.entry((point, system)).or_default().push(r);
    }
    let figure = |point: &str, system: &str, f: &dyn Fn(&serde_json::Value) -> Option<f64>| {
        let vals: Vec<f64> = by
            .get(&(point.to_string(), system.to_string()))
            .map(|rs| rs.iter().filter_map(|r| f(r)).collect())
            .unwrap_or_default();
        mean(&vals)
    };
    let show =
        |x: Option<f64>, digits: usize| x.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    let mut md = String::new();
    md.push_str(&format!(
        "# dengine against etcd, {date}\n\nMachine: {cores} cores ({cpu}), data on {disk}; {etcd_version}; dengine at commit {commit}{}.\n\
         Method: `cargo xtask bench compare` (see benches/README.md): 3 local members of each system, one system at a time, \
         `dengine-bench` against the leader, {} s per point, {} round(s) alternating the systems; figures are the means of the rounds. \
         Server CPU is the three members' CPU time per operation, from /proc. Both systems fsync a write on a majority before acknowledging it.\n\n",
        if dirty { " (with uncommitted changes)" } else { "" },
        s.seconds,
        s.rounds,
    ));
    // `a / b` to two places, or "-".
    let quotient = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".to_string(),
    };
    md.push_str("| point | etcd ops/s | etcd p50 ms | etcd p99 ms | etcd server CPU us/op | dengine ops/s | dengine p50 ms | dengine p99 ms | dengine server CPU us/op | dengine/etcd |\n");
    md.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    // The load generator shares the cores: what it spends per operation,
    // and the servers' CPU ratio, which does not depend on it.
    let mut cpu_table = String::from(
        "\nCPU per operation, in microseconds: the three members together, and the load generator \
         (`dengine-bench`, on the same cores). The last column is etcd's server CPU per operation \
         over dengine's.\n\n\
         | point | etcd server | etcd client | dengine server | dengine client | etcd/dengine server CPU |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for p in matrix(s.quick) {
        let rate = |sys: &str| figure(p.name, sys, &|r| r["ops_per_sec"].as_f64());
        let p50 = |sys: &str| figure(p.name, sys, &|r| r["latency_ms"]["p50"].as_f64());
        let p99 = |sys: &str| figure(p.name, sys, &|r| r["latency_ms"]["p99"].as_f64());
        let cpu = |sys: &str| figure(p.name, sys, &server_cpu);
        let client = |sys: &str| figure(p.name, sys, &|r| r["client_cpu_us_per_op"].as_f64());
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            p.name,
            show(rate("etcd"), 0),
            show(p50("etcd"), 2),
            show(p99("etcd"), 2),
            show(cpu("etcd"), 1),
            show(rate("dengine"), 0),
            show(p50("dengine"), 2),
            show(p99("dengine"), 2),
            show(cpu("dengine"), 1),
            quotient(rate("dengine"), rate("etcd"))
        ));
        cpu_table.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            p.name,
            show(cpu("etcd"), 1),
            show(client("etcd"), 1),
            show(cpu("dengine"), 1),
            show(client("dengine"), 1),
            quotient(cpu("etcd"), cpu("dengine"))
        ));
    }
    md.push_str(&cpu_table);
    let peak = |sys: &str| {
        rows.iter()
            .filter(|r| r["system"] == sys)
            .flat_map(|r| r["servers"].as_array().cloned().unwrap_or_default())
            .filter_map(|s| s["peak_rss_bytes"].as_u64())
            .max()
    };
    md.push_str(&format!(
        "\nPeak resident memory of one member: etcd {}, dengine {} (MiB).\n",
        show(peak("etcd").map(|b| b as f64 / 1048576.0), 0),
        show(peak("dengine").map(|b| b as f64 / 1048576.0), 0)
    ));
    let failed: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            r.get("failed")
                .map(|f| format!("- {} {} round {}: {f}", r["system"], r["point"], r["round"]))
        })
        .collect();
    if !failed.is_empty() {
        md.push_str("\nFailed points:\n\n");
        md.push_str(&failed.join("\n"));
        md.push('\n');
    }
    let md_path = dir.join(format!("{date}.md"));
    fs::write(&md_path, md).map_err(|e| format!("{}: {e}", md_path.display()))?;
    Ok(md_path)
}

/// A command's trimmed standard output, if it ran.
fn output_of(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

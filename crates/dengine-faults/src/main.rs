//! `dengine-faults`: runs a `dengine serve` cluster under a seeded nemesis
//! and checks what its clients saw (see the library's documentation).
//! Exit status: 0 when every run passed, 1 when a check failed, 2 when the
//! harness could not run.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::Parser;
use dengine_faults::nemesis::Kind;
use dengine_faults::net::{self, Degrade, Net};
use dengine_faults::run::{self, Settings};

/// Runs a dengine cluster of real processes under faults and checks it.
#[derive(Parser, Debug, Clone)]
#[command(name = "dengine-faults", version)]
struct Args {
    /// The `dengine` binary to run.
    #[arg(long)]
    binary: PathBuf,
    /// Members in the cluster.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=9))]
    members: u64,
    /// How long the nemesis works in each run: seconds, or with a unit
    /// (`90s`, `10m`).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// The first run's seed (each later run adds 1).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Runs, one after the other, each with a fresh cluster.
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// The fault kinds, comma-separated, or `all`: kill, pause, isolate,
    /// split, one-way, degrade, transfer, replace.
    #[arg(long, default_value = "all", value_parser = parse_kinds)]
    faults: Kinds,
    /// Where the members live: `namespaces` (root; network faults),
    /// `loopback` (127.0.0.1, process faults only), or `auto`.
    #[arg(long, default_value = "auto")]
    net: String,
    /// Where a failed run keeps its history, nemesis log and member logs.
    #[arg(long, default_value = "target/faults")]
    results: PathBuf,
    /// The command that reruns a seed (printed on failure; set by
    /// `cargo xtask faults`).
    #[arg(long, default_value = "")]
    rerun: String,
    /// Internal: the run's namespace tag, when already inside the hub.
    #[arg(long, hide = true)]
    inside: Option<String>,
    /// Internal: how links are degraded inside the namespaces.
    #[arg(long, hide = true, default_value = "netem")]
    degrade: String,
}

#[derive(Clone, Debug)]
struct Kinds(Vec<Kind>);

fn parse_kinds(s: &str) -> Result<Kinds, String> {
    if s == "all" {
        return Ok(Kinds(Kind::ALL.to_vec()));
    }
    s.split(',')
        .map(|name| Kind::parse(name.trim()).ok_or_else(|| format!("unknown fault kind `{name}`")))
        .collect::<Result<Vec<_>, _>>()
        .map(Kinds)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number.parse().map_err(|_| format!("bad duration `{s}`"))?;
    match unit {
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("bad duration unit in `{s}` (s, m or h)")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(tag) = &args.inside {
        let degrade = if args.degrade == "netem" {
            Degrade::Netem
        } else {
            Degrade::TokenBucket
        };
        let net = Net::Namespaces {
            tag: tag.clone(),
            members: args.members as usize,
            degrade,
        };
        return runs(&args, net);
    }
    let namespaces = match args.net.as_str() {
        "namespaces" => true,
        "loopback" => false,
        "auto" => match net::namespaces_available() {
            Ok(()) => true,
            Err(e) => {
                println!(
                    "faults: network namespaces are not available ({e}); members on 127.0.0.1, process faults only"
                );
                false
            }
        },
        other => {
            eprintln!("faults: --net must be namespaces, loopback or auto, not `{other}`");
            return ExitCode::from(2);
        }
    };
    if !namespaces {
        let ports = match free_ports(args.members as usize * 2) {
            Ok(p) => p.chunks(2).map(|c| (c[0], c[1])).collect(),
            Err(e) => {
                eprintln!("faults: {e}");
                return ExitCode::from(2);
            }
        };
        return runs(&args, Net::Loopback { ports });
    }
    net::remove_stale();
    let tag = format!("{}{}", net::TAG_PREFIX, std::process::id());
    let net = match net::setup(&tag, args.members as usize) {
        Ok(net) => net,
        Err(e) => {
            eprintln!("faults: making the network namespaces: {e}");
            return ExitCode::from(2);
        }
    };
    let degrade = match net {
        Net::Namespaces {
            degrade: Degrade::Netem,
            ..
        } => "netem",
        _ => {
            println!(
                "faults: this kernel has no netem; a degraded link is a 200 kbit/s token bucket"
            );
            "tbf"
        }
    };
    // The clients must run inside the hub: run this program again there.
    let code = match std::env::current_exe() {
        Ok(me) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &Net::hub_ns(&tag)])
                .arg(me)
                .args(std::env::args_os().skip(1))
                .args(["--inside", &tag, "--degrade", degrade]);
            wait_or_interrupt(cmd)
        }
        Err(e) => {
            eprintln!("faults: cannot find this program: {e}");
            ExitCode::from(2)
        }
    };
    net::teardown(&tag);
    code
}

/// Runs `cmd`; on Ctrl-C (or SIGTERM), stops it. Its exit status.
fn wait_or_interrupt(mut cmd: Command) -> ExitCode {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return ExitCode::from(2);
    };
    runtime.block_on(async {
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("faults: ip netns exec: {e}");
                return ExitCode::from(2);
            }
        };
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ExitCode::from(2),
            };
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return ExitCode::from(status.code().unwrap_or(2).clamp(0, 255) as u8);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = tokio::signal::ctrl_c() => {
                    eprintln!("faults: interrupted; cleaning up");
                    let _ = child.kill();
                    let _ = child.wait();
                    return ExitCode::from(130);
                }
                _ = term.recv() => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return ExitCode::from(143);
                }
            }
        }
    })
}

fn runs(args: &Args, net: Net) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("faults: {e}");
            return ExitCode::from(2);
        }
    };
    let mut failed = 0;
    for seed in args.seed..args.seed + args.runs {
        let rerun = if args.rerun.is_empty() {
            format!(
                "dengine-faults --binary {} --members {} --duration {}s --seed {seed} --faults {}",
                args.binary.display(),
                args.members,
                args.duration.as_secs(),
                args.faults
                    .0
                    .iter()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        } else {
            args.rerun.replace("{seed}", &seed.to_string())
        };
        let settings = Settings {
            binary: args.binary.to_string_lossy().into_owned(),
            members: args.members as usize,
            duration: args.duration,
            seed,
            kinds: args.faults.0.clone(),
            results: args.results.clone(),
            rerun: rerun.clone(),
        };
        println!(
            "faults: run with seed {seed}, {} members, {} s",
            args.members,
            args.duration.as_secs()
        );
        match runtime.block_on(run::run(&settings, net.clone())) {
            Ok(outcome) => {
                for line in &outcome.summary {
                    println!("faults: seed {seed}: {line}");
                }
                if outcome.violations.is_empty() {
                    println!("faults: seed {seed}: passed");
                } else {
                    failed += 1;
                    println!(
                        "faults: seed {seed}: FAILED with {} violations:",
                        outcome.violations.len()
                    );
                    for v in &outcome.violations {
                        println!("  {}", shorten(v));
                    }
                    println!("faults: rerun with: {rerun}");
                }
            }
            Err(e) => {
                println!("faults: seed {seed}: the run could not go on: {e}");
                println!("faults: rerun with: {rerun}");
                return ExitCode::from(2);
            }
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `n` different ports on 127.0.0.1 that nobody listens on now: every
/// listener is held until all are picked, so no port comes twice.
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("finding a free port on 127.0.0.1: {e}"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("finding a free port on 127.0.0.1: {e}"))
}

/// A violation for the terminal: a checker's long explanation cut to its
/// first and last lines (the whole text is in the run's evidence).
fn shorten(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= 24 {
        return text.to_string();
    }
    let mut out: Vec<String> = lines[..4].iter().map(|l| l.to_string()).collect();
    out.push(format!(
        "  ... ({} lines, all in violations.txt)",
        lines.len() - 20
    ));
    out.extend(lines[lines.len() - 16..].iter().map(|l| l.to_string()));
    out.join("\n")
}

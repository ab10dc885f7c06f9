//! `dengine-sim`: runs seeded simulations and reports failing seeds.
//!
//! ```text
//! dengine-sim --seeds N [--start S] [--nodes 3|5] [--steps K] [--threads T]
//! dengine-sim --seed S [--nodes 3|5] [--steps K] [--trace] [--keep-going]
//! ```
//!
//! A seed stops at the step that first breaks a safety property;
//! `--keep-going` runs it on to its end instead (to see what followed).

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dengine_sim::{SimOptions, SimReport, run_kv};

struct Args {
    seeds: u64,
    start: u64,
    single: Option<u64>,
    nodes: usize,
    steps: u64,
    trace: bool,
    threads: usize,
    keep_going: bool,
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: dengine-sim --seeds N [--start S] [--nodes 3|5] [--steps K] [--threads T]\n       dengine-sim --seed S [--nodes 3|5] [--steps K] [--trace] [--keep-going]"
    );
    ExitCode::from(2)
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        seeds: 100,
        start: 0,
        single: None,
        nodes: 3,
        steps: SimOptions::new(0).steps,
        trace: false,
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        keep_going: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = |name: &str| -> Result<u64, String> {
            it.next()
                .ok_or(format!("{name} needs a value"))?
                .parse::<u64>()
                .map_err(|e| format!("{name}: {e}"))
        };
        match flag.as_str() {
            "--seeds" => a.seeds = val("--seeds")?,
            "--start" => a.start = val("--start")?,
            "--seed" => a.single = Some(val("--seed")?),
            "--nodes" => a.nodes = val("--nodes")? as usize,
            "--steps" => a.steps = val("--steps")?,
            "--threads" => a.threads = val("--threads")?.max(1) as usize,
            "--trace" => a.trace = true,
            "--keep-going" => a.keep_going = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.nodes == 0 || a.nodes > 7 {
        return Err("--nodes must be between 1 and 7".to_string());
    }
    Ok(a)
}

fn options(a: &Args, seed: u64) -> SimOptions {
    let mut o = SimOptions::new(seed);
    o.nodes = a.nodes;
    o.steps = a.steps;
    o.trace = a.trace;
    o.stop_at_first_violation = !a.keep_going;
    o
}

fn replay_command(a: &Args, seed: u64) -> String {
    format!(
        "cargo xtask sim --seed {seed} --nodes {} --steps {} --trace",
        a.nodes, a.steps
    )
}

fn describe_failure(r: &SimReport) -> String {
    let mut s = String::new();
    for v in &r.violations {
        s.push_str(&format!("    {v}\n"));
    }
    if r.linearizability != dengine_sim::linearizability::CheckResult::Ok {
        s.push_str(&format!("    linearizability: {:?}\n", r.linearizability));
    }
    s
}

fn main() -> ExitCode {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("dengine-sim: {e}");
            return usage();
        }
    };
    if let Some(seed) = a.single {
        let r = run_kv(&options(&a, seed));
        for line in &r.trace {
            println!("{line}");
        }
        println!(
            "seed {seed}: {} steps{}, {:.1}s virtual, ops ok {} failed {} unknown {}, faults: {}",
            r.steps,
            if r.stopped_at_violation {
                " (stopped at the first violation)"
            } else {
                ""
            },
            r.virtual_us as f64 / 1e6,
            r.ops_ok,
            r.ops_failed,
            r.ops_unknown,
            r.profile.describe()
        );
        if r.passed() {
            println!("sim: 1 seeds, 0 failed, {} total steps", r.steps);
            return ExitCode::SUCCESS;
        }
        print!("{}", describe_failure(&r));
        for line in &r.final_state {
            println!("  {line}");
        }
        println!("sim: 1 seeds, 1 failed, {} total steps", r.steps);
        return ExitCode::FAILURE;
    }

    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(a.start));
    let end = a.start + a.seeds;
    let total_steps = Arc::new(AtomicU64::new(0));
    let failures: Arc<Mutex<Vec<(u64, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let args = Arc::new(a);
    let handles: Vec<_> = (0..args.threads)
        .map(|_| {
            let (next, total_steps, failures, args) = (
                next.clone(),
                total_steps.clone(),
                failures.clone(),
                args.clone(),
            );
            std::thread::spawn(move || {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        break;
                    }
                    let r = run_kv(&options(&args, seed));
                    total_steps.fetch_add(r.steps, Ordering::Relaxed);
                    if !r.passed() {
                        let text = format!(
                            "FAIL seed {seed} ({}){}:\n{}    replay: {}",
                            r.profile.describe(),
                            if r.stopped_at_violation {
                                format!(", stopped at step {}", r.steps)
                            } else {
                                String::new()
                            },
                            describe_failure(&r),
                            replay_command(&args, seed)
                        );
                        if let Ok(mut f) = failures.lock() {
                            f.push((seed, text));
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        if h.join().is_err() {
            eprintln!("dengine-sim: a worker panicked");
            return ExitCode::FAILURE;
        }
    }
    let mut failures = match failures.lock() {
        Ok(f) => f.clone(),
        Err(_) => return ExitCode::FAILURE,
    };
    failures.sort();
    for (_, text) in &failures {
        println!("{text}");
    }
    let secs = started.elapsed().as_secs_f64();
    let steps = total_steps.load(Ordering::Relaxed);
    println!(
        "{:.1}s wall, {:.0} steps/s, {:.0} seeds/min on {} threads",
        secs,
        steps as f64 / secs,
        args.seeds as f64 * 60.0 / secs,
        args.threads
    );
    println!(
        "sim: {} seeds, {} failed, {} total steps",
        args.seeds,
        failures.len(),
        steps
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

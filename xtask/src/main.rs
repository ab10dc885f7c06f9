//! Workspace automation, run as `cargo xtask <command>` (the alias lives in
//! `.cargo/config.toml`).
//!
//! Each command is a module; [`step`] holds what they share: running a
//! sequence of named commands from the workspace root, timing each and
//! stopping at the first failure.

mod bench;
mod ci;
mod codegen;
mod compare;
mod faults;
mod sim;
mod step;
mod sysdeps;
mod torture;

use std::process::ExitCode;

/// What `cargo xtask` without a valid command prints.
const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  ci      run every check: generated code up to date, rustfmt, clippy, the
          tests, the doctests, rustdoc and a batch of simulation seeds
  codegen regenerate the gRPC code of crates/dengine-proto from proto/:
            codegen [--check]
  bench   run the 3-node in-process benchmark (release):
            bench [--storage memory,sled,rocksdb] [--proposers 1,16,256] [--seconds N] [--runs N] [--sm count|kv]
          and dengine against etcd (3 local members each, dengine-bench; writes benches/results/):
            bench compare [--seconds N] [--rounds N] [--quick] [--systems etcd,dengine]
  torture run the runtime torture test (real nodes, injected faults), release:
            torture [--seeds N] [--start S] [--nodes 3|5] [--seconds T]
  faults  run a dengine cluster of real processes under a seeded nemesis
          (network namespaces when root) and check linearizability, watches,
          the bank's total and HashKV (release):
            faults [--duration 10m] [--seed S] [--runs N] [--members 3|5]
                   [--faults kill,pause,isolate,split,one-way,degrade,transfer,replace]
                   [--net namespaces|loopback|auto]
  sim     run the deterministic cluster simulator:
            sim --seeds N [--start S] [--nodes 3|5] [--steps K] [--threads T]
            sim --seed S [--nodes 3|5] [--steps K] --trace
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["ci"] => ci::run(),
        ["codegen", rest @ ..] => {
            codegen::run(&rest.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        }
        ["bench", "compare", rest @ ..] => {
            compare::run(&rest.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        }
        ["bench", rest @ ..] => bench::run(&rest.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
        ["faults", rest @ ..] => {
            faults::run(&rest.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        }
        ["sim", rest @ ..] => sim::run(&rest.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
        ["torture", rest @ ..] => {
            torture::run(&rest.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        }
        ["help" | "-h" | "--help"] => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        [] => usage_error(None),
        _ => usage_error(Some(&args.join(" "))),
    }
}

/// Prints the usage (after what was wrong, if anything) and returns exit
/// status 2.
fn usage_error(bad: Option<&str>) -> ExitCode {
    if let Some(bad) = bad {
        eprintln!("error: unknown command or arguments: `{bad}`\n");
    }
    eprint!("{USAGE}");
    ExitCode::from(2)
}

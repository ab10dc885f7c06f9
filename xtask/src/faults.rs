//! `cargo xtask faults [--duration D] [--seed S] [--runs N] [--members 3|5]
//! [--faults kinds] [--net namespaces|loopback|auto]`: the fault harness
//! (`crates/dengine-faults`) against release builds of `dengine serve`.
//! `cargo xtask ci` runs a short run of it on the debug build its tests
//! made. Network faults need root and network namespaces; without them
//! the harness says so and makes process faults only.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use crate::step::{self, Step};

/// The short run in `cargo xtask ci`: every fault kind (the nemesis makes
/// each once before it picks at random), 3 members.
const CI_ARGS: [&str; 6] = ["--duration", "100s", "--seed", "1", "--members", "3"];

/// Where cargo puts its builds.
fn target_dir() -> PathBuf {
    let root = step::workspace_root();
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map_or_else(|| root.join("target"), |d| root.join(d))
}

/// The harness as a step: `profile`'s `dengine-faults` against that
/// profile's `dengine`, with `args`.
fn harness(profile: &str, args: &[String]) -> Step {
    let bin = target_dir().join(profile);
    let mut command = Command::new(bin.join("dengine-faults"));
    command
        .current_dir(step::workspace_root())
        .arg("--binary")
        .arg(bin.join("dengine"))
        .args(args);
    Step {
        name: "faults",
        command,
    }
}

/// The steps of the short run: build the binaries, then run. The build
/// names the test targets too: with `--bins` alone the dev-dependencies
/// drop out of the feature resolution, which changes the fingerprint of
/// librocksdb-sys's build script and compiled RocksDB's C++ a third time
/// (8 minutes on 2 cores); with them, the test build's artefacts serve.
pub fn ci_steps() -> Vec<Step> {
    crate::sysdeps::ensure_iproute2();
    let args: Vec<String> = CI_ARGS.iter().map(|s| s.to_string()).collect();
    let mut run = harness("debug", &args);
    run.command.args([
        "--rerun",
        "cargo xtask faults --duration 100s --members 3 --seed {seed}",
    ]);
    vec![
        Step::cargo(
            "faults build",
            &[
                "build",
                "--workspace",
                "--all-features",
                "--bins",
                "--tests",
            ],
        ),
        run,
    ]
}

/// Runs the harness with the user's arguments on release builds.
pub fn run(args: &[String]) -> ExitCode {
    crate::sysdeps::ensure_iproute2();
    let mut rerun = vec!["cargo xtask faults".to_string()];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--seed" {
            it.next();
            continue;
        }
        rerun.push(a.clone());
    }
    rerun.push("--seed {seed}".into());
    let mut run = harness("release", args);
    run.command.args(["--rerun", &rerun.join(" ")]);
    step::run_all(
        "xtask faults",
        vec![
            Step::cargo(
                "build",
                &[
                    "build",
                    "--release",
                    "-p",
                    "dengine",
                    "--bin",
                    "dengine",
                    "-p",
                    "dengine-faults",
                ],
            ),
            run,
        ],
    )
}

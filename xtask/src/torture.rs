//! `cargo xtask torture [--seeds N] [--start S] [--nodes 3|5] [--seconds T]`:
//! the runtime torture test (`crates/dengine/tests/torture`) for longer
//! than `cargo xtask ci` runs it (3 seeds of 4 seconds), in release mode.
//! Each seed prints what it did; a failing seed prints the command that
//! runs it again.

use std::process::ExitCode;

use crate::step::{self, Step};

/// Runs the torture test with the user's settings.
pub fn run(args: &[String]) -> ExitCode {
    let mut step = Step::cargo(
        "torture",
        &[
            "test",
            "--release",
            "--package",
            "dengine",
            "--features",
            "sled",
            "--test",
            "torture",
            "--",
            "--nocapture",
        ],
    );
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let var = match flag.as_str() {
            "--seeds" => "DENGINE_TORTURE_SEEDS",
            "--start" => "DENGINE_TORTURE_START",
            "--nodes" => "DENGINE_TORTURE_NODES",
            "--seconds" => "DENGINE_TORTURE_SECONDS",
            other => {
                eprintln!("torture: unknown argument `{other}`");
                return ExitCode::from(2);
            }
        };
        let Some(value) = it.next().filter(|v| v.parse::<u64>().is_ok()) else {
            eprintln!("torture: {flag} needs a number");
            return ExitCode::from(2);
        };
        step = step.env(var, value);
    }
    step::run_all("xtask torture", vec![step])
}

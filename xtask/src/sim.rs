//! `cargo xtask sim ...`: runs the deterministic cluster simulator
//! (`crates/dengine-sim`) in release mode, passing the arguments through.
//!
//! ```text
//! cargo xtask sim --seeds N [--start S] [--nodes 3|5] [--steps K]
//! cargo xtask sim --seed S [--nodes 3|5] [--steps K] --trace
//! ```

use std::process::ExitCode;

use crate::step::{self, Step};

/// Seeds `cargo xtask ci` runs: a few minutes on 2 cores at most.
pub const CI_SEEDS: &str = "400";

/// The simulator as a step with these arguments.
pub fn step(args: &[&str]) -> Step {
    let mut all = vec![
        "run",
        "--release",
        "--quiet",
        "--package",
        "dengine-sim",
        "--bin",
        "dengine-sim",
        "--",
    ];
    all.extend_from_slice(args);
    Step::cargo("sim", &all)
}

/// Runs the simulator with the user's arguments.
pub fn run(args: &[String]) -> ExitCode {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    step::run_all("xtask sim", vec![step(&args)])
}

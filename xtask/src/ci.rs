//! `cargo xtask ci`: the one test command, run locally and by `.ci/run`.
//!
//! In order, stopping at the first failure: the generated gRPC code is up
//! to date (`cargo xtask codegen --check`), rustfmt, clippy (warnings are
//! errors), the tests (with cargo-nextest when installed, else `cargo test`),
//! the doctests (nextest does not run them), rustdoc (warnings are errors),
//! a short run of the fault harness (real processes, every fault kind), and
//! a batch of deterministic simulation seeds (3- and 5-node clusters).

use std::process::{ExitCode, Stdio};

use crate::step::{self, Step};

/// Runs every check.
pub fn run() -> ExitCode {
    if let Err(e) = crate::sysdeps::ensure_libclang() {
        eprintln!("ci: {e}");
        return ExitCode::FAILURE;
    }
    for ensure in [
        crate::sysdeps::ensure_etcdctl,
        crate::sysdeps::ensure_etcd,
        crate::sysdeps::ensure_protoc,
    ] {
        if let Err(e) = ensure() {
            eprintln!("ci: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut steps = vec![
        crate::codegen::check_step(),
        Step::cargo("fmt", &["fmt", "--all", "--check"]),
        no_native_link(Step::cargo(
            "clippy",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--",
                "-D",
                "warnings",
            ],
        )),
    ];
    if has_nextest() {
        steps.push(Step::cargo(
            "tests",
            &[
                "nextest",
                "run",
                "--workspace",
                "--all-features",
                "--no-fail-fast",
            ],
        ));
        steps.push(Step::cargo(
            "doctests",
            &["test", "--workspace", "--all-features", "--doc"],
        ));
    } else {
        println!(
            "cargo-nextest not found: running the tests with `cargo test` (doctests included)"
        );
        steps.push(Step::cargo(
            "tests",
            &["test", "--workspace", "--all-features"],
        ));
    }
    steps.push(no_native_link(
        Step::cargo(
            "docs",
            &["doc", "--workspace", "--all-features", "--no-deps"],
        )
        .env("RUSTDOCFLAGS", "-D warnings"),
    ));
    steps.extend(crate::faults::ci_steps());
    steps.push(crate::sim::step(&[
        "--seeds",
        crate::sim::CI_SEEDS,
        "--nodes",
        "3",
    ]));
    steps.push(crate::sim::step(&[
        "--seeds", "100", "--start", "1000000", "--nodes", "5",
    ]));
    step::run_all("ci", steps)
}

/// For steps that check but never link (clippy, rustdoc): tells
/// librocksdb-sys the library is prebuilt, so it does not compile RocksDB's
/// C++ a second time. Cargo runs build scripts of check builds apart from
/// those of test builds, and RocksDB takes about 12 minutes to compile on
/// two cores; nothing is linked in these steps, so no library is needed.
fn no_native_link(step: Step) -> Step {
    let dir = std::env::temp_dir();
    let dir = dir.to_string_lossy();
    step.env("ROCKSDB_LIB_DIR", &dir).env("ROCKSDB_STATIC", "1")
}

/// Whether `cargo nextest` is installed and runs.
fn has_nextest() -> bool {
    step::cargo()
        .args(["nextest", "--version"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

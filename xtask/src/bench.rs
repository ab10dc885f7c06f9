//! `cargo xtask bench [--storage memory,sled,rocksdb] [--proposers 1,16,256] [--seconds N] [--runs N]`:
//! runs the in-process 3-node benchmark (`crates/dengine/examples/bench.rs`)
//! in release mode for each storage backend. RocksDB needs a release build
//! of RocksDB (~12 minutes the first time).

use std::process::ExitCode;

use crate::step::{self, Step};

/// Runs the benchmark.
pub fn run(args: &[String]) -> ExitCode {
    let mut storages = vec!["memory".to_string(), "sled".to_string()];
    let mut pass = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--storage" {
            match it.next() {
                Some(v) => storages = v.split(',').map(str::to_string).collect(),
                None => {
                    eprintln!("bench: --storage needs a value");
                    return ExitCode::from(2);
                }
            }
        } else {
            pass.push(a.clone());
        }
    }
    let steps = storages
        .iter()
        .map(|s| {
            let mut all: Vec<&str> = vec![
                "run",
                "--release",
                "--quiet",
                "--package",
                "dengine",
                "--features",
                if s == "rocksdb" { "rocksdb" } else { "sled" },
                "--example",
                "bench",
                "--",
                "--storage",
                s.as_str(),
            ];
            all.extend(pass.iter().map(String::as_str));
            Step::cargo("bench", &all)
        })
        .collect();
    step::run_all("xtask bench", steps)
}

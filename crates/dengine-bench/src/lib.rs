//! `dengine-bench`: a load generator for etcd's v3 API, modelled on etcd's
//! `tools/benchmark` so its users know the flags. It speaks only etcd's
//! API (etcd's protos: the closed-loop workloads' unary calls made with
//! `h2` directly, see [`lean`]; watch and lease streams with tonic's
//! generated clients), so the very same code drives a dengine cluster and
//! an etcd cluster: only the endpoints differ.
//!
//! ```text
//! dengine-bench --endpoints 127.0.0.1:2379 --conns 8 --clients 256 --total 100000 put
//! dengine-bench --clients 64 --duration 10s range --consistency s
//! dengine-bench --clients 64 mixed --read-ratio 0.9
//! dengine-bench --conns 10 watch --watchers 1000 --put-rate 100
//! dengine-bench --clients 16 lease-keepalive --leases 1000
//! ```
//!
//! It reports throughput, latency percentiles (an HDR histogram), errors
//! by kind, its own CPU per operation, and the CPU per operation and peak
//! resident memory of each server process given with `--pids` (read from
//! /proc: on a small machine the load generator competes with the
//! servers, so a server's own CPU is the fairer figure). `--json` prints
//! one machine-readable line.

#![deny(missing_docs)]

pub mod args;
pub mod keys;
pub mod lean;
pub mod load;
pub mod procfs;
pub mod report;
pub mod watch;

pub use args::Cli;
pub use load::run;
pub use report::Report;

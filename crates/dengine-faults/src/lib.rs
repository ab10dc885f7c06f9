//! A fault harness for `dengine serve`: real member processes, each in a
//! network namespace of its own, under a seeded nemesis (partitions, one-way
//! cuts, degraded links, SIGKILL and restart, SIGSTOP pauses, leadership
//! moves), loaded by etcd clients (the `etcd-client` crate) doing register
//! operations, bank transfers and watches. At the end the history is
//! checked: linearizability of every register (with unknown outcomes),
//! serializable reads that never go back in time, the bank's total on
//! every read, every watcher's events against the store's history, and
//! the same HashKV on every member.
//!
//! Run it with `cargo xtask faults` (see the README); `cargo xtask ci`
//! runs a short run with every fault kind.

#![deny(missing_docs)]

pub mod check;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod run;
pub mod workload;

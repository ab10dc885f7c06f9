//! # dengine-storage-rocksdb: durable Raft storage on RocksDB
//!
//! **Status: planned.** This crate is a placeholder; it contains no code yet.
//! Its implementation is tracked by the issue "Node runtime on tokio, durable
//! storage on sled and RocksDB".
//!
//! ## Place in the workspace
//!
//! It sits on top of `dengine-core` and below the `dengine` facade:
//!
//! ```text
//! dengine-core  <-  dengine-storage-rocksdb  <-  dengine
//! ```
//!
//! It will implement the core's [`dengine_core::LogStorage`] trait (log
//! entries, hard state and snapshots) on [RocksDB](https://rocksdb.org), as
//! an alternative to `dengine-storage-sled`.
#![deny(missing_docs)]

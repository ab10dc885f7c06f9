//! # dengine-storage-sled: durable Raft storage on sled
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
//! dengine-core  <-  dengine-storage-sled  <-  dengine
//! ```
//!
//! It will implement the core's [`dengine_core::LogStorage`] trait (log
//! entries, hard state and snapshots) on the [sled](https://docs.rs/sled)
//! embedded database, as a pure-Rust alternative to
//! `dengine-storage-rocksdb`.
#![deny(missing_docs)]

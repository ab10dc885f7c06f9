//! # dengine: a strongly-consistent Raft engine
//!
//! **Status: planned.** This facade crate is a placeholder; it contains no
//! code yet. Today the protocol lives in `dengine-core`, a deterministic
//! state machine with no I/O. The node runtime that will live here is
//! tracked by the issue "Node runtime on tokio, durable storage on sled and
//! RocksDB".
//!
//! ## Place in the workspace
//!
//! This is the crate applications are meant to depend on, at the top of the
//! layering:
//!
//! ```text
//! dengine-core  <-  dengine-storage-sled, dengine-storage-rocksdb, dengine-grpc  <-  dengine
//! ```
//!
//! It will drive the core on tokio (timers, persistence and networking) and
//! expose an embeddable API over the storage and gRPC crates.
#![deny(missing_docs)]

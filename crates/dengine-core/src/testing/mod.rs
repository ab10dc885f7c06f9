//! Test support: an in-memory log store and a hand-stepped cluster over an
//! in-memory network. Enabled by the `testing` feature, so that storage
//! crates, the runtime and users can reuse them.

mod cluster;
mod mem_storage;

pub use cluster::{Cluster, Envelope, TestNode, log_terms, test_config};
pub use mem_storage::{MemStorage, MemStorageCore};

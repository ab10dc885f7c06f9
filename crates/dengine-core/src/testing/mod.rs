//! Test support: an in-memory log store and a hand-stepped cluster over an
//! in-memory network. Enabled by the `testing` feature, so that storage
//! crates, the runtime and users can reuse them.

mod cluster;
pub mod fuzz;
pub mod store_suite;

pub use crate::storage::{MemStorage, MemStorageCore};
pub use cluster::{Cluster, Envelope, TestNode, log_terms, test_config};

//! # dengine-runtime: the node runtime of dengine
//!
//! Most users depend on the `dengine` facade, which re-exports this crate.
//! Embed a replicated state machine in your service: implement
//! [`StateMachine`], start a [`Node`] with a [`NodeBuilder`], and call
//! [`Node::propose`] and [`Node::read`]. The protocol is
//! [`dengine_core`]'s deterministic, sans-IO Raft (re-exported as
//! [`core`]); this crate runs it on tokio with durable storage.
//!
//! ```
//! use dengine_runtime::{Config, NodeBuilder, NodeId, ReadPolicy, StateMachine, StorageKind};
//!
//! /// Counts the bytes it was sent.
//! #[derive(Default)]
//! struct Counter(u64);
//!
//! impl StateMachine for Counter {
//!     type Response = u64;
//!     fn apply(&mut self, _at: dengine_runtime::EntryId, command: &[u8]) -> u64 {
//!         self.0 += command.len() as u64;
//!         self.0
//!     }
//!     fn snapshot(&mut self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
//!         out.write_all(&self.0.to_le_bytes())
//!     }
//!     fn restore(&mut self, input: &mut dyn std::io::Read) -> std::io::Result<()> {
//!         let mut b = [0u8; 8];
//!         input.read_exact(&mut b)?;
//!         self.0 = u64::from_le_bytes(b);
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), dengine_runtime::Error> {
//! let config = Config { storage: StorageKind::Memory, ..Config::default() };
//! let node = NodeBuilder::new(config, Counter::default())
//!     .initial_members([1].map(NodeId))
//!     .build().await?;
//! node.wait_for(std::time::Duration::from_secs(5), |m| m.leader.is_some()).await?;
//! let out = node.propose(b"hello".to_vec()).await?;
//! assert_eq!(out.response, 5);
//! let total = node.read(ReadPolicy::Linearizable, |c: &Counter| c.0).await?;
//! assert_eq!(total, 5);
//! node.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! ## Storage
//! Pick the log store with [`Config::storage`]: `memory` (always there),
//! `sled` (feature `sled`, the default: builds in seconds, no system
//! packages), `rocksdb` (feature `rocksdb`: ~12 minutes to build from
//! source, needs libclang).
//!
//! ## Place in the workspace
//! ```text
//! dengine-core <- dengine-storage-* <- dengine-runtime <- dengine-kv <- dengine-grpc <- dengine
//! ```
//! It knows nothing of the key-value store, gRPC or the server above it.
#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod error;
#[cfg(feature = "failpoints")]
mod failpoints;
mod node;
mod runtime;
pub mod snapshot;
pub mod state_machine;
pub mod transport;
pub mod typed;

pub use config::{Config, StorageKind};
pub use dengine_core as core;
pub use dengine_core::{EntryId, LogIndex, NodeId, Term};
pub use error::Error;
pub use node::{Node, NodeBuilder, Proposed};
/// Gives the node's metrics their help text (see the `metrics` facade);
/// call once after installing a recorder, before the first node starts.
pub use runtime::telemetry::describe as describe_metrics;
pub use runtime::{Metrics, ReadPolicy};
pub use state_machine::{SnapshotView, StateMachine};
pub use transport::{InMemoryNetwork, SnapshotDone, Transport, Unreachable};
pub use typed::{Typed, TypedStateMachine};

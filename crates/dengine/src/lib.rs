//! # dengine: a strongly-consistent Raft engine for Rust
//!
//! Embed a replicated state machine in your service: implement
//! [`StateMachine`], start a [`Node`] with a [`NodeBuilder`], and call
//! [`Node::propose`] and [`Node::read`]. The protocol is
//! [`dengine_core`]'s deterministic, sans-IO Raft (re-exported as
//! [`core`]), run on tokio with durable storage by [`dengine_runtime`].
//!
//! ```
//! use dengine::{Config, NodeBuilder, NodeId, ReadPolicy, StateMachine, StorageKind};
//!
//! /// Counts the bytes it was sent.
//! #[derive(Default)]
//! struct Counter(u64);
//!
//! impl StateMachine for Counter {
//!     type Response = u64;
//!     fn apply(&mut self, _at: dengine::EntryId, command: &[u8]) -> u64 {
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
//! # async fn main() -> Result<(), dengine::Error> {
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
//! Pick the backend with [`Config::storage`]: `memory` (always there),
//! `sled` (feature `sled`, the default: builds in seconds, no system
//! packages; the log in dengine's write-ahead log, the key-value store on
//! sled), `rocksdb` (feature `rocksdb`: ~12 minutes to build from
//! source, needs libclang).
//! ## The crates behind this one
//! This crate is a facade: it re-exports the layers below and picks the
//! storage engines with its features.
//!
//! ```text
//! dengine-core <- dengine-storage-* <- dengine-runtime <- dengine-kv <- dengine-grpc <- dengine
//! ```
//!
//! - [`core`] (`dengine-core`): the Raft protocol, sans-IO, and the
//!   storage traits;
//! - `dengine-runtime`: the node on tokio (everything at this crate's
//!   root: [`Node`], [`NodeBuilder`], [`Config`], [`StateMachine`], ...);
//! - [`kv`] (`dengine-kv`): the replicated key-value store;
//! - `grpc` (`dengine-grpc`, feature `server`): the peer transport over
//!   gRPC and etcd's v3 API, as `dengine serve` runs them.
#![deny(missing_docs)]

pub use dengine_core as core;
#[cfg(feature = "server")]
pub use dengine_grpc as grpc;
pub use dengine_kv as kv;
pub use dengine_runtime::{
    Config, EntryId, Error, InMemoryNetwork, LogIndex, Metrics, Node, NodeBuilder, NodeId,
    Proposed, ReadPolicy, SnapshotDone, SnapshotView, StateMachine, StorageKind, Term, Transport,
    Typed, TypedStateMachine, Unreachable, describe_metrics,
};
pub use dengine_runtime::{config, error, snapshot, state_machine, transport, typed};

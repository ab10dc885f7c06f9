//! The replicated key-value store the standalone server runs: etcd's v3
//! MVCC data model (revisions; per key create and mod revisions and a
//! version; the history back to the last compaction; ranges; conditional
//! transactions; leases; the events watchers see) as a
//! [`dengine_runtime::StateMachine`] whose state lives on the node's
//! storage backend.
//!
//! Writes are [`KvCommand`]s proposed with [`KvCommand::encode`]; reads
//! run on the state machine under a [`dengine_runtime::ReadPolicy`]:
//!
//! ```
//! use dengine_kv::{KvCommand, KvStateMachine, PutRequest, RangeRequest};
//! use dengine_runtime::{Config, NodeBuilder, NodeId, ReadPolicy, StorageKind};
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config { storage: StorageKind::Memory, ..Config::default() };
//! let kv = KvStateMachine::open(&config)?;
//! let node = NodeBuilder::new(config, kv).initial_members([1].map(NodeId)).build().await?;
//! node.wait_for(std::time::Duration::from_secs(5), |m| m.leader.is_some()).await?;
//! let put = KvCommand::Put(PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() });
//! let done = node.propose(put.encode()).await?.response?;
//! assert_eq!(done.revision, 2);
//! let got = node
//!     .read(ReadPolicy::Linearizable, |kv: &KvStateMachine| kv.get(b"k"))
//!     .await??;
//! assert_eq!(got.map(|kv| kv.value), Some(b"v".to_vec()));
//! node.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! ## History
//! As etcd's MVCC store, the store keeps every key's history: each
//! command that changes something takes the next revision, and each of its
//! writes (a put, or the delete of a key: a tombstone) is a record keyed
//! by that revision and a sub revision, so a range can read the keys as
//! they were at any revision back to the last compaction
//! ([`KvCommand::Compact`]), which forgets the records no later read can
//! see. Reads below the compacted revision fail with
//! [`KvError::Compacted`], above the current one with
//! [`KvError::FutureRevision`].
//!
//! ## In memory and on disk
//! An in-memory index (as etcd's) maps each key to the revisions of its
//! writes and its current counters; values live only in the records, in
//! a database of their own under `data_dir/kv` (the record log,
//! [`LogBackend`], for the default storage kind, where each record's
//! place on disk is kept in memory; RocksDB, as
//! [`dengine_runtime::Config::storage`] says; sled for a store made on it
//! before; an ordered map for a node in memory), so memory grows with the
//! keys and retained revisions, not the size of the values. Each record is sealed
//! with a CRC32; all are read and checked when the store opens, to build
//! the index. The records of a batch of entries go in one atomic write
//! together with the index they reach, without fsync: the Raft log is the
//! durable record, and after a crash the node replays the log from the
//! index the store says it holds (or restores the newest snapshot if the
//! store is behind it). Snapshots stream every record; a restore first
//! forgets the stored index, so a crash in the middle of one is repaired
//! by restoring again.
//!
//! ## Formats
//! What the store writes outlives the program that wrote it, so each
//! format carries a version, and a version this program does not read is
//! refused with an error naming it (never guessed at): commands (a first
//! byte, [`COMMAND_VERSION`], as in [`dengine_runtime::typed`]), each
//! record and the store's own record in the database (a first byte inside
//! the CRC32 seal), the record log's segments (see `LogBackend`), the
//! sled database's layout (see `SledBackend`) and
//! snapshots (`DKV` and a version digit). A database or snapshot of the
//! format before the history was kept is converted when it is read, into
//! a history compacted at its revision. A database or snapshot from before
//! versions is refused; the node rebuilds the database from its log or a
//! snapshot. Changing a format means adding a version and keeping
//! the old one readable; fixtures of today's bytes in the tests catch a
//! change that forgets to.

#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod alarms;
mod auth;
mod backend;
mod check;
mod events;
mod index;
mod lease;
mod members;
mod merged;
mod pending;
mod record;
mod snapshot;
mod store;
mod telemetry;
mod types;

pub use alarms::{AlarmKind, AlarmRequest, grows};
pub use auth::{
    AuthError, AuthRequest, AuthState, AuthView, AuthorizedCommand, DEFAULT_TOKEN_TTL, Need,
    PermKind, Permission, ROOT, Role, User,
};
#[cfg(feature = "rocksdb")]
pub use backend::RocksBackend;
#[cfg(feature = "sled")]
pub use backend::SledBackend;
pub use backend::{BackendReader, Change, ChangeRef, KvBackend, LogBackend, MemoryBackend, Visit};
pub use events::{Event, EventKind, EventSink, History, HistoryHash, LeaseChange};
pub use members::{MemberInfo, MemberList, encode_context};
pub use store::KvStateMachine;
pub use telemetry::describe as describe_metrics;
pub use types::*;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod snapshot_view_tests;

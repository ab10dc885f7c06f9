//! # dengine-core: the Raft protocol with no I/O
//!
//! This crate is the whole Raft protocol as a deterministic state machine.
//! It never touches a socket, a file, a clock, a thread or a random source
//! it was not seeded with: the runtime feeds it inputs and carries out what
//! it asks for. The same code therefore runs under tokio in production and
//! in a single-threaded simulator in tests, with identical behaviour for
//! identical inputs.
//!
//! ## Inputs
//! A [`RawNode`] takes:
//! - [`RawNode::tick`]: one unit of logical time (elections, heartbeats,
//!   leases and timeouts are counted in ticks);
//! - [`RawNode::step`]: a message from a peer;
//! - [`RawNode::propose`] / [`RawNode::propose_batch`] /
//!   [`RawNode::propose_conf_change`]: proposals (leader only);
//! - [`RawNode::read_index`]: a linearizable read request;
//! - [`RawNode::transfer_leader`], [`RawNode::campaign`];
//! - completions: [`RawNode::on_persisted`], [`RawNode::on_applied`],
//!   [`RawNode::snapshot_created`], [`RawNode::report_snapshot`].
//!
//! ## Outputs: the [`Ready`] contract
//! After inputs, [`RawNode::ready`] returns what must happen. The rules,
//! which are what makes the node safe:
//!
//! 1. **`Ready::persist`** is a [`PersistBatch`]: a snapshot to install,
//!    entries to append (truncating any conflicting suffix) and a hard
//!    state. Batches are made durable **in the order they were handed
//!    out**. When one is durable (fsync), report it with
//!    `on_persisted(batch.persisted())`; the node counts its own entries
//!    toward commit only then.
//! 2. **`PersistBatch::messages`** may be sent only after their batch and
//!    every earlier batch are durable: they are acknowledgements of entries
//!    and votes, which promise durability. The core decides which messages
//!    these are; the runtime only has to respect the split.
//! 3. **`Ready::messages`** may be sent at once, in parallel with the disk
//!    write: the leader's appends to followers (as etcd does), heartbeats,
//!    pre-votes. Nothing they say depends on the pending write.
//! 4. **`Ready::committed_entries`** are committed and durable on this node;
//!    apply them in order, in parallel with later writes, and report
//!    progress with `on_applied`. A membership change among them is already
//!    in force; `Ready::conf_state` is the membership to store with the
//!    applied state.
//! 5. **`Ready::read_states`**: a read with `Ok(index)` may be served once
//!    the state machine applied `index`.
//! 6. **`Ready::snapshot_request`** / **`Ready::compact_to`**: take a
//!    snapshot at the given index (the last entry handed out, so once every
//!    committed entry handed out so far is applied) and report it; delete
//!    log entries up to `compact_to`. A failed snapshot is asked for again
//!    after a backoff. `RawNode::request_snapshot` asks for one at the next
//!    `Ready` whatever the threshold (a runtime whose state machine keeps
//!    its state durably compacts without writing it, and asks for a
//!    snapshot with the data when a follower needs one).
//!
//! Several `Ready`s may be in flight at once (pipelining): take the next one
//! while the disk writes the previous batch.
//!
//! Snapshot data never passes through the core: an
//! [`MessageBody::InstallSnapshot`] carries metadata; the sending runtime
//! streams the data read from its snapshot store, and the receiving runtime
//! holds it until the core hands the metadata back in a `PersistBatch`.
//!
//! ## What is implemented
//! Leader election with randomized timeouts, pre-vote, check-quorum and
//! leader stickiness; pipelined, batched, flow-controlled replication with
//! probe/replicate/snapshot states per follower and fast backtracking;
//! commit by counting only entries of the current term, with a no-op on
//! election; ReadIndex reads batched into heartbeat rounds, and lease reads
//! bounded by a declared clock drift; snapshot requests by policy and log
//! compaction; learners, joint consensus with automatic leave, and
//! leadership transfer.
//!
//! The `testing` feature adds an in-memory log store and an in-memory
//! network for tests of code built on this crate.
#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod codec;
pub mod confchange;
pub mod config;
pub mod error;
mod log;
pub mod message;
pub mod quorum;
mod raft;
pub mod rawnode;
pub mod storage;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tracker;
pub mod types;

/// The shared, reference-counted buffer of [`EntryPayload::Normal`].
pub use bytes::Bytes;
pub use config::Config;
pub use error::{ConfChangeError, Error, Result, StorageError};
pub use message::{AppendRejection, Message, MessageBody, ReadId};
pub use rawnode::{
    PeerStatus, PersistBatch, Persisted, RawNode, ReadPolicy, ReadState, Ready, Status,
    bootstrap_entry,
};
pub use storage::{InitialState, LogStorage, LogStore, MetaStore, StoreIdentity};
pub use types::*;

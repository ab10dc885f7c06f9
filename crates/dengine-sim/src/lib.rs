//! # dengine-sim: deterministic simulation of dengine clusters
//!
//! Runs clusters of [`dengine_core::RawNode`]s in one thread, in virtual
//! time, with every choice (delays, losses, partitions, crashes, client
//! requests, membership changes) drawn from one `u64` seed, so that a
//! failure found once replays exactly.
//!
//! - **Network faults**: loss, duplication, reordering by random delays with
//!   a long tail, symmetric and one-way partitions, isolating the leader.
//! - **The leader chase**: bursts of short terms, each leader cut off (or
//!   crashed) soon after its entries reached only a minority, and a leader
//!   cut off the moment an older-term entry is on a majority while nothing
//!   of its term is committed (the Raft paper's Figure 8 window), or
//!   crashed the moment it committed what it has not synced itself; lease
//!   races (a leader cut off from its peers, not its clients); small
//!   append messages in some runs, so that such windows open.
//! - **Node faults**: crash and restart. A disk holds only what was synced:
//!   writes wait in a queue until their sync, a crash drops the queue and may
//!   tear the oldest write. Clock drift between nodes within the bound the
//!   lease configuration declares.
//! - **State machines that keep their state durably** (half the seeds): a
//!   node restarts where its state machine was, which can be past the
//!   commit index its disk holds; its snapshots are checkpoints without
//!   data, and one with data is made when a follower needs it, as the
//!   runtime does.
//! - **Operations**: client writes and reads (ReadIndex and lease),
//!   learners added and promoted, voters removed, joint changes, leadership
//!   transfers, snapshots and log compaction, snapshot installs.
//!
//! After every step the [`invariants`] are checked: election safety, leader
//! append-only, log matching, leader completeness, state machine safety
//! (a run stops at the step that first breaks one); at the end, that no acknowledged write was lost, that the cluster is live
//! again once faults stop, and that the client history is linearizable
//! ([`linearizability`]).
//!
//! ## Your own state machine
//! Implement [`StateMachine`] for it and [`Workload`] for the requests your
//! clients make, with a [`linearizability::Model`] of its sequential
//! behaviour, then call [`run`]:
//!
//! ```
//! use dengine_sim::{KvWorkload, NoHooks, SimOptions, run};
//! let mut opts = SimOptions::new(7);
//! opts.steps = 2_000;
//! let report = run(&opts, KvWorkload::default(), &mut NoHooks);
//! assert!(report.passed(), "{:?}", report.violations);
//! ```
#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod disk;
pub mod faults;
pub mod invariants;
pub mod linearizability;
pub mod rng;
mod sim;
pub mod state_machine;

pub use faults::FaultProfile;
pub use invariants::Violation;
pub use rng::SimRng;
pub use sim::{Hooks, NoHooks, SimOptions, SimReport, TICK_US, run, run_kv};
pub use state_machine::{KvStateMachine, KvWorkload, Request, StateMachine, Workload};

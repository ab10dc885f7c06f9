//! # dengine-core: the Raft protocol with no I/O
//!
//! (Crate documentation: see the `CONTRACT` section written in `docs.rs`.)
#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod confchange;
pub mod error;
pub mod message;
pub mod quorum;
pub mod storage;
pub mod tracker;
pub mod types;

pub use config::Config;
pub use error::{ConfChangeError, Error, Result, StorageError};
pub use message::{AppendRejection, Message, MessageBody, ReadId};
pub use storage::{InitialState, LogStorage};
pub use types::*;

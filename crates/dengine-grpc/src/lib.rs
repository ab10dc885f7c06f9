//! # dengine-grpc: dengine over gRPC
//!
//! **Status: in progress.** Today this crate holds the conversions between
//! the engine's messages and their wire form; the gRPC server (the peer
//! transport and the etcd-v3-compatible key-value API) comes next.
//!
//! ## Place in the workspace
//!
//! ```text
//! dengine-core, dengine-proto  <-  dengine-grpc
//! ```
//!
//! The wire contracts themselves (the `.proto` files and the prost/tonic
//! code generated from them) are in `dengine-proto`, which a client can use
//! alone; this crate maps them onto `dengine-core`'s types.
//!
//! ## Modules
//!
//! - [`peer`]: dengine's peer protocol (`dengine.peer.v1`):
//!   [`peer::message_to_wire`] and [`peer::message_from_wire`] convert a
//!   [`dengine_core::Message`] to and from a
//!   [`dengine_proto::peer::Message`]. What comes off the wire is untrusted:
//!   a message that lacks a required part, or holds an enum value this
//!   version does not know, is refused with a [`peer::WireError`].
#![deny(missing_docs)]

pub use dengine_proto as proto;

pub mod backup;
pub mod etcd;
mod join;
pub mod members;
pub mod peer;
pub mod server;
pub mod telemetry;

pub use telemetry::describe_metrics;

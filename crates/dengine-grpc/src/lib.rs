//! # dengine-grpc: dengine over gRPC
//!
//! The server of a dengine member: the peer transport between members and
//! etcd's v3 API for clients, on tonic, over a key-value node
//! (`dengine-kv` on `dengine-runtime`).
//!
//! ## Place in the workspace
//!
//! ```text
//! dengine-core, dengine-proto, dengine-runtime, dengine-kv  <-  dengine-grpc  <-  dengine
//! ```
//!
//! The wire contracts themselves (the `.proto` files and the prost/tonic
//! code generated from them) are in `dengine-proto`, which a client can use
//! alone; this crate maps them onto the engine's types and serves them.
//!
//! ## Modules
//!
//! - [`server`]: one member, started from a [`server::ServerConfig`]
//!   (etcd's settings): its node, client and peer listeners, and helpers.
//! - [`etcd`]: etcd's services (KV, Watch, Lease, Cluster, Maintenance,
//!   Lock, Election), with etcd's codes and error strings.
//! - [`peer`]: dengine's peer protocol (`dengine.peer.v1`): the transport
//!   ([`peer::GrpcTransport`]), the service, and the conversions
//!   [`peer::message_to_wire`] and [`peer::message_from_wire`]. What comes
//!   off the wire is untrusted: a message that lacks a required part, or
//!   holds an enum value this version does not know, is refused with a
//!   [`peer::WireError`].
//! - [`members`], [`backup`]: the membership record and snapshots of a
//!   member's data.
//! - [`telemetry`]: client calls by method and code, peer traffic,
//!   watchers (metrics), and requests' spans and their trace context
//!   across members (feature `otel`).
#![deny(missing_docs)]

pub use dengine_proto as proto;

pub mod backup;
mod client_port;
pub mod etcd;
mod join;
pub mod members;
pub mod peer;
pub mod server;
pub mod telemetry;
pub mod tls;

pub use telemetry::describe_metrics;

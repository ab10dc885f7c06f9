//! # dengine-proto: the gRPC wire contracts
//!
//! The Rust code generated from the `.proto` files under `proto/` at the
//! root of the repository: prost messages, with tonic client **and** server
//! stubs for every service.
//!
//! | module | protobuf package | from |
//! |---|---|---|
//! | [`etcdserverpb`] | `etcdserverpb` | etcd's v3 API (`KV`, `Watch`, `Lease`, `Cluster`, `Maintenance`, `Auth`) |
//! | [`mvccpb`] | `mvccpb` | etcd's `KeyValue` and `Event` |
//! | [`authpb`] | `authpb` | etcd's users, roles and permissions |
//! | [`v3lockpb`] | `v3lockpb` | etcd's `Lock` service |
//! | [`v3electionpb`] | `v3electionpb` | etcd's `Election` service |
//! | [`peer`] | `dengine.peer.v1` | dengine's peer protocol (Raft between members, snapshot streams) |
//!
//! etcd's files are vendored from etcd's `release-3.5` branch with only
//! their Go code-generation options and HTTP-gateway annotations removed:
//! package, service, method, message and field names and field numbers
//! are etcd's, so every etcd v3 client can talk to a server built on these
//! stubs. Each `.proto` file says in its header what was removed.
//!
//! This crate is what a client needs and nothing more: it depends on
//! `prost`, `tonic` (its code-generation support only, no transport),
//! `tonic-prost` and `bytes`, never on dengine's engine, storage or
//! runtime. The clients have no `connect` helper, since that would need
//! tonic's transport here: build a channel and wrap it, for example
//! `KvClient::new(tonic::transport::Channel::from_static(url).connect().await?)`
//! with tonic's `transport` feature in your own crate.
//!
//! ## Byte fields
//!
//! In the peer protocol every `bytes` field is a [`bytes::Bytes`], so entry
//! payloads and snapshot frames are sliced out of the received buffer rather
//! than copied. In etcd's packages they are `Vec<u8>`: keys and values are
//! small (etcd limits a request to 1.5 MiB by default), and a plain `Vec`
//! is what a client most easily builds and reads.
//!
//! ## Regenerating
//!
//! The generated code is committed under `src/generated/` and must not be
//! edited by hand. After changing a `.proto` file, or the version of prost
//! or tonic, run `cargo xtask codegen`; `cargo xtask ci` fails while the
//! committed code differs from what the protos give.
//!
//! [`prost`] and [`tonic`] are re-exported, so a user can name the exact
//! versions the generated code was built against (for example
//! `dengine_proto::prost::Message` to encode a message by hand).
#![deny(missing_docs)]

pub use prost;
pub use tonic;

pub mod codec;

/// etcd's v3 API (protobuf package `etcdserverpb`, from etcd's
/// `api/etcdserverpb/rpc.proto`): the `KV`, `Watch`, `Lease`, `Cluster`,
/// `Maintenance` and `Auth` services with their requests and responses.
///
/// Each service `X` has a client, `x_client::XClient`, and a server,
/// `x_server::XServer` wrapping an implementation of the trait
/// `x_server::X`.
#[allow(missing_docs)]
pub mod etcdserverpb {
    include!("generated/etcdserverpb.rs");
}

/// etcd's key-value records (protobuf package `mvccpb`, from etcd's
/// `api/mvccpb/kv.proto`): `KeyValue` and the watch `Event`.
#[allow(missing_docs)]
pub mod mvccpb {
    include!("generated/mvccpb.rs");
}

/// etcd's access-control records (protobuf package `authpb`, from etcd's
/// `api/authpb/auth.proto`): `User`, `Role` and `Permission`.
#[allow(missing_docs)]
pub mod authpb {
    include!("generated/authpb.rs");
}

/// dengine's peer protocol (protobuf package `dengine.peer.v1`, from
/// `proto/dengine/peer/v1/peer.proto`): the `Peer` service, which carries
/// Raft messages between the members of one cluster (`Raft`, a stream of
/// `RaftBatch`) and streams snapshot data (`Snapshot`).
///
/// `peer_client::PeerClient` is the client and `peer_server::PeerServer`
/// the server, wrapping an implementation of the trait `peer_server::Peer`.
/// The crate `dengine-grpc` converts between [`peer::Message`] and the
/// engine's own message type.
#[allow(missing_docs)]
pub mod v3lockpb {
    include!("generated/v3lockpb.rs");
}

#[allow(missing_docs)]
pub mod v3electionpb {
    include!("generated/v3electionpb.rs");
}

#[allow(missing_docs)]
pub mod peer {
    include!("generated/dengine.peer.v1.rs");
}

//! dengine's peer protocol (`dengine.peer.v1`): Raft between the members of
//! one cluster.
//!
//! - [`GrpcTransport`]: the sending side, a runtime `Transport` (one
//!   long-lived stream per peer, batches, bounded queues, reconnects;
//!   snapshots as frames, resumed after a break);
//! - the fast link (`fast`): Raft messages on a plain TCP connection of
//!   their own to the peer port, without HTTP/2, where peers talk plain
//!   TCP and both speak it;
//! - [`PeerService`]: the receiving side, the `Peer` gRPC service;
//! - identity checks on every call ([`check_caller`]);
//! - the conversions between [`dengine_core::Message`] and its wire form
//!   [`dengine_proto::peer::Message`]:
//!
//! - [`message_to_wire`] cannot fail: every engine message has a wire form.
//! - [`message_from_wire`] checks what the engine needs and nothing more:
//!   every required part is present (the message's body, a `oneof`; an
//!   entry's payload; the `EntryId`s of votes, appends and rejections; a
//!   snapshot's metadata and its configuration) and every enum value is
//!   known, else a [`WireError`] names the field. Whether the values make
//!   sense (terms and indexes in range, a sender that is a member) is for
//!   the engine and the transport to judge.

mod convert;
mod fast;
mod feed;
mod identity;
mod server;
mod snapshot_send;
mod transport;

pub use convert::{WireError, message_from_wire, message_to_wire};
pub(crate) use fast::split_incoming;
pub use identity::{
    CLUSTER_ID, FROM, KnownMembers, PeerIdentity, REMOVED, TO, backoff, check_caller,
};
pub use server::{
    ForwardTarget, HashTarget, MembersTarget, PeerInbox, PeerService, PeerServiceStats,
};
pub(crate) use transport::with_identity;
pub use transport::{GrpcTransport, LinkStats, PeerLinkConfig};

//! The peer links' messages and bytes, by peer and by kind of message,
//! with etcd's names for the bytes and failures
//! (`etcd_network_peer_sent_bytes_total{To}`,
//! `etcd_network_peer_received_bytes_total{From}`,
//! `etcd_network_peer_sent_failures_total{To}`).
//!
//! A link's counters are made once, when the link is (one per peer and
//! direction), and a batch adds to them once per kind it holds, so the
//! cost does not grow with the messages.

use dengine_core::{MessageBody, NodeId};
use metrics::{Counter, counter};

/// The kinds of peer message, as labels, in [`kind_of`]'s order.
const KINDS: [&str; 12] = [
    "pre_vote",
    "vote",
    "pre_vote_response",
    "vote_response",
    "append",
    "append_response",
    "heartbeat",
    "heartbeat_response",
    "snapshot",
    "timeout_now",
    "read_index",
    "read_index_response",
];

/// Where a message's kind is in [`KINDS`].
fn kind_of(body: &MessageBody) -> usize {
    match body {
        MessageBody::RequestVote { pre_vote: true, .. } => 0,
        MessageBody::RequestVote { .. } => 1,
        MessageBody::RequestVoteResponse { pre_vote: true, .. } => 2,
        MessageBody::RequestVoteResponse { .. } => 3,
        MessageBody::AppendEntries { .. } => 4,
        MessageBody::AppendEntriesResponse { .. } => 5,
        MessageBody::Heartbeat { .. } => 6,
        MessageBody::HeartbeatResponse { .. } => 7,
        MessageBody::InstallSnapshot { .. } => 8,
        MessageBody::TimeoutNow => 9,
        MessageBody::ReadIndex { .. } => 10,
        MessageBody::ReadIndexResponse { .. } => 11,
    }
}

/// Messages of one batch, counted by kind before they are sent or after
/// they are received.
#[derive(Default)]
pub(crate) struct KindCounts([u64; KINDS.len()]);

impl KindCounts {
    /// Counts one message.
    pub(crate) fn add(&mut self, body: &MessageBody) {
        self.0[kind_of(body)] += 1;
    }
}

/// The counters of one direction of one peer link.
pub(crate) struct LinkMeter {
    bytes: Counter,
    etcd_bytes: Counter,
    messages: [Counter; KINDS.len()],
    /// Sending only: messages dropped (queue full, or stale after the
    /// stream broke), and streams opened.
    drops: Counter,
    etcd_failures: Counter,
    streams: Counter,
}

impl LinkMeter {
    /// The counters of what this member sends to `to`.
    pub(crate) fn sending(to: NodeId) -> LinkMeter {
        let peer = format!("{:x}", to.0);
        LinkMeter {
            bytes: counter!("dengine_peer_sent_bytes_total", "to" => peer.clone()),
            etcd_bytes: counter!("etcd_network_peer_sent_bytes_total", "To" => peer.clone()),
            messages: std::array::from_fn(
                |i| counter!("dengine_peer_sent_messages_total", "to" => peer.clone(), "type" => KINDS[i]),
            ),
            drops: counter!("dengine_peer_send_drops_total", "to" => peer.clone()),
            etcd_failures: counter!("etcd_network_peer_sent_failures_total", "To" => peer.clone()),
            streams: counter!("dengine_peer_streams_opened_total", "to" => peer),
        }
    }

    /// The counters of what this member receives from `from`.
    pub(crate) fn receiving(from: NodeId) -> LinkMeter {
        let peer = format!("{:x}", from.0);
        LinkMeter {
            bytes: counter!("dengine_peer_received_bytes_total", "from" => peer.clone()),
            etcd_bytes: counter!("etcd_network_peer_received_bytes_total", "From" => peer.clone()),
            messages: std::array::from_fn(
                |i| counter!("dengine_peer_received_messages_total", "from" => peer.clone(), "type" => KINDS[i]),
            ),
            drops: Counter::noop(),
            etcd_failures: Counter::noop(),
            streams: Counter::noop(),
        }
    }

    /// A batch of `bytes` on the wire, holding `kinds`.
    pub(crate) fn batch(&self, bytes: usize, kinds: &KindCounts) {
        self.bytes.increment(bytes as u64);
        self.etcd_bytes.increment(bytes as u64);
        for (counter, &n) in self.messages.iter().zip(&kinds.0) {
            if n > 0 {
                counter.increment(n);
            }
        }
    }

    /// `n` messages dropped instead of sent.
    pub(crate) fn dropped(&self, n: u64) {
        self.drops.increment(n);
        self.etcd_failures.increment(n);
    }

    /// A stream to the peer was opened (the first, or a reconnect).
    pub(crate) fn stream_opened(&self) {
        self.streams.increment(1);
    }
}

/// Describes the metrics of this module.
pub(crate) fn describe() {
    use metrics::{Unit, describe_counter};
    describe_counter!(
        "dengine_peer_sent_bytes_total",
        Unit::Bytes,
        "Bytes of Raft messages sent to each peer (snapshots not counted)."
    );
    describe_counter!(
        "etcd_network_peer_sent_bytes_total",
        Unit::Bytes,
        "etcd's name of dengine_peer_sent_bytes_total."
    );
    describe_counter!(
        "dengine_peer_received_bytes_total",
        Unit::Bytes,
        "Bytes of Raft messages received from each peer (snapshots not counted)."
    );
    describe_counter!(
        "etcd_network_peer_received_bytes_total",
        Unit::Bytes,
        "etcd's name of dengine_peer_received_bytes_total."
    );
    describe_counter!(
        "dengine_peer_sent_messages_total",
        "Raft messages sent to each peer, by type."
    );
    describe_counter!(
        "dengine_peer_received_messages_total",
        "Raft messages received from each peer, by type."
    );
    describe_counter!(
        "dengine_peer_send_drops_total",
        "Raft messages to each peer dropped (its queue full or its stream broken); Raft sends again."
    );
    describe_counter!(
        "etcd_network_peer_sent_failures_total",
        "etcd's name of dengine_peer_send_drops_total."
    );
    describe_counter!(
        "dengine_peer_streams_opened_total",
        "Message streams (Raft gRPC streams or fast links) opened to each peer (the first and every reconnect)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use dengine_core::{EntryId, LogIndex};

    #[test]
    fn kinds_are_counted_where_their_names_are() {
        let mut k = KindCounts::default();
        k.add(&MessageBody::RequestVote {
            pre_vote: true,
            last_log: EntryId::default(),
            transfer: false,
        });
        k.add(&MessageBody::Heartbeat {
            commit: LogIndex(1),
            read_round: 0,
        });
        k.add(&MessageBody::Heartbeat {
            commit: LogIndex(2),
            read_round: 0,
        });
        assert_eq!(k.0[0], 1);
        assert_eq!(KINDS[0], "pre_vote");
        assert_eq!(k.0[6], 2);
        assert_eq!(KINDS[6], "heartbeat");
        assert_eq!(k.0.iter().sum::<u64>(), 3);
    }
}

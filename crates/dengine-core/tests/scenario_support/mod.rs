//! Small helpers shared by the election, replication and commit scenario
//! tests: short accessors on a [`Cluster`] node's state and counters over
//! the traffic it recorded.
#![allow(dead_code)]

use dengine_core::testing::{Cluster, Envelope, log_terms};
use dengine_core::{LogIndex, Message, MessageBody, NodeId, Role};

/// The role of node `id`.
pub fn role(c: &Cluster, id: u64) -> Role {
    c.node(id).status().soft_state.role
}

/// The current term of node `id`.
pub fn term(c: &Cluster, id: u64) -> u64 {
    c.node(id).status().hard_state.term.0
}

/// The vote of node `id` in its current term (0: none).
pub fn vote(c: &Cluster, id: u64) -> u64 {
    c.node(id).status().hard_state.vote.0
}

/// The commit index of node `id`.
pub fn commit(c: &Cluster, id: u64) -> u64 {
    c.node(id).status().hard_state.commit.0
}

/// The leader node `id` knows of (0: none).
pub fn leader_of(c: &Cluster, id: u64) -> u64 {
    c.node(id).status().soft_state.leader.0
}

/// The last index of node `id`'s log (durable or not).
pub fn last_index(c: &Cluster, id: u64) -> u64 {
    c.node(id).status().last_index.0
}

/// The terms of node `id`'s stored log from `lo` to `hi` (0: no entry).
pub fn terms(c: &Cluster, id: u64, lo: u64, hi: u64) -> Vec<u64> {
    log_terms(&c.node(id).storage, lo, hi)
}

/// The (index, data) pairs node `id` applied.
pub fn applied(c: &Cluster, id: u64) -> Vec<(u64, Vec<u8>)> {
    c.node(id)
        .applied
        .iter()
        .map(|(i, d)| (i.0, d.clone()))
        .collect()
}

/// Whether `m` goes from `from` to `to`.
pub fn between(m: &Message, from: u64, to: u64) -> bool {
    m.from == NodeId(from) && m.to == NodeId(to)
}

/// Whether `m` is an append carrying at least one entry.
pub fn is_entry_append(m: &Message) -> bool {
    matches!(&m.body, MessageBody::AppendEntries { entries, .. } if !entries.is_empty())
}

/// The index of the last entry an append carries.
pub fn append_last(m: &Message) -> Option<LogIndex> {
    match &m.body {
        MessageBody::AppendEntries { entries, .. } => entries.last().map(|e| e.index),
        _ => None,
    }
}

/// Whether `m` is a refused append.
pub fn is_rejection(m: &Message) -> bool {
    matches!(
        m.body,
        MessageBody::AppendEntriesResponse { result: Err(_) }
    )
}

/// How many messages of `kind` (see `MessageBody::kind`) were ever sent.
pub fn count_kind(c: &Cluster, kind: &str) -> usize {
    c.sent_log.iter().filter(|m| m.body.kind() == kind).count()
}

/// How many appends `from` refused from `to` since `since` (an index into
/// the sent log).
pub fn rejections_since(c: &Cluster, since: usize, from: u64, to: u64) -> usize {
    c.sent_log[since..]
        .iter()
        .filter(|m| between(m, from, to) && is_rejection(m))
        .count()
}

/// Processes every node's ready once.
pub fn process_all(c: &mut Cluster) -> bool {
    let ids: Vec<NodeId> = c.nodes.keys().copied().collect();
    let mut any = false;
    for id in ids {
        any |= c.process_ready(id);
    }
    any
}

/// Like `Cluster::stabilize`, but every message matching `hold` is taken out
/// of the network instead of delivered; the held messages are returned, in
/// send order, for the test to deliver or drop later.
pub fn stabilize_holding(c: &mut Cluster, hold: impl Fn(&Message) -> bool) -> Vec<Envelope> {
    let mut held = Vec::new();
    for _ in 0..10_000 {
        let any = process_all(c);
        held.extend(c.take_msgs(&hold));
        if c.deliver_all() == 0 && !any {
            return held;
        }
    }
    panic!("cluster did not stabilize");
}

/// Makes `id` campaign and delivers only the election traffic (vote requests
/// and answers), so that the winner's first appends stay unsent inside it
/// until the test calls `process_ready` on it.
pub fn run_election_only(c: &mut Cluster, id: u64) {
    c.node_mut(id).raw.campaign().expect("campaign");
    for _ in 0..4 {
        for n in c.up_ids() {
            if n != NodeId(id) {
                c.process_ready(n);
            }
        }
        if role(c, id) != Role::Leader {
            c.process_ready(NodeId(id));
        }
        c.deliver_all();
    }
}

//! Spans of traced writes on their way through the node, so that one
//! trace shows a write's whole path: proposed, written and synced on the
//! leader, replicated, written and synced on each follower, committed,
//! applied.
//!
//! A proposal is traced when it is made inside a `tracing` span (the
//! gRPC server makes one per traced request). Untraced proposals carry
//! `None` and cost nothing here: every method returns at once while no
//! traced entry is in flight.
//!
//! Span names: `raft.replicate` (proposal to commit, on the leader),
//! `raft.fsync` (the entry's write and sync on the leader),
//! `raft.follower.append` (an append received to durable, on a follower;
//! its parent is the leader's `raft.replicate`, across the network),
//! `raft.apply` (commit to applied).

use std::collections::BTreeMap;

use dengine_core::{LogIndex, NodeId};
use tracing::Span;

/// The span a proposal was made in, if any.
pub(crate) type Trace = Option<Box<Span>>;

/// Most traced entries (and received appends) kept: past it the oldest
/// are dropped (their spans end early), so a trace that never commits
/// cannot grow memory.
const MAX_TRACED: usize = 10_000;

/// The span of the calling code, if it is in one.
pub(crate) fn current() -> Trace {
    // Without a subscriber there is no span: one load instead of a lookup
    // of the current span on every proposal.
    if !tracing::dispatcher::has_been_set() {
        return None;
    }
    let span = Span::current();
    (!span.is_none()).then(|| Box::new(span))
}

/// A traced entry this node proposed.
struct Traced {
    request: Span,
    replicate: Span,
    fsync: Option<Span>,
}

/// The traced entries in flight on this node.
#[derive(Default)]
pub(crate) struct Traces {
    proposed: BTreeMap<LogIndex, Traced>,
    /// Appends a leader sent with traces, by their last index, until
    /// durable here.
    received: Vec<(LogIndex, Vec<Span>)>,
}

impl Traces {
    /// Whether nothing is traced (every other method is then a no-op).
    pub(crate) fn is_empty(&self) -> bool {
        self.proposed.is_empty() && self.received.is_empty()
    }

    /// Proposals `first..` were appended; `traces` are the spans of the
    /// traced ones, each with its place in the batch.
    pub(crate) fn proposed(
        &mut self,
        node: NodeId,
        first: LogIndex,
        traces: Vec<(usize, Box<Span>)>,
    ) {
        for (i, request) in traces {
            let index = first.0 + i as u64;
            let replicate =
                tracing::info_span!(parent: &*request, "raft.replicate", node = node.0, index);
            self.proposed.insert(
                LogIndex(index),
                Traced {
                    request: *request,
                    replicate,
                    fsync: None,
                },
            );
        }
        while self.proposed.len() > MAX_TRACED {
            self.proposed.pop_first();
        }
    }

    /// Entries `first..=last` are being written to this node's log.
    pub(crate) fn writing(&mut self, node: NodeId, first: LogIndex, last: LogIndex) {
        for (index, t) in self.proposed.range_mut(first..=last) {
            if t.fsync.is_none() {
                t.fsync = Some(
                    tracing::info_span!(parent: &t.replicate, "raft.fsync", node = node.0, index = index.0),
                );
            }
        }
    }

    /// Entries through `last` are durable on this node.
    pub(crate) fn persisted(&mut self, last: LogIndex) {
        for (_, t) in self.proposed.range_mut(..=last) {
            t.fsync = None;
        }
        self.received.retain(|(through, _)| *through > last);
    }

    /// The spans a follower's append of `first..=last` continues.
    pub(crate) fn for_append(&self, first: LogIndex, last: LogIndex) -> Vec<Span> {
        self.proposed
            .range(first..=last)
            .map(|(_, t)| t.replicate.clone())
            .collect()
    }

    /// Entries `first..=last` are committed and handed to the state
    /// machine: their replication ends, and their application begins in
    /// the spans returned (held until applied).
    pub(crate) fn committed(&mut self, node: NodeId, first: LogIndex, last: LogIndex) -> Vec<Span> {
        let mut applying = Vec::new();
        while let Some(entry) = self.proposed.first_entry() {
            let index = *entry.key();
            if index > last {
                break;
            }
            let t = entry.remove();
            if index >= first {
                applying.push(
                    tracing::info_span!(parent: &t.request, "raft.apply", node = node.0, index = index.0),
                );
            }
        }
        applying
    }

    /// An append through `last` came from the leader with `spans` (made
    /// by the transport, their parents the leader's): they end when the
    /// entries are durable here.
    pub(crate) fn received(&mut self, last: LogIndex, spans: Vec<Span>) {
        if spans.is_empty() {
            return;
        }
        self.received.push((last, spans));
        if self.received.len() > MAX_TRACED {
            self.received.remove(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untraced_proposals_leave_nothing_behind() {
        let mut t = Traces::default();
        t.proposed(NodeId(1), LogIndex(1), Vec::new());
        assert!(t.is_empty());
        assert!(t.for_append(LogIndex(1), LogIndex(2)).is_empty());
    }

    #[test]
    fn a_traced_entry_is_kept_until_committed_and_received_ones_until_durable() {
        let mut t = Traces::default();
        t.proposed(NodeId(1), LogIndex(10), vec![(1, Box::new(Span::none()))]);
        assert_eq!(t.for_append(LogIndex(10), LogIndex(12)).len(), 1);
        assert!(t.for_append(LogIndex(12), LogIndex(20)).is_empty());
        t.writing(NodeId(1), LogIndex(10), LogIndex(12));
        t.persisted(LogIndex(12));
        // Committed: handed to the state machine with one apply span.
        assert!(t.committed(NodeId(1), LogIndex(9), LogIndex(10)).is_empty());
        assert_eq!(t.committed(NodeId(1), LogIndex(11), LogIndex(11)).len(), 1);
        assert!(t.is_empty());
        t.received(LogIndex(5), vec![Span::none()]);
        t.persisted(LogIndex(4));
        assert!(!t.is_empty());
        t.persisted(LogIndex(5));
        assert!(t.is_empty());
    }
}

//! Raft's safety properties, checked after every step of a run.
//!
//! - Election safety: at most one leader per term.
//! - Leader append-only: a leader never overwrites or deletes its entries.
//! - Log matching: two logs with an entry of the same index and term are
//!   identical up to it (checked with a hash chain over every durable log).
//! - Leader completeness: a new leader holds every entry applied anywhere.
//! - State machine safety: no two nodes apply different entries at an index.
//! - No acknowledged write is lost: checked at the end of a run against
//!   the entries applied.

use std::collections::BTreeMap;

use dengine_core::{Entry, EntryPayload, LogIndex, NodeId, Term};

/// A broken property, with when and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Virtual time in microseconds.
    pub at: u64,
    /// Which property.
    pub property: &'static str,
    /// What was seen.
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[t={}us] {}: {}", self.at, self.property, self.detail)
    }
}

fn fnv(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// A hash of an entry's term and payload.
pub fn entry_hash(e: &Entry) -> u64 {
    let h = fnv(&e.term.0.to_le_bytes(), 0xcbf2_9ce4_8422_2325);
    match &e.payload {
        EntryPayload::Blank => fnv(b"blank", h),
        EntryPayload::Normal(d) => fnv(d, fnv(b"normal", h)),
        EntryPayload::ConfChange(cc) => fnv(format!("{cc:?}").as_bytes(), h),
    }
}

fn chain(prev: u64, e: &Entry) -> u64 {
    fnv(&entry_hash(e).to_le_bytes(), prev ^ 0x9E37_79B9_7F4A_7C15)
}

/// One node's durable log as hash chain: `hashes[i]` covers the entry at
/// `base + 1 + i` and everything before it. `None` where the prefix is not
/// known (after a snapshot whose base was never seen).
#[derive(Clone, Debug, Default)]
struct NodeChain {
    base: LogIndex,
    base_hash: Option<u64>,
    hashes: Vec<(Term, Option<u64>)>,
}

/// The checker's memory of a run.
#[derive(Debug, Default)]
pub struct Invariants {
    leaders: BTreeMap<Term, NodeId>,
    leader_last: BTreeMap<NodeId, (Term, LogIndex)>,
    applied: BTreeMap<LogIndex, (Term, u64, NodeId)>,
    chains: BTreeMap<(LogIndex, Term), u64>,
    node_chains: BTreeMap<NodeId, NodeChain>,
    /// For each leader term, the highest index it committed and its term.
    committed_by: BTreeMap<Term, (LogIndex, Term)>,
    /// Every violation found.
    pub violations: Vec<Violation>,
}

impl Invariants {
    fn fail(&mut self, at: u64, property: &'static str, detail: String) {
        self.violations.push(Violation {
            at,
            property,
            detail,
        });
    }

    /// `node` is leader of `term`.
    pub fn on_leader(&mut self, at: u64, node: NodeId, term: Term) {
        match self.leaders.get(&term) {
            Some(&other) if other != node => self.fail(
                at,
                "election safety",
                format!("nodes {other} and {node} both leaders of term {term}"),
            ),
            Some(_) => {}
            None => {
                self.leaders.insert(term, node);
            }
        }
    }

    /// A leader of `term` handed entries `first..=last` to its disk.
    pub fn on_leader_append(
        &mut self,
        at: u64,
        node: NodeId,
        term: Term,
        first: LogIndex,
        last: LogIndex,
    ) {
        if let Some(&(t, prev_last)) = self.leader_last.get(&node)
            && t == term
            && first <= prev_last
        {
            self.fail(
                at,
                "leader append-only",
                format!("leader {node} of term {term} rewrote from index {first} (had up to {prev_last})"),
            );
        }
        self.leader_last.insert(node, (term, last));
    }

    /// The leader of `term` committed up to `index`, whose entry has `entry_term`.
    pub fn on_leader_commit(&mut self, term: Term, index: LogIndex, entry_term: Term) {
        let e = self.committed_by.entry(term).or_insert((index, entry_term));
        if index > e.0 {
            *e = (index, entry_term);
        }
    }

    /// A new leader of `term` must hold every entry committed in an
    /// earlier term (Raft §5.4, leader completeness).
    pub fn check_leader_completeness(
        &mut self,
        at: u64,
        node: NodeId,
        term: Term,
        term_at: impl Fn(LogIndex) -> Result<Term, dengine_core::Error>,
    ) {
        let Some((index, entry_term)) = self
            .committed_by
            .range(..term)
            .map(|(_, &c)| c)
            .max_by_key(|c| c.0)
        else {
            return;
        };
        match term_at(index) {
            Ok(t) if t == entry_term => {}
            Ok(t) => self.fail(
                at,
                "leader completeness",
                format!(
                    "new leader {node} of term {term} has term {t} at index {index}, committed with term {entry_term}"
                ),
            ),
            Err(dengine_core::Error::Storage(dengine_core::StorageError::Compacted(_))) => {}
            Err(e) => self.fail(
                at,
                "leader completeness",
                format!("new leader {node} of term {term} lacks committed index {index}: {e}"),
            ),
        }
    }

    /// `node` applied `e`.
    pub fn on_apply(&mut self, at: u64, node: NodeId, e: &Entry) {
        let h = entry_hash(e);
        match self.applied.get(&e.index) {
            Some(&(t, oh, by)) if oh != h => self.fail(
                at,
                "state machine safety",
                format!(
                    "node {node} applied term {} at index {}, node {by} applied term {t} there",
                    e.term, e.index
                ),
            ),
            Some(_) => {}
            None => {
                self.applied.insert(e.index, (e.term, h, node));
            }
        }
    }

    /// The entry applied at `index`, as `(term, hash)`.
    pub fn applied_at(&self, index: LogIndex) -> Option<(Term, u64)> {
        self.applied.get(&index).map(|&(t, h, _)| (t, h))
    }

    /// `node`'s disk now holds `entries` from their first index on (the
    /// rest of its log after them was truncated).
    pub fn on_disk_append(&mut self, at: u64, node: NodeId, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        // An empty log's prefix is known: nothing.
        let empty = || NodeChain {
            base_hash: Some(0),
            ..NodeChain::default()
        };
        let mut c = self.node_chains.remove(&node).unwrap_or_else(empty);
        if first.index <= c.base {
            // A write below the base cannot happen; restart the chain.
            c = NodeChain::default();
        }
        let keep = (first.index.0 - c.base.0 - 1) as usize;
        c.hashes.truncate(keep);
        let mut prev = if keep == 0 {
            c.base_hash
        } else {
            c.hashes.last().and_then(|x| x.1)
        };
        if c.hashes.len() != keep {
            prev = None;
        }
        for e in entries {
            let h = prev.map(|p| chain(p, e));
            if let Some(h) = h {
                match self.chains.get(&(e.index, e.term)) {
                    Some(&other) if other != h => {
                        self.fail(
                            at,
                            "log matching",
                            format!(
                                "node {node} has entry ({}, {}) with a different prefix than another node",
                                e.index, e.term
                            ),
                        );
                    }
                    Some(_) => {}
                    None => {
                        self.chains.insert((e.index, e.term), h);
                    }
                }
            }
            c.hashes.push((e.term, h));
            prev = h;
        }
        self.node_chains.insert(node, c);
    }

    /// `node`'s log was reset to start after `(index, term)` (snapshot
    /// install), keeping entries after it only if they matched.
    pub fn on_disk_rebase(&mut self, node: NodeId, index: LogIndex, term: Term, kept_tail: bool) {
        let mut c = self.node_chains.remove(&node).unwrap_or_default();
        let base_hash = if index == LogIndex::ZERO {
            Some(0)
        } else {
            self.chains.get(&(index, term)).copied()
        };
        if kept_tail && index > c.base {
            let drop = (index.0 - c.base.0) as usize;
            c.hashes.drain(..drop.min(c.hashes.len()));
        } else {
            c.hashes.clear();
        }
        c.base = index;
        c.base_hash = base_hash;
        self.node_chains.insert(node, c);
    }

    /// `node`'s log was compacted up to `index` (prefix unchanged).
    pub fn on_disk_compact(&mut self, node: NodeId, index: LogIndex) {
        let Some(c) = self.node_chains.get_mut(&node) else {
            return;
        };
        if index <= c.base {
            return;
        }
        let n = ((index.0 - c.base.0) as usize).min(c.hashes.len());
        let base_hash = if n > 0 {
            c.hashes[n - 1].1
        } else {
            c.base_hash
        };
        c.hashes.drain(..n);
        c.base = index;
        c.base_hash = base_hash;
    }

    /// A node was removed for good; forget its chain.
    pub fn forget_node(&mut self, node: NodeId) {
        self.node_chains.remove(&node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ent(i: u64, t: u64, d: u8) -> Entry {
        Entry {
            term: Term(t),
            index: LogIndex(i),
            payload: EntryPayload::Normal(vec![d].into()),
        }
    }

    #[test]
    fn two_leaders_in_one_term_is_a_violation() {
        let mut inv = Invariants::default();
        inv.on_leader(0, NodeId(1), Term(2));
        inv.on_leader(1, NodeId(1), Term(2));
        assert!(inv.violations.is_empty());
        inv.on_leader(2, NodeId(2), Term(2));
        assert_eq!(inv.violations.len(), 1);
        assert_eq!(inv.violations[0].property, "election safety");
    }

    #[test]
    fn different_entries_applied_at_one_index_is_a_violation() {
        let mut inv = Invariants::default();
        inv.on_apply(0, NodeId(1), &ent(1, 1, 7));
        inv.on_apply(0, NodeId(2), &ent(1, 1, 7));
        assert!(inv.violations.is_empty());
        inv.on_apply(0, NodeId(3), &ent(1, 1, 8));
        assert_eq!(inv.violations[0].property, "state machine safety");
    }

    #[test]
    fn log_matching_catches_different_prefixes() {
        let mut inv = Invariants::default();
        inv.on_disk_append(0, NodeId(1), &[ent(1, 1, 1), ent(2, 1, 2), ent(3, 2, 3)]);
        inv.on_disk_append(0, NodeId(2), &[ent(1, 1, 1), ent(2, 1, 2), ent(3, 2, 3)]);
        assert!(inv.violations.is_empty());
        // Same (index, term) at 3 but a different entry at 2: log matching broken.
        inv.on_disk_append(0, NodeId(3), &[ent(1, 1, 1), ent(2, 1, 9), ent(3, 2, 3)]);
        assert!(inv.violations.iter().any(|v| v.property == "log matching"));
    }

    #[test]
    fn truncating_and_rewriting_a_suffix_is_fine() {
        let mut inv = Invariants::default();
        inv.on_disk_append(0, NodeId(1), &[ent(1, 1, 1), ent(2, 1, 2)]);
        inv.on_disk_append(0, NodeId(2), &[ent(1, 1, 1), ent(2, 2, 5)]);
        inv.on_disk_append(0, NodeId(1), &[ent(2, 2, 5), ent(3, 2, 6)]);
        assert!(inv.violations.is_empty(), "{:?}", inv.violations);
    }

    #[test]
    fn leader_rewriting_its_log_is_a_violation() {
        let mut inv = Invariants::default();
        inv.on_leader_append(0, NodeId(1), Term(3), LogIndex(5), LogIndex(7));
        inv.on_leader_append(0, NodeId(1), Term(3), LogIndex(8), LogIndex(8));
        assert!(inv.violations.is_empty());
        inv.on_leader_append(0, NodeId(1), Term(3), LogIndex(8), LogIndex(9));
        assert_eq!(inv.violations[0].property, "leader append-only");
    }

    #[test]
    fn leader_missing_a_committed_entry_is_a_violation() {
        let mut inv = Invariants::default();
        inv.on_leader_commit(Term(2), LogIndex(4), Term(2));
        inv.check_leader_completeness(0, NodeId(2), Term(3), |_| Ok(Term(2)));
        assert!(inv.violations.is_empty());
        // A leader of an older term need not have it.
        inv.check_leader_completeness(0, NodeId(4), Term(2), |i| {
            Err(dengine_core::StorageError::Unavailable(i).into())
        });
        assert!(inv.violations.is_empty());
        inv.check_leader_completeness(0, NodeId(3), Term(3), |i| {
            Err(dengine_core::StorageError::Unavailable(i).into())
        });
        assert_eq!(inv.violations[0].property, "leader completeness");
        inv.check_leader_completeness(0, NodeId(3), Term(4), |_| Ok(Term(1)));
        assert_eq!(inv.violations.len(), 2);
    }
}

//! Entries (and a snapshot) this node has accepted but not yet made durable.
//!
//! Keeping them apart from the stable log is what makes the durability rule
//! easy to keep: nothing here is counted toward commit or acknowledged. Part
//! of it may be "in progress": handed to the runtime for persisting, with the
//! acknowledgement still to come.

use crate::types::{Entry, EntryId, LogIndex, SnapshotMeta, Term};

/// The not-yet-durable tail of the log.
#[derive(Debug, Default)]
pub(crate) struct Unstable {
    /// A snapshot to install, if one was received and not yet persisted.
    pub(crate) snapshot: Option<SnapshotMeta>,
    /// Entries `offset..`; everything below `offset` is stable (or covered by
    /// `snapshot`).
    pub(crate) entries: Vec<Entry>,
    /// Index of `entries[0]`.
    pub(crate) offset: LogIndex,
    /// Entries below this index were handed out for persisting already.
    pub(crate) offset_in_progress: LogIndex,
    /// Whether `snapshot` was handed out for persisting already.
    pub(crate) snapshot_in_progress: bool,
}

impl Unstable {
    pub(crate) fn new(offset: LogIndex) -> Unstable {
        Unstable {
            offset,
            offset_in_progress: offset,
            ..Unstable::default()
        }
    }

    /// The first index known only because of the unstable snapshot.
    pub(crate) fn maybe_first_index(&self) -> Option<LogIndex> {
        self.snapshot.as_ref().map(|s| s.last_index.next())
    }

    pub(crate) fn maybe_last_index(&self) -> Option<LogIndex> {
        if let Some(last) = self.entries.last() {
            return Some(last.index);
        }
        self.snapshot.as_ref().map(|s| s.last_index)
    }

    pub(crate) fn maybe_term(&self, index: LogIndex) -> Option<Term> {
        if index < self.offset {
            return match &self.snapshot {
                Some(s) if s.last_index == index => Some(s.last_term),
                _ => None,
            };
        }
        // `try_from`, not `as`: on a 32-bit target a far index (from a
        // peer) must not wrap onto an entry that is here.
        let pos = usize::try_from(index.0 - self.offset.0).ok()?;
        self.entries.get(pos).map(|e| e.term)
    }

    /// Entries and snapshot not yet handed out for persisting; marks them handed out.
    pub(crate) fn take_to_persist(&mut self) -> (Option<SnapshotMeta>, Vec<Entry>) {
        let snap = if self.snapshot_in_progress {
            None
        } else {
            self.snapshot_in_progress = self.snapshot.is_some();
            self.snapshot.clone()
        };
        let start = (self.offset_in_progress.0 - self.offset.0) as usize;
        let entries = self
            .entries
            .get(start..)
            .map(<[Entry]>::to_vec)
            .unwrap_or_default();
        if let Some(last) = self.entries.last() {
            self.offset_in_progress = last.index.next();
        }
        (snap, entries)
    }

    /// Whether anything is waiting to be handed out for persisting.
    pub(crate) fn has_to_persist(&self) -> bool {
        (self.snapshot.is_some() && !self.snapshot_in_progress)
            || self.offset_in_progress.0 < self.offset.0 + self.entries.len() as u64
    }

    /// Entries up to `id` became durable. Ignored unless the entry at
    /// `id.index` still has `id.term` (otherwise it was overwritten since and
    /// the newer entries are still to be persisted).
    pub(crate) fn stable_to(&mut self, id: EntryId) {
        let Some(term) = self.maybe_term(id.index) else {
            return;
        };
        if term != id.term || id.index < self.offset {
            return;
        }
        let n = (id.index.0 + 1 - self.offset.0) as usize;
        self.entries.drain(..n);
        self.offset = id.index.next();
        if self.offset_in_progress < self.offset {
            self.offset_in_progress = self.offset;
        }
    }

    /// The snapshot at `index` became durable.
    pub(crate) fn stable_snap_to(&mut self, index: LogIndex) {
        if self
            .snapshot
            .as_ref()
            .is_some_and(|s| s.last_index == index)
        {
            self.snapshot = None;
            self.snapshot_in_progress = false;
        }
    }

    /// Replaces everything with `snap`.
    pub(crate) fn restore(&mut self, snap: SnapshotMeta) {
        self.offset = snap.last_index.next();
        self.offset_in_progress = self.offset;
        self.entries.clear();
        self.snapshot = Some(snap);
        self.snapshot_in_progress = false;
    }

    /// Appends `ents`, first truncating anything at or after `ents[0].index`.
    pub(crate) fn truncate_and_append(&mut self, ents: Vec<Entry>) {
        let Some(first) = ents.first() else {
            return;
        };
        let from = first.index;
        let end = self.offset.plus(self.entries.len() as u64);
        if from == end {
            // The common case: a plain append.
        } else if from <= self.offset {
            // Replaces the whole unstable tail (and part of the stable log).
            self.offset = from;
            self.entries.clear();
        } else {
            self.entries.truncate((from.0 - self.offset.0) as usize);
        }
        if self.offset_in_progress > from {
            self.offset_in_progress = from;
        }
        if self.entries.is_empty() {
            // Taken as it is: no copy.
            self.entries = ents;
        } else {
            self.entries.extend(ents);
        }
    }

    /// Entries in `[lo, hi)`, which must lie within the unstable range.
    pub(crate) fn slice(&self, lo: LogIndex, hi: LogIndex) -> &[Entry] {
        let a = (lo.0 - self.offset.0) as usize;
        let b = (hi.0 - self.offset.0) as usize;
        &self.entries[a..b]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryPayload;

    fn ent(index: u64, term: u64) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            payload: EntryPayload::Blank,
        }
    }

    #[test]
    fn stable_to_ignores_overwritten_entries() {
        let mut u = Unstable::new(LogIndex(5));
        u.truncate_and_append(vec![ent(5, 1), ent(6, 1)]);
        let (_, handed) = u.take_to_persist();
        assert_eq!(handed.len(), 2);
        // A conflicting append overwrites index 6 with term 2 before the ack.
        u.truncate_and_append(vec![ent(6, 2)]);
        u.stable_to(EntryId::new(Term(1), LogIndex(6)));
        assert_eq!(
            u.offset,
            LogIndex(5),
            "stale ack must not stabilise new entry"
        );
        u.stable_to(EntryId::new(Term(1), LogIndex(5)));
        assert_eq!(u.offset, LogIndex(6));
        assert_eq!(u.entries, vec![ent(6, 2)]);
        assert!(
            u.has_to_persist(),
            "the overwritten entry must be persisted again"
        );
    }

    #[test]
    fn truncate_below_offset_replaces_tail() {
        let mut u = Unstable::new(LogIndex(5));
        u.truncate_and_append(vec![ent(5, 1), ent(6, 1)]);
        u.take_to_persist();
        u.truncate_and_append(vec![ent(3, 2)]);
        assert_eq!(u.offset, LogIndex(3));
        assert_eq!(u.offset_in_progress, LogIndex(3));
        let (_, ents) = u.take_to_persist();
        assert_eq!(ents, vec![ent(3, 2)]);
    }

    #[test]
    fn snapshot_terms_and_restore() {
        let mut u = Unstable::new(LogIndex(1));
        u.truncate_and_append(vec![ent(1, 1)]);
        u.restore(SnapshotMeta {
            last_index: LogIndex(10),
            last_term: Term(3),
            ..Default::default()
        });
        assert_eq!(u.maybe_term(LogIndex(10)), Some(Term(3)));
        assert_eq!(u.maybe_term(LogIndex(1)), None);
        assert_eq!(u.maybe_last_index(), Some(LogIndex(10)));
        let (snap, ents) = u.take_to_persist();
        assert!(snap.is_some() && ents.is_empty());
        assert!(!u.has_to_persist());
        u.stable_snap_to(LogIndex(10));
        assert!(u.snapshot.is_none());
    }
}

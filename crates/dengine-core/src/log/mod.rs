//! The replicated log as one node sees it: the stable part read through
//! [`LogStorage`], the unstable tail kept here, and the commit and apply
//! positions.

mod unstable;

use crate::error::StorageError;
use crate::storage::LogStorage;
use crate::types::{Entry, EntryId, LogIndex, SnapshotMeta, Term};
use unstable::Unstable;

/// What a follower's log did with an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppendOutcome {
    /// `prev` matched; the log now matches the leader's up to this index.
    Appended(LogIndex),
    /// `prev` is not in the log: nothing changed.
    Mismatch,
    /// The leader sent an entry that conflicts with a committed one at this
    /// index (a safety violation by the sender): nothing changed.
    ConflictsWithCommitted(LogIndex),
}

/// The log of one node.
pub(crate) struct RaftLog<S> {
    pub(crate) storage: S,
    unstable: Unstable,
    /// Highest index known committed.
    pub(crate) committed: LogIndex,
    /// Highest index handed out for applying.
    pub(crate) applying: LogIndex,
    /// Highest index the runtime reported applied.
    pub(crate) applied: LogIndex,
    /// Entries handed out and not yet reported applied: (last index, bytes)
    /// per hand-out, and their total.
    applying_batches: std::collections::VecDeque<(LogIndex, u64)>,
    applying_bytes: u64,
}

type Res<T> = Result<T, StorageError>;

impl<S: LogStorage> RaftLog<S> {
    /// A log over `storage`, with `committed` and `applied` as persisted.
    pub(crate) fn new(storage: S, committed: LogIndex, applied: LogIndex) -> Res<Self> {
        let last = storage.last_index()?;
        let first = storage.first_index()?;
        let applied = applied.max(first.prev());
        Ok(RaftLog {
            storage,
            unstable: Unstable::new(last.next()),
            committed: committed.max(applied).min(last),
            applying: applied,
            applied,
            applying_batches: Default::default(),
            applying_bytes: 0,
        })
    }

    pub(crate) fn first_index(&self) -> Res<LogIndex> {
        match self.unstable.maybe_first_index() {
            Some(i) => Ok(i),
            None => self.storage.first_index(),
        }
    }

    pub(crate) fn last_index(&self) -> LogIndex {
        match self.unstable.maybe_last_index() {
            Some(i) => i,
            // The unstable offset is always stable-last + 1.
            None => self.unstable.offset.prev(),
        }
    }

    /// The last index that is durable on this node.
    pub(crate) fn stable_last_index(&self) -> LogIndex {
        if self.unstable.snapshot.is_some() {
            // Nothing past the old log is usable until the snapshot is durable.
            return self.applying.min(self.unstable.offset.prev());
        }
        self.unstable.offset.prev()
    }

    pub(crate) fn term(&self, index: LogIndex) -> Res<Term> {
        if let Some(t) = self.unstable.maybe_term(index) {
            return Ok(t);
        }
        let first = self.first_index()?;
        if index < first.prev() {
            return Err(StorageError::Compacted(index));
        }
        if index > self.last_index() {
            return Err(StorageError::Unavailable(index));
        }
        if index == LogIndex::ZERO {
            return Ok(Term::ZERO);
        }
        self.storage.term(index)
    }

    /// The term at `index`, or 0 if it is not in the log (compacted or past
    /// the end). Only for places where "unknown" safely means "no match".
    pub(crate) fn term_or_zero(&self, index: LogIndex) -> Res<Term> {
        match self.term(index) {
            Ok(t) => Ok(t),
            Err(StorageError::Compacted(_)) | Err(StorageError::Unavailable(_)) => Ok(Term::ZERO),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn last_id(&self) -> Res<EntryId> {
        let last = self.last_index();
        Ok(EntryId::new(self.term(last)?, last))
    }

    /// Whether the log holds `id`. An index the log does not hold (past the
    /// end or compacted) matches nothing, not even a term of 0.
    pub(crate) fn matches(&self, id: EntryId) -> Res<bool> {
        match self.term(id.index) {
            Ok(t) => Ok(t == id.term),
            Err(StorageError::Compacted(_)) | Err(StorageError::Unavailable(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether a candidate whose log ends at `last` is at least as up to date
    /// as this log (Raft §5.4.1).
    pub(crate) fn is_up_to_date(&self, last: EntryId) -> Res<bool> {
        let mine = self.last_id()?;
        Ok(last.term > mine.term || (last.term == mine.term && last.index >= mine.index))
    }

    /// The last entry at or below `index` whose term is at most `term`: the
    /// best guess at where two logs that disagree at `index` still agree.
    pub(crate) fn find_conflict_by_term(&self, index: LogIndex, term: Term) -> Res<EntryId> {
        let mut i = index.min(self.last_index());
        loop {
            match self.term(i) {
                Ok(t) if t <= term => return Ok(EntryId::new(t, i)),
                Ok(_) if i == LogIndex::ZERO => return Ok(EntryId::default()),
                Ok(_) => i = i.prev(),
                Err(StorageError::Compacted(_)) | Err(StorageError::Unavailable(_)) => {
                    return Ok(EntryId::new(Term::ZERO, i));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The follower side of AppendEntries: if `prev` matches, appends what
    /// is new in `ents` (truncating a conflicting suffix). Never truncates a
    /// committed entry.
    pub(crate) fn maybe_append(
        &mut self,
        prev: EntryId,
        mut ents: Vec<Entry>,
    ) -> Res<AppendOutcome> {
        if !self.matches(prev)? {
            return Ok(AppendOutcome::Mismatch);
        }
        let last_new = prev.index.plus(ents.len() as u64);
        // Only entries this log already has a slot for can match; the first
        // past its end is new without asking storage for a term.
        let last = self.last_index();
        let mut start = ents.len();
        for (i, e) in ents.iter().enumerate() {
            if e.index > last || !self.matches(e.id())? {
                start = i;
                break;
            }
        }
        if let Some(first_new) = ents.get(start) {
            if first_new.index <= self.committed {
                return Ok(AppendOutcome::ConflictsWithCommitted(first_new.index));
            }
            ents.drain(..start);
            self.unstable.truncate_and_append(ents);
        }
        Ok(AppendOutcome::Appended(last_new))
    }

    /// Appends entries at the end of the log (leader side).
    pub(crate) fn append(&mut self, ents: Vec<Entry>) {
        self.unstable.truncate_and_append(ents);
    }

    /// Entries from `lo` up to the end, at most `max_bytes` (at least one).
    pub(crate) fn entries_from(&self, lo: LogIndex, max_bytes: u64) -> Res<Vec<Entry>> {
        self.slice(lo, self.last_index().next(), max_bytes)
    }

    /// Entries in `[lo, hi)`, at most `max_bytes` (at least one if any).
    pub(crate) fn slice(&self, lo: LogIndex, hi: LogIndex, max_bytes: u64) -> Res<Vec<Entry>> {
        if lo >= hi {
            return Ok(Vec::new());
        }
        let first = self.first_index()?;
        if lo < first {
            return Err(StorageError::Compacted(lo));
        }
        if hi > self.last_index().next() {
            return Err(StorageError::Unavailable(hi.prev()));
        }
        let off = self.unstable.offset;
        let mut out = Vec::new();
        let mut size = 0u64;
        if lo < off {
            let stored = self.storage.entries(lo, hi.min(off), max_bytes)?;
            size = stored.iter().map(Entry::size).sum();
            let complete = stored.len() as u64 == hi.min(off).0 - lo.0;
            out = stored;
            if !complete {
                return Ok(out);
            }
        }
        if hi > off {
            let tail = self.unstable.slice(lo.max(off), hi);
            out.reserve(tail.len());
            for e in tail {
                size += e.size();
                if !out.is_empty() && size > max_bytes {
                    break;
                }
                out.push(e.clone());
            }
        }
        Ok(out)
    }

    /// Raises the commit index (never lowers it).
    pub(crate) fn commit_to(&mut self, index: LogIndex) {
        if index > self.committed {
            self.committed = index;
        }
    }

    /// The leader's commit rule: commits `index` only if its entry has the
    /// current `term` (Raft §5.4.2); earlier entries follow implicitly.
    pub(crate) fn maybe_commit(&mut self, index: LogIndex, term: Term) -> Res<bool> {
        if index > self.committed && self.term_or_zero(index)? == term {
            self.commit_to(index);
            return Ok(true);
        }
        Ok(false)
    }

    /// Whether committed entries are ready to be handed out for applying.
    pub(crate) fn has_next_committed(&self) -> bool {
        self.applying < self.committed.min(self.stable_last_index())
    }

    /// Whether entries can be handed out now: some are ready and those
    /// handed out earlier weigh less than `max_applying` bytes.
    pub(crate) fn can_hand_out(&self, max_applying: u64) -> bool {
        self.has_next_committed() && self.applying_bytes < max_applying
    }

    /// The next committed and durable entries to apply, at most `max_bytes`
    /// (none while `max_applying` bytes wait to be applied); marks them
    /// handed out.
    pub(crate) fn next_committed(&mut self, max_bytes: u64, max_applying: u64) -> Res<Vec<Entry>> {
        let hi = self.committed.min(self.stable_last_index());
        if self.applying >= hi || self.applying_bytes >= max_applying {
            return Ok(Vec::new());
        }
        let ents = self.slice(self.applying.next(), hi.next(), max_bytes)?;
        if let Some(last) = ents.last() {
            self.applying = last.index;
            let bytes: u64 = ents.iter().map(Entry::size).sum();
            self.applying_batches.push_back((last.index, bytes));
            self.applying_bytes += bytes;
        }
        Ok(ents)
    }

    pub(crate) fn applied_to(&mut self, index: LogIndex) {
        if index > self.applied {
            self.applied = index;
        }
        while let Some(&(last, bytes)) = self.applying_batches.front() {
            if last > index {
                break;
            }
            self.applying_batches.pop_front();
            self.applying_bytes -= bytes;
        }
    }

    pub(crate) fn has_to_persist(&self) -> bool {
        self.unstable.has_to_persist()
    }

    pub(crate) fn take_to_persist(&mut self) -> (Option<SnapshotMeta>, Vec<Entry>) {
        self.unstable.take_to_persist()
    }

    pub(crate) fn stable_to(&mut self, id: EntryId) {
        self.unstable.stable_to(id);
    }

    pub(crate) fn stable_snap_to(&mut self, index: LogIndex) {
        self.unstable.stable_snap_to(index);
    }

    /// Replaces the log with a snapshot received from the leader.
    pub(crate) fn restore(&mut self, snap: SnapshotMeta) {
        self.committed = snap.last_index;
        self.applying = snap.last_index;
        // Whatever was handed out before is superseded by the snapshot.
        self.applying_batches.clear();
        self.applying_bytes = 0;
        self.unstable.restore(snap);
    }

    /// The pending (unstable) snapshot, if any.
    pub(crate) fn pending_snapshot(&self) -> Option<&SnapshotMeta> {
        self.unstable.snapshot.as_ref()
    }
}

#[cfg(test)]
mod tests;

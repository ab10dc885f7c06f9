//! The store's contents in memory, and how each record changes them: the
//! same code replays the segments when the store opens and applies each
//! change after it is written.

use dengine_core::storage::checks::{
    check_read, hard_state_after_install, is_newer_snapshot, within_bytes,
};
use dengine_core::{Bytes, Entry, EntryId, EntryPayload, HardState, LogIndex, StorageError, Term};

use crate::record::{Install, Meta, Record};

/// The metadata and the uncompacted log.
#[derive(Debug, Default)]
pub(crate) struct Log {
    pub(crate) meta: Meta,
    /// Consecutive entries. While segments are replayed the first may come
    /// after `base + 1` (the entries between lived in segments deleted
    /// once a compaction covered them, which a later record shows);
    /// [`Log::finish`] checks that they start right after the base.
    pub(crate) entries: Vec<Entry>,
}

impl Log {
    pub(crate) fn first_index(&self) -> LogIndex {
        self.meta.base.index.next()
    }

    pub(crate) fn last_index(&self) -> LogIndex {
        self.entries
            .last()
            .map_or(self.meta.base.index, |e| e.index)
    }

    /// The term at `index`, if the log holds it or it is the base.
    pub(crate) fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.meta.base.index {
            return Some(self.meta.base.term);
        }
        let first = self.entries.first()?.index;
        if index < first {
            return None;
        }
        self.entries
            .get((index.0 - first.0) as usize)
            .map(|e| e.term)
    }

    /// [`dengine_core::LogStorage::term`].
    pub(crate) fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        if index < self.meta.base.index {
            return Err(StorageError::Compacted(index));
        }
        self.term_at(index).ok_or(StorageError::Unavailable(index))
    }

    /// [`dengine_core::LogStorage::entries`].
    pub(crate) fn entries(
        &self,
        lo: LogIndex,
        hi: LogIndex,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        if !check_read(lo, hi, self.first_index(), self.last_index())? {
            return Ok(Vec::new());
        }
        let first = self.first_index();
        let range = &self.entries[(lo.0 - first.0) as usize..(hi.0 - first.0) as usize];
        Ok(within_bytes(range, max_bytes).to_vec())
    }

    /// Whether installing a snapshot ending at `last` keeps the entries
    /// after it: the log holds its last entry with its term.
    pub(crate) fn keeps_after(&self, last: EntryId) -> bool {
        self.term_at(last.index) == Some(last.term)
    }

    /// Applies a record. `Err` names what is inconsistent (only replay can
    /// meet that: live writes are checked before they are written).
    pub(crate) fn apply(&mut self, record: Record) -> Result<(), String> {
        match record {
            Record::Checkpoint(meta) => {
                self.meta = meta;
                self.entries.clear();
            }
            Record::Write {
                install,
                hard_state,
                entries,
            } => self.apply_write(install, hard_state, &entries)?,
            Record::Compact(base) => {
                self.entries.retain(|e| e.index > base.index);
                self.meta.base = base;
            }
            Record::Identity(id) => self.meta.identity = Some(id),
            Record::Snapshot(meta) => {
                if is_newer_snapshot(&self.meta.snapshot, &meta) {
                    self.meta.snapshot = meta;
                }
            }
        }
        Ok(())
    }

    /// Applies a write record (the entries are copied into the log).
    pub(crate) fn apply_write(
        &mut self,
        install: Option<Install>,
        hard_state: Option<HardState>,
        entries: &[Entry],
    ) -> Result<(), String> {
        if let Some(Install { meta, keep }) = install {
            if keep {
                self.entries.retain(|e| e.index > meta.last_index);
            } else {
                self.entries.clear();
            }
            self.meta.base = meta.last_id();
            if let Some(hs) = hard_state_after_install(&self.meta.hard_state, &meta) {
                self.meta.hard_state = hs;
            }
            self.meta.snapshot = meta;
        }
        self.append(entries)?;
        if let Some(hs) = hard_state {
            self.meta.hard_state = hs;
        }
        Ok(())
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), String> {
        let Some(head) = entries.first().map(|e| e.index) else {
            return Ok(());
        };
        match self.entries.first().map(|e| e.index) {
            // Replaces the stored suffix from `head` on.
            Some(first) if head >= first => {
                let last = self.last_index();
                if head > last.next() {
                    return Err(format!("log entry {} is missing", last.next()));
                }
                self.entries.truncate((head.0 - first.0) as usize);
            }
            // Nothing stored, or all of it replaced.
            _ => self.entries.clear(),
        }
        self.entries.extend(with_own_payloads(entries));
        Ok(())
    }

    /// After replay: drops what the base covers and checks the log starts
    /// right after it.
    pub(crate) fn finish(&mut self) -> Result<(), String> {
        let base = self.meta.base.index;
        self.entries.retain(|e| e.index > base);
        match self.entries.first() {
            Some(e) if e.index != base.next() => {
                Err(format!("log entry {} is missing", base.next()))
            }
            _ => Ok(()),
        }
    }
}

/// `entries` with their payloads copied into one buffer of exactly their
/// size. A payload may be a slice of a far larger buffer (a follower's
/// entries are slices of the network message they came in, in a read
/// buffer that grows by doubling; a replayed entry is a slice of a whole
/// segment read at once), and the log would keep that whole buffer alive
/// until its last entry is compacted: measured, a follower held 30 MiB
/// more than the leader for the same 90,000 entries. The entries of one
/// write are compacted together, so their one buffer goes with them.
fn with_own_payloads(entries: &[Entry]) -> impl Iterator<Item = Entry> + '_ {
    let payload = |e: &Entry| match &e.payload {
        EntryPayload::Normal(data) => data.len(),
        _ => 0,
    };
    let mut buf = Vec::with_capacity(entries.iter().map(payload).sum());
    for e in entries {
        if let EntryPayload::Normal(data) = &e.payload {
            buf.extend_from_slice(data);
        }
    }
    let all = Bytes::from(buf);
    let mut at = 0;
    entries.iter().map(move |e| match &e.payload {
        EntryPayload::Normal(data) => {
            let own = all.slice(at..at + data.len());
            at += data.len();
            Entry {
                term: e.term,
                index: e.index,
                payload: EntryPayload::Normal(own),
            }
        }
        _ => e.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_payloads_are_copies_that_keep_no_larger_buffer_alive() {
        // Three entries' payloads in a buffer of 1 MiB, as a network
        // message's entries are.
        let big = Bytes::from(vec![7u8; 1 << 20]);
        let entries: Vec<Entry> = (1..=3u64)
            .map(|i| Entry {
                term: Term(1),
                index: LogIndex(i),
                payload: EntryPayload::Normal(big.slice(i as usize * 10..i as usize * 10 + 5)),
            })
            .chain([Entry {
                term: Term(1),
                index: LogIndex(4),
                payload: EntryPayload::Blank,
            }])
            .collect();
        let mut log = Log::default();
        log.append(&entries).expect("append");
        assert_eq!(log.entries, entries, "the same entries");
        let inside = |p: *const u8| {
            let start = big.as_ptr() as usize;
            (start..start + big.len()).contains(&(p as usize))
        };
        for e in &log.entries {
            if let EntryPayload::Normal(data) = &e.payload {
                assert!(
                    !inside(data.as_ptr()),
                    "entry {} still points into the message",
                    e.index.0
                );
            }
        }
    }
}

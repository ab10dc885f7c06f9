//! The log's runs: consecutive entries under one sled key, and what is
//! kept in memory about them.

use dengine_core::codec::CodecError;
use dengine_core::{Entry, EntryId, LogIndex, Term};

use crate::chunk::VALUE_MAX_BYTES;

/// The most entries a write puts in one run (readers accept any number).
pub const RUN_MAX_ENTRIES: usize = 1024;
/// A write starts a new run rather than let one grow past this many bytes;
/// an entry larger than that gets a run of its own (readers accept any
/// size).
///
/// Equal to [`VALUE_MAX_BYTES`]: a run of several entries then always fits
/// in one sled value, and only a run of one entry is stored in chunks (see
/// [`crate::chunk`] for why values are kept this small).
pub const RUN_MAX_BYTES: usize = VALUE_MAX_BYTES;

/// The `log` tree's key of the run starting at `index`: big-endian, so
/// keys sort as indexes.
pub fn log_key(index: LogIndex) -> [u8; 8] {
    index.0.to_be_bytes()
}

/// The records of a run's value, in order: each one is its length (`u32`,
/// little-endian) and that many bytes. Framing that does not fit the value
/// (a torn run) yields [`CodecError::Truncated`], then nothing more.
pub(crate) struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Records<'a> {
    pub(crate) fn new(run: &'a [u8]) -> Records<'a> {
        Records { rest: run }
    }

    /// How many bytes are left after the records read so far.
    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Whether no bytes are left after the records read so far.
    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<&'a [u8], CodecError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let framed = self.rest.split_first_chunk::<4>().and_then(|(len, rest)| {
            let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
            (len <= rest.len()).then(|| rest.split_at(len))
        });
        match framed {
            Some((record, rest)) => {
                self.rest = rest;
                Some(Ok(record))
            }
            None => {
                self.rest = &[];
                Some(Err(CodecError::Truncated))
            }
        }
    }
}

/// The term of every entry of the log: the id of the first entry of each
/// stretch of one term, in index order. The first stretch may start at or
/// below the base.
#[derive(Clone, Debug, Default)]
pub(crate) struct Terms(Vec<EntryId>);

impl Terms {
    /// The term at `index`, if a stretch starts at or before it (the caller
    /// knows that `index` is in the log).
    pub(crate) fn get(&self, index: LogIndex) -> Option<Term> {
        let n = self.0.partition_point(|id| id.index <= index);
        self.0.get(n.checked_sub(1)?).map(|id| id.term)
    }

    /// Records an entry appended at the end of the log.
    pub(crate) fn push(&mut self, id: EntryId) {
        if self.0.last().map(|last| last.term) != Some(id.term) {
            self.0.push(id);
        }
    }

    /// Forgets the entries from `index` on.
    pub(crate) fn truncate(&mut self, index: LogIndex) {
        let n = self.0.partition_point(|id| id.index < index);
        self.0.truncate(n);
    }

    /// Forgets the stretches that end at or below `index`.
    pub(crate) fn compact(&mut self, index: LogIndex) {
        let n = self.0.partition_point(|id| id.index <= index.next());
        if n > 1 {
            self.0.drain(..n - 1);
        }
    }
}

/// What [`LogStorage::entries`] is collecting.
pub(crate) struct Take {
    /// The next index wanted.
    pub(crate) next: LogIndex,
    /// The end of the range wanted (exclusive).
    pub(crate) hi: LogIndex,
    pub(crate) max_bytes: u64,
    /// The size of the entries in `out`.
    pub(crate) size: u64,
    pub(crate) out: Vec<Entry>,
    /// Whether `max_bytes` is reached.
    pub(crate) full: bool,
}

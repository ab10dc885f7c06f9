//! The `log` tree as sled holds it: each run under the key of its first
//! entry, in chunks of at most [`VALUE_MAX_BYTES`] (see [`crate::chunk`]).
//!
//! Chunk 0 is stored under [`log_key`] (8 bytes), chunk `n >= 1` under
//! [`chunk_key`] (the same 8 bytes, then `n` as a big-endian `u32`). sled
//! orders keys as bytes, so a run's chunks follow its first key in order
//! and come before the next run's key; a run that fits one chunk (every
//! run of small entries) is the single 8-byte key the store has always
//! written.

use std::iter::Peekable;

use dengine_core::LogIndex;
use sled::IVec;

use crate::chunk::{VALUE_MAX_BYTES, pieces};
use crate::run::log_key;

/// The `log` tree's key of chunk `n` (from 1) of the run starting at
/// `start`.
pub fn chunk_key(start: LogIndex, n: u32) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(&log_key(start));
    key[8..].copy_from_slice(&n.to_be_bytes());
    key
}

/// What a `log` key names: the run starting at an index, and which of its
/// chunks (0 for the run's own key). `None` for a key of another length.
pub(crate) fn parse_key(key: &[u8]) -> Option<(LogIndex, u32)> {
    let (start, n) = key.split_first_chunk::<8>()?;
    let start = LogIndex(u64::from_be_bytes(*start));
    match n.len() {
        0 => Some((start, 0)),
        4 => {
            let n: [u8; 4] = n.try_into().ok()?;
            Some((start, u32::from_be_bytes(n)))
        }
        _ => None,
    }
}

/// Adds the run `bytes` starting at `start` to `batch`, in chunks; returns
/// how many.
pub(crate) fn insert_run(batch: &mut sled::Batch, start: LogIndex, bytes: &[u8]) -> u32 {
    let mut n = 0u32;
    for piece in pieces(bytes, VALUE_MAX_BYTES) {
        if n == 0 {
            batch.insert(&log_key(start)[..], piece);
        } else {
            batch.insert(&chunk_key(start, n)[..], piece);
        }
        n += 1;
    }
    n
}

/// Adds to `batch` the removal of the run starting at `start`, stored in
/// `chunks` chunks.
pub(crate) fn remove_run(batch: &mut sled::Batch, start: LogIndex, chunks: u32) {
    batch.remove(&log_key(start)[..]);
    for n in 1..chunks {
        batch.remove(&chunk_key(start, n)[..]);
    }
}

/// A run read back whole.
pub(crate) struct StoredRun {
    /// The index of its first entry.
    pub(crate) start: LogIndex,
    /// Its records (its chunks joined).
    pub(crate) bytes: IVec,
    /// How many chunks it is stored in.
    pub(crate) chunks: u32,
}

/// Why the runs of the `log` tree could not be read back.
#[derive(Debug)]
pub(crate) enum StoredRunError {
    /// sled failed to read.
    Sled(sled::Error),
    /// A key of neither 8 nor 12 bytes.
    BadKey { len: usize },
    /// Chunk `n >= 1` of the run at `start`, with no run key before it.
    NoFirstChunk { start: LogIndex, n: u32 },
    /// Chunk `n` of the run at `start` is missing (a later one is there).
    MissingChunk { start: LogIndex, n: u32 },
}

/// The runs of a range of the `log` tree, their chunks joined, in order.
/// After an error the iterator is not to be used any further.
pub(crate) struct StoredRuns<I: Iterator<Item = sled::Result<(IVec, IVec)>>> {
    keys: Peekable<I>,
}

impl<I: Iterator<Item = sled::Result<(IVec, IVec)>>> StoredRuns<I> {
    /// Reads the runs of `range`, which must start at a run's key.
    pub(crate) fn new(range: I) -> Self {
        StoredRuns {
            keys: range.peekable(),
        }
    }

    /// Whether the next key is a chunk (not the first) of the run at
    /// `start`.
    fn next_is_chunk_of(&mut self, start: LogIndex) -> bool {
        matches!(
            self.keys.peek(),
            Some(Ok((key, _))) if parse_key(key).is_some_and(|(s, n)| s == start && n > 0)
        )
    }
}

impl<I: Iterator<Item = sled::Result<(IVec, IVec)>>> Iterator for StoredRuns<I> {
    type Item = Result<StoredRun, StoredRunError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (key, first) = match self.keys.next()? {
            Ok(kv) => kv,
            Err(e) => return Some(Err(StoredRunError::Sled(e))),
        };
        let start = match parse_key(&key) {
            Some((start, 0)) => start,
            Some((start, n)) => return Some(Err(StoredRunError::NoFirstChunk { start, n })),
            None => return Some(Err(StoredRunError::BadKey { len: key.len() })),
        };
        // One chunk: the value as sled holds it, no copy.
        let mut joined: Option<Vec<u8>> = None;
        let mut chunks = 1u32;
        while self.next_is_chunk_of(start) {
            let Some(Ok((key, piece))) = self.keys.next() else {
                break;
            };
            if parse_key(&key) != Some((start, chunks)) {
                let n = chunks;
                return Some(Err(StoredRunError::MissingChunk { start, n }));
            }
            joined
                .get_or_insert_with(|| first.to_vec())
                .extend_from_slice(&piece);
            chunks = chunks.saturating_add(1);
        }
        Some(Ok(StoredRun {
            start,
            bytes: joined.map_or(first, IVec::from),
            chunks,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(batch: sled::Batch) -> sled::Tree {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("log").unwrap();
        tree.apply_batch(batch).unwrap();
        tree
    }

    #[test]
    fn runs_come_back_whole_whatever_their_size() {
        let small = vec![1u8; 10];
        let exact = vec![2u8; VALUE_MAX_BYTES];
        let large: Vec<u8> = (0..3 * VALUE_MAX_BYTES + 5).map(|i| i as u8).collect();
        let mut batch = sled::Batch::default();
        assert_eq!(insert_run(&mut batch, LogIndex(1), &small), 1);
        assert_eq!(insert_run(&mut batch, LogIndex(2), &exact), 1);
        assert_eq!(insert_run(&mut batch, LogIndex(3), &large), 4);
        assert_eq!(insert_run(&mut batch, LogIndex(4), &small), 1);
        let tree = stored(batch);
        assert!(tree.iter().all(|kv| kv.unwrap().1.len() <= VALUE_MAX_BYTES));
        let runs: Vec<StoredRun> = StoredRuns::new(tree.iter()).map(Result::unwrap).collect();
        let got: Vec<(u64, &[u8], u32)> = runs
            .iter()
            .map(|r| (r.start.0, r.bytes.as_ref(), r.chunks))
            .collect();
        assert_eq!(
            got,
            [
                (1, &small[..], 1),
                (2, &exact[..], 1),
                (3, &large[..], 4),
                (4, &small[..], 1)
            ]
        );
        let mut batch = sled::Batch::default();
        remove_run(&mut batch, LogIndex(3), 4);
        tree.apply_batch(batch).unwrap();
        let starts: Vec<u64> = StoredRuns::new(tree.iter())
            .map(|r| r.unwrap().start.0)
            .collect();
        assert_eq!(starts, [1, 2, 4]);
    }

    #[test]
    fn damaged_chunking_is_reported() {
        let large = vec![3u8; 3 * VALUE_MAX_BYTES];
        let mut batch = sled::Batch::default();
        insert_run(&mut batch, LogIndex(5), &large);
        let tree = stored(batch);
        tree.remove(chunk_key(LogIndex(5), 1)).unwrap();
        let got = StoredRuns::new(tree.iter()).next().unwrap();
        assert!(matches!(
            got,
            Err(StoredRunError::MissingChunk {
                start: LogIndex(5),
                n: 1
            })
        ));
        tree.remove(log_key(LogIndex(5))).unwrap();
        let got = StoredRuns::new(tree.iter()).next().unwrap();
        assert!(matches!(
            got,
            Err(StoredRunError::NoFirstChunk {
                start: LogIndex(5),
                n: 2
            })
        ));
        tree.remove(chunk_key(LogIndex(5), 2)).unwrap();
        tree.insert(b"odd", &b"x"[..]).unwrap();
        let got = StoredRuns::new(tree.iter()).next().unwrap();
        assert!(matches!(got, Err(StoredRunError::BadKey { len: 3 })));
    }
}

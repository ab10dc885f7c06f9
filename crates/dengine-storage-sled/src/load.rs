//! Opening a store: every record read and checked before it is used.

use dengine_core::codec::{self, CodecError};
use dengine_core::{LogIndex, StorageError, StoreIdentity};

use super::*;
use crate::stored::parse_key;
use dengine_core::storage::checks::check_base_covered;

impl SledStore {
    /// Reads one meta record, checking it.
    pub(crate) fn load_meta<T>(
        &self,
        key: &[u8],
        decode: impl FnOnce(&[u8]) -> Result<T, CodecError>,
    ) -> Result<Option<T>, StorageError> {
        let name = String::from_utf8_lossy(key);
        let Some(raw) = self
            .meta
            .get(key)
            .map_err(|e| self.sled_err(&format!("cannot read meta record `{name}`"), e))?
        else {
            return Ok(None);
        };
        decode(&raw)
            .map(Some)
            .map_err(|e| self.fatal(format_args!("meta record `{name}` is corrupt: {e}")))
    }

    /// The first index of the run a `log` key (a run's or one of its
    /// chunks') belongs to; `after`: the last entry known before it, for
    /// messages.
    pub(crate) fn key_start(&self, key: &[u8], after: LogIndex) -> Result<LogIndex, StorageError> {
        match parse_key(key) {
            Some((start, _)) => Ok(start),
            None => Err(self.stored_run_err(StoredRunError::BadKey { len: key.len() }, after)),
        }
    }

    /// The error for runs that could not be read back after entry
    /// `after`.
    pub(crate) fn stored_run_err(&self, e: StoredRunError, after: LogIndex) -> StorageError {
        match e {
            StoredRunError::Sled(e) => {
                self.sled_err(&format!("cannot read the log after entry {after}"), e)
            }
            StoredRunError::BadKey { len } => self.fatal(format_args!(
                "the log holds a key of {len} bytes after entry {after} (keys are 8 or 12 bytes)"
            )),
            StoredRunError::NoFirstChunk { start, n } => self.fatal(format_args!(
                "log entry {start} is missing: chunk {n} of the run at {start} is stored \
                 without the run's first chunk"
            )),
            StoredRunError::MissingChunk { start, n } => self.fatal(format_args!(
                "log entry {start} is corrupt: chunk {n} of the run at {start} is missing"
            )),
        }
    }

    /// The error for a record at `index` (in the run starting at `start`,
    /// stored as `run`) whose framing is torn: or, if the whole run is one
    /// entry record, for a store in the old one-key-per-entry layout.
    pub(crate) fn torn_record(&self, start: LogIndex, index: LogIndex, run: &[u8]) -> StorageError {
        if index == start && codec::decode_entry(run).is_ok_and(|e| e.index == start) {
            return self.fatal(format_args!(
                "log entry {start} is stored in the old layout (one key per entry), \
                 which this version does not read: restore the node from its peers"
            ));
        }
        self.corrupt_entry(index, CodecError::Truncated)
    }

    /// Decodes and checks the record found at `index` in the run starting at
    /// `start`.
    pub(crate) fn check_entry(
        &self,
        start: LogIndex,
        index: LogIndex,
        raw: &[u8],
    ) -> Result<Entry, StorageError> {
        let entry = codec::decode_entry(raw).map_err(|e| self.corrupt_entry(index, e))?;
        if entry.index > index {
            return Err(self.fatal(format_args!(
                "log entry {index} is missing: the run at {start} holds entry {} in its place",
                entry.index
            )));
        }
        if entry.index < index {
            return Err(self.fatal(format_args!(
                "log entry {index} is corrupt: its record holds entry {}",
                entry.index
            )));
        }
        Ok(entry)
    }

    /// Reads and checks everything; returns what to cache.
    pub(crate) fn load(&self) -> Result<State, StorageError> {
        let hard_state = self
            .load_meta(KEY_HARD_STATE, codec::decode_hard_state)?
            .unwrap_or_default();
        let base = self
            .load_meta(KEY_BASE, codec::decode_entry_id)?
            .unwrap_or_default();
        let snapshot = self
            .load_meta(KEY_SNAPSHOT, codec::decode_snapshot_meta)?
            .unwrap_or_default();
        let identity =
            self.load_meta(KEY_IDENTITY, codec::decode_identity)?
                .map(|(cluster_id, node_id)| StoreIdentity {
                    cluster_id,
                    node_id,
                });
        check_base_covered(&base, &snapshot).map_err(|r| self.refused(r))?;
        let first = LogIndex(base.index.0.checked_add(1).ok_or_else(|| {
            self.fatal(format_args!(
                "the log's base (index {}) is too large",
                base.index
            ))
        })?);
        let mut terms = Terms::default();
        // Where the next run must start; `None` before the first run, which
        // may start at or below the base but must hold `first`.
        let mut next: Option<LogIndex> = None;
        for run in StoredRuns::new(self.log.iter()) {
            let after = next.map_or(base.index, LogIndex::prev);
            let run = run.map_err(|e| self.stored_run_err(e, after))?;
            let (start, value) = (run.start, &run.bytes);
            let expected = next.unwrap_or(first);
            if start > expected {
                return Err(self.fatal(format_args!(
                    "log entry {expected} is missing (the next stored entry is {start})"
                )));
            }
            if next.is_some() && start < expected {
                return Err(self.fatal(format_args!(
                    "log entry {start} is stored twice: the run at {start} overlaps \
                     the run before it, which ends at entry {after}"
                )));
            }
            let mut index = start;
            for record in Records::new(value) {
                let record = record.map_err(|_| self.torn_record(start, index, value))?;
                let entry = self.check_entry(start, index, record)?;
                if index > base.index {
                    terms.push(entry.id());
                }
                index = LogIndex(index.0.checked_add(1).ok_or_else(|| {
                    self.fatal(format_args!("the run at {start} runs past the last index"))
                })?);
            }
            if index == start {
                return Err(self.fatal(format_args!(
                    "log entry {start} is missing: the run stored under it is empty"
                )));
            }
            // The writer puts an entry that needs chunks in a run of its
            // own, so that a lost last chunk always shows as a torn record
            // (a run of several entries could lose whole entries unseen).
            if run.chunks > 1 && index != start.next() {
                return Err(self.fatal(format_args!(
                    "log entry {start} is corrupt: the run at {start} is stored in {} chunks \
                     but holds {} entries (a run in chunks holds one)",
                    run.chunks,
                    index.0 - start.0
                )));
            }
            if index <= first {
                return Err(self.fatal(format_args!(
                    "log entry {start} is stored but the log starts after its base \
                     (entry {}): the run at {start} ends at entry {}",
                    base.index,
                    index.prev()
                )));
            }
            next = Some(index);
        }
        Ok(State {
            base,
            last: next.map_or(base.index, LogIndex::prev),
            terms,
            hard_state,
            snapshot,
            identity,
        })
    }
}

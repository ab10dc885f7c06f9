//! # dengine-storage-wal: the Raft log in an append-only write-ahead log
//!
//! [`WalStore`] implements the core's [`LogStore`] (with [`LogStorage`]
//! and [`MetaStore`]) on plain files: every change is one record appended
//! to the current segment, and [`LogStore::sync`] is one `fdatasync`. It
//! is the log of a node on the default (sled) storage: sled pays about
//! 10 µs per insert and rewrites its pages, where an append costs a copy.
//!
//! ```text
//! dengine-core  <-  dengine-storage-wal  <-  dengine-runtime
//! ```
//!
//! ```no_run
//! use dengine_core::{LogStorage, LogStore};
//! use dengine_storage_wal::WalStore;
//!
//! # fn main() -> Result<(), dengine_core::StorageError> {
//! let store = WalStore::open("/var/lib/dengine/node-1/wal")?;
//! let init = store.initial_state()?;
//! // ... hand `store` to the node; the runtime calls `write` then `sync`.
//! # let _ = init;
//! # Ok(()) }
//! ```
//!
//! ## Layout
//!
//! A directory of **segments**, `0000000000000001.wal`, `…02.wal`, …
//! (the sequence number in 16 hex digits), and a `LOCK` file that one
//! process holds locked while the store is open. A segment is 512-byte
//! sectors, each with a tag of 8 bytes (the segment's sequence number and
//! the sector's place, with a checksum: see `sectors`) and 504 bytes of a
//! sequence of frames (`frame`: length, checksums, body), which run on
//! from one sector to the next. (Segments written before this layout are
//! frames alone; they are still read, and appended to in their layout.)
//! Each frame holds one
//! record (`record`): a checkpoint of the whole metadata (first in every
//! segment), a write (a snapshot installed, a hard state, entries), a
//! compaction, the identity, a snapshot's metadata. A write record of
//! entries starting at index `i` replaces every entry from `i` on, as a
//! [`LogStore::write`] does. Entries are in the core's record codec, each
//! with its own CRC32.
//!
//! Each segment is written over bytes that are already on disk (an
//! `fdatasync` then writes the data alone, not the file's size as well:
//! about half the time and CPU of syncing an append on ext4): over zeros
//! written and synced before, or over an older segment's file. The next
//! segment is prepared while the current one fills, as
//! `<name>.wal.prep`, and renamed into place when needed; a `.prep` file
//! a crash leaves is deleted when the store opens. A new store's first
//! segment is 256 KiB, each next one twice its predecessor's size, up to
//! [`WalOptions::segment_bytes`] (64 MiB). Once the current segment's
//! records fill it, the next record goes into the next segment, which
//! starts with a checkpoint. A segment is done with once a compaction
//! (synced) covers every entry it holds (the checkpoints of the segments
//! after it hold all the metadata it did): the first such file of the
//! full size is kept, as `recycled.wal.prep`, and the next full-size
//! segment is written over it; others are deleted. Only when there is no
//! such file is the next segment's file written with zeros first, by a
//! thread of its own, paced to the rate the log is written at, so that
//! they do not queue ahead of the log's syncs at the disk. (Written over
//! an older segment, the log costs the disk its records alone, where
//! zeros first would double that.)
//!
//! ## Memory
//!
//! The uncompacted log is kept in memory (the entries' payloads are
//! shared, not copied, when they are read), so a node's memory grows with
//! its log until a snapshot lets it compact: set the snapshot threshold
//! accordingly. Opening the store reads every segment.
//!
//! ## Durability, crashes and damage
//!
//! Records are written in order with one `write` each (on Linux around
//! the page cache, `O_DIRECT`, where the file system allows: the segment's
//! last, partly filled block is kept in memory and written again with
//! what follows it, as the page cache would; see `direct`) and made durable
//! by `sync` (`fdatasync` of the current segment, and of the directory
//! when a segment was created since the last sync; a segment is synced
//! before the next one starts, so durability stays in order). A
//! compaction, the identity and a snapshot's metadata are synced before
//! the call returns.
//!
//! When the store opens, each segment is read to its end: the frames of
//! its sectors tagged for it, from the first on. The last segment may end
//! with a record that was never wholly written (a crash during a write
//! that `sync` had not made durable, so nobody was told it was): a record
//! that runs on into a sector still as it was before (an older segment's
//! tag, or zeros), with no sector of this segment after it (in the layout
//! before: a record that runs past the end of the file, or whose checksum
//! fails and part of which reads as zeros, with only zeros after it).
//! That record is overwritten with zeros (so that what is appended next
//! is not followed by its remains) and the store opens with what came
//! before. A sector a crash can leave only as it was or as written, so a
//! record whose sectors are all this segment's and whose checksum fails
//! is damage, as is a sector whose tag is no segment's. Anything
//! else that does not check (a bad checksum elsewhere, a damaged length,
//! an entry that does not decode, a missing entry) fails the open with
//! [`StorageError::Fatal`], naming the segment and, where it can, the
//! entry, for example `wal store /data/n1/wal: segment
//! 0000000000000001.wal: log entry 7 is corrupt: ...`. Nothing is
//! repaired silently.
#![deny(missing_docs)]

mod direct;
pub mod frame;
mod log;
mod record;
mod sectors;
mod segment;
mod spare;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use dengine_core::storage::StoreRefusal;
use dengine_core::storage::checks::{
    check_append, check_base_covered, check_compaction, check_identity, is_newer_snapshot,
};
use dengine_core::{
    Entry, EntryId, HardState, InitialState, LogIndex, LogStorage, LogStore, MetaStore,
    SnapshotMeta, StorageError, StoreIdentity, Term,
};

use crate::log::Log;
use crate::record::{Install, Record};
use crate::segment::Journal;

/// Settings of a [`WalStore`].
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// The size segments grow to: a new store's first segment is 256 KiB,
    /// each next one twice as large, up to this. A segment whose records
    /// fill it is closed and the next record starts a new one. Default
    /// 64 MiB.
    pub segment_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The Raft log in segment files (see the [crate docs](crate)).
pub struct WalStore {
    dir: PathBuf,
    /// What the records written so far make: read by the protocol task.
    log: RwLock<Log>,
    /// The files, written by the disk thread. Lock order: `journal`, then
    /// `log`.
    journal: Mutex<Journal>,
    /// Held locked while the store is open.
    _lock: File,
}

impl std::fmt::Debug for WalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl WalStore {
    /// Opens (or creates) the store in the directory `dir`, with the
    /// default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<WalStore, StorageError> {
        WalStore::open_with(dir, WalOptions::default())
    }

    /// Opens (or creates) the store in the directory `dir`: reads and
    /// checks every segment (see the [crate docs](crate)).
    pub fn open_with(dir: impl AsRef<Path>, options: WalOptions) -> Result<WalStore, StorageError> {
        let dir = dir.as_ref().to_path_buf();
        let fatal =
            |what: String| StorageError::Fatal(format!("wal store {}: {what}", dir.display()));
        std::fs::create_dir_all(&dir).map_err(|e| fatal(format!("creating it: {e}")))?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))
            .map_err(|e| fatal(format!("opening its LOCK file: {e}")))?;
        lock.try_lock().map_err(|e| {
            fatal(format!(
                "it is in use (its LOCK file is held by another store or process): {e}"
            ))
        })?;
        let (journal, log) = Journal::open(&dir, options.segment_bytes).map_err(fatal)?;
        Ok(WalStore {
            dir,
            log: RwLock::new(log),
            journal: Mutex::new(journal),
            _lock: lock,
        })
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The segment files, oldest first.
    pub fn segments(&self) -> Vec<PathBuf> {
        self.journal().map_or_else(|_| Vec::new(), |j| j.paths())
    }

    fn fatal(&self, what: impl std::fmt::Display) -> StorageError {
        StorageError::Fatal(format!("wal store {}: {what}", self.dir.display()))
    }

    fn refusal(&self, r: StoreRefusal) -> StorageError {
        r.into_storage_error(|r| self.fatal(r))
    }

    fn read_log(&self) -> RwLockReadGuard<'_, Log> {
        // The lock is never held across anything that can panic halfway
        // through a change: a poisoned lock still holds a whole state.
        self.log.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_log(&self) -> RwLockWriteGuard<'_, Log> {
        self.log.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The journal, unless a failed write or sync left it unusable.
    fn journal(&self) -> Result<MutexGuard<'_, Journal>, StorageError> {
        let j = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        match &j.failed {
            Some(why) => Err(self.fatal(format!("an earlier write failed: {why}"))),
            None => Ok(j),
        }
    }

    /// Writes `body` as the next record and applies `record` to the log
    /// (a record without entries: writes go through [`LogStore::write`]).
    fn append(
        &self,
        j: &mut Journal,
        body: &[u8],
        record: Record,
        sync: bool,
    ) -> Result<(), StorageError> {
        self.write_record(j, |out| out.extend_from_slice(body), None)?;
        if sync {
            j.sync().map_err(|e| self.fatal(e))?;
        }
        self.write_log()
            .apply(record)
            .map_err(|e| self.fatal(format!("applying a record just written: {e}")))
    }

    /// Appends the record `body` writes, whose entries end at `max_index`.
    fn write_record(
        &self,
        j: &mut Journal,
        body: impl FnOnce(&mut Vec<u8>),
        max_index: Option<LogIndex>,
    ) -> Result<(), StorageError> {
        j.append(body, max_index, || {
            record::checkpoint(&self.read_log().meta)
        })
        .map_err(|e| self.fatal(e))
    }
}

impl LogStorage for WalStore {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        let log = self.read_log();
        Ok(InitialState {
            hard_state: log.meta.hard_state,
            conf_state: log.meta.snapshot.conf_state.clone(),
            applied: log.meta.snapshot.last_index,
        })
    }

    fn entries(
        &self,
        lo: LogIndex,
        hi: LogIndex,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_log().entries(lo, hi, max_bytes)
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        self.read_log().term(index)
    }

    fn first_index(&self) -> Result<LogIndex, StorageError> {
        Ok(self.read_log().first_index())
    }

    fn last_index(&self) -> Result<LogIndex, StorageError> {
        Ok(self.read_log().last_index())
    }

    fn snapshot_meta(&self) -> Result<SnapshotMeta, StorageError> {
        Ok(self.read_log().meta.snapshot.clone())
    }
}

impl MetaStore for WalStore {
    fn identity(&self) -> Result<Option<StoreIdentity>, StorageError> {
        Ok(self.read_log().meta.identity)
    }

    fn set_identity(&self, id: StoreIdentity) -> Result<(), StorageError> {
        let mut j = self.journal()?;
        let recorded = self.read_log().meta.identity;
        if !check_identity(recorded, id).map_err(|r| self.refusal(r))? {
            return Ok(());
        }
        self.append(&mut j, &record::identity(id), Record::Identity(id), true)
    }

    fn save_snapshot_meta(&self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        let mut j = self.journal()?;
        if !is_newer_snapshot(&self.read_log().meta.snapshot, meta) {
            return Ok(());
        }
        self.append(
            &mut j,
            &record::snapshot(meta),
            Record::Snapshot(meta.clone()),
            true,
        )
    }
}

impl LogStore for WalStore {
    fn write(
        &self,
        snapshot: Option<&SnapshotMeta>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        let mut j = self.journal()?;
        let install = {
            let log = self.read_log();
            let install = snapshot.map(|meta| Install {
                meta: meta.clone(),
                keep: log.keeps_after(meta.last_id()),
            });
            // The log the entries are appended to: after the install.
            let (first, last) = match &install {
                Some(i) if i.keep => (
                    i.meta.last_index.next(),
                    log.last_index().max(i.meta.last_index),
                ),
                Some(i) => (i.meta.last_index.next(), i.meta.last_index),
                None => (log.first_index(), log.last_index()),
            };
            check_append(entries, first, last).map_err(|r| self.refusal(r))?;
            install
        };
        self.write_record(
            &mut j,
            |out| record::write_into(out, install.as_ref(), hard_state, entries),
            entries.last().map(|e| e.index),
        )?;
        self.write_log()
            .apply_write(install, hard_state.copied(), entries)
            .map_err(|e| self.fatal(format!("applying a write just made: {e}")))
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.journal()?.sync().map_err(|e| self.fatal(e))
    }

    fn compact(&self, index: LogIndex) -> Result<(), StorageError> {
        let mut j = self.journal()?;
        let base = {
            let log = self.read_log();
            let todo = check_compaction(index, log.meta.base.index, log.meta.snapshot.last_index)
                .map_err(|r| self.refusal(r))?;
            if !todo {
                return Ok(());
            }
            let term = log.term_at(index).ok_or(StorageError::Unavailable(index))?;
            EntryId::new(term, index)
        };
        check_base_covered(&base, &self.read_log().meta.snapshot).map_err(|r| self.refusal(r))?;
        self.append(&mut j, &record::compact(&base), Record::Compact(base), true)?;
        j.delete_covered(index).map_err(|e| self.fatal(e))
    }
}

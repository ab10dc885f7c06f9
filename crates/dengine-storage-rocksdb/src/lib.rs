//! # dengine-storage-rocksdb: durable Raft storage on RocksDB
//!
//! [`RocksStore`] is a [`LogStore`] (the Raft log, the hard state, the
//! snapshot metadata and the store's identity) kept in a
//! [RocksDB](https://rocksdb.org) database. It passes the same conformance
//! suite as every other backend (`dengine_core::testing::store_suite`).
//!
//! ```text
//! dengine-core  <-  dengine-storage-rocksdb  <-  dengine
//! ```
//!
//! ## Layout on disk
//!
//! One RocksDB database per node, with two column families:
//!
//! | column family | key | value |
//! | --- | --- | --- |
//! | [`LOG_CF`] (`log`) | the entry's index, big-endian `u64` (so keys sort by index) | [`codec::encode_entry`] |
//! | [`META_CF`] (`meta`) | `hard_state` | [`codec::encode_hard_state`] |
//! | | `base` (the id of the entry just before the first one) | [`codec::encode_entry_id`] |
//! | | `snapshot` | [`codec::encode_snapshot_meta`] |
//! | | `identity` | [`codec::encode_identity`] |
//!
//! Every value is a sealed record carrying its own CRC32, on top of
//! RocksDB's block checksums: a record damaged anywhere between the codec
//! and the disk is caught.
//!
//! ## Checks on open
//!
//! [`RocksStore::open`] reads every record back before it returns: each
//! meta record, and every log entry from `base + 1` on. Each must pass its
//! checksum and decode to the end, the log keys must be consecutive from
//! `base + 1`, each entry's index must equal its key, and terms must never
//! decrease. Any problem is a [`StorageError::Fatal`] naming the database
//! path and the index (or record) at fault; nothing is skipped or repaired
//! silently. Opening costs one sequential read of the log, which compaction
//! keeps short.
//!
//! ## Durability
//!
//! [`LogStore::write`] is one atomic RocksDB `WriteBatch` (log and meta
//! together) written to the write-ahead log without `fsync`
//! (`WriteOptions::sync = false`); [`LogStore::sync`] fsyncs the WAL
//! (`DB::flush_wal(true)`), making every earlier write durable at once, so
//! a runtime can group many writes behind one fsync. Because
//! `manual_wal_flush` is off, every write reaches the operating system
//! before `write` returns: a killed process loses nothing, only a machine
//! crash can lose writes made after the last `sync`. WAL recovery runs in
//! point-in-time mode, so such a loss cuts the log at a batch boundary: the
//! store reopens as a clean prefix of what was written, never a torn batch.
//! [`MetaStore::set_identity`] and [`MetaStore::save_snapshot_meta`] are
//! rare and promised durable, so they write with `sync = true`.
//!
//! ## Tuning
//!
//! * The `log` column family is not compressed: entries are written once,
//!   read soon after, and deleted by compaction, so compression would cost
//!   CPU on the hot path for little space. Its memtable is 64 MiB.
//! * Truncating a conflicting suffix, installing a snapshot and compacting
//!   the log are single range deletions (`delete_range`), not one delete per
//!   entry.
//! * The `meta` column family holds four small records; it uses a small
//!   memtable and no compression.
//! * RocksDB's own info log keeps at most a few files.
//!
//! ## Concurrency
//!
//! [`RocksStore`] is `Send + Sync` and every method takes `&self`. The first
//! and last index, the base, the hard state, the snapshot metadata and the
//! identity are cached in memory behind a read-write lock. Writes hold the
//! lock while they update RocksDB and the cache; reads share it; `sync`
//! does not take it, so the protocol can read while a disk thread fsyncs.
//!
//! ## Build cost
//!
//! The `rocksdb` crate builds RocksDB (C++) from source: the first build
//! takes about 11.5 minutes on two idle cores (debug profile; 13 to 19
//! minutes when other builds share the cores), and needs `clang`'s library
//! for bindgen (on Debian: `apt-get install libclang-dev`) and a C++
//! compiler. Later builds reuse it, but each distinct build configuration
//! compiles it again: a release build, and `cargo clippy` (whose `check`
//! units do not share RocksDB's build-script output with `cargo build`).
#![deny(missing_docs)]

/// The rocksdb crate this store is built on (so users open other databases
/// with the same version).
pub use rocksdb;

use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use dengine_core::codec;
use dengine_core::storage::checks::{
    check_append, check_base_covered, check_compaction, check_identity, check_read,
    hard_state_after_install, is_newer_snapshot,
};
use dengine_core::storage::{
    InitialState, LogStorage, LogStore, MetaStore, StoreIdentity, StoreRefusal,
};
use dengine_core::{Entry, EntryId, HardState, LogIndex, SnapshotMeta, StorageError, Term};
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType, DBRecoveryMode, Direction,
    IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions,
};

/// The column family holding the log: key = index (big-endian `u64`),
/// value = [`codec::encode_entry`].
pub const LOG_CF: &str = "log";
/// The column family holding the hard state, the base, the snapshot
/// metadata and the identity.
pub const META_CF: &str = "meta";

const HARD_STATE_KEY: &[u8] = b"hard_state";
const BASE_KEY: &[u8] = b"base";
const SNAPSHOT_KEY: &[u8] = b"snapshot";
const IDENTITY_KEY: &[u8] = b"identity";

/// The key of the log entry at `index`.
pub fn log_key(index: LogIndex) -> [u8; 8] {
    index.0.to_be_bytes()
}

/// What is cached in memory (always equal to what RocksDB holds).
#[derive(Clone, Debug, Default)]
struct State {
    /// The entry just before the first one in the log.
    base: EntryId,
    /// The last index (`base.index` if the log is empty).
    last: LogIndex,
    hard_state: HardState,
    snapshot: SnapshotMeta,
    identity: Option<StoreIdentity>,
}

impl State {
    fn first(&self) -> LogIndex {
        self.base.index.next()
    }
}

/// A durable [`LogStore`] on RocksDB. See the [crate documentation](crate).
pub struct RocksStore {
    db: DB,
    path: PathBuf,
    state: RwLock<State>,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RocksStore {
    /// The options of the `log` column family.
    fn log_cf_options() -> Options {
        let mut o = Options::default();
        o.set_compression_type(DBCompressionType::None);
        o.set_bottommost_compression_type(DBCompressionType::None);
        o.set_write_buffer_size(64 << 20);
        o
    }

    /// The options of the `meta` column family.
    fn meta_cf_options() -> Options {
        let mut o = Options::default();
        o.set_compression_type(DBCompressionType::None);
        o.set_write_buffer_size(1 << 20);
        o
    }

    /// The database options (also the column families' descriptors), for
    /// opening the database.
    fn db_options() -> Options {
        let mut o = Options::default();
        o.create_if_missing(true);
        o.create_missing_column_families(true);
        o.set_paranoid_checks(true);
        o.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
        o.set_manual_wal_flush(false);
        o.set_keep_log_file_num(4);
        o
    }

    /// The column family descriptors, for tools that open the database
    /// directly (tests that damage it on purpose, for example).
    pub fn column_families() -> Vec<ColumnFamilyDescriptor> {
        vec![
            ColumnFamilyDescriptor::new(LOG_CF, Self::log_cf_options()),
            ColumnFamilyDescriptor::new(META_CF, Self::meta_cf_options()),
        ]
    }

    /// Opens (or creates) the store at `path` and verifies every record in
    /// it (see the [crate documentation](crate#checks-on-open)).
    pub fn open(path: impl AsRef<Path>) -> Result<RocksStore, StorageError> {
        let path = path.as_ref().to_path_buf();
        let db = DB::open_cf_descriptors(&Self::db_options(), &path, Self::column_families())
            .map_err(|e| {
                StorageError::Fatal(format!(
                    "cannot open rocksdb store at {}: {e}",
                    path.display()
                ))
            })?;
        let mut store = RocksStore {
            db,
            path,
            state: RwLock::new(State::default()),
        };
        let state = store.load()?;
        store.state = RwLock::new(state);
        Ok(store)
    }

    /// The database's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fatal(&self, what: impl std::fmt::Display) -> StorageError {
        StorageError::Fatal(format!("rocksdb store at {}: {what}", self.path.display()))
    }

    fn refused(&self, r: StoreRefusal) -> StorageError {
        r.into_storage_error(|r| self.fatal(r))
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily, StorageError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| self.fatal(format_args!("column family {name} is missing")))
    }

    fn read_state(&self) -> Result<RwLockReadGuard<'_, State>, StorageError> {
        self.state
            .read()
            .map_err(|_| self.fatal("state lock poisoned by a panic in another thread"))
    }

    fn write_state(&self) -> Result<RwLockWriteGuard<'_, State>, StorageError> {
        self.state
            .write()
            .map_err(|_| self.fatal("state lock poisoned by a panic in another thread"))
    }

    /// Reads and decodes one meta record.
    fn meta_record<T, E: std::fmt::Display>(
        &self,
        key: &[u8],
        decode: impl FnOnce(&[u8]) -> Result<T, E>,
    ) -> Result<Option<T>, StorageError> {
        let name = String::from_utf8_lossy(key);
        let raw = self
            .db
            .get_pinned_cf(self.cf(META_CF)?, key)
            .map_err(|e| self.fatal(format_args!("cannot read the {name} record: {e}")))?;
        match raw {
            None => Ok(None),
            Some(raw) => decode(&raw)
                .map(Some)
                .map_err(|e| self.fatal(format_args!("the {name} record is corrupt: {e}"))),
        }
    }

    /// Decodes the log record stored under `key`, checking that it is the
    /// entry at `expected`.
    fn decode_log_record(
        &self,
        key: &[u8],
        value: &[u8],
        expected: LogIndex,
    ) -> Result<Entry, StorageError> {
        let Ok(key) = <[u8; 8]>::try_from(key) else {
            return Err(self.fatal(format_args!(
                "log key of {} bytes where entry {expected} was expected",
                key.len()
            )));
        };
        let at = LogIndex(u64::from_be_bytes(key));
        if at != expected {
            return Err(self.fatal(format_args!(
                "log entry {expected} is missing (the next stored entry is {at})"
            )));
        }
        let entry = codec::decode_entry(value)
            .map_err(|e| self.fatal(format_args!("log entry at index {at} is corrupt: {e}")))?;
        if entry.index != at {
            return Err(self.fatal(format_args!(
                "log record at index {at} holds the entry of index {}",
                entry.index
            )));
        }
        Ok(entry)
    }

    /// Reads and verifies everything stored.
    fn load(&self) -> Result<State, StorageError> {
        let hard_state = self
            .meta_record(HARD_STATE_KEY, codec::decode_hard_state)?
            .unwrap_or_default();
        let base = self
            .meta_record(BASE_KEY, codec::decode_entry_id)?
            .unwrap_or_default();
        let snapshot = self
            .meta_record(SNAPSHOT_KEY, codec::decode_snapshot_meta)?
            .unwrap_or_default();
        let identity =
            self.meta_record(IDENTITY_KEY, codec::decode_identity)?
                .map(|(cluster_id, node_id)| StoreIdentity {
                    cluster_id,
                    node_id,
                });
        check_base_covered(&base, &snapshot).map_err(|r| self.refused(r))?;

        let mut expected = base.index.next();
        let mut term = base.term;
        for item in self.db.iterator_cf(self.cf(LOG_CF)?, IteratorMode::Start) {
            let (key, value) = item.map_err(|e| {
                self.fatal(format_args!("cannot read the log at index {expected}: {e}"))
            })?;
            let entry = self.decode_log_record(&key, &value, expected)?;
            if entry.term < term {
                return Err(self.fatal(format_args!(
                    "log entry at index {} has term {} after term {term}",
                    entry.index, entry.term
                )));
            }
            term = entry.term;
            expected = expected.next();
        }
        Ok(State {
            base,
            last: LogIndex(expected.0 - 1),
            hard_state,
            snapshot,
            identity,
        })
    }

    /// The term of `index` if the log knows it (base or stored entry).
    fn term_at(&self, st: &State, index: LogIndex) -> Result<Option<Term>, StorageError> {
        if index == st.base.index {
            return Ok(Some(st.base.term));
        }
        if index < st.base.index || index > st.last {
            return Ok(None);
        }
        let raw = self
            .db
            .get_pinned_cf(self.cf(LOG_CF)?, log_key(index))
            .map_err(|e| self.fatal(format_args!("cannot read log entry {index}: {e}")))?
            .ok_or_else(|| self.fatal(format_args!("log entry {index} is missing")))?;
        let entry = self.decode_log_record(&log_key(index), &raw, index)?;
        Ok(Some(entry.term))
    }

    /// Writes `batch` to the WAL (and memtables), without `fsync` unless
    /// `sync`.
    fn commit(&self, batch: WriteBatch, sync: bool, what: &str) -> Result<(), StorageError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        opts.disable_wal(false);
        self.db
            .write_opt(batch, &opts)
            .map_err(|e| self.fatal(format_args!("cannot write {what}: {e}")))
    }
}

impl LogStorage for RocksStore {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        let st = self.read_state()?;
        Ok(InitialState {
            hard_state: st.hard_state,
            conf_state: st.snapshot.conf_state.clone(),
            applied: st.snapshot.last_index,
        })
    }

    fn entries(
        &self,
        lo: LogIndex,
        hi: LogIndex,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let st = self.read_state()?;
        let mut out = Vec::new();
        if !check_read(lo, hi, st.first(), st.last)? {
            return Ok(out);
        }
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(log_key(hi));
        let from = log_key(lo);
        let iter = self.db.iterator_cf_opt(
            self.cf(LOG_CF)?,
            opts,
            IteratorMode::From(&from, Direction::Forward),
        );
        let mut expected = lo;
        let mut size = 0;
        for item in iter {
            let (key, value) = item
                .map_err(|e| self.fatal(format_args!("cannot read log entry {expected}: {e}")))?;
            let entry = self.decode_log_record(&key, &value, expected)?;
            size += entry.size();
            if !out.is_empty() && size > max_bytes {
                return Ok(out);
            }
            out.push(entry);
            expected = expected.next();
        }
        if expected < hi {
            return Err(self.fatal(format_args!("log entry {expected} is missing")));
        }
        Ok(out)
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        let st = self.read_state()?;
        if index < st.base.index {
            return Err(StorageError::Compacted(index));
        }
        if index > st.last {
            return Err(StorageError::Unavailable(index));
        }
        self.term_at(&st, index)?
            .ok_or(StorageError::Unavailable(index))
    }

    fn first_index(&self) -> Result<LogIndex, StorageError> {
        Ok(self.read_state()?.first())
    }

    fn last_index(&self) -> Result<LogIndex, StorageError> {
        Ok(self.read_state()?.last)
    }

    fn snapshot_meta(&self) -> Result<SnapshotMeta, StorageError> {
        Ok(self.read_state()?.snapshot.clone())
    }
}

impl MetaStore for RocksStore {
    fn identity(&self) -> Result<Option<StoreIdentity>, StorageError> {
        Ok(self.read_state()?.identity)
    }

    fn set_identity(&self, id: StoreIdentity) -> Result<(), StorageError> {
        let mut st = self.write_state()?;
        if !check_identity(st.identity, id).map_err(|r| self.refused(r))? {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(META_CF)?,
            IDENTITY_KEY,
            codec::encode_identity(id.cluster_id, id.node_id),
        );
        self.commit(batch, true, "the identity")?;
        st.identity = Some(id);
        Ok(())
    }

    fn save_snapshot_meta(&self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        let mut st = self.write_state()?;
        if !is_newer_snapshot(&st.snapshot, meta) {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(META_CF)?,
            SNAPSHOT_KEY,
            codec::encode_snapshot_meta(meta),
        );
        self.commit(batch, true, "the snapshot metadata")?;
        st.snapshot = meta.clone();
        Ok(())
    }
}

impl LogStore for RocksStore {
    fn write(
        &self,
        snapshot: Option<&SnapshotMeta>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        let mut st = self.write_state()?;
        // Work on a copy: the cache changes only once RocksDB took the batch.
        let mut next = st.clone();
        let log = self.cf(LOG_CF)?;
        let meta_cf = self.cf(META_CF)?;
        let mut batch = WriteBatch::default();
        let mut hard_state_changed = false;

        if let Some(meta) = snapshot {
            let keep = self.term_at(&next, meta.last_index)? == Some(meta.last_term);
            // Drop every stored entry up to the snapshot (all of them if the
            // tail does not match).
            let drop_to = if keep { meta.last_index } else { next.last };
            if drop_to > next.base.index {
                batch.delete_range_cf(log, log_key(next.first()), log_key(drop_to.next()));
            }
            if !keep {
                next.last = meta.last_index;
            }
            next.base = meta.last_id();
            if let Some(hs) = hard_state_after_install(&next.hard_state, meta) {
                next.hard_state = hs;
                hard_state_changed = true;
            }
            next.snapshot = meta.clone();
            batch.put_cf(meta_cf, BASE_KEY, codec::encode_entry_id(&next.base));
            batch.put_cf(meta_cf, SNAPSHOT_KEY, codec::encode_snapshot_meta(meta));
        }

        check_append(entries, next.first(), next.last).map_err(|r| self.refused(r))?;
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            if first.index <= next.last {
                batch.delete_range_cf(log, log_key(first.index), log_key(next.last.next()));
            }
            for e in entries {
                batch.put_cf(log, log_key(e.index), codec::encode_entry(e));
            }
            next.last = last.index;
        }

        if let Some(hs) = hard_state {
            next.hard_state = *hs;
            hard_state_changed = true;
        }
        if hard_state_changed {
            batch.put_cf(
                meta_cf,
                HARD_STATE_KEY,
                codec::encode_hard_state(&next.hard_state),
            );
        }

        if !batch.is_empty() {
            self.commit(batch, false, "a log batch")?;
        }
        *st = next;
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.db
            .flush_wal(true)
            .map_err(|e| self.fatal(format_args!("cannot sync the write-ahead log: {e}")))
    }

    fn compact(&self, index: LogIndex) -> Result<(), StorageError> {
        let mut st = self.write_state()?;
        let needed = check_compaction(index, st.base.index, st.snapshot.last_index)
            .map_err(|r| self.refused(r))?;
        if !needed {
            return Ok(());
        }
        let term = self
            .term_at(&st, index)?
            .ok_or(StorageError::Unavailable(index))?;
        let base = EntryId::new(term, index);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(LOG_CF)?, log_key(st.first()), log_key(index.next()));
        batch.put_cf(self.cf(META_CF)?, BASE_KEY, codec::encode_entry_id(&base));
        self.commit(batch, false, "a compaction")?;
        st.base = base;
        Ok(())
    }
}

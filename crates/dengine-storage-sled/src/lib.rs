//! # dengine-storage-sled: durable Raft storage on sled
//!
//! [`SledStore`] implements the core's [`LogStore`] (with [`LogStorage`] and
//! [`MetaStore`]) on the [sled](https://docs.rs/sled) embedded database, a
//! pure-Rust alternative to `dengine-storage-rocksdb`.
//!
//! ```text
//! dengine-core  <-  dengine-storage-sled  <-  dengine
//! ```
//!
//! ```no_run
//! use dengine_core::{LogStorage, LogStore};
//! use dengine_storage_sled::SledStore;
//!
//! # fn main() -> Result<(), dengine_core::StorageError> {
//! let store = SledStore::open("/var/lib/dengine/node-1")?;
//! let init = store.initial_state()?;
//! // ... hand `store` to the node; the runtime calls `write` then `sync`.
//! # let _ = init;
//! # Ok(()) }
//! ```
//!
//! ## Layout
//!
//! One sled database per node, in the directory given to
//! [`SledStore::open`], with two trees:
//!
//! - `log`: key = the entry's index as a big-endian `u64` (so sled's key
//!   order is log order), value = [`codec::encode_entry`].
//! - `meta`: `hard_state` ([`codec::encode_hard_state`]), `base` (the id of
//!   the entry just before the first one, [`codec::encode_entry_id`]),
//!   `snapshot` ([`codec::encode_snapshot_meta`]) and `identity`
//!   ([`codec::encode_identity`]). A missing key means the default value.
//!
//! Every value is a record sealed with a CRC32 by the core's codec.
//!
//! ## Checks on open
//!
//! [`SledStore::open`] reads **every** record and checks it: its checksum,
//! that it parses to the end, that log keys run consecutively from
//! `base + 1`, that each entry's own index matches its key, and that the
//! snapshot covers the base. Any problem fails the open with
//! [`StorageError::Fatal`] naming the directory and the index (or meta key),
//! for example `sled store /data/n1: log entry 7 is corrupt: checksum
//! mismatch (...)`. Nothing is skipped or repaired silently: a store that
//! does not open needs an operator (restore the node from its peers).
//! Reading the whole log makes opening O(log size); keep the log compacted.
//! Records read later (by [`LogStorage::entries`] and [`LogStorage::term`])
//! are checked again, and a failure there is also `Fatal`.
//!
//! ## Writes, atomicity and durability
//!
//! [`LogStore::write`] builds one [`sled::Batch`] per tree and applies them
//! together in one sled transaction over both trees, which sled recovers
//! atomically: after a crash the store holds either the whole persist
//! batch (snapshot install, entries, hard state) or none of it, so the log
//! and its base never disagree. [`LogStore::compact`] works the same way.
//! Writes are durable only once [`LogStore::sync`] (`Db::flush`, which
//! fsyncs) returns; sled recovers its log as a prefix, so writes are
//! durable in the order they were made. [`MetaStore::set_identity`] and
//! [`MetaStore::save_snapshot_meta`] flush before returning.
//!
//! First/last index, base, hard state, snapshot metadata and identity are
//! cached in memory behind a lock; entries are read from sled (which has
//! its own cache). Readers share the lock; a write holds it exclusively
//! while its batches are applied (in memory, no fsync), so a reader never
//! sees half of a write. `sync` does not take the lock.
//!
//! ## sled: what is worth knowing
//!
//! - **Maturity and format.** sled 0.34 is a beta: its authors do not
//!   promise a stable on-disk format, and the 0.34 line is the last of its
//!   design (a rewrite is under way). Data written by this crate must be
//!   read by sled 0.34.x; a future sled will need a migration (for
//!   example: start the node empty and let it catch up by snapshot).
//! - **Space amplification.** sled is log-structured: every write appends
//!   to the current 512 KiB segment, and the space of overwritten or
//!   deleted records (a Raft log deletes everything it compacts) comes
//!   back only when sled's segment cleaner rewrites mostly-empty
//!   segments. The directory is routinely several times the live data,
//!   and more under heavy rewriting; sled is known for this.
//!   [`SledStore::size_on_disk`] reports what it uses.
//! - **Memory.** sled keeps a page cache of up to
//!   [`SledOptions::cache_capacity`] (sled's default: 1 GiB, lowered to the
//!   memory limit of a cgroup if there is one) on top of its own
//!   bookkeeping, and its resident memory has been reported to exceed that
//!   setting. Set a smaller capacity for small nodes; reads beyond the
//!   cache go to disk.
//! - **Background fsync.** By default sled flushes on its own every 500 ms
//!   ([`SledOptions::flush_every_ms`]), so an unsynced write may become
//!   durable before `sync` — never later than `sync` returns. Closing the
//!   store (dropping the last handle) also flushes and fsyncs; sled panics
//!   if that final fsync fails.
//! - **One process.** sled locks its directory: a second open of the same
//!   directory while a store is open fails (also within one process, until
//!   every handle is dropped).
//!
//! [`codec::encode_entry`]: dengine_core::codec::encode_entry
//! [`codec::encode_hard_state`]: dengine_core::codec::encode_hard_state
//! [`codec::encode_entry_id`]: dengine_core::codec::encode_entry_id
//! [`codec::encode_snapshot_meta`]: dengine_core::codec::encode_snapshot_meta
//! [`codec::encode_identity`]: dengine_core::codec::encode_identity
#![deny(missing_docs)]

/// The sled crate this store is built on (so users open other trees with
/// the same version).
pub use sled;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use dengine_core::codec::{self, CodecError};
use dengine_core::{
    Entry, EntryId, HardState, InitialState, LogIndex, LogStorage, LogStore, MetaStore,
    SnapshotMeta, StorageError, StoreIdentity, Term,
};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

/// Name of the tree holding the log.
pub const LOG_TREE: &str = "log";
/// Name of the tree holding the metadata.
pub const META_TREE: &str = "meta";
/// Meta key of the hard state.
pub const KEY_HARD_STATE: &[u8] = b"hard_state";
/// Meta key of the log's base (the entry before the first one).
pub const KEY_BASE: &[u8] = b"base";
/// Meta key of the newest snapshot's metadata.
pub const KEY_SNAPSHOT: &[u8] = b"snapshot";
/// Meta key of the store's identity.
pub const KEY_IDENTITY: &[u8] = b"identity";

/// The `log` tree's key of an index: big-endian, so keys sort as indexes.
pub fn log_key(index: LogIndex) -> [u8; 8] {
    index.0.to_be_bytes()
}

/// Tuning of the underlying sled database. The defaults are sled's.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SledOptions {
    /// Upper bound of sled's page cache in bytes (default 1 GiB).
    pub cache_capacity: u64,
    /// How often sled flushes and fsyncs in the background on its own, in
    /// milliseconds; `None` to flush only at [`LogStore::sync`] (default
    /// 500). Durability never depends on it.
    pub flush_every_ms: Option<u64>,
}

impl Default for SledOptions {
    fn default() -> Self {
        SledOptions {
            cache_capacity: 1024 * 1024 * 1024,
            flush_every_ms: Some(500),
        }
    }
}

impl SledOptions {
    /// Sets [`SledOptions::cache_capacity`].
    pub fn cache_capacity(mut self, bytes: u64) -> Self {
        self.cache_capacity = bytes;
        self
    }

    /// Sets [`SledOptions::flush_every_ms`].
    pub fn flush_every_ms(mut self, every: Option<u64>) -> Self {
        self.flush_every_ms = every;
        self
    }
}

/// What is cached of the store (everything but the entries).
#[derive(Clone, Debug, Default)]
struct State {
    /// The entry just before the first one in the log.
    base: EntryId,
    /// The last index in the log (`base.index` if the log is empty).
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

/// A durable Raft log store on sled. See the [crate docs](crate).
///
/// Shareable across threads (`&self` methods; wrap it in an `Arc`).
pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    state: RwLock<State>,
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("SledStore");
        d.field("path", &self.path);
        match self.state.read() {
            Ok(s) => d.field("state", &*s),
            Err(_) => d.field("state", &"<poisoned>"),
        };
        d.finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens the store in directory `path`, creating it if it does not
    /// exist, with sled's default tuning. Every record is read and checked
    /// (see the crate docs); any damage is a [`StorageError::Fatal`] naming
    /// the directory and the index.
    pub fn open(path: impl AsRef<Path>) -> Result<SledStore, StorageError> {
        SledStore::open_with(path, SledOptions::default())
    }

    /// [`SledStore::open`] with tuning.
    pub fn open_with(
        path: impl AsRef<Path>,
        options: SledOptions,
    ) -> Result<SledStore, StorageError> {
        let path = path.as_ref().to_path_buf();
        let fail = |what: &str, e: sled::Error| {
            StorageError::Fatal(format!("sled store {}: {what}: {e}", path.display()))
        };
        let db = open_db(&path, &options).map_err(|e| fail("cannot open the database", e))?;
        let log = db
            .open_tree(LOG_TREE)
            .map_err(|e| fail("cannot open the log tree", e))?;
        let meta = db
            .open_tree(META_TREE)
            .map_err(|e| fail("cannot open the meta tree", e))?;
        let mut store = SledStore {
            path,
            db,
            log,
            meta,
            state: RwLock::new(State::default()),
        };
        let state = store.load()?;
        store.state = RwLock::new(state);
        Ok(store)
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bytes sled uses on disk (see "Space amplification" in the crate
    /// docs).
    pub fn size_on_disk(&self) -> Result<u64, StorageError> {
        self.db
            .size_on_disk()
            .map_err(|e| self.sled_err("cannot read the size on disk", e))
    }

    fn fatal(&self, msg: impl fmt::Display) -> StorageError {
        StorageError::Fatal(format!("sled store {}: {msg}", self.path.display()))
    }

    fn sled_err(&self, what: &str, e: sled::Error) -> StorageError {
        self.fatal(format_args!("{what}: {e}"))
    }

    fn corrupt_entry(&self, index: u64, e: CodecError) -> StorageError {
        self.fatal(format_args!("log entry {index} is corrupt: {e}"))
    }

    fn read_state(&self) -> Result<RwLockReadGuard<'_, State>, StorageError> {
        self.state
            .read()
            .map_err(|_| self.fatal("state lock poisoned by a panic"))
    }

    fn write_state(&self) -> Result<RwLockWriteGuard<'_, State>, StorageError> {
        self.state
            .write()
            .map_err(|_| self.fatal("state lock poisoned by a panic"))
    }

    /// Reads one meta record, checking it.
    fn load_meta<T>(
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

    /// Reads and checks everything; returns what to cache.
    fn load(&self) -> Result<State, StorageError> {
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
        if base.index > snapshot.last_index {
            return Err(self.fatal(format_args!(
                "the log's base (index {}) is past the snapshot (index {}): \
                 entries up to {} were compacted without a snapshot covering them",
                base.index, snapshot.last_index, base.index
            )));
        }
        let mut expected = base.index.next();
        for item in self.log.iter() {
            let (key, value) = item.map_err(|e| {
                self.sled_err(
                    &format!("cannot read the log at entry {expected} (or after)"),
                    e,
                )
            })?;
            let Ok(raw_key) = <[u8; 8]>::try_from(key.as_ref()) else {
                return Err(self.fatal(format_args!(
                    "the log holds a key of {} bytes after entry {} (keys are 8 bytes)",
                    key.len(),
                    expected.prev()
                )));
            };
            let index = u64::from_be_bytes(raw_key);
            if index != expected.0 {
                return Err(if index < expected.0 {
                    self.fatal(format_args!(
                        "log entry {index} is stored but the log starts after its base \
                         (entry {})",
                        base.index
                    ))
                } else {
                    self.fatal(format_args!(
                        "log entry {expected} is missing (the next stored entry is {index})"
                    ))
                });
            }
            let entry = codec::decode_entry(&value).map_err(|e| self.corrupt_entry(index, e))?;
            if entry.index.0 != index {
                return Err(self.fatal(format_args!(
                    "log entry {index} is corrupt: its record holds entry {}",
                    entry.index
                )));
            }
            expected = expected.next();
        }
        Ok(State {
            base,
            last: expected.prev(),
            hard_state,
            snapshot,
            identity,
        })
    }

    /// Reads and checks the entry at `index`, which the log must hold.
    fn read_entry(&self, index: LogIndex) -> Result<Entry, StorageError> {
        let raw = self
            .log
            .get(log_key(index))
            .map_err(|e| self.sled_err(&format!("cannot read log entry {index}"), e))?
            .ok_or_else(|| self.fatal(format_args!("log entry {index} is missing")))?;
        self.check_entry(index, &raw)
    }

    fn check_entry(&self, index: LogIndex, raw: &[u8]) -> Result<Entry, StorageError> {
        let entry = codec::decode_entry(raw).map_err(|e| self.corrupt_entry(index.0, e))?;
        if entry.index != index {
            return Err(self.fatal(format_args!(
                "log entry {index} is corrupt: its record holds entry {}",
                entry.index
            )));
        }
        Ok(entry)
    }

    /// The term at `index` if the log (or its base) holds it.
    fn term_at(&self, s: &State, index: LogIndex) -> Result<Option<Term>, StorageError> {
        if index == s.base.index {
            return Ok(Some(s.base.term));
        }
        if index < s.base.index || index > s.last {
            return Ok(None);
        }
        Ok(Some(self.read_entry(index)?.term))
    }

    /// Applies a batch to each tree, atomically across both.
    fn apply(
        &self,
        log: Option<sled::Batch>,
        meta: Option<sled::Batch>,
    ) -> Result<(), StorageError> {
        match (log, meta) {
            (None, None) => Ok(()),
            (Some(l), None) => self
                .log
                .apply_batch(l)
                .map_err(|e| self.sled_err("cannot write the log", e)),
            (None, Some(m)) => self
                .meta
                .apply_batch(m)
                .map_err(|e| self.sled_err("cannot write the meta tree", e)),
            (Some(l), Some(m)) => (&self.log, &self.meta)
                .transaction(|(tl, tm)| {
                    tl.apply_batch(&l)?;
                    tm.apply_batch(&m)?;
                    Ok::<(), ConflictableTransactionError<()>>(())
                })
                .map_err(|e| match e {
                    TransactionError::Storage(e) => {
                        self.sled_err("cannot write the log and meta trees", e)
                    }
                    TransactionError::Abort(()) => {
                        self.fatal("the write transaction aborted unexpectedly")
                    }
                }),
        }
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| self.sled_err("cannot flush (fsync)", e))
    }
}

impl LogStorage for SledStore {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        let s = self.read_state()?;
        Ok(InitialState {
            hard_state: s.hard_state,
            conf_state: s.snapshot.conf_state.clone(),
            applied: s.snapshot.last_index,
        })
    }

    fn entries(
        &self,
        lo: LogIndex,
        hi: LogIndex,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let s = self.read_state()?;
        if lo < s.first() {
            return Err(StorageError::Compacted(lo));
        }
        if hi > s.last.next() {
            return Err(StorageError::Unavailable(hi));
        }
        let mut out = Vec::new();
        if lo >= hi {
            return Ok(out);
        }
        let mut size = 0u64;
        let mut expected = lo;
        for item in self.log.range(log_key(lo)..log_key(hi)) {
            let (key, value) =
                item.map_err(|e| self.sled_err(&format!("cannot read log entry {expected}"), e))?;
            if key.as_ref() != log_key(expected) {
                return Err(self.fatal(format_args!("log entry {expected} is missing")));
            }
            let e = self.check_entry(expected, &value)?;
            size = size.saturating_add(e.size());
            if !out.is_empty() && size > max_bytes {
                return Ok(out);
            }
            out.push(e);
            expected = expected.next();
        }
        if expected < hi {
            return Err(self.fatal(format_args!("log entry {expected} is missing")));
        }
        Ok(out)
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        let s = self.read_state()?;
        if index < s.base.index {
            return Err(StorageError::Compacted(index));
        }
        if index > s.last {
            return Err(StorageError::Unavailable(index));
        }
        match self.term_at(&s, index)? {
            Some(t) => Ok(t),
            None => Err(StorageError::Unavailable(index)),
        }
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

impl MetaStore for SledStore {
    fn identity(&self) -> Result<Option<StoreIdentity>, StorageError> {
        Ok(self.read_state()?.identity)
    }

    fn set_identity(&self, id: StoreIdentity) -> Result<(), StorageError> {
        let mut s = self.write_state()?;
        match s.identity {
            Some(old) if old == id => return Ok(()),
            Some(old) => {
                return Err(self.fatal(format_args!(
                    "the store belongs to cluster {} node {}, not cluster {} node {}",
                    old.cluster_id, old.node_id, id.cluster_id, id.node_id
                )));
            }
            None => {}
        }
        self.meta
            .insert(
                KEY_IDENTITY,
                codec::encode_identity(id.cluster_id, id.node_id),
            )
            .map_err(|e| self.sled_err("cannot write the identity", e))?;
        self.flush()?;
        s.identity = Some(id);
        Ok(())
    }

    fn save_snapshot_meta(&self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        let mut s = self.write_state()?;
        if meta.last_index <= s.snapshot.last_index {
            return Ok(());
        }
        self.meta
            .insert(KEY_SNAPSHOT, codec::encode_snapshot_meta(meta))
            .map_err(|e| self.sled_err("cannot write the snapshot metadata", e))?;
        self.flush()?;
        s.snapshot = meta.clone();
        Ok(())
    }
}

impl LogStore for SledStore {
    fn write(
        &self,
        snapshot: Option<&SnapshotMeta>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        let mut s = self.write_state()?;
        let mut next = s.clone();
        let mut log = sled::Batch::default();
        let mut meta = sled::Batch::default();
        let (mut log_dirty, mut meta_dirty) = (false, false);

        if let Some(snap) = snapshot {
            // Keep the entries after the snapshot only if the log holds the
            // snapshot's last entry (log matching then vouches for them).
            let keep = self.term_at(&s, snap.last_index)? == Some(snap.last_term);
            let drop_to = if keep { snap.last_index } else { s.last };
            for i in s.first().0..=drop_to.0 {
                log.remove(&log_key(LogIndex(i))[..]);
                log_dirty = true;
            }
            next.base = snap.last_id();
            if !keep {
                next.last = snap.last_index;
            }
            next.snapshot = snap.clone();
            meta.insert(KEY_BASE, codec::encode_entry_id(&next.base));
            meta.insert(KEY_SNAPSHOT, codec::encode_snapshot_meta(snap));
            if next.hard_state.commit < snap.last_index {
                next.hard_state.commit = snap.last_index;
                meta.insert(KEY_HARD_STATE, codec::encode_hard_state(&next.hard_state));
            }
            meta_dirty = true;
        }

        if let Some(first) = entries.first() {
            if first.index < next.first() {
                return Err(StorageError::Compacted(first.index));
            }
            if first.index > next.last.next() {
                return Err(self.fatal(format_args!(
                    "append at {} leaves a gap after {}",
                    first.index, next.last
                )));
            }
            let mut index = first.index;
            for e in entries {
                if e.index != index {
                    return Err(self.fatal(format_args!(
                        "appended entries are not consecutive: entry {} where {index} was expected",
                        e.index
                    )));
                }
                log.insert(&log_key(index)[..], codec::encode_entry(e));
                index = index.next();
            }
            let new_last = index.prev();
            // Remove the rest of a replaced suffix.
            for i in new_last.next().0..=next.last.0 {
                log.remove(&log_key(LogIndex(i))[..]);
            }
            next.last = new_last;
            log_dirty = true;
        }

        if let Some(hs) = hard_state {
            next.hard_state = *hs;
            meta.insert(KEY_HARD_STATE, codec::encode_hard_state(hs));
            meta_dirty = true;
        }

        if snapshot.is_none() {
            // The common path (entries and a hard state): two plain batches,
            // log first. sled recovers a prefix of its writes in order, so a
            // crash keeps either both, the entries alone, or neither; all
            // three are safe because nothing unsynced was acknowledged. A
            // transaction across the trees costs several times more.
            if log_dirty {
                self.log
                    .apply_batch(log)
                    .map_err(|e| self.sled_err("cannot write the log", e))?;
            }
            if meta_dirty {
                self.meta
                    .apply_batch(meta)
                    .map_err(|e| self.sled_err("cannot write the meta tree", e))?;
            }
        } else {
            // A new base and the entries it removes must change together.
            self.apply(log_dirty.then_some(log), meta_dirty.then_some(meta))?;
        }
        *s = next;
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.flush()
    }

    fn compact(&self, index: LogIndex) -> Result<(), StorageError> {
        let mut s = self.write_state()?;
        if index <= s.base.index {
            return Ok(());
        }
        if index > s.snapshot.last_index {
            return Err(self.fatal(format_args!(
                "compaction to {index} past the snapshot at {}",
                s.snapshot.last_index
            )));
        }
        let term = self
            .term_at(&s, index)?
            .ok_or(StorageError::Unavailable(index))?;
        let mut log = sled::Batch::default();
        for i in s.first().0..=index.0 {
            log.remove(&log_key(LogIndex(i))[..]);
        }
        let base = EntryId::new(term, index);
        let mut meta = sled::Batch::default();
        meta.insert(KEY_BASE, codec::encode_entry_id(&base));
        self.apply(Some(log), Some(meta))?;
        s.base = base;
        Ok(())
    }
}

/// Opens the raw sled database under a store (for tools and tests that
/// inspect or repair records), waiting for its lock like [`SledStore::open`].
pub fn open_raw(path: impl AsRef<Path>) -> Result<sled::Db, StorageError> {
    let path = path.as_ref();
    open_db(path, &SledOptions::default()).map_err(|e| {
        StorageError::Fatal(format!(
            "sled store {}: cannot open the database: {e}",
            path.display()
        ))
    })
}

/// Opens the sled database, waiting briefly for the directory lock: after a
/// store is dropped, sled's background threads may hold it a few moments
/// longer, and a quick reopen (a restart) should not fail because of that.
/// Opens a sled database with `options`, waiting up to 5 s for the
/// directory lock a process that just closed it may still hold (sled lets
/// go of it asynchronously). The key-value state machine opens its own
/// database with this too.
pub fn open_db(path: &Path, options: &SledOptions) -> Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let res = sled::Config::new()
            .path(path)
            .cache_capacity(options.cache_capacity)
            .flush_every_ms(options.flush_every_ms)
            .open();
        match res {
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.to_string().contains("could not acquire lock") =>
            {
                if std::time::Instant::now() >= deadline {
                    return Err(sled::Error::Io(e));
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

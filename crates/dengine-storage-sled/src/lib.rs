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
//! - `log`: the entries in **runs** of consecutive entries. A run's bytes
//!   are its entries in index order, each as its length (`u32`,
//!   little-endian) followed by its record ([`codec::encode_entry`],
//!   sealed with its own CRC32). They are stored in **chunks** of at most
//!   [`VALUE_MAX_BYTES`] (6 KiB): the first under the index of the run's
//!   first entry as a big-endian `u64` ([`log_key`], 8 bytes; sled's key
//!   order is log order), chunk `n >= 1` under the same 8 bytes followed
//!   by `n` as a big-endian `u32` ([`chunk_key`], 12 bytes), which sorts
//!   right after the run's first key and before the next run's. Runs of
//!   small entries fit one chunk; only a run of one large entry is split.
//!   Runs are contiguous: each one starts right after the one before it
//!   ends, and the last one ends at the last index.
//! - `meta`: `hard_state` ([`codec::encode_hard_state`]), `base` (the id of
//!   the entry just before the first one, [`codec::encode_entry_id`]),
//!   `snapshot` ([`codec::encode_snapshot_meta`]) and `identity`
//!   ([`codec::encode_identity`]). A missing key means the default value.
//!
//! Every record is sealed with a CRC32 by the core's codec.
//!
//! Each write stores its entries as new runs of at most
//! [`RUN_MAX_ENTRIES`] entries and [`RUN_MAX_BYTES`] (6 KiB, one chunk)
//! bytes; a larger entry gets a run of its own, in as many chunks as it
//! needs. A write never extends an existing run. Runs
//! exist because sled copies a B-tree leaf on every insert: one key per
//! entry made an append of n entries cost n leaf copies, one key per run
//! costs one. Replacing a suffix from index `i` removes every run starting
//! at or after `i` and rewrites the run holding `i` cut just before it.
//! Compaction removes only the runs that end at or below the new base: the
//! run holding the base stays whole, and its entries up to the base are
//! ignored (they go when the whole run is compacted).
//!
//! ## Checks on open
//!
//! [`SledStore::open`] reads **every** record and checks it: its checksum,
//! that it parses to the end, that each entry's own index is its place
//! (the run's key plus its position in the run), that the runs are
//! contiguous and the first one holds `base + 1`, that no run lies wholly
//! at or below the base, and that the snapshot covers the base; that a
//! run stored in several chunks has them all, numbered from 1 with no
//! gap, and holds a single entry (so that a lost last chunk shows as a
//! torn record). Any problem fails the open with [`StorageError::Fatal`] naming the
//! directory and the index (or meta key), for example `sled store
//! /data/n1: log entry 7 is corrupt: checksum mismatch (...)` or `log
//! entry 9 is missing`. Nothing is skipped or repaired silently: a store
//! that does not open needs an operator (restore the node from its peers).
//! Reading the whole log makes opening O(log size); keep the log
//! compacted. [`LogStorage::entries`] reads the runs again and checks each
//! entry it returns (a failure there is also `Fatal`);
//! [`LogStorage::term`] is answered from memory (see below).
//!
//! A store written by an older version of this crate with one key per
//! entry does not open: its first record is reported as such. One written
//! with runs but before chunks opens as it is (a run of one large entry is
//! then a single value, which sled keeps as a blob until it is compacted
//! away); an older version refuses a store with chunks (a key of 12
//! bytes).
//!
//! ## Writes, atomicity and durability
//!
//! [`LogStore::write`] builds one [`sled::Batch`] per tree. sled applies a
//! batch atomically, also across a crash, and recovers its log as a
//! prefix of the writes made: so a write's log changes (the runs of a
//! replaced suffix removed, the run holding its start cut, the new runs
//! added) survive a crash all together or not at all. A plain write
//! (entries and a hard state) applies the log batch, then the meta batch:
//! a crash keeps both, the entries alone, or neither, all safe because
//! nothing unsynced was acknowledged. A write that installs a snapshot,
//! and [`LogStore::compact`], change the base and the runs together in
//! one sled transaction over both trees, so the log and its base never
//! disagree. Writes are durable only once [`LogStore::sync`] (`Db::flush`,
//! which fsyncs) returns, and in the order they were made.
//! [`MetaStore::set_identity`] and [`MetaStore::save_snapshot_meta`]
//! flush before returning.
//!
//! First/last index, base, hard state, snapshot metadata, identity and the
//! term of every entry (kept as the indexes where the term changes, a
//! handful per log) are cached in memory behind a lock; `term` never reads
//! sled, entries are read from sled (which has its own cache). Readers
//! share the lock; a write holds it exclusively while its batches are
//! applied (in memory, no fsync), so a reader never sees half of a write.
//! `sync` does not take the lock.
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
//! - **Large values.** sled writes any page or update larger than a
//!   quarter of its 512 KiB segment to a file of its own under `blobs/`,
//!   and never fsyncs those files (sled issue #1077): after a power
//!   failure or an OS crash (not a process crash) such a file may be
//!   incomplete although sled's fsynced log refers to it, and sled then
//!   reports the page as corrupt. A leaf page holds up to 17 keys, so
//!   every value this store writes is at most [`VALUE_MAX_BYTES`] (runs,
//!   chunks of a large entry's run, the small meta records): no page of
//!   the store reaches the threshold, and `sync` makes entries of every
//!   size durable ([`chunk`] has the details; `tests/no_blobs.rs` writes
//!   1 MiB entries and finds no blob file).
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
use dengine_core::storage::StoreRefusal;
use dengine_core::storage::checks::{
    check_append, check_compaction, check_identity, check_read, hard_state_after_install,
    is_newer_snapshot,
};
use dengine_core::{
    Entry, EntryId, HardState, InitialState, LogIndex, LogStorage, LogStore, MetaStore,
    SnapshotMeta, StorageError, StoreIdentity, Term,
};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

pub mod chunk;
mod load;
mod options;
mod run;
mod stored;

pub use chunk::VALUE_MAX_BYTES;
pub use options::{SledOptions, open_db, open_raw};
pub use run::{RUN_MAX_BYTES, RUN_MAX_ENTRIES, log_key};
use run::{Records, Take, Terms};
pub use stored::chunk_key;
use stored::{StoredRun, StoredRunError, StoredRuns, insert_run, remove_run};

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
/// What is cached of the store (everything but the entries).
#[derive(Clone, Debug, Default)]
struct State {
    /// The entry just before the first one in the log.
    base: EntryId,
    /// The last index in the log (`base.index` if the log is empty).
    last: LogIndex,
    /// The terms of the entries `base + 1 ..= last`.
    terms: Terms,
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

    fn refused(&self, r: StoreRefusal) -> StorageError {
        r.into_storage_error(|r| self.fatal(r))
    }

    fn sled_err(&self, what: &str, e: sled::Error) -> StorageError {
        self.fatal(format_args!("{what}: {e}"))
    }

    fn corrupt_entry(&self, index: LogIndex, e: CodecError) -> StorageError {
        self.fatal(format_args!("log entry {index} is corrupt: {e}"))
    }

    fn missing_entry(&self, index: LogIndex) -> StorageError {
        self.fatal(format_args!("log entry {index} is missing"))
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

    /// The term at `index` if the log (or its base) holds it.
    fn term_at(&self, s: &State, index: LogIndex) -> Result<Option<Term>, StorageError> {
        if index == s.base.index {
            return Ok(Some(s.base.term));
        }
        if index < s.base.index || index > s.last {
            return Ok(None);
        }
        match s.terms.get(index) {
            Some(t) => Ok(Some(t)),
            None => Err(self.fatal(format_args!(
                "the term of log entry {index} is not cached (a bug)"
            ))),
        }
    }

    /// Moves the entries of `run` that `take` still wants to it, checking
    /// each.
    fn take_from_run(&self, run: &StoredRun, take: &mut Take) -> Result<(), StorageError> {
        let start = run.start;
        let mut index = start;
        for record in Records::new(&run.bytes) {
            if index >= take.hi {
                break;
            }
            let record = record.map_err(|e| self.corrupt_entry(index, e))?;
            if index == take.next {
                let e = self.check_entry(start, index, record)?;
                take.size = take.size.saturating_add(e.size());
                if !take.out.is_empty() && take.size > take.max_bytes {
                    take.full = true;
                    return Ok(());
                }
                take.out.push(e);
                take.next = index.next();
            }
            index = index.next();
        }
        Ok(())
    }

    /// The first index of the run holding the last `log` key below
    /// `bound`, if any (`at`: the entry sought, for messages).
    fn run_start_before(
        &self,
        bound: [u8; 8],
        at: LogIndex,
    ) -> Result<Option<LogIndex>, StorageError> {
        let key = self
            .log
            .range(..bound)
            .keys()
            .next_back()
            .transpose()
            .map_err(|e| self.sled_err(&format!("cannot read the run holding entry {at}"), e))?;
        key.map(|key| self.key_start(&key, at)).transpose()
    }

    /// The run holding entry `from - 1`, read whole, if any.
    fn run_before(&self, from: LogIndex) -> Result<Option<StoredRun>, StorageError> {
        let Some(start) = self.run_start_before(log_key(from), from.prev())? else {
            return Ok(None);
        };
        StoredRuns::new(self.log.range(log_key(start)..log_key(from)))
            .next()
            .transpose()
            .map_err(|e| self.stored_run_err(e, start.prev()))
    }

    /// Adds to `batch` the removal of the log from `from` on (`from` is at
    /// most the last index): the runs starting at or after `from` go, and
    /// the run holding `from` is cut before it (or goes, if what is left of
    /// it would lie at or below the base, that is if `from` is `first`).
    fn truncate_runs(
        &self,
        batch: &mut sled::Batch,
        from: LogIndex,
        first: LogIndex,
    ) -> Result<(), StorageError> {
        if let Some(run) = self.run_before(from)? {
            let start = run.start;
            let mut records = Records::new(&run.bytes);
            let mut index = start;
            while index < from {
                match records.next() {
                    Some(Ok(_)) => index = index.next(),
                    Some(Err(e)) => return Err(self.corrupt_entry(index, e)),
                    None => break,
                }
            }
            // Cut only if the run goes on past `from - 1`; otherwise the
            // next run starts at `from` and is removed with the rest below.
            if index == from && !records.is_empty() {
                // The cut run may need fewer chunks: remove them all, then
                // insert what is kept (a batch keeps the last change of
                // each key).
                remove_run(batch, start, run.chunks);
                if from > first {
                    let kept = run.bytes.len() - records.remaining();
                    insert_run(batch, start, &run.bytes[..kept]);
                }
            }
        }
        for key in self.log.range(log_key(from)..).keys() {
            let key =
                key.map_err(|e| self.sled_err(&format!("cannot read the log after {from}"), e))?;
            batch.remove(key);
        }
        Ok(())
    }

    /// Adds to `batch` the removal of the runs that end at or below `index`
    /// (at most `s.last`); returns whether there are any.
    fn compact_runs(
        &self,
        batch: &mut sled::Batch,
        s: &State,
        index: LogIndex,
    ) -> Result<bool, StorageError> {
        // A run ends where the next one starts, so of the runs starting at
        // or before `index + 1` every one but the last ends at or below
        // `index`. The last one holds `index + 1` unless it is the last run
        // of the log and the log ends at `index`. The keys (a run's and
        // its chunks') are read without their values.
        let mut removed = false;
        // The keys of the last run seen, and where it starts.
        let mut held: Option<(LogIndex, Vec<sled::IVec>)> = None;
        for key in self.log.range(..=chunk_key(index.next(), u32::MAX)).keys() {
            let key = key.map_err(|e| {
                self.sled_err(&format!("cannot read the log up to entry {index}"), e)
            })?;
            let start = self.key_start(&key, index)?;
            match &mut held {
                Some((at, keys)) if *at == start => keys.push(key),
                _ => {
                    if let Some((_, keys)) = held.replace((start, vec![key])) {
                        keys.into_iter().for_each(|k| batch.remove(k));
                        removed = true;
                    }
                }
            }
        }
        if let Some((start, keys)) = held
            && s.last <= index
            && start <= index
        {
            keys.into_iter().for_each(|k| batch.remove(k));
            removed = true;
        }
        Ok(removed)
    }

    /// Adds `entries` (consecutive) to `batch` as new runs.
    fn insert_runs(&self, batch: &mut sled::Batch, entries: &[Entry]) -> Result<(), StorageError> {
        let mut start = LogIndex::ZERO;
        let mut run: Vec<u8> = Vec::new();
        let mut count = 0;
        for e in entries {
            let record = codec::encode_entry(e);
            let len = u32::try_from(record.len()).map_err(|_| {
                self.fatal(format_args!(
                    "log entry {} is too large to store ({} bytes)",
                    e.index,
                    record.len()
                ))
            })?;
            if count > 0
                && (count == RUN_MAX_ENTRIES || run.len() + 4 + record.len() > RUN_MAX_BYTES)
            {
                insert_run(batch, start, &run);
                run.clear();
                count = 0;
            }
            if count == 0 {
                start = e.index;
            }
            run.extend_from_slice(&len.to_le_bytes());
            run.extend_from_slice(&record);
            count += 1;
        }
        if count > 0 {
            insert_run(batch, start, &run);
        }
        Ok(())
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
        if !check_read(lo, hi, s.first(), s.last)? {
            return Ok(Vec::new());
        }
        let mut take = Take {
            next: lo,
            hi,
            max_bytes,
            size: 0,
            out: Vec::new(),
            full: false,
        };
        // The run holding `lo` is the last one starting at or before it,
        // and each of the following runs starts where the one before ends.
        let Some(start) = self.run_start_before(log_key(lo.next()), lo)? else {
            return Err(self.missing_entry(lo));
        };
        let mut expected = start;
        for run in StoredRuns::new(self.log.range(log_key(start)..log_key(hi))) {
            let run = run.map_err(|e| self.stored_run_err(e, take.next.prev()))?;
            if run.start != expected {
                return Err(self.missing_entry(take.next));
            }
            self.take_from_run(&run, &mut take)?;
            if take.full || take.next >= hi {
                break;
            }
            expected = take.next;
        }
        if !take.full && take.next < hi {
            return Err(self.missing_entry(take.next));
        }
        Ok(take.out)
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
        if !check_identity(s.identity, id).map_err(|r| self.refused(r))? {
            return Ok(());
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
        if !is_newer_snapshot(&s.snapshot, meta) {
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
            if keep {
                log_dirty |= self.compact_runs(&mut log, &s, snap.last_index)?;
                next.terms.compact(snap.last_index);
            } else {
                for key in self.log.iter().keys() {
                    let key = key.map_err(|e| self.sled_err("cannot read the log", e))?;
                    log.remove(key);
                    log_dirty = true;
                }
                next.last = snap.last_index;
                next.terms = Terms::default();
            }
            next.base = snap.last_id();
            next.snapshot = snap.clone();
            meta.insert(KEY_BASE, codec::encode_entry_id(&next.base));
            meta.insert(KEY_SNAPSHOT, codec::encode_snapshot_meta(snap));
            if let Some(hs) = hard_state_after_install(&next.hard_state, snap) {
                next.hard_state = hs;
                meta.insert(KEY_HARD_STATE, codec::encode_hard_state(&hs));
            }
            meta_dirty = true;
        }

        check_append(entries, next.first(), next.last).map_err(|r| self.refused(r))?;
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            if first.index <= next.last {
                // Replace the suffix from `first.index`. `truncate_runs`
                // reads the tree as it was before this write; from the run
                // holding `first.index` on it is what `next` holds too (a
                // matching snapshot only removes runs that end below
                // `first.index`, and after one that did not match
                // `next.last` is the snapshot, so this does not run).
                self.truncate_runs(&mut log, first.index, next.first())?;
                next.terms.truncate(first.index);
            }
            self.insert_runs(&mut log, entries)?;
            for e in entries {
                next.terms.push(e.id());
            }
            next.last = last.index;
            log_dirty = true;
        }

        if let Some(hs) = hard_state {
            next.hard_state = *hs;
            meta.insert(KEY_HARD_STATE, codec::encode_hard_state(hs));
            meta_dirty = true;
        }

        if snapshot.is_none() {
            // The common path (entries and a hard state): two plain batches,
            // log first. sled applies a batch atomically and recovers a
            // prefix of its writes in order, so a crash keeps either both,
            // the log batch alone, or neither; all three are safe because
            // nothing unsynced was acknowledged. The log batch holds the
            // whole change of the log (the replaced suffix's runs removed,
            // the run holding its start cut, the new runs), so the log
            // after a crash is the old one or the new one, never the old
            // one cut short or the new runs over an old suffix. A
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
            // A new base and the runs it removes must change together.
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
        let needed = check_compaction(index, s.base.index, s.snapshot.last_index)
            .map_err(|r| self.refused(r))?;
        if !needed {
            return Ok(());
        }
        let term = self
            .term_at(&s, index)?
            .ok_or(StorageError::Unavailable(index))?;
        let mut log = sled::Batch::default();
        let removed = self.compact_runs(&mut log, &s, index)?;
        let base = EntryId::new(term, index);
        let mut meta = sled::Batch::default();
        meta.insert(KEY_BASE, codec::encode_entry_id(&base));
        // The base and the runs it removes change together.
        self.apply(removed.then_some(log), Some(meta))?;
        s.base = base;
        s.terms.compact(index);
        Ok(())
    }
}

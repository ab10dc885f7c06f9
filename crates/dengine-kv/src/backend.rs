//! Where the key-value store keeps its records: an ordered map in memory,
//! a sled database, or a RocksDB database, behind one small trait.

use std::collections::BTreeMap;
use std::io;
use std::ops::Bound;
use std::sync::{Arc, Mutex, PoisonError};

/// A change to one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Writes a record under a key that holds none (the store never
    /// writes a revision's record twice), which saves backends that keep
    /// a record in several pieces looking for old pieces. Under a key that
    /// does hold a record, what is left of the old one is unspecified.
    Insert(Vec<u8>, Vec<u8>),
    /// Writes a record, replacing any.
    Put(Vec<u8>, Vec<u8>),
    /// Removes the record under a key, if any.
    Remove(Vec<u8>),
}

/// A [`Change`] that borrows its key and value, for
/// [`KvBackend::write_refs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeRef<'a> {
    /// As [`Change::Insert`].
    Insert(&'a [u8], &'a [u8]),
    /// As [`Change::Put`].
    Put(&'a [u8], &'a [u8]),
    /// As [`Change::Remove`].
    Remove(&'a [u8]),
}

impl Change {
    /// The change, borrowed.
    pub fn as_ref(&self) -> ChangeRef<'_> {
        match self {
            Change::Insert(k, v) => ChangeRef::Insert(k, v),
            Change::Put(k, v) => ChangeRef::Put(k, v),
            Change::Remove(k) => ChangeRef::Remove(k),
        }
    }
}

impl ChangeRef<'_> {
    /// The change, owned.
    pub fn to_change(self) -> Change {
        match self {
            ChangeRef::Insert(k, v) => Change::Insert(k.to_vec(), v.to_vec()),
            ChangeRef::Put(k, v) => Change::Put(k.to_vec(), v.to_vec()),
            ChangeRef::Remove(k) => Change::Remove(k.to_vec()),
        }
    }
}

/// Called for each record of a scan with its key and value; returns
/// whether to go on.
pub type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> io::Result<bool> + 'a;

/// An ordered map of bytes the store runs on. Writes of one
/// [`KvBackend::write`] call are atomic; a backend that survives restarts
/// recovers a prefix of its writes after a crash (sled and RocksDB do).
pub trait KvBackend: Send + 'static {
    /// The record under `key`.
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>>;

    /// Visits records with `start <= key < end` (no end: to the last) in
    /// key order until `visit` returns `false`.
    fn scan(&self, start: &[u8], end: Option<&[u8]>, visit: &mut Visit<'_>) -> io::Result<()>;

    /// Applies `changes` atomically.
    fn write(&mut self, changes: Vec<Change>) -> io::Result<()>;

    /// Applies `changes` atomically, as [`KvBackend::write`] does, from
    /// borrowed keys and values: the store writes every applied batch
    /// this way, without a key and a value of its own per record. By
    /// default through owned copies; a backend that copies them anyway
    /// (into its file) takes them as they are.
    fn write_refs(&mut self, changes: &[ChangeRef<'_>]) -> io::Result<()> {
        self.write(changes.iter().map(|c| c.to_change()).collect())
    }

    /// Removes every record.
    fn clear(&mut self) -> io::Result<()>;

    /// Whether the records survive a restart.
    fn durable(&self) -> bool;

    /// Gives back the space of removed records, if the backend keeps it
    /// until asked (etcd's defragmentation). By default nothing is left
    /// to do.
    fn defragment(&self) -> io::Result<()> {
        Ok(())
    }

    /// Makes every write so far durable (writes are not synced one by one:
    /// the Raft log is the durable record; a restore from a backup has no
    /// log behind it). By default nothing is left to do.
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    /// A reader of the records for another thread, while this backend
    /// goes on taking writes: the store writes its snapshots through one
    /// beside the apply worker. `None` (the default) if the backend cannot
    /// be read beside its writes; its snapshots then pause applying.
    fn reader(&self) -> Option<Box<dyn BackendReader>> {
        None
    }
}

/// Reads a backend's records from another thread while the store goes on
/// writing to it (see [`KvBackend::reader`]). A scan may see writes made
/// after it began, but each record whole; a scan does not hold off the
/// writes for its whole length.
pub trait BackendReader: Send {
    /// As [`KvBackend::scan`].
    fn scan(&self, start: &[u8], end: Option<&[u8]>, visit: &mut Visit<'_>) -> io::Result<()>;
}

/// Bytes of records a reader copies out under its backend's lock at a
/// time: the writer waits for no more than one such copy.
const READ_CHUNK: usize = 256 << 10;

/// Scans `start <= key < end` in chunks: `chunk` visits the records from
/// its lower bound with the backend locked, and they are copied out until
/// [`READ_CHUNK`] bytes gather; `visit` sees them after the lock is let
/// go, and the next chunk starts past the last key.
fn scan_in_chunks(
    start: &[u8],
    end: Option<&[u8]>,
    visit: &mut Visit<'_>,
    mut chunk: impl FnMut((Bound<&[u8]>, Bound<&[u8]>), &mut Visit<'_>) -> io::Result<()>,
) -> io::Result<()> {
    if end.is_some_and(|e| e <= start) {
        return Ok(());
    }
    let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
    let mut last: Option<Vec<u8>> = None;
    let mut bytes = Vec::new();
    // Each record's key and value as where they end in `bytes`.
    let mut records: Vec<(usize, usize, usize)> = Vec::new();
    loop {
        bytes.clear();
        records.clear();
        let lower = last
            .as_deref()
            .map_or(Bound::Included(start), Bound::Excluded);
        let mut full = false;
        chunk((lower, upper), &mut |k, v| {
            let from = bytes.len();
            bytes.extend_from_slice(k);
            bytes.extend_from_slice(v);
            records.push((from, from + k.len(), bytes.len()));
            full = bytes.len() >= READ_CHUNK;
            Ok(!full)
        })?;
        for &(from, key_end, end) in &records {
            if !visit(&bytes[from..key_end], &bytes[key_end..end])? {
                return Ok(());
            }
        }
        match records.last() {
            Some(&(from, key_end, _)) if full => last = Some(bytes[from..key_end].to_vec()),
            _ => return Ok(()),
        }
    }
}

fn bounds<'a>(start: &'a [u8], end: Option<&'a [u8]>) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (
        Bound::Included(start),
        end.map_or(Bound::Unbounded, Bound::Excluded),
    )
}

type Records = BTreeMap<Vec<u8>, Vec<u8>>;

/// Records in memory (a store that does not survive restarts, and
/// tests). Behind a lock only for its [`KvBackend::reader`].
#[derive(Default, Debug)]
pub struct MemoryBackend(Arc<Mutex<Records>>);

impl MemoryBackend {
    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        lock_records(&self.0)
    }
}

fn lock_records(records: &Mutex<Records>) -> std::sync::MutexGuard<'_, Records> {
    records.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Visits `records` within `bounds` until `visit` says stop.
fn visit_records(
    records: &Records,
    bounds: (Bound<&[u8]>, Bound<&[u8]>),
    visit: &mut Visit<'_>,
) -> io::Result<()> {
    for (k, v) in records.range::<[u8], _>(bounds) {
        if !visit(k, v)? {
            break;
        }
    }
    Ok(())
}

impl KvBackend for MemoryBackend {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        Ok(self.lock().get(key).cloned())
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, visit: &mut Visit<'_>) -> io::Result<()> {
        if end.is_some_and(|e| e <= start) {
            return Ok(());
        }
        visit_records(&self.lock(), bounds(start, end), visit)
    }

    fn write(&mut self, changes: Vec<Change>) -> io::Result<()> {
        let mut records = self.lock();
        for c in changes {
            match c {
                Change::Insert(k, v) | Change::Put(k, v) => records.insert(k, v),
                Change::Remove(k) => records.remove(&k),
            };
        }
        Ok(())
    }

    fn clear(&mut self) -> io::Result<()> {
        self.lock().clear();
        Ok(())
    }

    fn durable(&self) -> bool {
        false
    }

    fn reader(&self) -> Option<Box<dyn BackendReader>> {
        Some(Box::new(MemoryReader(Arc::clone(&self.0))))
    }
}

/// A [`MemoryBackend`]'s reader.
struct MemoryReader(Arc<Mutex<Records>>);

impl BackendReader for MemoryReader {
    fn scan(&self, start: &[u8], end: Option<&[u8]>, visit: &mut Visit<'_>) -> io::Result<()> {
        scan_in_chunks(start, end, visit, |bounds, visit| {
            visit_records(&lock_records(&self.0), bounds, visit)
        })
    }
}

pub use self::log_backend::LogBackend;

mod log_backend;

#[cfg(feature = "sled")]
pub use self::sled_backend::SledBackend;

#[cfg(feature = "sled")]
mod sled_backend;

#[cfg(feature = "rocksdb")]
pub use self::rocks_backend::RocksBackend;

#[cfg(feature = "rocksdb")]
mod rocks_backend {
    use super::*;
    use dengine_storage_rocksdb::rocksdb::{
        self, DB, Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions,
    };

    fn err(e: rocksdb::Error) -> io::Error {
        io::Error::other(e.to_string())
    }

    /// Records in a RocksDB database of their own, written through its WAL
    /// without fsync (the log is the durable record; see [`super::KvBackend`]).
    pub struct RocksBackend {
        /// Shared with readers (an iterator reads a consistent view).
        db: Arc<DB>,
    }

    fn scan_db(db: &DB, start: &[u8], end: Option<&[u8]>, visit: &mut Visit<'_>) -> io::Result<()> {
        if end.is_some_and(|e| e <= start) {
            return Ok(());
        }
        let mut opts = ReadOptions::default();
        if let Some(end) = end {
            opts.set_iterate_upper_bound(end.to_vec());
        }
        let iter = db.iterator_opt(IteratorMode::From(start, Direction::Forward), opts);
        for item in iter {
            let (k, v) = item.map_err(err)?;
            if !visit(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    /// A [`RocksBackend`]'s reader: RocksDB iterators read beside writes.
    struct RocksReader(Arc<DB>);

    impl BackendReader for RocksReader {
        fn scan(&self, start: &[u8], end: Option<&[u8]>, visit: &mut Visit<'_>) -> io::Result<()> {
            scan_db(&self.0, start, end, visit)
        }
    }

    impl RocksBackend {
        /// Opens (or creates) the database in `path`.
        pub fn open(path: &std::path::Path) -> io::Result<RocksBackend> {
            let mut o = Options::default();
            o.create_if_missing(true);
            o.set_paranoid_checks(true);
            o.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
            o.set_keep_log_file_num(4);
            let db = Arc::new(DB::open(&o, path).map_err(err)?);
            Ok(RocksBackend { db })
        }
    }

    impl KvBackend for RocksBackend {
        fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
            self.db.get(key).map_err(err)
        }

        fn scan(&self, start: &[u8], end: Option<&[u8]>, visit: &mut Visit<'_>) -> io::Result<()> {
            scan_db(&self.db, start, end, visit)
        }

        fn write(&mut self, changes: Vec<Change>) -> io::Result<()> {
            let mut batch = WriteBatch::default();
            for c in changes {
                match c {
                    Change::Insert(k, v) | Change::Put(k, v) => batch.put(k, v),
                    Change::Remove(k) => batch.delete(k),
                }
            }
            let mut opts = WriteOptions::default();
            opts.set_sync(false);
            self.db.write_opt(batch, &opts).map_err(err)
        }

        fn clear(&mut self) -> io::Result<()> {
            let mut batch = WriteBatch::default();
            for item in self.db.iterator(IteratorMode::Start) {
                let (k, _) = item.map_err(err)?;
                batch.delete(k);
                if batch.len() >= 10_000 {
                    let full = std::mem::take(&mut batch);
                    self.db.write(full).map_err(err)?;
                }
            }
            self.db.write(batch).map_err(err)
        }

        fn durable(&self) -> bool {
            true
        }

        fn sync(&self) -> io::Result<()> {
            self.db.flush_wal(true).map_err(err)
        }

        fn defragment(&self) -> io::Result<()> {
            self.db.compact_range::<&[u8], &[u8]>(None, None);
            Ok(())
        }

        fn reader(&self) -> Option<Box<dyn BackendReader>> {
            Some(Box::new(RocksReader(Arc::clone(&self.db))))
        }
    }
}

#[cfg(test)]
mod reader_tests;

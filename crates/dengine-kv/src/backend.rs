//! Where the key-value store keeps its records: an ordered map in memory,
//! a sled database, or a RocksDB database, behind one small trait.

use std::collections::BTreeMap;
use std::io;
use std::ops::Bound;

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
}

fn bounds<'a>(start: &'a [u8], end: Option<&'a [u8]>) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (
        Bound::Included(start),
        end.map_or(Bound::Unbounded, Bound::Excluded),
    )
}

/// Records in memory (a store that does not survive restarts, and
/// tests).
#[derive(Default, Debug)]
pub struct MemoryBackend(BTreeMap<Vec<u8>, Vec<u8>>);

impl KvBackend for MemoryBackend {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        Ok(self.0.get(key).cloned())
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, visit: &mut Visit<'_>) -> io::Result<()> {
        if end.is_some_and(|e| e <= start) {
            return Ok(());
        }
        for (k, v) in self.0.range::<[u8], _>(bounds(start, end)) {
            if !visit(k, v)? {
                break;
            }
        }
        Ok(())
    }

    fn write(&mut self, changes: Vec<Change>) -> io::Result<()> {
        for c in changes {
            match c {
                Change::Insert(k, v) | Change::Put(k, v) => self.0.insert(k, v),
                Change::Remove(k) => self.0.remove(&k),
            };
        }
        Ok(())
    }

    fn clear(&mut self) -> io::Result<()> {
        self.0.clear();
        Ok(())
    }

    fn durable(&self) -> bool {
        false
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
        db: DB,
    }

    impl RocksBackend {
        /// Opens (or creates) the database in `path`.
        pub fn open(path: &std::path::Path) -> io::Result<RocksBackend> {
            let mut o = Options::default();
            o.create_if_missing(true);
            o.set_paranoid_checks(true);
            o.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
            o.set_keep_log_file_num(4);
            let db = DB::open(&o, path).map_err(err)?;
            Ok(RocksBackend { db })
        }
    }

    impl KvBackend for RocksBackend {
        fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
            self.db.get(key).map_err(err)
        }

        fn scan(&self, start: &[u8], end: Option<&[u8]>, visit: &mut Visit<'_>) -> io::Result<()> {
            if end.is_some_and(|e| e <= start) {
                return Ok(());
            }
            let mut opts = ReadOptions::default();
            if let Some(end) = end {
                opts.set_iterate_upper_bound(end.to_vec());
            }
            let iter = self
                .db
                .iterator_opt(IteratorMode::From(start, Direction::Forward), opts);
            for item in iter {
                let (k, v) = item.map_err(err)?;
                if !visit(&k, &v)? {
                    break;
                }
            }
            Ok(())
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
    }
}

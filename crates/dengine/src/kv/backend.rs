//! Where the key-value store keeps its records: an ordered map in memory,
//! a sled database, or a RocksDB database, behind one small trait.

use std::collections::BTreeMap;
use std::io;
use std::ops::Bound;

/// A change to one record: `None` removes it.
pub type Change = (Vec<u8>, Option<Vec<u8>>);

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

    /// Removes every record.
    fn clear(&mut self) -> io::Result<()>;

    /// Whether the records survive a restart.
    fn durable(&self) -> bool;
}

fn bounds<'a>(start: &'a [u8], end: Option<&'a [u8]>) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (
        Bound::Included(start),
        end.map_or(Bound::Unbounded, Bound::Excluded),
    )
}

/// No records at all: for a store that lives in memory only (the state
/// machine keeps every key itself).
pub(crate) struct NoBackend;

impl KvBackend for NoBackend {
    fn get(&self, _: &[u8]) -> io::Result<Option<Vec<u8>>> {
        Ok(None)
    }

    fn scan(&self, _: &[u8], _: Option<&[u8]>, _: &mut Visit<'_>) -> io::Result<()> {
        Ok(())
    }

    fn write(&mut self, _: Vec<Change>) -> io::Result<()> {
        Ok(())
    }

    fn clear(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn durable(&self) -> bool {
        false
    }
}

/// Records in memory (tests, and a model of a backend).
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
        for (k, v) in changes {
            match v {
                Some(v) => self.0.insert(k, v),
                None => self.0.remove(&k),
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

#[cfg(feature = "sled")]
pub use self::sled_backend::SledBackend;

#[cfg(feature = "sled")]
mod sled_backend {
    use super::*;
    use dengine_storage_sled::sled;

    fn err(e: sled::Error) -> io::Error {
        match e {
            sled::Error::Io(e) => e,
            other => io::Error::other(other.to_string()),
        }
    }

    /// Records in a sled database of their own. Writes are not fsynced:
    /// the log is the durable record, and the store says which index its
    /// state reflects, so a restart replays what sled lost.
    pub struct SledBackend {
        db: sled::Db,
    }

    impl SledBackend {
        /// Opens (or creates) the database in `path`.
        pub fn open(path: &std::path::Path) -> io::Result<SledBackend> {
            let db = dengine_storage_sled::open_db(path, &Default::default()).map_err(err)?;
            Ok(SledBackend { db })
        }
    }

    impl KvBackend for SledBackend {
        fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
            Ok(self.db.get(key).map_err(err)?.map(|v| v.to_vec()))
        }

        fn scan(&self, start: &[u8], end: Option<&[u8]>, visit: &mut Visit<'_>) -> io::Result<()> {
            if end.is_some_and(|e| e <= start) {
                return Ok(());
            }
            for item in self.db.range::<&[u8], _>(bounds(start, end)) {
                let (k, v) = item.map_err(err)?;
                if !visit(&k, &v)? {
                    break;
                }
            }
            Ok(())
        }

        fn write(&mut self, changes: Vec<Change>) -> io::Result<()> {
            let mut batch = sled::Batch::default();
            for (k, v) in changes {
                match v {
                    Some(v) => batch.insert(k, v),
                    None => batch.remove(k),
                }
            }
            self.db.apply_batch(batch).map_err(err)
        }

        fn clear(&mut self) -> io::Result<()> {
            self.db.clear().map_err(err)
        }

        fn durable(&self) -> bool {
            true
        }
    }
}

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
            for (k, v) in changes {
                match v {
                    Some(v) => batch.put(k, v),
                    None => batch.delete(k),
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
    }
}

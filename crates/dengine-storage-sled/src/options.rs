//! Opening the sled database: tuning and the directory lock.

use std::path::Path;

use dengine_core::StorageError;

/// Tuning of the underlying sled database. The defaults are sled's.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SledOptions {
    /// Upper bound of sled's page cache in bytes (default 1 GiB).
    pub cache_capacity: u64,
    /// How often sled flushes and fsyncs in the background on its own, in
    /// milliseconds; `None` to flush only at [`LogStore::sync`](dengine_core::LogStore::sync) (default
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

/// Opens the raw sled database under a store (for tools and tests that
/// inspect or repair records), waiting for its lock like [`SledStore::open`](crate::SledStore::open).
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

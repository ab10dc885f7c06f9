//! Segment files filled with zeros ahead of use.
//!
//! `fdatasync` after appending to a file must write the file's size (its
//! inode) as well as the data: two writes to the disk where one would do.
//! Overwriting bytes that are already on disk leaves the size and the
//! block map as they are, so the sync writes the data alone. Measured on
//! this project's 2-core VM (ext4), 4 KiB written then synced: about
//! 420 µs and 160 µs of CPU appending, 170 µs and 75 µs of CPU
//! overwriting. (`fallocate` would not help: its blocks are marked
//! unwritten, and the first write to them changes the block map.)
//!
//! So a segment is written over bytes already on disk: a file an older
//! segment left (`Spare::reused`, whose sectors read as stale, see
//! `sectors`), or else zeros that were written, and synced, before: the
//! next segment is prepared by a thread of its own while the current one
//! fills, and renamed into place when it is needed.
//!
//! The zeros are written at a pace, spread over most of the time the
//! current segment is expected to take to fill: written as fast as the
//! disk takes them, 64 MiB of zeros from each of three members on one
//! disk queued ahead of the log's own syncs (at 256 clients, seconds of
//! 150-220 MiB/s written with a third of the CPU waiting on I/O). When
//! the segment is needed before its zeros are all written, the rest are
//! written at once.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::direct::{self, Appender, BLOCK, Block};

/// The size of the first segment a new store's files are written over;
/// each next one is twice its predecessor's, up to the configured segment
/// size, so a store that writes little never writes megabytes of zeros.
pub(crate) const FIRST_BYTES: u64 = 256 * 1024;

/// Blocks of zeros written per call (256 KiB).
const CHUNK_BLOCKS: usize = 64;

/// Zeros written between syncs. Synced all at once, 64 MiB would queue
/// ahead of the log's own syncs at the disk for a tenth of a second.
const SYNC_EVERY: u64 = 1024 * 1024;

/// Where a segment is prepared before it is renamed to its name: a file
/// with this suffix is never read as a segment, and one left by a crash
/// is deleted when the store opens.
pub(crate) const SUFFIX: &str = ".prep";

/// A file of at least `len` zero bytes (whole blocks), synced, at `path`
/// (replaced if it exists), with an appender at its start.
pub(crate) fn zero_filled(path: &Path, len: u64) -> std::io::Result<Appender> {
    let (file, is_direct) = create(path)?;
    fill(file, is_direct, len, &Pace::at_once())
}

/// A new, empty file at `path` (replaced if it exists), opened directly
/// if the system allows (see `direct`).
fn create(path: &Path) -> std::io::Result<(File, bool)> {
    direct::open(
        path,
        File::options().write(true).create(true).truncate(true),
    )
}

/// How a preparation goes: at its pace, at once, or not at all.
const PACED: u8 = 0;
const AT_ONCE: u8 = 1;
const ABANDONED: u8 = 2;

/// The pace of a preparation: its zeros spread over `over`, from
/// `started`, unless told to hurry or to stop.
struct Pace {
    started: Instant,
    over: Duration,
    mode: Arc<AtomicU8>,
}

impl Pace {
    fn at_once() -> Pace {
        Pace {
            started: Instant::now(),
            over: Duration::ZERO,
            mode: Arc::new(AtomicU8::new(AT_ONCE)),
        }
    }

    /// Waits until `done` of the zeros are due, or until told to hurry;
    /// fails if told to stop.
    fn wait(&self, done: f64) -> std::io::Result<()> {
        loop {
            match self.mode.load(Ordering::Acquire) {
                ABANDONED => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::Interrupted,
                        "the preparation was abandoned",
                    ));
                }
                AT_ONCE => return Ok(()),
                _ => {}
            }
            let due = self.over.mul_f64(done.clamp(0.0, 1.0));
            let elapsed = self.started.elapsed();
            if elapsed >= due {
                return Ok(());
            }
            // Unparked when told to hurry or stop.
            std::thread::park_timeout(due - elapsed);
        }
    }
}

/// Writes `len` zero bytes, rounded up to whole blocks, to `file` at
/// `pace` and syncs them; returns an appender at the file's start.
fn fill(mut file: File, is_direct: bool, len: u64, pace: &Pace) -> std::io::Result<Appender> {
    let zeros = vec![Block::ZERO; CHUNK_BLOCKS];
    let blocks = len.div_ceil(BLOCK as u64);
    let mut written = 0;
    while written < blocks {
        let n = (blocks - written).min(CHUNK_BLOCKS as u64) as usize;
        direct::write_blocks(&mut file, &zeros[..n])?;
        written += n as u64;
        if (written * BLOCK as u64).is_multiple_of(SYNC_EVERY) {
            file.sync_data()?;
            pace.wait(written as f64 / blocks as f64)?;
        }
    }
    file.sync_all()?;
    // The appender writes from offset 0 (it places direct writes itself,
    // and moves a buffered file's cursor there).
    Appender::new(file, is_direct, 0, &[])
}

/// A file used again, open for writing at offset 0. Written around the
/// page cache, its older bytes stay until written over, as tagged sectors
/// need; written through it (where the system refuses direct writes), a
/// last sector written in part would keep older bytes after the records,
/// so the file is cleared first (a file of holes, which read as zeros).
fn open_again(path: &Path) -> std::io::Result<Appender> {
    let (file, is_direct) = direct::open(path, File::options().write(true))?;
    if !is_direct {
        let len = file.metadata()?.len();
        file.set_len(0)?;
        file.set_len(len)?;
        file.sync_all()?;
    }
    Appender::new(file, is_direct, 0, &[])
}

/// A segment being prepared in the background.
pub(crate) struct Spare {
    /// The sequence number it is for.
    pub(crate) seq: u64,
    /// Where it is prepared.
    path: PathBuf,
    /// Its size.
    pub(crate) len: u64,
    mode: Arc<AtomicU8>,
    /// The thread writing its zeros; none for a file used again, which
    /// is ready as it is (see `Spare::reused`).
    thread: Option<JoinHandle<std::io::Result<Appender>>>,
}

impl Spare {
    /// Starts preparing `len` bytes of zeros at `path` for segment `seq`,
    /// spread over `over` (the file is there when this returns).
    pub(crate) fn start(
        seq: u64,
        path: PathBuf,
        len: u64,
        over: Duration,
    ) -> std::io::Result<Spare> {
        let (file, is_direct) = create(&path)?;
        let mode = Arc::new(AtomicU8::new(PACED));
        let pace = Pace {
            started: Instant::now(),
            over,
            mode: Arc::clone(&mode),
        };
        let thread = std::thread::Builder::new()
            .name("dengine-wal-spare".into())
            .spawn(move || fill(file, is_direct, len, &pace))?;
        Ok(Spare {
            seq,
            path,
            len,
            mode,
            thread: Some(thread),
        })
    }

    /// The file at `path`, which held an older segment in tagged sectors,
    /// for segment `seq` of `len` bytes: written over as it is, its
    /// sectors read as stale (see `sectors`), so it needs no zeros.
    pub(crate) fn reused(seq: u64, path: PathBuf, len: u64) -> Spare {
        Spare {
            seq,
            path,
            len,
            mode: Arc::new(AtomicU8::new(AT_ONCE)),
            thread: None,
        }
    }

    /// Waits for it to be ready, writing what zeros are left at once: its
    /// file (open for writing at offset 0) and path. An error is the
    /// preparation's: the file may be partly written, and is removed.
    pub(crate) fn finish(self) -> std::io::Result<(Appender, PathBuf)> {
        self.tell(AT_ONCE);
        let done = match self.thread {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the thread preparing it panicked"))),
            None => open_again(&self.path),
        };
        match done {
            Ok(file) => Ok((file, self.path)),
            Err(e) => {
                let _ = std::fs::remove_file(&self.path);
                Err(e)
            }
        }
    }

    /// Stops the preparation (once the write under way is done) and
    /// removes its file.
    pub(crate) fn abandon(self) {
        self.tell(ABANDONED);
        if let Some(thread) = self.thread {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }

    /// Has the zeros still to write written at once (the first call
    /// does; later ones cost an atomic load).
    pub(crate) fn hurry(&self) {
        if self.mode.load(Ordering::Acquire) == PACED {
            self.tell(AT_ONCE);
        }
    }

    fn tell(&self, mode: u8) {
        self.mode.store(mode, Ordering::Release);
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn all_zeros(path: &Path, len: u64) -> bool {
        let bytes = std::fs::read(path).expect("read");
        bytes.len() as u64 == len && bytes.iter().all(|&b| b == 0)
    }

    #[test]
    fn zeros_are_spread_over_the_time_given_unless_needed_sooner() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("paced");
        // 4 MiB written at once takes milliseconds; spread over 20 s, a
        // quarter of it is not due for 5 s.
        let spare =
            Spare::start(1, path.clone(), 4 * MIB, Duration::from_secs(20)).expect("started");
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !spare.thread.as_ref().expect("a thread").is_finished(),
            "the zeros were not paced"
        );
        // Needed now: the rest is written at once.
        let started = Instant::now();
        spare.hurry();
        let (_, prepared) = spare.finish().expect("prepared");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(prepared, path);
        assert!(all_zeros(&path, 4 * MIB));
    }

    #[test]
    fn finishing_writes_the_rest_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("finished");
        let spare =
            Spare::start(1, path.clone(), 3 * MIB, Duration::from_secs(60)).expect("started");
        let started = Instant::now();
        spare.finish().expect("prepared");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert!(all_zeros(&path, 3 * MIB));
    }

    #[test]
    fn an_abandoned_preparation_stops_and_leaves_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("abandoned");
        let spare =
            Spare::start(1, path.clone(), 64 * MIB, Duration::from_secs(60)).expect("started");
        std::thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        spare.abandon();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(!path.exists());
    }
}

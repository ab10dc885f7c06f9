//! Writing the log's pages out as they fill, not all at once.
//!
//! The store writes into the page cache and syncs only at a checkpoint
//! (each `snapshot_threshold` entries). Left alone, a checkpoint's sync
//! then writes everything since the last one at once: at 256 clients,
//! about 30 MiB per member every 3 seconds, queued at the disk ahead of
//! the Raft log's own syncs, which every acknowledged write waits for
//! (puts per second fell by up to a third in the seconds that happened,
//! and the kernel's own writeback of pages older than 30 s does the same).
//! So each MiB written is synced by a thread of its own: the disk gets a
//! steady trickle, and the checkpoint's sync finds little left to write.
//!
//! The thread opens the segment itself: a sync's error is reported once
//! to each open file description, and the store's own handle must still
//! see it at its checkpoint (a shared description would have it taken
//! here, and lost). Errors here are otherwise ignored: the checkpoint's
//! sync is the one that counts.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::Duration;

/// Bytes written to a segment between nudges.
pub(super) const EVERY_BYTES: u64 = 1 << 20;

/// A segment file left unsynced this long is let go (closed), so that a
/// deleted segment's space is not held.
const IDLE: Duration = Duration::from_secs(1);

/// The thread that syncs segments as they fill.
pub(super) struct Writeback {
    nudges: Option<SyncSender<PathBuf>>,
    thread: Option<JoinHandle<()>>,
    /// Syncs done.
    synced: Arc<AtomicU64>,
}

impl Writeback {
    /// Starts the thread; without one (the system refused it), segments
    /// are synced at checkpoints only, as before.
    pub(super) fn start() -> Writeback {
        // One nudge waiting at most: one sync covers all that was written.
        let (nudges, rx) = mpsc::sync_channel(1);
        let synced = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&synced);
        match std::thread::Builder::new()
            .name("dengine-kv-writeback".into())
            .spawn(move || run(&rx, &counted))
        {
            Ok(thread) => Writeback {
                nudges: Some(nudges),
                thread: Some(thread),
                synced,
            },
            Err(e) => {
                tracing::debug!(error = %e, "no writeback thread; the store syncs at checkpoints");
                Writeback {
                    nudges: None,
                    thread: None,
                    synced,
                }
            }
        }
    }

    /// Syncs done so far.
    pub(super) fn syncs(&self) -> u64 {
        self.synced.load(Ordering::Relaxed)
    }

    /// Asks for what has been written to the segment at `path` to be
    /// written out (without waiting; a sync under way covers it).
    pub(super) fn nudge(&self, path: &std::path::Path) {
        if let Some(nudges) = &self.nudges {
            // Full: a nudge waits already, and its sync covers this one.
            // Disconnected: the thread is gone, and checkpoints still sync.
            let _ = nudges.try_send(path.to_path_buf());
        }
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        self.nudges = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(nudges: &Receiver<PathBuf>, synced: &AtomicU64) {
    let mut open: Option<(PathBuf, File)> = None;
    loop {
        let path = match nudges.recv_timeout(IDLE) {
            Ok(path) => path,
            Err(RecvTimeoutError::Timeout) => {
                open = None;
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if open.as_ref().is_none_or(|(p, _)| *p != path) {
            open = OpenOptions::new()
                .write(true)
                .open(&path)
                .ok()
                .map(|f| (path, f));
        }
        if let Some((_, file)) = &open {
            match file.sync_data() {
                Ok(()) => {
                    synced.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::debug!(error = %e, "writing the key-value log out early failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn nudges_sync_the_segment_and_stopping_ends_the_thread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("1.kvlog");
        let mut file = File::create(&path).expect("create");
        file.write_all(&[7u8; 4096]).expect("write");
        let writeback = Writeback::start();
        assert!(writeback.thread.is_some());
        // Many nudges at once: the ones that find the channel full are
        // dropped, not waited for.
        for _ in 0..100 {
            writeback.nudge(&path);
        }
        let synced = Arc::clone(&writeback.synced);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while synced.load(Ordering::Relaxed) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(synced.load(Ordering::Relaxed) >= 1, "nothing was synced");
        // A segment that is gone is skipped, and the thread goes on.
        writeback.nudge(&dir.path().join("gone.kvlog"));
        let before = synced.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(20));
        writeback.nudge(&path);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while synced.load(Ordering::Relaxed) == before && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            synced.load(Ordering::Relaxed) > before,
            "a nudge after a missing file was lost"
        );
        // Dropped, it stops its thread (the test would hang otherwise).
        drop(writeback);
        assert_eq!(std::fs::read(&path).expect("read"), vec![7u8; 4096]);
    }
}

//! A snapshot written from a state machine's view (see
//! [`StateMachine::snapshot_view`](crate::StateMachine::snapshot_view))
//! on a thread of its own, while the apply worker goes on applying and
//! answering reads.

use std::io::{self, Write};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use dengine_core::SnapshotMeta;
use tokio::sync::mpsc::UnboundedSender;

use super::{Event, panic_message};
use crate::snapshot::{SnapshotData, SnapshotStore};
use crate::state_machine::SnapshotView;

/// A snapshot being written on its own thread.
pub(crate) struct SnapshotThread {
    thread: JoinHandle<()>,
    /// Set to stop it: its writes fail from then on.
    stop: Arc<AtomicBool>,
}

impl SnapshotThread {
    /// Starts writing `view` as the snapshot at `meta`; the core hears
    /// `SnapshotMade` or `SnapshotFailed` when it ends.
    pub(crate) fn start(
        view: SnapshotView,
        meta: SnapshotMeta,
        snapshots: SnapshotStore,
        events: UnboundedSender<Event>,
    ) -> io::Result<SnapshotThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("dengine-snapshot".into())
            .spawn(move || write(view, meta, &snapshots, &events, &stopped))?;
        Ok(SnapshotThread { thread, stop })
    }

    /// Whether it is still writing.
    pub(crate) fn running(&self) -> bool {
        !self.thread.is_finished()
    }

    /// Stops it (its next write fails) and waits for its thread, so that
    /// nothing reads the state machine's storage past this call.
    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        // A panic in the view was caught and reported by the thread.
        let _ = self.thread.join();
    }
}

fn write(
    view: SnapshotView,
    meta: SnapshotMeta,
    snapshots: &SnapshotStore,
    events: &UnboundedSender<Event>,
    stop: &AtomicBool,
) {
    let started = Instant::now();
    // A failed attempt's temporary file is removed when its writer drops.
    let made = snapshots.writer(meta.clone()).and_then(|mut w| {
        let mut out = Stoppable { out: &mut w, stop };
        std::panic::catch_unwind(AssertUnwindSafe(|| view(&mut out))).unwrap_or_else(|panic| {
            // The view is a copy: the state machine itself is untouched,
            // so this snapshot fails and the node goes on.
            Err(io::Error::other(format!(
                "the snapshot view panicked: {}",
                panic_message(&*panic)
            )))
        })?;
        w.finish()
    });
    // A stopped snapshot's failure is no news.
    report(made, meta, started, events, !stop.load(Ordering::SeqCst));
}

/// Tells the core how making the snapshot at `meta` (begun at `started`)
/// went, wherever it was written; a failure is logged if `warn`.
pub(super) fn report(
    made: io::Result<SnapshotData>,
    meta: SnapshotMeta,
    started: Instant,
    events: &UnboundedSender<Event>,
    warn: bool,
) {
    let _ = match made {
        Ok(data) => {
            super::telemetry::record_snapshot("made", started.elapsed(), data.len());
            events.send(Event::SnapshotMade(meta, Some(data)))
        }
        Err(e) => {
            if warn {
                tracing::warn!(error = %e, index = %meta.last_index, "state machine snapshot failed");
            }
            events.send(Event::SnapshotFailed(e.to_string()))
        }
    };
}

/// A writer that fails once `stop` is set.
struct Stoppable<'a, W: Write> {
    out: &'a mut W,
    stop: &'a AtomicBool,
}

impl<W: Write> Write for Stoppable<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(io::Error::other(
                "the snapshot was stopped: the node is stopping or restoring another",
            ));
        }
        self.out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

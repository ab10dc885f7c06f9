//! The disk thread: writes persist batches and makes them durable in
//! groups, one fsync for everything that was waiting (group commit).

use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;

use tokio::sync::mpsc::UnboundedSender;

use super::{DiskJob, Event, Store, panic_message};
use crate::error::Error;
use crate::snapshot::SnapshotStore;

/// Most jobs gathered into one sync.
const MAX_GROUP: usize = 4096;

pub(crate) fn spawn_disk_thread(
    store: Store,
    snapshots: SnapshotStore,
    jobs: Receiver<DiskJob>,
    events: UnboundedSender<Event>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("dengine-disk".into())
        .spawn(move || {
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run(&store, &snapshots, &jobs, &events)
            }));
            let why = match run {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(panic) => format!("the disk thread panicked: {}", panic_message(&*panic)),
            };
            // Nothing after this write can be trusted to be durable: the
            // node stops rather than acknowledge anything else.
            tracing::error!(error = %why, "disk thread stopped");
            let _ = events.send(Event::Fatal(why));
        })
}

fn run(
    store: &Store,
    snapshots: &SnapshotStore,
    jobs: &Receiver<DiskJob>,
    events: &UnboundedSender<Event>,
) -> Result<(), Error> {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        let mut written = Vec::new();
        let mut saved = Vec::new();
        let mut stop = false;
        // The newest snapshot the log now starts after, if this group
        // recorded one: older snapshot files are no longer needed.
        let mut prune: Option<dengine_core::LogIndex> = None;
        // Consecutive plain writes are merged into one store write: one
        // transaction and one fsync for the whole group.
        let mut merged = Merged::default();
        let mut entries = 0;
        for job in group {
            match job {
                DiskJob::Write(mut batch) if batch.snapshot.is_none() => {
                    // The entries move into the merged write (no copy).
                    let persisted = batch.persisted();
                    entries += batch.entries.len();
                    merged.add(std::mem::take(&mut batch.entries), batch.hard_state);
                    written.push((persisted, batch.messages));
                }
                DiskJob::Write(batch) => {
                    // The snapshot's data was made durable when it was
                    // received, before the log says it starts after it.
                    merged.flush(store)?;
                    prune = prune.max(batch.snapshot.as_ref().map(|m| m.last_index));
                    store.write(
                        batch.snapshot.as_ref(),
                        &batch.entries,
                        batch.hard_state.as_ref(),
                    )?;
                    entries += batch.entries.len();
                    written.push((batch.persisted(), batch.messages));
                }
                DiskJob::Compact(index) => {
                    merged.flush(store)?;
                    store.compact(index)?;
                }
                DiskJob::SaveSnapshot(meta, data) => {
                    // The data is durable already (the apply task wrote it).
                    merged.flush(store)?;
                    prune = prune.max(Some(meta.last_index));
                    store.save_snapshot_meta(&meta)?;
                    saved.push((meta, data));
                }
                DiskJob::Stop => stop = true,
            }
        }
        merged.flush(store)?;
        if !written.is_empty() || !saved.is_empty() {
            let started = std::time::Instant::now();
            #[cfg(feature = "failpoints")]
            crate::failpoints::before_sync()?;
            store.sync()?;
            super::telemetry::record_sync(started.elapsed(), entries);
        }
        if let Some(recorded) = prune
            && let Err(e) = snapshots.prune(recorded)
        {
            // Old snapshots only cost space; the node works on.
            tracing::warn!(error = %e, "removing old snapshots failed");
        }
        if !written.is_empty() && events.send(Event::Persisted(written)).is_err() {
            return Ok(());
        }
        for (meta, data) in saved {
            if events.send(Event::SnapshotSaved(meta, data)).is_err() {
                return Ok(());
            }
        }
        if stop {
            return Ok(());
        }
    }
    Ok(())
}

/// Plain writes gathered into one: later entries replace earlier ones from
/// their first index on (as the store would), the last hard state wins.
#[derive(Default)]
struct Merged {
    entries: Vec<dengine_core::Entry>,
    hard_state: Option<dengine_core::HardState>,
}

impl Merged {
    fn add(
        &mut self,
        entries: Vec<dengine_core::Entry>,
        hard_state: Option<dengine_core::HardState>,
    ) {
        if let Some(first) = entries.first() {
            match self.entries.first().map(|e| e.index) {
                Some(start) if first.index >= start => {
                    self.entries.truncate((first.index.0 - start.0) as usize);
                    self.entries.extend(entries);
                }
                // The first batch, or one that rewrites from before this
                // group's entries: it replaces them all.
                _ => self.entries = entries,
            }
        }
        if hard_state.is_some() {
            self.hard_state = hard_state;
        }
    }

    fn flush(&mut self, store: &Store) -> Result<(), Error> {
        if self.entries.is_empty() && self.hard_state.is_none() {
            return Ok(());
        }
        store.write(None, &self.entries, self.hard_state.as_ref())?;
        self.entries.clear();
        self.hard_state = None;
        Ok(())
    }
}

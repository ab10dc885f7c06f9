//! The apply thread: runs the application's state machine on committed
//! entries in order, answers proposals and reads, takes and restores
//! snapshots.

use std::collections::BTreeMap;
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;

use dengine_core::{EntryPayload, LogIndex};
use tokio::sync::mpsc::UnboundedSender;

use super::{ApplyJob, Event, ReadJob};
use crate::error::Error;
use crate::snapshot::SnapshotStore;
use crate::state_machine::StateMachine;

pub(crate) fn spawn_apply_thread<SM: StateMachine>(
    sm: SM,
    applied: LogIndex,
    snapshots: SnapshotStore,
    jobs: Receiver<ApplyJob<SM>>,
    events: UnboundedSender<Event>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("dengine-apply".into())
        .spawn(move || run(sm, applied, &snapshots, &jobs, &events))
}

fn run<SM: StateMachine>(
    mut sm: SM,
    mut applied: LogIndex,
    snapshots: &SnapshotStore,
    jobs: &Receiver<ApplyJob<SM>>,
    events: &UnboundedSender<Event>,
) {
    let mut reads: BTreeMap<LogIndex, Vec<ReadJob<SM>>> = BTreeMap::new();
    while let Ok(job) = jobs.recv() {
        match job {
            ApplyJob::Entries(entries, proposals, changes) => {
                let mut proposals: BTreeMap<LogIndex, _> = proposals.into_iter().collect();
                let mut changes: BTreeMap<LogIndex, _> = changes.into_iter().collect();
                for e in entries {
                    if e.index <= applied {
                        continue;
                    }
                    match &e.payload {
                        EntryPayload::Normal(data) => {
                            let r = sm.apply(e.index, data);
                            if let Some(reply) = proposals.remove(&e.index) {
                                let _ = reply.send(Ok((e.index, r)));
                            }
                        }
                        EntryPayload::ConfChange(_) => {
                            if let Some(reply) = changes.remove(&e.index) {
                                let _ = reply.send(Ok(e.index));
                            }
                        }
                        EntryPayload::Blank => {}
                    }
                    applied = e.index;
                }
                if events.send(Event::Applied(applied)).is_err() {
                    break;
                }
            }
            ApplyJob::Read(index, job) => reads.entry(index).or_default().push(job),
            ApplyJob::Snapshot(meta) => {
                if meta.last_index != applied {
                    let _ = events.send(Event::SnapshotFailed);
                    continue;
                }
                // Streamed to its file and made durable here, off the core
                // task and the disk thread.
                let made = snapshots.writer(meta.clone()).and_then(|mut w| {
                    sm.snapshot(&mut w)?;
                    w.finish()
                });
                match made {
                    Ok(data) => {
                        let _ = events.send(Event::SnapshotMade(meta, data));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "state machine snapshot failed");
                        let _ = events.send(Event::SnapshotFailed);
                    }
                }
            }
            ApplyJob::Restore(meta, data) => {
                if let Err(e) = crate::snapshot::restore(&mut sm, &data) {
                    let _ = events.send(Event::Fatal(format!(
                        "restoring the snapshot at {}: {e}",
                        meta.last_index
                    )));
                    break;
                }
                applied = meta.last_index;
                let _ = events.send(Event::Applied(applied));
            }
            ApplyJob::Stop => break,
        }
        // Reads run once the state machine reached their index.
        while let Some(entry) = reads.first_entry() {
            if *entry.key() > applied {
                break;
            }
            for job in entry.remove() {
                job(Ok(&sm));
            }
        }
    }
    for (_, jobs) in reads {
        for job in jobs {
            job(Err(Error::Shutdown));
        }
    }
}

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
                let Some(last) = entries.last().map(|e| e.index) else {
                    continue;
                };
                let before = applied;
                let mut proposals: BTreeMap<LogIndex, _> = proposals.into_iter().collect();
                let mut changes: BTreeMap<LogIndex, _> = changes.into_iter().collect();
                let mut answers = Vec::new();
                let mut change_answers = Vec::new();
                for e in entries {
                    // A state machine that keeps its own state may be past
                    // entries the log hands out again after a restart.
                    if e.index <= applied {
                        continue;
                    }
                    match &e.payload {
                        EntryPayload::Normal(data) => {
                            let r = sm.apply(e.index, data);
                            if let Some(reply) = proposals.remove(&e.index) {
                                answers.push((reply, e.index, r));
                            }
                        }
                        EntryPayload::ConfChange(_) => {
                            if let Some(reply) = changes.remove(&e.index) {
                                change_answers.push((reply, e.index));
                            }
                        }
                        EntryPayload::Blank => {}
                    }
                    applied = e.index;
                }
                // Nobody hears of the batch before the state machine holds
                // it (and stored it, if it keeps its own state).
                if applied > before
                    && let Err(e) = sm.flush(applied)
                {
                    let msg =
                        format!("state machine failed to store entries through {applied}: {e}");
                    for (reply, _, _) in answers {
                        let _ = reply.send(Err(Error::Storage(msg.clone())));
                    }
                    for (reply, _) in change_answers {
                        let _ = reply.send(Err(Error::Storage(msg.clone())));
                    }
                    let _ = events.send(Event::Fatal(msg));
                    break;
                }
                for (reply, index, r) in answers {
                    let _ = reply.send(Ok((index, r)));
                }
                for (reply, index) in change_answers {
                    let _ = reply.send(Ok(index));
                }
                // The core handed out no more than `last`.
                if events.send(Event::Applied(applied.min(last))).is_err() {
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
                let restored = crate::snapshot::restore(&mut sm, &data)
                    .and_then(|()| sm.flush(meta.last_index));
                if let Err(e) = restored {
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

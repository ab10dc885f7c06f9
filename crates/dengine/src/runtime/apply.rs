//! The apply task: runs the application's state machine on committed
//! entries in order, answers proposals and reads, takes and restores
//! snapshots.
//!
//! It is a task on the runtime rather than a thread of its own: waking the
//! proposers it answers is then a push onto a worker's queue instead of a
//! system call, which at high load is a large share of the work. Applying
//! is expected to be quick (a state machine on disk writes without fsync);
//! snapshots and restores, which read or write the whole state, run on
//! the blocking pool.

use std::collections::BTreeMap;

use dengine_core::{EntryPayload, LogIndex};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::task::JoinHandle;

use super::{ApplyJob, Event, ReadJob};
use crate::error::Error;
use crate::snapshot::SnapshotStore;
use crate::state_machine::StateMachine;

pub(crate) fn spawn_apply_task<SM: StateMachine>(
    sm: SM,
    applied: LogIndex,
    snapshots: SnapshotStore,
    jobs: UnboundedReceiver<ApplyJob<SM>>,
    events: UnboundedSender<Event>,
) -> JoinHandle<()> {
    tokio::spawn(run(sm, applied, snapshots, jobs, events))
}

/// Runs `f` with the state machine on the blocking pool; the state machine
/// comes back with the result (`None` if `f` panicked: it is lost).
async fn off_runtime<SM: StateMachine, R: Send + 'static>(
    mut sm: SM,
    f: impl FnOnce(&mut SM) -> R + Send + 'static,
) -> Option<(SM, R)> {
    tokio::task::spawn_blocking(move || {
        let r = f(&mut sm);
        (sm, r)
    })
    .await
    .ok()
}

async fn run<SM: StateMachine>(
    mut sm: SM,
    mut applied: LogIndex,
    snapshots: SnapshotStore,
    mut jobs: UnboundedReceiver<ApplyJob<SM>>,
    events: UnboundedSender<Event>,
) {
    let mut reads: BTreeMap<LogIndex, Vec<ReadJob<SM>>> = BTreeMap::new();
    while let Some(job) = jobs.recv().await {
        match job {
            ApplyJob::Entries(entries, proposals, changes) => {
                let Some(last) = entries.last().map(|e| e.index) else {
                    continue;
                };
                let before = applied;
                // Both come in index order, as the entries do.
                let mut answers = Vec::with_capacity(proposals.len());
                let mut change_answers = Vec::with_capacity(changes.len());
                let mut proposals = proposals.into_iter().peekable();
                let mut changes = changes.into_iter().peekable();
                for e in entries {
                    // A state machine that keeps its own state may be past
                    // entries the log hands out again after a restart.
                    if e.index <= applied {
                        continue;
                    }
                    // Replies have entries of their own kind at their index;
                    // none can wait below this one.
                    while proposals.next_if(|(i, _)| *i < e.index).is_some() {}
                    while changes.next_if(|(i, _)| *i < e.index).is_some() {}
                    match &e.payload {
                        EntryPayload::Normal(data) => {
                            let r = sm.apply(e.index, data);
                            if let Some((_, reply)) = proposals.next_if(|(i, _)| *i == e.index) {
                                answers.push((reply, e.index, r));
                            }
                        }
                        EntryPayload::ConfChange(_) => {
                            if let Some((_, reply)) = changes.next_if(|(i, _)| *i == e.index) {
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
                // Streamed to its file and made durable off the runtime.
                let store = snapshots.clone();
                let m = meta.clone();
                let Some((back, made)) = off_runtime(sm, move |sm| {
                    store.writer(m).and_then(|mut w| {
                        sm.snapshot(&mut w)?;
                        w.finish()
                    })
                })
                .await
                else {
                    let _ = events.send(Event::Fatal(
                        "the state machine panicked in snapshot".into(),
                    ));
                    break;
                };
                sm = back;
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
                let Some((back, restored)) =
                    off_runtime(sm, move |sm| crate::snapshot::restore(sm, &data)).await
                else {
                    let _ =
                        events.send(Event::Fatal("the state machine panicked in restore".into()));
                    break;
                };
                sm = back;
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

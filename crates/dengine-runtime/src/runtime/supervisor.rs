//! Watches the node's tasks: when the core task ends by a panic, nobody is
//! left to answer proposers or report the node's state, so the supervisor
//! does it (the disk and apply threads catch their own panics and report
//! them to the core task as `Event::Fatal`). It then waits for the threads
//! to finish, which they do once the core task is gone.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Metrics, ProposalQueue, panic_message};
use crate::error::Error;

/// The node's workers besides the core task.
pub(crate) struct Threads {
    pub(crate) disk: std::thread::JoinHandle<()>,
    /// Completes when the apply worker has finished (a task or a thread).
    pub(crate) apply: tokio::sync::oneshot::Receiver<()>,
}

/// Runs until the node's tasks and threads are all done.
pub(crate) async fn supervise<R: Send + 'static>(
    core: JoinHandle<()>,
    threads: Threads,
    metrics: watch::Sender<Metrics>,
    queue: Arc<ProposalQueue<R>>,
) {
    if let Err(e) = core.await {
        let why = if e.is_panic() {
            format!(
                "the core task panicked: {}",
                panic_message(&*e.into_panic())
            )
        } else {
            "the core task was cancelled".to_string()
        };
        tracing::error!(error = %why, "node stopping");
        // The core task's receivers are gone: requests now fail at once,
        // proposals it held were dropped (their callers see the error
        // below through the queue, or `Shutdown`).
        queue.close(&Error::Fatal(why.clone()));
        metrics.send_modify(|m| {
            if m.fatal.is_none() {
                m.fatal = Some(why);
            }
        });
    }
    // Its sender is dropped when the worker ends, however it ends.
    let _ = threads.apply.await;
    let disk = threads.disk;
    let joined = tokio::task::spawn_blocking(move || {
        if disk.join().is_err() {
            tracing::error!("the disk thread ended by a panic");
        }
    })
    .await;
    if joined.is_err() {
        tracing::error!("joining the node's threads failed");
    }
}

//! What the disk thread reports to the core task, and when it wakes it.
//!
//! Under light load most persisted reports change nothing at once. A
//! follower's acknowledgement left from the disk thread already, and the
//! entries it made durable wait for the commit index, which comes with
//! the leader's next message. A leader's own write usually ends before a
//! follower's acknowledgement, which is what commits the entry. Waking
//! the core task for such a report cost every member one more wake-up of
//! its worker thread per write: on this project's 2-core VM, a context
//! switch and an `epoll_wait` return, each tens of microseconds.
//!
//! So reports go into a queue the core task empties at every turn,
//! whatever woke it, and the disk thread wakes it only for a report that
//! lets it move on now:
//! - entries at or below the index the core publishes after each turn
//!   ([`dengine_core::RawNode::persist_unblocks_through`]: the commit
//!   index, and on a leader whatever its own write would commit);
//! - messages left for the core to send, or peers found unreachable;
//! - a snapshot, or a new term or vote made durable;
//! - any other report (a snapshot's metadata saved).
//!
//! The decision and the publication are made under one lock, so a report
//! queued without a wake was queued after the core published what it
//! waits for, and does not unblock it. A core that stops taking reports
//! before it published what it waits for (a turn takes a few rounds at
//! most) has every report wake it instead. A report that waits still reaches
//! the core within a tick: the core task wakes at every tick.

use std::sync::Mutex;

use tokio::sync::mpsc::UnboundedSender;

use dengine_core::{LogIndex, Message, NodeId, Persisted};

use super::Event;

/// The disk thread's reports, waiting for the core task.
pub(crate) struct DiskReports {
    state: Mutex<State>,
    /// Wakes the core task ([`Event::DiskReports`]).
    events: UnboundedSender<Event>,
}

struct State {
    /// Reports in the order they were made.
    waiting: Vec<Event>,
    /// Durable entries at or below this index let the core move on.
    unblocks_through: LogIndex,
}

/// Why a report could not be given: the core task is gone.
pub(crate) struct CoreGone;

impl DiskReports {
    /// Reports for a core task woken through `events`. Until the core
    /// publishes what it waits for, every report of entries wakes it.
    pub(crate) fn new(events: UnboundedSender<Event>) -> DiskReports {
        DiskReports {
            state: Mutex::new(State {
                waiting: Vec::new(),
                unblocks_through: LogIndex(u64::MAX),
            }),
            events,
        }
    }

    /// Reports batches made durable: what each persisted and the messages
    /// left for the core to send; then the peers found unreachable, and
    /// whether the group made a new term or vote durable.
    pub(crate) fn persisted(
        &self,
        batches: Vec<(Persisted, Vec<Message>)>,
        unreachable: Vec<NodeId>,
        new_term_vote: bool,
    ) -> Result<(), CoreGone> {
        let mut state = self.lock();
        let through = state.unblocks_through;
        let wake = new_term_vote
            || !unreachable.is_empty()
            || batches.iter().any(|(p, messages)| {
                !messages.is_empty()
                    || p.snapshot.is_some()
                    || p.entries_to.is_some_and(|e| e.index <= through)
            });
        state.waiting.push(Event::Persisted(batches, unreachable));
        drop(state);
        self.wake_if(wake)
    }

    /// Reports anything else; it wakes the core.
    pub(crate) fn other(&self, event: Event) -> Result<(), CoreGone> {
        self.lock().waiting.push(event);
        self.wake_if(true)
    }

    /// Takes every report waiting, in order (the core task, at each turn).
    pub(crate) fn take(&self) -> Vec<Event> {
        std::mem::take(&mut self.lock().waiting)
    }

    /// Publishes what durable entries would let the core move on (after a
    /// turn), and takes the reports that came during it: those were
    /// decided against the index before, so the core handles them now.
    pub(crate) fn publish(&self, unblocks_through: LogIndex) -> Vec<Event> {
        let mut state = self.lock();
        state.unblocks_through = unblocks_through;
        std::mem::take(&mut state.waiting)
    }

    /// Has every report from now on wake the core (until it publishes
    /// again); returns whether reports wait already.
    pub(crate) fn wake_on_every_report(&self) -> bool {
        let mut state = self.lock();
        state.unblocks_through = LogIndex(u64::MAX);
        !state.waiting.is_empty()
    }

    fn wake_if(&self, wake: bool) -> Result<(), CoreGone> {
        if wake {
            self.events.send(Event::DiskReports).map_err(|_| CoreGone)
        } else if self.events.is_closed() {
            Err(CoreGone)
        } else {
            Ok(())
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a queue and an index: a panic elsewhere while it was
        // held leaves both usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use dengine_core::{EntryId, MessageBody, Term};

    use super::*;

    fn entries_to(index: u64) -> Persisted {
        Persisted {
            entries_to: Some(EntryId {
                index: LogIndex(index),
                term: Term(1),
            }),
            snapshot: None,
            term_vote: None,
        }
    }

    fn woken(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>) -> bool {
        let mut any = false;
        while let Ok(ev) = rx.try_recv() {
            assert!(matches!(ev, Event::DiskReports));
            any = true;
        }
        any
    }

    /// Until the core publishes, every report wakes it; after, only those
    /// that let it move on do, and every report is taken in order.
    #[test]
    fn only_reports_that_unblock_the_core_wake_it() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let reports = DiskReports::new(tx);
        let ok = |r: Result<(), CoreGone>| assert!(r.is_ok());
        ok(reports.persisted(vec![(entries_to(5), vec![])], vec![], false));
        assert!(woken(&mut rx), "nothing published yet: it wakes");
        assert_eq!(reports.publish(LogIndex(4)).len(), 1, "taken on publish");

        ok(reports.persisted(vec![(entries_to(6), vec![])], vec![], false));
        assert!(!woken(&mut rx), "past what unblocks the core: no wake");
        ok(reports.persisted(vec![(entries_to(4), vec![])], vec![], false));
        assert!(woken(&mut rx), "at or below it: a wake");
        ok(reports.persisted(vec![(entries_to(7), vec![])], vec![NodeId(2)], false));
        assert!(woken(&mut rx), "a peer unreachable: a wake");
        ok(reports.persisted(vec![(entries_to(8), vec![])], vec![], true));
        assert!(woken(&mut rx), "a new term or vote: a wake");
        let vote = Message {
            from: NodeId(1),
            to: NodeId(2),
            term: Term(1),
            body: MessageBody::RequestVoteResponse {
                pre_vote: false,
                granted: true,
            },
        };
        ok(reports.persisted(vec![(entries_to(9), vec![vote])], vec![], false));
        assert!(woken(&mut rx), "a message for the core: a wake");
        ok(reports.other(Event::Applied(LogIndex(1))));
        assert!(woken(&mut rx));

        let taken = reports.take();
        let order: Vec<Option<u64>> = taken
            .iter()
            .map(|ev| match ev {
                Event::Persisted(b, _) => b[0].0.entries_to.map(|e| e.index.0),
                _ => None,
            })
            .collect();
        assert_eq!(
            order,
            vec![Some(6), Some(4), Some(7), Some(8), Some(9), None]
        );
        assert!(reports.take().is_empty());

        // The core stopped taking them mid-turn: every report wakes it.
        assert!(!reports.wake_on_every_report());
        ok(reports.persisted(vec![(entries_to(11), vec![])], vec![], false));
        assert!(woken(&mut rx), "past what unblocks it, but a wake");
        assert!(reports.wake_on_every_report(), "one waits");
        assert_eq!(reports.publish(LogIndex(4)).len(), 1);

        drop(rx);
        assert!(
            reports
                .persisted(vec![(entries_to(10), vec![])], vec![], false)
                .is_err(),
            "the core is gone, even for a report that would not wake it"
        );
    }
}

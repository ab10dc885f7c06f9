//! Hard states that only move the commit index, kept back from the disk
//! thread.
//!
//! Nothing waits for such a write, and the disk thread would not sync it
//! (see the disk module: a commit index is never promised durable), so a
//! trip there and back would only cost both threads a wake-up: on a
//! follower one for every commit a leader tells, on the leader one for
//! every commit. The hard state goes with the next batch instead (whose own
//! hard state, if any, is newer), or on its own once a whole tick passed
//! without one.

use dengine_core::{HardState, NodeId, PersistBatch, Term};

/// The commit-only hard state held back, and what decides it is one.
#[derive(Debug, Default)]
pub(crate) struct HeldCommit {
    /// The term and vote of the last hard state handed to the disk thread
    /// (`None` until one is).
    disk_term_vote: Option<(Term, NodeId)>,
    /// The hard state held, and whether a tick passed with it held.
    held: Option<(HardState, bool)>,
}

impl HeldCommit {
    /// Whether `batch` is to be held rather than written: it has no
    /// entries, no snapshot and no messages waiting on it, and its hard
    /// state has the term and vote the disk thread has. Any other batch
    /// takes the held hard state along if it has none of its own; its
    /// report then names the term and vote the disk thread has already,
    /// which that batch, written after the one that set them, makes durable
    /// in any case.
    pub(crate) fn hold(&mut self, batch: &mut PersistBatch) -> bool {
        match batch.hard_state {
            Some(h)
                if batch.entries.is_empty()
                    && batch.snapshot.is_none()
                    && batch.messages.is_empty()
                    && self.disk_term_vote == Some((h.term, h.vote)) =>
            {
                self.held = Some((h, false));
                true
            }
            Some(h) => {
                self.disk_term_vote = Some((h.term, h.vote));
                self.held = None;
                false
            }
            None => {
                batch.hard_state = self.held.take().map(|(h, _)| h);
                false
            }
        }
    }

    /// A tick passed: the batch to write now, if the hard state held was
    /// held through a whole tick already.
    pub(crate) fn on_tick(&mut self) -> Option<PersistBatch> {
        match &mut self.held {
            Some((_, aged)) if !*aged => {
                *aged = true;
                None
            }
            _ => self.take(),
        }
    }

    /// The batch to write the hard state held, if any (the node stops).
    pub(crate) fn take(&mut self) -> Option<PersistBatch> {
        self.held.take().map(|(h, _)| PersistBatch {
            hard_state: Some(h),
            ..PersistBatch::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use dengine_core::{Entry, EntryPayload, LogIndex, Message, MessageBody};

    use super::*;

    fn hs(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term: Term(term),
            vote: NodeId(vote),
            commit: LogIndex(commit),
        }
    }

    fn commit_only(term: u64, vote: u64, commit: u64) -> PersistBatch {
        PersistBatch {
            hard_state: Some(hs(term, vote, commit)),
            ..PersistBatch::default()
        }
    }

    fn entries(index: u64) -> PersistBatch {
        PersistBatch {
            entries: vec![Entry {
                term: Term(2),
                index: LogIndex(index),
                payload: EntryPayload::Blank,
            }],
            ..PersistBatch::default()
        }
    }

    #[test]
    fn a_commit_is_held_only_once_its_term_and_vote_went_to_the_disk() {
        let mut h = HeldCommit::default();
        // Nothing went to the disk yet: the first hard state is written.
        let mut first = commit_only(2, 1, 1);
        assert!(!h.hold(&mut first));
        assert!(h.hold(&mut commit_only(2, 1, 2)));
        // A new term or vote is written, and makes the held commit moot.
        let mut vote = commit_only(3, 2, 2);
        assert!(!h.hold(&mut vote));
        assert_eq!(h.take(), None);
    }

    #[test]
    fn a_batch_with_anything_waiting_on_it_is_never_held() {
        let mut h = HeldCommit::default();
        assert!(!h.hold(&mut commit_only(2, 1, 1)));
        let mut with_entries = entries(5);
        with_entries.hard_state = Some(hs(2, 1, 4));
        assert!(!h.hold(&mut with_entries));
        let mut with_ack = commit_only(2, 1, 5);
        with_ack.messages.push(Message {
            from: NodeId(2),
            to: NodeId(1),
            term: Term(2),
            body: MessageBody::AppendEntriesResponse {
                result: Ok(LogIndex(5)),
            },
        });
        assert!(!h.hold(&mut with_ack));
    }

    #[test]
    fn the_next_batch_takes_the_held_commit_along_unless_it_has_its_own() {
        let mut h = HeldCommit::default();
        assert!(!h.hold(&mut commit_only(2, 1, 1)));
        assert!(h.hold(&mut commit_only(2, 1, 2)));
        assert!(h.hold(&mut commit_only(2, 1, 3)));
        let mut next = entries(4);
        assert!(!h.hold(&mut next));
        assert_eq!(next.hard_state, Some(hs(2, 1, 3)));
        assert_eq!(h.take(), None);

        assert!(h.hold(&mut commit_only(2, 1, 4)));
        let mut own = entries(5);
        own.hard_state = Some(hs(2, 1, 5));
        assert!(!h.hold(&mut own));
        assert_eq!(own.hard_state, Some(hs(2, 1, 5)));
        assert_eq!(h.take(), None);
    }

    #[test]
    fn a_held_commit_is_written_after_a_whole_tick_without_a_batch() {
        let mut h = HeldCommit::default();
        assert_eq!(h.on_tick(), None);
        assert!(!h.hold(&mut commit_only(2, 1, 1)));
        assert!(h.hold(&mut commit_only(2, 1, 2)));
        // The tick that comes first may come right after it was held.
        assert_eq!(h.on_tick(), None);
        assert_eq!(h.on_tick(), Some(commit_only(2, 1, 2)));
        assert_eq!(h.on_tick(), None);
        // A newer commit held starts its wait again.
        assert!(h.hold(&mut commit_only(2, 1, 3)));
        assert_eq!(h.on_tick(), None);
        assert!(h.hold(&mut commit_only(2, 1, 4)));
        assert_eq!(h.on_tick(), None);
        assert_eq!(h.on_tick(), Some(commit_only(2, 1, 4)));
    }
}

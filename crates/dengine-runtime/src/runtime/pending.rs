//! Proposals on their way: the queue proposers push onto, and the replies
//! that wait for their entries to be applied.
//!
//! Both work in batches, because at a million proposals a second a
//! per-proposal channel message, semaphore permit or map entry is a large
//! share of the whole cost.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use dengine_core::{Entry, LogIndex, Term};
use tokio::sync::Notify;

use super::traces::Trace;
use super::{ProposeReply, telemetry};
use crate::error::Error;

/// A proposed command, where its answer goes, and the span it was made
/// in (if traced).
pub(crate) type Proposal<R> = (dengine_core::Bytes, ProposeReply<R>, Trace);

/// Lock shards of the proposal queue: proposers on different threads push
/// under different locks (one lock was contended enough to cost a tenth
/// of the CPU at a million proposals a second).
const SHARDS: usize = 4;

/// One shard, on a cache line of its own.
#[repr(align(128))]
struct Shard<R>(Mutex<Vec<Proposal<R>>>);

/// The shard of the calling thread.
fn my_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// Proposals handed from the application to the core task: vectors under
/// a few locks, taken whole by the core; the core is woken only when the
/// queue was empty.
pub(crate) struct ProposalQueue<R> {
    shards: [Shard<R>; SHARDS],
    /// Proposals queued (approximate while pushes and takes overlap).
    len: AtomicUsize,
    closed: AtomicBool,
    /// Why it was closed (the first reason given wins).
    reason: OnceLock<Error>,
    limit: usize,
    pub(crate) notify: Notify,
}

impl<R> ProposalQueue<R> {
    /// A queue holding at most `limit` proposals (more is `Overloaded`).
    pub(crate) fn new(limit: usize) -> Self {
        ProposalQueue {
            shards: std::array::from_fn(|_| Shard(Mutex::new(Vec::new()))),
            len: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            reason: OnceLock::new(),
            limit,
            notify: Notify::new(),
        }
    }

    fn lock(&self, shard: usize) -> std::sync::MutexGuard<'_, Vec<Proposal<R>>> {
        // A panic while holding the lock leaves a vector that is still valid.
        self.shards[shard % SHARDS]
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a proposal, or says why not.
    pub(crate) fn push(&self, p: Proposal<R>) -> Result<(), (Error, Proposal<R>)> {
        if self.closed.load(Ordering::Acquire) {
            return Err((self.why_closed(), p));
        }
        // Counted before it is pushed, so a take never removes more than
        // the count holds.
        let before = self.len.fetch_add(1, Ordering::AcqRel);
        if before >= self.limit {
            self.len.fetch_sub(1, Ordering::AcqRel);
            return Err((Error::Overloaded, p));
        }
        {
            let mut items = self.lock(my_shard());
            // Checked under the lock: `close` drains each shard after
            // setting the flag, so nothing pushed is left unanswered.
            if self.closed.load(Ordering::Acquire) {
                drop(items);
                self.len.fetch_sub(1, Ordering::AcqRel);
                return Err((self.why_closed(), p));
            }
            items.push(p);
        }
        if before == 0 {
            self.notify.notify_one();
        }
        Ok(())
    }

    /// Moves everything queued into `into` (cheap when the queue is empty).
    pub(crate) fn take(&self, into: &mut Vec<Proposal<R>>) {
        if self.len.load(Ordering::Acquire) == 0 {
            return;
        }
        let before = into.len();
        for shard in 0..SHARDS {
            let mut items = self.lock(shard);
            if into.is_empty() {
                std::mem::swap(&mut *items, into);
            } else {
                into.append(&mut items);
            }
        }
        let taken = into.len() - before;
        let left = self.len.fetch_sub(taken, Ordering::AcqRel) - taken;
        if left > 0 {
            // Counted by a push that had not reached its shard yet (and so
            // did not wake the core): come around again rather than wait.
            self.notify.notify_one();
        }
    }

    /// Proposals queued now (approximate while pushes and takes overlap).
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Why proposals are refused: the reason the queue was closed with.
    fn why_closed(&self) -> Error {
        self.reason.get().cloned().unwrap_or(Error::Shutdown)
    }

    /// Refuses further proposals (with `e`, or the reason of an earlier
    /// close) and answers those queued with `e`.
    pub(crate) fn close(&self, e: &Error) {
        let _ = self.reason.set(e.clone());
        self.closed.store(true, Ordering::Release);
        let mut items = Vec::new();
        for shard in 0..SHARDS {
            items.append(&mut self.lock(shard));
        }
        self.len.fetch_sub(items.len(), Ordering::AcqRel);
        for (_, reply, _) in items {
            let _ = reply.send(Err(e.clone()));
        }
    }
}

/// Replies proposed together: consecutive entries from the key's index.
struct Batch<R> {
    /// The tick the batch was proposed at (for timeouts).
    tick: u64,
    /// When it was proposed (for the commit latency).
    proposed_at: Instant,
    replies: VecDeque<ProposeReply<R>>,
}

/// Replies waiting for their entries, by (first index, term of proposal).
/// A reply is answered once its index is handed out to be applied: with
/// the response if the entry there still has the term it was proposed in,
/// `Dropped` if another leader replaced it, `Timeout` if a snapshot
/// covered it (its outcome is unknown).
pub(crate) struct Pending<R> {
    batches: BTreeMap<(LogIndex, Term), Batch<R>>,
}

impl<R> Default for Pending<R> {
    fn default() -> Self {
        Pending {
            batches: BTreeMap::new(),
        }
    }
}

impl<R> Pending<R> {
    /// Records replies for entries `first..` proposed in `term`.
    pub(crate) fn insert(
        &mut self,
        first: LogIndex,
        term: Term,
        tick: u64,
        replies: Vec<ProposeReply<R>>,
    ) {
        // Taken over as it is, not copied.
        let replies = VecDeque::from(replies);
        if !replies.is_empty() {
            self.batches.insert(
                (first, term),
                Batch {
                    tick,
                    proposed_at: Instant::now(),
                    replies,
                },
            );
        }
    }

    /// Takes the replies of the consecutive `entries` being handed out, in
    /// index order, answering those that will not get a response.
    pub(crate) fn take_for(&mut self, entries: &[Entry]) -> Vec<(LogIndex, ProposeReply<R>)> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Vec::new();
        };
        let (first, last) = (first.index, last.index);
        let mut out = Vec::new();
        while let Some(entry) = self.batches.first_entry() {
            let (start, term) = *entry.key();
            if start > last {
                break;
            }
            let mut batch = entry.remove();
            let mut index = start;
            let taken_before = out.len();
            while index <= last {
                let Some(reply) = batch.replies.pop_front() else {
                    break;
                };
                if index < first {
                    let _ = reply.send(Err(Error::Timeout));
                } else {
                    let at = (index.0 - first.0) as usize;
                    if entries.get(at).is_some_and(|e| e.term == term) {
                        out.push((index, reply));
                    } else {
                        let _ = reply.send(Err(Error::Dropped(index)));
                    }
                }
                index = index.next();
            }
            let committed = out.len() - taken_before;
            if committed > 0 {
                telemetry::record_commit_time(batch.proposed_at.elapsed());
            }
            if !batch.replies.is_empty() {
                self.batches.insert((index, term), batch);
            }
        }
        // Overlapping batches of different terms could interleave.
        if !out.is_sorted_by_key(|(i, _)| *i) {
            out.sort_by_key(|(i, _)| *i);
        }
        out
    }

    /// Answers `Timeout` to batches proposed more than `timeout` ticks
    /// before `now` (oldest first; their outcome is unknown).
    pub(crate) fn expire(&mut self, now: u64, timeout: u64) {
        while let Some(entry) = self.batches.first_entry() {
            if now.saturating_sub(entry.get().tick) <= timeout {
                break;
            }
            for reply in entry.remove().replies {
                let _ = reply.send(Err(Error::Timeout));
            }
        }
    }

    /// Answers every waiting reply with `e`.
    pub(crate) fn fail_all(&mut self, e: &Error) {
        for (_, batch) in std::mem::take(&mut self.batches) {
            for reply in batch.replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dengine_core::{Bytes, EntryPayload};
    use tokio::sync::oneshot;

    type Rx = oneshot::Receiver<Result<(LogIndex, ()), Error>>;

    fn replies(n: usize) -> (Vec<ProposeReply<()>>, Vec<Rx>) {
        (0..n).map(|_| oneshot::channel()).unzip()
    }

    fn ents(first: u64, terms: &[u64]) -> Vec<Entry> {
        terms
            .iter()
            .enumerate()
            .map(|(i, &t)| Entry {
                index: LogIndex(first + i as u64),
                term: Term(t),
                payload: EntryPayload::Normal(Bytes::new()),
            })
            .collect()
    }

    fn outcome(rx: &mut Rx) -> Option<Result<(LogIndex, ()), Error>> {
        rx.try_recv().ok()
    }

    #[test]
    fn replies_are_handed_out_in_pieces_and_replaced_entries_are_dropped() {
        let mut p = Pending::default();
        let (tx, mut rx) = replies(4);
        p.insert(LogIndex(10), Term(2), 0, tx);
        // Entries 10 and 11 first: two replies handed out, two wait.
        let out = p.take_for(&ents(10, &[2, 2]));
        assert_eq!(out.iter().map(|(i, _)| i.0).collect::<Vec<_>>(), [10, 11]);
        assert!(outcome(&mut rx[2]).is_none());
        // 12 was replaced by another leader's entry (term 3); 13 is fine.
        let out = p.take_for(&ents(12, &[3, 2]));
        assert_eq!(out.iter().map(|(i, _)| i.0).collect::<Vec<_>>(), [13]);
        assert_eq!(outcome(&mut rx[2]), Some(Err(Error::Dropped(LogIndex(12)))));
    }

    #[test]
    fn replies_below_the_handed_out_entries_were_covered_by_a_snapshot() {
        let mut p = Pending::default();
        let (tx, mut rx) = replies(3);
        p.insert(LogIndex(5), Term(1), 0, tx);
        let out = p.take_for(&ents(7, &[1]));
        assert_eq!(out.len(), 1);
        assert_eq!(outcome(&mut rx[0]), Some(Err(Error::Timeout)));
        assert_eq!(outcome(&mut rx[1]), Some(Err(Error::Timeout)));
    }

    #[test]
    fn overlapping_batches_of_two_terms_each_keep_their_own_entries() {
        let mut p = Pending::default();
        let (old, mut old_rx) = replies(4); // 10..14 in term 1
        let (new, _new_rx) = replies(3); // 12..15 in term 2
        p.insert(LogIndex(10), Term(1), 0, old);
        p.insert(LogIndex(12), Term(2), 1, new);
        let out = p.take_for(&ents(10, &[1, 1, 2, 2, 2]));
        assert_eq!(
            out.iter().map(|(i, _)| i.0).collect::<Vec<_>>(),
            [10, 11, 12, 13, 14]
        );
        assert_eq!(
            outcome(&mut old_rx[2]),
            Some(Err(Error::Dropped(LogIndex(12))))
        );
        assert_eq!(
            outcome(&mut old_rx[3]),
            Some(Err(Error::Dropped(LogIndex(13))))
        );
    }

    #[test]
    fn old_batches_time_out_and_a_failure_answers_everyone() {
        let mut p = Pending::default();
        let (a, mut a_rx) = replies(2);
        let (b, mut b_rx) = replies(1);
        p.insert(LogIndex(1), Term(1), 0, a);
        p.insert(LogIndex(3), Term(1), 10, b);
        p.expire(12, 5);
        assert_eq!(outcome(&mut a_rx[1]), Some(Err(Error::Timeout)));
        assert!(outcome(&mut b_rx[0]).is_none());
        p.fail_all(&Error::Shutdown);
        assert_eq!(outcome(&mut b_rx[0]), Some(Err(Error::Shutdown)));
    }

    #[test]
    fn pushes_from_many_threads_are_all_taken_and_the_count_returns_to_zero() {
        let q: std::sync::Arc<ProposalQueue<()>> = std::sync::Arc::new(ProposalQueue::new(1 << 20));
        let pushers: Vec<_> = (0..4)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for _ in 0..5_000 {
                        let (tx, _rx) = oneshot::channel();
                        q.push((dengine_core::Bytes::new(), tx, None))
                            .map_err(|_| ())
                            .expect("room");
                    }
                })
            })
            .collect();
        let mut taken = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while taken < 20_000 {
            let mut into = Vec::new();
            q.take(&mut into);
            taken += into.len();
            assert!(std::time::Instant::now() < deadline, "only {taken} taken");
        }
        for p in pushers {
            p.join().expect("pusher");
        }
        assert_eq!(taken, 20_000);
        assert_eq!(q.len.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn the_queue_bounds_closes_and_wakes_only_when_it_was_empty() {
        let q: ProposalQueue<()> = ProposalQueue::new(2);
        let (tx, mut rx) = replies(3);
        let mut tx = tx.into_iter();
        for reply in tx.by_ref().take(2) {
            assert!(q.push((dengine_core::Bytes::new(), reply, None)).is_ok());
        }
        let Some(third) = tx.next() else {
            panic!("three")
        };
        let refused = q.push((dengine_core::Bytes::new(), third, None));
        assert!(matches!(refused, Err((Error::Overloaded, _))));
        let mut into = Vec::new();
        q.take(&mut into);
        assert_eq!(into.len(), 2);
        let (again, mut again_rx) = oneshot::channel();
        q.push((dengine_core::Bytes::new(), again, None))
            .map_err(|_| ())
            .expect("room again");
        q.close(&Error::Shutdown);
        assert_eq!(again_rx.try_recv().ok(), Some(Err(Error::Shutdown)));
        let (late, _) = oneshot::channel();
        assert!(matches!(
            q.push((dengine_core::Bytes::new(), late, None)),
            Err((Error::Shutdown, _))
        ));
        drop(into);
        assert!(rx[0].try_recv().is_err(), "taken, not answered by close");
    }
}

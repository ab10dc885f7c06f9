//! The leader's view of one follower's log: how far it is known to match,
//! what to send next, and how sending is throttled.
//!
//! A [`Progress`] is a small state machine. Its state changes *only* through
//! its methods; the leader never writes `state` or `next` itself. The
//! invariant `matched < next` holds after every method.
//!
//! ```text
//!            become_replicate (after a successful probe)
//!   Probe ───────────────────────────────────────────────▶ Replicate
//!     ▲  ◀─────────────── maybe_decr_to (genuine rejection) ──┘
//!     │
//!     │ snapshot_done / become_probe        become_snapshot (log compacted
//!     └──────────────────────────── Snapshot ◀─── past `next`, from any state)
//! ```

use super::inflights::Inflights;
use crate::types::LogIndex;

/// How the leader talks to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The leader does not know where the follower's log diverges: it sends
    /// one append at a time and waits for the answer (or a heartbeat
    /// response) before sending another.
    Probe,
    /// The follower's log is known to match: the leader streams appends,
    /// advancing `next` optimistically, limited by the [`Inflights`] window.
    Replicate,
    /// The follower needs a snapshot; appends are paused until the snapshot
    /// is installed or fails.
    Snapshot,
}

/// The leader's view of one follower's (or its own) log.
#[derive(Clone, Debug)]
pub struct Progress {
    /// The highest index known to be durably replicated on the follower and
    /// to match the leader's log. Never decreases.
    pub matched: LogIndex,
    /// The index of the next entry to send. Always `> matched`.
    pub next: LogIndex,
    /// How the leader talks to the follower.
    pub state: ProgressState,
    /// In [`ProgressState::Snapshot`]: the last index of the snapshot being
    /// sent; otherwise 0.
    pub pending_snapshot: LogIndex,
    /// In [`ProgressState::Probe`]: a probe is outstanding, so sending pauses
    /// until an append response or a heartbeat response arrives.
    pub probe_sent: bool,
    /// Whether the follower was heard from since the last check-quorum round.
    pub recent_active: bool,
    /// The append messages in flight (only used in
    /// [`ProgressState::Replicate`]).
    pub inflights: Inflights,
    /// Whether the node is a learner (receives the log but does not vote).
    pub is_learner: bool,
    /// In [`ProgressState::Replicate`]: the commit index moved and the
    /// follower is owed a message carrying it, held back (see
    /// [`crate::Config::defer_commit_notices`]) in case an append carries it
    /// first.
    pub commit_notice_due: bool,
}

impl Progress {
    /// A progress in [`ProgressState::Probe`] with nothing matched, next
    /// sending `next` (at least 1, to keep `matched < next`), with an
    /// in-flight window of `max_inflight_msgs` messages and
    /// `max_inflight_bytes` bytes (0: no byte limit).
    ///
    /// It starts `recent_active`, so that a member just added is not counted
    /// as silent by a check-quorum round before it had a chance to answer.
    pub fn new(next: LogIndex, max_inflight_msgs: usize, max_inflight_bytes: u64) -> Self {
        Progress {
            matched: LogIndex::ZERO,
            next: next.max(LogIndex(1)),
            state: ProgressState::Probe,
            pending_snapshot: LogIndex::ZERO,
            probe_sent: false,
            recent_active: true,
            inflights: Inflights::new(max_inflight_msgs, max_inflight_bytes),
            is_learner: false,
            commit_notice_due: false,
        }
    }

    /// Enters `state`, clearing what belongs to the previous state: the
    /// in-flight window, `probe_sent`, `pending_snapshot` and a held commit
    /// notice.
    fn reset_state(&mut self, state: ProgressState) {
        self.state = state;
        self.probe_sent = false;
        self.pending_snapshot = LogIndex::ZERO;
        self.commit_notice_due = false;
        self.inflights.reset();
    }

    /// Enters [`ProgressState::Probe`], probing from `matched + 1` or, when
    /// leaving [`ProgressState::Snapshot`], from just after the pending
    /// snapshot if that is further.
    pub fn become_probe(&mut self) {
        let from_snapshot = if self.state == ProgressState::Snapshot {
            self.pending_snapshot.next()
        } else {
            LogIndex::ZERO
        };
        self.reset_state(ProgressState::Probe);
        self.next = self.matched.next().max(from_snapshot);
    }

    /// Enters [`ProgressState::Replicate`], streaming from `matched + 1`.
    ///
    /// Called by the leader once an append response shows where the logs
    /// match (typically right after [`Progress::maybe_update`] in Probe).
    pub fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next = self.matched.next();
    }

    /// Enters [`ProgressState::Snapshot`] for a snapshot whose last index is
    /// `snapshot_index`; appends pause until [`Progress::snapshot_done`] or
    /// an append response through [`Progress::maybe_update`] (followed by a
    /// state change decided by the leader).
    pub fn become_snapshot(&mut self, snapshot_index: LogIndex) {
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = snapshot_index;
    }

    /// The follower acknowledged that its log matches up to `n`.
    ///
    /// `matched` becomes `max(matched, n)`, `next` at least `n + 1`, the
    /// outstanding probe (if any) is answered, and in-flight messages up to
    /// `n` are freed. Returns whether `matched` grew (`false`: a stale or
    /// duplicate acknowledgement).
    ///
    /// The state does not change: the leader moves a probed follower to
    /// Replicate ([`Progress::become_replicate`]) and a follower that
    /// installed a snapshot out of Snapshot.
    pub fn maybe_update(&mut self, n: LogIndex) -> bool {
        let grew = n > self.matched;
        if grew {
            self.matched = n;
        }
        self.next = self.next.max(n.next());
        self.probe_sent = false;
        self.inflights.free_le(n);
        grew
    }

    /// Whether entries were sent that the follower has not acknowledged
    /// yet (appends in flight, or lost: a heartbeat response then sends
    /// them again).
    pub fn has_appends_in_flight(&self) -> bool {
        self.next > self.matched.next()
    }

    /// An append was sent with entries up to `last` (`next - 1` if it had no
    /// entries) carrying `bytes` bytes of entries.
    ///
    /// * Replicate: if it carried entries past `next - 1`, `next` becomes
    ///   `last + 1` and the message is recorded in the in-flight window.
    ///   (Messages without entries, or re-sending entries before `next`, are
    ///   not recorded: acknowledgements free the window by index.)
    /// * Probe: the probe is outstanding (`probe_sent`); `next` stays, since
    ///   the follower may still reject it.
    /// * Snapshot: nothing (appends are not sent then).
    ///
    /// Every append carries the commit index, so a held commit notice is
    /// no longer due.
    pub fn sent_append(&mut self, last: LogIndex, bytes: u64, had_entries: bool) {
        self.commit_notice_due = false;
        match self.state {
            ProgressState::Replicate => {
                if had_entries && last >= self.next {
                    self.inflights.add(last, bytes);
                    self.next = last.next();
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => {}
        }
    }

    /// The commit index moved and the follower (in
    /// [`ProgressState::Replicate`], with nothing in flight) is owed a
    /// message carrying it: held until [`Progress::take_commit_notice`] or
    /// until an append carries it ([`Progress::sent_append`]).
    pub fn hold_commit_notice(&mut self) {
        if self.state == ProgressState::Replicate {
            self.commit_notice_due = true;
        }
    }

    /// Whether a held commit notice is due, clearing it: the caller sends it.
    pub fn take_commit_notice(&mut self) -> bool {
        std::mem::take(&mut self.commit_notice_due)
    }

    /// The follower rejected the append whose `prev` index was `rejected`,
    /// guessing that its log matches the leader's up to `hint` (the leader
    /// may first have lowered the follower's hint using its own log, as
    /// etcd's `findConflictByTerm` does). Returns `true` if the rejection was
    /// genuine and the progress changed, `false` if it was stale.
    ///
    /// * Replicate: stale if `rejected <= matched` (that index is known to
    ///   match; the rejection answers an old, reordered message). Otherwise
    ///   the stream is broken: the progress moves to **Probe** (so the caller
    ///   need not call [`Progress::become_probe`]), with
    ///   `next = max(matched + 1, min(rejected, hint + 1, next))`. Unlike
    ///   etcd, which restarts from `matched + 1`, this uses the hint when it
    ///   is further; that is safe since the probe is checked by the follower.
    ///   `next` never grows on a rejection.
    /// * Probe: only one append is outstanding, so a rejection is stale
    ///   unless `rejected == next - 1`. Otherwise
    ///   `next = max(min(rejected, hint + 1), matched + 1)` and the probe is
    ///   answered (`probe_sent = false`), so the next probe may go at once.
    /// * Snapshot: always stale (it answers an append sent before the
    ///   snapshot was needed).
    ///
    /// `hint + 1` saturates, so any `hint` (even `u64::MAX`) is taken; since
    /// `next` is capped by `rejected`, saturating changes nothing else.
    pub fn maybe_decr_to(&mut self, rejected: LogIndex, hint: LogIndex) -> bool {
        match self.state {
            ProgressState::Replicate => {
                if rejected <= self.matched {
                    return false;
                }
                let old_next = self.next;
                self.reset_state(ProgressState::Probe);
                self.next = rejected
                    .min(hint.saturating_next())
                    .min(old_next)
                    .max(self.matched.next());
                true
            }
            ProgressState::Probe => {
                if self.next.prev() != rejected {
                    return false;
                }
                self.next = rejected
                    .min(hint.saturating_next())
                    .max(self.matched.next());
                self.probe_sent = false;
                true
            }
            ProgressState::Snapshot => false,
        }
    }

    /// Whether sending appends to this follower must pause: a probe is
    /// outstanding (Probe), the in-flight window is full (Replicate), or a
    /// snapshot is pending (Snapshot).
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
            ProgressState::Snapshot => true,
        }
    }

    /// A heartbeat response arrived: the follower is active and, in Probe,
    /// the outstanding probe is considered lost so a new one may go.
    ///
    /// In Replicate with a full window, the oldest in-flight message is freed
    /// (as older etcd versions do): if appends were lost, the window would
    /// otherwise stay full forever, since only an append can reveal the gap
    /// (by being rejected). Over-sending by one message per heartbeat to a
    /// slow follower is the price.
    pub fn on_heartbeat_response(&mut self) {
        self.recent_active = true;
        match self.state {
            ProgressState::Probe => self.probe_sent = false,
            ProgressState::Replicate => {
                if self.inflights.full() {
                    self.inflights.free_first_one();
                }
            }
            ProgressState::Snapshot => {}
        }
    }

    /// Sending the pending snapshot finished, successfully or not: leave
    /// Snapshot for Probe. On success, probing resumes after the snapshot
    /// (`next = max(matched, pending_snapshot) + 1`); on failure
    /// `pending_snapshot` is dropped first, so `next = matched + 1`.
    ///
    /// As in etcd, the progress then waits (`probe_sent = true`): on success
    /// for the follower's append response (see [`Progress::maybe_update`]),
    /// on failure for a heartbeat response before trying again. Does nothing
    /// outside Snapshot (the state already moved on, e.g. through an append
    /// response).
    pub fn snapshot_done(&mut self, success: bool) {
        if self.state != ProgressState::Snapshot {
            return;
        }
        if !success {
            self.pending_snapshot = LogIndex::ZERO;
        }
        self.become_probe();
        self.probe_sent = true;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn idx(i: u64) -> LogIndex {
        LogIndex(i)
    }

    fn progress(matched: u64, next: u64, state: ProgressState) -> Progress {
        let mut p = Progress::new(idx(next), 4, 0);
        p.matched = idx(matched);
        match state {
            ProgressState::Probe => {}
            ProgressState::Replicate => {
                p.become_replicate();
                p.next = idx(next);
            }
            ProgressState::Snapshot => p.become_snapshot(idx(next)),
        }
        p
    }

    #[test]
    fn new_is_probe_with_nothing_matched() {
        let p = Progress::new(idx(10), 4, 0);
        assert_eq!(p.state, ProgressState::Probe);
        assert_eq!((p.matched, p.next), (idx(0), idx(10)));
        assert!(!p.is_paused());
        assert!(p.recent_active);
        assert_eq!(Progress::new(idx(0), 4, 0).next, idx(1));
    }

    #[test]
    fn become_probe_from_each_state() {
        // From Replicate: restart after matched.
        let mut p = progress(5, 9, ProgressState::Replicate);
        p.sent_append(idx(12), 10, true);
        p.become_probe();
        assert_eq!((p.state, p.next), (ProgressState::Probe, idx(6)));
        assert_eq!(p.inflights.count(), 0);

        // From Snapshot: after the snapshot if further than matched.
        let mut p = progress(1, 2, ProgressState::Probe);
        p.become_snapshot(idx(10));
        p.become_probe();
        assert_eq!(
            (p.state, p.next, p.pending_snapshot),
            (ProgressState::Probe, idx(11), idx(0))
        );

        // From Snapshot, with matched already past the snapshot.
        let mut p = progress(1, 2, ProgressState::Probe);
        p.become_snapshot(idx(10));
        assert!(p.maybe_update(idx(12)));
        p.become_probe();
        assert_eq!(p.next, idx(13));
    }

    #[test]
    fn become_replicate_resets_next() {
        let mut p = progress(5, 20, ProgressState::Probe);
        p.sent_append(idx(19), 0, false);
        assert!(p.probe_sent);
        p.become_replicate();
        assert_eq!(
            (p.state, p.next, p.probe_sent),
            (ProgressState::Replicate, idx(6), false)
        );
    }

    #[test]
    fn maybe_update() {
        let mut p = progress(5, 8, ProgressState::Probe);
        p.probe_sent = true;
        assert!(!p.maybe_update(idx(4)), "stale");
        assert_eq!((p.matched, p.next), (idx(5), idx(8)));
        assert!(!p.probe_sent, "any ack answers the probe");
        assert!(!p.maybe_update(idx(5)), "duplicate");
        assert!(p.maybe_update(idx(6)));
        assert_eq!((p.matched, p.next), (idx(6), idx(8)));
        assert!(p.maybe_update(idx(10)));
        assert_eq!((p.matched, p.next), (idx(10), idx(11)));
    }

    #[test]
    fn maybe_update_frees_inflights() {
        let mut p = progress(5, 6, ProgressState::Replicate);
        p.sent_append(idx(7), 10, true);
        p.sent_append(idx(9), 10, true);
        p.sent_append(idx(12), 10, true);
        assert_eq!(
            (p.next, p.inflights.count(), p.inflights.bytes()),
            (idx(13), 3, 30)
        );
        assert!(p.maybe_update(idx(9)));
        assert_eq!((p.inflights.count(), p.inflights.bytes()), (1, 10));
        assert_eq!(p.next, idx(13));
    }

    #[test]
    fn sent_append_per_state() {
        // Replicate: next advances, only messages with entries are recorded.
        let mut p = progress(5, 6, ProgressState::Replicate);
        p.sent_append(idx(5), 0, false);
        assert_eq!((p.next, p.inflights.count()), (idx(6), 0));
        p.sent_append(idx(8), 30, true);
        assert_eq!((p.next, p.inflights.count()), (idx(9), 1));
        p.sent_append(idx(7), 30, true); // re-send below next: ignored
        assert_eq!((p.next, p.inflights.count()), (idx(9), 1));
        assert!(!p.probe_sent);

        // Probe: next stays, the probe is outstanding.
        let mut p = progress(5, 6, ProgressState::Probe);
        p.sent_append(idx(9), 30, true);
        assert_eq!(
            (p.next, p.probe_sent, p.inflights.count()),
            (idx(6), true, 0)
        );
        assert!(p.is_paused());

        // Snapshot: nothing.
        let mut p = progress(5, 6, ProgressState::Probe);
        p.become_snapshot(idx(20));
        let next = p.next;
        p.sent_append(idx(9), 30, true);
        assert_eq!((p.next, p.probe_sent), (next, false));
    }

    #[test]
    fn inflight_limits_pause_replicate() {
        let mut p = Progress::new(idx(1), 2, 100);
        p.become_replicate();
        p.sent_append(idx(1), 10, true);
        assert!(!p.is_paused());
        p.sent_append(idx(2), 10, true);
        assert!(p.is_paused(), "count limit");
        p.maybe_update(idx(2));
        assert!(!p.is_paused());
        p.sent_append(idx(5), 100, true);
        assert!(p.is_paused(), "byte limit");
        p.maybe_update(idx(5));
        assert!(!p.is_paused());
    }

    #[test]
    fn maybe_decr_to_in_replicate() {
        // Stale: at or below matched.
        let mut p = progress(5, 10, ProgressState::Replicate);
        assert!(!p.maybe_decr_to(idx(5), idx(5)));
        assert!(!p.maybe_decr_to(idx(4), idx(0)));
        assert_eq!((p.state, p.next), (ProgressState::Replicate, idx(10)));

        // Genuine, hint below matched: back to matched + 1, in Probe.
        p.sent_append(idx(12), 10, true);
        assert!(p.maybe_decr_to(idx(9), idx(2)));
        assert_eq!(
            (p.state, p.next, p.matched),
            (ProgressState::Probe, idx(6), idx(5))
        );
        assert_eq!(p.inflights.count(), 0);
        assert!(!p.probe_sent);

        // Genuine, hint past matched: probe from the hint.
        let mut p = progress(5, 10, ProgressState::Replicate);
        assert!(p.maybe_decr_to(idx(9), idx(7)));
        assert_eq!((p.state, p.next), (ProgressState::Probe, idx(8)));

        // Hint at rejected (follower guess that cannot be right): capped at rejected.
        let mut p = progress(5, 10, ProgressState::Replicate);
        assert!(p.maybe_decr_to(idx(9), idx(9)));
        assert_eq!(p.next, idx(9));

        // A rejection past next never raises next.
        let mut p = progress(5, 7, ProgressState::Replicate);
        assert!(p.maybe_decr_to(idx(9), idx(8)));
        assert_eq!(p.next, idx(7));
    }

    #[test]
    fn maybe_decr_to_in_probe() {
        let mut p = progress(0, 10, ProgressState::Probe);
        p.sent_append(idx(9), 0, false);
        assert!(p.probe_sent);
        // Stale: not the outstanding probe.
        assert!(!p.maybe_decr_to(idx(5), idx(4)));
        assert!(!p.maybe_decr_to(idx(10), idx(4)));
        assert_eq!((p.next, p.probe_sent), (idx(10), true));
        // Genuine: follow the hint.
        assert!(p.maybe_decr_to(idx(9), idx(4)));
        assert_eq!((p.next, p.probe_sent), (idx(5), false));
        // Genuine, hint at or past rejected: one step back.
        assert!(p.maybe_decr_to(idx(4), idx(7)));
        assert_eq!(p.next, idx(4));
        // Never below matched + 1.
        let mut p = progress(3, 6, ProgressState::Probe);
        assert!(p.maybe_decr_to(idx(5), idx(0)));
        assert_eq!(p.next, idx(4));
        assert_eq!(p.state, ProgressState::Probe);
    }

    #[test]
    fn maybe_decr_to_in_snapshot_is_stale() {
        let mut p = progress(3, 6, ProgressState::Probe);
        p.become_snapshot(idx(20));
        let next = p.next;
        assert!(!p.maybe_decr_to(next.prev(), idx(0)));
        assert_eq!((p.state, p.next), (ProgressState::Snapshot, next));
    }

    #[test]
    fn is_paused_per_state() {
        let mut p = progress(0, 1, ProgressState::Probe);
        assert!(!p.is_paused());
        p.probe_sent = true;
        assert!(p.is_paused());
        p.become_replicate();
        assert!(!p.is_paused());
        p.become_snapshot(idx(10));
        assert!(p.is_paused());
    }

    #[test]
    fn heartbeat_response() {
        let mut p = progress(0, 1, ProgressState::Probe);
        p.recent_active = false;
        p.sent_append(idx(0), 0, false);
        assert!(p.is_paused());
        p.on_heartbeat_response();
        assert!(!p.is_paused());
        assert!(p.recent_active);

        // Replicate with a full window: one slot is freed.
        let mut p = Progress::new(idx(1), 2, 0);
        p.become_replicate();
        p.sent_append(idx(1), 1, true);
        p.on_heartbeat_response();
        assert_eq!(p.inflights.count(), 1, "not full: nothing freed");
        p.sent_append(idx(2), 1, true);
        assert!(p.is_paused());
        p.on_heartbeat_response();
        assert!(!p.is_paused());
        assert_eq!(p.inflights.count(), 1);

        // Snapshot stays paused.
        p.become_snapshot(idx(10));
        p.on_heartbeat_response();
        assert!(p.is_paused());
    }

    #[test]
    fn snapshot_done() {
        let mut p = progress(3, 4, ProgressState::Probe);
        p.become_snapshot(idx(20));
        p.snapshot_done(true);
        assert_eq!(
            (p.state, p.next, p.pending_snapshot),
            (ProgressState::Probe, idx(21), idx(0))
        );
        assert!(p.is_paused(), "waits for the follower's append response");
        assert!(!p.maybe_update(idx(3)));
        assert!(!p.is_paused());

        let mut p = progress(3, 4, ProgressState::Probe);
        p.become_snapshot(idx(20));
        p.snapshot_done(false);
        assert_eq!(
            (p.state, p.next, p.pending_snapshot),
            (ProgressState::Probe, idx(4), idx(0))
        );
        assert!(p.is_paused(), "waits for a heartbeat response");
        p.on_heartbeat_response();
        assert!(!p.is_paused());

        // Outside Snapshot: nothing.
        let mut p = progress(3, 8, ProgressState::Replicate);
        p.snapshot_done(false);
        assert_eq!((p.state, p.next), (ProgressState::Replicate, idx(8)));
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Send an append from `next`, with `extra` entries (0: empty).
        Send {
            extra: u64,
            bytes: u64,
        },
        /// Send with an arbitrary (possibly nonsensical) last index.
        SendRaw {
            last: u64,
            had_entries: bool,
        },
        Ack(u64),
        /// Reject relative to next (`back` below next - 1) with a hint.
        Reject {
            back: u64,
            hint: u64,
        },
        RejectRaw {
            rejected: u64,
            hint: u64,
        },
        Probe,
        Replicate,
        Snapshot(u64),
        Heartbeat,
        SnapshotDone(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..4, 0u64..50).prop_map(|(extra, bytes)| Op::Send { extra, bytes }),
            1 => (0u64..60, any::<bool>()).prop_map(|(last, had_entries)| Op::SendRaw { last, had_entries }),
            3 => (0u64..60).prop_map(Op::Ack),
            2 => (0u64..3, 0u64..60).prop_map(|(back, hint)| Op::Reject { back, hint }),
            1 => (0u64..60, 0u64..60).prop_map(|(rejected, hint)| Op::RejectRaw { rejected, hint }),
            1 => Just(Op::Probe),
            1 => Just(Op::Replicate),
            1 => (0u64..60).prop_map(Op::Snapshot),
            1 => Just(Op::Heartbeat),
            1 => any::<bool>().prop_map(Op::SnapshotDone),
        ]
    }

    /// The observable fields, to check that stale answers change nothing.
    fn fields(
        p: &Progress,
    ) -> (
        LogIndex,
        LogIndex,
        ProgressState,
        LogIndex,
        bool,
        usize,
        u64,
    ) {
        (
            p.matched,
            p.next,
            p.state,
            p.pending_snapshot,
            p.probe_sent,
            p.inflights.count(),
            p.inflights.bytes(),
        )
    }

    proptest! {
        #[test]
        fn progress_invariants(start in 0u64..20, ops in prop::collection::vec(op(), 0..60)) {
            let mut p = Progress::new(LogIndex(start), 3, 80);
            for op in ops {
                let before = p.clone();
                match op {
                    // Like the leader, only send when not paused.
                    Op::Send { extra, bytes } => {
                        if !p.is_paused() {
                            let last = p.next.prev().plus(extra);
                            p.sent_append(last, bytes, extra > 0);
                        }
                    }
                    Op::SendRaw { last, had_entries } => {
                        if !p.is_paused() {
                            p.sent_append(LogIndex(last), 1, had_entries);
                        }
                    }
                    Op::Ack(n) => {
                        let grew = p.maybe_update(LogIndex(n));
                        prop_assert_eq!(grew, LogIndex(n) > before.matched);
                        prop_assert!(p.next > LogIndex(n));
                    }
                    Op::Reject { back, hint } => {
                        let rejected = LogIndex(p.next.get().saturating_sub(1 + back));
                        if !p.maybe_decr_to(rejected, LogIndex(hint)) {
                            prop_assert_eq!(fields(&p), fields(&before));
                        } else {
                            prop_assert!(p.next <= before.next);
                            prop_assert_eq!(p.state, ProgressState::Probe);
                        }
                    }
                    Op::RejectRaw { rejected, hint } => {
                        if !p.maybe_decr_to(LogIndex(rejected), LogIndex(hint)) {
                            prop_assert_eq!(fields(&p), fields(&before));
                        } else {
                            prop_assert!(p.next <= before.next);
                        }
                    }
                    Op::Probe => p.become_probe(),
                    Op::Replicate => p.become_replicate(),
                    Op::Snapshot(i) => p.become_snapshot(LogIndex(i)),
                    Op::Heartbeat => p.on_heartbeat_response(),
                    Op::SnapshotDone(ok) => p.snapshot_done(ok),
                }
                prop_assert!(p.matched < p.next, "matched {} < next {} after {:?}", p.matched, p.next, op);
                prop_assert!(p.matched >= before.matched, "matched decreased after {:?}", op);
                if p.state == ProgressState::Replicate {
                    prop_assert!(p.next > p.matched);
                } else {
                    prop_assert_eq!(p.inflights.count(), 0, "inflights only in Replicate");
                }
                if p.state != ProgressState::Snapshot {
                    prop_assert_eq!(p.pending_snapshot, LogIndex::ZERO);
                }
                prop_assert!(p.inflights.count() <= 3);
            }
        }
    }
}

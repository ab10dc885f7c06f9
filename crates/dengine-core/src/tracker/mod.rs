//! Follower progress tracking: the leader's bookkeeping of the current
//! configuration, each member's [`Progress`], and the votes of an election.
//!
//! [`ProgressTracker`] answers the quorum questions the leader (or a
//! candidate) asks: the commit index, the election outcome, and whether a
//! quorum was recently active. It uses the arithmetic of [`crate::quorum`].

mod inflights;
mod progress;

use std::collections::BTreeMap;

pub use inflights::Inflights;
pub use progress::{Progress, ProgressState};

use crate::quorum::{self, VoteResult};
use crate::types::{ConfState, LogIndex, NodeId};

/// The current configuration, the [`Progress`] of each member, and the votes
/// received in the current election.
#[derive(Clone, Debug)]
pub struct ProgressTracker {
    /// The configuration being tracked.
    conf: ConfState,
    /// The progress of every member (voters of both halves and learners).
    progress: BTreeMap<NodeId, Progress>,
    /// Answers received in the current election: `true` granted.
    votes: BTreeMap<NodeId, bool>,
    /// In-flight message limit for new progresses.
    max_inflight_msgs: usize,
    /// In-flight byte limit for new progresses (0: none).
    max_inflight_bytes: u64,
}

impl ProgressTracker {
    /// An empty tracker (no member) whose progresses will get in-flight
    /// windows of `max_inflight_msgs` messages and `max_inflight_bytes` bytes
    /// (0: no byte limit).
    pub fn new(max_inflight_msgs: usize, max_inflight_bytes: u64) -> Self {
        ProgressTracker {
            conf: ConfState::default(),
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            max_inflight_msgs,
            max_inflight_bytes,
        }
    }

    /// The configuration being tracked.
    pub fn conf(&self) -> &ConfState {
        &self.conf
    }

    /// A fresh progress for a member sending from `next`.
    fn new_progress(&self, next: LogIndex, is_learner: bool) -> Progress {
        let mut pr = Progress::new(next, self.max_inflight_msgs, self.max_inflight_bytes);
        pr.is_learner = is_learner;
        pr
    }

    /// Switches to `conf`: members that stay keep their progress (with
    /// `is_learner` updated), new members get a fresh [`Progress`] sending
    /// from `next_index`, and nodes that are no longer members are dropped
    /// (with their votes).
    ///
    /// A member is a learner exactly when it does not vote in either half
    /// (so a voter of the outgoing half listed in `learners_next` is not a
    /// learner until the joint configuration is left).
    pub fn apply_conf(&mut self, conf: ConfState, next_index: LogIndex) {
        self.progress.retain(|id, _| conf.contains(*id));
        self.votes.retain(|id, _| conf.is_voter(*id));
        for id in conf.members() {
            let is_learner = !conf.is_voter(id);
            match self.progress.get_mut(&id) {
                Some(pr) => pr.is_learner = is_learner,
                None => {
                    let pr = self.new_progress(next_index, is_learner);
                    self.progress.insert(id, pr);
                }
            }
        }
        self.conf = conf;
    }

    /// Replaces every member's progress by a fresh one sending from
    /// `next_index` (keeping `is_learner`), as a new leader does.
    pub fn reset_progress(&mut self, next_index: LogIndex) {
        let (msgs, bytes) = (self.max_inflight_msgs, self.max_inflight_bytes);
        for pr in self.progress.values_mut() {
            let is_learner = pr.is_learner;
            *pr = Progress::new(next_index, msgs, bytes);
            pr.is_learner = is_learner;
        }
    }

    /// The progress of `id`, if it is a member.
    pub fn get(&self, id: NodeId) -> Option<&Progress> {
        self.progress.get(&id)
    }

    /// The progress of `id`, if it is a member, for updating through its
    /// methods.
    pub fn get_mut(&mut self, id: NodeId) -> Option<&mut Progress> {
        self.progress.get_mut(&id)
    }

    /// Every member's progress, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, &Progress)> {
        self.progress.iter().map(|(&id, pr)| (id, pr))
    }

    /// Every member's progress, in id order, for updating through its
    /// methods.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (NodeId, &mut Progress)> {
        self.progress.iter_mut().map(|(&id, pr)| (id, pr))
    }

    /// Every member with a progress, in id order.
    pub fn ids(&self) -> Vec<NodeId> {
        self.progress.keys().copied().collect()
    }

    /// The highest index replicated on a quorum: the quorum value of the
    /// voters' `matched` (a voter without progress counts as 0; learners do
    /// not count). A configuration without voters gives 0.
    pub fn committed(&self) -> LogIndex {
        if self.conf.voters.is_empty() && self.conf.voters_outgoing.is_empty() {
            return LogIndex::ZERO;
        }
        let v = quorum::quorum_value(&self.conf, |id| {
            self.progress.get(&id).map(|pr| pr.matched.get())
        });
        LogIndex(v)
    }

    /// The highest index a quorum would have matched if `id` had matched
    /// everything: what `id`'s own durable entries could commit.
    pub fn committed_with_all_of(&self, id: NodeId) -> LogIndex {
        if self.conf.voters.is_empty() && self.conf.voters_outgoing.is_empty() {
            return LogIndex::ZERO;
        }
        let v = quorum::quorum_value(&self.conf, |v| {
            if v == id {
                Some(u64::MAX)
            } else {
                self.progress.get(&v).map(|pr| pr.matched.get())
            }
        });
        LogIndex(v)
    }

    /// Forgets the votes of the previous election.
    pub fn reset_votes(&mut self) {
        self.votes.clear();
    }

    /// Records `id`'s answer in the current election. Only the first answer
    /// of each node counts.
    pub fn record_vote(&mut self, id: NodeId, granted: bool) {
        self.votes.entry(id).or_insert(granted);
    }

    /// The answer `id` gave in the current election, if any.
    pub fn vote_of(&self, id: NodeId) -> Option<bool> {
        self.votes.get(&id).copied()
    }

    /// `(granted, rejected, result)` of the current election: how many
    /// voters (of either half, each counted once) granted and rejected, and
    /// the quorum's outcome. Answers of non-voters are ignored.
    pub fn tally_votes(&self) -> (usize, usize, VoteResult) {
        let (mut granted, mut rejected) = (0, 0);
        for (&id, &vote) in &self.votes {
            if !self.conf.is_voter(id) {
                continue;
            }
            if vote {
                granted += 1;
            } else {
                rejected += 1;
            }
        }
        let result = quorum::vote_result(&self.conf, |id| self.votes.get(&id).copied());
        (granted, rejected, result)
    }

    /// Whether the voters that are `recent_active`, with `self_id` always
    /// counted active, form a quorum (of each half when joint).
    pub fn quorum_active(&self, self_id: NodeId) -> bool {
        let result = quorum::vote_result(&self.conf, |id| {
            let active = id == self_id || self.progress.get(&id).is_some_and(|pr| pr.recent_active);
            active.then_some(true)
        });
        result == VoteResult::Won
    }

    /// Starts a new check-quorum round: every member but `self_id` is marked
    /// not recently active; `self_id` stays active.
    pub fn reset_recent_active(&mut self, self_id: NodeId) {
        for (&id, pr) in self.progress.iter_mut() {
            pr.recent_active = id == self_id;
        }
    }

    /// Whether `id` votes in the current configuration (either half).
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.conf.is_voter(id)
    }

    /// Whether the configuration has exactly one voter (counting both halves
    /// together) and it is `id`: then `id` decides alone.
    pub fn is_singleton(&self, id: NodeId) -> bool {
        let mut voters = self.conf.voters.iter().chain(&self.conf.voters_outgoing);
        voters.clone().next().is_some() && voters.all(|&v| v == id)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn n(i: u64) -> NodeId {
        NodeId(i)
    }

    fn set(ids: &[u64]) -> BTreeSet<NodeId> {
        ids.iter().copied().map(NodeId).collect()
    }

    fn tracker(voters: &[u64]) -> ProgressTracker {
        let mut t = ProgressTracker::new(8, 0);
        t.apply_conf(
            ConfState::with_voters(voters.iter().copied().map(NodeId)),
            LogIndex(1),
        );
        t
    }

    fn joint(
        voters: &[u64],
        outgoing: &[u64],
        learners: &[u64],
        learners_next: &[u64],
    ) -> ConfState {
        ConfState {
            voters: set(voters),
            voters_outgoing: set(outgoing),
            learners: set(learners),
            learners_next: set(learners_next),
            auto_leave: false,
        }
    }

    #[test]
    fn new_is_empty() {
        let t = ProgressTracker::new(8, 0);
        assert_eq!(t.conf(), &ConfState::default());
        assert!(t.ids().is_empty());
        assert_eq!(t.committed(), LogIndex(0));
        assert!(!t.is_singleton(n(1)));
        assert!(!t.is_voter(n(1)));
    }

    #[test]
    fn apply_conf_keeps_creates_and_drops() {
        let mut t = tracker(&[1, 2, 3]);
        assert_eq!(t.ids(), vec![n(1), n(2), n(3)]);
        t.get_mut(n(2)).unwrap().maybe_update(LogIndex(7));

        // 3 leaves, 4 joins as learner, 2 stays with its progress.
        let conf = ConfState {
            voters: set(&[1, 2]),
            learners: set(&[4]),
            ..ConfState::default()
        };
        t.apply_conf(conf.clone(), LogIndex(20));
        assert_eq!(t.conf(), &conf);
        assert_eq!(t.ids(), vec![n(1), n(2), n(4)]);
        assert_eq!(t.get(n(2)).unwrap().matched, LogIndex(7));
        assert!(!t.get(n(2)).unwrap().is_learner);
        let p4 = t.get(n(4)).unwrap();
        assert!(p4.is_learner);
        assert_eq!(
            (p4.matched, p4.next, p4.state),
            (LogIndex(0), LogIndex(20), ProgressState::Probe)
        );
        assert!(t.get(n(3)).is_none());

        // Promote 4: same progress, no longer a learner.
        t.get_mut(n(4)).unwrap().maybe_update(LogIndex(15));
        t.apply_conf(ConfState::with_voters([n(1), n(2), n(4)]), LogIndex(30));
        let p4 = t.get(n(4)).unwrap();
        assert!(!p4.is_learner);
        assert_eq!(p4.matched, LogIndex(15));
    }

    #[test]
    fn apply_conf_joint_learners_next_still_vote() {
        let mut t = tracker(&[1, 2, 3]);
        // Enter joint: 3 is demoted to learner once the joint config is left.
        t.apply_conf(joint(&[1, 2, 4], &[1, 2, 3], &[], &[3]), LogIndex(10));
        assert_eq!(t.ids(), vec![n(1), n(2), n(3), n(4)]);
        assert!(!t.get(n(3)).unwrap().is_learner);
        assert!(t.is_voter(n(3)));
        // Leave joint: 3 is a learner now.
        t.apply_conf(joint(&[1, 2, 4], &[], &[3], &[]), LogIndex(10));
        assert!(t.get(n(3)).unwrap().is_learner);
        assert!(!t.is_voter(n(3)));
    }

    #[test]
    fn committed_uses_voters_matched_only() {
        let mut t = ProgressTracker::new(8, 0);
        t.apply_conf(
            ConfState {
                voters: set(&[1, 2, 3]),
                learners: set(&[4]),
                ..ConfState::default()
            },
            LogIndex(1),
        );
        for (id, m) in [(1, 10), (2, 6), (3, 3), (4, 100)] {
            t.get_mut(n(id)).unwrap().maybe_update(LogIndex(m));
        }
        assert_eq!(t.committed(), LogIndex(6));
    }

    #[test]
    fn committed_joint_is_min_of_halves() {
        let mut t = ProgressTracker::new(8, 0);
        t.apply_conf(joint(&[1, 2, 3], &[3, 4, 5], &[], &[]), LogIndex(1));
        for (id, m) in [(1, 10), (2, 9), (3, 8), (4, 2), (5, 1)] {
            t.get_mut(n(id)).unwrap().maybe_update(LogIndex(m));
        }
        assert_eq!(t.committed(), LogIndex(2));
        t.get_mut(n(5)).unwrap().maybe_update(LogIndex(7));
        assert_eq!(t.committed(), LogIndex(7));
    }

    #[test]
    fn votes() {
        let mut t = tracker(&[1, 2, 3, 4, 5]);
        assert_eq!(t.tally_votes(), (0, 0, VoteResult::Pending));
        t.record_vote(n(1), true);
        t.record_vote(n(2), false);
        t.record_vote(n(2), true); // first answer wins
        assert_eq!(t.vote_of(n(2)), Some(false));
        t.record_vote(n(9), true); // not a voter: ignored in the tally
        assert_eq!(t.tally_votes(), (1, 1, VoteResult::Pending));
        t.record_vote(n(3), true);
        t.record_vote(n(4), true);
        assert_eq!(t.tally_votes(), (3, 1, VoteResult::Won));
        t.reset_votes();
        assert_eq!(t.tally_votes(), (0, 0, VoteResult::Pending));
        for id in [2, 3, 4] {
            t.record_vote(n(id), false);
        }
        assert_eq!(t.tally_votes(), (0, 3, VoteResult::Lost));
    }

    #[test]
    fn joint_votes_need_both_halves() {
        let mut t = ProgressTracker::new(8, 0);
        t.apply_conf(joint(&[1, 2, 3], &[3, 4, 5], &[6], &[]), LogIndex(1));
        t.record_vote(n(1), true);
        t.record_vote(n(2), true);
        t.record_vote(n(6), true); // learner
        assert_eq!(t.tally_votes(), (2, 0, VoteResult::Pending));
        t.record_vote(n(4), true);
        t.record_vote(n(3), false);
        assert_eq!(t.tally_votes(), (3, 1, VoteResult::Pending));
        t.record_vote(n(5), true);
        assert_eq!(t.tally_votes(), (4, 1, VoteResult::Won));
    }

    #[test]
    fn quorum_active_and_reset() {
        let mut t = tracker(&[1, 2, 3]);
        // New progresses start active.
        assert!(t.quorum_active(n(1)));
        t.reset_recent_active(n(1));
        assert!(t.get(n(1)).unwrap().recent_active);
        assert!(!t.get(n(2)).unwrap().recent_active);
        assert!(!t.quorum_active(n(1)), "only self is active");
        t.get_mut(n(3)).unwrap().on_heartbeat_response();
        assert!(t.quorum_active(n(1)));

        // Self is counted active even if its own flag was cleared.
        t.reset_recent_active(n(2));
        assert!(!t.get(n(1)).unwrap().recent_active);
        t.get_mut(n(3)).unwrap().recent_active = true;
        assert!(t.quorum_active(n(1)));
    }

    #[test]
    fn quorum_active_joint() {
        let mut t = ProgressTracker::new(8, 0);
        t.apply_conf(joint(&[1, 2, 3], &[1, 4, 5], &[], &[]), LogIndex(1));
        t.reset_recent_active(n(1));
        t.get_mut(n(2)).unwrap().recent_active = true;
        assert!(!t.quorum_active(n(1)), "outgoing half has only 1");
        t.get_mut(n(5)).unwrap().recent_active = true;
        assert!(t.quorum_active(n(1)));
    }

    #[test]
    fn singleton() {
        let t = tracker(&[1]);
        assert!(t.is_singleton(n(1)));
        assert!(!t.is_singleton(n(2)));
        assert!(!tracker(&[1, 2]).is_singleton(n(1)));
        let mut t = ProgressTracker::new(8, 0);
        t.apply_conf(
            ConfState {
                voters: set(&[1]),
                learners: set(&[2]),
                ..ConfState::default()
            },
            LogIndex(1),
        );
        assert!(t.is_singleton(n(1)), "learners do not count");
        t.apply_conf(joint(&[1], &[1, 2], &[], &[]), LogIndex(1));
        assert!(!t.is_singleton(n(1)));
        t.apply_conf(joint(&[1], &[1], &[], &[]), LogIndex(1));
        assert!(t.is_singleton(n(1)));
    }

    #[test]
    fn iteration_and_reset_progress() {
        let mut t = ProgressTracker::new(8, 0);
        t.apply_conf(
            ConfState {
                voters: set(&[3, 1]),
                learners: set(&[2]),
                ..ConfState::default()
            },
            LogIndex(5),
        );
        let ids: Vec<NodeId> = t.iter().map(|(id, _)| id).collect();
        assert_eq!(ids, vec![n(1), n(2), n(3)]);
        for (_, pr) in t.iter_mut() {
            pr.maybe_update(LogIndex(4));
            pr.become_replicate();
        }
        assert!(t.iter().all(|(_, pr)| pr.state == ProgressState::Replicate));
        t.reset_progress(LogIndex(9));
        for (id, pr) in t.iter() {
            assert_eq!(
                (pr.matched, pr.next, pr.state),
                (LogIndex(0), LogIndex(9), ProgressState::Probe)
            );
            assert_eq!(pr.is_learner, id == n(2));
        }
    }
}

//! The protocol state of one node: roles, terms and the single entry point
//! for messages.
//!
//! [`Raft::step`] first settles everything about terms (a higher term makes
//! this node a follower, a lower one is ignored or answered), then hands the
//! message to the handler of the current role. Role handlers never look at
//! terms again. Concerns are split by module: `election`, `replication`,
//! `read`, `membership`, `transfer`.

mod election;
mod membership;
mod read;
mod replication;
mod transfer;

pub use read::{ReadPolicy, ReadState};

use std::collections::VecDeque;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::log::RaftLog;
use crate::message::{Message, MessageBody};
use crate::storage::LogStorage;
use crate::tracker::ProgressTracker;
use crate::types::{ConfState, HardState, LogIndex, NodeId, Role, SoftState, Term};
use read::ReadOnly;

/// A small deterministic generator for election timeouts (SplitMix64): the
/// core takes no randomness it was not seeded with.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Checks what can be checked of a message without the node's state, so
/// that `step` refuses it before acting on anything (its term included).
///
/// Besides the shape of appends and snapshots, this bounds every number
/// the core computes with: the message's term is at most [`Term::LIMIT`],
/// every log index it names at most [`LogIndex::LIMIT`], and no term in its
/// body is past its own term (a correct sender never names an entry of a
/// term it has not reached). So `index + 1` and `term + 1` on anything a
/// peer sent cannot overflow. Read rounds and read ids are only compared
/// or echoed, never computed with, and are not bounded.
pub(super) fn validate_message(m: &Message) -> Result<()> {
    if m.term > Term::LIMIT {
        return Err(Error::Malformed("term past Term::LIMIT"));
    }
    let index_past_limit = Err(Error::Malformed("log index past LogIndex::LIMIT"));
    let term_past_sender = Err(Error::Malformed(
        "a term in the body is past the message's term",
    ));
    match &m.body {
        MessageBody::RequestVote { last_log, .. } => {
            if last_log.index > LogIndex::LIMIT {
                return index_past_limit;
            }
            if last_log.term > m.term {
                return term_past_sender;
            }
        }
        MessageBody::AppendEntries {
            prev,
            entries,
            commit,
        } => {
            let last = entries.last().map_or(prev.index, |e| e.index);
            if prev.index > LogIndex::LIMIT || last > LogIndex::LIMIT || *commit > LogIndex::LIMIT {
                return index_past_limit;
            }
            replication::validate_entries(*prev, entries, m.term)?;
        }
        MessageBody::AppendEntriesResponse { result: Ok(index) } => {
            if *index > LogIndex::LIMIT {
                return index_past_limit;
            }
        }
        MessageBody::AppendEntriesResponse { result: Err(rej) } => {
            if rej.rejected > LogIndex::LIMIT || rej.hint.index > LogIndex::LIMIT {
                return index_past_limit;
            }
            if rej.hint.term > m.term {
                return term_past_sender;
            }
            if rej.hint.index > rej.rejected {
                // The follower's hint is an entry at or below the `prev` it
                // refused.
                return Err(Error::Malformed("rejection hint past the rejected index"));
            }
        }
        MessageBody::Heartbeat { commit, .. } => {
            if *commit > LogIndex::LIMIT {
                return index_past_limit;
            }
        }
        MessageBody::InstallSnapshot { meta } => {
            if meta.last_index > LogIndex::LIMIT {
                return index_past_limit;
            }
            if meta.last_term > m.term {
                return term_past_sender;
            }
            if meta.conf_state.voters.is_empty() {
                return Err(Error::Malformed("snapshot with no voters"));
            }
        }
        MessageBody::ReadIndexResponse {
            index: Some(index), ..
        } => {
            if *index > LogIndex::LIMIT {
                return index_past_limit;
            }
        }
        MessageBody::RequestVoteResponse { .. }
        | MessageBody::HeartbeatResponse { .. }
        | MessageBody::TimeoutNow
        | MessageBody::ReadIndex { .. }
        | MessageBody::ReadIndexResponse { index: None, .. } => {}
    }
    Ok(())
}

/// The protocol state of one node.
pub(crate) struct Raft<S> {
    pub(crate) id: NodeId,
    pub(crate) cfg: Config,
    pub(crate) term: Term,
    pub(crate) vote: NodeId,
    pub(crate) leader: NodeId,
    pub(crate) role: Role,
    pub(crate) log: RaftLog<S>,
    pub(crate) tracker: ProgressTracker,

    /// Ticks since the last election reset (follower/candidate) or since the
    /// last check-quorum round (leader).
    pub(crate) election_elapsed: u32,
    pub(crate) heartbeat_elapsed: u32,
    pub(crate) randomized_election_timeout: u32,
    /// Ticks since this node last heard from a live leader (or started):
    /// while below `election_tick` it ignores vote requests (stickiness).
    pub(crate) since_leader_contact: u32,
    /// Ticks since the node started; the clock leases are measured on.
    pub(crate) now: u64,
    rng: Rng,

    /// This node was a voter and the membership in force removed it. It may
    /// still campaign: it can hold the only copy of the newest entries, and
    /// a voter that has not yet learnt that the removal committed may still
    /// need it (in a joint configuration) to elect anyone. Pre-vote and
    /// stickiness keep it from disturbing a healthy cluster; once elected it
    /// hands leadership over to a voter. Operators stop removed nodes.
    pub(crate) removed_voter: bool,
    /// Index of the newest membership change in the log; a new one is
    /// refused until it has been handed out for applying.
    pub(crate) pending_conf_index: LogIndex,
    /// Bytes of proposals appended by this leader and not yet committed.
    pub(crate) uncommitted_bytes: u64,
    /// `(last index, bytes)` of each uncommitted append, oldest first.
    pub(crate) uncommitted_queue: VecDeque<(LogIndex, u64)>,
    pub(crate) transfer: transfer::Transfer,
    pub(crate) reads: ReadOnly,

    /// Messages produced since the last `Ready`.
    pub(crate) msgs: Vec<Message>,
    /// The term and vote known durable; messages are held back until the
    /// state they reveal is durable.
    pub(crate) durable_term_vote: (Term, NodeId),
    /// Membership in force from each index on, oldest first; the front is
    /// the membership as of `log.applied`.
    pub(crate) conf_history: VecDeque<(LogIndex, ConfState)>,
    /// A membership that took effect since the last `Ready`.
    pub(crate) conf_changed: bool,
    /// A snapshot was requested at this index and not yet reported.
    pub(crate) snapshot_requested: Option<LogIndex>,
    /// The runtime asked for a snapshot now, whatever the threshold
    /// ([`crate::RawNode::request_snapshot`]).
    pub(crate) snapshot_wanted: bool,
    /// Snapshot attempts that failed in a row (reset by a success).
    pub(crate) snapshot_failures: u32,
    /// No snapshot is requested before this tick (`now`): backoff after a
    /// failure, so a failing state machine is not asked again at once.
    pub(crate) snapshot_retry_at: u64,
    /// The index of the newest snapshot in storage (or being installed).
    pub(crate) last_snapshot_index: LogIndex,
    /// Where a state machine that keeps its state durably stood at start
    /// ([`crate::RawNode::state_machine_restored`]): no snapshot is asked
    /// below it, since its data can not be of an earlier index.
    pub(crate) restored_applied: LogIndex,
    /// The snapshot index the log may be compacted behind, not yet handed out.
    pub(crate) compact_to: Option<LogIndex>,
    pub(crate) prev_soft: SoftState,
    prev_hard: HardState,
}

impl<S: LogStorage> Raft<S> {
    pub(crate) fn new(cfg: Config, storage: S) -> Result<Self> {
        cfg.validate()?;
        let init = storage.initial_state()?;
        let hs = init.hard_state;
        let log = RaftLog::new(storage, hs.commit, init.applied)?;
        let mut tracker = ProgressTracker::new(cfg.max_inflight_msgs, cfg.max_inflight_bytes);
        let applied = log.applied;
        tracker.apply_conf(init.conf_state.clone(), log.last_index().next());
        let mut r = Raft {
            id: cfg.id,
            term: hs.term,
            vote: hs.vote,
            leader: NodeId::NONE,
            role: Role::Follower,
            log,
            tracker,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: cfg.election_tick,
            // With lease reads, a restarted node must not vote for an
            // election timeout: before the crash it may have confirmed a
            // leader's lease that is still running.
            since_leader_contact: if cfg.lease_reads {
                0
            } else {
                cfg.election_tick
            },
            now: 0,
            rng: Rng(cfg.seed ^ cfg.id.0.wrapping_mul(0x2545_F491_4F6C_DD1D)),
            pending_conf_index: LogIndex::ZERO,
            removed_voter: false,
            uncommitted_bytes: 0,
            uncommitted_queue: VecDeque::new(),
            transfer: transfer::Transfer::default(),
            reads: ReadOnly::default(),
            msgs: Vec::new(),
            durable_term_vote: (hs.term, hs.vote),
            conf_history: VecDeque::from([(applied, init.conf_state)]),
            conf_changed: false,
            snapshot_requested: None,
            snapshot_wanted: false,
            snapshot_failures: 0,
            snapshot_retry_at: 0,
            last_snapshot_index: LogIndex::ZERO,
            restored_applied: LogIndex::ZERO,
            compact_to: None,
            prev_soft: SoftState {
                leader: NodeId::NONE,
                role: Role::Follower,
            },
            prev_hard: hs,
            cfg,
        };
        r.last_snapshot_index = r.log.storage.snapshot_meta()?.last_index;
        r.reset_randomized_election_timeout();
        Ok(r)
    }

    pub(crate) fn soft_state(&self) -> SoftState {
        SoftState {
            leader: self.leader,
            role: self.role,
        }
    }

    pub(crate) fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }

    pub(crate) fn take_soft_state_change(&mut self) -> Option<SoftState> {
        let s = self.soft_state();
        (s != self.prev_soft).then(|| {
            self.prev_soft = s;
            s
        })
    }

    pub(crate) fn take_hard_state_change(&mut self) -> Option<HardState> {
        let h = self.hard_state();
        (h != self.prev_hard).then(|| {
            self.prev_hard = h;
            h
        })
    }

    pub(crate) fn hard_state_changed(&self) -> bool {
        self.hard_state() != self.prev_hard
    }

    /// Whether this node may campaign: it is a voter of the current membership.
    ///
    /// A voter that a membership change removed stays a candidate too (see
    /// `removed_voter`), while a node that never was a voter (a learner or a
    /// joiner) never campaigns.
    pub(crate) fn promotable(&self) -> bool {
        self.tracker.is_voter(self.id) || self.removed_voter
    }

    pub(crate) fn send(&mut self, to: NodeId, body: MessageBody) {
        self.send_with_term(to, self.term, body);
    }

    pub(crate) fn send_with_term(&mut self, to: NodeId, term: Term, body: MessageBody) {
        self.msgs.push(Message {
            from: self.id,
            to,
            term,
            body,
        });
    }

    fn reset_randomized_election_timeout(&mut self) {
        let e = u64::from(self.cfg.election_tick);
        self.randomized_election_timeout = (e + self.rng.next_u64() % e) as u32;
    }

    /// Clears per-term state on every role change.
    fn reset(&mut self, term: Term) {
        if self.term != term {
            self.term = term;
            self.vote = NodeId::NONE;
        }
        self.leader = NodeId::NONE;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_randomized_election_timeout();
        self.transfer.reset();
        self.tracker.reset_votes();
        self.uncommitted_bytes = 0;
        self.uncommitted_queue.clear();
        self.reads
            .abort_all(&mut self.msgs, self.id, self.term, None);
    }

    pub(crate) fn become_follower(&mut self, term: Term, leader: NodeId) {
        let was_leader = self.role == Role::Leader;
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
        if was_leader {
            tracing::debug!(id = %self.id, term = %self.term, "leader stepped down");
        }
        self.reads.set_leader_hint(leader);
    }

    /// The one place that reacts to terms; then dispatches by role.
    pub(crate) fn step(&mut self, m: Message) -> Result<()> {
        if m.to != self.id {
            return Err(Error::WrongRecipient {
                to: m.to,
                this: self.id,
            });
        }
        if m.from.is_none() || m.from == self.id {
            return Err(Error::Malformed("message from node 0 or from itself"));
        }
        // Refuse malformed content before the term is acted on, so that a
        // refused message changes nothing (not even the term).
        validate_message(&m)?;
        if m.term > self.term {
            if let MessageBody::RequestVote { transfer, .. } = m.body {
                // A leader is a live leader to itself: while check-quorum
                // keeps it in office it ignores disruptive candidates too.
                let in_lease = self.cfg.check_quorum
                    && (self.role == Role::Leader
                        || self.since_leader_contact < self.cfg.election_tick);
                if !transfer && in_lease {
                    tracing::debug!(id = %self.id, from = %m.from, term = %m.term,
                        "ignoring vote request: a leader was heard from recently");
                    return Ok(());
                }
            }
            match m.body {
                MessageBody::RequestVote { pre_vote: true, .. } => {}
                MessageBody::RequestVoteResponse {
                    pre_vote: true,
                    granted: true,
                } => {}
                MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. } => self.become_follower(m.term, m.from),
                _ => self.become_follower(m.term, NodeId::NONE),
            }
        } else if m.term < self.term {
            match m.body {
                MessageBody::AppendEntries { .. } | MessageBody::Heartbeat { .. }
                    if self.cfg.check_quorum || self.cfg.pre_vote =>
                {
                    // A stale leader (for example one that was partitioned)
                    // learns the newer term from this answer and steps down.
                    self.send(m.from, MessageBody::HeartbeatResponse { read_round: 0 });
                }
                MessageBody::RequestVote { pre_vote: true, .. } => {
                    self.send(
                        m.from,
                        MessageBody::RequestVoteResponse {
                            pre_vote: true,
                            granted: false,
                        },
                    );
                }
                _ => {
                    tracing::trace!(id = %self.id, from = %m.from, term = %m.term,
                        kind = m.body.kind(), "dropping message of a stale term");
                }
            }
            return Ok(());
        }

        if let MessageBody::RequestVote {
            pre_vote, last_log, ..
        } = m.body
        {
            return self.handle_vote_request(m.from, m.term, pre_vote, last_log);
        }
        match self.role {
            Role::Leader => self.step_leader(m),
            Role::Candidate | Role::PreCandidate => self.step_candidate(m),
            Role::Follower => self.step_follower(m),
        }
    }

    fn step_leader(&mut self, m: Message) -> Result<()> {
        match m.body {
            MessageBody::AppendEntriesResponse { result } => {
                self.handle_append_response(m.from, result)
            }
            MessageBody::HeartbeatResponse { read_round } => {
                self.handle_heartbeat_response(m.from, read_round)
            }
            MessageBody::ReadIndex { id } => self.handle_forwarded_read(m.from, id),
            MessageBody::RequestVoteResponse { .. } => Ok(()),
            MessageBody::AppendEntries { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. } => Err(Error::Malformed(
                "a second leader in the same term (election safety violated by the sender)",
            )),
            MessageBody::TimeoutNow | MessageBody::ReadIndexResponse { .. } => Ok(()),
            MessageBody::RequestVote { .. } => Ok(()),
        }
    }

    fn step_candidate(&mut self, m: Message) -> Result<()> {
        match m.body {
            MessageBody::RequestVoteResponse { pre_vote, granted } => {
                self.handle_vote_response(m.from, pre_vote, granted)
            }
            MessageBody::AppendEntries { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. } => {
                // A leader of this term exists: follow it.
                self.become_follower(m.term, m.from);
                self.step_follower(m)
            }
            _ => Ok(()),
        }
    }

    fn step_follower(&mut self, m: Message) -> Result<()> {
        match m.body {
            MessageBody::AppendEntries {
                prev,
                entries,
                commit,
            } => {
                self.heard_from_leader(m.from);
                self.handle_append(m.from, prev, entries, commit)
            }
            MessageBody::Heartbeat { commit, read_round } => {
                self.heard_from_leader(m.from);
                self.handle_heartbeat(m.from, commit, read_round)
            }
            MessageBody::InstallSnapshot { meta } => {
                self.heard_from_leader(m.from);
                self.handle_snapshot(m.from, meta)
            }
            MessageBody::TimeoutNow => self.handle_timeout_now(m.from),
            MessageBody::ReadIndexResponse { id, index } => {
                self.reads.forwarded_answer(id, index, self.leader);
                Ok(())
            }
            MessageBody::ReadIndex { id } => {
                // Not the leader: say so, so the asker fails fast.
                self.send(m.from, MessageBody::ReadIndexResponse { id, index: None });
                Ok(())
            }
            MessageBody::RequestVoteResponse { .. }
            | MessageBody::AppendEntriesResponse { .. }
            | MessageBody::HeartbeatResponse { .. }
            | MessageBody::RequestVote { .. } => Ok(()),
        }
    }

    fn heard_from_leader(&mut self, from: NodeId) {
        self.election_elapsed = 0;
        self.since_leader_contact = 0;
        if self.leader != from {
            self.leader = from;
            self.reads.set_leader_hint(from);
        }
    }

    /// Advances time by one tick.
    pub(crate) fn tick(&mut self) -> Result<()> {
        self.now += 1;
        self.expire_forwarded_reads();
        self.since_leader_contact = self.since_leader_contact.saturating_add(1);
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => {
                self.election_elapsed = self.election_elapsed.saturating_add(1);
                if self.promotable() && self.election_elapsed >= self.randomized_election_timeout {
                    self.election_elapsed = 0;
                    self.start_election(false)?;
                }
                Ok(())
            }
        }
    }

    fn tick_leader(&mut self) -> Result<()> {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_tick {
            self.election_elapsed = 0;
            if self.cfg.check_quorum {
                if !self.tracker.quorum_active(self.id) {
                    tracing::debug!(id = %self.id, term = %self.term,
                        "check-quorum failed: stepping down");
                    self.become_follower(self.term, NodeId::NONE);
                    return Ok(());
                }
                self.tracker.reset_recent_active(self.id);
            }
        }
        if self.transfer.tick(self.cfg.transfer_timeout_ticks) {
            tracing::debug!(id = %self.id, "leadership transfer timed out");
            if !self.tracker.conf().is_joint() && !self.tracker.conf().voters.contains(&self.id) {
                self.hand_over_leadership()?;
            }
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
        // A commit notice is held back a tick at most.
        self.send_commit_notices()
    }
}

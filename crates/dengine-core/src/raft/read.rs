//! Linearizable reads: ReadIndex (confirmed by a heartbeat round) and lease
//! reads (served while a recent round proves no other leader can exist).
//!
//! Reads are batched by rounds: every heartbeat broadcast starts a new
//! round, and all reads asked since the previous broadcast wait for the same
//! round. A round is confirmed when a quorum answered it (or a later one).
//!
//! Reads start a round of their own only while no round is unconfirmed:
//! the reads asked meanwhile wait for the next round, which goes out once
//! the one in flight is confirmed (or with the next heartbeat, if it never
//! is). Under load a round then carries every read asked during one round
//! trip, not just those of one `Ready`, as etcd's read loop keeps one
//! ReadIndex in flight. Each round costs every follower a message in and
//! one out, which on a busy leader was most of what a linearizable read
//! cost beyond a serializable one.

use std::collections::{BTreeMap, VecDeque};

use super::Raft;
use crate::error::{Error, Result};
use crate::message::{Message, MessageBody, ReadId};
use crate::quorum;
use crate::storage::LogStorage;
use crate::types::{LogIndex, NodeId, Role, Term};

/// How a read is made linearizable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadPolicy {
    /// Confirm leadership with a quorum round (ReadIndex). Always safe.
    ReadIndex,
    /// Serve from the leader's lease when it is valid, without a round;
    /// falls back to ReadIndex otherwise. Safe only under the configured
    /// clock-drift bound.
    Lease,
}

/// The outcome of a read request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The id the application gave the read.
    pub id: ReadId,
    /// `Ok(index)`: serve the read once the state machine applied `index`.
    /// `Err`: the read could not be confirmed (retry, maybe elsewhere).
    pub result: Result<LogIndex>,
}

#[derive(Clone, Copy, Debug)]
struct PendingRead {
    id: ReadId,
    index: LogIndex,
    round: u64,
    /// The follower that forwarded it, or NONE for a local read.
    from: NodeId,
}

/// Read bookkeeping of one node (leader and follower sides).
#[derive(Debug, Default)]
pub(crate) struct ReadOnly {
    /// The newest round broadcast by this leader.
    round: u64,
    /// Some read waits for a round not yet broadcast.
    want_round: bool,
    /// Highest round each peer confirmed.
    acks: BTreeMap<NodeId, u64>,
    /// When each unconfirmed round was broadcast, in ticks.
    sent_at: VecDeque<(u64, u64)>,
    /// The broadcast time of the newest confirmed round: the lease start.
    lease_start: Option<u64>,
    pending: VecDeque<PendingRead>,
    /// Reads asked before this leader committed an entry of its term.
    waiting_commit: Vec<(ReadId, NodeId)>,
    /// Follower side: reads forwarded to the leader, with the tick they left.
    forwarded: BTreeMap<ReadId, u64>,
    leader_hint: NodeId,
    /// Outcomes ready for the application.
    pub(crate) ready: Vec<ReadState>,
}

impl ReadOnly {
    pub(crate) fn become_leader(&mut self, _id: NodeId) {
        self.acks.clear();
        self.sent_at.clear();
        self.lease_start = None;
        self.want_round = false;
    }

    pub(crate) fn set_leader_hint(&mut self, leader: NodeId) {
        self.leader_hint = leader;
    }

    fn not_leader(&self) -> Error {
        Error::NotLeader {
            leader: (!self.leader_hint.is_none()).then_some(self.leader_hint),
        }
    }

    /// Fails every read in progress (the node changed role or term).
    pub(crate) fn abort_all(
        &mut self,
        msgs: &mut Vec<Message>,
        me: NodeId,
        term: Term,
        hint: Option<NodeId>,
    ) {
        if let Some(h) = hint {
            self.leader_hint = h;
        }
        let err = self.not_leader();
        let forwarded_by_peers = self
            .pending
            .drain(..)
            .map(|r| (r.id, r.from))
            .chain(self.waiting_commit.drain(..));
        for (id, from) in forwarded_by_peers {
            if from.is_none() {
                self.ready.push(ReadState {
                    id,
                    result: Err(err.clone()),
                });
            } else {
                msgs.push(Message {
                    from: me,
                    to: from,
                    term,
                    body: MessageBody::ReadIndexResponse { id, index: None },
                });
            }
        }
        for (id, _) in std::mem::take(&mut self.forwarded) {
            self.ready.push(ReadState {
                id,
                result: Err(err.clone()),
            });
        }
        self.acks.clear();
        self.sent_at.clear();
        self.lease_start = None;
        self.want_round = false;
    }

    /// Follower side: the leader answered a forwarded read.
    pub(crate) fn forwarded_answer(&mut self, id: ReadId, index: Option<LogIndex>, leader: NodeId) {
        if self.forwarded.remove(&id).is_none() {
            return;
        }
        self.leader_hint = leader;
        let result = index.ok_or_else(|| self.not_leader());
        self.ready.push(ReadState { id, result });
    }

    /// Follower side: forwarded reads unanswered for `timeout` ticks fail,
    /// so a lost message cannot leave a read waiting forever.
    pub(crate) fn expire_forwarded(&mut self, now: u64, timeout: u64) {
        let expired: Vec<ReadId> = self
            .forwarded
            .iter()
            .filter(|&(_, &at)| now.saturating_sub(at) >= timeout)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            self.forwarded.remove(&id);
            self.ready.push(ReadState {
                id,
                result: Err(Error::Dropped("read forwarded to the leader got no answer")),
            });
        }
    }

    /// Whether reads wait for a round that may go out now: none is
    /// broadcast while an earlier one is unconfirmed (`sent_at` holds
    /// exactly the rounds not yet confirmed: a confirmation removes every
    /// round up to the one confirmed).
    pub(crate) fn wants_round(&self) -> bool {
        self.want_round && self.sent_at.is_empty()
    }

    pub(crate) fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Starts a new round broadcast at tick `now`; returns its number.
    pub(crate) fn next_round(&mut self, now: u64) -> u64 {
        self.round += 1;
        self.want_round = false;
        self.sent_at.push_back((self.round, now));
        self.round
    }
}

impl<S: LogStorage> Raft<S> {
    fn committed_in_current_term(&self) -> Result<bool> {
        Ok(self.log.term_or_zero(self.log.committed)? == self.term)
    }

    fn lease_valid(&self) -> bool {
        if !self.cfg.lease_reads || self.transfer.lease_void {
            return false;
        }
        let Some(start) = self.reads.lease_start else {
            return false;
        };
        let len = u64::from(self.cfg.election_tick - self.cfg.lease_drift_ticks);
        self.now < start + len
    }

    /// Asks for a linearizable read.
    pub(crate) fn read_index(&mut self, id: ReadId, policy: ReadPolicy) -> Result<()> {
        match self.role {
            Role::Leader => self.leader_read(id, NodeId::NONE, policy),
            _ if !self.leader.is_none() => {
                let leader = self.leader;
                self.reads.forwarded.insert(id, self.now);
                self.send(leader, MessageBody::ReadIndex { id });
                Ok(())
            }
            _ => Err(Error::NotLeader { leader: None }),
        }
    }

    pub(crate) fn handle_forwarded_read(&mut self, from: NodeId, id: ReadId) -> Result<()> {
        if self.tracker.get(from).is_none() {
            return Err(Error::UnknownNode(from));
        }
        self.leader_read(id, from, ReadPolicy::ReadIndex)
    }

    fn leader_read(&mut self, id: ReadId, from: NodeId, policy: ReadPolicy) -> Result<()> {
        if !self.committed_in_current_term()? {
            // The commit index is not known until the no-op commits.
            self.reads.waiting_commit.push((id, from));
            return Ok(());
        }
        let index = self.log.committed;
        let immediate = self.tracker.is_singleton(self.id)
            || (policy == ReadPolicy::Lease && from.is_none() && self.lease_valid());
        if immediate {
            self.answer_read(id, from, index);
            return Ok(());
        }
        let round = self.reads.round + 1;
        self.reads.want_round = true;
        self.reads.pending.push_back(PendingRead {
            id,
            index,
            round,
            from,
        });
        Ok(())
    }

    fn answer_read(&mut self, id: ReadId, from: NodeId, index: LogIndex) {
        if from.is_none() {
            self.reads.ready.push(ReadState {
                id,
                result: Ok(index),
            });
        } else {
            self.send(
                from,
                MessageBody::ReadIndexResponse {
                    id,
                    index: Some(index),
                },
            );
        }
    }

    /// Once the leader's first entry commits, reads that waited for it go.
    pub(crate) fn release_reads_waiting_for_commit(&mut self) -> Result<()> {
        if self.reads.waiting_commit.is_empty() || !self.committed_in_current_term()? {
            return Ok(());
        }
        for (id, from) in std::mem::take(&mut self.reads.waiting_commit) {
            self.leader_read(id, from, ReadPolicy::ReadIndex)?;
        }
        Ok(())
    }

    /// A peer confirmed `round`.
    pub(crate) fn ack_read_round(&mut self, from: NodeId, round: u64) -> Result<()> {
        if round == 0 || round > self.reads.round {
            return Ok(());
        }
        let e = self.reads.acks.entry(from).or_insert(0);
        if *e >= round {
            return Ok(());
        }
        *e = round;
        let me = self.id;
        let mine = self.reads.round;
        let acks = &self.reads.acks;
        let confirmed = quorum::quorum_value(self.tracker.conf(), |id| {
            if id == me {
                Some(mine)
            } else {
                acks.get(&id).copied()
            }
        });
        if confirmed == 0 {
            return Ok(());
        }
        while let Some(&(r, at)) = self.reads.sent_at.front() {
            if r > confirmed {
                break;
            }
            self.reads.lease_start = Some(at);
            self.reads.sent_at.pop_front();
        }
        while let Some(&p) = self.reads.pending.front() {
            if p.round > confirmed {
                break;
            }
            self.reads.pending.pop_front();
            self.answer_read(p.id, p.from, p.index);
        }
        Ok(())
    }

    /// Sends every follower a heartbeat that starts a new read round.
    pub(crate) fn broadcast_heartbeat(&mut self) {
        let round = self.reads.next_round(self.now);
        let commit = self.log.committed;
        for id in self.tracker.ids() {
            if id == self.id {
                continue;
            }
            let matched = self.tracker.get(id).map_or(LogIndex::ZERO, |p| p.matched);
            self.send(
                id,
                MessageBody::Heartbeat {
                    commit: commit.min(matched),
                    read_round: round,
                },
            );
        }
        if self.tracker.is_singleton(self.id) {
            // No one else to ask: the round is confirmed by this node alone.
            let _ = self.ack_read_round(self.id, round);
        }
    }

    /// Broadcasts a round if reads wait for one (called when a `Ready` is built,
    /// so all reads since the last one share a round).
    pub(crate) fn flush_reads(&mut self) {
        if self.role == Role::Leader && self.reads.wants_round() {
            self.broadcast_heartbeat();
        }
        self.expire_forwarded_reads();
    }

    /// Fails reads forwarded to the leader that got no answer within two
    /// election timeouts. Called on every tick, so that `has_ready` reports
    /// the failure without waiting for unrelated activity.
    pub(crate) fn expire_forwarded_reads(&mut self) {
        let timeout = 2 * u64::from(self.cfg.election_tick);
        self.reads.expire_forwarded(self.now, timeout);
    }
}

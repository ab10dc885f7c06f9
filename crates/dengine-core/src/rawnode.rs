//! The public face of the core: [`RawNode`] takes inputs and gives back a
//! [`Ready`] describing what the runtime must do.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::message::{Message, MessageBody, ReadId};
use crate::raft::Raft;
pub use crate::raft::{ReadPolicy, ReadState};
use crate::storage::LogStorage;
use crate::tracker::ProgressState;
use crate::types::{
    ConfChange, ConfState, Entry, EntryId, EntryPayload, HardState, LogIndex, NodeId, Role,
    SnapshotMeta, SoftState, Term,
};

/// Something to make durable, in order, before its `messages` may be sent.
///
/// Batches must be made durable in the order they were handed out: a batch
/// counts as durable only once it and every earlier batch are. A batch may
/// hold nothing but messages; it then only orders them behind earlier
/// batches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PersistBatch {
    /// A snapshot received from the leader to install, before `entries`.
    /// The runtime installs the snapshot's data (which it received beside
    /// the message) in the state machine after every committed entry handed
    /// out before this batch, and records it as the log's new base.
    pub snapshot: Option<SnapshotMeta>,
    /// Entries to append. Any entry already stored at or after the first
    /// one's index is replaced (the log is truncated there first).
    pub entries: Vec<Entry>,
    /// Hard state to store (after the entries, in the same write or later).
    pub hard_state: Option<HardState>,
    /// Messages to send once this batch (and every earlier one) is durable:
    /// acknowledgements and votes that promise durability.
    pub messages: Vec<Message>,
}

/// What to report back with [`RawNode::on_persisted`] once a
/// [`PersistBatch`] is durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Persisted {
    /// The last entry of the batch.
    pub entries_to: Option<EntryId>,
    /// The snapshot index of the batch.
    pub snapshot: Option<LogIndex>,
    /// The term and vote of the batch's hard state.
    pub term_vote: Option<(Term, NodeId)>,
}

impl PersistBatch {
    /// The report to give [`RawNode::on_persisted`] for this batch.
    pub fn persisted(&self) -> Persisted {
        Persisted {
            entries_to: self.entries.last().map(Entry::id),
            snapshot: self.snapshot.as_ref().map(|s| s.last_index),
            term_vote: self.hard_state.map(|h| (h.term, h.vote)),
        }
    }

    /// Whether the batch has anything to write (not only messages).
    pub fn has_writes(&self) -> bool {
        self.snapshot.is_some() || !self.entries.is_empty() || self.hard_state.is_some()
    }
}

/// Everything the runtime must do after feeding inputs to a [`RawNode`].
/// See the crate docs for the order in which its parts may be carried out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// The role or known leader changed.
    pub soft_state: Option<SoftState>,
    /// Writes to make durable, with the messages that must wait for them.
    pub persist: Option<PersistBatch>,
    /// Messages that may be sent at once, in parallel with the writes.
    pub messages: Vec<Message>,
    /// Committed, durable entries to apply in order. A membership change
    /// among them is already in force in the core; see `conf_state`.
    pub committed_entries: Vec<Entry>,
    /// The membership after `committed_entries`, when they changed it. Store
    /// it with the applied state: it is the `conf_state` of a restart's
    /// [`crate::InitialState`].
    pub conf_state: Option<ConfState>,
    /// Reads whose outcome is known.
    pub read_states: Vec<ReadState>,
    /// Take a snapshot of the state machine as of exactly this metadata's
    /// index: the last entry handed out to apply, this `Ready`'s committed
    /// entries included (so apply them first), then report it with
    /// [`RawNode::snapshot_created`] or [`RawNode::snapshot_failed`].
    pub snapshot_request: Option<SnapshotMeta>,
    /// Log entries up to this index may be deleted (a snapshot covers them).
    pub compact_to: Option<LogIndex>,
}

impl Ready {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        *self == Ready::default()
    }
}

/// One follower's replication state, as the leader sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// Highest index known durable on the peer.
    pub matched: LogIndex,
    /// Next index to send.
    pub next: LogIndex,
    /// Probe, Replicate or Snapshot.
    pub state: ProgressState,
    /// Whether the peer is a learner.
    pub is_learner: bool,
}

/// A snapshot of a node's state, for monitoring and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Term, vote and commit index.
    pub hard_state: HardState,
    /// Role and known leader.
    pub soft_state: SoftState,
    /// The last index in the log (durable or not).
    pub last_index: LogIndex,
    /// The last index handed out for applying.
    pub applying: LogIndex,
    /// The last index reported applied.
    pub applied: LogIndex,
    /// The membership in force.
    pub conf_state: ConfState,
    /// Per-peer progress; only on the leader.
    pub progress: BTreeMap<NodeId, PeerStatus>,
    /// The target of a leadership transfer in progress.
    pub transfer_target: Option<NodeId>,
}

/// A Raft node with no I/O: feed it inputs, take [`Ready`]s, report back.
pub struct RawNode<S> {
    raft: Raft<S>,
    /// Set after a fatal storage error: the node refuses all further input.
    failed: Option<Error>,
}

impl<S: LogStorage> RawNode<S> {
    /// Starts a node from what `storage` holds.
    ///
    /// A new cluster is bootstrapped by giving every initial voter a log
    /// whose first entry is [`bootstrap_entry`] (committed, term 1); a node
    /// joining an existing cluster starts with an empty log and learns the
    /// membership from the leader.
    pub fn new(config: Config, storage: S) -> Result<Self> {
        Ok(RawNode {
            raft: Raft::new(config, storage)?,
            failed: None,
        })
    }

    fn guard<T>(&mut self, f: impl FnOnce(&mut Raft<S>) -> Result<T>) -> Result<T> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = f(&mut self.raft);
        if let Err(e) = &r
            && e.is_fatal()
        {
            self.failed = Some(e.clone());
        }
        r
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.raft.id
    }

    /// Read access to the storage the node reads its stable log from.
    pub fn storage(&self) -> &S {
        &self.raft.log.storage
    }

    /// Mutable access to the storage, for the runtime to write what a
    /// [`Ready`] asked for when it owns the storage through the node.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.raft.log.storage
    }

    /// Advances the logical clock by one tick (elections, heartbeats,
    /// leases and timeouts are counted in ticks).
    pub fn tick(&mut self) -> Result<()> {
        self.guard(|r| r.tick())
    }

    /// Starts an election now (if this node is a voter).
    pub fn campaign(&mut self) -> Result<()> {
        self.guard(|r| {
            if r.role == Role::Leader {
                return Ok(());
            }
            r.start_election(false)
        })
    }

    /// Feeds a message from a peer. Messages that break the protocol or
    /// come from unknown peers are refused with an error and change nothing.
    ///
    /// Whatever numbers a message carries, stepping it never panics: a term
    /// past [`Term::LIMIT`], a log index past [`LogIndex::LIMIT`] (in any
    /// field), or a term in the body past the message's own term is refused
    /// with [`Error::Malformed`]; a commit index past this node's log is
    /// capped at what it holds.
    pub fn step(&mut self, m: Message) -> Result<()> {
        self.guard(|r| r.step(m))
    }

    /// Proposes application data; returns the index it will have if it
    /// commits. Only the leader accepts proposals.
    ///
    /// The data becomes a shared buffer ([`Bytes`]; from a `Vec<u8>`
    /// without a copy) that every follower's `AppendEntries` then shares.
    pub fn propose(&mut self, data: impl Into<Bytes>) -> Result<LogIndex> {
        let (first, _) = self.propose_batch(std::iter::once(data))?;
        Ok(first)
    }

    /// Proposes several commands as consecutive entries in one step;
    /// returns the first and last index.
    pub fn propose_batch(
        &mut self,
        data: impl IntoIterator<Item = impl Into<Bytes>>,
    ) -> Result<(LogIndex, LogIndex)> {
        self.guard(|r| {
            r.check_can_propose()?;
            let term = r.term;
            let mut next = r.log.last_index().next();
            let first = next;
            let ents: Vec<Entry> = data
                .into_iter()
                .map(|d| {
                    let e = Entry {
                        term,
                        index: next,
                        payload: EntryPayload::Normal(d.into()),
                    };
                    next = next.next();
                    e
                })
                .collect();
            if ents.is_empty() {
                return Err(Error::Malformed("empty proposal batch"));
            }
            let bytes: u64 = ents.iter().map(Entry::size).sum();
            let limit = r.cfg.max_uncommitted_bytes;
            if limit > 0 && r.uncommitted_bytes > 0 && r.uncommitted_bytes + bytes > limit {
                return Err(Error::Overloaded);
            }
            r.append_entries(ents)?;
            Ok((first, next.prev()))
        })
    }

    /// Proposes a membership change. Refused while another is pending.
    pub fn propose_conf_change(&mut self, cc: ConfChange) -> Result<LogIndex> {
        self.guard(|r| r.propose_conf_change(cc))
    }

    /// Asks for a linearizable read; the outcome comes in a later
    /// [`Ready::read_states`] under the same `id`.
    pub fn read_index(&mut self, id: ReadId, policy: ReadPolicy) -> Result<()> {
        self.guard(|r| r.read_index(id, policy))
    }

    /// Starts handing leadership to `to`.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<()> {
        self.guard(|r| r.transfer_leader(to))
    }

    /// Reports whether a snapshot the runtime was sending to `to` arrived.
    pub fn report_snapshot(&mut self, to: NodeId, success: bool) -> Result<()> {
        self.guard(|r| r.report_snapshot(to, success))
    }

    /// Sends the commit notices held back (see
    /// [`Config::defer_commit_notices`]): to each follower no append has
    /// reached since the commit index moved. The runtime calls this a short
    /// while after [`RawNode::has_commit_notices_due`] became true; a tick
    /// sends them too.
    pub fn send_commit_notices(&mut self) -> Result<()> {
        self.guard(|r| r.send_commit_notices())
    }

    /// Whether a commit notice is held back for some follower (see
    /// [`RawNode::send_commit_notices`]).
    pub fn has_commit_notices_due(&self) -> bool {
        self.raft.has_commit_notices_due()
    }

    /// Reports that `to` could not be reached.
    pub fn report_unreachable(&mut self, to: NodeId) {
        self.raft.report_unreachable(to);
    }

    /// Whether [`RawNode::ready`] has anything to give.
    pub fn has_ready(&self) -> bool {
        let r = &self.raft;
        r.soft_state() != r.prev_soft_state()
            || r.hard_state_changed()
            || r.log.has_to_persist()
            || !r.msgs.is_empty()
            || r.log.can_hand_out(r.cfg.max_applying_bytes)
            || r.reads.has_ready()
            || (r.role == Role::Leader && r.reads.wants_round())
            || r.compact_to.is_some()
            || r.should_request_snapshot()
    }

    /// Takes what is to be done. Carry it out as the crate docs say, then
    /// report with [`RawNode::on_persisted`] and [`RawNode::on_applied`].
    pub fn ready(&mut self) -> Result<Ready> {
        self.guard(|r| r.ready())
    }

    /// The highest log index whose durability on this node lets it move on
    /// at once: apply committed entries (everyone: the commit index), or
    /// commit some (a leader: what its own write completes a quorum for).
    /// A report of entries past it changes nothing until another message
    /// comes, so a runtime may hand it over lazily, with what it handles
    /// next, rather than wake for it.
    pub fn persist_unblocks_through(&self) -> LogIndex {
        let r = &self.raft;
        let committed = r.log.committed;
        if r.role != Role::Leader {
            return committed;
        }
        committed.max(r.tracker.committed_with_all_of(r.id))
    }

    /// Reports that a [`PersistBatch`] is durable.
    pub fn on_persisted(&mut self, p: Persisted) -> Result<()> {
        self.guard(|r| r.on_persisted(p))
    }

    /// Reports that the state machine applied every entry up to `index`.
    pub fn on_applied(&mut self, index: LogIndex) -> Result<()> {
        self.guard(|r| {
            if index > r.log.applying {
                return Err(Error::InvalidReport(
                    "applied index past what was handed out",
                ));
            }
            r.log.applied_to(index);
            r.prune_conf_history();
            Ok(())
        })
    }

    /// Reports that the snapshot asked for in [`Ready::snapshot_request`]
    /// is stored: the core will let the log be compacted behind it. The
    /// snapshot may be at any index up to what was handed out to apply.
    pub fn snapshot_created(&mut self, meta: &SnapshotMeta) -> Result<()> {
        self.guard(|r| {
            r.snapshot_requested = None;
            r.snapshot_failures = 0;
            if meta.last_index > r.log.applying {
                return Err(Error::InvalidReport(
                    "snapshot past what was handed out to apply",
                ));
            }
            if meta.last_index > r.last_snapshot_index {
                r.last_snapshot_index = meta.last_index;
                let to = LogIndex(meta.last_index.0.saturating_sub(r.cfg.compaction_lag));
                if to > LogIndex::ZERO {
                    r.compact_to = Some(to);
                }
            }
            Ok(())
        })
    }

    /// Reports that a requested snapshot could not be made. It is asked
    /// for again after a backoff that doubles with each failure in a row
    /// (from two election timeouts up to 64), so a state machine that
    /// keeps failing is not asked in a loop.
    pub fn snapshot_failed(&mut self) {
        let r = &mut self.raft;
        r.snapshot_requested = None;
        r.snapshot_failures = r.snapshot_failures.saturating_add(1);
        let doublings = r.snapshot_failures.min(6);
        let wait = u64::from(r.cfg.election_tick) << doublings;
        r.snapshot_retry_at = r.now.saturating_add(wait);
    }

    /// Tells the core, before the first [`Ready`], that the state machine
    /// keeps its state durably and was at `applied` when this node
    /// started. That can be past the commit index the log made durable
    /// (a runtime may hold a commit-only hard state back for a while).
    ///
    /// Only committed entries that are durable in this log are handed
    /// out, and committed entries are never replaced, so every entry
    /// through `applied` that the log holds is committed: the commit index
    /// rises to `applied` if the log reaches it. Those entries are handed
    /// out again (a membership change among them takes effect here; the
    /// state machine skips what it has), and no snapshot is asked at an
    /// index below `applied`, where the state machine could not write it.
    pub fn state_machine_restored(&mut self, applied: LogIndex) {
        let r = &mut self.raft;
        if applied > r.log.committed && applied <= r.log.stable_last_index() {
            r.log.commit_to(applied);
        }
        r.restored_applied = r.restored_applied.max(applied);
    }

    /// Asks for a snapshot at the next [`Ready`], whatever the snapshot
    /// threshold, at the last index handed out to apply (the usual backoff
    /// after a failure still applies, and one snapshot is asked at a
    /// time). A runtime whose state machine keeps its state durably
    /// compacts its log without writing the state out, and asks for a
    /// snapshot with the state only when a follower needs one.
    pub fn request_snapshot(&mut self) {
        self.raft.snapshot_wanted = true;
    }

    /// The index of the snapshot received from a leader that waits to be
    /// made durable and installed, if any.
    pub fn pending_snapshot_index(&self) -> Option<LogIndex> {
        self.raft.log.pending_snapshot().map(|m| m.last_index)
    }

    /// The node a leadership transfer is under way to, if any.
    pub fn transfer_target(&self) -> Option<NodeId> {
        self.raft.transfer.target
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.raft.term
    }

    /// The role this node plays.
    pub fn role(&self) -> Role {
        self.raft.role
    }

    /// Role and known leader (cheap; [`RawNode::status`] copies more).
    pub fn soft_state(&self) -> SoftState {
        self.raft.soft_state()
    }

    /// Term, vote and commit index.
    pub fn hard_state(&self) -> HardState {
        self.raft.hard_state()
    }

    /// The last index in the log, durable or not.
    pub fn last_index(&self) -> LogIndex {
        self.raft.log.last_index()
    }

    /// The membership in force.
    pub fn conf_state(&self) -> &ConfState {
        self.raft.tracker.conf()
    }

    /// The membership in force from log index `index` on, for an index at
    /// or after the applied index and at most the last handed out (the
    /// membership a committed change being applied put in force).
    pub fn conf_state_at(&self, index: LogIndex) -> ConfState {
        self.raft.conf_at(index)
    }

    /// The term of the log entry at `index`, durable or not.
    pub fn log_term(&self, index: LogIndex) -> Result<Term> {
        Ok(self.raft.log.term(index)?)
    }

    /// On the leader, each member's matched index (the highest known to
    /// be durable there and to match this log), in id order, this node
    /// included; elsewhere nothing. Allocates nothing, for metrics.
    pub fn matched(&self) -> impl Iterator<Item = (NodeId, LogIndex)> + '_ {
        let leader = self.raft.role == Role::Leader;
        self.raft
            .tracker
            .iter()
            .filter(move |_| leader)
            .map(|(id, p)| (id, p.matched))
    }

    /// The node's state.
    pub fn status(&self) -> Status {
        let r = &self.raft;
        let progress = if r.role == Role::Leader {
            r.tracker
                .iter()
                .map(|(id, p)| {
                    (
                        id,
                        PeerStatus {
                            matched: p.matched,
                            next: p.next,
                            state: p.state,
                            is_learner: p.is_learner,
                        },
                    )
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        Status {
            id: r.id,
            hard_state: r.hard_state(),
            soft_state: r.soft_state(),
            last_index: r.log.last_index(),
            applying: r.log.applying,
            applied: r.log.applied,
            conf_state: r.tracker.conf().clone(),
            progress,
            transfer_target: r.transfer.target,
        }
    }
}

/// The first log entry of a new cluster, identical on every initial voter:
/// a membership change that makes `voters` the voters (term 1, index 1).
/// Give it to each initial voter's storage with a hard state of term 1 and
/// commit 1.
pub fn bootstrap_entry(voters: impl IntoIterator<Item = NodeId>) -> Entry {
    Entry {
        term: Term(1),
        index: LogIndex(1),
        payload: EntryPayload::ConfChange(Box::new(ConfChange {
            transition: crate::types::ConfChangeTransition::Auto,
            steps: voters
                .into_iter()
                .map(crate::types::ConfChangeStep::AddVoter)
                .collect(),
            context: Vec::new(),
        })),
    }
}

impl<S: LogStorage> Raft<S> {
    pub(crate) fn prev_soft_state(&self) -> SoftState {
        self.prev_soft
    }

    pub(crate) fn should_request_snapshot(&self) -> bool {
        let t = self.cfg.snapshot_threshold;
        let due = (t > 0 && self.log.applied.0 >= self.last_snapshot_index.0.saturating_add(t))
            || (self.snapshot_wanted && self.log.applying > LogIndex::ZERO);
        due && self.snapshot_requested.is_none()
            && self.log.applying >= self.restored_applied
            && self.now >= self.snapshot_retry_at
            && self.log.pending_snapshot().is_none()
    }

    /// Whether `m` promises something that must be durable first.
    ///
    /// An acknowledgement of entries that are durable already goes at once:
    /// the answer to an append that only carries the commit index (or to one
    /// whose entries this node had) promises nothing still on its way to the
    /// disk, and waiting behind the next write would only delay it.
    fn must_wait_for_persist(&self, m: &Message) -> bool {
        if (self.term, self.vote) != self.durable_term_vote {
            return true;
        }
        match m.body {
            MessageBody::AppendEntriesResponse { result: Ok(index) } => {
                index > self.log.stable_last_index()
            }
            MessageBody::RequestVoteResponse {
                pre_vote: false,
                granted: true,
            } => true,
            _ => false,
        }
    }

    pub(crate) fn ready(&mut self) -> Result<Ready> {
        let mut rd = Ready::default();

        // Hand out committed entries first: a membership change among them
        // takes effect now and may produce entries and messages below.
        let committed = self
            .log
            .next_committed(self.cfg.max_apply_bytes, self.cfg.max_applying_bytes)?;
        for e in &committed {
            if let EntryPayload::ConfChange(cc) = &e.payload {
                self.apply_committed_conf_change(e.index, cc)?;
            }
        }
        rd.committed_entries = committed;
        self.maybe_auto_leave(self.log.applying)?;
        if std::mem::take(&mut self.conf_changed) {
            rd.conf_state = Some(self.tracker.conf().clone());
        }

        self.flush_reads();
        rd.read_states = std::mem::take(&mut self.reads.ready);
        rd.soft_state = self.take_soft_state_change();

        let (snapshot, entries) = self.log.take_to_persist();
        let hard_state = self.take_hard_state_change();
        let mut batch = PersistBatch {
            snapshot,
            entries,
            hard_state,
            messages: Vec::new(),
        };
        for m in std::mem::take(&mut self.msgs) {
            if self.must_wait_for_persist(&m) {
                batch.messages.push(m);
            } else {
                rd.messages.push(m);
            }
        }
        if batch.has_writes() || !batch.messages.is_empty() {
            rd.persist = Some(batch);
        }

        if self.should_request_snapshot() {
            // At the last index handed out (this Ready's entries included),
            // not the last reported applied: the runtime's apply worker
            // takes the request after every entry handed out before it, so
            // it is exactly there when it makes the snapshot, however far
            // its reports lag under load.
            let index = self.log.applying;
            let term = self.log.term(index)?;
            rd.snapshot_request = Some(SnapshotMeta {
                last_index: index,
                last_term: term,
                conf_state: self.conf_at(index),
            });
            self.snapshot_requested = Some(index);
            self.snapshot_wanted = false;
        }
        rd.compact_to = self.compact_to.take();
        Ok(rd)
    }
}

//! Plain data shared by every part of the protocol: ids, terms, indexes,
//! log entries, hard state and snapshot metadata.

use std::collections::BTreeSet;
use std::fmt;

use bytes::Bytes;

macro_rules! newtype_u64 {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u64);

        impl $name {
            /// The zero value.
            pub const ZERO: $name = $name(0);

            /// The raw number.
            #[inline]
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl From<u64> for $name {
            fn from(v: u64) -> Self {
                $name(v)
            }
        }

        impl From<$name> for u64 {
            fn from(v: $name) -> u64 {
                v.0
            }
        }
    };
}

newtype_u64!(
    /// Identifies a node in the cluster. `NodeId(0)` is reserved to mean "none".
    NodeId
);
newtype_u64!(
    /// A Raft term. Terms start at 0 and only grow.
    Term
);
newtype_u64!(
    /// A position in the replicated log. The first real entry has index 1;
    /// index 0 is the empty log's sentinel.
    LogIndex
);

impl NodeId {
    /// The reserved "no node" id.
    pub const NONE: NodeId = NodeId(0);

    /// Whether this is the reserved "no node" id.
    pub const fn is_none(self) -> bool {
        self.0 == 0
    }
}

impl Term {
    /// The highest term a message may carry: `2^63 - 1` (`i64::MAX`).
    ///
    /// [`crate::RawNode::step`] refuses a message whose term is higher with
    /// [`crate::Error::Malformed`], before acting on it, so a term from a
    /// peer is never adopted past `LIMIT`, and `term + 1` never overflows.
    ///
    /// The terms usable for elections end there: a node whose term is
    /// `LIMIT` or more does not campaign, since its (pre-)vote requests
    /// would carry a term past the limit. A leader elected at `LIMIT` goes
    /// on leading; once it is gone, no new one is elected. Honest elections
    /// take `2^63` rounds to get there; a faulty peer that sends `LIMIT` (or
    /// a corrupt hard state) is the only practical way.
    pub const LIMIT: Term = Term(i64::MAX as u64);

    /// The next term.
    ///
    /// Overflows at `u64::MAX` (a panic in debug builds); the core itself
    /// only uses [`Term::checked_next`].
    #[inline]
    pub const fn next(self) -> Term {
        Term(self.0 + 1)
    }

    /// The next term, or `None` if this is `u64::MAX`.
    #[inline]
    pub const fn checked_next(self) -> Option<Term> {
        match self.0.checked_add(1) {
            Some(t) => Some(Term(t)),
            None => None,
        }
    }
}

impl LogIndex {
    /// The highest log index a message may name: `2^63 - 1` (`i64::MAX`).
    ///
    /// [`crate::RawNode::step`] refuses a message that names a higher index
    /// (an entry, a `prev`, a commit index, an acknowledgement, a rejection
    /// or its hint, a snapshot, a read index) with
    /// [`crate::Error::Malformed`], before acting on it. So a log only ever
    /// reaches past `LIMIT` through this node's own proposals, `2^63` of
    /// them, and `index + 1` (the bound the log code computes everywhere)
    /// cannot overflow.
    pub const LIMIT: LogIndex = LogIndex(i64::MAX as u64);

    /// The next index.
    ///
    /// Overflows at `u64::MAX` (a panic in debug builds): indexes from peers
    /// are at most [`LogIndex::LIMIT`], so the core never calls it there.
    #[inline]
    pub const fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }

    /// The next index, or `None` if this is `u64::MAX`.
    #[inline]
    pub const fn checked_next(self) -> Option<LogIndex> {
        match self.0.checked_add(1) {
            Some(i) => Some(LogIndex(i)),
            None => None,
        }
    }

    /// The next index, saturating at `u64::MAX`.
    #[inline]
    pub const fn saturating_next(self) -> LogIndex {
        LogIndex(self.0.saturating_add(1))
    }

    /// The previous index, saturating at zero.
    #[inline]
    pub const fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }

    /// `self + n`.
    ///
    /// Overflows past `u64::MAX` (a panic in debug builds).
    #[inline]
    pub const fn plus(self, n: u64) -> LogIndex {
        LogIndex(self.0 + n)
    }
}

/// The voters of one configuration, with the learners kept apart.
///
/// During a joint configuration `voters_outgoing` is non-empty and a decision
/// needs a majority of `voters` *and* a majority of `voters_outgoing`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConfState {
    /// The voters of the incoming (or only) configuration.
    pub voters: BTreeSet<NodeId>,
    /// The voters of the outgoing configuration; empty unless joint.
    pub voters_outgoing: BTreeSet<NodeId>,
    /// Non-voting members that receive the log.
    pub learners: BTreeSet<NodeId>,
    /// Voters of the outgoing configuration that become learners once the
    /// joint configuration is left (they cannot be learners and voters at once).
    pub learners_next: BTreeSet<NodeId>,
    /// Whether the leader leaves the joint configuration by itself once it
    /// has been committed.
    pub auto_leave: bool,
}

impl ConfState {
    /// A simple (non-joint) configuration of these voters.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> ConfState {
        ConfState {
            voters: voters.into_iter().collect(),
            ..ConfState::default()
        }
    }

    /// Whether this is a joint configuration.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Whether `id` votes in either half of the configuration.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }

    /// Whether `id` is a learner (now or after leaving the joint config).
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id) || self.learners_next.contains(&id)
    }

    /// Whether `id` is a member at all.
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }

    /// Every member, voters and learners, in id order without duplicates.
    pub fn members(&self) -> BTreeSet<NodeId> {
        self.voters
            .iter()
            .chain(&self.voters_outgoing)
            .chain(&self.learners)
            .chain(&self.learners_next)
            .copied()
            .collect()
    }
}

/// One change to the membership, as part of a [`ConfChange`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfChangeStep {
    /// Add `NodeId` as a voter, or promote it from learner.
    AddVoter(NodeId),
    /// Add `NodeId` as a learner, or demote it from voter.
    AddLearner(NodeId),
    /// Remove `NodeId` from the cluster.
    Remove(NodeId),
}

impl ConfChangeStep {
    /// The node this step is about.
    pub fn node(&self) -> NodeId {
        match *self {
            ConfChangeStep::AddVoter(id)
            | ConfChangeStep::AddLearner(id)
            | ConfChangeStep::Remove(id) => id,
        }
    }
}

/// How a [`ConfChange`] moves between configurations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ConfChangeTransition {
    /// A single voter change is applied directly; several use a joint
    /// configuration that is left automatically.
    #[default]
    Auto,
    /// Always enter a joint configuration and leave it automatically.
    JointImplicit,
    /// Always enter a joint configuration; the application leaves it by
    /// proposing an empty [`ConfChange`].
    JointExplicit,
}

/// A membership change as proposed by the application and stored in the log.
///
/// An empty `steps` list means "leave the joint configuration".
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConfChange {
    /// How to move to the new configuration.
    pub transition: ConfChangeTransition,
    /// The changes, applied together.
    pub steps: Vec<ConfChangeStep>,
    /// Opaque bytes the application attaches to the change (for example
    /// the addresses of the member it adds), replicated with it and handed
    /// back when it is applied; the core never reads them.
    pub context: Vec<u8>,
}

impl ConfChange {
    /// A change that leaves the current joint configuration.
    pub fn leave_joint() -> ConfChange {
        ConfChange::default()
    }

    /// Whether this change is the "leave joint" marker.
    pub fn is_leave_joint(&self) -> bool {
        self.steps.is_empty()
    }
}

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EntryPayload {
    /// The no-op a new leader appends to commit entries of earlier terms.
    Blank,
    /// Application data; opaque to the protocol. A shared buffer: cloning
    /// the entry (for each follower's `AppendEntries`, for storage, for the
    /// wire) bumps a reference count and never copies the data.
    Normal(Bytes),
    /// A membership change; applied to the configuration when committed.
    /// Boxed: changes are rare, and inline they would make every entry
    /// half as large again (entries are moved and cloned on every path).
    ConfChange(Box<ConfChange>),
}

impl EntryPayload {
    /// Approximate size in bytes, used for batching and flow control.
    pub fn size(&self) -> u64 {
        match self {
            EntryPayload::Blank => 0,
            EntryPayload::Normal(d) => d.len() as u64,
            EntryPayload::ConfChange(cc) => 8 + 16 * cc.steps.len() as u64,
        }
    }
}

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    /// The term of the leader that created the entry.
    pub term: Term,
    /// The entry's position in the log.
    pub index: LogIndex,
    /// What it carries.
    pub payload: EntryPayload,
}

/// Fixed per-entry overhead counted by [`Entry::size`].
pub const ENTRY_OVERHEAD: u64 = 24;

impl Entry {
    /// Approximate size in bytes (payload plus a fixed header), used for
    /// batching and flow control.
    pub fn size(&self) -> u64 {
        ENTRY_OVERHEAD + self.payload.size()
    }

    /// The `(term, index)` pair identifying the entry.
    pub fn id(&self) -> EntryId {
        EntryId {
            term: self.term,
            index: self.index,
        }
    }
}

/// A `(term, index)` pair: by log matching, it names a whole log prefix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId {
    /// The entry's term.
    pub term: Term,
    /// The entry's index.
    pub index: LogIndex,
}

impl EntryId {
    /// Builds an id.
    pub const fn new(term: Term, index: LogIndex) -> EntryId {
        EntryId { term, index }
    }
}

/// The state that must be durable before the node answers anyone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// Whom it voted for in `term`, or [`NodeId::NONE`].
    pub vote: NodeId,
    /// The highest index known committed. Losing it is safe (it is
    /// recomputed), so its persistence is an optimisation.
    pub commit: LogIndex,
}

/// Identifies a snapshot and the configuration it contains.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SnapshotMeta {
    /// The last log index the snapshot covers.
    pub last_index: LogIndex,
    /// The term of the entry at `last_index`.
    pub last_term: Term,
    /// The membership as of `last_index`.
    pub conf_state: ConfState,
}

impl SnapshotMeta {
    /// The `(term, index)` of the last covered entry.
    pub fn last_id(&self) -> EntryId {
        EntryId::new(self.last_term, self.last_index)
    }
}

/// The role a node currently plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asks for pre-votes without raising its term.
    PreCandidate,
    /// Asks for votes in a new term.
    Candidate,
    /// Leads the cluster.
    Leader,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        };
        f.write_str(s)
    }
}

/// State that changes often and need not be persisted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SoftState {
    /// The leader this node knows of, or [`NodeId::NONE`].
    pub leader: NodeId,
    /// This node's role.
    pub role: Role,
}

//! Bad input: messages and calls that break the protocol are refused with a
//! typed error and change nothing; stale messages are dropped; nothing
//! panics, whatever arrives.

mod scenario_support;

use dengine_core::testing::{Cluster, TestNode};
use dengine_core::{
    AppendRejection, ConfState, Entry, EntryId, EntryPayload, Error, HardState, LogIndex, Message,
    MessageBody, NodeId, ReadId, Role, SnapshotMeta, Status, StorageError, Term,
};
use proptest::prelude::*;
use scenario_support::*;

/// Everything observable about a node: protocol status, stored log and hard
/// state, and whether it has anything to hand out.
#[derive(Debug, PartialEq)]
struct Observed {
    status: Status,
    entries: Vec<Entry>,
    hard_state: HardState,
    has_ready: bool,
}

fn observe(n: &TestNode) -> Observed {
    let s = n.storage.lock();
    Observed {
        status: n.raw.status(),
        entries: s.entries.clone(),
        hard_state: s.hard_state,
        has_ready: n.raw.has_ready(),
    }
}

/// Steps `m` into node `id`, expects `err`, and checks nothing changed.
fn refused(c: &mut Cluster, id: u64, m: Message, err: Error) {
    c.stabilize();
    let before = observe(c.node(id));
    assert_eq!(c.node_mut(id).raw.step(m), Err(err));
    assert_eq!(observe(c.node(id)), before, "node {id} changed");
}

fn msg(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(term),
        body,
    }
}

fn ent(index: u64, term: u64) -> Entry {
    Entry {
        term: Term(term),
        index: LogIndex(index),
        payload: EntryPayload::Normal(vec![index as u8].into()),
    }
}

fn append(prev: (u64, u64), entries: Vec<Entry>, commit: u64) -> MessageBody {
    MessageBody::AppendEntries {
        prev: EntryId::new(Term(prev.0), LogIndex(prev.1)),
        entries,
        commit: LogIndex(commit),
    }
}

fn ack(index: u64) -> MessageBody {
    MessageBody::AppendEntriesResponse {
        result: Ok(LogIndex(index)),
    }
}

/// Three nodes, node 1 leading term 2, "a" committed at index 3.
fn cluster() -> Cluster {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, b"a").unwrap();
    c.stabilize();
    assert_eq!(commit(&c, 2), 3);
    c
}

#[test]
fn answers_from_a_non_member_are_refused() {
    let mut c = cluster();
    refused(
        &mut c,
        1,
        msg(9, 1, 2, ack(3)),
        Error::UnknownNode(NodeId(9)),
    );
    let hb = MessageBody::HeartbeatResponse { read_round: 0 };
    refused(&mut c, 1, msg(9, 1, 2, hb), Error::UnknownNode(NodeId(9)));
}

#[test]
fn a_message_for_another_node_is_refused() {
    let mut c = cluster();
    let m = msg(1, 2, 2, append((2, 3), vec![ent(4, 2)], 3));
    let err = Error::WrongRecipient {
        to: NodeId(2),
        this: NodeId(3),
    };
    refused(&mut c, 3, m, err);
}

#[test]
fn a_message_from_nobody_or_from_itself_is_refused() {
    let mut c = cluster();
    let hb = MessageBody::Heartbeat {
        commit: LogIndex(3),
        read_round: 0,
    };
    let err = Error::Malformed("message from node 0 or from itself");
    refused(&mut c, 2, msg(0, 2, 2, hb.clone()), err.clone());
    refused(&mut c, 2, msg(2, 2, 2, hb), err);
}

#[test]
fn stale_term_messages_are_dropped_without_effect() {
    let mut c = cluster();
    c.stabilize();
    let before = observe(c.node(2));
    // An append from a deposed leader of term 1 is not applied; the answer
    // only tells the sender the current term.
    let old_append = msg(3, 2, 1, append((1, 1), vec![ent(2, 1)], 2));
    c.node_mut(2).raw.step(old_append).unwrap();
    let rd = c.node_mut(2).raw.ready().unwrap();
    assert_eq!(
        rd.messages,
        vec![msg(
            2,
            3,
            2,
            MessageBody::HeartbeatResponse { read_round: 0 }
        )]
    );
    assert_eq!(rd.persist, None);
    assert_eq!(observe(c.node(2)), before);

    // A stale vote request or acknowledgement is dropped silently.
    let old_vote = MessageBody::RequestVote {
        pre_vote: false,
        last_log: EntryId::new(Term(1), LogIndex(50)),
        transfer: false,
    };
    c.node_mut(2).raw.step(msg(3, 2, 1, old_vote)).unwrap();
    assert_eq!(observe(c.node(2)), before);
    let leader_before = observe(c.node(1));
    c.node_mut(1).raw.step(msg(2, 1, 1, ack(3))).unwrap();
    assert_eq!(observe(c.node(1)), leader_before);
}

#[test]
fn appends_that_break_the_log_shape_are_refused() {
    let mut c = cluster();
    // An entry that does not follow `prev`.
    let gap = msg(1, 2, 2, append((2, 3), vec![ent(5, 2)], 3));
    refused(
        &mut c,
        2,
        gap,
        Error::Malformed("entries do not follow prev"),
    );
    let twice = msg(1, 2, 2, append((2, 3), vec![ent(4, 2), ent(4, 2)], 3));
    refused(
        &mut c,
        2,
        twice,
        Error::Malformed("entries do not follow prev"),
    );
    // Entry terms that go down, or past the sender's term.
    let down = msg(1, 2, 2, append((2, 3), vec![ent(4, 1)], 3));
    refused(
        &mut c,
        2,
        down,
        Error::Malformed("entry terms out of order"),
    );
    let future = msg(1, 2, 2, append((2, 3), vec![ent(4, 3)], 3));
    refused(
        &mut c,
        2,
        future,
        Error::Malformed("entry terms out of order"),
    );
    let prev_future = msg(1, 2, 2, append((5, 3), vec![], 3));
    refused(
        &mut c,
        2,
        prev_future,
        Error::Malformed("prev term is past the sender's term"),
    );
    // Refused before the term is looked at: a malformed message from a
    // higher term does not make the node adopt that term.
    let higher = msg(3, 2, 5, append((2, 3), vec![ent(5, 5)], 3));
    refused(
        &mut c,
        2,
        higher,
        Error::Malformed("entries do not follow prev"),
    );
    let no_voters = MessageBody::InstallSnapshot {
        meta: SnapshotMeta {
            last_index: LogIndex(9),
            last_term: Term(5),
            conf_state: ConfState::default(),
        },
    };
    let err = Error::Malformed("snapshot with no voters");
    refused(&mut c, 2, msg(3, 2, 5, no_voters), err);
}

#[test]
fn an_append_anchored_past_the_log_is_rejected_even_with_term_zero() {
    // No entry past the end of the log has term 0: such a `prev` does not
    // match, so the entries after it are not appended with a gap before them.
    let mut c = cluster();
    c.stabilize();
    let before = observe(c.node(2));
    let m = msg(1, 2, 2, append((0, 5), vec![ent(6, 2)], 3));
    c.node_mut(2).raw.step(m).unwrap();
    let rd = c.node_mut(2).raw.ready().unwrap();
    assert_eq!(rd.persist, None);
    assert!(matches!(
        rd.messages[..],
        [Message { body: MessageBody::AppendEntriesResponse { result: Err(r) }, .. }]
            if r.rejected == LogIndex(5)
    ));
    assert_eq!(observe(c.node(2)), before);
}

#[test]
fn a_second_leader_in_the_same_term_is_refused() {
    let mut c = cluster();
    let m = msg(2, 1, 2, append((2, 3), vec![ent(4, 2)], 3));
    let err = Error::Malformed(
        "a second leader in the same term (election safety violated by the sender)",
    );
    refused(&mut c, 1, m, err);
}

#[test]
fn an_ack_past_the_leaders_log_is_refused() {
    let mut c = cluster();
    let err = Error::Malformed("acknowledged index is past the leader's log");
    refused(&mut c, 1, msg(2, 1, 2, ack(4)), err.clone());
    refused(&mut c, 1, msg(2, 1, 2, ack(1_000)), err);
    assert_eq!(c.node(1).status().progress[&NodeId(2)].matched, LogIndex(3));
}

#[test]
fn a_refused_ack_does_not_count_as_a_sign_of_life() {
    // The leader is cut off just before a check-quorum round; a broken
    // follower keeps sending acks past its log. They are refused, so they
    // must not keep it in office: it steps down when it would anyway.
    let mut c = Cluster::new(3);
    c.elect(1);
    c.tick_all(9);
    c.isolate(1);
    let mut stepped_down = None;
    for t in 1..=30 {
        let bogus = msg(2, 1, 2, ack(100));
        if role(&c, 1) == Role::Leader {
            assert!(c.node_mut(1).raw.step(bogus).is_err());
        }
        c.tick(1);
        if role(&c, 1) != Role::Leader {
            stepped_down = Some(t);
            break;
        }
    }
    assert_eq!(stepped_down, Some(11));
}

#[test]
fn a_proposal_to_a_follower_is_refused_with_the_leader_hint() {
    let mut c = cluster();
    c.stabilize();
    let before = observe(c.node(2));
    assert_eq!(
        c.propose(2, b"x"),
        Err(Error::NotLeader {
            leader: Some(NodeId(1))
        })
    );
    assert_eq!(observe(c.node(2)), before);

    // A node that knows no leader says so.
    let mut c = Cluster::new(3);
    assert_eq!(c.propose(2, b"x"), Err(Error::NotLeader { leader: None }));
}

#[test]
fn an_empty_proposal_batch_is_refused() {
    let mut c = cluster();
    c.stabilize();
    let before = observe(c.node(1));
    let r = c.node_mut(1).raw.propose_batch(Vec::<Vec<u8>>::new());
    assert_eq!(r, Err(Error::Malformed("empty proposal batch")));
    assert_eq!(observe(c.node(1)), before);
}

#[test]
fn a_report_past_what_was_handed_out_is_refused() {
    let mut c = cluster();
    c.stabilize();
    let before = observe(c.node(2));
    assert_eq!(
        c.node_mut(2).raw.on_applied(LogIndex(9)),
        Err(Error::InvalidReport(
            "applied index past what was handed out"
        ))
    );
    assert_eq!(observe(c.node(2)), before);
}

const INDEX_LIMIT: Error = Error::Malformed("log index past LogIndex::LIMIT");
const TERM_LIMIT: Error = Error::Malformed("term past Term::LIMIT");
const TERM_PAST_SENDER: Error = Error::Malformed("a term in the body is past the message's term");

#[test]
fn an_append_anchored_at_u64_max_is_refused() {
    // Used to overflow `prev.index + 1` while checking the entries' shape
    // (a panic in debug builds), even with no entries.
    let mut c = cluster();
    let m = msg(1, 2, 2, append((2, u64::MAX), vec![], 3));
    refused(&mut c, 2, m, INDEX_LIMIT);
    let wrapped = msg(1, 2, 2, append((2, u64::MAX), vec![ent(0, 2)], 3));
    refused(&mut c, 2, wrapped, INDEX_LIMIT);
    let past = msg(1, 2, 2, append((2, 3), vec![], u64::MAX));
    refused(&mut c, 2, past, INDEX_LIMIT);
    // At the limit itself the append is well-formed: it does not match.
    let at = LogIndex::LIMIT.get();
    let m = msg(1, 2, 2, append((2, at), vec![ent(at + 1, 2)], at));
    assert_eq!(c.node_mut(2).raw.step(m), Err(INDEX_LIMIT));
    let m = msg(1, 2, 2, append((2, at - 1), vec![ent(at, 2)], at));
    c.node_mut(2).raw.step(m).unwrap();
    c.stabilize();
    assert_eq!(last_index(&c, 2), 3);
    assert_eq!(commit(&c, 2), 3);
}

#[test]
fn a_snapshot_at_u64_max_is_refused() {
    // Used to overflow `last_index + 1` when the log was restored from it.
    let mut c = cluster();
    let snap = |index: u64, term: u64| MessageBody::InstallSnapshot {
        meta: SnapshotMeta {
            last_index: LogIndex(index),
            last_term: Term(term),
            conf_state: ConfState::with_voters([1, 2, 3].map(NodeId)),
        },
    };
    refused(&mut c, 2, msg(1, 2, 2, snap(u64::MAX, 2)), INDEX_LIMIT);
    refused(&mut c, 2, msg(1, 2, 3, snap(u64::MAX, 2)), INDEX_LIMIT);
    // A snapshot of entries from a term the sender has not reached.
    refused(&mut c, 2, msg(1, 2, 2, snap(9, 3)), TERM_PAST_SENDER);
    // At the limit, it is installed and the node goes on.
    let at = LogIndex::LIMIT.get();
    c.node_mut(2).raw.step(msg(1, 2, 2, snap(at, 2))).unwrap();
    c.process_ready(NodeId(2));
    assert_eq!(commit(&c, 2), at);
    assert_eq!(last_index(&c, 2), at);
    let next = msg(1, 2, 2, append((2, at), vec![ent(at + 1, 2)], at + 1));
    assert_eq!(c.node_mut(2).raw.step(next), Err(INDEX_LIMIT));
    c.tick_all(30);
}

#[test]
fn a_rejection_hint_at_u64_max_is_refused() {
    // Used to overflow `hint + 1` in the leader's progress (Probe state).
    let mut c = cluster();
    c.stabilize();
    c.node_mut(1).raw.report_unreachable(NodeId(2));
    let reject = |rejected: u64, hint: (u64, u64)| MessageBody::AppendEntriesResponse {
        result: Err(AppendRejection {
            rejected: LogIndex(rejected),
            hint: EntryId::new(Term(hint.0), LogIndex(hint.1)),
        }),
    };
    refused(
        &mut c,
        1,
        msg(2, 1, 2, reject(3, (0, u64::MAX))),
        INDEX_LIMIT,
    );
    let err = Error::Malformed("rejection hint past the rejected index");
    refused(&mut c, 1, msg(2, 1, 2, reject(3, (0, 4))), err);
    let err = Error::Malformed("rejected index is past the leader's log");
    refused(&mut c, 1, msg(2, 1, 2, reject(4, (0, 4))), err.clone());
    refused(&mut c, 1, msg(2, 1, 2, reject(1_000, (2, 3))), err);
    refused(&mut c, 1, msg(2, 1, 2, reject(3, (3, 3))), TERM_PAST_SENDER);
    // A saturating hint is harmless to the progress itself.
    let mut p = dengine_core::tracker::Progress::new(LogIndex(5), 4, 0);
    assert!(p.maybe_decr_to(LogIndex(4), LogIndex(u64::MAX)));
    assert_eq!(p.next, LogIndex(4));
}

#[test]
fn a_term_past_the_limit_is_refused() {
    // A node that adopted term u64::MAX used to overflow `term + 1` at its
    // next election (a panic in debug builds, a term wrapped to 0 in
    // release ones).
    let mut c = cluster();
    let hb = MessageBody::Heartbeat {
        commit: LogIndex(3),
        read_round: 0,
    };
    refused(&mut c, 2, msg(1, 2, u64::MAX, hb.clone()), TERM_LIMIT);
    refused(&mut c, 2, msg(3, 2, Term::LIMIT.get() + 1, hb), TERM_LIMIT);
    let vote = |t: u64| MessageBody::RequestVote {
        pre_vote: false,
        last_log: EntryId::new(Term(t), LogIndex(3)),
        transfer: true,
    };
    refused(&mut c, 2, msg(3, 2, u64::MAX, vote(2)), TERM_LIMIT);
    refused(&mut c, 2, msg(3, 2, 4, vote(5)), TERM_PAST_SENDER);
    // At the limit, the term is taken; the leader learns it and steps
    // down, and no one campaigns past it: elections end there.
    c.node_mut(2)
        .raw
        .step(msg(3, 2, Term::LIMIT.get(), vote(2)))
        .unwrap();
    c.stabilize();
    assert_eq!(term(&c, 2), Term::LIMIT.get());
    c.tick_all(60);
    for id in 1..=3 {
        assert_eq!(term(&c, id), Term::LIMIT.get());
        assert_eq!(commit(&c, id), 3);
        assert_ne!(role(&c, id), Role::Leader);
    }
    // A leader at the limit (elected just before it) still works.
    let at = Term::LIMIT.get();
    let hb = MessageBody::Heartbeat {
        commit: LogIndex(3),
        read_round: 0,
    };
    c.node_mut(2).raw.step(msg(3, 2, at, hb)).unwrap();
    c.process_ready(NodeId(2));
    assert_eq!(leader_of(&c, 2), 3);
}

#[test]
fn a_node_at_term_u64_max_never_campaigns() {
    // Only a corrupt hard state gets a node there; it must not wrap its
    // term to 0 (and vote again in a term it voted in). It used to (a
    // panic in debug builds).
    let mut c = Cluster::new(3);
    c.node(3).storage.lock().hard_state.term = Term(u64::MAX);
    c.restart(3);
    for _ in 0..50 {
        c.tick(3);
    }
    assert_eq!(term(&c, 3), u64::MAX);
    assert_eq!(role(&c, 3), Role::Follower);
    c.node_mut(3).raw.campaign().unwrap();
    c.process_ready(NodeId(3));
    assert_eq!((term(&c, 3), role(&c, 3)), (u64::MAX, Role::Follower));
}

/// `LogIndex::LIMIT` (and `Term::LIMIT`, the same number).
const LIMIT: u64 = LogIndex::LIMIT.get();

/// Where the logs of [`Setup::NearLimit`] start: a snapshot just below
/// [`LIMIT`], so that their last index is `LIMIT - 4`.
const NEAR_LIMIT_BASE: u64 = LIMIT - 6;

/// Any `u64`, biased toward where arithmetic breaks and toward what the
/// nodes hold: small values (0, 1 and the nodes' own terms and indexes,
/// which are below 12 in most setups), the indexes of [`Setup::NearLimit`]
/// and the limits past them, and `u64::MAX` and its neighbours.
fn arb_num() -> impl Strategy<Value = u64> {
    assert_eq!(LIMIT, Term::LIMIT.get());
    prop_oneof![
        8 => 0u64..12,
        2 => NEAR_LIMIT_BASE - 2..=LIMIT + 2,
        1 => u64::MAX - 2..=u64::MAX,
        2 => any::<u64>(),
    ]
}

/// A log index close to what some setup's logs end at: small, or just
/// below the limit.
fn arb_near_index() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..8, NEAR_LIMIT_BASE - 1..=LIMIT]
}

/// A term for an entry: `None` is the term of the message carrying it (so
/// that well-formed appends are frequent), `Some` anything.
fn arb_entry_term() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![1 => Just(None), 1 => arb_num().prop_map(Some)]
}

/// The body of a message in term `term`, every number drawn from the whole
/// `u64` range.
fn arb_body(term: u64) -> impl Strategy<Value = MessageBody> {
    let id = |t: u64, i: u64| EntryId::new(Term(t), LogIndex(i));
    prop_oneof![
        1 => (any::<bool>(), arb_num(), arb_num(), any::<bool>()).prop_map(move |(p, t, i, tr)| {
            MessageBody::RequestVote {
                pre_vote: p,
                last_log: id(t, i),
                transfer: tr,
            }
        }),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(p, g)| MessageBody::RequestVoteResponse {
            pre_vote: p,
            granted: g
        }),
        3 => (
            arb_num(),
            arb_num(),
            prop::collection::vec(arb_entry_term(), 0..4),
            arb_num(),
            any::<bool>()
        )
            .prop_map(move |(pt, start, ts, commit, follow)| {
                // Indexes follow on from `prev` (or start at it, which is
                // malformed), wrapping past u64::MAX as they come.
                let first = if follow { start.wrapping_add(1) } else { start };
                let entries = ts
                    .iter()
                    .enumerate()
                    .map(|(k, t)| Entry {
                        term: Term(t.unwrap_or(term)),
                        index: LogIndex(first.wrapping_add(k as u64)),
                        payload: EntryPayload::Normal(vec![k as u8].into()),
                    })
                    .collect();
                MessageBody::AppendEntries {
                    prev: id(pt, start),
                    entries,
                    commit: LogIndex(commit),
                }
            }),
        // Appends anchored where the logs are, with entries of the
        // message's term and any commit index: often accepted.
        3 => (
            0u64..4,
            arb_near_index(),
            0usize..4,
            prop_oneof![arb_num(), arb_near_index()],
        )
            .prop_map(move |(pt, start, n, commit)| MessageBody::AppendEntries {
                prev: id(pt.min(term), start),
                entries: (0..n as u64)
                    .map(|k| Entry {
                        term: Term(term),
                        index: LogIndex(start.wrapping_add(1 + k)),
                        payload: EntryPayload::Normal(vec![k as u8, 0xA].into()),
                    })
                    .collect(),
                commit: LogIndex(commit),
            }),
        2 => (arb_num(), any::<bool>(), arb_num(), arb_num()).prop_map(move |(i, ok, t, h)| {
            MessageBody::AppendEntriesResponse {
                result: if ok {
                    Ok(LogIndex(i))
                } else {
                    Err(AppendRejection {
                        rejected: LogIndex(i),
                        hint: id(t, h),
                    })
                },
            }
        }),
        1 => (arb_num(), arb_num()).prop_map(|(c, r)| MessageBody::Heartbeat {
            commit: LogIndex(c),
            read_round: r,
        }),
        1 => arb_num().prop_map(|r| MessageBody::HeartbeatResponse { read_round: r }),
        1 => (
            arb_num(),
            prop_oneof![Just(term), arb_num()],
            prop::collection::btree_set(0u64..5, 0..4)
        )
            .prop_map(|(i, t, voters)| MessageBody::InstallSnapshot {
                meta: SnapshotMeta {
                    last_index: LogIndex(i),
                    last_term: Term(t),
                    conf_state: ConfState::with_voters(voters.into_iter().map(NodeId)),
                },
            }),
        1 => Just(MessageBody::TimeoutNow),
        1 => arb_num().prop_map(|i| MessageBody::ReadIndex { id: ReadId(i) }),
        1 => (arb_num(), proptest::option::of(arb_num())).prop_map(|(i, x)| {
            MessageBody::ReadIndexResponse {
                id: ReadId(i),
                index: x.map(LogIndex),
            }
        }),
    ]
}

fn arb_message() -> impl Strategy<Value = Message> {
    // The sender is mostly another member; sometimes node 0, the recipient
    // itself or a stranger (4).
    let sender = prop_oneof![
        8 => Just(None),
        1 => (0u64..2).prop_map(Some),
        1 => Just(Some(4)),
    ];
    (sender, 1u64..=3, any::<bool>(), arb_num()).prop_flat_map(|(from, to, other, term)| {
        let from = match from {
            None => (to - 1 + if other { 1 } else { 2 }) % 3 + 1,
            Some(1) => to,
            Some(f) => f,
        };
        arb_body(term).prop_map(move |body| Message {
            from: NodeId(from),
            to: NodeId(to),
            term: Term(term),
            body,
        })
    })
}

/// A message whose numbers are taken relative to its recipient's state
/// when it is stepped (see [`Anchored::resolve`]), so that it is often
/// plausible: appends that match, acknowledgements within the log,
/// snapshots just past it. Only its commit index may come from anywhere.
#[derive(Clone, Debug)]
struct Anchored {
    to: u64,
    /// Which of the other two members sends it.
    other: bool,
    /// Added to the recipient's term.
    term_up: u64,
    /// How far below the recipient's last index it is anchored.
    back: u64,
    /// Entries carried, or an offset, depending on `kind`.
    n: u64,
    /// `None`: a plausible commit index; `Some`: any.
    commit: Option<u64>,
    kind: u8,
}

impl Anchored {
    fn resolve(&self, c: &Cluster) -> Message {
        let node = c.node(self.to);
        let st = node.status();
        let term = st.hard_state.term.get().saturating_add(self.term_up);
        let last = st.last_index.get();
        let at = last.saturating_sub(self.back);
        let at_term = node.raw.log_term(LogIndex(at)).map_or(0, |t| t.get());
        let id = |t: u64, i: u64| EntryId::new(Term(t), LogIndex(i));
        let body = match self.kind % 4 {
            0 => MessageBody::AppendEntries {
                prev: id(at_term, at),
                entries: (1..=self.n)
                    .map(|k| Entry {
                        term: Term(term),
                        index: LogIndex(at.saturating_add(k)),
                        payload: EntryPayload::Normal(vec![k as u8, 0xB].into()),
                    })
                    .collect(),
                commit: LogIndex(self.commit.unwrap_or(at.saturating_add(self.n))),
            },
            1 => MessageBody::Heartbeat {
                commit: LogIndex(self.commit.unwrap_or(last)),
                read_round: self.n,
            },
            2 if self.n.is_multiple_of(2) => MessageBody::AppendEntriesResponse {
                result: Ok(LogIndex(at)),
            },
            2 => MessageBody::AppendEntriesResponse {
                result: Err(AppendRejection {
                    rejected: LogIndex(at),
                    hint: id(at_term, at.saturating_sub(self.n)),
                }),
            },
            _ => MessageBody::InstallSnapshot {
                meta: SnapshotMeta {
                    last_index: LogIndex(self.commit.unwrap_or(last.saturating_add(self.n))),
                    last_term: Term(term),
                    conf_state: ConfState::with_voters([1, 2, 3].map(NodeId)),
                },
            },
        };
        let from = (self.to - 1 + if self.other { 1 } else { 2 }) % 3 + 1;
        msg(from, self.to, term, body)
    }
}

fn arb_anchored() -> impl Strategy<Value = Anchored> {
    (
        1u64..=3,
        any::<bool>(),
        prop_oneof![3 => Just(0u64), 1 => 1u64..3],
        0u64..4,
        0u64..4,
        proptest::option::of(arb_num()),
        any::<u8>(),
    )
        .prop_map(|(to, other, term_up, back, n, commit, kind)| Anchored {
            to,
            other,
            term_up,
            back,
            n,
            commit,
            kind,
        })
}

/// What happens to the cluster next.
#[derive(Clone, Debug)]
enum Action {
    /// A message, well-formed or not, stepped into its recipient.
    Step(Message),
    /// A message built against its recipient's state, then stepped.
    Anchored(Anchored),
    /// Ticks of one node (enough of them start an election).
    Tick(u64, u32),
    /// The messages the nodes sent so far are delivered (one hop).
    Deliver,
}

fn arb_action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => arb_message().prop_map(Action::Step),
        3 => arb_anchored().prop_map(Action::Anchored),
        1 => (1u64..=3, 1u32..25).prop_map(|(id, n)| Action::Tick(id, n)),
        1 => Just(Action::Deliver),
    ]
}

/// Where the nodes stand when the messages start arriving, so that each
/// role meets them: node 1 leads term 2 with "a" committed at index 3.
#[derive(Clone, Copy, Debug)]
enum Setup {
    /// Nodes 2 and 3 follow, up to date.
    Steady,
    /// Node 3 missed two entries (the leader probes or streams to it).
    Lagging,
    /// Node 3 asks for pre-votes.
    PreCandidate,
    /// Node 3 asks for votes in term 3 (pre-vote is off).
    Candidate,
    /// Like `Steady`, but every log starts after a snapshot at
    /// [`NEAR_LIMIT_BASE`]: "a" is committed at `LIMIT - 4`.
    NearLimit,
}

fn arb_setup() -> impl Strategy<Value = Setup> {
    prop_oneof![
        Just(Setup::Steady),
        Just(Setup::Lagging),
        Just(Setup::PreCandidate),
        Just(Setup::Candidate),
        Just(Setup::NearLimit),
    ]
}

/// Three nodes whose logs start after a snapshot at `base` (term 1), node
/// 1 leading term 2 with "a" committed at `base + 2`.
fn cluster_from_snapshot(base: u64) -> Cluster {
    let mut c = Cluster::new(3);
    for id in 1..=3 {
        {
            let mut s = c.node(id).storage.lock();
            let meta = SnapshotMeta {
                last_index: LogIndex(base),
                last_term: Term(1),
                conf_state: ConfState::with_voters([1, 2, 3].map(NodeId)),
            };
            s.install_snapshot(meta, Vec::new());
            s.conf_state = s.snapshot.conf_state.clone();
        }
        c.restart(id);
    }
    c.elect(1);
    c.propose(1, b"a").unwrap();
    c.stabilize();
    assert_eq!(commit(&c, 2), base + 2);
    c
}

fn set_up(setup: Setup) -> Cluster {
    let mut c = match setup {
        Setup::Candidate => {
            let mut c = Cluster::with_config(3, |cfg| cfg.pre_vote = false);
            c.elect(1);
            c.propose(1, b"a").unwrap();
            c.stabilize();
            c
        }
        Setup::NearLimit => cluster_from_snapshot(NEAR_LIMIT_BASE),
        _ => cluster(),
    };
    match setup {
        Setup::Steady | Setup::NearLimit => {}
        Setup::Lagging => {
            c.isolate(3);
            c.propose(1, b"b").unwrap();
            c.propose(1, b"c").unwrap();
            c.stabilize();
            c.heal();
            assert_eq!((last_index(&c, 1), last_index(&c, 3)), (5, 3));
        }
        Setup::PreCandidate | Setup::Candidate => {
            c.node_mut(3).raw.campaign().unwrap();
            c.process_ready(NodeId(3));
            let want = match setup {
                Setup::PreCandidate => Role::PreCandidate,
                _ => Role::Candidate,
            };
            assert_eq!(role(&c, 3), want);
        }
    }
    assert_eq!(role(&c, 1), Role::Leader);
    c
}

/// What the invariants compare across an action, per node.
struct Before {
    term: u64,
    vote: u64,
    commit: u64,
    /// `(index, term)` of the committed entries in storage.
    committed: Vec<(u64, u64)>,
}

fn before(c: &Cluster, id: u64) -> Before {
    let n = c.node(id);
    let hs = n.status().hard_state;
    let committed = n
        .storage
        .lock()
        .entries
        .iter()
        .filter(|e| e.index <= hs.commit)
        .map(|e| (e.index.0, e.term.0))
        .collect();
    Before {
        term: hs.term.0,
        vote: hs.vote.0,
        commit: hs.commit.0,
        committed,
    }
}

/// The invariants every node keeps whatever it is sent: its term and
/// commit index never go down, it never changes its vote within a term,
/// its commit index is within its log, a committed entry never changes
/// (it may only be compacted into a snapshot), and as a leader its view
/// of each follower stays within its log (`matched < next`,
/// `matched <= last`).
fn check_invariants(c: &Cluster, id: u64, b: &Before) -> Result<(), TestCaseError> {
    let n = c.node(id);
    let st = n.status();
    let hs = st.hard_state;
    prop_assert!(hs.term.0 >= b.term, "node {id}: term went down");
    prop_assert!(hs.commit.0 >= b.commit, "node {id}: commit went down");
    if hs.term.0 == b.term && b.vote != 0 {
        prop_assert_eq!(hs.vote.0, b.vote, "node {} voted twice in a term", id);
    }
    prop_assert!(hs.commit <= st.last_index, "node {id}: commit past its log");
    for &(i, t) in &b.committed {
        match n.raw.log_term(LogIndex(i)) {
            Ok(now) => prop_assert_eq!(now.0, t, "node {}: committed entry {} changed", id, i),
            Err(Error::Storage(StorageError::Compacted(_))) => {}
            Err(e) => prop_assert!(false, "node {id}: committed entry {i} lost: {e}"),
        }
    }
    for (peer, p) in &st.progress {
        prop_assert!(p.matched < p.next, "node {id}: progress of {peer}: {p:?}");
        prop_assert!(
            p.matched <= st.last_index,
            "node {id}: {peer} matched past the log"
        );
    }
    Ok(())
}

fn check_all(c: &Cluster, before: &[Before]) -> Result<(), TestCaseError> {
    for (id, b) in (1..=3).zip(before) {
        check_invariants(c, id, b)?;
    }
    Ok(())
}

/// Log matching for an accepted append: if node `id` acknowledged `m` (an
/// append) as matching up to its last entry, it holds `prev` (unless
/// compacted) and every entry of it.
fn check_accepted_append(
    c: &Cluster,
    id: u64,
    m: &Message,
    sent: &[Message],
    commit_before: u64,
) -> Result<(), TestCaseError> {
    let MessageBody::AppendEntries { prev, entries, .. } = &m.body else {
        return Ok(());
    };
    let Some(last) = prev.index.get().checked_add(entries.len() as u64) else {
        return Ok(());
    };
    let acked = sent.iter().any(|r| {
        r.from == NodeId(id)
            && r.to == m.from
            && r.body
                == MessageBody::AppendEntriesResponse {
                    result: Ok(LogIndex(last)),
                }
    });
    if !acked || prev.index.get() < commit_before {
        // Not accepted, or answered with the commit index alone.
        return Ok(());
    }
    let n = &c.node(id).raw;
    match n.log_term(prev.index) {
        Ok(t) => prop_assert_eq!(t, prev.term, "node {}: acked {:?} without prev", id, m),
        Err(Error::Storage(StorageError::Compacted(_))) => {}
        Err(e) => prop_assert!(false, "node {id}: acked {m:?}, prev: {e}"),
    }
    for e in entries {
        prop_assert_eq!(
            n.log_term(e.index).ok(),
            Some(e.term),
            "node {}: acked {:?} without entry {}",
            id,
            m,
            e.index
        );
    }
    Ok(())
}

/// Cases for the property below: `PROPTEST_CASES` if set (run it with
/// 20,000 or more to be thorough), else a number that keeps CI's debug
/// run quick.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Arbitrary messages, well-formed or not, from members and strangers,
    /// of any term and with any numbers (the whole `u64` range, edges
    /// first), to leaders, followers, pre-candidates and candidates, mixed
    /// with ticks and deliveries: stepping them never panics, an error is
    /// never fatal, a refused message changes nothing, the `Ready`s that
    /// follow can be carried out, and the invariants of
    /// [`check_invariants`] and [`check_accepted_append`] hold after each.
    #[test]
    fn arbitrary_messages_never_panic_and_refusals_change_nothing(
        setup in arb_setup(),
        actions in prop::collection::vec(arb_action(), 1..40),
    ) {
        let mut c = set_up(setup);
        for a in actions {
            let b: Vec<Before> = (1..=3).map(|id| before(&c, id)).collect();
            let m = match &a {
                Action::Step(m) => m.clone(),
                Action::Anchored(x) => x.resolve(&c),
                Action::Tick(id, n) => {
                    for _ in 0..*n {
                        c.tick(*id);
                    }
                    process_all(&mut c);
                    check_all(&c, &b)?;
                    continue;
                }
                Action::Deliver => {
                    c.deliver_all();
                    process_all(&mut c);
                    check_all(&c, &b)?;
                    continue;
                }
            };
            let id = m.to.0;
            let observed = observe(c.node(id));
            let r = c.node_mut(id).raw.step(m.clone());
            if let Err(e) = &r {
                prop_assert!(e.is_retryable(), "{m:?}: fatal error {e}");
                prop_assert_eq!(observe(c.node(id)), observed, "{:?} refused with {}", m, e);
            }
            let sent_from = c.sent_log.len();
            c.process_ready(NodeId(id));
            if r.is_ok() {
                let sent = &c.sent_log[sent_from..];
                check_accepted_append(&c, id, &m, sent, b[id as usize - 1].commit)?;
            }
            process_all(&mut c);
            check_all(&c, &b)?;
        }
    }
}

//! Bad input: messages and calls that break the protocol are refused with a
//! typed error and change nothing; stale messages are dropped; nothing
//! panics, whatever arrives.

mod scenario_support;

use dengine_core::testing::{Cluster, TestNode};
use dengine_core::{
    AppendRejection, ConfState, Entry, EntryId, EntryPayload, Error, HardState, LogIndex, Message,
    MessageBody, NodeId, ReadId, Role, SnapshotMeta, Status, Term,
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
        payload: EntryPayload::Normal(vec![index as u8]),
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

fn arb_entries() -> impl Strategy<Value = (u64, Vec<u64>)> {
    // A start index and terms; indexes follow on from the start.
    (0u64..8, prop::collection::vec(0u64..5, 0..4))
}

fn arb_body() -> impl Strategy<Value = MessageBody> {
    let id = |t: u64, i: u64| EntryId::new(Term(t), LogIndex(i));
    prop_oneof![
        (any::<bool>(), 0u64..5, 0u64..8, any::<bool>()).prop_map(move |(p, t, i, tr)| {
            MessageBody::RequestVote {
                pre_vote: p,
                last_log: id(t, i),
                transfer: tr,
            }
        }),
        (any::<bool>(), any::<bool>()).prop_map(|(p, g)| MessageBody::RequestVoteResponse {
            pre_vote: p,
            granted: g
        }),
        (0u64..5, arb_entries(), 0u64..10, any::<bool>()).prop_map(
            move |(pt, (start, ts), commit, follow)| {
                let entries = ts
                    .iter()
                    .enumerate()
                    .map(|(k, &t)| {
                        let i = if follow {
                            start + 1 + k as u64
                        } else {
                            start + k as u64
                        };
                        Entry {
                            term: Term(t),
                            index: LogIndex(i),
                            payload: EntryPayload::Normal(vec![k as u8]),
                        }
                    })
                    .collect();
                MessageBody::AppendEntries {
                    prev: id(pt, start),
                    entries,
                    commit: LogIndex(commit),
                }
            }
        ),
        (0u64..10, any::<bool>(), 0u64..5, 0u64..10).prop_map(move |(i, ok, t, h)| {
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
        (0u64..10, 0u64..3).prop_map(|(c, r)| MessageBody::Heartbeat {
            commit: LogIndex(c),
            read_round: r,
        }),
        (0u64..3).prop_map(|r| MessageBody::HeartbeatResponse { read_round: r }),
        (
            0u64..10,
            0u64..5,
            prop::collection::btree_set(0u64..5, 0..3)
        )
            .prop_map(|(i, t, voters)| MessageBody::InstallSnapshot {
                meta: SnapshotMeta {
                    last_index: LogIndex(i),
                    last_term: Term(t),
                    conf_state: ConfState::with_voters(voters.into_iter().map(NodeId)),
                },
            }),
        Just(MessageBody::TimeoutNow),
        (0u64..3).prop_map(|i| MessageBody::ReadIndex { id: ReadId(i) }),
        (0u64..3, proptest::option::of(0u64..10)).prop_map(|(i, x)| {
            MessageBody::ReadIndexResponse {
                id: ReadId(i),
                index: x.map(LogIndex),
            }
        }),
    ]
}

fn arb_message() -> impl Strategy<Value = Message> {
    (0u64..5, 1u64..=3, 0u64..5, arb_body()).prop_map(|(from, to, term, body)| Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(term),
        body,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Arbitrary messages, well-formed or not, from members and strangers,
    /// of any term: stepping them never panics, the `Ready`s that follow
    /// can be carried out, and a refused message changes nothing.
    #[test]
    fn arbitrary_messages_never_panic_and_refusals_change_nothing(
        msgs in prop::collection::vec(arb_message(), 1..40),
    ) {
        let mut c = cluster();
        for m in msgs {
            let id = m.to.0;
            let before = observe(c.node(id));
            let r = c.node_mut(id).raw.step(m.clone());
            if let Err(e) = r {
                prop_assert!(e.is_retryable(), "{m:?}: fatal error {e}");
                prop_assert_eq!(observe(c.node(id)), before, "{:?} refused with {}", m, e);
            }
            c.process_ready(NodeId(id));
        }
    }
}

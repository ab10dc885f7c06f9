//! Commit rules (Raft §5.3, §5.4): a leader commits only with a quorum,
//! only by counting entries of its own term (Figure 8), with a no-op on
//! election; and leader completeness (§5.4.1).

mod scenario_support;

use std::collections::BTreeSet;

use dengine_core::testing::{Cluster, Envelope};
use dengine_core::{Message, MessageBody, NodeId, Role, Term};
use scenario_support::*;

/// No pre-vote and no check-quorum, so that hand-made elections go through
/// at once; one entry per append, so that deliveries can be split.
fn hand_stepped(n: u64) -> Cluster {
    Cluster::with_config(n, |cfg| {
        cfg.pre_vote = false;
        cfg.check_quorum = false;
        cfg.max_msg_bytes = 1;
    })
}

fn carries_term(m: &Message, t: u64) -> bool {
    matches!(&m.body, MessageBody::AppendEntries { entries, .. }
        if entries.iter().any(|e| e.term == Term(t)))
}

/// Runs the cluster, letting appends from `leader` to `to` through only
/// while `to`'s log ends before `index`; returns the first held append that
/// would have given `to` an entry of `term`.
fn replicate_up_to(c: &mut Cluster, leader: u64, to: u64, index: u64, term: u64) -> Envelope {
    loop {
        let held = stabilize_holding(c, |m| between(m, leader, to) && is_entry_append(m));
        assert!(!held.is_empty(), "the leader stopped sending to {to}");
        for env in held {
            if last_index(c, to) < index {
                c.deliver(env).unwrap();
            } else if carries_term(&env.msg, term) {
                return env;
            }
        }
    }
}

fn vote_answers_to(c: &Cluster, to: u64, granted: bool) -> BTreeSet<u64> {
    c.sent_log
        .iter()
        .filter(|m| m.to == NodeId(to))
        .filter(|m| {
            m.body
                == MessageBody::RequestVoteResponse {
                    pre_vote: false,
                    granted,
                }
        })
        .map(|m| m.from.0)
        .collect()
}

#[test]
fn a_partitioned_old_leader_accepts_proposals_but_never_commits_them() {
    let mut c = Cluster::new(5);
    c.elect(1);
    c.propose(1, b"a").unwrap();
    c.stabilize();
    assert_eq!(commit(&c, 1), 3);

    c.partition(&[&[1, 2], &[3, 4, 5]]);
    for (i, d) in ["x1", "x2", "x3"].iter().enumerate() {
        assert_eq!(c.propose(1, d.as_bytes()).unwrap().0, 4 + i as u64);
    }
    c.stabilize();
    assert_eq!(last_index(&c, 2), 6, "the minority follower stores them");
    for _ in 0..60 {
        c.tick_all(1);
        assert_eq!(commit(&c, 1), 3, "2 of 5 can never commit");
        assert_eq!(commit(&c, 2), 3);
    }
    let new = c.leader().expect("the majority elected a leader").0;
    assert!([3, 4, 5].contains(&new));
    assert!(term(&c, new) > 2);
    assert_ne!(role(&c, 1), Role::Leader, "check-quorum deposed node 1");
    c.propose(new, b"y").unwrap();
    c.stabilize();

    c.heal();
    c.tick_all(5);
    // The new leader's log (a, its no-op, y) overwrote x1..x3 everywhere.
    let expected = terms(&c, new, 1, 5);
    assert_eq!(expected[3..], [term(&c, new), term(&c, new)]);
    for id in 1..=5 {
        assert_eq!(last_index(&c, id), 5, "node {id}");
        assert_eq!(terms(&c, id, 1, 5), expected, "node {id}");
        assert_eq!(commit(&c, id), 5, "node {id}");
        assert_eq!(
            c.node(id).applied_data(),
            vec![b"a".to_vec(), b"y".to_vec()],
            "node {id}"
        );
    }
    c.check_state_machine_safety();
}

/// Raft paper, Figure 8, steps (a)-(c), shifted by our bootstrap entry and
/// first no-op (indexes 1 and 2, committed everywhere). Returns the cluster
/// with node 1 leading term 4 and holding the append that would give node 3
/// the term-4 no-op at index 4.
fn figure_8_up_to_c() -> (Cluster, Envelope) {
    let mut c = hand_stepped(5);
    c.elect(1);
    assert_eq!(commit(&c, 1), 2);

    // (a) S1 leads term 2 and replicates "x" (index 3) to S2 only.
    c.partition(&[&[1, 2], &[3, 4, 5]]);
    assert_eq!(c.propose(1, b"x").unwrap().0, 3);
    c.stabilize();
    assert_eq!(terms(&c, 2, 3, 3), vec![2]);
    assert_eq!(commit(&c, 1), 2);

    // (b) S1 crashes; S5 wins term 3 with S3 and S4 and appends its no-op
    // (index 3) and "y" (index 4) alone.
    c.crash(1);
    run_election_only(&mut c, 5);
    assert_eq!((role(&c, 5), term(&c, 5)), (Role::Leader, 3));
    c.isolate(5);
    assert_eq!(c.propose(5, b"y").unwrap().0, 4);
    c.stabilize();
    c.crash(5);

    // (c) S1 restarts and wins term 4 (term 3's votes went to S5).
    c.heal();
    c.restart(1);
    c.campaign(1);
    assert_eq!((role(&c, 1), term(&c, 1)), (Role::Candidate, 3));
    run_election_only(&mut c, 1);
    assert_eq!((role(&c, 1), term(&c, 1)), (Role::Leader, 4));
    // S4 voted but gets nothing more; S3 gets "x" and not the no-op.
    c.isolate(4);
    let held = replicate_up_to(&mut c, 1, 3, 3, 4);
    (c, held)
}

#[test]
fn figure_8_an_old_term_entry_on_a_majority_is_not_committed() {
    let (mut c, _held) = figure_8_up_to_c();
    // "x" (term 2, index 3) is stored on S1, S2 and S3: a majority of five.
    for id in 1..=3 {
        assert_eq!(terms(&c, id, 3, 3), vec![2], "node {id}");
    }
    assert_eq!(c.node(1).status().progress[&NodeId(3)].matched.0, 3);
    // Counting replicas of an earlier term's entry must not commit it.
    assert_eq!(commit(&c, 1), 2);
    assert!(c.node(1).applied_data().is_empty());

    // (d) S1 crashes; S5 wins term 5 with S3 and S4 (its last entry, of
    // term 3, is newer than theirs) and overwrites index 3 everywhere.
    c.crash(1);
    c.heal();
    c.restart(5);
    c.campaign(5); // term 4: everyone voted for S1
    assert_eq!(role(&c, 5), Role::Follower);
    c.elect(5);
    assert_eq!(term(&c, 5), 5);
    c.restart(1);
    c.tick_all(2);
    for id in 1..=5 {
        assert_eq!(terms(&c, id, 1, 5), vec![1, 2, 3, 3, 5], "node {id}");
        assert_eq!(commit(&c, id), 5, "node {id}");
        assert_eq!(applied(&c, id), vec![(4, b"y".to_vec())], "node {id}");
    }
    c.check_state_machine_safety();
}

#[test]
fn figure_8_a_current_term_entry_commits_the_earlier_ones_with_it() {
    let (mut c, held) = figure_8_up_to_c();
    // (e) S3 also gets the term-4 no-op: now index 4 is on a majority and
    // committing it commits "x" at index 3 too.
    c.deliver(held.clone()).unwrap();
    c.process_ready(NodeId(3));
    let acks = c.take_msgs(|m| between(m, 3, 1));
    assert_eq!(acks.len(), 1);
    c.deliver(acks[0].clone()).unwrap();
    c.process_ready(NodeId(1));
    assert_eq!(commit(&c, 1), 4);
    assert_eq!(applied(&c, 1), vec![(3, b"x".to_vec())]);
    c.stabilize();

    // S5 is now missing a committed entry: it cannot win an election.
    c.heal();
    c.restart(5);
    c.campaign(5); // term 4
    c.campaign(5); // term 5
    assert_eq!(role(&c, 5), Role::Follower, "three refusals: lost");
    assert_eq!(term(&c, 5), 5);
    let refused = vote_answers_to(&c, 5, false);
    assert!(
        [1, 2, 3].iter().all(|id| refused.contains(id)),
        "the holders of index 4 refused: {refused:?}"
    );
    c.elect(1);
    c.stabilize();
    for id in 1..=5 {
        assert_eq!(terms(&c, id, 3, 4), vec![2, 4], "node {id}");
        assert_eq!(applied(&c, id), vec![(3, b"x".to_vec())], "node {id}");
    }
    c.check_state_machine_safety();
}

#[test]
fn a_new_leader_commits_its_no_op_and_with_it_the_earlier_entries() {
    let mut c = hand_stepped(3);
    c.elect(1);
    // "a" (term 2, index 3) reaches node 2 only, then node 1 crashes.
    c.propose(1, b"a").unwrap();
    c.process_ready(NodeId(1));
    let to_2 = c.take_msgs(|m| between(m, 1, 2) && is_entry_append(m));
    c.deliver(to_2[0].clone()).unwrap();
    c.process_ready(NodeId(2));
    c.crash(1);
    assert_eq!((last_index(&c, 2), commit(&c, 2)), (3, 2));

    run_election_only(&mut c, 2);
    assert_eq!((role(&c, 2), term(&c, 2)), (Role::Leader, 3));
    let held = replicate_up_to(&mut c, 2, 3, 3, 3);
    // "a" is on nodes 2 and 3, a majority, but it is of term 2.
    assert_eq!(terms(&c, 3, 3, 3), vec![2]);
    assert_eq!(c.node(2).status().progress[&NodeId(3)].matched.0, 3);
    assert_eq!(commit(&c, 2), 2);

    // The no-op of term 3 at index 4 commits, and index 3 with it, without
    // any new proposal.
    c.deliver(held).unwrap();
    c.stabilize();
    for id in [2, 3] {
        assert_eq!(terms(&c, id, 3, 4), vec![2, 3], "node {id}");
        assert_eq!(commit(&c, id), 4, "node {id}");
        assert_eq!(applied(&c, id), vec![(3, b"a".to_vec())], "node {id}");
    }
}

#[test]
fn leader_completeness_a_node_missing_committed_entries_is_refused_votes() {
    let mut c = Cluster::with_config(3, |cfg| {
        cfg.pre_vote = false;
        cfg.check_quorum = false;
    });
    c.elect(1);
    c.crash(3);
    c.propose(1, b"a").unwrap();
    c.stabilize();
    assert_eq!(commit(&c, 1), 3);
    c.restart(3);
    assert_eq!(last_index(&c, 3), 2);

    // Node 3 stands for term 3 before hearing from the leader.
    c.campaign(3);
    assert_eq!(vote_answers_to(&c, 3, false), BTreeSet::from([1, 2]));
    assert_eq!(vote_answers_to(&c, 3, true), BTreeSet::new());
    assert_eq!(role(&c, 3), Role::Follower, "lost the election");
    assert_eq!(term(&c, 3), 3);
    assert_eq!(c.leader(), None, "the higher term deposed node 1");

    // A node holding the committed entry wins, and node 3 gets it.
    c.elect(1);
    c.stabilize();
    assert_eq!(applied(&c, 3), vec![(3, b"a".to_vec())]);
    c.check_state_machine_safety();
}

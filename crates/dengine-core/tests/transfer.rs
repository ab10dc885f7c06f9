//! Leadership transfer (thesis §3.10): the leader stops taking proposals,
//! brings the target up to date, then sends TimeoutNow; the target
//! campaigns at once and voters grant it even while they hear from the
//! leader. A transfer that cannot finish is abandoned after a timeout.

use dengine_core::testing::{Cluster, Envelope};
use dengine_core::{
    ConfChange, ConfChangeStep, ConfChangeTransition, Error, LogIndex, Message, MessageBody,
    NodeId, Role, Term,
};

fn role(c: &Cluster, id: u64) -> Role {
    c.node(id).status().soft_state.role
}

fn term(c: &Cluster, id: u64) -> Term {
    c.node(id).status().hard_state.term
}

fn transfer(c: &mut Cluster, from: u64, to: u64) -> Result<(), Error> {
    c.node_mut(from).raw.transfer_leader(NodeId(to))
}

fn position(log: &[Message], pred: impl Fn(&Message) -> bool) -> Option<usize> {
    log.iter().position(pred)
}

fn is_timeout_now_to(to: u64) -> impl Fn(&Message) -> bool {
    move |m| m.to == NodeId(to) && m.body == MessageBody::TimeoutNow
}

/// Three nodes led by 1, with node 3 missing the last `k` entries.
fn cluster_with_lagging_3(k: u64) -> Cluster {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.partition(&[&[1, 2], &[3]]);
    for i in 0..k {
        c.propose(1, format!("e{i}").as_bytes()).unwrap();
        c.stabilize();
    }
    c.heal();
    c
}

#[test]
fn transfer_to_an_up_to_date_follower() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, b"a").unwrap();
    c.stabilize();
    let t = term(&c, 1);
    let mark = c.sent_log.len();
    transfer(&mut c, 1, 2).unwrap();
    c.stabilize();

    assert_eq!(
        position(&c.sent_log[mark..], is_timeout_now_to(2)),
        Some(0),
        "node 2 has everything: TimeoutNow is the first thing sent"
    );
    assert_eq!(role(&c, 2), Role::Leader);
    assert_eq!(term(&c, 2), Term(t.0 + 1));
    assert_eq!(role(&c, 1), Role::Follower);
    assert_eq!(c.node(1).status().soft_state.leader, NodeId(2));
    assert_eq!(c.node(1).status().transfer_target, None);
    // The transfer campaign skips pre-vote.
    assert!(!c.sent_log[mark..].iter().any(|m| m.from == NodeId(2)
        && matches!(m.body, MessageBody::RequestVote { pre_vote: true, .. })));

    // The new leader works.
    c.propose(2, b"b").unwrap();
    c.stabilize();
    for id in 1..=3 {
        assert_eq!(
            c.node(id).applied_data(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
    }
}

#[test]
fn transfer_to_a_lagging_follower_first_catches_it_up() {
    let mut c = cluster_with_lagging_3(3);
    let last = c.node(1).status().last_index;
    assert_eq!(last, LogIndex(5));
    assert_eq!(c.node(3).status().last_index, LogIndex(2));
    let mark = c.sent_log.len();

    transfer(&mut c, 1, 3).unwrap();
    c.process_ready(NodeId(1));
    assert!(
        !c.queue.iter().any(|e| is_timeout_now_to(3)(&e.msg)),
        "not before node 3 has the whole log"
    );
    c.stabilize();

    let log = &c.sent_log[mark..];
    let caught_up = position(log, |m| {
        m.from == NodeId(3) && m.body == MessageBody::AppendEntriesResponse { result: Ok(last) }
    })
    .expect("node 3 acknowledged the whole log");
    let timeout_now = position(log, is_timeout_now_to(3)).expect("TimeoutNow sent");
    assert!(caught_up < timeout_now);
    assert_eq!(role(&c, 3), Role::Leader);
    assert_eq!(c.node(3).applied_data(), c.node(1).applied_data());
    assert_eq!(c.node(3).applied_data().len(), 3);
}

#[test]
fn proposals_are_refused_while_a_transfer_is_in_progress() {
    let mut c = cluster_with_lagging_3(3);
    transfer(&mut c, 1, 3).unwrap();
    assert_eq!(c.node(1).status().transfer_target, Some(NodeId(3)));
    assert_eq!(
        c.propose(1, b"x"),
        Err(Error::TransferInProgress(NodeId(3)))
    );
    assert_eq!(
        c.node_mut(1).raw.propose_conf_change(ConfChange {
            transition: ConfChangeTransition::Auto,
            steps: vec![ConfChangeStep::Remove(NodeId(2))],
            context: Vec::new(),
        }),
        Err(Error::TransferInProgress(NodeId(3)))
    );
    // Asking again for the same target changes nothing.
    transfer(&mut c, 1, 3).unwrap();
    c.stabilize();
    assert_eq!(role(&c, 3), Role::Leader);
    assert_eq!(
        c.propose(1, b"x"),
        Err(Error::NotLeader {
            leader: Some(NodeId(3))
        })
    );
}

#[test]
fn transfer_targets_must_be_other_voters() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.add_joiner(NodeId(4));
    c.node_mut(1)
        .raw
        .propose_conf_change(ConfChange {
            transition: ConfChangeTransition::Auto,
            steps: vec![ConfChangeStep::AddLearner(NodeId(4))],
            context: Vec::new(),
        })
        .unwrap();
    c.stabilize();
    for bad in [1, 4, 9] {
        assert_eq!(
            transfer(&mut c, 1, bad),
            Err(Error::InvalidTransferTarget(NodeId(bad))),
            "target {bad}"
        );
    }
    assert_eq!(c.node(1).status().transfer_target, None);
    c.propose(1, b"still fine").unwrap();
    // Only a leader can transfer.
    assert_eq!(
        transfer(&mut c, 2, 3),
        Err(Error::NotLeader {
            leader: Some(NodeId(1))
        })
    );
}

#[test]
fn a_transfer_that_cannot_finish_is_abandoned_after_the_timeout() {
    let mut c = cluster_with_lagging_3(2);
    c.isolate(3);
    let timeout = c.node(1).config.transfer_timeout_ticks;
    assert_eq!(timeout, 10);
    transfer(&mut c, 1, 3).unwrap();
    for _ in 0..timeout - 1 {
        c.tick(1);
        c.stabilize();
    }
    assert_eq!(c.node(1).status().transfer_target, Some(NodeId(3)));
    assert_eq!(
        c.propose(1, b"x"),
        Err(Error::TransferInProgress(NodeId(3)))
    );

    c.tick(1);
    c.stabilize();
    assert_eq!(c.node(1).status().transfer_target, None, "abandoned");
    assert_eq!(role(&c, 1), Role::Leader);
    let idx = c.propose(1, b"x").unwrap();
    c.stabilize();
    assert_eq!(c.node(1).status().hard_state.commit, idx);
    assert!(!c.sent_log.iter().any(is_timeout_now_to(3)));
}

#[test]
fn timeout_now_makes_voters_grant_votes_despite_a_live_leader() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.tick(1);
    c.stabilize();
    let t = term(&c, 1);

    // An ordinary campaign by node 2 gets nowhere: node 3 heard from the
    // leader within an election timeout and ignores it.
    c.node_mut(2).raw.campaign().unwrap();
    c.process_ready(NodeId(2));
    let to_1 = c.take_msgs(|m| m.to == NodeId(1));
    assert!(!to_1.is_empty());
    c.deliver_all();
    c.process_ready(NodeId(3));
    assert!(
        !c.queue.iter().any(|e| e.msg.from == NodeId(3)),
        "node 3 must ignore a vote request while it hears from a leader"
    );
    assert_eq!(term(&c, 3), t);
    c.stabilize();
    assert_eq!(role(&c, 1), Role::Leader);

    // A transfer's campaign is granted by the same node 3.
    c.tick(1);
    c.stabilize();
    transfer(&mut c, 1, 2).unwrap();
    c.process_ready(NodeId(1));
    let tn: Vec<Envelope> = c.take_msgs(|m| m.body == MessageBody::TimeoutNow);
    assert_eq!(tn.len(), 1);
    c.queue.clear();
    for env in tn {
        c.deliver(env).unwrap();
    }
    c.process_ready(NodeId(2));
    let votes = c.take_msgs(|m| matches!(m.body, MessageBody::RequestVote { .. }));
    assert_eq!(votes.len(), 2);
    for env in votes {
        assert_eq!(
            env.msg.body,
            MessageBody::RequestVote {
                pre_vote: false,
                last_log: dengine_core::EntryId::new(t, LogIndex(2)),
                transfer: true,
            }
        );
        if env.msg.to == NodeId(3) {
            c.deliver(env).unwrap(); // node 1's vote is not needed
        }
    }
    c.process_ready(NodeId(3));
    let answer: Vec<Envelope> = c.take_msgs(|m| m.from == NodeId(3));
    assert_eq!(answer.len(), 1);
    assert_eq!(
        answer[0].msg.body,
        MessageBody::RequestVoteResponse {
            pre_vote: false,
            granted: true
        }
    );
    for env in answer {
        c.deliver(env).unwrap();
    }
    assert_eq!(role(&c, 2), Role::Leader);
    assert_eq!(term(&c, 2), Term(t.0 + 1));
}

#[test]
fn a_transfer_aborts_when_the_target_is_removed() {
    let mut c = cluster_with_lagging_3(1);
    c.isolate(3);
    c.node_mut(1)
        .raw
        .propose_conf_change(ConfChange {
            transition: ConfChangeTransition::Auto,
            steps: vec![ConfChangeStep::Remove(NodeId(3))],
            context: Vec::new(),
        })
        .unwrap();
    // Node 3 is still a voter until the removal applies.
    transfer(&mut c, 1, 3).unwrap();
    c.stabilize();
    assert!(!c.node(1).status().conf_state.is_voter(NodeId(3)));
    assert_eq!(
        c.node(1).status().transfer_target,
        None,
        "abandoned at once, not after the timeout"
    );
    c.propose(1, b"x").unwrap();
    assert_eq!(
        transfer(&mut c, 1, 3),
        Err(Error::InvalidTransferTarget(NodeId(3)))
    );
}

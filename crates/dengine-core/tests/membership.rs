//! Membership changes (Raft §6 / thesis ch. 4): learners, single-voter
//! changes, joint consensus with automatic and explicit leave, the
//! one-change-at-a-time rule, and a leader removing itself.

use std::collections::BTreeSet;

use dengine_core::testing::Cluster;
use dengine_core::{
    ConfChange, ConfChangeError, ConfChangeStep, ConfChangeTransition, ConfState, EntryPayload,
    Error, LogIndex, LogStorage, MessageBody, NodeId, Role,
};

use ConfChangeStep::{AddLearner, AddVoter, Remove};

fn ids(raw: &[u64]) -> BTreeSet<NodeId> {
    raw.iter().copied().map(NodeId).collect()
}

fn cc(transition: ConfChangeTransition, steps: &[ConfChangeStep]) -> ConfChange {
    ConfChange {
        transition,
        steps: steps.to_vec(),
        context: Vec::new(),
    }
}

fn simple(steps: &[ConfChangeStep]) -> ConfChange {
    cc(ConfChangeTransition::Auto, steps)
}

fn v(id: u64) -> ConfChangeStep {
    AddVoter(NodeId(id))
}
fn l(id: u64) -> ConfChangeStep {
    AddLearner(NodeId(id))
}
fn r(id: u64) -> ConfChangeStep {
    Remove(NodeId(id))
}

fn change(c: &mut Cluster, leader: u64, change: ConfChange) -> Result<LogIndex, Error> {
    c.node_mut(leader).raw.propose_conf_change(change)
}

fn conf(c: &Cluster, id: u64) -> ConfState {
    c.node(id).status().conf_state
}

fn commit(c: &Cluster, id: u64) -> LogIndex {
    c.node(id).status().hard_state.commit
}

fn role(c: &Cluster, id: u64) -> Role {
    c.node(id).status().soft_state.role
}

/// Ticks the leader (heartbeats, retransmissions) `n` times, settling after each.
fn pulse(c: &mut Cluster, leader: u64, n: u32) {
    for _ in 0..n {
        c.tick(leader);
        c.stabilize();
    }
}

/// Three voters led by 1, plus node 4 added as a caught-up learner.
fn cluster_with_learner() -> Cluster {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.add_joiner(NodeId(4));
    change(&mut c, 1, simple(&[l(4)])).unwrap();
    c.stabilize();
    c
}

#[test]
fn a_learner_receives_the_log_but_never_campaigns() {
    let mut c = cluster_with_learner();
    c.propose(1, b"a").unwrap();
    c.stabilize();
    assert_eq!(c.node(4).applied_data(), vec![b"a".to_vec()]);
    let cs = conf(&c, 4);
    assert_eq!((cs.voters, cs.learners), (ids(&[1, 2, 3]), ids(&[4])));
    assert!(c.node(1).status().progress[&NodeId(4)].is_learner);

    // Cut off from the leader for many election timeouts, it stays a
    // follower in the same term and asks no one for a vote.
    let term = c.node(4).status().hard_state.term;
    c.isolate(4);
    for _ in 0..100 {
        c.tick(4);
    }
    c.stabilize();
    assert_eq!(role(&c, 4), Role::Follower);
    assert_eq!(c.node(4).status().hard_state.term, term);
    assert!(
        !c.sent_log
            .iter()
            .any(|m| m.from == NodeId(4) && matches!(m.body, MessageBody::RequestVote { .. }))
    );

    // Told to campaign, it refuses too.
    c.node_mut(4).raw.campaign().unwrap();
    assert_eq!(role(&c, 4), Role::Follower);
    assert_eq!(c.node(4).status().hard_state.term, term);
}

#[test]
fn a_new_member_is_sent_the_log_as_soon_as_it_is_added() {
    // No proposal and no heartbeat after the change: the leader must not
    // wait for either to start replicating to the new member.
    let mut c = Cluster::new(3);
    c.elect(1);
    c.add_joiner(NodeId(4));
    let idx = change(&mut c, 1, simple(&[l(4)])).unwrap();
    c.stabilize();
    assert_eq!(c.node(4).status().last_index, idx);
    assert_eq!(commit(&c, 4), idx);
    assert_eq!(conf(&c, 4).learners, ids(&[4]));
}

#[test]
fn a_learner_does_not_count_toward_commit() {
    // Two voters and a learner: the learner's ack must not replace a voter's.
    let mut c = Cluster::new(2);
    c.elect(1);
    c.add_joiner(NodeId(3));
    change(&mut c, 1, simple(&[l(3)])).unwrap();
    c.stabilize();
    let before = commit(&c, 1);
    c.crash(2);
    let idx = c.propose(1, b"a").unwrap();
    pulse(&mut c, 1, 3);
    assert_eq!(
        c.node(3).storage.last_index().unwrap(),
        idx,
        "the learner has it"
    );
    assert_eq!(
        commit(&c, 1),
        before,
        "but {{1, learner 3}} is no quorum of {{1, 2}}"
    );
    assert!(c.node(1).applied_data().is_empty());
}

#[test]
fn a_promoted_learner_counts_toward_quorum() {
    let mut c = Cluster::new(2);
    c.elect(1);
    c.add_joiner(NodeId(3));
    change(&mut c, 1, simple(&[l(3)])).unwrap();
    c.stabilize();
    change(&mut c, 1, simple(&[v(3)])).unwrap();
    c.stabilize();
    assert_eq!(conf(&c, 1).voters, ids(&[1, 2, 3]));
    assert_eq!(conf(&c, 3).voters, ids(&[1, 2, 3]));
    assert!(conf(&c, 3).learners.is_empty());

    // Voters {1, 2, 3}: node 1 and the promoted node 3 are a majority.
    c.crash(2);
    let idx = c.propose(1, b"a").unwrap();
    c.stabilize();
    assert_eq!(commit(&c, 1), idx);
    assert_eq!(c.node(3).applied_data(), vec![b"a".to_vec()]);
}

#[test]
fn a_removed_voter_no_longer_counts_toward_quorum() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let idx = change(&mut c, 1, simple(&[r(3)])).unwrap();
    c.stabilize();
    assert_eq!(commit(&c, 1), idx);
    assert_eq!(conf(&c, 1).voters, ids(&[1, 2]));
    assert_eq!(conf(&c, 2).voters, ids(&[1, 2]));
    assert!(!c.node(1).status().progress.contains_key(&NodeId(3)));

    // Node 3 is up but no longer a member: without node 2 nothing commits.
    c.crash(2);
    let mark = c.sent_log.len();
    c.propose(1, b"a").unwrap();
    pulse(&mut c, 1, 3);
    assert_eq!(commit(&c, 1), idx);
    assert!(!c.sent_log[mark..].iter().any(|m| m.to == NodeId(3)));
}

#[test]
fn a_change_of_several_voters_goes_through_a_joint_config_and_leaves_it() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.add_joiner(NodeId(4));
    c.add_joiner(NodeId(5));
    let idx = change(&mut c, 1, simple(&[v(4), v(5), r(2), r(3)])).unwrap();

    // Watch node 1's membership after every step.
    let mut seen: Vec<ConfState> = vec![conf(&c, 1)];
    loop {
        let mut any = false;
        for id in 1..=5 {
            any |= c.process_ready(NodeId(id));
            let cs = conf(&c, 1);
            if seen.last() != Some(&cs) {
                seen.push(cs);
            }
        }
        if c.deliver_all() == 0 && !any {
            break;
        }
    }
    let joint = ConfState {
        voters: ids(&[1, 4, 5]),
        voters_outgoing: ids(&[1, 2, 3]),
        auto_leave: true,
        ..ConfState::default()
    };
    let after = ConfState::with_voters(ids(&[1, 4, 5]));
    assert_eq!(
        seen,
        vec![
            ConfState::with_voters(ids(&[1, 2, 3])),
            joint,
            after.clone()
        ]
    );

    // The leave is a second membership entry, proposed by the leader itself.
    let leave = c.node(1).storage.lock().entries[idx.0 as usize].clone();
    assert_eq!(leave.index, idx.next());
    assert_eq!(
        leave.payload,
        EntryPayload::ConfChange(Box::new(ConfChange::leave_joint()))
    );
    for id in [4, 5] {
        assert_eq!(conf(&c, id), after, "node {id}");
    }
    assert_eq!(commit(&c, 4), idx.next());
}

/// Voters {1, 2, 3} in an explicit joint config with incoming {1, 4, 5}.
fn joint_cluster() -> (Cluster, LogIndex) {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.add_joiner(NodeId(4));
    c.add_joiner(NodeId(5));
    let idx = change(
        &mut c,
        1,
        cc(
            ConfChangeTransition::JointExplicit,
            &[v(4), v(5), r(2), r(3)],
        ),
    )
    .unwrap();
    c.stabilize();
    let cs = conf(&c, 1);
    assert_eq!(
        (cs.voters_outgoing.clone(), cs.voters.clone(), cs.auto_leave),
        (ids(&[1, 2, 3]), ids(&[1, 4, 5]), false)
    );
    for id in 2..=5 {
        assert_eq!(conf(&c, id), cs, "node {id}");
    }
    (c, idx)
}

#[test]
fn an_explicit_joint_config_stays_joint_until_told_to_leave() {
    let (mut c, idx) = joint_cluster();
    pulse(&mut c, 1, 5);
    assert!(conf(&c, 1).is_joint());
    assert_eq!(c.node(1).status().last_index, idx, "no leave entry");
    for id in 2..=5 {
        assert!(conf(&c, id).is_joint(), "node {id}");
    }
    let leave = change(&mut c, 1, ConfChange::leave_joint()).unwrap();
    assert_eq!(leave, idx.next());
    c.stabilize();
    for id in [1, 4, 5] {
        assert_eq!(conf(&c, id), ConfState::with_voters(ids(&[1, 4, 5])));
    }
}

#[test]
fn in_a_joint_config_the_new_majority_alone_cannot_commit() {
    let (mut c, _) = joint_cluster();
    c.partition(&[&[1, 4, 5], &[2, 3]]);
    let idx = c.propose(1, b"x").unwrap();
    pulse(&mut c, 1, 3);
    assert_eq!(c.node(4).storage.last_index().unwrap(), idx);
    assert_eq!(c.node(5).storage.last_index().unwrap(), idx);
    assert!(
        commit(&c, 1) < idx,
        "{{1, 4, 5}} is no majority of {{1, 2, 3}}"
    );
    assert!(c.node(1).applied_data().is_empty());

    c.heal();
    pulse(&mut c, 1, 2);
    assert_eq!(commit(&c, 1), idx);
    assert_eq!(c.node(1).applied_data(), vec![b"x".to_vec()]);
}

#[test]
fn in_a_joint_config_the_old_majority_alone_cannot_commit() {
    let (mut c, _) = joint_cluster();
    c.partition(&[&[1, 2, 3], &[4, 5]]);
    let idx = c.propose(1, b"x").unwrap();
    pulse(&mut c, 1, 3);
    assert_eq!(c.node(2).storage.last_index().unwrap(), idx);
    assert_eq!(c.node(3).storage.last_index().unwrap(), idx);
    assert!(
        commit(&c, 1) < idx,
        "{{1, 2, 3}} is no majority of {{1, 4, 5}}"
    );

    c.heal();
    pulse(&mut c, 1, 2);
    assert_eq!(commit(&c, 1), idx);
}

#[test]
fn in_a_joint_config_a_read_needs_both_majorities() {
    use dengine_core::{ReadId, ReadPolicy, ReadState};
    let (mut c, idx) = joint_cluster();
    let answered = |id: u64| ReadState {
        id: ReadId(id),
        result: Ok(idx),
    };
    for (rid, groups) in [
        (1, [&[1, 4, 5][..], &[2, 3]]),
        (2, [&[1, 2, 3][..], &[4, 5]]),
    ] {
        c.partition(&groups);
        c.read(1, rid, ReadPolicy::ReadIndex).unwrap();
        pulse(&mut c, 1, 3);
        assert_eq!(
            c.node(1).read_states.len() as u64,
            rid - 1,
            "read {rid}: only {:?} confirmed the round",
            groups[0]
        );
        c.heal();
        pulse(&mut c, 1, 1);
        assert_eq!(c.node(1).read_states.last(), Some(&answered(rid)));
    }
}

#[test]
fn in_a_joint_config_an_election_needs_both_majorities() {
    let (mut c, _) = joint_cluster();
    // Without node 1, {2, 3} is a majority of the outgoing voters only and
    // {4, 5} of the incoming voters only: neither side can elect a leader.
    c.crash(1);
    c.partition(&[&[2, 3], &[4, 5]]);
    c.tick_all(60);
    assert_eq!(c.leader(), None);
    for id in 2..=5 {
        assert_ne!(role(&c, id), Role::Leader);
    }
    // Together they can: a winner needs both majorities, and node 1 is
    // not needed for either.
    c.heal();
    for _ in 0..60 {
        if c.leader().is_some() {
            break;
        }
        c.tick_all(1);
    }
    let l = c.leader().expect("a leader once healed");
    assert_ne!(l, NodeId(1));
}

#[test]
fn a_second_change_while_one_is_pending_is_refused() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.add_joiner(NodeId(4));
    c.add_joiner(NodeId(5));
    let first = change(&mut c, 1, simple(&[l(4)])).unwrap();
    assert_eq!(
        change(&mut c, 1, simple(&[l(5)])),
        Err(Error::ConfChange(ConfChangeError::Pending(first)))
    );
    c.stabilize();
    // Applied: the next one is accepted.
    change(&mut c, 1, simple(&[l(5)])).unwrap();
    c.stabilize();
    assert_eq!(conf(&c, 1).learners, ids(&[4, 5]));

    // While an automatic leave is pending, nothing else is accepted either.
    let joint = change(&mut c, 1, simple(&[v(4), v(5)])).unwrap();
    c.process_ready(NodeId(1));
    c.deliver_all();
    c.process_ready(NodeId(2));
    c.process_ready(NodeId(3));
    c.deliver_all();
    c.process_ready(NodeId(1)); // the joint entry applies: the leave is appended
    assert!(conf(&c, 1).is_joint());
    assert_eq!(
        change(&mut c, 1, simple(&[r(5)])),
        Err(Error::ConfChange(ConfChangeError::Pending(joint.next())))
    );
    c.stabilize();
    assert_eq!(conf(&c, 1), ConfState::with_voters(ids(&[1, 2, 3, 4, 5])));
}

#[test]
fn changes_that_break_the_membership_rules_are_refused() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let last = c.node(1).status().last_index;
    assert_eq!(
        change(&mut c, 1, simple(&[r(1), r(2), r(3)])),
        Err(Error::ConfChange(ConfChangeError::NoVoters))
    );
    assert_eq!(
        change(&mut c, 1, simple(&[l(1), l(2), l(3)])),
        Err(Error::ConfChange(ConfChangeError::NoVoters))
    );
    assert_eq!(
        change(&mut c, 1, ConfChange::leave_joint()),
        Err(Error::ConfChange(ConfChangeError::NotJoint))
    );
    assert_eq!(
        change(&mut c, 1, simple(&[r(9)])),
        Err(Error::ConfChange(ConfChangeError::NotAMember(NodeId(9))))
    );
    assert_eq!(c.node(1).status().last_index, last, "nothing was appended");
    // A refused change does not block the next one.
    change(&mut c, 1, simple(&[r(3)])).unwrap();
}

#[test]
fn joint_changes_are_refused_while_joint() {
    let (mut c, _) = joint_cluster();
    assert_eq!(
        change(&mut c, 1, simple(&[r(4)])),
        Err(Error::ConfChange(ConfChangeError::AlreadyJoint))
    );
}

#[test]
fn a_leader_that_removes_itself_hands_over_to_the_most_caught_up_voter() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.node(1).status().hard_state.term;
    change(&mut c, 1, simple(&[r(1)])).unwrap();
    // Appended, not yet committed: still the leader, still counted.
    c.process_ready(NodeId(1));
    assert_eq!(role(&c, 1), Role::Leader);
    c.stabilize();
    // Once the change applies, node 1 is in no quorum and hands leadership
    // over with TimeoutNow: a voter of the new membership leads in a higher
    // term, having received the whole log (and with it the commit index).
    assert_eq!(conf(&c, 1).voters, ids(&[2, 3]));
    assert!(
        c.sent_log
            .iter()
            .any(|m| m.from == NodeId(1) && m.body == MessageBody::TimeoutNow),
        "the removed leader must hand over with TimeoutNow"
    );
    // The new leader no longer talks to node 1; node 1 learns the new term
    // from the answers to its next heartbeat and steps down.
    c.tick_all(2);
    assert_eq!(role(&c, 1), Role::Follower);
    let new = c.leader().expect("a new leader").0;
    assert!(new == 2 || new == 3);
    assert!(c.node(new).status().hard_state.term > term);
    assert_eq!(conf(&c, 2).voters, ids(&[2, 3]));
    let idx = c.propose(new, b"after").unwrap();
    c.stabilize();
    assert_eq!(commit(&c, new), idx);
    let other = 5 - new;
    assert_eq!(c.node(other).applied_data(), vec![b"after".to_vec()]);
    // Node 1 never campaigns again: it is not a voter.
    for _ in 0..40 {
        c.tick_all(1);
    }
    assert_eq!(c.leader().map(|l| l.0), Some(new));
    assert_ne!(role(&c, 1), Role::Leader);
}

fn carries_leave(m: &dengine_core::Message) -> bool {
    matches!(&m.body, MessageBody::AppendEntries { entries, .. }
        if entries.iter().any(|e| e.payload == EntryPayload::ConfChange(Box::new(ConfChange::leave_joint()))))
}

/// How many "leave joint" entries node `id` has in its log.
fn leave_entries(c: &Cluster, id: u64) -> usize {
    let leave = EntryPayload::ConfChange(Box::new(ConfChange::leave_joint()));
    let s = c.node(id).storage.lock();
    s.entries.iter().filter(|e| e.payload == leave).count()
}

/// Runs the cluster until a leader among `ids` exists.
fn elect_among(c: &mut Cluster, ids: &[u64]) -> u64 {
    for _ in 0..100 {
        if let Some(l) = c.leader()
            && ids.contains(&l.0)
        {
            return l.0;
        }
        c.tick_all(1);
    }
    panic!("no leader among {ids:?}");
}

#[test]
fn a_new_leader_leaves_a_joint_config_its_predecessor_entered() {
    // Node 1 commits the joint entry and dies before anyone gets its leave.
    let mut c = Cluster::new(3);
    c.elect(1);
    c.add_joiner(NodeId(4));
    c.add_joiner(NodeId(5));
    let joint = change(&mut c, 1, simple(&[v(4), v(5)])).unwrap();
    c.process_ready(NodeId(1));
    c.deliver_all();
    c.process_ready(NodeId(2));
    c.process_ready(NodeId(3));
    c.deliver_all();
    c.process_ready(NodeId(1)); // applies the joint entry, appends the leave
    assert_eq!(c.node(1).status().last_index, joint.next());
    let dropped = c.take_msgs(carries_leave);
    assert!(!dropped.is_empty());
    c.deliver_all();
    c.crash(1);
    c.stabilize();
    for id in 2..=3 {
        assert!(conf(&c, id).is_joint(), "node {id} applied the joint entry");
        assert_eq!(c.node(id).status().last_index, joint);
    }

    // Whoever leads next must finish the change.
    let l = elect_among(&mut c, &[2, 3]);
    c.stabilize();
    let cs = conf(&c, l);
    assert_eq!(
        cs,
        ConfState::with_voters(ids(&[1, 2, 3, 4, 5])),
        "left the joint config"
    );
    assert_eq!(leave_entries(&c, l), 1);
    for id in 2..=5 {
        assert_eq!(conf(&c, id), cs, "node {id}");
    }
}

#[test]
fn a_new_leader_that_applies_the_joint_entry_behind_other_entries_leaves_it() {
    // Node 1 replicates the joint entry and a command after it to node 2,
    // commits neither, and dies. Node 2 commits both under its own term and
    // only then applies the joint entry, as leader.
    let mut c = Cluster::new(3);
    c.elect(1);
    c.add_joiner(NodeId(4));
    c.add_joiner(NodeId(5));
    c.cut_one_way(1, 3);
    let joint = change(&mut c, 1, simple(&[v(4), v(5)])).unwrap();
    c.propose(1, b"after").unwrap();
    c.process_ready(NodeId(1));
    c.deliver_all(); // node 2 gets both; its acks are never delivered
    c.process_ready(NodeId(2));
    c.crash(1);
    c.heal();
    assert_eq!(c.node(2).status().last_index, joint.next());
    assert!(!conf(&c, 2).is_joint());

    let l = elect_among(&mut c, &[2, 3]);
    assert_eq!(l, 2, "only node 2 has the longer log");
    c.stabilize();
    assert_eq!(c.node(2).applied_data(), vec![b"after".to_vec()]);
    for _ in 0..5 {
        c.tick(2);
        c.stabilize();
    }
    assert_eq!(conf(&c, 2), ConfState::with_voters(ids(&[1, 2, 3, 4, 5])));
    assert_eq!(leave_entries(&c, 2), 1);
}

#[test]
fn a_new_leader_does_not_leave_twice_when_its_predecessor_already_proposed_the_leave() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.add_joiner(NodeId(4));
    c.add_joiner(NodeId(5));
    let joint = change(&mut c, 1, simple(&[v(4), v(5)])).unwrap();
    c.process_ready(NodeId(1));
    c.deliver_all();
    c.process_ready(NodeId(2));
    c.process_ready(NodeId(3));
    c.deliver_all();
    c.process_ready(NodeId(1)); // applies the joint entry, appends the leave
    c.deliver_all(); // nodes 2 and 3 get the leave, uncommitted
    c.crash(1);
    c.stabilize();
    assert_eq!(c.node(2).status().last_index, joint.next());
    assert_eq!(c.node(2).status().hard_state.commit, joint);

    let l = elect_among(&mut c, &[2, 3]);
    for _ in 0..5 {
        c.tick(l);
        c.stabilize();
    }
    assert_eq!(conf(&c, l), ConfState::with_voters(ids(&[1, 2, 3, 4, 5])));
    assert_eq!(leave_entries(&c, l), 1, "the inherited leave is enough");
}

//! Linearizable reads (Raft §6.4 / thesis §6.4): ReadIndex confirmed by a
//! heartbeat round, batching of reads into rounds, the no-op rule for new
//! leaders, forwarding from followers, and lease reads bounded by the
//! declared clock drift.

use dengine_core::testing::{Cluster, Envelope, MemStorage, test_config};
use dengine_core::{
    Error, LogIndex, Message, MessageBody, NodeId, RawNode, ReadId, ReadPolicy, ReadState, Role,
};

const RI: ReadPolicy = ReadPolicy::ReadIndex;
const LEASE: ReadPolicy = ReadPolicy::Lease;

fn ok(id: u64, index: u64) -> ReadState {
    ReadState {
        id: ReadId(id),
        result: Ok(LogIndex(index)),
    }
}

fn heartbeats_from(log: &[Message], from: u64) -> usize {
    log.iter()
        .filter(|m| m.from == NodeId(from) && matches!(m.body, MessageBody::Heartbeat { .. }))
        .count()
}

/// `sent` is one heartbeat round of a 3-node cluster's leader: a
/// heartbeat to each follower and nothing else.
fn assert_one_round(sent: &[Envelope]) {
    assert_eq!(sent.len(), 2, "one round: {sent:?}");
    assert!(
        sent.iter()
            .all(|e| matches!(e.msg.body, MessageBody::Heartbeat { .. })),
        "one round: {sent:?}"
    );
}

fn queued(c: &Cluster) -> Vec<Message> {
    c.queue.iter().map(|e| e.msg.clone()).collect()
}

fn commit_of(c: &Cluster, id: u64) -> LogIndex {
    c.node(id).status().hard_state.commit
}

/// Like `stabilize`, but holds back every message matching `hold`.
fn settle_holding(c: &mut Cluster, hold: impl Fn(&Message) -> bool) -> Vec<Envelope> {
    let mut held = Vec::new();
    for _ in 0..1000 {
        let ids: Vec<NodeId> = c.nodes.keys().copied().collect();
        let mut any = false;
        for id in ids {
            any |= c.process_ready(id);
        }
        held.extend(c.take_msgs(&hold));
        if c.deliver_all() == 0 && !any {
            return held;
        }
    }
    panic!("cluster did not settle");
}

/// A three-node cluster with lease reads, led by node 1. Nodes with lease
/// reads refuse votes for an election timeout after they start, so the
/// followers' clocks are run past that first.
fn lease_cluster() -> Cluster {
    let mut c = Cluster::with_config(3, |cfg| cfg.lease_reads = true);
    for _ in 0..10 {
        for id in 2..=3 {
            c.node_mut(id).raw.tick().unwrap();
        }
    }
    c.elect(1);
    c
}

#[test]
fn read_index_is_answered_only_after_a_quorum_confirms_the_round() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, b"a").unwrap();
    c.stabilize();
    assert_eq!(commit_of(&c, 1), LogIndex(3));

    c.read(1, 7, RI).unwrap();
    // The round goes out with the Ready; nothing is answered yet.
    c.process_ready(NodeId(1));
    assert_eq!(heartbeats_from(&queued(&c), 1), 2);
    assert!(c.node(1).read_states.is_empty());

    // The followers answer, but their answers are not delivered yet.
    c.deliver_all();
    c.process_ready(NodeId(2));
    c.process_ready(NodeId(3));
    c.process_ready(NodeId(1));
    assert!(
        c.node(1).read_states.is_empty(),
        "a read must wait for the heartbeat responses"
    );

    // One response plus the leader itself is a quorum of three.
    let mut resp = c.take_msgs(|m| matches!(m.body, MessageBody::HeartbeatResponse { .. }));
    assert_eq!(resp.len(), 2);
    c.deliver(resp.remove(0)).unwrap();
    c.process_ready(NodeId(1));
    assert_eq!(c.node(1).read_states, vec![ok(7, 3)]);
}

#[test]
fn reads_asked_before_one_ready_share_one_heartbeat_round() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let mark = c.sent_log.len();
    for rid in 1..=5 {
        c.read(1, rid, RI).unwrap();
    }
    c.stabilize();
    assert_eq!(
        heartbeats_from(&c.sent_log[mark..], 1),
        2,
        "five reads need one round: one heartbeat per follower"
    );
    let want: Vec<ReadState> = (1..=5).map(|rid| ok(rid, 2)).collect();
    assert_eq!(c.node(1).read_states, want);
}

#[test]
fn a_read_asked_after_a_round_went_out_waits_for_the_next_round() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.read(1, 1, RI).unwrap();
    c.process_ready(NodeId(1)); // round 1 goes out
    c.read(1, 2, RI).unwrap(); // needs round 2: round 1 may predate it
    // Round 1 is unconfirmed: round 2 waits for it instead of going out.
    c.process_ready(NodeId(1));
    let round1 = c.take_msgs(|m| m.from == NodeId(1));
    assert_one_round(&round1);
    for env in round1 {
        c.deliver(env).unwrap();
    }
    c.process_ready(NodeId(2));
    c.process_ready(NodeId(3));
    // Round 1's answers confirm read 1 only; round 2 goes out then.
    c.deliver_all();
    c.process_ready(NodeId(1));
    assert_eq!(c.node(1).read_states, vec![ok(1, 2)]);
    let round2 = c.take_msgs(|m| m.from == NodeId(1));
    assert_one_round(&round2);
    for env in round2 {
        c.deliver(env).unwrap();
    }
    c.stabilize();
    assert_eq!(c.node(1).read_states, vec![ok(1, 2), ok(2, 2)]);
}

#[test]
fn reads_asked_while_a_round_is_unconfirmed_share_the_next_round() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.read(1, 1, RI).unwrap();
    c.process_ready(NodeId(1)); // round 1 goes out
    let mark = c.sent_log.len();
    // Reads keep coming, each in a Ready of its own, while round 1 is out.
    for rid in 2..=6 {
        c.read(1, rid, RI).unwrap();
        c.process_ready(NodeId(1));
    }
    assert_eq!(
        heartbeats_from(&c.sent_log[mark..], 1),
        0,
        "no round goes out while round 1 is unconfirmed"
    );
    c.stabilize();
    assert_eq!(
        heartbeats_from(&c.sent_log[mark..], 1),
        2,
        "the five reads share one round: one heartbeat per follower"
    );
    let want: Vec<ReadState> = (1..=6).map(|rid| ok(rid, 2)).collect();
    assert_eq!(c.node(1).read_states, want);
}

#[test]
fn a_round_that_is_never_answered_holds_reads_only_until_the_next_heartbeat() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.read(1, 1, RI).unwrap();
    c.process_ready(NodeId(1));
    // Round 1 is lost on the way to both followers.
    let lost = c.take_msgs(|m| m.from == NodeId(1));
    assert_eq!(lost.len(), 2);
    c.read(1, 2, RI).unwrap();
    c.stabilize();
    assert!(
        c.node(1).read_states.is_empty(),
        "nothing confirms the reads yet"
    );
    // The heartbeat interval starts a round whatever is in flight; it
    // confirms both reads.
    for _ in 0..test_config(NodeId(1)).heartbeat_tick {
        c.tick(1);
    }
    c.stabilize();
    assert_eq!(c.node(1).read_states, vec![ok(1, 2), ok(2, 2)]);
}

#[test]
fn a_new_leader_answers_reads_only_once_its_noop_commits() {
    let mut c = Cluster::new(3);
    let is_append_from_2 =
        |m: &Message| m.from == NodeId(2) && matches!(m.body, MessageBody::AppendEntries { .. });
    c.node_mut(2).raw.campaign().unwrap();
    let mut held = settle_holding(&mut c, is_append_from_2);
    assert_eq!(c.node(2).status().soft_state.role, Role::Leader);
    assert_eq!(c.node(2).status().last_index, LogIndex(2), "the no-op");
    assert_eq!(commit_of(&c, 2), LogIndex(1));

    c.read(2, 1, RI).unwrap();
    // Even confirmed heartbeat rounds do not answer it: the leader does not
    // know the commit index of its term yet.
    for _ in 0..3 {
        c.tick(2);
        held.extend(settle_holding(&mut c, is_append_from_2));
    }
    assert!(heartbeats_from(&c.sent_log, 2) >= 6);
    assert!(c.node(2).read_states.is_empty());

    for env in held {
        let _ = c.deliver(env);
    }
    c.stabilize();
    assert_eq!(commit_of(&c, 2), LogIndex(2));
    assert_eq!(c.node(2).read_states, vec![ok(1, 2)]);
}

#[test]
fn a_follower_read_is_forwarded_and_answered_by_the_leader() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, b"a").unwrap();
    c.stabilize();

    c.read(2, 9, RI).unwrap();
    c.process_ready(NodeId(2));
    let fwd = c.take_msgs(|m| matches!(m.body, MessageBody::ReadIndex { .. }));
    assert_eq!(fwd.len(), 1);
    assert_eq!(
        (fwd[0].msg.from, fwd[0].msg.to, &fwd[0].msg.body),
        (
            NodeId(2),
            NodeId(1),
            &MessageBody::ReadIndex { id: ReadId(9) }
        )
    );
    for env in fwd {
        c.deliver(env).unwrap();
    }
    // The leader confirms with a round before answering.
    c.process_ready(NodeId(1));
    assert!(
        !c.queue
            .iter()
            .any(|e| matches!(e.msg.body, MessageBody::ReadIndexResponse { .. }))
    );
    c.stabilize();
    let answer = MessageBody::ReadIndexResponse {
        id: ReadId(9),
        index: Some(LogIndex(3)),
    };
    assert!(
        c.sent_log
            .iter()
            .any(|m| m.from == NodeId(1) && m.to == NodeId(2) && m.body == answer)
    );
    assert_eq!(c.node(2).read_states, vec![ok(9, 3)]);
    assert!(c.node(1).read_states.is_empty());
}

#[test]
fn a_forwarded_read_the_leader_never_answers_fails_after_two_election_timeouts() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.cut_one_way(1, 2); // node 2's request arrives, the answer is lost
    c.read(2, 4, RI).unwrap();
    c.stabilize();
    let timeout = 2 * c.node(2).config.election_tick;
    for _ in 0..timeout - 1 {
        c.node_mut(2).raw.tick().unwrap();
    }
    c.process_ready(NodeId(2));
    assert!(c.node(2).read_states.is_empty());
    c.tick(2);
    assert_eq!(
        c.node(2).read_states,
        vec![ReadState {
            id: ReadId(4),
            result: Err(Error::Dropped("read forwarded to the leader got no answer")),
        }]
    );
}

#[test]
fn a_partitioned_leader_never_answers_its_reads_and_fails_them_on_stepping_down() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(1);
    c.read(1, 5, RI).unwrap();
    let mut ticks = 0;
    while c.node(1).status().soft_state.role == Role::Leader {
        assert!(ticks < 20, "check-quorum must depose the isolated leader");
        c.tick(1);
        c.stabilize();
        ticks += 1;
        assert!(c.node(1).read_states.iter().all(|r| r.result.is_err()));
    }
    assert_eq!(
        c.node(1).read_states,
        vec![ReadState {
            id: ReadId(5),
            result: Err(Error::NotLeader { leader: None }),
        }]
    );
    // The majority elects a leader and moves on; healing answers nothing.
    while c.leader() == Some(NodeId(1)) || c.leader().is_none() {
        c.tick(2);
        c.tick(3);
        c.stabilize();
    }
    let new = c.leader().unwrap();
    c.propose(new.0, b"new").unwrap();
    c.heal();
    c.tick_all(3);
    assert_eq!(c.node(1).status().soft_state.leader, new);
    assert_eq!(c.node(1).read_states.len(), 1);
}

#[test]
fn reads_without_a_known_leader_fail_with_not_leader() {
    let mut c = Cluster::new(3);
    assert_eq!(c.read(2, 1, RI), Err(Error::NotLeader { leader: None }));
    assert_eq!(c.read(2, 1, LEASE), Err(Error::NotLeader { leader: None }));
}

#[test]
fn a_lease_read_after_a_confirmed_round_needs_no_heartbeat() {
    let mut c = lease_cluster();
    c.tick(1); // one heartbeat round, confirmed by the followers
    c.stabilize();
    let mark = c.sent_log.len();
    c.read(1, 1, LEASE).unwrap();
    c.process_ready(NodeId(1));
    assert_eq!(c.node(1).read_states, vec![ok(1, 2)]);
    assert_eq!(heartbeats_from(&c.sent_log[mark..], 1), 0);

    // The same read under ReadIndex needs a round.
    c.read(1, 2, RI).unwrap();
    c.process_ready(NodeId(1));
    assert_eq!(c.node(1).read_states.len(), 1);
    assert_eq!(heartbeats_from(&c.sent_log[mark..], 1), 2);
}

#[test]
fn a_lease_read_without_a_confirmed_round_falls_back_to_read_index() {
    let mut c = lease_cluster();
    // Elected, but no heartbeat round confirmed yet: no lease.
    c.read(1, 1, LEASE).unwrap();
    c.process_ready(NodeId(1));
    assert!(c.node(1).read_states.is_empty());
    c.stabilize();
    assert_eq!(c.node(1).read_states, vec![ok(1, 2)]);
}

#[test]
fn the_lease_runs_election_tick_minus_drift_from_when_the_round_was_sent() {
    let mut c = lease_cluster();
    let cfg = c.node(1).config.clone();
    let lease = cfg.election_tick - cfg.lease_drift_ticks;
    assert_eq!(lease, 8);
    // A round goes out at tick t; its answers arrive only at t + 3.
    c.tick(1);
    let answers = settle_holding(&mut c, |m| {
        matches!(m.body, MessageBody::HeartbeatResponse { .. })
    });
    assert_eq!(answers.len(), 2);
    c.isolate(1); // no later round is ever confirmed
    for _ in 0..3 {
        c.tick(1);
        c.stabilize();
    }
    c.heal();
    for env in answers {
        c.deliver(env).unwrap();
    }
    c.isolate(1);
    // The lease counts from t, when the round was sent: it covers t + 7...
    for _ in 3..lease - 1 {
        c.tick(1);
    }
    c.read(1, 1, LEASE).unwrap();
    c.process_ready(NodeId(1));
    assert_eq!(c.node(1).read_states, vec![ok(1, 2)], "still in the lease");

    // ...but not t + 8.
    c.tick(1);
    assert_eq!(c.node(1).status().soft_state.role, Role::Leader);
    c.read(1, 2, LEASE).unwrap();
    c.process_ready(NodeId(1));
    assert_eq!(c.node(1).read_states.len(), 1, "must not be immediate");
    // It falls back to a round: answered once one is confirmed.
    c.heal();
    c.tick(1);
    c.stabilize();
    assert_eq!(c.node(1).read_states, vec![ok(1, 2), ok(2, 2)]);
}

#[test]
fn a_restarted_voter_does_not_help_elect_a_leader_while_a_lease_may_run() {
    let mut c = lease_cluster();
    c.tick(1); // node 1 holds a lease from here
    c.stabilize();
    c.isolate(1);
    // Node 2 restarts: it may have confirmed node 1's lease just before.
    c.crash(2);
    c.restart(2);
    c.campaign(3);
    assert_ne!(c.node(3).status().soft_state.role, Role::Leader);
    assert_eq!(c.leader(), Some(NodeId(1)));
    c.read(1, 1, LEASE).unwrap();
    c.process_ready(NodeId(1));
    assert_eq!(
        c.node(1).read_states,
        vec![ok(1, 2)],
        "the lease still runs"
    );

    // Once node 2 has waited an election timeout, node 3 can win.
    for _ in 0..c.node(2).config.election_tick {
        c.node_mut(2).raw.tick().unwrap();
    }
    c.campaign(3);
    assert_eq!(c.node(3).status().soft_state.role, Role::Leader);
}

#[test]
fn lease_reads_stop_once_a_transfer_sent_timeout_now() {
    let mut c = lease_cluster();
    c.tick(1);
    c.stabilize();
    c.node_mut(1).raw.transfer_leader(NodeId(2)).unwrap();
    c.process_ready(NodeId(1));
    let timeout_now = c.take_msgs(|m| m.body == MessageBody::TimeoutNow);
    assert_eq!(
        timeout_now.len(),
        1,
        "node 2 is up to date: TimeoutNow at once"
    );

    c.read(1, 1, LEASE).unwrap();
    c.process_ready(NodeId(1));
    assert!(
        c.node(1).read_states.is_empty(),
        "node 2 may already be campaigning: the lease proves nothing"
    );
    // A read confirmed by a quorum round is still fine.
    c.stabilize();
    assert_eq!(c.node(1).read_states, vec![ok(1, 2)]);

    // Even once the transfer is abandoned and a new round is confirmed, the
    // lease stays void for the term (the TimeoutNow may still arrive).
    for _ in 0..c.node(1).config.transfer_timeout_ticks {
        c.tick(1);
        c.stabilize();
    }
    assert_eq!(c.node(1).status().transfer_target, None);
    c.read(1, 2, LEASE).unwrap();
    c.process_ready(NodeId(1));
    assert_eq!(c.node(1).read_states.len(), 1);
}

#[test]
fn lease_reads_need_check_quorum() {
    let mut cfg = test_config(NodeId(1));
    cfg.lease_reads = true;
    cfg.check_quorum = false;
    let r = RawNode::new(cfg, MemStorage::bootstrap([NodeId(1)]));
    assert!(matches!(r, Err(Error::Config(ref s)) if s.contains("check_quorum")));
}

#[test]
fn lease_drift_must_be_below_the_election_timeout() {
    let mut cfg = test_config(NodeId(1));
    cfg.lease_reads = true;
    cfg.lease_drift_ticks = cfg.election_tick;
    let r = RawNode::new(cfg.clone(), MemStorage::bootstrap([NodeId(1)]));
    assert!(matches!(r, Err(Error::Config(ref s)) if s.contains("lease_drift_ticks")));
    cfg.lease_drift_ticks = cfg.election_tick - 1;
    assert!(RawNode::new(cfg, MemStorage::bootstrap([NodeId(1)])).is_ok());
}

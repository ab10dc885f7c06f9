//! Leader election (Raft §5.2), pre-vote (§9.6), check-quorum and leader
//! stickiness (§6.2, §9.6), on hand-stepped in-memory clusters.

mod scenario_support;

use std::collections::{BTreeMap, BTreeSet};

use dengine_core::testing::Cluster;
use dengine_core::{EntryId, LogIndex, Message, MessageBody, NodeId, Role, Term};
use scenario_support::*;

fn granted_votes(c: &Cluster, to: u64, pre_vote: bool) -> BTreeSet<u64> {
    c.sent_log
        .iter()
        .filter(|m| m.to == NodeId(to))
        .filter(|m| {
            m.body
                == MessageBody::RequestVoteResponse {
                    pre_vote,
                    granted: true,
                }
        })
        .map(|m| m.from.0)
        .collect()
}

#[test]
fn a_single_candidate_wins_with_a_majority() {
    let mut c = Cluster::new(3);
    c.elect(1);

    assert_eq!(role(&c, 1), Role::Leader);
    assert_eq!(
        term(&c, 1),
        2,
        "the bootstrap term is 1; the election is for 2"
    );
    assert_eq!(vote(&c, 1), 1, "a candidate votes for itself");
    for id in [2, 3] {
        assert_eq!(role(&c, id), Role::Follower, "node {id}");
        assert_eq!(term(&c, id), 2, "node {id}");
        assert_eq!(vote(&c, id), 1, "node {id} voted for the candidate");
        assert_eq!(leader_of(&c, id), 1, "node {id} knows the leader");
    }
    // One pre-vote round and one vote round, each answered by both peers.
    assert_eq!(count_kind(&c, "PreVote"), 2);
    assert_eq!(count_kind(&c, "Vote"), 2);
    assert_eq!(granted_votes(&c, 1, true), BTreeSet::from([2, 3]));
    assert_eq!(granted_votes(&c, 1, false), BTreeSet::from([2, 3]));
    // The new leader's no-op (index 2, term 2) is committed everywhere.
    for id in 1..=3 {
        assert_eq!(terms(&c, id, 1, 2), vec![1, 2], "node {id}");
        assert_eq!(commit(&c, id), 2, "node {id}");
    }
}

#[test]
fn a_candidate_with_a_minority_of_votes_does_not_win() {
    let mut c = Cluster::with_config(5, |cfg| cfg.pre_vote = false);
    c.partition(&[&[1, 2], &[3, 4, 5]]);
    c.campaign(1);
    // Node 2 granted its vote, but 2 of 5 is not a majority.
    assert_eq!(vote(&c, 2), 1);
    assert_eq!(role(&c, 1), Role::Candidate);
    assert_eq!(term(&c, 1), 2);
    assert_eq!(c.leader(), None);

    // With the majority reachable, the next term's election is won.
    c.heal();
    c.campaign(1);
    assert_eq!(role(&c, 1), Role::Leader);
    assert_eq!(term(&c, 1), 3);
}

#[test]
fn a_voter_grants_at_most_one_vote_per_term() {
    let mut c = Cluster::with_config(3, |cfg| cfg.pre_vote = false);
    // Nodes 1 and 2 both stand for term 2; node 3 hears node 1 first.
    c.node_mut(1).raw.campaign().unwrap();
    c.node_mut(2).raw.campaign().unwrap();
    c.process_ready(NodeId(1));
    c.process_ready(NodeId(2));
    c.stabilize();

    assert_eq!(role(&c, 1), Role::Leader);
    assert_eq!(term(&c, 1), 2);
    assert_eq!(vote(&c, 3), 1);
    // Node 3 refused node 2 in the same term: only one leader for term 2.
    let answers_to_2: Vec<_> = c
        .sent_log
        .iter()
        .filter(|m| between(m, 3, 2) && m.body.kind() == "VoteResp")
        .map(|m| m.body.clone())
        .collect();
    assert_eq!(
        answers_to_2,
        vec![MessageBody::RequestVoteResponse {
            pre_vote: false,
            granted: false
        }]
    );
    assert_eq!(role(&c, 2), Role::Follower);
    assert_eq!(term(&c, 2), 2);
    assert_eq!(leader_of(&c, 2), 1);
}

#[test]
fn a_split_vote_is_resolved_in_a_later_term() {
    let mut c = Cluster::with_config(3, |cfg| cfg.pre_vote = false);
    // Everyone stands for term 2 at once and votes for itself.
    for id in 1..=3 {
        c.node_mut(id).raw.campaign().unwrap();
    }
    c.stabilize();
    assert_eq!(c.leader(), None, "a split vote elects nobody");
    for id in 1..=3 {
        assert_eq!(term(&c, id), 2, "node {id}");
        assert_eq!(vote(&c, id), id, "node {id}");
        assert_eq!(granted_votes(&c, id, false), BTreeSet::new());
    }

    // Randomized timeouts make one node time out first: it wins term 3.
    let mut rounds = 0;
    while c.leader().is_none() {
        c.tick_all(1);
        rounds += 1;
        assert!(rounds < 20, "no leader after two election timeouts");
    }
    let leader = c.leader().unwrap().0;
    assert_eq!(term(&c, leader), 3);
    for id in 1..=3 {
        assert_eq!(term(&c, id), 3, "node {id}");
        assert_eq!(leader_of(&c, id), leader, "node {id}");
    }
}

/// Ticks node `id` alone until it leaves the follower role; returns how
/// many ticks that took.
fn ticks_to_campaign(c: &mut Cluster, id: u64) -> u32 {
    for t in 1..=100 {
        c.tick(id);
        if role(c, id) != Role::Follower {
            return t;
        }
    }
    panic!("node {id} never campaigned");
}

#[test]
fn election_timeouts_are_randomized_per_node_and_per_election() {
    let run = || {
        let mut c = Cluster::new(7);
        for id in 1..=7 {
            c.isolate(id);
        }
        (1..=7)
            .map(|id| ticks_to_campaign(&mut c, id))
            .collect::<Vec<_>>()
    };
    let first = run();
    for &t in &first {
        assert!((10..20).contains(&t), "timeout {t} outside [10, 20)");
    }
    let distinct: BTreeSet<_> = first.iter().collect();
    assert!(
        distinct.len() >= 3,
        "nodes seeded differently should time out at different ticks: {first:?}"
    );
    assert_eq!(run(), first, "timeouts are deterministic for a given seed");

    // A node draws a new timeout for every election it starts.
    let mut c = Cluster::new(3);
    c.isolate(1);
    let mut gaps = Vec::new();
    let mut since = 0;
    for _ in 0..200 {
        c.tick(1);
        since += 1;
        let pre_votes = c.take_msgs(|m| m.from == NodeId(1) && m.body.kind() == "PreVote");
        if !pre_votes.is_empty() {
            gaps.push(since);
            since = 0;
        }
    }
    assert!(gaps.len() >= 10, "{gaps:?}");
    assert!(gaps.iter().all(|g| (10..20).contains(g)), "{gaps:?}");
    assert!(
        gaps.iter().collect::<BTreeSet<_>>().len() >= 3,
        "successive timeouts should differ: {gaps:?}"
    );
}

/// A fixed pseudo-random schedule (an LCG), so the run is reproducible.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

fn at_most_one_leader_per_term(pre_vote: bool, check_quorum: bool, seed: u64) {
    let mut c = Cluster::with_config(5, |cfg| {
        cfg.pre_vote = pre_vote;
        cfg.check_quorum = check_quorum;
    });
    let mut rng = Lcg(seed);
    let mut leaders: BTreeMap<u64, u64> = BTreeMap::new();
    let mut crashed: Option<u64> = None;
    for round in 0..1500 {
        if round % 25 == 0 {
            c.heal();
            if let Some(id) = crashed.take() {
                c.restart(id);
            }
            match rng.next(5) {
                0 => {}
                1 => c.isolate(rng.next(5) + 1),
                2 => {
                    let mut ids: Vec<u64> = (1..=5).collect();
                    for i in (1..ids.len()).rev() {
                        ids.swap(i, rng.next(i as u64 + 1) as usize);
                    }
                    c.partition(&[&ids[..2], &ids[2..]]);
                }
                3 => {
                    let (a, b) = (rng.next(5) + 1, rng.next(5) + 1);
                    if a != b {
                        c.cut_one_way(a, b);
                    }
                }
                _ => {
                    let id = rng.next(5) + 1;
                    c.crash(id);
                    crashed = Some(id);
                }
            }
        }
        if round % 7 == 0 {
            for id in c.up_ids() {
                if role(&c, id.0) == Role::Leader {
                    let _ = c.propose(id.0, format!("r{round}").as_bytes());
                }
            }
        }
        c.tick_all(1);
        for id in c.up_ids() {
            let s = c.node(id.0).status();
            if s.soft_state.role == Role::Leader {
                let prev = leaders.insert(s.hard_state.term.0, id.0);
                assert!(
                    prev.is_none() || prev == Some(id.0),
                    "two leaders in term {}: {prev:?} and {id}",
                    s.hard_state.term
                );
            }
        }
    }
    // Also from the traffic: only one node ever sent appends or heartbeats
    // in any term, even between the samples above.
    let mut senders: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for m in &c.sent_log {
        if matches!(
            m.body,
            MessageBody::AppendEntries { .. } | MessageBody::Heartbeat { .. }
        ) {
            senders.entry(m.term.0).or_default().insert(m.from.0);
        }
    }
    for (t, s) in &senders {
        assert_eq!(s.len(), 1, "term {t} had several leaders: {s:?}");
    }
    assert!(
        leaders.len() >= 4,
        "the schedule should cause several elections: {leaders:?}"
    );
    c.check_state_machine_safety();
}

#[test]
fn at_most_one_leader_per_term_under_a_partition_schedule() {
    at_most_one_leader_per_term(true, true, 7);
    at_most_one_leader_per_term(false, false, 11);
    at_most_one_leader_per_term(false, true, 23);
}

/// Node 3 is cut off for ten election timeouts while nodes 1 (leader) and
/// 2 go on; links come back at the moment node 3 campaigns again, so its
/// request reaches the others before any heartbeat reaches it.
fn isolated_node_rejoins_campaigning(pre_vote: bool) -> (Cluster, u64) {
    let mut c = Cluster::with_config(3, |cfg| cfg.pre_vote = pre_vote);
    c.elect(1);
    c.tick_all(3);
    c.isolate(3);
    c.tick_all(100);
    let isolated_term = term(&c, 3);
    c.heal();
    let kind = if pre_vote { "PreVote" } else { "Vote" };
    let mut t = 0;
    while !c
        .queue
        .iter()
        .any(|e| e.msg.from == NodeId(3) && e.msg.body.kind() == kind)
    {
        c.tick(3);
        t += 1;
        assert!(t < 40, "node 3 should campaign again");
    }
    c.stabilize();
    (c, isolated_term)
}

#[test]
fn pre_vote_stops_a_rejoining_node_from_disrupting_the_term() {
    let (mut c, isolated_term) = isolated_node_rejoins_campaigning(true);
    assert_eq!(isolated_term, 2, "failed pre-votes do not raise the term");
    assert!(count_kind(&c, "PreVote") > 10, "node 3 kept trying");
    assert_eq!(count_kind(&c, "Vote"), 2, "only the first election's votes");
    // Neither the leader nor node 2 (both in contact with a live leader)
    // granted the rejoining node a pre-vote.
    assert_eq!(granted_votes(&c, 3, true), BTreeSet::new());
    assert_eq!(role(&c, 1), Role::Leader);
    for id in 1..=3 {
        assert_eq!(term(&c, id), 2, "node {id}");
    }

    c.tick_all(30);
    assert_eq!(role(&c, 1), Role::Leader);
    for id in 1..=3 {
        assert_eq!(term(&c, id), 2, "node {id}");
        assert_eq!(leader_of(&c, id), 1, "node {id}");
    }
    c.propose(1, b"after").unwrap();
    c.stabilize();
    assert_eq!(c.node(3).applied_data(), vec![b"after".to_vec()]);
}

#[test]
fn without_pre_vote_a_rejoining_node_raises_the_term() {
    let (mut c, isolated_term) = isolated_node_rejoins_campaigning(false);
    assert!(isolated_term > 2, "node 3 campaigned in new terms alone");
    c.tick_all(30);
    // The old leader learned the higher term and stepped down: disruption.
    for id in 1..=3 {
        assert!(term(&c, id) > isolated_term, "node {id}");
    }
    assert!(c.leader().is_some());
}

/// Elects node 1, runs `ticks` rounds of heartbeats, then cuts node 1 off
/// and ticks it alone; returns after how many ticks it stepped down.
fn ticks_until_isolated_leader_steps_down(check_quorum: bool, ticks: u32) -> Option<u32> {
    let mut c = Cluster::with_config(3, |cfg| cfg.check_quorum = check_quorum);
    c.elect(1);
    c.tick_all(ticks);
    assert_eq!(role(&c, 1), Role::Leader);
    c.isolate(1);
    for t in 1..=100 {
        c.tick(1);
        if role(&c, 1) != Role::Leader {
            assert_eq!(role(&c, 1), Role::Follower);
            assert_eq!(term(&c, 1), 2, "stepping down does not change the term");
            assert_eq!(leader_of(&c, 1), 0);
            return Some(t);
        }
    }
    None
}

#[test]
fn check_quorum_leader_cut_from_the_majority_steps_down() {
    // The leader checks its quorum every election_tick (10) ticks. Isolated
    // just before a check, that check still counts the answers from before
    // the cut; the next one, an election timeout later, finds nobody and
    // the leader steps down: election_tick + 1 ticks after the cut.
    assert_eq!(ticks_until_isolated_leader_steps_down(true, 9), Some(11));
    // In any other phase it takes at most two election timeouts.
    for ticks in 0..9 {
        assert_eq!(
            ticks_until_isolated_leader_steps_down(true, ticks),
            Some(20 - ticks),
            "isolated after {ticks} ticks of leadership"
        );
    }
}

#[test]
fn without_check_quorum_an_isolated_leader_stays() {
    assert_eq!(ticks_until_isolated_leader_steps_down(false, 9), None);
}

#[test]
fn check_quorum_leader_with_a_live_majority_stays() {
    let mut c = Cluster::new(5);
    c.elect(1);
    // Nodes 2 and 3 still answer: with the leader that is 3 of 5.
    c.partition(&[&[1, 2, 3], &[4, 5]]);
    c.tick_all(50);
    assert_eq!(role(&c, 1), Role::Leader);
    assert_eq!(term(&c, 1), 2);

    // Only node 2 answers: 2 of 5 is not a quorum.
    c.heal();
    c.partition(&[&[1, 2], &[3, 4, 5]]);
    for _ in 0..20 {
        c.tick(1);
        c.tick(2);
        c.stabilize();
    }
    assert_eq!(role(&c, 1), Role::Follower);
    assert_eq!(term(&c, 1), 2);
}

/// Node 3, cut off, campaigns for term 3 (without pre-vote); its vote
/// request to node 2 is held, then delivered once the links are back.
fn vote_request_from_a_rejoining_node(check_quorum: bool) -> Cluster {
    let mut c = Cluster::with_config(3, |cfg| {
        cfg.pre_vote = false;
        cfg.check_quorum = check_quorum;
    });
    c.elect(1);
    c.tick_all(3); // node 2 hears heartbeats
    c.isolate(3);
    let mut t = 0;
    while role(&c, 3) != Role::Candidate {
        c.tick(3);
        t += 1;
        assert!(t < 30);
    }
    assert_eq!(term(&c, 3), 3);
    let req = c.take_msgs(|m| between(m, 3, 2) && m.body.kind() == "Vote");
    assert_eq!(req.len(), 1);
    c.heal();
    c.deliver(req.into_iter().next().unwrap()).unwrap();
    c.process_ready(NodeId(2));
    c
}

#[test]
fn leader_stickiness_a_follower_in_contact_ignores_a_higher_term_vote() {
    let mut c = vote_request_from_a_rejoining_node(true);
    assert_eq!(term(&c, 2), 2, "the higher term was not adopted");
    assert_eq!(vote(&c, 2), 1, "the vote for the leader stands");
    assert_eq!(role(&c, 2), Role::Follower);
    assert_eq!(leader_of(&c, 2), 1, "the leader is still known");
    assert!(
        c.take_msgs(|m| between(m, 2, 3)).is_empty(),
        "no answer at all: the request is ignored"
    );
}

#[test]
fn without_check_quorum_a_follower_adopts_the_higher_term_and_votes() {
    let mut c = vote_request_from_a_rejoining_node(false);
    assert_eq!(term(&c, 2), 3);
    assert_eq!(vote(&c, 2), 3);
    assert_eq!(leader_of(&c, 2), 0);
    let answers = c.take_msgs(|m| between(m, 2, 3));
    assert_eq!(answers.len(), 1);
    assert_eq!(
        answers[0].msg.body,
        MessageBody::RequestVoteResponse {
            pre_vote: false,
            granted: true
        }
    );
}

fn vote_request(from: u64, to: u64, term: u64, last: (u64, u64), transfer: bool) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(term),
        body: MessageBody::RequestVote {
            pre_vote: false,
            last_log: EntryId::new(Term(last.0), LogIndex(last.1)),
            transfer,
        },
    }
}

#[test]
fn a_live_leader_ignores_a_higher_term_vote_request() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.tick_all(25); // well past an election timeout of leadership
    // Node 3's log is as up to date as the leader's: only the lease stops it.
    let req = vote_request(3, 1, 9, (2, 2), false);
    c.node_mut(1).raw.step(req).unwrap();
    c.process_ready(NodeId(1));
    assert_eq!(role(&c, 1), Role::Leader);
    assert_eq!(term(&c, 1), 2);
    assert!(
        c.take_msgs(|m| between(m, 1, 3) && m.body.kind() == "VoteResp")
            .is_empty()
    );

    // A request sent for a leadership transfer is not disruptive: it counts.
    let req = vote_request(3, 1, 9, (2, 2), true);
    c.node_mut(1).raw.step(req).unwrap();
    assert_eq!(role(&c, 1), Role::Follower);
    assert_eq!(term(&c, 1), 9);
    assert_eq!(vote(&c, 1), 3);
}

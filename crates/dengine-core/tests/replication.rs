//! Log replication (Raft §5.3): entries reach every follower, lagging and
//! divergent followers are repaired, with fast backtracking, pipelining and
//! flow control.

mod scenario_support;

use std::collections::BTreeMap;

use dengine_core::testing::Cluster;
use dengine_core::tracker::ProgressState;
use dengine_core::{MessageBody, NodeId, Role};
use scenario_support::*;

fn no_lease_config() -> impl Fn(&mut dengine_core::Config) {
    |cfg| {
        cfg.pre_vote = false;
        cfg.check_quorum = false;
    }
}

fn payloads(prefix: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("{prefix}{i}").into_bytes())
        .collect()
}

#[test]
fn the_leaders_entries_reach_every_follower_in_order() {
    let mut c = Cluster::new(5);
    c.elect(1);
    let data = payloads("e", 10);
    for d in &data {
        c.propose(1, d).unwrap();
    }
    c.stabilize();
    let expected_terms: Vec<u64> = [1, 2].into_iter().chain([2; 10]).collect();
    for id in 1..=5 {
        assert_eq!(last_index(&c, id), 12, "node {id}");
        assert_eq!(terms(&c, id, 1, 12), expected_terms, "node {id}");
        assert_eq!(commit(&c, id), 12, "node {id}");
        assert_eq!(c.node(id).applied_data(), data, "node {id}");
        let indexes: Vec<u64> = applied(&c, id).iter().map(|(i, _)| *i).collect();
        assert_eq!(indexes, (3..=12).collect::<Vec<_>>(), "node {id}");
    }
    c.check_state_machine_safety();
}

#[test]
fn a_follower_that_was_down_catches_up_after_restart() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.crash(3);
    let data = payloads("d", 5);
    for d in &data {
        c.propose(1, d).unwrap();
    }
    c.stabilize();
    // Nodes 1 and 2 are a majority: committed without node 3.
    assert_eq!(commit(&c, 1), 7);
    assert_eq!(c.node(2).applied_data(), data);
    assert_eq!(last_index(&c, 3), 2);

    c.restart(3);
    assert_eq!(last_index(&c, 3), 2);
    // One heartbeat round: the answer shows the leader node 3 is behind and
    // it sends what is missing, without waiting for a new proposal.
    c.tick_all(1);
    assert_eq!(terms(&c, 3, 1, 7), terms(&c, 1, 1, 7));
    assert_eq!(commit(&c, 3), 7);
    assert_eq!(c.node(3).applied_data(), data);
    c.check_state_machine_safety();
}

/// Node 1, alone in term 2, appended 50 entries nobody else has; nodes 2
/// (term 3) and 3 (term 4) then led without it. Node 3's log: the no-op of
/// term 2, 30 entries of term 3, its own no-op at 33.
#[test]
fn fast_backtracking_the_leader_skips_a_whole_stale_term() {
    let mut c = Cluster::with_config(3, no_lease_config());
    c.elect(1);
    c.partition(&[&[1], &[2, 3]]);
    c.node_mut(1)
        .raw
        .propose_batch(payloads("stale", 50))
        .unwrap();
    c.stabilize();
    c.elect(2);
    c.node_mut(2)
        .raw
        .propose_batch(payloads("t3-", 29))
        .unwrap();
    c.stabilize();
    c.elect(3);
    assert_eq!(term(&c, 3), 4);
    assert_eq!(last_index(&c, 3), 33);
    assert_eq!(last_index(&c, 1), 52);
    assert_eq!(terms(&c, 1, 32, 32), vec![2]);

    c.heal();
    let mark = c.sent_log.len();
    c.tick_all(2);
    // Node 1 rejects the probe at 32 once, hinting its entry there has term
    // 2; the leader finds its own last entry of term <= 2 (index 2) and
    // retries from there. One-by-one backtracking would take 30 rejections.
    let rejections = rejections_since(&c, mark, 1, 3);
    assert!(
        (1..=2).contains(&rejections),
        "{rejections} rejections for a divergent suffix of one term"
    );
    let expected: Vec<u64> = [1, 2].into_iter().chain([3; 30]).chain([4]).collect();
    assert_eq!(terms(&c, 1, 1, 33), expected);
    assert_eq!(last_index(&c, 1), 33, "the stale suffix is gone");
    assert_eq!(commit(&c, 1), 33);
    assert!(
        applied(&c, 1).iter().all(|(_, d)| !d.starts_with(b"stale")),
        "stale entries were never applied"
    );
    c.check_state_machine_safety();
}

/// Five nodes. Nodes 1 and 2 hold 38 uncommitted entries of term 2; nodes 3
/// and 4 hold 28 uncommitted entries of term 3 at the same indexes. Node 2
/// then wins term 4 (with 1 and 5): nodes 3 and 4 must drop their whole
/// term-3 suffix, which is longer than any term 2 entry they could match.
#[test]
fn fast_backtracking_the_follower_skips_its_own_higher_term_suffix() {
    let mut c = Cluster::with_config(5, no_lease_config());
    c.elect(1);
    c.partition(&[&[1, 2], &[3, 4, 5]]);
    c.node_mut(1).raw.propose_batch(payloads("a", 38)).unwrap();
    c.stabilize();
    assert_eq!(commit(&c, 1), 2, "2 of 5 is not a quorum");

    // Node 3 wins term 3 with 4 and 5, but only node 4 gets its entries.
    run_election_only(&mut c, 3);
    assert_eq!(role(&c, 3), Role::Leader);
    c.isolate(5);
    c.node_mut(3).raw.propose_batch(payloads("b", 27)).unwrap();
    c.stabilize();
    assert_eq!(commit(&c, 3), 2);
    assert_eq!(last_index(&c, 4), 30);

    c.heal();
    c.partition(&[&[1, 2, 5], &[3, 4]]);
    c.campaign(2); // term 3: node 5 already voted for 3
    assert_eq!(role(&c, 2), Role::Candidate);
    c.elect(2); // term 4
    assert_eq!(term(&c, 2), 4);
    assert_eq!(commit(&c, 2), 41);

    c.heal();
    let mark = c.sent_log.len();
    c.tick_all(2);
    let expected: Vec<u64> = [1].into_iter().chain([2; 39]).chain([4]).collect();
    for id in [3, 4] {
        // The probe at index 40 (term 2) is refused; the follower's hint
        // skips back over all of its term-3 entries to index 2 (term 2), so
        // the next probe matches. Index by index it would take 28 refusals.
        let rejections = rejections_since(&c, mark, id, 2);
        assert!(
            (1..=2).contains(&rejections),
            "node {id}: {rejections} rejections for a suffix of one term"
        );
        assert_eq!(terms(&c, id, 1, 41), expected, "node {id}");
        assert_eq!(last_index(&c, id), 41, "node {id}");
        assert_eq!(commit(&c, id), 41, "node {id}");
        assert!(applied(&c, id).iter().all(|(_, d)| !d.starts_with(b"b")));
    }
    c.check_state_machine_safety();
}

#[test]
fn pipelining_the_leader_streams_appends_without_waiting_for_answers() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let pr = c.node(1).status().progress[&NodeId(2)];
    assert_eq!(pr.state, ProgressState::Replicate);

    for d in payloads("p", 10) {
        c.propose(1, &d).unwrap();
    }
    c.process_ready(NodeId(1));
    // Ten appends to node 2 are in flight at once, one per proposal, each
    // following the previous one.
    let prevs: Vec<u64> = c
        .queue
        .iter()
        .filter(|e| between(&e.msg, 1, 2) && is_entry_append(&e.msg))
        .map(|e| match &e.msg.body {
            MessageBody::AppendEntries { prev, .. } => prev.index.0,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(prevs, (2..12).collect::<Vec<_>>());
    assert!(
        !c.queue.iter().any(|e| e.msg.body.kind() == "AppResp"),
        "nothing was answered yet"
    );
    c.stabilize();
    for id in 1..=3 {
        assert_eq!(commit(&c, id), 12, "node {id}");
    }
}

/// Delivers the queue one message at a time (processing every node after
/// each), and returns the most entry-carrying appends that were ever sent
/// to each follower and not yet acknowledged to the leader.
fn max_unacked_appends(c: &mut Cluster, leader: u64) -> BTreeMap<u64, usize> {
    // Acknowledged so far: what the leader knows each follower matched.
    let mut acked: BTreeMap<u64, u64> = c
        .node(leader)
        .status()
        .progress
        .iter()
        .map(|(id, p)| (id.0, p.matched.0))
        .collect();
    let mut max: BTreeMap<u64, usize> = BTreeMap::new();
    let mut steps = 0;
    loop {
        process_all(c);
        for id in c.up_ids() {
            let f = id.0;
            if f == leader {
                continue;
            }
            let a = acked.get(&f).copied().unwrap_or(0);
            let unacked = c
                .sent_log
                .iter()
                .filter(|m| between(m, leader, f))
                .filter_map(append_last)
                .filter(|last| last.0 > a)
                .count();
            let e = max.entry(f).or_default();
            *e = (*e).max(unacked);
        }
        let Some(env) = c.queue.pop_front() else {
            return max;
        };
        if env.msg.to == NodeId(leader)
            && let MessageBody::AppendEntriesResponse { result: Ok(i) } = env.msg.body
        {
            let a = acked.entry(env.msg.from.0).or_default();
            *a = (*a).max(i.0);
        }
        let _ = c.deliver(env);
        steps += 1;
        assert!(steps < 10_000);
    }
}

#[test]
fn flow_control_at_most_max_inflight_appends_per_follower() {
    let mut c = Cluster::with_config(3, |cfg| cfg.max_inflight_msgs = 2);
    c.elect(1);
    let data = payloads("f", 20);
    for d in &data {
        c.propose(1, d).unwrap();
    }
    c.process_ready(NodeId(1));
    for f in [2, 3] {
        let queued = c
            .queue
            .iter()
            .filter(|e| between(&e.msg, 1, f) && is_entry_append(&e.msg))
            .count();
        assert_eq!(queued, 2, "only two appends to node {f} before any answer");
    }
    let max = max_unacked_appends(&mut c, 1);
    assert_eq!(max, BTreeMap::from([(2, 2), (3, 2)]));
    for id in 1..=3 {
        assert_eq!(commit(&c, id), 22, "node {id}");
        assert_eq!(c.node(id).applied_data(), data, "node {id}");
    }

    // The same run without the limit has all twenty in flight at once.
    let mut c = Cluster::new(3);
    c.elect(1);
    for d in &data {
        c.propose(1, d).unwrap();
    }
    let max = max_unacked_appends(&mut c, 1);
    assert_eq!(max, BTreeMap::from([(2, 20), (3, 20)]));
}

/// A proposed payload is one shared buffer: the leader's `AppendEntries` to
/// each follower carries the same memory (no copy per follower), and it is
/// the very buffer the proposer handed in.
#[test]
fn a_payload_is_shared_by_every_followers_append_not_copied() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.stabilize();
    let proposed = dengine_core::Bytes::from(b"one buffer for all".to_vec());
    let idx = c.node_mut(1).raw.propose(proposed.clone()).unwrap();
    let rd = c.node_mut(1).raw.ready().unwrap();
    let messages = rd
        .messages
        .iter()
        .chain(rd.persist.iter().flat_map(|b| b.messages.iter()));
    let mut sent = BTreeMap::new();
    for m in messages {
        if let MessageBody::AppendEntries { entries, .. } = &m.body {
            let e = entries
                .iter()
                .find(|e| e.index == idx)
                .expect("the proposed entry in the append");
            let dengine_core::EntryPayload::Normal(d) = &e.payload else {
                panic!("a normal entry, got {:?}", e.payload);
            };
            assert_eq!(d, &proposed);
            sent.insert(m.to.0, d.clone());
        }
    }
    assert_eq!(sent.len(), 2, "one append to each follower: {sent:?}");
    let (to2, to3) = (&sent[&2], &sent[&3]);
    assert_eq!(to2.as_ptr(), to3.as_ptr(), "both appends share the buffer");
    assert_eq!(to2.as_ptr(), proposed.as_ptr(), "the proposer's buffer");
    // The entry to persist is the same buffer too.
    let persisted = &rd.persist.as_ref().expect("the entry to persist").entries;
    let dengine_core::EntryPayload::Normal(p) = &persisted[0].payload else {
        panic!("a normal entry");
    };
    assert_eq!(p.as_ptr(), proposed.as_ptr());
}

/// Whether `m` is an append from `from` to `to` that carries no entry (it
/// only tells the commit index).
fn is_commit_only(m: &dengine_core::Message, from: u64, to: u64) -> bool {
    between(m, from, to)
        && matches!(&m.body, MessageBody::AppendEntries { entries, .. } if entries.is_empty())
}

/// The commit index carried by the queued commit-only appends to `to`.
fn commits_told(c: &Cluster, to: u64) -> Vec<u64> {
    c.queue
        .iter()
        .filter(|e| is_commit_only(&e.msg, 1, to))
        .map(|e| match &e.msg.body {
            MessageBody::AppendEntries { commit, .. } => commit.0,
            _ => unreachable!(),
        })
        .collect()
}

#[test]
fn a_follower_with_appends_in_flight_learns_the_commit_when_the_last_is_acknowledged() {
    let mut c = Cluster::with_config(3, no_lease_config());
    c.elect(1);
    c.stabilize();
    let base = last_index(&c, 1);
    // Two appends to each follower, one entry each.
    c.propose(1, b"a").unwrap();
    c.process_ready(NodeId(1));
    c.propose(1, b"b").unwrap();
    c.process_ready(NodeId(1));
    let appends = c.take_msgs(is_entry_append);
    assert_eq!(appends.len(), 4);
    for env in appends {
        c.deliver(env).unwrap();
    }
    c.process_ready(NodeId(2));
    c.process_ready(NodeId(3));
    let mut acks = c.take_msgs(|m| m.body.kind() == "AppResp");
    assert_eq!(acks.len(), 4);
    let mut ack = |from: u64, index: u64| {
        let pos = acks
            .iter()
            .position(|e| {
                e.msg.from == NodeId(from)
                    && e.msg.body
                        == MessageBody::AppendEntriesResponse {
                            result: Ok(dengine_core::LogIndex(index)),
                        }
            })
            .unwrap();
        acks.remove(pos)
    };

    // Node 2 acknowledges the first entry: it commits, but both followers
    // still have an append in flight, which carries the commit or whose
    // acknowledgement brings it. No message carries only the commit.
    c.deliver(ack(2, base + 1)).unwrap();
    c.process_ready(NodeId(1));
    assert_eq!(commit(&c, 1), base + 1);
    assert_eq!(commits_told(&c, 2), Vec::<u64>::new());
    assert_eq!(commits_told(&c, 3), Vec::<u64>::new());

    // Node 2's last append is acknowledged: it learns the new commit now.
    c.deliver(ack(2, base + 2)).unwrap();
    c.process_ready(NodeId(1));
    assert_eq!(commit(&c, 1), base + 2);
    assert_eq!(commits_told(&c, 2), vec![base + 2]);
    assert_eq!(commits_told(&c, 3), Vec::<u64>::new());

    // Node 3 lags behind the commit: only the acknowledgement of its last
    // append in flight brings it the commit index.
    c.deliver(ack(3, base + 1)).unwrap();
    c.process_ready(NodeId(1));
    assert_eq!(commits_told(&c, 3), Vec::<u64>::new());
    c.deliver(ack(3, base + 2)).unwrap();
    c.process_ready(NodeId(1));
    assert_eq!(commits_told(&c, 3), vec![base + 2]);

    c.stabilize();
    for id in 1..=3 {
        assert_eq!(commit(&c, id), base + 2, "node {id}");
    }
}

#[test]
fn a_held_commit_notice_goes_when_asked_or_at_the_tick_unless_an_append_overtakes_it() {
    let mut c = Cluster::with_config(3, |cfg: &mut dengine_core::Config| {
        cfg.pre_vote = false;
        cfg.check_quorum = false;
        cfg.defer_commit_notices = true;
    });
    c.elect(1);
    c.stabilize();
    c.node_mut(1).raw.send_commit_notices().unwrap();
    c.stabilize();
    let base = last_index(&c, 1);
    assert_eq!(commit(&c, 2), base);

    // The entry commits on the leader; the followers are not told (no
    // message carries only the commit): the notice is held.
    c.propose(1, b"a").unwrap();
    c.stabilize();
    assert_eq!(commit(&c, 1), base + 1);
    assert_eq!(commit(&c, 2), base);
    assert_eq!(commit(&c, 3), base);
    assert!(c.node(1).raw.has_commit_notices_due());

    // Asked, the leader sends it.
    c.node_mut(1).raw.send_commit_notices().unwrap();
    c.process_ready(NodeId(1));
    assert_eq!(commits_told(&c, 2), vec![base + 1]);
    assert_eq!(commits_told(&c, 3), vec![base + 1]);
    assert!(!c.node(1).raw.has_commit_notices_due());
    c.stabilize();
    assert_eq!(commit(&c, 2), base + 1);

    // The next append overtakes a held notice: it carries the commit, and
    // the notice is dropped.
    c.propose(1, b"b").unwrap();
    c.stabilize();
    assert!(c.node(1).raw.has_commit_notices_due());
    c.propose(1, b"c").unwrap();
    c.process_ready(NodeId(1));
    assert!(!c.node(1).raw.has_commit_notices_due());
    c.node_mut(1).raw.send_commit_notices().unwrap();
    c.process_ready(NodeId(1));
    assert_eq!(commits_told(&c, 2), Vec::<u64>::new());
    assert_eq!(commits_told(&c, 3), Vec::<u64>::new());
    let carried: Vec<u64> = c
        .queue
        .iter()
        .filter(|e| is_entry_append(&e.msg))
        .map(|e| match &e.msg.body {
            MessageBody::AppendEntries { commit, .. } => commit.0,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(carried, vec![base + 2, base + 2]);

    // A tick sends what is held.
    c.stabilize();
    assert_eq!(commit(&c, 1), base + 3);
    assert_eq!(commit(&c, 2), base + 2);
    assert!(c.node(1).raw.has_commit_notices_due());
    c.tick(1);
    assert_eq!(commits_told(&c, 2), vec![base + 3]);
    assert_eq!(commits_told(&c, 3), vec![base + 3]);
    c.stabilize();
    for id in 1..=3 {
        assert_eq!(commit(&c, id), base + 3, "node {id}");
    }
}

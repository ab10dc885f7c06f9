//! Snapshots and log compaction (Raft §7): snapshot requests by policy,
//! compaction behind a stored snapshot, InstallSnapshot to a follower the
//! compacted log left behind, stale snapshots, and failed snapshot sends.

use std::collections::BTreeSet;

use dengine_core::testing::{Cluster, Envelope, TestNode};
use dengine_core::tracker::ProgressState;
use dengine_core::{
    ConfState, EntryPayload, LogIndex, LogStorage, Message, MessageBody, NodeId, Ready,
    SnapshotMeta, Term,
};

fn snap_cluster(n: u64, threshold: u64, lag: u64) -> Cluster {
    Cluster::with_config(n, |cfg| {
        cfg.snapshot_threshold = threshold;
        cfg.compaction_lag = lag;
    })
}

fn first_index(n: &TestNode) -> LogIndex {
    n.storage.first_index().unwrap()
}

fn snapshot_index(n: &TestNode) -> LogIndex {
    n.storage.lock().snapshot.last_index
}

fn count(log: &[Message], pred: impl Fn(&Message) -> bool) -> usize {
    log.iter().filter(|m| pred(m)).count()
}

fn is_snapshot_to(to: u64) -> impl Fn(&Message) -> bool {
    move |m| m.to == NodeId(to) && matches!(m.body, MessageBody::InstallSnapshot { .. })
}

fn voters(ids: &[u64]) -> ConfState {
    ConfState::with_voters(ids.iter().copied().map(NodeId))
}

/// Carries out one Ready of a single-node cluster by hand (no messages),
/// returning it so the test can look at what the core asked for.
fn run_ready(n: &mut TestNode) -> Ready {
    let rd = n.raw.ready().unwrap();
    if let Some(b) = &rd.persist {
        n.storage.persist(b, Vec::new()).unwrap();
        n.raw.on_persisted(b.persisted()).unwrap();
    }
    if let Some(last) = rd.committed_entries.last() {
        for e in &rd.committed_entries {
            if let EntryPayload::Normal(d) = &e.payload {
                n.applied.push((e.index, d.to_vec()));
            }
        }
        n.storage.lock().applied = last.index;
        n.raw.on_applied(last.index).unwrap();
    }
    rd
}

/// Proposes `k` commands on the leader, one Ready each.
fn propose_n(c: &mut Cluster, leader: u64, from: u64, k: u64) {
    for i in from..from + k {
        c.propose(leader, format!("c{i}").as_bytes()).unwrap();
        c.stabilize();
    }
}

#[test]
fn snapshot_is_requested_at_the_applied_index_and_the_log_compacted_behind_it() {
    let mut c = snap_cluster(1, 5, 2);
    c.elect(1); // bootstrap at 1, no-op at 2: applied 2
    let n = c.node_mut(1);
    assert_eq!(n.raw.status().applied, LogIndex(2));
    let term = n.raw.status().hard_state.term;

    let mut requests = Vec::new();
    for i in 3..=5u64 {
        n.raw.propose(vec![i as u8]).unwrap();
        while n.raw.has_ready() {
            let applied = n.raw.status().applied;
            let rd = run_ready(n);
            assert_eq!(rd.compact_to, None, "nothing to compact before a snapshot");
            if let Some(m) = rd.snapshot_request {
                requests.push((applied, m));
            }
        }
    }
    // Five entries applied since the last snapshot (at 0): asked at 5.
    let meta = SnapshotMeta {
        last_index: LogIndex(5),
        last_term: term,
        conf_state: voters(&[1]),
    };
    assert_eq!(requests, vec![(LogIndex(5), meta.clone())]);
    assert_eq!(first_index(n), LogIndex(1));

    n.storage.lock().store_snapshot(meta.clone(), Vec::new());
    n.raw.snapshot_created(&meta).unwrap();
    assert!(n.raw.has_ready());
    let rd = run_ready(n);
    assert_eq!(rd.compact_to, Some(LogIndex(3)), "snapshot 5 minus lag 2");
    n.storage.lock().compact(LogIndex(3)).unwrap();
    assert_eq!(first_index(n), LogIndex(4));

    // The next request comes five applied entries later.
    let mut next = None;
    for i in 6..=10u64 {
        n.raw.propose(vec![i as u8]).unwrap();
        while n.raw.has_ready() {
            if let Some(m) = run_ready(n).snapshot_request {
                assert!(next.is_none());
                next = Some(m.last_index);
            }
        }
    }
    assert_eq!(next, Some(LogIndex(10)));
}

#[test]
fn a_requested_snapshot_is_asked_once_at_the_next_ready_whatever_the_threshold() {
    // Threshold 0: the core never asks on its own.
    let mut c = snap_cluster(1, 0, 0);
    c.elect(1);
    let n = c.node_mut(1);
    for i in 3..=4u64 {
        n.raw.propose(vec![i as u8]).unwrap();
        while n.raw.has_ready() {
            assert_eq!(
                run_ready(n).snapshot_request,
                None,
                "threshold 0 asks nothing"
            );
        }
    }
    let term = n.raw.status().hard_state.term;

    n.raw.request_snapshot();
    assert!(n.raw.has_ready());
    let rd = run_ready(n);
    let meta = SnapshotMeta {
        last_index: LogIndex(4),
        last_term: term,
        conf_state: voters(&[1]),
    };
    assert_eq!(
        rd.snapshot_request,
        Some(meta.clone()),
        "at the last index handed out"
    );
    assert!(
        !n.raw.has_ready(),
        "asked once, not again before the answer"
    );

    // A failure is asked again only after the backoff, and only because
    // the request still stands.
    n.raw.snapshot_failed();
    n.raw.request_snapshot();
    assert!(
        !n.raw.has_ready(),
        "the backoff holds an explicit request too"
    );
    for _ in 0..200 {
        n.raw.tick().unwrap();
    }
    let mut asked = None;
    while n.raw.has_ready() {
        if let Some(m) = run_ready(n).snapshot_request {
            assert!(asked.is_none(), "asked twice");
            asked = Some(m);
        }
    }
    assert_eq!(asked, Some(meta.clone()));
    n.storage.lock().store_snapshot(meta.clone(), Vec::new());
    n.raw.snapshot_created(&meta).unwrap();
    while n.raw.has_ready() {
        assert_eq!(
            run_ready(n).snapshot_request,
            None,
            "answered: not asked again"
        );
    }
}

/// A single node that applied 3..=6 and made only commit 4 durable
/// (a runtime holds commit-only hard states back), restarted from its
/// storage: the core is then told the state machine kept `restored`.
fn restart_with_state_machine_at(restored: Option<u64>) -> TestNode {
    let mut c = snap_cluster(1, 0, 0);
    c.elect(1);
    let mut n = c.nodes.remove(&NodeId(1)).unwrap();
    for i in 3..=6u64 {
        n.raw.propose(vec![i as u8]).unwrap();
        while n.raw.has_ready() {
            run_ready(&mut n);
        }
    }
    {
        let mut s = n.storage.lock();
        assert_eq!(s.hard_state.commit, LogIndex(6));
        s.hard_state.commit = LogIndex(4);
        s.applied = LogIndex(2);
    }
    n.raw = dengine_core::RawNode::new(n.config.clone(), n.storage.clone()).unwrap();
    if let Some(at) = restored {
        n.raw.state_machine_restored(LogIndex(at));
    }
    n
}

/// Runs Readies until none is left: the indexes handed out, and the
/// snapshot asked for, if any.
fn drain(n: &mut TestNode) -> (Vec<u64>, Option<SnapshotMeta>) {
    let mut handed = Vec::new();
    let mut asked = None;
    while n.raw.has_ready() {
        let rd = run_ready(n);
        handed.extend(rd.committed_entries.iter().map(|e| e.index.0));
        if let Some(m) = rd.snapshot_request {
            assert!(asked.is_none(), "asked twice");
            asked = Some(m);
        }
    }
    (handed, asked)
}

#[test]
fn without_word_of_the_state_machine_a_restart_asks_at_the_durable_commit() {
    // The case the next test guards against: a state machine that kept
    // its state through 6 can not write a snapshot at 4.
    let mut n = restart_with_state_machine_at(None);
    n.raw.request_snapshot();
    let (handed, asked) = drain(&mut n);
    assert_eq!(handed, vec![3, 4]);
    assert_eq!(asked.map(|m| m.last_index), Some(LogIndex(4)));
}

#[test]
fn a_state_machine_restored_past_the_durable_commit_raises_it_and_is_never_asked_below() {
    let mut n = restart_with_state_machine_at(Some(6));
    assert_eq!(n.raw.status().hard_state.commit, LogIndex(6));
    n.raw.request_snapshot();
    let (handed, asked) = drain(&mut n);
    assert_eq!(handed, vec![3, 4, 5, 6], "handed out again through 6");
    assert_eq!(asked.map(|m| m.last_index), Some(LogIndex(6)));
    assert_eq!(
        n.storage.lock().hard_state.commit,
        LogIndex(6),
        "the raised commit index is made durable"
    );
}

#[test]
fn a_state_machine_restored_past_the_log_waits_for_the_commit_to_reach_it() {
    // The state machine says 8 while the log ends at 6: the commit index
    // is not raised past what the log holds (it rises as entries come),
    // and no snapshot is asked before the hand-out reaches 8.
    let mut n = restart_with_state_machine_at(Some(8));
    assert_eq!(n.raw.status().hard_state.commit, LogIndex(4));
    n.raw.request_snapshot();
    let (handed, asked) = drain(&mut n);
    assert_eq!(handed, vec![3, 4]);
    assert_eq!(asked, None, "4 is below the state machine");

    n.raw.campaign().unwrap();
    let (handed, asked) = drain(&mut n);
    assert_eq!(handed, vec![5, 6, 7], "the new leader's entry at 7");
    assert_eq!(asked, None, "7 is below the state machine");

    n.raw.propose(b"8".to_vec()).unwrap();
    let (handed, asked) = drain(&mut n);
    assert_eq!(handed, vec![8]);
    assert_eq!(asked.map(|m| m.last_index), Some(LogIndex(8)));
}

#[test]
fn a_snapshot_past_the_applied_index_is_refused() {
    let mut c = snap_cluster(1, 5, 0);
    c.elect(1);
    let n = c.node_mut(1);
    let meta = SnapshotMeta {
        last_index: LogIndex(9),
        last_term: Term(2),
        conf_state: voters(&[1]),
    };
    assert!(matches!(
        n.raw.snapshot_created(&meta),
        Err(dengine_core::Error::InvalidReport(_))
    ));
    assert!(!n.raw.has_ready(), "no compaction for a refused snapshot");
}

#[test]
fn the_cluster_compacts_every_log_behind_its_snapshots() {
    let mut c = snap_cluster(3, 5, 0);
    c.elect(1);
    propose_n(&mut c, 1, 0, 10); // entries 3..=12
    for id in 1..=3 {
        let n = c.node(id);
        assert_eq!(n.status().applied, LogIndex(12));
        let s = snapshot_index(n);
        assert!(s >= LogIndex(10), "node {id}: snapshot at {s}");
        assert_eq!(first_index(n), s.next(), "node {id}: compacted with lag 0");
    }
}

/// Three nodes; node 3 crashes, then the others move on far enough that
/// their logs no longer hold what node 3 needs.
fn cluster_with_follower_behind_compaction() -> Cluster {
    let mut c = snap_cluster(3, 5, 0);
    c.elect(1);
    propose_n(&mut c, 1, 0, 2);
    c.crash(3);
    propose_n(&mut c, 1, 2, 10);
    let node3_last = c.node(3).storage.last_index().unwrap();
    assert_eq!(node3_last, LogIndex(4));
    assert!(first_index(c.node(1)) > node3_last.next());
    c
}

#[test]
fn a_follower_behind_the_compacted_log_catches_up_by_snapshot() {
    let mut c = cluster_with_follower_behind_compaction();
    let leader_snap = c.node(1).storage.lock().snapshot.clone();
    c.restart(3);
    c.tick(1);
    c.stabilize();

    assert_eq!(count(&c.sent_log, is_snapshot_to(3)), 1);
    let n3 = c.node(3);
    assert_eq!(
        n3.storage.lock().snapshot,
        leader_snap,
        "installed the leader's snapshot"
    );
    assert_eq!(n3.status().applied, c.node(1).status().applied);
    assert_eq!(n3.applied_data(), c.node(1).applied_data());
    assert_eq!(
        c.node(1).status().progress[&NodeId(3)].state,
        ProgressState::Replicate
    );

    // Replication continues normally from there, with entries.
    let mark = c.sent_log.len();
    propose_n(&mut c, 1, 12, 2);
    assert_eq!(count(&c.sent_log[mark..], is_snapshot_to(3)), 0);
    assert!(
        count(&c.sent_log[mark..], |m| {
            m.to == NodeId(3)
                && matches!(&m.body, MessageBody::AppendEntries { entries, .. } if !entries.is_empty())
        }) >= 2
    );
    assert_eq!(c.node(3).applied_data(), c.node(1).applied_data());
    assert_eq!(c.node(3).applied_data().len(), 14);
    assert_eq!(
        c.node(3).storage.last_index().unwrap(),
        c.node(1).storage.last_index().unwrap()
    );
    c.check_state_machine_safety();
}

#[test]
fn a_snapshot_older_than_the_followers_commit_is_answered_without_installing() {
    let mut c = snap_cluster(3, 100, 0);
    c.elect(1);
    propose_n(&mut c, 1, 0, 6); // entries 3..=8, committed everywhere
    let before = c.node(2).storage.lock().clone();
    assert_eq!(before.hard_state.commit, LogIndex(8));
    let term = c.node(1).status().hard_state.term;

    let stale = SnapshotMeta {
        last_index: LogIndex(5),
        last_term: term,
        conf_state: voters(&[1, 2, 3]),
    };
    let env = Envelope {
        msg: Message {
            from: NodeId(1),
            to: NodeId(2),
            term,
            body: MessageBody::InstallSnapshot { meta: stale },
        },
        snapshot_data: Some(b"garbage".to_vec()),
    };
    c.deliver(env).unwrap();
    c.process_ready(NodeId(2));

    let after = c.node(2).storage.lock().clone();
    assert_eq!(after.snapshot, before.snapshot, "nothing installed");
    assert_eq!(after.entries, before.entries);
    assert_eq!(c.node(2).applied_data().len(), 6);
    let reply: Vec<Envelope> = c.take_msgs(|m| m.from == NodeId(2));
    assert_eq!(reply.len(), 1);
    assert_eq!(
        reply[0].msg.body,
        MessageBody::AppendEntriesResponse {
            result: Ok(LogIndex(8))
        },
        "answered with its commit index"
    );
}

#[test]
fn a_snapshot_of_entries_the_follower_already_has_only_commits_them() {
    let mut c = snap_cluster(3, 100, 0);
    c.elect(1);
    propose_n(&mut c, 1, 0, 2); // entries 3, 4
    // Node 3 gets entry 5, but its ack is lost and it never learns that
    // entry 5 committed.
    c.propose(1, b"x").unwrap();
    c.process_ready(NodeId(1));
    c.deliver_all();
    c.process_ready(NodeId(2));
    c.process_ready(NodeId(3));
    drop(c.take_msgs(|m| m.from == NodeId(3)));
    c.cut_one_way(1, 3);
    c.stabilize();
    c.heal();
    assert_eq!(c.node(3).storage.last_index().unwrap(), LogIndex(5));
    assert_eq!(c.node(3).status().hard_state.commit, LogIndex(4));

    let term = c.node(1).status().hard_state.term;
    let meta = SnapshotMeta {
        last_index: LogIndex(5),
        last_term: term,
        conf_state: voters(&[1, 2, 3]),
    };
    c.deliver(Envelope {
        msg: Message {
            from: NodeId(1),
            to: NodeId(3),
            term,
            body: MessageBody::InstallSnapshot { meta },
        },
        snapshot_data: Some(Vec::new()),
    })
    .unwrap();
    c.process_ready(NodeId(3));
    let s = c.node(3).storage.lock().clone();
    assert_eq!(s.snapshot.last_index, LogIndex(0), "not installed");
    assert_eq!(s.entries.len(), 5, "the log is kept");
    assert_eq!(c.node(3).status().hard_state.commit, LogIndex(5));
    assert_eq!(c.node(3).applied_data(), c.node(1).applied_data());
}

#[test]
fn a_failed_snapshot_send_returns_to_probe_and_is_retried() {
    let mut c = cluster_with_follower_behind_compaction();
    c.restart(3);
    c.tick(1);
    c.process_ready(NodeId(1));
    // Stabilize, dropping the snapshot on the way (the stream broke).
    let mut dropped = Vec::new();
    for _ in 0..100 {
        let ids: Vec<NodeId> = c.nodes.keys().copied().collect();
        let mut any = false;
        for id in ids {
            any |= c.process_ready(id);
        }
        dropped.extend(c.take_msgs(is_snapshot_to(3)));
        if c.deliver_all() == 0 && !any {
            break;
        }
    }
    assert_eq!(dropped.len(), 1);
    let pr = |c: &Cluster| c.node(1).status().progress[&NodeId(3)];
    assert_eq!(pr(&c).state, ProgressState::Snapshot);

    // Without a report the leader waits: heartbeats, but no new snapshot.
    for _ in 0..3 {
        c.tick(1);
        c.stabilize();
    }
    assert_eq!(count(&c.sent_log, is_snapshot_to(3)), 1);
    assert_eq!(pr(&c).state, ProgressState::Snapshot);

    c.node_mut(1).raw.report_snapshot(NodeId(3), false).unwrap();
    assert_eq!(pr(&c).state, ProgressState::Probe);
    assert_eq!(
        pr(&c).next,
        LogIndex(5),
        "probe again from after what it has"
    );
    c.tick(1);
    c.stabilize();
    assert_eq!(count(&c.sent_log, is_snapshot_to(3)), 2, "retried");
    assert_eq!(pr(&c).state, ProgressState::Replicate);
    assert_eq!(c.node(3).applied_data(), c.node(1).applied_data());
    let members: BTreeSet<NodeId> = c.node(3).status().conf_state.voters;
    assert_eq!(members, voters(&[1, 2, 3]).voters);
}

#[test]
fn a_node_joining_after_compaction_starts_from_a_snapshot() {
    use dengine_core::{ConfChange, ConfChangeStep, ConfChangeTransition};
    let mut c = snap_cluster(3, 5, 0);
    c.elect(1);
    propose_n(&mut c, 1, 0, 10);
    assert!(
        first_index(c.node(1)) > LogIndex(2),
        "the bootstrap entry is gone"
    );
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
    c.tick(1);
    c.stabilize();
    assert_eq!(count(&c.sent_log, is_snapshot_to(4)), 1);
    let n4 = c.node(4);
    assert_eq!(n4.applied_data(), c.node(1).applied_data());
    assert_eq!(n4.status().conf_state, c.node(1).status().conf_state);
    assert_eq!(n4.status().conf_state.learners, BTreeSet::from([NodeId(4)]));
    assert_eq!(
        n4.storage.last_index().unwrap(),
        c.node(1).storage.last_index().unwrap()
    );
}

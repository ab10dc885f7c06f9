//! The runtime's side of the state machine contract: responses wait for
//! the batch's flush, and a failed flush stops the node.

use std::io::{Read, Write};
use std::time::Duration;

mod common;
use dengine::{Error, LogIndex, NodeBuilder, NodeId, StateMachine, StorageKind};

/// Applies everything; its flush fails from `fail_from` on.
struct Flaky {
    fail_from: u64,
    flushed: LogIndex,
}

impl StateMachine for Flaky {
    type Response = LogIndex;
    fn apply(&mut self, at: dengine::EntryId, _: &[u8]) -> LogIndex {
        at.index
    }
    fn flush(&mut self, applied: LogIndex) -> std::io::Result<()> {
        if applied.0 >= self.fail_from {
            return Err(std::io::Error::other("disk full"));
        }
        self.flushed = applied;
        Ok(())
    }
    fn snapshot(&mut self, _: &mut dyn Write) -> std::io::Result<()> {
        Ok(())
    }
    fn restore(&mut self, _: &mut dyn Read) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_flush_fails_the_batch_and_stops_the_node() {
    let config = common::fast(1, StorageKind::Memory, "unused".into());
    let sm = Flaky {
        fail_from: 5,
        flushed: LogIndex(0),
    };
    let node = common::lone_leader(NodeBuilder::new(config, sm)).await;
    // Index 1 is the bootstrap entry, 2 the leader's no-op.
    for _ in 3..5 {
        node.propose(vec![1]).await.expect("flushed fine");
    }
    let e = node.propose(vec![1]).await.expect_err("its flush failed");
    assert!(
        matches!(&e, Error::Fatal(m) if m.contains("disk full")),
        "{e:?}"
    );
    let m = node
        .wait_for(Duration::from_secs(10), |m| m.fatal.is_some())
        .await;
    assert!(
        matches!(&m, Ok(m) if m.fatal.as_deref().is_some_and(|f| f.contains("disk full"))),
        "{m:?}"
    );
    assert!(node.propose(vec![1]).await.is_err(), "the node stopped");
}

/// Records what the runtime tells it: terms with commands, membership
/// changes with their context.
#[derive(Default)]
struct Recorder {
    terms: Vec<(LogIndex, dengine::Term)>,
    memberships: Vec<(LogIndex, Vec<u8>, Vec<NodeId>)>,
}

impl StateMachine for Recorder {
    type Response = dengine::Term;
    fn apply(&mut self, at: dengine::EntryId, _: &[u8]) -> dengine::Term {
        self.terms.push((at.index, at.term));
        at.term
    }
    fn apply_membership(
        &mut self,
        at: dengine::EntryId,
        change: &dengine::core::ConfChange,
        members: &dengine::core::ConfState,
    ) {
        let voters = members.voters.iter().copied().collect();
        self.memberships
            .push((at.index, change.context.clone(), voters));
    }
    fn snapshot(&mut self, _: &mut dyn Write) -> std::io::Result<()> {
        Ok(())
    }
    fn restore(&mut self, _: &mut dyn Read) -> std::io::Result<()> {
        Ok(())
    }
}

/// The state machine learns each entry's term, and membership changes
/// reach it in log order on every replica, with the context the proposer
/// attached (where a server keeps its members' addresses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terms_and_membership_changes_with_their_context_reach_every_replica() {
    use dengine::core::{ConfChange, ConfChangeStep, ConfChangeTransition};
    let net = dengine::InMemoryNetwork::new();
    let mut nodes = std::collections::BTreeMap::new();
    for id in 1..=4u64 {
        let mut b = NodeBuilder::new(
            common::fast(id, StorageKind::Memory, "unused".into()),
            Recorder::default(),
        )
        .network(&net);
        if id <= 3 {
            b = b.initial_members([1, 2, 3].map(NodeId));
        }
        nodes.insert(id, b.build().await.expect("start"));
    }
    let m = nodes[&1]
        .wait_for(Duration::from_secs(10), |m| m.leader.is_some())
        .await
        .expect("leader");
    let leader = &nodes[&m.leader.expect("leader").0];
    let p = leader.propose(b"x".to_vec()).await.expect("propose");
    assert_eq!(p.response, leader.status().term, "the entry's term");
    let at = leader
        .change_membership(ConfChange {
            transition: ConfChangeTransition::Auto,
            steps: vec![ConfChangeStep::AddLearner(NodeId(4))],
            context: b"node 4 at 10.0.0.4:2380".to_vec(),
        })
        .await
        .expect("add learner");
    for (id, n) in &nodes {
        n.wait_for(Duration::from_secs(10), |m| m.applied >= at)
            .await
            .expect("applied");
        let seen = n
            .read(dengine::ReadPolicy::Stale, |r: &Recorder| {
                (r.memberships.clone(), r.terms.clone())
            })
            .await
            .expect("read");
        let (memberships, terms) = seen;
        // The bootstrap change (index 1), then ours.
        let ours = memberships.iter().find(|(i, _, _)| *i == at);
        assert_eq!(
            ours.map(|(_, c, v)| (c.as_slice(), v.clone())),
            Some((
                b"node 4 at 10.0.0.4:2380".as_slice(),
                [1, 2, 3].map(NodeId).to_vec()
            )),
            "node {id}: {memberships:?}"
        );
        assert!(
            memberships
                .first()
                .is_some_and(|(i, _, v)| *i == LogIndex(1) && v.len() == 3),
            "node {id} saw the bootstrap membership: {memberships:?}"
        );
        assert!(terms.iter().any(|(i, _)| *i == p.index), "node {id}");
    }
    for n in nodes.values() {
        n.shutdown().await.expect("shutdown");
    }
}

/// Once a membership change is answered, the node's status shows it: the
/// membership is published before the change goes to be applied (the
/// etcd server lists members from the status right after a change, and
/// once listed a removed member).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_membership_change_is_in_the_status() {
    let net = dengine::InMemoryNetwork::new();
    let config = common::fast(1, StorageKind::Memory, "unused".into());
    let node =
        common::lone_leader(NodeBuilder::new(config, Recorder::default()).network(&net)).await;
    // Proposals alongside make the core loop's turns long, as load does.
    let node = std::sync::Arc::new(node);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..16 {
        let (node, stop) = (node.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = node.propose(vec![0u8; 64]).await;
            }
        }));
    }
    for round in 0..100u64 {
        let learner = NodeId(100 + round);
        node.add_learner(learner).await.expect("add learner");
        assert!(
            node.status().membership.is_learner(learner),
            "round {round}: added, not in the status"
        );
        node.remove_node(learner).await.expect("remove");
        assert!(
            !node.status().membership.contains(learner),
            "round {round}: removed, still in the status"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        task.await.expect("proposer");
    }
    node.shutdown().await.expect("shutdown");
}

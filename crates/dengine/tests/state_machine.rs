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
    let node = NodeBuilder::new(config, sm)
        .initial_members([1].map(NodeId))
        .build()
        .await
        .expect("start");
    node.wait_for(Duration::from_secs(10), |m| m.leader.is_some())
        .await
        .expect("leader");
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

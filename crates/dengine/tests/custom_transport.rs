//! A transport of the application's own, the way a network transport
//! works: messages go through `Node::deliver`, snapshots travel frame by
//! frame into `Node::snapshot_receiver`, and the sender hears the outcome
//! through `Node::report_snapshot`. The first snapshot sent is damaged on
//! the way: the receiver refuses it, the leader sends again, and the
//! follower catches up with every write.

#![cfg(feature = "sled")]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dengine::core::{Message, MessageBody, NodeId};
use dengine::snapshot::SnapshotData;
use dengine::{Config, Node, NodeBuilder, ReadPolicy, StateMachine, StorageKind, Transport};

/// A set of strings; snapshots of a few hundred KiB (several frames).
#[derive(Default)]
struct Set(std::collections::BTreeSet<String>);

impl StateMachine for Set {
    type Response = ();
    fn apply(&mut self, _: dengine::LogIndex, command: &[u8]) {
        self.0.insert(String::from_utf8_lossy(command).into_owned());
    }
    fn snapshot(&mut self, out: &mut dyn Write) -> std::io::Result<()> {
        for k in &self.0 {
            writeln!(out, "{k}")?;
        }
        Ok(())
    }
    fn restore(&mut self, input: &mut dyn Read) -> std::io::Result<()> {
        let mut s = String::new();
        input.read_to_string(&mut s)?;
        self.0 = s.lines().map(str::to_string).collect();
        Ok(())
    }
}

#[derive(Default)]
struct Net {
    nodes: RwLock<BTreeMap<NodeId, Node<Set>>>,
    /// Nodes cut off.
    down: RwLock<Vec<NodeId>>,
    /// Damage one frame of the next snapshot sent.
    damage_next: AtomicBool,
    refused: AtomicUsize,
    installed_via_frames: AtomicUsize,
}

struct Link {
    from: NodeId,
    net: Arc<Net>,
}

impl Net {
    fn node(&self, id: NodeId) -> Option<Node<Set>> {
        let down = self.down.read().ok()?;
        if down.contains(&id) {
            return None;
        }
        self.nodes.read().ok()?.get(&id).cloned()
    }
}

impl Transport for Link {
    fn send(&self, msg: Message, snapshot: Option<SnapshotData>) {
        let (Some(from), Some(to)) = (self.net.node(self.from), self.net.node(msg.to)) else {
            if matches!(msg.body, MessageBody::InstallSnapshot { .. })
                && let Ok(nodes) = self.net.nodes.read()
                && let Some(n) = nodes.get(&self.from)
            {
                n.report_snapshot(msg.to, false);
            }
            return;
        };
        let MessageBody::InstallSnapshot { meta } = &msg.body else {
            to.deliver(msg, None);
            return;
        };
        let (meta, net) = (meta.clone(), self.net.clone());
        let Some(data) = snapshot else {
            from.report_snapshot(msg.to, false);
            return;
        };
        // As a network transport would: stream the frames off the
        // protocol task, rebuild on the receiver, report back.
        std::thread::spawn(move || {
            let damage = net.damage_next.swap(false, Ordering::SeqCst);
            let outcome = (|| -> std::io::Result<SnapshotData> {
                let mut rx = to.snapshot_receiver(meta)?;
                for (i, frame) in data.frames().enumerate() {
                    let mut frame = frame?;
                    if damage && i == 1 {
                        let last = frame.len() - 1;
                        frame[last] ^= 0x20;
                    }
                    rx.push(&frame)?;
                }
                rx.finish()
            })();
            let target = msg.to;
            match outcome {
                Ok(local) => {
                    net.installed_via_frames.fetch_add(1, Ordering::SeqCst);
                    to.deliver(msg, Some(local));
                    from.report_snapshot(target, true);
                }
                Err(_) => {
                    net.refused.fetch_add(1, Ordering::SeqCst);
                    from.report_snapshot(target, false);
                }
            }
        });
    }
}

fn config(id: u64, dir: &std::path::Path) -> Config {
    Config {
        node_id: id,
        storage: StorageKind::Sled,
        data_dir: dir.join(format!("n{id}")),
        tick_ms: 5,
        election_ticks: 10,
        heartbeat_ticks: 1,
        lease_drift_ticks: 2,
        snapshot_threshold: 50,
        compaction_lag: 0,
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_travel_frame_by_frame_and_a_damaged_one_is_sent_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = Arc::new(Net::default());
    for id in 1..=3u64 {
        let link = Arc::new(Link {
            from: NodeId(id),
            net: net.clone(),
        });
        let node = NodeBuilder::new(config(id, dir.path()), Set::default())
            .initial_members([1, 2, 3])
            .transport(link)
            .build()
            .expect("start");
        net.nodes.write().expect("lock").insert(NodeId(id), node);
    }
    let nodes: BTreeMap<NodeId, Node<Set>> = net.nodes.read().expect("lock").clone();
    let any = &nodes[&NodeId(1)];
    let m = any
        .wait_for(Duration::from_secs(10), |m| m.leader.is_some())
        .await
        .expect("a leader");
    let leader = m.leader.expect("leader");
    let lagging = *nodes.keys().find(|&&id| id != leader).expect("follower");

    // Cut a follower off while the leader writes and compacts past it.
    net.down.write().expect("lock").push(lagging);
    let pad = "x".repeat(2000);
    let mut last = dengine::LogIndex(0);
    for i in 0..400 {
        last = nodes[&leader]
            .propose(format!("{i:04}-{pad}").into_bytes())
            .await
            .expect("propose")
            .index;
    }
    net.damage_next.store(true, Ordering::SeqCst);
    net.down.write().expect("lock").clear();

    let m = nodes[&lagging]
        .wait_for(Duration::from_secs(20), |m| m.applied >= last)
        .await
        .expect("the follower catches up");
    assert!(m.snapshots_installed >= 1, "caught up by a snapshot");
    assert!(
        net.refused.load(Ordering::SeqCst) >= 1,
        "the damaged snapshot was refused"
    );
    assert!(net.installed_via_frames.load(Ordering::SeqCst) >= 1);
    let count = nodes[&lagging]
        .read(ReadPolicy::Stale, |s: &Set| s.0.len())
        .await
        .expect("read");
    assert_eq!(count, 400, "every write is on the follower");
    for n in nodes.values() {
        n.shutdown().await.expect("shutdown");
    }
}

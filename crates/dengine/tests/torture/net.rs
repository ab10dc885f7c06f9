//! A network between the nodes of one process that loses, duplicates and
//! delays messages by a seeded roll, and cuts nodes off.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use dengine::core::{Message, MessageBody, NodeId};
use dengine::snapshot::SnapshotData;
use dengine::{Node, SnapshotDone, Transport, Unreachable};
use dengine_sim::SimRng;

use crate::sm::Registers;

/// How lossy the links are now.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkFaults {
    pub loss: f64,
    pub duplicate: f64,
    pub delay: f64,
    pub max_delay_ms: u64,
    /// A snapshot transfer breaks off.
    pub snapshot_failure: f64,
}

pub struct FaultNet {
    nodes: RwLock<BTreeMap<NodeId, Node<Registers>>>,
    isolated: RwLock<BTreeSet<NodeId>>,
    rolls: Mutex<(SimRng, LinkFaults)>,
}

impl FaultNet {
    pub fn new(seed: u64) -> Arc<FaultNet> {
        Arc::new(FaultNet {
            nodes: RwLock::default(),
            isolated: RwLock::default(),
            rolls: Mutex::new((SimRng::new(seed), LinkFaults::default())),
        })
    }

    pub fn set_faults(&self, faults: LinkFaults) {
        self.rolls.lock().expect("lock").1 = faults;
    }

    pub fn attach(&self, node: Node<Registers>) {
        self.nodes.write().expect("lock").insert(node.id(), node);
    }

    pub fn detach(&self, id: NodeId) {
        self.nodes.write().expect("lock").remove(&id);
    }

    pub fn isolate(&self, id: NodeId) {
        self.isolated.write().expect("lock").insert(id);
    }

    pub fn heal_all(&self) {
        self.isolated.write().expect("lock").clear();
    }

    pub fn link(self: &Arc<Self>, from: NodeId) -> Arc<dyn Transport> {
        Arc::new(Link {
            from,
            net: self.clone(),
        })
    }

    fn route(&self, from: NodeId, to: NodeId) -> Option<Node<Registers>> {
        let isolated = self.isolated.read().expect("lock");
        if isolated.contains(&from) || isolated.contains(&to) {
            return None;
        }
        self.nodes.read().expect("lock").get(&to).cloned()
    }

    /// (lost, copies, delay) for one message.
    fn roll(&self) -> (bool, usize, Option<Duration>) {
        let mut g = self.rolls.lock().expect("lock");
        let (rng, f) = &mut *g;
        let f = *f;
        if rng.chance(f.loss) {
            return (true, 0, None);
        }
        let copies = if rng.chance(f.duplicate) { 2 } else { 1 };
        let delay = rng
            .chance(f.delay)
            .then(|| Duration::from_millis(rng.range(1, f.max_delay_ms.max(2))));
        (false, copies, delay)
    }

    fn snapshot_breaks(&self) -> bool {
        let mut g = self.rolls.lock().expect("lock");
        let p = g.1.snapshot_failure;
        g.0.chance(p)
    }
}

struct Link {
    from: NodeId,
    net: Arc<FaultNet>,
}

impl Transport for Link {
    fn send(&self, msg: Message) -> Result<(), Unreachable> {
        let Some(to) = self.net.route(self.from, msg.to) else {
            return Err(Unreachable);
        };
        let (lost, copies, delay) = self.net.roll();
        if lost {
            return Ok(());
        }
        for _ in 0..copies {
            let (to, msg) = (to.clone(), msg.clone());
            match delay {
                None => {
                    let _ = to.deliver(msg, None);
                }
                Some(d) => {
                    tokio::spawn(async move {
                        tokio::time::sleep(d).await;
                        let _ = to.deliver(msg, None);
                    });
                }
            }
        }
        Ok(())
    }

    fn send_snapshot(&self, msg: Message, data: SnapshotData, done: SnapshotDone) {
        let Some(to) = self.net.route(self.from, msg.to) else {
            done.failed();
            return;
        };
        let MessageBody::InstallSnapshot { meta } = &msg.body else {
            done.failed();
            return;
        };
        let meta = meta.clone();
        let breaks = self.net.snapshot_breaks();
        // Streamed frame by frame off the protocol task, as a network
        // transport would.
        std::thread::spawn(move || {
            let received = (|| -> std::io::Result<SnapshotData> {
                let mut rx = to.snapshot_receiver(meta)?;
                for (i, frame) in data.frames().enumerate() {
                    if breaks && i == 1 {
                        return Err(std::io::Error::other("the link broke"));
                    }
                    rx.push(&frame?)?;
                }
                rx.finish()
            })();
            match received.map(|local| to.deliver(msg, Some(local))) {
                Ok(Ok(())) => done.delivered(),
                _ => done.failed(),
            }
        });
    }
}

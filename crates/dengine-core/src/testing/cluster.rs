//! A cluster of [`RawNode`]s wired by an in-memory network, stepped by hand.
//!
//! Every node persists synchronously to a [`MemStorage`] and applies to a
//! tiny state machine (the list of applied commands), which is all a
//! scenario test needs to check the Raft properties.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::config::Config;
use crate::error::Result;
use crate::message::{Message, MessageBody, ReadId};
use crate::rawnode::{RawNode, ReadPolicy, ReadState, Status};
use crate::storage::LogStorage;
use crate::testing::MemStorage;
use crate::types::{EntryPayload, LogIndex, NodeId, Role, SnapshotMeta};

/// A message in flight, with the snapshot data that travels beside an
/// [`MessageBody::InstallSnapshot`].
#[derive(Clone, Debug)]
pub struct Envelope {
    /// The message.
    pub msg: Message,
    /// Snapshot data, for snapshot messages.
    pub snapshot_data: Option<Vec<u8>>,
}

/// One node of a [`Cluster`].
pub struct TestNode {
    /// The protocol instance.
    pub raw: RawNode<MemStorage>,
    /// A handle on the node's storage.
    pub storage: MemStorage,
    /// The node's settings (reused on restart).
    pub config: Config,
    /// Commands applied, in order, with their index.
    pub applied: Vec<(LogIndex, Vec<u8>)>,
    /// Outcomes of reads asked on this node.
    pub read_states: Vec<ReadState>,
    /// Whether the node is crashed.
    pub down: bool,
    /// Snapshot data received and waiting for the core to ask for install.
    incoming_snapshots: BTreeMap<LogIndex, Vec<u8>>,
}

impl TestNode {
    /// The protocol status.
    pub fn status(&self) -> Status {
        self.raw.status()
    }

    /// The commands applied, without indexes.
    pub fn applied_data(&self) -> Vec<Vec<u8>> {
        self.applied.iter().map(|(_, d)| d.clone()).collect()
    }
}

/// Several nodes and the network between them.
pub struct Cluster {
    /// The nodes by id.
    pub nodes: BTreeMap<NodeId, TestNode>,
    /// Messages in flight, in send order.
    pub queue: VecDeque<Envelope>,
    /// Links that drop messages: `(from, to)`.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Every message ever sent, for tests that look at traffic.
    pub sent_log: Vec<Message>,
}

/// Settings used by [`Cluster::new`] for node `id`: election after 10
/// ticks, heartbeat every tick, snapshots and lease reads disabled (a node
/// with lease reads refuses votes for an election timeout after it starts,
/// so hand-stepped elections right after start would fail).
pub fn test_config(id: NodeId) -> Config {
    let mut c = Config::new(id);
    c.snapshot_threshold = 0;
    c.lease_reads = false;
    c
}

fn encode_applied(applied: &[(LogIndex, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, d) in applied {
        out.extend_from_slice(&i.0.to_le_bytes());
        out.extend_from_slice(&(d.len() as u64).to_le_bytes());
        out.extend_from_slice(d);
    }
    out
}

fn decode_applied(mut b: &[u8]) -> Vec<(LogIndex, Vec<u8>)> {
    let mut out = Vec::new();
    let take_u64 = |b: &mut &[u8]| -> Option<u64> {
        let (head, rest) = b.split_first_chunk::<8>()?;
        *b = rest;
        Some(u64::from_le_bytes(*head))
    };
    while let (Some(i), Some(n)) = (take_u64(&mut b), take_u64(&mut b)) {
        let n = n as usize;
        if b.len() < n {
            break;
        }
        out.push((LogIndex(i), b[..n].to_vec()));
        b = &b[n..];
    }
    out
}

impl Cluster {
    /// A new cluster of voters `1..=n`, bootstrapped, with [`test_config`].
    pub fn new(n: u64) -> Cluster {
        Cluster::with_config(n, |_| {})
    }

    /// Like [`Cluster::new`], with each node's settings adjusted by `f`.
    pub fn with_config(n: u64, f: impl Fn(&mut Config)) -> Cluster {
        let voters: Vec<NodeId> = (1..=n).map(NodeId).collect();
        let mut c = Cluster {
            nodes: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            sent_log: Vec::new(),
        };
        for &id in &voters {
            let mut cfg = test_config(id);
            f(&mut cfg);
            c.start_node(cfg, MemStorage::bootstrap(voters.iter().copied()));
        }
        // Hand out the bootstrap entry so every node knows the membership.
        for id in voters {
            c.process_ready(id);
        }
        c
    }

    fn start_node(&mut self, config: Config, storage: MemStorage) {
        let id = config.id;
        let raw = match RawNode::new(config.clone(), storage.clone()) {
            Ok(r) => r,
            Err(e) => panic!("node {id} failed to start: {e}"),
        };
        let applied = decode_applied(&storage.lock().snapshot_data);
        self.nodes.insert(
            id,
            TestNode {
                raw,
                storage,
                config,
                applied,
                read_states: Vec::new(),
                down: false,
                incoming_snapshots: BTreeMap::new(),
            },
        );
    }

    /// Adds a node with an empty log that will join the cluster once a
    /// membership change adds it.
    pub fn add_joiner(&mut self, id: NodeId) {
        self.start_node(test_config(id), MemStorage::new());
    }

    /// Adds a joiner with custom settings.
    pub fn add_joiner_with(&mut self, config: Config) {
        self.start_node(config, MemStorage::new());
    }

    /// Node `id`.
    pub fn node(&self, id: u64) -> &TestNode {
        &self.nodes[&NodeId(id)]
    }

    /// Node `id`, mutably.
    pub fn node_mut(&mut self, id: u64) -> &mut TestNode {
        match self.nodes.get_mut(&NodeId(id)) {
            Some(n) => n,
            None => panic!("no node {id}"),
        }
    }

    /// Ids of the nodes that are up.
    pub fn up_ids(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| !n.down)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Carries out one node's `Ready`, synchronously: persist, report,
    /// send, apply. Returns whether there was anything to do.
    pub fn process_ready(&mut self, id: NodeId) -> bool {
        let Some(node) = self.nodes.get_mut(&id) else {
            return false;
        };
        if node.down || !node.raw.has_ready() {
            return false;
        }
        let rd = match node.raw.ready() {
            Ok(rd) => rd,
            Err(e) => panic!("node {id}: ready failed: {e}"),
        };
        let mut out = rd.messages;
        if let Some(batch) = rd.persist {
            let data = batch
                .snapshot
                .as_ref()
                .and_then(|m| node.incoming_snapshots.remove(&m.last_index))
                .unwrap_or_default();
            if batch.snapshot.is_some() {
                node.applied = decode_applied(&data);
            }
            if let Err(e) = node.storage.persist(&batch, data) {
                panic!("node {id}: persist failed: {e}");
            }
            if let Err(e) = node.raw.on_persisted(batch.persisted()) {
                panic!("node {id}: on_persisted failed: {e}");
            }
            out.extend(batch.messages);
        }
        let mut last_applied = None;
        for e in &rd.committed_entries {
            if let EntryPayload::Normal(d) = &e.payload {
                node.applied.push((e.index, d.to_vec()));
            }
            last_applied = Some(e.index);
        }
        if let Some(i) = last_applied {
            {
                let mut s = node.storage.lock();
                s.applied = i;
                if let Some(cs) = &rd.conf_state {
                    s.conf_state = cs.clone();
                }
            }
            if let Err(e) = node.raw.on_applied(i) {
                panic!("node {id}: on_applied failed: {e}");
            }
        }
        node.read_states.extend(rd.read_states);
        if let Some(meta) = rd.snapshot_request {
            let data = encode_applied(
                &node
                    .applied
                    .iter()
                    .filter(|(i, _)| *i <= meta.last_index)
                    .cloned()
                    .collect::<Vec<_>>(),
            );
            node.storage.lock().store_snapshot(meta.clone(), data);
            if let Err(e) = node.raw.snapshot_created(&meta) {
                panic!("node {id}: snapshot_created failed: {e}");
            }
        }
        if let Some(to) = rd.compact_to
            && let Err(e) = node.storage.lock().compact(to)
        {
            panic!("node {id}: compact failed: {e}");
        }
        for m in out {
            self.send(m);
        }
        true
    }

    fn send(&mut self, msg: Message) {
        self.sent_log.push(msg.clone());
        let snapshot_data = match &msg.body {
            MessageBody::InstallSnapshot { meta } => self
                .nodes
                .get(&msg.from)
                .map(|n| snapshot_data_for(&n.storage, meta)),
            _ => None,
        };
        self.queue.push_back(Envelope { msg, snapshot_data });
    }

    /// Whether messages from `from` to `to` currently get through.
    pub fn link_up(&self, from: NodeId, to: NodeId) -> bool {
        !self.cut.contains(&(from, to))
    }

    /// Delivers one message; returns the step result (`Ok` if dropped).
    pub fn deliver(&mut self, env: Envelope) -> Result<()> {
        let Envelope { msg, snapshot_data } = env;
        if !self.link_up(msg.from, msg.to) {
            return Ok(());
        }
        let Some(node) = self.nodes.get_mut(&msg.to) else {
            return Ok(());
        };
        if node.down {
            return Ok(());
        }
        if let (MessageBody::InstallSnapshot { meta }, Some(data)) = (&msg.body, snapshot_data) {
            node.incoming_snapshots.insert(meta.last_index, data);
        }
        node.raw.step(msg)
    }

    /// Delivers every queued message (not those sent while delivering).
    /// Returns how many were taken from the queue.
    pub fn deliver_all(&mut self) -> usize {
        let batch: Vec<Envelope> = self.queue.drain(..).collect();
        let n = batch.len();
        for env in batch {
            // Refused messages are part of what scenarios exercise.
            let _ = self.deliver(env);
        }
        n
    }

    /// Removes and returns queued messages matching `pred`, leaving the rest.
    pub fn take_msgs(&mut self, pred: impl Fn(&Message) -> bool) -> Vec<Envelope> {
        let (taken, kept): (Vec<_>, Vec<_>) = self.queue.drain(..).partition(|e| pred(&e.msg));
        self.queue = kept.into();
        taken
    }

    /// Processes readies and delivers messages until nothing moves.
    pub fn stabilize(&mut self) {
        for _ in 0..10_000 {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            let mut any = false;
            for id in ids {
                any |= self.process_ready(id);
            }
            if self.deliver_all() == 0 && !any {
                return;
            }
        }
        panic!("cluster did not stabilize");
    }

    /// Ticks one node once and processes its ready.
    pub fn tick(&mut self, id: u64) {
        let id = NodeId(id);
        if let Some(n) = self.nodes.get_mut(&id)
            && !n.down
            && let Err(e) = n.raw.tick()
        {
            panic!("node {id}: tick failed: {e}");
        }
        self.process_ready(id);
    }

    /// Ticks every node that is up `n` times, stabilizing after each round.
    pub fn tick_all(&mut self, n: u32) {
        for _ in 0..n {
            for id in self.up_ids() {
                self.tick(id.0);
            }
            self.stabilize();
        }
    }

    /// Makes `id` campaign and runs the cluster until it settles.
    pub fn campaign(&mut self, id: u64) {
        if let Err(e) = self.node_mut(id).raw.campaign() {
            panic!("node {id}: campaign failed: {e}");
        }
        self.stabilize();
    }

    /// Campaigns `id` and checks that it won.
    pub fn elect(&mut self, id: u64) {
        self.campaign(id);
        assert_eq!(
            self.node(id).status().soft_state.role,
            Role::Leader,
            "node {id} should have won the election"
        );
    }

    /// Proposes `data` on node `id` (without stabilizing).
    pub fn propose(&mut self, id: u64, data: &[u8]) -> Result<LogIndex> {
        self.node_mut(id).raw.propose(data.to_vec())
    }

    /// Asks node `id` for a read (without stabilizing).
    pub fn read(&mut self, id: u64, rid: u64, policy: ReadPolicy) -> Result<()> {
        self.node_mut(id).raw.read_index(ReadId(rid), policy)
    }

    /// The leader with the highest term among nodes that are up.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| !n.down)
            .map(|(&id, n)| (n.status(), id))
            .filter(|(s, _)| s.soft_state.role == Role::Leader)
            .max_by_key(|(s, _)| s.hard_state.term)
            .map(|(_, id)| id)
    }

    /// Cuts both directions between `id` and everyone else.
    pub fn isolate(&mut self, id: u64) {
        let id = NodeId(id);
        let others: Vec<NodeId> = self.nodes.keys().copied().filter(|&o| o != id).collect();
        for o in others {
            self.cut.insert((id, o));
            self.cut.insert((o, id));
        }
    }

    /// Splits the cluster: nodes in different groups cannot talk.
    pub fn partition(&mut self, groups: &[&[u64]]) {
        for (i, a) in groups.iter().enumerate() {
            for (j, b) in groups.iter().enumerate() {
                if i == j {
                    continue;
                }
                for &x in *a {
                    for &y in *b {
                        self.cut.insert((NodeId(x), NodeId(y)));
                    }
                }
            }
        }
    }

    /// Cuts one direction only.
    pub fn cut_one_way(&mut self, from: u64, to: u64) {
        self.cut.insert((NodeId(from), NodeId(to)));
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Stops node `id`; its queued messages are lost. Its storage (all of
    /// which was durable here) survives.
    pub fn crash(&mut self, id: u64) {
        let id = NodeId(id);
        if let Some(n) = self.nodes.get_mut(&id) {
            n.down = true;
        }
        self.queue.retain(|e| e.msg.to != id && e.msg.from != id);
    }

    /// Restarts node `id` from its storage.
    pub fn restart(&mut self, id: u64) {
        let Some(old) = self.nodes.remove(&NodeId(id)) else {
            return;
        };
        let storage = old.storage.clone();
        let config = old.config.clone();
        let applied_to = storage.lock().applied;
        self.start_node(config, storage);
        // The state machine survives with the storage it was applied to.
        let node = self.node_mut(id);
        node.applied = old
            .applied
            .into_iter()
            .filter(|(i, _)| *i <= applied_to)
            .collect();
        self.process_ready(NodeId(id));
    }

    /// Checks that no two nodes applied different commands at one index.
    pub fn check_state_machine_safety(&self) {
        let mut by_index: BTreeMap<LogIndex, (NodeId, Vec<u8>)> = BTreeMap::new();
        for (&id, n) in &self.nodes {
            for (i, d) in &n.applied {
                if let Some((other, od)) = by_index.get(i) {
                    assert_eq!(
                        od, d,
                        "nodes {other} and {id} applied different commands at index {i}"
                    );
                } else {
                    by_index.insert(*i, (id, d.clone()));
                }
            }
        }
    }
}

fn snapshot_data_for(storage: &MemStorage, meta: &SnapshotMeta) -> Vec<u8> {
    let s = storage.lock();
    debug_assert_eq!(s.snapshot.last_index, meta.last_index);
    s.snapshot_data.clone()
}

/// Reads the terms of `lo..=hi` from a storage, for tests comparing logs.
pub fn log_terms(storage: &MemStorage, lo: u64, hi: u64) -> Vec<u64> {
    (lo..=hi)
        .map(|i| storage.term(LogIndex(i)).map_or(0, |t| t.0))
        .collect()
}

//! One simulated node: its core, disk queue and state machine, and the
//! carrying out of its `Ready`s.

use std::collections::{BTreeMap, VecDeque};

use dengine_core::{
    Config, EntryPayload, LogIndex, NodeId, PersistBatch, RawNode, ReadState, Role,
};

use super::{Event, Sim};
use crate::disk::SimDisk;
use crate::invariants::Violation;
use crate::state_machine::{StateMachine, Workload};

/// A node of the simulated cluster.
pub(crate) struct SimNode<S> {
    /// `None` while crashed.
    pub(crate) raw: Option<RawNode<SimDisk>>,
    pub(crate) disk: SimDisk,
    pub(crate) config: Config,
    pub(crate) sm: S,
    /// The index the state machine has applied.
    pub(crate) applied: LogIndex,
    /// Bumped on crash and restart: events of an older life are ignored.
    pub(crate) epoch: u64,
    /// Clock rate: its ticks come every `TICK_US * rate`.
    pub(crate) rate: f64,
    /// Persist batches waiting for their sync, oldest first.
    pub(crate) disk_queue: VecDeque<PersistBatch>,
    /// How many of the oldest queued writes the sync in progress covers
    /// (group commit: writes queued during a sync wait for the next one).
    pub(crate) sync_covers: usize,
    /// Snapshot data received, by index, until the core asks to install it.
    pub(crate) incoming: BTreeMap<LogIndex, Vec<u8>>,
    /// Reads confirmed at an index not yet applied: (op id, index).
    pub(crate) pending_reads: Vec<(u64, LogIndex)>,
    /// Proposals made here: index → op id.
    pub(crate) proposals: BTreeMap<LogIndex, u64>,
    /// Removed from the cluster for good.
    pub(crate) removed: bool,
    pub(crate) was_leader_in: Option<dengine_core::Term>,
    /// A [`super::Event::CommitNotices`] is scheduled (see
    /// `Config::defer_commit_notices`).
    pub(crate) notices_scheduled: bool,
    /// The snapshot on disk has the state machine's data. A durable state
    /// machine's snapshots are checkpoints without it, as in the runtime,
    /// until a follower needs one.
    pub(crate) snapshot_has_data: bool,
    /// A follower needs a snapshot with data: the next one asked has it.
    pub(crate) data_snapshot_wanted: bool,
}

/// Splits a proposed command into the op id the simulator prefixed and the
/// workload's bytes.
pub(crate) fn split_command(data: &[u8]) -> (u64, &[u8]) {
    match data.split_first_chunk::<8>() {
        Some((id, rest)) => (u64::from_le_bytes(*id), rest),
        None => (0, data),
    }
}

impl<W: Workload> Sim<'_, W> {
    pub(crate) fn start_node(&mut self, id: NodeId, disk: SimDisk) {
        let config = self.node_config(id);
        let drift = self.profile.drift;
        let rate = 1.0 + (self.rng.unit() * 2.0 - 1.0) * drift;
        let epoch = self.rng.next_u64();
        let node = SimNode {
            raw: None,
            disk,
            config,
            sm: self.workload.state_machine(),
            applied: LogIndex::ZERO,
            epoch,
            rate,
            disk_queue: VecDeque::new(),
            sync_covers: 0,
            incoming: BTreeMap::new(),
            pending_reads: Vec::new(),
            proposals: BTreeMap::new(),
            removed: false,
            was_leader_in: None,
            notices_scheduled: false,
            snapshot_has_data: true,
            data_snapshot_wanted: false,
        };
        self.nodes.insert(id, node);
        {
            let d = self.nodes[&id].disk.clone();
            let s = d.state();
            let base = s.base;
            let ents = s.entries.clone();
            drop(s);
            self.inv.on_disk_rebase(id, base.index, base.term, false);
            self.inv.on_disk_append(self.now, id, &ents);
        }
        self.boot(id);
    }

    /// Starts the core of node `id` from its disk.
    fn boot(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let mut raw = match RawNode::new(node.config.clone(), node.disk.clone()) {
            Ok(r) => r,
            Err(e) => {
                let at = self.now;
                self.inv.violations.push(Violation {
                    at,
                    property: "restart",
                    detail: format!("node {id} failed to start: {e}"),
                });
                return;
            }
        };
        let (snap_index, data) = {
            let d = node.disk.state();
            (d.snapshot.last_index, d.snapshot_data.clone())
        };
        if self.profile.durable_state_machine && node.applied >= snap_index {
            // Its state survived the crash, possibly past the commit
            // index the disk holds.
            if self.hooks.tell_core_where_state_machine_stood() {
                raw.state_machine_restored(node.applied);
            }
        } else {
            node.sm = self.workload.state_machine();
            node.sm.restore(&data);
            node.applied = snap_index;
        }
        let restored = node.applied;
        node.raw = Some(raw);
        let epoch = node.epoch;
        let first = (super::TICK_US as f64 * node.rate) as u64;
        self.schedule(first.max(1), Event::Tick(id, epoch));
        self.log(|| format!("n{id} started (applied {restored})"));
        self.drain(id);
    }

    /// Crashes node `id`: unsynced writes are lost (the oldest may be torn).
    pub(crate) fn crash_node(&mut self, id: NodeId) {
        let torn_len = self.rng.next_u64();
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if node.raw.is_none() {
            return;
        }
        node.raw = None;
        node.epoch = node.epoch.wrapping_add(1);
        node.notices_scheduled = false;
        node.data_snapshot_wanted = false;
        // A torn write: a prefix of the oldest batch's entries reached the
        // disk, without its hard state. Nothing of it was acknowledged.
        let mut torn = None;
        if let Some(b) = node.disk_queue.front()
            && b.snapshot.is_none()
            && !b.entries.is_empty()
        {
            let n = (torn_len % (b.entries.len() as u64 + 1)) as usize;
            if n > 0 {
                torn = Some(b.entries[..n].to_vec());
            }
        }
        node.disk_queue.clear();
        node.sync_covers = 0;
        node.incoming.clear();
        node.pending_reads.clear();
        node.proposals.clear();
        if let Some(ents) = torn {
            let res = node.disk.state_mut().append(&ents);
            if res.is_ok() {
                self.inv.on_disk_append(self.now, id, &ents);
            }
        }
        self.clients_lost_node(id);
        self.log(|| format!("n{id} CRASH"));
    }

    pub(crate) fn restart_node(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if node.raw.is_some() || node.removed {
            return;
        }
        node.epoch = node.epoch.wrapping_add(1);
        node.notices_scheduled = false;
        self.boot(id);
    }

    /// Carries out `Ready`s of node `id` until it has none.
    pub(crate) fn drain(&mut self, id: NodeId) {
        for _ in 0..1000 {
            let Some(node) = self.nodes.get_mut(&id) else {
                return;
            };
            let Some(raw) = node.raw.as_mut() else {
                return;
            };
            if !raw.has_ready() {
                // Held commit notices go a while later, as the runtime
                // sends them (or at the node's next tick, whichever first).
                if raw.has_commit_notices_due() && !node.notices_scheduled {
                    node.notices_scheduled = true;
                    let epoch = node.epoch;
                    let delay = self.rng.range(1, super::TICK_US / 2);
                    self.schedule(delay, Event::CommitNotices(id, epoch));
                }
                return;
            }
            let rd = match raw.ready() {
                Ok(rd) => rd,
                Err(e) => {
                    let at = self.now;
                    self.inv.violations.push(Violation {
                        at,
                        property: "no fatal error",
                        detail: format!("node {id}: ready: {e}"),
                    });
                    return;
                }
            };
            let status = raw.status();
            let term = status.hard_state.term;
            if let Some(ss) = rd.soft_state {
                self.log(|| format!("n{id} is {} t{term} (leader n{})", ss.role, ss.leader));
                if ss.role == Role::Leader {
                    self.on_became_leader(id, term);
                }
            }
            if let Some(b) = &rd.persist
                && status.soft_state.role == Role::Leader
                && let (Some(f), Some(l)) = (b.entries.first(), b.entries.last())
                && f.term == term
            {
                let at = self.now;
                self.inv.on_leader_append(at, id, term, f.index, l.index);
            }
            if status.soft_state.role == Role::Leader
                && let Some(hs) = rd.persist.as_ref().and_then(|b| b.hard_state)
                && let Some(raw) = self.nodes.get(&id).and_then(|n| n.raw.as_ref())
                && let Ok(t) = raw.log_term(hs.commit)
            {
                self.inv.on_leader_commit(term, hs.commit, t);
                self.watch_commit_beyond_durable(id, term, hs.commit);
            }
            for m in rd.messages {
                self.send(m);
            }
            if let Some(batch) = rd.persist {
                self.enqueue_write(id, batch);
            }
            self.apply(id, rd.committed_entries);
            self.reads_ready(id, rd.read_states);
            if let Some(meta) = rd.snapshot_request {
                self.take_snapshot(id, meta);
            }
            if let Some(to) = rd.compact_to {
                let node = self.nodes.get_mut(&id);
                if let Some(node) = node {
                    let res = node.disk.state_mut().compact(to);
                    match res {
                        Ok(()) => self.inv.on_disk_compact(id, to),
                        Err(e) => {
                            let at = self.now;
                            self.inv.violations.push(Violation {
                                at,
                                property: "no fatal error",
                                detail: format!("node {id}: compact: {e}"),
                            });
                        }
                    }
                }
            }
        }
    }

    fn on_became_leader(&mut self, id: NodeId, term: dengine_core::Term) {
        let at = self.now;
        self.inv.on_leader(at, id, term);
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        node.was_leader_in = Some(term);
        if let Some(raw) = node.raw.as_ref() {
            self.inv
                .check_leader_completeness(at, id, term, |i| raw.log_term(i));
        }
        self.chase_new_leader(id, term);
    }

    fn enqueue_write(&mut self, id: NodeId, batch: PersistBatch) {
        let early = self.hooks.ack_before_durable();
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let was_idle = node.disk_queue.is_empty();
        if self.opts.trace {
            let desc = format!(
                "n{id} write queued: entries {:?} hs {:?} snap {:?} msgs {} (queue {})",
                batch.entries.first().map(|e| e.index.0)..batch.entries.last().map(|e| e.index.0),
                batch.hard_state.map(|h| (h.term.0, h.vote.0, h.commit.0)),
                batch.snapshot.as_ref().map(|m| m.last_index.0),
                batch.messages.len(),
                node.disk_queue.len()
            );
            self.trace.push(format!("{:>12} {desc}", self.now));
        }
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let epoch = node.epoch;
        let msgs = if early {
            batch.messages.clone()
        } else {
            Vec::new()
        };
        node.disk_queue.push_back(batch);
        for m in msgs {
            self.send(m);
        }
        if was_idle {
            self.start_sync(id, epoch);
        }
    }

    /// Starts a sync covering every write queued so far.
    fn start_sync(&mut self, id: NodeId, epoch: u64) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        node.sync_covers = node.disk_queue.len();
        let (lo, hi) = self.profile.disk_latency_us;
        let d = self.rng.range(lo, hi);
        self.schedule(d, Event::DiskDone(id, epoch));
    }

    /// A sync finished: the writes it covered are durable.
    pub(crate) fn on_disk_done(&mut self, id: NodeId, epoch: u64) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if node.epoch != epoch || node.raw.is_none() {
            return;
        }
        let n = std::mem::take(&mut node.sync_covers);
        for _ in 0..n {
            if !self.complete_write(id) {
                return;
            }
        }
        if self
            .nodes
            .get(&id)
            .is_some_and(|n| !n.disk_queue.is_empty())
        {
            self.start_sync(id, epoch);
        }
        self.drain(id);
    }

    /// Makes the oldest queued write of node `id` durable and reports it.
    /// Returns false if the node can go no further.
    fn complete_write(&mut self, id: NodeId) -> bool {
        let early = self.hooks.ack_before_durable();
        let Some(node) = self.nodes.get_mut(&id) else {
            return false;
        };
        let Some(batch) = node.disk_queue.pop_front() else {
            return false;
        };
        let now = self.now;
        if let Some(meta) = &batch.snapshot {
            let data = node.incoming.remove(&meta.last_index).unwrap_or_default();
            let kept = node.disk.state().term_at(meta.last_index) == Some(meta.last_term);
            node.disk
                .state_mut()
                .install_snapshot(meta.clone(), data.clone());
            node.sm = self.workload.state_machine();
            node.sm.restore(&data);
            node.applied = meta.last_index;
            node.snapshot_has_data = true;
            self.inv
                .on_disk_rebase(id, meta.last_index, meta.last_term, kept);
        }
        let Some(node) = self.nodes.get_mut(&id) else {
            return false;
        };
        let res = node.disk.state_mut().append(&batch.entries);
        if let Err(e) = res {
            self.inv.violations.push(Violation {
                at: now,
                property: "no fatal error",
                detail: format!("node {id}: disk append: {e}"),
            });
            return false;
        }
        if let Some(hs) = batch.hard_state {
            node.disk.state_mut().hard_state = hs;
        }
        self.inv.on_disk_append(now, id, &batch.entries);
        let Some(node) = self.nodes.get_mut(&id) else {
            return false;
        };
        if let Some(raw) = node.raw.as_mut()
            && let Err(e) = raw.on_persisted(batch.persisted())
        {
            self.inv.violations.push(Violation {
                at: now,
                property: "no fatal error",
                detail: format!("node {id}: on_persisted: {e}"),
            });
        }
        if self.opts.trace {
            self.trace.push(format!(
                "{:>12} n{id} write synced ({} msgs)",
                self.now,
                batch.messages.len()
            ));
        }
        if !early {
            for m in batch.messages {
                self.send(m);
            }
        }
        true
    }

    fn apply(&mut self, id: NodeId, entries: Vec<dengine_core::Entry>) {
        let Some(last) = entries.last().map(|e| e.index) else {
            return;
        };
        let now = self.now;
        for e in &entries {
            self.inv.on_apply(now, id, e);
            let Some(node) = self.nodes.get_mut(&id) else {
                return;
            };
            if e.index <= node.applied {
                // Handed out again after a restart: a state machine that
                // keeps its state has it already.
                continue;
            }
            let mut done = None;
            if let EntryPayload::Normal(data) = &e.payload {
                let (op, cmd) = split_command(data);
                let resp = node.sm.apply(e.index, cmd);
                self.applied_ops.insert(e.index, op);
                if let Some(mine) = node.proposals.remove(&e.index) {
                    done = Some((mine, op, resp));
                }
            } else if let Some(mine) = node.proposals.remove(&e.index) {
                done = Some((mine, 0, Vec::new()));
            }
            node.applied = e.index;
            if let Some((mine, op, resp)) = done {
                self.write_applied(mine, op == mine, e.index, resp);
            }
        }
        if let Some(raw) = self.nodes.get_mut(&id).and_then(|n| n.raw.as_mut())
            && let Err(e) = raw.on_applied(last)
        {
            self.inv.violations.push(Violation {
                at: now,
                property: "no fatal error",
                detail: format!("node {id}: on_applied: {e}"),
            });
        }
        self.serve_pending_reads(id);
    }

    fn reads_ready(&mut self, id: NodeId, states: Vec<ReadState>) {
        for rs in states {
            match rs.result {
                Ok(index) => {
                    if let Some(n) = self.nodes.get_mut(&id) {
                        n.pending_reads.push((rs.id.0, index));
                    }
                }
                Err(e) => self.read_failed(rs.id.0, &e),
            }
        }
        self.serve_pending_reads(id);
    }

    fn serve_pending_reads(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let applied = node.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut node.pending_reads)
            .into_iter()
            .partition(|&(_, i)| i <= applied);
        node.pending_reads = waiting;
        for (op, _) in ready {
            self.read_answered(id, op);
        }
    }

    fn take_snapshot(&mut self, id: NodeId, meta: dengine_core::SnapshotMeta) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if node.applied != meta.last_index {
            if meta.last_index < node.applied {
                // Only a state machine restored past the durable commit
                // can be ahead of what the core handed out; the core was
                // told where it stood and must not ask below it.
                let at = self.now;
                self.inv.violations.push(Violation {
                    at,
                    property: "snapshot asked where the state machine is",
                    detail: format!(
                        "node {id}: asked at {} with the state machine at {}",
                        meta.last_index, node.applied
                    ),
                });
            }
            node.data_snapshot_wanted = false;
            if let Some(raw) = node.raw.as_mut() {
                raw.snapshot_failed();
            }
            return;
        }
        // A durable state machine only checkpoints (its state is durable
        // already) unless a follower needs the data.
        let with_data =
            !self.profile.durable_state_machine || std::mem::take(&mut node.data_snapshot_wanted);
        let data = if with_data {
            node.sm.snapshot()
        } else {
            Vec::new()
        };
        let stored = {
            let mut d = node.disk.state_mut();
            if with_data && d.snapshot.last_index == meta.last_index {
                // The data of the checkpoint already stored there.
                d.snapshot_data = data;
                true
            } else {
                let before = d.snapshot.last_index;
                d.store_snapshot(meta.clone(), data);
                d.snapshot.last_index != before
            }
        };
        if stored {
            node.snapshot_has_data = with_data;
        }
        if let Some(raw) = node.raw.as_mut()
            && let Err(e) = raw.snapshot_created(&meta)
        {
            let at = self.now;
            self.inv.violations.push(Violation {
                at,
                property: "no fatal error",
                detail: format!("node {id}: snapshot_created: {e}"),
            });
        }
        let idx = meta.last_index;
        self.log(|| format!("n{id} snapshot at {idx}"));
    }
}

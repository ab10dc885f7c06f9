//! The protocol task: feeds requests, messages, ticks and completions into
//! the core, and carries out its `Ready`s without ever blocking.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::mpsc::Sender;

use dengine_core::{
    ConfState, Entry, LogIndex, MessageBody, NodeId, RawNode, ReadId, Ready, Role, Term,
};
use tokio::sync::mpsc::{Receiver, UnboundedReceiver};
use tokio::sync::{oneshot, watch};

use super::pending::{Pending, Proposal, ProposalQueue};
use super::{ApplyJob, DiskJob, Event, ReadJob, ReadPolicy, Request, Store};
use crate::error::Error;
use crate::snapshot::{SnapshotData, SnapshotStore};
use crate::state_machine::StateMachine;
use crate::transport::Transport;

/// Requests and events handled before the next `Ready`: the batching that
/// turns many proposals into one append, one fsync and one message.
const MAX_BATCH: usize = 4096;

/// What a node reports about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metrics {
    /// This node.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its term.
    pub term: Term,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// The highest index known committed.
    pub commit: LogIndex,
    /// The highest index applied to the state machine.
    pub applied: LogIndex,
    /// The last index in its log.
    pub last_index: LogIndex,
    /// The membership in force.
    pub membership: ConfState,
    /// How many snapshots this node installed from a leader since it started.
    pub snapshots_installed: u64,
    /// The index of the newest snapshot this node made of its own state.
    pub snapshot_made_at: LogIndex,
    /// Set once the node stopped on a fatal error.
    pub fatal: Option<String>,
}

pub(crate) struct CoreLoop<SM: StateMachine> {
    pub(crate) raw: RawNode<Store>,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) requests: Receiver<super::Request<SM>>,
    pub(crate) events: UnboundedReceiver<Event>,
    /// For events the loop sends itself.
    pub(crate) events_tx: tokio::sync::mpsc::UnboundedSender<Event>,
    pub(crate) disk: Sender<DiskJob>,
    pub(crate) apply: tokio::sync::mpsc::UnboundedSender<ApplyJob<SM>>,
    pub(crate) metrics: watch::Sender<Metrics>,
    pub(crate) tick: std::time::Duration,
    /// Proposals waiting for their entries to be applied.
    pub(crate) proposals: Pending<SM::Response>,
    /// Where proposals arrive from the application.
    pub(crate) queue: Arc<ProposalQueue<SM::Response>>,
    pub(crate) changes: BTreeMap<LogIndex, (Term, oneshot::Sender<Result<LogIndex, Error>>)>,
    pub(crate) reads: HashMap<u64, ReadJob<SM>>,
    pub(crate) next_read: u64,
    /// Snapshot data by index: made here or received from a leader.
    pub(crate) snapshots: BTreeMap<LogIndex, SnapshotData>,
    pub(crate) incoming: BTreeMap<LogIndex, SnapshotData>,
    /// Where this node keeps snapshots.
    pub(crate) snapshot_store: SnapshotStore,
    /// Snapshots from elsewhere being copied in (by index).
    pub(crate) importing: std::collections::BTreeSet<LogIndex>,
    pub(crate) applied: LogIndex,
    pub(crate) fatal: Option<String>,
    /// Set for the in-memory store: writes cost nothing to make durable, so
    /// the core task does them itself instead of waking the disk thread.
    pub(crate) inline_store: Option<Store>,
    /// Ticks since start.
    pub(crate) ticks: u64,
    pub(crate) snapshots_installed: u64,
    pub(crate) snapshot_made_at: LogIndex,
    /// The request timeout in ticks.
    pub(crate) timeout_ticks: u64,
    /// Proposals taken from the queue, proposed together (the buffer is
    /// kept, so taking does not allocate).
    pub(crate) batch: Vec<Proposal<SM::Response>>,
}

impl<SM: StateMachine> CoreLoop<SM> {
    /// Runs until shut down (or a fatal error).
    pub(crate) async fn run(mut self) {
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                ev = self.events.recv() => {
                    let Some(ev) = ev else { break };
                    self.on_event(ev);
                    for _ in 0..MAX_BATCH {
                        match self.events.try_recv() {
                            Ok(ev) => self.on_event(ev),
                            Err(_) => break,
                        }
                    }
                }
                req = self.requests.recv() => {
                    let Some(req) = req else { break };
                    if self.on_request(req) {
                        break;
                    }
                    let mut stop = false;
                    for _ in 0..MAX_BATCH {
                        match self.requests.try_recv() {
                            Ok(req) => if self.on_request(req) { stop = true; break },
                            Err(_) => break,
                        }
                    }
                    if stop { break }
                }
                _ = self.queue.notify.notified() => {}
                _ = ticker.tick() => {
                    self.ticks += 1;
                    self.expire_proposals();
                    if self.fatal.is_none()
                        && let Err(e) = self.raw.tick()
                    {
                        self.fail(e.into());
                    }
                }
            }
            self.take_proposals();
            if self.fatal.is_none() {
                self.drain_ready();
            }
            self.publish_metrics();
        }
        self.stop();
    }

    fn fail(&mut self, e: Error) {
        if !e.is_fatal() {
            tracing::warn!(error = %e, "unexpected error from the core");
            return;
        }
        tracing::error!(error = %e, "node stopping on a fatal error");
        self.fatal = Some(e.to_string());
        let fatal = self.fatal.clone();
        self.metrics.send_modify(|m| m.fatal = fatal);
        self.queue.close(&e);
        self.proposals.fail_all(&e);
        for (_, (_, r)) in std::mem::take(&mut self.changes) {
            let _ = r.send(Err(e.clone()));
        }
        for (_, job) in self.reads.drain() {
            job(Err(e.clone()));
        }
    }

    fn stop(&mut self) {
        let _ = self.disk.send(DiskJob::Stop);
        let _ = self.apply.send(ApplyJob::Stop);
        self.queue.close(&Error::Shutdown);
        self.proposals.fail_all(&Error::Shutdown);
        for (_, (_, r)) in std::mem::take(&mut self.changes) {
            let _ = r.send(Err(Error::Shutdown));
        }
        for (_, job) in self.reads.drain() {
            job(Err(Error::Shutdown));
        }
    }

    /// Returns true to shut down.
    fn on_request(&mut self, req: Request<SM>) -> bool {
        if let Some(f) = &self.fatal {
            let e = Error::Storage(f.clone());
            match req {
                Request::Read { job, .. } => job(Err(e)),
                Request::ConfChange { reply, .. } => {
                    let _ = reply.send(Err(e));
                }
                Request::Transfer { reply, .. } => {
                    let _ = reply.send(Err(e));
                }
                Request::Shutdown => return true,
            }
            return false;
        }
        match req {
            Request::Read { policy, job } => {
                let core_policy = match policy {
                    ReadPolicy::Stale => {
                        let _ = self.apply.send(ApplyJob::Read(LogIndex::ZERO, job));
                        return false;
                    }
                    ReadPolicy::Lease => dengine_core::ReadPolicy::Lease,
                    ReadPolicy::Linearizable => dengine_core::ReadPolicy::ReadIndex,
                };
                self.next_read += 1;
                let id = self.next_read;
                match self.raw.read_index(ReadId(id), core_policy) {
                    Ok(()) => {
                        self.reads.insert(id, job);
                    }
                    Err(e) => job(Err(e.into())),
                }
            }
            Request::ConfChange { change, reply } => match self.raw.propose_conf_change(change) {
                Ok(index) => {
                    let term = self.raw.term();
                    self.changes.insert(index, (term, reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                }
            },
            Request::Transfer { to, reply } => {
                let _ = reply.send(self.raw.transfer_leader(to).map_err(Error::from));
            }
            Request::Shutdown => return true,
        }
        false
    }

    /// Proposals waiting longer than the request timeout get `Timeout`
    /// (their outcome is unknown). Done here, on ticks, rather than with a
    /// timer per request.
    fn expire_proposals(&mut self) {
        self.proposals.expire(self.ticks, self.timeout_ticks);
    }

    /// Takes what proposers queued and proposes it in one batch. (Once the
    /// node failed, the queue is closed and answers proposers itself.)
    fn take_proposals(&mut self) {
        self.queue.take(&mut self.batch);
        self.flush_proposals();
    }

    /// Proposes the gathered commands as consecutive entries in one step:
    /// one append, one replication message per follower, one fsync.
    fn flush_proposals(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let mut data = Vec::with_capacity(self.batch.len());
        let mut replies = Vec::with_capacity(self.batch.len());
        for (d, r) in self.batch.drain(..) {
            data.push(d);
            replies.push(r);
        }
        match self.raw.propose_batch(data) {
            Ok((first, _)) => {
                let term = self.raw.term();
                self.proposals.insert(first, term, self.ticks, replies);
            }
            Err(e) => {
                let e: Error = e.into();
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        if self.fatal.is_some() {
            return;
        }
        let res = match ev {
            Event::Message(msg, data) => {
                if let MessageBody::InstallSnapshot { meta } = &msg.body {
                    let Some(d) = data else {
                        // Installing metadata without the data would leave
                        // the state machine behind the log.
                        tracing::warn!(from = %msg.from, index = %meta.last_index,
                            "snapshot message without its data; dropped");
                        return;
                    };
                    if !self.snapshot_store.holds(&d) {
                        self.import_snapshot(msg, d);
                        return;
                    }
                    self.incoming.insert(meta.last_index, d);
                }
                match self.raw.step(msg) {
                    Err(e) if !e.is_fatal() => {
                        tracing::debug!(error = %e, "message refused");
                        Ok(())
                    }
                    other => other,
                }
            }
            Event::SnapshotImported(msg, data) => {
                self.importing.remove(&data.meta().last_index);
                self.on_event(Event::Message(msg, Some(data)));
                return;
            }
            Event::SnapshotReport(to, ok) => self.raw.report_snapshot(to, ok),
            Event::Persisted(batches) => {
                let mut res = Ok(());
                for b in batches {
                    if let Err(e) = self.raw.on_persisted(b.persisted()) {
                        res = Err(e);
                        break;
                    }
                    for m in b.messages {
                        self.send(m);
                    }
                }
                res
            }
            Event::Applied(index) => {
                self.applied = index;
                self.raw.on_applied(index)
            }
            Event::SnapshotMade(meta, data) => {
                let _ = self.disk.send(DiskJob::SaveSnapshot(meta, data));
                Ok(())
            }
            Event::SnapshotSaved(meta, data) => {
                self.snapshot_made_at = meta.last_index;
                self.snapshots.insert(meta.last_index, data);
                while self.snapshots.len() > 2 {
                    self.snapshots.pop_first();
                }
                self.raw.snapshot_created(&meta)
            }
            Event::ImportFailed(index) => {
                self.importing.remove(&index);
                Ok(())
            }
            Event::SnapshotFailed => {
                self.raw.snapshot_failed();
                Ok(())
            }
            Event::Fatal(msg) => {
                self.fail(Error::Storage(msg));
                return;
            }
        };
        if let Err(e) = res {
            self.fail(e.into());
        }
    }

    /// Copies a snapshot that does not live in this node's store (sent by a
    /// node of the same process) in, off the core task; the message is
    /// stepped once the copy is durable. A failed copy drops the message
    /// (the leader sends again).
    fn import_snapshot(&mut self, msg: dengine_core::Message, data: SnapshotData) {
        let index = data.meta().last_index;
        if !self.importing.insert(index) {
            return;
        }
        let store = self.snapshot_store.clone();
        let events = self.events_tx.clone();
        tokio::task::spawn_blocking(move || match store.import(&data) {
            Ok(local) => {
                let _ = events.send(Event::SnapshotImported(msg, local));
            }
            Err(e) => {
                tracing::warn!(error = %e, index = %index, "copying a snapshot in failed");
                let _ = events.send(Event::ImportFailed(index));
            }
        });
    }

    fn send(&self, msg: dengine_core::Message) {
        let data = match &msg.body {
            MessageBody::InstallSnapshot { meta } => {
                let Some(d) = self.snapshots.get(&meta.last_index).cloned() else {
                    tracing::warn!(to = %msg.to, index = %meta.last_index,
                        "no data for the snapshot to send; not sent");
                    let _ = self.raw_report_failed(msg.to);
                    return;
                };
                Some(d)
            }
            _ => None,
        };
        self.transport.send(msg, data);
    }

    /// Schedules a failed snapshot report (the progress then probes again).
    fn raw_report_failed(&self, to: dengine_core::NodeId) -> bool {
        self.events_tx
            .send(Event::SnapshotReport(to, false))
            .is_ok()
    }

    fn drain_ready(&mut self) {
        while self.raw.has_ready() {
            match self.raw.ready() {
                Ok(rd) => self.handle_ready(rd),
                Err(e) => {
                    self.fail(e.into());
                    return;
                }
            }
        }
    }

    fn handle_ready(&mut self, rd: Ready) {
        for m in rd.messages {
            self.send(m);
        }
        if let Some(batch) = rd.persist {
            let data = batch
                .snapshot
                .as_ref()
                .and_then(|m| self.incoming.remove(&m.last_index));
            if let (Some(meta), Some(d)) = (&batch.snapshot, &data) {
                // Installed in the state machine after everything handed out
                // before it (the apply task works in order).
                let _ = self.apply.send(ApplyJob::Restore(meta.clone(), d.clone()));
                self.snapshots_installed += 1;
                self.snapshots.insert(meta.last_index, d.clone());
                self.incoming.retain(|&i, _| i > meta.last_index);
            }
            match &self.inline_store {
                Some(store) => {
                    let res = store
                        .write(
                            batch.snapshot.as_ref(),
                            &batch.entries,
                            batch.hard_state.as_ref(),
                        )
                        .and_then(|()| store.sync());
                    if let Err(e) = res {
                        self.fail(Error::Storage(e.to_string()));
                        return;
                    }
                    if let Err(e) = self.raw.on_persisted(batch.persisted()) {
                        self.fail(e.into());
                        return;
                    }
                    for m in batch.messages {
                        self.send(m);
                    }
                }
                _ => {
                    let _ = self.disk.send(DiskJob::Write(batch));
                }
            }
        }
        if !rd.committed_entries.is_empty() {
            self.hand_out(rd.committed_entries);
        }
        for rs in rd.read_states {
            let Some(job) = self.reads.remove(&rs.id.0) else {
                continue;
            };
            match rs.result {
                Ok(index) => {
                    let _ = self.apply.send(ApplyJob::Read(index, job));
                }
                Err(e) => job(Err(e.into())),
            }
        }
        if let Some(meta) = rd.snapshot_request {
            let _ = self.apply.send(ApplyJob::Snapshot(meta));
        }
        if let Some(to) = rd.compact_to {
            let _ = self.disk.send(DiskJob::Compact(to));
        }
    }

    /// Passes committed entries to the apply task with the replies that
    /// wait for them; a reply whose entry was replaced learns it now.
    fn hand_out(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let proposals = self.proposals.take_for(&entries);
        let mut changes = Vec::new();
        // Membership changes are rare: skip the lookups when none waits.
        if !self.changes.is_empty() {
            for e in &entries {
                if let Some((term, reply)) = self.changes.remove(&e.index) {
                    if term == e.term {
                        changes.push((e.index, reply));
                    } else {
                        let _ = reply.send(Err(Error::Dropped(e.index)));
                    }
                }
            }
        }
        let _ = self
            .apply
            .send(ApplyJob::Entries(entries, proposals, changes));
    }

    fn publish_metrics(&self) {
        let ss = self.raw.soft_state();
        let hs = self.raw.hard_state();
        let last_index = self.raw.last_index();
        let leader = (!ss.leader.is_none()).then_some(ss.leader);
        self.metrics.send_if_modified(|m| {
            let same = m.role == ss.role
                && m.term == hs.term
                && m.leader == leader
                && m.commit == hs.commit
                && m.applied == self.applied
                && m.last_index == last_index
                && m.fatal == self.fatal
                && m.snapshots_installed == self.snapshots_installed
                && m.snapshot_made_at == self.snapshot_made_at
                && m.membership == *self.raw.conf_state();
            if same {
                return false;
            }
            m.role = ss.role;
            m.term = hs.term;
            m.leader = leader;
            m.commit = hs.commit;
            m.applied = self.applied;
            m.last_index = last_index;
            m.fatal.clone_from(&self.fatal);
            m.snapshots_installed = self.snapshots_installed;
            m.snapshot_made_at = self.snapshot_made_at;
            if m.membership != *self.raw.conf_state() {
                m.membership = self.raw.conf_state().clone();
            }
            true
        });
    }
}

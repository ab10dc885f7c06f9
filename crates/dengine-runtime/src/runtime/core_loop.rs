//! The protocol task: feeds requests, messages, ticks and completions into
//! the core, and carries out its `Ready`s without ever blocking.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Instant;

use dengine_core::{LogIndex, Message, MessageBody, NodeId, RawNode, ReadId, Role, Term};
use tokio::sync::mpsc::{Receiver, UnboundedReceiver};
use tokio::sync::{oneshot, watch};

use super::commit_notices::CommitNoticeTimer;
use super::held_commit::HeldCommit;
use super::metrics::Metrics;
use super::pending::{Pending, Proposal, ProposalQueue};
use super::telemetry;
use super::{
    ApplyJob, DiskJob, DiskReports, Event, Inbound, MAX_DISK_JOBS, ReadJob, ReadPolicy, Request,
    Store, TickClock,
};
use crate::error::Error;
use crate::snapshot::{SnapshotData, SnapshotStore};
use crate::state_machine::StateMachine;
use crate::transport::Transport;

/// Requests and events handled before the next `Ready`: the batching that
/// turns many proposals into one append, one fsync and one message.
const MAX_BATCH: usize = 4096;

/// Snapshot handles kept to send to followers (the newest ones).
const KEEP_SNAPSHOTS: usize = 2;

/// What woke the core task.
enum Woke<SM: StateMachine> {
    Event(Event),
    Request(Request<SM>),
    Message(Inbound),
    Proposals,
    Tick,
}

/// A leadership transfer waiting to be seen through.
pub(crate) struct PendingTransfer {
    to: NodeId,
    /// The tick it gives up at.
    deadline: u64,
    reply: oneshot::Sender<Result<(), Error>>,
}

pub(crate) struct CoreLoop<SM: StateMachine> {
    pub(crate) raw: RawNode<Store>,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) requests: Receiver<super::Request<SM>>,
    /// Messages from peers (bounded: dropped when full).
    pub(crate) inbox: Receiver<Inbound>,
    pub(crate) events: UnboundedReceiver<Event>,
    /// For events the loop sends itself (and snapshot reports).
    pub(crate) events_tx: tokio::sync::mpsc::UnboundedSender<Event>,
    /// The disk thread's reports, taken at every turn.
    pub(crate) disk_reports: Arc<DiskReports>,
    pub(crate) disk: Sender<DiskJob>,
    pub(crate) apply: tokio::sync::mpsc::UnboundedSender<ApplyJob<SM>>,
    pub(crate) metrics: watch::Sender<Metrics>,
    pub(crate) clock: TickClock,
    /// Proposals waiting for their entries to be applied.
    pub(crate) proposals: Pending<SM::Response>,
    /// Where proposals arrive from the application.
    pub(crate) queue: Arc<ProposalQueue<SM::Response>>,
    pub(crate) changes: BTreeMap<LogIndex, (Term, oneshot::Sender<Result<LogIndex, Error>>)>,
    /// Reads waiting for the core, by id, with the tick they came at (ids
    /// and ticks grow together, so the oldest is first).
    pub(crate) reads: BTreeMap<u64, (u64, ReadJob<SM>)>,
    pub(crate) next_read: u64,
    /// Snapshots this node can send: the newest made or installed.
    pub(crate) snapshots: BTreeMap<LogIndex, SnapshotData>,
    /// Snapshots received from a leader, waiting for the core to install.
    pub(crate) incoming: BTreeMap<LogIndex, SnapshotData>,
    /// Where this node keeps snapshots.
    pub(crate) snapshot_store: SnapshotStore,
    /// Snapshots from elsewhere being copied in (by index).
    pub(crate) importing: BTreeSet<LogIndex>,
    /// Where a snapshot with the state machine's data, for a follower
    /// the newest snapshot (a checkpoint) cannot serve, stands.
    pub(crate) data_snapshot: DataSnapshot,
    pub(crate) applied: LogIndex,
    pub(crate) fatal: Option<String>,
    /// Set for the in-memory store: writes cost nothing to make durable, so
    /// the core task does them itself instead of waking the disk thread.
    pub(crate) inline_store: Option<Store>,
    pub(crate) snapshots_installed: u64,
    pub(crate) snapshot_made_at: LogIndex,
    pub(crate) snapshot_failures: u64,
    pub(crate) last_snapshot_failure: Option<String>,
    /// The request timeout in ticks.
    pub(crate) timeout_ticks: u64,
    /// Proposals taken from the queue, proposed together (the buffer is
    /// kept, so taking does not allocate).
    pub(crate) batch: Vec<Proposal<SM::Response>>,
    /// Spans of traced entries in flight.
    pub(crate) traces: super::traces::Traces,
    /// Persist batches with the disk thread, not yet reported durable.
    pub(crate) disk_jobs: usize,
    /// A hard state that moves only the commit index, held back from the
    /// disk thread.
    pub(crate) held_commit: HeldCommit,
    /// When the commit notices the core holds back go out.
    pub(crate) commit_notices: CommitNoticeTimer,
    pub(crate) transfer: Option<PendingTransfer>,
    /// What was published last.
    pub(crate) published: Metrics,
    /// The tick at which progress (commit, applied, last index) was
    /// published last.
    pub(crate) progress_tick: u64,
}

/// A snapshot with the state machine's data, asked for a follower when
/// the newest snapshot is a checkpoint (which has none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DataSnapshot {
    /// None is needed, or the newest snapshot has its data.
    None,
    /// Asked of the core; the next snapshot it asks for writes the data.
    Wanted,
    /// Being made: followers that need it wait for this one rather than
    /// ask for another (which would replace the one a cut transfer may be
    /// resuming).
    Making,
}

impl DataSnapshot {
    /// A snapshot the core asked for was made or failed: the one being
    /// made, if any, is done (a wanted one still waits for its request).
    fn answered(&mut self) {
        if *self == DataSnapshot::Making {
            *self = DataSnapshot::None;
        }
    }
}

/// Rounds of taking the disk thread's reports at the end of a turn.
const PUBLISH_ROUNDS: usize = 4;

impl<SM: StateMachine> CoreLoop<SM> {
    /// Runs until shut down.
    pub(crate) async fn run(mut self) {
        let sleep = tokio::time::sleep_until(self.clock.deadline().into());
        tokio::pin!(sleep);
        // One registration with the proposal queue, kept across turns that
        // other sources end (and made again only once it fired): making a
        // new one each turn took the queue's waiter lock twice per turn.
        let queue = self.queue.clone();
        let proposals = queue.notify.notified();
        tokio::pin!(proposals);
        loop {
            let next = self.commit_notices.deadline(self.clock.deadline());
            let deadline = tokio::time::Instant::from_std(next);
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            // Sleeps until any source has something (or a tick is due).
            // Which source woke it does not matter: every turn then takes
            // from every source, each within a budget, so none can starve
            // another; and time does not depend on the timer winning.
            let woke = tokio::select! {
                biased;
                ev = self.events.recv() => ev.map(Woke::Event),
                req = self.requests.recv() => req.map(Woke::Request),
                msg = self.inbox.recv() => msg.map(Woke::Message),
                _ = &mut proposals => {
                    proposals.set(queue.notify.notified());
                    Some(Woke::Proposals)
                }
                _ = &mut sleep => Some(Woke::Tick),
            };
            let Some(woke) = woke else { break };
            // Reads are served against the clock as it is now.
            self.catch_up();
            // Before whatever woke the core: the disk thread's reports came
            // first, and its wake-ups are only for them.
            self.take_disk_reports();
            let mut stop = false;
            match woke {
                Woke::Event(ev) => self.on_event(ev),
                Woke::Request(req) => stop = self.on_request(req),
                Woke::Message((msg, data, spans)) => self.on_traced_message(msg, data, spans),
                Woke::Proposals | Woke::Tick => {}
            }
            if stop || self.take_all() {
                break;
            }
            if self.fatal.is_none() {
                self.take_proposals();
                self.send_commit_notices_when_due();
                self.drain_ready();
                self.time_commit_notices();
                self.check_transfer();
                self.publish_unblocking();
            }
            self.publish_metrics(false);
        }
        self.stop();
    }

    /// Handles the disk thread's reports waiting.
    fn take_disk_reports(&mut self) {
        for ev in self.disk_reports.take() {
            self.on_event(ev);
        }
    }

    /// Tells the disk thread which durable entries would let the core move
    /// on now (every one, while the disk is too far behind: the core takes
    /// proposals again when it hears of one), and handles the reports that
    /// came during the turn, until none came. After a few rounds (a busy
    /// disk thread could keep the loop going while peers' messages wait) it
    /// has every report wake it and ends the turn.
    fn publish_unblocking(&mut self) {
        for _ in 0..PUBLISH_ROUNDS {
            let through = if self.disk_jobs >= MAX_DISK_JOBS {
                LogIndex(u64::MAX)
            } else {
                self.raw.persist_unblocks_through()
            };
            let came = self.disk_reports.publish(through);
            if came.is_empty() || self.fatal.is_some() {
                return;
            }
            for ev in came {
                self.on_event(ev);
            }
            self.take_proposals();
            self.drain_ready();
            self.time_commit_notices();
        }
        if self.disk_reports.wake_on_every_report() {
            let _ = self.events_tx.send(Event::DiskReports);
        }
    }

    /// Has the core send the commit notices it holds back once their time
    /// came (after this turn's proposals, whose appends carry the commit
    /// to the followers they reach: no notice goes to those).
    fn send_commit_notices_when_due(&mut self) {
        if self.commit_notices.fire(Instant::now)
            && let Err(e) = self.raw.send_commit_notices()
        {
            self.fail(e.into());
        }
    }

    /// Times the commit notices the core holds back after a turn.
    fn time_commit_notices(&mut self) {
        let held = self.raw.has_commit_notices_due();
        self.commit_notices.update(held, Instant::now);
    }

    /// Takes what waits in every source, at most [`MAX_BATCH`] from each.
    /// Returns true to shut down.
    fn take_all(&mut self) -> bool {
        for _ in 0..MAX_BATCH {
            match self.events.try_recv() {
                Ok(ev) => self.on_event(ev),
                Err(_) => break,
            }
        }
        for _ in 0..MAX_BATCH {
            match self.requests.try_recv() {
                Ok(req) => {
                    if self.on_request(req) {
                        return true;
                    }
                }
                Err(_) => break,
            }
        }
        for _ in 0..MAX_BATCH {
            match self.inbox.try_recv() {
                Ok((msg, data, spans)) => self.on_traced_message(msg, data, spans),
                Err(_) => break,
            }
        }
        false
    }

    /// Ticks the core once for every tick period that has passed, then
    /// expires what waited too long.
    fn catch_up(&mut self) {
        let due = self.clock.due(Instant::now());
        if due == 0 {
            return;
        }
        if self.fatal.is_none() {
            for _ in 0..due {
                if let Err(e) = self.raw.tick() {
                    self.fail(e.into());
                    break;
                }
            }
        }
        if self.fatal.is_none() {
            self.flush_held_commit(false);
        }
        let now = self.clock.ticks();
        self.proposals.expire(now, self.timeout_ticks);
        while let Some(entry) = self.reads.first_entry() {
            if entry.get().0.saturating_add(self.timeout_ticks) > now {
                break;
            }
            let (_, job) = entry.remove();
            job(Err(Error::Timeout));
        }
        if let Some(t) = &self.transfer
            && t.deadline <= now
            && let Some(t) = self.transfer.take()
        {
            let _ = t.reply.send(Err(Error::Timeout));
        }
    }

    pub(super) fn fail(&mut self, e: Error) {
        if !e.is_fatal() {
            tracing::warn!(error = %e, "unexpected error from the core");
            return;
        }
        if self.fatal.is_some() {
            return;
        }
        tracing::error!(error = %e, "node stopping on a fatal error");
        let why = match e {
            Error::Fatal(why) => why,
            other => other.to_string(),
        };
        self.fatal = Some(why.clone());
        // Published before anyone is answered, so a caller who got the
        // error finds the cause in the status too.
        self.publish_metrics(true);
        let e = Error::Fatal(why);
        self.queue.close(&e);
        self.answer_all(&e);
        // The node stops: no more writes, applies or messages. Requests are
        // still answered (with the cause) until it is shut down.
        let _ = self.disk.send(DiskJob::Stop);
        let _ = self.apply.send(ApplyJob::Stop);
    }

    /// A worker's channel is closed: it stopped. It reports why before it
    /// goes, so that report (already queued) is the cause, not this.
    pub(super) fn worker_gone(&mut self, which: &str) {
        while let Ok(ev) = self.events.try_recv() {
            if let Event::Fatal(why) = ev {
                self.fail(Error::Fatal(why));
                return;
            }
        }
        self.fail(Error::Fatal(format!("{which} is gone")));
    }

    /// Answers everything waiting with `e`.
    fn answer_all(&mut self, e: &Error) {
        self.proposals.fail_all(e);
        for (_, (_, r)) in std::mem::take(&mut self.changes) {
            let _ = r.send(Err(e.clone()));
        }
        for (_, (_, job)) in std::mem::take(&mut self.reads) {
            job(Err(e.clone()));
        }
        if let Some(t) = self.transfer.take() {
            let _ = t.reply.send(Err(e.clone()));
        }
    }

    fn stop(&mut self) {
        if self.fatal.is_none() {
            self.flush_held_commit(true);
        }
        let _ = self.disk.send(DiskJob::Stop);
        let _ = self.apply.send(ApplyJob::Stop);
        self.queue.close(&Error::Shutdown);
        self.answer_all(&Error::Shutdown);
    }

    /// Returns true to shut down.
    fn on_request(&mut self, req: Request<SM>) -> bool {
        if let Some(f) = &self.fatal {
            let e = Error::Fatal(f.clone());
            match req {
                Request::Read { job, .. } => job(Err(e)),
                Request::ConfChange { reply, .. } => {
                    let _ = reply.send(Err(e));
                }
                Request::Transfer { reply, .. } => {
                    let _ = reply.send(Err(e));
                }
                Request::Status { reply } => {
                    let _ = reply.send(self.raw.status());
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
                        self.reads.insert(id, (self.clock.ticks(), job));
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
                if self.raw.soft_state().leader == to {
                    let _ = reply.send(Ok(()));
                } else if let Err(e) = self.raw.transfer_leader(to) {
                    let _ = reply.send(Err(e.into()));
                } else {
                    if let Some(old) = self.transfer.take() {
                        let _ = old.reply.send(Err(Error::TransferFailed(format!(
                            "superseded by a transfer to {to}"
                        ))));
                    }
                    self.transfer = Some(PendingTransfer {
                        to,
                        deadline: self.clock.ticks().saturating_add(self.timeout_ticks),
                        reply,
                    });
                }
            }
            Request::Status { reply } => {
                let _ = reply.send(self.raw.status());
            }
            Request::Shutdown => return true,
        }
        false
    }

    /// Answers a leadership transfer once leadership has moved (or cannot).
    fn check_transfer(&mut self) {
        let Some(t) = &self.transfer else { return };
        let ss = self.raw.soft_state();
        let outcome = if ss.leader == t.to {
            Some(Ok(()))
        } else if ss.role == Role::Leader && self.raw.transfer_target() != Some(t.to) {
            // Still leading and no longer handing over: the core gave up
            // (the target did not catch up within an election timeout).
            Some(Err(Error::TransferFailed(format!(
                "{} did not take over in time",
                t.to
            ))))
        } else if ss.role != Role::Leader && !ss.leader.is_none() {
            Some(Err(Error::TransferFailed(format!(
                "{} became leader instead of {}",
                ss.leader, t.to
            ))))
        } else {
            None
        };
        if let Some(outcome) = outcome
            && let Some(t) = self.transfer.take()
        {
            let _ = t.reply.send(outcome);
        }
    }

    /// Takes what proposers queued and proposes it in one batch, unless the
    /// disk is too far behind (the queue then fills, and proposers hear
    /// `Overloaded`).
    fn take_proposals(&mut self) {
        if self.disk_jobs >= MAX_DISK_JOBS {
            return;
        }
        self.queue.take(&mut self.batch);
        self.flush_proposals();
    }

    /// Proposes the gathered commands as consecutive entries in one step:
    /// one append, one replication message per follower, one fsync.
    fn flush_proposals(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        telemetry::record_proposals(self.batch.len());
        let mut data = Vec::with_capacity(self.batch.len());
        let mut replies = Vec::with_capacity(self.batch.len());
        let mut traces = Vec::new();
        for (i, (d, r, t)) in self.batch.drain(..).enumerate() {
            data.push(d);
            replies.push(r);
            if let Some(t) = t {
                traces.push((i, t));
            }
        }
        match self.raw.propose_batch(data) {
            Ok((first, _)) => {
                let term = self.raw.term();
                if !traces.is_empty() {
                    self.traces.proposed(self.raw.id(), first, traces);
                }
                self.proposals
                    .insert(first, term, self.clock.ticks(), replies);
            }
            Err(e) => {
                let e: Error = e.into();
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// A message from a peer, with the spans of the traced entries it
    /// carries (if any).
    fn on_traced_message(
        &mut self,
        msg: Message,
        data: Option<SnapshotData>,
        spans: Vec<tracing::Span>,
    ) {
        if !spans.is_empty()
            && let MessageBody::AppendEntries { entries, .. } = &msg.body
            && let Some(last) = entries.last()
        {
            self.traces.received(last.index, spans);
        }
        self.on_message(msg, data);
    }

    /// A message from a peer.
    fn on_message(&mut self, msg: Message, data: Option<SnapshotData>) {
        if self.fatal.is_some() {
            return;
        }
        // With the disk this far behind, new entries would only queue up:
        // drop them (the leader sends again) and take everything else.
        if self.disk_jobs >= MAX_DISK_JOBS
            && matches!(&msg.body, MessageBody::AppendEntries { entries, .. } if !entries.is_empty())
        {
            return;
        }
        if let MessageBody::InstallSnapshot { meta } = &msg.body {
            let Some(d) = data else {
                // Installing metadata without the data would leave the
                // state machine behind the log.
                tracing::warn!(from = %msg.from, index = %meta.last_index,
                    "snapshot message without its data; dropped");
                return;
            };
            if d.meta() != meta {
                tracing::warn!(from = %msg.from, index = %meta.last_index,
                    "snapshot data for another snapshot than its message; dropped");
                return;
            }
            if !self.snapshot_store.holds(&d) {
                self.import_snapshot(msg, d);
                return;
            }
            let index = meta.last_index;
            self.incoming.insert(index, d);
            self.step(msg);
            // A snapshot the core declined (stale, or one is being
            // installed already) is not kept: neither its handle nor its
            // file.
            if self.raw.pending_snapshot_index() != Some(index)
                && let Some(d) = self.incoming.remove(&index)
                // A copy of a snapshot this node holds (sent twice, say)
                // lives in the very same file: that file stays.
                && !self.snapshots.values().any(|s| s.path() == d.path())
            {
                self.snapshot_store.discard(&d);
            }
            return;
        }
        self.step(msg);
    }

    fn step(&mut self, msg: Message) {
        match self.raw.step(msg) {
            Err(e) if !e.is_fatal() => tracing::debug!(error = %e, "message refused"),
            Err(e) => self.fail(e.into()),
            Ok(()) => {}
        }
    }

    fn on_event(&mut self, ev: Event) {
        if self.fatal.is_some() {
            return;
        }
        let res = match ev {
            Event::SnapshotImported(msg, data) => {
                self.importing.remove(&data.meta().last_index);
                self.on_message(msg, Some(data));
                return;
            }
            Event::SnapshotReport(to, ok) => self.raw.report_snapshot(to, ok),
            Event::Persisted(batches, unreachable) => {
                self.disk_jobs = self.disk_jobs.saturating_sub(batches.len());
                for to in unreachable {
                    self.raw.report_unreachable(to);
                }
                let mut res = Ok(());
                for (persisted, messages) in batches {
                    if let Err(e) = self.raw.on_persisted(persisted) {
                        res = Err(e);
                        break;
                    }
                    self.persisted_traces(&persisted);
                    for m in messages {
                        self.send(m);
                    }
                }
                res
            }
            // The reports were taken at the start of the turn.
            Event::DiskReports => Ok(()),
            Event::Applied(index) => {
                self.applied = self.applied.max(index);
                self.raw.on_applied(index)
            }
            Event::SnapshotMade(meta, data) => {
                let _ = self.disk.send(DiskJob::SaveSnapshot(meta, data));
                Ok(())
            }
            Event::SnapshotSaved(meta, data) => {
                self.snapshot_made_at = meta.last_index;
                self.data_snapshot.answered();
                match data {
                    Some(data) => {
                        tracing::info!(node = %self.raw.id(), index = meta.last_index.0,
                            term = meta.last_term.0, "snapshot made");
                        self.keep_snapshot(data);
                    }
                    None => {
                        tracing::debug!(node = %self.raw.id(), index = meta.last_index.0,
                            term = meta.last_term.0, "state machine checkpointed; log compacted behind it");
                        // The core offers followers this snapshot from now
                        // on: older data is of no use to them.
                        self.snapshots.retain(|&i, _| i >= meta.last_index);
                    }
                }
                self.raw.snapshot_created(&meta)
            }
            Event::ImportFailed(index) => {
                self.importing.remove(&index);
                Ok(())
            }
            Event::SnapshotFailed(why) => {
                self.data_snapshot.answered();
                self.snapshot_failures += 1;
                tracing::warn!(reason = %why, failures = self.snapshot_failures,
                    "snapshot failed; asked again after a backoff");
                self.last_snapshot_failure = Some(why);
                self.raw.snapshot_failed();
                Ok(())
            }
            Event::Fatal(msg) => {
                self.fail(Error::Fatal(msg));
                return;
            }
        };
        if let Err(e) = res {
            self.fail(e.into());
        }
    }

    /// Keeps a snapshot's handle to send to followers (the newest few).
    pub(super) fn keep_snapshot(&mut self, data: SnapshotData) {
        self.snapshots.insert(data.meta().last_index, data);
        while self.snapshots.len() > KEEP_SNAPSHOTS {
            self.snapshots.pop_first();
        }
    }

    /// Copies a snapshot that does not live in this node's store (sent by a
    /// node of the same process) in, off the core task; the message is
    /// stepped once the copy is durable. A failed copy drops the message
    /// (the leader sends again).
    fn import_snapshot(&mut self, msg: Message, data: SnapshotData) {
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
}

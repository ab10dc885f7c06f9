//! One `Watch` call: its watchers, and the task that sends their events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dengine_kv::{Event, EventKind, KeyValue, KvError, KvStateMachine};
use dengine_proto::etcdserverpb as pb;
use dengine_proto::etcdserverpb::watch_request::RequestUnion;
use dengine_proto::mvccpb;
use dengine_proto::prost::Message;
use tokio::sync::{broadcast, mpsc};
use tonic::{Status, Streaming};

use super::Applied;
use crate::etcd::{Credentials, EtcdCore, range};
use crate::telemetry;

/// Responses waiting for a slow client before the stream stops reading
/// live events (and so falls behind to the history).
pub(super) const OUT_BUFFER: usize = 64;
/// Events read from the history at a time (a revision is never split).
const HISTORY_CHUNK: usize = 1000;
/// How often watchers that asked for progress notifications get one when
/// they had no events, by default (etcd's
/// `--experimental-watch-progress-notify-interval`).
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(600);
/// Election timeouts without a leader before a stream that requires one
/// ends (etcd's `maxNoLeaderCnt`).
const NO_LEADER_CHECKS: u32 = 3;
/// The watch id of a response to a progress request (etcd's
/// `InvalidWatchID`).
const ALL_WATCHERS: i64 = -1;

/// etcd's `ErrWatcherDuplicateID`.
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
/// etcd's `ErrEmptyWatcherRange`.
const EMPTY_RANGE: &str = "mvcc: watcher range is empty";
/// etcd's cancel reason for a watch its user may not read (the text of
/// its gRPC error, as etcd puts it).
const PERMISSION_DENIED: &str =
    "rpc error: code = PermissionDenied desc = etcdserver: permission denied";

/// One watcher of a stream.
struct Watcher {
    key: Vec<u8>,
    range_end: Vec<u8>,
    /// The first revision whose events it wants.
    start: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    fragment: bool,
    /// Whether it was sent events since the last progress tick.
    active: bool,
}

impl Watcher {
    fn wants(&self, e: &Event) -> bool {
        let kind_ok = match e.kind {
            EventKind::Put => !self.no_put,
            EventKind::Delete => !self.no_delete,
        };
        kind_ok && covers(&self.key, &self.range_end, &e.kv.key)
    }
}

/// Whether the watched range `(key, range_end)` holds `k` (etcd's rules:
/// empty end, one key; `"\0"`, every key from `key`).
fn covers(key: &[u8], range_end: &[u8], k: &[u8]) -> bool {
    match range_end {
        [] => k == key,
        [0] => k >= key,
        end => key <= k && k < end,
    }
}

/// The client went away, or the stream cannot go on.
struct Gone;

/// The task of one `Watch` call.
pub(super) struct StreamTask {
    core: Arc<EtcdCore>,
    live: broadcast::Receiver<Arc<Applied>>,
    out: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    /// Every event up to this revision was sent to every watcher that
    /// wants it.
    seen: i64,
    /// How often watchers that asked for them get progress notifications.
    progress_every: Duration,
    /// The client asked for a member with a leader (`hasleader`): the
    /// stream ends with "etcdserver: no leader" once this member has known
    /// none for [`NO_LEADER_CHECKS`] election timeouts (etcd's
    /// `monitorLeader`), so the client moves to a member that has one.
    require_leader: bool,
    /// Watchers last added to the member's gauge.
    counted: usize,
    /// Who opened the stream: each watcher it creates is checked.
    credentials: Credentials,
}

impl Drop for StreamTask {
    fn drop(&mut self) {
        telemetry::record_watchers(-(self.counted as f64));
        telemetry::record_watch_stream(-1.0);
    }
}

impl StreamTask {
    pub(super) fn new(
        core: Arc<EtcdCore>,
        live: broadcast::Receiver<Arc<Applied>>,
        out: mpsc::Sender<Result<pb::WatchResponse, Status>>,
        progress_every: Duration,
    ) -> StreamTask {
        StreamTask {
            core,
            live,
            out,
            progress_every,
            require_leader: false,
            watchers: BTreeMap::new(),
            next_id: 0,
            seen: 0,
            counted: 0,
            credentials: Credentials::default(),
        }
        .counting()
    }

    /// Checks each watcher against the rights of whoever `credentials`
    /// name.
    pub(super) fn with_credentials(mut self, credentials: Credentials) -> StreamTask {
        self.credentials = credentials;
        self
    }

    fn counting(self) -> StreamTask {
        telemetry::record_watch_stream(1.0);
        self
    }

    /// Brings the member's watcher gauge to this stream's watchers.
    fn count_watchers(&mut self) {
        let now = self.watchers.len();
        telemetry::record_watchers(now as f64 - self.counted as f64);
        self.counted = now;
    }

    /// Ends the stream when this member stays without a leader (see
    /// `require_leader`).
    pub(super) fn requiring_leader(mut self, require: bool) -> StreamTask {
        self.require_leader = require;
        self
    }

    pub(super) async fn run(mut self, mut inbound: Streaming<pb::WatchRequest>) {
        let _ = self.serve(&mut inbound).await;
    }

    async fn serve(&mut self, inbound: &mut Streaming<pb::WatchRequest>) -> Result<(), Gone> {
        self.seen = self.read(|kv| kv.revision()).await?;
        let every = self.progress_every.max(Duration::from_millis(1));
        let start = tokio::time::Instant::now() + every;
        let mut tick = tokio::time::interval_at(start, every);
        let election = self.core.election_timeout().max(Duration::from_millis(1));
        let mut leader_check =
            tokio::time::interval_at(tokio::time::Instant::now() + election, election);
        let mut without_leader = 0;
        loop {
            tokio::select! {
                req = inbound.message() => match req {
                    Ok(Some(req)) => {
                        // What was applied before the request came is
                        // sent first, as etcd (whose store notifies its
                        // watchers before a write is answered) does: a
                        // progress request after an acknowledged put then
                        // reports its revision, and a watcher created
                        // after it starts past it.
                        if self.drain_live().await? {
                            return Ok(());
                        }
                        self.handle(req).await?
                    }
                    _ => return Ok(()),
                },
                got = self.live.recv() => match got {
                    Ok(applied) => self.on_applied(&applied).await?,
                    Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up().await?,
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                _ = tick.tick() => self.progress_notify().await?,
                _ = leader_check.tick(), if self.require_leader => {
                    if self.core.leader_now().is_some() {
                        without_leader = 0;
                    } else {
                        without_leader += 1;
                    }
                    if without_leader >= NO_LEADER_CHECKS {
                        let _ = self.out.send(Err(crate::etcd::errors::no_leader())).await;
                        return Ok(());
                    }
                }
            }
            // Created, cancelled, or cancelled by a compaction.
            self.count_watchers();
        }
    }

    /// Handles everything the hub holds for this stream now, without
    /// waiting. Returns true when the hub is gone.
    async fn drain_live(&mut self) -> Result<bool, Gone> {
        loop {
            match self.live.try_recv() {
                Ok(applied) => self.on_applied(&applied).await?,
                Err(broadcast::error::TryRecvError::Lagged(_)) => self.catch_up().await?,
                Err(broadcast::error::TryRecvError::Empty) => return Ok(false),
                Err(broadcast::error::TryRecvError::Closed) => return Ok(true),
            }
        }
    }

    /// Runs `query` on this member's store as it is now.
    async fn read<R: Send + 'static>(
        &self,
        query: impl FnOnce(&KvStateMachine) -> R + Send + 'static,
    ) -> Result<R, Gone> {
        match self.core.read(true, query).await {
            Ok(r) => Ok(r),
            Err(status) => {
                let _ = self.out.send(Err(status)).await;
                Err(Gone)
            }
        }
    }

    async fn send(&self, resp: pb::WatchResponse) -> Result<(), Gone> {
        self.out.send(Ok(resp)).await.map_err(|_| Gone)
    }

    fn response(&self, watch_id: i64, revision: i64) -> pb::WatchResponse {
        pb::WatchResponse {
            header: self.core.header(revision),
            watch_id,
            ..Default::default()
        }
    }

    async fn handle(&mut self, req: pb::WatchRequest) -> Result<(), Gone> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                // As etcd: cancelling a watcher the stream does not have
                // answers nothing.
                if self.watchers.remove(&c.watch_id).is_some() {
                    let mut r = self.response(c.watch_id, self.seen);
                    r.canceled = true;
                    self.send(r).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Every watcher of the stream is synced between requests:
                // every event up to `seen` was sent.
                self.send(self.response(ALL_WATCHERS, self.seen)).await
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, c: pb::WatchCreateRequest) -> Result<(), Gone> {
        use pb::watch_create_request::FilterType;
        // As etcd: no key is the smallest key.
        let key = if c.key.is_empty() { vec![0] } else { c.key };
        let refuse = |this: &Self, why: &str| {
            let mut r = this.response(-1, this.seen);
            r.created = true;
            r.canceled = true;
            r.cancel_reason = why.to_string();
            r
        };
        if !matches!(c.range_end.as_slice(), [] | [0]) && key.as_slice() >= c.range_end.as_slice() {
            return self.send(refuse(self, EMPTY_RANGE)).await;
        }
        let permitted = self
            .core
            .caller_from(&self.credentials)
            .await
            .and_then(|who| self.core.check_read(&who, &key, &c.range_end));
        if permitted.is_err() {
            return self.send(refuse(self, PERMISSION_DENIED)).await;
        }
        if self.watchers.len() >= self.core.limits.max_watchers_per_stream {
            return self
                .send(refuse(self, crate::etcd::TOO_MANY_WATCHERS))
                .await;
        }
        let id = if c.watch_id != 0 {
            if self.watchers.contains_key(&c.watch_id) {
                return self.send(refuse(self, DUPLICATE_ID)).await;
            }
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        };
        let start = if c.start_revision > 0 {
            c.start_revision
        } else {
            self.seen + 1
        };
        let filters = &c.filters;
        let w = Watcher {
            key,
            range_end: c.range_end,
            start,
            prev_kv: c.prev_kv,
            no_put: filters.contains(&(FilterType::Noput as i32)),
            no_delete: filters.contains(&(FilterType::Nodelete as i32)),
            progress_notify: c.progress_notify,
            fragment: c.fragment,
            active: false,
        };
        self.watchers.insert(id, w);
        let mut r = self.response(id, self.seen);
        r.created = true;
        self.send(r).await?;
        if start <= self.seen {
            self.replay(id, start, self.seen).await?;
        }
        Ok(())
    }

    /// Sends watcher `id` its events from revision `from` to `to` out of
    /// the history; cancels it if they were compacted away.
    async fn replay(&mut self, id: i64, mut from: i64, to: i64) -> Result<(), Gone> {
        loop {
            let Some(w) = self.watchers.get(&id) else {
                return Ok(());
            };
            let (key, end, prev) = (w.key.clone(), w.range_end.clone(), w.prev_kv);
            let got = self
                .read(move |kv| {
                    let h = kv.history(&key, &end, from, to, HISTORY_CHUNK)?;
                    let prevs = h
                        .events
                        .iter()
                        .map(|e| match prev {
                            true => kv.prev_kv(&e.kv.key, e.kv.mod_revision),
                            false => Ok(None),
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok::<_, KvError>((h, prevs))
                })
                .await?;
            let (h, prevs) = match got {
                Ok(got) => got,
                Err(KvError::Compacted) => {
                    let compacted = self.read(|kv| kv.compacted_revision()).await?;
                    self.watchers.remove(&id);
                    let mut r = self.response(id, to);
                    r.canceled = true;
                    r.compact_revision = compacted;
                    return self.send(r).await;
                }
                Err(e) => {
                    let _ = self.out.send(Err(crate::etcd::errors::from_kv(&e))).await;
                    return Err(Gone);
                }
            };
            let next = h.events.last().map(|e| e.kv.mod_revision + 1);
            let mut batch = Vec::new();
            if let Some(w) = self.watchers.get(&id) {
                for (e, p) in h.events.into_iter().zip(prevs) {
                    if w.wants(&e) {
                        batch.push(to_pb(e, p));
                    }
                }
            }
            self.send_events(id, to, batch).await?;
            match next {
                Some(next) if h.more => from = next,
                _ => return Ok(()),
            }
        }
    }

    /// Reads every watcher's events after `seen` from the history, up to
    /// the store's revision now.
    async fn catch_up(&mut self) -> Result<(), Gone> {
        let to = self.read(|kv| kv.revision()).await?;
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            let Some(w) = self.watchers.get(&id) else {
                continue;
            };
            let from = w.start.max(self.seen + 1);
            if from <= to {
                self.replay(id, from, to).await?;
            }
        }
        self.seen = self.seen.max(to);
        Ok(())
    }

    async fn on_applied(&mut self, applied: &Applied) -> Result<(), Gone> {
        let revision = applied.revision();
        if revision <= self.seen {
            // Sent already, out of the history.
            return Ok(());
        }
        let events = match applied {
            // A revision is missing (a snapshot was installed, or the
            // stream subscribed as this one applied): the history has it.
            _ if revision > self.seen + 1 => return self.catch_up().await,
            Applied::Restored { .. } => return self.catch_up().await,
            Applied::Events { events, .. } => events,
        };
        // Each watcher's events, and the previous values they need.
        let mut out: Vec<(i64, Vec<&Event>)> = Vec::new();
        let mut wanted_prev = Vec::new();
        for (&id, w) in &self.watchers {
            if w.start > revision {
                continue;
            }
            let mine: Vec<&Event> = events.iter().filter(|e| w.wants(e)).collect();
            if mine.is_empty() {
                continue;
            }
            if w.prev_kv {
                wanted_prev.extend(mine.iter().map(|e| e.kv.key.clone()));
            }
            out.push((id, mine));
        }
        let prevs: BTreeMap<Vec<u8>, KeyValue> = if wanted_prev.is_empty() {
            BTreeMap::new()
        } else {
            self.read(move |kv| {
                let mut found = BTreeMap::new();
                for key in wanted_prev {
                    if let Ok(Some(p)) = kv.prev_kv(&key, revision) {
                        found.insert(key, p);
                    }
                }
                found
            })
            .await?
        };
        for (id, mine) in out {
            let prev = self.watchers.get(&id).is_some_and(|w| w.prev_kv);
            let batch = mine
                .into_iter()
                .map(|e| {
                    let p = if prev {
                        prevs.get(&e.kv.key).cloned()
                    } else {
                        None
                    };
                    to_pb(e.clone(), p)
                })
                .collect();
            self.send_events(id, revision, batch).await?;
        }
        self.seen = revision;
        Ok(())
    }

    /// Sends `events` to watcher `id` in one response, or in fragments
    /// when it asked for them and the response would be too large.
    async fn send_events(
        &mut self,
        id: i64,
        revision: i64,
        events: Vec<mvccpb::Event>,
    ) -> Result<(), Gone> {
        if events.is_empty() {
            return Ok(());
        }
        let Some(w) = self.watchers.get_mut(&id) else {
            return Ok(());
        };
        w.active = true;
        let fragment = w.fragment;
        telemetry::record_watch_events(events.len());
        let limit = self.core.limits.max_request_bytes;
        let total: usize = events.iter().map(|e| e.encoded_len()).sum();
        if !fragment || total <= limit {
            let mut r = self.response(id, revision);
            r.events = events;
            return self.send(r).await;
        }
        // Each fragment holds as many events as fit in the limit (at
        // least one); all but the last say more follow.
        let mut part: Vec<mvccpb::Event> = Vec::new();
        let mut size = 0;
        for e in events {
            let len = e.encoded_len();
            if !part.is_empty() && size + len > limit {
                let mut r = self.response(id, revision);
                r.events = std::mem::take(&mut part);
                r.fragment = true;
                self.send(r).await?;
                size = 0;
            }
            size += len;
            part.push(e);
        }
        let mut r = self.response(id, revision);
        r.events = part;
        self.send(r).await?;
        Ok(())
    }

    /// A progress notification for each watcher that asked for them and
    /// had no events since the last one.
    async fn progress_notify(&mut self) -> Result<(), Gone> {
        let quiet: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify && !w.active)
            .map(|(&id, _)| id)
            .collect();
        for w in self.watchers.values_mut() {
            w.active = false;
        }
        for id in quiet {
            self.send(self.response(id, self.seen)).await?;
        }
        Ok(())
    }
}

/// An event in etcd's form.
fn to_pb(e: Event, prev: Option<KeyValue>) -> mvccpb::Event {
    mvccpb::Event {
        r#type: match e.kind {
            EventKind::Put => mvccpb::event::EventType::Put as i32,
            EventKind::Delete => mvccpb::event::EventType::Delete as i32,
        },
        kv: Some(range::kv_to_pb(e.kv)),
        prev_kv: prev.map(range::kv_to_pb),
    }
}

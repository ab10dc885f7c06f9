//! etcd's `Watch` service.
//!
//! The store publishes the events of every command it applies, with the
//! command's revision, to a [`WatchHub`] (a bounded broadcast channel, so
//! one slow stream never makes memory grow). Each `Watch` call runs one
//! task (module `stream`) that holds that stream's watchers and sends their
//! events in revision order. A watcher that starts at a past revision is
//! first served from the store's history, then from the live events after
//! the last revision that read covered: no gap and no duplicate at the
//! seam. A stream that falls behind (its buffer in the channel
//! overflows), or sees a revision missing from what it received (a
//! snapshot was installed), catches up from the history the same way; a
//! watcher whose next revision was compacted away is cancelled with
//! `compact_revision` set, as etcd does.
//!
//! The revisions of the commands that change something are consecutive,
//! and each such command publishes its events in one message, so a stream
//! knows it has seen every event up to the revision of the last message:
//! that revision is what progress notifications report.

mod stream;

use std::sync::Arc;

use dengine_kv::{Event, EventSink, LeaseChange};
use dengine_proto::etcdserverpb as pb;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status, Streaming};

use super::{EtcdCore, Lessor};

/// How many applied commands wait for the slowest stream before it falls
/// behind to the history.
pub const HUB_CAPACITY: usize = 4096;

/// What the store published.
#[derive(Debug)]
pub(crate) enum Applied {
    /// The events of one command, at its revision.
    Events { revision: i64, events: Vec<Event> },
    /// A snapshot replaced the store, at this revision.
    Restored { revision: i64 },
}

impl Applied {
    fn revision(&self) -> i64 {
        match self {
            Applied::Events { revision, .. } | Applied::Restored { revision } => *revision,
        }
    }
}

/// Where the store's events meet the watch streams of one member.
#[derive(Clone, Debug)]
pub struct WatchHub {
    tx: broadcast::Sender<Arc<Applied>>,
}

impl Default for WatchHub {
    fn default() -> Self {
        WatchHub::new(HUB_CAPACITY)
    }
}

impl WatchHub {
    /// A hub that keeps up to `capacity` commands for slow streams.
    pub fn new(capacity: usize) -> WatchHub {
        let (tx, _) = broadcast::channel(capacity.max(1));
        WatchHub { tx }
    }

    /// The sink to give the store
    /// ([`dengine_kv::KvStateMachine::set_event_sink`]), which also tells
    /// `lessor` of the leases the store applies, and `members` of the
    /// members' list.
    pub fn sink(
        &self,
        lessor: Option<Arc<Lessor>>,
        members: Option<tokio::sync::watch::Sender<dengine_kv::MemberList>>,
    ) -> Box<dyn EventSink> {
        Box::new(HubSink {
            tx: self.tx.clone(),
            lessor,
            members,
        })
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Applied>> {
        self.tx.subscribe()
    }
}

struct HubSink {
    tx: broadcast::Sender<Arc<Applied>>,
    lessor: Option<Arc<Lessor>>,
    members: Option<tokio::sync::watch::Sender<dengine_kv::MemberList>>,
}

impl EventSink for HubSink {
    fn wanted(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    fn publish(&mut self, revision: i64, events: Vec<Event>) {
        // No receiver: nobody watches (and the next command makes none).
        let _ = self.tx.send(Arc::new(Applied::Events { revision, events }));
    }

    fn restored(&mut self, revision: i64) {
        let _ = self.tx.send(Arc::new(Applied::Restored { revision }));
    }

    fn lease(&mut self, change: LeaseChange) {
        if let Some(l) = &self.lessor {
            l.changed(change);
        }
    }

    fn members(&mut self, list: &dengine_kv::MemberList) {
        if let Some(m) = &self.members {
            m.send_replace(list.clone());
        }
    }
}

/// etcd's `Watch` service on a key-value node.
#[derive(Clone)]
pub struct WatchService {
    core: Arc<EtcdCore>,
    hub: WatchHub,
    progress_every: std::time::Duration,
}

impl WatchService {
    /// The service of `core`'s node, fed by `hub` (whose sink the node's
    /// store holds).
    pub fn new(core: Arc<EtcdCore>, hub: WatchHub) -> WatchService {
        WatchService {
            core,
            hub,
            progress_every: stream::PROGRESS_INTERVAL,
        }
    }

    /// Sends progress notifications to the watchers that asked for them
    /// every `every` they had no event (etcd's
    /// `--experimental-watch-progress-notify-interval`; 10 minutes by
    /// default).
    pub fn with_progress_interval(mut self, every: std::time::Duration) -> WatchService {
        self.progress_every = every;
        self
    }
}

type BoxStream<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl pb::watch_server::Watch for WatchService {
    type WatchStream = BoxStream<pb::WatchResponse>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.core.check_has_leader(request.metadata())?;
        let require_leader = super::wants_leader(request.metadata());
        // Subscribed before anything is read, so that every command after
        // the first read of the store is in the channel.
        let live = self.hub.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(stream::OUT_BUFFER);
        let task = stream::StreamTask::new(self.core.clone(), live, tx, self.progress_every)
            .requiring_leader(require_leader)
            .with_credentials(super::Credentials::of(&request));
        tokio::spawn(task.run(request.into_inner()));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

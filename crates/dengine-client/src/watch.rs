//! Watches that survive a member's failure: a task keeps the watch open,
//! and when its stream breaks it opens it again on another member from
//! the revision after the last one delivered, so the caller sees every
//! event once, in order.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use dengine_proto::etcdserverpb::watch_client::WatchClient;
use dengine_proto::etcdserverpb::watch_create_request::FilterType;
use dengine_proto::etcdserverpb::watch_request::RequestUnion;
use dengine_proto::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;

use crate::Client;
use crate::error::{Error, ErrorKind, Failure};
use crate::kv::prefix_end;
use crate::pool::{Pool, Route, backoff};

/// Options of [`Client::watch`].
#[derive(Clone, Debug, Default)]
pub struct WatchOptions {
    range_end: Vec<u8>,
    prefix: bool,
    from_key: bool,
    start_revision: i64,
    prev_kv: bool,
    progress_notify: bool,
    no_put: bool,
    no_delete: bool,
    /// Off: the member may serve the watch without a leader.
    any_member: bool,
}

impl WatchOptions {
    /// Watches the key alone, from the next change on, on a member that
    /// has a leader.
    pub fn new() -> Self {
        Self::default()
    }
    /// Lets a member without a leader go on serving the watch. By default
    /// the watch asks for a member with a leader (etcd's `hasleader`
    /// metadata): a member cut off from the others ends the stream with
    /// "no leader", and the watch resumes on another member, rather than
    /// staying silent on one that no longer hears of changes.
    pub fn with_any_member(mut self) -> Self {
        self.any_member = true;
        self
    }
    /// Every key starting with the key given.
    pub fn with_prefix(mut self) -> Self {
        self.prefix = true;
        self
    }
    /// Every key from the key given on.
    pub fn with_from_key(mut self) -> Self {
        self.from_key = true;
        self
    }
    /// The keys from the key given up to `end` (excluded).
    pub fn with_range(mut self, end: impl Into<Vec<u8>>) -> Self {
        self.range_end = end.into();
        self
    }
    /// Starts at `revision` (past events included, if not compacted).
    pub fn with_start_revision(mut self, revision: i64) -> Self {
        self.start_revision = revision;
        self
    }
    /// Events carry the key's previous value.
    pub fn with_prev_key(mut self) -> Self {
        self.prev_kv = true;
        self
    }
    /// The server sends progress notifications (empty responses whose
    /// header revision says every event up to it was delivered).
    pub fn with_progress_notify(mut self) -> Self {
        self.progress_notify = true;
        self
    }
    /// Leaves puts out.
    pub fn with_no_put(mut self) -> Self {
        self.no_put = true;
        self
    }
    /// Leaves deletes out.
    pub fn with_no_delete(mut self) -> Self {
        self.no_delete = true;
        self
    }

    fn request(&self, key: Vec<u8>) -> WatchCreateRequest {
        let range_end = if self.prefix {
            prefix_end(&key)
        } else if self.from_key {
            vec![0]
        } else {
            self.range_end.clone()
        };
        let mut filters = Vec::new();
        if self.no_put {
            filters.push(FilterType::Noput as i32);
        }
        if self.no_delete {
            filters.push(FilterType::Nodelete as i32);
        }
        WatchCreateRequest {
            key,
            range_end,
            start_revision: self.start_revision,
            progress_notify: self.progress_notify,
            filters,
            prev_kv: self.prev_kv,
            // Fragments let a revision with many large events through.
            fragment: true,
            ..Default::default()
        }
    }
}

/// A watch: a [`Stream`] of etcd's watch responses (the first says the
/// watch was created; then events, and progress notifications if asked
/// for). It reconnects by itself; it ends with an error only when it
/// cannot go on (the revision it needs was compacted, or the request is
/// refused), and stops when dropped.
///
/// ```no_run
/// # async fn f(client: dengine_client::Client) -> Result<(), dengine_client::Error> {
/// use dengine_client::WatchOptions;
/// let mut watcher = client.watch("jobs/", Some(WatchOptions::new().with_prefix())).await?;
/// while let Some(response) = watcher.message().await {
///     for event in response?.events {
///         println!("{:?}", event.kv.map(|kv| kv.key));
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Watcher {
    responses: ReceiverStream<Result<WatchResponse, Error>>,
    task: JoinHandle<()>,
}

impl Watcher {
    /// The next response; `None` once the watch has ended.
    pub async fn message(&mut self) -> Option<Result<WatchResponse, Error>> {
        use tokio_stream::StreamExt;
        self.responses.next().await
    }
}

impl Stream for Watcher {
    type Item = Result<WatchResponse, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.responses).poll_next(cx)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where a watch goes on from after its stream breaks.
#[derive(Debug, Default)]
struct Resume {
    /// The revision to start from (0: from the newest, not yet known).
    next: i64,
    /// Events of revision `next` delivered already (a revision split into
    /// fragments, part of it delivered).
    delivered: usize,
    /// Events of revision `next` still to drop from a new stream: it sends
    /// the revision whole again.
    to_skip: usize,
}

/// The revision an event happened at.
fn revision_of(e: &dengine_proto::mvccpb::Event) -> i64 {
    e.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

impl Resume {
    /// A new stream starts at `next`: what was delivered of it is skipped.
    fn reconnected(&mut self) {
        self.to_skip = self.delivered;
    }

    /// Drops the events of `r` delivered before, and notes where to go on
    /// after it. Returns whether anything is left to deliver.
    fn advance(&mut self, r: &mut WatchResponse) -> bool {
        if self.to_skip > 0 {
            let next = self.next;
            let mut left = self.to_skip;
            r.events.retain(|e| {
                if revision_of(e) == next && left > 0 {
                    left -= 1;
                    false
                } else {
                    true
                }
            });
            let revision_done = !r.fragment || r.events.iter().any(|e| revision_of(e) != next);
            self.to_skip = if revision_done { 0 } else { left };
        }
        let Some(last) = r.events.last().map(revision_of) else {
            if !r.fragment
                && let Some(h) = &r.header
            {
                // A progress notification: everything up to it was sent.
                if h.revision >= self.next {
                    self.next = h.revision.saturating_add(1);
                    self.delivered = 0;
                }
                return true;
            }
            return false;
        };
        if r.fragment {
            // More of revision `last` follows.
            let of_last = r.events.iter().filter(|e| revision_of(e) == last).count();
            if self.next == last {
                self.delivered += of_last;
            } else {
                self.next = last;
                self.delivered = of_last;
            }
        } else {
            self.next = last.saturating_add(1);
            self.delivered = 0;
        }
        true
    }
}

/// Whether a member cancelled a watch for a reason another member would
/// give too (the request itself is refused), rather than for its own state
/// (no leader, stopping).
fn refused(reason: &str) -> bool {
    !reason.is_empty()
        && !matches!(
            ErrorKind::of(reason),
            ErrorKind::NoLeader | ErrorKind::Stopped | ErrorKind::LeaderChanged
        )
}

/// The stream of watch requests as a gRPC request, with etcd's `hasleader`
/// metadata when a member with a leader is required.
fn watch_request<T>(requests: T, require_leader: bool) -> tonic::Request<T> {
    let mut r = tonic::Request::new(requests);
    if require_leader {
        r.metadata_mut().insert(
            "hasleader",
            tonic::metadata::MetadataValue::from_static("true"),
        );
    }
    r
}

/// Keeps one watch open until the caller drops it.
async fn run(
    pool: Arc<Pool>,
    base: WatchCreateRequest,
    require_leader: bool,
    out: mpsc::Sender<Result<WatchResponse, Error>>,
) {
    let mut resume = Resume {
        next: base.start_revision,
        ..Resume::default()
    };
    let mut created = false;
    let mut attempt = 0u32;
    loop {
        let conn = pool.pick(Route::Any, attempt);
        let mut request = base.clone();
        request.start_revision = resume.next;
        resume.reconnected();
        let (requests, rx) = mpsc::channel(1);
        let _ = requests
            .send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(request)),
            })
            .await;
        let mut client = WatchClient::new(conn.channel.clone())
            .max_decoding_message_size(pool.options.max_response_bytes);
        let opening = tokio::time::timeout(
            pool.options.request_timeout,
            client.watch(watch_request(ReceiverStream::new(rx), require_leader)),
        );
        let opened = tokio::select! {
            r = opening => r.unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer"))),
            _ = out.closed() => return,
        };
        match opened {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    let next = tokio::select! {
                        m = stream.message() => m,
                        _ = out.closed() => return,
                    };
                    match next {
                        Ok(Some(mut r)) => {
                            if r.compact_revision > 0 {
                                let _ = out
                                    .send(Err(Error::WatchCompacted {
                                        compact_revision: r.compact_revision,
                                    }))
                                    .await;
                                return;
                            }
                            if r.created {
                                attempt = 0;
                                if resume.next == 0 {
                                    resume.next = r
                                        .header
                                        .as_ref()
                                        .map_or(0, |h| h.revision)
                                        .saturating_add(1);
                                }
                                if created {
                                    continue;
                                }
                                created = true;
                            } else if r.canceled {
                                if refused(&r.cancel_reason) {
                                    let kind = ErrorKind::of(&r.cancel_reason);
                                    let _ = out
                                        .send(Err(Error::Server {
                                            kind,
                                            code: tonic::Code::FailedPrecondition,
                                            message: r.cancel_reason.clone(),
                                        }))
                                        .await;
                                    return;
                                }
                                // Ended by the member (it lost its leader,
                                // or stops): go on elsewhere.
                                break;
                            } else if !resume.advance(&mut r) {
                                continue;
                            }
                            if out.send(Ok(r)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            if Failure::of(&status) == Failure::Final {
                                let _ = out.send(Err(Error::from_status(&status))).await;
                                return;
                            }
                            break;
                        }
                    }
                }
            }
            Err(status) => {
                if Failure::of(&status) == Failure::Final {
                    let _ = out.send(Err(Error::from_status(&status))).await;
                    return;
                }
            }
        }
        drop(requests);
        attempt += 1;
        tokio::select! {
            _ = tokio::time::sleep(backoff(&pool.options, attempt)) => {}
            _ = out.closed() => return,
        }
    }
}

impl Client {
    /// Watches a key (or a range, see [`WatchOptions`]). Returns once the
    /// watch task has started; the first response says the watch was
    /// created.
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) -> Result<(), dengine_client::Error> {
    /// use dengine_client::WatchOptions;
    /// // Everything that happened to "config" since revision 100, then on.
    /// let mut w = client
    ///     .watch("config", Some(WatchOptions::new().with_start_revision(100)))
    ///     .await?;
    /// let created = w.message().await;
    /// # Ok(()) }
    /// ```
    pub async fn watch(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<WatchOptions>,
    ) -> Result<Watcher, Error> {
        let options = options.unwrap_or_default();
        let request = options.request(key.into());
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(run(self.pool.clone(), request, !options.any_member, tx));
        Ok(Watcher {
            responses: ReceiverStream::new(rx),
            task,
        })
    }
}

#[cfg(test)]
mod tests {
    use dengine_proto::etcdserverpb::ResponseHeader;
    use dengine_proto::mvccpb::{Event, KeyValue};

    use super::*;

    fn response(revs: &[i64], fragment: bool) -> WatchResponse {
        WatchResponse {
            header: Some(ResponseHeader {
                revision: revs.last().copied().unwrap_or(9),
                ..Default::default()
            }),
            fragment,
            events: revs
                .iter()
                .map(|&r| Event {
                    kv: Some(KeyValue {
                        mod_revision: r,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn revs(r: &WatchResponse) -> Vec<i64> {
        r.events
            .iter()
            .map(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision))
            .collect()
    }

    #[test]
    fn a_watch_asks_for_a_member_with_a_leader_unless_told_not_to() {
        let asked = watch_request((), true);
        assert_eq!(
            asked
                .metadata()
                .get("hasleader")
                .and_then(|v| v.to_str().ok()),
            Some("true")
        );
        assert!(
            watch_request((), false)
                .metadata()
                .get("hasleader")
                .is_none()
        );
        assert!(!WatchOptions::new().any_member);
        assert!(WatchOptions::new().with_any_member().any_member);
    }

    #[test]
    fn only_a_refused_request_ends_a_cancelled_watch() {
        assert!(!refused(""));
        assert!(!refused("etcdserver: no leader"));
        assert!(refused("etcdserver: permission denied"));
    }

    #[test]
    fn goes_on_after_the_last_revision_delivered() {
        let mut at = Resume::default();
        assert!(at.advance(&mut response(&[3, 4, 4], false)));
        assert_eq!((at.next, at.delivered), (5, 0));
        // A progress notification at 9: nothing up to 9 is left.
        assert!(at.advance(&mut response(&[], false)));
        assert_eq!(at.next, 10);
    }

    #[test]
    fn a_revision_split_in_fragments_is_not_repeated() {
        let mut at = Resume {
            next: 5,
            ..Resume::default()
        };
        // Two of revision 6's events came, then the stream broke.
        assert!(at.advance(&mut response(&[5, 6, 6], true)));
        assert_eq!((at.next, at.delivered), (6, 2));
        at.reconnected();
        // The new stream sends revision 6 whole again.
        let mut again = response(&[6, 6, 6], true);
        assert!(at.advance(&mut again));
        assert_eq!(revs(&again), vec![6]);
        assert_eq!((at.next, at.delivered), (6, 3));
        // The same stream goes on: nothing more is dropped.
        let mut more = response(&[6], true);
        assert!(at.advance(&mut more));
        assert_eq!(revs(&more), vec![6]);
        at.reconnected();
        let mut rest = response(&[6, 6, 6, 6, 6, 7], false);
        assert!(at.advance(&mut rest));
        assert_eq!(revs(&rest), vec![6, 7]);
        assert_eq!((at.next, at.delivered), (8, 0));
    }
}

//! etcd as the oracle: one seeded sequence of requests (puts, ranges,
//! deletes, transactions, compactions, leases) goes to a fresh etcd member
//! and to a fresh dengine member, request by request, and every answer
//! must be the same: the response (headers' revisions included; only the
//! cluster id, member id and Raft term differ by nature) or the error's
//! gRPC code and message. A watcher on each side sees every event, and the
//! two streams of events must be the same too.
//!
//! Requests are drawn from the corners clients reach: empty keys, ranges
//! that are empty or open-ended, limits with sorting, reads at compacted
//! and future revisions, transactions that repeat a key, leases that do not
//! exist, `ignore_value` without a key. A failure prints the seed, the
//! request and both answers.

use std::time::{Duration, Instant};

use dengine_client::proto::etcdserverpb as pb;
use dengine_client::proto::mvccpb;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use pb::request_op::Request;
use pb::response_op::Response;
use pb::watch_client::WatchClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::harness::Cluster;

/// A small deterministic generator (xorshift64*): the same seed gives the
/// same requests on every machine.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `percent`/100.
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub(crate) fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.below(from.len() as u64) as usize]
    }
}

/// Keys close together, so that ranges, prefixes and deletes overlap.
pub(crate) const KEYS: &[&[u8]] = &[b"a", b"ab", b"abc", b"b", b"b\0", b"ba", b"c", b"zz"];

/// Lease ids the sequence grants and uses (and 99, never granted).
const LEASES: &[i64] = &[1, 2, 3, 99];

/// etcd's largest lease TTL (`MaxLeaseTTL`), in seconds.
const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// Where one request goes.
pub(crate) struct Side {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
}

/// The first answer on a new stream that sent `first`, within a bound.
async fn first_answer<Req, Resp, Fut>(
    first: Req,
    open: impl FnOnce(tokio_stream::wrappers::UnboundedReceiverStream<Req>) -> Fut,
) -> Result<Resp, tonic::Status>
where
    Fut: std::future::Future<Output = Result<tonic::Response<tonic::Streaming<Resp>>, tonic::Status>>,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(first).expect("a request");
    let mut stream = open(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    let answer = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an answer within 10 s");
    drop(tx);
    answer.unwrap_or_else(|| Err(tonic::Status::unknown("the stream ended")))
}

/// A channel to `endpoint`, retried for a while as the member starts.
pub(crate) async fn connect(endpoint: String) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Channel::from_shared(endpoint.clone())
            .expect("endpoint")
            .connect()
            .await
        {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("connecting to {endpoint}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A response in a comparable form (`f` takes out what differs by
/// nature), or the error's code and message.
pub(crate) fn answer<T>(
    r: Result<tonic::Response<T>, tonic::Status>,
    f: impl FnOnce(T) -> String,
) -> Answer {
    match r {
        Ok(r) => Answer::Ok(f(r.into_inner())),
        Err(s) => Answer::Err(s.code(), s.message().to_string()),
    }
}

/// A response whose only part that differs by nature is its header
/// (`header_of` finds it), in a comparable form; or the error's code and
/// message.
pub(crate) fn headed<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    header_of: fn(&mut T) -> &mut Option<pb::ResponseHeader>,
) -> Answer {
    answer(r, |mut r| {
        header(header_of(&mut r));
        format!("{r:?}")
    })
}

/// The seeds a differential test runs: `DIFFERENTIAL_SEEDS` of them
/// (`count` unless set) from `DIFFERENTIAL_FIRST` (1), for a longer search
/// by hand. Not `DENGINE_*`: the members would take those as settings.
pub(crate) fn seeds(count: u64) -> std::ops::Range<u64> {
    let var = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let first = var("DIFFERENTIAL_FIRST", 1);
    first..first + var("DIFFERENTIAL_SEEDS", count)
}

/// The answers that differed, reported together (the first ten).
#[derive(Default)]
pub(crate) struct Differences(Vec<String>);

impl Differences {
    /// Records `request`'s answers if they differ; false once ten did
    /// (there is no use going on).
    pub(crate) fn compare(
        &mut self,
        request: impl FnOnce() -> String,
        etcd: &Answer,
        ours: &Answer,
    ) -> bool {
        if etcd != ours {
            self.0.push(format!(
                "{}\n  etcd:    {etcd:?}\n  dengine: {ours:?}",
                request()
            ));
        }
        self.0.len() < 10
    }

    /// Fails with every difference recorded, if there was one.
    pub(crate) fn assert_none(&self) {
        assert!(
            self.0.is_empty(),
            "{} answers differ:\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

impl Side {
    pub(crate) async fn connect(endpoint: String) -> (Side, Channel) {
        let channel = connect(endpoint).await;
        let side = Side {
            kv: KvClient::new(channel.clone()),
            lease: LeaseClient::new(channel.clone()),
        };
        (side, channel)
    }

    /// Sends `op`; its answer with what differs by nature taken out.
    pub(crate) async fn send(&mut self, op: &Op) -> Answer {
        match op {
            Op::Range(r) => headed(self.kv.range(r.clone()).await, |r| &mut r.header),
            Op::Put(r) => headed(self.kv.put(r.clone()).await, |r| &mut r.header),
            Op::Delete(r) => headed(self.kv.delete_range(r.clone()).await, |r| &mut r.header),
            Op::Txn(r) => answer(self.kv.txn(r.clone()).await, |mut r| {
                txn_headers(&mut r);
                format!("{r:?}")
            }),
            Op::Compact(r) => headed(self.kv.compact(*r).await, |r| &mut r.header),
            Op::Grant(r) => headed(self.lease.lease_grant(*r).await, |r| &mut r.header),
            Op::Revoke(r) => headed(self.lease.lease_revoke(*r).await, |r| &mut r.header),
            Op::TimeToLive(r) => answer(self.lease.lease_time_to_live(*r).await, |mut r| {
                header(&mut r.header);
                // The time left depends on when each side was asked; the
                // keys come in no particular order (etcd keeps them in a
                // map).
                let left = r.ttl > 0 && r.ttl <= r.granted_ttl;
                r.ttl = if r.ttl > 0 { i64::from(left) } else { r.ttl };
                r.keys.sort();
                format!("{r:?}")
            }),
            Op::KeepAlive(r) => {
                let lease = self.lease.clone();
                let got = first_answer(*r, |req| {
                    let mut lease = lease;
                    async move { lease.lease_keep_alive(req).await }
                })
                .await;
                headed(got.map(tonic::Response::new), |r| &mut r.header)
            }
            Op::Leases => answer(
                self.lease.lease_leases(pb::LeaseLeasesRequest {}).await,
                |mut r| {
                    header(&mut r.header);
                    r.leases.sort_by_key(|l| l.id);
                    format!("{r:?}")
                },
            ),
        }
    }
}

/// A response, or the error's code and message.
#[derive(Debug, PartialEq)]
pub(crate) enum Answer {
    Ok(String),
    Err(tonic::Code, String),
}

/// Takes out of a header what two clusters never share.
pub(crate) fn header(h: &mut Option<pb::ResponseHeader>) {
    if let Some(h) = h {
        h.cluster_id = 0;
        h.member_id = 0;
        h.raft_term = 0;
    }
}

fn txn_headers(t: &mut pb::TxnResponse) {
    header(&mut t.header);
    for r in &mut t.responses {
        match &mut r.response {
            Some(Response::ResponseRange(r)) => header(&mut r.header),
            Some(Response::ResponsePut(r)) => header(&mut r.header),
            Some(Response::ResponseDeleteRange(r)) => header(&mut r.header),
            Some(Response::ResponseTxn(t)) => txn_headers(t),
            None => {}
        }
    }
}

/// One request of the sequence.
#[derive(Debug)]
pub(crate) enum Op {
    Range(pb::RangeRequest),
    Put(pb::PutRequest),
    Delete(pb::DeleteRangeRequest),
    Txn(pb::TxnRequest),
    Compact(pb::CompactionRequest),
    Grant(pb::LeaseGrantRequest),
    Revoke(pb::LeaseRevokeRequest),
    TimeToLive(pb::LeaseTimeToLiveRequest),
    /// One renewal on a keep-alive stream of its own.
    KeepAlive(pb::LeaseKeepAliveRequest),
    Leases,
}

/// Draws requests; `revision` is the store's revision as the last answer
/// gave it, so that reads and compactions aim near it.
pub(crate) struct Gen {
    pub(crate) rng: Rng,
    pub(crate) revision: i64,
    /// The revision of the last compaction etcd took (0: none).
    pub(crate) compacted: i64,
    /// Whether ranges may be serializable: not when requests go to
    /// several members, where a member may not have applied the last
    /// write yet (on either system).
    pub(crate) serializable: bool,
}

impl Gen {
    fn key(&mut self) -> Vec<u8> {
        if self.rng.chance(3) {
            return Vec::new();
        }
        self.rng.pick(KEYS).to_vec()
    }

    /// An end for a range from `key`: none (the key alone), `\0` (every
    /// key from it on), the end of its prefix, or another key (which may
    /// lie below it: an empty range).
    fn range_end(&mut self, key: &[u8]) -> Vec<u8> {
        match self.rng.below(5) {
            0 | 1 => Vec::new(),
            2 => vec![0],
            3 => {
                let mut end = key.to_vec();
                while let Some(last) = end.pop() {
                    if last < 0xff {
                        end.push(last + 1);
                        break;
                    }
                }
                if end.is_empty() { vec![0] } else { end }
            }
            _ => self.rng.pick(KEYS).to_vec(),
        }
    }

    fn value(&mut self) -> Vec<u8> {
        let len = self.rng.below(4) as usize;
        (0..len).map(|_| b'a' + self.rng.below(3) as u8).collect()
    }

    /// A revision to read or compact at: near the current one, sometimes
    /// past it or at 0 and below.
    fn revision(&mut self) -> i64 {
        match self.rng.below(10) {
            0 => -1,
            1 => self.revision + 1 + self.rng.below(2) as i64,
            _ => 1 + self.rng.below(self.revision.max(1) as u64) as i64,
        }
    }

    fn lease(&mut self) -> i64 {
        if self.rng.chance(60) {
            0
        } else {
            *self.rng.pick(LEASES)
        }
    }

    fn range(&mut self) -> pb::RangeRequest {
        let key = self.key();
        let range_end = self.range_end(&key);
        pb::RangeRequest {
            range_end,
            key,
            limit: if self.rng.chance(30) {
                self.rng.below(3) as i64
            } else {
                0
            },
            revision: if self.rng.chance(25) {
                self.revision()
            } else {
                0
            },
            sort_order: if self.rng.chance(30) {
                self.rng.below(3) as i32
            } else {
                0
            },
            sort_target: if self.rng.chance(30) {
                self.rng.below(5) as i32
            } else {
                0
            },
            serializable: self.serializable && self.rng.chance(30),
            keys_only: self.rng.chance(15),
            count_only: self.rng.chance(10),
            min_mod_revision: if self.rng.chance(10) {
                self.revision()
            } else {
                0
            },
            max_mod_revision: if self.rng.chance(10) {
                self.revision()
            } else {
                0
            },
            min_create_revision: if self.rng.chance(10) {
                self.revision()
            } else {
                0
            },
            max_create_revision: if self.rng.chance(10) {
                self.revision()
            } else {
                0
            },
        }
    }

    fn put(&mut self) -> pb::PutRequest {
        let ignore_value = self.rng.chance(8);
        let ignore_lease = self.rng.chance(8);
        pb::PutRequest {
            key: self.key(),
            // Mostly none with ignore_value (a value with it is an error).
            value: if ignore_value && self.rng.chance(70) {
                Vec::new()
            } else {
                self.value()
            },
            lease: if ignore_lease && self.rng.chance(70) {
                0
            } else {
                self.lease()
            },
            prev_kv: self.rng.chance(40),
            ignore_value,
            ignore_lease,
        }
    }

    /// A delete; inside a txn, never one to the end of the key space:
    /// etcd 3.4 does not see such a delete overlap a put of the same txn
    /// (etcd-io/etcd#22376, a fix in #22395) and lets the key be deleted
    /// and written at one revision, which dengine refuses as
    /// "duplicate key" on purpose.
    fn delete(&mut self, in_txn: bool) -> pb::DeleteRangeRequest {
        let key = self.key();
        let mut range_end = self.range_end(&key);
        if in_txn && range_end == [0] {
            range_end.clear();
        }
        pb::DeleteRangeRequest {
            range_end,
            key,
            prev_kv: self.rng.chance(50),
        }
    }

    fn compare(&mut self) -> pb::Compare {
        let key = self.key();
        let (target, union) = match self.rng.below(5) {
            0 => (
                CompareTarget::Version,
                TargetUnion::Version(self.rng.below(3) as i64),
            ),
            1 => (
                CompareTarget::Create,
                TargetUnion::CreateRevision(self.revision()),
            ),
            2 => (
                CompareTarget::Mod,
                TargetUnion::ModRevision(self.revision()),
            ),
            3 => (CompareTarget::Value, TargetUnion::Value(self.value())),
            _ => (CompareTarget::Lease, TargetUnion::Lease(self.lease())),
        };
        pb::Compare {
            result: *self.rng.pick(&[
                CompareResult::Equal,
                CompareResult::Greater,
                CompareResult::Less,
                CompareResult::NotEqual,
            ]) as i32,
            target: target as i32,
            range_end: if self.rng.chance(15) {
                self.range_end(&key)
            } else {
                Vec::new()
            },
            key,
            target_union: Some(union),
        }
    }

    fn request_op(&mut self, depth: u32) -> pb::RequestOp {
        let request = match self.rng.below(if depth < 1 { 10 } else { 9 }) {
            0..=2 => Request::RequestRange(self.range()),
            3..=6 => Request::RequestPut(self.put()),
            7 | 8 => Request::RequestDeleteRange(self.delete(true)),
            _ => Request::RequestTxn(self.txn(depth + 1)),
        };
        pb::RequestOp {
            request: Some(request),
        }
    }

    fn txn(&mut self, depth: u32) -> pb::TxnRequest {
        let n = self.rng.below(3);
        let compare = (0..n).map(|_| self.compare()).collect();
        let n = self.rng.below(4);
        let success = (0..n).map(|_| self.request_op(depth)).collect();
        let n = self.rng.below(3);
        let failure = (0..n).map(|_| self.request_op(depth)).collect();
        pb::TxnRequest {
            compare,
            success,
            failure,
        }
    }

    /// A watcher from a past revision (maybe a compacted one) over a key
    /// range, with or without previous values and a filter.
    pub(crate) fn watch(&mut self) -> pb::WatchCreateRequest {
        use pb::watch_create_request::FilterType;
        let key = self.rng.pick(KEYS).to_vec();
        let range_end = self.range_end(&key);
        pb::WatchCreateRequest {
            range_end,
            key,
            // Mostly from a revision still kept.
            start_revision: if self.rng.chance(30) {
                1 + self.rng.below(self.revision.max(1) as u64) as i64
            } else {
                let from = self.compacted.max(1);
                from + self.rng.below((self.revision - from + 1).max(1) as u64) as i64
            },
            prev_kv: self.rng.chance(50),
            filters: match self.rng.below(4) {
                0 => vec![FilterType::Noput as i32],
                1 => vec![FilterType::Nodelete as i32],
                _ => Vec::new(),
            },
            ..Default::default()
        }
    }

    /// Takes in etcd's answer to `op`: the revision it reports, and the
    /// revision a compaction it took compacted to.
    pub(crate) fn learn(&mut self, op: &Op, from_etcd: &Answer) {
        if let Some(r) = revision_of(from_etcd) {
            self.revision = self.revision.max(r);
        }
        if let (Op::Compact(c), Answer::Ok(_)) = (op, from_etcd) {
            self.compacted = self.compacted.max(c.revision);
        }
    }

    pub(crate) fn op(&mut self) -> Op {
        match self.rng.below(100) {
            0..=29 => Op::Put(self.put()),
            30..=51 => Op::Range(self.range()),
            52..=61 => Op::Delete(self.delete(false)),
            62..=81 => Op::Txn(self.txn(0)),
            82..=84 => Op::Compact(pb::CompactionRequest {
                revision: self.revision(),
                physical: self.rng.chance(50),
            }),
            85..=90 => Op::Grant(pb::LeaseGrantRequest {
                ttl: match self.rng.below(10) {
                    0 => MAX_LEASE_TTL + 1,
                    _ => 600 + self.rng.below(600) as i64,
                },
                // 99 stays a lease that does not exist.
                id: *self.rng.pick(&LEASES[..3]),
            }),
            91..=94 => Op::Revoke(pb::LeaseRevokeRequest {
                id: *self.rng.pick(LEASES),
            }),
            95..=96 => Op::TimeToLive(pb::LeaseTimeToLiveRequest {
                id: *self.rng.pick(LEASES),
                keys: self.rng.chance(50),
            }),
            97 => Op::KeepAlive(pb::LeaseKeepAliveRequest {
                id: *self.rng.pick(LEASES),
            }),
            _ => Op::Leases,
        }
    }
}

/// A watcher of every key with previous values; what it received goes
/// to a channel, event by event.
async fn watch_all(
    channel: Channel,
    start_revision: i64,
) -> tokio::sync::mpsc::UnboundedReceiver<mvccpb::Event> {
    let (req_tx, req_rx) = tokio::sync::mpsc::unbounded_channel();
    req_tx
        .send(pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: vec![0],
                    range_end: vec![0],
                    prev_kv: true,
                    start_revision,
                    ..Default::default()
                },
            )),
        })
        .expect("watch request");
    let mut stream = WatchClient::new(channel)
        .watch(tokio_stream::wrappers::UnboundedReceiverStream::new(req_rx))
        .await
        .expect("watch")
        .into_inner();
    let created = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("created within 10 s")
        .expect("stream")
        .expect("created");
    assert!(created.created, "{created:?}");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        // Kept open for as long as the stream is read.
        let _requests = req_tx;
        while let Some(Ok(resp)) = stream.next().await {
            for e in resp.events {
                if tx.send(e).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// Events up to `revision` from `rx`, within a bound. Events of one
/// revision that only delete come in the order of their keys: a lease's
/// keys are deleted in no particular order by etcd.
async fn events_to(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<mvccpb::Event>,
    revision: i64,
) -> Vec<mvccpb::Event> {
    let mut got: Vec<mvccpb::Event> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got
        .last()
        .and_then(|e| e.kv.as_ref())
        .map_or(0, |kv| kv.mod_revision)
        < revision
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(e)) => got.push(e),
            _ => break,
        }
    }
    sort_revisions(&mut got);
    got
}

/// Puts the events of each revision that only deletes in key order: a
/// lease's keys are deleted in no particular order by etcd.
pub(crate) fn sort_revisions(events: &mut [mvccpb::Event]) {
    let rev = |e: &mvccpb::Event| e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
    let mut start = 0;
    while start < events.len() {
        let end = start
            + events[start..]
                .iter()
                .take_while(|e| rev(e) == rev(&events[start]))
                .count();
        if events[start..end]
            .iter()
            .all(|e| e.r#type == mvccpb::event::EventType::Delete as i32)
        {
            events[start..end].sort_by(|a, b| {
                a.kv.as_ref()
                    .map(|k| &k.key)
                    .cmp(&b.kv.as_ref().map(|k| &k.key))
            });
        }
        start = end;
    }
}

/// Whether a watch or range of `start`..`end` (etcd's rules: no end is
/// the key alone, `\0` every key from it on) covers `key`.
fn covers(start: &[u8], end: &[u8], key: &[u8]) -> bool {
    match end {
        [] => key == start,
        [0] => key >= start,
        end => key >= start && key < end,
    }
}

/// How many of `all` (every event, from a watcher of everything) a
/// watcher created by `w` must send.
fn expected_events(all: &[mvccpb::Event], w: &pb::WatchCreateRequest) -> usize {
    use pb::watch_create_request::FilterType;
    all.iter()
        .filter(|e| {
            let Some(kv) = &e.kv else { return false };
            let put = e.r#type == mvccpb::event::EventType::Put as i32;
            let dropped = w.filters.iter().any(|f| {
                (*f == FilterType::Noput as i32 && put)
                    || (*f == FilterType::Nodelete as i32 && !put)
            });
            kv.mod_revision >= w.start_revision && covers(&w.key, &w.range_end, &kv.key) && !dropped
        })
        .count()
}

/// What a watcher created by `w` on a stream of its own sent: its
/// creation, a cancellation (with the compacted revision), and its
/// events (in the order `sort_revisions` puts them), until `expected`
/// events came or it was cancelled.
async fn watch_transcript(
    channel: Channel,
    w: pb::WatchCreateRequest,
    expected: usize,
) -> Vec<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(w)),
    })
    .expect("watch request");
    let mut stream = WatchClient::new(channel)
        .watch(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .expect("watch")
        .into_inner();
    let mut said = Vec::new();
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = if events.len() >= expected && !said.is_empty() {
            // Everything expected came: a moment more for anything extra.
            Duration::from_millis(100)
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        let Ok(Some(Ok(resp))) = tokio::time::timeout(left, stream.next()).await else {
            break;
        };
        if resp.created {
            said.push(format!("created, watch id {}", resp.watch_id));
        }
        if resp.canceled || resp.compact_revision != 0 {
            said.push(format!(
                "canceled {}, compact revision {}, reason {:?}",
                resp.canceled, resp.compact_revision, resp.cancel_reason
            ));
            break;
        }
        events.extend(resp.events);
    }
    drop(tx);
    sort_revisions(&mut events);
    said.extend(events.iter().map(|e| format!("{e:?}")));
    said
}

/// The revision an answer reports, if it is a response with a header.
fn revision_of(a: &Answer) -> Option<i64> {
    let Answer::Ok(text) = a else { return None };
    let at = text.find("revision: ")? + "revision: ".len();
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Runs `ops` requests of `seed` against both and compares every answer.
/// What happens halfway through a sequence.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Midway {
    Nothing,
    /// Every member of both systems is killed (SIGKILL) and started again.
    RestartAll,
}

async fn same_answers(seed: u64, ops: usize, members: usize, midway: Midway) {
    let mut etcd = Cluster::etcd(members);
    etcd.start_and_wait().await;
    let mut ours = Cluster::new(members);
    ours.start_and_wait().await;
    let mut e = Vec::new();
    let mut d = Vec::new();
    for i in 0..members {
        e.push(Side::connect(etcd.members[i].endpoint()).await);
        d.push(Side::connect(ours.members[i].endpoint()).await);
    }
    // The watchers of everything on the last member (with a restart,
    // made at the end from the first revision kept instead).
    let mut e_channel = e[members - 1].1.clone();
    let mut d_channel = d[members - 1].1.clone();
    let events = match midway {
        Midway::Nothing => Some((
            watch_all(e_channel.clone(), 0).await,
            watch_all(d_channel.clone(), 0).await,
        )),
        Midway::RestartAll => None,
    };

    let mut g = Gen {
        rng: Rng::new(seed),
        revision: 1,
        compacted: 0,
        serializable: members == 1,
    };
    let mut differ = Differences::default();
    for i in 0..ops {
        if midway == Midway::RestartAll && i == ops / 2 {
            for c in [&mut etcd, &mut ours] {
                for m in 0..members {
                    c.kill(m);
                }
                c.start_and_wait().await;
            }
            for m in 0..members {
                e[m] = Side::connect(etcd.members[m].endpoint()).await;
                d[m] = Side::connect(ours.members[m].endpoint()).await;
            }
            e_channel = e[members - 1].1.clone();
            d_channel = d[members - 1].1.clone();
        }
        let op = g.op();
        // Each request to the next member: writes and linearizable reads
        // go through followers as well as the leader.
        let from_etcd = e[i % members].0.send(&op).await;
        let from_ours = d[i % members].0.send(&op).await;
        g.learn(&op, &from_etcd);
        let request = || format!("seed {seed}, request {i}: {op:?}");
        if !differ.compare(request, &from_etcd, &from_ours) {
            break;
        }
    }
    differ.assert_none();

    let (mut e_events, mut d_events) = match events {
        Some(both) => both,
        None => {
            let from = g.compacted.max(1);
            (
                watch_all(e_channel.clone(), from).await,
                watch_all(d_channel.clone(), from).await,
            )
        }
    };
    let from_etcd = events_to(&mut e_events, g.revision).await;
    let from_ours = events_to(&mut d_events, g.revision).await;
    for (i, (a, b)) in from_etcd.iter().zip(&from_ours).enumerate() {
        assert_eq!(a, b, "seed {seed}: event {i} differs (etcd, then dengine)");
    }
    assert_eq!(
        from_etcd.len(),
        from_ours.len(),
        "seed {seed}: etcd sent {} events, dengine {}",
        from_etcd.len(),
        from_ours.len()
    );
    assert!(
        !from_etcd.is_empty(),
        "seed {seed}: the sequence wrote nothing"
    );

    // Watchers from past revisions, compacted ones too.
    for i in 0..10 {
        let w = g.watch();
        let expected = expected_events(&from_etcd, &w);
        let by_etcd = watch_transcript(e_channel.clone(), w.clone(), expected).await;
        let by_ours = watch_transcript(d_channel.clone(), w.clone(), expected).await;
        assert_eq!(
            by_etcd, by_ours,
            "seed {seed}, watcher {i}: {w:?} (etcd, then dengine)"
        );
    }
}

/// Three seeds (see [`seeds`]), `DIFFERENTIAL_OPS` (400) requests each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_sequence_of_requests_gets_the_answers_etcd_gives() {
    let ops = std::env::var("DIFFERENTIAL_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    for seed in seeds(3) {
        same_answers(seed, ops, 1, Midway::Nothing).await;
    }
}

/// The same through three members of each, requests spread over them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_every_member_of_three_the_answers_are_etcds() {
    same_answers(1_000, 300, 3, Midway::Nothing).await;
}

/// The same with every member of both killed and started again halfway:
/// what each kept on disk (keys, history, compaction, leases) answers as
/// etcd's does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_every_member_restarts_the_answers_are_still_etcds() {
    same_answers(2_000, 300, 3, Midway::RestartAll).await;
}

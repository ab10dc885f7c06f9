//! etcd's `Lock` and `Election` services: the recipes of etcd's client
//! `concurrency` package (a mutex and an election on a key prefix, held by
//! a lease), run by the server on its own store, as etcd's `v3lock` and
//! `v3election` servers do.
//!
//! A holder is a key `name/<lease in hex>` put with the lease; the holder
//! is the key with the lowest create revision under `name/`, and a waiter
//! waits until every key created before its own is deleted (released,
//! resigned, or gone with its lease). Waiting follows this member's
//! applied events, re-reading the keys whenever it may have missed some.
//! A call given up by its client (or that fails) removes the key it put.
//!
//! Errors that etcd's servers return as plain Go errors (so gRPC code
//! `Unknown`) keep etcd's text: "election: not leader", "election: no
//! leader", "mutex: session is expired", `"leader" field must be
//! provided`.

use std::sync::Arc;

use dengine_kv::{
    Compare, CompareOp, CompareTarget, DeleteRangeRequest, EventKind, KeyValue, KvCommand,
    KvResponse, OpResponse, PutRequest, RangeRequest, TxnOp, TxnRequest,
};
use dengine_proto::v3electionpb as epb;
use dengine_proto::v3lockpb as lpb;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

use super::watch::Applied;
use super::{Caller, EtcdCore, Lessor, WatchHub, errors, range};

/// The TTL of the lease a call without one gets (etcd's session default).
const DEFAULT_SESSION_TTL: i64 = 60;

fn unknown(message: &str) -> Status {
    Status::unknown(message)
}

fn missing_leader() -> Status {
    unknown("\"leader\" field must be provided")
}

/// The end of the range of keys under `prefix` (which ends in `/`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// The key of the holder with `lease` under `prefix`.
fn holder_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

fn with_slash(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

/// What the recipes run on: the store (through the node) and its events.
#[derive(Clone)]
struct Recipes {
    core: Arc<EtcdCore>,
    hub: WatchHub,
    lessor: Arc<Lessor>,
    /// Whose call they run for: its writes carry the user, its reads are
    /// checked (as etcd's recipes, which run as the caller).
    who: Caller,
}

/// Removes a key when dropped, unless kept: the key of a call its client
/// gave up (the call's future is dropped) or that failed.
struct Release {
    core: Option<Arc<EtcdCore>>,
    who: Caller,
    key: Vec<u8>,
    /// Only while the key still belongs to this holder.
    create_revision: i64,
}

impl Release {
    fn keep(mut self) {
        self.core = None;
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let Some(core) = self.core.take() else {
            return;
        };
        let key = std::mem::take(&mut self.key);
        let rev = self.create_revision;
        let who = self.who.clone();
        tokio::spawn(async move {
            let _ = core
                .write_by(&who, KvCommand::Txn(delete_if_held(key, rev)))
                .await;
        });
    }
}

/// Deletes `key` if it was created at `rev` (still the same holder).
fn delete_if_held(key: Vec<u8>, rev: i64) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            key: key.clone(),
            range_end: Vec::new(),
            target: CompareTarget::CreateRevision(rev),
            op: CompareOp::Equal,
        }],
        success: vec![TxnOp::DeleteRange(DeleteRangeRequest {
            key,
            range_end: Vec::new(),
            prev_kv: false,
        })],
        failure: Vec::new(),
    }
}

impl Recipes {
    /// The recipes for the sender of `request`.
    fn for_caller<T>(
        &self,
        request: &Request<T>,
    ) -> impl std::future::Future<Output = Result<Recipes, Status>> + Send + '_ {
        let who = self.core.caller(request);
        async move {
            Ok(Recipes {
                who: who.await?,
                ..self.clone()
            })
        }
    }

    async fn txn(&self, t: TxnRequest) -> Result<(KvResponse, bool, Vec<OpResponse>), Status> {
        let resp = self.core.write_by(&self.who, KvCommand::Txn(t)).await?;
        match resp.op.clone() {
            OpResponse::Txn {
                succeeded,
                responses,
            } => Ok((resp, succeeded, responses)),
            _ => Err(Status::internal("etcdserver: not a transaction's answer")),
        }
    }

    /// The keys under `prefix` now (linearizable), and the revision read.
    async fn under(&self, prefix: &[u8]) -> Result<(i64, Vec<KeyValue>), Status> {
        self.core
            .check_read(&self.who, prefix, &prefix_end(prefix))?;
        let req = RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            ..RangeRequest::default()
        };
        self.core
            .read(false, move |kv| {
                kv.range(&req).map(|r| (kv.revision(), r.kvs))
            })
            .await?
            .map_err(|e| errors::from_kv(&e))
    }

    /// A lease for a call without one (`lease` 0), as etcd's session makes
    /// one; else `lease`.
    async fn lease_or_new(&self, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        let (id, _, _) =
            super::lease::grant(&self.core, &self.lessor, 0, DEFAULT_SESSION_TTL).await?;
        Ok(id)
    }

    /// Puts this holder's key unless it exists: (its create revision, the
    /// answer's revision, the value it holds).
    async fn claim(
        &self,
        key: &[u8],
        value: &[u8],
        lease: i64,
    ) -> Result<(i64, i64, Vec<u8>), Status> {
        let t = TxnRequest {
            compare: vec![Compare {
                key: key.to_vec(),
                range_end: Vec::new(),
                target: CompareTarget::CreateRevision(0),
                op: CompareOp::Equal,
            }],
            success: vec![TxnOp::Put(PutRequest {
                key: key.to_vec(),
                value: value.to_vec(),
                lease,
                ..PutRequest::default()
            })],
            failure: vec![TxnOp::Range(RangeRequest {
                key: key.to_vec(),
                ..RangeRequest::default()
            })],
        };
        let (resp, succeeded, responses) = self.txn(t).await?;
        if succeeded {
            return Ok((resp.revision, resp.revision, value.to_vec()));
        }
        match responses.into_iter().next() {
            Some(OpResponse::Range(r)) => match r.kvs.into_iter().next() {
                Some(kv) => Ok((kv.create_revision, resp.revision, kv.value)),
                // Deleted between the comparison and the read: impossible
                // in one transaction.
                None => Err(Status::internal("etcdserver: the key vanished in a txn")),
            },
            _ => Err(Status::internal("etcdserver: not a range's answer")),
        }
    }

    /// Waits until no key under `prefix` created at or before `max_rev`
    /// remains (etcd's `waitDeletes`); the revision it saw that at.
    async fn wait_deletes(&self, prefix: &[u8], max_rev: i64) -> Result<i64, Status> {
        loop {
            // Subscribed before reading: nothing after the read is missed.
            let mut events = self.hub.subscribe();
            let (rev, kvs) = self.under(prefix).await?;
            let Some(last) = kvs
                .into_iter()
                .filter(|kv| kv.create_revision <= max_rev)
                .max_by_key(|kv| kv.create_revision)
            else {
                return Ok(rev);
            };
            wait_for_delete(&mut events, &last.key, rev).await?;
        }
    }

    /// The first holder under `prefix`, if any, and the revision read.
    async fn first(&self, prefix: &[u8]) -> Result<(i64, Option<KeyValue>), Status> {
        let (rev, kvs) = self.under(prefix).await?;
        Ok((rev, kvs.into_iter().min_by_key(|kv| kv.create_revision)))
    }
}

/// Waits for the delete of `key` after revision `after` among `events`;
/// also returns when events may have been missed (the caller reads again).
async fn wait_for_delete(
    events: &mut broadcast::Receiver<Arc<Applied>>,
    key: &[u8],
    after: i64,
) -> Result<(), Status> {
    loop {
        match events.recv().await {
            Ok(applied) => match &*applied {
                Applied::Events { revision, events } if *revision > after => {
                    if events
                        .iter()
                        .any(|e| e.kind == EventKind::Delete && e.kv.key == key)
                    {
                        return Ok(());
                    }
                }
                Applied::Events { .. } => {}
                Applied::Restored { .. } => return Ok(()),
            },
            Err(broadcast::error::RecvError::Lagged(_)) => return Ok(()),
            Err(broadcast::error::RecvError::Closed) => return Err(errors::stopped()),
        }
    }
}

/// etcd's `Lock` service.
#[derive(Clone)]
pub struct LockService {
    recipes: Recipes,
}

impl LockService {
    /// The service of `core`'s node, following its events through `hub`.
    pub fn new(core: Arc<EtcdCore>, hub: WatchHub, lessor: Arc<Lessor>) -> LockService {
        LockService {
            recipes: Recipes {
                core,
                hub,
                lessor,
                who: Caller::Unchecked,
            },
        }
    }
}

impl LockService {
    async fn lock_inner(
        &self,
        request: Request<lpb::LockRequest>,
    ) -> Result<Response<lpb::LockResponse>, Status> {
        let r = &self.recipes.for_caller(&request).await?;
        let req = request.into_inner();
        let lease = r.lease_or_new(req.lease).await?;
        let prefix = with_slash(&req.name);
        let key = holder_key(&prefix, lease);
        let (my_rev, _, _) = r.claim(&key, b"", lease).await?;
        let release = Release {
            core: Some(r.core.clone()),
            who: r.who.clone(),
            key: key.clone(),
            create_revision: my_rev,
        };
        r.wait_deletes(&prefix, my_rev - 1).await?;
        // The lease may have ended while waiting.
        let (rev, kvs) = r.under(&prefix).await?;
        if !kvs
            .iter()
            .any(|kv| kv.key == key && kv.create_revision == my_rev)
        {
            release.keep();
            return Err(unknown("mutex: session is expired"));
        }
        release.keep();
        Ok(Response::new(lpb::LockResponse {
            header: r.core.header(rev),
            key,
        }))
    }

    async fn unlock_inner(
        &self,
        request: Request<lpb::UnlockRequest>,
    ) -> Result<Response<lpb::UnlockResponse>, Status> {
        let who = self.recipes.core.caller(&request).await?;
        let key = request.into_inner().key;
        let cmd = KvCommand::DeleteRange(DeleteRangeRequest {
            key,
            range_end: Vec::new(),
            prev_kv: false,
        });
        let resp = self.recipes.core.write_by(&who, cmd).await?;
        Ok(Response::new(lpb::UnlockResponse {
            header: self.recipes.core.header(resp.revision),
        }))
    }
}

/// etcd runs its Lock and Election services on a client of its own
/// server, so every error they return, the store's too, reaches the
/// caller as gRPC's `Unknown` with the error's text (etcd 3.4.23 answers
/// so; the differential lock test found it).
fn through_client(s: Status) -> Status {
    if s.code() == tonic::Code::Unknown {
        s
    } else {
        unknown(s.message())
    }
}

#[tonic::async_trait]
impl lpb::lock_server::Lock for LockService {
    async fn lock(
        &self,
        request: Request<lpb::LockRequest>,
    ) -> Result<Response<lpb::LockResponse>, Status> {
        self.lock_inner(request).await.map_err(through_client)
    }

    async fn unlock(
        &self,
        request: Request<lpb::UnlockRequest>,
    ) -> Result<Response<lpb::UnlockResponse>, Status> {
        self.unlock_inner(request).await.map_err(through_client)
    }
}

/// etcd's `Election` service.
#[derive(Clone)]
pub struct ElectionService {
    recipes: Recipes,
}

impl ElectionService {
    /// The service of `core`'s node, following its events through `hub`.
    pub fn new(core: Arc<EtcdCore>, hub: WatchHub, lessor: Arc<Lessor>) -> ElectionService {
        ElectionService {
            recipes: Recipes {
                core,
                hub,
                lessor,
                who: Caller::Unchecked,
            },
        }
    }
}

/// Puts `value` on the leader's key if it still leads.
async fn proclaim(r: &Recipes, leader: &epb::LeaderKey, value: &[u8]) -> Result<i64, Status> {
    let t = TxnRequest {
        compare: vec![Compare {
            key: leader.key.clone(),
            range_end: Vec::new(),
            target: CompareTarget::CreateRevision(leader.rev),
            op: CompareOp::Equal,
        }],
        success: vec![TxnOp::Put(PutRequest {
            key: leader.key.clone(),
            value: value.to_vec(),
            ignore_lease: true,
            ..PutRequest::default()
        })],
        failure: Vec::new(),
    };
    let (resp, succeeded, _) = r.txn(t).await?;
    if !succeeded {
        return Err(unknown("election: not leader"));
    }
    Ok(resp.revision)
}

type ObserveStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<epb::LeaderResponse, Status>> + Send>>;

impl ElectionService {
    async fn campaign_inner(
        &self,
        request: Request<epb::CampaignRequest>,
    ) -> Result<Response<epb::CampaignResponse>, Status> {
        let r = &self.recipes.for_caller(&request).await?;
        let req = request.into_inner();
        let lease = r.lease_or_new(req.lease).await?;
        let prefix = with_slash(&req.name);
        let key = holder_key(&prefix, lease);
        let (rev, claimed_at, held) = r.claim(&key, &req.value, lease).await?;
        let leader = epb::LeaderKey {
            name: req.name.clone(),
            key: key.clone(),
            rev,
            lease,
        };
        let release = Release {
            core: Some(r.core.clone()),
            who: r.who.clone(),
            key,
            create_revision: rev,
        };
        if held != req.value {
            proclaim(r, &leader, &req.value).await?;
        }
        r.wait_deletes(&prefix, rev - 1).await?;
        release.keep();
        Ok(Response::new(epb::CampaignResponse {
            // As etcd's `Campaign`: the header of the claim, before any
            // proclamation of a new value and any wait.
            header: r.core.header(claimed_at),
            leader: Some(leader),
        }))
    }

    async fn proclaim_inner(
        &self,
        request: Request<epb::ProclaimRequest>,
    ) -> Result<Response<epb::ProclaimResponse>, Status> {
        let r = self.recipes.for_caller(&request).await?;
        let req = request.into_inner();
        let leader = req.leader.ok_or_else(missing_leader)?;
        let rev = proclaim(&r, &leader, &req.value).await?;
        Ok(Response::new(epb::ProclaimResponse {
            header: self.recipes.core.header(rev),
        }))
    }

    async fn leader_inner(
        &self,
        request: Request<epb::LeaderRequest>,
    ) -> Result<Response<epb::LeaderResponse>, Status> {
        let r = self.recipes.for_caller(&request).await?;
        let prefix = with_slash(&request.into_inner().name);
        let (rev, first) = r.first(&prefix).await?;
        let kv = first.ok_or_else(|| unknown("election: no leader"))?;
        Ok(Response::new(epb::LeaderResponse {
            header: self.recipes.core.header(rev),
            kv: Some(range::kv_to_pb(kv)),
        }))
    }

    async fn resign_inner(
        &self,
        request: Request<epb::ResignRequest>,
    ) -> Result<Response<epb::ResignResponse>, Status> {
        let r = self.recipes.for_caller(&request).await?;
        let leader = request.into_inner().leader.ok_or_else(missing_leader)?;
        let (resp, _, _) = r.txn(delete_if_held(leader.key, leader.rev)).await?;
        Ok(Response::new(epb::ResignResponse {
            header: self.recipes.core.header(resp.revision),
        }))
    }
}

#[tonic::async_trait]
impl epb::election_server::Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<epb::CampaignRequest>,
    ) -> Result<Response<epb::CampaignResponse>, Status> {
        self.campaign_inner(request).await.map_err(through_client)
    }

    async fn proclaim(
        &self,
        request: Request<epb::ProclaimRequest>,
    ) -> Result<Response<epb::ProclaimResponse>, Status> {
        self.proclaim_inner(request).await.map_err(through_client)
    }

    async fn leader(
        &self,
        request: Request<epb::LeaderRequest>,
    ) -> Result<Response<epb::LeaderResponse>, Status> {
        self.leader_inner(request).await.map_err(through_client)
    }

    async fn resign(
        &self,
        request: Request<epb::ResignRequest>,
    ) -> Result<Response<epb::ResignResponse>, Status> {
        self.resign_inner(request).await.map_err(through_client)
    }

    type ObserveStream = ObserveStream;

    /// The leader's value now, then every change of it: a new value
    /// proclaimed, or a new leader once the last one is gone.
    async fn observe(
        &self,
        request: Request<epb::LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let r = self
            .recipes
            .for_caller(&request)
            .await
            .map_err(through_client)?;
        let prefix = with_slash(&request.into_inner().name);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            tokio::select! {
                outcome = observe(&r, &prefix, &tx) => {
                    if let Err(status) = outcome {
                        let _ = tx.send(Err(through_client(status))).await;
                    }
                }
                _ = tx.closed() => {}
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

type Sender = tokio::sync::mpsc::Sender<Result<epb::LeaderResponse, Status>>;

/// Sends the election's leader values until the client goes.
async fn observe(r: &Recipes, prefix: &[u8], tx: &Sender) -> Result<(), Status> {
    let send = |rev: i64, kv: KeyValue| {
        tx.send(Ok(epb::LeaderResponse {
            header: r.core.header(rev),
            kv: Some(range::kv_to_pb(kv)),
        }))
    };
    let end = prefix_end(prefix);
    let mut last_sent: Option<(Vec<u8>, i64)> = None;
    loop {
        let mut events = r.hub.subscribe();
        let (rev, first) = r.first(prefix).await?;
        // The leader (or, with none, the first key put under the prefix).
        let (mut key, mut after) = match first {
            Some(kv) => {
                let (key, mod_rev) = (kv.key.clone(), kv.mod_revision);
                if last_sent.as_ref() != Some(&(key.clone(), mod_rev)) {
                    if send(rev, kv).await.is_err() {
                        return Ok(());
                    }
                    last_sent = Some((key.clone(), mod_rev));
                }
                (key, rev)
            }
            None => (Vec::new(), rev),
        };
        // Follow it: its new values, until it is deleted.
        'follow: loop {
            let applied = match events.recv().await {
                Ok(a) => a,
                Err(broadcast::error::RecvError::Lagged(_)) => break 'follow,
                Err(broadcast::error::RecvError::Closed) => return Err(errors::stopped()),
            };
            let (revision, evs) = match &*applied {
                Applied::Events { revision, events } if *revision > after => (*revision, events),
                Applied::Events { .. } => continue,
                Applied::Restored { .. } => break 'follow,
            };
            for e in evs {
                let under = e.kv.key.as_slice() >= prefix && e.kv.key.as_slice() < end.as_slice();
                if !under {
                    continue;
                }
                if key.is_empty() && e.kind == EventKind::Put {
                    key = e.kv.key.clone();
                }
                if e.kv.key != key {
                    continue;
                }
                match e.kind {
                    EventKind::Put => {
                        let mod_rev = e.kv.mod_revision;
                        if send(revision, e.kv.clone()).await.is_err() {
                            return Ok(());
                        }
                        last_sent = Some((key.clone(), mod_rev));
                    }
                    EventKind::Delete => break 'follow,
                }
            }
            after = revision;
        }
    }
}

//! etcd's `Lease` service, and the clock of a member's leases.
//!
//! The store knows which leases exist, their granted TTL and their keys
//! (replicated, deterministic). Time is counted here, on each member, in
//! the [`Lessor`]: every grant and renewal the member applies starts the
//! lease's TTL again on its own clock. Only the leader acts on it: when a
//! lease's time is up it proposes the lease's revocation, so every member
//! deletes the same keys at the same revision. A member that becomes
//! leader first gives every lease its whole TTL again plus an election
//! timeout (as etcd's `Promote`), so no lease expires early because
//! leadership moved. A renewal (`LeaseKeepAlive`) is a command in the log:
//! every member restarts the lease's clock when it applies it, so the
//! next leader knows of it. (etcd sends renewals to the leader alone and
//! checkpoints remaining TTLs; a command costs more per renewal, which
//! clients send every third of a TTL.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dengine_kv::{
    KvCommand, LeaseChange, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest,
    OpResponse,
};
use dengine_proto::etcdserverpb as pb;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use super::{EtcdCore, errors};

/// etcd's `MaxLeaseTTL` (seconds).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// How often the leader looks for expired leases.
const EXPIRY_CHECK: Duration = Duration::from_millis(250);

/// The clocks of one member's leases.
#[derive(Debug)]
pub struct Lessor {
    /// Lease ID → (when it expires, its TTL).
    deadlines: Mutex<HashMap<i64, (Instant, Duration)>>,
    /// The shortest TTL a lease is given (etcd's `minTTL`: 1.5 election
    /// timeouts, in whole seconds).
    min_ttl: i64,
    /// How much longer every lease lives when this member becomes leader.
    promotion_extend: Duration,
    /// The next lease ID this member hands out (when a client asks for
    /// none): its member ID in the top bits, then a counter started from
    /// the clock, as etcd's ID generator.
    next_id: AtomicI64,
}

impl Lessor {
    /// A lessor for a member with this ID and election timeout.
    pub fn new(member_id: u64, election_timeout: Duration) -> Lessor {
        let min_ttl = (election_timeout.as_secs_f64() * 1.5).ceil().max(1.0) as i64;
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let start = (((member_id & 0xffff) as i64) << 47) | ((millis & ((1 << 40) - 1)) << 7);
        Lessor {
            deadlines: Mutex::new(HashMap::new()),
            min_ttl,
            promotion_extend: election_timeout,
            next_id: AtomicI64::new(start.max(1)),
        }
    }

    fn ttl(secs: i64) -> Duration {
        Duration::from_secs(secs.max(0) as u64)
    }

    /// What the store applied (from its event sink).
    pub fn changed(&self, change: LeaseChange) {
        let now = Instant::now();
        let mut d = self.deadlines.lock().unwrap_or_else(|e| e.into_inner());
        match change {
            LeaseChange::Granted { id, ttl } | LeaseChange::Renewed { id, ttl } => {
                d.insert(id, (now + Lessor::ttl(ttl), Lessor::ttl(ttl)));
            }
            LeaseChange::Revoked { id } => {
                d.remove(&id);
            }
            LeaseChange::All(all) => {
                d.clear();
                for (id, ttl) in all {
                    d.insert(id, (now + Lessor::ttl(ttl), Lessor::ttl(ttl)));
                }
            }
        }
    }

    /// How long lease `id` has left on this member's clock, if it knows
    /// it.
    pub fn remaining(&self, id: i64) -> Option<Duration> {
        let d = self.deadlines.lock().unwrap_or_else(|e| e.into_inner());
        d.get(&id)
            .map(|(at, _)| at.saturating_duration_since(Instant::now()))
    }

    /// Every lease gets its whole TTL again, and an election timeout more.
    fn promote(&self) {
        let now = Instant::now();
        let mut d = self.deadlines.lock().unwrap_or_else(|e| e.into_inner());
        for (at, ttl) in d.values_mut() {
            *at = now + *ttl + self.promotion_extend;
        }
    }

    /// The leases whose time is up; each is given a few seconds more, so
    /// that its revocation is proposed once while it is in flight.
    fn expired(&self) -> Vec<i64> {
        let now = Instant::now();
        let mut d = self.deadlines.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (&id, (at, _)) in d.iter_mut() {
            if *at <= now {
                out.push(id);
                *at = now + Duration::from_secs(3);
            }
        }
        out
    }

    fn new_id(&self) -> i64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) & i64::MAX
    }
}

/// Grants a lease of `ttl` seconds (at least the lessor's minimum) with
/// the ID `id`, or with one this member chooses when `id` is 0 (another,
/// should the one it chose be taken); (ID, TTL, revision).
pub(crate) async fn grant(
    core: &EtcdCore,
    lessor: &Lessor,
    id: i64,
    ttl: i64,
) -> Result<(i64, i64, i64), Status> {
    let ttl = ttl.max(lessor.min_ttl);
    if core.read(true, |kv| kv.lease_count()).await? >= core.limits.max_leases {
        return Err(errors::too_many_leases());
    }
    let chosen = id == 0;
    let mut tries = 0;
    loop {
        let id = if chosen { lessor.new_id() } else { id };
        let cmd = KvCommand::LeaseGrant(LeaseGrantRequest { id, ttl });
        match core.write(&cmd).await {
            Ok(resp) => {
                let OpResponse::LeaseGrant { id, ttl } = resp.op else {
                    return Err(Status::internal("etcdserver: not a lease grant"));
                };
                return Ok((id, ttl, resp.revision));
            }
            // An ID this member chose is taken: choose another.
            Err(s) if chosen && s.message() == errors::LEASE_EXISTS && tries < 3 => {
                tries += 1;
            }
            Err(s) => return Err(s),
        }
    }
}

/// The leader's side of the lessor: revokes expired leases while this
/// member leads, until `stop`.
pub async fn run_expiry(core: Arc<EtcdCore>, lessor: Arc<Lessor>, mut stop: watch::Receiver<bool>) {
    let mut leading = false;
    let mut tick = tokio::time::interval(EXPIRY_CHECK);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let now_leading = core.leader_now() == Some(core.member_id);
        if now_leading && !leading {
            lessor.promote();
        }
        leading = now_leading;
        if !leading {
            continue;
        }
        for id in lessor.expired() {
            let cmd = KvCommand::LeaseRevoke(LeaseRevokeRequest { id });
            if let Err(e) = core.write(&cmd).await {
                tracing::debug!(lease = id, error = %e.message(), "revoking an expired lease");
            }
        }
    }
}

/// etcd's `Lease` service on a key-value node.
#[derive(Clone)]
pub struct LeaseService {
    core: Arc<EtcdCore>,
    lessor: Arc<Lessor>,
}

impl LeaseService {
    /// The service of `core`'s node, with its member's lessor.
    pub fn new(core: Arc<EtcdCore>, lessor: Arc<Lessor>) -> LeaseService {
        LeaseService { core, lessor }
    }
}

type BoxStream<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl pb::lease_server::Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        self.core.check_has_leader(request.metadata())?;
        let g = request.into_inner();
        if g.ttl > MAX_LEASE_TTL {
            return Err(Status::out_of_range("etcdserver: too large lease TTL"));
        }
        let (id, ttl, revision) = grant(&self.core, &self.lessor, g.id, g.ttl).await?;
        Ok(Response::new(pb::LeaseGrantResponse {
            header: self.core.header(revision),
            id,
            ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        self.core.check_has_leader(request.metadata())?;
        let who = self.core.caller(&request).await?;
        let id = request.into_inner().id;
        let resp = self
            .core
            .write_by(&who, KvCommand::LeaseRevoke(LeaseRevokeRequest { id }))
            .await?;
        Ok(Response::new(pb::LeaseRevokeResponse {
            header: self.core.header(resp.revision),
        }))
    }

    type LeaseKeepAliveStream = BoxStream<pb::LeaseKeepAliveResponse>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        self.core.check_has_leader(request.metadata())?;
        let mut inbound = request.into_inner();
        let core = self.core.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok(Some(req)) = inbound.message().await {
                let cmd = KvCommand::LeaseKeepAlive(LeaseKeepAliveRequest { id: req.id });
                let out = match core.write(&cmd).await {
                    Ok(resp) => match resp.op {
                        OpResponse::LeaseKeepAlive { id, ttl } => Ok(pb::LeaseKeepAliveResponse {
                            header: core.header(resp.revision),
                            id,
                            ttl,
                        }),
                        _ => Err(Status::internal("etcdserver: not a lease renewal")),
                    },
                    Err(s) => Err(s),
                };
                let failed = out.is_err();
                if tx.send(out).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        self.core.check_has_leader(request.metadata())?;
        // As etcd (since 3.4.26 and 3.5.8): asking for the keys needs the
        // right to read each of them, or the lease would show key names
        // the caller may not see.
        let who = if request.get_ref().keys {
            Some(self.core.caller(&request).await?)
        } else {
            None
        };
        let r = request.into_inner();
        let id = r.id;
        let (found, revision) = self
            .core
            .read(false, move |kv| (kv.lease(id), kv.revision()))
            .await?;
        let Some((granted, keys)) = found else {
            // As etcd: an unknown lease answers TTL -1, not an error.
            return Ok(Response::new(pb::LeaseTimeToLiveResponse {
                header: self.core.header(revision),
                id,
                ttl: -1,
                ..Default::default()
            }));
        };
        let remaining = self
            .lessor
            .remaining(id)
            .map_or(granted, |d| d.as_secs() as i64);
        if let Some(who) = &who {
            for key in &keys {
                self.core.check_read(who, key, &[])?;
            }
        }
        Ok(Response::new(pb::LeaseTimeToLiveResponse {
            header: self.core.header(revision),
            id,
            ttl: remaining,
            granted_ttl: granted,
            keys: if r.keys { keys } else { Vec::new() },
        }))
    }

    async fn lease_leases(
        &self,
        request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        self.core.check_has_leader(request.metadata())?;
        let (leases, revision) = self
            .core
            .read(false, |kv| (kv.leases(), kv.revision()))
            .await?;
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: self.core.header(revision),
            leases: leases
                .into_iter()
                .map(|(id, _)| pb::LeaseStatus { id })
                .collect(),
        }))
    }
}

//! etcd's `Cluster` service: the members' list, and changes to it.
//!
//! Who votes is Raft's membership; where each member is (its name, peer
//! and client URLs) is the store's replicated list of members
//! ([`dengine_kv::MemberList`]), so every member knows every address.
//! A change is run by the leader: a member that does not lead passes the
//! call on over the peer protocol (`ChangeMembers`) and answers with what
//! the leader answered, etcd's errors included.
//!
//! - `MemberAdd` proposes a membership change adding a voter or a learner
//!   (at most one learner at a time, as etcd's default), carrying the new
//!   member's peer URLs; the new member then starts with
//!   `--initial-cluster-state existing` and learns the cluster from its
//!   peers ([`crate::server`]).
//! - `MemberPromote` makes a learner a voter once its log is within 90% of
//!   the leader's (etcd's rule).
//! - `MemberRemove` removes a member; a removed member stops.
//! - `MemberUpdate` changes a member's peer URLs.
//!
//! One voter changes at a time (each change is a simple change; Raft's
//! joint consensus is not needed for one). As etcd's strict
//! reconfiguration check, a change of voters that could leave the cluster
//! without a working quorum is refused: adding or promoting a voter needs
//! a quorum of the larger set of voters started (published) and, for an
//! add, every voter connected to the leader; removing a connected voter
//! needs a quorum of the smaller set still connected.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dengine_core::{ConfChange, ConfChangeStep, ConfChangeTransition, ConfState, NodeId};
use dengine_kv::{KvCommand, MemberAttrsRequest, MemberInfo, MemberList, MemberUpdateRequest};
use dengine_proto::etcdserverpb as pb;
use dengine_proto::etcdserverpb::cluster_server::Cluster;
use dengine_proto::peer as wire;
use dengine_proto::peer::member_change_request::Method;
use dengine_proto::peer::peer_client::PeerClient;
use dengine_proto::prost;
use dengine_proto::prost::Message as _;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::{EtcdCore, errors};
use crate::members::{self, Member};
use crate::peer::{GrpcTransport, MembersTarget, PeerIdentity};

/// Most learners at once (etcd's `--max-learners` default).
const MAX_LEARNERS: usize = 1;

/// A learner is promoted only once its log matches at least this share of
/// the leader's (etcd's `readyPercentThreshold`).
const READY_SHARE: f64 = 0.9;

/// What a member knows of the cluster's members: the replicated list,
/// kept current by the store, and the members its cluster record names
/// (for one the list does not describe yet: a cluster made before the
/// list was replicated).
#[derive(Clone)]
pub struct MembersView {
    list: watch::Receiver<MemberList>,
    recorded: Arc<Vec<Member>>,
}

impl MembersView {
    /// A view of `list`, falling back on `recorded`.
    pub fn new(list: watch::Receiver<MemberList>, recorded: Vec<Member>) -> MembersView {
        MembersView {
            list,
            recorded: Arc::new(recorded),
        }
    }

    /// The replicated list as it is now.
    pub fn list(&self) -> MemberList {
        self.list.borrow().clone()
    }

    /// A member as the list (or the record) describes it.
    fn describe(&self, list: &MemberList, id: u64) -> MemberInfo {
        if let Some(m) = list.members.get(&id) {
            return m.clone();
        }
        match self.recorded.iter().find(|m| m.id.0 == id) {
            Some(m) => MemberInfo {
                id,
                name: m.name.clone(),
                peer_urls: m.peer_urls.clone(),
                client_urls: m.client_urls.clone(),
            },
            None => MemberInfo {
                id,
                ..MemberInfo::default()
            },
        }
    }

    /// Every member of `conf` (and any the list has that `conf` does not
    /// have yet), by id, as etcd lists them.
    pub fn etcd_members(&self, conf: &ConfState) -> Vec<pb::Member> {
        let list = self.list.borrow();
        let mut ids: Vec<u64> = conf.members().iter().map(|id| id.0).collect();
        ids.extend(list.members.keys().filter(|id| !list.removed.contains(id)));
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .map(|id| {
                let m = self.describe(&list, id);
                pb::Member {
                    id,
                    name: m.name,
                    peer_ur_ls: m.peer_urls,
                    client_ur_ls: m.client_urls,
                    is_learner: conf.is_learner(NodeId(id)),
                }
            })
            .collect()
    }
}

/// etcd's `Cluster` service (see the module docs); also answers the
/// membership calls of the peer protocol.
#[derive(Clone)]
pub struct ClusterService {
    core: Arc<EtcdCore>,
    transport: GrpcTransport,
    identity: PeerIdentity,
    timeout: Duration,
}

impl ClusterService {
    /// The service of `core`'s node, passing changes to the leader over
    /// `transport`.
    pub fn new(
        core: Arc<EtcdCore>,
        transport: GrpcTransport,
        identity: PeerIdentity,
        timeout: Duration,
    ) -> ClusterService {
        ClusterService {
            core,
            transport,
            identity,
            timeout,
        }
    }

    /// Runs a change on the leader: here, or passed on to it.
    async fn call(&self, method: Method, request: Vec<u8>) -> Result<Bytes, Status> {
        let leader = self.core.leader().await?;
        if leader == self.core.member_id {
            return self.run(method, Bytes::from(request)).await;
        }
        let Some(channel) = self.transport.channel(leader) else {
            return Err(errors::leader_changed());
        };
        let body = wire::MemberChangeRequest {
            method: method as i32,
            request: Bytes::from(request),
        };
        let removes_me = method == Method::Remove
            && pb::MemberRemoveRequest::decode(body.request.clone())
                .is_ok_and(|r| r.id == self.core.member_id.0);
        let mut req = crate::peer::with_identity(&self.identity, leader, body);
        req.set_timeout(self.timeout);
        let resp = PeerClient::new(channel).change_members(req).await?;
        // As etcd, where the member that takes a change waits until it
        // has applied it: a member list asked of this member next (not
        // linearizable, as etcdctl 3.4 asks) shows the change. A member
        // that removed itself has nothing to wait for; the change is made
        // either way, so a failed wait is not the caller's error.
        if !removes_me {
            let _ = self.core.read(false, |_| ()).await;
        }
        Ok(resp.into_inner().response)
    }

    /// The leader's side of a change.
    async fn run(&self, method: Method, request: Bytes) -> Result<Bytes, Status> {
        let bad = |e: prost::DecodeError| {
            Status::invalid_argument(format!("etcdserver: membership request: {e}"))
        };
        let answer = match method {
            Method::Add => self
                .add(pb::MemberAddRequest::decode(request).map_err(bad)?)
                .await?
                .encode_to_vec(),
            Method::Remove => self
                .remove(pb::MemberRemoveRequest::decode(request).map_err(bad)?)
                .await?
                .encode_to_vec(),
            Method::Update => self
                .update(pb::MemberUpdateRequest::decode(request).map_err(bad)?)
                .await?
                .encode_to_vec(),
            Method::Promote => self
                .promote(pb::MemberPromoteRequest::decode(request).map_err(bad)?)
                .await?
                .encode_to_vec(),
        };
        Ok(Bytes::from(answer))
    }

    /// The voters that started (published their name), and those the
    /// leader is connected to (itself included).
    fn voters_started_and_connected(&self, conf: &ConfState) -> (Vec<NodeId>, Vec<NodeId>) {
        let list = self.core.members.list();
        let voters: Vec<NodeId> = conf.voters.iter().copied().collect();
        let started = voters
            .iter()
            .copied()
            .filter(|id| list.members.get(&id.0).is_some_and(|m| !m.name.is_empty()))
            .collect();
        let connected = voters
            .iter()
            .copied()
            .filter(|&id| id == self.core.member_id || self.transport.is_connected(id))
            .collect();
        (started, connected)
    }

    /// etcd's checks before a voter joins: added (not started yet), or a
    /// learner promoted (started: it caught up).
    fn check_voter_joins(&self, conf: &ConfState, added: bool) -> Result<(), Status> {
        let (started, connected) = self.voters_started_and_connected(conf);
        let voters = conf.voters.len() + 1;
        let started = started.len() + usize::from(!added);
        // A second voter added to a cluster of one is let through (etcd's
        // exception, for a cluster restored from a backup).
        let lone = added && voters == 2 && started == 1;
        if started < voters / 2 + 1 && !lone {
            return Err(errors::not_enough_started());
        }
        if added && connected.len() < conf.voters.len() {
            return Err(errors::unhealthy());
        }
        Ok(())
    }

    /// etcd's checks before a voter leaves.
    fn check_voter_leaves(&self, conf: &ConfState, id: NodeId) -> Result<(), Status> {
        if !conf.voters.contains(&id) {
            return Ok(());
        }
        let (started, connected) = self.voters_started_and_connected(conf);
        let remaining = conf.voters.len() - 1;
        let quorum = remaining / 2 + 1;
        if started.iter().filter(|&&s| s != id).count() < quorum {
            return Err(errors::not_enough_started());
        }
        // A member that is down is not in the working quorum: removing it
        // leaves that quorum as it is.
        if id != self.core.member_id && !connected.contains(&id) {
            return Ok(());
        }
        if connected.len() - 1 < quorum {
            return Err(errors::unhealthy());
        }
        Ok(())
    }

    fn membership(&self) -> ConfState {
        self.core.metrics.borrow().membership.clone()
    }

    fn members_now(&self) -> Vec<pb::Member> {
        self.core.members.etcd_members(&self.membership())
    }

    async fn change(&self, step: ConfChangeStep, context: Vec<u8>) -> Result<(), Status> {
        let change = ConfChange {
            transition: ConfChangeTransition::Auto,
            steps: vec![step],
            context,
        };
        self.core
            .node
            .change_membership(change)
            .await
            .map(|_| ())
            .map_err(|e| errors::from_runtime(&e))
    }

    async fn add(&self, req: pb::MemberAddRequest) -> Result<pb::MemberAddResponse, Status> {
        let urls = req.peer_ur_ls;
        if urls.is_empty() || urls.iter().any(|u| members::check_url(u).is_err()) {
            return Err(errors::member_bad_urls());
        }
        let list = self.core.members.list();
        let conf = self.membership();
        let in_use = conf
            .members()
            .iter()
            .map(|id| self.core.members.describe(&list, id.0))
            .chain(list.members.values().cloned())
            .any(|m| m.peer_urls.iter().any(|u| urls.contains(u)));
        if in_use {
            return Err(errors::peer_url_exists());
        }
        if req.is_learner && conf.learners.len() >= MAX_LEARNERS {
            return Err(errors::too_many_learners());
        }
        if !req.is_learner {
            self.check_voter_joins(&conf, true)?;
        }
        let taken = |id: u64| {
            conf.contains(NodeId(id))
                || list.members.contains_key(&id)
                || list.removed.contains(&id)
        };
        let id = new_member_id(self.core.cluster_id, &urls, taken);
        let info = MemberInfo {
            id,
            name: String::new(),
            peer_urls: urls.clone(),
            client_urls: Vec::new(),
        };
        let step = if req.is_learner {
            ConfChangeStep::AddLearner(NodeId(id))
        } else {
            ConfChangeStep::AddVoter(NodeId(id))
        };
        self.change(step, dengine_kv::encode_context(&[info]))
            .await?;
        tracing::info!(member = %format!("{id:x}"), peer_urls = ?urls, learner = req.is_learner,
            "member added");
        Ok(pb::MemberAddResponse {
            header: self.core.cluster_header(),
            member: Some(pb::Member {
                id,
                name: String::new(),
                peer_ur_ls: urls,
                client_ur_ls: Vec::new(),
                is_learner: req.is_learner,
            }),
            members: self.members_now(),
        })
    }

    async fn remove(
        &self,
        req: pb::MemberRemoveRequest,
    ) -> Result<pb::MemberRemoveResponse, Status> {
        let id = NodeId(req.id);
        let conf = self.membership();
        if !conf.contains(id) {
            return Err(errors::member_not_found());
        }
        self.check_voter_leaves(&conf, id)?;
        self.change(ConfChangeStep::Remove(id), Vec::new()).await?;
        tracing::info!(member = %format!("{:x}", req.id), "member removed");
        Ok(pb::MemberRemoveResponse {
            header: self.core.cluster_header(),
            members: self.members_now(),
        })
    }

    async fn update(
        &self,
        req: pb::MemberUpdateRequest,
    ) -> Result<pb::MemberUpdateResponse, Status> {
        let urls = req.peer_ur_ls;
        if urls.is_empty() || urls.iter().any(|u| members::check_url(u).is_err()) {
            return Err(errors::member_bad_urls());
        }
        if !self.membership().contains(NodeId(req.id)) {
            return Err(errors::member_not_found());
        }
        let cmd = KvCommand::MemberUpdate(MemberUpdateRequest {
            id: req.id,
            peer_urls: urls.clone(),
        });
        let proposed = self
            .core
            .node
            .propose(Bytes::from(cmd.encode()))
            .await
            .map_err(|e| errors::from_runtime(&e))?;
        proposed.response.map_err(|e| errors::from_kv(&e))?;
        tracing::info!(member = %format!("{:x}", req.id), peer_urls = ?urls, "member updated");
        Ok(pb::MemberUpdateResponse {
            header: self.core.cluster_header(),
            members: self.members_now(),
        })
    }

    async fn promote(
        &self,
        req: pb::MemberPromoteRequest,
    ) -> Result<pb::MemberPromoteResponse, Status> {
        let id = NodeId(req.id);
        let conf = self.membership();
        if !conf.contains(id) {
            return Err(errors::member_not_found());
        }
        if !conf.is_learner(id) {
            return Err(errors::member_not_learner());
        }
        let status = self
            .core
            .node
            .raft_status()
            .await
            .map_err(|e| errors::from_runtime(&e))?;
        let leader_match = status
            .progress
            .get(&self.core.member_id)
            .map_or(status.last_index, |p| p.matched);
        let learner_match = status.progress.get(&id).map_or(0, |p| p.matched.0);
        if (learner_match as f64) < (leader_match.0 as f64) * READY_SHARE {
            return Err(errors::learner_not_ready());
        }
        self.check_voter_joins(&conf, false)?;
        self.change(ConfChangeStep::AddVoter(id), Vec::new())
            .await?;
        tracing::info!(member = %format!("{:x}", req.id), "learner promoted");
        Ok(pb::MemberPromoteResponse {
            header: self.core.cluster_header(),
            members: self.members_now(),
        })
    }
}

/// A new member's id: from the cluster, its URLs and the time (as etcd
/// makes one), never 0 nor an id in use or removed.
fn new_member_id(cluster_id: u64, urls: &[String], taken: impl Fn(u64) -> bool) -> u64 {
    let mut sorted = urls.to_vec();
    sorted.sort();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let joined = sorted.join(",");
    let mut id = members::fnv1a(&[
        b"dengine-added-member",
        &cluster_id.to_be_bytes(),
        joined.as_bytes(),
        &now.to_be_bytes(),
    ]);
    while id == 0 || taken(id) {
        id = members::fnv1a(&[&id.to_be_bytes()]);
    }
    id
}

fn decoded<T: prost::Message + Default>(bytes: Bytes) -> Result<T, Status> {
    T::decode(bytes).map_err(|e| Status::internal(format!("etcdserver: the leader's answer: {e}")))
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        self.core.require_admin(&request).await?;
        let bytes = self
            .call(Method::Add, request.into_inner().encode_to_vec())
            .await?;
        decoded(bytes).map(Response::new)
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        self.core.require_admin(&request).await?;
        let bytes = self
            .call(Method::Remove, request.into_inner().encode_to_vec())
            .await?;
        decoded(bytes).map(Response::new)
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        self.core.require_admin(&request).await?;
        let bytes = self
            .call(Method::Update, request.into_inner().encode_to_vec())
            .await?;
        decoded(bytes).map(Response::new)
    }

    async fn member_list(
        &self,
        request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        if request.get_ref().linearizable {
            // A read barrier: what this member lists is at least as new as
            // what the leader had committed when the call came.
            self.core.read(false, |_| ()).await?;
        }
        Ok(Response::new(pb::MemberListResponse {
            header: self.core.cluster_header(),
            members: self.members_now(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        self.core.require_admin(&request).await?;
        let bytes = self
            .call(Method::Promote, request.into_inner().encode_to_vec())
            .await?;
        decoded(bytes).map(Response::new)
    }
}

impl MembersTarget for ClusterService {
    fn change(
        &self,
        method: Method,
        request: Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Bytes, Status>> + Send + '_>>
    {
        Box::pin(async move {
            if self.core.leader_now() != Some(self.core.member_id) {
                // Passed on once only: the caller tries again.
                return Err(errors::leader_changed());
            }
            self.run(method, request).await
        })
    }

    fn list(&self) -> wire::MembersResponse {
        let members = self
            .members_now()
            .into_iter()
            .map(|m| wire::MemberEntry {
                id: m.id,
                name: m.name,
                peer_urls: m.peer_ur_ls,
                client_urls: m.client_ur_ls,
            })
            .collect();
        wire::MembersResponse {
            cluster_id: self.core.cluster_id,
            members,
        }
    }
}

/// Publishes what this member is (its name, client and peer URLs) in the
/// replicated list whenever the list says otherwise, until `stop`: at
/// start, as etcd's `publish`, and again should a snapshot bring an older
/// list. A member the list does not name (not added yet, or a cluster
/// made before the list was replicated) publishes nothing.
pub async fn publish(core: Arc<EtcdCore>, me: MemberAttrsRequest, mut stop: watch::Receiver<bool>) {
    let mut list = core.members.list.clone();
    loop {
        let current = list.borrow_and_update().members.get(&me.id).cloned();
        let stale = current.is_some_and(|m| {
            m.name != me.name
                || m.client_urls != me.client_urls
                || (m.peer_urls.is_empty() && !me.peer_urls.is_empty())
        });
        if stale {
            match core.write(&KvCommand::MemberAttrs(me.clone())).await {
                Ok(_) => {
                    tracing::info!(name = %me.name, client_urls = ?me.client_urls,
                        "published this member's attributes");
                    // Applied on the leader; here, once the list changes
                    // (or, should it not, published again in a while).
                    tokio::select! {
                        _ = list.changed() => {}
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = stop.changed() => return,
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e.message(), "publishing this member's attributes failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
            continue;
        }
        tokio::select! {
            changed = list.changed() => if changed.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}

//! A member joining a cluster that exists, and every member following the
//! replicated list of members.
//!
//! A member started with `--initial-cluster-state existing` (after a
//! `MemberAdd` named its peer URLs) does not know the cluster's id nor its
//! own: it asks the members named in `--initial-cluster` (the `Members`
//! call of the peer protocol) and finds itself by its peer URLs, as etcd
//! does. It then starts with an empty log, and the leader sends it the
//! log or a snapshot.
//!
//! While a member runs, [`follow_members`] keeps its peer links and the
//! set of members it takes peer calls from in step with the list, and
//! says when the member itself was removed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use dengine_core::NodeId;
use dengine_kv::MemberList;
use dengine_proto::peer as wire;
use dengine_proto::peer::peer_client::PeerClient;
use tokio::sync::watch;

use crate::members::{ClusterRecord, Member};
use crate::peer::{GrpcTransport, KnownMembers};
use crate::server::{ServerConfig, ServerError};

/// How long a joining member tries to reach the cluster.
const JOIN_WAIT: Duration = Duration::from_secs(30);

/// Asks the members `flags` names (all but this one) for the cluster's id
/// and members, and makes this member's record from the answer.
pub(crate) async fn ask_members(
    cfg: &ServerConfig,
    flags: &ClusterRecord,
) -> Result<ClusterRecord, ServerError> {
    let urls: Vec<String> = flags
        .members
        .iter()
        .filter(|m| m.name != cfg.name)
        .flat_map(|m| m.peer_urls.clone())
        .collect();
    if urls.is_empty() {
        return Err(ServerError::Config(
            "--initial-cluster-state existing: --initial-cluster names no other member to join"
                .into(),
        ));
    }
    let deadline = Instant::now() + JOIN_WAIT;
    let mut last_error = String::new();
    loop {
        for url in &urls {
            match ask(url, cfg.peer.tls.as_ref()).await {
                Ok(answer) => return record_from(cfg, answer),
                Err(e) => last_error = format!("{url}: {e}"),
            }
        }
        if Instant::now() >= deadline {
            return Err(ServerError::Config(format!(
                "could not learn the cluster from any member of --initial-cluster in {} s \
                 (last: {last_error})",
                JOIN_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn ask(
    url: &str,
    tls: Option<&std::sync::Arc<crate::tls::Tls>>,
) -> Result<wire::MembersResponse, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(crate::tls::plain_scheme(url))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    let channel = crate::tls::peer_channel(&endpoint, url, tls);
    PeerClient::new(channel)
        .members(wire::MembersRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|s| s.message().to_string())
}

fn sorted(urls: &[String]) -> Vec<String> {
    let mut v = urls.to_vec();
    v.sort();
    v
}

/// This member's record from the cluster's answer: it is the member whose
/// peer URLs are its own.
fn record_from(
    cfg: &ServerConfig,
    answer: wire::MembersResponse,
) -> Result<ClusterRecord, ServerError> {
    let mine = sorted(&cfg.initial_advertise_peer_urls);
    let Some(me) = answer.members.iter().find(|m| sorted(&m.peer_urls) == mine) else {
        return Err(ServerError::Config(format!(
            "no member of cluster {:x} has the peer URLs {mine:?}: add this member first \
             (etcdctl member add {} --peer-urls={})",
            answer.cluster_id,
            cfg.name,
            mine.join(",")
        )));
    };
    if !me.name.is_empty() && me.name != cfg.name {
        return Err(ServerError::Config(format!(
            "the member with the peer URLs {mine:?} is named {:?}, not {:?} (--name)",
            me.name, cfg.name
        )));
    }
    let member_id = NodeId(me.id);
    let members = answer
        .members
        .iter()
        .map(|m| Member {
            id: NodeId(m.id),
            name: if m.id == me.id {
                cfg.name.clone()
            } else {
                m.name.clone()
            },
            peer_urls: m.peer_urls.clone(),
            client_urls: if m.id == me.id {
                cfg.advertise_client_urls.clone()
            } else {
                m.client_urls.clone()
            },
        })
        .collect();
    Ok(ClusterRecord {
        version: ClusterRecord::VERSION,
        cluster_id: answer.cluster_id,
        member_id,
        members,
        initial_voters: Vec::new(),
    })
}

/// What [`follow_members`] keeps in step.
pub(crate) struct Followed {
    /// This member.
    pub(crate) me: NodeId,
    /// The replicated list.
    pub(crate) list: watch::Receiver<MemberList>,
    /// The peer links.
    pub(crate) transport: GrpcTransport,
    /// Who peer calls are taken from.
    pub(crate) known: KnownMembers,
    /// The members of the cluster record (peers the list does not name
    /// yet keep their links).
    pub(crate) recorded: Vec<Member>,
    /// Set once this member is removed.
    pub(crate) removed: watch::Sender<bool>,
}

/// How long a member that applied its own removal goes on before it
/// stops (etcd waits ten ticks of 100 ms).
const REMOVED_STOP_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps the peer links and the known members in step with the list
/// (see the module docs) until `stop`.
pub(crate) async fn follow_members(mut f: Followed, mut stop: watch::Receiver<bool>) {
    // The URL each peer link dials now (links were made from the record).
    let mut dialing: BTreeMap<NodeId, String> = f
        .recorded
        .iter()
        .filter(|m| m.id != f.me)
        .filter_map(|m| m.peer_urls.first().map(|u| (m.id, u.clone())))
        .collect();
    let mut told_removed = f.transport.removed();
    loop {
        let list = f.list.borrow_and_update().clone();
        if list.removed.contains(&f.me.0) && !*f.removed.borrow() {
            tracing::warn!(member = %format!("{:x}", f.me.0),
                "this member was removed from the cluster; stopping");
            // As etcd (`stopWithDelay`): a leader that applied its own
            // removal still tells the others the commit index that
            // covers it; stopping at once left them to learn it only
            // from their next leader, and a change answered as made was
            // not yet made anywhere else.
            tokio::select! {
                () = tokio::time::sleep(REMOVED_STOP_DELAY) => {}
                _ = stop.changed() => {}
            }
            f.removed.send_replace(true);
        }
        let mut wanted: BTreeMap<NodeId, String> = f
            .recorded
            .iter()
            .filter(|m| !list.removed.contains(&m.id.0))
            .filter_map(|m| m.peer_urls.first().map(|u| (m.id, u.clone())))
            .collect();
        for m in list.members.values() {
            if let Some(url) = m.peer_urls.first() {
                wanted.insert(NodeId(m.id), url.clone());
            }
        }
        let ids: BTreeSet<NodeId> = wanted.keys().copied().collect();
        wanted.remove(&f.me);
        for (id, url) in &wanted {
            if dialing.get(id) != Some(url) {
                match f.transport.add_peer(*id, url) {
                    Ok(()) => {
                        tracing::info!(peer = %format!("{:x}", id.0), %url, "peer link to");
                        dialing.insert(*id, url.clone());
                    }
                    Err(e) => {
                        tracing::warn!(peer = %format!("{:x}", id.0), %url, error = %e,
                            "a member's peer URL cannot be dialed");
                    }
                }
            }
        }
        let gone: Vec<NodeId> = dialing
            .keys()
            .copied()
            .filter(|id| !wanted.contains_key(id))
            .collect();
        for id in gone {
            f.transport.remove_peer(id);
            dialing.remove(&id);
        }
        f.known
            .replace(ids, list.removed.iter().map(|&id| NodeId(id)));
        tokio::select! {
            changed = f.list.changed() => if changed.is_err() { return },
            refused = told_removed.changed() => {
                if refused.is_err() {
                    std::future::pending::<()>().await;
                }
                if *told_removed.borrow_and_update() && !*f.removed.borrow() {
                    tracing::warn!(member = %format!("{:x}", f.me.0),
                        "a peer says this member was removed from the cluster; stopping");
                    f.removed.send_replace(true);
                }
            }
            _ = stop.changed() => return,
        }
    }
}

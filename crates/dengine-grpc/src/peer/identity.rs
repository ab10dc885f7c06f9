//! Who is calling whom: the metadata every peer call carries, checked by
//! the receiver before it reads anything else.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dengine_core::NodeId;
use tonic::Status;
use tonic::metadata::{MetadataMap, MetadataValue};

/// The metadata key of the cluster id.
pub const CLUSTER_ID: &str = "dengine-cluster-id";
/// The metadata key of the sender's id.
pub const FROM: &str = "dengine-from";
/// The metadata key of the receiver's id.
pub const TO: &str = "dengine-to";
/// The metadata key a refusal carries when the caller was removed from
/// the cluster (so it stops).
pub const REMOVED: &str = "dengine-removed";

/// This member and its cluster, as its peer calls state them.
#[derive(Clone, Debug)]
pub struct PeerIdentity {
    /// The cluster's id.
    pub cluster_id: u64,
    /// This member's id.
    pub me: NodeId,
}

impl PeerIdentity {
    /// Writes the identity of a call to `to` into `md`.
    pub fn stamp(&self, md: &mut MetadataMap, to: NodeId) {
        md.insert(CLUSTER_ID, MetadataValue::from(self.cluster_id));
        md.insert(FROM, MetadataValue::from(self.me.0));
        md.insert(TO, MetadataValue::from(to.0));
    }
}

/// The members a node takes peer calls from, and those removed from the
/// cluster (kept current as membership changes).
#[derive(Clone, Debug, Default)]
pub struct KnownMembers(Arc<RwLock<Known>>);

#[derive(Debug, Default)]
struct Known {
    members: BTreeSet<NodeId>,
    removed: BTreeSet<NodeId>,
}

impl KnownMembers {
    /// A set holding `ids`.
    pub fn new(ids: impl IntoIterator<Item = NodeId>) -> KnownMembers {
        KnownMembers(Arc::new(RwLock::new(Known {
            members: ids.into_iter().collect(),
            removed: BTreeSet::new(),
        })))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Known> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Known> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `id` is a member.
    pub fn contains(&self, id: NodeId) -> bool {
        self.read().members.contains(&id)
    }

    /// Whether `id` was removed from the cluster.
    pub fn was_removed(&self, id: NodeId) -> bool {
        self.read().removed.contains(&id)
    }

    /// Adds `id`.
    pub fn insert(&self, id: NodeId) {
        self.write().members.insert(id);
    }

    /// Makes `ids` the members and `removed` the removed ones.
    pub fn replace(
        &self,
        ids: impl IntoIterator<Item = NodeId>,
        removed: impl IntoIterator<Item = NodeId>,
    ) {
        let mut known = self.write();
        known.members = ids.into_iter().collect();
        known.removed = removed.into_iter().collect();
    }
}

fn read_u64(md: &MetadataMap, key: &str) -> Result<u64, Status> {
    let v = md.get(key).ok_or_else(|| {
        Status::failed_precondition(format!(
            "dengine peer call without {key} metadata (is this an etcd or dengine peer \
             of another version?)"
        ))
    })?;
    v.to_str()
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Status::failed_precondition(format!("dengine peer call: bad {key}")))
}

/// Checks a call's metadata against this member; returns the sender.
/// Another cluster, or a call meant for another member:
/// `FAILED_PRECONDITION`; a sender that is not a member:
/// `PERMISSION_DENIED`.
pub fn check_caller(
    md: &MetadataMap,
    me: &PeerIdentity,
    members: &KnownMembers,
) -> Result<NodeId, Status> {
    let cluster = read_u64(md, CLUSTER_ID)?;
    if cluster != me.cluster_id {
        return Err(Status::failed_precondition(format!(
            "peer of cluster {cluster:x} refused: this member belongs to cluster {:x}",
            me.cluster_id
        )));
    }
    let to = NodeId(read_u64(md, TO)?);
    if to != me.me {
        return Err(Status::failed_precondition(format!(
            "peer call for member {:x} refused: this is member {:x}",
            to.0, me.me.0
        )));
    }
    let from = NodeId(read_u64(md, FROM)?);
    if members.was_removed(from) {
        let mut status = Status::permission_denied(format!(
            "peer call from {:x} refused: it was removed from cluster {:x}",
            from.0, me.cluster_id
        ));
        status
            .metadata_mut()
            .insert(REMOVED, MetadataValue::from_static("1"));
        return Err(status);
    }
    if !members.contains(from) || from == me.me {
        return Err(Status::permission_denied(format!(
            "peer call from {:x} refused: not a member of cluster {:x}",
            from.0, me.cluster_id
        )));
    }
    Ok(from)
}

/// How long to wait before attempt `failures + 1`: 50 ms doubling to at
/// most 2 s, each wait jittered to between half and all of it so peers
/// that failed together do not retry together.
pub fn backoff(failures: u32) -> Duration {
    let base_ms: u64 = 50u64.saturating_mul(1 << failures.min(6)).min(2_000);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(failures);
    let jitter = h.finish() % (base_ms / 2 + 1);
    Duration::from_millis(base_ms / 2 + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(cluster: u64, from: u64, to: u64) -> MetadataMap {
        let mut md = MetadataMap::new();
        PeerIdentity {
            cluster_id: cluster,
            me: NodeId(from),
        }
        .stamp(&mut md, NodeId(to));
        md
    }

    #[test]
    fn callers_are_checked() {
        let me = PeerIdentity {
            cluster_id: 7,
            me: NodeId(1),
        };
        let members = KnownMembers::new([1, 2, 3].map(NodeId));
        assert_eq!(
            check_caller(&md(7, 2, 1), &me, &members).ok(),
            Some(NodeId(2))
        );
        let e = check_caller(&md(8, 2, 1), &me, &members).expect_err("other cluster");
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("cluster 8"), "{}", e.message());
        let e = check_caller(&md(7, 2, 3), &me, &members).expect_err("other member");
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        let e = check_caller(&md(7, 9, 1), &me, &members).expect_err("stranger");
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        let e = check_caller(&MetadataMap::new(), &me, &members).expect_err("none");
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.metadata().get(REMOVED).is_none());
        // A removed member is told so, to stop.
        members.replace([1, 3].map(NodeId), [NodeId(2)]);
        let e = check_caller(&md(7, 2, 1), &me, &members).expect_err("removed");
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.metadata().get(REMOVED).is_some());
        let e = check_caller(&md(7, 9, 1), &me, &members).expect_err("stranger");
        assert!(e.metadata().get(REMOVED).is_none());
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        for f in 0..20 {
            let b = backoff(f).as_millis() as u64;
            let base = (50u64 << f.min(6)).min(2_000);
            assert!(b >= base / 2 && b <= base, "{f}: {b}");
        }
    }
}

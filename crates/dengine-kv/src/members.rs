//! The cluster's members as the replicated state records them: each
//! member's name and URLs, and the ids of members that were removed (a
//! removed id never comes back, as in etcd).
//!
//! Raft's membership says who votes; this says where each member is. It
//! is changed only by log entries, so every member holds the same list at
//! the same index:
//! - a membership change carries the members it adds in its `context`
//!   ([`encode_context`]), the first entry of a new cluster all of its
//!   initial members, and a member removed by a change is removed here too;
//! - [`KvCommand::MemberAttrs`] records what a member publishes of itself
//!   when it starts (its name and client URLs, as etcd's `publish`);
//! - [`KvCommand::MemberUpdate`] changes a member's peer URLs.
//!
//! Each member is a record `n ‖ id (u64, big-endian)` → sealed `1 ‖ member
//! (postcard)`, a removed one with `removed` set.

use std::collections::{BTreeMap, BTreeSet};

use dengine_core::{ConfChange, ConfChangeStep, ConfState};
use serde::{Deserialize, Serialize};

use crate::KvError;
use crate::backend::Change;
use crate::events::EventSink;
use crate::store::KvStateMachine;
use crate::types::*;

/// Backend key prefix of member records, and the end of their range.
pub(crate) const MEMBER_PREFIX: u8 = b'n';
pub(crate) const MEMBERS_END: &[u8] = b"o";
const MEMBER_RECORD_VERSION: u8 = 1;
/// The format of a membership change's context.
const CONTEXT_VERSION: u8 = 1;

/// A member of the cluster, as etcd's `Member` describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Its Raft id.
    pub id: u64,
    /// Its name (empty until the member has started and published it).
    pub name: String,
    /// Where its peers reach it.
    pub peer_urls: Vec<String>,
    /// Where clients reach it (empty until it has started and published
    /// them).
    pub client_urls: Vec<String>,
}

/// A member record: the member, or the fact that its id was removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct MemberRecord {
    info: MemberInfo,
    removed: bool,
}

/// What the store knows of the members.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberList {
    /// The members, by id.
    pub members: BTreeMap<u64, MemberInfo>,
    /// The ids of removed members.
    pub removed: BTreeSet<u64>,
}

/// The members, and the ids changed since the last flush.
#[derive(Debug, Default)]
pub(crate) struct Members {
    pub(crate) list: MemberList,
    pub(crate) changed: BTreeSet<u64>,
}

/// The context of a membership change that adds these members: their
/// names and URLs, recorded by every member when the change applies.
pub fn encode_context(members: &[MemberInfo]) -> Vec<u8> {
    // Plain data of strings and integers always encodes.
    dengine_runtime::typed::encode_version(CONTEXT_VERSION, &members.to_vec()).unwrap_or_default()
}

/// The members a change's context names; empty for a change made
/// without one.
fn decode_context(context: &[u8]) -> Result<Vec<MemberInfo>, KvError> {
    if context.is_empty() {
        return Ok(Vec::new());
    }
    let bad = |e: String| KvError::InvalidRequest(format!("membership change context: {e}"));
    match dengine_runtime::typed::split_version(context).map_err(|e| bad(e.to_string()))? {
        (CONTEXT_VERSION, body) => {
            dengine_runtime::typed::decode_body(body).map_err(|e| bad(e.to_string()))
        }
        (v, _) => Err(bad(format!(
            "format version {v}, which this program does not read"
        ))),
    }
}

fn member_key(id: u64) -> Vec<u8> {
    let mut k = vec![MEMBER_PREFIX];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn encode_record(r: &MemberRecord) -> Vec<u8> {
    let mut body = vec![MEMBER_RECORD_VERSION];
    // Plain data always encodes.
    body.extend(postcard::to_allocvec(r).unwrap_or_default());
    dengine_core::codec::seal(&body)
}

/// Decodes a member record into `list`.
pub(crate) fn decode_member(k: &[u8], v: &[u8], list: &mut MemberList) -> Result<(), KvError> {
    let bad = |what: &str| KvError::Storage(format!("a member record is corrupt: {what}"));
    let id = match k {
        [MEMBER_PREFIX, id @ ..] => {
            u64::from_be_bytes(<[u8; 8]>::try_from(id).map_err(|_| bad("its key"))?)
        }
        _ => return Err(bad("its key")),
    };
    let body = dengine_core::codec::open(v).map_err(|e| bad(&e.to_string()))?;
    let record: MemberRecord = match body {
        [MEMBER_RECORD_VERSION, rest @ ..] => {
            postcard::from_bytes(rest).map_err(|e| bad(&e.to_string()))?
        }
        [v, ..] => {
            return Err(KvError::Storage(format!(
                "a member record has format version {v}, which this program does not read \
                 (it reads version {MEMBER_RECORD_VERSION})"
            )));
        }
        [] => return Err(bad("empty")),
    };
    if record.info.id != id {
        return Err(bad("its key names another member"));
    }
    if record.removed {
        list.removed.insert(id);
    } else {
        list.members.insert(id, record.info);
    }
    Ok(())
}

impl Members {
    /// The record of member `id`: the member, or that it was removed
    /// (`None`: the list does not know it).
    fn record(&self, id: u64) -> Option<MemberRecord> {
        if let Some(info) = self.list.members.get(&id) {
            return Some(MemberRecord {
                info: info.clone(),
                removed: false,
            });
        }
        self.list.removed.contains(&id).then(|| MemberRecord {
            info: MemberInfo {
                id,
                ..MemberInfo::default()
            },
            removed: true,
        })
    }

    /// The changes to write at a flush.
    pub(crate) fn take_changes(&mut self, out: &mut Vec<Change>) {
        for id in std::mem::take(&mut self.changed) {
            out.push(match self.record(id) {
                Some(record) => Change::Put(member_key(id), encode_record(&record)),
                None => Change::Remove(member_key(id)),
            });
        }
    }

    /// Replaces the list (a snapshot's), writing all of it at the next
    /// flush.
    pub(crate) fn replace(&mut self, list: MemberList) {
        self.changed = list.members.keys().chain(&list.removed).copied().collect();
        self.list = list;
    }

    /// The snapshot form of the list: every record.
    pub(crate) fn records(&self) -> Vec<Vec<u8>> {
        let ids = self.list.members.keys().chain(&self.list.removed);
        ids.filter_map(|&id| self.record(id))
            .map(|r| postcard::to_allocvec(&r).unwrap_or_default())
            .collect()
    }

    /// Adds one snapshot record to `list`.
    pub(crate) fn read_record(bytes: &[u8], list: &mut MemberList) -> Result<(), String> {
        let r: MemberRecord = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
        if r.removed {
            list.removed.insert(r.info.id);
        } else {
            list.members.insert(r.info.id, r.info);
        }
        Ok(())
    }
}

fn tell(sink: &mut Option<Box<dyn EventSink>>, list: &MemberList) {
    if let Some(s) = sink {
        s.members(list);
    }
}

impl KvStateMachine {
    /// What the store records of the members.
    pub fn members(&self) -> &MemberList {
        &self.members.list
    }

    /// Records a membership change that applied at this point of the log
    /// (see the module docs). A context that does not decode is ignored,
    /// the same way on every member.
    pub(crate) fn change_members(&mut self, change: &ConfChange, conf: &ConfState) {
        let added = match decode_context(&change.context) {
            Ok(added) => added,
            Err(e) => {
                tracing::warn!(error = %e, "membership change with a context that does not decode");
                Vec::new()
            }
        };
        let list = &mut self.members.list;
        for step in &change.steps {
            let id = step.node().0;
            match step {
                ConfChangeStep::AddVoter(_) | ConfChangeStep::AddLearner(_) => {
                    if let Some(info) = added.iter().find(|m| m.id == id) {
                        let known = list.members.entry(id).or_default();
                        let client_urls = std::mem::take(&mut known.client_urls);
                        let name = std::mem::take(&mut known.name);
                        *known = info.clone();
                        // What a member published of itself stays.
                        if known.client_urls.is_empty() {
                            known.client_urls = client_urls;
                        }
                        if known.name.is_empty() {
                            known.name = name;
                        }
                        self.members.changed.insert(id);
                    }
                }
                ConfChangeStep::Remove(_) => {
                    list.members.remove(&id);
                    list.removed.insert(id);
                    self.members.changed.insert(id);
                }
            }
        }
        // A member Raft no longer has is not listed (a change proposed
        // without a context, by an embedder, say).
        let gone: Vec<u64> = list
            .members
            .keys()
            .copied()
            .filter(|id| !conf.contains(dengine_core::NodeId(*id)))
            .collect();
        for id in gone {
            list.members.remove(&id);
            self.members.changed.insert(id);
        }
        tell(&mut self.sink, &self.members.list);
    }

    /// A member publishes its name and client URLs (and its peer URLs, if
    /// none are recorded).
    pub(crate) fn member_attrs(&mut self, req: &MemberAttrsRequest) -> Result<OpResponse, KvError> {
        let Some(m) = self.members.list.members.get_mut(&req.id) else {
            return Err(KvError::MemberNotFound);
        };
        m.name.clone_from(&req.name);
        m.client_urls.clone_from(&req.client_urls);
        if m.peer_urls.is_empty() {
            m.peer_urls.clone_from(&req.peer_urls);
        }
        self.members.changed.insert(req.id);
        tell(&mut self.sink, &self.members.list);
        Ok(OpResponse::Member)
    }

    /// Changes a member's peer URLs.
    pub(crate) fn member_update(
        &mut self,
        req: &MemberUpdateRequest,
    ) -> Result<OpResponse, KvError> {
        let taken = self
            .members
            .list
            .members
            .values()
            .filter(|m| m.id != req.id)
            .any(|m| m.peer_urls.iter().any(|u| req.peer_urls.contains(u)));
        if taken {
            return Err(KvError::PeerUrlExists);
        }
        let Some(m) = self.members.list.members.get_mut(&req.id) else {
            return Err(KvError::MemberNotFound);
        };
        m.peer_urls.clone_from(&req.peer_urls);
        self.members.changed.insert(req.id);
        tell(&mut self.sink, &self.members.list);
        Ok(OpResponse::Member)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dengine_core::{ConfChangeTransition, EntryId, LogIndex, NodeId, Term};
    use dengine_runtime::StateMachine;

    fn info(id: u64, url: &str) -> MemberInfo {
        MemberInfo {
            id,
            name: String::new(),
            peer_urls: vec![url.into()],
            client_urls: Vec::new(),
        }
    }

    fn change(steps: Vec<ConfChangeStep>, added: &[MemberInfo]) -> ConfChange {
        ConfChange {
            transition: ConfChangeTransition::Auto,
            steps,
            context: if added.is_empty() {
                Vec::new()
            } else {
                encode_context(added)
            },
        }
    }

    fn conf(voters: &[u64], learners: &[u64]) -> ConfState {
        ConfState {
            voters: voters.iter().map(|&i| NodeId(i)).collect(),
            learners: learners.iter().map(|&i| NodeId(i)).collect(),
            ..ConfState::default()
        }
    }

    fn at(i: u64) -> EntryId {
        EntryId {
            term: Term(1),
            index: LogIndex(i),
        }
    }

    fn apply(kv: &mut KvStateMachine, cmd: KvCommand) -> Result<KvResponse, KvError> {
        kv.apply(at(100), &cmd.encode())
    }

    #[test]
    fn changes_publishes_and_updates_are_recorded_and_survive_a_snapshot() {
        let mut kv = KvStateMachine::in_memory();
        let first = [info(1, "http://a:1"), info(2, "http://b:1")];
        let boot = change(
            vec![
                ConfChangeStep::AddVoter(NodeId(1)),
                ConfChangeStep::AddVoter(NodeId(2)),
            ],
            &first,
        );
        kv.apply_membership(at(1), &boot, &conf(&[1, 2], &[]));
        assert_eq!(kv.members().members.len(), 2);
        let attrs = MemberAttrsRequest {
            id: 1,
            name: "a".into(),
            peer_urls: vec!["http://ignored:1".into()],
            client_urls: vec!["http://a:2".into()],
        };
        apply(&mut kv, KvCommand::MemberAttrs(attrs.clone())).expect("publish");
        let a = &kv.members().members[&1];
        assert_eq!(
            (a.name.as_str(), a.peer_urls[0].as_str()),
            ("a", "http://a:1")
        );
        assert_eq!(a.client_urls, ["http://a:2"]);
        // An unknown member cannot publish; a taken peer URL is refused.
        let stranger = MemberAttrsRequest { id: 9, ..attrs };
        assert_eq!(
            apply(&mut kv, KvCommand::MemberAttrs(stranger)),
            Err(KvError::MemberNotFound)
        );
        let clash = MemberUpdateRequest {
            id: 2,
            peer_urls: vec!["http://a:1".into()],
        };
        assert_eq!(
            apply(&mut kv, KvCommand::MemberUpdate(clash)),
            Err(KvError::PeerUrlExists)
        );
        let moved = MemberUpdateRequest {
            id: 2,
            peer_urls: vec!["http://b:9".into()],
        };
        apply(&mut kv, KvCommand::MemberUpdate(moved)).expect("update");
        // A learner joins; the name it published stays when it is promoted.
        let add = change(
            vec![ConfChangeStep::AddLearner(NodeId(3))],
            &[info(3, "http://c:1")],
        );
        kv.apply_membership(at(5), &add, &conf(&[1, 2], &[3]));
        let promote = change(vec![ConfChangeStep::AddVoter(NodeId(3))], &[]);
        kv.apply_membership(at(6), &promote, &conf(&[1, 2, 3], &[]));
        let remove = change(vec![ConfChangeStep::Remove(NodeId(2))], &[]);
        kv.apply_membership(at(7), &remove, &conf(&[1, 3], &[]));
        kv.flush(LogIndex(7)).expect("flush");
        let want = kv.members().clone();
        assert_eq!(want.members.keys().copied().collect::<Vec<_>>(), [1, 3]);
        assert_eq!(want.removed, BTreeSet::from([2]));
        assert_eq!(want.members[&3].peer_urls, ["http://c:1"]);

        let mut snap = Vec::new();
        kv.snapshot(&mut snap).expect("snapshot");
        let mut other = KvStateMachine::in_memory();
        other.restore(&mut snap.as_slice()).expect("restore");
        assert_eq!(other.members(), &want);
    }

    #[test]
    fn a_context_that_does_not_decode_changes_nothing_but_the_removals() {
        let mut kv = KvStateMachine::in_memory();
        let mut bad = change(vec![ConfChangeStep::AddVoter(NodeId(1))], &[]);
        bad.context = vec![CONTEXT_VERSION, 0xff, 0xff];
        kv.apply_membership(at(1), &bad, &conf(&[1], &[]));
        assert!(kv.members().members.is_empty());
        bad.context = vec![7];
        kv.apply_membership(at(2), &bad, &conf(&[1], &[]));
        assert!(kv.members().members.is_empty());
    }
}

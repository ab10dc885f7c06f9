//! Leases in the store: which exist, their granted time to live, and
//! their keys. Time itself is not here: a lease's clock runs on the
//! members (the server's lessor), told of every grant, renewal and
//! revocation through the [`EventSink`]; the leader proposes
//! [`KvCommand::LeaseRevoke`] when a lease expires, so every member
//! deletes the same keys at the same revision.
//!
//! Each lease is a record `l ‖ id (u64, big-endian)` → sealed `1 ‖ ttl
//! (i64, little-endian)`; its keys are the keys whose current value names
//! it (rebuilt from the index when the store opens).

use std::collections::{BTreeMap, BTreeSet};

use crate::KvError;
use crate::backend::Change;
use crate::events::{EventSink, LeaseChange};
use crate::index::Index;
use crate::store::KvStateMachine;
use crate::types::*;

/// Backend key prefix of lease records, and the end of their range.
pub(crate) const LEASE_PREFIX: u8 = b'l';
pub(crate) const LEASES_END: &[u8] = b"m";
const LEASE_RECORD_VERSION: u8 = 1;

/// One lease.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Lease {
    pub(crate) ttl: i64,
    pub(crate) keys: BTreeSet<Vec<u8>>,
}

/// Every lease, and the changes to write at the next flush.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    pub(crate) by_id: BTreeMap<i64, Lease>,
    /// Lease id → its TTL (`None`: removed), since the last flush.
    pub(crate) pending: BTreeMap<i64, Option<i64>>,
}

pub(crate) fn lease_key(id: i64) -> Vec<u8> {
    let mut k = vec![LEASE_PREFIX];
    k.extend_from_slice(&(id as u64).to_be_bytes());
    k
}

pub(crate) fn encode_lease(ttl: i64) -> Vec<u8> {
    let mut body = vec![LEASE_RECORD_VERSION];
    body.extend_from_slice(&ttl.to_le_bytes());
    dengine_core::codec::seal(&body)
}

/// Decodes a lease record: (id, ttl).
pub(crate) fn decode_lease(k: &[u8], v: &[u8]) -> Result<(i64, i64), KvError> {
    let bad = |what: &str| KvError::Storage(format!("a lease record is corrupt: {what}"));
    let id = match k {
        [LEASE_PREFIX, id @ ..] => <[u8; 8]>::try_from(id).map_err(|_| bad("its key"))?,
        _ => return Err(bad("its key")),
    };
    let body = dengine_core::codec::open(v).map_err(|e| bad(&e.to_string()))?;
    match body {
        [LEASE_RECORD_VERSION, ttl @ ..] => {
            let ttl = <[u8; 8]>::try_from(ttl).map_err(|_| bad("its length"))?;
            Ok((u64::from_be_bytes(id) as i64, i64::from_le_bytes(ttl)))
        }
        [v, ..] => Err(KvError::Storage(format!(
            "a lease record has format version {v}, which this program does not read (it \
             reads version {LEASE_RECORD_VERSION})"
        ))),
        [] => Err(bad("empty")),
    }
}

impl Leases {
    /// Attaches every key of the index whose current value names a lease.
    pub(crate) fn attach_all(&mut self, index: &Index) {
        for (key, h) in index.iter() {
            if let Some(c) = h.current().filter(|c| c.lease != 0)
                && let Some(l) = self.by_id.get_mut(&c.lease)
            {
                l.keys.insert(key.to_vec());
            }
        }
    }

    /// Moves `key` from lease `from` to lease `to` (0: none).
    pub(crate) fn reattach(&mut self, key: &[u8], from: i64, to: i64) {
        if from == to {
            return;
        }
        if let Some(l) = self.by_id.get_mut(&from) {
            l.keys.remove(key);
        }
        if let Some(l) = self.by_id.get_mut(&to) {
            l.keys.insert(key.to_vec());
        }
    }

    /// The changes to write at a flush.
    pub(crate) fn take_changes(&mut self, out: &mut Vec<Change>) {
        for (id, ttl) in std::mem::take(&mut self.pending) {
            out.push(match ttl {
                Some(ttl) => Change::Put(lease_key(id), encode_lease(ttl)),
                None => Change::Remove(lease_key(id)),
            });
        }
    }
}

fn tell(sink: &mut Option<Box<dyn EventSink>>, change: LeaseChange) {
    if let Some(s) = sink {
        s.lease(change);
    }
}

impl KvStateMachine {
    pub(crate) fn lease_grant(&mut self, req: &LeaseGrantRequest) -> Result<OpResponse, KvError> {
        if req.id <= 0 {
            return Err(KvError::InvalidRequest(format!(
                "lease ID {} (a lease ID is positive)",
                req.id
            )));
        }
        if self.leases.by_id.contains_key(&req.id) {
            return Err(KvError::LeaseExists);
        }
        self.leases.by_id.insert(
            req.id,
            Lease {
                ttl: req.ttl,
                keys: BTreeSet::new(),
            },
        );
        self.leases.pending.insert(req.id, Some(req.ttl));
        tell(
            &mut self.sink,
            LeaseChange::Granted {
                id: req.id,
                ttl: req.ttl,
            },
        );
        Ok(OpResponse::LeaseGrant {
            id: req.id,
            ttl: req.ttl,
        })
    }

    /// Revokes lease `id`, deleting its keys at revision `main`; returns
    /// whether a key was deleted.
    pub(crate) fn lease_revoke(&mut self, main: i64, id: i64) -> Result<bool, KvError> {
        let Some(lease) = self.leases.by_id.remove(&id) else {
            return Err(KvError::LeaseNotFound);
        };
        self.leases.pending.insert(id, None);
        for key in &lease.keys {
            self.delete(
                main,
                &DeleteRangeRequest {
                    key: key.clone(),
                    range_end: Vec::new(),
                    prev_kv: false,
                },
            )?;
        }
        tell(&mut self.sink, LeaseChange::Revoked { id });
        Ok(!lease.keys.is_empty())
    }

    pub(crate) fn lease_keep_alive(&mut self, id: i64) -> OpResponse {
        match self.leases.by_id.get(&id) {
            Some(l) => {
                let ttl = l.ttl;
                tell(&mut self.sink, LeaseChange::Renewed { id, ttl });
                OpResponse::LeaseKeepAlive { id, ttl }
            }
            None => OpResponse::LeaseKeepAlive { id, ttl: 0 },
        }
    }

    /// Whether a lease with this ID exists (0, no lease, always does).
    pub(crate) fn lease_exists(&self, id: i64) -> bool {
        id == 0 || self.leases.by_id.contains_key(&id)
    }

    /// How many leases there are.
    pub fn lease_count(&self) -> usize {
        self.leases.by_id.len()
    }

    /// Every lease: (ID, granted TTL in seconds), by ID.
    pub fn leases(&self) -> Vec<(i64, i64)> {
        self.leases
            .by_id
            .iter()
            .map(|(&id, l)| (id, l.ttl))
            .collect()
    }

    /// A lease's granted TTL and its keys, if it exists.
    pub fn lease(&self, id: i64) -> Option<(i64, Vec<Vec<u8>>)> {
        self.leases
            .by_id
            .get(&id)
            .map(|l| (l.ttl, l.keys.iter().cloned().collect()))
    }
}

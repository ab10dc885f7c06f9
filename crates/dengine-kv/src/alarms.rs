//! Alarms, as etcd raises them: replicated, so every member refuses the
//! same writes. While a `NOSPACE` alarm is raised (a member's store grew
//! past its space quota), the store refuses what would make it grow: puts,
//! transactions with a put in either branch, lease grants; reads, deletes
//! and compactions go on, so an operator can free space and disarm it.
//!
//! Each alarm is a record `a ‖ member (u64, big-endian) ‖ kind (u8)` with
//! an empty sealed body.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::KvError;
use crate::backend::Change;
use crate::store::KvStateMachine;
use crate::types::*;

/// Backend key prefix of alarm records, and the end of their range.
pub(crate) const ALARM_PREFIX: u8 = b'a';
pub(crate) const ALARMS_END: &[u8] = b"b";

/// What an alarm is about (etcd's `AlarmType`, same numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AlarmKind {
    /// A member's store is past its space quota.
    NoSpace,
    /// A member found its store differs from the others'.
    Corrupt,
}

impl AlarmKind {
    /// etcd's number for it.
    pub fn code(self) -> i32 {
        match self {
            AlarmKind::NoSpace => 1,
            AlarmKind::Corrupt => 2,
        }
    }

    /// The kind of etcd's number (`None` for 0, etcd's `NONE`, and
    /// unknown numbers).
    pub fn from_code(code: i32) -> Option<AlarmKind> {
        match code {
            1 => Some(AlarmKind::NoSpace),
            2 => Some(AlarmKind::Corrupt),
            _ => None,
        }
    }
}

/// Raises or clears one member's alarm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmRequest {
    /// Raise (`true`) or clear it.
    pub activate: bool,
    /// The member it is about.
    pub member: u64,
    /// What it is about.
    pub kind: AlarmKind,
}

/// The raised alarms, and those changed since the last flush.
#[derive(Debug, Default)]
pub(crate) struct Alarms {
    pub(crate) raised: BTreeSet<(u64, AlarmKind)>,
    pub(crate) changed: BTreeSet<(u64, AlarmKind)>,
}

fn alarm_key(member: u64, kind: AlarmKind) -> Vec<u8> {
    let mut k = vec![ALARM_PREFIX];
    k.extend_from_slice(&member.to_be_bytes());
    k.push(kind.code() as u8);
    k
}

/// Decodes an alarm record's key.
pub(crate) fn decode_alarm(k: &[u8], v: &[u8]) -> Result<(u64, AlarmKind), KvError> {
    let bad = |what: &str| KvError::Storage(format!("an alarm record is corrupt: {what}"));
    dengine_core::codec::open(v).map_err(|e| bad(&e.to_string()))?;
    match k {
        [ALARM_PREFIX, rest @ ..] if rest.len() == 9 => {
            let mut id = [0u8; 8];
            id.copy_from_slice(&rest[..8]);
            let kind = AlarmKind::from_code(i32::from(rest[8])).ok_or_else(|| bad("its kind"))?;
            Ok((u64::from_be_bytes(id), kind))
        }
        _ => Err(bad("its key")),
    }
}

/// The snapshot form of an alarm.
pub(crate) fn encode_for_snapshot(member: u64, kind: AlarmKind) -> [u8; 9] {
    let mut b = [0u8; 9];
    b[..8].copy_from_slice(&member.to_le_bytes());
    b[8] = kind.code() as u8;
    b
}

/// An alarm from its snapshot form.
pub(crate) fn decode_from_snapshot(b: [u8; 9]) -> Option<(u64, AlarmKind)> {
    let mut id = [0u8; 8];
    id.copy_from_slice(&b[..8]);
    AlarmKind::from_code(i32::from(b[8])).map(|k| (u64::from_le_bytes(id), k))
}

impl Alarms {
    /// The changes to write at a flush.
    pub(crate) fn take_changes(&mut self, out: &mut Vec<Change>) {
        for (member, kind) in std::mem::take(&mut self.changed) {
            let key = alarm_key(member, kind);
            out.push(if self.raised.contains(&(member, kind)) {
                Change::Put(key, dengine_core::codec::seal(&[]))
            } else {
                Change::Remove(key)
            });
        }
    }

    /// Whether an alarm of `kind` is raised for any member (`NoSpace`:
    /// writes that grow the store are refused; `Corrupt`: every write).
    pub(crate) fn any(&self, kind: AlarmKind) -> bool {
        self.raised.iter().any(|(_, k)| *k == kind)
    }
}

/// Whether a transaction puts anything, in either branch, at any depth
/// (etcd's quota counts both branches).
fn txn_puts(t: &TxnRequest) -> bool {
    t.success.iter().chain(&t.failure).any(|op| match op {
        TxnOp::Put(_) => true,
        TxnOp::Txn(inner) => txn_puts(inner),
        TxnOp::Range(_) | TxnOp::DeleteRange(_) => false,
    })
}

/// Whether `cmd` could make the store grow (what a `NOSPACE` alarm
/// refuses).
pub fn grows(cmd: &KvCommand) -> bool {
    match cmd {
        KvCommand::Put(_) | KvCommand::LeaseGrant(_) => true,
        KvCommand::Txn(t) => txn_puts(t),
        KvCommand::Authorized(a) => grows(&a.command),
        _ => false,
    }
}

impl KvStateMachine {
    /// The raised alarms: (member, kind), by member.
    pub fn alarms(&self) -> Vec<(u64, AlarmKind)> {
        self.alarms.raised.iter().copied().collect()
    }

    /// Refuses `cmd` while a `NOSPACE` alarm is raised and it would grow
    /// the store (etcd's `applierV3Capped`).
    pub(crate) fn check_space(&self, cmd: &KvCommand) -> Result<(), KvError> {
        self.refuse_if_no_space(grows(cmd))
    }

    /// Refuses a command that `grows` the store while a `NOSPACE` alarm
    /// is raised.
    pub(crate) fn refuse_if_no_space(&self, grows: bool) -> Result<(), KvError> {
        if grows && self.alarms.any(AlarmKind::NoSpace) {
            return Err(KvError::NoSpace);
        }
        Ok(())
    }

    /// Refuses `cmd` while a `CORRUPT` alarm is raised and it is one of
    /// the requests etcd's `applierV3Corrupt` refuses: puts, deletes,
    /// transactions, compactions, lease grants and revokes. Reads are not
    /// applied, so they go on; alarms, members and auth go on too.
    pub(crate) fn check_corrupt(&self, cmd: &KvCommand) -> Result<(), KvError> {
        let refused = matches!(
            cmd,
            KvCommand::Put(_)
                | KvCommand::DeleteRange(_)
                | KvCommand::Txn(_)
                | KvCommand::Compact(_)
                | KvCommand::LeaseGrant(_)
                | KvCommand::LeaseRevoke(_)
        );
        self.refuse_if_corrupt(refused)
    }

    /// Refuses a command etcd's `applierV3Corrupt` would (`refused`)
    /// while a `CORRUPT` alarm is raised.
    pub(crate) fn refuse_if_corrupt(&self, refused: bool) -> Result<(), KvError> {
        if refused && self.alarms.any(AlarmKind::Corrupt) {
            return Err(KvError::Corrupt);
        }
        Ok(())
    }

    /// Raises or clears an alarm; answers the alarms it changed (etcd
    /// answers the one raised, or the one cleared if it was raised).
    pub(crate) fn alarm(&mut self, req: &AlarmRequest) -> OpResponse {
        let key = (req.member, req.kind);
        let changed = if req.activate {
            self.alarms.raised.insert(key)
        } else {
            self.alarms.raised.remove(&key)
        };
        if changed {
            self.alarms.changed.insert(key);
            // Once per change, on every member (as it applies it).
            let member = format!("{:x}", req.member);
            if req.activate {
                tracing::warn!(member, alarm = ?req.kind, "alarm raised");
            } else {
                tracing::info!(member, alarm = ?req.kind, "alarm disarmed");
            }
        }
        let answered = if req.activate || changed {
            vec![key]
        } else {
            Vec::new()
        };
        OpResponse::Alarm { alarms: answered }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dengine_runtime::{EntryId, LogIndex, StateMachine, Term};

    fn apply(kv: &mut KvStateMachine, cmd: KvCommand) -> Result<KvResponse, KvError> {
        let at = EntryId {
            term: Term(1),
            index: LogIndex(1),
        };
        kv.apply(at, &cmd.encode())
    }

    fn put(k: &str) -> PutRequest {
        PutRequest {
            key: k.as_bytes().to_vec(),
            value: b"v".to_vec(),
            ..PutRequest::default()
        }
    }

    #[test]
    fn corrupt_refuses_every_write_until_disarmed() {
        let mut kv = KvStateMachine::in_memory();
        apply(&mut kv, KvCommand::Put(put("a"))).expect("put");
        let mut alarm = AlarmRequest {
            activate: true,
            member: 9,
            kind: AlarmKind::Corrupt,
        };
        apply(&mut kv, KvCommand::Alarm(alarm.clone())).expect("raise");
        let del = DeleteRangeRequest {
            key: b"a".to_vec(),
            range_end: Vec::new(),
            prev_kv: false,
        };
        let refused = [
            KvCommand::Put(put("b")),
            KvCommand::DeleteRange(del.clone()),
            KvCommand::Compact(CompactRequest { revision: 2 }),
            KvCommand::LeaseGrant(LeaseGrantRequest { id: 1, ttl: 5 }),
            KvCommand::LeaseRevoke(LeaseRevokeRequest { id: 1 }),
            KvCommand::Txn(TxnRequest {
                compare: Vec::new(),
                success: Vec::new(),
                failure: Vec::new(),
            }),
        ];
        for cmd in refused {
            assert_eq!(
                apply(&mut kv, cmd.clone()),
                Err(KvError::Corrupt),
                "{cmd:?}"
            );
        }
        assert_eq!(kv.revision(), 2, "nothing was written");
        alarm.activate = false;
        apply(&mut kv, KvCommand::Alarm(alarm)).expect("disarm");
        apply(&mut kv, KvCommand::DeleteRange(del)).expect("delete after the disarm");
    }

    #[test]
    fn no_space_refuses_growth_only_until_disarmed_and_survives_a_snapshot() {
        let mut kv = KvStateMachine::in_memory();
        apply(&mut kv, KvCommand::Put(put("a"))).expect("put");
        let raise = AlarmRequest {
            activate: true,
            member: 7,
            kind: AlarmKind::NoSpace,
        };
        let r = apply(&mut kv, KvCommand::Alarm(raise.clone())).expect("raise");
        assert_eq!(
            r.op,
            OpResponse::Alarm {
                alarms: vec![(7, AlarmKind::NoSpace)]
            }
        );
        assert_eq!(
            apply(&mut kv, KvCommand::Put(put("b"))),
            Err(KvError::NoSpace)
        );
        let grant = LeaseGrantRequest { id: 1, ttl: 5 };
        assert_eq!(
            apply(&mut kv, KvCommand::LeaseGrant(grant)),
            Err(KvError::NoSpace)
        );
        let nested = TxnRequest {
            compare: Vec::new(),
            success: Vec::new(),
            failure: vec![TxnOp::Txn(TxnRequest {
                compare: Vec::new(),
                success: vec![TxnOp::Put(put("c"))],
                failure: Vec::new(),
            })],
        };
        assert_eq!(
            apply(&mut kv, KvCommand::Txn(nested)),
            Err(KvError::NoSpace)
        );
        // Deletes and compactions go on.
        let del = DeleteRangeRequest {
            key: b"a".to_vec(),
            range_end: Vec::new(),
            prev_kv: false,
        };
        apply(&mut kv, KvCommand::DeleteRange(del)).expect("delete");
        apply(&mut kv, KvCommand::Compact(CompactRequest { revision: 3 })).expect("compact");
        kv.flush(LogIndex(5)).expect("flush");

        let mut snap = Vec::new();
        kv.snapshot(&mut snap).expect("snapshot");
        let mut other = KvStateMachine::in_memory();
        other.restore(&mut snap.as_slice()).expect("restore");
        assert_eq!(other.alarms(), [(7, AlarmKind::NoSpace)]);
        assert_eq!(
            apply(&mut other, KvCommand::Put(put("b"))),
            Err(KvError::NoSpace)
        );

        let clear = AlarmRequest {
            activate: false,
            ..raise
        };
        let r = apply(&mut other, KvCommand::Alarm(clear.clone())).expect("clear");
        assert_eq!(
            r.op,
            OpResponse::Alarm {
                alarms: vec![(7, AlarmKind::NoSpace)]
            }
        );
        let r = apply(&mut other, KvCommand::Alarm(clear)).expect("clear again");
        assert_eq!(r.op, OpResponse::Alarm { alarms: Vec::new() });
        apply(&mut other, KvCommand::Put(put("b"))).expect("put after disarm");
    }
}

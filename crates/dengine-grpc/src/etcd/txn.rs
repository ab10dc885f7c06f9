//! Requests of etcd's KV API to store commands, checked first as etcd
//! checks them (`checkPutRequest`, `checkTxnRequest`, `checkIntervals`),
//! and the store's answers back to etcd's form.

use std::collections::BTreeSet;

use dengine_kv::{
    Compare, CompareOp, CompareTarget, DeleteRangeRequest, KvCommand, OpResponse, PutRequest,
    TxnOp, TxnRequest,
};
use dengine_proto::etcdserverpb as pb;
use dengine_proto::etcdserverpb::compare::{CompareResult, CompareTarget as PbTarget, TargetUnion};
use dengine_proto::etcdserverpb::request_op::Request as PbOp;
use dengine_proto::etcdserverpb::response_op::Response as PbResp;
use tonic::Status;

use super::errors;
use super::range;

/// Checks a put as etcd does.
pub fn check_put(r: &pb::PutRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(errors::empty_key());
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(errors::value_provided());
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(errors::lease_provided());
    }
    Ok(())
}

/// Checks a delete as etcd does.
pub fn check_delete(r: &pb::DeleteRangeRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(errors::empty_key());
    }
    Ok(())
}

/// Checks a txn as etcd does: the number of operations, empty keys
/// (recursively), then, for each branch, that no key is written twice.
pub fn check_txn(r: &pb::TxnRequest, max_ops: usize) -> Result<(), Status> {
    check_txn_request(r, max_ops as i64)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_txn_request(r: &pb::TxnRequest, max_ops: i64) -> Result<(), Status> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len()) as i64;
    if opc > max_ops {
        return Err(errors::too_many_ops());
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(errors::empty_key());
    }
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(PbOp::RequestRange(r)) => range::check(r)?,
            Some(PbOp::RequestPut(p)) => check_put(p)?,
            Some(PbOp::RequestDeleteRange(d)) => check_delete(d)?,
            Some(PbOp::RequestTxn(t)) => check_txn_request(t, max_ops - opc)?,
            None => return Err(errors::key_not_found()),
        }
    }
    Ok(())
}

/// A key range as etcd's interval tree sees a delete: `[key, end)`, or
/// the point `key`; an end of `\0` means "to the end of the key space".
///
/// On purpose stricter than etcd 3.4 here: etcd builds the interval of a
/// delete to the end of the key space as `[key, "\0")`, which is empty,
/// so it lets such a delete and a put of a key inside it into one txn
/// (etcd-io/etcd#22376: the key is deleted and written at one revision,
/// and a compaction can then lose its value; the fix is etcd-io/etcd#22395).
/// dengine refuses that txn with "duplicate key", as for any other delete.
#[derive(Clone, Debug)]
struct Interval {
    start: Vec<u8>,
    /// `None`: a single key. `Some(empty)`: unbounded.
    end: Option<Vec<u8>>,
}

impl Interval {
    fn of(key: &[u8], range_end: &[u8]) -> Interval {
        match range_end {
            [] => Interval {
                start: key.to_vec(),
                end: None,
            },
            [0] => Interval {
                start: key.to_vec(),
                end: Some(Vec::new()),
            },
            end => Interval {
                start: key.to_vec(),
                end: Some(end.to_vec()),
            },
        }
    }

    fn contains(&self, k: &[u8]) -> bool {
        match &self.end {
            None => k == self.start.as_slice(),
            Some(e) if e.is_empty() => self.start.as_slice() <= k,
            Some(e) => self.start.as_slice() <= k && k < e.as_slice(),
        }
    }
}

/// etcd's `checkIntervals`: within one branch (nested txns included), a
/// key may be put once, and not also be deleted; a key put in both
/// branches of a nested txn is fine.
fn check_intervals(ops: &[pb::RequestOp]) -> Result<(BTreeSet<Vec<u8>>, Vec<Interval>), Status> {
    let mut dels: Vec<Interval> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(PbOp::RequestDeleteRange(d)) => Some(Interval::of(&d.key, &d.range_end)),
            _ => None,
        })
        .collect();
    let deleted = |dels: &[Interval], k: &[u8]| dels.iter().any(|i| i.contains(k));
    let mut puts: BTreeSet<Vec<u8>> = BTreeSet::new();
    for op in ops {
        let Some(PbOp::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(errors::duplicate_key());
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if puts.contains(k) && !puts_then.contains(k) {
                return Err(errors::duplicate_key());
            }
            if deleted(&dels, k) {
                return Err(errors::duplicate_key());
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(PbOp::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || deleted(&dels, &p.key) {
            return Err(errors::duplicate_key());
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

/// A put as a store request.
pub fn put_to_store(p: pb::PutRequest) -> PutRequest {
    PutRequest {
        key: p.key,
        value: p.value,
        prev_kv: p.prev_kv,
        ignore_value: p.ignore_value,
        ignore_lease: p.ignore_lease,
        lease: p.lease,
    }
}

/// A delete as a store request.
pub fn delete_to_store(d: pb::DeleteRangeRequest) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: d.key,
        range_end: d.range_end,
        prev_kv: d.prev_kv,
    }
}

fn compare_to_store(c: pb::Compare) -> Result<Compare, Status> {
    let op = match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => CompareOp::Equal,
        Ok(CompareResult::Greater) => CompareOp::Greater,
        Ok(CompareResult::Less) => CompareOp::Less,
        Ok(CompareResult::NotEqual) => CompareOp::NotEqual,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "etcdserver: unknown compare result {}",
                c.result
            )));
        }
    };
    // etcd reads the union member the target names; a union that holds
    // another member (or none) compares against that member's zero.
    let u = c.target_union;
    let target = match PbTarget::try_from(c.target) {
        Ok(PbTarget::Version) => CompareTarget::Version(match u {
            Some(TargetUnion::Version(v)) => v,
            _ => 0,
        }),
        Ok(PbTarget::Create) => CompareTarget::CreateRevision(match u {
            Some(TargetUnion::CreateRevision(v)) => v,
            _ => 0,
        }),
        Ok(PbTarget::Mod) => CompareTarget::ModRevision(match u {
            Some(TargetUnion::ModRevision(v)) => v,
            _ => 0,
        }),
        Ok(PbTarget::Value) => CompareTarget::Value(match u {
            Some(TargetUnion::Value(v)) => v,
            _ => Vec::new(),
        }),
        Ok(PbTarget::Lease) => CompareTarget::Lease(match u {
            Some(TargetUnion::Lease(v)) => v,
            _ => 0,
        }),
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "etcdserver: unknown compare target {}",
                c.target
            )));
        }
    };
    Ok(Compare {
        key: c.key,
        range_end: c.range_end,
        target,
        op,
    })
}

/// A (checked) txn as a store request. Ranges inside keep their etcd form
/// alongside, to finish their answers as [`range::finish`] does.
pub fn txn_to_store(t: pb::TxnRequest) -> Result<TxnRequest, Status> {
    let ops = |ops: Vec<pb::RequestOp>| -> Result<Vec<TxnOp>, Status> {
        ops.into_iter()
            .map(|op| match op.request {
                Some(PbOp::RequestRange(r)) => Ok(TxnOp::Range(range::to_store(&r))),
                Some(PbOp::RequestPut(p)) => Ok(TxnOp::Put(put_to_store(p))),
                Some(PbOp::RequestDeleteRange(d)) => Ok(TxnOp::DeleteRange(delete_to_store(d))),
                Some(PbOp::RequestTxn(t)) => Ok(TxnOp::Txn(txn_to_store(t)?)),
                None => Err(errors::key_not_found()),
            })
            .collect()
    };
    Ok(TxnRequest {
        compare: t
            .compare
            .into_iter()
            .map(compare_to_store)
            .collect::<Result<_, _>>()?,
        success: ops(t.success)?,
        failure: ops(t.failure)?,
    })
}

/// The header of a response inside a txn: only the revision, as etcd.
fn inner_header(revision: i64) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// Whether the ops answered by `responses` changed the store: a put
/// always does, a delete when it deleted a key.
fn changes(responses: &[OpResponse]) -> bool {
    responses.iter().any(|r| match r {
        OpResponse::Put { .. } => true,
        OpResponse::DeleteRange { deleted, .. } => *deleted > 0,
        OpResponse::Txn { responses, .. } => changes(responses),
        _ => false,
    })
}

/// The revision each op inside a txn reports, as etcd's write txn gives
/// it: the revision before the txn until the txn has changed something,
/// the txn's own revision from then on (so a range before the txn's
/// first write says the revision it read, one after says the new one).
struct OpRevisions {
    before: i64,
    changed: bool,
}

impl OpRevisions {
    fn now(&self) -> i64 {
        self.before + i64::from(self.changed)
    }
}

/// The store's answer to the txn `req` in etcd's form; `revision` is the
/// store's revision after it.
pub fn txn_response(
    req: &pb::TxnRequest,
    succeeded: bool,
    responses: Vec<OpResponse>,
    revision: i64,
) -> (bool, Vec<pb::ResponseOp>) {
    let mut revisions = OpRevisions {
        before: revision - i64::from(changes(&responses)),
        changed: false,
    };
    (
        succeeded,
        respond(req, succeeded, responses, &mut revisions),
    )
}

/// The answers of `req`'s chosen branch, in order (nested txns depth
/// first, as they ran).
fn respond(
    req: &pb::TxnRequest,
    succeeded: bool,
    responses: Vec<OpResponse>,
    revisions: &mut OpRevisions,
) -> Vec<pb::ResponseOp> {
    let branch = if succeeded {
        &req.success
    } else {
        &req.failure
    };
    branch
        .iter()
        .zip(responses)
        .filter_map(|(op, resp)| {
            let response = match (resp, &op.request) {
                (OpResponse::Range(got), Some(PbOp::RequestRange(r))) => {
                    let (kvs, more, count) = range::finish(r, got);
                    PbResp::ResponseRange(pb::RangeResponse {
                        header: inner_header(revisions.now()),
                        kvs,
                        more,
                        count,
                    })
                }
                (OpResponse::Put { prev_kv }, _) => {
                    revisions.changed = true;
                    PbResp::ResponsePut(pb::PutResponse {
                        header: inner_header(revisions.now()),
                        prev_kv: prev_kv.map(range::kv_to_pb),
                    })
                }
                (OpResponse::DeleteRange { deleted, prev_kvs }, _) => {
                    revisions.changed |= deleted > 0;
                    PbResp::ResponseDeleteRange(pb::DeleteRangeResponse {
                        header: inner_header(revisions.now()),
                        deleted,
                        prev_kvs: prev_kvs.into_iter().map(range::kv_to_pb).collect(),
                    })
                }
                (
                    OpResponse::Txn {
                        succeeded,
                        responses,
                    },
                    Some(PbOp::RequestTxn(inner)),
                ) => PbResp::ResponseTxn(pb::TxnResponse {
                    // etcd leaves a nested txn's header at its zero value.
                    header: inner_header(0),
                    succeeded,
                    responses: respond(inner, succeeded, responses, revisions),
                }),
                // The store answers each op with its own kind; a range
                // answer without its request cannot happen.
                (OpResponse::Range(got), _) => PbResp::ResponseRange(pb::RangeResponse {
                    header: inner_header(revisions.now()),
                    count: got.count,
                    more: got.more,
                    kvs: got.kvs.into_iter().map(range::kv_to_pb).collect(),
                }),
                (OpResponse::Txn { succeeded, .. }, _) => PbResp::ResponseTxn(pb::TxnResponse {
                    header: inner_header(0),
                    succeeded,
                    responses: Vec::new(),
                }),
                // A transaction holds no compaction, lease, member or
                // auth command.
                (
                    OpResponse::Member
                    | OpResponse::Alarm { .. }
                    | OpResponse::Compact
                    | OpResponse::LeaseGrant { .. }
                    | OpResponse::LeaseRevoke
                    | OpResponse::LeaseKeepAlive { .. }
                    | OpResponse::Auth { .. },
                    _,
                ) => return None,
            };
            Some(pb::ResponseOp {
                response: Some(response),
            })
        })
        .collect()
}

/// What [`txn_response`] needs of a txn request: its ranges (to finish
/// their answers) and nested txns; puts and deletes are answered by kind,
/// so their keys and values are not kept (no copy of a txn's values on
/// the write path).
pub fn shape(t: &pb::TxnRequest) -> pb::TxnRequest {
    let ops = |ops: &[pb::RequestOp]| -> Vec<pb::RequestOp> {
        ops.iter()
            .map(|op| pb::RequestOp {
                request: match &op.request {
                    Some(PbOp::RequestRange(r)) => Some(PbOp::RequestRange(r.clone())),
                    Some(PbOp::RequestTxn(t)) => Some(PbOp::RequestTxn(shape(t))),
                    _ => None,
                },
            })
            .collect()
    };
    pb::TxnRequest {
        compare: Vec::new(),
        success: ops(&t.success),
        failure: ops(&t.failure),
    }
}

/// The store command of a txn request.
pub fn txn_command(t: pb::TxnRequest) -> Result<KvCommand, Status> {
    Ok(KvCommand::Txn(txn_to_store(t)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(PbOp::RequestPut(pb::PutRequest {
                key: k.into(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        }
    }

    fn del(k: &str, end: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(PbOp::RequestDeleteRange(pb::DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    fn txn(success: Vec<pb::RequestOp>, failure: Vec<pb::RequestOp>) -> pb::TxnRequest {
        pb::TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }

    fn nested(t: pb::TxnRequest) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(PbOp::RequestTxn(t)),
        }
    }

    fn msg(r: Result<(), Status>) -> String {
        r.err().map(|s| s.message().to_string()).unwrap_or_default()
    }

    #[test]
    fn duplicate_keys_as_etcd() {
        let dup = "etcdserver: duplicate key given in txn request";
        assert_eq!(
            msg(check_txn(&txn(vec![put("a"), put("a")], vec![]), 128)),
            dup
        );
        assert_eq!(
            msg(check_txn(&txn(vec![del("a", "c"), put("b")], vec![]), 128)),
            dup
        );
        assert_eq!(
            msg(check_txn(&txn(vec![del("a", "\0"), put("z")], vec![]), 128)),
            dup
        );
        // Across branches, fine.
        assert_eq!(
            msg(check_txn(&txn(vec![put("a")], vec![put("a")]), 128)),
            ""
        );
        // A nested txn may put a key in both of its branches...
        let inner = txn(vec![put("a")], vec![put("a")]);
        assert_eq!(
            msg(check_txn(&txn(vec![nested(inner.clone())], vec![]), 128)),
            ""
        );
        // ...but not one the outer branch puts too.
        assert_eq!(
            msg(check_txn(&txn(vec![nested(inner), put("a")], vec![]), 128)),
            dup
        );
        let inner = txn(vec![del("a", "")], vec![]);
        assert_eq!(
            msg(check_txn(&txn(vec![nested(inner), put("a")], vec![]), 128)),
            dup
        );
    }

    #[test]
    fn responses_follow_the_shape_without_the_values() {
        let range = pb::RequestOp {
            request: Some(PbOp::RequestRange(pb::RangeRequest {
                key: b"a".to_vec(),
                keys_only: true,
                ..Default::default()
            })),
        };
        let inner = txn(vec![put("x")], vec![range.clone()]);
        let t = txn(vec![put("a"), range, nested(inner)], vec![]);
        let shape = shape(&t);
        // No put survives in the shape.
        assert!(shape.success[0].request.is_none());
        let kv = dengine_kv::KeyValue {
            key: b"a".to_vec(),
            value: b"secret".to_vec(),
            ..Default::default()
        };
        let got = dengine_kv::RangeResponse {
            kvs: vec![kv],
            count: 1,
            more: false,
        };
        let responses = vec![
            OpResponse::Put { prev_kv: None },
            OpResponse::Range(got.clone()),
            OpResponse::Txn {
                succeeded: false,
                responses: vec![OpResponse::Range(got)],
            },
        ];
        let (ok, out) = txn_response(&shape, true, responses, 7);
        assert!(ok);
        assert!(matches!(out[0].response, Some(PbResp::ResponsePut(_))));
        let Some(PbResp::ResponseRange(r)) = &out[1].response else {
            panic!("a range answer");
        };
        assert!(
            r.kvs[0].value.is_empty(),
            "keys_only applied from the shape"
        );
        let Some(PbResp::ResponseTxn(inner)) = &out[2].response else {
            panic!("a nested txn answer");
        };
        assert!(!inner.succeeded);
        let Some(PbResp::ResponseRange(r)) = &inner.responses[0].response else {
            panic!("the failure branch's range");
        };
        assert!(r.kvs[0].value.is_empty());
        assert_eq!(r.header.as_ref().map(|h| h.revision), Some(7));
    }

    /// As etcd 3.4.23 answered the same txn (the differential test's seed
    /// 1 found it): ops before the txn's first change report the revision
    /// before it, ops from the first change on the txn's own, and a
    /// nested txn's header is left at zero.
    #[test]
    fn ops_report_the_revision_they_saw() {
        let range = pb::RequestOp {
            request: Some(PbOp::RequestRange(pb::RangeRequest {
                key: b"a".to_vec(),
                ..Default::default()
            })),
        };
        let inner = txn(vec![range.clone(), del("b", ""), put("c")], vec![]);
        let t = txn(vec![nested(inner), range], vec![]);
        let nothing = dengine_kv::RangeResponse::default();
        let responses = vec![
            OpResponse::Txn {
                succeeded: true,
                responses: vec![
                    OpResponse::Range(nothing.clone()),
                    OpResponse::DeleteRange {
                        deleted: 0,
                        prev_kvs: vec![],
                    },
                    OpResponse::Put { prev_kv: None },
                ],
            },
            OpResponse::Range(nothing),
        ];
        let (_, out) = txn_response(&shape(&t), true, responses, 6);
        let rev = |r: &Option<pb::ResponseHeader>| r.as_ref().map(|h| h.revision);
        let Some(PbResp::ResponseTxn(inner)) = &out[0].response else {
            panic!("a nested txn answer");
        };
        assert_eq!(rev(&inner.header), Some(0));
        let revs: Vec<_> = inner
            .responses
            .iter()
            .map(|r| match &r.response {
                Some(PbResp::ResponseRange(r)) => rev(&r.header),
                Some(PbResp::ResponseDeleteRange(r)) => rev(&r.header),
                Some(PbResp::ResponsePut(r)) => rev(&r.header),
                _ => None,
            })
            .collect();
        assert_eq!(revs, [Some(5), Some(5), Some(6)]);
        let Some(PbResp::ResponseRange(after)) = &out[1].response else {
            panic!("a range answer");
        };
        assert_eq!(rev(&after.header), Some(6));

        // A txn that changes nothing reports its revision everywhere.
        let t = txn(vec![del("b", "")], vec![]);
        let responses = vec![OpResponse::DeleteRange {
            deleted: 0,
            prev_kvs: vec![],
        }];
        let (_, out) = txn_response(&shape(&t), true, responses, 6);
        let Some(PbResp::ResponseDeleteRange(d)) = &out[0].response else {
            panic!("a delete answer");
        };
        assert_eq!(rev(&d.header), Some(6));
    }

    #[test]
    fn limits_and_empty_keys() {
        let many: Vec<_> = (0..129).map(|i| put(&format!("k{i}"))).collect();
        assert_eq!(
            msg(check_txn(&txn(many, vec![]), 128)),
            "etcdserver: too many operations in txn request"
        );
        assert_eq!(
            msg(check_txn(&txn(vec![put("")], vec![]), 128)),
            "etcdserver: key is not provided"
        );
        let empty = pb::RequestOp { request: None };
        assert_eq!(
            msg(check_txn(&txn(vec![empty], vec![]), 128)),
            "etcdserver: key not found"
        );
        let p = pb::PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(msg(check_put(&p)), "etcdserver: value is provided");
    }
}

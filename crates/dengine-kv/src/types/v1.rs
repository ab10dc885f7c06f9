//! Command format version 1, frozen: the types of a [`super::KvCommand`]
//! as they were when version 1 was written, so that its bytes (which stay
//! in logs forever) decode exactly as they did, then convert to today's
//! types. Never change these: postcard writes fields in order and enum
//! variants by index, so any change here changes what old entries mean.
//!
//! Every type the format holds is copied, even those unchanged since
//! (ranges, deletes, comparison operators), so that later changes to
//! today's types can never reach this format by accident. What changed in
//! version 2: a put gained `ignore_value`, `ignore_lease` and `lease`;
//! comparisons gained `Lease`; transaction operations gained `Txn`.

use serde::Deserialize;

/// This format's version (the first byte of an encoded command).
pub(crate) const VERSION: u8 = 1;

#[derive(Deserialize)]
pub(crate) struct RangeRequest {
    key: Vec<u8>,
    range_end: Vec<u8>,
    limit: u64,
    keys_only: bool,
    count_only: bool,
}

#[derive(Deserialize)]
pub(crate) struct PutRequest {
    key: Vec<u8>,
    value: Vec<u8>,
    prev_kv: bool,
}

#[derive(Deserialize)]
pub(crate) struct DeleteRangeRequest {
    key: Vec<u8>,
    range_end: Vec<u8>,
    prev_kv: bool,
}

#[derive(Deserialize)]
pub(crate) enum CompareTarget {
    Version(i64),
    CreateRevision(i64),
    ModRevision(i64),
    Value(Vec<u8>),
}

#[derive(Deserialize)]
pub(crate) enum CompareOp {
    Equal,
    Greater,
    Less,
    NotEqual,
}

#[derive(Deserialize)]
pub(crate) struct Compare {
    key: Vec<u8>,
    range_end: Vec<u8>,
    target: CompareTarget,
    op: CompareOp,
}

#[derive(Deserialize)]
pub(crate) enum TxnOp {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
}

#[derive(Deserialize)]
pub(crate) struct TxnRequest {
    compare: Vec<Compare>,
    success: Vec<TxnOp>,
    failure: Vec<TxnOp>,
}

#[derive(Deserialize)]
pub(crate) enum KvCommand {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
}

impl From<RangeRequest> for super::RangeRequest {
    fn from(r: RangeRequest) -> Self {
        super::RangeRequest {
            key: r.key,
            range_end: r.range_end,
            limit: r.limit,
            keys_only: r.keys_only,
            count_only: r.count_only,
            revision: 0,
        }
    }
}

impl From<PutRequest> for super::PutRequest {
    fn from(p: PutRequest) -> Self {
        super::PutRequest {
            key: p.key,
            value: p.value,
            prev_kv: p.prev_kv,
            // Version 1 had none of these: etcd's defaults.
            ignore_value: false,
            ignore_lease: false,
            lease: 0,
        }
    }
}

impl From<DeleteRangeRequest> for super::DeleteRangeRequest {
    fn from(d: DeleteRangeRequest) -> Self {
        super::DeleteRangeRequest {
            key: d.key,
            range_end: d.range_end,
            prev_kv: d.prev_kv,
        }
    }
}

impl From<Compare> for super::Compare {
    fn from(c: Compare) -> Self {
        super::Compare {
            key: c.key,
            range_end: c.range_end,
            target: match c.target {
                CompareTarget::Version(v) => super::CompareTarget::Version(v),
                CompareTarget::CreateRevision(v) => super::CompareTarget::CreateRevision(v),
                CompareTarget::ModRevision(v) => super::CompareTarget::ModRevision(v),
                CompareTarget::Value(v) => super::CompareTarget::Value(v),
            },
            op: match c.op {
                CompareOp::Equal => super::CompareOp::Equal,
                CompareOp::Greater => super::CompareOp::Greater,
                CompareOp::Less => super::CompareOp::Less,
                CompareOp::NotEqual => super::CompareOp::NotEqual,
            },
        }
    }
}

impl From<TxnOp> for super::TxnOp {
    fn from(op: TxnOp) -> Self {
        match op {
            TxnOp::Range(r) => super::TxnOp::Range(r.into()),
            TxnOp::Put(p) => super::TxnOp::Put(p.into()),
            TxnOp::DeleteRange(d) => super::TxnOp::DeleteRange(d.into()),
        }
    }
}

impl From<TxnRequest> for super::TxnRequest {
    fn from(t: TxnRequest) -> Self {
        let ops = |ops: Vec<TxnOp>| ops.into_iter().map(Into::into).collect();
        super::TxnRequest {
            compare: t.compare.into_iter().map(Into::into).collect(),
            success: ops(t.success),
            failure: ops(t.failure),
        }
    }
}

impl From<KvCommand> for super::KvCommand {
    fn from(cmd: KvCommand) -> Self {
        match cmd {
            KvCommand::Put(p) => super::KvCommand::Put(p.into()),
            KvCommand::DeleteRange(d) => super::KvCommand::DeleteRange(d.into()),
            KvCommand::Txn(t) => super::KvCommand::Txn(t.into()),
        }
    }
}

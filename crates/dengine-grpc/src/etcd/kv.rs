//! etcd's `KV` service.

use std::sync::Arc;

use dengine_kv::{CompactRequest, KvCommand, OpResponse};
use dengine_proto::etcdserverpb as pb;
use dengine_proto::etcdserverpb::kv_server::Kv;
use tonic::{Request, Response, Status};

use super::{EtcdCore, errors, range, txn};

/// etcd's `KV` service on a key-value node.
#[derive(Clone)]
pub struct KvService {
    core: Arc<EtcdCore>,
}

impl KvService {
    /// The service of `core`'s node.
    pub fn new(core: Arc<EtcdCore>) -> KvService {
        KvService { core }
    }
}

fn unexpected(what: &str) -> Status {
    Status::internal(format!(
        "etcdserver: the store answered a {what} with another kind"
    ))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        self.core.check_has_leader(request.metadata())?;
        let who = self.core.caller(&request).await?;
        let r = request.into_inner();
        range::check(&r)?;
        self.core.check_read(&who, &r.key, &r.range_end)?;
        let q = range::to_store(&r);
        let (revision, got) = self
            .core
            .read(r.serializable, move |kv| {
                kv.range(&q)
                    .map(|got| (kv.revision(), got))
                    .map_err(|e| errors::from_kv(&e))
            })
            .await??;
        let (kvs, more, count) = range::finish(&r, got);
        Ok(Response::new(pb::RangeResponse {
            header: self.core.header(revision),
            kvs,
            more,
            count,
        }))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        self.core.check_has_leader(request.metadata())?;
        let who = self.core.caller(&request).await?;
        let p = request.into_inner();
        txn::check_put(&p)?;
        let resp = self
            .core
            .write_by(&who, KvCommand::Put(txn::put_to_store(p)))
            .await?;
        let OpResponse::Put { prev_kv } = resp.op else {
            return Err(unexpected("put"));
        };
        Ok(Response::new(pb::PutResponse {
            header: self.core.header(resp.revision),
            prev_kv: prev_kv.map(range::kv_to_pb),
        }))
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        self.core.check_has_leader(request.metadata())?;
        let who = self.core.caller(&request).await?;
        let d = request.into_inner();
        txn::check_delete(&d)?;
        let resp = self
            .core
            .write_by(&who, KvCommand::DeleteRange(txn::delete_to_store(d)))
            .await?;
        let OpResponse::DeleteRange { deleted, prev_kvs } = resp.op else {
            return Err(unexpected("delete"));
        };
        Ok(Response::new(pb::DeleteRangeResponse {
            header: self.core.header(resp.revision),
            deleted,
            prev_kvs: prev_kvs.into_iter().map(range::kv_to_pb).collect(),
        }))
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        self.core.check_has_leader(request.metadata())?;
        let who = self.core.caller(&request).await?;
        let t = request.into_inner();
        txn::check_txn(&t, self.core.limits.max_txn_ops)?;
        let shape = txn::shape(&t);
        let cmd = txn::txn_command(t)?;
        let resp = self.core.write_by(&who, cmd).await?;
        let OpResponse::Txn {
            succeeded,
            responses,
        } = resp.op
        else {
            return Err(unexpected("txn"));
        };
        let (succeeded, responses) = txn::txn_response(&shape, succeeded, responses, resp.revision);
        Ok(Response::new(pb::TxnResponse {
            header: self.core.header(resp.revision),
            succeeded,
            responses,
        }))
    }

    /// etcd's `Compact`: the history before the revision is forgotten on
    /// every member, as a command in the log. The store forgets it as the
    /// command applies (its index at once, the records in the same write
    /// as the command's index), so the space is reclaimable when the
    /// answer comes, `physical` or not.
    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        self.core.check_has_leader(request.metadata())?;
        let who = self.core.caller(&request).await?;
        let c = request.into_inner();
        let resp = self
            .core
            .write_by(
                &who,
                KvCommand::Compact(CompactRequest {
                    revision: c.revision,
                }),
            )
            .await?;
        if !matches!(resp.op, OpResponse::Compact) {
            return Err(unexpected("compaction"));
        }
        Ok(Response::new(pb::CompactionResponse {
            header: self.core.header(resp.revision),
        }))
    }
}

//! etcd's `Maintenance` service.

use std::pin::Pin;
use std::sync::Arc;

use dengine_core::NodeId;
use dengine_proto::etcdserverpb as pb;
use dengine_proto::etcdserverpb::maintenance_server::Maintenance;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{ETCD_API_VERSION, EtcdCore, errors};
use crate::backup::{self, BackupHeader};
use dengine_kv::{AlarmKind, AlarmRequest, KvCommand, OpResponse};

/// etcd's `Maintenance` service.
#[derive(Clone)]
pub struct MaintenanceService {
    core: Arc<EtcdCore>,
}

impl MaintenanceService {
    /// The service of `core`'s node.
    pub fn new(core: Arc<EtcdCore>) -> MaintenanceService {
        MaintenanceService { core }
    }
}

impl EtcdCore {
    /// The store's current revision, as this member has applied it.
    pub(super) async fn current_revision(&self) -> Result<i64, Status> {
        self.read(true, |kv| kv.revision()).await
    }
}

/// Bytes of a backup per `SnapshotResponse` (etcd sends 32 KiB).
const SNAPSHOT_CHUNK: usize = 64 * 1024;

/// A file removed when dropped.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    /// etcd's `Alarm`: lists the raised alarms (all, or those of one
    /// kind), or raises or clears one member's alarm (replicated, as every
    /// alarm).
    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        use pb::alarm_request::AlarmAction;
        let req = request.into_inner();
        let kind = AlarmKind::from_code(req.alarm);
        if req.alarm != 0 && kind.is_none() {
            return Err(Status::invalid_argument(format!(
                "etcdserver: unknown alarm type {}",
                req.alarm
            )));
        }
        let (revision, alarms) = match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) => {
                self.core
                    .read(false, move |kv| {
                        let all = kv.alarms();
                        let wanted = all
                            .into_iter()
                            .filter(|(_, k)| kind.is_none_or(|w| w == *k));
                        (kv.revision(), wanted.collect::<Vec<_>>())
                    })
                    .await?
            }
            Ok(action) => {
                let Some(kind) = kind else {
                    // As etcd 3.5: raising or clearing no alarm type does
                    // nothing (3.4 recorded an alarm of type NONE).
                    let revision = self.core.current_revision().await?;
                    return Ok(Response::new(pb::AlarmResponse {
                        header: self.core.header(revision),
                        alarms: Vec::new(),
                    }));
                };
                let cmd = KvCommand::Alarm(AlarmRequest {
                    activate: action == AlarmAction::Activate,
                    member: req.member_id,
                    kind,
                });
                let done = self.core.write(&cmd).await?;
                match done.op {
                    OpResponse::Alarm { alarms } => (done.revision, alarms),
                    _ => (done.revision, Vec::new()),
                }
            }
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "etcdserver: unknown alarm action {}",
                    req.action
                )));
            }
        };
        Ok(Response::new(pb::AlarmResponse {
            header: self.core.header(revision),
            alarms: alarms
                .into_iter()
                .map(|(member_id, kind)| pb::AlarmMember {
                    member_id,
                    alarm: kind.code(),
                })
                .collect(),
        }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let revision = self.core.current_revision().await?;
        let m = self.core.metrics.borrow().clone();
        // Never 0: `etcdctl endpoint status` divides by it.
        let db_size = self.core.quota.measure().max(1) as i64;
        let me = self.core.member_id;
        let mut resp = Response::new(pb::StatusResponse {
            header: self.core.header(revision),
            version: ETCD_API_VERSION.to_string(),
            db_size,
            leader: m.leader.map_or(0, |l| l.0),
            raft_index: m.last_index.0,
            raft_term: m.term.0,
            raft_applied_index: m.applied.0,
            errors: m.fatal.into_iter().collect(),
            // The store keeps no free pages apart: all of it is in use.
            db_size_in_use: db_size,
            is_learner: m.membership.is_learner(me),
        });
        resp.metadata_mut().insert(
            "dengine-version",
            tonic::metadata::MetadataValue::from_static(env!("CARGO_PKG_VERSION")),
        );
        Ok(resp)
    }

    /// etcd's `Defragment`, on this member alone: the store's backend
    /// gives back the space of compacted records (RocksDB compacts its
    /// files; sled and memory reclaim space on their own, so nothing is
    /// left to do).
    async fn defragment(
        &self,
        request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        self.core.require_admin(&request).await?;
        self.core
            .read(true, |kv| kv.defragment())
            .await?
            .map_err(|e| errors::from_kv(&e))?;
        // etcd answers a defragmentation with an empty response, no header.
        Ok(Response::new(pb::DefragmentResponse { header: None }))
    }

    /// etcd's `Hash`: here the hash of the whole history at the current
    /// revision (what `HashKV` with revision 0 gives).
    async fn hash(
        &self,
        request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        self.core.require_admin(&request).await?;
        let h = self
            .core
            .read(true, |kv| kv.hash_kv(0))
            .await?
            .map_err(|e| errors::from_kv(&e))?;
        Ok(Response::new(pb::HashResponse {
            header: self.core.header(h.revision),
            hash: h.hash,
        }))
    }

    /// etcd's `HashKV`: the hash of this member's history up to the
    /// revision, equal on every member that applied the same log.
    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        self.core.require_admin(&request).await?;
        let at = request.into_inner().revision;
        let (h, current) = self
            .core
            .read(true, move |kv| kv.hash_kv(at).map(|h| (h, kv.revision())))
            .await?
            .map_err(|e| errors::from_kv(&e))?;
        Ok(Response::new(pb::HashKvResponse {
            header: self.core.header(current),
            hash: h.hash,
            compact_revision: h.compact_revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    /// etcd's `Snapshot`: a backup of this member's store (see
    /// [`crate::backup`]), written to a file in its data directory by a
    /// read job (so it is the store at one applied index), then streamed
    /// in chunks; the file is removed once sent or when the client goes.
    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.core.require_admin(&request).await?;
        let dir = self
            .core
            .data_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let file = TempFile(dir.join(format!("backup-{}-{nanos}.tmp", std::process::id())));
        let path = file.0.clone();
        let (cluster_id, member_id) = (self.core.cluster_id, self.core.member_id.0);
        // The store at one applied index: a view taken in a read job and
        // written after it, beside the apply worker (or, on a backend
        // without a reader, written in the read job).
        let taken = self
            .core
            .read(true, move |kv| {
                let header = BackupHeader {
                    cluster_id,
                    member_id,
                    revision: kv.revision(),
                };
                match kv.detached_snapshot() {
                    Some(view) => Ok(Taken::View(path, header, view)),
                    None => backup::write_file(&path, header, |w| kv.write_snapshot(w))
                        .map(|size| Taken::Written(size, header.revision)),
                }
            })
            .await?;
        let made = match taken {
            Ok(Taken::View(path, header, view)) => tokio::task::spawn_blocking(move || {
                backup::write_file(&path, header, view).map(|size| (size, header.revision))
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string()))),
            Ok(Taken::Written(size, revision)) => Ok((size, revision)),
            Err(e) => Err(e),
        };
        let (size, revision) = made.map_err(|e| {
            Status::unavailable(format!("etcdserver: making the snapshot failed: {e}"))
        })?;
        let header = self.core.header(revision);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let send = async {
                let mut f = tokio::fs::File::open(&file.0).await?;
                let mut remaining = size;
                while remaining > 0 {
                    let mut blob = vec![0u8; SNAPSHOT_CHUNK.min(remaining as usize)];
                    f.read_exact(&mut blob).await?;
                    remaining -= blob.len() as u64;
                    let chunk = pb::SnapshotResponse {
                        header,
                        remaining_bytes: remaining,
                        blob,
                    };
                    if tx.send(Ok(chunk)).await.is_err() {
                        break;
                    }
                }
                Ok::<(), std::io::Error>(())
            };
            if let Err(e) = send.await {
                let _ = tx
                    .send(Err(Status::unavailable(format!(
                        "etcdserver: reading the snapshot failed: {e}"
                    ))))
                    .await;
            }
            drop(file);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    /// etcd's `MoveLeader`: sent to the leader, which hands leadership to
    /// the voter named and answers once it has moved.
    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        self.core.require_admin(&request).await?;
        let target = NodeId(request.into_inner().target_id);
        let me = self.core.member_id;
        let m = self.core.metrics.borrow().clone();
        if m.leader != Some(me) {
            return Err(Status::failed_precondition("etcdserver: not leader"));
        }
        if target != me {
            if !m.membership.is_voter(target) {
                return Err(Status::failed_precondition(
                    "etcdserver: bad leader transferee",
                ));
            }
            self.core
                .node
                .transfer_leadership(target)
                .await
                .map_err(|e| errors::from_runtime(&e))?;
        }
        // etcd answers a move with an empty response, no header.
        Ok(Response::new(pb::MoveLeaderResponse { header: None }))
    }

    async fn downgrade(
        &self,
        _request: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(errors::unimplemented("Maintenance.Downgrade"))
    }
}

/// What the read job of a `Snapshot` call took.
enum Taken {
    /// A view of the store, to be written into this file with this header.
    View(
        std::path::PathBuf,
        BackupHeader,
        dengine_runtime::SnapshotView,
    ),
    /// The backup, written: its size and revision.
    Written(u64, i64),
}

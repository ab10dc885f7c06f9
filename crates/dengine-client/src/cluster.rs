//! The cluster itself: members, each member's status, leadership,
//! alarms, hashes and backups.

use std::path::Path;

use dengine_proto::etcdserverpb::alarm_request::AlarmAction;
use dengine_proto::etcdserverpb::cluster_client::ClusterClient;
use dengine_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use dengine_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, HashKvRequest,
    HashKvResponse, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, MoveLeaderRequest, MoveLeaderResponse,
    SnapshotRequest, StatusRequest, StatusResponse,
};
use tokio::io::AsyncWriteExt;

use crate::Client;
use crate::error::{Error, Failure};
use crate::pool::{Kind, Route, describe, join_all};

/// One endpoint's answer to `Status`.
#[derive(Clone, Debug)]
pub struct MemberStatus {
    /// The endpoint asked.
    pub endpoint: String,
    /// Its answer, or why there was none.
    pub status: Result<StatusResponse, Error>,
}

impl Client {
    /// The members of the cluster (linearizable: as the leader knows them).
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) -> Result<(), dengine_client::Error> {
    /// for m in client.member_list().await?.members {
    ///     println!("{:x} {} {:?}", m.id, m.name, m.client_ur_ls);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn member_list(&self) -> Result<MemberListResponse, Error> {
        self.pool
            .call(Route::Leader, Kind::Read, |ch| async move {
                ClusterClient::new(ch)
                    .member_list(MemberListRequest { linearizable: true })
                    .await
            })
            .await
    }

    /// Adds a member that will be reached at `peer_urls` (as a learner,
    /// which gets the log but does not vote, with `learner`).
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) -> Result<(), dengine_client::Error> {
    /// let added = client.member_add(["http://10.0.0.4:2380"], true).await?;
    /// # Ok(()) }
    /// ```
    pub async fn member_add<U: Into<String>>(
        &self,
        peer_urls: impl IntoIterator<Item = U>,
        learner: bool,
    ) -> Result<MemberAddResponse, Error> {
        let request = MemberAddRequest {
            peer_ur_ls: peer_urls.into_iter().map(Into::into).collect(),
            is_learner: learner,
        };
        self.pool
            .call(Route::Leader, Kind::Write, |ch| {
                let request = request.clone();
                async move { ClusterClient::new(ch).member_add(request).await }
            })
            .await
    }

    /// Removes member `id`.
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) -> Result<(), dengine_client::Error> {
    /// client.member_remove(0x8e9e05c52164694d).await?;
    /// # Ok(()) }
    /// ```
    pub async fn member_remove(&self, id: u64) -> Result<MemberRemoveResponse, Error> {
        self.pool
            .call(Route::Leader, Kind::Write, |ch| async move {
                ClusterClient::new(ch)
                    .member_remove(MemberRemoveRequest { id })
                    .await
            })
            .await
    }

    /// Changes the peer URLs of member `id`.
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) -> Result<(), dengine_client::Error> {
    /// client.member_update(0x8e9e05c52164694d, ["http://10.0.0.5:2380"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn member_update<U: Into<String>>(
        &self,
        id: u64,
        peer_urls: impl IntoIterator<Item = U>,
    ) -> Result<MemberUpdateResponse, Error> {
        let request = MemberUpdateRequest {
            id,
            peer_ur_ls: peer_urls.into_iter().map(Into::into).collect(),
        };
        self.pool
            .call(Route::Leader, Kind::Write, |ch| {
                let request = request.clone();
                async move { ClusterClient::new(ch).member_update(request).await }
            })
            .await
    }

    /// Makes learner `id` a voting member (once it has caught up).
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) -> Result<(), dengine_client::Error> {
    /// client.member_promote(0x8e9e05c52164694d).await?;
    /// # Ok(()) }
    /// ```
    pub async fn member_promote(&self, id: u64) -> Result<MemberPromoteResponse, Error> {
        self.pool
            .call(Route::Leader, Kind::Write, |ch| async move {
                ClusterClient::new(ch)
                    .member_promote(MemberPromoteRequest { id })
                    .await
            })
            .await
    }

    /// Hands leadership to member `target` (sent to the leader, found
    /// again if it changes).
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) -> Result<(), dengine_client::Error> {
    /// client.move_leader(0x8e9e05c52164694d).await?;
    /// # Ok(()) }
    /// ```
    pub async fn move_leader(&self, target: u64) -> Result<MoveLeaderResponse, Error> {
        self.pool
            .call(Route::Leader, Kind::Write, |ch| async move {
                MaintenanceClient::new(ch)
                    .move_leader(MoveLeaderRequest { target_id: target })
                    .await
            })
            .await
    }

    /// The status of the member at `endpoint` (asked once, not retried
    /// elsewhere: it is that member's view).
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) -> Result<(), dengine_client::Error> {
    /// let s = client.status("127.0.0.1:2379").await?;
    /// println!("raft index {}, leader {:x}", s.raft_index, s.leader);
    /// # Ok(()) }
    /// ```
    pub async fn status(&self, endpoint: &str) -> Result<StatusResponse, Error> {
        let conn = self.pool.conn_to(endpoint)?;
        let mut m = MaintenanceClient::new(conn.channel.clone());
        let ask = m.status(StatusRequest {});
        once(&conn.url, self.pool.options.request_timeout, ask).await
    }

    /// The status of every endpoint the client knows, asked at once.
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) {
    /// for m in client.statuses().await {
    ///     match m.status {
    ///         Ok(s) => println!("{}: term {}", m.endpoint, s.raft_term),
    ///         Err(e) => println!("{}: {e}", m.endpoint),
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn statuses(&self) -> Vec<MemberStatus> {
        let asks = self.pool.endpoints().into_iter().map(|endpoint| {
            let client = self.clone();
            async move {
                let status = client.status(&endpoint).await;
                MemberStatus { endpoint, status }
            }
        });
        join_all(asks).await
    }

    /// The alarms raised in the cluster (for example NOSPACE).
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) -> Result<(), dengine_client::Error> {
    /// for a in client.alarm_list().await?.alarms {
    ///     println!("{:x}: {}", a.member_id, a.alarm);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn alarm_list(&self) -> Result<AlarmResponse, Error> {
        self.pool
            .call(Route::Leader, Kind::Read, |ch| async move {
                MaintenanceClient::new(ch)
                    .alarm(AlarmRequest {
                        action: AlarmAction::Get as i32,
                        member_id: 0,
                        alarm: 0,
                    })
                    .await
            })
            .await
    }

    /// Disarms every alarm (after space was freed).
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) -> Result<(), dengine_client::Error> {
    /// client.alarm_disarm_all().await?;
    /// # Ok(()) }
    /// ```
    pub async fn alarm_disarm_all(&self) -> Result<Vec<AlarmResponse>, Error> {
        let mut out = Vec::new();
        for a in self.alarm_list().await?.alarms {
            let request = AlarmRequest {
                action: AlarmAction::Deactivate as i32,
                member_id: a.member_id,
                alarm: a.alarm,
            };
            // Disarming twice does no harm.
            let r = self
                .pool
                .call(Route::Leader, Kind::Read, |ch| async move {
                    MaintenanceClient::new(ch).alarm(request).await
                })
                .await?;
            out.push(r);
        }
        Ok(out)
    }

    /// Defragments the store of the member at `endpoint`.
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) -> Result<(), dengine_client::Error> {
    /// client.defragment("127.0.0.1:2379").await?;
    /// # Ok(()) }
    /// ```
    pub async fn defragment(&self, endpoint: &str) -> Result<DefragmentResponse, Error> {
        let conn = self.pool.conn_to(endpoint)?;
        let mut m = MaintenanceClient::new(conn.channel.clone());
        let ask = m.defragment(DefragmentRequest {});
        once(&conn.url, self.pool.options.deadline, ask).await
    }

    /// The hash of the key-value history of the member at `endpoint` up
    /// to `revision` (0: all): equal on every member that is in sync.
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) -> Result<(), dengine_client::Error> {
    /// let h = client.hash_kv("127.0.0.1:2379", 0).await?;
    /// println!("{} at {}", h.hash, h.compact_revision);
    /// # Ok(()) }
    /// ```
    pub async fn hash_kv(&self, endpoint: &str, revision: i64) -> Result<HashKvResponse, Error> {
        let conn = self.pool.conn_to(endpoint)?;
        let mut m = MaintenanceClient::new(conn.channel.clone());
        let ask = m.hash_kv(HashKvRequest { revision });
        once(&conn.url, self.pool.options.request_timeout, ask).await
    }

    /// Downloads a backup of the member at `endpoint` into `path` (written
    /// to `path.part`, synced, then renamed, so `path` is whole or absent).
    /// `progress` hears the bytes received so far and the bytes the member
    /// says remain. Returns the size.
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) -> Result<(), dengine_client::Error> {
    /// let size = client
    ///     .snapshot_to_file("127.0.0.1:2379", "backup.db".as_ref(), |got, left| {
    ///         eprintln!("{got} bytes, {left} to go");
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn snapshot_to_file(
        &self,
        endpoint: &str,
        path: &Path,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<u64, Error> {
        let conn = self.pool.conn_to(endpoint)?;
        let mut stream = MaintenanceClient::new(conn.channel.clone())
            .snapshot(SnapshotRequest {})
            .await
            .map_err(|s| failed(&conn.url, &s))?
            .into_inner();
        let part = path.with_extension(match path.extension() {
            Some(e) => format!("{}.part", e.to_string_lossy()),
            None => "part".into(),
        });
        let io =
            |what: &str, e: std::io::Error| Error::Io(format!("{what} {}: {e}", part.display()));
        let mut file = tokio::fs::File::create(&part)
            .await
            .map_err(|e| io("creating", e))?;
        let mut size = 0u64;
        loop {
            match stream.message().await {
                Ok(Some(chunk)) => {
                    file.write_all(&chunk.blob)
                        .await
                        .map_err(|e| io("writing", e))?;
                    size += chunk.blob.len() as u64;
                    progress(size, chunk.remaining_bytes);
                }
                Ok(None) => break,
                Err(s) => {
                    drop(file);
                    let _ = tokio::fs::remove_file(&part).await;
                    return Err(failed(&conn.url, &s));
                }
            }
        }
        file.sync_all().await.map_err(|e| io("syncing", e))?;
        drop(file);
        tokio::fs::rename(&part, path)
            .await
            .map_err(|e| io("renaming", e))?;
        Ok(size)
    }
}

/// One attempt at one member, within `timeout`.
async fn once<T>(
    url: &str,
    timeout: std::time::Duration,
    ask: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, Error> {
    match tokio::time::timeout(timeout, ask).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(failed(url, &s)),
        Err(_) => Err(Error::Unavailable {
            endpoint: url.to_string(),
            cause: "no answer".into(),
            after: timeout,
        }),
    }
}

/// The error for a failed call to one member.
fn failed(url: &str, status: &tonic::Status) -> Error {
    if Failure::of(status) == Failure::Final || status.message().starts_with("etcdserver:") {
        Error::from_status(status)
    } else {
        Error::Unavailable {
            endpoint: url.to_string(),
            cause: describe(status),
            after: std::time::Duration::ZERO,
        }
    }
}

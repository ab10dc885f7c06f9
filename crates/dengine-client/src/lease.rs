//! Leases: grant, revoke, look up, and keep alive from a task.

use std::sync::Arc;
use std::time::Duration;

use dengine_proto::etcdserverpb::lease_client::LeaseClient;
use dengine_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::Client;
use crate::error::{Error, ErrorKind};
use crate::pool::{Kind, Pool, Route, backoff};

/// The error a lease that is gone gets (etcd's).
fn lease_not_found() -> Error {
    Error::Server {
        kind: ErrorKind::LeaseNotFound,
        code: Code::NotFound,
        message: "etcdserver: requested lease not found".into(),
    }
}

/// A lease kept alive by a task until this is dropped (the lease then
/// runs out its TTL) or the lease ends.
///
/// ```no_run
/// # async fn f(client: dengine_client::Client) -> Result<(), dengine_client::Error> {
/// use dengine_client::PutOptions;
/// let lease = client.lease_grant(10, None).await?.id;
/// let mut alive = client.lease_keep_alive(lease).await?;
/// client.put("service/me", "10.0.0.1", Some(PutOptions::new().with_lease(lease))).await?;
/// alive.expired().await; // only if the cluster lost it
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct KeepAlive {
    id: i64,
    ttl: watch::Receiver<Option<i64>>,
    task: JoinHandle<()>,
}

impl KeepAlive {
    /// The lease's id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The TTL the cluster gave at the last renewal, in seconds; `None`
    /// once the lease is gone.
    pub fn ttl(&self) -> Option<i64> {
        *self.ttl.borrow()
    }

    /// Waits until the lease is gone (expired or revoked).
    pub async fn expired(&mut self) {
        let _ = self.ttl.wait_for(Option::is_none).await;
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Renews lease `id` every third of its TTL, over one stream to the
/// leader, opened again after a failure.
async fn keep_alive(pool: Arc<Pool>, id: i64, ttl: watch::Sender<Option<i64>>) {
    let mut attempt = 0u32;
    loop {
        let conn = pool.pick(Route::Leader, attempt);
        let (requests, rx) = mpsc::channel(1);
        // The first renewal goes in before the stream opens: a server may
        // send its headers only with its first answer (etcd does), so
        // waiting for the stream before sending would wait forever.
        let _ = requests.send(LeaseKeepAliveRequest { id }).await;
        let mut lease = LeaseClient::new(conn.channel.clone());
        let opened = tokio::time::timeout(
            pool.options.request_timeout,
            lease.lease_keep_alive(ReceiverStream::new(rx)),
        )
        .await;
        if let Ok(Ok(stream)) = opened {
            let mut stream = stream.into_inner();
            loop {
                let answer =
                    tokio::time::timeout(pool.options.request_timeout, stream.message()).await;
                match answer {
                    Ok(Ok(Some(r))) if r.ttl <= 0 => {
                        let _ = ttl.send(None);
                        return;
                    }
                    Ok(Ok(Some(r))) => {
                        attempt = 0;
                        let _ = ttl.send(Some(r.ttl));
                        tokio::select! {
                            _ = tokio::time::sleep(renew_every(r.ttl)) => {}
                            _ = ttl.closed() => return,
                        }
                    }
                    _ => break,
                }
                if requests.send(LeaseKeepAliveRequest { id }).await.is_err() {
                    break;
                }
            }
        }
        attempt += 1;
        tokio::select! {
            _ = tokio::time::sleep(backoff(&pool.options, attempt)) => {}
            _ = ttl.closed() => return,
        }
        pool.refresh().await;
    }
}

/// How often a lease of `ttl` seconds is renewed: a third of it, at
/// least every 500 ms.
fn renew_every(ttl: i64) -> Duration {
    let ms = u64::try_from(ttl.max(1)).unwrap_or(1).saturating_mul(1000) / 3;
    Duration::from_millis(ms.max(500))
}

impl Client {
    /// Grants a lease of `ttl` seconds (with the id given, or one the
    /// cluster picks).
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) -> Result<(), dengine_client::Error> {
    /// let lease = client.lease_grant(30, None).await?;
    /// println!("lease {:x} for {} s", lease.id, lease.ttl);
    /// # Ok(()) }
    /// ```
    pub async fn lease_grant(
        &self,
        ttl: i64,
        id: Option<i64>,
    ) -> Result<LeaseGrantResponse, Error> {
        let request = LeaseGrantRequest {
            ttl,
            id: id.unwrap_or(0),
        };
        self.pool
            .call(Route::Leader, Kind::Write, |ch| async move {
                LeaseClient::new(ch).lease_grant(request).await
            })
            .await
    }

    /// Revokes a lease: its keys are deleted.
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) -> Result<(), dengine_client::Error> {
    /// client.lease_revoke(0x1234).await?;
    /// # Ok(()) }
    /// ```
    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse, Error> {
        self.pool
            .call(Route::Leader, Kind::Write, |ch| async move {
                LeaseClient::new(ch)
                    .lease_revoke(LeaseRevokeRequest { id })
                    .await
            })
            .await
    }

    /// A lease's remaining and granted TTL (and its keys, with `keys`);
    /// a TTL of -1 means the lease is gone.
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) -> Result<(), dengine_client::Error> {
    /// let r = client.lease_time_to_live(0x1234, true).await?;
    /// println!("{} s left of {}", r.ttl, r.granted_ttl);
    /// # Ok(()) }
    /// ```
    pub async fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<LeaseTimeToLiveResponse, Error> {
        // A lease's keys can be many.
        let max = self.pool.options.max_response_bytes;
        self.pool
            .call(Route::Leader, Kind::Read, |ch| async move {
                LeaseClient::new(ch)
                    .max_decoding_message_size(max)
                    .lease_time_to_live(LeaseTimeToLiveRequest { id, keys })
                    .await
            })
            .await
    }

    /// Every lease the cluster holds.
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) -> Result<(), dengine_client::Error> {
    /// for l in client.lease_leases().await?.leases {
    ///     println!("{:x}", l.id);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn lease_leases(&self) -> Result<LeaseLeasesResponse, Error> {
        self.pool
            .call(Route::Leader, Kind::Read, |ch| async move {
                LeaseClient::new(ch)
                    .lease_leases(LeaseLeasesRequest {})
                    .await
            })
            .await
    }

    /// Renews a lease once; returns its new TTL in seconds.
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) -> Result<(), dengine_client::Error> {
    /// let ttl = client.lease_keep_alive_once(0x1234).await?;
    /// # Ok(()) }
    /// ```
    pub async fn lease_keep_alive_once(&self, id: i64) -> Result<i64, Error> {
        let timeout = self.pool.options.request_timeout;
        // Renewing twice does no harm: retried like a read.
        let r = self
            .pool
            .call(Route::Leader, Kind::Read, |ch| async move {
                let (tx, rx) = mpsc::channel(1);
                let _ = tx.send(LeaseKeepAliveRequest { id }).await;
                let mut stream = LeaseClient::new(ch)
                    .lease_keep_alive(ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                match tokio::time::timeout(timeout, stream.message()).await {
                    Ok(Ok(Some(r))) => Ok(tonic::Response::new(r)),
                    Ok(Ok(None)) => Err(tonic::Status::unavailable("keep-alive stream ended")),
                    Ok(Err(status)) => Err(status),
                    Err(_) => Err(tonic::Status::deadline_exceeded("no keep-alive answer")),
                }
            })
            .await?;
        if r.ttl <= 0 {
            return Err(lease_not_found());
        }
        Ok(r.ttl)
    }

    /// Keeps a lease alive from a task until the returned handle is
    /// dropped. Fails at once if the lease does not exist.
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) -> Result<(), dengine_client::Error> {
    /// let alive = client.lease_keep_alive(0x1234).await?;
    /// println!("TTL {:?}", alive.ttl());
    /// # Ok(()) }
    /// ```
    pub async fn lease_keep_alive(&self, id: i64) -> Result<KeepAlive, Error> {
        let first = self.lease_keep_alive_once(id).await?;
        let (tx, rx) = watch::channel(Some(first));
        let task = tokio::spawn(keep_alive(self.pool.clone(), id, tx));
        Ok(KeepAlive { id, ttl: rx, task })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_renewed_every_third_of_their_ttl() {
        assert_eq!(renew_every(9), Duration::from_secs(3));
        assert_eq!(renew_every(1), Duration::from_millis(500));
        assert_eq!(renew_every(-1), Duration::from_millis(500));
    }
}

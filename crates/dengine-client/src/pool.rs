//! The members a client talks to: one HTTP/2 connection per endpoint,
//! shared by every request; which member leads; and the retry loop every
//! request goes through.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dengine_proto::etcdserverpb::auth_client::AuthClient;
use dengine_proto::etcdserverpb::cluster_client::ClusterClient;
use dengine_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use dengine_proto::etcdserverpb::{AuthenticateRequest, MemberListRequest, StatusRequest};
use tokio::time::Instant;
use tonic::Status;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, ErrorKind, Failure};
use crate::options::ClientOptions;

/// The token the client authenticated for, shared by its connections.
pub(crate) type Token = Arc<RwLock<Option<tonic::metadata::AsciiMetadataValue>>>;

/// Puts the client's token, when it has one, in every request's `token`
/// metadata (as etcd's clients do).
#[derive(Clone, Debug)]
pub(crate) struct WithToken(Token);

impl tonic::service::Interceptor for WithToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let token = match self.0.read() {
            Ok(t) => t.clone(),
            Err(p) => p.into_inner().clone(),
        };
        if let Some(t) = token {
            request.metadata_mut().insert("token", t);
        }
        Ok(request)
    }
}

/// A connection whose requests carry the client's token.
pub(crate) type AuthChannel = InterceptedService<Channel, WithToken>;

/// One member's endpoint and its connection.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) url: String,
    pub(crate) channel: AuthChannel,
    /// The same connection without the token (to authenticate).
    raw: Channel,
    /// The member id it answered with (0 until known).
    member_id: AtomicU64,
}

/// Where a request should go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// To the leader when it is known (writes, linearizable reads): saves
    /// the member a forward or a round.
    Leader,
    /// To any member, in turn (serializable reads, watches).
    Any,
}

/// Whether a request may be sent again after it was sent once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A read: sending it twice does no harm.
    Read,
    /// A write: sent again only when it surely was not applied.
    Write,
}

/// The members and what is known of them.
#[derive(Debug)]
pub(crate) struct Pool {
    conns: RwLock<Vec<Arc<Conn>>>,
    /// The leader's member id (0: unknown).
    leader: AtomicU64,
    next: AtomicUsize,
    pub(crate) options: ClientOptions,
    /// The token of [`ClientOptions::user`], once taken.
    token: Token,
}

/// A connection to `url` (made on first use, remade after a failure).
fn connect(url: &str, options: &ClientOptions) -> Result<Channel, Error> {
    let with_scheme = if url.contains("://") {
        url.to_string()
    } else if options.tls.is_some() {
        format!("https://{url}")
    } else {
        format!("http://{url}")
    };
    let https = with_scheme.starts_with("https://");
    let endpoint = Endpoint::from_shared(with_scheme)
        .map_err(|e| Error::InvalidArgument(format!("endpoint {url:?} is not a URL: {e}")))?
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let endpoint = match (&options.tls, https) {
        (Some(tls), true) => {
            let mut config = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            endpoint
                .tls_config(config)
                .map_err(|e| Error::InvalidArgument(format!("TLS settings for {url:?}: {e}")))?
        }
        (None, true) => {
            return Err(Error::InvalidArgument(format!(
                "endpoint {url:?} is https: give the CA that signs its certificate (--cacert)"
            )));
        }
        (_, false) => endpoint,
    };
    Ok(endpoint.connect_lazy())
}

/// A random number (for jitter): std's hasher keys are random per
/// process and differ per `RandomState`.
pub(crate) fn random() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// The pause before attempt `attempt` (1-based): doubling from `first`,
/// capped at `max`, a random half to all of it.
pub(crate) fn backoff(options: &ClientOptions, attempt: u32) -> Duration {
    let doubled = options
        .backoff
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let full = doubled.min(options.max_backoff);
    let half = full / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
    half + Duration::from_nanos(random() % nanos)
}

impl Conn {
    fn new(url: String, options: &ClientOptions, token: &Token) -> Result<Conn, Error> {
        let raw = connect(&url, options)?;
        Ok(Conn {
            channel: InterceptedService::new(raw.clone(), WithToken(token.clone())),
            raw,
            url,
            member_id: AtomicU64::new(0),
        })
    }
}

impl Pool {
    pub(crate) fn new(endpoints: &[String], options: ClientOptions) -> Result<Pool, Error> {
        if endpoints.is_empty() {
            return Err(Error::InvalidArgument("no endpoints given".into()));
        }
        let token: Token = Arc::default();
        let mut conns = Vec::new();
        for url in endpoints {
            let url = normalize(url);
            if conns.iter().any(|c: &Arc<Conn>| c.url == url) {
                continue;
            }
            conns.push(Arc::new(Conn::new(url, &options, &token)?));
        }
        Ok(Pool {
            conns: RwLock::new(conns),
            leader: AtomicU64::new(0),
            next: AtomicUsize::new(random() as usize),
            options,
            token,
        })
    }

    /// Takes a token for [`ClientOptions::user`] from the member of
    /// `conn` (nothing without a user). A wrong password is an error;
    /// so is a cluster without auth enabled, which the client then
    /// talks to without a token.
    pub(crate) async fn authenticate(&self, conn: &Conn) -> Result<(), Error> {
        let Some(user) = &self.options.user else {
            return Ok(());
        };
        let request = AuthenticateRequest {
            name: user.name.clone(),
            password: user.password.clone(),
        };
        let answer = tokio::time::timeout(
            self.options.request_timeout,
            AuthClient::new(conn.raw.clone()).authenticate(request),
        )
        .await
        .map_err(|_| Error::Unavailable {
            endpoint: conn.url.clone(),
            cause: "no answer to Authenticate".into(),
            after: self.options.request_timeout,
        })?;
        let token = match answer {
            Ok(r) => r.into_inner().token,
            Err(status) if ErrorKind::of(status.message()) == ErrorKind::AuthNotEnabled => {
                self.set_token(None);
                return Ok(());
            }
            Err(status) => return Err(Error::from_status(&status)),
        };
        let value = token.parse().map_err(|_| {
            Error::InvalidArgument("the member gave a token that is not text".into())
        })?;
        self.set_token(Some(value));
        Ok(())
    }

    fn set_token(&self, token: Option<tonic::metadata::AsciiMetadataValue>) {
        match self.token.write() {
            Ok(mut t) => *t = token,
            Err(p) => *p.into_inner() = token,
        }
    }

    pub(crate) fn conns(&self) -> Vec<Arc<Conn>> {
        match self.conns.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The endpoints known (given and discovered).
    pub(crate) fn endpoints(&self) -> Vec<String> {
        self.conns().iter().map(|c| c.url.clone()).collect()
    }

    /// The connection to the endpoint `url` (one of the known ones, or a
    /// new one kept from now on).
    pub(crate) fn conn_to(&self, url: &str) -> Result<Arc<Conn>, Error> {
        let url = normalize(url);
        if let Some(c) = self.conns().into_iter().find(|c| c.url == url) {
            return Ok(c);
        }
        let conn = Arc::new(Conn::new(url, &self.options, &self.token)?);
        match self.conns.write() {
            Ok(mut c) => c.push(conn.clone()),
            Err(p) => p.into_inner().push(conn.clone()),
        }
        Ok(conn)
    }

    /// The member id of the leader, if known.
    pub(crate) fn leader(&self) -> Option<u64> {
        match self.leader.load(Ordering::Acquire) {
            0 => None,
            id => Some(id),
        }
    }

    /// Which connection attempt `attempt` of a request routed `route` uses.
    pub(crate) fn pick(&self, route: Route, attempt: u32) -> Arc<Conn> {
        let conns = self.conns();
        if route == Route::Leader
            && attempt == 0
            && let Some(leader) = self.leader()
            && let Some(c) = conns
                .iter()
                .find(|c| c.member_id.load(Ordering::Acquire) == leader)
        {
            return c.clone();
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % conns.len();
        conns[i].clone()
    }

    /// Learns the members' ids and the leader from `Status` on every
    /// endpoint (and, with `discover_members`, the members' client URLs).
    pub(crate) async fn refresh(&self) {
        let timeout = self.options.request_timeout.min(Duration::from_secs(1));
        let conns = self.conns();
        let asks = conns.iter().map(|c| {
            let c = c.clone();
            async move {
                let mut m = MaintenanceClient::new(c.channel.clone());
                if let Ok(Ok(r)) = tokio::time::timeout(timeout, m.status(StatusRequest {})).await {
                    let r = r.into_inner();
                    if let Some(h) = &r.header {
                        c.member_id.store(h.member_id, Ordering::Release);
                    }
                    Some(r.leader)
                } else {
                    None
                }
            }
        });
        let mut leader = 0;
        for l in join_all(asks).await.into_iter().flatten() {
            if l != 0 {
                leader = l;
            }
        }
        self.leader.store(leader, Ordering::Release);
        if !self.options.discover_members {
            return;
        }
        for c in &conns {
            let mut cl = ClusterClient::new(c.channel.clone());
            let ask = cl.member_list(MemberListRequest {
                linearizable: false,
            });
            let Ok(Ok(list)) = tokio::time::timeout(timeout, ask).await else {
                continue;
            };
            for m in list.into_inner().members {
                // The first URL of each member is enough to reach it.
                if let Some(url) = m.client_ur_ls.first()
                    && (url.starts_with("http://") || url.starts_with("https://"))
                    && let Ok(conn) = self.conn_to(url)
                    && conn.member_id.load(Ordering::Acquire) == 0
                {
                    conn.member_id.store(m.id, Ordering::Release);
                }
            }
            break;
        }
    }

    /// Sends a request (`send` makes one attempt on a connection) until it
    /// succeeds, fails for good, or the deadline passes; sends again only
    /// what is safe to (see [`Failure`]).
    pub(crate) async fn call<T, F, Fut>(
        &self,
        route: Route,
        kind: Kind,
        mut send: F,
    ) -> Result<T, Error>
    where
        F: FnMut(AuthChannel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        let deadline = started + self.options.deadline;
        let mut attempt = 0u32;
        let mut authenticated = 0u32;
        loop {
            let conn = self.pick(route, attempt);
            let left = deadline.saturating_duration_since(Instant::now());
            let limit = self
                .options
                .request_timeout
                .min(left.max(Duration::from_millis(1)));
            let (failure, cause) =
                match tokio::time::timeout(limit, send(conn.channel.clone())).await {
                    Ok(Ok(r)) => return Ok(r.into_inner()),
                    Ok(Err(status)) if self.needs_token(&status) && authenticated < 2 => {
                        // Refused before anything was done: take a token
                        // (again) and send it again at once.
                        authenticated += 1;
                        self.authenticate(&conn).await?;
                        continue;
                    }
                    Ok(Err(status)) => {
                        let failure = Failure::of(&status);
                        if failure == Failure::Final {
                            return Err(Error::from_status(&status));
                        }
                        (failure, status)
                    }
                    Err(_) => (
                        Failure::Transient,
                        Status::deadline_exceeded(format!("no answer within {limit:?}")),
                    ),
                };
            if kind == Kind::Write && failure == Failure::Transient {
                return Err(Error::Unknown {
                    cause: format!("{}: {}", conn.url, describe(&cause)),
                });
            }
            // The member may be down or no longer lead: ask again who does.
            self.leader.store(0, Ordering::Release);
            attempt += 1;
            let pause = backoff(&self.options, attempt);
            if Instant::now() + pause >= deadline {
                return Err(match cause.message() {
                    m if m.starts_with("etcdserver:") => Error::from_status(&cause),
                    _ => Error::Unavailable {
                        endpoint: conn.url.clone(),
                        cause: describe(&cause),
                        after: started.elapsed(),
                    },
                });
            }
            tokio::time::sleep(pause).await;
            if route == Route::Leader {
                self.refresh().await;
            }
        }
    }
}

impl Pool {
    /// Whether `status` says the request needs a (new) token, and the
    /// client has a user to take one for.
    fn needs_token(&self, status: &Status) -> bool {
        self.options.user.is_some()
            && matches!(
                ErrorKind::of(status.message()),
                ErrorKind::InvalidAuthToken | ErrorKind::AuthOldRevision | ErrorKind::UserEmpty
            )
    }
}

/// An endpoint as given, without a trailing slash.
fn normalize(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

/// A status's text with the cause beneath it (tonic's "transport error"
/// says little on its own).
pub(crate) fn describe(status: &Status) -> String {
    let mut text = status.message().to_string();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        // Layers often repeat their cause's words: keep each once.
        let cause = e.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = e.source();
    }
    text
}

/// Runs the futures concurrently and collects their outputs in order.
pub(crate) async fn join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_with_jitter() {
        let o = ClientOptions::default();
        for attempt in 1..20 {
            let full = o
                .backoff
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(o.max_backoff);
            let p = backoff(&o, attempt);
            assert!(p >= full / 2 && p <= full, "attempt {attempt}: {p:?}");
        }
    }

    #[test]
    fn endpoints_get_a_scheme_and_lose_a_trailing_slash() {
        assert_eq!(normalize("127.0.0.1:2379"), "http://127.0.0.1:2379");
        assert_eq!(normalize("http://a:1/"), "http://a:1");
        assert_eq!(normalize("https://a:1"), "https://a:1");
    }
}

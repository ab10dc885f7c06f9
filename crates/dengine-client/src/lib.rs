//! # dengine-client: a Rust client for dengine (and etcd)
//!
//! It speaks etcd's v3 gRPC API, so it works against a dengine cluster
//! and against etcd alike. Depending on it compiles neither storage
//! engines nor the Raft runtime: only the wire contracts
//! (`dengine-proto`), tonic's client and tokio.
//!
//! - **Knows the cluster.** Given some endpoints, it asks the members who
//!   they are and who leads (`Status`, `MemberList`), sends writes and
//!   linearizable reads to the leader and spreads serializable reads and
//!   watches over the members. When a member fails, the next attempt goes
//!   to another and the client asks again who leads.
//! - **Retries only what is safe.** Reads are retried, with a doubling,
//!   jittered pause, until [`ClientOptions::deadline`]. A write is sent
//!   again only when it surely was not applied (the cluster had no leader,
//!   refused it as too many requests, or the connection could not be
//!   made). A write whose fate is not known (the connection broke after
//!   it was sent, no answer in time) comes back as [`Error::Unknown`].
//! - **Watches resume.** A [`Watcher`] reconnects on its own after a
//!   member fails and goes on from the revision after the last one it
//!   delivered: no event is lost or repeated.
//! - **One connection per member**, HTTP/2, shared by every request and
//!   every clone of the client.
//!
//! ```no_run
//! # async fn f() -> Result<(), dengine_client::Error> {
//! use dengine_client::{Client, GetOptions};
//! let client = Client::connect(["127.0.0.1:2379", "127.0.0.1:22379"]).await?;
//! client.put("greeting", "hello", None).await?;
//! let r = client.get("greeting", None).await?;
//! assert_eq!(r.kvs[0].value, b"hello");
//! # Ok(()) }
//! ```
//!
//! Responses are etcd's own messages (re-exported in [`proto`]), so their
//! fields mean exactly what etcd's documentation says.
#![deny(missing_docs)]

mod auth;
mod cluster;
mod error;
mod kv;
mod lease;
mod options;
mod pool;
mod watch;

use std::sync::Arc;

pub use auth::Permission;
pub use cluster::MemberStatus;
pub use dengine_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
pub use error::{Error, ErrorKind};
pub use kv::{
    CompareOp, Comparison, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp, prefix_end,
};
pub use lease::KeepAlive;
pub use options::{ClientOptions, ClientTls, UserCredentials};
pub use watch::{WatchOptions, Watcher};

/// etcd's messages, as the server sends them (`dengine-proto`'s modules).
pub mod proto {
    pub use dengine_proto::authpb;
    pub use dengine_proto::etcdserverpb;
    pub use dengine_proto::mvccpb;
}

use pool::Pool;

/// A client of a cluster. Cheap to clone: clones share the connections.
#[derive(Clone, Debug)]
pub struct Client {
    pool: Arc<Pool>,
}

impl Client {
    /// Connects to a cluster through `endpoints` (`host:port` or URLs) with
    /// the default options. Returns once it has asked the members who
    /// leads, even if none answered: requests then try them in turn.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), dengine_client::Error> {
    /// let client = dengine_client::Client::connect(["127.0.0.1:2379"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect<E: AsRef<str>>(
        endpoints: impl IntoIterator<Item = E>,
    ) -> Result<Client, Error> {
        Self::connect_with(endpoints, ClientOptions::default()).await
    }

    /// Connects with `options` (see [`ClientOptions`]).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), dengine_client::Error> {
    /// use std::time::Duration;
    /// use dengine_client::{Client, ClientOptions};
    /// let options = ClientOptions::default().with_deadline(Duration::from_secs(3));
    /// let client = Client::connect_with(["127.0.0.1:2379"], options).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_with<E: AsRef<str>>(
        endpoints: impl IntoIterator<Item = E>,
        options: ClientOptions,
    ) -> Result<Client, Error> {
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .map(|e| e.as_ref().to_string())
            .collect();
        let pool = Arc::new(Pool::new(&endpoints, options)?);
        pool.refresh().await;
        if pool.options.user.is_some() {
            // A wrong password fails here, not at the first request.
            let mut last = None;
            for conn in pool.conns() {
                match pool.authenticate(&conn).await {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e @ Error::Server { .. }) => return Err(e),
                    Err(e) => last = Some(e),
                }
            }
            if let Some(e) = last {
                return Err(e);
            }
        }
        Ok(Client { pool })
    }

    /// The endpoints the client knows (given and discovered).
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) {
    /// for e in client.endpoints() {
    ///     println!("{e}");
    /// }
    /// # }
    /// ```
    pub fn endpoints(&self) -> Vec<String> {
        self.pool.endpoints()
    }

    /// The member id of the leader as last learned, if any.
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) {
    /// if let Some(id) = client.leader() {
    ///     println!("leader {id:x}");
    /// }
    /// # }
    /// ```
    pub fn leader(&self) -> Option<u64> {
        self.pool.leader()
    }

    /// Asks the members again who they are and who leads.
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) {
    /// client.refresh().await;
    /// # }
    /// ```
    pub async fn refresh(&self) {
        self.pool.refresh().await;
    }
}

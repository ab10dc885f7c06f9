//! How a client connects, waits and retries.

use std::time::Duration;

/// Settings of a [`Client`](crate::Client). `ClientOptions::default()` fits
/// a local cluster; every field has a setter.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// How long one attempt may take before it is given up (a write given
    /// up this way is reported `Unknown`). Default 5 s.
    pub request_timeout: Duration,
    /// How long a request is retried in all before its last error is
    /// returned. Default 10 s.
    pub deadline: Duration,
    /// How long connecting to a member may take. Default 2 s.
    pub connect_timeout: Duration,
    /// The first pause between attempts; it doubles per attempt up to
    /// `max_backoff`, each pause a random half to all of it. Default 50 ms.
    pub backoff: Duration,
    /// The longest pause between attempts. Default 1 s.
    pub max_backoff: Duration,
    /// Whether to add the client URLs of members the cluster lists
    /// (`MemberList`) to the endpoints given. Default on.
    pub discover_members: bool,
    /// The largest response accepted (a range of many large values).
    /// Default 64 MiB.
    pub max_response_bytes: usize,
    /// TLS for `https://` endpoints (and for endpoints given without a
    /// scheme, when set). Default none.
    pub tls: Option<ClientTls>,
    /// A user and password to authenticate as (etcdctl's `--user`): the
    /// client takes a token at connect and again whenever the cluster
    /// says it is invalid or old. Default none.
    pub user: Option<UserCredentials>,
}

/// A user and its password (shown as `***` by `Debug`).
#[derive(Clone, PartialEq, Eq)]
pub struct UserCredentials {
    /// The user's name.
    pub name: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for UserCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserCredentials")
            .field("name", &self.name)
            .field("password", &"***")
            .finish()
    }
}

/// TLS settings of a client (etcdctl's `--cacert`, `--cert`, `--key`),
/// as PEM.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    /// The CA certificates that sign the members' certificates.
    pub ca_pem: Vec<u8>,
    /// This client's certificate and key, for members that ask for one
    /// (`--client-cert-auth`).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientTls {
    /// Reads the files: the CA, and the client's certificate and key if
    /// given (both or neither).
    pub fn from_files(
        ca: &std::path::Path,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) -> Result<ClientTls, crate::Error> {
        let read = |p: &std::path::Path| {
            std::fs::read(p)
                .map_err(|e| crate::Error::InvalidArgument(format!("{}: {e}", p.display())))
        };
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            (None, None) => None,
            _ => {
                return Err(crate::Error::InvalidArgument(
                    "a client certificate needs its key, and a key its certificate".into(),
                ));
            }
        };
        Ok(ClientTls {
            ca_pem: read(ca)?,
            identity,
        })
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(5),
            deadline: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            discover_members: true,
            max_response_bytes: 64 << 20,
            tls: None,
            user: None,
        }
    }
}

impl ClientOptions {
    /// Sets [`request_timeout`](Self::request_timeout).
    pub fn with_request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// Sets [`deadline`](Self::deadline).
    pub fn with_deadline(mut self, d: Duration) -> Self {
        self.deadline = d;
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Sets [`backoff`](Self::backoff) and [`max_backoff`](Self::max_backoff).
    pub fn with_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = first;
        self.max_backoff = max;
        self
    }

    /// Sets [`tls`](Self::tls).
    pub fn with_tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets [`user`](Self::user).
    pub fn with_user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some(UserCredentials {
            name: name.into(),
            password: password.into(),
        });
        self
    }

    /// Sets [`discover_members`](Self::discover_members).
    pub fn with_discover_members(mut self, on: bool) -> Self {
        self.discover_members = on;
        self
    }
}

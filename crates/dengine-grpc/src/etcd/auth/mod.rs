//! etcd's auth on the client port: who sent a request (a simple token in
//! the `token` metadata, else the common name of a verified client
//! certificate, as etcd), the checks of reads and of admin-only calls
//! made here, and the Auth service. Writes are checked by the store when
//! they apply (see [`dengine_kv::AuthorizedCommand`]), so that a change of
//! rights between the check and the write cannot let one through.

pub mod cert_name;
pub mod jwt;
mod service;

pub use service::{AuthService, AuthSettings};

use dengine_kv::{AuthError, AuthorizedCommand, KvCommand, KvResponse, Need};
use tonic::{Request, Status};

use super::{EtcdCore, errors};

/// What a request carried to say who sent it.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// The `token` metadata (`Some(None)`: present, not text).
    pub token: Option<Option<String>>,
    /// The common name of the verified client certificate.
    pub cert_name: Option<String>,
}

impl Credentials {
    /// The credentials of `request`.
    pub fn of<T>(request: &Request<T>) -> Credentials {
        Credentials {
            token: request
                .metadata()
                .get("token")
                .map(|t| t.to_str().ok().map(str::to_string)),
            cert_name: request
                .peer_certs()
                .and_then(|certs| certs.first().and_then(|c| cert_name::common_name(c))),
        }
    }
}

/// Who sent a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Auth is off (anyone may do anything), or the member itself.
    Unchecked,
    /// A user, and the auth revision when the request came.
    User {
        /// The user's name.
        name: String,
        /// The auth store's revision the request was checked against.
        revision: u64,
    },
    /// Auth is on and the request names nobody.
    Nobody,
}

impl Caller {
    /// The user to check ("" for nobody); `None` when nothing is checked.
    fn user(&self) -> Option<&str> {
        match self {
            Caller::Unchecked => None,
            Caller::Nobody => Some(""),
            Caller::User { name, .. } => Some(name),
        }
    }
}

impl EtcdCore {
    /// Who sent `request`. An unknown or lapsed token is refused with
    /// etcd's "invalid auth token" (clients authenticate again on it).
    ///
    /// The future holds the request's credentials, not the request.
    pub fn caller<T>(
        &self,
        request: &Request<T>,
    ) -> impl std::future::Future<Output = Result<Caller, Status>> + Send + '_ {
        // The common case, and cheap: no certificate is parsed.
        let credentials = (self.auth.enabled() || request.metadata().get("token").is_some())
            .then(|| Credentials::of(request));
        async move {
            match credentials {
                None => Ok(Caller::Unchecked),
                Some(credentials) => self.caller_from(&credentials).await,
            }
        }
    }

    /// Who sent a request with `credentials`, now (a stream's requests
    /// are checked against the auth store of when each comes).
    ///
    /// A simple token this member does not know may have been given by
    /// another member a moment ago, its entry not yet applied here (etcd
    /// waits for the token's index to be applied): it is looked up again
    /// once this member has applied what the leader had committed, and
    /// refused only then.
    pub async fn caller_from(&self, credentials: &Credentials) -> Result<Caller, Status> {
        match self.caller_now(credentials) {
            Err(refused) if self.jwt.is_none() && matches!(credentials.token, Some(Some(_))) => {
                if self.read(false, |_| ()).await.is_err() {
                    return Err(refused);
                }
                self.caller_now(credentials)
            }
            known => known,
        }
    }

    /// Who sent a request with `credentials`, by what this member has
    /// applied.
    ///
    /// A token is checked even while auth is off, as etcd does: simple
    /// tokens were all forgotten when auth was turned off, so a client
    /// still sending one hears "invalid auth token", authenticates again
    /// and learns that auth is off (etcd 3.4.23 answered so; the
    /// differential auth test found it).
    fn caller_now(&self, credentials: &Credentials) -> Result<Caller, Status> {
        if credentials.token.is_none() && !self.auth.enabled() {
            // The common case, and cheap: the auth store is not locked.
            return Ok(Caller::Unchecked);
        }
        let (enabled, revision) = {
            let state = self.auth.state();
            (state.enabled, state.revision)
        };
        if let Some(token) = &credentials.token {
            let known = match (&self.jwt, token.as_deref()) {
                // A JWT names the auth revision it was made at.
                (Some(jwt), Some(t)) => jwt.check(t),
                (None, Some(t)) => self.auth.user_of_token(t).map(|name| (name, revision)),
                (_, None) => None,
            };
            return match known {
                Some(_) if !enabled => Ok(Caller::Unchecked),
                Some((name, revision)) => Ok(Caller::User { name, revision }),
                None => Err(errors::from_auth(&AuthError::InvalidToken)),
            };
        }
        if !enabled {
            return Ok(Caller::Unchecked);
        }
        Ok(match &credentials.cert_name {
            Some(name) => Caller::User {
                name: name.clone(),
                revision,
            },
            None => Caller::Nobody,
        })
    }

    /// Refuses a read of `[key, range_end)` the caller has no right to.
    pub fn check_read(&self, who: &Caller, key: &[u8], range_end: &[u8]) -> Result<(), Status> {
        let Some(user) = who.user() else {
            return Ok(());
        };
        self.auth
            .state()
            .check_range(user, Need::Read, key, range_end)
            .map_err(|e| errors::from_auth(&e))
    }

    /// Refuses a caller without the root role.
    pub fn check_admin(&self, who: &Caller) -> Result<(), Status> {
        let Some(user) = who.user() else {
            return Ok(());
        };
        self.auth
            .state()
            .check_admin(user)
            .map_err(|e| errors::from_auth(&e))
    }

    /// Refuses `request` unless its sender has the root role (etcd's
    /// maintenance and membership calls).
    pub fn require_admin<T>(
        &self,
        request: &Request<T>,
    ) -> impl std::future::Future<Output = Result<(), Status>> + Send + '_ {
        let who = self.caller(request);
        async move { self.check_admin(&who.await?) }
    }

    /// Runs a client's write, with its user for the store to check.
    pub async fn write_by(&self, who: &Caller, cmd: KvCommand) -> Result<KvResponse, Status> {
        match who {
            Caller::Unchecked => self.write(&cmd).await,
            Caller::Nobody => Err(errors::from_auth(&AuthError::UserEmpty)),
            Caller::User { name, revision } => {
                let wrapped = KvCommand::Authorized(AuthorizedCommand {
                    user: name.clone(),
                    revision: *revision,
                    command: Box::new(cmd),
                });
                self.write(&wrapped).await
            }
        }
    }
}

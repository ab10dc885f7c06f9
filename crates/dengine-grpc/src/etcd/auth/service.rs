//! etcd's `Auth` service: users, roles, permissions, `AuthEnable` and
//! `AuthDisable`, and `Authenticate`, which checks a password here (bcrypt,
//! on a blocking thread) and gives a simple token to every member through
//! the log (clients send it to any member).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dengine_kv::{AuthError, AuthRequest, KvCommand, PermKind, Permission};
use dengine_proto::authpb;
use dengine_proto::etcdserverpb as pb;
use tonic::{Request, Response, Status};

use super::jwt::Jwt;
use super::{Caller, Credentials};
use crate::etcd::{EtcdCore, errors};

/// How passwords are hashed and tokens made.
#[derive(Clone, Debug)]
pub struct AuthSettings {
    /// bcrypt's cost (etcd's `--bcrypt-cost`, 10; 4 to 31).
    pub bcrypt_cost: u32,
    /// JWT tokens (`--auth-token jwt,...`); simple tokens without.
    pub jwt: Option<Arc<Jwt>>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            bcrypt_cost: 10,
            jwt: None,
        }
    }
}

/// etcd's `Auth` service.
#[derive(Clone)]
pub struct AuthService {
    core: Arc<EtcdCore>,
    settings: AuthSettings,
    tokens_given: Arc<AtomicU64>,
}

impl AuthService {
    /// The service of `core`'s member.
    pub fn new(core: Arc<EtcdCore>, settings: AuthSettings) -> AuthService {
        AuthService {
            core,
            settings,
            tokens_given: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Runs a change of the auth store for `who` (root only, when auth is
    /// on; the store checks again as it applies).
    async fn change(
        &self,
        who: &Caller,
        req: AuthRequest,
    ) -> Result<Option<pb::ResponseHeader>, Status> {
        self.core.check_admin(who)?;
        let resp = self.core.write_by(who, KvCommand::Auth(req)).await?;
        Ok(self.core.header(resp.revision))
    }

    /// Waits until this member has applied what was committed when it was
    /// called: auth reads are linearizable, as etcd's (which it serves
    /// through Raft), so a user added through one member is listed by
    /// every member at once.
    async fn caught_up(&self) -> Result<(), Status> {
        self.core.read(false, |_| ()).await
    }

    /// The header of an answer read from this member.
    async fn local_header(&self) -> Result<Option<pb::ResponseHeader>, Status> {
        let revision = self.core.read(true, |kv| kv.revision()).await?;
        Ok(self.core.header(revision))
    }

    /// A bcrypt hash of `password`, made on a blocking thread.
    async fn hash(&self, password: String) -> Result<String, Status> {
        let cost = self.settings.bcrypt_cost;
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| Status::internal(format!("etcdserver: hashing a password: {e}")))?
            .map_err(|e| Status::internal(format!("etcdserver: hashing a password: {e}")))
    }

    /// The hash a user add or password change stores.
    async fn password_hash(&self, password: String, hashed: String) -> Result<String, Status> {
        if !hashed.is_empty() {
            // A client that hashed it itself (etcd 3.5's `hashedPassword`).
            if !hashed.starts_with("$2") {
                return Err(errors::from_auth(&AuthError::InvalidManagement));
            }
            return Ok(hashed);
        }
        self.hash(password).await
    }

    /// A new simple token: 16 random letters, a dot, a counter (etcd's
    /// form).
    fn new_token(&self) -> Result<String, Status> {
        let mut random = [0u8; 16];
        getrandom::fill(&mut random)
            .map_err(|e| Status::internal(format!("etcdserver: no randomness: {e}")))?;
        let letters: String = random
            .iter()
            .map(|b| {
                let i = usize::from(*b) % 52;
                char::from(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"[i])
            })
            .collect();
        let n = self.tokens_given.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(format!("{letters}.{n}"))
    }
}

fn permission_to_pb(p: &Permission) -> authpb::Permission {
    authpb::Permission {
        perm_type: p.kind.code(),
        key: p.key.clone(),
        range_end: p.range_end.clone(),
    }
}

#[tonic::async_trait]
impl pb::auth_server::Auth for AuthService {
    async fn auth_enable(
        &self,
        request: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        let who = self.core.caller(&request).await?;
        let header = self.change(&who, AuthRequest::Enable).await?;
        Ok(Response::new(pb::AuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        request: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        let who = self.core.caller(&request).await?;
        let header = self.change(&who, AuthRequest::Disable).await?;
        Ok(Response::new(pb::AuthDisableResponse { header }))
    }

    async fn auth_status(
        &self,
        request: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        self.core.require_admin(&request).await?;
        self.caught_up().await?;
        let (enabled, auth_revision) = {
            let state = self.core.auth.state();
            (state.enabled, state.revision)
        };
        Ok(Response::new(pb::AuthStatusResponse {
            header: self.local_header().await?,
            enabled,
            auth_revision,
        }))
    }

    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let credentials = Credentials::of(&request);
        let req = request.into_inner();
        let failed = || errors::from_auth(&AuthError::AuthFailed);
        // As etcd: a user or password changed through another member
        // just before counts.
        self.caught_up().await?;
        let (hash, auth_revision) = {
            let state = self.core.auth.state();
            if !state.enabled {
                return Err(errors::from_auth(&AuthError::NotEnabled));
            }
            match state.users.get(&req.name) {
                Some(u) if u.no_password => return Err(errors::no_password_user()),
                Some(u) => (u.password_hash.clone(), state.revision),
                None => return Err(failed()),
            }
        };
        let password = req.password;
        let matches = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .map_err(|e| Status::internal(format!("etcdserver: checking a password: {e}")))?
            .unwrap_or(false);
        if !matches {
            tracing::info!(user = %req.name, "authentication failed");
            return Err(failed());
        }
        // As etcd (which checks the password first, then takes the
        // request's token on its way through the log): a lapsed token
        // sent along is refused even with the right password.
        self.core.caller_from(&credentials).await?;
        if let Some(jwt) = &self.settings.jwt {
            // Signed here, checked by any member: no trip through the log.
            let token = jwt
                .sign(&req.name, auth_revision)
                .map_err(|e| Status::internal(format!("etcdserver: {e}")))?;
            return Ok(Response::new(pb::AuthenticateResponse {
                header: self.local_header().await?,
                token,
            }));
        }
        let token = self.new_token()?;
        let assign = KvCommand::Auth(AuthRequest::AssignToken {
            token: token.clone(),
            user: req.name,
        });
        let resp = self.core.write(&assign).await?;
        Ok(Response::new(pb::AuthenticateResponse {
            header: self.core.header(resp.revision),
            token,
        }))
    }

    async fn user_add(
        &self,
        request: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        let who = self.core.caller(&request).await?;
        self.core.check_admin(&who)?;
        let req = request.into_inner();
        if req.name.is_empty() {
            return Err(errors::from_auth(&AuthError::UserEmpty));
        }
        let no_password = req.options.is_some_and(|o| o.no_password);
        let password_hash = if no_password {
            String::new()
        } else {
            self.password_hash(req.password, req.hashed_password)
                .await?
        };
        let add = AuthRequest::UserAdd {
            name: req.name,
            password_hash,
            no_password,
        };
        let header = self.change(&who, add).await?;
        Ok(Response::new(pb::AuthUserAddResponse { header }))
    }

    async fn user_get(
        &self,
        request: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        let who = self.core.caller(&request).await?;
        let name = request.into_inner().name;
        // A user may see its own roles. As etcd, a request naming nobody
        // asking for the user "" counts as asking for its own (and then
        // finds no such user).
        let own = who.user() == Some(name.as_str());
        if !own {
            self.core.check_admin(&who)?;
        }
        self.caught_up().await?;
        let roles = {
            let state = self.core.auth.state();
            let user = state
                .users
                .get(&name)
                .ok_or_else(|| errors::from_auth(&AuthError::UserNotFound))?;
            user.roles.iter().cloned().collect()
        };
        Ok(Response::new(pb::AuthUserGetResponse {
            header: self.local_header().await?,
            roles,
        }))
    }

    async fn user_list(
        &self,
        request: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        self.core.require_admin(&request).await?;
        self.caught_up().await?;
        let users = self.core.auth.state().users.keys().cloned().collect();
        Ok(Response::new(pb::AuthUserListResponse {
            header: self.local_header().await?,
            users,
        }))
    }

    async fn user_delete(
        &self,
        request: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        let who = self.core.caller(&request).await?;
        let name = request.into_inner().name;
        let header = self.change(&who, AuthRequest::UserDelete { name }).await?;
        Ok(Response::new(pb::AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        request: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        let who = self.core.caller(&request).await?;
        self.core.check_admin(&who)?;
        let req = request.into_inner();
        if !self.core.auth.state().users.contains_key(&req.name) {
            return Err(errors::from_auth(&AuthError::UserNotFound));
        }
        let password_hash = self
            .password_hash(req.password, req.hashed_password)
            .await?;
        let change = AuthRequest::UserChangePassword {
            name: req.name,
            password_hash,
        };
        let header = self.change(&who, change).await?;
        Ok(Response::new(pb::AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        request: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        let who = self.core.caller(&request).await?;
        let req = request.into_inner();
        let grant = AuthRequest::UserGrantRole {
            user: req.user,
            role: req.role,
        };
        let header = self.change(&who, grant).await?;
        Ok(Response::new(pb::AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        let who = self.core.caller(&request).await?;
        let req = request.into_inner();
        let revoke = AuthRequest::UserRevokeRole {
            user: req.name,
            role: req.role,
        };
        let header = self.change(&who, revoke).await?;
        Ok(Response::new(pb::AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(
        &self,
        request: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        let who = self.core.caller(&request).await?;
        let name = request.into_inner().name;
        let header = self.change(&who, AuthRequest::RoleAdd { name }).await?;
        Ok(Response::new(pb::AuthRoleAddResponse { header }))
    }

    async fn role_get(
        &self,
        request: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        let who = self.core.caller(&request).await?;
        let role = request.into_inner().role;
        self.caught_up().await?;
        // A user may see the permissions of its own roles.
        let own = match &who {
            Caller::User { name, .. } => self
                .core
                .auth
                .state()
                .users
                .get(name)
                .is_some_and(|u| u.roles.contains(&role)),
            _ => false,
        };
        if !own {
            self.core.check_admin(&who)?;
        }
        let perm = {
            let state = self.core.auth.state();
            let r = state
                .roles
                .get(&role)
                .ok_or_else(|| errors::from_auth(&AuthError::RoleNotFound))?;
            r.permissions.iter().map(permission_to_pb).collect()
        };
        Ok(Response::new(pb::AuthRoleGetResponse {
            header: self.local_header().await?,
            perm,
        }))
    }

    async fn role_list(
        &self,
        request: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        self.core.require_admin(&request).await?;
        self.caught_up().await?;
        let roles = self.core.auth.state().roles.keys().cloned().collect();
        Ok(Response::new(pb::AuthRoleListResponse {
            header: self.local_header().await?,
            roles,
        }))
    }

    async fn role_delete(
        &self,
        request: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        let who = self.core.caller(&request).await?;
        let role = request.into_inner().role;
        let header = self
            .change(&who, AuthRequest::RoleDelete { name: role })
            .await?;
        Ok(Response::new(pb::AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        let who = self.core.caller(&request).await?;
        let req = request.into_inner();
        let perm = req
            .perm
            .ok_or_else(|| errors::from_auth(&AuthError::PermissionNotGiven))?;
        let kind = PermKind::from_code(perm.perm_type)
            .ok_or_else(|| errors::from_auth(&AuthError::InvalidManagement))?;
        let grant = AuthRequest::RoleGrantPermission {
            role: req.name,
            permission: Permission {
                kind,
                key: perm.key,
                range_end: perm.range_end,
            },
        };
        let header = self.change(&who, grant).await?;
        Ok(Response::new(pb::AuthRoleGrantPermissionResponse {
            header,
        }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        let who = self.core.caller(&request).await?;
        let req = request.into_inner();
        let revoke = AuthRequest::RoleRevokePermission {
            role: req.role,
            key: req.key,
            range_end: req.range_end,
        };
        let header = self.change(&who, revoke).await?;
        Ok(Response::new(pb::AuthRoleRevokePermissionResponse {
            header,
        }))
    }
}

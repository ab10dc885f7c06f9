//! etcd's auth: users, roles, their permissions on key ranges, and
//! turning auth on and off. Every call but [`Client::auth_status`] needs
//! the root role once auth is on (see [`crate::ClientOptions::with_user`]).

use std::future::Future;

use dengine_proto::authpb;
use dengine_proto::etcdserverpb::auth_client::AuthClient;
use dengine_proto::etcdserverpb::{
    AuthDisableRequest, AuthDisableResponse, AuthEnableRequest, AuthEnableResponse,
    AuthRoleAddRequest, AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse,
    AuthRoleGetRequest, AuthRoleGetResponse, AuthRoleGrantPermissionRequest,
    AuthRoleGrantPermissionResponse, AuthRoleListRequest, AuthRoleListResponse,
    AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse, AuthStatusRequest,
    AuthStatusResponse, AuthUserAddRequest, AuthUserAddResponse, AuthUserChangePasswordRequest,
    AuthUserChangePasswordResponse, AuthUserDeleteRequest, AuthUserDeleteResponse,
    AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest, AuthUserGrantRoleResponse,
    AuthUserListRequest, AuthUserListResponse, AuthUserRevokeRoleRequest,
    AuthUserRevokeRoleResponse,
};

use crate::Client;
use crate::error::Error;
use crate::pool::{AuthChannel, Kind, Route};

/// What a role may do on a range of keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// Range and watch.
    Read,
    /// Put and delete.
    Write,
    /// Both.
    ReadWrite,
}

impl Permission {
    fn code(self) -> i32 {
        match self {
            Permission::Read => authpb::permission::Type::Read as i32,
            Permission::Write => authpb::permission::Type::Write as i32,
            Permission::ReadWrite => authpb::permission::Type::Readwrite as i32,
        }
    }
}

impl Client {
    /// Sends one auth call to the leader; `kind` says whether it may be
    /// sent again.
    async fn auth<Q, R, F, Fut>(&self, kind: Kind, request: Q, call: F) -> Result<R, Error>
    where
        Q: Clone,
        F: Fn(AuthClient<AuthChannel>, Q) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        self.pool
            .call(Route::Leader, kind, |ch| {
                call(AuthClient::new(ch), request.clone())
            })
            .await
    }

    /// Turns auth on (a `root` user with the root role must exist).
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) -> Result<(), dengine_client::Error> {
    /// client.user_add("root", "secret").await?;
    /// client.user_grant_role("root", "root").await?;
    /// client.auth_enable().await?;
    /// # Ok(()) }
    /// ```
    pub async fn auth_enable(&self) -> Result<AuthEnableResponse, Error> {
        self.auth(Kind::Write, AuthEnableRequest {}, |mut c, r| async move {
            c.auth_enable(r).await
        })
        .await
    }

    /// Turns auth off.
    pub async fn auth_disable(&self) -> Result<AuthDisableResponse, Error> {
        self.auth(Kind::Write, AuthDisableRequest {}, |mut c, r| async move {
            c.auth_disable(r).await
        })
        .await
    }

    /// Whether auth is on, and the auth store's revision.
    pub async fn auth_status(&self) -> Result<AuthStatusResponse, Error> {
        self.auth(Kind::Read, AuthStatusRequest {}, |mut c, r| async move {
            c.auth_status(r).await
        })
        .await
    }

    /// Adds a user with a password (stored hashed).
    pub async fn user_add(&self, name: &str, password: &str) -> Result<AuthUserAddResponse, Error> {
        let request = AuthUserAddRequest {
            name: name.into(),
            password: password.into(),
            options: Some(authpb::UserAddOptions { no_password: false }),
            hashed_password: String::new(),
        };
        self.auth(Kind::Write, request, |mut c, r| async move {
            c.user_add(r).await
        })
        .await
    }

    /// A user's roles.
    pub async fn user_get(&self, name: &str) -> Result<AuthUserGetResponse, Error> {
        let request = AuthUserGetRequest { name: name.into() };
        self.auth(Kind::Read, request, |mut c, r| async move {
            c.user_get(r).await
        })
        .await
    }

    /// Every user's name.
    pub async fn user_list(&self) -> Result<AuthUserListResponse, Error> {
        self.auth(Kind::Read, AuthUserListRequest {}, |mut c, r| async move {
            c.user_list(r).await
        })
        .await
    }

    /// Deletes a user.
    pub async fn user_delete(&self, name: &str) -> Result<AuthUserDeleteResponse, Error> {
        let request = AuthUserDeleteRequest { name: name.into() };
        self.auth(Kind::Write, request, |mut c, r| async move {
            c.user_delete(r).await
        })
        .await
    }

    /// Sets a user's password.
    pub async fn user_change_password(
        &self,
        name: &str,
        password: &str,
    ) -> Result<AuthUserChangePasswordResponse, Error> {
        let request = AuthUserChangePasswordRequest {
            name: name.into(),
            password: password.into(),
            hashed_password: String::new(),
        };
        self.auth(Kind::Write, request, |mut c, r| async move {
            c.user_change_password(r).await
        })
        .await
    }

    /// Grants `role` to user `name`.
    pub async fn user_grant_role(
        &self,
        name: &str,
        role: &str,
    ) -> Result<AuthUserGrantRoleResponse, Error> {
        let request = AuthUserGrantRoleRequest {
            user: name.into(),
            role: role.into(),
        };
        self.auth(Kind::Write, request, |mut c, r| async move {
            c.user_grant_role(r).await
        })
        .await
    }

    /// Takes `role` from user `name`.
    pub async fn user_revoke_role(
        &self,
        name: &str,
        role: &str,
    ) -> Result<AuthUserRevokeRoleResponse, Error> {
        let request = AuthUserRevokeRoleRequest {
            name: name.into(),
            role: role.into(),
        };
        self.auth(Kind::Write, request, |mut c, r| async move {
            c.user_revoke_role(r).await
        })
        .await
    }

    /// Adds a role (with no permissions).
    pub async fn role_add(&self, name: &str) -> Result<AuthRoleAddResponse, Error> {
        let request = AuthRoleAddRequest { name: name.into() };
        self.auth(Kind::Write, request, |mut c, r| async move {
            c.role_add(r).await
        })
        .await
    }

    /// A role's permissions.
    pub async fn role_get(&self, name: &str) -> Result<AuthRoleGetResponse, Error> {
        let request = AuthRoleGetRequest { role: name.into() };
        self.auth(Kind::Read, request, |mut c, r| async move {
            c.role_get(r).await
        })
        .await
    }

    /// Every role's name.
    pub async fn role_list(&self) -> Result<AuthRoleListResponse, Error> {
        self.auth(Kind::Read, AuthRoleListRequest {}, |mut c, r| async move {
            c.role_list(r).await
        })
        .await
    }

    /// Deletes a role.
    pub async fn role_delete(&self, name: &str) -> Result<AuthRoleDeleteResponse, Error> {
        let request = AuthRoleDeleteRequest { role: name.into() };
        self.auth(Kind::Write, request, |mut c, r| async move {
            c.role_delete(r).await
        })
        .await
    }

    /// Lets `role` do `permission` on the keys in `[key, range_end)`
    /// (only `key` when `range_end` is empty; from `key` on when it is
    /// `"\0"`).
    ///
    /// ```no_run
    /// # async fn f(client: dengine_client::Client) -> Result<(), dengine_client::Error> {
    /// use dengine_client::Permission;
    /// client.role_add("app").await?;
    /// client.role_grant_permission("app", Permission::ReadWrite, b"app/", b"app0").await?;
    /// # Ok(()) }
    /// ```
    pub async fn role_grant_permission(
        &self,
        role: &str,
        permission: Permission,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<AuthRoleGrantPermissionResponse, Error> {
        let request = AuthRoleGrantPermissionRequest {
            name: role.into(),
            perm: Some(authpb::Permission {
                perm_type: permission.code(),
                key: key.to_vec(),
                range_end: range_end.to_vec(),
            }),
        };
        self.auth(Kind::Write, request, |mut c, r| async move {
            c.role_grant_permission(r).await
        })
        .await
    }

    /// Takes from `role` its permission on exactly `[key, range_end)`.
    pub async fn role_revoke_permission(
        &self,
        role: &str,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<AuthRoleRevokePermissionResponse, Error> {
        let request = AuthRoleRevokePermissionRequest {
            role: role.into(),
            key: key.to_vec(),
            range_end: range_end.to_vec(),
        };
        self.auth(Kind::Write, request, |mut c, r| async move {
            c.role_revoke_permission(r).await
        })
        .await
    }
}

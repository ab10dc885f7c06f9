//! etcd's auth store: users, roles and their permissions on key ranges,
//! whether auth is enabled, and the auth revision (one more at every
//! change), replicated as commands so that every member decides alike.
//!
//! A client's write reaches the store wrapped in an
//! [`AuthorizedCommand`]: the user the serving member found for the
//! request (token or certificate) and the auth revision it saw. The store
//! checks at apply, as etcd does: a revision older than the store's is
//! refused ([`AuthError::OldRevision`]: the client authenticates again),
//! and the user needs the rights of the command. Reads are checked by the
//! serving member through an [`AuthView`], which also holds the simple
//! tokens (in memory only, as etcd's: they do not survive a restart, and
//! clients authenticate again).
//!
//! Passwords are stored as the bcrypt hashes the server makes (the store
//! never sees a password). The state is kept as one record `u` (sealed,
//! a version byte, postcard) and travels in snapshots.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::types::{KvCommand, TxnOp, TxnRequest};

/// The name of the user and of the role with every right.
pub const ROOT: &str = "root";

/// Backend key of the auth record.
pub(crate) const AUTH_KEY: &[u8] = b"u";
const AUTH_RECORD_VERSION: u8 = 1;

/// What a permission allows (etcd's `authpb.Permission.Type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermKind {
    /// Reading (ranges, watches, compares).
    Read,
    /// Writing (puts, deletes).
    Write,
    /// Both.
    ReadWrite,
}

impl PermKind {
    /// etcd's number for it.
    pub fn code(self) -> i32 {
        match self {
            PermKind::Read => 0,
            PermKind::Write => 1,
            PermKind::ReadWrite => 2,
        }
    }

    /// The kind of etcd's number.
    pub fn from_code(code: i32) -> Option<PermKind> {
        match code {
            0 => Some(PermKind::Read),
            1 => Some(PermKind::Write),
            2 => Some(PermKind::ReadWrite),
            _ => None,
        }
    }

    fn allows(self, need: Need) -> bool {
        matches!(
            (self, need),
            (PermKind::ReadWrite, _)
                | (PermKind::Read, Need::Read)
                | (PermKind::Write, Need::Write)
        )
    }
}

/// A right on a key (`range_end` empty), a range `[key, range_end)`, or
/// every key from `key` on (`range_end` `[0]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    /// What it allows.
    pub kind: PermKind,
    /// The first key.
    pub key: Vec<u8>,
    /// The end of the range (see above).
    pub range_end: Vec<u8>,
}

/// A user.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The bcrypt hash of the password (empty with `no_password`).
    pub password_hash: String,
    /// The user authenticates by certificate only.
    pub no_password: bool,
    /// The roles granted, by name.
    pub roles: BTreeSet<String>,
}

/// A role: permissions, sorted by key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// The permissions.
    pub permissions: Vec<Permission>,
}

/// The whole auth store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    /// Whether requests are checked.
    pub enabled: bool,
    /// One more at every change.
    pub revision: u64,
    /// The users, by name.
    pub users: BTreeMap<String, User>,
    /// The roles, by name.
    pub roles: BTreeMap<String, Role>,
}

/// A change to the auth store (etcd's Auth API), or a simple token given
/// to a user who authenticated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthRequest {
    /// Turn auth on (the root user must exist and have the root role).
    Enable,
    /// Turn auth off.
    Disable,
    /// Add a user.
    UserAdd {
        /// Its name.
        name: String,
        /// The bcrypt hash of its password.
        password_hash: String,
        /// It has no password.
        no_password: bool,
    },
    /// Remove a user.
    UserDelete {
        /// Its name.
        name: String,
    },
    /// Set a user's password.
    UserChangePassword {
        /// Its name.
        name: String,
        /// The bcrypt hash of the new password.
        password_hash: String,
    },
    /// Grant a role to a user.
    UserGrantRole {
        /// The user.
        user: String,
        /// The role.
        role: String,
    },
    /// Take a role from a user.
    UserRevokeRole {
        /// The user.
        user: String,
        /// The role.
        role: String,
    },
    /// Add a role.
    RoleAdd {
        /// Its name.
        name: String,
    },
    /// Remove a role (and take it from every user).
    RoleDelete {
        /// Its name.
        name: String,
    },
    /// Give a role a permission (replacing one on the same range).
    RoleGrantPermission {
        /// The role.
        role: String,
        /// The permission.
        permission: Permission,
    },
    /// Take a permission from a role.
    RoleRevokePermission {
        /// The role.
        role: String,
        /// The permission's first key.
        key: Vec<u8>,
        /// The permission's range end.
        range_end: Vec<u8>,
    },
    /// A simple token for a user whose password a member checked.
    AssignToken {
        /// The token.
        token: String,
        /// The user.
        user: String,
    },
}

/// A client's command with who sent it, checked at apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizedCommand {
    /// The user ("" when the request carried none).
    pub user: String,
    /// The auth revision the serving member saw.
    pub revision: u64,
    /// The command.
    pub command: Box<KvCommand>,
}

/// Why the auth store refused (etcd's errors, and its messages).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The request has no user.
    #[error("user name is empty")]
    UserEmpty,
    /// No user has the name.
    #[error("user name not found")]
    UserNotFound,
    /// A user has the name already.
    #[error("user name already exists")]
    UserExists,
    /// The role name is empty.
    #[error("role name is empty")]
    RoleEmpty,
    /// No role has the name.
    #[error("role name not found")]
    RoleNotFound,
    /// A role has the name already.
    #[error("role name already exists")]
    RoleExists,
    /// The user lacks the right.
    #[error("permission denied")]
    PermissionDenied,
    /// The user does not have the role.
    #[error("role is not granted to the user")]
    RoleNotGranted,
    /// The role does not have the permission.
    #[error("permission is not granted to the role")]
    PermissionNotGranted,
    /// A grant without a permission.
    #[error("permission not given")]
    PermissionNotGiven,
    /// Auth is off.
    #[error("authentication is not enabled")]
    NotEnabled,
    /// Wrong user or password.
    #[error("authentication failed, invalid user ID or password")]
    AuthFailed,
    /// The token is unknown or expired.
    #[error("invalid auth token")]
    InvalidToken,
    /// The change would lock everyone out, or is malformed.
    #[error("invalid auth management")]
    InvalidManagement,
    /// The auth store changed after the request was checked.
    #[error("revision of auth store is old")]
    OldRevision,
    /// Enabling auth needs the root user.
    #[error("root user does not exist")]
    RootUserMissing,
    /// Enabling auth needs the root user to have the root role.
    #[error("root user does not have root role")]
    RootRoleMissing,
}

impl AuthError {
    /// Every error, to find one by its text.
    pub const ALL: [AuthError; 17] = [
        AuthError::UserEmpty,
        AuthError::UserNotFound,
        AuthError::UserExists,
        AuthError::RoleEmpty,
        AuthError::RoleNotFound,
        AuthError::RoleExists,
        AuthError::PermissionDenied,
        AuthError::RoleNotGranted,
        AuthError::PermissionNotGranted,
        AuthError::PermissionNotGiven,
        AuthError::NotEnabled,
        AuthError::AuthFailed,
        AuthError::InvalidToken,
        AuthError::InvalidManagement,
        AuthError::OldRevision,
        AuthError::RootUserMissing,
        AuthError::RootRoleMissing,
    ];

    /// The error whose text is `message` (as it crosses between members).
    pub fn from_message(message: &str) -> Option<AuthError> {
        AuthError::ALL
            .iter()
            .find(|e| e.to_string() == message)
            .cloned()
    }
}

/// What a request needs on a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Reading.
    Read,
    /// Writing.
    Write,
}

/// The end of a range as an exclusive bound (`None`: no end).
fn end_of(key: &[u8], range_end: &[u8]) -> Option<Vec<u8>> {
    match range_end {
        [] => {
            let mut next = key.to_vec();
            next.push(0);
            Some(next)
        }
        [0] => None,
        end => Some(end.to_vec()),
    }
}

/// Whether the permissions of kind `need` cover `[key, range_end)`.
fn covered<'a>(
    permissions: impl Iterator<Item = &'a Permission>,
    need: Need,
    key: &[u8],
    range_end: &[u8],
) -> bool {
    let want_end = end_of(key, range_end);
    if want_end.as_deref().is_some_and(|e| e <= key) {
        // A range that ends before it starts asks for its first key.
        return covered(permissions, need, key, &[]);
    }
    let mut spans: Vec<(&[u8], Option<Vec<u8>>)> = permissions
        .filter(|p| p.kind.allows(need))
        .map(|p| (p.key.as_slice(), end_of(&p.key, &p.range_end)))
        .collect();
    spans.sort_by(|a, b| a.0.cmp(b.0));
    // Sweep: `reached` is how far from `key` on the rights go unbroken.
    let mut reached: Vec<u8> = key.to_vec();
    for (start, end) in spans {
        if start > reached.as_slice() {
            break;
        }
        match end {
            None => return true,
            Some(end) if end > reached => reached = end,
            Some(_) => {}
        }
        if want_end.as_ref().is_some_and(|w| reached >= *w) {
            return true;
        }
    }
    false
}

/// A request with auth on must name its user.
fn named(user: &str) -> Result<(), AuthError> {
    if user.is_empty() {
        Err(AuthError::UserEmpty)
    } else {
        Ok(())
    }
}

impl AuthState {
    /// Whether `user` has the root role.
    pub fn is_admin(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.roles.contains(ROOT))
    }

    /// Whether `user` may read (or write) `[key, range_end)`; `Ok` when
    /// auth is off.
    pub fn check_range(
        &self,
        user: &str,
        need: Need,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        named(user)?;
        let Some(u) = self.users.get(user) else {
            return Err(AuthError::PermissionDenied);
        };
        if u.roles.contains(ROOT) {
            return Ok(());
        }
        let perms = u
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| r.permissions.iter());
        if covered(perms, need, key, range_end) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// Whether `user` has the root role; `Ok` when auth is off.
    pub fn check_admin(&self, user: &str) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        named(user)?;
        if self.is_admin(user) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// Whether `user` may run `cmd` (etcd's checks of each request); the
    /// keys of leases come from `lease_keys` (a revoke deletes them).
    pub fn check_command(
        &self,
        user: &str,
        cmd: &KvCommand,
        lease_keys: &dyn Fn(i64) -> Vec<Vec<u8>>,
    ) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        named(user)?;
        match cmd {
            KvCommand::Put(p) => self.check_write(user, &p.key, &[], p.prev_kv),
            KvCommand::DeleteRange(d) => self.check_write(user, &d.key, &d.range_end, d.prev_kv),
            KvCommand::Txn(t) => self.check_txn(user, t),
            KvCommand::LeaseRevoke(r) => {
                if self.is_admin(user) {
                    return Ok(());
                }
                for key in lease_keys(r.id) {
                    self.check_range(user, Need::Write, &key, &[])?;
                }
                Ok(())
            }
            // As etcd: any user may compact, grant and renew leases, and
            // raise or clear alarms.
            KvCommand::Compact(_)
            | KvCommand::LeaseGrant(_)
            | KvCommand::LeaseKeepAlive(_)
            | KvCommand::Alarm(_) => {
                if self.users.contains_key(user) {
                    Ok(())
                } else {
                    Err(AuthError::PermissionDenied)
                }
            }
            KvCommand::MemberAttrs(_) | KvCommand::MemberUpdate(_) => self.check_admin(user),
            KvCommand::Auth(AuthRequest::AssignToken { .. }) | KvCommand::Authorized(_) => {
                Err(AuthError::InvalidManagement)
            }
            KvCommand::Auth(_) => self.check_admin(user),
        }
    }

    /// A put or delete of `[key, range_end)`; reading it too when the
    /// old values come back (`prev_kv`).
    fn check_write(
        &self,
        user: &str,
        key: &[u8],
        range_end: &[u8],
        prev_kv: bool,
    ) -> Result<(), AuthError> {
        self.check_range(user, Need::Write, key, range_end)?;
        if prev_kv {
            self.check_range(user, Need::Read, key, range_end)?;
        }
        Ok(())
    }

    fn check_txn(&self, user: &str, t: &TxnRequest) -> Result<(), AuthError> {
        for c in &t.compare {
            self.check_range(user, Need::Read, &c.key, &c.range_end)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            match op {
                TxnOp::Range(r) => self.check_range(user, Need::Read, &r.key, &r.range_end)?,
                TxnOp::Put(p) => self.check_write(user, &p.key, &[], p.prev_kv)?,
                TxnOp::DeleteRange(d) => self.check_write(user, &d.key, &d.range_end, d.prev_kv)?,
                TxnOp::Txn(inner) => self.check_txn(user, inner)?,
            }
        }
        Ok(())
    }

    /// Applies a change; `Ok(true)` when the store changed (its revision
    /// then grew by one).
    pub(crate) fn apply(&mut self, req: &AuthRequest) -> Result<bool, AuthError> {
        match req {
            AuthRequest::Enable => {
                if self.enabled {
                    return Ok(false);
                }
                let root = self.users.get(ROOT).ok_or(AuthError::RootUserMissing)?;
                if !root.roles.contains(ROOT) {
                    return Err(AuthError::RootRoleMissing);
                }
                self.enabled = true;
            }
            AuthRequest::Disable => {
                if !self.enabled {
                    return Ok(false);
                }
                self.enabled = false;
            }
            AuthRequest::UserAdd {
                name,
                password_hash,
                no_password,
            } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(name) {
                    return Err(AuthError::UserExists);
                }
                self.users.insert(
                    name.clone(),
                    User {
                        password_hash: password_hash.clone(),
                        no_password: *no_password,
                        roles: BTreeSet::new(),
                    },
                );
            }
            AuthRequest::UserDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidManagement);
                }
                self.users.remove(name).ok_or(AuthError::UserNotFound)?;
            }
            AuthRequest::UserChangePassword {
                name,
                password_hash,
            } => {
                let u = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                // A user added without a password keeps that option, as
                // in etcd: it still cannot authenticate with a password.
                u.password_hash = password_hash.clone();
            }
            AuthRequest::UserGrantRole { user, role } => {
                if !self.users.contains_key(user) {
                    return Err(AuthError::UserNotFound);
                }
                if role != ROOT && !self.roles.contains_key(role) {
                    return Err(AuthError::RoleNotFound);
                }
                let u = self.users.get_mut(user).ok_or(AuthError::UserNotFound)?;
                if !u.roles.insert(role.clone()) {
                    return Ok(false);
                }
            }
            AuthRequest::UserRevokeRole { user, role } => {
                if self.enabled && user == ROOT && role == ROOT {
                    return Err(AuthError::InvalidManagement);
                }
                let u = self.users.get_mut(user).ok_or(AuthError::UserNotFound)?;
                if !u.roles.remove(role) {
                    return Err(AuthError::RoleNotGranted);
                }
            }
            AuthRequest::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(name) {
                    return Err(AuthError::RoleExists);
                }
                self.roles.insert(name.clone(), Role::default());
            }
            AuthRequest::RoleDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidManagement);
                }
                self.roles.remove(name).ok_or(AuthError::RoleNotFound)?;
                for u in self.users.values_mut() {
                    u.roles.remove(name);
                }
            }
            AuthRequest::RoleGrantPermission { role, permission } => {
                let valid = !permission.key.is_empty()
                    && (permission.range_end.is_empty()
                        || permission.range_end == [0]
                        || permission.key < permission.range_end);
                let r = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                if !valid {
                    return Err(AuthError::InvalidManagement);
                }
                match r
                    .permissions
                    .iter_mut()
                    .find(|p| p.key == permission.key && p.range_end == permission.range_end)
                {
                    Some(p) => p.kind = permission.kind,
                    None => r.permissions.push(permission.clone()),
                }
                r.permissions.sort_by(|a, b| a.key.cmp(&b.key));
            }
            AuthRequest::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let r = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                let before = r.permissions.len();
                r.permissions
                    .retain(|p| !(p.key == *key && p.range_end == *range_end));
                if r.permissions.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
            }
            AuthRequest::AssignToken { .. } => return Ok(false),
        }
        self.revision += 1;
        Ok(true)
    }
}

/// The auth record: sealed, a version byte, the state (postcard).
pub(crate) fn encode_record(state: &AuthState) -> Vec<u8> {
    let mut body = vec![AUTH_RECORD_VERSION];
    body.extend(postcard::to_allocvec(state).unwrap_or_default());
    dengine_core::codec::seal(&body)
}

/// The state of an auth record.
pub(crate) fn decode_record(v: &[u8]) -> Result<AuthState, crate::KvError> {
    let bad = |what: &str| crate::KvError::Storage(format!("the auth record is corrupt: {what}"));
    let body = dengine_core::codec::open(v).map_err(|e| bad(&e.to_string()))?;
    match body {
        [AUTH_RECORD_VERSION, rest @ ..] => {
            postcard::from_bytes(rest).map_err(|e| bad(&e.to_string()))
        }
        [v, ..] => Err(crate::KvError::Storage(format!(
            "the auth record is of format version {v}, which this program does not read"
        ))),
        [] => Err(bad("it is empty")),
    }
}

/// The state in a snapshot (postcard).
pub(crate) fn encode_for_snapshot(state: &AuthState) -> Vec<u8> {
    postcard::to_allocvec(state).unwrap_or_default()
}

/// The state of a snapshot's bytes.
pub(crate) fn decode_from_snapshot(bytes: &[u8]) -> Result<AuthState, String> {
    postcard::from_bytes(bytes).map_err(|e| e.to_string())
}

mod apply;
mod view;

pub(crate) use apply::needs_user;
pub use view::{AuthView, DEFAULT_TOKEN_TTL};

#[cfg(test)]
mod tests;

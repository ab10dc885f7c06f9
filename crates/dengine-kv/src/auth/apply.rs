//! The store's side of auth: checking a client's command at apply, and
//! applying changes to the auth store.

use crate::auth::{AuthError, AuthRequest, AuthView};
use crate::store::KvStateMachine;
use crate::types::{KvCommand, KvError, OpResponse};

/// Whether a command comes only from clients (so, with auth enabled,
/// only inside an [`crate::AuthorizedCommand`]).
pub(crate) fn needs_user(cmd: &KvCommand) -> bool {
    match cmd {
        KvCommand::Put(_) | KvCommand::DeleteRange(_) | KvCommand::Txn(_) => true,
        KvCommand::Auth(a) => !matches!(a, AuthRequest::AssignToken { .. }),
        _ => false,
    }
}

impl KvStateMachine {
    /// The auth store, as the server reads it.
    pub fn auth(&self) -> AuthView {
        self.auth.clone()
    }

    /// Refuses a client's command its user may not run, or that was
    /// checked against an older auth store.
    pub(crate) fn check_authorized(&self, a: &crate::AuthorizedCommand) -> Result<(), KvError> {
        let state = self.auth.state();
        if !state.enabled {
            return Ok(());
        }
        if a.revision < state.revision {
            return Err(AuthError::OldRevision.into());
        }
        let lease_keys = |id: i64| -> Vec<Vec<u8>> {
            self.leases
                .by_id
                .get(&id)
                .map(|l| l.keys.iter().cloned().collect())
                .unwrap_or_default()
        };
        state.check_command(&a.user, &a.command, &lease_keys)?;
        Ok(())
    }

    /// Applies a change to the auth store.
    pub(crate) fn auth_apply(&mut self, req: &AuthRequest) -> Result<OpResponse, KvError> {
        if let AuthRequest::AssignToken { token, user } = req {
            let known = {
                let state = self.auth.state();
                state.enabled && state.users.contains_key(user)
            };
            if !known {
                return Err(AuthError::AuthFailed.into());
            }
            self.auth.assign_token(token, user);
            return Ok(OpResponse::Auth {
                auth_revision: self.auth.state().revision,
            });
        }
        let (changed, revision) = self
            .auth
            .with_state(|s| s.apply(req).map(|changed| (changed, s.revision)))?;
        if changed {
            self.auth_changed = true;
            match req {
                AuthRequest::Disable => self.auth.forget_tokens(None),
                AuthRequest::UserDelete { name } | AuthRequest::UserChangePassword { name, .. } => {
                    self.auth.forget_tokens(Some(name))
                }
                _ => {}
            }
            // Once per change, on every member (as it applies it).
            match req {
                AuthRequest::Enable => tracing::info!(auth_revision = revision, "auth enabled"),
                AuthRequest::Disable => tracing::info!(auth_revision = revision, "auth disabled"),
                _ => tracing::debug!(
                    auth_revision = revision,
                    change = auth_change_name(req),
                    "auth store changed"
                ),
            }
        }
        Ok(OpResponse::Auth {
            auth_revision: revision,
        })
    }
}

fn auth_change_name(req: &AuthRequest) -> &'static str {
    match req {
        AuthRequest::Enable => "enable",
        AuthRequest::Disable => "disable",
        AuthRequest::UserAdd { .. } => "user add",
        AuthRequest::UserDelete { .. } => "user delete",
        AuthRequest::UserChangePassword { .. } => "user change password",
        AuthRequest::UserGrantRole { .. } => "user grant role",
        AuthRequest::UserRevokeRole { .. } => "user revoke role",
        AuthRequest::RoleAdd { .. } => "role add",
        AuthRequest::RoleDelete { .. } => "role delete",
        AuthRequest::RoleGrantPermission { .. } => "role grant permission",
        AuthRequest::RoleRevokePermission { .. } => "role revoke permission",
        AuthRequest::AssignToken { .. } => "token",
    }
}

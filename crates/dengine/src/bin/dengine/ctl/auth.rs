//! `dengine user ...`, `dengine role ...` and `dengine auth ...`: etcd's
//! auth, with etcdctl's words in the output.

use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use dengine_client::Permission;
use dengine_client::proto::authpb;
use serde_json::json;

use super::out::{self, done, print_json};
use super::{Conn, Failed, Format, KeyRange, Span, run};

/// `dengine user ...`.
#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Adds a user: NAME:PASSWORD, or NAME with --new-user-password.
    Add(UserPasswordArgs),
    /// Deletes a user.
    Delete(NameArgs),
    /// Shows a user's roles.
    Get(NameArgs),
    /// Lists the users.
    List,
    /// Sets a user's password: NAME:PASSWORD, or NAME with
    /// --new-user-password.
    Passwd(UserPasswordArgs),
    /// Grants a role to a user.
    GrantRole(UserRoleArgs),
    /// Takes a role from a user.
    RevokeRole(UserRoleArgs),
}

/// `dengine role ...`.
#[derive(Subcommand, Debug)]
pub enum RoleCommand {
    /// Adds a role.
    Add(NameArgs),
    /// Deletes a role.
    Delete(NameArgs),
    /// Shows a role's permissions.
    Get(NameArgs),
    /// Lists the roles.
    List,
    /// Lets a role read, write or both on a key or a range.
    GrantPermission(GrantArgs),
    /// Takes a role's permission on a key or a range.
    RevokePermission(RevokeArgs),
}

/// `dengine auth ...`.
#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Turns auth on (a `root` user with the `root` role must exist).
    Enable,
    /// Turns auth off.
    Disable,
    /// Says whether auth is on.
    Status,
}

/// A user or role by name.
#[derive(Args, Debug)]
pub struct NameArgs {
    /// The name.
    pub name: String,
}

/// A user and a password.
#[derive(Args, Debug)]
pub struct UserPasswordArgs {
    /// NAME:PASSWORD, or NAME with --new-user-password.
    #[arg(value_name = "USER")]
    pub account: String,
    /// The password (etcdctl's flag).
    #[arg(long, hide_env_values = true, env = "DENGINE_NEW_USER_PASSWORD")]
    pub new_user_password: Option<String>,
}

impl UserPasswordArgs {
    fn split(&self) -> Result<(&str, &str), Failed> {
        match (self.account.split_once(':'), &self.new_user_password) {
            (Some((name, password)), None) => Ok((name, password)),
            (None, Some(password)) => Ok((&self.account, password)),
            _ => Err(Failed::Message(
                "give NAME:PASSWORD, or NAME with --new-user-password".into(),
            )),
        }
    }
}

/// A user and one of its roles.
#[derive(Args, Debug)]
pub struct UserRoleArgs {
    /// The user.
    #[arg(value_name = "USER")]
    pub name: String,
    /// The role.
    pub role: String,
}

/// What a permission allows, as etcdctl spells it.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PermissionArg {
    /// Range and watch.
    Read,
    /// Put and delete.
    Write,
    /// Both.
    Readwrite,
}

/// `dengine role grant-permission ROLE read|write|readwrite KEY [END]`.
#[derive(Args, Debug)]
pub struct GrantArgs {
    /// The role.
    pub role: String,
    /// What it may do.
    #[arg(value_enum)]
    pub permission: PermissionArg,
    /// The keys.
    #[command(flatten)]
    pub keys: KeyRange,
}

/// `dengine role revoke-permission ROLE KEY [END]`.
#[derive(Args, Debug)]
pub struct RevokeArgs {
    /// The role.
    pub role: String,
    /// The keys (as they were granted).
    #[command(flatten)]
    pub keys: KeyRange,
}

/// The key and range end a [`KeyRange`] names, as permissions hold them.
fn bounds(keys: &KeyRange) -> (Vec<u8>, Vec<u8>) {
    let key = keys.key.as_bytes().to_vec();
    let end = match keys.span() {
        Span::Key => Vec::new(),
        Span::Prefix => dengine_client::prefix_end(&key),
        Span::FromKey => vec![0],
        Span::End(end) => end.as_bytes().to_vec(),
    };
    (key, end)
}

/// A permission's keys as etcdctl prints them.
fn describe(key: &[u8], end: &[u8]) -> String {
    let k = String::from_utf8_lossy(key);
    match end {
        [] => k.into_owned(),
        [0] => format!("[{k}, <open ended>"),
        _ => {
            let e = String::from_utf8_lossy(end);
            if end == dengine_client::prefix_end(key).as_slice() {
                format!("[{k}, {e}) (prefix {k})")
            } else {
                format!("[{k}, {e})")
            }
        }
    }
}

/// Prints names one per line (text) or as a list (JSON).
fn names(
    format: Format,
    header: Option<&dengine_client::proto::etcdserverpb::ResponseHeader>,
    what: &str,
    list: &[String],
) {
    match format {
        Format::Json => print_json(&json!({"header": out::header(header), what: list})),
        _ => {
            for name in list {
                println!("{name}");
            }
        }
    }
}

/// Runs `dengine user ...`.
pub fn run_user(command: UserCommand, conn: &Conn) -> ExitCode {
    run("user", conn, |client, conn| async move {
        let f = conn.write_out;
        match command {
            UserCommand::Add(a) => {
                let (name, password) = a.split()?;
                let r = client.user_add(name, password).await?;
                done(f, r.header.as_ref(), &format!("User {name} created"));
            }
            UserCommand::Delete(a) => {
                let r = client.user_delete(&a.name).await?;
                done(f, r.header.as_ref(), &format!("User {} deleted", a.name));
            }
            UserCommand::Get(a) => {
                let r = client.user_get(&a.name).await?;
                match f {
                    Format::Json => print_json(&json!({
                        "header": out::header(r.header.as_ref()),
                        "name": a.name,
                        "roles": r.roles,
                    })),
                    _ => println!("User: {}\nRoles: {}", a.name, r.roles.join(" ")),
                }
            }
            UserCommand::List => {
                let r = client.user_list().await?;
                names(f, r.header.as_ref(), "users", &r.users);
            }
            UserCommand::Passwd(a) => {
                let (name, password) = a.split()?;
                let r = client.user_change_password(name, password).await?;
                done(f, r.header.as_ref(), "Password updated");
            }
            UserCommand::GrantRole(a) => {
                let r = client.user_grant_role(&a.name, &a.role).await?;
                let said = format!("Role {} is granted to user {}", a.role, a.name);
                done(f, r.header.as_ref(), &said);
            }
            UserCommand::RevokeRole(a) => {
                let r = client.user_revoke_role(&a.name, &a.role).await?;
                let said = format!("Role {} is revoked from user {}", a.role, a.name);
                done(f, r.header.as_ref(), &said);
            }
        }
        Ok(())
    })
}

/// Runs `dengine role ...`.
pub fn run_role(command: RoleCommand, conn: &Conn) -> ExitCode {
    run("role", conn, |client, conn| async move {
        let f = conn.write_out;
        match command {
            RoleCommand::Add(a) => {
                let r = client.role_add(&a.name).await?;
                done(f, r.header.as_ref(), &format!("Role {} created", a.name));
            }
            RoleCommand::Delete(a) => {
                let r = client.role_delete(&a.name).await?;
                done(f, r.header.as_ref(), &format!("Role {} deleted", a.name));
            }
            RoleCommand::Get(a) => {
                let r = client.role_get(&a.name).await?;
                print_role(f, &a.name, &r);
            }
            RoleCommand::List => {
                let r = client.role_list().await?;
                names(f, r.header.as_ref(), "roles", &r.roles);
            }
            RoleCommand::GrantPermission(a) => {
                let (key, end) = bounds(&a.keys);
                let permission = match a.permission {
                    PermissionArg::Read => Permission::Read,
                    PermissionArg::Write => Permission::Write,
                    PermissionArg::Readwrite => Permission::ReadWrite,
                };
                let r = client
                    .role_grant_permission(&a.role, permission, &key, &end)
                    .await?;
                done(f, r.header.as_ref(), &format!("Role {} updated", a.role));
            }
            RoleCommand::RevokePermission(a) => {
                let (key, end) = bounds(&a.keys);
                let r = client.role_revoke_permission(&a.role, &key, &end).await?;
                let what = if end.is_empty() {
                    format!("key {}", a.keys.key)
                } else {
                    format!("range {}", describe(&key, &end))
                };
                let said = format!("Permission of {what} is revoked from role {}", a.role);
                done(f, r.header.as_ref(), &said);
            }
        }
        Ok(())
    })
}

/// Prints a role's permissions, read ones then write ones, as etcdctl.
fn print_role(f: Format, name: &str, r: &dengine_client::proto::etcdserverpb::AuthRoleGetResponse) {
    let of = |kinds: &[i32]| -> Vec<String> {
        r.perm
            .iter()
            .filter(|p| kinds.contains(&p.perm_type))
            .map(|p| describe(&p.key, &p.range_end))
            .collect()
    };
    let (read, write) = (
        authpb::permission::Type::Read as i32,
        authpb::permission::Type::Write as i32,
    );
    let both = authpb::permission::Type::Readwrite as i32;
    let reads = of(&[read, both]);
    let writes = of(&[write, both]);
    match f {
        Format::Json => print_json(&json!({
            "header": out::header(r.header.as_ref()),
            "name": name,
            "read": reads,
            "write": writes,
        })),
        _ => {
            println!("Role {name}");
            println!("KV Read:");
            for k in &reads {
                println!("\t{k}");
            }
            println!("KV Write:");
            for k in &writes {
                println!("\t{k}");
            }
        }
    }
}

/// Runs `dengine auth ...`.
pub fn run_auth(command: AuthCommand, conn: &Conn) -> ExitCode {
    run("auth", conn, |client, conn| async move {
        let f = conn.write_out;
        match command {
            AuthCommand::Enable => {
                let r = match client.auth_enable().await {
                    // As etcdctl: make the root role and give it to root.
                    Err(e) if e.to_string().contains("root user does not have root role") => {
                        if let Err(e) = client.role_add("root").await
                            && !e.to_string().contains("role name already exists")
                        {
                            return Err(e.into());
                        }
                        client.user_grant_role("root", "root").await?;
                        client.auth_enable().await?
                    }
                    r => r?,
                };
                done(f, r.header.as_ref(), "Authentication Enabled");
            }
            AuthCommand::Disable => {
                let r = client.auth_disable().await?;
                done(f, r.header.as_ref(), "Authentication Disabled");
            }
            AuthCommand::Status => {
                let r = client.auth_status().await?;
                match f {
                    Format::Json => print_json(&json!({
                        "header": out::header(r.header.as_ref()),
                        "enabled": r.enabled,
                        "auth_revision": r.auth_revision,
                    })),
                    _ => println!(
                        "Authentication Status: {}\nAuthRevision: {}",
                        r.enabled, r.auth_revision
                    ),
                }
            }
        }
        Ok(())
    })
}

//! `dengine lease grant|revoke|keep-alive|list|timetolive`.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::json;

use super::out::{self, print_json, print_table};
use super::{Conn, Failed, Format, parse_hex_id, run};

/// `dengine lease ...`.
#[derive(Subcommand, Debug)]
pub enum LeaseCommand {
    /// Grants a lease of TTL seconds.
    Grant(GrantArgs),
    /// Revokes a lease (its keys are deleted).
    Revoke(IdArgs),
    /// Keeps a lease alive until interrupted (or once, with --once).
    KeepAlive(KeepAliveArgs),
    /// Lists the leases.
    List(ListArgs),
    /// Says how long a lease has left (and its keys, with --keys).
    Timetolive(TtlArgs),
}

/// `dengine lease grant TTL`.
#[derive(Args, Debug)]
pub struct GrantArgs {
    /// Seconds.
    pub ttl: i64,
}

/// A command on one lease.
#[derive(Args, Debug)]
pub struct IdArgs {
    /// The lease id, in hex.
    #[arg(value_parser = parse_hex_id)]
    pub id: u64,
}

/// `dengine lease keep-alive ID`.
#[derive(Args, Debug)]
pub struct KeepAliveArgs {
    /// The lease id, in hex.
    #[arg(value_parser = parse_hex_id)]
    pub id: u64,
    /// Renews once and exits.
    #[arg(long)]
    pub once: bool,
}

/// `dengine lease list`.
#[derive(Args, Debug)]
pub struct ListArgs {}

/// `dengine lease timetolive ID`.
#[derive(Args, Debug)]
pub struct TtlArgs {
    /// The lease id, in hex.
    #[arg(value_parser = parse_hex_id)]
    pub id: u64,
    /// Lists the keys attached.
    #[arg(long)]
    pub keys: bool,
}

pub fn run_lease(command: LeaseCommand, conn: &Conn) -> ExitCode {
    match command {
        LeaseCommand::Grant(a) => run("lease grant", conn, |client, conn| async move {
            let r = client.lease_grant(a.ttl, None).await?;
            match conn.write_out {
                Format::Json => print_json(&json!({
                    "header": out::header(r.header.as_ref()),
                    "id": format!("{:x}", r.id),
                    "ttl": r.ttl,
                })),
                _ => println!("lease {:x} granted with TTL({}s)", r.id, r.ttl),
            }
            Ok(())
        }),
        LeaseCommand::Revoke(a) => run("lease revoke", conn, |client, conn| async move {
            let r = client.lease_revoke(a.id as i64).await?;
            match conn.write_out {
                Format::Json => print_json(&json!({
                    "header": out::header(r.header.as_ref()),
                    "id": format!("{:x}", a.id),
                })),
                _ => println!("lease {:x} revoked", a.id),
            }
            Ok(())
        }),
        LeaseCommand::KeepAlive(a) => run("lease keep-alive", conn, |client, conn| async move {
            let id = a.id as i64;
            let say = |ttl: i64| match conn.write_out {
                Format::Json => print_json(&json!({"id": format!("{:x}", a.id), "ttl": ttl})),
                _ => println!("lease {:x} keepalived with TTL({ttl})", a.id),
            };
            if a.once {
                say(client.lease_keep_alive_once(id).await?);
                return Ok(());
            }
            let mut alive = client.lease_keep_alive(id).await?;
            let mut last = alive.ttl();
            if let Some(t) = last {
                say(t);
            }
            loop {
                tokio::select! {
                    _ = alive.expired() => break,
                    _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                }
                if alive.ttl() != last {
                    last = alive.ttl();
                    if let Some(t) = last {
                        say(t);
                    }
                }
            }
            Err(Failed::Message(format!(
                "lease {:x} expired or was revoked",
                a.id
            )))
        }),
        LeaseCommand::List(_) => run("lease list", conn, |client, conn| async move {
            let r = client.lease_leases().await?;
            let ids: Vec<String> = r.leases.iter().map(|l| format!("{:x}", l.id)).collect();
            match conn.write_out {
                Format::Json => print_json(&json!({
                    "header": out::header(r.header.as_ref()),
                    "leases": ids,
                })),
                Format::Table => {
                    let rows: Vec<Vec<String>> = ids.into_iter().map(|i| vec![i]).collect();
                    print_table(&["LEASE"], &rows);
                }
                Format::Text => {
                    println!("found {} leases", ids.len());
                    for i in ids {
                        println!("{i}");
                    }
                }
            }
            Ok(())
        }),
        LeaseCommand::Timetolive(a) => run("lease timetolive", conn, |client, conn| async move {
            let r = client.lease_time_to_live(a.id as i64, a.keys).await?;
            let keys: Vec<String> = r.keys.iter().map(|k| super::text(k)).collect();
            match conn.write_out {
                Format::Json => print_json(&json!({
                    "header": out::header(r.header.as_ref()),
                    "id": format!("{:x}", a.id),
                    "ttl": r.ttl,
                    "granted_ttl": r.granted_ttl,
                    "keys": keys,
                })),
                _ if r.ttl < 0 => println!("lease {:x} already expired", a.id),
                _ => {
                    print!(
                        "lease {:x} granted with TTL({}s), remaining({}s)",
                        a.id, r.granted_ttl, r.ttl
                    );
                    if a.keys {
                        print!(", attached keys([{}])", keys.join(" "));
                    }
                    println!();
                }
            }
            Ok(())
        }),
    }
}

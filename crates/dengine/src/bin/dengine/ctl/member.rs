//! `dengine member list|add|promote|remove|update` and
//! `dengine leader transfer`.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use dengine_client::proto::etcdserverpb::Member;
use serde_json::{Value, json};

use super::out::{self, done, print_json, print_table};
use super::{Conn, Format, parse_hex_id, run};

/// `dengine member ...`.
#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// Lists the members.
    List(ListArgs),
    /// Adds a member (then start it with the command printed).
    Add(AddArgs),
    /// Makes a learner a voting member.
    Promote(IdArgs),
    /// Removes a member.
    Remove(IdArgs),
    /// Changes a member's peer URLs.
    Update(UpdateArgs),
    /// Replaces a stopped member whose files are damaged: moves its data
    /// directory aside, removes it and adds it again under a new id
    /// (then start it with the command printed; it fetches a snapshot).
    Repair(super::repair::RepairArgs),
}

/// `dengine member list`.
#[derive(Args, Debug)]
pub struct ListArgs {}

/// `dengine member add NAME --peer-urls URLS`.
#[derive(Args, Debug)]
pub struct AddArgs {
    /// The new member's name (its `--name`).
    pub name: String,
    /// Where the others reach it, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub peer_urls: Vec<String>,
    /// Adds it as a learner (gets the log, does not vote).
    #[arg(long)]
    pub learner: bool,
}

/// A command on one member.
#[derive(Args, Debug)]
pub struct IdArgs {
    /// The member id, in hex.
    #[arg(value_parser = parse_hex_id)]
    pub id: u64,
}

/// `dengine member update ID --peer-urls URLS`.
#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// The member id, in hex.
    #[arg(value_parser = parse_hex_id)]
    pub id: u64,
    /// Its new peer URLs, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub peer_urls: Vec<String>,
}

/// `dengine leader ...`.
#[derive(Subcommand, Debug)]
pub enum LeaderCommand {
    /// Hands leadership to another member.
    Transfer(IdArgs),
}

fn member_json(m: &Member) -> Value {
    json!({
        "id": format!("{:x}", m.id),
        "name": m.name,
        "peer_urls": m.peer_ur_ls,
        "client_urls": m.client_ur_ls,
        "is_learner": m.is_learner,
    })
}

fn member_row(m: &Member) -> Vec<String> {
    vec![
        format!("{:x}", m.id),
        if m.name.is_empty() {
            "unstarted".into()
        } else {
            m.name.clone()
        },
        if m.is_learner {
            "learner".into()
        } else {
            "voter".into()
        },
        m.peer_ur_ls.join(","),
        m.client_ur_ls.join(","),
    ]
}

pub fn run_member(command: MemberCommand, conn: &Conn) -> ExitCode {
    match command {
        MemberCommand::List(_) => run("member list", conn, |client, conn| async move {
            let r = client.member_list().await?;
            match conn.write_out {
                Format::Json => print_json(&json!({
                    "header": out::header(r.header.as_ref()),
                    "members": r.members.iter().map(member_json).collect::<Vec<_>>(),
                })),
                Format::Table => print_table(
                    &["ID", "NAME", "ROLE", "PEER URLS", "CLIENT URLS"],
                    &r.members.iter().map(member_row).collect::<Vec<_>>(),
                ),
                Format::Text => {
                    for m in &r.members {
                        println!("{}", member_row(m).join(", "));
                    }
                }
            }
            Ok(())
        }),
        MemberCommand::Add(a) => run("member add", conn, |client, conn| async move {
            let r = client.member_add(a.peer_urls.clone(), a.learner).await?;
            let added = r.member.clone().unwrap_or_default();
            let initial = initial_cluster(&r.members, added.id, &a.name);
            match conn.write_out {
                Format::Json => print_json(&json!({
                    "header": out::header(r.header.as_ref()),
                    "member": member_json(&added),
                    "initial_cluster": initial,
                })),
                _ => {
                    println!(
                        "member {} added to the cluster with id {:x}",
                        a.name, added.id
                    );
                    println!("start it with:");
                    println!(
                        "  dengine serve --name {} --initial-cluster {} --initial-cluster-state existing \
                         --initial-advertise-peer-urls {} --listen-peer-urls {} --data-dir <dir>",
                        a.name,
                        initial,
                        a.peer_urls.join(","),
                        a.peer_urls.join(","),
                    );
                }
            }
            Ok(())
        }),
        MemberCommand::Promote(a) => run("member promote", conn, |client, conn| async move {
            let r = client.member_promote(a.id).await?;
            done(
                conn.write_out,
                r.header.as_ref(),
                &format!("member {:x} promoted to a voter", a.id),
            );
            Ok(())
        }),
        MemberCommand::Remove(a) => run("member remove", conn, |client, conn| async move {
            let r = client.member_remove(a.id).await?;
            done(
                conn.write_out,
                r.header.as_ref(),
                &format!("member {:x} removed", a.id),
            );
            Ok(())
        }),
        MemberCommand::Repair(a) => super::repair::repair(a, conn),
        MemberCommand::Update(a) => run("member update", conn, |client, conn| async move {
            let r = client.member_update(a.id, a.peer_urls.clone()).await?;
            done(
                conn.write_out,
                r.header.as_ref(),
                &format!("member {:x} updated", a.id),
            );
            Ok(())
        }),
    }
}

/// `--initial-cluster` for a member just added (`added`, named `name`,
/// not yet started so unnamed in `members`).
pub fn initial_cluster(members: &[Member], added: u64, name: &str) -> String {
    members
        .iter()
        .flat_map(|m| {
            let name = if m.id == added { name } else { &m.name };
            m.peer_ur_ls.iter().map(move |u| format!("{name}={u}"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

pub fn run_leader(command: LeaderCommand, conn: &Conn) -> ExitCode {
    match command {
        LeaderCommand::Transfer(a) => run("leader transfer", conn, |client, conn| async move {
            let r = client.move_leader(a.id).await?;
            done(
                conn.write_out,
                r.header.as_ref(),
                &format!("leadership moved to {:x}", a.id),
            );
            Ok(())
        }),
    }
}

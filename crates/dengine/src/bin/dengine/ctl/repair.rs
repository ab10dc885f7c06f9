//! `dengine member repair NAME --data-dir DIR`: brings back a member
//! whose files are damaged (it refuses to start, naming the file and
//! entry) from the rest of the cluster.
//!
//! Its files cannot be patched: a member that lost part of its log may
//! also have lost a vote it gave, and voting again in that term could
//! elect two leaders. So, as etcd's operators do by hand, the member is
//! replaced: its data directory is moved aside (kept for a post-mortem,
//! never deleted), it is removed from the cluster and added again with
//! the same name and peer URLs, under a new id; started with the command
//! printed, it joins empty and the leader sends it a snapshot.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use serde_json::json;

use super::out::{self, print_json};
use super::{Conn, Failed, Format, run};

/// `dengine member repair NAME --data-dir DIR`.
#[derive(Args, Debug)]
pub struct RepairArgs {
    /// The damaged member's name (its `--name`); it must be stopped.
    pub name: String,
    /// Its data directory, moved aside to `DIR.damaged-<unix time>`.
    #[arg(long)]
    pub data_dir: PathBuf,
}

/// Whether something answers on the client URL `url` (the member runs).
async fn answers(url: &str) -> bool {
    let host_port = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .trim_end_matches('/');
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(host_port)
        )
        .await,
        Ok(Ok(_))
    )
}

/// Where the damaged directory goes: beside it, never over anything.
fn aside(dir: &Path) -> PathBuf {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".damaged-{now}"));
    let mut to = dir.with_file_name(&name);
    let mut n = 1;
    while to.exists() {
        to = dir.with_file_name(format!("{}-{n}", name.to_string_lossy()));
        n += 1;
    }
    to
}

/// Runs `dengine member repair`.
pub fn repair(a: RepairArgs, conn: &Conn) -> ExitCode {
    run("member repair", conn, |client, conn| async move {
        let list = client.member_list().await?;
        let Some(old) = list.members.iter().find(|m| m.name == a.name).cloned() else {
            let names: Vec<&str> = list.members.iter().map(|m| m.name.as_str()).collect();
            return Err(Failed::Message(format!(
                "no member is named {:?} (members: {})",
                a.name,
                names.join(", ")
            )));
        };
        if old.peer_ur_ls.is_empty() {
            return Err(Failed::Message(format!(
                "member {} has no peer URLs",
                a.name
            )));
        }
        for url in &old.client_ur_ls {
            if answers(url).await {
                return Err(Failed::Message(format!(
                    "member {} answers on {url}: stop it before repairing it",
                    a.name
                )));
            }
        }
        if !a.data_dir.is_dir() {
            return Err(Failed::Message(format!(
                "--data-dir {}: no such directory",
                a.data_dir.display()
            )));
        }
        let kept = aside(&a.data_dir);
        std::fs::rename(&a.data_dir, &kept).map_err(|e| {
            Failed::Message(format!(
                "moving {} to {}: {e}",
                a.data_dir.display(),
                kept.display()
            ))
        })?;
        eprintln!("moved {} to {}", a.data_dir.display(), kept.display());
        client.member_remove(old.id).await?;
        eprintln!("removed member {} ({:x})", a.name, old.id);
        let added = client.member_add(old.peer_ur_ls.clone(), false).await?;
        let new_id = added.member.as_ref().map_or(0, |m| m.id);
        let initial = super::member::initial_cluster(&added.members, new_id, &a.name);
        let peers = old.peer_ur_ls.join(",");
        let start = format!(
            "dengine serve --name {} --data-dir {} --initial-cluster {} \
             --initial-cluster-state existing --initial-advertise-peer-urls {peers} \
             --listen-peer-urls {peers} --advertise-client-urls {clients} \
             --listen-client-urls {clients}",
            a.name,
            a.data_dir.display(),
            initial,
            clients = old.client_ur_ls.join(","),
        );
        match conn.write_out {
            Format::Json => print_json(&json!({
                "header": out::header(added.header.as_ref()),
                "removed": format!("{:x}", old.id),
                "added": format!("{new_id:x}"),
                "damaged_data_dir": kept.display().to_string(),
                "initial_cluster": initial,
                "start": start,
            })),
            _ => {
                println!(
                    "member {} replaced: old id {:x}, new id {new_id:x}; its damaged files are in {}",
                    a.name,
                    old.id,
                    kept.display()
                );
                println!("start it again (with its other flags too) to fetch a snapshot:");
                println!("  {start}");
            }
        }
        Ok(())
    })
}

//! `dengine snapshot save`: downloads a backup of a running member.
//!
//! `dengine snapshot restore`: makes the data directory of a member of a
//! new cluster from a backup (`dengine snapshot save`, or `etcdctl
//! snapshot save` against a dengine member), as `etcdutl snapshot
//! restore` does for etcd. Run it once per
//! member, each with its own `--name`, `--data-dir` and peer URLs and the
//! same `--initial-cluster` and `--initial-cluster-token`; then start each
//! member with `dengine serve --data-dir ...`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Subcommand};

use crate::ctl::{self, Conn, Failed, Format};
use crate::serve::{self, ServeArgs};

/// `dengine snapshot ...`.
#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Downloads a backup of a running member (the first endpoint) into
    /// FILE (written whole or not at all).
    Save(SaveArgs),
    /// Makes a member's data directory for a new cluster from a backup
    /// (the new cluster has the backup's keys, history and leases, and the
    /// members `--initial-cluster` names).
    Restore(Box<RestoreArgs>),
}

/// `dengine snapshot restore FILE [the member's flags]`.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup to restore.
    pub file: PathBuf,
    /// The new member (the flags of `dengine serve`: --name, --data-dir,
    /// --initial-cluster, --initial-cluster-token,
    /// --initial-advertise-peer-urls, --storage).
    #[command(flatten)]
    pub member: ServeArgs,
}

/// `dengine snapshot save FILE`.
#[derive(Args, Debug)]
pub struct SaveArgs {
    /// Where to write the backup.
    pub file: PathBuf,
}

/// Runs a `dengine snapshot` command; the exit code.
pub fn run(command: SnapshotCommand, conn: &Conn) -> ExitCode {
    match command {
        SnapshotCommand::Save(args) => save(args, conn),
        SnapshotCommand::Restore(args) => restore(*args),
    }
}

/// Bytes as people read them.
fn human(bytes: f64) -> String {
    if bytes >= 1e9 {
        format!("{:.1} GB", bytes / 1e9)
    } else if bytes >= 1e6 {
        format!("{:.1} MB", bytes / 1e6)
    } else if bytes >= 1e3 {
        format!("{:.1} kB", bytes / 1e3)
    } else {
        format!("{bytes:.0} B")
    }
}

fn save(args: SaveArgs, conn: &Conn) -> ExitCode {
    let mut conn = conn.clone();
    // One member's backup: the first endpoint, as etcdctl takes one.
    conn.endpoints.truncate(1);
    // A large backup takes longer than a request.
    conn.command_timeout = conn
        .command_timeout
        .max(std::time::Duration::from_secs(3600));
    ctl::run("snapshot save", &conn, |client, conn| async move {
        let endpoint = conn.endpoints.first().cloned().unwrap_or_default();
        let started = Instant::now();
        let bar = std::io::stderr().is_terminal() && conn.write_out != Format::Json;
        let size = client
            .snapshot_to_file(&endpoint, &args.file, |got, left| {
                if bar {
                    let total = (got + left).max(1);
                    let rate = got as f64 / started.elapsed().as_secs_f64().max(0.001);
                    let filled = (got * 30 / total) as usize;
                    eprint!(
                        "\r[{}{}] {} of {} ({}/s)   ",
                        "#".repeat(filled),
                        " ".repeat(30 - filled.min(30)),
                        human(got as f64),
                        human(total as f64),
                        human(rate)
                    );
                    let _ = std::io::stderr().flush();
                }
            })
            .await
            .map_err(Failed::Client)?;
        if bar {
            eprintln!();
        }
        let took = started.elapsed();
        match conn.write_out {
            Format::Json => println!(
                "{}",
                serde_json::json!({
                    "file": args.file.display().to_string(),
                    "bytes": size,
                    "seconds": took.as_secs_f64(),
                    "endpoint": endpoint,
                })
            ),
            _ => println!(
                "snapshot saved to {} ({}, {:.1} s, from {endpoint})",
                args.file.display(),
                human(size as f64),
                took.as_secs_f64()
            ),
        }
        Ok(())
    })
}

fn restore(args: RestoreArgs) -> ExitCode {
    let cfg = match serve::config(args.member) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dengine snapshot restore: {e}");
            return ExitCode::from(2);
        }
    };
    match dengine::grpc::backup::restore(&args.file, &cfg) {
        Ok(done) => {
            println!(
                "restored revision {} of cluster {:x} (a backup made by member {:x}) into {}",
                done.from.revision,
                done.from.cluster_id,
                done.from.member_id,
                cfg.node.data_dir.display()
            );
            println!(
                "member {} (id {:x}) of the new cluster {:x}; start it with: dengine serve --data-dir {}",
                cfg.name,
                done.record.member_id.0,
                done.record.cluster_id,
                cfg.node.data_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dengine snapshot restore: {e}");
            ExitCode::from(2)
        }
    }
}

//! `dengine snapshot restore`: makes the data directory of a member of a
//! new cluster from a backup (`etcdctl snapshot save` against a dengine
//! member), as `etcdutl snapshot restore` does for etcd. Run it once per
//! member, each with its own `--name`, `--data-dir` and peer URLs and the
//! same `--initial-cluster` and `--initial-cluster-token`; then start each
//! member with `dengine serve --data-dir ...`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::serve::{self, ServeArgs};

/// `dengine snapshot ...`.
#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
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

/// Runs a `dengine snapshot` command; the exit code.
pub fn run(command: SnapshotCommand) -> ExitCode {
    match command {
        SnapshotCommand::Restore(args) => restore(*args),
    }
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

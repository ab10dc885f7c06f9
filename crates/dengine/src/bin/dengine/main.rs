//! The `dengine` command: `dengine serve` runs a member of a cluster that
//! speaks etcd's v3 API; `dengine snapshot restore` makes a new cluster's
//! data from a backup.

mod serve;
mod snapshot;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// dengine: a strongly-consistent Raft key-value store that speaks etcd's
/// v3 API.
#[derive(Parser, Debug)]
#[command(name = "dengine", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs a member of a cluster (with no flags: a single-node cluster on
    /// 127.0.0.1, data in ./dengine-data).
    Serve(Box<serve::ServeArgs>),
    /// Backups (`etcdctl snapshot save` makes one from a running member).
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Snapshot(command) => snapshot::run(command),
    }
}

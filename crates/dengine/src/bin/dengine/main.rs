//! The `dengine` command: `dengine serve` runs a member of a cluster that
//! speaks etcd's v3 API; the client commands (`put`, `get`, `del`, `txn`,
//! `watch`, `compact`, `lease`, `member`, `leader`, `status`, `snapshot
//! save`) talk to a running cluster as etcdctl does; `dengine snapshot
//! restore` makes a new cluster's data from a backup.

mod allocator;
mod cluster;
mod ctl;
mod observe;
mod otel;
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
    #[command(flatten)]
    conn: ctl::Conn,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs a member of a cluster (with no flags: a single-node cluster on
    /// 127.0.0.1, data in ./dengine-data).
    Serve(Box<serve::ServeArgs>),
    /// Writes a key.
    Put(ctl::kv::PutArgs),
    /// Reads a key or a range.
    Get(ctl::kv::GetArgs),
    /// Deletes a key or a range.
    Del(ctl::kv::DelArgs),
    /// Runs a transaction read from stdin (etcdctl's format).
    Txn(ctl::kv::TxnArgs),
    /// Prints changes to a key or a range as they happen.
    Watch(ctl::watch::WatchArgs),
    /// Drops the history before a revision.
    Compact(ctl::kv::CompactArgs),
    /// Leases.
    #[command(subcommand)]
    Lease(ctl::lease::LeaseCommand),
    /// The cluster's members.
    #[command(subcommand)]
    Member(ctl::member::MemberCommand),
    /// Leadership.
    #[command(subcommand)]
    Leader(ctl::member::LeaderCommand),
    /// Users (etcd's auth).
    #[command(subcommand)]
    User(ctl::auth::UserCommand),
    /// Roles and their permissions (etcd's auth).
    #[command(subcommand)]
    Role(ctl::auth::RoleCommand),
    /// Turns etcd's auth on or off.
    #[command(subcommand)]
    Auth(ctl::auth::AuthCommand),
    /// One table of every member's state.
    Status(ctl::status::StatusArgs),
    /// Backups: `save` downloads one from a running member, `restore`
    /// makes a new cluster's data from one.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// A local cluster of real processes to try dengine with.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            allocator::exec_with_eager_commit_off();
            serve::run(*args)
        }
        Command::Put(a) => ctl::kv::put(a, &cli.conn),
        Command::Get(a) => ctl::kv::get(a, &cli.conn),
        Command::Del(a) => ctl::kv::del(a, &cli.conn),
        Command::Txn(a) => ctl::kv::txn(a, &cli.conn),
        Command::Watch(a) => ctl::watch::watch(a, &cli.conn),
        Command::Compact(a) => ctl::kv::compact(a, &cli.conn),
        Command::Lease(c) => ctl::lease::run_lease(c, &cli.conn),
        Command::Member(c) => ctl::member::run_member(c, &cli.conn),
        Command::Leader(c) => ctl::member::run_leader(c, &cli.conn),
        Command::User(c) => ctl::auth::run_user(c, &cli.conn),
        Command::Role(c) => ctl::auth::run_role(c, &cli.conn),
        Command::Auth(c) => ctl::auth::run_auth(c, &cli.conn),
        Command::Status(a) => ctl::status::status(a, &cli.conn),
        Command::Snapshot(command) => snapshot::run(command, &cli.conn),
        Command::Cluster(command) => cluster::run(command),
    }
}

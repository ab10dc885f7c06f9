//! The client commands of `dengine` (`put`, `get`, `del`, `txn`, `watch`,
//! `compact`, `lease`, `member`, `leader`, `status`): etcdctl's commands,
//! through dengine's own client (`dengine-client`), so they follow the
//! leader and retry what is safe to.
//!
//! Every command takes the cluster's endpoints (`--endpoints`, or
//! `DENGINE_ENDPOINTS`, default `127.0.0.1:2379`) and an output format
//! (`-w text|json|table`). Errors are one line on stderr, saying what
//! failed and what to do, with exit code 1.

pub mod auth;
pub mod kv;
pub mod lease;
pub mod member;
pub mod out;
pub mod repair;
pub mod status;
pub mod txn_parse;
pub mod watch;

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use dengine_client::{Client, ClientOptions, ClientTls, Error, ErrorKind};

/// How a command prints its result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Lines a person reads (etcdctl's simple format).
    #[default]
    Text,
    /// One JSON object, with stable field names, for scripts.
    Json,
    /// A table where the result is a list (otherwise as text).
    Table,
}

/// How to reach the cluster, and how to print (flags of every client
/// command, before or after its name).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Options of the client commands (not of serve)")]
pub struct Conn {
    /// The members' client URLs or host:port, comma-separated.
    #[arg(
        long,
        global = true,
        env = "DENGINE_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Output format.
    #[arg(short = 'w', long = "write-out", global = true, value_enum, default_value_t = Format::Text)]
    pub write_out: Format,
    /// How long the command may take, retries included (e.g. 5s, 500ms).
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    pub command_timeout: Duration,
    /// The CA certificate (PEM) that signs the members' certificates, for
    /// https endpoints (etcdctl's flag).
    #[arg(long, global = true, env = "DENGINE_CACERT")]
    pub cacert: Option<std::path::PathBuf>,
    /// This client's certificate (PEM), for members that ask for one.
    #[arg(
        long = "cert",
        id = "tls_cert",
        global = true,
        env = "DENGINE_CERT",
        requires = "tls_key"
    )]
    pub cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of `--cert`.
    #[arg(
        long = "key",
        id = "tls_key",
        global = true,
        env = "DENGINE_KEY",
        requires = "tls_cert"
    )]
    pub key: Option<std::path::PathBuf>,
    /// A user to authenticate as, `name:password` (etcdctl's flag); with
    /// a name alone the password comes from `--password`.
    #[arg(long, global = true, env = "DENGINE_USER")]
    pub user: Option<String>,
    /// The password of `--user` (etcdctl's flag).
    #[arg(long, global = true, env = "DENGINE_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
}

/// A key, or a range of keys (`get`, `del`, `watch`).
#[derive(Args, Debug)]
pub struct KeyRange {
    /// The key (or the start of the range).
    pub key: String,
    /// The end of the range (excluded).
    pub range_end: Option<String>,
    /// Every key starting with KEY.
    #[arg(long, conflicts_with_all = ["from_key", "range_end"])]
    pub prefix: bool,
    /// Every key from KEY on.
    #[arg(long, conflicts_with = "range_end")]
    pub from_key: bool,
}

/// Which keys a [`KeyRange`] names beside its key.
pub enum Span<'a> {
    /// The key alone.
    Key,
    /// Every key with the key as prefix.
    Prefix,
    /// Every key from the key on.
    FromKey,
    /// Up to this end.
    End(&'a str),
}

impl KeyRange {
    /// Which keys it names beside its key.
    pub fn span(&self) -> Span<'_> {
        match (&self.range_end, self.prefix, self.from_key) {
            (_, true, _) => Span::Prefix,
            (_, _, true) => Span::FromKey,
            (Some(end), _, _) => Span::End(end),
            (None, false, false) => Span::Key,
        }
    }
}

/// A duration like `5s`, `500ms`, `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (like 5s or 500ms)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{text:?}: the unit must be ms, s or m")),
    }
}

/// Parses a member or lease id written in hex (as etcdctl prints them).
pub fn parse_hex_id(text: &str) -> Result<u64, String> {
    let digits = text.trim_start_matches("0x");
    u64::from_str_radix(digits, 16)
        .map_err(|_| format!("{text:?} is not an id in hex (like 8e9e05c52164694d)"))
}

/// What a command's body fails with: a client error, or a message of its
/// own.
pub enum Failed {
    /// The client's error.
    Client(Error),
    /// A message ready to print.
    Message(String),
}

impl From<Error> for Failed {
    fn from(e: Error) -> Self {
        Failed::Client(e)
    }
}

/// Runs `body` with a client of the cluster; prints a failure as one line.
pub fn run<F, Fut>(name: &str, conn: &Conn, body: F) -> ExitCode
where
    F: FnOnce(Client, Conn) -> Fut,
    Fut: Future<Output = Result<(), Failed>>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dengine {name}: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let conn = conn.clone();
    runtime.block_on(async move {
        let mut options = ClientOptions::default()
            .with_deadline(conn.command_timeout)
            .with_request_timeout(conn.command_timeout)
            .with_connect_timeout(conn.command_timeout.min(Duration::from_secs(2)));
        if let Some(ca) = &conn.cacert {
            match ClientTls::from_files(ca, conn.cert.as_deref(), conn.key.as_deref()) {
                Ok(tls) => options = options.with_tls(tls),
                Err(e) => {
                    eprintln!("dengine {name}: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        if let Some(user) = &conn.user {
            let (user_name, password) = match (user.split_once(':'), &conn.password) {
                (Some((u, p)), None) => (u, p),
                (None, Some(password)) => (user.as_str(), password.as_str()),
                _ => {
                    eprintln!(
                        "dengine {name}: --user takes name:password, or a name with --password"
                    );
                    return ExitCode::from(2);
                }
            };
            if user_name.is_empty() {
                eprintln!("dengine {name}: --user: the user name is empty");
                return ExitCode::from(2);
            }
            options = options.with_user(user_name, password);
        }
        let client = match Client::connect_with(&conn.endpoints, options).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("dengine {name}: {}", explain(&e, &conn));
                return ExitCode::FAILURE;
            }
        };
        match body(client, conn.clone()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(Failed::Client(e)) => {
                eprintln!("dengine {name}: {}", explain(&e, &conn));
                ExitCode::FAILURE
            }
            Err(Failed::Message(m)) => {
                eprintln!("dengine {name}: {m}");
                ExitCode::FAILURE
            }
        }
    })
}

/// An error as one line a person can act on.
pub fn explain(e: &Error, conn: &Conn) -> String {
    match e {
        Error::Unavailable {
            endpoint, cause, ..
        } => format!(
            "cannot reach the cluster (last tried {endpoint}: {cause}); is `dengine serve` running \
             there? Give the members with --endpoints or DENGINE_ENDPOINTS (now: {})",
            conn.endpoints.join(",")
        ),
        Error::Unknown { cause } => format!(
            "the write may or may not have been applied ({cause}); read the key to find out before \
             writing again"
        ),
        Error::Server { kind, message, .. } => match kind {
            ErrorKind::NoLeader => format!(
                "{message}: the cluster has no leader (an election is under way, or too few members \
                 run); retry in a moment, and check `dengine status`"
            ),
            ErrorKind::RequestTooLarge => format!(
                "{message}: the key and value are larger than the server accepts (its \
                 --max-request-bytes)"
            ),
            ErrorKind::NoSpace => format!(
                "{message}: compact old revisions (`dengine compact`), defragment, then disarm the \
                 alarm (etcdctl alarm disarm)"
            ),
            ErrorKind::Corrupt => format!(
                "{message}: a member's store differs from the others' (`etcdctl alarm list` names \
                 it); repair it (`dengine member repair`), then disarm the alarm (etcdctl alarm \
                 disarm)"
            ),
            ErrorKind::LeaseNotFound => format!("{message}: the lease expired or was revoked"),
            ErrorKind::TooManyRequests => {
                format!("{message}: the cluster is overloaded; retry with less load")
            }
            _ => message.clone(),
        },
        other => other.to_string(),
    }
}

/// A byte string as text (keys and values are shown as UTF-8, with
/// invalid bytes replaced).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_ids_parse_as_etcdctl_writes_them() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5h").is_err());
        assert_eq!(parse_hex_id("8e9e05c52164694d"), Ok(0x8e9e05c52164694d));
        assert_eq!(parse_hex_id("0x10"), Ok(16));
        assert!(parse_hex_id("xyz").is_err());
    }
}

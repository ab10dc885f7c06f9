//! `dengine cluster up|down|status`: a local cluster to try dengine with.
//! `up` starts 1, 3 or 5 `dengine serve` processes on 127.0.0.1 (free
//! ports, data and logs in one directory) that keep running after it
//! exits; `down` stops them and keeps their data, so the next `up` starts
//! the same cluster again; `status` says which members run and which one
//! leads.
//!
//! The directory (`--dir`, default `./dengine-cluster`) holds, per member
//! `mI`, its data directory `mI/` and its log `mI.log`, and the state file
//! `cluster.state` (see [`State`]).

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};

mod state;

use state::{Member, State, read_state, write_state};

/// The state file's name, in the cluster's directory.
const STATE_FILE: &str = "cluster.state";
/// How long `up` waits for every member to know a leader.
const STARTUP: Duration = Duration::from_secs(20);
/// How long a member may take to stop after SIGTERM before SIGKILL.
const STOP: Duration = Duration::from_secs(10);
/// How many lines of a failed member's log `up` shows.
const LOG_TAIL: usize = 20;

/// `dengine cluster ...`.
#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Starts N local members (1, 3 or 5) on 127.0.0.1 that keep running
    /// after this command exits, and says how to use them; in a directory
    /// of a stopped cluster, starts that cluster again (same ports, same
    /// data).
    Up(UpArgs),
    /// Stops the members `cluster up` started (SIGTERM, then SIGKILL after
    /// 10 s); keeps their data, so `cluster up` starts them again.
    Down(DirArgs),
    /// Says which members run, and which one leads (exit code 0 if all
    /// run).
    Status(DirArgs),
    /// Prints the members' client URLs, comma-separated: the value for
    /// `DENGINE_ENDPOINTS` or `etcdctl --endpoints`.
    Endpoints(DirArgs),
}

/// `dengine cluster up [-n N] [--dir DIR]`.
#[derive(Args, Debug)]
pub struct UpArgs {
    /// How many members: 1, 3 or 5 (ignored when DIR holds a cluster
    /// already: that one starts again).
    #[arg(short = 'n', long, default_value_t = 3)]
    pub members: usize,
    /// The cluster's directory: the members' data and logs, and the state
    /// file the other `cluster` commands read.
    #[arg(long, default_value = "dengine-cluster")]
    pub dir: PathBuf,
}

/// `dengine cluster down|status [--dir DIR]`.
#[derive(Args, Debug)]
pub struct DirArgs {
    /// The cluster's directory (the one given to `cluster up`).
    #[arg(long, default_value = "dengine-cluster")]
    pub dir: PathBuf,
}

/// Runs a `dengine cluster` command; the exit code.
pub fn run(command: ClusterCommand) -> ExitCode {
    match command {
        ClusterCommand::Up(args) => up(&args),
        ClusterCommand::Down(args) => down(&args.dir),
        ClusterCommand::Status(args) => status(&args.dir),
        ClusterCommand::Endpoints(args) => endpoints(&args.dir),
    }
}

/// Whether process `pid` runs and is a member started with `token` (its
/// command line names dengine and the token; a pid used again by another
/// process does not count, nor does a process that has exited).
fn process_runs(pid: u32, token: &str) -> bool {
    if pid == 0 {
        return false;
    }
    let cmdline = if Path::new("/proc/self").exists() {
        // NUL-separated arguments; empty for a zombie.
        match fs::read(format!("/proc/{pid}/cmdline")) {
            Ok(c) => c,
            Err(_) => return false,
        }
    } else {
        // No /proc (macOS, the BSDs): ask ps.
        match Command::new("ps")
            .args(["-p", &pid.to_string(), "-o", "command="])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => out.stdout,
            _ => return false,
        }
    };
    contains(&cmdline, b"dengine") && contains(&cmdline, token.as_bytes())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Sends `signal` (`TERM` or `KILL`) to `pid` with the `kill` command.
fn send_signal(pid: u32, signal: &str) -> Result<(), String> {
    if pid <= 1 {
        return Err(format!("refusing to signal pid {pid}"));
    }
    // `-s SIG -- PID`: procps-ng 4.0.2's `kill` misreads some other forms
    // (`kill -SIG -N` signals every process).
    let status = Command::new("kill")
        .args(["-s", signal, "--"])
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("running `kill -s {signal} {pid}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`kill -s {signal} {pid}` failed ({status})"))
    }
}

/// How stopping a member went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// It was not running.
    WasNotRunning,
    /// It stopped after SIGTERM.
    Stopped,
    /// It did not stop within [`STOP`] of SIGTERM and got SIGKILL.
    Killed,
    /// It still runs after SIGKILL.
    StillRuns,
}

/// Stops the processes `pids` (at once): SIGTERM to each that `runs`,
/// waits up to [`STOP`] for all of them, then SIGKILL to what is left.
/// `runs(i)` says whether the process `pids[i]` runs.
fn stop(pids: &[u32], mut runs: impl FnMut(usize) -> bool) -> Vec<Outcome> {
    let mut outcome: Vec<Outcome> = (0..pids.len())
        .map(|i| {
            if runs(i) && send_signal(pids[i], "TERM").is_ok() {
                Outcome::Stopped
            } else if runs(i) {
                // SIGTERM could not be sent: straight to SIGKILL.
                Outcome::Killed
            } else {
                Outcome::WasNotRunning
            }
        })
        .collect();
    let wait_for = |outcome: &[Outcome], runs: &mut dyn FnMut(usize) -> bool, within: Duration| {
        let deadline = Instant::now() + within;
        loop {
            let left: Vec<usize> = (0..pids.len())
                .filter(|&i| outcome[i] != Outcome::WasNotRunning && runs(i))
                .collect();
            if left.is_empty() || Instant::now() >= deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let left = wait_for(&outcome, &mut runs, STOP);
    if left.is_empty() {
        return outcome;
    }
    for &i in &left {
        let _ = send_signal(pids[i], "KILL");
        outcome[i] = Outcome::Killed;
    }
    for i in wait_for(&outcome, &mut runs, Duration::from_secs(3)) {
        outcome[i] = Outcome::StillRuns;
    }
    outcome
}

/// `s` as a shell word (quoted if it needs to be).
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:=,@+%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The last `n` lines of the file at `path` (of its last 64 KiB).
fn tail(path: &Path, n: usize) -> Vec<String> {
    let Ok(mut f) = fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 << 10)));
    let mut bytes = Vec::new();
    let _ = f.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// A port on 127.0.0.1 nobody listens on right now, for each of `n` uses
/// (all different).
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    // Every listener is held until all are picked, so no port comes twice.
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("finding a free port on 127.0.0.1: {e}"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("finding a free port on 127.0.0.1: {e}"))
}

/// A token for a new cluster, different per run.
fn new_token() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("dengine-local-{nanos:x}-{:x}", std::process::id())
}

/// What a member said to `Status`.
struct Answer {
    member_id: u64,
    leader: u64,
}

/// Asks the member at `endpoint` for its status (within about 2 s).
async fn ask_status(endpoint: &str) -> Result<Answer, String> {
    let options = dengine_client::ClientOptions::default()
        .with_discover_members(false)
        .with_deadline(Duration::from_secs(1))
        .with_request_timeout(Duration::from_secs(1))
        .with_connect_timeout(Duration::from_secs(1));
    let ask = async {
        let client = dengine_client::Client::connect_with([endpoint], options)
            .await
            .map_err(|e| e.to_string())?;
        let s = client.status(endpoint).await.map_err(|e| e.to_string())?;
        Ok(Answer {
            member_id: s.header.map(|h| h.member_id).unwrap_or(0),
            leader: s.leader,
        })
    };
    match tokio::time::timeout(Duration::from_secs(3), ask).await {
        Ok(answer) => answer,
        Err(_) => Err("no answer within 3 s".into()),
    }
}

fn runtime(command: &str) -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("dengine cluster {command}: starting the async runtime: {e}");
            ExitCode::FAILURE
        })
}

/// Starts member `m` of `state` (data in `dir`, output appended to its
/// log there) in its own process group, so that it outlives this command
/// and a Ctrl-C in its terminal.
fn spawn(exe: &Path, dir: &Path, state: &State, m: &Member) -> Result<Child, String> {
    let log_path = dir.join(format!("{}.log", m.name));
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("opening {}: {e}", log_path.display()))?;
    let err = log
        .try_clone()
        .map_err(|e| format!("opening {}: {e}", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .args(["--name", &m.name])
        .arg("--data-dir")
        .arg(dir.join(&m.name))
        .args(["--listen-client-urls", &m.client_url])
        .args(["--advertise-client-urls", &m.client_url])
        .args(["--listen-peer-urls", &m.peer_url])
        .args(["--initial-advertise-peer-urls", &m.peer_url])
        .args(["--initial-cluster", &state.initial_cluster()])
        .args(["--initial-cluster-token", &state.token])
        // The log is a file: no terminal colours in it.
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err));
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    cmd.spawn()
        .map_err(|e| format!("starting {} ({}): {e}", m.name, exe.display()))
}

/// Stops the children `up` started (after a failure).
fn stop_children(children: &mut [Child]) {
    let pids: Vec<u32> = children.iter().map(Child::id).collect();
    let outcome = stop(&pids, |i| matches!(children[i].try_wait(), Ok(None)));
    for (i, o) in outcome.iter().enumerate() {
        if *o == Outcome::StillRuns {
            eprintln!("dengine cluster up: pid {} does not stop", pids[i]);
        }
    }
}

fn up(args: &UpArgs) -> ExitCode {
    const WHO: &str = "dengine cluster up";
    if ![1, 3, 5].contains(&args.members) {
        eprintln!(
            "{WHO}: -n {} is not 1, 3 or 5 (a Raft cluster of an even size tolerates \
             no more failures than one member smaller)",
            args.members
        );
        return ExitCode::from(2);
    }
    let shown = shell_word(&args.dir.to_string_lossy());
    let (mut state, fresh) = match read_state(&args.dir) {
        Err(e) => {
            eprintln!("{WHO}: {e}");
            return ExitCode::FAILURE;
        }
        Ok(Some(state)) => {
            let running: Vec<&str> = state
                .members
                .iter()
                .filter(|m| state.runs(m))
                .map(|m| m.name.as_str())
                .collect();
            if !running.is_empty() {
                eprintln!(
                    "{WHO}: the cluster in {shown} runs already ({} of its members: {}); \
                     `dengine cluster status --dir {shown}` shows it, \
                     `dengine cluster down --dir {shown}` stops it",
                    running.len(),
                    running.join(", ")
                );
                return ExitCode::FAILURE;
            }
            if state.members.len() != args.members {
                println!(
                    "{shown} holds a cluster of {} members: starting it again \
                     (delete {shown} for a new cluster of {})",
                    state.members.len(),
                    args.members
                );
            }
            (state, false)
        }
        Ok(None) => {
            let names: Vec<String> = (0..args.members).map(|i| format!("m{i}")).collect();
            if let Some(name) = names.iter().find(|n| {
                fs::read_dir(args.dir.join(n)).is_ok_and(|mut entries| entries.next().is_some())
            }) {
                eprintln!(
                    "{WHO}: {} holds member data but no {STATE_FILE}: delete {shown} \
                     or pick another --dir",
                    args.dir.join(name).display()
                );
                return ExitCode::FAILURE;
            }
            let ports = match free_ports(2 * args.members) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("{WHO}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let members = names
                .into_iter()
                .zip(ports.chunks(2))
                .map(|(name, p)| Member {
                    name,
                    pid: 0,
                    client_url: format!("http://127.0.0.1:{}", p[0]),
                    peer_url: format!("http://127.0.0.1:{}", p[1]),
                })
                .collect();
            (
                State {
                    token: new_token(),
                    members,
                },
                true,
            )
        }
    };
    if let Err(e) = fs::create_dir_all(&args.dir) {
        eprintln!("{WHO}: creating {}: {e}", args.dir.display());
        return ExitCode::FAILURE;
    }
    let dir = match std::path::absolute(&args.dir) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{WHO}: {}: {e}", args.dir.display());
            return ExitCode::FAILURE;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{WHO}: finding the dengine executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Written before any member starts: `cluster down` can always find
    // what this command started, even if it is interrupted.
    if fresh && let Err(e) = write_state(&dir, &state) {
        eprintln!("{WHO}: {e}");
        return ExitCode::FAILURE;
    }
    let rt = match runtime("up") {
        Ok(rt) => rt,
        Err(code) => return code,
    };

    let mut children: Vec<Child> = Vec::new();
    for i in 0..state.members.len() {
        match spawn(&exe, &dir, &state, &state.members[i]) {
            Ok(child) => {
                state.members[i].pid = child.id();
                children.push(child);
            }
            Err(e) => {
                eprintln!("{WHO}: {e}");
                stop_children(&mut children);
                let _ = write_state(&dir, &state);
                return ExitCode::FAILURE;
            }
        }
    }
    if let Err(e) = write_state(&dir, &state) {
        eprintln!("{WHO}: {e}; stopping the members");
        stop_children(&mut children);
        return ExitCode::FAILURE;
    }

    // Wait until every member knows a leader.
    let deadline = Instant::now() + STARTUP;
    let mut answers: Vec<Option<Answer>> = state.members.iter().map(|_| None).collect();
    loop {
        for (i, child) in children.iter_mut().enumerate() {
            if let Ok(Some(exit)) = child.try_wait() {
                let m = &state.members[i];
                let log = dir.join(format!("{}.log", m.name));
                eprintln!(
                    "{WHO}: member {} exited while starting ({exit}); the end of {}:",
                    m.name,
                    log.display()
                );
                for line in tail(&log, LOG_TAIL) {
                    eprintln!("    {line}");
                }
                stop_children(&mut children);
                eprintln!("{WHO}: stopped the other members; the logs are in {shown}");
                return ExitCode::FAILURE;
            }
        }
        for (i, m) in state.members.iter().enumerate() {
            if answers[i].is_none()
                && let Ok(a) = rt.block_on(ask_status(&m.client_url))
                && a.leader != 0
            {
                answers[i] = Some(a);
            }
        }
        if answers.iter().all(Option::is_some) {
            break;
        }
        if Instant::now() >= deadline {
            let waiting: Vec<&Member> = state
                .members
                .iter()
                .zip(&answers)
                .filter(|(_, a)| a.is_none())
                .map(|(m, _)| m)
                .collect();
            let names: Vec<&str> = waiting.iter().map(|m| m.name.as_str()).collect();
            eprintln!(
                "{WHO}: no leader after {} s ({} knows none); stopping the members",
                STARTUP.as_secs(),
                names.join(", ")
            );
            for m in waiting {
                let log = dir.join(format!("{}.log", m.name));
                eprintln!("{WHO}: the end of {}:", log.display());
                for line in tail(&log, LOG_TAIL) {
                    eprintln!("    {line}");
                }
            }
            stop_children(&mut children);
            eprintln!("{WHO}: the logs are in {shown}; delete {shown} to start afresh");
            return ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Dropping the children does not stop them: they run on.
    drop(children);

    let leader = answers
        .iter()
        .flatten()
        .map(|a| a.leader)
        .next()
        .unwrap_or(0);
    let leader_name = state
        .members
        .iter()
        .zip(&answers)
        .find(|(_, a)| a.as_ref().is_some_and(|a| a.member_id == leader))
        .map(|(m, _)| m.name.as_str());
    let mut out = String::new();
    let n = state.members.len();
    let plural = if n == 1 { "" } else { "s" };
    out.push_str(&if fresh {
        format!("Started a cluster of {n} member{plural} on 127.0.0.1:\n\n")
    } else {
        format!("Started the cluster of {n} member{plural} again (same ports, same data):\n\n")
    });
    for m in &state.members {
        let role = if Some(m.name.as_str()) == leader_name {
            "  (leader)"
        } else {
            ""
        };
        out.push_str(&format!(
            "  {}  {}  pid {}{role}\n",
            m.name, m.client_url, m.pid
        ));
    }
    out.push_str(&format!(
        "\nData and logs: {} (member mI: data in mI/, log in mI.log).\n\
         The members run in the background until `dengine cluster down`.\n\n\
         Try:\n\n\
         \x20 export DENGINE_ENDPOINTS={endpoints}\n\
         \x20 dengine put greeting hello\n\
         \x20 dengine get greeting\n\
         \x20 dengine status\n\
         \x20 etcdctl --endpoints=$DENGINE_ENDPOINTS get greeting\n\
         \x20 dengine cluster status --dir {shown}\n\
         \x20 dengine cluster down --dir {shown}\n",
        dir.display(),
        endpoints = state.endpoints(),
    ));
    print!("{out}");
    let _ = io::stdout().flush();
    ExitCode::SUCCESS
}

fn down(dir: &Path) -> ExitCode {
    let shown = shell_word(&dir.to_string_lossy());
    let state = match existing_state(dir, "dengine cluster down") {
        Ok(s) => s,
        Err(code) => return code,
    };
    let pids: Vec<u32> = state.members.iter().map(|m| m.pid).collect();
    let outcome = stop(&pids, |i| state.runs(&state.members[i]));
    let mut failed = false;
    for (m, o) in state.members.iter().zip(&outcome) {
        match o {
            Outcome::WasNotRunning => println!("{}: was not running", m.name),
            Outcome::Stopped => println!("{} (pid {}): stopped", m.name, m.pid),
            Outcome::Killed => println!(
                "{} (pid {}): killed (it did not stop within {} s of SIGTERM)",
                m.name,
                m.pid,
                STOP.as_secs()
            ),
            Outcome::StillRuns => {
                failed = true;
                println!("{} (pid {}): still runs after SIGKILL", m.name, m.pid);
            }
        }
    }
    println!(
        "The data and logs stay in {shown}: `dengine cluster up --dir {shown}` starts \
         the same cluster again; delete {shown} to start afresh."
    );
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The state of the cluster in `dir`, or (said on stderr as `who`) why
/// there is none.
fn existing_state(dir: &Path, who: &str) -> Result<State, ExitCode> {
    match read_state(dir) {
        Ok(Some(s)) => Ok(s),
        Ok(None) => {
            let shown = shell_word(&dir.to_string_lossy());
            eprintln!(
                "{who}: there is no cluster in {shown} (no {STATE_FILE}; `dengine cluster up --dir {shown}` starts one)"
            );
            Err(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("{who}: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

fn endpoints(dir: &Path) -> ExitCode {
    match existing_state(dir, "dengine cluster endpoints") {
        Ok(state) => {
            println!("{}", state.endpoints());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn status(dir: &Path) -> ExitCode {
    let state = match existing_state(dir, "dengine cluster status") {
        Ok(s) => s,
        Err(code) => return code,
    };
    let rt = match runtime("status") {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let mut all_run = true;
    for m in &state.members {
        if !state.runs(m) {
            all_run = false;
            println!("{}  {}  pid {}  stopped", m.name, m.client_url, m.pid);
            continue;
        }
        let role = match rt.block_on(ask_status(&m.client_url)) {
            Ok(a) if a.leader == 0 => "knows no leader".to_string(),
            Ok(a) if a.leader == a.member_id => "leader".to_string(),
            Ok(_) => "follower".to_string(),
            Err(e) => format!("does not answer: {e}"),
        };
        println!(
            "{}  {}  pid {}  running  {role}",
            m.name, m.client_url, m.pid
        );
    }
    if all_run {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_for_the_shell() {
        assert_eq!(shell_word("dengine-cluster"), "dengine-cluster");
        assert_eq!(shell_word("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }
}

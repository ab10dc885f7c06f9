//! The state file of a local cluster: which members it has, where they
//! listen, and the process of each.

use std::fs;
use std::io;
use std::path::Path;

use super::{STATE_FILE, process_runs};

/// One member, as the state file lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Member {
    /// `m0`, `m1`, ... (its data is `DIR/NAME`, its log `DIR/NAME.log`).
    pub(super) name: String,
    /// The process id of its last start (0: never started).
    pub(super) pid: u32,
    /// `http://127.0.0.1:PORT`, where clients reach it.
    pub(super) client_url: String,
    /// `http://127.0.0.1:PORT`, where the other members reach it.
    pub(super) peer_url: String,
}

/// The state file `DIR/cluster.state`, a text file of lines:
///
/// ```text
/// # comments and empty lines are skipped
/// token dengine-local-18c2f0a3b1d4e5f6-4d2
/// m0 41233 http://127.0.0.1:35001 http://127.0.0.1:35002
/// m1 41234 http://127.0.0.1:35003 http://127.0.0.1:35004
/// m2 41235 http://127.0.0.1:35005 http://127.0.0.1:35006
/// ```
///
/// `token TOKEN` is the cluster's `--initial-cluster-token` (it is on every
/// member's command line, which tells a member's process from another one
/// that got its pid later); every other line is a member: `NAME PID
/// CLIENT_URL PEER_URL`, PID 0 for a member not started yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct State {
    pub(super) token: String,
    pub(super) members: Vec<Member>,
}

impl State {
    /// The text of the state file.
    pub(super) fn render(&self) -> String {
        let mut s = String::from(
            "# dengine cluster state (written by `dengine cluster up`).\n\
             # `token TOKEN`, then one line per member: NAME PID CLIENT_URL PEER_URL\n\
             # (PID 0: not started); member NAME's data is in NAME/, its log in NAME.log.\n",
        );
        s.push_str(&format!("token {}\n", self.token));
        for m in &self.members {
            s.push_str(&format!(
                "{} {} {} {}\n",
                m.name, m.pid, m.client_url, m.peer_url
            ));
        }
        s
    }

    /// Reads the text of a state file.
    pub(super) fn parse(text: &str) -> Result<State, String> {
        let mut token = None;
        let mut members: Vec<Member> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields[..] {
                ["token", t] => token = Some(t.to_string()),
                [name, pid, client_url, peer_url] => {
                    let ok_name = name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                    let ok_urls =
                        client_url.starts_with("http://") && peer_url.starts_with("http://");
                    let pid = pid.parse::<u32>().ok();
                    match pid {
                        Some(pid) if ok_name && ok_urls => {
                            if members.iter().any(|m| m.name == name) {
                                return Err(format!("line {}: member {name} twice", i + 1));
                            }
                            members.push(Member {
                                name: name.to_string(),
                                pid,
                                client_url: client_url.to_string(),
                                peer_url: peer_url.to_string(),
                            });
                        }
                        _ => return Err(format!("line {}: not a member: {line:?}", i + 1)),
                    }
                }
                _ => return Err(format!("line {}: not understood: {line:?}", i + 1)),
            }
        }
        let token = token.ok_or("no `token` line")?;
        if members.is_empty() {
            return Err("no members".into());
        }
        Ok(State { token, members })
    }

    /// The `--initial-cluster` value: `m0=PEER_URL,m1=...`.
    pub(super) fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client URLs, comma-separated.
    pub(super) fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client_url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether member `m`'s process runs.
    pub(super) fn runs(&self, m: &Member) -> bool {
        process_runs(m.pid, &self.token)
    }
}

/// The state file of the cluster in `dir`; `None` if there is none.
pub(super) fn read_state(dir: &Path) -> Result<Option<State>, String> {
    let path = dir.join(STATE_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    State::parse(&text)
        .map(Some)
        .map_err(|e| format!("{} is not a cluster state file: {e}", path.display()))
}

/// Writes the state file of the cluster in `dir` (a whole new file, or
/// none).
pub(super) fn write_state(dir: &Path, state: &State) -> Result<(), String> {
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    fs::write(&tmp, state.render())
        .and_then(|()| fs::rename(&tmp, &path))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_round_trips() {
        let state = State {
            token: "dengine-local-1-2".into(),
            members: vec![
                Member {
                    name: "m0".into(),
                    pid: 12,
                    client_url: "http://127.0.0.1:1".into(),
                    peer_url: "http://127.0.0.1:2".into(),
                },
                Member {
                    name: "m1".into(),
                    pid: 0,
                    client_url: "http://127.0.0.1:3".into(),
                    peer_url: "http://127.0.0.1:4".into(),
                },
            ],
        };
        assert_eq!(State::parse(&state.render()), Ok(state.clone()));
        assert_eq!(
            state.initial_cluster(),
            "m0=http://127.0.0.1:2,m1=http://127.0.0.1:4"
        );
        assert_eq!(state.endpoints(), "http://127.0.0.1:1,http://127.0.0.1:3");
    }

    #[test]
    fn bad_state_files_are_refused() {
        for text in [
            "",
            "token t\n",
            "m0 1 http://a:1 http://a:2\n",
            "token t\nm0 x http://a:1 http://a:2\n",
            "token t\n../m0 1 http://a:1 http://a:2\n",
            "token t\nm0 1 http://a:1 http://a:2\nm0 2 http://a:3 http://a:4\n",
            "token t\nm0 1 http://a:1\n",
        ] {
            assert!(State::parse(text).is_err(), "{text:?}");
        }
    }
}

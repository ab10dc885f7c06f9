//! `dengine status`: one table of every member: role, term, commit and
//! applied index, how far it lags the leader, its database size, errors.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use dengine_client::{Client, MemberStatus};
use serde_json::json;

use super::out::{print_json, print_table};
use super::{Conn, Failed, Format, parse_duration, run};

/// `dengine status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Refreshes the table until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// How often --watch refreshes.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
}

/// One member's line.
struct Row {
    name: String,
    endpoint: String,
    id: u64,
    role: &'static str,
    term: u64,
    commit: u64,
    applied: u64,
    lag: Option<u64>,
    db_size: i64,
    errors: String,
}

async fn rows(client: &Client) -> Vec<Row> {
    let names: BTreeMap<u64, String> = match client.member_list().await {
        Ok(list) => list.members.into_iter().map(|m| (m.id, m.name)).collect(),
        Err(_) => BTreeMap::new(),
    };
    let statuses: Vec<MemberStatus> = client.statuses().await;
    let leader_commit = statuses
        .iter()
        .filter_map(|s| s.status.as_ref().ok())
        .find(|s| s.header.as_ref().is_some_and(|h| h.member_id == s.leader))
        .map(|s| s.raft_index);
    statuses
        .into_iter()
        .map(|s| match s.status {
            Ok(st) => {
                let id = st.header.as_ref().map_or(0, |h| h.member_id);
                Row {
                    name: names.get(&id).cloned().unwrap_or_default(),
                    endpoint: s.endpoint,
                    id,
                    role: if st.leader == id {
                        "leader"
                    } else if st.is_learner {
                        "learner"
                    } else {
                        "follower"
                    },
                    term: st.raft_term,
                    commit: st.raft_index,
                    applied: st.raft_applied_index,
                    lag: leader_commit.map(|c| c.saturating_sub(st.raft_applied_index)),
                    db_size: st.db_size,
                    errors: st.errors.join("; "),
                }
            }
            Err(e) => Row {
                name: String::new(),
                endpoint: s.endpoint,
                id: 0,
                role: "unreachable",
                term: 0,
                commit: 0,
                applied: 0,
                lag: None,
                db_size: 0,
                errors: e.to_string(),
            },
        })
        .collect()
}

/// A size in bytes as people read it.
fn size(bytes: i64) -> String {
    let b = bytes.max(0) as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

fn print(rows: &[Row], format: Format) {
    if format == Format::Json {
        let members: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "endpoint": r.endpoint,
                    "id": format!("{:x}", r.id),
                    "role": r.role,
                    "term": r.term,
                    "commit_index": r.commit,
                    "applied_index": r.applied,
                    "lag": r.lag,
                    "db_size": r.db_size,
                    "errors": r.errors,
                })
            })
            .collect();
        print_json(&json!({ "members": members }));
        return;
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.endpoint.clone(),
                if r.id == 0 {
                    "-".into()
                } else {
                    format!("{:x}", r.id)
                },
                r.role.to_string(),
                r.term.to_string(),
                r.commit.to_string(),
                r.applied.to_string(),
                r.lag.map_or("-".into(), |l| l.to_string()),
                if r.id == 0 {
                    "-".into()
                } else {
                    size(r.db_size)
                },
                r.errors.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "MEMBER", "ENDPOINT", "ID", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG", "DB SIZE",
            "ERRORS",
        ],
        &table,
    );
}

pub fn status(a: StatusArgs, conn: &Conn) -> ExitCode {
    run("status", conn, |client, conn| async move {
        loop {
            let rows = rows(&client).await;
            if a.watch && std::io::stdout().is_terminal() {
                // Clears the screen and goes home, like `watch` does.
                print!("\x1b[2J\x1b[H");
            }
            print(&rows, conn.write_out);
            if !a.watch {
                let down = rows.iter().filter(|r| r.id == 0).count();
                if down > 0 {
                    return Err(Failed::Message(format!(
                        "{down} of {} members did not answer",
                        rows.len()
                    )));
                }
                return Ok(());
            }
            if conn.write_out != Format::Json {
                println!();
            }
            tokio::time::sleep(a.interval).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(20_480), "20.5 kB");
        assert_eq!(size(3_000_000), "3.0 MB");
    }
}

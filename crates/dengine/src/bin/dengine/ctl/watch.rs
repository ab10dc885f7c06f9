//! `dengine watch`: prints every change to a key or range as it happens
//! (through member failures: the client's watch resumes by itself).

use std::process::ExitCode;

use clap::Args;
use dengine_client::WatchOptions;
use serde_json::json;

use super::out::{self, print_json};
use super::{Conn, Failed, Format, KeyRange, Span, run, text};

/// `dengine watch KEY [RANGE_END]`.
#[derive(Args, Debug)]
pub struct WatchArgs {
    #[command(flatten)]
    pub range: KeyRange,
    /// Starts at this revision (past changes included).
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Prints each key's previous value too.
    #[arg(long)]
    pub prev_kv: bool,
}

pub fn watch(a: WatchArgs, conn: &Conn) -> ExitCode {
    run("watch", conn, |client, conn| async move {
        let o = WatchOptions::new().with_start_revision(a.rev);
        let mut o = match a.range.span() {
            Span::Key => o,
            Span::Prefix => o.with_prefix(),
            Span::FromKey => o.with_from_key(),
            Span::End(end) => o.with_range(end.as_bytes()),
        };
        if a.prev_kv {
            o = o.with_prev_key();
        }
        let mut w = client.watch(a.range.key, Some(o)).await?;
        while let Some(r) = w.message().await {
            let r = r?;
            for e in &r.events {
                if conn.write_out == Format::Json {
                    print_json(&json!({
                        "header": out::header(r.header.as_ref()),
                        "event": out::event(e),
                    }));
                    continue;
                }
                // As etcdctl prints it: the type, the previous key and
                // value if asked for, then the key and value.
                println!("{}", out::event_type(e));
                for kv in e.prev_kv.iter().chain(&e.kv) {
                    println!("{}\n{}", text(&kv.key), text(&kv.value));
                }
            }
        }
        Err(Failed::Message("the watch ended".into()))
    })
}

//! `dengine put`, `get`, `del`, `txn` and `compact`.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use dengine_client::proto::etcdserverpb::response_op::Response as OpResponse;
use dengine_client::proto::etcdserverpb::{RangeResponse, TxnResponse};
use dengine_client::{Client, DeleteOptions, ErrorKind, GetOptions, PutOptions};
use serde_json::json;

use super::out::{self, print_json};
use super::txn_parse;
use super::{Conn, Failed, Format, KeyRange, Span, parse_hex_id, run, text};

/// `dengine put KEY VALUE`.
#[derive(Args, Debug)]
pub struct PutArgs {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// Attaches the key to a lease (its id in hex).
    #[arg(long, value_parser = parse_hex_id)]
    pub lease: Option<u64>,
    /// Prints the previous value.
    #[arg(long)]
    pub prev_kv: bool,
}

/// How a read is made consistent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    /// Linearizable: the newest value, confirmed with the leader.
    L,
    /// Serializable: what the member asked has applied.
    S,
}

/// `dengine get KEY [RANGE_END]`.
#[derive(Args, Debug)]
pub struct GetArgs {
    #[command(flatten)]
    pub range: KeyRange,
    /// Reads at a past revision.
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// At most this many keys.
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    /// Keys only, no values.
    #[arg(long)]
    pub keys_only: bool,
    /// Only the number of keys.
    #[arg(long)]
    pub count_only: bool,
    /// Linearizable (l) or serializable (s).
    #[arg(long, value_enum, default_value_t = Consistency::L)]
    pub consistency: Consistency,
}

/// `dengine del KEY [RANGE_END]`.
#[derive(Args, Debug)]
pub struct DelArgs {
    #[command(flatten)]
    pub range: KeyRange,
    /// Prints the deleted keys and values.
    #[arg(long)]
    pub prev_kv: bool,
}

/// `dengine txn`: reads a transaction from stdin in etcdctl's format.
#[derive(Args, Debug)]
pub struct TxnArgs {
    /// Asks for each part with a prompt (when stdin is a terminal).
    #[arg(short, long)]
    pub interactive: bool,
}

/// `dengine compact REVISION`.
#[derive(Args, Debug)]
pub struct CompactArgs {
    /// Drops the history before this revision.
    pub revision: i64,
    /// Waits until the space can be reclaimed.
    #[arg(long)]
    pub physical: bool,
}

pub fn put(a: PutArgs, conn: &Conn) -> ExitCode {
    run("put", conn, |client, conn| async move {
        let mut o = PutOptions::new();
        if let Some(l) = a.lease {
            o = o.with_lease(l as i64);
        }
        if a.prev_kv {
            o = o.with_prev_key();
        }
        let r = client.put(a.key, a.value, Some(o)).await?;
        match conn.write_out {
            Format::Json => print_json(&json!({
                "header": out::header(r.header.as_ref()),
                "prev_kv": r.prev_kv.as_ref().map(out::kv),
            })),
            _ => {
                println!("OK");
                if let Some(p) = &r.prev_kv {
                    println!("{}\n{}", text(&p.key), text(&p.value));
                }
            }
        }
        Ok(())
    })
}

pub fn get(a: GetArgs, conn: &Conn) -> ExitCode {
    run("get", conn, |client, conn| async move {
        let o = GetOptions::new().with_revision(a.rev).with_limit(a.limit);
        let mut o = match a.range.span() {
            Span::Key => o,
            Span::Prefix => o.with_prefix(),
            Span::FromKey => o.with_from_key(),
            Span::End(end) => o.with_range(end.as_bytes()),
        };
        if a.keys_only {
            o = o.with_keys_only();
        }
        if a.count_only {
            o = o.with_count_only();
        }
        if a.consistency == Consistency::S {
            o = o.with_serializable();
        }
        let r = match client.get(a.range.key, Some(o)).await {
            Ok(r) => r,
            Err(e) if e.kind() == Some(ErrorKind::Compacted) => {
                return Err(Failed::Message(compacted(&client, a.rev).await));
            }
            Err(e) => return Err(e.into()),
        };
        print_range(&r, conn.write_out, a.keys_only, a.count_only);
        Ok(())
    })
}

/// Says which revision is the oldest left after a read below it: the
/// newest compaction any member has applied (the one that refused the
/// read has; another may not have yet).
async fn compacted(client: &Client, asked: i64) -> String {
    let mut oldest = None;
    for endpoint in client.endpoints() {
        if let Ok(h) = client.hash_kv(&endpoint, 0).await {
            oldest = oldest.max(Some(h.compact_revision));
        }
    }
    match oldest {
        Some(c) => format!(
            "etcdserver: mvcc: required revision has been compacted: revision {asked} is gone, \
             the oldest left is {c}"
        ),
        None => {
            format!("etcdserver: mvcc: required revision has been compacted (revision {asked})")
        }
    }
}

fn print_range(r: &RangeResponse, format: Format, keys_only: bool, count_only: bool) {
    match format {
        Format::Json => print_json(&json!({
            "header": out::header(r.header.as_ref()),
            "kvs": r.kvs.iter().map(out::kv).collect::<Vec<_>>(),
            "more": r.more,
            "count": r.count,
        })),
        _ if count_only => println!("{}", r.count),
        _ => {
            for kv in &r.kvs {
                println!("{}", text(&kv.key));
                if !keys_only {
                    println!("{}", text(&kv.value));
                }
            }
        }
    }
}

pub fn del(a: DelArgs, conn: &Conn) -> ExitCode {
    run("del", conn, |client, conn| async move {
        let mut o = match a.range.span() {
            Span::Key => DeleteOptions::new(),
            Span::Prefix => DeleteOptions::new().with_prefix(),
            Span::FromKey => DeleteOptions::new().with_from_key(),
            Span::End(end) => DeleteOptions::new().with_range(end.as_bytes()),
        };
        if a.prev_kv {
            o = o.with_prev_key();
        }
        let r = client.delete(a.range.key, Some(o)).await?;
        match conn.write_out {
            Format::Json => print_json(&json!({
                "header": out::header(r.header.as_ref()),
                "deleted": r.deleted,
                "prev_kvs": r.prev_kvs.iter().map(out::kv).collect::<Vec<_>>(),
            })),
            _ => {
                println!("{}", r.deleted);
                for kv in &r.prev_kvs {
                    println!("{}\n{}", text(&kv.key), text(&kv.value));
                }
            }
        }
        Ok(())
    })
}

pub fn compact(a: CompactArgs, conn: &Conn) -> ExitCode {
    run("compact", conn, |client, conn| async move {
        let r = client.compact(a.revision, a.physical).await?;
        match conn.write_out {
            Format::Json => print_json(&json!({
                "header": out::header(r.header.as_ref()),
                "compacted_revision": a.revision,
            })),
            _ => println!("compacted revision {}", a.revision),
        }
        Ok(())
    })
}

/// Reads the three parts of a transaction from stdin (each ends with an
/// empty line), prompting for each when asked to.
fn read_txn(interactive: bool) -> Result<String, String> {
    let stdin = std::io::stdin();
    let prompt = interactive && stdin.is_terminal();
    let mut all = String::new();
    let mut lines = stdin.lock().lines();
    for title in [
        "compares:",
        "success requests (get, put, del):",
        "failure requests (get, put, del):",
    ] {
        if prompt {
            println!("{title}");
        }
        loop {
            match lines.next() {
                Some(Ok(line)) if line.trim().is_empty() => break,
                Some(Ok(line)) => {
                    all.push_str(&line);
                    all.push('\n');
                }
                Some(Err(e)) => return Err(format!("reading stdin: {e}")),
                None => return Ok(all),
            }
        }
        all.push('\n');
    }
    Ok(all)
}

pub fn txn(a: TxnArgs, conn: &Conn) -> ExitCode {
    let input = match read_txn(a.interactive) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("dengine txn: {e}");
            return ExitCode::FAILURE;
        }
    };
    let txn = match txn_parse::parse(&input) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("dengine txn: {e}");
            return ExitCode::from(2);
        }
    };
    run("txn", conn, |client, conn| async move {
        let r = client.txn(txn).await?;
        print_txn(&r, conn.write_out);
        Ok(())
    })
}

fn print_txn(r: &TxnResponse, format: Format) {
    if format == Format::Json {
        let responses: Vec<_> = r
            .responses
            .iter()
            .filter_map(|op| op.response.as_ref())
            .map(|op| match op {
                OpResponse::ResponsePut(p) => {
                    json!({"put": {"prev_kv": p.prev_kv.as_ref().map(out::kv)}})
                }
                OpResponse::ResponseRange(g) => json!({"get": {
                    "kvs": g.kvs.iter().map(out::kv).collect::<Vec<_>>(), "count": g.count}}),
                OpResponse::ResponseDeleteRange(d) => json!({"del": {"deleted": d.deleted}}),
                OpResponse::ResponseTxn(t) => json!({"txn": {"succeeded": t.succeeded}}),
            })
            .collect();
        print_json(&json!({
            "header": out::header(r.header.as_ref()),
            "succeeded": r.succeeded,
            "responses": responses,
        }));
        return;
    }
    println!("{}", if r.succeeded { "SUCCESS" } else { "FAILURE" });
    for op in r.responses.iter().filter_map(|op| op.response.as_ref()) {
        println!();
        match op {
            OpResponse::ResponsePut(_) => println!("OK"),
            OpResponse::ResponseRange(g) => print_range(g, Format::Text, false, false),
            OpResponse::ResponseDeleteRange(d) => println!("{}", d.deleted),
            OpResponse::ResponseTxn(t) => {
                println!("{}", if t.succeeded { "SUCCESS" } else { "FAILURE" })
            }
        }
    }
}

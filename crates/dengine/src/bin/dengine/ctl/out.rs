//! Output: the JSON shapes of etcd's records (stable field names, keys
//! and values as UTF-8 text) and plain tables.

use dengine_client::proto::etcdserverpb::ResponseHeader;
use dengine_client::proto::mvccpb::{Event, KeyValue, event::EventType};
use serde_json::{Value, json};

use super::{Format, text};

/// Prints what a command did: `said` (text), or it with the response
/// header (JSON).
pub fn done(format: Format, header: Option<&ResponseHeader>, said: &str) {
    match format {
        Format::Json => print_json(&json!({"header": self::header(header), "result": said})),
        _ => println!("{said}"),
    }
}

/// A response header as JSON.
pub fn header(h: Option<&ResponseHeader>) -> Value {
    let h = h.cloned().unwrap_or_default();
    json!({
        "cluster_id": format!("{:x}", h.cluster_id),
        "member_id": format!("{:x}", h.member_id),
        "revision": h.revision,
        "raft_term": h.raft_term,
    })
}

/// A key-value record as JSON.
pub fn kv(kv: &KeyValue) -> Value {
    json!({
        "key": text(&kv.key),
        "value": text(&kv.value),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "lease": format!("{:x}", kv.lease),
    })
}

/// An event's type as etcdctl prints it.
pub fn event_type(e: &Event) -> &'static str {
    if e.r#type == EventType::Delete as i32 {
        "DELETE"
    } else {
        "PUT"
    }
}

/// A watch event as JSON.
pub fn event(e: &Event) -> Value {
    json!({
        "type": event_type(e),
        "kv": e.kv.as_ref().map(kv),
        "prev_kv": e.prev_kv.as_ref().map(kv),
    })
}

/// Prints one JSON value on one line.
pub fn print_json(v: &Value) {
    println!("{v}");
}

/// Prints rows under a header, each column as wide as its widest cell.
pub fn print_table(head: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(head.iter().map(|h| h.to_string()).collect());
    line(widths.iter().map(|w| "-".repeat(*w)).collect());
    for row in rows {
        line(row.clone());
    }
}

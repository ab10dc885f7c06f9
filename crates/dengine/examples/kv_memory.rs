//! Measures what the key-value store keeps in memory per key: puts
//! `--keys` keys (1,000,000) with `--value-bytes` values (256) into a
//! store on disk of the configured storage kind (the default: the record
//! log), applied and flushed in batches as a node does, then prints how
//! much resident memory a fresh process has after opening the store (the
//! index, and where each record is on disk), per key, against one that
//! opened an empty store; and the size of the store's files.
//!
//! ```text
//! cargo run --release -p dengine --features sled --example kv_memory -- \
//!     [--keys 1000000] [--value-bytes 256] [--storage sled|rocksdb] [--on-sled]
//! ```
//! `--on-sled` keeps the records on sled, as a store made before the
//! record log does (the default storage kind only).
//! Run it in release: a debug build holds the same data but runs slowly.

use dengine::kv::{KvCommand, KvStateMachine, PutRequest};
use dengine::{Config, EntryId, LogIndex, StateMachine, StorageKind, Term};

/// The process's resident set, in bytes (Linux).
fn resident() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Opens the store of `config` in this process and prints the resident
/// memory then, in bytes, and the keys it holds.
fn measure(config: &Config) -> Result<(), Box<dyn std::error::Error>> {
    let sm = KvStateMachine::open(config)?;
    println!("{} {}", resident(), sm.indexed_keys());
    Ok(())
}

/// Runs this program again to measure the store in `dir`: resident bytes
/// and keys.
fn measured(
    dir: &std::path::Path,
    storage: &str,
) -> Result<(u64, u64), Box<dyn std::error::Error>> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--measure",
            &dir.display().to_string(),
            "--storage",
            storage,
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    match (words.next().map(str::parse), words.next().map(str::parse)) {
        (Some(Ok(rss)), Some(Ok(keys))) => Ok((rss, keys)),
        _ => Err(format!(
            "measuring failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into()),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut measure_dir = None;
    let mut keys: u64 = 1_000_000;
    let mut value_bytes: usize = 256;
    let mut storage = StorageKind::Sled;
    let mut on_sled = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--on-sled" {
            on_sled = true;
            continue;
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--measure" => measure_dir = Some(std::path::PathBuf::from(value)),
            "--keys" => keys = value.parse()?,
            "--value-bytes" => value_bytes = value.parse()?,
            "--storage" => {
                storage = match value.as_str() {
                    "sled" => StorageKind::Sled,
                    "rocksdb" => StorageKind::Rocksdb,
                    other => return Err(format!("--storage {other}: sled or rocksdb").into()),
                }
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let storage_name = match storage {
        StorageKind::Rocksdb => "rocksdb",
        _ => "sled",
    };
    let config_for = |data_dir: std::path::PathBuf| Config {
        storage,
        data_dir,
        ..Config::default()
    };
    if let Some(dir) = measure_dir {
        return measure(&config_for(dir));
    }
    let dir = std::env::temp_dir().join(format!("dengine-kv-memory-{}", std::process::id()));
    let empty = dir.join("empty");
    let full = dir.join("full");
    let (baseline, _) = measured(&empty, storage_name)?;
    if on_sled {
        // A sled database where the store looks makes it keep to sled.
        drop(dengine::kv::SledBackend::open(&full.join("kv"))?);
    }
    let config = config_for(full.clone());
    let mut sm = KvStateMachine::open(&config)?;
    // Batches of about what a busy node applies at once.
    const BATCH: u64 = 1000;
    let value = vec![b'v'; value_bytes];
    for i in 0..keys {
        let command = KvCommand::Put(PutRequest {
            key: format!("key{i:010}").into_bytes(),
            value: value.clone(),
            ..Default::default()
        })
        .encode();
        let index = LogIndex(i + 1);
        if let Err(e) = sm.apply(EntryId::new(Term(1), index), &command) {
            return Err(format!("put {i}: {e}").into());
        }
        if (i + 1) % BATCH == 0 || i + 1 == keys {
            sm.flush(index)?;
        }
    }
    // Gives the last batch to the files (as a clean stop does).
    drop(sm);
    let (opened, held) = measured(&full, storage_name)?;
    let grown = opened.saturating_sub(baseline);
    println!(
        "{keys} keys, {value_bytes}-byte values, storage {storage:?}: a process that opened the store holds {:.1} MiB more than one with an empty store, {:.0} bytes per key; store files {:.1} MiB ({held} keys read back)",
        grown as f64 / (1 << 20) as f64,
        grown as f64 / keys as f64,
        dir_bytes(&full.join("kv")) as f64 / (1 << 20) as f64,
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

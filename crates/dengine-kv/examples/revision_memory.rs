//! How much memory the store needs per revision it keeps: applies
//! `REVISIONS` puts (2,400,000) of 256-byte values to keys drawn at random
//! from `KEYS` (100,000), as `dengine-bench put` does, without a
//! compaction, and prints the resident memory the process grew by per
//! revision, on a backend that keeps nothing (the index alone) and on the
//! record log (the index, and where each record is on disk). Memory is the
//! process's resident set (`/proc/self/status`), so allocator overhead
//! is counted too.
//!
//! ```sh
//! cargo run --release -p dengine-kv --example revision_memory [-- KEYS REVISIONS]
//! ```

use dengine_kv::{KvBackend, KvCommand, KvStateMachine, LogBackend, PutRequest};
use dengine_runtime::{EntryId, LogIndex, StateMachine, Term};

mod support;
use support::{Discard, resident};

/// Puts `revisions` values to keys from `keys` into `sm`, flushing every
/// 1,000 entries; returns the bytes resident grew by.
fn fill(
    mut sm: KvStateMachine,
    keys: u64,
    revisions: u64,
) -> Result<usize, Box<dyn std::error::Error>> {
    let before = resident();
    let value = vec![b'v'; 256];
    // A fixed xorshift: the same keys in every run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for index in 1..=revisions {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let cmd = KvCommand::Put(PutRequest {
            key: format!("{:08}", x % keys).into_bytes(),
            value: value.clone(),
            ..Default::default()
        });
        sm.apply(EntryId::new(Term(1), LogIndex(index)), &cmd.encode())?;
        if index.is_multiple_of(1000) {
            sm.flush(LogIndex(index))?;
        }
    }
    sm.flush(LogIndex(u64::MAX))?;
    Ok(resident().saturating_sub(before))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let keys: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let revisions: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(2_400_000);
    let dir = tempfile::tempdir()?;
    let on_log = args.next().as_deref() == Some("log");
    let backend: Box<dyn KvBackend> = if on_log {
        Box::new(LogBackend::open(dir.path())?)
    } else {
        Box::new(Discard)
    };
    let grew = fill(KvStateMachine::with_backend(backend)?, keys, revisions)?;
    println!(
        "{revisions} puts to {keys} keys, {}: {} bytes resident per revision (no compaction)",
        if on_log {
            "the index and the record log"
        } else {
            "the index alone"
        },
        grew / revisions as usize,
    );
    Ok(())
}

//! How much memory the store needs per key: applies puts of 256-byte
//! values to 1,000,000 keys (each key written once, then a tenth of them
//! again) on a backend that keeps nothing, so that what the heap grows by
//! is the store's own in-memory state (its index), not the values (which
//! live in the backend and its cache). Memory is the process's resident
//! set (`/proc/self/status`), so allocator overhead is counted too.
//!
//! ```sh
//! cargo run --release -p dengine-kv --example index_memory [-- KEYS]
//! ```

use dengine_kv::{KvCommand, KvStateMachine, PutRequest};
use dengine_runtime::{EntryId, LogIndex, StateMachine, Term};

mod support;
use support::{Discard, resident};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let mut sm = KvStateMachine::with_backend(Box::new(Discard))?;
    let before = resident();
    let value = vec![b'v'; 256];
    let mut index = 0u64;
    let mut put = |sm: &mut KvStateMachine, k: u64| -> Result<(), Box<dyn std::error::Error>> {
        index += 1;
        let cmd = KvCommand::Put(PutRequest {
            key: format!("/registry/key{k:08}").into_bytes(),
            value: value.clone(),
            ..Default::default()
        });
        sm.apply(EntryId::new(Term(1), LogIndex(index)), &cmd.encode())?;
        // One flush per 1,000 entries, and one at the end.
        if index.is_multiple_of(1000) || k + 1 == keys {
            sm.flush(LogIndex(index))?;
        }
        Ok(())
    };
    for k in 0..keys {
        put(&mut sm, k)?;
    }
    let once = resident() - before;
    for k in (0..keys).step_by(10) {
        put(&mut sm, k)?;
    }
    sm.flush(LogIndex(u64::MAX))?;
    let again = resident() - before;
    println!(
        "{keys} keys (21-byte keys, 256-byte values): {} bytes resident per key written once; \
         {} per key after a tenth were written again (one more kept revision each, no compaction)",
        once / keys as usize,
        again / keys as usize
    );
    Ok(())
}

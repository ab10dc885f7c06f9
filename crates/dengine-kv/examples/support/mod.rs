//! What the memory examples share: the process's resident memory, and a
//! backend that keeps nothing (so that what the heap grows by is the
//! store's own in-memory state).

use dengine_kv::{Change, KvBackend, Visit};

/// The process's resident memory in bytes (Linux), 0 elsewhere.
pub fn resident() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A backend that keeps nothing (and says so).
pub struct Discard;

impl KvBackend for Discard {
    fn get(&self, _: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
        Ok(None)
    }
    fn scan(&self, _: &[u8], _: Option<&[u8]>, _: &mut Visit<'_>) -> std::io::Result<()> {
        Ok(())
    }
    fn write(&mut self, _: Vec<Change>) -> std::io::Result<()> {
        Ok(())
    }
    fn clear(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn durable(&self) -> bool {
        false
    }
}

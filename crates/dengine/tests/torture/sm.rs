//! The replicated object: registers by key. A command is `key | value`
//! (two little-endian u64s); the key [`PANIC_KEY`] makes a replica whose
//! trigger is set panic (a fault the harness injects into one node).
//!
//! On some seeds the registers keep their state durably, as the key-value
//! store does on disk: in a [`SmDisk`] that outlives a crash, written only
//! at a checkpoint (so the node compacts its log without a snapshot of the
//! data, and writes one only for a follower that needs it), and read back
//! when the node starts again.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use dengine::{EntryId, LogIndex, StateMachine};

/// Written only to make the chosen replica panic; never checked.
pub const PANIC_KEY: u64 = u64::MAX;

pub fn command(key: u64, value: u64) -> Vec<u8> {
    let mut c = key.to_le_bytes().to_vec();
    c.extend_from_slice(&value.to_le_bytes());
    c
}

/// The durable state of registers that keep their own: what the last
/// checkpoint stored. A crash freezes it (nothing is written after).
#[derive(Default)]
pub struct SmDisk {
    state: Mutex<(BTreeMap<u64, u64>, LogIndex)>,
    crashed: AtomicBool,
}

impl SmDisk {
    /// The node crashed: later checkpoints fail and store nothing.
    pub fn crash(&self) {
        self.crashed.store(true, Ordering::SeqCst);
    }

    /// A disk as it is after a crash, for the node started again.
    pub fn recover(&self) -> Arc<SmDisk> {
        Arc::new(SmDisk {
            state: Mutex::new(self.stored()),
            crashed: AtomicBool::new(false),
        })
    }

    /// What the last checkpoint stored: the registers and their index.
    fn stored(&self) -> (BTreeMap<u64, u64>, LogIndex) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

pub struct Registers {
    pub values: BTreeMap<u64, u64>,
    trigger: Arc<AtomicBool>,
    /// Set for registers that keep their state durably.
    disk: Option<Arc<SmDisk>>,
    applied: LogIndex,
}

impl Registers {
    /// Registers that start from `disk`'s state, if given (and keep their
    /// state there), or empty.
    pub fn new(trigger: Arc<AtomicBool>, disk: Option<Arc<SmDisk>>) -> Registers {
        let (values, applied) = disk.as_ref().map_or_else(Default::default, |d| d.stored());
        Registers {
            values,
            trigger,
            disk,
            applied,
        }
    }
}

fn word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(b);
    u64::from_le_bytes(w)
}

impl StateMachine for Registers {
    type Response = ();

    fn apply(&mut self, _: EntryId, command: &[u8]) {
        if command.len() != 16 {
            return;
        }
        let (key, value) = (word(&command[..8]), word(&command[8..]));
        if key == PANIC_KEY {
            if self.trigger.swap(false, Ordering::SeqCst) {
                panic!("torture: injected panic in apply");
            }
            return;
        }
        self.values.insert(key, value);
    }

    fn flush(&mut self, applied: LogIndex) -> std::io::Result<()> {
        self.applied = applied;
        Ok(())
    }

    fn applied_index(&self) -> Option<LogIndex> {
        // Only the index is needed: read it under the lock, not a copy of
        // every register.
        let disk = self.disk.as_ref()?;
        Some(disk.state.lock().unwrap_or_else(PoisonError::into_inner).1)
    }

    fn checkpoint(&mut self) -> std::io::Result<Option<LogIndex>> {
        let Some(disk) = &self.disk else {
            return Ok(None);
        };
        if disk.crashed.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected: the node crashed"));
        }
        *disk.state.lock().unwrap_or_else(PoisonError::into_inner) =
            (self.values.clone(), self.applied);
        Ok(Some(self.applied))
    }

    fn snapshot(&mut self, out: &mut dyn Write) -> std::io::Result<()> {
        for (k, v) in &self.values {
            out.write_all(&command(*k, *v))?;
        }
        Ok(())
    }

    fn restore(&mut self, input: &mut dyn Read) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        self.values = bytes
            .chunks_exact(16)
            .map(|c| (word(&c[..8]), word(&c[8..])))
            .collect();
        Ok(())
    }
}

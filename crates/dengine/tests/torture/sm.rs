//! The replicated object: registers by key. A command is `key | value`
//! (two little-endian u64s); the key [`PANIC_KEY`] makes a replica whose
//! trigger is set panic (a fault the harness injects into one node).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use dengine::{EntryId, StateMachine};

/// Written only to make the chosen replica panic; never checked.
pub const PANIC_KEY: u64 = u64::MAX;

pub fn command(key: u64, value: u64) -> Vec<u8> {
    let mut c = key.to_le_bytes().to_vec();
    c.extend_from_slice(&value.to_le_bytes());
    c
}

pub struct Registers {
    pub values: BTreeMap<u64, u64>,
    trigger: Arc<AtomicBool>,
}

impl Registers {
    pub fn new(trigger: Arc<AtomicBool>) -> Registers {
        Registers {
            values: BTreeMap::new(),
            trigger,
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

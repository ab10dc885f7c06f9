//! What the simulated cluster replicates: a [`StateMachine`], driven by a
//! [`Workload`] that turns client requests into commands and answers into
//! operations the linearizability checker understands.

use std::collections::BTreeMap;

use dengine_core::LogIndex;

use crate::linearizability::{KvInput, KvModel, KvOutput, Model};
use crate::rng::SimRng;

/// A deterministic state machine replicated by the cluster.
pub trait StateMachine {
    /// Applies a committed command; returns the response for the proposer.
    fn apply(&mut self, index: LogIndex, command: &[u8]) -> Vec<u8>;
    /// Answers a read-only query from the current state.
    fn query(&self, query: &[u8]) -> Vec<u8>;
    /// Serializes the whole state.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the state with a snapshot.
    fn restore(&mut self, snapshot: &[u8]);
}

/// A client request produced by a [`Workload`].
#[derive(Clone, Debug)]
pub enum Request<I> {
    /// A command to replicate through the log.
    Write {
        /// The bytes to propose.
        command: Vec<u8>,
        /// The operation for the history.
        input: I,
    },
    /// A query answered by a linearizable read.
    Read {
        /// The bytes given to [`StateMachine::query`].
        query: Vec<u8>,
        /// The operation for the history.
        input: I,
    },
}

/// Client behaviour and the sequential model the history is checked against.
pub trait Workload {
    /// The replicated state machine.
    type Sm: StateMachine;
    /// The sequential specification.
    type Model: Model;
    /// A fresh state machine.
    fn state_machine(&self) -> Self::Sm;
    /// The model for the linearizability check.
    fn model(&self) -> Self::Model;
    /// The next request of a client.
    fn next_request(&mut self, rng: &mut SimRng) -> Request<<Self::Model as Model>::Input>;
    /// The history output of a completed request, from the state machine's
    /// response (to a write) or answer (to a read).
    fn output(
        &self,
        input: &<Self::Model as Model>::Input,
        response: &[u8],
    ) -> <Self::Model as Model>::Output;
}

/// A key-value map of `u64` to `u64`: the default simulated state machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStateMachine {
    map: BTreeMap<u64, u64>,
}

fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at + 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

impl StateMachine for KvStateMachine {
    fn apply(&mut self, _index: LogIndex, command: &[u8]) -> Vec<u8> {
        if let (Some(k), Some(v)) = (read_u64(command, 0), read_u64(command, 8)) {
            self.map.insert(k, v);
        }
        Vec::new()
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        match read_u64(query, 0).and_then(|k| self.map.get(&k)) {
            Some(v) => v.to_le_bytes().to_vec(),
            None => Vec::new(),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.map.len() * 16);
        for (k, v) in &self.map {
            out.extend_from_slice(&k.to_le_bytes());
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    fn restore(&mut self, snapshot: &[u8]) {
        self.map.clear();
        let mut at = 0;
        while let (Some(k), Some(v)) = (read_u64(snapshot, at), read_u64(snapshot, at + 8)) {
            self.map.insert(k, v);
            at += 16;
        }
    }
}

/// Random puts and gets over a few keys, with unique values so that every
/// read names the write it saw.
#[derive(Clone, Debug)]
pub struct KvWorkload {
    /// How many keys.
    pub keys: u64,
    /// Fraction of requests that are reads.
    pub read_ratio: f64,
    next_value: u64,
}

impl KvWorkload {
    /// A workload over `keys` keys.
    pub fn new(keys: u64, read_ratio: f64) -> KvWorkload {
        KvWorkload {
            keys: keys.max(1),
            read_ratio,
            next_value: 1,
        }
    }
}

impl Default for KvWorkload {
    fn default() -> Self {
        KvWorkload::new(5, 0.5)
    }
}

impl Workload for KvWorkload {
    type Sm = KvStateMachine;
    type Model = KvModel;

    fn state_machine(&self) -> KvStateMachine {
        KvStateMachine::default()
    }

    fn model(&self) -> KvModel {
        KvModel
    }

    fn next_request(&mut self, rng: &mut SimRng) -> Request<KvInput> {
        let key = rng.below(self.keys);
        if rng.chance(self.read_ratio) {
            Request::Read {
                query: key.to_le_bytes().to_vec(),
                input: KvInput::Get { key },
            }
        } else {
            let value = self.next_value;
            self.next_value += 1;
            let mut command = key.to_le_bytes().to_vec();
            command.extend_from_slice(&value.to_le_bytes());
            Request::Write {
                command,
                input: KvInput::Put { key, value },
            }
        }
    }

    fn output(&self, input: &KvInput, response: &[u8]) -> KvOutput {
        match input {
            KvInput::Put { .. } => KvOutput::Ok,
            KvInput::Get { .. } => KvOutput::Value(read_u64(response, 0)),
        }
    }
}

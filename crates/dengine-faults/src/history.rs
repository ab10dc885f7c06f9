//! What the clients did and saw, as the checks read it.

use std::sync::Mutex;
use std::time::Instant;

/// A register operation (keys are small numbers; the key in the store is
/// `r/<key>`, a value is a decimal `u64` no other write uses).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    /// A put.
    Put {
        /// The register.
        key: u8,
        /// The value written.
        value: u64,
    },
    /// A linearizable get.
    Get {
        /// The register.
        key: u8,
    },
    /// A compare-and-swap: a txn that puts `to` if the register holds
    /// `from` (`None`: if it does not exist).
    Cas {
        /// The register.
        key: u8,
        /// The value expected.
        from: Option<u64>,
        /// The value written.
        to: u64,
    },
}

impl Input {
    /// The register the operation is on.
    pub fn key(&self) -> u8 {
        match self {
            Input::Put { key, .. } | Input::Get { key } | Input::Cas { key, .. } => *key,
        }
    }
}

/// The answer to an [`Input`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    /// A put was acknowledged.
    Ok,
    /// A get read this (`None`: the register does not exist).
    Value(Option<u64>),
    /// Whether a compare-and-swap's comparison held.
    Swapped(bool),
}

/// One register operation as a client saw it.
#[derive(Clone, Debug)]
pub struct Op {
    /// The client (one connection to one member).
    pub client: u64,
    /// The member the client talks to.
    pub member: usize,
    /// What was asked.
    pub input: Input,
    /// Microseconds since the run began, when it was sent.
    pub call: u64,
    /// When the answer came (meaningless without one).
    pub ret: u64,
    /// The answer; `None` when the outcome is unknown (an error or a
    /// timeout after which the write may or may not have happened).
    pub output: Option<Output>,
}

/// A serializable read's revision, for the check that a client's
/// serializable reads of one member never go back in time.
#[derive(Clone, Debug)]
pub struct SerialRead {
    /// The client.
    pub client: u64,
    /// The member read.
    pub member: usize,
    /// Which incarnation of it: a member replaced (removed and added
    /// again, empty) starts over, and may serve older revisions than its
    /// former self did until it catches up.
    pub incarnation: u64,
    /// The revision in the answer's header.
    pub revision: i64,
    /// Microseconds since the run began, when the answer came.
    pub at: u64,
}

/// Everything recorded in a run, shared by the clients.
pub struct History {
    start: Instant,
    ops: Mutex<Vec<Op>>,
    serial: Mutex<Vec<SerialRead>>,
    violations: Mutex<Vec<String>>,
    /// Each member's incarnation (0 until it is first replaced).
    incarnations: Mutex<std::collections::HashMap<usize, u64>>,
}

impl History {
    /// An empty history whose clock starts now.
    pub fn new() -> History {
        History {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
            serial: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
            incarnations: Mutex::new(Default::default()),
        }
    }

    /// When the run began.
    pub fn started(&self) -> Instant {
        self.start
    }

    /// Microseconds since the run began.
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Member `k`'s incarnation now.
    pub fn incarnation(&self, k: usize) -> u64 {
        lock(&self.incarnations).get(&k).copied().unwrap_or(0)
    }

    /// Member `k` starts again empty, as a new member (called when it is
    /// started, after its old process is long gone).
    pub fn reincarnated(&self, k: usize) {
        *lock(&self.incarnations).entry(k).or_default() += 1;
    }

    /// Records a register operation.
    pub fn op(&self, op: Op) {
        lock(&self.ops).push(op);
    }

    /// Records a serializable read's revision.
    pub fn serial(&self, read: SerialRead) {
        lock(&self.serial).push(read);
    }

    /// Records a violation found as it happened (the bank's total, a
    /// watch's order).
    pub fn violation(&self, what: String) {
        eprintln!(
            "faults: VIOLATION at {:.3}s: {what}",
            self.now() as f64 / 1e6
        );
        lock(&self.violations).push(what);
    }

    /// The register operations so far.
    pub fn ops(&self) -> Vec<Op> {
        lock(&self.ops).clone()
    }

    /// The serializable reads so far.
    pub fn serial_reads(&self) -> Vec<SerialRead> {
        lock(&self.serial).clone()
    }

    /// The violations found so far.
    pub fn violations(&self) -> Vec<String> {
        lock(&self.violations).clone()
    }
}

impl Default for History {
    fn default() -> History {
        History::new()
    }
}

/// Locks a mutex, also one a panicking client left poisoned (the data is
/// a list that is only ever pushed to).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One line of JSON for an operation (the history file of a failed run).
pub fn op_json(op: &Op) -> serde_json::Value {
    let input = match &op.input {
        Input::Put { key, value } => serde_json::json!({"put": {"key": key, "value": value}}),
        Input::Get { key } => serde_json::json!({"get": {"key": key}}),
        Input::Cas { key, from, to } => {
            serde_json::json!({"cas": {"key": key, "from": from, "to": to}})
        }
    };
    let output = match &op.output {
        None => serde_json::Value::Null,
        Some(Output::Ok) => serde_json::json!("ok"),
        Some(Output::Value(v)) => serde_json::json!({"value": v}),
        Some(Output::Swapped(s)) => serde_json::json!({"swapped": s}),
    };
    serde_json::json!({
        "client": op.client, "member": op.member + 1, "input": input,
        "call_us": op.call, "ret_us": op.ret, "output": output,
    })
}

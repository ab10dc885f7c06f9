//! A linearizability checker for client histories, in the style of
//! [Porcupine](https://github.com/anishathalye/porcupine) and Knossos.
//!
//! A history is a list of [`Operation`]s, each with the virtual time at which a
//! client invoked it and the time at which the answer came back. The history is
//! *linearizable* with respect to a sequential specification (a [`Model`]) if
//! every operation can be given a single instant inside its `[call, ret]`
//! interval such that executing the operations one at a time, in the order of
//! those instants, against the model produces exactly the outputs the clients
//! observed.
//!
//! [`check`] implements the Wing & Gong search as improved by Lowe ("Testing for
//! linearizability", 2017) and used by Porcupine:
//!
//! * **P-compositionality**: [`Model::partition`] splits the history into
//!   independent parts (for a key-value store, one part per key), each checked on
//!   its own. A history is linearizable if and only if every part is.
//! * The call and return events of a part are kept in a doubly linked list sorted
//!   by time. The search repeatedly picks a call event that comes before the first
//!   remaining return event (a *minimal* operation), applies it to the model and,
//!   if the model accepts the output, *lifts* the operation (its call and return
//!   events) out of the list. When no minimal operation can be placed, the
//!   operation of the first return event cannot be placed after the current
//!   prefix: the search backtracks by popping the last linearized operation and
//!   putting its events back (*unlifting*).
//! * **Memoization**: every configuration reached, a pair (set of linearized
//!   operations as a bitset, model state), is cached; a configuration seen before
//!   is never explored again.
//!
//! Two refinements over Porcupine keep the search near-linear on the histories
//! real systems produce (their concurrency is what makes the search exponential
//! in the worst case):
//!
//! * **Read-only reduction**: an operation the model declares read-only
//!   ([`Model::is_read_only`]) that fits the current state is committed to:
//!   if the search fails after it, no other order is tried in its place (this is
//!   sound, see `Frame::committed` in the source).
//! * **Search order**: minimal operations are tried read-only first, then those
//!   that let a stuck first-returning operation fit, then by return time (a lazy,
//!   *just-in-time* order in the spirit of Lowe's JIT linearization), with
//!   unknown-outcome operations by call time instead (eagerly). The order only
//!   affects speed, never the verdict.
//!
//! # Time
//!
//! Times are virtual `u64` units; only their order matters. Intervals are
//! **closed**: an operation that returns at `t` is *concurrent* with one invoked
//! at `t` (it does not precede it). Concretely, when a call and a return event
//! have the same time, the call is sorted first.
//!
//! # Unknown outcomes
//!
//! An operation whose `output` is `None` timed out or was lost in a crash: it may
//! have taken effect at any instant after its `call`, or never. Its return is
//! treated as +infinity, the model is stepped with `output == None` (which must
//! always be allowed), and such an operation never *needs* to be linearized: the
//! search succeeds as soon as every operation with a known outcome is placed.
//!
//! # Determinism
//!
//! The result depends only on the history, the model and the step budget: there
//! is no wall-clock timeout (the `max_steps` budget replaces it), the search
//! order is a total order on the operations (ties broken by position in the
//! sorted event list), and hash tables are used only for
//! membership tests, never iterated.

use std::collections::{BTreeMap, HashSet};
use std::fmt::{Debug, Write as _};
use std::hash::Hash;

/// One operation in a client history. Times are virtual (any monotonic `u64`
/// units); intervals are closed, see the [module documentation](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// The client that issued the operation (informational: the checker does not
    /// require a client's operations to be sequential).
    pub client: u64,
    /// What the client asked for.
    pub input: I,
    /// When the client invoked it.
    pub call: u64,
    /// `Some(output)` if the client got an answer; `None` if the outcome is unknown
    /// (timeout, crash): it may have taken effect at any time after `call`, or never.
    pub output: Option<O>,
    /// When the answer came (ignored, treated as +infinity, when `output` is None).
    /// An operation with a known output and `ret < call` makes the history
    /// malformed; it is reported as [`CheckResult::Illegal`].
    pub ret: u64,
}

/// A sequential specification.
pub trait Model {
    /// The state of the specified object. It is hashed and compared for the
    /// memoization of the search, so it should be small.
    type State: Clone + Eq + Hash + Debug;
    /// The input of an operation.
    type Input: Clone + Debug;
    /// The output of an operation.
    type Output: Clone + Debug;

    /// The initial state.
    fn init(&self) -> Self::State;

    /// The state after applying `input` to `state` if `output` is what the
    /// specification allows; `None` if not. With `output == None` (unknown
    /// outcome) the operation is applied and always allowed.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;

    /// Whether operations with this input are read-only: `step` never changes the
    /// state for them (it returns either `None` or a state equal to the given
    /// one, for every state and output). Default: `false`.
    ///
    /// This is an optimization hint. The search commits to linearizing a
    /// read-only operation as soon as it can be placed and fits the current
    /// state, instead of also trying the other orders, which prunes most of the
    /// search on histories with many concurrent reads. Returning `true` for an
    /// input that can change the state makes the checker unsound (it may report
    /// a linearizable history as illegal).
    fn is_read_only(&self, input: &Self::Input) -> bool {
        let _ = input;
        false
    }

    /// Splits a history into independent parts checked separately (e.g. by key).
    /// The history is linearizable if and only if every part is. Default: one part.
    fn partition(
        &self,
        history: Vec<Operation<Self::Input, Self::Output>>,
    ) -> Vec<Vec<Operation<Self::Input, Self::Output>>> {
        vec![history]
    }
}

/// The verdict of [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// Linearizable.
    Ok,
    /// Not linearizable: `partition` is the index of the failing part, `description` names the
    /// operations of the longest linearizable prefix found and the operation that could not be placed.
    Illegal {
        /// Index, in the order [`Model::partition`] returned them, of the first
        /// part found not linearizable.
        partition: usize,
        /// A human-readable explanation. Operations are named `#i`, their index
        /// within the part.
        description: String,
    },
    /// The search exceeded its step budget without deciding.
    Unknown,
}

/// Checks `history` against `model` with the Wing & Gong / Lowe search (P-compositionality by
/// `partition`, memoization of (linearized-set bitset, state) pairs, as in Porcupine's checker).
/// `max_steps` bounds the search per partition (deterministic budget instead of a wall-clock timeout).
///
/// One step is one iteration of the search loop: trying one call event or
/// backtracking once. Parts are checked in order; the result is
/// [`CheckResult::Illegal`] for the first part found not linearizable (even if an
/// earlier part ran out of budget), otherwise [`CheckResult::Unknown`] if any
/// part ran out of budget, otherwise [`CheckResult::Ok`].
pub fn check<M: Model>(
    model: &M,
    history: Vec<Operation<M::Input, M::Output>>,
    max_steps: u64,
) -> CheckResult {
    let mut undecided = false;
    for (index, part) in model.partition(history).into_iter().enumerate() {
        match check_part(model, &part, max_steps).verdict {
            Verdict::Ok => {}
            Verdict::Unknown => undecided = true,
            Verdict::Illegal(description) => {
                return CheckResult::Illegal {
                    partition: index,
                    description: format!("partition {index}: {description}"),
                };
            }
        }
    }
    if undecided {
        CheckResult::Unknown
    } else {
        CheckResult::Ok
    }
}

/// The verdict for one part of a history.
#[derive(Debug)]
enum Verdict {
    Ok,
    Illegal(String),
    Unknown,
}

/// The verdict for one part and the number of search steps it took.
#[derive(Debug)]
struct PartOutcome {
    verdict: Verdict,
    /// Read by the tests, to measure the search.
    #[cfg_attr(not(test), allow(dead_code))]
    steps: u64,
}

/// Index of the sentinel node before the first event.
const HEAD: usize = 0;
/// Index of the sentinel node after the last event.
const TAIL: usize = 1;

/// One call or return event in the doubly linked event list.
#[derive(Clone, Copy, Debug)]
struct Node {
    /// The operation, as an index into the part.
    op: usize,
    /// Whether this is the call event (the return event otherwise).
    is_call: bool,
    /// For a call event, the node of its return event.
    ret: usize,
    prev: usize,
    next: usize,
}

/// The call and return events of a part, sorted by time, as a doubly linked list
/// in an arena, from which operations are lifted and put back in LIFO order.
struct EventList {
    nodes: Vec<Node>,
}

impl EventList {
    /// Builds the list. Calls sort before returns at equal times (closed
    /// intervals); returns of unknown-outcome operations come last (+infinity).
    fn new<I, O>(ops: &[Operation<I, O>]) -> Self {
        // (time, rank, operation, is_call); rank: call 0, known return 1, unknown return 2.
        let mut events: Vec<(u64, u8, usize, bool)> = Vec::with_capacity(2 * ops.len());
        for (index, op) in ops.iter().enumerate() {
            events.push((op.call, 0, index, true));
            if op.output.is_some() {
                events.push((op.ret, 1, index, false));
            } else {
                events.push((u64::MAX, 2, index, false));
            }
        }
        events.sort_unstable();

        let sentinel = Node {
            op: usize::MAX,
            is_call: false,
            ret: usize::MAX,
            prev: HEAD,
            next: TAIL,
        };
        let mut nodes = vec![sentinel; 2 + events.len()];
        let mut ret_node = vec![usize::MAX; ops.len()];
        for (position, &(_, _, op, is_call)) in events.iter().enumerate() {
            let node = position + 2;
            nodes[node] = Node {
                op,
                is_call,
                ret: usize::MAX,
                prev: if position == 0 { HEAD } else { node - 1 },
                next: if position + 1 == events.len() {
                    TAIL
                } else {
                    node + 1
                },
            };
            if !is_call {
                ret_node[op] = node;
            }
        }
        if !events.is_empty() {
            nodes[HEAD].next = 2;
            nodes[TAIL].prev = nodes.len() - 1;
        }
        for node in &mut nodes[2..] {
            if node.is_call {
                node.ret = ret_node[node.op];
            }
        }
        EventList { nodes }
    }

    fn next(&self, node: usize) -> usize {
        self.nodes[node].next
    }

    fn unlink(&mut self, node: usize) {
        let Node { prev, next, .. } = self.nodes[node];
        self.nodes[prev].next = next;
        self.nodes[next].prev = prev;
    }

    fn relink(&mut self, node: usize) {
        let Node { prev, next, .. } = self.nodes[node];
        self.nodes[prev].next = node;
        self.nodes[next].prev = node;
    }

    /// Removes the call event `call` and its return event from the list.
    fn lift(&mut self, call: usize) {
        let ret = self.nodes[call].ret;
        self.unlink(call);
        self.unlink(ret);
    }

    /// Undoes the matching [`EventList::lift`] (which must be the last one not yet undone).
    fn unlift(&mut self, call: usize) {
        let ret = self.nodes[call].ret;
        self.relink(ret);
        self.relink(call);
    }
}

/// The set of linearized operations of a part.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn new(len: usize) -> Self {
        Bitset(vec![0; len.div_ceil(64)])
    }

    fn set(&mut self, bit: usize) {
        self.0[bit / 64] |= 1 << (bit % 64);
    }

    fn clear(&mut self, bit: usize) {
        self.0[bit / 64] &= !(1 << (bit % 64));
    }
}

/// One linearized operation on the search stack.
struct Frame<S> {
    /// Its call event.
    call: usize,
    /// The model state before it.
    state: S,
    /// Whether the search committed to it: a read-only operation (see
    /// [`Model::is_read_only`]) that fits the current state and may be placed
    /// now (its call precedes every remaining return). If some linearization
    /// extends the current prefix, then one extends it with this operation
    /// first: moving a read-only operation earlier changes no state and breaks
    /// no real-time order (and one with an unknown outcome left out of that
    /// linearization can be added there). So when the search fails after it,
    /// or finds the configuration after it already explored, no alternative is
    /// tried in its place: the configuration before it fails too.
    committed: bool,
}

/// The candidates at one depth of the search: the operations that may be
/// linearized next, in the order they are tried.
struct Level {
    /// Where its candidates (call event nodes) start in the shared candidate stack.
    start: usize,
    /// The next candidate to try. Only the top level is advanced, so it is
    /// exhausted when this reaches the end of the candidate stack.
    next: usize,
    /// The first remaining return event (or [`TAIL`]): the operation that must be
    /// linearized before any whose call comes later.
    first_return: usize,
}

/// The deepest point the search reached, for the failure report.
struct Longest<S> {
    /// The linearized operations, in order.
    prefix: Vec<usize>,
    /// The model state after them.
    state: S,
    /// The operation whose return event stopped the search there.
    blocked: Option<usize>,
}

/// Pushes the level of the current configuration: the call events before the
/// first remaining return event (the *minimal* operations), in the order they
/// are to be tried.
///
/// Any order is complete; this one finds the linearizations of real histories
/// with little backtracking:
/// 1. read-only operations first (they are committed to if they fit, see
///    [`Frame::committed`]);
/// 2. then, if the operation of the first return event does not fit the current
///    state, the operations after which it would;
/// 3. then by `urgency` (see [`check_part`]): the return time for operations with
///    a known outcome, so that the search is *lazy*, like Lowe's just-in-time
///    linearization (a state-changing operation is placed when its return
///    forces it or a read needs its effect, rather than as soon as it is
///    invoked), and the call time for those with an unknown outcome (placed
///    eagerly: their return never forces them, and when one was applied, later
///    reads need it).
#[allow(clippy::too_many_arguments)]
fn push_level<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    state: &M::State,
    list: &EventList,
    read_only: &[bool],
    urgency: &[u64],
    candidates: &mut Vec<usize>,
    levels: &mut Vec<Level>,
) {
    let start = candidates.len();
    let mut node = list.next(HEAD);
    while list.nodes[node].is_call {
        candidates.push(node);
        node = list.nodes[node].next;
    }
    let first_return = node;
    let step =
        |state: &M::State, op: usize| model.step(state, &ops[op].input, ops[op].output.as_ref());
    // The operation that must be placed first, if it cannot be placed now.
    let stuck = (first_return != TAIL)
        .then(|| list.nodes[first_return].op)
        .filter(|&op| step(state, op).is_none());
    let mut keyed: Vec<(bool, bool, u64, usize)> = candidates[start..]
        .iter()
        .map(|&call| {
            let op = list.nodes[call].op;
            let unblocks = stuck.is_some_and(|stuck| {
                !read_only[op] && step(state, op).is_some_and(|next| step(&next, stuck).is_some())
            });
            (!read_only[op], !unblocks, urgency[op], call)
        })
        .collect();
    keyed.sort_unstable();
    for (slot, (_, _, _, call)) in candidates[start..].iter_mut().zip(keyed) {
        *slot = call;
    }
    levels.push(Level {
        start,
        next: start,
        first_return,
    });
}

/// Checks one part of a history.
fn check_part<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    max_steps: u64,
) -> PartOutcome {
    let done = |verdict| PartOutcome { verdict, steps: 0 };
    if let Some((index, op)) = ops
        .iter()
        .enumerate()
        .find(|(_, op)| op.output.is_some() && op.ret < op.call)
    {
        return done(Verdict::Illegal(format!(
            "malformed history: {} returns before it is called",
            describe_op(index, op)
        )));
    }
    // Operations with a known outcome not linearized yet; the search succeeds at 0.
    let mut remaining = ops.iter().filter(|op| op.output.is_some()).count();
    if remaining == 0 {
        return done(Verdict::Ok);
    }

    let read_only: Vec<bool> = ops.iter().map(|op| model.is_read_only(&op.input)).collect();
    let urgency: Vec<u64> = ops
        .iter()
        .map(|op| if op.output.is_some() { op.ret } else { op.call })
        .collect();
    let mut list = EventList::new(ops);
    let mut linearized = Bitset::new(ops.len());
    let mut cache: HashSet<(Bitset, M::State)> = HashSet::new();
    let mut state = model.init();
    // The linearized prefix: `stack[d]` was chosen among the candidates of
    // `levels[d]`, and `levels` has one more entry, for the current configuration.
    let mut stack: Vec<Frame<M::State>> = Vec::new();
    let mut levels: Vec<Level> = Vec::new();
    let mut candidates: Vec<usize> = Vec::new();
    push_level(
        model,
        ops,
        &state,
        &list,
        &read_only,
        &urgency,
        &mut candidates,
        &mut levels,
    );
    let mut longest: Option<Longest<M::State>> = None;
    let mut steps = 0;

    while remaining > 0 {
        if steps >= max_steps {
            return PartOutcome {
                verdict: Verdict::Unknown,
                steps,
            };
        }
        steps += 1;
        let Some(level) = levels.last_mut() else {
            // Unreachable: `levels` has one more entry than `stack`.
            return PartOutcome {
                verdict: Verdict::Unknown,
                steps,
            };
        };
        if let Some(&call) = candidates.get(level.next) {
            level.next += 1;
            let index = list.nodes[call].op;
            let op = &ops[index];
            let Some(next_state) = model.step(&state, &op.input, op.output.as_ref()) else {
                continue;
            };
            linearized.set(index);
            if cache.insert((linearized.clone(), next_state.clone())) {
                stack.push(Frame {
                    call,
                    state: std::mem::replace(&mut state, next_state),
                    committed: read_only[index],
                });
                list.lift(call);
                if op.output.is_some() {
                    remaining -= 1;
                }
                push_level(
                    model,
                    ops,
                    &state,
                    &list,
                    &read_only,
                    &urgency,
                    &mut candidates,
                    &mut levels,
                );
                continue;
            }
            linearized.clear(index);
            // Unless it is read-only (then this configuration fails too, see
            // `Frame::committed`), try the next candidate.
            if !read_only[index] {
                continue;
            }
        } else if longest
            .as_ref()
            .is_none_or(|best| stack.len() > best.prefix.len())
        {
            // Every candidate failed: the operation of the first return event
            // cannot be placed after this prefix.
            let first_return = level.first_return;
            longest = Some(Longest {
                prefix: stack
                    .iter()
                    .map(|frame| list.nodes[frame.call].op)
                    .collect(),
                state: state.clone(),
                blocked: (first_return != TAIL).then_some(list.nodes[first_return].op),
            });
        }
        // Backtrack: undo the last linearized operation and go on with the next
        // candidate in its place; a committed one has no alternatives, so its
        // level fails too.
        loop {
            if let Some(level) = levels.pop() {
                candidates.truncate(level.start);
            }
            let Some(frame) = stack.pop() else {
                return PartOutcome {
                    verdict: Verdict::Illegal(describe_failure(ops, longest.as_ref())),
                    steps,
                };
            };
            state = frame.state;
            let index = list.nodes[frame.call].op;
            linearized.clear(index);
            list.unlift(frame.call);
            if ops[index].output.is_some() {
                remaining += 1;
            }
            if !frame.committed {
                break;
            }
        }
    }
    PartOutcome {
        verdict: Verdict::Ok,
        steps,
    }
}

/// Describes one operation as `#index client c: input -> output [call, ret]`.
fn describe_op<I: Debug, O: Debug>(index: usize, op: &Operation<I, O>) -> String {
    match &op.output {
        Some(output) => format!(
            "#{index} client {}: {:?} -> {:?} [{}, {}]",
            op.client, op.input, output, op.call, op.ret
        ),
        None => format!(
            "#{index} client {}: {:?} -> unknown outcome [{}, +inf]",
            op.client, op.input, op.call
        ),
    }
}

/// Explains why a part is not linearizable.
fn describe_failure<I: Debug, O: Debug, S: Debug>(
    ops: &[Operation<I, O>],
    longest: Option<&Longest<S>>,
) -> String {
    let mut text = String::from("not linearizable");
    let Some(longest) = longest else {
        return text;
    };
    // Writing to a String cannot fail.
    let _ = write!(
        text,
        "; longest linearizable prefix ({} of {} operations), leaving state {:?}:",
        longest.prefix.len(),
        ops.len(),
        longest.state
    );
    for &index in &longest.prefix {
        let _ = write!(text, "\n  {}", describe_op(index, &ops[index]));
    }
    if let Some(index) = longest.blocked {
        let _ = write!(
            text,
            "\ncould not linearize: {}",
            describe_op(index, &ops[index])
        );
    }
    text
}

/// A key-value register model: keys and values are `u64`, a missing key reads as
/// `None`.
///
/// The history is partitioned by key, in ascending key order (so
/// [`CheckResult::Illegal::partition`] is the rank of the failing key among the
/// keys checked); within a part the operations keep their order in the history.
/// `Get`s with an unknown outcome constrain nothing and are dropped before
/// checking (a key with only such operations has no part). A `Put` answered
/// with [`KvOutput::Value`], or a `Get` answered with [`KvOutput::Ok`], is not
/// allowed by the specification.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvModel;

/// An operation on a [`KvModel`] store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvInput {
    /// Sets `key` to `value`.
    Put {
        /// The key written.
        key: u64,
        /// The value written.
        value: u64,
    },
    /// Reads `key`.
    Get {
        /// The key read.
        key: u64,
    },
}

impl KvInput {
    /// The key the operation is on.
    pub fn key(&self) -> u64 {
        match self {
            KvInput::Put { key, .. } | KvInput::Get { key } => *key,
        }
    }
}

/// The answer to a [`KvInput`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvOutput {
    /// A `Put` was applied.
    Ok,
    /// A `Get` read this value (`None`: the key was never written).
    Value(Option<u64>),
}

impl Model for KvModel {
    /// The value of the part's key.
    type State = Option<u64>;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> Option<u64> {
        None
    }

    fn step(
        &self,
        state: &Option<u64>,
        input: &KvInput,
        output: Option<&KvOutput>,
    ) -> Option<Option<u64>> {
        match (input, output) {
            (KvInput::Put { value, .. }, None | Some(KvOutput::Ok)) => Some(Some(*value)),
            (KvInput::Get { .. }, None) => Some(*state),
            (KvInput::Get { .. }, Some(KvOutput::Value(read))) if read == state => Some(*state),
            _ => None,
        }
    }

    fn is_read_only(&self, input: &KvInput) -> bool {
        matches!(input, KvInput::Get { .. })
    }

    fn partition(
        &self,
        history: Vec<Operation<KvInput, KvOutput>>,
    ) -> Vec<Vec<Operation<KvInput, KvOutput>>> {
        let mut by_key: BTreeMap<u64, Vec<Operation<KvInput, KvOutput>>> = BTreeMap::new();
        for op in history {
            if matches!(op.input, KvInput::Get { .. }) && op.output.is_none() {
                continue;
            }
            by_key.entry(op.input.key()).or_default().push(op);
        }
        by_key.into_values().collect()
    }
}

#[cfg(test)]
mod tests;

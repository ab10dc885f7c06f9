//! The checks of a recorded history: linearizability of the registers
//! (with dengine-sim's Wing–Gong checker), serializable reads that never
//! go back in time, and the watch streams against the store's history.

use std::collections::{BTreeMap, HashMap};

use dengine_sim::linearizability::{self, CheckResult, Model, Operation};

use crate::history::{Input, Op, Output, SerialRead};

/// The registers' sequential specification: one value per key, put,
/// linearizable get and compare-and-swap.
#[derive(Clone, Copy, Debug, Default)]
pub struct Registers;

impl Model for Registers {
    type State = Option<u64>;
    type Input = Input;
    type Output = Output;

    fn init(&self) -> Option<u64> {
        None
    }

    fn step(
        &self,
        state: &Option<u64>,
        input: &Input,
        output: Option<&Output>,
    ) -> Option<Self::State> {
        match (input, output) {
            (Input::Put { value, .. }, None | Some(Output::Ok)) => Some(Some(*value)),
            (Input::Get { .. }, None) => Some(*state),
            (Input::Get { .. }, Some(Output::Value(read))) => (read == state).then_some(*state),
            // An unknown outcome: it took effect (at this point) if the
            // comparison held, else it changed nothing.
            (Input::Cas { from, to, .. }, None) => {
                Some(if state == from { Some(*to) } else { *state })
            }
            (Input::Cas { from, to, .. }, Some(Output::Swapped(swapped))) => {
                match (state == from, swapped) {
                    (true, true) => Some(Some(*to)),
                    (false, false) => Some(*state),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    fn is_read_only(&self, input: &Input) -> bool {
        matches!(input, Input::Get { .. })
    }

    fn partition(
        &self,
        history: Vec<Operation<Input, Output>>,
    ) -> Vec<Vec<Operation<Input, Output>>> {
        let mut by_key: BTreeMap<u8, Vec<Operation<Input, Output>>> = BTreeMap::new();
        for op in history {
            // An unanswered read constrains nothing.
            if matches!(op.input, Input::Get { .. }) && op.output.is_none() {
                continue;
            }
            by_key.entry(op.input.key()).or_default().push(op);
        }
        by_key.into_values().collect()
    }
}

/// The checker's budget per register (search steps).
const MAX_STEPS: u64 = 20_000_000;

/// Checks the registers; a violation's description, or `Ok(undecided)`
/// (whether some register's search ran out of budget: not a violation,
/// but not a proof either).
pub fn linearizable(ops: &[Op]) -> Result<bool, String> {
    let history: Vec<Operation<Input, Output>> = ops
        .iter()
        .map(|op| Operation {
            client: op.client,
            input: op.input.clone(),
            call: op.call,
            output: op.output.clone(),
            ret: op.ret,
        })
        .collect();
    let keys: Vec<u8> = {
        let mut keys: Vec<u8> = ops
            .iter()
            .filter(|op| !(matches!(op.input, Input::Get { .. }) && op.output.is_none()))
            .map(|op| op.input.key())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    };
    match linearizability::check(&Registers, history, MAX_STEPS) {
        CheckResult::Ok => Ok(false),
        CheckResult::Unknown => Ok(true),
        CheckResult::Illegal {
            partition,
            description,
        } => Err(format!(
            "register r/{} is not linearizable: {description}",
            keys.get(partition).copied().unwrap_or(u8::MAX)
        )),
    }
}

/// Checks that each client's serializable reads of one member (one
/// incarnation of it) see revisions that never decrease.
pub fn serial_monotonic(reads: &[SerialRead]) -> Vec<String> {
    let mut last: HashMap<(u64, usize, u64), (i64, u64)> = HashMap::new();
    let mut found = Vec::new();
    for r in reads {
        if let Some((revision, at)) = last.get(&(r.client, r.member, r.incarnation))
            && r.revision < *revision
        {
            found.push(format!(
                "client {} read revision {} from n{} at {:.3}s after revision {} at {:.3}s",
                r.client,
                r.revision,
                r.member + 1,
                r.at as f64 / 1e6,
                revision,
                *at as f64 / 1e6
            ));
        }
        last.insert((r.client, r.member, r.incarnation), (r.revision, r.at));
    }
    found
}

/// One event as a watcher received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The event's revision (the key's mod revision; for a delete, the
    /// delete's revision).
    pub revision: i64,
    /// The key.
    pub key: Vec<u8>,
    /// Whether it is a delete.
    pub delete: bool,
    /// The value written (empty for a delete).
    pub value: Vec<u8>,
    /// Which response of its stream carried it.
    pub response: u64,
}

/// Checks what one watcher received against the reference (every event
/// of the store's history, in order): the watcher's events must be the
/// reference's first events exactly (ordered, unique, none missed, the
/// right values), and the events of one revision must have come in one
/// response (a txn's events together). `upto` is the revision the
/// watcher had to reach.
pub fn watch_stream(name: &str, got: &[Event], reference: &[Event], upto: i64) -> Vec<String> {
    let mut found = Vec::new();
    for (i, e) in got.iter().enumerate() {
        match reference.get(i) {
            Some(r)
                if r.revision == e.revision
                    && r.key == e.key
                    && r.delete == e.delete
                    && r.value == e.value => {}
            Some(r) => {
                found.push(format!(
                    "watcher {name}: event {i} is revision {} key {:?}, expected revision {} key {:?}{}",
                    e.revision,
                    String::from_utf8_lossy(&e.key),
                    r.revision,
                    String::from_utf8_lossy(&r.key),
                    if e.revision == r.revision && e.key == r.key { " (another value or type)" } else { "" }
                ));
                return found;
            }
            None => {
                found.push(format!(
                    "watcher {name}: event {i} (revision {}) is beyond the store's history",
                    e.revision
                ));
                return found;
            }
        }
        if i > 0 && got[i - 1].revision == e.revision && got[i - 1].response != e.response {
            found.push(format!(
                "watcher {name}: the events of revision {} came in two responses",
                e.revision
            ));
        }
    }
    let reached = got.last().map_or(0, |e| e.revision);
    let expected = reference.iter().filter(|e| e.revision <= upto).count();
    if got.len() < expected {
        found.push(format!(
            "watcher {name}: got {} events up to revision {reached}, the store has {expected} up to revision {upto}",
            got.len()
        ));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(input: Input, call: u64, ret: u64, output: Option<Output>) -> Op {
        Op {
            client: call,
            member: 0,
            input,
            call,
            ret,
            output,
        }
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_put_is_found() {
        let ops = vec![
            op(Input::Put { key: 1, value: 7 }, 0, 10, Some(Output::Ok)),
            op(Input::Get { key: 1 }, 20, 30, Some(Output::Value(None))),
        ];
        assert!(linearizable(&ops).is_err());
        let ok = vec![
            op(Input::Put { key: 1, value: 7 }, 0, 10, Some(Output::Ok)),
            op(Input::Get { key: 1 }, 5, 30, Some(Output::Value(None))),
        ];
        assert_eq!(linearizable(&ok), Ok(false));
    }

    #[test]
    fn a_compare_and_swap_must_agree_with_the_value() {
        let lost = vec![
            op(Input::Put { key: 2, value: 1 }, 0, 10, Some(Output::Ok)),
            op(
                Input::Cas {
                    key: 2,
                    from: Some(1),
                    to: 3,
                },
                20,
                30,
                Some(Output::Swapped(false)),
            ),
        ];
        assert!(linearizable(&lost).is_err());
        // An unknown swap may have happened: a later read of its value is fine.
        let unknown = vec![
            op(Input::Put { key: 2, value: 1 }, 0, 10, Some(Output::Ok)),
            op(
                Input::Cas {
                    key: 2,
                    from: Some(1),
                    to: 3,
                },
                20,
                0,
                None,
            ),
            op(Input::Get { key: 2 }, 40, 50, Some(Output::Value(Some(3)))),
        ];
        assert_eq!(linearizable(&unknown), Ok(false));
        // A read of a value nobody wrote is not.
        let invented = vec![op(
            Input::Get { key: 2 },
            40,
            50,
            Some(Output::Value(Some(9))),
        )];
        assert!(linearizable(&invented).is_err());
    }

    #[test]
    fn serializable_reads_going_back_are_found_per_client_and_member() {
        let r = |client, member, revision, at| SerialRead {
            client,
            member,
            incarnation: 0,
            revision,
            at,
        };
        assert!(
            serial_monotonic(&[r(1, 0, 5, 1), r(2, 0, 3, 2), r(1, 1, 2, 3), r(1, 0, 5, 4)])
                .is_empty()
        );
        assert_eq!(serial_monotonic(&[r(1, 0, 5, 1), r(1, 0, 4, 2)]).len(), 1);
        // A replaced member starts over; its former self does not count.
        let again = SerialRead {
            incarnation: 1,
            ..r(1, 0, 2, 3)
        };
        assert!(serial_monotonic(&[r(1, 0, 5, 1), again.clone()]).is_empty());
        assert_eq!(
            serial_monotonic(&[
                r(1, 0, 5, 1),
                again,
                SerialRead {
                    incarnation: 1,
                    ..r(1, 0, 1, 4)
                }
            ])
            .len(),
            1
        );
    }

    #[test]
    fn watch_gaps_duplicates_and_split_txns_are_found() {
        let e = |revision, key: &str, response| Event {
            revision,
            key: key.as_bytes().to_vec(),
            delete: false,
            value: b"v".to_vec(),
            response,
        };
        let reference = vec![e(2, "a", 0), e(3, "a", 0), e(3, "b", 0), e(4, "c", 0)];
        assert!(
            watch_stream(
                "w",
                &[e(2, "a", 1), e(3, "a", 2), e(3, "b", 2), e(4, "c", 3)],
                &reference,
                4
            )
            .is_empty()
        );
        // A gap.
        assert!(!watch_stream("w", &[e(2, "a", 1), e(4, "c", 2)], &reference, 4).is_empty());
        // A duplicate.
        assert!(!watch_stream("w", &[e(2, "a", 1), e(2, "a", 2)], &reference, 4).is_empty());
        // A txn's events in two responses.
        assert!(
            !watch_stream(
                "w",
                &[e(2, "a", 1), e(3, "a", 2), e(3, "b", 3)],
                &reference,
                3
            )
            .is_empty()
        );
        // Stopped short of the revision it had to reach.
        assert!(!watch_stream("w", &[e(2, "a", 1)], &reference, 4).is_empty());
        // A prefix up to what it had to reach is fine.
        assert!(watch_stream("w", &[e(2, "a", 1)], &reference, 2).is_empty());
    }
}

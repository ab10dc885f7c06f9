use super::*;
use proptest::prelude::*;
use std::time::Instant;

type KvOp = Operation<KvInput, KvOutput>;

const BUDGET: u64 = 1_000_000;

fn put(client: u64, key: u64, value: u64, call: u64, ret: u64) -> KvOp {
    Operation {
        client,
        input: KvInput::Put { key, value },
        call,
        output: Some(KvOutput::Ok),
        ret,
    }
}

fn put_unknown(client: u64, key: u64, value: u64, call: u64) -> KvOp {
    Operation {
        client,
        input: KvInput::Put { key, value },
        call,
        output: None,
        ret: 0,
    }
}

fn get(client: u64, key: u64, read: Option<u64>, call: u64, ret: u64) -> KvOp {
    Operation {
        client,
        input: KvInput::Get { key },
        call,
        output: Some(KvOutput::Value(read)),
        ret,
    }
}

fn check_kv(history: Vec<KvOp>) -> CheckResult {
    check(&KvModel, history, BUDGET)
}

fn assert_ok(history: Vec<KvOp>) {
    let result = check_kv(history);
    assert_eq!(result, CheckResult::Ok, "{result:?}");
}

/// Asserts the history is illegal in `partition` and returns the description.
fn assert_illegal(history: Vec<KvOp>, partition: usize) -> String {
    match check_kv(history) {
        CheckResult::Illegal {
            partition: found,
            description,
        } => {
            assert_eq!(found, partition, "{description}");
            description
        }
        other => panic!("expected Illegal in partition {partition}, got {other:?}"),
    }
}

// ---------------------------------------------------------------- accepted

#[test]
fn empty_history_is_ok() {
    assert_ok(vec![]);
}

#[test]
fn sequential_put_get_is_ok() {
    assert_ok(vec![
        get(0, 1, None, 0, 1),
        put(0, 1, 10, 2, 3),
        get(1, 1, Some(10), 4, 5),
        put(1, 1, 20, 6, 7),
        get(0, 1, Some(20), 8, 9),
    ]);
}

#[test]
fn concurrent_get_may_see_the_old_value() {
    assert_ok(vec![
        put(0, 1, 1, 0, 1),
        put(0, 1, 2, 10, 20),
        get(1, 1, Some(1), 12, 15),
    ]);
}

#[test]
fn concurrent_get_may_see_the_new_value() {
    assert_ok(vec![
        put(0, 1, 1, 0, 1),
        put(0, 1, 2, 10, 20),
        get(1, 1, Some(2), 12, 15),
        // Once a reader saw 2, later reads see 2 too.
        get(2, 1, Some(2), 16, 17),
    ]);
}

#[test]
fn concurrent_gets_ordered_differently_than_invoked() {
    // The get invoked first observes the later state: fine, both overlap the put.
    assert_ok(vec![
        put(0, 1, 7, 0, 100),
        get(1, 1, Some(7), 10, 20),
        get(2, 1, None, 15, 90),
    ]);
}

#[test]
fn touching_intervals_are_concurrent() {
    // The get is invoked at the instant the put returns: intervals are closed, so
    // the get may be linearized before the put.
    assert_ok(vec![put(0, 1, 1, 0, 5), get(1, 1, None, 5, 10)]);
    // One unit later it may not.
    assert_illegal(vec![put(0, 1, 1, 0, 5), get(1, 1, None, 6, 10)], 0);
}

#[test]
fn unknown_write_observed_later_is_ok() {
    assert_ok(vec![
        put(0, 1, 1, 0, 1),
        put_unknown(1, 1, 2, 5),
        get(2, 1, Some(2), 100, 101),
        get(2, 1, Some(2), 102, 103),
    ]);
}

#[test]
fn unknown_write_never_observed_is_ok() {
    assert_ok(vec![
        put(0, 1, 1, 0, 1),
        put_unknown(1, 1, 2, 5),
        get(2, 1, Some(1), 100, 101),
        get(2, 1, Some(1), 1000, 1001),
    ]);
}

#[test]
fn unknown_write_observed_then_overwritten_is_ok() {
    assert_ok(vec![
        put_unknown(1, 1, 2, 0),
        get(2, 1, Some(2), 10, 11),
        put(0, 1, 3, 20, 21),
        get(2, 1, Some(3), 30, 31),
    ]);
}

#[test]
fn only_unknown_outcomes_is_ok() {
    assert_ok(vec![
        put_unknown(0, 1, 1, 0),
        put_unknown(1, 1, 2, 0),
        Operation {
            client: 2,
            input: KvInput::Get { key: 1 },
            call: 3,
            output: None,
            ret: 4,
        },
    ]);
}

// ---------------------------------------------------------------- rejected

#[test]
fn stale_read_is_rejected() {
    let description = assert_illegal(vec![put(0, 1, 1, 0, 10), get(1, 1, None, 11, 12)], 0);
    assert!(
        description.contains("could not linearize: #1 client 1: Get { key: 1 } -> Value(None)")
    );

    // Same with an older value rather than the initial one.
    assert_illegal(
        vec![
            put(0, 1, 1, 0, 10),
            put(0, 1, 2, 20, 30),
            get(1, 1, Some(1), 31, 32),
        ],
        0,
    );
}

#[test]
fn lost_write_is_rejected() {
    // put 1 finished before put 2 began, put 2 was acknowledged, yet every later
    // read returns 1.
    let description = assert_illegal(
        vec![
            put(0, 1, 1, 0, 10),
            put(1, 1, 2, 20, 30),
            get(2, 1, Some(1), 40, 41),
            get(2, 1, Some(1), 50, 51),
            get(3, 1, Some(1), 60, 61),
        ],
        0,
    );
    assert!(
        description.contains("longest linearizable prefix (2 of 5 operations)"),
        "{description}"
    );
}

#[test]
fn read_of_a_value_never_written_is_rejected() {
    assert_illegal(
        vec![
            put(0, 1, 1, 0, 10),
            put(1, 1, 2, 5, 15),
            get(2, 1, Some(3), 0, 20),
        ],
        0,
    );
}

#[test]
fn reads_going_back_in_time_are_rejected() {
    assert_illegal(
        vec![
            put(0, 1, 1, 0, 10),
            put(1, 1, 2, 20, 100),
            get(2, 1, Some(2), 30, 40),
            get(3, 1, Some(1), 50, 60),
        ],
        0,
    );
}

#[test]
fn unknown_write_cannot_take_effect_before_it_is_called() {
    assert_illegal(vec![get(0, 1, Some(2), 0, 10), put_unknown(1, 1, 2, 20)], 0);
}

#[test]
fn unknown_write_cannot_be_undone_once_observed() {
    assert_illegal(
        vec![
            put_unknown(0, 1, 2, 0),
            get(1, 1, Some(2), 10, 11),
            get(1, 1, None, 20, 21),
        ],
        0,
    );
}

#[test]
fn malformed_operations_are_rejected() {
    // Returns before it is called.
    let description = assert_illegal(vec![put(0, 1, 1, 10, 5)], 0);
    assert!(description.contains("malformed"), "{description}");
    // Answers of the wrong kind.
    assert_illegal(
        vec![Operation {
            client: 0,
            input: KvInput::Put { key: 1, value: 1 },
            call: 0,
            output: Some(KvOutput::Value(None)),
            ret: 1,
        }],
        0,
    );
    assert_illegal(
        vec![Operation {
            client: 0,
            input: KvInput::Get { key: 1 },
            call: 0,
            output: Some(KvOutput::Ok),
            ret: 1,
        }],
        0,
    );
}

// ---------------------------------------------------------------- partitions, budget

#[test]
fn violation_is_reported_in_its_partition() {
    let description = assert_illegal(
        vec![
            put(0, 1, 1, 0, 10),
            put(0, 7, 1, 0, 10),
            put(1, 3, 5, 0, 10),
            get(2, 1, Some(1), 20, 30),
            // Key 3 reads a stale value; keys 1 and 7 are fine.
            get(2, 3, None, 20, 30),
            get(3, 7, Some(1), 20, 30),
        ],
        1,
    );
    assert!(description.starts_with("partition 1: "), "{description}");
    assert!(description.contains("Get { key: 3 }"), "{description}");
    assert!(!description.contains("key: 1 "), "{description}");
}

#[test]
fn illegal_partition_wins_over_an_undecided_one() {
    // Partition 0 (key 0) needs 3 steps; partition 1 fails in 2.
    let undecided = vec![
        put(0, 0, 1, 0, 10),
        get(0, 0, Some(1), 20, 30),
        get(0, 0, Some(1), 40, 50),
    ];
    assert_eq!(check(&KvModel, undecided.clone(), 2), CheckResult::Unknown);
    let mut history = undecided;
    history.push(get(1, 1, Some(9), 0, 1));
    match check(&KvModel, history, 2) {
        CheckResult::Illegal { partition, .. } => assert_eq!(partition, 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn exhausted_budget_is_unknown() {
    let history = vec![put(0, 1, 1, 0, 10), get(1, 1, Some(1), 20, 30)];
    assert_eq!(check(&KvModel, history.clone(), 1), CheckResult::Unknown);
    assert_eq!(check(&KvModel, history, 2), CheckResult::Ok);
}

/// A fetch-and-add counter, to exercise the default (single) partition.
struct Counter;

impl Model for Counter {
    type State = u64;
    type Input = u64;
    type Output = u64;
    fn init(&self) -> u64 {
        0
    }
    /// Adds the input and returns the previous value.
    fn step(&self, state: &u64, input: &u64, output: Option<&u64>) -> Option<u64> {
        match output {
            Some(previous) if previous != state => None,
            _ => Some(state + input),
        }
    }
}

fn add(client: u64, delta: u64, previous: u64, call: u64, ret: u64) -> Operation<u64, u64> {
    Operation {
        client,
        input: delta,
        call,
        output: Some(previous),
        ret,
    }
}

#[test]
fn default_partition_checks_a_single_part() {
    let concurrent = vec![
        add(0, 1, 2, 0, 10),
        add(1, 2, 0, 0, 10),
        add(2, 4, 3, 11, 12),
    ];
    assert_eq!(check(&Counter, concurrent, BUDGET), CheckResult::Ok);
    let swapped = vec![add(0, 1, 0, 0, 10), add(1, 2, 0, 0, 10)];
    match check(&Counter, swapped, BUDGET) {
        CheckResult::Illegal { partition, .. } => assert_eq!(partition, 0),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------- generated histories

/// SplitMix64, to generate large histories deterministically without dependencies.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// What happens to an operation in a generated execution.
#[derive(Clone, Copy, Debug)]
enum Fate {
    /// Applied at its linearization point and answered.
    Answered,
    /// Applied at its linearization point, but the answer was lost.
    AppliedUnanswered,
    /// Never applied and never answered.
    Dropped,
}

/// A planned operation of a generated execution: input, interval, linearization
/// point and fate. `execute` computes the outputs.
#[derive(Clone, Debug)]
struct Planned {
    client: u64,
    input: KvInput,
    call: u64,
    ret: u64,
    point: u64,
    fate: Fate,
}

/// Runs the planned operations against a sequential store in the order of their
/// linearization points, producing a linearizable history by construction.
fn execute(plan: &[Planned]) -> Vec<KvOp> {
    let mut order: Vec<usize> = (0..plan.len()).collect();
    order.sort_by_key(|&i| (plan[i].point, i));
    let mut store: BTreeMap<u64, u64> = BTreeMap::new();
    let mut outputs: Vec<Option<KvOutput>> = vec![None; plan.len()];
    for i in order {
        let planned = &plan[i];
        if matches!(planned.fate, Fate::Dropped) {
            continue;
        }
        let output = match planned.input {
            KvInput::Put { key, value } => {
                store.insert(key, value);
                KvOutput::Ok
            }
            KvInput::Get { key } => KvOutput::Value(store.get(&key).copied()),
        };
        if matches!(planned.fate, Fate::Answered) {
            outputs[i] = Some(output);
        }
    }
    plan.iter()
        .zip(outputs)
        .map(|(planned, output)| Operation {
            client: planned.client,
            input: planned.input.clone(),
            call: planned.call,
            output,
            ret: planned.ret,
        })
        .collect()
}

/// A realistic execution: `clients` clients each issuing operations one after
/// another on `keys` keys, with random latencies (so random overlaps) and a
/// fraction `unanswered_per_mille` of operations whose answer is lost (the
/// client then moves on, as after a timeout).
fn simulate(
    seed: u64,
    clients: u64,
    keys: u64,
    ops: usize,
    unanswered_per_mille: u64,
) -> Vec<KvOp> {
    let mut rng = SplitMix(seed);
    let mut free_at = vec![0u64; clients as usize];
    let mut next_value = 1;
    let mut plan = Vec::with_capacity(ops);
    for _ in 0..ops {
        // The client that becomes free first issues the next operation.
        let (client, &free) = free_at
            .iter()
            .enumerate()
            .min_by_key(|&(client, &t)| (t, client))
            .unwrap();
        let call = free + rng.below(5);
        let ret = call + 1 + rng.below(40);
        let point = call + rng.below(ret - call + 1);
        let key = rng.below(keys);
        let input = if rng.below(2) == 0 {
            next_value += 1;
            KvInput::Put {
                key,
                value: next_value,
            }
        } else {
            KvInput::Get { key }
        };
        let fate = if rng.below(1000) < unanswered_per_mille {
            if rng.below(2) == 0 {
                Fate::AppliedUnanswered
            } else {
                Fate::Dropped
            }
        } else {
            Fate::Answered
        };
        free_at[client] = ret;
        plan.push(Planned {
            client: client as u64,
            input,
            call,
            ret,
            point,
            fate,
        });
    }
    execute(&plan)
}

/// Checks a large simulated history part by part, asserting every part is Ok,
/// and reports the throughput (operations per second; debug builds are slow).
fn check_large(name: &str, history: Vec<KvOp>, budget: u64) {
    let total = history.len();
    let started = Instant::now();
    let parts = KvModel.partition(history);
    let mut steps = Vec::new();
    for part in &parts {
        let outcome = check_part(&KvModel, part, budget);
        assert!(
            matches!(outcome.verdict, Verdict::Ok),
            "{:?}",
            outcome.verdict
        );
        steps.push(outcome.steps);
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{name}: {total} ops in {} parts, steps per part {steps:?}, {:?} ({:.0} ops/s, debug build)",
        parts.len(),
        elapsed,
        total as f64 / elapsed.as_secs_f64().max(1e-9),
    );
}

#[test]
fn large_realistic_history_is_checked_quickly() {
    // 5 keys x ~200 operations, 8 clients. A budget of 20 steps per operation
    // proves the search stays near-linear on such histories.
    for seed in 0..3 {
        let history = simulate(seed, 8, 5, 1000, 0);
        check_large("1000 ops, all answered", history.clone(), 20 * 1000);
        assert_eq!(check(&KvModel, history, 20 * 1000), CheckResult::Ok);
    }
}

#[test]
fn large_history_with_lost_answers_is_checked_quickly() {
    // 2% of the operations time out, half of those having taken effect.
    for seed in 0..3 {
        let history = simulate(seed, 8, 5, 1000, 20);
        check_large("1000 ops, 2% unanswered", history.clone(), 20 * 1000);
        assert_eq!(check(&KvModel, history, 20 * 1000), CheckResult::Ok);
    }
}

#[test]
fn contended_single_key_history_is_checked_quickly() {
    // Every operation on one key, 8 clients (about 8 operations in flight), 10%
    // of them timing out: 100 steps per operation is plenty.
    for seed in 0..3 {
        let history = simulate(seed, 8, 1, 1000, 100);
        check_large("1 key, 8 clients, 10% unanswered", history, 100 * 1000);
    }
    // 16 clients on one key is much harder (the search is exponential in the
    // number of operations in flight in the worst case) but still decided.
    let history = simulate(1, 16, 1, 1000, 20);
    check_large("1 key, 16 clients, 2% unanswered", history, 1000 * 1000);
}

#[test]
fn large_history_with_one_stale_read_is_rejected() {
    let mut history = simulate(7, 8, 5, 1000, 0);
    // Pick a read that returned a value, and make it return the initial value
    // while it is called after the first completed put on its key.
    let first_put_ret = |key: u64, history: &[KvOp]| {
        history
            .iter()
            .filter(|op| matches!(op.input, KvInput::Put { key: k, .. } if k == key))
            .map(|op| op.ret)
            .min()
    };
    let victim = (0..history.len())
        .rev()
        .find(|&i| {
            let op = &history[i];
            matches!(op.input, KvInput::Get { .. })
                && first_put_ret(op.input.key(), &history).is_some_and(|ret| ret < op.call)
        })
        .unwrap();
    history[victim].output = Some(KvOutput::Value(None));
    let key = history[victim].input.key();
    match check(&KvModel, history, 20 * 1000) {
        CheckResult::Illegal { partition, .. } => assert_eq!(partition as u64, key),
        other => panic!("{other:?}"),
    }
}

fn planned_strategy() -> impl Strategy<Value = Vec<Planned>> {
    let one = (
        0u64..4,                   // client
        0u64..3,                   // key
        prop::option::of(0u64..4), // Some(value): put; None: get
        0u64..100,                 // call
        0u64..30,                  // duration
        0u64..=1000,               // linearization point, per mille of the interval
        0u8..20,                   // fate: 0 applied unanswered, 1 dropped, else answered
    )
        .prop_map(|(client, key, value, call, duration, per_mille, fate)| {
            let ret = call + duration;
            Planned {
                client,
                input: match value {
                    Some(value) => KvInput::Put { key, value },
                    None => KvInput::Get { key },
                },
                call,
                ret,
                point: call + duration * per_mille / 1000,
                fate: match fate {
                    0 => Fate::AppliedUnanswered,
                    1 => Fate::Dropped,
                    _ => Fate::Answered,
                },
            }
        });
    prop::collection::vec(one, 2..40)
}

proptest! {
    #[test]
    fn executed_histories_are_linearizable(plan in planned_strategy()) {
        let history = execute(&plan);
        prop_assert_eq!(check(&KvModel, history.clone(), BUDGET), CheckResult::Ok, "{:#?}", history);
    }

    #[test]
    fn a_read_of_a_value_never_written_is_illegal(
        plan in planned_strategy(),
        pick in any::<prop::sample::Index>(),
    ) {
        let mut history = execute(&plan);
        let reads: Vec<usize> = (0..history.len())
            .filter(|&i| {
                matches!(history[i].input, KvInput::Get { .. }) && history[i].output.is_some()
            })
            .collect();
        prop_assume!(!reads.is_empty());
        let victim = reads[pick.index(reads.len())];
        // Written values are below 4.
        history[victim].output = Some(KvOutput::Value(Some(1000)));
        let result = check(&KvModel, history.clone(), BUDGET);
        prop_assert!(matches!(result, CheckResult::Illegal { .. }), "{:?}", result);
    }
}

/// A model of several keys as one state, so that the brute-force checker below
/// does not rely on [`KvModel::partition`].
struct WholeStore;

impl Model for WholeStore {
    type State = BTreeMap<u64, u64>;
    type Input = KvInput;
    type Output = KvOutput;
    fn init(&self) -> Self::State {
        BTreeMap::new()
    }
    fn step(
        &self,
        state: &Self::State,
        input: &KvInput,
        output: Option<&KvOutput>,
    ) -> Option<Self::State> {
        let key = input.key();
        let value = KvModel.step(&state.get(&key).copied(), input, output)?;
        let mut next = state.clone();
        if let Some(value) = value {
            next.insert(key, value);
        }
        Some(next)
    }
}

/// The definition of linearizability, by brute force: some order of the
/// operations, respecting real time, in which every operation with a known
/// outcome appears and some of those with an unknown outcome do, is allowed by
/// the model.
fn brute_force<M: Model>(model: &M, ops: &[Operation<M::Input, M::Output>]) -> bool {
    fn extend<M: Model>(
        model: &M,
        ops: &[Operation<M::Input, M::Output>],
        placed: &mut [bool],
        state: &M::State,
    ) -> bool {
        if ops
            .iter()
            .zip(placed.iter())
            .all(|(op, &placed)| placed || op.output.is_none())
        {
            return true;
        }
        for i in 0..ops.len() {
            let must_wait = (0..ops.len()).any(|j| {
                j != i && !placed[j] && ops[j].output.is_some() && ops[j].ret < ops[i].call
            });
            if placed[i] || must_wait {
                continue;
            }
            if let Some(next) = model.step(state, &ops[i].input, ops[i].output.as_ref()) {
                placed[i] = true;
                if extend(model, ops, placed, &next) {
                    return true;
                }
                placed[i] = false;
            }
        }
        false
    }
    extend(model, ops, &mut vec![false; ops.len()], &model.init())
}

/// Arbitrary small histories, linearizable or not, from (input, output) pairs.
fn small_history<I: Debug, O: Debug>(
    operation: impl Strategy<Value = (I, O)>,
) -> impl Strategy<Value = Vec<Operation<I, O>>> {
    let one = (0u64..3, operation, 0u64..20, 0u64..10, 0u8..5).prop_map(
        |(client, (input, output), call, duration, unknown)| Operation {
            client,
            input,
            call,
            output: (unknown != 0).then_some(output),
            ret: call + duration,
        },
    );
    prop::collection::vec(one, 1..=7)
}

/// Puts answered `Ok` and gets answered with a value, on two keys and three values.
fn kv_operation() -> impl Strategy<Value = (KvInput, KvOutput)> {
    prop_oneof![
        (0u64..2, 1u64..4).prop_map(|(key, value)| (KvInput::Put { key, value }, KvOutput::Ok)),
        (0u64..2, prop::option::of(1u64..4))
            .prop_map(|(key, read)| (KvInput::Get { key }, KvOutput::Value(read))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn kv_checker_agrees_with_brute_force(history in small_history(kv_operation())) {
        let expected = brute_force(&WholeStore, &history);
        let result = check(&KvModel, history.clone(), BUDGET);
        prop_assert_eq!(
            result == CheckResult::Ok,
            expected,
            "{:?} for {:#?}",
            result,
            history
        );
        prop_assert!(result != CheckResult::Unknown);
    }

    #[test]
    fn counter_checker_agrees_with_brute_force(history in small_history((1u64..3, 0u64..6))) {
        let expected = brute_force(&Counter, &history);
        let result = check(&Counter, history.clone(), BUDGET);
        prop_assert_eq!(
            result == CheckResult::Ok,
            expected,
            "{:?} for {:#?}",
            result,
            history
        );
        prop_assert!(result != CheckResult::Unknown);
    }
}

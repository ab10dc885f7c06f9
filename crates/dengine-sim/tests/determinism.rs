//! A run is a pure function of its seed: the same seed replays byte for
//! byte (trace and report), different seeds give different runs, and a
//! failing seed found once fails again, identically.

mod common;

use common::{GrantEveryVote, elections, every_fault, first_caught};
use dengine_core::NodeId;
use dengine_sim::{Hooks, KvWorkload, NoHooks, SimOptions, SimReport, run};

fn all_faults(seed: u64) -> SimOptions {
    let mut o = SimOptions::new(seed);
    o.steps = 20_000;
    o.trace = true;
    o.faults = Some(every_fault());
    o
}

/// Everything a report holds, as text (the trace included).
fn render(r: &SimReport) -> String {
    format!("{r:?}")
}

/// Panics at the first trace line where `a` and `b` differ, then on any
/// other difference of the reports.
fn assert_same_run(a: &SimReport, b: &SimReport) {
    if let Some(i) =
        (0..a.trace.len().max(b.trace.len())).find(|&i| a.trace.get(i) != b.trace.get(i))
    {
        panic!(
            "seed {}: traces differ at line {i}:\n  first:  {:?}\n  second: {:?}",
            a.seed,
            a.trace.get(i),
            b.trace.get(i)
        );
    }
    assert_eq!(render(a), render(b), "seed {}: reports differ", a.seed);
}

fn run_with(opts: &SimOptions, hooks: &mut dyn Hooks) -> SimReport {
    run(opts, KvWorkload::default(), hooks)
}

#[test]
fn a_seed_replays_byte_for_byte_with_every_fault_kind() {
    for seed in [3, 1_000_003] {
        let opts = all_faults(seed);
        let a = run_with(&opts, &mut NoHooks);
        let b = run_with(&opts, &mut NoHooks);
        assert!(a.trace.len() > 1_000, "seed {seed}: a short trace");
        // The faults were injected, not just enabled.
        for what in [
            "nemesis: Partition",
            "nemesis: IsolateLeader",
            "nemesis: OneWay",
            "nemesis: Heal",
            "nemesis: Crash",
            "nemesis: Restart",
            "nemesis: AddLearner",
            "nemesis: Promote",
            "nemesis: RemoveVoter",
            "nemesis: Swap",
            "nemesis: Transfer",
            "nemesis: ChaseLeader",
            "nemesis: LeaseRace",
            "snapshot at",
        ] {
            assert!(
                a.trace.iter().any(|l| l.contains(what)),
                "seed {seed}: no {what:?} in the trace"
            );
        }
        assert_same_run(&a, &b);
        let mut actions = std::collections::BTreeMap::new();
        for l in &a.trace {
            if let Some((_, act)) = l.split_once("nemesis: ") {
                *actions.entry(act.to_string()).or_insert(0) += 1;
            }
        }
        println!(
            "seed {seed}: {} trace lines, {} steps, identical twice; nemesis {actions:?}",
            a.trace.len(),
            a.steps
        );
    }
}

#[test]
fn a_seed_derived_profile_replays_byte_for_byte() {
    let mut opts = SimOptions::new(77);
    opts.steps = 10_000;
    opts.trace = true;
    let a = run_with(&opts, &mut NoHooks);
    let b = run_with(&opts, &mut NoHooks);
    assert_same_run(&a, &b);
}

#[test]
fn different_seeds_give_different_runs() {
    let a = run_with(&all_faults(1), &mut NoHooks);
    let b = run_with(&all_faults(2), &mut NoHooks);
    assert_ne!(a.trace, b.trace);
    // Under one profile, the seed still decides the events.
    let differs = (0..a.trace.len().min(b.trace.len())).any(|i| a.trace[i] != b.trace[i]);
    assert!(
        differs,
        "the traces of seeds 1 and 2 share a prefix to the end"
    );
}

#[test]
fn tracing_does_not_change_the_run() {
    let traced = all_faults(11);
    let mut quiet = traced.clone();
    quiet.trace = false;
    let mut a = run_with(&traced, &mut NoHooks);
    let b = run_with(&quiet, &mut NoHooks);
    assert!(b.trace.is_empty());
    a.trace.clear();
    assert_eq!(render(&a), render(&b));
}

#[test]
fn a_failing_broken_node_seed_replays_byte_for_byte() {
    let setup = elections();
    let liar = || GrantEveryVote {
        liar: Some(NodeId(1)),
        pre_votes: true,
        flipped: 0,
    };
    let caught = first_caught(&setup, &["election safety"], liar, |h| h.flipped);
    let mut opts = setup.broken_options(caught.seed);
    opts.trace = true;
    let a = run_with(&opts, &mut liar());
    let b = run_with(&opts, &mut liar());
    assert!(!a.passed(), "seed {} passed when traced", caught.seed);
    assert_same_run(&a, &b);
    // The traced replay finds what the untraced scan found.
    assert_eq!(a.violations, caught.report.violations);
    println!(
        "seed {}: failing run replayed identically ({} trace lines)",
        caught.seed,
        a.trace.len()
    );
}

//! A seed stops at the step that first breaks a safety property: a broken
//! change costs a fraction of a second per failing seed, not a whole run.
//! The stopped run is the prefix of the full one (same first violation),
//! its traced replay is identical byte for byte and ends with what broke,
//! and `stop_at_first_violation = false` still runs on to the end.

mod common;

use common::{GrantEveryVote, elections, first_caught};
use dengine_core::NodeId;
use dengine_sim::{KvWorkload, NoHooks, SimOptions, SimReport, run};

fn liar() -> GrantEveryVote {
    GrantEveryVote {
        liar: Some(NodeId(1)),
        pre_votes: true,
        flipped: 0,
    }
}

fn run_liar(opts: &SimOptions) -> SimReport {
    run(opts, KvWorkload::default(), &mut liar())
}

#[test]
fn a_broken_seed_stops_at_the_step_of_its_first_violation() {
    let setup = elections();
    let caught = first_caught(&setup, &["election safety"], liar, |h| h.flipped);
    let stopped = &caught.report;
    let opts = setup.broken_options(caught.seed);
    assert!(opts.stop_at_first_violation, "stopping is the default");
    assert!(stopped.stopped_at_violation);
    assert!(
        stopped.steps < opts.steps,
        "seed {}: ran {} of {} fault-phase steps",
        caught.seed,
        stopped.steps,
        opts.steps
    );
    // Every violation reported was found at the last step.
    assert!(!stopped.violations.is_empty());
    assert!(
        stopped
            .violations
            .iter()
            .all(|v| v.at == stopped.virtual_us)
    );

    // Running on: the same first violation, found later than nothing else.
    let mut full = opts.clone();
    full.stop_at_first_violation = false;
    let full = run_liar(&full);
    assert!(!full.stopped_at_violation);
    assert!(full.steps > stopped.steps);
    assert_eq!(full.violations.first(), stopped.violations.first());
    println!(
        "seed {}: stopped after {} steps, the full run took {} ({} violations)",
        caught.seed,
        stopped.steps,
        full.steps,
        full.violations.len()
    );
}

#[test]
fn the_traced_replay_of_a_stopped_seed_is_identical_and_ends_with_what_broke() {
    let setup = elections();
    let caught = first_caught(&setup, &["election safety"], liar, |h| h.flipped);
    let mut opts = setup.broken_options(caught.seed);
    opts.trace = true;
    let a = run_liar(&opts);
    let b = run_liar(&opts);
    assert_eq!(format!("{a:?}"), format!("{b:?}"), "replays differ");
    assert_eq!(a.violations, caught.report.violations);
    assert_eq!(a.steps, caught.report.steps);
    let tail: Vec<&String> = a.trace.iter().rev().take(a.violations.len() + 1).collect();
    assert!(
        tail.iter()
            .any(|l| l.contains("STOP at the first violation")),
        "trace ends with {tail:?}"
    );
    assert!(
        tail.iter()
            .any(|l| l.contains("VIOLATION") && l.contains("election safety")),
        "trace ends with {tail:?}"
    );
}

#[test]
fn the_real_protocol_runs_to_the_end() {
    let mut opts = SimOptions::new(5);
    opts.steps = 5_000;
    let r = run(&opts, KvWorkload::default(), &mut NoHooks);
    assert!(r.passed(), "{:?}", r.violations);
    assert!(!r.stopped_at_violation);
    assert!(r.steps >= opts.steps);
}

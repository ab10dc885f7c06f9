//! A simulator that never fails proves nothing: deliberately broken nodes,
//! built here through [`dengine_sim::Hooks`] (never behind a flag in the
//! core), must be caught within a bounded number of seeds, while the real
//! protocol passes the same fault profiles and seeds.
//!
//! Run with `--nocapture` to see, per seed, what each variant broke.

mod common;

use common::{
    AckBeforeDurable, CommitByCountingAnyTerm, CommitWhatIsSent, ForgetStateMachineOnRestart,
    GrantEveryVote, LINEARIZABILITY, SAFETY, Setup, control, crashes_with_slow_disks,
    durable_state_machines, elections, first_caught, five_nodes_partitions_crashes, leader_chase,
};
use dengine_core::NodeId;

fn expect_caught(setup: &Setup, caught: &common::Caught, expected: &[&str]) {
    let broken = common::safety_failures(&caught.report);
    assert!(
        caught.fired > 0,
        "{}: seed {} failed without the breakage taking effect",
        setup.name,
        caught.seed
    );
    assert!(
        broken.iter().any(|p| expected.contains(p)),
        "{}: seed {} broke {broken:?}, expected one of {expected:?}",
        setup.name,
        caught.seed
    );
    assert!(!caught.report.passed());
}

/// One node grants every vote and pre-vote it is asked for: with three
/// nodes its vote alone makes any candidate a leader, so two candidates of
/// one term both win.
#[test]
fn a_node_granting_every_vote_breaks_election_safety() {
    let setup = elections();
    let expected = ["election safety"];
    let caught = first_caught(
        &setup,
        &expected,
        || GrantEveryVote {
            liar: Some(NodeId(1)),
            pre_votes: true,
            flipped: 0,
        },
        |h| h.flipped,
    );
    expect_caught(&setup, &caught, &expected);
}

/// Every node grants every real vote but answers pre-votes honestly: the
/// pre-vote round does not hide the double votes.
#[test]
fn granting_every_vote_behind_honest_pre_votes_breaks_election_safety() {
    let setup = elections();
    let expected = ["election safety"];
    let caught = first_caught(
        &setup,
        &expected,
        || GrantEveryVote {
            liar: None,
            pre_votes: false,
            flipped: 0,
        },
        |h| h.flipped,
    );
    expect_caught(&setup, &caught, &expected);
}

/// Nodes acknowledge appends and grant votes before the write is durable;
/// a crash then loses what the leader counted on (committed entries, or a
/// vote that is cast again).
#[test]
fn acknowledging_before_durable_is_caught() {
    let setup = crashes_with_slow_disks();
    let mut expected = SAFETY.to_vec();
    expected.push(LINEARIZABILITY);
    let caught = first_caught(&setup, &expected, AckBeforeDurable::default, |h| {
        h.asked.get()
    });
    expect_caught(&setup, &caught, &expected);
}

/// The leader tells followers that whatever it sends them is committed:
/// followers apply entries no majority holds, which a later leader replaces.
#[test]
fn followers_committing_what_they_receive_break_state_machine_safety() {
    let setup = five_nodes_partitions_crashes();
    let expected = ["state machine safety", LINEARIZABILITY];
    let caught = first_caught(&setup, &expected, CommitWhatIsSent::default, |h| h.raised);
    expect_caught(&setup, &caught, &expected);
}

/// Leaders count replicas of older-term entries toward commit (the Raft
/// paper's Figure 8): the leader chase strikes in the window where that
/// matters, and a leader from a log ending in a later term overwrites an
/// entry followers applied. Without the chase, 4,000 seeds of random faults
/// missed the same mistake planted in the core.
#[test]
fn counting_older_term_replicas_toward_commit_is_caught() {
    let setup = leader_chase();
    let expected = ["state machine safety", LINEARIZABILITY];
    let caught = first_caught(
        &setup,
        &expected,
        || CommitByCountingAnyTerm::of(setup.nodes as u64),
        |h| h.raised,
    );
    expect_caught(&setup, &caught, &expected);
}

/// Restarted nodes do not tell the core where their durable state
/// machine stood: the core asks a snapshot below it, which the state
/// machine can not write (in the runtime that failed again and again, and
/// a follower needing the snapshot for a quorum stalled the cluster).
#[test]
fn not_telling_the_core_where_a_durable_state_machine_stood_is_caught() {
    let setup = durable_state_machines();
    let expected = ["snapshot asked where the state machine is"];
    let caught = first_caught(
        &setup,
        &expected,
        ForgetStateMachineOnRestart::default,
        |h| h.asked.get(),
    );
    expect_caught(&setup, &caught, &expected);
}

/// Control group for the durable state machine variant.
#[test]
fn real_nodes_pass_the_durable_state_machines_setup() {
    control(&durable_state_machines());
}

/// Control group for the Figure 8 variant.
#[test]
fn real_nodes_pass_the_leader_chase_setup() {
    control(&leader_chase());
}

/// Control group: the real protocol passes the elections setup (default
/// liveness window included), so the failures above come from the breakage.
#[test]
fn real_nodes_pass_the_elections_setup() {
    control(&elections());
}

/// Control group for the durability variant.
#[test]
fn real_nodes_pass_the_crashes_with_slow_disks_setup() {
    control(&crashes_with_slow_disks());
}

/// Control group for the commit variant.
#[test]
fn real_nodes_pass_the_five_node_setup() {
    control(&five_nodes_partitions_crashes());
}

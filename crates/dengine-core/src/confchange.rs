//! Membership changes: the configuration a [`ConfChange`] leads to.
//!
//! A change is either *simple* (applied directly: it changes at most one
//! voter, so any majority of the old voters overlaps any majority of the new
//! ones) or *joint*: the new voters become the incoming half of a joint
//! configuration whose outgoing half keeps the old voters, and decisions need
//! a majority of both until the joint configuration is left by an empty
//! [`ConfChange`] (see [`ConfChange::leave_joint`]).
//!
//! A voter demoted to learner by a joint change still votes in the outgoing
//! half, so it is staged in [`ConfState::learners_next`] and becomes a
//! learner when the joint configuration is left.
//!
//! Every function here is pure: it computes a new [`ConfState`] or refuses
//! the change, and never mutates its input.

use std::collections::BTreeSet;

use crate::error::ConfChangeError;
use crate::types::{ConfChange, ConfChangeStep, ConfChangeTransition, ConfState, NodeId};

/// Computes the configuration that `cc` leads to from `current`, or refuses it.
///
/// An empty `cc` leaves the joint configuration `current`. Otherwise
/// `current` must not be joint and the steps are applied together. Under
/// [`ConfChangeTransition::Auto`], a change whose incoming voters differ from
/// the current voters by at most one node is applied directly; any other
/// enters a joint configuration that is left automatically.
/// [`ConfChangeTransition::JointImplicit`] and
/// [`ConfChangeTransition::JointExplicit`] always enter one. As a bootstrap
/// convenience, a [`ConfChangeTransition::Auto`] change from a
/// configuration with no voter is always applied directly (there is no
/// quorum to preserve), while an explicitly joint one is refused with
/// [`ConfChangeError::NoVoters`].
///
/// # Errors
///
/// - [`ConfChangeError::NotJoint`]: leaving a configuration that is not joint;
/// - [`ConfChangeError::AlreadyJoint`]: changing a joint configuration;
/// - [`ConfChangeError::ReservedNodeId`]: a step names node 0;
/// - [`ConfChangeError::DuplicateNode`]: a node appears in two steps;
/// - [`ConfChangeError::NotAMember`]: removing a node that is not a member;
/// - [`ConfChangeError::NoVoters`]: the incoming voters would be empty;
/// - [`ConfChangeError::TooManyVoterChanges`]: a simple change changing
///   more than one voter (cannot happen; kept as a defensive check);
/// - [`ConfChangeError::Invariant`]: `current` (or, through a bug, the
///   result) breaks the invariants checked by [`check_conf_state`].
pub fn apply_conf_change(
    current: &ConfState,
    cc: &ConfChange,
) -> Result<ConfState, ConfChangeError> {
    check_conf_state(current)?;
    let next = if cc.is_leave_joint() {
        leave_joint(current)?
    } else {
        change(current, cc)?
    };
    check_conf_state(&next)?;
    Ok(next)
}

/// Whether `cc`, applied to `current`, enters a joint configuration.
///
/// This is `true` exactly when [`apply_conf_change`] accepts `cc` and returns
/// a joint configuration; a change that would be refused does not enter one.
pub fn enters_joint(current: &ConfState, cc: &ConfChange) -> bool {
    !cc.is_leave_joint() && apply_conf_change(current, cc).is_ok_and(|next| next.is_joint())
}

/// Checks the invariants every configuration satisfies.
///
/// No set contains node 0; learners are neither incoming nor outgoing voters;
/// staged learners (`learners_next`) are outgoing voters, not incoming voters
/// and not learners; a configuration that is not joint has no staged
/// learners and no `auto_leave`. An empty configuration is valid (it is where
/// a cluster is bootstrapped from).
///
/// # Errors
///
/// [`ConfChangeError::Invariant`], naming the first violation found.
pub fn check_conf_state(cs: &ConfState) -> Result<(), ConfChangeError> {
    let violation = |what: String| Err(ConfChangeError::Invariant(what));
    if cs.members().contains(&NodeId::NONE) {
        return violation("node 0 is in the configuration".to_owned());
    }
    if let Some(id) = cs.learners.intersection(&cs.voters).next() {
        return violation(format!("node {id} is both a learner and an incoming voter"));
    }
    if let Some(id) = cs.learners.intersection(&cs.voters_outgoing).next() {
        return violation(format!("node {id} is both a learner and an outgoing voter"));
    }
    if let Some(id) = cs.learners_next.difference(&cs.voters_outgoing).next() {
        return violation(format!("staged learner {id} is not an outgoing voter"));
    }
    if let Some(id) = cs.learners_next.intersection(&cs.voters).next() {
        return violation(format!("staged learner {id} is an incoming voter"));
    }
    if !cs.is_joint() && cs.auto_leave {
        return violation("auto_leave is set on a configuration that is not joint".to_owned());
    }
    Ok(())
}

/// Leaves the joint configuration `current`.
fn leave_joint(current: &ConfState) -> Result<ConfState, ConfChangeError> {
    if !current.is_joint() {
        return Err(ConfChangeError::NotJoint);
    }
    if current.voters.is_empty() {
        return Err(ConfChangeError::NoVoters);
    }
    let mut next = current.clone();
    next.voters_outgoing.clear();
    let staged = std::mem::take(&mut next.learners_next);
    next.learners.extend(staged);
    next.auto_leave = false;
    Ok(next)
}

/// How a non-empty change is carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Applied directly.
    Simple,
    /// Through a joint configuration.
    Joint {
        /// Whether the leader leaves it by itself.
        auto_leave: bool,
    },
}

/// Applies the non-empty change `cc` to the non-joint `current`.
fn change(current: &ConfState, cc: &ConfChange) -> Result<ConfState, ConfChangeError> {
    if current.is_joint() {
        return Err(ConfChangeError::AlreadyJoint);
    }
    validate_steps(current, &cc.steps)?;

    // Apply the steps as if the change were simple; a joint change differs
    // only in keeping the old voters as the outgoing half (below).
    let mut next = current.clone();
    for step in &cc.steps {
        apply_step(&mut next, *step);
    }
    if next.voters.is_empty() {
        return Err(ConfChangeError::NoVoters);
    }

    match choose_mode(&current.voters, cc.transition, &next.voters)? {
        Mode::Simple => {
            if !current.voters.is_empty() {
                check_simple(&current.voters, &next.voters)?;
            }
        }
        Mode::Joint { auto_leave } => {
            next.voters_outgoing = current.voters.clone();
            // `current` satisfies the invariants, so a learner that is an old
            // voter was demoted by this change: it still votes in the
            // outgoing half and only becomes a learner on leaving.
            let staged: BTreeSet<NodeId> = next
                .learners
                .intersection(&next.voters_outgoing)
                .copied()
                .collect();
            next.learners.retain(|id| !staged.contains(id));
            next.learners_next = staged;
            next.auto_leave = auto_leave;
        }
    }
    Ok(next)
}

/// Refuses node 0, a node named twice and the removal of a non-member.
fn validate_steps(current: &ConfState, steps: &[ConfChangeStep]) -> Result<(), ConfChangeError> {
    let mut seen = BTreeSet::new();
    for step in steps {
        let id = step.node();
        if id.is_none() {
            return Err(ConfChangeError::ReservedNodeId);
        }
        if !seen.insert(id) {
            return Err(ConfChangeError::DuplicateNode(id));
        }
        if matches!(step, ConfChangeStep::Remove(_)) && !current.contains(id) {
            return Err(ConfChangeError::NotAMember(id));
        }
    }
    Ok(())
}

/// Applies one step with the semantics of a simple change.
fn apply_step(cs: &mut ConfState, step: ConfChangeStep) {
    match step {
        ConfChangeStep::AddVoter(id) => {
            cs.learners.remove(&id);
            cs.voters.insert(id);
        }
        ConfChangeStep::AddLearner(id) => {
            cs.voters.remove(&id);
            cs.learners.insert(id);
        }
        ConfChangeStep::Remove(id) => {
            cs.voters.remove(&id);
            cs.learners.remove(&id);
        }
    }
}

/// Decides between a simple and a joint change from the old voters, the
/// requested transition and the new (incoming) voters.
fn choose_mode(
    old: &BTreeSet<NodeId>,
    transition: ConfChangeTransition,
    new: &BTreeSet<NodeId>,
) -> Result<Mode, ConfChangeError> {
    let mode = match transition {
        // From no voter there is no quorum to preserve: apply directly.
        ConfChangeTransition::Auto if old.is_empty() || voter_changes(old, new) <= 1 => {
            return Ok(Mode::Simple);
        }
        ConfChangeTransition::Auto | ConfChangeTransition::JointImplicit => {
            Mode::Joint { auto_leave: true }
        }
        ConfChangeTransition::JointExplicit => Mode::Joint { auto_leave: false },
    };
    if old.is_empty() {
        // The outgoing half would have no voter.
        return Err(ConfChangeError::NoVoters);
    }
    Ok(mode)
}

/// Refuses a simple change that changes more than one voter.
fn check_simple(old: &BTreeSet<NodeId>, new: &BTreeSet<NodeId>) -> Result<(), ConfChangeError> {
    if voter_changes(old, new) > 1 {
        return Err(ConfChangeError::TooManyVoterChanges);
    }
    Ok(())
}

/// The number of nodes that are voters in exactly one of `old` and `new`.
fn voter_changes(old: &BTreeSet<NodeId>, new: &BTreeSet<NodeId>) -> usize {
    old.symmetric_difference(new).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ConfChangeStep::{AddLearner, AddVoter, Remove};
    use crate::types::ConfChangeTransition::{Auto, JointExplicit, JointImplicit};
    use proptest::prelude::*;

    fn ids(raw: &[u64]) -> BTreeSet<NodeId> {
        raw.iter().copied().map(NodeId).collect()
    }

    /// A configuration: incoming voters, outgoing voters, learners, staged
    /// learners, auto_leave.
    fn cs(
        voters: &[u64],
        outgoing: &[u64],
        learners: &[u64],
        next: &[u64],
        auto: bool,
    ) -> ConfState {
        ConfState {
            voters: ids(voters),
            voters_outgoing: ids(outgoing),
            learners: ids(learners),
            learners_next: ids(next),
            auto_leave: auto,
        }
    }

    /// A simple configuration.
    fn simple(voters: &[u64], learners: &[u64]) -> ConfState {
        cs(voters, &[], learners, &[], false)
    }

    fn cc(transition: ConfChangeTransition, steps: &[ConfChangeStep]) -> ConfChange {
        ConfChange {
            transition,
            steps: steps.to_vec(),
            context: Vec::new(),
        }
    }

    fn v(id: u64) -> ConfChangeStep {
        AddVoter(NodeId(id))
    }
    fn l(id: u64) -> ConfChangeStep {
        AddLearner(NodeId(id))
    }
    fn r(id: u64) -> ConfChangeStep {
        Remove(NodeId(id))
    }

    #[test]
    fn table() {
        use ConfChangeError as E;
        let leave = ConfChange::leave_joint();
        let cases: Vec<(
            &str,
            ConfState,
            ConfChange,
            Result<ConfState, ConfChangeError>,
        )> = vec![
            // Leaving a joint configuration.
            (
                "leave non-joint",
                simple(&[1, 2, 3], &[]),
                leave.clone(),
                Err(E::NotJoint),
            ),
            (
                "leave joint promotes staged learners and clears auto_leave",
                cs(&[1, 2, 4], &[1, 2, 3], &[5], &[3], true),
                leave.clone(),
                Ok(simple(&[1, 2, 4], &[3, 5])),
            ),
            (
                "leave joint with empty incoming half",
                cs(&[], &[1, 2, 3], &[], &[], false),
                leave.clone(),
                Err(E::NoVoters),
            ),
            (
                "leave joint ignores the transition",
                cs(&[1, 2], &[1, 3], &[], &[], false),
                cc(JointExplicit, &[]),
                Ok(simple(&[1, 2], &[])),
            ),
            // Refusals.
            (
                "change while joint",
                cs(&[1, 2, 4], &[1, 2, 3], &[], &[], true),
                cc(Auto, &[v(5)]),
                Err(E::AlreadyJoint),
            ),
            (
                "learner change while joint",
                cs(&[1, 2, 4], &[1, 2, 3], &[], &[], false),
                cc(JointExplicit, &[l(5)]),
                Err(E::AlreadyJoint),
            ),
            (
                "node 0",
                simple(&[1, 2, 3], &[]),
                cc(Auto, &[v(4), l(0)]),
                Err(E::ReservedNodeId),
            ),
            (
                "duplicate node",
                simple(&[1, 2, 3], &[]),
                cc(Auto, &[v(4), l(4)]),
                Err(E::DuplicateNode(NodeId(4))),
            ),
            (
                "duplicate removal",
                simple(&[1, 2, 3], &[]),
                cc(JointImplicit, &[r(3), r(3)]),
                Err(E::DuplicateNode(NodeId(3))),
            ),
            (
                "remove non-member",
                simple(&[1, 2, 3], &[4]),
                cc(Auto, &[r(5)]),
                Err(E::NotAMember(NodeId(5))),
            ),
            (
                "remove the last voter",
                simple(&[1], &[2]),
                cc(Auto, &[r(1)]),
                Err(E::NoVoters),
            ),
            (
                "demote the last voter",
                simple(&[1], &[]),
                cc(Auto, &[l(1)]),
                Err(E::NoVoters),
            ),
            (
                "remove every voter jointly",
                simple(&[1, 2], &[]),
                cc(JointExplicit, &[r(1), r(2)]),
                Err(E::NoVoters),
            ),
            (
                "only learners into an empty configuration",
                ConfState::default(),
                cc(Auto, &[l(1)]),
                Err(E::NoVoters),
            ),
            (
                "joint from an empty configuration",
                ConfState::default(),
                cc(JointExplicit, &[v(1), v(2)]),
                Err(E::NoVoters),
            ),
            (
                "implicit joint from an empty configuration",
                ConfState::default(),
                cc(JointImplicit, &[v(1)]),
                Err(E::NoVoters),
            ),
            (
                "corrupt input: learner and voter",
                simple(&[1, 2], &[2]),
                cc(Auto, &[v(3)]),
                Err(E::Invariant(
                    "node 2 is both a learner and an incoming voter".to_owned(),
                )),
            ),
            // Simple changes.
            (
                "add a voter",
                simple(&[1, 2, 3], &[]),
                cc(Auto, &[v(4)]),
                Ok(simple(&[1, 2, 3, 4], &[])),
            ),
            (
                "add an existing voter is a no-op",
                simple(&[1, 2, 3], &[]),
                cc(Auto, &[v(3)]),
                Ok(simple(&[1, 2, 3], &[])),
            ),
            (
                "add a learner",
                simple(&[1, 2, 3], &[]),
                cc(Auto, &[l(4)]),
                Ok(simple(&[1, 2, 3], &[4])),
            ),
            (
                "promote a learner",
                simple(&[1, 2, 3], &[4]),
                cc(Auto, &[v(4)]),
                Ok(simple(&[1, 2, 3, 4], &[])),
            ),
            (
                "demote a voter directly",
                simple(&[1, 2, 3], &[]),
                cc(Auto, &[l(3)]),
                Ok(simple(&[1, 2], &[3])),
            ),
            (
                "remove a voter",
                simple(&[1, 2, 3], &[4]),
                cc(Auto, &[r(2)]),
                Ok(simple(&[1, 3], &[4])),
            ),
            (
                "remove a learner",
                simple(&[1, 2, 3], &[4]),
                cc(Auto, &[r(4)]),
                Ok(simple(&[1, 2, 3], &[])),
            ),
            (
                "one voter change plus learner changes is simple",
                simple(&[1, 2, 3], &[4, 5]),
                cc(Auto, &[v(6), l(7), r(4), l(5)]),
                Ok(simple(&[1, 2, 3, 6], &[5, 7])),
            ),
            (
                "bootstrap several voters at once",
                ConfState::default(),
                cc(Auto, &[v(1), v(2), v(3), l(4)]),
                Ok(simple(&[1, 2, 3], &[4])),
            ),
            // Joint changes.
            (
                "auto with two voter changes enters joint",
                simple(&[1, 2, 3], &[]),
                cc(Auto, &[v(4), v(5)]),
                Ok(cs(&[1, 2, 3, 4, 5], &[1, 2, 3], &[], &[], true)),
            ),
            (
                "auto replacing a voter enters joint",
                simple(&[1, 2, 3], &[]),
                cc(Auto, &[v(4), r(3)]),
                Ok(cs(&[1, 2, 4], &[1, 2, 3], &[], &[], true)),
            ),
            (
                "auto swapping a voter and a learner stages the demotion",
                simple(&[1, 2, 3], &[4]),
                cc(Auto, &[v(4), l(3)]),
                Ok(cs(&[1, 2, 4], &[1, 2, 3], &[], &[3], true)),
            ),
            (
                "implicit joint with a single change",
                simple(&[1, 2, 3], &[]),
                cc(JointImplicit, &[v(4)]),
                Ok(cs(&[1, 2, 3, 4], &[1, 2, 3], &[], &[], true)),
            ),
            (
                "explicit joint",
                simple(&[1, 2, 3], &[]),
                cc(JointExplicit, &[v(4)]),
                Ok(cs(&[1, 2, 3, 4], &[1, 2, 3], &[], &[], false)),
            ),
            (
                "explicit joint with learner changes only",
                simple(&[1, 2, 3], &[4]),
                cc(JointExplicit, &[l(5), r(4)]),
                Ok(cs(&[1, 2, 3], &[1, 2, 3], &[5], &[], false)),
            ),
            (
                "joint demotion goes to learners_next",
                simple(&[1, 2, 3], &[]),
                cc(JointExplicit, &[l(3)]),
                Ok(cs(&[1, 2], &[1, 2, 3], &[], &[3], false)),
            ),
            (
                "joint removal keeps the outgoing vote",
                simple(&[1, 2, 3], &[]),
                cc(JointImplicit, &[r(3)]),
                Ok(cs(&[1, 2], &[1, 2, 3], &[], &[], true)),
            ),
            (
                "joint promotion of a learner",
                simple(&[1, 2, 3], &[4, 5]),
                cc(Auto, &[v(4), v(5)]),
                Ok(cs(&[1, 2, 3, 4, 5], &[1, 2, 3], &[], &[], true)),
            ),
            (
                "joint replacement of the whole cluster",
                simple(&[1, 2, 3], &[]),
                cc(Auto, &[r(1), r(2), l(3), v(4), v(5), v(6)]),
                Ok(cs(&[4, 5, 6], &[1, 2, 3], &[], &[3], true)),
            ),
        ];
        for (name, current, change, want) in cases {
            assert_eq!(apply_conf_change(&current, &change), want, "{name}");
            let joint = matches!(&want, Ok(next) if next.is_joint());
            assert_eq!(
                enters_joint(&current, &change),
                joint,
                "{name}: enters_joint"
            );
        }
    }

    #[test]
    fn enters_joint_cases() {
        let three = simple(&[1, 2, 3], &[]);
        assert!(!enters_joint(&three, &cc(Auto, &[v(4)])));
        assert!(!enters_joint(&three, &cc(Auto, &[l(4), l(5), l(6)])));
        assert!(enters_joint(&three, &cc(Auto, &[v(4), v(5)])));
        assert!(enters_joint(&three, &cc(JointImplicit, &[l(4)])));
        assert!(enters_joint(&three, &cc(JointExplicit, &[v(4)])));
        // Refused changes and leaving never enter a joint configuration.
        assert!(!enters_joint(&three, &cc(JointExplicit, &[r(9)])));
        assert!(!enters_joint(&three, &ConfChange::leave_joint()));
        let joint = cs(&[1, 2], &[1, 2, 3], &[], &[], true);
        assert!(!enters_joint(&joint, &cc(JointExplicit, &[v(4)])));
        assert!(!enters_joint(&joint, &ConfChange::leave_joint()));
    }

    #[test]
    fn too_many_voter_changes_is_refused() {
        assert_eq!(
            check_simple(&ids(&[1, 2, 3]), &ids(&[1, 2, 4])),
            Err(ConfChangeError::TooManyVoterChanges)
        );
        assert_eq!(check_simple(&ids(&[1, 2, 3]), &ids(&[1, 2])), Ok(()));
        assert_eq!(check_simple(&ids(&[1, 2, 3]), &ids(&[1, 2, 3])), Ok(()));
    }

    #[test]
    fn invariant_violations_are_reported() {
        let bad = [
            ("node 0", simple(&[0, 1], &[])),
            ("learner in outgoing", cs(&[1], &[1, 2], &[2], &[], false)),
            ("staged not outgoing", cs(&[1], &[1, 2], &[], &[3], false)),
            (
                "staged and incoming",
                cs(&[1, 2], &[1, 2], &[], &[2], false),
            ),
            ("staged while not joint", cs(&[1], &[], &[], &[2], false)),
            ("auto_leave while not joint", cs(&[1], &[], &[], &[], true)),
        ];
        for (name, conf) in bad {
            assert!(
                matches!(check_conf_state(&conf), Err(ConfChangeError::Invariant(_))),
                "{name}"
            );
            assert!(
                matches!(
                    apply_conf_change(&conf, &ConfChange::leave_joint()),
                    Err(ConfChangeError::Invariant(_))
                ),
                "{name}: input is checked"
            );
        }
        assert_eq!(check_conf_state(&ConfState::default()), Ok(()));
    }

    const MAX_ID: u64 = 8;

    /// Any valid configuration over nodes `1..=MAX_ID`, joint or not (and
    /// possibly empty). Per node: whether it is an outgoing voter and its
    /// incoming role (none, voter, learner).
    fn arb_conf_state() -> impl Strategy<Value = ConfState> {
        let roles = prop::collection::vec((any::<bool>(), 0u8..3), MAX_ID as usize);
        (any::<bool>(), any::<bool>(), roles).prop_map(|(joint, auto_leave, roles)| {
            let mut conf = ConfState::default();
            for (i, (outgoing, role)) in roles.into_iter().enumerate() {
                let id = NodeId(i as u64 + 1);
                let outgoing = joint && outgoing;
                if outgoing {
                    conf.voters_outgoing.insert(id);
                }
                match role {
                    1 => {
                        conf.voters.insert(id);
                    }
                    2 if outgoing => {
                        conf.learners_next.insert(id);
                    }
                    2 => {
                        conf.learners.insert(id);
                    }
                    _ => {}
                }
            }
            conf.auto_leave = conf.is_joint() && auto_leave;
            conf
        })
    }

    fn arb_transition() -> impl Strategy<Value = ConfChangeTransition> {
        prop_oneof![Just(Auto), Just(JointImplicit), Just(JointExplicit)]
    }

    /// Any change over nodes `0..=MAX_ID + 1` (so node 0, duplicates,
    /// non-members and newcomers all occur), including leave-joint.
    fn arb_conf_change() -> impl Strategy<Value = ConfChange> {
        let step = (0..=MAX_ID + 1, 0u8..3).prop_map(|(id, kind)| match kind {
            0 => v(id),
            1 => l(id),
            _ => r(id),
        });
        (arb_transition(), prop::collection::vec(step, 0..5)).prop_map(|(transition, steps)| {
            ConfChange {
                transition,
                steps,
                context: Vec::new(),
            }
        })
    }

    /// Whether `id` is a learner in the configuration once any joint
    /// configuration is left.
    fn learner_after_leaving(conf: &ConfState, id: NodeId) -> bool {
        conf.learners.contains(&id) || conf.learners_next.contains(&id)
    }

    /// Everything a result must satisfy.
    fn check_result(
        current: &ConfState,
        change: &ConfChange,
        next: &ConfState,
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(check_conf_state(next), Ok(()));
        prop_assert!(!next.voters.is_empty(), "a result has no voter: {:?}", next);
        prop_assert_eq!(
            enters_joint(current, change),
            !change.is_leave_joint() && next.is_joint()
        );

        if change.is_leave_joint() {
            prop_assert!(current.is_joint());
            prop_assert!(!next.is_joint());
            prop_assert!(!next.auto_leave);
            prop_assert_eq!(&next.voters, &current.voters);
            let learners: BTreeSet<NodeId> = current
                .learners
                .union(&current.learners_next)
                .copied()
                .collect();
            prop_assert_eq!(&next.learners, &learners);
            return Ok(());
        }

        prop_assert!(!current.is_joint());
        // Each step did what it says; every other node kept its role.
        for id in (1..=MAX_ID + 1).map(NodeId) {
            let step = change.steps.iter().find(|s| s.node() == id);
            let (voter, learner) = match step {
                Some(AddVoter(_)) => (true, false),
                Some(AddLearner(_)) => (false, true),
                Some(Remove(_)) => (false, false),
                None => (current.voters.contains(&id), current.learners.contains(&id)),
            };
            prop_assert_eq!(next.voters.contains(&id), voter, "voter {}", id);
            prop_assert_eq!(learner_after_leaving(next, id), learner, "learner {}", id);
        }

        let changes = voter_changes(&current.voters, &next.voters);
        if next.is_joint() {
            prop_assert_eq!(&next.voters_outgoing, &current.voters);
            prop_assert_eq!(next.auto_leave, change.transition != JointExplicit);
            prop_assert!(change.transition != Auto || changes > 1);
            // Leaving always works and ends in a simple configuration.
            let left = apply_conf_change(next, &ConfChange::leave_joint());
            prop_assert!(matches!(&left, Ok(left) if !left.is_joint()), "{:?}", left);
            if let Ok(left) = left {
                check_result(next, &ConfChange::leave_joint(), &left)?;
            }
        } else {
            prop_assert_eq!(change.transition, Auto);
            prop_assert!(current.voters.is_empty() || changes <= 1);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn results_satisfy_invariants(current in arb_conf_state(), change in arb_conf_change()) {
            match apply_conf_change(&current, &change) {
                Ok(next) => check_result(&current, &change, &next)?,
                Err(err) => {
                    prop_assert!(!matches!(err, ConfChangeError::Invariant(_)), "{}", err);
                    prop_assert!(!enters_joint(&current, &change));
                }
            }
        }

        #[test]
        fn valid_changes_are_accepted(
            current in arb_conf_state().prop_filter("simple with voters", |c| !c.is_joint() && !c.voters.is_empty()),
            transition in arb_transition(),
            kinds in prop::collection::btree_map(1..=MAX_ID + 1, 0u8..3, 1..5),
        ) {
            // Distinct non-zero nodes, removals of members only, one voter
            // kept: every such change is accepted.
            let keep = current.voters.iter().next().copied();
            let steps: Vec<_> = kinds
                .into_iter()
                .filter(|&(id, _)| Some(NodeId(id)) != keep)
                .filter_map(|(id, kind)| match kind {
                    0 => Some(v(id)),
                    1 => Some(l(id)),
                    _ if current.contains(NodeId(id)) => Some(r(id)),
                    _ => None,
                })
                .collect();
            prop_assume!(!steps.is_empty());
            let change = ConfChange {
                transition,
                steps,
                context: Vec::new(),
            };
            let next = apply_conf_change(&current, &change);
            prop_assert!(next.is_ok(), "{:?}", next);
            if let Ok(next) = next {
                check_result(&current, &change, &next)?;
            }
        }

        #[test]
        fn random_walks_stay_valid(
            // A joint start with no incoming voter cannot be left.
            start in arb_conf_state().prop_filter("leavable", |c| !c.is_joint() || !c.voters.is_empty()),
            changes in prop::collection::vec(arb_conf_change(), 1..20),
        ) {
            let mut conf = start;
            for change in changes {
                if let Ok(next) = apply_conf_change(&conf, &change) {
                    check_result(&conf, &change, &next)?;
                    conf = next;
                }
                if conf.auto_leave {
                    conf = apply_conf_change(&conf, &ConfChange::leave_joint())
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
            }
        }
    }
}

//! Decisions of a (possibly joint) configuration: a majority of the incoming
//! voters and a majority of the outgoing voters must both agree.

use super::VoteResult;
use super::majority::{majority_value, majority_vote};
use crate::types::{ConfState, NodeId};

/// The largest value `v` such that a majority of `conf.voters` *and* a
/// majority of `conf.voters_outgoing` report a value `>= v`: the smaller of
/// the two [`majority_value`]s. A voter reporting `None` counts as `0`.
///
/// Outside a joint configuration `voters_outgoing` is empty and the result
/// is that of `conf.voters` alone. A configuration without any voter gives
/// `u64::MAX`; callers that turn the result into an index must guard
/// against that.
pub fn quorum_value(conf: &ConfState, value: impl Fn(NodeId) -> Option<u64>) -> u64 {
    let incoming = majority_value(&conf.voters, &value);
    let outgoing = majority_value(&conf.voters_outgoing, &value);
    incoming.min(outgoing)
}

/// The vote of a (possibly joint) configuration: [`VoteResult::Won`] only if
/// both halves won, [`VoteResult::Lost`] if either half lost, else
/// [`VoteResult::Pending`].
///
/// Learners are not consulted. Outside a joint configuration the result is
/// that of `conf.voters` alone (the empty outgoing half always wins).
pub fn vote_result(conf: &ConfState, vote: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
    let incoming = majority_vote(&conf.voters, &vote);
    let outgoing = majority_vote(&conf.voters_outgoing, &vote);
    match (incoming, outgoing) {
        (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
        (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
        _ => VoteResult::Pending,
    }
}

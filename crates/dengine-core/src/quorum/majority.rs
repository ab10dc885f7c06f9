//! Decisions of a single majority of voters.

use std::collections::BTreeSet;

use super::VoteResult;
use crate::types::NodeId;

/// Voter sets up to this size are handled without allocating.
const STACK_VOTERS: usize = 7;

/// The number of voters that forms a majority of `n` voters (`n > 0`).
#[inline]
fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// The largest value `v` such that a majority of `voters` report a value
/// `>= v`; a voter reporting `None` counts as `0`.
///
/// An empty `voters` set gives `u64::MAX`, so that the empty outgoing half of
/// a non-joint configuration never limits the incoming half (see
/// [`super::quorum_value`]).
///
/// This runs on the commit path for every acknowledgement: sets of up to
/// seven voters are sorted in a stack array, larger ones in a `Vec`.
pub fn majority_value(voters: &BTreeSet<NodeId>, value: impl Fn(NodeId) -> Option<u64>) -> u64 {
    let n = voters.len();
    if n == 0 {
        return u64::MAX;
    }
    if n <= STACK_VOTERS {
        let mut buf = [0u64; STACK_VOTERS];
        let vals = &mut buf[..n];
        for (slot, &id) in vals.iter_mut().zip(voters) {
            *slot = value(id).unwrap_or(0);
        }
        insertion_sort(vals);
        pick(vals)
    } else {
        let mut vals: Vec<u64> = voters.iter().map(|&id| value(id).unwrap_or(0)).collect();
        vals.sort_unstable();
        pick(&vals)
    }
}

/// Sorts a short slice in ascending order in place.
fn insertion_sort(vals: &mut [u64]) {
    for i in 1..vals.len() {
        let x = vals[i];
        let mut j = i;
        while j > 0 && vals[j - 1] > x {
            vals[j] = vals[j - 1];
            j -= 1;
        }
        vals[j] = x;
    }
}

/// Given the non-empty ascending values of all voters, the largest value that
/// a majority has reached: the `majority(n)`-th largest.
#[inline]
fn pick(sorted: &[u64]) -> u64 {
    let n = sorted.len();
    // n > 0, so n - majority(n) is in 0..n.
    sorted.get(n - majority(n)).copied().unwrap_or(0)
}

/// Tallies the answers of `voters`: [`VoteResult::Won`] once a majority
/// answered `Some(true)`, [`VoteResult::Lost`] once the voters that have not
/// answered `Some(false)` are fewer than a majority, else
/// [`VoteResult::Pending`].
///
/// An empty `voters` set gives [`VoteResult::Won`] (see [`majority_value`]).
pub fn majority_vote(
    voters: &BTreeSet<NodeId>,
    vote: impl Fn(NodeId) -> Option<bool>,
) -> VoteResult {
    let n = voters.len();
    if n == 0 {
        return VoteResult::Won;
    }
    let (mut granted, mut missing) = (0usize, 0usize);
    for &id in voters {
        match vote(id) {
            Some(true) => granted += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    let q = majority(n);
    if granted >= q {
        VoteResult::Won
    } else if granted + missing >= q {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

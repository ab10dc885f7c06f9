//! Table tests (in the spirit of etcd's quorum testdata) and property tests.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::types::{ConfState, NodeId};

/// Parses `1,2,3` (or `-` for none) into a voter set.
fn ids(s: &str) -> BTreeSet<NodeId> {
    if s == "-" {
        return BTreeSet::new();
    }
    s.split(',').map(|x| NodeId(x.parse().unwrap())).collect()
}

/// Parses a line `cfg=... [cfgj=...] <key>=a,b,_ -> expected` into the
/// configuration, the answers (given in the order of the sorted union of
/// voters, `_` meaning no answer) and the expected output.
fn parse_line(line: &str, key: &str) -> (ConfState, BTreeMap<NodeId, String>, String) {
    let (lhs, expected) = line.split_once("->").unwrap();
    let mut conf = ConfState::default();
    let mut answers = "";
    for field in lhs.split_whitespace() {
        let (k, v) = field.split_once('=').unwrap();
        match k {
            "cfg" => conf.voters = ids(v),
            "cfgj" => conf.voters_outgoing = ids(v),
            k if k == key => answers = v,
            other => panic!("unknown field {other} in {line:?}"),
        }
    }
    let all: BTreeSet<NodeId> = conf.voters.union(&conf.voters_outgoing).copied().collect();
    let answers: Vec<&str> = if answers.is_empty() {
        Vec::new()
    } else {
        answers.split(',').collect()
    };
    assert_eq!(all.len(), answers.len(), "one answer per voter in {line:?}");
    let map = all
        .into_iter()
        .zip(answers)
        .filter(|(_, a)| *a != "_")
        .map(|(id, a)| (id, a.to_string()))
        .collect();
    (conf, map, expected.trim().to_string())
}

/// Lines of a table, without blank lines and `#` comments.
fn table(data: &str) -> impl Iterator<Item = &str> {
    data.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

const COMMITTED: &str = "
# The empty configuration agrees on everything.
cfg=- idx= -> max
# One voter.
cfg=1 idx=_ -> 0
cfg=1 idx=12 -> 12
# Two voters: both are needed.
cfg=1,2 idx=_,_ -> 0
cfg=1,2 idx=12,_ -> 0
cfg=1,2 idx=12,5 -> 5
# Three voters.
cfg=1,2,3 idx=_,_,_ -> 0
cfg=1,2,3 idx=12,_,_ -> 0
cfg=1,2,3 idx=12,5,_ -> 5
cfg=1,2,3 idx=12,5,6 -> 6
cfg=1,2,3 idx=12,5,4 -> 5
cfg=1,2,3 idx=5,5,_ -> 5
cfg=1,2,3 idx=5,5,12 -> 5
cfg=1,2,3 idx=100,101,103 -> 101
# Four voters need three.
cfg=1,2,3,4 idx=10,20,30,40 -> 20
cfg=1,2,3,4 idx=40,30,_,_ -> 0
# Five voters.
cfg=1,2,3,4,5 idx=101,104,103,103,_ -> 103
cfg=1,2,3,4,5 idx=101,102,103,103,_ -> 102
# Seven voters (largest stack case) and eight (heap case).
cfg=1,2,3,4,5,6,7 idx=7,6,5,4,3,2,1 -> 4
cfg=1,2,3,4,5,6,7,8 idx=8,7,6,5,4,3,2,1 -> 4
cfg=1,2,3,4,5,6,7,8,9 idx=9,8,7,6,5,4,3,2,_ -> 5
# Joint: the minimum of both halves.
cfg=1,2,3 cfgj=- idx=10,20,30 -> 20
cfg=1,2,3 cfgj=1,2,3 idx=10,20,30 -> 20
cfg=1,2,3 cfgj=4,5,6 idx=10,20,30,_,_,_ -> 0
cfg=1,2,3 cfgj=4,5,6 idx=10,20,30,5,6,7 -> 6
cfg=1,2,3 cfgj=4,5,6 idx=1,2,3,50,60,70 -> 2
# Overlapping halves: 1,2,3 and 2,3,4.
cfg=1,2,3 cfgj=2,3,4 idx=100,_,_,100 -> 0
cfg=1,2,3 cfgj=2,3,4 idx=100,50,_,100 -> 50
cfg=1,2,3 cfgj=2,3,4 idx=_,50,60,_ -> 50
# The incoming half alone may be a single voter.
cfg=1 cfgj=1,2,3 idx=100,_,_ -> 0
cfg=1 cfgj=1,2,3 idx=100,_,90 -> 90
";

#[test]
fn committed_table() {
    for line in table(COMMITTED) {
        let (conf, idx, expected) = parse_line(line, "idx");
        let got = quorum_value(&conf, |id| idx.get(&id).map(|v| v.parse::<u64>().unwrap()));
        let want = if expected == "max" {
            u64::MAX
        } else {
            expected.parse().unwrap()
        };
        assert_eq!(got, want, "{line}");
        if !conf.is_joint() {
            let single =
                majority_value(&conf.voters, |id| idx.get(&id).map(|v| v.parse().unwrap()));
            assert_eq!(single, want, "{line}");
        }
    }
}

const VOTES: &str = "
# The empty configuration wins every vote.
cfg=- votes= -> Won
cfg=1 votes=_ -> Pending
cfg=1 votes=y -> Won
cfg=1 votes=n -> Lost
cfg=1,2 votes=y,_ -> Pending
cfg=1,2 votes=y,y -> Won
cfg=1,2 votes=y,n -> Lost
cfg=1,2 votes=n,_ -> Lost
cfg=1,2,3 votes=_,_,_ -> Pending
cfg=1,2,3 votes=y,_,_ -> Pending
cfg=1,2,3 votes=y,n,_ -> Pending
cfg=1,2,3 votes=y,y,_ -> Won
cfg=1,2,3 votes=y,n,n -> Lost
cfg=1,2,3 votes=n,n,_ -> Lost
cfg=1,2,3,4 votes=y,y,n,_ -> Pending
cfg=1,2,3,4 votes=y,y,n,n -> Lost
cfg=1,2,3,4 votes=y,y,y,_ -> Won
cfg=1,2,3,4,5 votes=y,y,n,n,_ -> Pending
cfg=1,2,3,4,5 votes=y,y,n,n,n -> Lost
cfg=1,2,3,4,5 votes=y,y,y,n,n -> Won
# Joint: both halves must win; either losing loses.
cfg=1,2,3 cfgj=- votes=y,y,_ -> Won
cfg=1,2,3 cfgj=4,5,6 votes=y,y,_,_,_,_ -> Pending
cfg=1,2,3 cfgj=4,5,6 votes=y,y,_,y,y,_ -> Won
cfg=1,2,3 cfgj=4,5,6 votes=y,y,y,n,n,_ -> Lost
cfg=1,2,3 cfgj=4,5,6 votes=n,n,_,y,y,y -> Lost
cfg=1,2,3 cfgj=4,5,6 votes=y,y,y,y,n,_ -> Pending
cfg=1,2,3 cfgj=2,3,4 votes=_,y,y,_ -> Won
cfg=1,2,3 cfgj=2,3,4 votes=y,y,n,n -> Lost
cfg=1,2,3 cfgj=2,3,4 votes=y,y,n,_ -> Pending
cfg=1 cfgj=1,2,3 votes=y,_,_ -> Pending
cfg=1 cfgj=1,2,3 votes=y,n,y -> Won
";

#[test]
fn vote_table() {
    for line in table(VOTES) {
        let (conf, votes, expected) = parse_line(line, "votes");
        let got = vote_result(&conf, |id| votes.get(&id).map(|v| v == "y"));
        assert_eq!(format!("{got:?}"), expected, "{line}");
        if !conf.is_joint() {
            let single = majority_vote(&conf.voters, |id| votes.get(&id).map(|v| v == "y"));
            assert_eq!(single, got, "{line}");
        }
    }
}

/// A voter set of up to `max` ids drawn from `1..=12`.
fn voter_set(max: usize) -> impl Strategy<Value = BTreeSet<NodeId>> {
    prop::collection::btree_set((1u64..=12).prop_map(NodeId), 0..=max)
}

/// Answers for every id in `1..=12`.
fn answers<T: std::fmt::Debug + Clone>(
    elem: impl Strategy<Value = T> + Clone,
) -> impl Strategy<Value = Vec<Option<T>>> {
    prop::collection::vec(prop::option::of(elem), 12)
}

fn at<T: Copy>(v: &[Option<T>], id: NodeId) -> Option<T> {
    v.get((id.0 - 1) as usize).copied().flatten()
}

/// How many of `voters` report a value `>= x`.
fn reaching(voters: &BTreeSet<NodeId>, vals: &[Option<u64>], x: u64) -> usize {
    voters
        .iter()
        .filter(|&&id| at(vals, id).unwrap_or(0) >= x)
        .count()
}

/// Exact tally of a majority vote by counting.
fn model_vote(voters: &BTreeSet<NodeId>, votes: &[Option<bool>]) -> VoteResult {
    let q = voters.len() / 2 + 1;
    let yes = voters
        .iter()
        .filter(|&&id| at(votes, id) == Some(true))
        .count();
    let no = voters
        .iter()
        .filter(|&&id| at(votes, id) == Some(false))
        .count();
    if voters.is_empty() || yes >= q {
        VoteResult::Won
    } else if voters.len() - no < q {
        VoteResult::Lost
    } else {
        VoteResult::Pending
    }
}

/// Orders results so that "more yes" is larger.
fn rank(r: VoteResult) -> u8 {
    match r {
        VoteResult::Lost => 0,
        VoteResult::Pending => 1,
        VoteResult::Won => 2,
    }
}

proptest! {
    #[test]
    fn majority_value_is_the_quorum_threshold(
        voters in voter_set(12),
        vals in answers(0u64..100),
    ) {
        let r = majority_value(&voters, |id| at(&vals, id));
        if voters.is_empty() {
            prop_assert_eq!(r, u64::MAX);
        } else {
            let q = voters.len() / 2 + 1;
            prop_assert!(reaching(&voters, &vals, r) >= q);
            prop_assert!(reaching(&voters, &vals, r + 1) < q);
        }
    }

    #[test]
    fn majority_value_matches_a_sorted_vec(
        voters in voter_set(12),
        vals in answers(any::<u64>()),
    ) {
        prop_assume!(!voters.is_empty());
        let mut all: Vec<u64> = voters.iter().map(|&id| at(&vals, id).unwrap_or(0)).collect();
        all.sort_unstable_by(|a, b| b.cmp(a));
        let want = all[voters.len() / 2];
        prop_assert_eq!(majority_value(&voters, |id| at(&vals, id)), want);
    }

    #[test]
    fn joint_value_is_min_of_halves(
        incoming in voter_set(7),
        outgoing in voter_set(7),
        vals in answers(0u64..100),
    ) {
        let conf = ConfState {
            voters: incoming.clone(),
            voters_outgoing: outgoing.clone(),
            ..ConfState::default()
        };
        let r = quorum_value(&conf, |id| at(&vals, id));
        let a = majority_value(&incoming, |id| at(&vals, id));
        let b = majority_value(&outgoing, |id| at(&vals, id));
        prop_assert_eq!(r, a.min(b));
        // Each non-empty half has a majority at r.
        for half in [&incoming, &outgoing] {
            if !half.is_empty() {
                prop_assert!(reaching(half, &vals, r) > half.len() / 2);
            }
        }
    }

    #[test]
    fn majority_value_is_monotone_in_values(
        voters in voter_set(12),
        vals in answers(0u64..100),
        who in 1u64..=12,
        bump in 1u64..50,
    ) {
        let before = majority_value(&voters, |id| at(&vals, id));
        let mut more = vals.clone();
        let slot = &mut more[(who - 1) as usize];
        *slot = Some(slot.unwrap_or(0) + bump);
        let after = majority_value(&voters, |id| at(&more, id));
        prop_assert!(after >= before);
    }

    #[test]
    fn majority_vote_matches_counting(
        voters in voter_set(12),
        votes in answers(any::<bool>()),
    ) {
        prop_assert_eq!(majority_vote(&voters, |id| at(&votes, id)), model_vote(&voters, &votes));
    }

    #[test]
    fn votes_are_monotone(
        incoming in voter_set(7),
        outgoing in voter_set(7),
        votes in answers(any::<bool>()),
        who in 1u64..=12,
    ) {
        let conf = ConfState {
            voters: incoming,
            voters_outgoing: outgoing,
            ..ConfState::default()
        };
        let before = vote_result(&conf, |id| at(&votes, id));
        let slot = (who - 1) as usize;
        if votes[slot].is_none() {
            // A new grant never makes the result worse ...
            let mut yes = votes.clone();
            yes[slot] = Some(true);
            prop_assert!(rank(vote_result(&conf, |id| at(&yes, id))) >= rank(before));
            // ... and a new rejection never makes it better.
            let mut no = votes.clone();
            no[slot] = Some(false);
            prop_assert!(rank(vote_result(&conf, |id| at(&no, id))) <= rank(before));
        }
        // Decided results stay decided by more answers of the same kind.
        if before == VoteResult::Won {
            let all_yes: Vec<Option<bool>> =
                votes.iter().map(|v| v.or(Some(true))).collect();
            prop_assert_eq!(vote_result(&conf, |id| at(&all_yes, id)), VoteResult::Won);
        }
    }

    #[test]
    fn joint_vote_combines_halves(
        incoming in voter_set(7),
        outgoing in voter_set(7),
        votes in answers(any::<bool>()),
    ) {
        let conf = ConfState {
            voters: incoming.clone(),
            voters_outgoing: outgoing.clone(),
            ..ConfState::default()
        };
        let r = vote_result(&conf, |id| at(&votes, id));
        let a = model_vote(&incoming, &votes);
        let b = model_vote(&outgoing, &votes);
        prop_assert_eq!(r == VoteResult::Won, a == VoteResult::Won && b == VoteResult::Won);
        prop_assert_eq!(r == VoteResult::Lost, a == VoteResult::Lost || b == VoteResult::Lost);
    }
}

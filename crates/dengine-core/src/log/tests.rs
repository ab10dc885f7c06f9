//! Property tests of the log: log matching and conflict resolution in
//! `maybe_append`, and the bounds of `find_conflict_by_term`, over logs
//! split between [`MemStorage`] (stable) and the unstable tail.

use proptest::prelude::*;

use super::*;
use crate::testing::MemStorage;
use crate::types::EntryPayload;

/// The entry at `index` of term `term`. Its payload names both, so entries
/// are equal exactly when their ids are (as log matching promises).
fn ent(index: u64, term: u64) -> Entry {
    Entry {
        term: Term(term),
        index: LogIndex(index),
        payload: EntryPayload::Normal(format!("{term}/{index}").into_bytes().into()),
    }
}

/// The entries `from..` of a log given by its terms (`terms[0]` is index 1).
fn entries(terms: &[u64], from: u64) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(k, &t)| ent(k as u64 + 1, t))
        .skip(from as usize - 1)
        .collect()
}

/// A log whose entries after `base` have `terms` (index `base + 1` first):
/// those up to `stable` are in storage, the rest in the unstable tail. The
/// entries up to `base` are compacted; the entry at `base` has `base_term`.
fn build(base: (u64, u64), terms: &[u64], stable: u64, committed: u64) -> RaftLog<MemStorage> {
    let (b, bt) = base;
    let storage = MemStorage::new();
    {
        let mut c = storage.lock();
        c.base = EntryId::new(Term(bt), LogIndex(b));
        c.entries = terms[..(stable - b) as usize]
            .iter()
            .enumerate()
            .map(|(k, &t)| ent(b + 1 + k as u64, t))
            .collect();
    }
    let mut log = RaftLog::new(storage, LogIndex::ZERO, LogIndex::ZERO).unwrap();
    let tail: Vec<Entry> = terms[(stable - b) as usize..]
        .iter()
        .enumerate()
        .map(|(k, &t)| ent(stable + 1 + k as u64, t))
        .collect();
    log.append(tail.clone());
    log.committed = LogIndex(committed);
    log
}

/// The terms of `log` from index 1 (the log must not be compacted).
fn terms_of(log: &RaftLog<MemStorage>) -> Vec<u64> {
    (1..=log.last_index().0)
        .map(|i| log.term(LogIndex(i)).unwrap().0)
        .collect()
}

/// Checks that `log` holds exactly the entries of `terms` (index 1 on).
fn assert_log(log: &RaftLog<MemStorage>, terms: &[u64]) -> Result<(), TestCaseError> {
    prop_assert_eq!(terms_of(log), terms.to_vec());
    let all = log
        .slice(LogIndex(1), log.last_index().next(), u64::MAX)
        .unwrap();
    prop_assert_eq!(all, entries(terms, 1));
    Ok(())
}

/// Makes the unstable tail durable, as a runtime would.
fn persist(log: &mut RaftLog<MemStorage>) {
    let (_, ents) = log.take_to_persist();
    if let Some(last) = ents.last() {
        log.storage.lock().append(&ents).unwrap();
        log.stable_to(last.id());
    }
}

/// The term at `i` (1-based) of a log given by its terms; 0 past the end
/// and at index 0.
fn term_at(terms: &[u64], i: u64) -> u64 {
    if i == 0 {
        0
    } else {
        terms.get(i as usize - 1).copied().unwrap_or(0)
    }
}

/// What `maybe_append` must do, computed on plain term lists.
fn model_append(
    follower: &[u64],
    leader: &[u64],
    committed: u64,
    p: u64,
    q: u64,
) -> (AppendOutcome, Vec<u64>) {
    let holds_prev = p as usize <= follower.len() && term_at(follower, p) == term_at(leader, p);
    if !holds_prev {
        return (AppendOutcome::Mismatch, follower.to_vec());
    }
    let conflict = (p + 1..=q).find(|&i| term_at(follower, i) != term_at(leader, i));
    match conflict {
        None => (AppendOutcome::Appended(LogIndex(q)), follower.to_vec()),
        Some(i) if i <= committed => (
            AppendOutcome::ConflictsWithCommitted(LogIndex(i)),
            follower.to_vec(),
        ),
        Some(i) => {
            let mut out = follower[..i as usize - 1].to_vec();
            out.extend_from_slice(&leader[i as usize - 1..q as usize]);
            (AppendOutcome::Appended(LogIndex(q)), out)
        }
    }
}

/// Non-decreasing terms from `start`, each step adding 0 or `step`.
fn climb(start: u64, steps: Vec<bool>, step: u64) -> Vec<u64> {
    let mut t = start;
    steps
        .into_iter()
        .map(|up| {
            if up {
                t += step;
            }
            t
        })
        .collect()
}

/// A leader's and a follower's log that obey log matching: they share a
/// prefix, then the leader's terms are even and the follower's odd, so no
/// entry past the prefix is in both.
fn arb_pair() -> impl Strategy<Value = (Vec<u64>, Vec<u64>)> {
    let steps = |n| prop::collection::vec(any::<bool>(), 0..n);
    (steps(12), steps(12), 0u64..2, steps(12), 0u64..2).prop_map(
        |(shared, lead, lead_jump, follow, follow_jump)| {
            let prefix = climb(2, shared, 2);
            let last = prefix.last().copied().unwrap_or(2);
            let mut leader = prefix.clone();
            leader.extend(climb(last + 2 * lead_jump, lead, 2));
            let mut follower = prefix;
            follower.extend(climb(last + 1 + 2 * follow_jump, follow, 2));
            (leader, follower)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// `maybe_append` against the model: after an append whose `prev`
    /// matches, the log equals the leader's up to the last new entry; a
    /// mismatch, or a conflict at or below the commit index, changes
    /// nothing; a committed entry is never truncated.
    #[test]
    fn maybe_append_follows_the_model(
        (leader, follower) in arb_pair(),
        stable in any::<prop::sample::Index>(),
        committed in any::<prop::sample::Index>(),
        p in any::<prop::sample::Index>(),
        q in any::<prop::sample::Index>(),
    ) {
        let flen = follower.len() as u64;
        let stable = stable.index(follower.len() + 1) as u64;
        let committed = committed.index(follower.len() + 1) as u64;
        let p = p.index(leader.len() + 1) as u64;
        let q = p + q.index(leader.len() - p as usize + 1) as u64;
        let mut log = build((0, 0), &follower, stable, committed);
        assert_log(&log, &follower)?;

        let prev = EntryId::new(Term(term_at(&leader, p)), LogIndex(p));
        let sent = &entries(&leader, 1)[p as usize..q as usize];
        let outcome = log.maybe_append(prev, sent.to_vec()).unwrap();
        let (want, after) = model_append(&follower, &leader, committed, p, q);
        prop_assert_eq!(outcome, want);
        assert_log(&log, &after)?;
        prop_assert_eq!(log.committed, LogIndex(committed), "appending commits nothing");
        prop_assert_eq!(
            &after[..committed as usize], &follower[..committed as usize],
            "committed entries survive"
        );
        if let AppendOutcome::Appended(last) = outcome {
            prop_assert_eq!(last, LogIndex(q));
            prop_assert_eq!(&after[..q as usize], &leader[..q as usize], "log matching");
        } else {
            prop_assert_eq!(&after, &follower, "a refused append changes nothing");
        }
        if let AppendOutcome::ConflictsWithCommitted(i) = outcome {
            prop_assert!(i.0 <= committed && i.0 <= flen);
        }

        // Persisting what is new leaves the log as it reads.
        persist(&mut log);
        assert_log(&log, &after)?;
        prop_assert!(!log.has_to_persist());
        prop_assert_eq!(log.stable_last_index(), LogIndex(after.len() as u64));
    }
}

/// One step of a history seen by one follower.
#[derive(Clone, Debug)]
enum Op {
    /// A new leader (next term) whose log is a prefix of the current
    /// leader's (`from_follower: false`) or of the follower's, keeping at
    /// least the committed entries, plus `new` entries of its own.
    NewLeader {
        from_follower: bool,
        keep: prop::sample::Index,
        new: usize,
    },
    /// The leader sends the follower its entries `p + 1..=q` after `prev`.
    Append {
        p: prop::sample::Index,
        q: prop::sample::Index,
    },
    /// The leader tells the follower it may commit up to what it has
    /// received from this leader.
    Commit,
    /// The follower makes its unstable tail durable.
    Persist,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (any::<bool>(), any::<prop::sample::Index>(), 0usize..5)
            .prop_map(|(f, keep, new)| Op::NewLeader { from_follower: f, keep, new }),
        4 => (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(p, q)| Op::Append { p, q }),
        1 => Just(Op::Commit),
        1 => Just(Op::Persist),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A follower fed appends from a succession of leaders (each keeping
    /// every committed entry, as leader completeness promises) never sees a
    /// conflict with a committed entry, never loses one, always matches the
    /// current leader up to the last entry it accepted, and ends up holding
    /// the leader's whole log once sent everything.
    #[test]
    fn a_follower_of_successive_leaders_keeps_log_matching(
        ops in prop::collection::vec(arb_op(), 1..40),
    ) {
        let mut term = 2u64;
        let mut leader: Vec<u64> = vec![2];
        let mut log = build((0, 0), &[], 0, 0);
        // The highest index known to match the current leader.
        let mut matched = 0u64;
        for op in ops {
            match op {
                Op::NewLeader { from_follower, keep, new } => {
                    let source = if from_follower { terms_of(&log) } else { leader.clone() };
                    let committed = log.committed.0 as usize;
                    let keep = committed + keep.index(source.len() - committed + 1);
                    term += 1;
                    leader = source[..keep].to_vec();
                    leader.extend(std::iter::repeat_n(term, new));
                    matched = 0;
                }
                Op::Append { p, q } => {
                    let p = p.index(leader.len() + 1) as u64;
                    let q = p + q.index(leader.len() - p as usize + 1) as u64;
                    let before = terms_of(&log);
                    let committed = log.committed.0;
                    let prev = EntryId::new(Term(term_at(&leader, p)), LogIndex(p));
                    let sent = &entries(&leader, 1)[p as usize..q as usize];
                    let outcome = log.maybe_append(prev, sent.to_vec()).unwrap();
                    let (want, after) = model_append(&before, &leader, committed, p, q);
                    prop_assert_eq!(outcome, want);
                    prop_assert!(
                        !matches!(outcome, AppendOutcome::ConflictsWithCommitted(_)),
                        "a safe history never conflicts with a committed entry"
                    );
                    assert_log(&log, &after)?;
                    if let AppendOutcome::Appended(last) = outcome {
                        prop_assert_eq!(&after[..q as usize], &leader[..q as usize]);
                        matched = matched.max(last.0);
                    }
                    prop_assert_eq!(
                        &after[..committed as usize], &before[..committed as usize]
                    );
                    prop_assert!(after.windows(2).all(|w| w[0] <= w[1]), "terms never go down");
                }
                Op::Commit => log.commit_to(LogIndex(matched)),
                Op::Persist => persist(&mut log),
            }
        }
        // Everything from the current leader, after `prev = (0, 0)`.
        let all = entries(&leader, 1);
        let outcome = log.maybe_append(EntryId::default(), all.clone()).unwrap();
        prop_assert_eq!(outcome, AppendOutcome::Appended(LogIndex(leader.len() as u64)));
        prop_assert_eq!(&terms_of(&log)[..leader.len()], &leader[..]);
    }

    /// `find_conflict_by_term(index, term)` returns the last entry at or
    /// below `index` (and the end of the log) whose term is at most `term`;
    /// behind the compaction point it answers term 0.
    #[test]
    fn find_conflict_by_term_is_the_last_entry_not_above_the_term(
        base in 0u64..4,
        steps in prop::collection::vec(any::<bool>(), 0..20),
        stable in any::<prop::sample::Index>(),
        index in 0u64..28,
        term in 0u64..14,
    ) {
        // Terms from index 1; the first `base` entries are compacted.
        let all = climb(1, steps, 1);
        let base = base.min(all.len() as u64);
        let base_term = term_at(&all, base);
        let stored = &all[base as usize..];
        let stable = base + stable.index(stored.len() + 1) as u64;
        let log = build((base, base_term), stored, stable, base);
        let last = all.len() as u64;

        let found = log.find_conflict_by_term(LogIndex(index), Term(term)).unwrap();
        let (fi, ft) = (found.index.0, found.term.0);
        prop_assert!(fi <= index.min(last), "at or below the asked index: {found:?}");
        prop_assert!(ft <= term, "term at most the asked one: {found:?}");
        if fi >= base {
            // Within the log: it is that entry, and the last one that fits.
            prop_assert_eq!(ft, term_at(&all, fi));
            for j in fi + 1..=index.min(last) {
                prop_assert!(term_at(&all, j) > term, "index {j} fits better");
            }
        } else {
            // Ran into the compacted part: nothing is known there.
            prop_assert_eq!(ft, 0);
            for j in base..=index.min(last) {
                prop_assert!(term_at(&all, j) > term, "index {j} fits");
            }
        }
    }
}

#[test]
fn hand_outs_stop_while_too_many_bytes_wait_to_be_applied() {
    // Ten stable, committed entries of term 1.
    let mut log = build((0, 0), &[1; 10], 10, 10);
    let one = ent(1, 1).size();
    // Two entries per hand-out; at most three entries' worth outstanding.
    let (per_ready, outstanding) = (2 * one, 3 * one);
    let first = log.next_committed(per_ready, outstanding).unwrap();
    assert_eq!(first.len(), 2);
    let second = log.next_committed(per_ready, outstanding).unwrap();
    assert_eq!(
        second.len(),
        2,
        "under the bound when asked: one more batch"
    );
    assert!(!log.can_hand_out(outstanding), "four entries wait now");
    assert!(
        log.next_committed(per_ready, outstanding)
            .unwrap()
            .is_empty()
    );
    assert!(
        log.has_next_committed(),
        "still committed and not handed out"
    );
    // Applying the first batch frees its bytes.
    log.applied_to(LogIndex(2));
    assert!(log.can_hand_out(outstanding));
    let third = log.next_committed(per_ready, outstanding).unwrap();
    assert_eq!(third.first().map(|e| e.index), Some(LogIndex(5)));
    // Applying everything handed out frees it all.
    log.applied_to(LogIndex(6));
    assert_eq!(log.next_committed(u64::MAX, outstanding).unwrap().len(), 4);
}

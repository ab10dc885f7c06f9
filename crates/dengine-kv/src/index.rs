//! The in-memory index of the store's history, as etcd's `treeIndex`:
//! for each key, the revisions at which it was written or deleted (back to
//! the compacted revision), and what comparisons need of its current
//! value. Values are not here: they live in the backend, keyed by
//! revision, so memory grows with the number of keys and retained
//! revisions, not with the size of the data.

use std::collections::HashMap;

use crate::types::KeyRange;

mod key;
mod older;
mod order;

pub(crate) use key::IndexKey;
use older::OlderWrites;
use order::KeyOrder;

/// A point in the store's history: `main` is the store revision of a
/// command, `sub` orders the writes within it (as etcd's `revision`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Revision {
    pub(crate) main: i64,
    pub(crate) sub: u32,
}

/// One write of a key: a put or, if `tombstone`, the delete that ended
/// one of its generations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Write {
    pub(crate) rev: Revision,
    pub(crate) tombstone: bool,
}

/// A [`Write`] as a history keeps its newest: 16 bytes where `Write`
/// takes 24, the tombstone flag in the top bit of the sub revision (a
/// command never makes 2^31 writes: the index of that many keys would not
/// fit in memory). The older writes take a few bytes each
/// ([`OlderWrites`]). The default, revision 0, stands for no write (see
/// [`KeyHistory`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Packed {
    main: i64,
    sub_and_tombstone: u32,
}

const TOMBSTONE_BIT: u32 = 1 << 31;

impl Packed {
    fn new(w: Write) -> Packed {
        Packed::from_parts(w.rev.main, w.rev.sub, w.tombstone)
    }

    fn from_parts(main: i64, sub: u32, tombstone: bool) -> Packed {
        Packed {
            main,
            sub_and_tombstone: sub | if tombstone { TOMBSTONE_BIT } else { 0 },
        }
    }

    fn rev(self) -> Revision {
        Revision {
            main: self.main,
            sub: self.sub_and_tombstone & !TOMBSTONE_BIT,
        }
    }

    fn tombstone(self) -> bool {
        self.sub_and_tombstone & TOMBSTONE_BIT != 0
    }
}

/// What the index knows of a key's current value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Current {
    pub(crate) rev: Revision,
    pub(crate) create_revision: i64,
    pub(crate) version: i64,
    pub(crate) lease: i64,
}

/// A key's history: its writes (puts and tombstones) in revision order,
/// back to the compacted revision, and its current generation's counters.
/// A generation runs from a put on an absent key to the tombstone that
/// ends it.
///
/// The newest write is kept in place, the older ones on the heap in a few
/// bytes each: a put reads the newest (is the key there now? which
/// revision?) without a second cache miss, and a key written once since
/// the last compaction, most keys, has no allocation of its own.
#[derive(Clone, Debug, Default)]
pub(crate) struct KeyHistory {
    /// The newest write; `main` 0 if there is none (no write has revision
    /// 0: the store's first write is at revision 2).
    newest: Packed,
    /// The writes before it.
    older: OlderWrites,
    /// The current generation's create revision and version, and the
    /// lease of its last put (all 0 if the key does not exist now).
    create_revision: i64,
    version: i64,
    lease: i64,
}

impl KeyHistory {
    fn newest(&self) -> Option<Packed> {
        (self.newest.main != 0).then_some(self.newest)
    }

    /// The key's value now, if it exists.
    pub(crate) fn current(&self) -> Option<Current> {
        match self.newest() {
            Some(w) if !w.tombstone() => Some(Current {
                rev: w.rev(),
                create_revision: self.create_revision,
                version: self.version,
                lease: self.lease,
            }),
            _ => None,
        }
    }

    /// The revision of the key's value at store revision `at`, if it
    /// existed then (and `at` is not below the compacted revision).
    pub(crate) fn at(&self, at: i64) -> Option<Revision> {
        let found = match self.newest() {
            Some(w) if w.main <= at => Some(w),
            Some(newest) => self
                .older
                .newest_first(newest.main)
                .map(|(_, w)| w)
                .find(|w| w.main <= at),
            None => None,
        };
        match found {
            Some(w) if !w.tombstone() => Some(w.rev()),
            _ => None,
        }
    }

    /// Records a put at `rev`; returns its create revision and version.
    pub(crate) fn put(&mut self, rev: Revision, lease: i64) -> (i64, i64) {
        if self.current().is_none() {
            self.create_revision = rev.main;
            self.version = 0;
        }
        self.version += 1;
        self.lease = lease;
        self.push(Write {
            rev,
            tombstone: false,
        });
        (self.create_revision, self.version)
    }

    /// Records the delete of the current value at `rev`.
    pub(crate) fn tombstone(&mut self, rev: Revision) {
        self.push(Write {
            rev,
            tombstone: true,
        });
        self.create_revision = 0;
        self.version = 0;
        self.lease = 0;
    }

    /// Makes `w` the newest write.
    fn push(&mut self, w: Write) {
        if let Some(newest) = self.newest() {
            self.older.push(newest, w.rev.main);
        }
        self.newest = Packed::new(w);
    }

    /// Records a write read back from the backend (in revision order), with
    /// the counters its record holds.
    pub(crate) fn restore(&mut self, w: Write, create_revision: i64, version: i64, lease: i64) {
        self.push(w);
        if w.tombstone {
            (self.create_revision, self.version, self.lease) = (0, 0, 0);
        } else {
            (self.create_revision, self.version, self.lease) = (create_revision, version, lease);
        }
    }

    /// Forgets the writes no read at `at` or later can see, as etcd's
    /// `keyIndex.compact`: of the writes at or before `at`, only the last
    /// is kept, and only if it is a put. Pushes the forgotten revisions to
    /// `removed`; returns whether the key has no writes left.
    pub(crate) fn compact(&mut self, at: i64, removed: &mut Vec<Revision>) -> bool {
        let Some(newest) = self.newest() else {
            return true;
        };
        // The older writes to forget go to `removed` newest first (put
        // in order below), and `keep_from` is where the first one kept
        // starts. The writes after `at` stay; so does the last one at or
        // before it if it is a put.
        let first_gone = removed.len();
        let mut keep_from = 0;
        let mut seen_at_or_before = newest.main <= at;
        for (start, w) in self.older.newest_first(newest.main) {
            if w.main > at || (!seen_at_or_before && !w.tombstone()) {
                keep_from = start;
            } else {
                removed.push(w.rev());
            }
            seen_at_or_before |= w.main <= at;
        }
        // If nothing is forgotten, `keep_from` is 0 and nothing moves.
        if removed.len() > first_gone {
            // Its room goes back if nothing is kept: most keys have one
            // write left.
            self.older.drop_before(if keep_from == 0 {
                usize::MAX
            } else {
                keep_from
            });
        }
        removed[first_gone..].reverse();
        if newest.main <= at && newest.tombstone() {
            removed.push(newest.rev());
            self.newest = Packed::default();
            return true;
        }
        false
    }

    /// Every write kept, oldest first.
    #[cfg(test)]
    pub(crate) fn writes(&self) -> Vec<Write> {
        let mut older: Vec<Packed> = match self.newest() {
            Some(newest) => self
                .older
                .newest_first(newest.main)
                .map(|(_, w)| w)
                .collect(),
            None => Vec::new(),
        };
        older.reverse();
        older
            .into_iter()
            .chain(self.newest())
            .map(|w| Write {
                rev: w.rev(),
                tombstone: w.tombstone(),
            })
            .collect()
    }
}

/// What [`Index::put`] did.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PutOutcome {
    /// The key's value before the put, if it existed.
    pub(crate) before: Option<Current>,
    /// The key's create revision and version after the put.
    pub(crate) create_revision: i64,
    pub(crate) version: i64,
    /// The lease the key has now.
    pub(crate) lease: i64,
}

/// Every key's history: found by hashing the key, and kept in key order
/// beside for ranges.
///
/// A put (on the path of every write) finds its key with one hash and one
/// probe; in a tree of a hundred thousand keys the walk down, a cache miss
/// and a dozen comparisons per level, was a third of the store's CPU on
/// the put path. The order changes only when a key comes or goes
/// ([`KeyOrder`]).
///
/// The map hashes with foldhash, seeded at random per map, not with the
/// standard library's SipHash: hashing the key was about a third of a
/// lookup's cost, and a seed nobody outside the process knows still keeps
/// clients from choosing keys that collide.
#[derive(Debug, Default)]
pub(crate) struct Index {
    histories: HashMap<IndexKey, KeyHistory, foldhash::fast::RandomState>,
    order: KeyOrder,
}

impl Index {
    pub(crate) fn get(&self, key: &[u8]) -> Option<&KeyHistory> {
        self.histories.get(key)
    }

    /// Records a put of `key` at `rev` with `lease` (`None`: the lease the
    /// key has now), in one lookup of the key when it is known (the common
    /// case: a put is on the path of every write). Returns what the key
    /// was before, its create revision and version now, and its lease.
    pub(crate) fn put(&mut self, key: &[u8], rev: Revision, lease: Option<i64>) -> PutOutcome {
        let put = |h: &mut KeyHistory| {
            let before = h.current();
            let lease = lease.unwrap_or_else(|| before.map_or(0, |c| c.lease));
            let (create_revision, version) = h.put(rev, lease);
            PutOutcome {
                before,
                create_revision,
                version,
                lease,
            }
        };
        if let Some(h) = self.histories.get_mut(key) {
            return put(h);
        }
        let mut h = KeyHistory::default();
        let outcome = put(&mut h);
        self.insert(key, h);
        outcome
    }

    /// Adds a key the index does not hold.
    fn insert(&mut self, key: &[u8], history: KeyHistory) {
        let key = IndexKey::new(key);
        self.order.insert(key.clone());
        self.histories.insert(key, history);
    }

    /// The key's history, made if it has none.
    #[allow(clippy::expect_used)] // Inserted just before, if missing.
    pub(crate) fn entry(&mut self, key: &[u8]) -> &mut KeyHistory {
        // Look up before inserting, so that a key already known (the
        // common case) costs no allocation.
        if !self.histories.contains_key(key) {
            self.insert(key, KeyHistory::default());
        }
        self.histories.get_mut(key).expect("inserted above")
    }

    /// The keys of a range with their histories, in key order. A single
    /// key (a get, a txn's compare) is one lookup in the map.
    pub(crate) fn range<'a>(
        &'a self,
        range: KeyRange<'a>,
    ) -> impl Iterator<Item = (&'a IndexKey, &'a KeyHistory)> + 'a {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let bounds = match range {
            KeyRange::Single(key) => {
                return Either::One(self.histories.get_key_value(key).into_iter());
            }
            KeyRange::Span(start, None) => (Included(start), Unbounded),
            // Empty (a tree range whose end precedes its start panics).
            KeyRange::Span(start, Some(end)) if end <= start => (Included(start), Excluded(start)),
            KeyRange::Span(start, Some(end)) => (Included(start), Excluded(end)),
        };
        Either::Many(
            self.order
                .range(bounds)
                .filter_map(|k| self.histories.get_key_value(k.as_bytes())),
        )
    }

    /// Compacts every key at `at` (see [`KeyHistory::compact`]), in key
    /// order; keys left without writes are forgotten.
    pub(crate) fn compact(&mut self, at: i64, removed: &mut Vec<Revision>) {
        let histories = &mut self.histories;
        self.order.retain(|k| {
            let gone = histories
                .get_mut(k.as_bytes())
                .is_none_or(|h| h.compact(at, removed));
            if gone {
                histories.remove(k.as_bytes());
            }
            !gone
        });
    }

    /// Every key with its history, in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&IndexKey, &KeyHistory)> {
        self.order
            .iter()
            .filter_map(|k| self.histories.get_key_value(k.as_bytes()))
    }

    /// How many keys the index holds (existing or not).
    pub(crate) fn len(&self) -> usize {
        self.histories.len()
    }

    pub(crate) fn clear(&mut self) {
        self.histories.clear();
        self.order.clear();
    }
}

/// One of two iterators over the same items.
enum Either<A, B> {
    One(A),
    Many(B),
}

impl<T, A: Iterator<Item = T>, B: Iterator<Item = T>> Iterator for Either<A, B> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        match self {
            Either::One(a) => a.next(),
            Either::Many(b) => b.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(main: i64) -> Revision {
        Revision { main, sub: 0 }
    }

    /// p2 p3 T4 p6 p7: two generations.
    fn history() -> KeyHistory {
        let mut h = KeyHistory::default();
        assert_eq!(h.put(rev(2), 0), (2, 1));
        assert_eq!(h.put(rev(3), 5), (2, 2));
        h.tombstone(rev(4));
        assert_eq!(h.put(rev(6), 0), (6, 1));
        assert_eq!(h.put(rev(7), 0), (6, 2));
        h
    }

    #[test]
    fn a_write_packs_into_16_bytes_and_back() {
        assert_eq!(std::mem::size_of::<Packed>(), 16);
        for (main, sub, tombstone) in [(1, 0, false), (7, 3, true), (i64::MAX, (1 << 31) - 1, true)]
        {
            let w = Write {
                rev: Revision { main, sub },
                tombstone,
            };
            let p = Packed::new(w);
            assert_eq!((p.rev(), p.tombstone()), (w.rev, w.tombstone));
        }
    }

    #[test]
    fn reads_at_a_revision_see_the_write_in_force_then() {
        let h = history();
        let at: Vec<Option<i64>> = (1..=8).map(|r| h.at(r).map(|w| w.main)).collect();
        assert_eq!(
            at,
            [
                None,
                Some(2),
                Some(3),
                None,
                None,
                Some(6),
                Some(7),
                Some(7)
            ]
        );
        let c = h.current().unwrap();
        assert_eq!((c.rev.main, c.create_revision, c.version), (7, 6, 2));
    }

    #[test]
    fn compaction_keeps_what_reads_at_or_after_it_need() {
        let mains = |h: &KeyHistory| h.writes().iter().map(|w| w.rev.main).collect::<Vec<_>>();
        let cases: [(i64, &[i64], &[i64]); 6] = [
            (1, &[2, 3, 4, 6, 7], &[]),
            (2, &[2, 3, 4, 6, 7], &[]),
            (3, &[3, 4, 6, 7], &[2]),
            // The tombstone at 4 ends a generation no read from 4 on sees.
            (4, &[6, 7], &[2, 3, 4]),
            (6, &[6, 7], &[2, 3, 4]),
            (9, &[7], &[2, 3, 4, 6]),
        ];
        for (at, kept, gone) in cases {
            let mut h = history();
            let mut removed = Vec::new();
            assert!(!h.compact(at, &mut removed));
            assert_eq!(mains(&h), kept, "compacted at {at}");
            let removed: Vec<i64> = removed.iter().map(|r| r.main).collect();
            assert_eq!(removed, gone, "compacted at {at}");
            // Every read from `at` on is unchanged.
            for r in at..=9 {
                assert_eq!(
                    h.at(r),
                    history().at(r),
                    "read at {r} after compacting at {at}"
                );
            }
        }
        let mut h = history();
        h.tombstone(rev(8));
        let mut removed = Vec::new();
        assert!(h.compact(8, &mut removed), "a deleted key is forgotten");
        assert_eq!(removed.len(), 6);
        // Compacted to its newest write, a key gives its heap room back,
        // and goes on from there.
        let mut h = history();
        assert!(!h.compact(9, &mut Vec::new()));
        assert_eq!(h.older.capacity(), 0);
        assert_eq!(h.put(rev(10), 0), (6, 3));
        assert_eq!(mains(&h), [7, 10]);
        assert_eq!((h.at(9), h.at(10)), (Some(rev(7)), Some(rev(10))));
    }

    #[test]
    fn a_key_written_once_has_no_heap_room() {
        let mut h = KeyHistory::default();
        assert_eq!((h.current(), h.at(5)), (None, None));
        h.put(rev(2), 0);
        assert_eq!(h.older.capacity(), 0);
        assert_eq!(h.at(1), None);
        assert_eq!(h.at(2), Some(rev(2)));
        h.put(rev(3), 0);
        assert_eq!(h.older.capacity(), 8);
        assert_eq!(mains_of(&h), [2, 3]);
    }

    /// A key's writes as a plain list, compacted as etcd's
    /// `keyIndex.compact`: the reference for [`KeyHistory`].
    #[derive(Default)]
    struct Model(Vec<Write>);

    impl Model {
        fn at(&self, at: i64) -> Option<Revision> {
            match self.0.iter().rev().find(|w| w.rev.main <= at) {
                Some(w) if !w.tombstone => Some(w.rev),
                _ => None,
            }
        }

        /// The revisions forgotten, oldest first; whether none is left.
        fn compact(&mut self, at: i64) -> (Vec<Revision>, bool) {
            let n = self.0.iter().take_while(|w| w.rev.main <= at).count();
            let keep_last = n > 0 && !self.0[n - 1].tombstone;
            let drop = if keep_last { n - 1 } else { n };
            let gone = self.0.drain(..drop).map(|w| w.rev).collect();
            (gone, self.0.is_empty())
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// A put this many revisions on, at this sub revision.
        Put(i64, u32),
        Delete(i64, u32),
        /// A compaction at a write's revision (the write chosen by the
        /// number, counted back from the newest), moved by -1, 0 or 1; or
        /// past every write.
        Compact(usize, i64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let step = prop_oneof![0i64..3, 1i64..200_000];
        let sub = prop_oneof![Just(0u32), 0u32..5, 0u32..(1 << 31)];
        prop_oneof![
            4 => (step.clone(), sub.clone()).prop_map(|(d, s)| Op::Put(d, s)),
            1 => (step, sub).prop_map(|(d, s)| Op::Delete(d, s)),
            2 => (0usize..8, -1i64..=1).prop_map(|(back, by)| Op::Compact(back, by)),
        ]
    }

    proptest::proptest! {
        #[test]
        fn a_history_reads_and_compacts_as_a_plain_list_would(
            ops in proptest::collection::vec(op(), 0..60),
        ) {
            let mut h = KeyHistory::default();
            let mut model = Model::default();
            let mut last = Revision { main: 1, sub: 0 };
            for op in ops {
                match op {
                    Op::Put(d, sub) | Op::Delete(d, sub) => {
                        // A later revision than the last write's.
                        let rev = if d == 0 && sub > last.sub {
                            Revision { main: last.main, sub }
                        } else {
                            Revision { main: last.main + d.max(1), sub }
                        };
                        last = rev;
                        let tombstone = matches!(op, Op::Delete(..));
                        if tombstone {
                            h.tombstone(rev);
                        } else {
                            h.put(rev, 0);
                        }
                        model.0.push(Write { rev, tombstone });
                    }
                    Op::Compact(back, by) => {
                        let at = match model.0.len().checked_sub(back + 1) {
                            Some(i) => model.0[i].rev.main + by,
                            None => last.main + 1,
                        };
                        let mut removed = Vec::new();
                        let gone = h.compact(at, &mut removed);
                        let (want, want_gone) = model.compact(at);
                        proptest::prop_assert_eq!(removed, want);
                        proptest::prop_assert_eq!(gone, want_gone);
                        if gone {
                            h = KeyHistory::default();
                        }
                    }
                }
                proptest::prop_assert_eq!(h.writes(), model.0.clone());
                let first = model.0.first().map_or(0, |w| w.rev.main);
                for at in [first - 1, first, last.main - 1, last.main, last.main + 1] {
                    proptest::prop_assert_eq!(h.at(at), model.at(at), "at {}", at);
                }
                for w in &model.0 {
                    for at in [w.rev.main - 1, w.rev.main, w.rev.main + 1] {
                        proptest::prop_assert_eq!(h.at(at), model.at(at), "at {}", at);
                    }
                }
            }
        }
    }

    fn mains_of(h: &KeyHistory) -> Vec<i64> {
        h.writes().iter().map(|w| w.rev.main).collect()
    }
}

//! The index's keys in key order, for ranges: most of them in one sorted
//! `Vec`, the keys added since it was last rebuilt in a small tree.
//!
//! The order changes only when a key comes (a put of a new key) or goes
//! (compaction). With every key in one `BTreeSet`, adding a key walked a
//! tree of the whole key space: at a hundred thousand keys, several
//! levels with a cache miss each. In a profile of the in-process
//! key-value benchmark (100,000 keys, about a third of its puts new
//! keys) that insert was 5.5% of all CPU; with this split the order's
//! share is 3.2%, of which the merges are 1.6%. A new key goes into the
//! small tree, which stays in the cache; once that holds a 32nd of the
//! sorted keys (at least [`MIN_RECENT`]), the two are merged in place,
//! from the back. The sorted `Vec` also takes less memory per key than
//! the tree did: the index alone went from 241 to 227 bytes per key at a
//! million keys (`index_memory`).

use std::collections::BTreeSet;
use std::ops::Bound;

use super::IndexKey;
use super::key::INLINE;

/// The recent keys are merged into the sorted ones once they are this
/// many, or a 32nd of the sorted ones if that is more.
const MIN_RECENT: usize = 1024;

/// A set of keys, iterated in order (see the module's docs).
#[derive(Debug, Default)]
pub(crate) struct KeyOrder {
    /// Most keys, sorted, without duplicates.
    sorted: Vec<IndexKey>,
    /// Keys added since the last merge; none is in `sorted`.
    recent: BTreeSet<IndexKey>,
}

impl KeyOrder {
    /// Adds `key`, which the set must not hold (the index adds a key only
    /// when its map of histories did not have it).
    pub(crate) fn insert(&mut self, key: IndexKey) {
        debug_assert!(!self.contains(key.as_bytes()), "{key:?} added twice");
        self.recent.insert(key);
        if self.recent.len() >= MIN_RECENT.max(self.sorted.len() / 32) {
            self.merge();
        }
    }

    /// Whether the set holds `key` (for checks: the index asks its map).
    fn contains(&self, key: &[u8]) -> bool {
        self.recent.contains(key)
            || self
                .sorted
                .binary_search_by(|k| k.as_bytes().cmp(key))
                .is_ok()
    }

    /// Moves the recent keys into the sorted ones, in place: from the
    /// back, each slot past the old end takes the greater of the last
    /// sorted key not yet moved and the last recent key. Only the sorted
    /// keys after the first recent one move, and the `Vec` grows as a
    /// `Vec` does (a new one per merge cost a page fault per 4 KiB).
    fn merge(&mut self) {
        let mut recent: Vec<IndexKey> = std::mem::take(&mut self.recent).into_iter().collect();
        let mut unmoved = self.sorted.len();
        self.sorted
            .resize_with(unmoved + recent.len(), || IndexKey::Inline(0, [0; INLINE]));
        let mut slot = self.sorted.len();
        while let Some(last) = recent.last() {
            slot -= 1;
            if unmoved > 0 && self.sorted[unmoved - 1] > *last {
                self.sorted.swap(unmoved - 1, slot);
                unmoved -= 1;
            } else if let Some(key) = recent.pop() {
                self.sorted[slot] = key;
            }
        }
    }

    /// The keys within `bounds`, in order. The bounds must not be
    /// inverted, nor equal and both excluded (as for `BTreeSet::range`).
    pub(crate) fn range<'a>(
        &'a self,
        (start, end): (Bound<&'a [u8]>, Bound<&'a [u8]>),
    ) -> impl Iterator<Item = &'a IndexKey> + 'a {
        let first = match start {
            Bound::Included(k) => self.sorted.partition_point(|x| x.as_bytes() < k),
            Bound::Excluded(k) => self.sorted.partition_point(|x| x.as_bytes() <= k),
            Bound::Unbounded => 0,
        };
        let past = match end {
            Bound::Included(k) => self.sorted.partition_point(|x| x.as_bytes() <= k),
            Bound::Excluded(k) => self.sorted.partition_point(|x| x.as_bytes() < k),
            Bound::Unbounded => self.sorted.len(),
        };
        let sorted = self.sorted[first..past.max(first)].iter();
        let recent = self.recent.range::<[u8], _>((start, end));
        crate::merged::merged(sorted, recent, itself)
    }

    /// Every key, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &IndexKey> {
        self.range((Bound::Unbounded, Bound::Unbounded))
    }

    /// Keeps the keys for which `keep` is true, asking in key order.
    pub(crate) fn retain(&mut self, keep: impl FnMut(&IndexKey) -> bool) {
        self.merge();
        self.sorted.retain(keep);
        // A compaction that removed many keys gives their room back.
        if self.sorted.capacity() > 2 * self.sorted.len() + MIN_RECENT {
            self.sorted.shrink_to_fit();
        }
    }

    /// Removes every key.
    pub(crate) fn clear(&mut self) {
        self.sorted = Vec::new();
        self.recent.clear();
    }
}

/// A key as it orders itself.
fn itself<'x>(key: &'x &IndexKey) -> &'x IndexKey {
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merged::testing::{borrowed as bound, valid};
    use proptest::prelude::*;

    fn key() -> impl Strategy<Value = Vec<u8>> {
        // Short keys over a small alphabet: many shared prefixes, and
        // keys added twice (which the test skips, as the index does).
        prop::collection::vec(0u8..4, 0..4)
    }

    fn a_bound() -> impl Strategy<Value = Bound<Vec<u8>>> {
        prop_oneof![
            key().prop_map(Bound::Included),
            key().prop_map(Bound::Excluded),
            Just(Bound::Unbounded),
        ]
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(Vec<u8>),
        Retain(u8),
        Range(Bound<Vec<u8>>, Bound<Vec<u8>>),
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            20 => key().prop_map(Op::Insert),
            1 => any::<u8>().prop_map(Op::Retain),
            4 => (a_bound(), a_bound()).prop_map(|(s, e)| Op::Range(s, e)),
            1 => Just(Op::Clear),
        ]
    }

    fn check(order: &KeyOrder, model: &BTreeSet<Vec<u8>>) {
        let all: Vec<&[u8]> = order.iter().map(IndexKey::as_bytes).collect();
        let want: Vec<&[u8]> = model.iter().map(Vec::as_slice).collect();
        assert_eq!(all, want);
        assert!(order.sorted.windows(2).all(|w| w[0] < w[1]));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Any sequence of inserts, compactions and ranges gives what one
        /// `BTreeSet` would, across merges (many inserts per case pass
        /// `MIN_RECENT`).
        #[test]
        fn it_answers_as_one_tree_would(
            ops in prop::collection::vec(op(), 0..200),
            bulk in 0usize..3000,
        ) {
            let mut order = KeyOrder::default();
            let mut model = BTreeSet::new();
            // Many distinct keys first, so that merges happen.
            for i in 0..bulk {
                let k = (i as u32).wrapping_mul(2_654_435_761).to_be_bytes().to_vec();
                if model.insert(k.clone()) {
                    order.insert(IndexKey::new(&k));
                }
            }
            for op in ops {
                match op {
                    Op::Insert(k) => {
                        if model.insert(k.clone()) {
                            order.insert(IndexKey::new(&k));
                        }
                    }
                    Op::Retain(x) => {
                        let keep = |k: &[u8]| k.iter().fold(x, |a, b| a.wrapping_add(*b)) % 3 != 0;
                        let mut asked = Vec::new();
                        order.retain(|k| {
                            asked.push(k.to_vec());
                            keep(k.as_bytes())
                        });
                        let in_order: Vec<Vec<u8>> = model.iter().cloned().collect();
                        prop_assert_eq!(asked, in_order);
                        model.retain(|k| keep(k));
                    }
                    Op::Range(s, e) => {
                        if !valid(&s, &e) {
                            continue;
                        }
                        let got: Vec<&[u8]> =
                            order.range((bound(&s), bound(&e))).map(IndexKey::as_bytes).collect();
                        let want: Vec<&[u8]> = model
                            .range::<[u8], _>((bound(&s), bound(&e)))
                            .map(Vec::as_slice)
                            .collect();
                        prop_assert_eq!(got, want);
                    }
                    Op::Clear => {
                        order.clear();
                        model.clear();
                    }
                }
            }
            check(&order, &model);
        }
    }

    #[test]
    fn recent_keys_are_merged_once_they_are_a_32nd_of_the_sorted_ones() {
        let mut order = KeyOrder::default();
        for i in 0..MIN_RECENT as u32 {
            order.insert(IndexKey::new(&i.to_be_bytes()));
        }
        assert_eq!((order.sorted.len(), order.recent.len()), (MIN_RECENT, 0));
        for i in 0..100_000u32 {
            order.insert(IndexKey::new(&((u64::from(i) + 1) << 20).to_be_bytes()));
            assert!(order.recent.len() < MIN_RECENT.max(order.sorted.len() / 32));
        }
        assert_eq!(order.iter().count(), MIN_RECENT + 100_000);
        assert!(order.recent.len() <= order.sorted.len() / 32);
    }
}

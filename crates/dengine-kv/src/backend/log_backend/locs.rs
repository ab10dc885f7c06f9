//! Where each record's value is, by key: the record log's map.
//!
//! The store writes one record per revision, under a 13-byte key (`r`,
//! then the revision's main and sub parts big-endian), in increasing
//! revision order, and a handful of records under other keys (its own
//! meta record, auth, leases, members, alarms). With every key in one
//! `BTreeMap<IndexKey, Loc>`, a revision's place took about 90 bytes (a
//! tree filled in key order leaves its nodes half full) and each new
//! revision walked down the tree. Revision keys now live in a sequence
//! of 20-byte slots sorted by revision (in chunks, see [`Chunked`]): a new
//! revision is pushed at the end, a lookup is a binary search, and a
//! removal (compaction) marks its slot; marked slots are dropped once
//! they are half of them. The other keys stay in a tree, with any
//! revision that does not fit a slot: a main revision of 2^48 or more
//! (a store writing a million revisions a second would take nine years to
//! get there), a sub revision of 2^16 or more (a transaction of that many
//! writes), or a segment number or offset past 32 bits (never with 64
//! MiB segments, but not impossible).

use std::collections::BTreeMap;
use std::ops::Bound;

use super::Loc;
use super::chunked::{self, Chunked};
use crate::index::IndexKey;
use crate::record::REV_PREFIX;

/// Bytes of a revision's key: the prefix, main and sub.
const REV_KEY: usize = 13;

/// Marked slots are dropped once there are at least this many, and
/// half the slots are marked.
const MIN_DEAD: usize = 1024;

/// A revision key's place: 20 bytes, every field 4-byte aligned (a `u64`
/// field would pad the slot to 24). A store that is not compacted keeps a
/// slot per revision: at 2.4 million revisions, the 4 bytes are 9 MiB.
#[derive(Clone, Copy, Debug)]
struct RevSlot {
    /// The revision as `main << SUB_BITS | sub`: its high and low halves.
    rev_high: u32,
    rev_low: u32,
    /// The segment, or [`REMOVED`].
    seq: u32,
    offset: u32,
    len: u32,
}

/// Bits of a slot's revision that hold the sub revision; the main
/// revision has the other 48.
const SUB_BITS: u32 = 16;

/// The `seq` of a removed revision's slot (no segment has it).
const REMOVED: u32 = u32::MAX;

impl RevSlot {
    /// The slot of revision `(main, sub)` at `loc`, if `loc` fits one.
    fn new((main, sub): (u64, u32), loc: Loc) -> Option<RevSlot> {
        let seq = u32::try_from(loc.seq).ok().filter(|&s| s != REMOVED)?;
        let offset = u32::try_from(loc.offset).ok()?;
        if main >> (64 - SUB_BITS) != 0 || sub >> SUB_BITS != 0 {
            return None;
        }
        let rev = main << SUB_BITS | u64::from(sub);
        Some(RevSlot {
            rev_high: (rev >> 32) as u32,
            rev_low: rev as u32,
            seq,
            offset,
            len: loc.len,
        })
    }

    fn rev(&self) -> (u64, u32) {
        let rev = u64::from(self.rev_high) << 32 | u64::from(self.rev_low);
        (rev >> SUB_BITS, (rev & ((1 << SUB_BITS) - 1)) as u32)
    }

    fn live(&self) -> bool {
        self.seq != REMOVED
    }

    fn loc(&self) -> Loc {
        Loc {
            seq: u64::from(self.seq),
            offset: u64::from(self.offset),
            len: self.len,
        }
    }

    fn key(&self) -> [u8; REV_KEY] {
        let mut k = [0u8; REV_KEY];
        k[0] = REV_PREFIX;
        let (main, sub) = self.rev();
        k[1..9].copy_from_slice(&main.to_be_bytes());
        k[9..].copy_from_slice(&sub.to_be_bytes());
        k
    }
}

/// The revision a key names, if it has a revision key's shape. Such keys
/// order as their revisions do, so a sorted `Vec` of revisions is in key
/// order too.
fn rev_of(key: &[u8]) -> Option<(u64, u32)> {
    match key {
        [REV_PREFIX, rest @ ..] if rest.len() == REV_KEY - 1 => {
            let mut main = [0u8; 8];
            main.copy_from_slice(&rest[..8]);
            let mut sub = [0u8; 4];
            sub.copy_from_slice(&rest[8..]);
            Some((u64::from_be_bytes(main), u32::from_be_bytes(sub)))
        }
        _ => None,
    }
}

/// A key as [`Locs::range`] yields it.
pub(super) enum Key<'a> {
    Rev([u8; REV_KEY]),
    Other(&'a IndexKey),
}

impl Key<'_> {
    pub(super) fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Rev(k) => k,
            Key::Other(k) => k.as_bytes(),
        }
    }
}

/// Every key's value, where it is (see the module's docs).
#[derive(Default)]
pub(super) struct Locs {
    /// Revision keys, sorted, each once (live or marked).
    revs: Chunked<RevSlot>,
    /// Marked slots in `revs`.
    removed: usize,
    /// Every other key, and revisions whose place fits no slot.
    other: BTreeMap<IndexKey, Loc>,
    /// Revision keys in `other`: while there are none, a revision is
    /// looked for in `revs` only.
    other_revs: usize,
}

impl Locs {
    /// Keys with a value.
    pub(super) fn len(&self) -> usize {
        self.revs.len() - self.removed + self.other.len()
    }

    /// Where `key`'s value is.
    pub(super) fn get(&self, key: &[u8]) -> Option<Loc> {
        match rev_of(key) {
            Some(rev) => self
                .find(rev)
                .and_then(|pos| self.revs.get(pos))
                .filter(|s| s.live())
                .map(RevSlot::loc)
                .or_else(|| self.other_rev(key)),
            None => self.other.get(key).copied(),
        }
    }

    /// A revision's place in `other`, if any is there.
    fn other_rev(&self, key: &[u8]) -> Option<Loc> {
        (self.other_revs > 0)
            .then(|| self.other.get(key).copied())
            .flatten()
    }

    /// Records that `key`'s value is at `loc`; returns where it was.
    pub(super) fn insert(&mut self, key: &[u8], loc: Loc) -> Option<Loc> {
        let Some((main, sub)) = rev_of(key) else {
            return self.other.insert(IndexKey::new(key), loc);
        };
        // A key is in one place: a revision moving between the slots and
        // the tree leaves the other.
        let Some(slot) = RevSlot::new((main, sub), loc) else {
            let in_slot = self.remove_slot((main, sub));
            let in_tree = self.other.insert(IndexKey::new(key), loc);
            if in_tree.is_none() {
                self.other_revs += 1;
            }
            return in_tree.or(in_slot);
        };
        if self.other_revs > 0
            && let Some(old) = self.other.remove(key)
        {
            self.other_revs -= 1;
            self.insert_slot(slot);
            return Some(old);
        }
        self.insert_slot(slot)
    }

    /// Puts `slot` in `revs`; returns the place its revision had there.
    fn insert_slot(&mut self, slot: RevSlot) -> Option<Loc> {
        let (main, sub) = slot.rev();
        // The common case: a revision newer than any.
        if self.revs.last().is_none_or(|last| last.rev() < (main, sub)) {
            self.revs.push(slot);
            return None;
        }
        let pos = self.revs.partition_point(|s| s.rev() < (main, sub));
        match self.revs.get_mut(pos) {
            Some(found) if found.rev() == (main, sub) => {
                let old = std::mem::replace(found, slot);
                if old.live() {
                    Some(old.loc())
                } else {
                    self.removed -= 1;
                    None
                }
            }
            _ => {
                self.revs.insert(pos, slot);
                None
            }
        }
    }

    /// Where revision `rev`'s slot is, if it has one.
    fn find(&self, rev: (u64, u32)) -> Option<chunked::Pos> {
        let pos = self.revs.partition_point(|s| s.rev() < rev);
        self.revs.get(pos).filter(|s| s.rev() == rev).map(|_| pos)
    }

    /// Forgets `key`; returns where its value was.
    pub(super) fn remove(&mut self, key: &[u8]) -> Option<Loc> {
        let Some(rev) = rev_of(key) else {
            return self.other.remove(key);
        };
        if let Some(old) = self.remove_slot(rev) {
            return Some(old);
        }
        let old = (self.other_revs > 0)
            .then(|| self.other.remove(key))
            .flatten()?;
        self.other_revs -= 1;
        Some(old)
    }

    /// Marks revision `rev`'s slot removed; returns its place.
    fn remove_slot(&mut self, rev: (u64, u32)) -> Option<Loc> {
        let pos = self.find(rev)?;
        let slot = self.revs.get_mut(pos)?;
        if !slot.live() {
            return None;
        }
        let old = slot.loc();
        slot.seq = REMOVED;
        self.removed += 1;
        if self.removed >= MIN_DEAD && 2 * self.removed >= self.revs.len() {
            self.revs.retain(RevSlot::live);
            self.removed = 0;
        }
        Some(old)
    }

    /// Forgets every key.
    pub(super) fn clear(&mut self) {
        self.revs.clear();
        self.removed = 0;
        self.other.clear();
        self.other_revs = 0;
    }

    /// The keys within `bounds` with their places, in key order.
    pub(super) fn range<'a>(
        &'a self,
        (start, end): (Bound<&'a [u8]>, Bound<&'a [u8]>),
    ) -> impl Iterator<Item = (Key<'a>, Loc)> + 'a {
        let first = match start {
            Bound::Included(k) => self.revs.partition_point(|s| s.key().as_slice() < k),
            Bound::Excluded(k) => self.revs.partition_point(|s| s.key().as_slice() <= k),
            Bound::Unbounded => (0, 0),
        };
        let past = match end {
            Bound::Included(k) => self.revs.partition_point(|s| s.key().as_slice() <= k),
            Bound::Excluded(k) => self.revs.partition_point(|s| s.key().as_slice() < k),
            Bound::Unbounded => (usize::MAX, 0),
        };
        let revs = self
            .revs
            .between(first, past)
            .filter(|s| s.live())
            .map(|s| (Key::Rev(s.key()), s.loc()));
        let other = self
            .other
            .range::<[u8], _>((start, end))
            .map(|(k, loc)| (Key::Other(k), *loc));
        crate::merged::merged(revs, other, key_bytes)
    }
}

/// An item's key as [`Locs::range`] orders it.
fn key_bytes<'x>(item: &'x (Key<'_>, Loc)) -> &'x [u8] {
    item.0.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merged::testing::{borrowed as as_ref, valid};
    use proptest::prelude::*;

    fn loc(n: u64) -> Loc {
        Loc {
            seq: n % 7,
            offset: n,
            len: (n % 1000) as u32,
        }
    }

    /// Revision keys over a small range (so that keys repeat), a few
    /// other keys on both sides of them, and keys of a revision key's
    /// prefix but another length.
    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            6 => (
                prop_oneof![4 => 0u64..300, 1 => (1u64 << 48) - 150..(1 << 48) + 150],
                prop_oneof![4 => 0u32..3, 1 => (1u32 << 16) - 2..(1 << 16) + 2],
            ).prop_map(|(m, s)| {
                let mut k = vec![REV_PREFIX];
                k.extend_from_slice(&m.to_be_bytes());
                k.extend_from_slice(&s.to_be_bytes());
                k
            }),
            1 => prop::sample::select(vec![
                b"m".to_vec(), b"a".to_vec(), b"s".to_vec(), b"r".to_vec(),
                b"r\x00".to_vec(), b"rzzzzzzzzzzzzzz".to_vec(), vec![REV_PREFIX, 0xff],
            ]),
        ]
    }

    fn bound() -> impl Strategy<Value = Bound<Vec<u8>>> {
        prop_oneof![
            key().prop_map(Bound::Included),
            key().prop_map(Bound::Excluded),
            Just(Bound::Unbounded),
        ]
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(Vec<u8>, u64),
        Remove(Vec<u8>),
        Get(Vec<u8>),
        Range(Bound<Vec<u8>>, Bound<Vec<u8>>),
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            // Places that fit a slot, and (offsets past 32 bits) places
            // that go to the tree: a key moves between them.
            8 => (key(), prop_oneof![0u64..10_000, any::<u64>()]).prop_map(|(k, n)| Op::Insert(k, n)),
            6 => key().prop_map(Op::Remove),
            2 => key().prop_map(Op::Get),
            2 => (bound(), bound()).prop_map(|(s, e)| Op::Range(s, e)),
            1 => Just(Op::Clear),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Any sequence of inserts, removals, lookups and ranges answers
        /// as one `BTreeMap` would, across the compaction of marked
        /// slots (the first revisions are written in order, as the store
        /// writes them, then removed, so that marks pile up).
        #[test]
        fn it_answers_as_one_tree_would(
            ops in prop::collection::vec(op(), 0..300),
            in_order in 0u64..3000,
        ) {
            let mut locs = Locs::default();
            let mut model: BTreeMap<Vec<u8>, Loc> = BTreeMap::new();
            let rev = |m: u64| {
                let mut k = vec![REV_PREFIX];
                k.extend_from_slice(&(m + 1000).to_be_bytes());
                k.extend_from_slice(&0u32.to_be_bytes());
                k
            };
            for m in 0..in_order {
                prop_assert_eq!(locs.insert(&rev(m), loc(m)), model.insert(rev(m), loc(m)));
            }
            for m in (0..in_order).filter(|m| m % 3 != 0) {
                prop_assert_eq!(locs.remove(&rev(m)), model.remove(&rev(m)));
            }
            for op in ops {
                match op {
                    Op::Insert(k, n) => {
                        prop_assert_eq!(locs.insert(&k, loc(n)), model.insert(k, loc(n)));
                    }
                    Op::Remove(k) => prop_assert_eq!(locs.remove(&k), model.remove(&k)),
                    Op::Get(k) => prop_assert_eq!(locs.get(&k), model.get(&k).copied()),
                    Op::Range(s, e) => {
                        if !valid(&s, &e) {
                            continue;
                        }
                        let got: Vec<(Vec<u8>, Loc)> = locs
                            .range((as_ref(&s), as_ref(&e)))
                            .map(|(k, l)| (k.as_bytes().to_vec(), l))
                            .collect();
                        let want: Vec<(Vec<u8>, Loc)> = model
                            .range::<[u8], _>((as_ref(&s), as_ref(&e)))
                            .map(|(k, l)| (k.clone(), *l))
                            .collect();
                        prop_assert_eq!(got, want);
                    }
                    Op::Clear => {
                        locs.clear();
                        model.clear();
                    }
                }
                prop_assert_eq!(locs.len(), model.len());
            }
            let all: Vec<(Vec<u8>, Loc)> = locs
                .range((Bound::Unbounded, Bound::Unbounded))
                .map(|(k, l)| (k.as_bytes().to_vec(), l))
                .collect();
            let want: Vec<(Vec<u8>, Loc)> = model.into_iter().collect();
            prop_assert_eq!(all, want);
        }
    }

    #[test]
    fn a_revision_takes_20_bytes_and_marked_slots_are_dropped_once_half() {
        assert_eq!(std::mem::size_of::<RevSlot>(), 20);
        for rev in [(0, 0), (1, 7), ((1 << 48) - 1, (1 << 16) - 1)] {
            let slot = RevSlot::new(rev, loc(9)).unwrap();
            assert_eq!((slot.rev(), slot.loc()), (rev, loc(9)));
        }
        for rev in [(1 << 48, 0), (1, 1 << 16), (u64::MAX, u32::MAX)] {
            assert!(RevSlot::new(rev, loc(9)).is_none(), "{rev:?} fits no slot");
        }
        let mut locs = Locs::default();
        let key = |m: u64| {
            let mut k = vec![REV_PREFIX];
            k.extend_from_slice(&m.to_be_bytes());
            k.extend_from_slice(&0u32.to_be_bytes());
            k
        };
        for m in 1..=4 * MIN_DEAD as u64 {
            locs.insert(&key(m), loc(m));
        }
        for m in 1..=2 * MIN_DEAD as u64 - 1 {
            locs.remove(&key(m));
        }
        assert_eq!(
            (locs.revs.len(), locs.removed),
            (4 * MIN_DEAD, 2 * MIN_DEAD - 1)
        );
        locs.remove(&key(2 * MIN_DEAD as u64));
        assert_eq!((locs.revs.len(), locs.removed), (2 * MIN_DEAD, 0));
        assert_eq!(locs.len(), 2 * MIN_DEAD);
        assert_eq!(
            locs.get(&key(3 * MIN_DEAD as u64)),
            Some(loc(3 * MIN_DEAD as u64))
        );
    }
}

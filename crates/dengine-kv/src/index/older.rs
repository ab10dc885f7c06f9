//! A key's writes before its newest, in a few bytes each.
//!
//! A store that is not compacted keeps every revision of every key, and
//! with 16 bytes per write (in a `Vec` that doubles) the index took about
//! 20 bytes per revision kept: at 2.4 million revisions, the index was a
//! quarter of a member's memory. A write is now its distance to the next
//! one (the next newer write of the key, or the newest), which is small,
//! in a variable-length integer: 2-4 bytes per put of a key among a
//! hundred thousand.
//!
//! Each write is encoded as an optional `extra` then a `head`, both
//! LEB128 (7 bits a byte, the top bit set on every byte but a number's
//! last):
//! - `head` = `distance << 1 | has_extra`, where `distance` is the next
//!   write's main revision minus this one's (never negative: a key's
//!   writes are in revision order, and below 2^63);
//! - `extra` = `sub << 1 | tombstone`, present only for a tombstone or a
//!   sub revision other than 0 (a put is usually a command's only write).
//!
//! The writes are read from the newest back: a number's last byte is the
//! only one with its top bit clear, so where the number before it ends is
//! found by looking back, and each write's main revision follows from the
//! next one's. That is also the order reads want (a read at a recent
//! revision stops after a write or two), and compaction, which drops the
//! oldest writes, only cuts bytes off the front: the writes kept do not
//! change.

use super::Packed;

/// Writes, oldest first, each relative to the one after it (see the
/// module's docs). Empty: no room on the heap.
#[derive(Clone, Debug, Default)]
pub(super) struct OlderWrites {
    bytes: Vec<u8>,
}

impl OlderWrites {
    /// Appends `write`, whose next newer write has main revision
    /// `next_main` (at least `write`'s).
    pub(super) fn push(&mut self, write: Packed, next_main: i64) {
        debug_assert!(next_main >= write.main);
        let distance = next_main.wrapping_sub(write.main) as u64;
        let (sub, tombstone) = (write.rev().sub, write.tombstone());
        let has_extra = sub != 0 || tombstone;
        if self.bytes.capacity() == 0 {
            // Room for one write: a `Vec` would take 8 bytes anyway.
            self.bytes.reserve_exact(8);
        }
        if has_extra {
            put_varint(&mut self.bytes, u64::from(sub) << 1 | u64::from(tombstone));
        }
        put_varint(&mut self.bytes, distance << 1 | u64::from(has_extra));
    }

    /// The writes from the newest back, each with the offset where it
    /// starts; `newest_main` is the main revision of the write after the
    /// last one here.
    pub(super) fn newest_first(&self, newest_main: i64) -> NewestFirst<'_> {
        NewestFirst {
            bytes: &self.bytes,
            end: self.bytes.len(),
            next_main: newest_main,
        }
    }

    /// Forgets the writes that start before `offset` (an offset
    /// [`OlderWrites::newest_first`] gave, or the length: all of them).
    pub(super) fn drop_before(&mut self, offset: usize) {
        if offset >= self.bytes.len() {
            self.bytes = Vec::new();
        } else {
            self.bytes.drain(..offset);
            // A compaction gives back the room of what it forgot.
            if self.bytes.capacity() > 2 * self.bytes.len().max(8) {
                self.bytes.shrink_to_fit();
            }
        }
    }

    /// Whether there are no writes.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Bytes of room on the heap.
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Bytes taken by the writes.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.bytes.len()
    }
}

/// The iterator of [`OlderWrites::newest_first`].
pub(super) struct NewestFirst<'a> {
    bytes: &'a [u8],
    /// Where the next write to yield ends.
    end: usize,
    /// The main revision of the write after it.
    next_main: i64,
}

impl Iterator for NewestFirst<'_> {
    /// Where the write starts, and the write.
    type Item = (usize, Packed);

    fn next(&mut self) -> Option<(usize, Packed)> {
        let (start, head) = varint_before(self.bytes, self.end)?;
        let (start, extra) = if head & 1 == 1 {
            varint_before(self.bytes, start)?
        } else {
            (start, 0)
        };
        let main = self.next_main.wrapping_sub((head >> 1) as i64);
        self.end = start;
        self.next_main = main;
        // `extra` came from a sub revision (`u32`) and a flag.
        let sub = (extra >> 1) as u32;
        Some((start, Packed::from_parts(main, sub, extra & 1 == 1)))
    }
}

/// Appends `n` in LEB128.
fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// The number that ends at `end` (exclusive), and where it starts; `None`
/// at the start of the bytes.
fn varint_before(bytes: &[u8], end: usize) -> Option<(usize, u64)> {
    let last = end.checked_sub(1)?;
    let mut start = last;
    while start > 0 && bytes[start - 1] & 0x80 != 0 {
        start -= 1;
    }
    let mut n = 0u64;
    for (i, b) in bytes[start..end].iter().enumerate() {
        n |= u64::from(b & 0x7f) << (7 * i);
    }
    Some((start, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Writes in revision order, from (distance, sub, tombstone) steps.
    fn writes(steps: &[(u64, u32, bool)]) -> Vec<Packed> {
        let mut main = 1i64;
        steps
            .iter()
            .map(|&(d, sub, tombstone)| {
                main = main.saturating_add(d as i64);
                Packed::from_parts(main, sub, tombstone)
            })
            .collect()
    }

    fn encoded(ws: &[Packed], newest_main: i64) -> OlderWrites {
        let mut older = OlderWrites::default();
        for (i, w) in ws.iter().enumerate() {
            older.push(*w, ws.get(i + 1).map_or(newest_main, |n| n.main));
        }
        older
    }

    #[test]
    fn a_put_among_many_keys_takes_a_few_bytes() {
        // Puts 100,000 revisions apart: 3 bytes each.
        let ws = writes(&[(0, 0, false), (100_000, 0, false), (100_000, 0, false)]);
        let older = encoded(&ws, ws[2].main + 100_000);
        assert_eq!(older.len(), 9);
        assert_eq!(older.capacity(), 16);
        // A tombstone, or a sub revision, takes a byte or more besides.
        let ws = writes(&[(0, 0, true), (1, 3, false)]);
        assert_eq!(encoded(&ws, 10).len(), 4);
    }

    #[test]
    fn the_extremes_read_back() {
        let ws = vec![
            Packed::from_parts(1, 0, false),
            Packed::from_parts(1, u32::MAX >> 1, true),
            Packed::from_parts(i64::MAX, 0, true),
        ];
        let older = encoded(&ws, i64::MAX);
        let back: Vec<Packed> = older.newest_first(i64::MAX).map(|(_, w)| w).collect();
        assert_eq!(back, ws.iter().rev().copied().collect::<Vec<_>>());
    }

    proptest! {
        #[test]
        fn writes_read_back_newest_first_and_survive_dropping_the_oldest(
            steps in prop::collection::vec(
                (prop_oneof![0u64..3, 0u64..300, 0u64..100_000, 0u64..(1 << 40)],
                 prop_oneof![Just(0u32), 0u32..(1 << 31)],
                 any::<bool>()),
                0..40),
            last in 0u64..1000,
            cut in 0usize..41,
        ) {
            let ws = writes(&steps);
            let newest_main = ws.last().map_or(1, |w| w.main).saturating_add(last as i64);
            let mut older = encoded(&ws, newest_main);
            let back: Vec<(usize, Packed)> = older.newest_first(newest_main).collect();
            let want: Vec<Packed> = ws.iter().rev().copied().collect();
            prop_assert_eq!(back.iter().map(|(_, w)| *w).collect::<Vec<_>>(), want);
            prop_assert_eq!(older.is_empty(), ws.is_empty());
            // Drop the `cut` oldest writes: the rest read back the same.
            let cut = cut.min(ws.len());
            let offset = if cut == ws.len() { older.len() } else { back[ws.len() - 1 - cut].0 };
            older.drop_before(offset);
            let kept: Vec<Packed> = older.newest_first(newest_main).map(|(_, w)| w).collect();
            prop_assert_eq!(kept, ws[cut..].iter().rev().copied().collect::<Vec<_>>());
            if cut == ws.len() {
                prop_assert_eq!(older.capacity(), 0);
            }
        }
    }
}

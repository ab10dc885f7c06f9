//! Two ascending iterators over disjoint keys, read as one. The index's
//! key order and the record log's map each keep most keys in a sorted
//! `Vec` and the rest in a tree, and their ranges read both.

use std::iter::Peekable;

/// The items of `a` and `b`, which each ascend by `key` and share no key,
/// in order (see [`merged`]).
pub(crate) struct Merged<A: Iterator, B: Iterator, F> {
    a: Peekable<A>,
    b: Peekable<B>,
    key: F,
}

/// Reads `a` and `b` as one ascending iterator.
pub(crate) fn merged<A: Iterator, B: Iterator, F>(a: A, b: B, key: F) -> Merged<A, B, F> {
    Merged {
        a: a.peekable(),
        b: b.peekable(),
        key,
    }
}

impl<T, K, A, B, F> Iterator for Merged<A, B, F>
where
    A: Iterator<Item = T>,
    B: Iterator<Item = T>,
    K: Ord + ?Sized,
    F: for<'x> Fn(&'x T) -> &'x K,
{
    type Item = T;

    fn next(&mut self) -> Option<T> {
        match (self.a.peek(), self.b.peek()) {
            (Some(a), Some(b)) if (self.key)(b) < (self.key)(a) => self.b.next(),
            (Some(_), _) => self.a.next(),
            (None, _) => self.b.next(),
        }
    }
}

/// What the property tests of both structures share.
#[cfg(test)]
pub(crate) mod testing {
    use std::ops::Bound;

    /// Bounds `BTreeMap::range` takes (it panics on the others; the store
    /// never asks for them).
    pub(crate) fn valid(s: &Bound<Vec<u8>>, e: &Bound<Vec<u8>>) -> bool {
        match (s, e) {
            (Bound::Excluded(a), Bound::Excluded(b)) => a < b,
            (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => {
                a <= b
            }
            _ => true,
        }
    }

    /// A bound of owned bytes, borrowed.
    pub(crate) fn borrowed(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
        match b {
            Bound::Included(k) => Bound::Included(k.as_slice()),
            Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
            Bound::Unbounded => Bound::Unbounded,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_ascending_runs_read_as_one() {
        let a = [1, 4, 5, 9];
        let b = [2, 3, 6, 10, 11];
        fn id(x: &i32) -> &i32 {
            x
        }
        let all: Vec<i32> = super::merged(a.into_iter(), b.into_iter(), id).collect();
        assert_eq!(all, [1, 2, 3, 4, 5, 6, 9, 10, 11]);
        let none: Vec<i32> = super::merged([].into_iter(), [7].into_iter(), id).collect();
        assert_eq!(none, [7]);
    }
}

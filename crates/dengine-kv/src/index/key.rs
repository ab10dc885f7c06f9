//! The index's key: up to [`INLINE`] bytes stored in place, longer keys on
//! the heap.
//!
//! A lookup in the index compares the key sought with a few dozen keys on
//! its way down the tree. With `Vec<u8>` keys each comparison followed a
//! pointer to a separate allocation, a cache miss at a hundred thousand
//! keys: the index lookup was a third of the store's CPU on the put path.
//! Short keys (most keys, and every key of the in-process benchmark) now
//! sit in the tree's nodes and are compared where they lie; they also save
//! an allocation each.

use std::borrow::Borrow;
use std::cmp::Ordering;

/// The most bytes a key stored in place holds.
pub(crate) const INLINE: usize = 22;

/// A key of the index, ordered and compared as its bytes.
#[derive(Clone)]
pub(crate) enum IndexKey {
    /// A key of at most [`INLINE`] bytes: its length and bytes.
    Inline(u8, [u8; INLINE]),
    /// A longer key.
    Heap(Box<[u8]>),
}

impl IndexKey {
    pub(crate) fn new(key: &[u8]) -> IndexKey {
        if key.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..key.len()].copy_from_slice(key);
            IndexKey::Inline(key.len() as u8, bytes)
        } else {
            IndexKey::Heap(key.into())
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            IndexKey::Inline(len, bytes) => &bytes[..*len as usize],
            IndexKey::Heap(b) => b,
        }
    }

    pub(crate) fn to_vec(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

impl Borrow<[u8]> for IndexKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for IndexKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for IndexKey {}

/// Hashed as its bytes, as `[u8]` is, so that a map keyed by `IndexKey`
/// is searched with a `&[u8]`.
impl std::hash::Hash for IndexKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialOrd for IndexKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for IndexKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_as_their_bytes_whichever_way_they_are_stored() {
        let raw: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            b"a".to_vec(),
            b"ab".to_vec(),
            vec![b'a'; INLINE],
            vec![b'a'; INLINE + 1],
            vec![b'a'; 100],
            b"b".to_vec(),
            vec![0xff; INLINE + 5],
        ];
        for a in &raw {
            let ka = IndexKey::new(a);
            assert_eq!(ka.as_bytes(), a.as_slice());
            assert_eq!(matches!(ka, IndexKey::Inline(..)), a.len() <= INLINE);
            for b in &raw {
                let kb = IndexKey::new(b);
                assert_eq!(ka.cmp(&kb), a.cmp(b), "{a:?} vs {b:?}");
                let borrowed: &[u8] = kb.borrow();
                assert_eq!(borrowed, b.as_slice());
            }
        }
    }
}

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
        match (self, other) {
            // Compared as words, without a call to `memcmp`: a tree insert
            // compares a few dozen keys. The bytes after a key's length are
            // zeros, so the padded arrays order as the keys do until one
            // key runs out; where the arrays are equal, the shorter key (a
            // prefix of the other) comes first.
            (IndexKey::Inline(la, a), IndexKey::Inline(lb, b)) => {
                words(a).cmp(&words(b)).then(la.cmp(lb))
            }
            _ => self.as_bytes().cmp(other.as_bytes()),
        }
    }
}

/// An inline key's bytes as big-endian words, which order as the bytes do.
fn words(bytes: &[u8; INLINE]) -> (u64, u64, u64) {
    let mut padded = [0u8; 24];
    padded[..INLINE].copy_from_slice(bytes);
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&padded[i..i + 8]);
        u64::from_be_bytes(w)
    };
    (word(0), word(8), word(16))
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
            b"ab\0".to_vec(),
            vec![0; INLINE],
            vec![1, 2, 3, 4, 5, 6, 7, 8, 9],
            vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 0],
            vec![1, 2, 3, 4, 5, 6, 7, 8, 10],
            vec![0xff; INLINE],
            vec![0x80; 17],
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

    /// Keys of 0 to 25 bytes from {0, 1, 0xff}: pairs share prefixes
    /// often, and cross the inline length.
    fn key() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::strategy::Strategy;
        proptest::collection::vec((0u8..3).prop_map(|b| if b == 2 { 0xff } else { b }), 0..26)
    }

    proptest::proptest! {
        #[test]
        fn any_two_keys_order_as_their_bytes(a in key(), b in key()) {
            let (ka, kb) = (IndexKey::new(&a), IndexKey::new(&b));
            proptest::prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            proptest::prop_assert_eq!(ka == kb, a == b);
        }
    }
}

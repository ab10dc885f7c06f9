//! A sequence kept in chunks of at most [`CHUNK`] items, for the record
//! log's map of revisions: a `Vec` of a million 32-byte slots (as they
//! were then) doubles by copying 32 MiB into a new 64 MiB block, and for that moment a member
//! held both (measured: its peak resident memory 30 MiB above what it held
//! a moment later). Chunks grow one at a time, and an insert in the middle
//! moves one chunk's items, not the whole sequence's.

/// Items per chunk at most: 160 KiB of 20-byte slots.
pub(super) const CHUNK: usize = 8192;

/// Where an item is: its chunk and its place in it. Positions order as
/// the items do; the position past the last item is (chunks, 0).
pub(super) type Pos = (usize, usize);

/// A sequence of items in chunks (see the module's docs). Every chunk
/// holds at least one item.
#[derive(Debug)]
pub(super) struct Chunked<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Chunked<T> {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn last(&self) -> Option<&T> {
        self.chunks.last().and_then(|c| c.last())
    }

    /// Adds `item` at the end.
    pub(super) fn push(&mut self, item: T) {
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => last.push(item),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(item);
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
    }

    /// The position of the first item for which `pred` is false, where
    /// `pred` is true of every item before some point and false after it
    /// (as [`slice::partition_point`]).
    pub(super) fn partition_point(&self, mut pred: impl FnMut(&T) -> bool) -> Pos {
        // The first chunk whose last item fails: the point is in it.
        let ci = self
            .chunks
            .partition_point(|c| c.last().is_some_and(&mut pred));
        match self.chunks.get(ci) {
            Some(chunk) => (ci, chunk.partition_point(pred)),
            None => (ci, 0),
        }
    }

    pub(super) fn get(&self, (ci, i): Pos) -> Option<&T> {
        self.chunks.get(ci)?.get(i)
    }

    pub(super) fn get_mut(&mut self, (ci, i): Pos) -> Option<&mut T> {
        self.chunks.get_mut(ci)?.get_mut(i)
    }

    /// Puts `item` at `pos` (from [`Chunked::partition_point`]), moving
    /// the items after it in its chunk; a full chunk is split in two.
    pub(super) fn insert(&mut self, (ci, i): Pos, item: T) {
        // Past the last item: at the end of the last chunk, or a new one.
        if ci >= self.chunks.len() {
            self.push(item);
            return;
        }
        let chunk = &mut self.chunks[ci];
        chunk.insert(i, item);
        if chunk.len() > CHUNK {
            let back = chunk.split_off(chunk.len() / 2);
            self.chunks.insert(ci + 1, back);
        }
        self.len += 1;
    }

    /// The items from `from` up to (not including) `to`, in order.
    pub(super) fn between(&self, from: Pos, to: Pos) -> impl Iterator<Item = &T> + '_ {
        let ((fc, fi), (tc, ti)) = (from, to);
        // Chunks `fc` to `tc`: the first from `fi`, the last (if `tc`
        // names one, not the end) up to `ti`.
        self.chunks
            .iter()
            .enumerate()
            .skip(fc)
            .take_while(move |&(n, _)| n <= tc)
            .flat_map(move |(n, c)| {
                let start = if n == fc { fi } else { 0 };
                let end = if n == tc { ti } else { c.len() };
                c.get(start..end.max(start)).unwrap_or_default()
            })
    }

    /// Keeps the items `keep` says to; chunks left empty go, and those
    /// left mostly empty give their room back.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        for chunk in &mut self.chunks {
            chunk.retain(&mut keep);
            if chunk.capacity() > 2 * chunk.len() {
                chunk.shrink_to_fit();
            }
        }
        self.chunks.retain(|c| !c.is_empty());
        self.len = self.chunks.iter().map(Vec::len).sum();
    }

    pub(super) fn clear(&mut self) {
        *self = Chunked::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Push,
        Insert(u32),
        Retain(u32),
        Between(u32, u32),
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            20 => Just(Op::Push),
            4 => any::<u32>().prop_map(Op::Insert),
            1 => (2u32..5).prop_map(Op::Retain),
            3 => (any::<u32>(), any::<u32>()).prop_map(|(a, b)| Op::Between(a, b)),
            1 => Just(Op::Clear),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Kept sorted by its users: pushes of increasing values and
        /// inserts where `partition_point` says, then every read answers
        /// as a sorted `Vec` does, across chunk splits and removals.
        #[test]
        fn it_answers_as_one_sorted_vec_would(
            ops in prop::collection::vec(op(), 0..200),
            bulk in 0usize..(3 * CHUNK),
        ) {
            let mut c = Chunked::default();
            let mut model: Vec<u64> = Vec::new();
            let mut next = 0u64;
            let mut step = |c: &mut Chunked<u64>, model: &mut Vec<u64>, op: Op| {
                match op {
                    Op::Push => {
                        next += 1000;
                        c.push(next);
                        model.push(next);
                    }
                    Op::Insert(v) => {
                        let v = u64::from(v) % (next + 1000);
                        let pos = c.partition_point(|&x| x < v);
                        let at = model.partition_point(|&x| x < v);
                        c.insert(pos, v);
                        model.insert(at, v);
                    }
                    Op::Retain(m) => {
                        c.retain(|&x| x % u64::from(m) != 0);
                        model.retain(|&x| x % u64::from(m) != 0);
                    }
                    Op::Between(a, b) => {
                        let (a, b) = (u64::from(a) % (next + 1000), u64::from(b) % (next + 1000));
                        let from = c.partition_point(|&x| x < a);
                        let to = c.partition_point(|&x| x < b);
                        let got: Vec<u64> = c.between(from, to).copied().collect();
                        let (fa, fb) = (model.partition_point(|&x| x < a), model.partition_point(|&x| x < b));
                        let want = model.get(fa..fb.max(fa)).unwrap_or_default().to_vec();
                        assert_eq!(got, want, "between {a} and {b}");
                        assert_eq!(c.get(from), model.get(fa));
                    }
                    Op::Clear => {
                        c.clear();
                        model.clear();
                    }
                }
                assert_eq!(c.len(), model.len());
                assert_eq!(c.last(), model.last());
            };
            for _ in 0..bulk {
                step(&mut c, &mut model, Op::Push);
            }
            for op in ops {
                step(&mut c, &mut model, op);
            }
            let all: Vec<u64> = c.between((0, 0), (usize::MAX, 0)).copied().collect();
            prop_assert_eq!(all, model);
        }
    }
}

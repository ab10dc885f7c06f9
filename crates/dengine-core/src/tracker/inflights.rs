//! Flow control: the append messages sent to one follower in the
//! `Replicate` state and not yet acknowledged.

use std::collections::VecDeque;

use crate::types::LogIndex;

/// A sliding window of in-flight append messages to one follower, limited by
/// message count and (optionally) by total entry bytes.
///
/// Each message is remembered by the index of its last entry and the bytes of
/// its entries. Messages must be added in increasing index order; an
/// acknowledgement of index `i` frees every message ending at or below `i`.
#[derive(Clone, Debug)]
pub struct Inflights {
    /// `(last_index, bytes)` of each in-flight message, oldest first.
    queue: VecDeque<(LogIndex, u64)>,
    /// Sum of the bytes in `queue`.
    bytes: u64,
    /// The most messages allowed in flight.
    max_count: usize,
    /// The most bytes allowed in flight; 0 means no byte limit.
    max_bytes: u64,
}

impl Inflights {
    /// An empty window allowing `max_count` messages and `max_bytes` bytes
    /// in flight (`max_bytes == 0`: no byte limit).
    ///
    /// `max_count` should be at least 1 (the configuration checks it); with
    /// 0 the window is always full.
    pub fn new(max_count: usize, max_bytes: u64) -> Self {
        Inflights {
            queue: VecDeque::new(),
            bytes: 0,
            max_count,
            max_bytes,
        }
    }

    /// Records a message whose last entry is `last_index` carrying `bytes`
    /// bytes of entries. Indexes must be added in increasing order.
    ///
    /// Adding to a full window is allowed (the window then stays full until
    /// enough is freed); callers check [`Inflights::full`] before sending.
    pub fn add(&mut self, last_index: LogIndex, bytes: u64) {
        debug_assert!(
            self.queue.back().is_none_or(|&(last, _)| last < last_index),
            "inflight indexes must increase"
        );
        self.queue.push_back((last_index, bytes));
        self.bytes = self.bytes.saturating_add(bytes);
    }

    /// Frees every message whose last index is `<= index`.
    pub fn free_le(&mut self, index: LogIndex) {
        while let Some(&(last, bytes)) = self.queue.front() {
            if last > index {
                break;
            }
            self.queue.pop_front();
            self.bytes = self.bytes.saturating_sub(bytes);
        }
    }

    /// Frees the oldest message, if any, making room for one more.
    pub fn free_first_one(&mut self) {
        if let Some((_, bytes)) = self.queue.pop_front() {
            self.bytes = self.bytes.saturating_sub(bytes);
        }
    }

    /// Whether no more messages may be sent: the count limit is reached, or a
    /// byte limit is set and reached.
    pub fn full(&self) -> bool {
        self.queue.len() >= self.max_count || (self.max_bytes > 0 && self.bytes >= self.max_bytes)
    }

    /// The number of messages in flight.
    pub fn count(&self) -> usize {
        self.queue.len()
    }

    /// Whether no message is in flight.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The bytes of entries in flight.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The last index of the newest message in flight, if any.
    pub fn last(&self) -> Option<LogIndex> {
        self.queue.back().map(|&(last, _)| last)
    }

    /// Forgets every message in flight (keeping the limits and the allocated
    /// capacity).
    pub fn reset(&mut self) {
        self.queue.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(i: u64) -> LogIndex {
        LogIndex(i)
    }

    #[test]
    fn full_by_count() {
        let mut inf = Inflights::new(3, 0);
        assert!(!inf.full());
        inf.add(idx(1), 100);
        inf.add(idx(2), 100);
        assert!(!inf.full());
        inf.add(idx(3), 100);
        assert!(inf.full());
        assert_eq!(inf.count(), 3);
        assert_eq!(inf.bytes(), 300);
        inf.free_le(idx(1));
        assert!(!inf.full());
        assert_eq!(inf.count(), 2);
        assert_eq!(inf.bytes(), 200);
    }

    #[test]
    fn full_by_bytes() {
        let mut inf = Inflights::new(10, 250);
        inf.add(idx(5), 100);
        inf.add(idx(9), 100);
        assert!(!inf.full());
        inf.add(idx(12), 50);
        assert!(inf.full(), "250 bytes reaches the 250 byte limit");
        inf.free_le(idx(9));
        assert!(!inf.full());
        assert_eq!(inf.bytes(), 50);
        // One message larger than the limit is allowed, then the window is full.
        inf.add(idx(20), 1000);
        assert!(inf.full());
    }

    #[test]
    fn zero_bytes_means_no_byte_limit() {
        let mut inf = Inflights::new(2, 0);
        inf.add(idx(1), u64::MAX);
        assert!(!inf.full());
        inf.add(idx(2), 10);
        assert!(inf.full());
        assert_eq!(inf.bytes(), u64::MAX, "byte count saturates");
    }

    #[test]
    fn free_le_frees_a_prefix() {
        let mut inf = Inflights::new(10, 0);
        for i in [2, 4, 6, 8, 10] {
            inf.add(idx(i), i);
        }
        inf.free_le(idx(1));
        assert_eq!(inf.count(), 5);
        inf.free_le(idx(5));
        assert_eq!(inf.count(), 3);
        assert_eq!(inf.bytes(), 6 + 8 + 10);
        inf.free_le(idx(8));
        assert_eq!(inf.count(), 1);
        assert_eq!(inf.last(), Some(idx(10)));
        inf.free_le(idx(100));
        assert!(inf.is_empty());
        assert_eq!(inf.bytes(), 0);
        assert_eq!(inf.last(), None);
    }

    #[test]
    fn free_first_one_and_reset() {
        let mut inf = Inflights::new(2, 0);
        inf.add(idx(3), 7);
        inf.add(idx(4), 9);
        assert!(inf.full());
        inf.free_first_one();
        assert!(!inf.full());
        assert_eq!(inf.bytes(), 9);
        inf.free_first_one();
        inf.free_first_one();
        assert!(inf.is_empty());
        inf.add(idx(5), 1);
        inf.add(idx(6), 1);
        inf.reset();
        assert_eq!((inf.count(), inf.bytes()), (0, 0));
        assert!(!inf.full());
    }

    #[test]
    fn zero_count_is_always_full() {
        let inf = Inflights::new(0, 0);
        assert!(inf.full());
    }
}

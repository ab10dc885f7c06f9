//! The records of the writes applied since the last flush, in revision
//! order, in one buffer: a put or a delete encodes its record at the end
//! of it, without an allocation of its own, and the flush hands the
//! records to the backend borrowed (see `KvStateMachine::write_pending`).

use crate::index::Revision;

/// The buffer's room kept after a flush, at most (a restore's batch is
/// far larger than a usual one).
const KEEP_BYTES: usize = 4 << 20;
/// The records' room kept after a flush, at most.
const KEEP_RECORDS: usize = 16 << 10;

/// Records waiting for the backend (see the module's docs).
#[derive(Clone, Debug, Default)]
pub(crate) struct Pending {
    bytes: Vec<u8>,
    /// Each record's revision, and where it is in `bytes`; in revision
    /// order.
    records: Vec<(Revision, usize, usize)>,
}

impl Pending {
    /// Adds the record of the write at `rev`, newer than any here, as
    /// `encode` appends it to the buffer.
    pub(crate) fn push_with(&mut self, rev: Revision, encode: impl FnOnce(&mut Vec<u8>)) {
        debug_assert!(self.records.last().is_none_or(|(r, _, _)| *r < rev));
        let start = self.bytes.len();
        encode(&mut self.bytes);
        self.records.push((rev, start, self.bytes.len()));
    }

    /// The record of the write at `rev`, if it waits here.
    pub(crate) fn get(&self, rev: Revision) -> Option<&[u8]> {
        let i = self.records.binary_search_by_key(&rev, |r| r.0).ok()?;
        let (_, start, end) = self.records[i];
        Some(&self.bytes[start..end])
    }

    /// Every record, in revision order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Revision, &[u8])> {
        self.records
            .iter()
            .map(|&(rev, start, end)| (rev, &self.bytes[start..end]))
    }

    /// How many records wait.
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// Forgets every record, keeping the room of a usual batch.
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.records.clear();
        self.bytes.shrink_to(KEEP_BYTES);
        self.records.shrink_to(KEEP_RECORDS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_found_by_revision_and_cleared_with_their_room_bounded() {
        let rev = |main| Revision { main, sub: 0 };
        let mut p = Pending::default();
        for main in 1..=100 {
            p.push_with(rev(main), |out| {
                out.extend(std::iter::repeat_n(main as u8, main as usize))
            });
        }
        assert_eq!(p.len(), 100);
        assert_eq!(p.get(rev(7)), Some(&[7u8; 7][..]));
        assert_eq!(p.get(rev(101)), None);
        let all: Vec<(i64, usize)> = p.iter().map(|(r, b)| (r.main, b.len())).collect();
        assert_eq!(all, (1..=100).map(|m| (m, m as usize)).collect::<Vec<_>>());
        p.push_with(rev(200), |out| out.resize(out.len() + 2 * KEEP_BYTES, 1));
        p.clear();
        assert_eq!((p.len(), p.get(rev(7))), (0, None));
        assert!(p.bytes.capacity() <= KEEP_BYTES);
    }
}

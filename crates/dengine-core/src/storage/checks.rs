//! The rules every [`LogStore`](super::LogStore) applies the same way, as
//! pure functions over indexes and metadata: which appends, identities and
//! compactions are allowed, and what a snapshot changes. The memory, sled
//! and RocksDB stores call them, so they agree on the rules and on the
//! words of their refusals.

use crate::error::StorageError;
use crate::storage::StoreIdentity;
use crate::types::{Entry, EntryId, HardState, LogIndex, SnapshotMeta};

/// Why a store refuses a write, or a stored state when it opens.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreRefusal {
    /// Entries appended at an index the log has compacted.
    #[error("log index {0} is compacted")]
    Compacted(LogIndex),
    /// Entries appended past the end of the log.
    #[error("append at {first} leaves a gap after {last}")]
    Gap {
        /// The first appended index.
        first: LogIndex,
        /// The log's last index.
        last: LogIndex,
    },
    /// Appended entries whose indexes do not follow one another.
    #[error("appended entries are not consecutive: entry {found} where {expected} was expected")]
    NotConsecutive {
        /// The index found.
        found: LogIndex,
        /// The index that should have been there.
        expected: LogIndex,
    },
    /// An identity other than the one recorded.
    #[error(
        "the store belongs to cluster {} node {}, not cluster {} node {}",
        recorded.cluster_id, recorded.node_id, wanted.cluster_id, wanted.node_id
    )]
    OtherIdentity {
        /// The identity the store holds.
        recorded: StoreIdentity,
        /// The identity asked for.
        wanted: StoreIdentity,
    },
    /// A compaction of entries no snapshot covers.
    #[error("compaction to {index} past the snapshot at {snapshot}")]
    CompactionPastSnapshot {
        /// The index compaction was asked up to.
        index: LogIndex,
        /// The last index the snapshot covers.
        snapshot: LogIndex,
    },
    /// A stored log whose base no snapshot covers.
    #[error(
        "the log's base (index {base}) is past the snapshot (index {snapshot}): entries up \
         to {base} were compacted without a snapshot covering them"
    )]
    BasePastSnapshot {
        /// The index of the log's base.
        base: LogIndex,
        /// The last index the snapshot covers.
        snapshot: LogIndex,
    },
}

impl StoreRefusal {
    /// The storage error to return: [`StorageError::Compacted`] for
    /// [`StoreRefusal::Compacted`] (the caller asked for what is gone, not
    /// a failure of the store), any other refusal made fatal by `fatal`,
    /// which names the store.
    pub fn into_storage_error(self, fatal: impl FnOnce(Self) -> StorageError) -> StorageError {
        match self {
            StoreRefusal::Compacted(index) => StorageError::Compacted(index),
            other => fatal(other),
        }
    }
}

/// For a store with no name to give (the memory store).
impl From<StoreRefusal> for StorageError {
    fn from(r: StoreRefusal) -> StorageError {
        r.into_storage_error(|r| StorageError::Fatal(r.to_string()))
    }
}

/// Checks that `entries` may be appended to a log holding `first..=last`
/// (`last == first - 1` when it is empty): they are consecutive, and the
/// first one is neither compacted nor past `last + 1`. What they replace
/// (the stored entries from the first one's index on) is the caller's
/// business.
pub fn check_append(
    entries: &[Entry],
    first: LogIndex,
    last: LogIndex,
) -> Result<(), StoreRefusal> {
    let Some(head) = entries.first() else {
        return Ok(());
    };
    if head.index < first {
        return Err(StoreRefusal::Compacted(head.index));
    }
    if head.index > last.next() {
        return Err(StoreRefusal::Gap {
            first: head.index,
            last,
        });
    }
    let mut expected = head.index;
    for e in entries {
        if e.index != expected {
            return Err(StoreRefusal::NotConsecutive {
                found: e.index,
                expected,
            });
        }
        expected = expected.next();
    }
    Ok(())
}

/// Whether `wanted` must be recorded in a store that holds `recorded`:
/// `true` if it holds none, `false` if it holds `wanted` already; a
/// different identity is never overwritten.
pub fn check_identity(
    recorded: Option<StoreIdentity>,
    wanted: StoreIdentity,
) -> Result<bool, StoreRefusal> {
    match recorded {
        None => Ok(true),
        Some(recorded) if recorded == wanted => Ok(false),
        Some(recorded) => Err(StoreRefusal::OtherIdentity { recorded, wanted }),
    }
}

/// Whether the metadata of a snapshot the node made, `meta`, replaces the
/// `saved` one: only a newer snapshot does (an older one may finish after
/// a newer one was installed).
pub fn is_newer_snapshot(saved: &SnapshotMeta, meta: &SnapshotMeta) -> bool {
    meta.last_index > saved.last_index
}

/// The hard state after installing `snapshot`, if it changes: whatever
/// the snapshot covers is committed.
pub fn hard_state_after_install(
    hard_state: &HardState,
    snapshot: &SnapshotMeta,
) -> Option<HardState> {
    (hard_state.commit < snapshot.last_index).then_some(HardState {
        commit: snapshot.last_index,
        ..*hard_state
    })
}

/// Whether compaction up to `index` has anything to do in a log whose base
/// is `base` and whose newest snapshot ends at `snapshot`: `false` if it is
/// compacted that far already; refused past the snapshot.
pub fn check_compaction(
    index: LogIndex,
    base: LogIndex,
    snapshot: LogIndex,
) -> Result<bool, StoreRefusal> {
    if index <= base {
        return Ok(false);
    }
    if index > snapshot {
        return Err(StoreRefusal::CompactionPastSnapshot { index, snapshot });
    }
    Ok(true)
}

/// Checks, when a store opens, that its snapshot covers its log's base
/// (compaction never runs ahead of the snapshot).
pub fn check_base_covered(base: &EntryId, snapshot: &SnapshotMeta) -> Result<(), StoreRefusal> {
    if base.index > snapshot.last_index {
        return Err(StoreRefusal::BasePastSnapshot {
            base: base.index,
            snapshot: snapshot.last_index,
        });
    }
    Ok(())
}

/// Checks a read of the entries `[lo, hi)` from a log holding
/// `first..=last` (`last == first - 1` when it is empty), as
/// [`crate::LogStorage::entries`] answers it: [`StorageError::Compacted`]
/// if `lo` is below the first index, [`StorageError::Unavailable`] if `hi`
/// is past the end. `Ok(false)`: the range is empty, nothing to read.
pub fn check_read(
    lo: LogIndex,
    hi: LogIndex,
    first: LogIndex,
    last: LogIndex,
) -> Result<bool, StorageError> {
    if lo < first {
        return Err(StorageError::Compacted(lo));
    }
    if hi > last.next() {
        return Err(StorageError::Unavailable(hi));
    }
    Ok(lo < hi)
}

/// The longest prefix of `entries` whose total [`Entry::size`] stays
/// within `max_bytes`, but at least one entry (what
/// [`crate::LogStorage::entries`] returns of a range held in memory).
pub fn within_bytes(entries: &[Entry], max_bytes: u64) -> &[Entry] {
    let mut take = 0;
    let mut size = 0;
    for e in entries {
        size += e.size();
        if take > 0 && size > max_bytes {
            break;
        }
        take += 1;
    }
    &entries[..take]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{EntryPayload, NodeId, Term};
    use bytes::Bytes;

    fn ent(index: u64) -> Entry {
        Entry {
            term: Term(1),
            index: LogIndex(index),
            payload: EntryPayload::Normal(Bytes::new()),
        }
    }

    #[test]
    fn reads_are_checked_against_the_log_held() {
        let r = |lo, hi| check_read(LogIndex(lo), LogIndex(hi), LogIndex(5), LogIndex(9));
        assert_eq!(r(5, 10), Ok(true));
        assert_eq!(r(7, 7), Ok(false));
        assert_eq!(r(8, 6), Ok(false), "an inverted range reads nothing");
        assert_eq!(r(4, 8), Err(StorageError::Compacted(LogIndex(4))));
        assert_eq!(r(6, 11), Err(StorageError::Unavailable(LogIndex(11))));
        // An empty log after a base at 4.
        assert_eq!(
            check_read(LogIndex(5), LogIndex(5), LogIndex(5), LogIndex(4)),
            Ok(false)
        );
    }

    #[test]
    fn appends_must_follow_the_log_without_gap_or_hole() {
        let (first, last) = (LogIndex(5), LogIndex(9));
        assert_eq!(check_append(&[], first, last), Ok(()));
        for at in [5, 7, 10] {
            assert_eq!(check_append(&[ent(at), ent(at + 1)], first, last), Ok(()));
        }
        assert_eq!(
            check_append(&[ent(4)], first, last),
            Err(StoreRefusal::Compacted(LogIndex(4)))
        );
        assert_eq!(
            check_append(&[ent(11)], first, last),
            Err(StoreRefusal::Gap {
                first: LogIndex(11),
                last
            })
        );
        assert_eq!(
            check_append(&[ent(6), ent(8)], first, last),
            Err(StoreRefusal::NotConsecutive {
                found: LogIndex(8),
                expected: LogIndex(7)
            })
        );
        // An empty log after a base of 4.
        assert_eq!(check_append(&[ent(5)], first, LogIndex(4)), Ok(()));
    }

    #[test]
    fn identities_are_recorded_once_and_never_replaced() {
        let id = |cluster_id, node| StoreIdentity {
            cluster_id,
            node_id: NodeId(node),
        };
        assert_eq!(check_identity(None, id(1, 2)), Ok(true));
        assert_eq!(check_identity(Some(id(1, 2)), id(1, 2)), Ok(false));
        let refused = check_identity(Some(id(1, 2)), id(1, 3)).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "the store belongs to cluster 1 node 2, not cluster 1 node 3"
        );
        match StorageError::from(refused) {
            StorageError::Fatal(msg) => assert!(msg.contains("cluster 1 node 3"), "{msg}"),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn snapshots_commit_what_they_cover_and_bound_compaction() {
        let snap = SnapshotMeta {
            last_index: LogIndex(10),
            last_term: Term(2),
            ..SnapshotMeta::default()
        };
        assert!(is_newer_snapshot(&SnapshotMeta::default(), &snap));
        assert!(!is_newer_snapshot(&snap, &snap));
        let hs = HardState {
            term: Term(3),
            vote: NodeId(1),
            commit: LogIndex(4),
        };
        assert_eq!(
            hard_state_after_install(&hs, &snap),
            Some(HardState {
                commit: LogIndex(10),
                ..hs
            })
        );
        let ahead = HardState {
            commit: LogIndex(12),
            ..hs
        };
        assert_eq!(hard_state_after_install(&ahead, &snap), None);
        assert_eq!(
            check_compaction(LogIndex(3), LogIndex(3), LogIndex(10)),
            Ok(false)
        );
        assert_eq!(
            check_compaction(LogIndex(10), LogIndex(3), LogIndex(10)),
            Ok(true)
        );
        assert!(check_compaction(LogIndex(11), LogIndex(3), LogIndex(10)).is_err());
        assert_eq!(
            check_base_covered(&EntryId::new(Term(2), LogIndex(10)), &snap),
            Ok(())
        );
        assert!(check_base_covered(&EntryId::new(Term(2), LogIndex(11)), &snap).is_err());
    }
}

//! What watchers see: the events of the store's writes, live as commands
//! apply (through an [`EventSink`]) and from the history (for a watch that
//! starts at a past revision, or falls behind).

use crate::KvError;
use crate::index::Revision;
use crate::record;
use crate::store::{KvStateMachine, scan, storage};
use crate::types::{KeyRange, KeyValue};

/// What a write did to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The key was set.
    Put,
    /// The key was deleted.
    Delete,
}

/// One write of one key, as etcd's `mvccpb.Event`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// A put or a delete.
    pub kind: EventKind,
    /// The key after a put; after a delete, the key and its
    /// `mod_revision` (the delete's revision), the rest empty.
    pub kv: KeyValue,
}

/// Where the events of applied commands go, as they apply (the server's
/// watch hub). Called on the thread that applies commands: it must not
/// block.
pub trait EventSink: Send + 'static {
    /// Whether anyone listens: when not, the store makes no events.
    fn wanted(&self) -> bool;

    /// The events of one command, all at `revision`, in the order the
    /// command made them.
    fn publish(&mut self, revision: i64, events: Vec<Event>);

    /// The store was replaced by a snapshot at `revision`: the events
    /// since the last one published are in the history only.
    fn restored(&mut self, revision: i64);

    /// A lease was granted, renewed or revoked, or a snapshot replaced
    /// them all (for the members' lease clocks).
    fn lease(&mut self, change: LeaseChange) {
        let _ = change;
    }

    /// The members' list changed (a membership change, a member's
    /// published attributes, a snapshot): this is all of it now.
    fn members(&mut self, list: &crate::MemberList) {
        let _ = list;
    }
}

/// What happened to the store's leases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseChange {
    /// A lease was created with this TTL (seconds).
    Granted {
        /// Its ID.
        id: i64,
        /// Its TTL in seconds.
        ttl: i64,
    },
    /// A lease was renewed: its TTL starts again.
    Renewed {
        /// Its ID.
        id: i64,
        /// Its TTL in seconds.
        ttl: i64,
    },
    /// A lease ended (its keys are deleted).
    Revoked {
        /// Its ID.
        id: i64,
    },
    /// A snapshot replaced every lease: these (ID, TTL) are all there are.
    All(Vec<(i64, i64)>),
}

/// The events of one read of the history (see
/// [`KvStateMachine::history`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct History {
    /// The events, in revision order.
    pub events: Vec<Event>,
    /// The store's revision when it was read: every event up to it on
    /// the range is in `events` (unless `more`).
    pub revision: i64,
    /// Whether the read stopped at its limit before `revision`: the
    /// events go on from the revision after the last one.
    pub more: bool,
}

impl KvStateMachine {
    /// Attaches the sink that receives the events of every command
    /// applied from now on.
    pub fn set_event_sink(&mut self, sink: Box<dyn EventSink>) {
        self.sink = Some(sink);
    }

    /// The events of writes on the keys of `(key, range_end)` from
    /// revision `from` to `to` (0 or less: the current one), in revision
    /// order, at most about `limit` (0: all; the events of one revision
    /// are never split). `from` below the compacted revision fails with
    /// [`KvError::Compacted`].
    pub fn history(
        &self,
        key: &[u8],
        range_end: &[u8],
        from: i64,
        to: i64,
        limit: usize,
    ) -> Result<History, KvError> {
        let from = from.max(1);
        if from < self.compacted {
            return Err(KvError::Compacted);
        }
        let range = KeyRange::new(key, range_end);
        let to = if to <= 0 {
            self.revision
        } else {
            to.min(self.revision)
        };
        let out = History {
            revision: to,
            ..History::default()
        };
        if from > to {
            return Ok(out);
        }
        let mut c = Collector {
            range,
            limit,
            to,
            last_main: 0,
            out,
            bad: None,
        };
        let start = record::rev_key(Revision { main: from, sub: 0 });
        let mut go_on = true;
        let end = record::rev_key(Revision {
            main: to.saturating_add(1),
            sub: 0,
        });
        self.backend
            .scan(&start, Some(&end), &mut |k, v| {
                let rev =
                    record::parse_rev_key(k).map_err(|e| std::io::Error::other(e.to_string()))?;
                go_on = c.visit(rev, v);
                Ok(go_on)
            })
            .map_err(storage)?;
        if go_on {
            // Applied since the last flush: newer than every stored one.
            for (rev, bytes) in self.pending.iter() {
                if rev.main > to {
                    break;
                }
                if rev.main >= from && !c.visit(rev, bytes) {
                    break;
                }
            }
        }
        match c.bad {
            Some(e) => Err(e),
            None => Ok(c.out),
        }
    }

    /// The key's value just before revision `revision` (what an event at
    /// `revision` replaced), if it existed and is still kept.
    pub fn prev_kv(&self, key: &[u8], revision: i64) -> Result<Option<KeyValue>, KvError> {
        if revision - 1 < self.compacted {
            return Ok(None);
        }
        match self.index.get(key).and_then(|h| h.at(revision - 1)) {
            Some(rev) => self.fetch_kv(rev).map(Some),
            None => Ok(None),
        }
    }
}

/// Gathers the events of a read of the history.
struct Collector<'a> {
    range: KeyRange<'a>,
    limit: usize,
    to: i64,
    /// The revision of the last event taken.
    last_main: i64,
    out: History,
    bad: Option<KvError>,
}

impl Collector<'_> {
    /// Takes the record of the write at `rev` if its key is in the range;
    /// returns whether to go on.
    fn visit(&mut self, rev: Revision, bytes: &[u8]) -> bool {
        if rev.main > self.to {
            return false;
        }
        let full = self.limit > 0 && self.out.events.len() >= self.limit;
        if full && rev.main != self.last_main {
            self.out.more = true;
            return false;
        }
        match record::decode(rev, bytes) {
            Ok(r) if self.range.contains(r.key) => {
                self.last_main = rev.main;
                self.out.events.push(Event {
                    kind: if r.write.tombstone {
                        EventKind::Delete
                    } else {
                        EventKind::Put
                    },
                    kv: r.to_kv(),
                });
                true
            }
            Ok(_) => true,
            Err(e) => {
                self.bad = Some(e);
                false
            }
        }
    }
}

/// A hash of the store's history (etcd's `HashKV`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryHash {
    /// CRC32 (IEEE) of every kept record up to the revision, each
    /// with its revision, in revision order.
    pub hash: u32,
    /// The revision hashed.
    pub revision: i64,
    /// The store's compacted revision.
    pub compact_revision: i64,
}

impl KvStateMachine {
    /// Hashes the history up to `revision` (0 or less: the current one):
    /// members that applied the same commands give the same hash at the
    /// same revision, whatever their backend and however their writes
    /// were batched. Fails as a read would at a compacted or future
    /// revision.
    pub fn hash_kv(&self, revision: i64) -> Result<HistoryHash, KvError> {
        let at = self.read_revision(revision)?;
        let forgotten: std::collections::HashSet<Revision> = self.removed.iter().copied().collect();
        let mut crc = crc32fast::Hasher::new();
        let mut add = |rev: Revision, bytes: &[u8]| {
            if !forgotten.contains(&rev) {
                crc.update(&record::rev_key(rev));
                crc.update(bytes);
            }
        };
        let start = record::rev_key(Revision { main: 0, sub: 0 });
        let end = record::rev_key(Revision {
            main: at.saturating_add(1),
            sub: 0,
        });
        scan(&*self.backend, &start, Some(&end), |k, v| {
            add(record::parse_rev_key(k)?, v);
            Ok(())
        })?;
        for (rev, bytes) in self.pending.iter().filter(|(r, _)| r.main <= at) {
            add(rev, bytes);
        }
        Ok(HistoryHash {
            hash: crc.finalize(),
            revision: at,
            compact_revision: self.compacted,
        })
    }
}

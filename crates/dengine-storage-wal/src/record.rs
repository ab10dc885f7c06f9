//! What the frames of the log hold: one record per change to the store.
//!
//! A record's body is its kind (one byte) and its fields. Entries, hard
//! states, snapshot metadata and entry ids are in the core's record codec
//! (each sealed with its own CRC32), each behind its length (`u32`,
//! little-endian).
//!
//! - `CHECKPOINT`: the whole metadata of the store (identity, hard
//!   state, newest snapshot, the log's base), first in every segment, so
//!   that older segments can be deleted once everything they hold is
//!   compacted.
//! - `WRITE`: one [`dengine_core::LogStore::write`]: flags (a snapshot
//!   installed; whether the entries after it were kept; a hard state),
//!   the snapshot's metadata, the hard state, then the entries.
//! - `COMPACT`: the log's new base.
//! - `IDENTITY`: the store's identity.
//! - `SNAPSHOT`: the metadata of a snapshot this node made.

use dengine_core::codec::{self, CodecError};
use dengine_core::{Entry, EntryId, HardState, NodeId, SnapshotMeta, StoreIdentity};

const CHECKPOINT: u8 = 1;
const WRITE: u8 = 2;
const COMPACT: u8 = 3;
const IDENTITY: u8 = 4;
const SNAPSHOT: u8 = 5;

const FLAG_INSTALL: u8 = 1;
const FLAG_KEEP: u8 = 2;
const FLAG_HARD_STATE: u8 = 4;

/// The metadata a checkpoint holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) identity: Option<StoreIdentity>,
    pub(crate) hard_state: HardState,
    pub(crate) snapshot: SnapshotMeta,
    pub(crate) base: EntryId,
}

/// A snapshot installed by a write, and whether the entries after it
/// were kept (the log held its last entry with its term).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Install {
    pub(crate) meta: SnapshotMeta,
    pub(crate) keep: bool,
}

/// A decoded record.
#[derive(Debug, PartialEq)]
pub(crate) enum Record {
    Checkpoint(Meta),
    Write {
        install: Option<Install>,
        hard_state: Option<HardState>,
        entries: Vec<Entry>,
    },
    Compact(EntryId),
    Identity(StoreIdentity),
    Snapshot(SnapshotMeta),
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

pub(crate) fn checkpoint(m: &Meta) -> Vec<u8> {
    let mut out = vec![CHECKPOINT];
    match m.identity {
        Some(id) => {
            out.push(1);
            field(&mut out, &codec::encode_identity(id.cluster_id, id.node_id));
        }
        None => out.push(0),
    }
    field(&mut out, &codec::encode_hard_state(&m.hard_state));
    field(&mut out, &codec::encode_snapshot_meta(&m.snapshot));
    field(&mut out, &codec::encode_entry_id(&m.base));
    out
}

/// Appends the body of a write record to `out`.
pub(crate) fn write_into(
    out: &mut Vec<u8>,
    install: Option<&Install>,
    hard_state: Option<&HardState>,
    entries: &[Entry],
) {
    out.push(WRITE);
    let mut flags = 0;
    if let Some(i) = install {
        flags |= FLAG_INSTALL;
        if i.keep {
            flags |= FLAG_KEEP;
        }
    }
    if hard_state.is_some() {
        flags |= FLAG_HARD_STATE;
    }
    out.push(flags);
    if let Some(i) = install {
        field(out, &codec::encode_snapshot_meta(&i.meta));
    }
    if let Some(hs) = hard_state {
        field(out, &codec::encode_hard_state(hs));
    }
    for e in entries {
        // The length, filled in once the entry is written after it.
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        codec::encode_entry_into(e, out);
        let len = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
}

pub(crate) fn compact(base: &EntryId) -> Vec<u8> {
    let mut out = vec![COMPACT];
    field(&mut out, &codec::encode_entry_id(base));
    out
}

pub(crate) fn identity(id: StoreIdentity) -> Vec<u8> {
    let mut out = vec![IDENTITY];
    field(&mut out, &codec::encode_identity(id.cluster_id, id.node_id));
    out
}

pub(crate) fn snapshot(meta: &SnapshotMeta) -> Vec<u8> {
    let mut out = vec![SNAPSHOT];
    field(&mut out, &codec::encode_snapshot_meta(meta));
    out
}

/// Why a record does not decode: where, and what.
#[derive(Debug)]
pub(crate) enum BadRecord {
    /// An entry of a write record does not decode: its place in the
    /// write and why (the caller names its index).
    Entry { after: Option<u64>, why: String },
    /// Anything else.
    Other(String),
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> Result<u8, String> {
        let (b, rest) = self.0.split_first().ok_or("a record ends early")?;
        self.0 = rest;
        Ok(*b)
    }

    fn field(&mut self) -> Result<&'a [u8], String> {
        let (len, rest) = self
            .0
            .split_first_chunk::<4>()
            .ok_or("a record ends inside a length")?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err("a record ends inside a field".into());
        }
        let (f, rest) = rest.split_at(len);
        self.0 = rest;
        Ok(f)
    }

    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

fn codec_err(what: &str) -> impl Fn(CodecError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn decode_identity(bytes: &[u8]) -> Result<StoreIdentity, String> {
    let (cluster_id, node_id): (u64, NodeId) =
        codec::decode_identity(bytes).map_err(codec_err("identity"))?;
    Ok(StoreIdentity {
        cluster_id,
        node_id,
    })
}

/// Decodes a record's body.
pub(crate) fn decode(body: &[u8]) -> Result<Record, BadRecord> {
    let other = BadRecord::Other;
    let mut c = Cursor(body);
    let kind = c.byte().map_err(other)?;
    let record = match kind {
        CHECKPOINT => {
            let identity = match c.byte().map_err(other)? {
                0 => None,
                _ => Some(decode_identity(c.field().map_err(other)?).map_err(other)?),
            };
            let hard_state = codec::decode_hard_state(c.field().map_err(other)?)
                .map_err(codec_err("hard state"))
                .map_err(other)?;
            let snapshot = codec::decode_snapshot_meta(c.field().map_err(other)?)
                .map_err(codec_err("snapshot metadata"))
                .map_err(other)?;
            let base = codec::decode_entry_id(c.field().map_err(other)?)
                .map_err(codec_err("base"))
                .map_err(other)?;
            Record::Checkpoint(Meta {
                identity,
                hard_state,
                snapshot,
                base,
            })
        }
        WRITE => {
            let flags = c.byte().map_err(other)?;
            let install = if flags & FLAG_INSTALL != 0 {
                let meta = codec::decode_snapshot_meta(c.field().map_err(other)?)
                    .map_err(codec_err("snapshot metadata"))
                    .map_err(other)?;
                Some(Install {
                    meta,
                    keep: flags & FLAG_KEEP != 0,
                })
            } else {
                None
            };
            let hard_state = if flags & FLAG_HARD_STATE != 0 {
                Some(
                    codec::decode_hard_state(c.field().map_err(other)?)
                        .map_err(codec_err("hard state"))
                        .map_err(other)?,
                )
            } else {
                None
            };
            let mut entries: Vec<Entry> = Vec::new();
            while !c.done() {
                let after = entries.last().map(|e| e.index.0);
                let bytes = c.field().map_err(|why| BadRecord::Entry { after, why })?;
                let e = codec::decode_entry(bytes).map_err(|e| BadRecord::Entry {
                    after,
                    why: e.to_string(),
                })?;
                entries.push(e);
            }
            return Ok(Record::Write {
                install,
                hard_state,
                entries,
            });
        }
        COMPACT => Record::Compact(
            codec::decode_entry_id(c.field().map_err(other)?)
                .map_err(codec_err("base"))
                .map_err(other)?,
        ),
        IDENTITY => Record::Identity(decode_identity(c.field().map_err(other)?).map_err(other)?),
        SNAPSHOT => Record::Snapshot(
            codec::decode_snapshot_meta(c.field().map_err(other)?)
                .map_err(codec_err("snapshot metadata"))
                .map_err(other)?,
        ),
        k => return Err(other(format!("a record of unknown kind {k}"))),
    };
    if !c.done() {
        return Err(other("a record has bytes after its fields".into()));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dengine_core::{ConfState, EntryPayload, LogIndex, Term};

    fn meta() -> SnapshotMeta {
        SnapshotMeta {
            last_index: LogIndex(7),
            last_term: Term(2),
            conf_state: ConfState::with_voters([NodeId(1), NodeId(2)]),
        }
    }

    #[test]
    fn records_round_trip() {
        let hs = HardState {
            term: Term(3),
            vote: NodeId(2),
            commit: LogIndex(5),
        };
        let entries: Vec<Entry> = (8..12)
            .map(|i| Entry {
                term: Term(2),
                index: LogIndex(i),
                payload: EntryPayload::Normal(vec![i as u8; i as usize].into()),
            })
            .collect();
        let id = StoreIdentity {
            cluster_id: 9,
            node_id: NodeId(3),
        };
        let m = Meta {
            identity: Some(id),
            hard_state: hs,
            snapshot: meta(),
            base: EntryId::new(Term(2), LogIndex(7)),
        };
        assert_eq!(
            decode(&checkpoint(&m)).unwrap(),
            Record::Checkpoint(m.clone())
        );
        let none = Meta::default();
        assert_eq!(
            decode(&checkpoint(&none)).unwrap(),
            Record::Checkpoint(none)
        );
        let install = Install {
            meta: meta(),
            keep: true,
        };
        let mut body = Vec::new();
        write_into(&mut body, Some(&install), Some(&hs), &entries);
        assert_eq!(
            body.len(),
            1 + 1
                + 4
                + codec::encode_snapshot_meta(&meta()).len()
                + 4
                + codec::encode_hard_state(&hs).len()
                + entries
                    .iter()
                    .map(|e| 4 + codec::encode_entry(e).len())
                    .sum::<usize>()
        );
        assert_eq!(
            decode(&body).unwrap(),
            Record::Write {
                install: Some(install),
                hard_state: Some(hs),
                entries: entries.clone()
            }
        );
        body.clear();
        write_into(&mut body, None, None, &[]);
        assert_eq!(
            decode(&body).unwrap(),
            Record::Write {
                install: None,
                hard_state: None,
                entries: vec![]
            }
        );
        let base = EntryId::new(Term(4), LogIndex(70));
        assert_eq!(decode(&compact(&base)).unwrap(), Record::Compact(base));
        assert_eq!(decode(&identity(id)).unwrap(), Record::Identity(id));
        assert_eq!(
            decode(&snapshot(&meta())).unwrap(),
            Record::Snapshot(meta())
        );
        assert!(decode(&[99]).is_err());
        assert!(decode(&[]).is_err());
    }
}

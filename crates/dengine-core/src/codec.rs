//! A compact binary encoding of the protocol's records, with a checksum on
//! every record, shared by the storage backends.
//!
//! A record is `crc32 (4 bytes, LE) | body`; the CRC covers the body. A
//! record whose checksum does not match, or whose body does not parse to the
//! end, is corruption: [`CodecError`] says which.

use bytes::Bytes;

use crate::types::{
    ConfChange, ConfChangeStep, ConfChangeTransition, ConfState, Entry, EntryId, EntryPayload,
    HardState, LogIndex, NodeId, SnapshotMeta, Term,
};

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The checksum does not match the body: the record is corrupt or torn.
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// The checksum stored with the record.
        stored: u32,
        /// The checksum of the body as read.
        computed: u32,
    },
    /// The record ends before its body does.
    #[error("record truncated")]
    Truncated,
    /// The body holds a value this version does not know.
    #[error("invalid record: {0}")]
    Invalid(&'static str),
}

/// Wraps `body` with its checksum.
pub fn seal(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Checks a sealed record and returns its body.
pub fn open(record: &[u8]) -> Result<&[u8], CodecError> {
    let (crc, body) = record
        .split_first_chunk::<4>()
        .ok_or(CodecError::Truncated)?;
    let stored = u32::from_le_bytes(*crc);
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(CodecError::Checksum { stored, computed });
    }
    Ok(body)
}

/// Appends values to a body.
#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn ids(&mut self, ids: &std::collections::BTreeSet<NodeId>) {
        self.u64(ids.len() as u64);
        for id in ids {
            self.u64(id.0);
        }
    }
}

/// Reads values from a body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, CodecError> {
        let (v, rest) = self.0.split_first().ok_or(CodecError::Truncated)?;
        self.0 = rest;
        Ok(*v)
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        let (v, rest) = self
            .0
            .split_first_chunk::<8>()
            .ok_or(CodecError::Truncated)?;
        self.0 = rest;
        Ok(u64::from_le_bytes(*v))
    }
    fn len(&mut self) -> Result<usize, CodecError> {
        let n = self.u64()?;
        if n > self.0.len() as u64 {
            return Err(CodecError::Truncated);
        }
        Ok(n as usize)
    }
    fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let n = self.len()?;
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(b)
    }
    fn ids(&mut self) -> Result<std::collections::BTreeSet<NodeId>, CodecError> {
        let n = self.u64()?;
        if n > self.0.len() as u64 / 8 {
            return Err(CodecError::Truncated);
        }
        (0..n).map(|_| self.u64().map(NodeId)).collect()
    }
    fn end(self) -> Result<(), CodecError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(CodecError::Invalid("trailing bytes"))
        }
    }
}

fn write_conf_state(w: &mut Writer, c: &ConfState) {
    w.ids(&c.voters);
    w.ids(&c.voters_outgoing);
    w.ids(&c.learners);
    w.ids(&c.learners_next);
    w.u8(u8::from(c.auto_leave));
}

fn read_conf_state(r: &mut Reader<'_>) -> Result<ConfState, CodecError> {
    Ok(ConfState {
        voters: r.ids()?,
        voters_outgoing: r.ids()?,
        learners: r.ids()?,
        learners_next: r.ids()?,
        auto_leave: r.u8()? != 0,
    })
}

/// Encodes a log entry as a sealed record.
pub fn encode_entry(e: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 17 + 8 + e.payload.size() as usize);
    encode_entry_into(e, &mut out);
    out
}

/// Appends the sealed record of a log entry to `out` (the bytes of
/// [`encode_entry`], without a buffer of its own: stores that write many
/// entries into one buffer use this).
pub fn encode_entry_into(e: &Entry, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let mut w = Writer(std::mem::take(out));
    write_entry_body(&mut w, e);
    *out = w.0;
    let crc = crc32fast::hash(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

fn write_entry_body(w: &mut Writer, e: &Entry) {
    w.u64(e.term.0);
    w.u64(e.index.0);
    match &e.payload {
        EntryPayload::Blank => w.u8(0),
        EntryPayload::Normal(d) => {
            w.u8(1);
            w.bytes(d);
        }
        EntryPayload::ConfChange(cc) => {
            // Kind 2 is a change without context, as it was written before
            // changes could carry one (same bytes); kind 3 adds the context.
            w.u8(if cc.context.is_empty() { 2 } else { 3 });
            w.u8(match cc.transition {
                ConfChangeTransition::Auto => 0,
                ConfChangeTransition::JointImplicit => 1,
                ConfChangeTransition::JointExplicit => 2,
            });
            w.u64(cc.steps.len() as u64);
            for s in &cc.steps {
                let (k, id) = match *s {
                    ConfChangeStep::AddVoter(id) => (0, id),
                    ConfChangeStep::AddLearner(id) => (1, id),
                    ConfChangeStep::Remove(id) => (2, id),
                };
                w.u8(k);
                w.u64(id.0);
            }
            if !cc.context.is_empty() {
                w.bytes(&cc.context);
            }
        }
    }
}

/// Decodes a sealed log entry record.
pub fn decode_entry(record: &[u8]) -> Result<Entry, CodecError> {
    let mut r = Reader(open(record)?);
    let term = Term(r.u64()?);
    let index = LogIndex(r.u64()?);
    let payload = match r.u8()? {
        0 => EntryPayload::Blank,
        // The one copy of a stored payload: out of the record into its own
        // shared buffer.
        1 => EntryPayload::Normal(Bytes::copy_from_slice(r.bytes()?)),
        kind @ (2 | 3) => {
            let transition = match r.u8()? {
                0 => ConfChangeTransition::Auto,
                1 => ConfChangeTransition::JointImplicit,
                2 => ConfChangeTransition::JointExplicit,
                _ => return Err(CodecError::Invalid("conf change transition")),
            };
            let n = r.u64()?;
            if n > r.0.len() as u64 {
                return Err(CodecError::Truncated);
            }
            let mut steps = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let k = r.u8()?;
                let id = NodeId(r.u64()?);
                steps.push(match k {
                    0 => ConfChangeStep::AddVoter(id),
                    1 => ConfChangeStep::AddLearner(id),
                    2 => ConfChangeStep::Remove(id),
                    _ => return Err(CodecError::Invalid("conf change step")),
                });
            }
            let context = if kind == 3 {
                r.bytes()?.to_vec()
            } else {
                Vec::new()
            };
            EntryPayload::ConfChange(Box::new(ConfChange {
                transition,
                steps,
                context,
            }))
        }
        _ => return Err(CodecError::Invalid("entry payload kind")),
    };
    r.end()?;
    Ok(Entry {
        term,
        index,
        payload,
    })
}

/// Encodes a hard state as a sealed record.
pub fn encode_hard_state(h: &HardState) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(h.term.0);
    w.u64(h.vote.0);
    w.u64(h.commit.0);
    seal(&w.0)
}

/// Decodes a sealed hard state record.
pub fn decode_hard_state(record: &[u8]) -> Result<HardState, CodecError> {
    let mut r = Reader(open(record)?);
    let h = HardState {
        term: Term(r.u64()?),
        vote: NodeId(r.u64()?),
        commit: LogIndex(r.u64()?),
    };
    r.end()?;
    Ok(h)
}

/// Encodes snapshot metadata as a sealed record.
pub fn encode_snapshot_meta(m: &SnapshotMeta) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(m.last_index.0);
    w.u64(m.last_term.0);
    write_conf_state(&mut w, &m.conf_state);
    seal(&w.0)
}

/// Decodes sealed snapshot metadata.
pub fn decode_snapshot_meta(record: &[u8]) -> Result<SnapshotMeta, CodecError> {
    let mut r = Reader(open(record)?);
    let m = SnapshotMeta {
        last_index: LogIndex(r.u64()?),
        last_term: Term(r.u64()?),
        conf_state: read_conf_state(&mut r)?,
    };
    r.end()?;
    Ok(m)
}

/// Encodes an entry id (a log's base) as a sealed record.
pub fn encode_entry_id(id: &EntryId) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(id.term.0);
    w.u64(id.index.0);
    seal(&w.0)
}

/// Decodes a sealed entry id.
pub fn decode_entry_id(record: &[u8]) -> Result<EntryId, CodecError> {
    let mut r = Reader(open(record)?);
    let id = EntryId::new(Term(r.u64()?), LogIndex(r.u64()?));
    r.end()?;
    Ok(id)
}

/// Encodes a `(cluster id, node id)` pair as a sealed record.
pub fn encode_identity(cluster: u64, node: NodeId) -> Vec<u8> {
    let mut w = Writer::default();
    w.u64(cluster);
    w.u64(node.0);
    seal(&w.0)
}

/// Decodes a sealed `(cluster id, node id)` pair.
pub fn decode_identity(record: &[u8]) -> Result<(u64, NodeId), CodecError> {
    let mut r = Reader(open(record)?);
    let v = (r.u64()?, NodeId(r.u64()?));
    r.end()?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A membership entry as written before changes carried a context
    /// (kind 2): it decodes, and encoding it again gives the same bytes.
    #[test]
    fn a_membership_entry_of_the_first_format_still_decodes() {
        let old = Entry {
            term: Term(1),
            index: LogIndex(1),
            payload: EntryPayload::ConfChange(Box::new(ConfChange {
                transition: ConfChangeTransition::Auto,
                steps: vec![ConfChangeStep::AddVoter(NodeId(1))],
                context: Vec::new(),
            })),
        };
        // term 1, index 1, kind 2, Auto, one step: AddVoter 1 (all LE).
        let mut body = Vec::new();
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&[2, 0]);
        body.extend_from_slice(&1u64.to_le_bytes());
        body.push(0);
        body.extend_from_slice(&1u64.to_le_bytes());
        let record = seal(&body);
        assert_eq!(decode_entry(&record), Ok(old.clone()));
        assert_eq!(encode_entry(&old), record);
    }

    fn entries() -> Vec<Entry> {
        vec![
            Entry {
                term: Term(3),
                index: LogIndex(7),
                payload: EntryPayload::Blank,
            },
            Entry {
                term: Term(3),
                index: LogIndex(8),
                payload: EntryPayload::Normal(Bytes::from_static(b"hello")),
            },
            Entry {
                term: Term(4),
                index: LogIndex(9),
                payload: EntryPayload::ConfChange(Box::new(ConfChange {
                    transition: ConfChangeTransition::JointExplicit,
                    steps: vec![
                        ConfChangeStep::AddVoter(NodeId(4)),
                        ConfChangeStep::Remove(NodeId(1)),
                        ConfChangeStep::AddLearner(NodeId(5)),
                    ],
                    context: Vec::new(),
                })),
            },
            Entry {
                term: Term(4),
                index: LogIndex(10),
                payload: EntryPayload::ConfChange(Box::new(ConfChange {
                    transition: ConfChangeTransition::Auto,
                    steps: vec![ConfChangeStep::AddVoter(NodeId(6))],
                    context: b"peer-urls=http://10.0.0.6:2380".to_vec(),
                })),
            },
        ]
    }

    #[test]
    fn records_round_trip() {
        let mut many = b"before".to_vec();
        for e in entries() {
            let start = many.len();
            encode_entry_into(&e, &mut many);
            assert_eq!(many[start..], encode_entry(&e), "appended as alone");
            assert_eq!(decode_entry(&encode_entry(&e)), Ok(e));
        }
        assert!(many.starts_with(b"before"));
        let h = HardState {
            term: Term(9),
            vote: NodeId(2),
            commit: LogIndex(77),
        };
        assert_eq!(decode_hard_state(&encode_hard_state(&h)), Ok(h));
        let m = SnapshotMeta {
            last_index: LogIndex(10),
            last_term: Term(2),
            conf_state: ConfState {
                voters: [NodeId(1), NodeId(2)].into(),
                voters_outgoing: [NodeId(1), NodeId(3)].into(),
                learners: [NodeId(4)].into(),
                learners_next: [NodeId(3)].into(),
                auto_leave: true,
            },
        };
        assert_eq!(decode_snapshot_meta(&encode_snapshot_meta(&m)), Ok(m));
        assert_eq!(
            decode_identity(&encode_identity(42, NodeId(3))),
            Ok((42, NodeId(3)))
        );
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_detected() {
        for e in entries() {
            let rec = encode_entry(&e);
            for i in 0..rec.len() {
                for bit in 0..8 {
                    let mut bad = rec.clone();
                    bad[i] ^= 1 << bit;
                    assert!(decode_entry(&bad).is_err(), "flip at byte {i} bit {bit}");
                }
            }
            for n in 0..rec.len() {
                assert!(decode_entry(&rec[..n]).is_err(), "truncated to {n}");
            }
        }
    }
}

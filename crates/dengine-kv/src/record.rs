//! What the store writes to its backend, byte for byte:
//!
//! - `r ‖ main (u64, big-endian) ‖ sub (u32, big-endian)` → the record of
//!   one write at that revision (so records sort by revision), sealed with
//!   a CRC32: `2 ‖ flags ‖ key length (u32) ‖ key ‖ create_revision ‖
//!   version ‖ lease ‖ value`, the integers little-endian `i64`; flag bit 0
//!   marks a tombstone (a delete: no counters, no value). The record's mod
//!   revision is the `main` of its backend key.
//! - `m` → the store's own record, sealed: `2 ‖ applied index (u64) ‖
//!   revision ‖ compacted revision`.
//!
//! Format 1, before the history was kept, held one record per key under
//! `k ‖ key` (`1 ‖ create_revision ‖ mod_revision ‖ version ‖ value`) and
//! `m` without the compacted revision; it is read to convert a database
//! or snapshot of then (see `KvStateMachine::with_backend`).

use dengine_runtime::LogIndex;

use crate::KvError;
use crate::index::{Revision, Write};
use crate::types::KeyValue;

/// Backend key prefix of the records of writes.
pub(crate) const REV_PREFIX: u8 = b'r';
/// The end (exclusive) of the records of writes.
pub(crate) const REVS_END: &[u8] = b"s";
/// Backend key of the store's own record.
pub(crate) const META_KEY: &[u8] = b"m";
/// Backend key prefix of format 1's per-key records.
pub(crate) const V1_KEY_PREFIX: u8 = b'k';
pub(crate) const V1_KEYS_END: &[u8] = b"l";

/// The format version of a write's record (the first byte of its body).
pub(crate) const RECORD_VERSION: u8 = 2;
const V1_RECORD_VERSION: u8 = 1;
/// The format version of the store's own record.
pub(crate) const META_VERSION: u8 = 2;
const V1_META_VERSION: u8 = 1;

const TOMBSTONE: u8 = 1;
/// Bytes of the backend key of a write's record.
pub(crate) const REV_KEY_LEN: usize = 13;

/// The backend key of the record of the write at `rev`.
pub(crate) fn rev_key(rev: Revision) -> [u8; REV_KEY_LEN] {
    let mut k = [0u8; REV_KEY_LEN];
    k[0] = REV_PREFIX;
    k[1..9].copy_from_slice(&(rev.main as u64).to_be_bytes());
    k[9..].copy_from_slice(&rev.sub.to_be_bytes());
    k
}

/// The revision a backend key of a write's record names.
pub(crate) fn parse_rev_key(k: &[u8]) -> Result<Revision, KvError> {
    match k {
        [REV_PREFIX, main @ .., s0, s1, s2, s3] if main.len() == 8 => {
            let mut m = [0u8; 8];
            m.copy_from_slice(main);
            let main = u64::from_be_bytes(m) as i64;
            // Revisions start at 1 and the first write is at 2; the index
            // takes revision 0 for "no write".
            if main <= 0 {
                return Err(KvError::Storage(format!(
                    "a record's key names revision {main}"
                )));
            }
            Ok(Revision {
                main,
                sub: u32::from_be_bytes([*s0, *s1, *s2, *s3]),
            })
        }
        _ => Err(KvError::Storage(format!(
            "a record's key {:?} names no revision",
            k.escape_ascii().to_string()
        ))),
    }
}

/// The sealed record of a put (`kv`) or, with `tombstone`, of the delete
/// of `kv.key`.
pub(crate) fn encode(kv: &KeyValue, tombstone: bool) -> Vec<u8> {
    encode_parts(
        &kv.key,
        tombstone,
        kv.create_revision,
        kv.version,
        kv.lease,
        &kv.value,
    )
}

/// As [`encode`], from the parts, with one allocation (the room
/// [`encode_parts_into`] reserves).
pub(crate) fn encode_parts(
    key: &[u8],
    tombstone: bool,
    create_revision: i64,
    version: i64,
    lease: i64,
    value: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    encode_parts_into(
        &mut out,
        key,
        tombstone,
        create_revision,
        version,
        lease,
        value,
    );
    out
}

/// As [`encode_parts`], appended to `out`.
pub(crate) fn encode_parts_into(
    out: &mut Vec<u8>,
    key: &[u8],
    tombstone: bool,
    create_revision: i64,
    version: i64,
    lease: i64,
    value: &[u8],
) {
    let start = out.len();
    out.reserve(4 + 2 + 4 + key.len() + 24 + value.len());
    out.extend_from_slice(&[0; 4]);
    out.push(RECORD_VERSION);
    out.push(if tombstone { TOMBSTONE } else { 0 });
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&create_revision.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&lease.to_le_bytes());
    out.extend_from_slice(value);
    let crc = crc32fast::hash(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// A write's record, decoded, borrowing from its bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RecordRef<'a> {
    pub(crate) write: Write,
    pub(crate) key: &'a [u8],
    pub(crate) create_revision: i64,
    pub(crate) version: i64,
    pub(crate) lease: i64,
    pub(crate) value: &'a [u8],
}

impl RecordRef<'_> {
    /// The key-value the record holds (for a tombstone: the key and its
    /// mod revision, the rest 0).
    pub(crate) fn to_kv(&self) -> KeyValue {
        KeyValue {
            key: self.key.to_vec(),
            value: self.value.to_vec(),
            create_revision: self.create_revision,
            mod_revision: self.write.rev.main,
            version: self.version,
            lease: self.lease,
        }
    }
}

fn corrupt(rev: Revision, what: &str) -> KvError {
    KvError::Storage(format!(
        "the record of revision {}.{} is corrupt: {what}",
        rev.main, rev.sub
    ))
}

/// Decodes the record of the write at `rev`.
pub(crate) fn decode(rev: Revision, record: &[u8]) -> Result<RecordRef<'_>, KvError> {
    let body = dengine_core::codec::open(record).map_err(|e| corrupt(rev, &e.to_string()))?;
    let body = match body.split_first() {
        Some((&RECORD_VERSION, body)) => body,
        Some((&v, _)) => {
            return Err(KvError::Storage(format!(
                "the record of revision {}.{} has format version {v}, which this program does \
                 not read (it reads version {RECORD_VERSION})",
                rev.main, rev.sub
            )));
        }
        None => return Err(corrupt(rev, "empty")),
    };
    let truncated = || corrupt(rev, "truncated");
    let (&flags, body) = body.split_first().ok_or_else(truncated)?;
    let (klen, body) = body.split_first_chunk::<4>().ok_or_else(truncated)?;
    let klen = u32::from_le_bytes(*klen) as usize;
    if body.len() < klen.saturating_add(24) {
        return Err(truncated());
    }
    let (key, body) = body.split_at(klen);
    let int = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&body[i * 8..i * 8 + 8]);
        i64::from_le_bytes(b)
    };
    Ok(RecordRef {
        write: Write {
            rev,
            tombstone: flags & TOMBSTONE != 0,
        },
        key,
        create_revision: int(0),
        version: int(1),
        lease: int(2),
        value: &body[24..],
    })
}

/// The store's own record: the log index its state reflects, its
/// revision and its compacted revision.
pub(crate) fn encode_meta(applied: LogIndex, revision: i64, compacted: i64) -> Vec<u8> {
    let mut body = vec![META_VERSION];
    body.extend_from_slice(&applied.0.to_le_bytes());
    body.extend_from_slice(&revision.to_le_bytes());
    body.extend_from_slice(&compacted.to_le_bytes());
    dengine_core::codec::seal(&body)
}

/// The store's own record, decoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) applied: LogIndex,
    pub(crate) revision: i64,
    pub(crate) compacted: i64,
    /// Written by format 1: the records are per key, without history.
    pub(crate) v1: bool,
}

pub(crate) fn decode_meta(record: &[u8]) -> Result<Meta, KvError> {
    let bad = |what: &str| KvError::Storage(format!("the store's own record is corrupt: {what}"));
    let body = dengine_core::codec::open(record).map_err(|e| bad(&e.to_string()))?;
    let (v1, ints) = match body.split_first() {
        // Written before records had versions (two integers alone).
        _ if body.len() == 16 => {
            return Err(KvError::Storage(
                "the key-value database was written by an older version, before its records \
                 had format versions: remove the directory, and the node rebuilds it from its \
                 log or a snapshot"
                    .into(),
            ));
        }
        Some((&META_VERSION, ints)) => (false, ints),
        Some((&V1_META_VERSION, ints)) => (true, ints),
        Some((&v, _)) => {
            return Err(KvError::Storage(format!(
                "the store's own record has format version {v}, which this program does not \
                 read (it reads versions {V1_META_VERSION} and {META_VERSION})"
            )));
        }
        None => return Err(bad("empty")),
    };
    let want = if v1 { 16 } else { 24 };
    if ints.len() != want {
        return Err(bad("wrong length"));
    }
    let int = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&ints[i * 8..i * 8 + 8]);
        b
    };
    Ok(Meta {
        applied: LogIndex(u64::from_le_bytes(int(0))),
        revision: i64::from_le_bytes(int(1)),
        // Format 1 kept no history: everything before now is gone.
        compacted: if v1 {
            i64::from_le_bytes(int(1))
        } else {
            i64::from_le_bytes(int(2))
        },
        v1,
    })
}

/// Decodes a record of format 1 (one per key, no history) of `key`.
pub(crate) fn decode_v1(key: &[u8], record: &[u8]) -> Result<KeyValue, KvError> {
    let corrupt = |what: String| {
        KvError::Storage(format!(
            "record of key {:?} is corrupt: {what}",
            String::from_utf8_lossy(key)
        ))
    };
    let body = dengine_core::codec::open(record).map_err(|e| corrupt(e.to_string()))?;
    let body = match body.split_first() {
        Some((&V1_RECORD_VERSION, body)) => body,
        Some((&v, _)) => {
            return Err(KvError::Storage(format!(
                "record of key {:?} has format version {v}, which this program does not read \
                 (it reads version {V1_RECORD_VERSION})",
                String::from_utf8_lossy(key)
            )));
        }
        None => return Err(corrupt("empty".into())),
    };
    if body.len() < 24 {
        return Err(corrupt("truncated".into()));
    }
    let int = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&body[i * 8..i * 8 + 8]);
        i64::from_le_bytes(b)
    };
    Ok(KeyValue {
        key: key.to_vec(),
        create_revision: int(0),
        mod_revision: int(1),
        version: int(2),
        value: body[24..].to_vec(),
        lease: 0,
    })
}

/// The writes that hold format 1's current values (one per key, at its
/// mod revision; keys changed by one command get sub revisions in key
/// order), in revision order: how a store or snapshot of format 1 becomes
/// a history compacted at its revision.
pub(crate) fn from_v1(mut kvs: Vec<KeyValue>) -> Vec<(Revision, KeyValue)> {
    // `kvs` come in key order; a stable sort keeps it within a revision.
    kvs.sort_by_key(|kv| kv.mod_revision);
    let mut out: Vec<(Revision, KeyValue)> = Vec::with_capacity(kvs.len());
    for kv in kvs {
        let sub = match out.last() {
            Some((r, _)) if r.main == kv.mod_revision => r.sub + 1,
            _ => 0,
        };
        out.push((
            Revision {
                main: kv.mod_revision,
                sub,
            },
            kv,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_found() {
        let kv = KeyValue {
            key: b"k\x00y".to_vec(),
            value: b"value".to_vec(),
            create_revision: 3,
            mod_revision: 9,
            version: 4,
            lease: 77,
        };
        let rev = Revision { main: 9, sub: 2 };
        let r = encode(&kv, false);
        let got = decode(rev, &r).unwrap();
        assert_eq!(got.to_kv(), kv);
        assert!(!got.write.tombstone);
        let tombstone = encode_parts(b"gone", true, 0, 0, 0, b"");
        let t = decode(rev, &tombstone).unwrap();
        assert!(t.write.tombstone);
        assert_eq!(t.key, b"gone");
        let mut bad = r.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(decode(rev, &bad).is_err());
        assert_eq!(parse_rev_key(&rev_key(rev)).unwrap(), rev);
        // No write is at revision 0 or below: such a key is damage.
        assert!(parse_rev_key(&rev_key(Revision { main: 0, sub: 0 })).is_err());
        assert!(parse_rev_key(&rev_key(Revision { main: -3, sub: 0 })).is_err());
        assert!(rev_key(rev) < rev_key(Revision { main: 10, sub: 0 }));
        assert!(rev_key(rev) < rev_key(Revision { main: 9, sub: 3 }));
        let m = decode_meta(&encode_meta(LogIndex(5), 9, 4)).unwrap();
        assert_eq!(
            (m.applied, m.revision, m.compacted, m.v1),
            (LogIndex(5), 9, 4, false)
        );
    }
}

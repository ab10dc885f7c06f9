//! The store's records in sled.

use std::collections::HashMap;

use super::*;
use dengine_storage_sled::chunk::{VALUE_MAX_BYTES, pieces};
use dengine_storage_sled::sled;

fn err(e: sled::Error) -> io::Error {
    match e {
        sled::Error::Io(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// sled key prefix of a record's first piece.
const HEAD: u8 = 0;
/// sled key prefix of a record's further pieces.
const PIECE: u8 = 1;
/// Bytes of a first piece's header (the number of pieces).
const COUNT_LEN: usize = 4;
/// The least a piece holds, however long its key (keys of more than a
/// few KiB do reach sled's blob threshold: see [`SledBackend`]).
const PIECE_MIN: usize = 1024;
/// sled key of the layout's format version (outside both ranges).
const LAYOUT_KEY: &[u8] = &[2];
/// The version of the layout described on [`SledBackend`].
const LAYOUT_VERSION: u8 = 1;

fn head_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(HEAD);
    k.extend_from_slice(key);
    k
}

fn piece_key(key: &[u8], n: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len() + 4);
    k.push(PIECE);
    k.extend_from_slice(key);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// The most value bytes in one piece of the record under `key`: what
/// keeps its sled key and value together within [`VALUE_MAX_BYTES`].
fn piece_max(key: &[u8]) -> usize {
    let overhead = 1 + key.len() + 4 + COUNT_LEN;
    VALUE_MAX_BYTES.saturating_sub(overhead).max(PIECE_MIN)
}

/// Records in a sled database of their own. Writes are not fsynced:
/// the log is the durable record, and the store says which index its
/// state reflects, so a restart replays what sled lost (sled recovers
/// a prefix of its writes, batches whole, and flushes on its own every
/// 500 ms).
///
/// Every value sled holds stays within [`VALUE_MAX_BYTES`], so that
/// nothing is written as one of sled's blob files, which it never
/// fsyncs (see `dengine_storage_sled::chunk`): a blob lost to a power
/// failure would leave a database that refers to it and no longer
/// opens. A record is stored in pieces:
///
/// - `0x00 ‖ key` → the number of pieces (`u32`, little-endian) and
///   the first piece of the value;
/// - `0x01 ‖ key ‖ n` (`n` from 1, big-endian `u32`) → piece `n`.
///
/// Each piece holds at most [`VALUE_MAX_BYTES`] less the key, so a
/// record of a small value is one sled value. Keys are not split: a
/// key of more than a few KiB still makes sled write blobs.
///
/// The layout has a format version, stored under the key `0x02` (one
/// byte: 1, this layout), written when the database is created. A
/// database without it (written before pieces, or before the version)
/// or with another version is refused when it opens.
pub struct SledBackend {
    db: sled::Db,
}

impl SledBackend {
    /// Opens (or creates) the database in `path`.
    pub fn open(path: &std::path::Path) -> io::Result<SledBackend> {
        let db = dengine_storage_sled::open_db(path, &Default::default()).map_err(err)?;
        match db.get(LAYOUT_KEY).map_err(err)? {
            Some(v) if *v == [LAYOUT_VERSION] => {}
            Some(v) => {
                let version = match *v {
                    [n] => n.to_string(),
                    _ => format!("\"{}\"", v.escape_ascii()),
                };
                return Err(invalid(format!(
                    "the key-value database {} has layout version {version}, which this \
                     program does not read (it reads version {LAYOUT_VERSION})",
                    path.display(),
                )));
            }
            None if db.is_empty() => {
                db.insert(LAYOUT_KEY, &[LAYOUT_VERSION]).map_err(err)?;
            }
            None => {
                return Err(invalid(format!(
                    "the key-value database {} was written by an older version, before \
                     its layout had a version: remove the directory, and the node \
                     rebuilds it from its log or a snapshot",
                    path.display()
                )));
            }
        }
        Ok(SledBackend { db })
    }

    /// The value stored under the head `(key, first)`, its pieces
    /// joined.
    fn join(&self, key: &[u8], first: &[u8]) -> io::Result<Vec<u8>> {
        let bad =
            |what: String| invalid(format!("key-value record {}: {what}", key.escape_ascii()));
        let Some((count, piece)) = first.split_first_chunk::<COUNT_LEN>() else {
            return Err(bad("its first piece has no header".into()));
        };
        let count = u32::from_le_bytes(*count);
        let mut value = piece.to_vec();
        for n in 1..count {
            match self.db.get(piece_key(key, n)).map_err(err)? {
                Some(piece) => value.extend_from_slice(&piece),
                None => return Err(bad(format!("piece {n} of {count} is missing"))),
            }
        }
        Ok(value)
    }

    /// How many pieces the record under `key` is stored in (0: none).
    fn stored_pieces(&self, key: &[u8]) -> io::Result<u32> {
        match self.db.get(head_key(key)).map_err(err)? {
            None => Ok(0),
            Some(first) => match first.split_first_chunk::<COUNT_LEN>() {
                Some((count, _)) => Ok(u32::from_le_bytes(*count)),
                None => Err(invalid(format!(
                    "key-value record {}: its first piece has no header",
                    key.escape_ascii()
                ))),
            },
        }
    }
}

/// Adds `value` under `key` to `batch`, in pieces; returns how many.
fn insert_pieces(batch: &mut sled::Batch, key: &[u8], value: &[u8]) -> io::Result<u32> {
    let max = piece_max(key);
    let count = u32::try_from(value.len().div_ceil(max).max(1)).map_err(|_| {
        invalid(format!(
            "key-value record {} is too large",
            key.escape_ascii()
        ))
    })?;
    let mut n = 0u32;
    for piece in pieces(value, max) {
        if n == 0 {
            let mut first = Vec::with_capacity(COUNT_LEN + piece.len());
            first.extend_from_slice(&count.to_le_bytes());
            first.extend_from_slice(piece);
            batch.insert(head_key(key), first);
        } else {
            batch.insert(piece_key(key, n), piece);
        }
        n += 1;
    }
    Ok(n)
}

impl KvBackend for SledBackend {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        match self.db.get(head_key(key)).map_err(err)? {
            Some(first) => self.join(key, &first).map(Some),
            None => Ok(None),
        }
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, visit: &mut Visit<'_>) -> io::Result<()> {
        if end.is_some_and(|e| e <= start) {
            return Ok(());
        }
        let end = end.map_or_else(|| vec![PIECE], head_key);
        for item in self.db.range(head_key(start)..end) {
            let (k, first) = item.map_err(err)?;
            let key = k.get(1..).unwrap_or_default();
            if !visit(key, &self.join(key, &first)?)? {
                break;
            }
        }
        Ok(())
    }

    fn write(&mut self, changes: Vec<Change>) -> io::Result<()> {
        let mut batch = sled::Batch::default();
        // The pieces of each key changed so far in this call (a key
        // may change twice), so that the pieces a shorter value no
        // longer needs are removed.
        let mut pieces_now: HashMap<Vec<u8>, u32> = HashMap::new();
        for change in changes {
            let (key, value, new) = match change {
                Change::Insert(k, v) => (k, Some(v), true),
                Change::Put(k, v) => (k, Some(v), false),
                Change::Remove(k) => (k, None, false),
            };
            let before = match pieces_now.get(&key) {
                Some(&n) => n,
                // An inserted key holds nothing (no read needed).
                None if new => 0,
                None => self.stored_pieces(&key)?,
            };
            let after = match value {
                Some(v) => insert_pieces(&mut batch, &key, &v)?,
                None => {
                    batch.remove(head_key(&key));
                    0
                }
            };
            for n in after.max(1)..before {
                batch.remove(piece_key(&key, n));
            }
            pieces_now.insert(key, after);
        }
        self.db.apply_batch(batch).map_err(err)
    }

    fn clear(&mut self) -> io::Result<()> {
        // The layout version is written again (a crash in between
        // leaves an empty database, which gets it again on open).
        self.db.clear().map_err(err)?;
        self.db.insert(LAYOUT_KEY, &[LAYOUT_VERSION]).map_err(err)?;
        Ok(())
    }

    fn durable(&self) -> bool {
        true
    }

    fn sync(&self) -> io::Result<()> {
        self.db.flush().map(|_| ()).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    fn value(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
            .collect()
    }

    fn scan_all(b: &SledBackend) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        b.scan(&[], None, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(true)
        })
        .unwrap();
        out
    }

    /// The blob files, and the largest key and value together, of the
    /// closed database at `path`.
    fn blobs_and_largest(path: &std::path::Path) -> (usize, usize) {
        let blobs = match std::fs::read_dir(path.join("blobs")) {
            Ok(dir) => dir.count(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => panic!("{e}"),
        };
        let db = dengine_storage_sled::open_db(path, &Default::default()).unwrap();
        let largest = db.iter().map(|kv| {
            let (k, v) = kv.unwrap();
            k.len() + v.len()
        });
        let largest = largest.max().unwrap_or(0);
        (blobs, largest)
    }

    #[test]
    fn values_of_1_mib_are_stored_without_blobs_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut want: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b"a".to_vec(), value(1, MIB)),
            (b"a\0\0\0\x01".to_vec(), value(2, 10)),
            (b"b".to_vec(), Vec::new()),
            (b"c".to_vec(), value(3, MIB + 17)),
            (vec![b'd'; 300], value(4, 3 * MIB)),
        ];
        let mut b = SledBackend::open(dir.path()).unwrap();
        let changes = want
            .iter()
            .map(|(k, v)| Change::Insert(k.clone(), v.clone()));
        b.write(changes.collect()).unwrap();
        assert_eq!(scan_all(&b), want);
        drop(b);
        let (blobs, largest) = blobs_and_largest(dir.path());
        assert_eq!(blobs, 0, "blob files");
        assert!(
            largest <= VALUE_MAX_BYTES,
            "{largest} bytes in one sled record"
        );

        let mut b = SledBackend::open(dir.path()).unwrap();
        assert_eq!(scan_all(&b), want, "after reopen");
        assert_eq!(b.get(b"c").unwrap().as_deref(), Some(&want[3].1[..]));
        // A large value made small, one removed, one changed twice.
        b.write(vec![
            Change::Put(b"a".to_vec(), b"small".to_vec()),
            Change::Remove(b"c".to_vec()),
            Change::Put(b"b".to_vec(), value(5, MIB)),
            Change::Put(b"b".to_vec(), value(6, 100)),
        ])
        .unwrap();
        want[0].1 = b"small".to_vec();
        want[2].1 = value(6, 100);
        want.remove(3);
        assert_eq!(scan_all(&b), want);
        drop(b);
        let (blobs, _) = blobs_and_largest(dir.path());
        assert_eq!(blobs, 0);
        let b = SledBackend::open(dir.path()).unwrap();
        assert_eq!(scan_all(&b), want, "after the second reopen");
        // Only the pieces of `dd…` are left.
        let pieces = b.db.range([PIECE]..[PIECE + 1]).count();
        assert_eq!(pieces, (3 * MIB).div_ceil(piece_max(&want[3].0)) - 1);
    }

    #[test]
    fn a_missing_piece_and_an_old_database_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = SledBackend::open(dir.path()).unwrap();
        b.write(vec![Change::Insert(b"k".to_vec(), value(1, 20_000))])
            .unwrap();
        b.db.remove(piece_key(b"k", 2)).unwrap();
        let Err(e) = b.get(b"k") else {
            panic!("a record with a missing piece was read");
        };
        assert!(e.to_string().contains("piece 2 of 4 is missing"), "{e}");
        drop(b);

        let old = tempfile::tempdir().unwrap();
        let db = dengine_storage_sled::open_db(old.path(), &Default::default()).unwrap();
        db.insert(b"m", &b"meta"[..]).unwrap();
        db.flush().unwrap();
        drop(db);
        let Err(e) = SledBackend::open(old.path()) else {
            panic!("an old database opened");
        };
        assert!(e.to_string().contains("written by an older version"), "{e}");

        // A layout version this program does not know.
        let newer = tempfile::tempdir().unwrap();
        let db = dengine_storage_sled::open_db(newer.path(), &Default::default()).unwrap();
        db.insert(LAYOUT_KEY, &[7]).unwrap();
        db.flush().unwrap();
        drop(db);
        let Err(e) = SledBackend::open(newer.path()) else {
            panic!("a database of an unknown layout version opened");
        };
        assert!(e.to_string().contains("layout version 7"), "{e}");
    }

    #[test]
    fn the_layout_version_is_written_once_and_survives_a_clear() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = SledBackend::open(dir.path()).unwrap();
        assert_eq!(
            b.db.get(LAYOUT_KEY).unwrap().as_deref(),
            Some(&[LAYOUT_VERSION][..])
        );
        b.write(vec![Change::Insert(b"k".to_vec(), value(1, 20_000))])
            .unwrap();
        b.clear().unwrap();
        assert_eq!(scan_all(&b), vec![]);
        assert_eq!(b.db.len(), 1, "only the layout version is left");
        drop(b);
        let b = SledBackend::open(dir.path()).expect("reopens after a clear");
        assert_eq!(scan_all(&b), vec![]);
    }
}

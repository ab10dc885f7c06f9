//! The store's records in sled.

use std::collections::{BTreeMap, HashMap};

use super::*;
use crate::record::{REV_PREFIX, REVS_END};
use dengine_storage_sled::chunk::{VALUE_MAX_BYTES, pieces};
use dengine_storage_sled::sled;

mod pages;

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
const LAYOUT_VERSION: u8 = 2;
/// The layout before pages: every record under a key of its own. Such a
/// database is converted when it opens.
const LAYOUT_BEFORE_PAGES: u8 = 1;

/// The store's revision records (`r ‖ revision`), which are kept in
/// [`pages`].
fn paged(key: &[u8]) -> bool {
    key.first() == Some(&REV_PREFIX)
}

/// The first key of the paged range.
const PAGED_START: &[u8] = &[REV_PREFIX];

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
/// The store's revision records (keys `r ‖ revision`) are not stored one
/// by one but many to a sled value, in pages of up to 6 KiB: a page is
/// stored as a record (in pieces, when one large record makes it larger
/// than a piece) under the key of its first record, and holds the records
/// from its key to the next page's.
///
/// The layout has a format version, stored under the key `0x02` (one
/// byte: 2, this layout), written when the database is created. A
/// database of version 1 (the same, without pages) is converted in one
/// atomic write when it opens (its records are read into memory for it).
/// A database without a version (written before pieces, or before the
/// version) or with another version is refused when it opens.
pub struct SledBackend {
    db: sled::Db,
    /// At least the greatest paged key stored (none: no page). A record
    /// with a greater key goes into a new page without reading any; a
    /// record at or below it is written into the page that holds its
    /// place. Removals leave it as it was: too great a figure only sends
    /// a write the slower way.
    last_paged: Option<Vec<u8>>,
}

impl SledBackend {
    /// Whether `path` holds a sled database (its `conf` file), as a data
    /// directory made before the store had a log of its own does.
    pub fn is_sled_dir(path: &std::path::Path) -> bool {
        path.join("conf").is_file()
    }

    /// Opens (or creates) the database in `path`.
    pub fn open(path: &std::path::Path) -> io::Result<SledBackend> {
        let db = dengine_storage_sled::open_db(path, &Default::default()).map_err(err)?;
        let mut convert = false;
        match db.get(LAYOUT_KEY).map_err(err)? {
            Some(v) if *v == [LAYOUT_VERSION] => {}
            Some(v) if *v == [LAYOUT_BEFORE_PAGES] => convert = true,
            Some(v) => {
                let version = match *v {
                    [n] => n.to_string(),
                    _ => format!("\"{}\"", v.escape_ascii()),
                };
                return Err(invalid(format!(
                    "the key-value database {} has layout version {version}, which this \
                     program does not read (it reads versions {LAYOUT_BEFORE_PAGES} and \
                     {LAYOUT_VERSION})",
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
        let mut backend = SledBackend {
            db,
            last_paged: None,
        };
        if convert {
            backend.convert_to_pages()?;
        }
        backend.last_paged = backend.last_paged_key()?;
        Ok(backend)
    }

    /// Rewrites a database of the layout before pages: every record of
    /// the paged range into pages, in one atomic write with the new
    /// layout version.
    fn convert_to_pages(&mut self) -> io::Result<()> {
        let mut records = Vec::new();
        for item in self.db.range(head_key(PAGED_START)..head_key(REVS_END)) {
            let (k, first) = item.map_err(err)?;
            let key = k.get(1..).unwrap_or_default().to_vec();
            let value = self.join(&key, &first)?;
            records.push((key, value));
        }
        let mut changes: BTreeMap<Vec<u8>, Change> = records
            .iter()
            .map(|(k, _)| (k.clone(), Change::Remove(k.clone())))
            .collect();
        for (key, page) in pack(records.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))) {
            changes.insert(key.clone(), Change::Put(key, page));
        }
        let mut batch = sled::Batch::default();
        self.stage(&mut batch, changes.into_values().collect())?;
        batch.insert(LAYOUT_KEY, &[LAYOUT_VERSION]);
        self.db.apply_batch(batch).map_err(err)
    }

    /// The greatest paged key stored, read from the last page.
    fn last_paged_key(&self) -> io::Result<Option<Vec<u8>>> {
        let Some(item) = self
            .db
            .range(head_key(PAGED_START)..head_key(REVS_END))
            .next_back()
        else {
            return Ok(None);
        };
        let (k, first) = item.map_err(err)?;
        let key = k.get(1..).unwrap_or_default();
        let page = self.join(key, &first)?;
        let records = decode_page(key, &page)?;
        Ok(records.last().map(|(k, _)| k.to_vec()))
    }

    /// The key of the page that holds the place of the paged `key` (none:
    /// `key` is before every page).
    fn page_key_of(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        match self
            .db
            .range(head_key(PAGED_START)..=head_key(key))
            .next_back()
        {
            Some(item) => Ok(Some(
                item.map_err(err)?.0.get(1..).unwrap_or_default().to_vec(),
            )),
            None => Ok(None),
        }
    }

    /// The page that holds the place of the paged `key`: its key and
    /// bytes (none: `key` is before every page).
    fn page_of(&self, key: &[u8]) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        let Some(item) = self
            .db
            .range(head_key(PAGED_START)..=head_key(key))
            .next_back()
        else {
            return Ok(None);
        };
        let (k, first) = item.map_err(err)?;
        let page_key = k.get(1..).unwrap_or_default().to_vec();
        let page = self.join(&page_key, &first)?;
        Ok(Some((page_key, page)))
    }

    /// The value stored one by one under `key` (a page, or a record
    /// outside the paged range).
    fn get_plain(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        match self.db.get(head_key(key)).map_err(err)? {
            Some(first) => self.join(key, &first).map(Some),
            None => Ok(None),
        }
    }

    /// Visits the records of `start <= key < end` outside the paged range
    /// (stored one by one); returns whether to go on.
    fn scan_plain(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut Visit<'_>,
    ) -> io::Result<bool> {
        let end = end.map_or_else(|| vec![PIECE], head_key);
        for item in self.db.range(head_key(start)..end) {
            let (k, first) = item.map_err(err)?;
            let key = k.get(1..).unwrap_or_default();
            if !visit(key, &self.join(key, &first)?)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Visits the paged records of `start <= key < end`; returns whether to
    /// go on.
    fn scan_pages(&self, start: &[u8], end: &[u8], visit: &mut Visit<'_>) -> io::Result<bool> {
        // From the page holding `start`'s place, to the last one that
        // starts before `end`.
        let from = match self
            .db
            .range(head_key(PAGED_START)..=head_key(start))
            .next_back()
        {
            Some(item) => item.map_err(err)?.0.to_vec(),
            None => head_key(start),
        };
        for item in self.db.range(from..head_key(end)) {
            let (k, first) = item.map_err(err)?;
            let page_key = k.get(1..).unwrap_or_default();
            let page = self.join(page_key, &first)?;
            for (key, value) in decode_page(page_key, &page)? {
                if key < start {
                    continue;
                }
                if key >= end {
                    return Ok(true);
                }
                if !visit(key, value)? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// The changes to the stored records (not the paged ones) that
    /// `paged` (the final state of each paged key a write changes: a
    /// value, or `None` to remove it) makes to the pages.
    fn page_changes(&self, paged: BTreeMap<Vec<u8>, Option<Vec<u8>>>) -> io::Result<Vec<Change>> {
        let mut out = Vec::new();
        // Keys after every stored one: new pages, nothing to read. A
        // removal there has nothing to remove.
        let mut appended = Vec::new();
        // Pages read and changed, by key; and records before every page.
        let mut edited: BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>> = BTreeMap::new();
        let mut front: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for (key, value) in paged {
            if self.last_paged.as_ref().is_none_or(|last| key > *last) {
                if let Some(value) = value {
                    appended.push((key, value));
                }
                continue;
            }
            // The page holding `key`'s place, read once per write.
            let records = match self.page_key_of(&key)? {
                Some(page_key) => {
                    if !edited.contains_key(&page_key) {
                        let page = self.get_plain(&page_key)?.unwrap_or_default();
                        let records = decode_page(&page_key, &page)?
                            .into_iter()
                            .map(|(k, v)| (k.to_vec(), v.to_vec()))
                            .collect();
                        edited.insert(page_key.clone(), records);
                    }
                    edited.entry(page_key).or_default()
                }
                None => &mut front,
            };
            match value {
                Some(v) => records.insert(key, v),
                None => records.remove(&key),
            };
        }
        for (page_key, records) in edited {
            let mut pages = pack(records.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
            if pages.is_empty() {
                out.push(Change::Remove(page_key));
                continue;
            }
            // The first page stays under its key, which may now be
            // before its first record; the others are new keys inside
            // the old page's range.
            let (_, first) = pages.remove(0);
            out.push(Change::Put(page_key, first));
            out.extend(pages.into_iter().map(|(k, p)| Change::Insert(k, p)));
        }
        for (page_key, page) in pack(front.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))) {
            out.push(Change::Insert(page_key, page));
        }
        for (page_key, page) in pack(appended.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))) {
            out.push(Change::Insert(page_key, page));
        }
        Ok(out)
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

impl SledBackend {
    /// Adds `changes` (to records stored one by one, pages included) to
    /// `batch`, each in pieces.
    fn stage(&self, batch: &mut sled::Batch, changes: Vec<Change>) -> io::Result<()> {
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
                Some(v) => insert_pieces(batch, &key, &v)?,
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
        Ok(())
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
        if paged(key) {
            let Some((page_key, page)) = self.page_of(key)? else {
                return Ok(None);
            };
            let records = decode_page(&page_key, &page)?;
            return Ok(records
                .binary_search_by(|(k, _)| (*k).cmp(key))
                .ok()
                .map(|i| records[i].1.to_vec()));
        }
        self.get_plain(key)
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, visit: &mut Visit<'_>) -> io::Result<()> {
        if end.is_some_and(|e| e <= start) {
            return Ok(());
        }
        let before_end = |cap: &'static [u8]| end.map_or(cap, |e| e.min(cap));
        // Plain keys before the paged range, the pages, plain keys after.
        if start < PAGED_START && !self.scan_plain(start, Some(before_end(PAGED_START)), visit)? {
            return Ok(());
        }
        let (from, to) = (start.max(PAGED_START), before_end(REVS_END));
        if from < to && !self.scan_pages(from, to, visit)? {
            return Ok(());
        }
        if end.is_none_or(|e| e > REVS_END) {
            self.scan_plain(start.max(REVS_END), end, visit)?;
        }
        Ok(())
    }

    fn write(&mut self, changes: Vec<Change>) -> io::Result<()> {
        let mut plain = Vec::with_capacity(changes.len());
        // The final state of each paged key the write changes.
        let mut paged_now: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for change in changes {
            match change {
                Change::Insert(k, v) | Change::Put(k, v) if paged(&k) => {
                    paged_now.insert(k, Some(v));
                }
                Change::Remove(k) if paged(&k) => {
                    paged_now.insert(k, None);
                }
                other => plain.push(other),
            }
        }
        let greatest = paged_now
            .iter()
            .rev()
            .find_map(|(k, v)| v.as_ref().map(|_| k.clone()));
        plain.extend(self.page_changes(paged_now)?);
        let mut batch = sled::Batch::default();
        self.stage(&mut batch, plain)?;
        self.db.apply_batch(batch).map_err(err)?;
        if let Some(g) = greatest
            && self.last_paged.as_ref().is_none_or(|last| g > *last)
        {
            self.last_paged = Some(g);
        }
        Ok(())
    }

    fn clear(&mut self) -> io::Result<()> {
        self.last_paged = None;
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

/// The records of the page under `page_key`, checked.
fn decode_page<'a>(page_key: &[u8], page: &'a [u8]) -> io::Result<pages::Records<'a>> {
    pages::decode(page)
        .map_err(|e| invalid(format!("key-value page {}: {e}", page_key.escape_ascii())))
}

/// `records` (in increasing key order) in pages of at most
/// [`pages::page_max`] bytes each (a larger record in a page of its own):
/// each page with its key, the key of its first record.
fn pack<'a>(records: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut page: Vec<(&[u8], &[u8])> = Vec::new();
    let mut len = 0;
    for (k, v) in records {
        let add = pages::PER_RECORD + k.len() + v.len();
        if let Some((first, _)) = page.first()
            && len + add > pages::page_max(first)
        {
            out.push((first.to_vec(), pages::encode(page.iter().copied())));
            page.clear();
        }
        if page.is_empty() {
            len = pages::encoded_len(std::iter::empty());
        }
        page.push((k, v));
        len += add;
    }
    if let Some((first, _)) = page.first() {
        out.push((first.to_vec(), pages::encode(page.iter().copied())));
    }
    out
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

    /// A revision record's key.
    fn rkey(main: u64, sub: u32) -> Vec<u8> {
        let mut k = vec![REV_PREFIX];
        k.extend_from_slice(&main.to_be_bytes());
        k.extend_from_slice(&sub.to_be_bytes());
        k
    }

    fn scan_range(b: &SledBackend, start: &[u8], end: Option<&[u8]>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        b.scan(start, end, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(true)
        })
        .unwrap();
        out
    }

    /// Every read the store makes agrees with a map of the same writes.
    fn check_against(b: &SledBackend, model: &BTreeMap<Vec<u8>, Vec<u8>>, step: usize) {
        assert_eq!(
            scan_all(b),
            model.clone().into_iter().collect::<Vec<_>>(),
            "step {step}"
        );
        let bounds: Vec<Vec<u8>> = vec![
            vec![],
            b"a".to_vec(),
            PAGED_START.to_vec(),
            rkey(5, 0),
            rkey(40, 1),
            rkey(90, 0),
            REVS_END.to_vec(),
            b"t".to_vec(),
        ];
        for start in &bounds {
            for end in bounds.iter().map(|e| Some(e.as_slice())).chain([None]) {
                let want: Vec<_> = model
                    .iter()
                    .filter(|(k, _)| {
                        k.as_slice() >= start.as_slice() && end.is_none_or(|e| k.as_slice() < e)
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                assert_eq!(
                    scan_range(b, start, end),
                    want,
                    "step {step}: {start:?}..{end:?}"
                );
            }
        }
        // Stopping a scan stops it, inside a page too.
        let mut seen = 0;
        b.scan(&[], None, &mut |_, _| {
            seen += 1;
            Ok(seen < 3)
        })
        .unwrap();
        assert_eq!(seen, model.len().min(3), "step {step}");
    }

    #[test]
    fn paged_records_read_back_as_written_through_appends_removals_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = SledBackend::open(dir.path()).unwrap();
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut main = 1u64;
        for step in 0..120 {
            let mut changes = Vec::new();
            match next() % 6 {
                // Appends of records small and large (a page of its own,
                // in pieces), with plain keys beside them.
                0..=2 => {
                    for sub in 0..(next() % 40) as u32 {
                        let len = if next() % 25 == 0 {
                            20_000
                        } else {
                            (next() % 400) as usize
                        };
                        let k = rkey(main, sub);
                        let v = value(step as u8, len);
                        model.insert(k.clone(), v.clone());
                        changes.push(Change::Insert(k, v));
                    }
                    main += 1;
                    let plain = format!("m{}", next() % 5).into_bytes();
                    model.insert(plain.clone(), value(7, 30));
                    changes.push(Change::Put(plain, value(7, 30)));
                }
                // A compaction: removes records anywhere.
                3 | 4 => {
                    let keys: Vec<Vec<u8>> = model.keys().filter(|k| paged(k)).cloned().collect();
                    for k in keys {
                        if next() % 3 == 0 {
                            model.remove(&k);
                            changes.push(Change::Remove(k));
                        }
                    }
                    changes.push(Change::Remove(rkey(main + 1000, 0)));
                }
                // Records written below the last one (no store does, but
                // the backend keeps them right): between pages and before
                // the first one.
                _ => {
                    for _ in 0..5 {
                        let k = rkey(next() % (main + 1), 1_000 + (next() % 100) as u32);
                        let v = value(3, (next() % 300) as usize);
                        model.insert(k.clone(), v.clone());
                        changes.push(Change::Put(k, v));
                    }
                    let k = rkey(0, (next() % 5) as u32);
                    model.insert(k.clone(), value(9, 9));
                    changes.push(Change::Insert(k, value(9, 9)));
                }
            }
            b.write(changes).unwrap();
            for (k, v) in model.iter().filter(|(k, _)| paged(k)).take(50) {
                assert_eq!(b.get(k).unwrap().as_ref(), Some(v), "step {step}");
            }
            assert_eq!(b.get(&rkey(main + 5000, 0)).unwrap(), None);
            if step % 10 == 0 {
                check_against(&b, &model, step);
            }
            if step % 40 == 39 {
                drop(b);
                b = SledBackend::open(dir.path()).unwrap();
                check_against(&b, &model, step);
            }
        }
        check_against(&b, &model, 120);
        // Records are stored many to a value: a write of 300 small ones
        // adds a few pages.
        let pages = |b: &SledBackend| {
            b.db.range(head_key(PAGED_START)..head_key(REVS_END))
                .count()
        };
        let before = pages(&b);
        let many = (0..300).map(|sub| Change::Insert(rkey(main, sub), value(1, 200)));
        b.write(many.collect()).unwrap();
        let added = pages(&b) - before;
        assert!(added <= 300 * 220 / 5_000, "{added} pages");
        drop(b);
        let (blobs, _) = blobs_and_largest(dir.path());
        assert_eq!(blobs, 0);
    }

    #[test]
    fn a_database_of_records_one_by_one_is_converted_to_pages_when_it_opens() {
        let dir = tempfile::tempdir().unwrap();
        let mut want = Vec::new();
        {
            let db = dengine_storage_sled::open_db(dir.path(), &Default::default()).unwrap();
            let mut batch = sled::Batch::default();
            batch.insert(LAYOUT_KEY, &[LAYOUT_BEFORE_PAGES]);
            for (k, v) in [
                (b"l1".to_vec(), value(1, 10)),
                (rkey(2, 0), value(2, 300)),
                (rkey(2, 1), value(3, 30_000)),
                (rkey(3, 0), value(4, 0)),
                (b"m".to_vec(), value(5, 8)),
            ] {
                insert_pieces(&mut batch, &k, &v).unwrap();
                want.push((k, v));
            }
            for main in 4..200u64 {
                let (k, v) = (rkey(main, 0), value(main as u8, 100));
                insert_pieces(&mut batch, &k, &v).unwrap();
                want.push((k, v));
            }
            db.apply_batch(batch).unwrap();
            db.flush().unwrap();
        }
        want.sort();
        let b = SledBackend::open(dir.path()).unwrap();
        assert_eq!(
            b.db.get(LAYOUT_KEY).unwrap().as_deref(),
            Some(&[LAYOUT_VERSION][..])
        );
        assert_eq!(scan_all(&b), want);
        assert_eq!(b.get(&rkey(2, 1)).unwrap(), Some(value(3, 30_000)));
        let heads =
            b.db.range(head_key(PAGED_START)..head_key(REVS_END))
                .count();
        assert!(heads < 10, "{heads} pages");
        drop(b);
        let b = SledBackend::open(dir.path()).unwrap();
        assert_eq!(scan_all(&b), want);
    }

    #[test]
    fn a_damaged_page_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = SledBackend::open(dir.path()).unwrap();
        b.write(
            (0..10)
                .map(|m| Change::Insert(rkey(m, 0), value(1, 50)))
                .collect(),
        )
        .unwrap();
        let (k, mut first) =
            b.db.range(head_key(PAGED_START)..head_key(REVS_END))
                .next()
                .unwrap()
                .unwrap();
        let mut bytes = first.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        first = bytes.into();
        b.db.insert(k, first).unwrap();
        let Err(e) = b.get(&rkey(3, 0)) else {
            panic!("a damaged page was read");
        };
        assert!(e.to_string().contains("page checksum mismatch"), "{e}");
    }
}

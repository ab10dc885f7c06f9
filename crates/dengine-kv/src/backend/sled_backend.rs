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
mod tests;

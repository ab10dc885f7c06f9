//! Pages: many of the store's revision records in one sled value.
//!
//! sled pays about 10 µs for an insert of a 300-byte value on this kind of
//! machine, whatever the batch, and about 25 µs for a 6 KiB one in a
//! batch of a hundred (measured with sled 0.34.7, flushing after each
//! batch): per byte, values of a few KiB are ten times cheaper. Every put
//! writes one record, so the records (keys `r ‖ revision`, written in
//! increasing order and never changed, only removed by compactions) are
//! stored in pages of up to [`page_max`] bytes, each under the key of its
//! first record when it was written.
//!
//! A page holds the records with keys from its own key up to (not
//! including) the next page's key: so the page of a record is the last
//! page whose key is at or before the record's key, and removing records
//! (compaction) rewrites their pages under the same keys, or removes a
//! page that is left empty.
//!
//! A page's bytes: its CRC32 (little-endian, of everything after it), the
//! format version ([`PAGE_VERSION`]), then each record as its key's length
//! and its value's length (`u32`, little-endian), the key and the value,
//! in increasing key order.

/// The format version of a page.
pub(super) const PAGE_VERSION: u8 = 1;

/// Bytes before the first record: the CRC32 and the version.
const HEADER: usize = 5;

/// Bytes a record takes in a page besides its key and value.
pub(super) const PER_RECORD: usize = 8;

/// What a page with these records takes.
pub(super) fn encoded_len<'a>(records: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> usize {
    HEADER
        + records
            .into_iter()
            .map(|(k, v)| PER_RECORD + k.len() + v.len())
            .sum::<usize>()
}

/// The page of `records` (in increasing key order).
pub(super) fn encode<'a>(
    records: impl IntoIterator<Item = (&'a [u8], &'a [u8])> + Clone,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(records.clone()));
    out.extend_from_slice(&[0; 4]);
    out.push(PAGE_VERSION);
    for (k, v) in records {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(v);
    }
    let crc = crc32fast::hash(&out[4..]);
    out[..4].copy_from_slice(&crc.to_le_bytes());
    out
}

/// A page's records: keys and values, borrowed from its bytes.
pub(super) type Records<'a> = Vec<(&'a [u8], &'a [u8])>;

/// The records of a page, checked: its checksum and version, every
/// length within the page, keys in increasing order.
pub(super) fn decode(page: &[u8]) -> Result<Records<'_>, String> {
    let Some((crc, body)) = page.split_first_chunk::<4>() else {
        return Err(format!("a page of {} bytes is too short", page.len()));
    };
    let actual = crc32fast::hash(body);
    if u32::from_le_bytes(*crc) != actual {
        return Err(format!(
            "page checksum mismatch (stored {:08x}, computed {actual:08x})",
            u32::from_le_bytes(*crc)
        ));
    }
    let (version, mut rest) = body.split_first().ok_or("a page without a version")?;
    if *version != PAGE_VERSION {
        return Err(format!(
            "page format version {version}, which this program does not read (it reads \
             {PAGE_VERSION})"
        ));
    }
    let mut records: Records<'_> = Vec::new();
    while !rest.is_empty() {
        let Some((lens, after)) = rest.split_first_chunk::<8>() else {
            return Err("a page ends inside a record's lengths".into());
        };
        let [k0, k1, k2, k3, v0, v1, v2, v3] = *lens;
        let klen = u32::from_le_bytes([k0, k1, k2, k3]) as usize;
        let vlen = u32::from_le_bytes([v0, v1, v2, v3]) as usize;
        if after.len() < klen.saturating_add(vlen) {
            return Err("a page ends inside a record".into());
        }
        let (key, after) = after.split_at(klen);
        let (value, after) = after.split_at(vlen);
        if records.last().is_some_and(|(last, _)| *last >= key) {
            return Err("a page's records are out of order".into());
        }
        records.push((key, value));
        rest = after;
    }
    Ok(records)
}

/// The most bytes a page should take: what fits in one sled value with
/// its key (see [`super::piece_max`]), so that a page of small records is
/// one sled value. A single record larger than this gets a page of its
/// own, stored in pieces.
pub(super) fn page_max(page_key: &[u8]) -> usize {
    super::piece_max(page_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_round_trip_and_damage_is_found() {
        let records: Vec<(Vec<u8>, Vec<u8>)> = (0..50u8)
            .map(|i| (vec![b'r', i], vec![i; i as usize * 3]))
            .collect();
        let refs = records.iter().map(|(k, v)| (k.as_slice(), v.as_slice()));
        let page = encode(refs.clone());
        assert_eq!(page.len(), encoded_len(refs.clone()));
        assert_eq!(decode(&page).unwrap(), refs.collect::<Vec<_>>());
        assert_eq!(decode(&encode(std::iter::empty())).unwrap(), vec![]);
        for i in 0..page.len() {
            let mut bad = page.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "a flipped byte {i} was not found");
        }
        for n in 0..page.len() {
            assert!(decode(&page[..n]).is_err(), "a page cut at {n} was read");
        }
        // Out of order, with a correct checksum.
        let swapped = encode([(&b"rb"[..], &b"1"[..]), (&b"ra"[..], &b"2"[..])]);
        assert!(decode(&swapped).unwrap_err().contains("out of order"));
    }
}

//! Keeping every value under sled's blob threshold, so that `Db::flush`
//! makes it durable.
//!
//! sled 0.34.7 writes a page (a B-tree node with all its keys and values)
//! or a page update whose message exceeds a quarter of its 512 KiB segment
//! less the segment header (131,052 bytes, `reserve_inner` in
//! `pagecache/logger.rs`) to a file of its own under `blobs/`
//! (`write_blob` in `pagecache/blob_io.rs`). That file is written but never
//! fsynced, nor is its directory: `Db::flush` fsyncs the segment file
//! alone, which then refers to the blob. After a power failure or an OS
//! crash the blob may be empty or missing, and sled reports the page as
//! corrupt although the write was acknowledged as durable (sled issue
//! #1077). A process crash loses nothing: the blob is in the page cache.
//!
//! A leaf splits once it holds more than 16 keys, so it may hold 17. With
//! every key and value together under about [`VALUE_MAX_BYTES`], a leaf
//! stays under 17 × 6 KiB ≈ 105 KiB (plus a few bytes a key) and is never
//! written as a blob, so everything sled holds is in its fsynced segments.
//! Callers split larger values into [`pieces`] stored under separate keys.

/// The most bytes a value stored by this crate (and by the key-value
/// store's sled backend) holds, key included where the caller says so.
///
/// 6 KiB leaves room for keys and sled's few bytes of overhead a key.
/// Measured: no blob file with log entries of up to 7 KB in batches of 1
/// to 1024, hundreds with 1 MiB values stored whole; none with 1 MiB
/// entries or key-value records stored in pieces (this crate's
/// `tests/no_blobs.rs`, and the key-value store's backend tests).
pub const VALUE_MAX_BYTES: usize = 6 * 1024;

/// `bytes` cut into consecutive pieces of at most `max` bytes (at least
/// one byte each, except the single empty piece of empty `bytes`).
///
/// `max` of 0 is taken as 1, so the cut always ends.
pub fn pieces(bytes: &[u8], max: usize) -> impl Iterator<Item = &[u8]> {
    let empty = bytes.is_empty().then_some(bytes);
    bytes.chunks(max.max(1)).chain(empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_bytes_in_order() {
        let bytes: Vec<u8> = (0..=255).collect();
        for max in [0, 1, 7, 100, 256, 1000] {
            let got: Vec<&[u8]> = pieces(&bytes, max).collect();
            assert!(got.iter().all(|p| !p.is_empty() && p.len() <= max.max(1)));
            assert_eq!(got.concat(), bytes, "max {max}");
        }
        let got: Vec<&[u8]> = pieces(&[], 10).collect();
        assert_eq!(got, [&[] as &[u8]]);
    }
}

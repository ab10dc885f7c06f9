//! Frames: how records are laid out in a segment file, and how a torn
//! write at the end of the log is told from damage.
//!
//! A frame is its body's length (`u32`), the CRC32 of those four bytes,
//! the CRC32 of the body (all little-endian) and the body. A segment is
//! frames one after another, nothing between them. The length has a
//! checksum of its own so that a damaged length is reported as damage,
//! not taken for a frame cut short by the end of the file.

/// The unit a disk writes whole.
pub(crate) const SECTOR: usize = 512;

/// Bytes of a frame's header.
pub const HEADER: usize = 12;

/// Appends the frame of `body` to `out`.
#[cfg(test)]
pub(crate) fn push(out: &mut Vec<u8>, body: &[u8]) {
    push_with(out, |out| out.extend_from_slice(body));
}

/// Appends a frame to `out` whose body `body` appends (in place: the body
/// is not copied again).
pub fn push_with(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    body(out);
    let len = ((out.len() - start - HEADER) as u32).to_le_bytes();
    let crc = crc32fast::hash(&out[start + HEADER..]).to_le_bytes();
    out[start..start + 4].copy_from_slice(&len);
    out[start + 4..start + 8].copy_from_slice(&crc32fast::hash(&len).to_le_bytes());
    out[start + 8..start + 12].copy_from_slice(&crc);
}

/// What reading a frame at some offset of a segment found.
#[derive(Debug, PartialEq, Eq)]
pub enum Read<'a> {
    /// A whole frame with a good checksum: its body, and where the next
    /// one starts.
    Frame(&'a [u8], usize),
    /// The end of the segment: nothing, or only zeros, follow.
    End,
    /// A frame that was never wholly written: it runs past the end of the
    /// file, or a 512-byte sector of it reads as zeros (what a crash
    /// leaves of a write the file system had not finished), and nothing
    /// but zeros follows it. Only the last segment may end so.
    Torn,
    /// Anything else: a bad checksum, a length that makes no sense, bytes
    /// after a torn frame. The segment is damaged; the body as found, if
    /// its length could be trusted (to name what is damaged).
    Damaged(String, Option<&'a [u8]>),
}

/// Reads the frame at `at` of `bytes` (a whole segment).
pub fn read(bytes: &[u8], at: usize) -> Read<'_> {
    let rest = &bytes[at.min(bytes.len())..];
    if rest.iter().all(|&b| b == 0) {
        return Read::End;
    }
    let body = match read_whole(rest) {
        Whole::Frame(body, len) => return Read::Frame(body, at + len),
        // Some bytes, not zeros, fewer than a header or than the header
        // says: written in part.
        Whole::Short => return Read::Torn,
        Whole::BadHeader if rest[HEADER..].iter().all(|&b| b == 0) => return Read::Torn,
        Whole::BadHeader => {
            return Read::Damaged(format!("a damaged record header at offset {at}"), None);
        }
        Whole::BadBody(body) => body,
    };
    let len = body.len();
    let end = at + HEADER + len;
    // Sectors are written whole: a write cut by a crash reads as zeros
    // from a sector boundary inside it to the end of the file, or has a
    // sector of zeros with only zeros after it.
    let zeros_from = written_end(bytes);
    let zeros_after = zeros_from <= end;
    if zeros_from.div_ceil(SECTOR) * SECTOR < end
        || (zeros_after && has_zero_sector(bytes, at, end))
    {
        return Read::Torn;
    }
    Read::Damaged(
        format!("checksum mismatch in the {len}-byte record at offset {at}"),
        Some(body),
    )
}

/// What the bytes at the start of `rest` are, taken as one frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Whole<'a> {
    /// A frame that checks: its body, and its length with its header.
    Frame(&'a [u8], usize),
    /// Fewer bytes than its header, or than its header says.
    Short,
    /// A header whose length does not match its checksum.
    BadHeader,
    /// A whole frame whose body does not match its checksum.
    BadBody(&'a [u8]),
}

/// Reads `rest` as one frame, with no guess at why it may not check.
pub(crate) fn read_whole(rest: &[u8]) -> Whole<'_> {
    let Some((header, after)) = rest.split_first_chunk::<HEADER>() else {
        return Whole::Short;
    };
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let (len, len_crc, crc) = (word(0), word(4), word(8));
    if crc32fast::hash(&len.to_le_bytes()) != len_crc {
        return Whole::BadHeader;
    }
    let len = len as usize;
    let Some(body) = after.get(..len) else {
        return Whole::Short;
    };
    if crc32fast::hash(body) == crc {
        Whole::Frame(body, HEADER + len)
    } else {
        Whole::BadBody(body)
    }
}

/// Where the bytes of `bytes` that are not zeros end: a segment's
/// records, and what a crash left of a torn one, end there; only zeros
/// follow (a prepared segment's, or none).
pub fn written_end(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1)
}

/// Whether a whole 512-byte sector (at a multiple of 512 in the file)
/// within `start..end` holds only zeros.
fn has_zero_sector(bytes: &[u8], start: usize, end: usize) -> bool {
    let mut s = start.div_ceil(SECTOR) * SECTOR;
    while s + SECTOR <= end {
        if bytes[s..s + SECTOR].iter().all(|&b| b == 0) {
            return true;
        }
        s += SECTOR;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(bodies: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in bodies {
            push(&mut out, b);
        }
        out
    }

    fn bodies(bytes: &[u8]) -> (Vec<Vec<u8>>, Read<'_>) {
        let mut at = 0;
        let mut out = Vec::new();
        loop {
            match read(bytes, at) {
                Read::Frame(b, next) => {
                    out.push(b.to_vec());
                    at = next;
                }
                other => return (out, other),
            }
        }
    }

    #[test]
    fn frames_read_back_and_end_at_zeros() {
        let mut seg = segment(&[b"one", b"", b"three"]);
        let (got, end) = bodies(&seg);
        assert_eq!(got, [&b"one"[..], b"", b"three"]);
        assert_eq!(end, Read::End);
        seg.extend_from_slice(&[0; 4096]);
        assert_eq!(bodies(&seg).1, Read::End);
    }

    #[test]
    fn a_write_cut_anywhere_reads_as_torn_never_as_a_frame() {
        let big = vec![7u8; 3000];
        let seg = segment(&[b"first", &big]);
        let first_len = HEADER + 5;
        for cut in first_len + 1..seg.len() {
            let (got, end) = bodies(&seg[..cut]);
            assert_eq!(got, [b"first".to_vec()], "cut at {cut}");
            assert_eq!(end, Read::Torn, "cut at {cut}");
        }
        // The file grew but a sector of the write never reached the disk.
        let mut holed = seg.clone();
        let hole = first_len.div_ceil(512) * 512 + 512;
        holed[hole..hole + 512].fill(0);
        assert_eq!(bodies(&holed).1, Read::Torn);
    }

    #[test]
    fn damage_is_not_taken_for_a_torn_write() {
        let big = vec![7u8; 3000];
        let seg = segment(&[b"first", &big, b"last"]);
        for at in [
            2,
            6,
            HEADER + 2,
            HEADER + 5 + HEADER + 100,
            HEADER + 5 + 1,
            seg.len() - 1,
        ] {
            let mut bad = seg.clone();
            bad[at] ^= 1;
            assert!(
                matches!(bodies(&bad).1, Read::Damaged(..)),
                "a flipped byte at {at} was not reported"
            );
        }
        // A torn frame with frames after it is damage.
        let mut holed = seg.clone();
        holed[1024..1536].fill(0);
        assert!(matches!(bodies(&holed).1, Read::Damaged(..)));
    }
}

//! Tagged sectors: how a segment's frames are laid out so that a segment
//! file can be used again without being written over with zeros first.
//!
//! A segment of this layout is 512-byte sectors. Each starts with a tag of
//! 8 bytes, made of the segment's sequence number and the sector's place
//! in the file, and holds 504 bytes of the segment's frames (see `frame`)
//! after it. The frames run on from one sector to the next as if the tags
//! were not there.
//!
//! A sector is what a disk writes whole, so after a crash each sector of
//! a file holds either what was last written to it or what was there
//! before. The tag tells the two apart:
//! - **current**: the tag of this segment and this place;
//! - **stale**: the tag of an older segment at this place (the file held
//!   that segment before it was used again), or all zeros (a new file):
//!   nothing was written here since;
//! - **bad**: anything else, damage.
//!
//! A segment's frames are read from its current sectors, from the first
//! on. Where they stop:
//! - a frame that runs on into a stale sector was torn by a crash (it was
//!   never synced, so nobody was told it was durable), if no current and
//!   no bad sector follows;
//! - a frame that does not check within current sectors is damage, as is
//!   a bad sector anywhere, and a current sector after a stale one: a
//!   sector that was synced is never stale.
//!
//! (A segment written by a store before this layout is a plain sequence
//! of frames, over zeros; its first sector is not tagged, so it is read
//! as before.)

pub(crate) use crate::frame::SECTOR;
use crate::frame::{self, Read};

/// Bytes of a sector's tag.
const TAG: usize = 8;

/// Bytes of frames a sector holds.
pub(crate) const PAYLOAD: usize = SECTOR - TAG;

/// Mixed into a tag's checksum, so that no other data reads as a tag.
const TAG_SALT: &[u8] = b"dengine wal sector";

/// The tag of sector `index` of segment `seq`: the low 32 bits of `seq`,
/// and a checksum of both.
fn tag(seq: u64, index: u64) -> [u8; TAG] {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(TAG_SALT);
    hasher.update(&seq.to_le_bytes());
    hasher.update(&index.to_le_bytes());
    let mut out = [0; TAG];
    out[..4].copy_from_slice(&(seq as u32).to_le_bytes());
    out[4..].copy_from_slice(&hasher.finalize().to_le_bytes());
    out
}

/// What a sector of a segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sector {
    /// Written for this segment.
    Current,
    /// Not written since the file held an older segment, or since it was
    /// made (zeros).
    Stale,
    /// Neither: damage.
    Bad,
}

/// What `bytes` (sector `index` of a file, whole or the file's last, cut
/// short) holds for segment `seq`.
pub(crate) fn classify(bytes: &[u8], seq: u64, index: u64) -> Sector {
    let Some(found) = bytes.first_chunk::<TAG>() else {
        // The file ends inside the tag: a write cut short, if what there
        // is of it is the tag's start (or zeros).
        let ours = tag(seq, index);
        return if bytes.iter().all(|&b| b == 0) || ours.starts_with(bytes) {
            Sector::Stale
        } else {
            Sector::Bad
        };
    };
    if *found == tag(seq, index) {
        return Sector::Current;
    }
    let theirs = u64::from(u32::from_le_bytes([found[0], found[1], found[2], found[3]]));
    if bytes.iter().all(|&b| b == 0) || (theirs < seq && *found == tag(theirs, index)) {
        return Sector::Stale;
    }
    Sector::Bad
}

/// Whether a file whose first sector is `first` is of this layout for
/// segment `seq` (a segment of the layout before has a frame there).
pub(crate) fn is_tagged(first: &[u8], seq: u64) -> bool {
    classify(&first[..first.len().min(SECTOR)], seq, 0) != Sector::Bad
}

/// Where the bytes of frames up to `len` end in a file of this layout
/// (a sector's tag is written with its first byte of frames).
pub(crate) fn file_len(len: u64) -> u64 {
    let (whole, part) = (len / PAYLOAD as u64, len % PAYLOAD as u64);
    whole * SECTOR as u64 + if part == 0 { 0 } else { TAG as u64 + part }
}

/// Lays frames out in tagged sectors, for segment `seq`.
#[derive(Debug)]
pub(crate) struct Packer {
    seq: u64,
    /// Bytes of frames laid out so far.
    len: u64,
}

impl Packer {
    /// Lays out segment `seq`'s frames after the first `len` bytes of
    /// them.
    pub(crate) fn new(seq: u64, len: u64) -> Packer {
        Packer { seq, len }
    }

    /// Appends to `out` what the file gets for `frames` (the bytes that
    /// follow the last ones laid out).
    pub(crate) fn pack(&mut self, mut frames: &[u8], out: &mut Vec<u8>) {
        out.reserve(frames.len() + (frames.len() / PAYLOAD + 1) * TAG);
        while !frames.is_empty() {
            let used = (self.len % PAYLOAD as u64) as usize;
            if used == 0 {
                out.extend_from_slice(&tag(self.seq, self.len / PAYLOAD as u64));
            }
            let n = frames.len().min(PAYLOAD - used);
            out.extend_from_slice(&frames[..n]);
            frames = &frames[n..];
            self.len += n as u64;
        }
    }
}

/// A segment file of this layout, read: its frames' bytes, and what
/// follows them.
#[derive(Debug)]
pub(crate) struct Unpacked {
    /// The frames' bytes of the current sectors from the first on.
    pub(crate) frames: Vec<u8>,
    /// Where those sectors end in the file.
    pub(crate) current_end: u64,
    /// What ends them: the file's end, or a stale or bad sector, and
    /// whether a current or bad sector comes later (damage).
    after: After,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// The file ends, or stale sectors follow to its end.
    Nothing,
    /// A bad sector at this place, or a current one after a stale one.
    Damage(u64),
}

/// Reads the file `bytes` of segment `seq`.
pub(crate) fn unpack(bytes: &[u8], seq: u64) -> Unpacked {
    let mut frames = Vec::with_capacity(bytes.len());
    let mut sectors = bytes.chunks(SECTOR).zip(0u64..);
    let mut after = After::Nothing;
    let mut current_end = 0;
    for (sector, index) in sectors.by_ref() {
        match classify(sector, seq, index) {
            Sector::Current => {
                frames.extend_from_slice(&sector[TAG.min(sector.len())..]);
                current_end += sector.len() as u64;
            }
            Sector::Stale => break,
            Sector::Bad => {
                after = After::Damage(index);
                break;
            }
        }
    }
    if after == After::Nothing {
        for (sector, index) in sectors {
            if classify(sector, seq, index) != Sector::Stale {
                after = After::Damage(index);
                break;
            }
        }
    }
    Unpacked {
        frames,
        current_end,
        after,
    }
}

impl Unpacked {
    /// Reads the frame at `at` of the frames' bytes, as [`frame::read`]
    /// does for a segment of the layout before.
    pub(crate) fn read(&self, at: usize) -> Read<'_> {
        let rest = &self.frames[at.min(self.frames.len())..];
        let damage = |what: String| {
            Read::Damaged(
                format!("{what} (in the frames' bytes, at offset {at})"),
                None,
            )
        };
        let torn_or = |what: &str| match self.after {
            After::Nothing => Read::Torn,
            After::Damage(index) => damage(format!(
                "{what}, and sector {index} after it is damaged or out of place"
            )),
        };
        if rest.iter().all(|&b| b == 0) {
            return match self.after {
                After::Nothing => Read::End,
                After::Damage(index) => damage(format!(
                    "sector {index}, after the last record, is damaged or out of place"
                )),
            };
        }
        match frame::read_whole(rest) {
            frame::Whole::Frame(body, len) => Read::Frame(body, at + len),
            // It runs on past the current sectors: written in part.
            frame::Whole::Short => torn_or("a record written in part"),
            frame::Whole::BadHeader => damage("a damaged record header".into()),
            frame::Whole::BadBody(body) => Read::Damaged(
                format!(
                    "checksum mismatch in the {}-byte record at offset {at} of the frames' bytes",
                    body.len()
                ),
                Some(body),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(bodies: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in bodies {
            frame::push(&mut out, b);
        }
        out
    }

    /// Segment `seq` of `bodies`, packed in whatever pieces `cuts` says,
    /// then padded with zeros to a whole sector.
    fn segment(seq: u64, bodies: &[&[u8]], cuts: &[usize]) -> Vec<u8> {
        let all = frames(bodies);
        let mut packer = Packer::new(seq, 0);
        let mut out = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain(std::iter::once(&all.len())) {
            let cut = cut.clamp(from, all.len());
            packer.pack(&all[from..cut], &mut out);
            from = cut;
        }
        assert_eq!(out.len() as u64, file_len(all.len() as u64));
        out.resize(out.len().div_ceil(SECTOR) * SECTOR, 0);
        out
    }

    fn read_all(bytes: &[u8], seq: u64) -> (Vec<Vec<u8>>, String) {
        let unpacked = unpack(bytes, seq);
        let mut at = 0;
        let mut out = Vec::new();
        loop {
            match unpacked.read(at) {
                Read::Frame(body, next) => {
                    out.push(body.to_vec());
                    at = next;
                }
                Read::End => return (out, "end".into()),
                Read::Torn => return (out, "torn".into()),
                Read::Damaged(why, _) => return (out, format!("damaged: {why}")),
            }
        }
    }

    #[test]
    fn frames_read_back_however_they_were_packed() {
        let big = vec![7u8; 1500];
        let bodies: [&[u8]; 4] = [b"one", &big, b"", b"four"];
        for cuts in [
            &[][..],
            &[1, 2, 3],
            &[503, 504, 505, 1008],
            &[100, 900, 1200],
        ] {
            let seg = segment(5, &bodies, cuts);
            assert_eq!(
                read_all(&seg, 5),
                (bodies.iter().map(|b| b.to_vec()).collect(), "end".into()),
                "{cuts:?}"
            );
        }
        // The layout before has a frame in its first sector, not a tag.
        assert!(!is_tagged(&frames(&[b"one"]), 5));
        assert!(is_tagged(&segment(5, &bodies, &[]), 5));
        assert!(is_tagged(&[0; SECTOR], 5));
    }

    #[test]
    fn an_older_segment_under_the_end_reads_as_nothing() {
        let old = segment(3, &[&[9u8; 3000], &[8u8; 2000]], &[]);
        let mut seg = old.clone();
        let new = segment(5, &[b"one", &[1u8; 700]], &[]);
        seg[..new.len()].copy_from_slice(&new);
        assert_eq!(
            read_all(&seg, 5),
            (vec![b"one".to_vec(), vec![1u8; 700]], "end".into())
        );
        // A file used three times: sectors of two older segments.
        let mut twice = segment(2, &[&[6u8; 8000]], &[]);
        twice[..old.len()].copy_from_slice(&old);
        twice[..new.len()].copy_from_slice(&new);
        assert_eq!(read_all(&twice, 5).1, "end");
        // Nothing of segment 5 yet: an empty segment.
        assert_eq!(read_all(&old, 5), (vec![], "end".into()));
    }

    #[test]
    fn a_write_torn_anywhere_over_an_older_segment_is_torn_never_a_frame() {
        let old = segment(3, &[&[9u8; 6000]], &[]);
        let first = frames(&[b"first"]);
        let new = segment(5, &[b"first", &[1u8; 2500]], &[]);
        // Each sector of the second write either reached the disk or not.
        let sectors = new.len() / SECTOR;
        for missing in 0..sectors {
            let mut seg = old.clone();
            seg[..new.len()].copy_from_slice(&new);
            let at = missing * SECTOR;
            seg[at..at + SECTOR].copy_from_slice(&old[at..at + SECTOR]);
            let (got, end) = read_all(&seg, 5);
            if at < file_len(first.len() as u64) as usize {
                // The first record's own sector is gone: it was not
                // synced either.
                assert!(got.is_empty() || end.starts_with("damaged"), "{missing}");
            } else if missing + 1 == sectors {
                assert_eq!((got.len(), end.as_str()), (1, "torn"), "{missing}");
            } else {
                // A current sector after a stale one: not a crash's doing.
                assert_eq!(got.len(), 1, "{missing}");
                assert!(end.starts_with("damaged"), "{missing}: {end}");
            }
        }
        // The write's last sectors missing, whatever their number.
        for keep in 1..sectors {
            let mut seg = old.clone();
            seg[..keep * SECTOR].copy_from_slice(&new[..keep * SECTOR]);
            assert_eq!(read_all(&seg, 5), (vec![b"first".to_vec()], "torn".into()));
        }
    }

    #[test]
    fn damage_is_not_taken_for_a_torn_write() {
        let old = segment(3, &[&[9u8; 6000]], &[]);
        let new = segment(5, &[b"first", &[1u8; 2500], b"last"], &[]);
        for at in [0, 3, 4, 7, 8, 10, 20, 600, 1030, 2000, new.len() - 300] {
            let mut seg = old.clone();
            seg[..new.len()].copy_from_slice(&new);
            seg[at] ^= 1;
            let (_, end) = read_all(&seg, 5);
            assert!(end.starts_with("damaged"), "a flipped byte at {at}: {end}");
        }
        // After the end, the older segment's bytes are not read, but a
        // sector there that is neither stale nor current is damage.
        let mut seg = old.clone();
        seg[..new.len()].copy_from_slice(&new);
        seg[new.len() + 600] ^= 1;
        assert_eq!(read_all(&seg, 5).1, "end");
        seg[new.len() + SECTOR + 2] ^= 1;
        assert!(read_all(&seg, 5).1.starts_with("damaged"));
    }
}

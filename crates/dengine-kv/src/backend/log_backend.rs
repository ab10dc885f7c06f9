//! The key-value store's records in append-only segment files of its
//! own ([`LogBackend`] says what it keeps and what a crash keeps). A
//! record costs one copy into the page cache, where sled wrote each byte
//! about three and a half times over (its log, then its pages rewritten
//! as they fill).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use dengine_storage_wal::frame::{self, Read};

use super::{BackendReader, Change, ChangeRef, KvBackend, Visit};

mod chunked;
mod locs;
mod writeback;
use locs::Locs;
use writeback::Writeback;

/// A segment is closed (synced) and the next begun past this size.
const SEGMENT_BYTES: u64 = 64 << 20;
/// No collection while the files hold less than this.
const GC_MIN_BYTES: u64 = 2 * SEGMENT_BYTES;
/// Collected values are written again in frames of about this size.
const COPY_FRAME_BYTES: usize = 4 << 20;
/// The file name's suffix.
const SUFFIX: &str = ".kvlog";

/// Operation tags in a frame's body.
const OP_PUT: u8 = 1;
const OP_REMOVE: u8 = 2;
const OP_CLEAR: u8 = 3;
/// The first frame of every segment: this tag and the format's version.
const OP_FORMAT: u8 = 4;
/// The version of the layout described here.
const FORMAT_VERSION: u8 = 1;
/// Bytes of an operation besides its key and value: tag, key length,
/// value length.
const OP_OVERHEAD: u64 = 9;

/// Bytes of the put of a `value_len`-byte value under `key`.
fn op_bytes(key: &[u8], value_len: u32) -> u64 {
    OP_OVERHEAD + key.len() as u64 + u64::from(value_len)
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Where a value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Loc {
    seq: u64,
    offset: u64,
    len: u32,
}

struct Segment {
    file: File,
    path: PathBuf,
    /// Bytes in the file.
    len: u64,
}

/// Bytes read ahead from a segment when a scan reads a value.
const SCAN_WINDOW: u64 = 256 << 10;

/// A stretch of one segment a scan read, to serve the values in it.
#[derive(Default)]
struct Window {
    seq: u64,
    start: u64,
    bytes: Vec<u8>,
}

impl Window {
    /// The value at `loc`, read from the window, or after reading the
    /// window that starts with it.
    fn read(&mut self, seg: &Segment, loc: Loc) -> io::Result<&[u8]> {
        let len = u64::from(loc.len);
        let inside = self.seq == loc.seq
            && loc.offset >= self.start
            && loc.offset + len <= self.start + self.bytes.len() as u64;
        if !inside {
            let size = len.max(SCAN_WINDOW.min(seg.len.saturating_sub(loc.offset)));
            self.bytes.resize(size as usize, 0);
            seg.file.read_exact_at(&mut self.bytes, loc.offset)?;
            self.seq = loc.seq;
            self.start = loc.offset;
        }
        let from = (loc.offset - self.start) as usize;
        Ok(&self.bytes[from..from + loc.len as usize])
    }
}

/// One operation read from a frame's body; a put's value as where it is
/// in the segment.
enum Op<'a> {
    Put(&'a [u8], Loc),
    Remove(&'a [u8]),
    Clear,
}

/// The operations of the body of a frame of segment `seq` that starts at
/// offset `base` of the file, in order.
fn ops(body: &[u8], seq: u64, base: u64) -> Result<Vec<Op<'_>>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    let u32_at = |at: usize| -> Result<u32, String> {
        body.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| "an operation runs past its frame".to_string())
    };
    while at < body.len() {
        let tag = body[at];
        at += 1;
        if tag == OP_CLEAR {
            out.push(Op::Clear);
            continue;
        }
        if tag == OP_FORMAT {
            match body.get(at) {
                Some(&FORMAT_VERSION) => {}
                Some(v) => {
                    return Err(format!(
                        "format version {v}, which this program does not read (it reads {FORMAT_VERSION})"
                    ));
                }
                None => return Err("a format tag without its version".into()),
            }
            at += 1;
            continue;
        }
        let klen = u32_at(at)? as usize;
        at += 4;
        let key = body
            .get(at..at + klen)
            .ok_or_else(|| "a key runs past its frame".to_string())?;
        at += klen;
        match tag {
            OP_PUT => {
                let vlen = u32_at(at)?;
                at += 4;
                if body.len() - at < vlen as usize {
                    return Err("a value runs past its frame".into());
                }
                let loc = Loc {
                    seq,
                    offset: base + at as u64,
                    len: vlen,
                };
                out.push(Op::Put(key, loc));
                at += vlen as usize;
            }
            OP_REMOVE => out.push(Op::Remove(key)),
            other => return Err(format!("unknown operation {other}")),
        }
    }
    Ok(out)
}

fn push_put(out: &mut Vec<u8>, key: &[u8], value: &[u8]) -> usize {
    out.push(OP_PUT);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    let at = out.len();
    out.extend_from_slice(value);
    at
}

fn name(seq: u64) -> String {
    format!("{seq:016}{SUFFIX}")
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn open_segment(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(create)
        .open(path)
}

/// The store's records in append-only segment files in a directory of
/// their own (the default storage kind's key-value store).
///
/// Each write is one frame (a CRC32 over it, the write-ahead log's
/// framing) appended to the last 64 MiB segment; where each value is
/// stays in memory, the values are read from the files. Writes are not
/// synced as they are made (a full segment is, before the next begins):
/// after a crash the store reads back a prefix of its writes, each whole
/// or not at all, and a write cut short at the end of the last segment is
/// dropped; any other damage fails the open, naming the file and offset.
/// Space comes back by writing the oldest segment's current values again
/// at the end and deleting it, once the files hold more than twice the
/// live bytes and 128 MiB; `defragment` rewrites every segment.
pub struct LogBackend {
    /// Behind a lock so that `defragment`, which the trait lets run
    /// beside reads, can rewrite segments, and shared with readers (see
    /// [`KvBackend::reader`]).
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    dir: PathBuf,
    /// By sequence number; the last is the one written.
    segments: BTreeMap<u64, Segment>,
    /// Every key's value, where it is.
    map: Locs,
    /// Bytes of the operations that are current (key, value, overhead).
    live: u64,
    /// Bytes in all the files.
    total: u64,
    /// The frame being written (kept between writes for its room).
    buf: Vec<u8>,
    segment_bytes: u64,
    gc_min_bytes: u64,
    /// Writes the last segment's pages out as it fills (see `writeback`).
    writeback: Writeback,
    /// Bytes appended since the last nudge to `writeback`.
    unnudged: u64,
}

impl std::fmt::Debug for LogBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.lock().fmt(f)
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogBackend")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .field("keys", &self.map.len())
            .field("live", &self.live)
            .field("total", &self.total)
            .field("writeback_syncs", &self.writeback.syncs())
            .finish()
    }
}

impl LogBackend {
    /// Opens (or creates) the store's files in `dir`, reading every
    /// segment to rebuild where each value is. A write cut short at the
    /// end of the last segment is dropped; anything else that does not
    /// check fails the open, naming the file and the offset.
    pub fn open(dir: &Path) -> io::Result<LogBackend> {
        Self::open_with(dir, SEGMENT_BYTES, GC_MIN_BYTES)
    }

    pub(super) fn open_with(
        dir: &Path,
        segment_bytes: u64,
        gc_min_bytes: u64,
    ) -> io::Result<LogBackend> {
        Ok(LogBackend {
            inner: Arc::new(Mutex::new(Inner::open(dir, segment_bytes, gc_min_bytes)?)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Bytes in the files.
    pub fn file_bytes(&self) -> u64 {
        self.lock().total
    }
}

fn lock(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    fn open(dir: &Path, segment_bytes: u64, gc_min_bytes: u64) -> io::Result<Inner> {
        fs::create_dir_all(dir)?;
        let mut seqs = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let file_name = entry.file_name();
            let Some(seq) = file_name
                .to_str()
                .and_then(|n| n.strip_suffix(SUFFIX))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            seqs.push(seq);
        }
        seqs.sort_unstable();
        let mut b = Inner {
            dir: dir.to_path_buf(),
            segments: BTreeMap::new(),
            map: Locs::default(),
            live: 0,
            total: 0,
            buf: Vec::new(),
            segment_bytes,
            gc_min_bytes,
            writeback: Writeback::start(),
            unnudged: 0,
        };
        let last = seqs.last().copied();
        for seq in seqs {
            b.replay(seq, Some(seq) == last)?;
        }
        if b.segments.is_empty() {
            b.start_segment(1)?;
        }
        Ok(b)
    }

    /// Reads segment `seq` into the map.
    fn replay(&mut self, seq: u64, last: bool) -> io::Result<()> {
        let path = self.dir.join(name(seq));
        let file = open_segment(&path, false)?;
        let bytes = fs::read(&path)?;
        let damaged = |msg: String| invalid(format!("key-value log {}: {msg}", path.display()));
        let mut at = 0;
        let end = loop {
            match frame::read(&bytes, at) {
                Read::Frame(body, next) => {
                    let base = (at + frame::HEADER) as u64;
                    let ops = ops(body, seq, base)
                        .map_err(|e| damaged(format!("the write at offset {at}: {e}")))?;
                    for op in ops {
                        match op {
                            Op::Put(key, loc) => self.place(key, loc),
                            Op::Remove(key) => self.forget(key),
                            Op::Clear => self.forget_all(),
                        }
                    }
                    at = next;
                }
                Read::End => break at,
                Read::Torn if last => break at,
                Read::Torn => {
                    return Err(damaged(format!(
                        "a write cut short at offset {at} of a segment that is not the last"
                    )));
                }
                Read::Damaged(msg, _) => return Err(damaged(msg)),
            }
        };
        if (end as u64) < bytes.len() as u64 {
            // A torn write, or zeros past the end: appends start here.
            file.set_len(end as u64)?;
        }
        self.total += end as u64;
        self.segments.insert(
            seq,
            Segment {
                file,
                path,
                len: end as u64,
            },
        );
        Ok(())
    }

    /// Records that `key`'s value is at `loc`.
    fn place(&mut self, key: &[u8], loc: Loc) {
        self.live += op_bytes(key, loc.len);
        if let Some(old) = self.map.insert(key, loc) {
            self.live = self.live.saturating_sub(op_bytes(key, old.len));
        }
    }

    fn forget(&mut self, key: &[u8]) {
        if let Some(old) = self.map.remove(key) {
            self.live = self.live.saturating_sub(op_bytes(key, old.len));
        }
    }

    fn forget_all(&mut self) {
        self.map.clear();
        self.live = 0;
    }

    fn head_seq(&self) -> u64 {
        self.segments.keys().next_back().copied().unwrap_or(0)
    }

    fn start_segment(&mut self, seq: u64) -> io::Result<()> {
        let path = self.dir.join(name(seq));
        let mut file = open_segment(&path, true)?;
        let mut format = Vec::new();
        frame::push_with(&mut format, |out| {
            out.extend_from_slice(&[OP_FORMAT, FORMAT_VERSION])
        });
        file.write_all(&format)?;
        sync_dir(&self.dir)?;
        let len = format.len() as u64;
        self.total += len;
        self.segments.insert(seq, Segment { file, path, len });
        Ok(())
    }

    /// Appends `buf` (whole frames) to the last segment; returns the
    /// segment and the offset it was written at.
    fn append(&mut self, buf: &[u8]) -> io::Result<(u64, u64)> {
        let seq = self.head_seq();
        let head = self
            .segments
            .get_mut(&seq)
            .ok_or_else(|| io::Error::other("the key-value log has no segment"))?;
        let at = head.len;
        if let Err(e) = head.file.write_all(buf) {
            // Whatever part was written goes, so that the offsets kept
            // stay true (the store stops on this error in any case).
            let _ = head.file.set_len(at);
            return Err(e);
        }
        head.len += buf.len() as u64;
        self.total += buf.len() as u64;
        self.unnudged += buf.len() as u64;
        if self.unnudged >= writeback::EVERY_BYTES {
            self.unnudged = 0;
            self.writeback.nudge(&head.path);
        }
        Ok((seq, at))
    }

    /// Closes the last segment (synced, so that only the last can end
    /// with a torn write) and begins the next, once it is full.
    fn maybe_rotate(&mut self) -> io::Result<()> {
        let seq = self.head_seq();
        let full = self
            .segments
            .get(&seq)
            .is_some_and(|s| s.len >= self.segment_bytes);
        if full {
            self.sync()?;
            self.start_segment(seq + 1)?;
        }
        Ok(())
    }

    /// Writes `changes` as one frame.
    fn write_frame(&mut self, changes: &[ChangeRef<'_>]) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut values = Vec::with_capacity(changes.len());
        frame::push_with(&mut buf, |out| {
            for c in changes {
                match *c {
                    ChangeRef::Insert(k, v) | ChangeRef::Put(k, v) => {
                        values.push(push_put(out, k, v) as u64);
                    }
                    ChangeRef::Remove(k) => {
                        out.push(OP_REMOVE);
                        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
                        out.extend_from_slice(k);
                    }
                }
            }
        });
        let written = self.append(&buf);
        self.buf = buf;
        let (seq, at) = written?;
        let mut values = values.into_iter();
        for c in changes {
            match *c {
                ChangeRef::Insert(k, v) | ChangeRef::Put(k, v) => {
                    let offset = at + values.next().unwrap_or_default();
                    self.place(
                        k,
                        Loc {
                            seq,
                            offset,
                            len: v.len() as u32,
                        },
                    );
                }
                ChangeRef::Remove(k) => self.forget(k),
            }
        }
        self.maybe_rotate()
    }

    /// Collects segments while the files hold more than twice the live
    /// bytes.
    fn maybe_collect(&mut self) -> io::Result<()> {
        // Only segments older than the one written now: copies are not
        // copied again in the same round.
        let head = self.head_seq();
        while self.total > self.gc_min_bytes.max(2 * self.live)
            && self
                .segments
                .first_key_value()
                .is_some_and(|(&s, _)| s < head)
        {
            self.collect_oldest()?;
        }
        Ok(())
    }

    /// Writes the oldest segment's current values again at the end, then
    /// deletes it.
    fn collect_oldest(&mut self) -> io::Result<()> {
        let Some((&seq, oldest)) = self.segments.first_key_value() else {
            return Ok(());
        };
        let mut bytes = vec![0; oldest.len as usize];
        oldest.file.read_exact_at(&mut bytes, 0)?;
        let path = oldest.path.clone();
        let damaged = |msg: String| invalid(format!("key-value log {}: {msg}", path.display()));
        let mut copies: Vec<Change> = Vec::new();
        let mut copy_bytes = 0;
        let mut at = 0;
        while let Read::Frame(body, next) = frame::read(&bytes, at) {
            let base = (at + frame::HEADER) as u64;
            for op in ops(body, seq, base).map_err(damaged)? {
                if let Op::Put(key, loc) = op
                    && self.map.get(key) == Some(loc)
                {
                    let value = &bytes[loc.offset as usize..][..loc.len as usize];
                    copy_bytes += key.len() + value.len();
                    copies.push(Change::Put(key.to_vec(), value.to_vec()));
                    if copy_bytes >= COPY_FRAME_BYTES {
                        self.write_owned(&std::mem::take(&mut copies))?;
                        copy_bytes = 0;
                    }
                }
            }
            at = next;
        }
        if !copies.is_empty() {
            self.write_owned(&copies)?;
        }
        // The copies are durable before the only other place they are
        // goes.
        self.sync()?;
        if let Some(gone) = self.segments.remove(&seq) {
            fs::remove_file(&gone.path)?;
            sync_dir(&self.dir)?;
            self.total -= gone.len;
        }
        Ok(())
    }

    /// Writes every current value into new segments and deletes all the
    /// older ones: the files then hold the live bytes and little more.
    fn defragment(&mut self) -> io::Result<()> {
        let head = self.head_seq();
        self.sync()?;
        self.start_segment(head + 1)?;
        while self
            .segments
            .first_key_value()
            .is_some_and(|(&s, _)| s <= head)
        {
            self.collect_oldest()?;
        }
        Ok(())
    }

    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let Some(loc) = self.map.get(key) else {
            return Ok(None);
        };
        let seg = self
            .segments
            .get(&loc.seq)
            .ok_or_else(|| io::Error::other(format!("segment {} is gone", loc.seq)))?;
        let mut value = vec![0; loc.len as usize];
        seg.file.read_exact_at(&mut value, loc.offset)?;
        Ok(Some(value))
    }

    fn scan(&self, bounds: (Bound<&[u8]>, Bound<&[u8]>), visit: &mut Visit<'_>) -> io::Result<()> {
        // Values next to each other in a segment (records written in
        // revision order are) come from one read of a window of the file,
        // not one read each.
        let mut window = Window::default();
        for (key, loc) in self.map.range(bounds) {
            let seg = self
                .segments
                .get(&loc.seq)
                .ok_or_else(|| io::Error::other(format!("segment {} is gone", loc.seq)))?;
            let value = window.read(seg, loc)?;
            if !visit(key.as_bytes(), value)? {
                break;
            }
        }
        Ok(())
    }

    fn write(&mut self, changes: &[ChangeRef<'_>]) -> io::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        self.write_frame(changes)?;
        self.maybe_collect()
    }

    /// Writes owned `changes` as one frame.
    fn write_owned(&mut self, changes: &[Change]) -> io::Result<()> {
        let refs: Vec<ChangeRef<'_>> = changes.iter().map(Change::as_ref).collect();
        self.write_frame(&refs)
    }

    fn clear(&mut self) -> io::Result<()> {
        // The clear is durable before the files it empties go.
        let mut buf = Vec::new();
        frame::push_with(&mut buf, |out| out.push(OP_CLEAR));
        self.append(&buf)?;
        let head = self.head_seq();
        self.sync()?;
        self.start_segment(head + 1)?;
        let older: Vec<u64> = self
            .segments
            .keys()
            .copied()
            .filter(|&s| s <= head)
            .collect();
        for seq in older {
            if let Some(gone) = self.segments.remove(&seq) {
                fs::remove_file(&gone.path)?;
                self.total -= gone.len;
            }
        }
        sync_dir(&self.dir)?;
        self.forget_all();
        Ok(())
    }

    /// Makes the last segment durable.
    fn sync(&self) -> io::Result<()> {
        let head = self.head_seq();
        match self.segments.get(&head) {
            Some(h) => h.file.sync_data(),
            None => Ok(()),
        }
    }
}

impl KvBackend for LogBackend {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.lock().get(key)
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, visit: &mut Visit<'_>) -> io::Result<()> {
        if end.is_some_and(|e| e <= start) {
            return Ok(());
        }
        let bounds = (
            Bound::Included(start),
            end.map_or(Bound::Unbounded, Bound::Excluded),
        );
        self.lock().scan(bounds, visit)
    }

    fn write(&mut self, changes: Vec<Change>) -> io::Result<()> {
        let refs: Vec<ChangeRef<'_>> = changes.iter().map(Change::as_ref).collect();
        self.write_refs(&refs)
    }

    fn write_refs(&mut self, changes: &[ChangeRef<'_>]) -> io::Result<()> {
        self.lock().write(changes)
    }

    fn clear(&mut self) -> io::Result<()> {
        self.lock().clear()
    }

    fn durable(&self) -> bool {
        true
    }

    fn defragment(&self) -> io::Result<()> {
        self.lock().defragment()
    }

    fn sync(&self) -> io::Result<()> {
        self.lock().sync()
    }

    fn reader(&self) -> Option<Box<dyn BackendReader>> {
        Some(Box::new(LogReader(Arc::clone(&self.inner))))
    }
}

/// A [`LogBackend`]'s reader: it reads a chunk at a time with the files
/// locked, so a write waits for one chunk at most, and a collection that
/// moves values between chunks is seen as it left them.
struct LogReader(Arc<Mutex<Inner>>);

impl BackendReader for LogReader {
    fn scan(&self, start: &[u8], end: Option<&[u8]>, visit: &mut Visit<'_>) -> io::Result<()> {
        super::scan_in_chunks(start, end, visit, |bounds, visit| {
            lock(&self.0).scan(bounds, visit)
        })
    }
}

#[cfg(test)]
mod tests;

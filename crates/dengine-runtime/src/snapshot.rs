//! Snapshot data as a checksummed stream of chunks, kept in a file (disk
//! storage) or in memory (memory storage). Nothing here needs a whole
//! snapshot in one buffer: the state machine writes into a
//! [`SnapshotWriter`], restores from a [`SnapshotReader`], and a transport
//! sends [`SnapshotData::frames`] one at a time into a [`SnapshotReceiver`]
//! on the other side.
//!
//! The form is the same on disk and on the wire: frames of
//! `length (u32 LE) | crc32 of the bytes (u32 LE) | bytes`. The first frame
//! holds the snapshot's metadata; the last is empty and marks the end, so a
//! truncated stream is told apart from a short one.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dengine_core::codec::{decode_snapshot_meta, encode_snapshot_meta};
use dengine_core::{LogIndex, SnapshotMeta};

/// The most state machine bytes in one frame.
pub const CHUNK_SIZE: usize = 256 * 1024;
/// Frames longer than this are refused as corrupt (a bad length must not
/// make the reader allocate gigabytes).
const MAX_FRAME: usize = 16 * 1024 * 1024;
const HEADER: usize = 8;

fn corrupt(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("corrupt snapshot: {what}"),
    )
}

/// A frame header's `(payload length, crc32)`.
fn header(head: &[u8; HEADER]) -> (usize, u32) {
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    (len, crc)
}

/// Checks the metadata frame's payload against what the snapshot is said
/// to be.
fn check_meta(payload: &[u8], expected: &SnapshotMeta, said_by: &str) -> io::Result<()> {
    let meta = decode_snapshot_meta(payload).map_err(corrupt)?;
    if &meta != expected {
        return Err(corrupt(format!("metadata differs from the {said_by}'s")));
    }
    Ok(())
}

fn frame(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + bytes.len());
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(bytes).to_le_bytes());
    out.extend_from_slice(bytes);
    out
}

/// A finished snapshot: its metadata and its frames, in a file or in
/// memory. Cheap to clone; an open file stays readable after it is
/// replaced or removed, so a transfer in progress is never cut short by a
/// newer snapshot.
#[derive(Clone)]
pub struct SnapshotData {
    meta: SnapshotMeta,
    body: Arc<Body>,
}

enum Body {
    File { file: File, path: PathBuf, len: u64 },
    Memory(Vec<u8>),
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotData")
            .field("meta", &self.meta)
            .field("path", &self.path())
            .field("len", &self.len())
            .finish()
    }
}

impl SnapshotData {
    /// An in-memory snapshot holding `state` (for tests and custom
    /// transports that already have the bytes).
    pub fn from_bytes(meta: SnapshotMeta, state: &[u8]) -> SnapshotData {
        let mut v = frame(&encode_snapshot_meta(&meta));
        for chunk in state.chunks(CHUNK_SIZE) {
            v.extend_from_slice(&frame(chunk));
        }
        v.extend_from_slice(&frame(&[]));
        SnapshotData {
            meta,
            body: Arc::new(Body::Memory(v)),
        }
    }

    /// What the snapshot covers.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// Its size in frames, as stored and sent.
    pub fn len(&self) -> u64 {
        match &*self.body {
            Body::File { len, .. } => *len,
            Body::Memory(v) => v.len() as u64,
        }
    }

    /// Whether it holds no bytes at all (never true of a finished one).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file it lives in, if any.
    pub fn path(&self) -> Option<&Path> {
        match &*self.body {
            Body::File { path, .. } => Some(path),
            Body::Memory(_) => None,
        }
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match &*self.body {
            Body::File { file, .. } => {
                use std::os::unix::fs::FileExt;
                file.read_exact_at(buf, offset).map_err(|e| {
                    if e.kind() == io::ErrorKind::UnexpectedEof {
                        corrupt("truncated")
                    } else {
                        e
                    }
                })
            }
            Body::Memory(v) => {
                let start = usize::try_from(offset).map_err(|_| corrupt("offset"))?;
                let src = start
                    .checked_add(buf.len())
                    .and_then(|end| v.get(start..end))
                    .ok_or_else(|| corrupt("truncated"))?;
                buf.copy_from_slice(src);
                Ok(())
            }
        }
    }

    /// The frames one by one, checked, as a transport sends them.
    pub fn frames(&self) -> Frames {
        Frames {
            data: self.clone(),
            offset: 0,
            done: false,
        }
    }

    /// The frames from byte `offset` on: to resume a transfer where the
    /// receiver stopped ([`SnapshotReceiver::received_len`]). `offset`
    /// must be the start of a frame; anything else fails as corrupt when
    /// the first frame is read (its checksum cannot match).
    pub fn frames_from(&self, offset: u64) -> Frames {
        Frames {
            data: self.clone(),
            offset,
            done: offset > self.len(),
        }
    }

    /// The state machine's bytes, checked as they are read.
    pub fn reader(&self) -> SnapshotReader {
        SnapshotReader {
            frames: self.frames(),
            chunk: Vec::new(),
            pos: 0,
            seen_meta: false,
            ended: false,
        }
    }
}

/// Restores `sm` from `data`, reads whatever the state machine left unread
/// (so the whole snapshot's checksums are verified either way), and tells
/// it the index it now reflects ([`crate::StateMachine::flush`]).
pub(crate) fn restore<SM: crate::StateMachine>(sm: &mut SM, data: &SnapshotData) -> io::Result<()> {
    let mut r = data.reader();
    sm.restore(&mut r)?;
    io::copy(&mut r, &mut io::sink())?;
    sm.flush(data.meta().last_index)
}

/// Iterates over a snapshot's raw frames (header included), each checked.
pub struct Frames {
    data: SnapshotData,
    offset: u64,
    done: bool,
}

impl Frames {
    /// The next frame, header included, its checksum checked.
    fn next_frame(&mut self) -> io::Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        let mut head = [0u8; HEADER];
        self.data.read_exact_at(&mut head, self.offset)?;
        let (len, crc) = header(&head);
        if len > MAX_FRAME {
            return Err(corrupt(format!(
                "frame at byte {} claims {len} bytes",
                self.offset
            )));
        }
        let mut out = vec![0u8; HEADER + len];
        out[..HEADER].copy_from_slice(&head);
        self.data
            .read_exact_at(&mut out[HEADER..], self.offset + HEADER as u64)?;
        if crc32fast::hash(&out[HEADER..]) != crc {
            return Err(corrupt(format!(
                "checksum mismatch in the frame at byte {}",
                self.offset
            )));
        }
        self.offset += out.len() as u64;
        // The empty frame ends the stream unless it is the (never empty)
        // metadata frame.
        if len == 0 {
            self.done = true;
            if self.offset != self.data.len() {
                return Err(corrupt("bytes after the end frame"));
            }
        }
        Ok(Some(out))
    }
}

impl Iterator for Frames {
    type Item = io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_frame() {
            Ok(f) => f.map(Ok),
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Reads the state machine's bytes out of a snapshot, failing with
/// `InvalidData` on any checksum mismatch or truncation.
pub struct SnapshotReader {
    frames: Frames,
    chunk: Vec<u8>,
    pos: usize,
    seen_meta: bool,
    ended: bool,
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            if self.ended || buf.is_empty() {
                return Ok(0);
            }
            let Some(frame) = self.frames.next_frame()? else {
                return Err(corrupt("no end frame"));
            };
            let payload = &frame[HEADER..];
            if !self.seen_meta {
                self.seen_meta = true;
                check_meta(payload, &self.frames.data.meta, "snapshot")?;
                continue;
            }
            if payload.is_empty() {
                self.ended = true;
                return Ok(0);
            }
            self.chunk = frame;
            self.pos = HEADER;
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A temporary file that is removed when dropped unless it was kept: an
/// attempt that fails (or is abandoned) leaves nothing behind.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep
            && let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e,
                "removing an unfinished snapshot file failed");
        }
    }
}

/// Where frames go while a snapshot is written.
enum Sink {
    File {
        out: BufWriter<File>,
        tmp: TempFile,
        path: PathBuf,
    },
    Memory(Vec<u8>),
}

impl Sink {
    fn put(&mut self, frame: &[u8]) -> io::Result<()> {
        match self {
            Sink::File { out, .. } => out.write_all(frame),
            Sink::Memory(v) => {
                v.extend_from_slice(frame);
                Ok(())
            }
        }
    }

    /// Makes the snapshot durable under its final name and opens it.
    fn finish(self, meta: SnapshotMeta) -> io::Result<SnapshotData> {
        let body = match self {
            Sink::Memory(v) => Body::Memory(v),
            Sink::File { out, mut tmp, path } => {
                let written = out.into_inner().map_err(|e| e.into_error())?;
                // Files are held open from here on, never opened again by
                // name: pruning may remove a name at any moment (an older
                // snapshot once a newer one is recorded), and an open file
                // stays readable.
                let file = match File::open(&path) {
                    // The same snapshot (same index and term, so the same
                    // state) was made or received before: keep that file,
                    // which others may use, and drop this copy.
                    Ok(existing) => existing,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        written.sync_all()?;
                        std::fs::rename(&tmp.path, &path)?;
                        tmp.keep = true;
                        if let Some(dir) = path.parent() {
                            File::open(dir)?.sync_all()?;
                        }
                        written
                    }
                    Err(e) => return Err(e),
                };
                let len = file.metadata()?.len();
                Body::File { file, path, len }
            }
        };
        Ok(SnapshotData {
            meta,
            body: Arc::new(body),
        })
    }
}

/// Takes the state machine's bytes and cuts them into checksummed frames.
/// Nothing is visible under the final name before [`SnapshotWriter::finish`]
/// made it durable.
pub struct SnapshotWriter {
    meta: SnapshotMeta,
    sink: Sink,
    chunk: Vec<u8>,
}

impl SnapshotWriter {
    fn new(meta: SnapshotMeta, mut sink: Sink) -> io::Result<SnapshotWriter> {
        sink.put(&frame(&encode_snapshot_meta(&meta)))?;
        Ok(SnapshotWriter {
            meta,
            sink,
            chunk: Vec::with_capacity(CHUNK_SIZE),
        })
    }

    fn emit(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let f = frame(&self.chunk);
        self.sink.put(&f)?;
        self.chunk.clear();
        Ok(())
    }

    /// Writes the last frame and makes the snapshot durable.
    pub fn finish(mut self) -> io::Result<SnapshotData> {
        self.emit()?;
        self.sink.put(&frame(&[]))?;
        self.sink.finish(self.meta)
    }
}

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = CHUNK_SIZE - self.chunk.len();
        let n = buf.len().min(room);
        self.chunk.extend_from_slice(&buf[..n]);
        if self.chunk.len() >= CHUNK_SIZE {
            self.emit()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Rebuilds a snapshot from frames that arrive one by one (from a
/// transport), checking each; a bad frame is refused and nothing is kept.
pub struct SnapshotReceiver {
    meta: SnapshotMeta,
    sink: Sink,
    seen_meta: bool,
    ended: bool,
    /// Bytes of good frames taken so far.
    received: u64,
    /// Keeps other receivers of the same snapshot out while this one lives.
    _claim: ReceiveClaim,
}

impl SnapshotReceiver {
    /// What the snapshot is said to be.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// Bytes of good frames taken so far: after a failed frame (or a lost
    /// connection) the sender resumes with
    /// [`SnapshotData::frames_from`] at this offset.
    pub fn received_len(&self) -> u64 {
        self.received
    }

    /// Takes the next frame, exactly as [`SnapshotData::frames`] gave it.
    /// A frame that fails its checks is refused and changes nothing: the
    /// receiver still takes the frame that should have come.
    pub fn push(&mut self, frame_bytes: &[u8]) -> io::Result<()> {
        if self.ended {
            return Err(corrupt("frame after the end frame"));
        }
        let (head, payload) = frame_bytes
            .split_first_chunk::<HEADER>()
            .ok_or_else(|| corrupt("frame shorter than its header"))?;
        let (len, crc) = header(head);
        if len != payload.len() || len > MAX_FRAME {
            return Err(corrupt("frame length mismatch"));
        }
        if crc32fast::hash(payload) != crc {
            return Err(corrupt("frame checksum mismatch"));
        }
        if !self.seen_meta {
            check_meta(payload, &self.meta, "message")?;
        }
        self.sink.put(frame_bytes)?;
        if !self.seen_meta {
            self.seen_meta = true;
        } else if payload.is_empty() {
            self.ended = true;
        }
        self.received += frame_bytes.len() as u64;
        Ok(())
    }

    /// Makes the received snapshot durable; fails unless the end frame
    /// arrived.
    pub fn finish(self) -> io::Result<SnapshotData> {
        if !self.ended {
            return Err(corrupt("the stream ended before its end frame"));
        }
        self.sink.finish(self.meta)
    }
}

/// The file name (without extension) of the snapshot `meta` describes.
fn file_name(meta: &SnapshotMeta) -> String {
    format!("snap-{:020}-{:020}", meta.last_index.0, meta.last_term.0)
}

/// A node's snapshots: files `snap-<index>-<term>.snap` in one directory
/// (disk storage), or memory.
#[derive(Clone, Debug)]
pub(crate) struct SnapshotStore {
    dir: Option<PathBuf>,
    /// Snapshots (index, term) being received right now.
    receiving: Arc<Mutex<HashSet<(u64, u64)>>>,
}

/// A snapshot being received; released when the receiver is dropped.
#[derive(Debug)]
struct ReceiveClaim {
    key: (u64, u64),
    receiving: Arc<Mutex<HashSet<(u64, u64)>>>,
}

impl Drop for ReceiveClaim {
    fn drop(&mut self) {
        let mut set = match self.receiving.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        set.remove(&self.key);
    }
}

/// Makes temporary names unique within the process (and with the process
/// id, across processes sharing a directory by mistake).
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

impl SnapshotStore {
    /// Snapshots kept in memory only.
    pub(crate) fn memory() -> SnapshotStore {
        SnapshotStore {
            dir: None,
            receiving: Default::default(),
        }
    }

    /// Snapshots kept in `dir` (created if missing); unfinished files of an
    /// earlier run are removed.
    pub(crate) fn open(dir: PathBuf) -> io::Result<SnapshotStore> {
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(SnapshotStore {
            dir: Some(dir),
            receiving: Default::default(),
        })
    }

    fn sink(&self, meta: &SnapshotMeta, kind: &str) -> io::Result<Sink> {
        let Some(dir) = &self.dir else {
            return Ok(Sink::Memory(Vec::new()));
        };
        let name = file_name(meta);
        let path = dir.join(format!("{name}.snap"));
        // Every attempt writes a file of its own, created new: two writers
        // can never interleave their frames in one file.
        let (file, tmp) = loop {
            let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
            let tmp = dir.join(format!("{name}.{kind}.{}-{n}.tmp", std::process::id()));
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&tmp)
            {
                Ok(f) => break (f, tmp),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        };
        let tmp = TempFile {
            path: tmp,
            keep: false,
        };
        let out = BufWriter::with_capacity(CHUNK_SIZE + HEADER, file);
        Ok(Sink::File { out, tmp, path })
    }

    /// A writer for a snapshot of this node's state machine.
    pub(crate) fn writer(&self, meta: SnapshotMeta) -> io::Result<SnapshotWriter> {
        let sink = self.sink(&meta, "make")?;
        SnapshotWriter::new(meta, sink)
    }

    /// A receiver for a snapshot sent by a leader. Only one receiver of a
    /// given snapshot exists at a time: a second gets `AlreadyExists` until
    /// the first is finished or dropped.
    pub(crate) fn receiver(&self, meta: SnapshotMeta) -> io::Result<SnapshotReceiver> {
        let key = (meta.last_index.0, meta.last_term.0);
        {
            let mut set = match self.receiving.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            if !set.insert(key) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "snapshot at index {} (term {}) is already being received",
                        meta.last_index, meta.last_term
                    ),
                ));
            }
        }
        let claim = ReceiveClaim {
            key,
            receiving: self.receiving.clone(),
        };
        let sink = self.sink(&meta, "recv")?;
        Ok(SnapshotReceiver {
            meta,
            sink,
            seen_meta: false,
            ended: false,
            received: 0,
            _claim: claim,
        })
    }

    /// Whether `data` already lives here (nothing to copy).
    pub(crate) fn holds(&self, data: &SnapshotData) -> bool {
        match (&self.dir, data.path()) {
            (None, _) => true,
            (Some(dir), Some(p)) => p.parent() == Some(dir.as_path()),
            (Some(_), None) => false,
        }
    }

    /// Copies a snapshot from elsewhere (another node of this process, or
    /// memory) in, frame by frame, checking each.
    pub(crate) fn import(&self, data: &SnapshotData) -> io::Result<SnapshotData> {
        if self.holds(data) {
            return Ok(data.clone());
        }
        let mut rx = self.receiver(data.meta.clone())?;
        for f in data.frames() {
            rx.push(&f?)?;
        }
        rx.finish()
    }

    fn files(&self) -> io::Result<Vec<(LogIndex, PathBuf)>> {
        let Some(dir) = &self.dir else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(index) = name
                .strip_prefix("snap-")
                .and_then(|r| r.strip_suffix(".snap"))
                .and_then(|r| r.split('-').next())
                .and_then(|i| i.parse::<u64>().ok())
            else {
                continue;
            };
            out.push((LogIndex(index), path));
        }
        out.sort();
        Ok(out)
    }

    /// The snapshot `meta` names, from disk, its metadata checked against
    /// `meta` (the body is checked as it is read). `None` if there is no
    /// such file (or the store is in memory).
    pub(crate) fn find(&self, meta: &SnapshotMeta) -> io::Result<Option<SnapshotData>> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let path = dir.join(format!("{}.snap", file_name(meta)));
        if !path.exists() {
            return Ok(None);
        }
        let data = Self::open_file(path)?;
        if data.meta() != meta {
            return Err(corrupt(format!(
                "{} holds the metadata of another snapshot",
                data.path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )));
        }
        Ok(Some(data))
    }

    /// Removes every snapshot file newer than `index`: made or received
    /// but never recorded in the log (a crash came between), so nothing
    /// may start from them.
    pub(crate) fn remove_newer_than(&self, index: LogIndex) -> io::Result<()> {
        for (i, path) in self.files()? {
            if i > index {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// Removes the file of a snapshot that will not be used (a received
    /// snapshot the core declined). Readers that hold it open keep it.
    pub(crate) fn discard(&self, data: &SnapshotData) {
        if let (Some(dir), Some(path)) = (&self.dir, data.path())
            && path.parent() == Some(dir.as_path())
            && let Err(e) = std::fs::remove_file(path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "removing a declined snapshot failed");
        }
    }

    /// The newest snapshot on disk, its metadata checked (the body is
    /// checked as it is read).
    #[cfg(test)]
    pub(crate) fn latest(&self) -> io::Result<Option<SnapshotData>> {
        let Some((_, path)) = self.files()?.pop() else {
            return Ok(None);
        };
        Self::open_file(path).map(Some)
    }

    fn open_file(path: PathBuf) -> io::Result<SnapshotData> {
        let file = File::open(&path)?;
        let len = file.metadata()?.len();
        let placeholder = SnapshotMeta {
            last_index: LogIndex::ZERO,
            last_term: dengine_core::Term(0),
            conf_state: Default::default(),
        };
        let mut data = SnapshotData {
            meta: placeholder,
            body: Arc::new(Body::File { file, path, len }),
        };
        let first = data
            .frames()
            .next()
            .ok_or_else(|| corrupt("empty file"))??;
        data.meta = decode_snapshot_meta(&first[HEADER..]).map_err(corrupt)?;
        Ok(data)
    }

    /// Removes the snapshots older than `recorded`, the one the log now
    /// starts after (a transfer reading an older one keeps its open file).
    /// Newer files (being received, or made but not yet recorded) stay.
    pub(crate) fn prune(&self, recorded: LogIndex) -> io::Result<()> {
        for (index, path) in self.files()? {
            if index < recorded {
                std::fs::remove_file(path)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

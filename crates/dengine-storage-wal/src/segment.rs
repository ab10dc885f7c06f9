//! The segment files: reading them all when the store opens, appending
//! records, syncing, starting new segments and deleting old ones.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dengine_core::LogIndex;
use dengine_core::storage::checks::check_base_covered;

use crate::direct::{self, Appender, BLOCK};
use crate::frame::{self, Read};
use crate::log::Log;
use crate::record::{self, BadRecord, Record};
use crate::sectors::{self, Packer};
use crate::spare::{self, Spare};

/// One segment file.
#[derive(Debug)]
struct Segment {
    seq: u64,
    path: PathBuf,
    /// The greatest index of the entries written to it, if any.
    max_index: Option<LogIndex>,
    /// In tagged sectors (see `sectors`): it may be used again.
    tagged: bool,
}

/// The segments, and the last one open for appending.
pub(crate) struct Journal {
    dir: PathBuf,
    segments: Vec<Segment>,
    /// The last segment, open for appending (where its records end is
    /// its size).
    file: Appender,
    /// The last segment is closed once it holds this many bytes: the size
    /// of the zeros it was written over (see `spare`), or the configured
    /// segment size for one that was not.
    limit: u64,
    segment_bytes: u64,
    /// The next segment, being prepared.
    spare: Option<Spare>,
    /// When the last segment was opened for appending.
    opened: Instant,
    /// A segment was created since the last sync: the directory needs one.
    dir_dirty: bool,
    /// Why a write or sync failed: nothing after it can be trusted to be
    /// durable, so every later call fails.
    pub(crate) failed: Option<String>,
    /// How the last segment's frames are laid out in tagged sectors;
    /// none for a segment of the layout before (frames only).
    packer: Option<Packer>,
    /// A frame, kept to be reused.
    frame: Vec<u8>,
    /// A frame in tagged sectors, kept to be reused.
    packed: Vec<u8>,
    /// A deleted segment's file, kept to be written over by a later one
    /// instead of a file of new zeros (see `recycle`).
    recycled: Option<PathBuf>,
}

/// What a segment's file is renamed to once a compaction covers it, to
/// be used again (a `.prep` file: deleted if the store opens with it).
const RECYCLED: &str = "recycled.wal.prep";

/// The longest a segment's zeros are spread over: a log written slowly
/// would otherwise keep a thread preparing for hours, and one that
/// speeds up would find its next segment far from ready.
const MAX_PREPARATION: Duration = Duration::from_secs(10);

fn name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Journal {
    /// Opens the segments in `dir` (creating the first one if there is
    /// none) and replays them.
    pub(crate) fn open(dir: &Path, segment_bytes: u64) -> Result<(Journal, Log), String> {
        let mut segments = Vec::new();
        let listing = std::fs::read_dir(dir).map_err(|e| format!("listing it: {e}"))?;
        for item in listing {
            let item = item.map_err(|e| format!("listing it: {e}"))?;
            let file_name = item.file_name();
            if file_name
                .to_str()
                .is_some_and(|n| n.ends_with(spare::SUFFIX))
            {
                // A segment a crash left half prepared.
                std::fs::remove_file(item.path())
                    .map_err(|e| format!("removing {}: {e}", file_name.to_string_lossy()))?;
                continue;
            }
            let Some(stem) = file_name.to_str().and_then(|n| n.strip_suffix(".wal")) else {
                continue;
            };
            let seq = u64::from_str_radix(stem, 16)
                .ok()
                .filter(|_| stem.len() == 16)
                .ok_or_else(|| format!("{}: not a segment name", file_name.to_string_lossy()))?;
            segments.push(Segment {
                seq,
                path: item.path(),
                max_index: None,
                tagged: false,
            });
        }
        segments.sort_by_key(|s| s.seq);
        for pair in segments.windows(2) {
            if pair[1].seq != pair[0].seq + 1 {
                return Err(format!("segment {} is missing", name(pair[0].seq + 1)));
            }
        }
        let mut log = Log::default();
        let mut valid_end = 0u64;
        // Of the last segment: where its records' frames end (in the
        // file, and among the frames for a tagged one), where the bytes a
        // crash may have left after them end, and its bytes from the
        // block its records end in to their end.
        let mut frames_end = 0u64;
        let mut written_end = 0u64;
        let mut tail = Vec::new();
        let count = segments.len();
        for (i, seg) in segments.iter_mut().enumerate() {
            let at_fault = |what: String| format!("segment {}: {what}", name(seg.seq));
            let bytes =
                std::fs::read(&seg.path).map_err(|e| at_fault(format!("reading it: {e}")))?;
            let (first, last) = (i == 0, i + 1 == count);
            seg.tagged = sectors::is_tagged(&bytes, seg.seq);
            let (end, max_index, remains_end, frames) = if seg.tagged {
                let unpacked = sectors::unpack(&bytes, seg.seq);
                let (end, max_index) =
                    replay(|at| unpacked.read(at), &mut log, first, last).map_err(at_fault)?;
                // A crash may have left sectors of a torn write after
                // the last whole record: all current sectors past it are
                // cleared (below), or one of them, left after a stale
                // one, would read as damage.
                let end_in_file = sectors::file_len(end as u64);
                let clean = unpacked.current_end
                    <= end_in_file.next_multiple_of(sectors::SECTOR as u64)
                    && unpacked.frames[end..].iter().all(|&b| b == 0);
                let remains = if clean {
                    end_in_file
                } else {
                    unpacked.current_end
                };
                (end_in_file, max_index, remains, end as u64)
            } else {
                let (end, max_index) = replay(|at| frame::read(&bytes, at), &mut log, first, last)
                    .map_err(at_fault)?;
                let written = frame::written_end(&bytes) as u64;
                (end as u64, max_index, written, end as u64)
            };
            seg.max_index = max_index;
            valid_end = end;
            if last {
                frames_end = frames;
                written_end = remains_end;
                let end = end as usize;
                tail = bytes[end - end % BLOCK..end].to_vec();
            }
        }
        log.finish()?;
        check_base_covered(&log.meta.base, &log.meta.snapshot).map_err(|e| e.to_string())?;

        let mut journal = match segments.last() {
            None => {
                let path = dir.join(name(1));
                let len = spare::FIRST_BYTES.min(segment_bytes);
                let file = create(dir, 1, len)?;
                segments.push(Segment {
                    seq: 1,
                    path,
                    max_index: None,
                    tagged: true,
                });
                let packer = Packer::new(1, 0);
                Journal::with(dir, segments, file, len, segment_bytes, Some(packer))
            }
            Some(last) => {
                let at_fault = |what: String| format!("segment {}: {what}", name(last.seq));
                let on_disk = std::fs::metadata(&last.path).map_or(valid_end, |m| m.len());
                if written_end > valid_end {
                    // Zero what a crash left after the last whole record (a
                    // torn record), so that what is appended next is not
                    // followed by its remains.
                    zero(&last.path, valid_end, written_end)
                        .map_err(|e| at_fault(format!("clearing its torn end: {e}")))?;
                }
                let (file, is_direct) = direct::open(&last.path, File::options().write(true))
                    .map_err(|e| at_fault(format!("opening it: {e}")))?;
                let file = Appender::new(file, is_direct, valid_end, &tail)
                    .map_err(|e| at_fault(format!("opening it: {e}")))?;
                // Zeros after the records: it was prepared (see `spare`).
                let limit = if on_disk > valid_end {
                    on_disk.min(segment_bytes)
                } else {
                    segment_bytes
                };
                let packer = last.tagged.then(|| Packer::new(last.seq, frames_end));
                Journal::with(dir, segments, file, limit, segment_bytes, packer)
            }
        };
        if journal.file.end() == 0 {
            // A new segment, or one a crash left empty: it starts with the
            // metadata as the segments before it leave it.
            let checkpoint = record::checkpoint(&log.meta);
            journal.write_frame(|out| out.extend_from_slice(&checkpoint))?;
            journal.sync()?;
        }
        Ok((journal, log))
    }

    fn with(
        dir: &Path,
        segments: Vec<Segment>,
        file: Appender,
        limit: u64,
        segment_bytes: u64,
        packer: Option<Packer>,
    ) -> Journal {
        Journal {
            dir: dir.to_path_buf(),
            segments,
            file,
            limit,
            segment_bytes,
            spare: None,
            opened: Instant::now(),
            dir_dirty: true,
            failed: None,
            packer,
            frame: Vec::new(),
            packed: Vec::new(),
            recycled: None,
        }
    }

    /// The segment files, oldest first.
    pub(crate) fn paths(&self) -> Vec<PathBuf> {
        self.segments.iter().map(|s| s.path.clone()).collect()
    }

    /// Appends the record whose body `body` writes, whose entries (if
    /// any) end at `max_index`; starts a new segment first, with the
    /// checkpoint `checkpoint` makes, if the current one is full.
    pub(crate) fn append(
        &mut self,
        body: impl FnOnce(&mut Vec<u8>),
        max_index: Option<LogIndex>,
        checkpoint: impl FnOnce() -> Vec<u8>,
    ) -> Result<(), String> {
        let size = self.file.end();
        if size >= self.limit {
            self.start_segment(&checkpoint())?;
        } else if self.spare.is_none() && size >= self.limit / 4 {
            self.prepare_next();
        } else if size >= self.limit - self.limit / 8
            && let Some(spare) = &self.spare
        {
            // Writes came faster than the pace assumed: the rest of the
            // zeros go at once, so the segment is ready when needed.
            spare.hurry();
        }
        self.write_frame(body)?;
        if let Some(seg) = self.segments.last_mut()
            && max_index.is_some()
        {
            seg.max_index = seg.max_index.max(max_index);
        }
        Ok(())
    }

    fn write_frame(&mut self, body: impl FnOnce(&mut Vec<u8>)) -> Result<(), String> {
        self.frame.clear();
        frame::push_with(&mut self.frame, body);
        let written = match &mut self.packer {
            Some(packer) => {
                self.packed.clear();
                packer.pack(&self.frame, &mut self.packed);
                self.file.append(&self.packed)
            }
            None => self.file.append(&self.frame),
        };
        if let Err(e) = written {
            return Err(self.fail(format!("writing a record: {e}")));
        }
        Ok(())
    }

    fn start_segment(&mut self, checkpoint: &[u8]) -> Result<(), String> {
        // What the full segment holds becomes durable before anything in
        // the next one can.
        if let Err(e) = self.file.sync() {
            return Err(self.fail(format!("syncing a full segment: {e}")));
        }
        let seq = self.segments.last().map_or(1, |s| s.seq + 1);
        let path = self.dir.join(name(seq));
        let (file, limit) = match self.take_spare(seq, &path) {
            Some(ready) => ready,
            None => {
                let len = self.next_len();
                (create(&self.dir, seq, len).map_err(|e| self.fail(e))?, len)
            }
        };
        self.file = file;
        self.limit = limit;
        self.packer = Some(Packer::new(seq, 0));
        self.opened = Instant::now();
        self.segments.push(Segment {
            seq,
            path,
            max_index: None,
            tagged: true,
        });
        self.dir_dirty = true;
        self.write_frame(|out| out.extend_from_slice(checkpoint))
    }

    /// Makes everything written durable.
    pub(crate) fn sync(&mut self) -> Result<(), String> {
        if let Err(e) = self.file.sync() {
            return Err(self.fail(format!("syncing: {e}")));
        }
        if self.dir_dirty {
            if let Err(e) = sync_dir(&self.dir) {
                return Err(self.fail(format!("syncing the directory: {e}")));
            }
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// Deletes the oldest segments, as long as every entry they hold is at
    /// or below `index` (compacted, and the compaction synced). The last
    /// segment stays.
    pub(crate) fn delete_covered(&mut self, index: LogIndex) -> Result<(), String> {
        let covered = self
            .segments
            .iter()
            .take(self.segments.len().saturating_sub(1))
            .take_while(|s| s.max_index.is_none_or(|m| m <= index))
            .count();
        if covered == 0 {
            return Ok(());
        }
        for seg in self.segments.drain(..covered).collect::<Vec<_>>() {
            if self.recycled.is_none() && seg.tagged && self.recycle(&seg.path) {
                continue;
            }
            match std::fs::remove_file(&seg.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("deleting segment {}: {e}", name(seg.seq))),
            }
        }
        sync_dir(&self.dir).map_err(|e| format!("syncing the directory: {e}"))
    }

    /// Keeps the file at `path`, a segment a compaction covers, to be
    /// written over by a later segment (renamed, so that it is never read
    /// as a segment again); whether it did. Only a file of the full
    /// segment size is kept, and one at a time.
    ///
    /// Written over, a file's sectors of the segment before read as stale
    /// (see `sectors`), so it needs no zeros first: a segment then costs
    /// the disk its records alone, not its records and as many zeros.
    fn recycle(&mut self, path: &Path) -> bool {
        let full = std::fs::metadata(path).is_ok_and(|m| m.len() >= self.segment_bytes);
        let kept = self.dir.join(RECYCLED);
        if full && std::fs::rename(path, &kept).is_ok() {
            self.recycled = Some(kept);
            return true;
        }
        false
    }

    fn fail(&mut self, why: String) -> String {
        self.failed = Some(why.clone());
        why
    }

    /// The size of the zeros the next segment is written over: twice the
    /// last one's, up to the configured segment size.
    fn next_len(&self) -> u64 {
        self.limit.saturating_mul(2).clamp(
            spare::FIRST_BYTES.min(self.segment_bytes),
            self.segment_bytes,
        )
    }

    /// Starts preparing the next segment in the background (once the
    /// current one is a quarter full), its zeros spread over two and a
    /// half times the time that quarter took: at an even rate of writes,
    /// ready when the current segment is seven eighths full, when the rest
    /// would be written at once anyway (see `spare`). If that cannot
    /// start, the segment is made when it is needed.
    fn prepare_next(&mut self) {
        let seq = self.segments.last().map_or(1, |s| s.seq + 1);
        let (path, len) = (prepared_path(&self.dir, seq), self.next_len());
        if len == self.segment_bytes
            && let Some(kept) = self.recycled.take()
            && std::fs::rename(&kept, &path).is_ok()
        {
            self.spare = Some(Spare::reused(seq, path, len));
            return;
        }
        let over = (self.opened.elapsed() * 5 / 2).min(MAX_PREPARATION);
        self.spare = Spare::start(seq, path, len, over).ok();
    }

    /// The prepared segment `seq`, renamed to `path`, with its size; none
    /// if there is none or it failed (then the segment is made in place).
    fn take_spare(&mut self, seq: u64, path: &Path) -> Option<(Appender, u64)> {
        let spare = self.spare.take()?;
        let (wanted, len) = (spare.seq == seq, spare.len);
        let (file, prepared) = spare.finish().ok()?;
        match wanted.then(|| install(&prepared, path)) {
            Some(Ok(())) => Some((file, len)),
            _ => {
                let _ = std::fs::remove_file(&prepared);
                None
            }
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // Its file must not be written once the store is closed: another
        // store may open the directory next.
        if let Some(spare) = self.spare.take() {
            spare.abandon();
        }
    }
}

/// Where segment `seq` is prepared before it takes its name.
fn prepared_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{}{}", name(seq), spare::SUFFIX))
}

/// Gives the prepared segment at `prepared` its name `path`, which no
/// file may have yet.
fn install(prepared: &Path, path: &Path) -> std::io::Result<()> {
    if path.exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "it exists",
        ));
    }
    std::fs::rename(prepared, path)
}

/// Segment `seq` in `dir`, of `len` zero bytes (see `spare`), prepared
/// under another name and renamed, so that a crash never leaves a segment
/// half filled with zeros.
fn create(dir: &Path, seq: u64, len: u64) -> Result<Appender, String> {
    let fault = |e: std::io::Error| format!("creating segment {}: {e}", name(seq));
    let prepared = prepared_path(dir, seq);
    let file = spare::zero_filled(&prepared, len).map_err(fault)?;
    install(&prepared, &dir.join(name(seq))).map_err(fault)?;
    Ok(file)
}

/// Writes zeros over the bytes `from..to` of the file at `path`, and
/// syncs them.
fn zero(path: &Path, from: u64, to: u64) -> std::io::Result<()> {
    let mut file = File::options().write(true).open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let len = usize::try_from(to - from).map_err(std::io::Error::other)?;
    file.write_all(&vec![0; len])?;
    file.sync_data()
}

/// Replays one segment's records into `log`, as `read` reads the frame
/// at an offset of its frames; the first segment's checkpoint sets the
/// metadata, later ones only follow. Returns where its last whole record
/// ends and the greatest index of its entries.
fn replay<'a>(
    read: impl Fn(usize) -> Read<'a>,
    log: &mut Log,
    first_segment: bool,
    last_segment: bool,
) -> Result<(usize, Option<LogIndex>), String> {
    let mut at = 0;
    let mut max_index = None;
    loop {
        match read(at) {
            Read::Frame(body, next) => {
                let record = record::decode(body).map_err(|e| describe(e, at))?;
                match record {
                    Record::Checkpoint(_) if at > 0 => {
                        return Err(format!("a checkpoint at offset {at}, not first"));
                    }
                    Record::Checkpoint(_) if !first_segment => {}
                    ref r if at == 0 && !matches!(r, Record::Checkpoint(_)) => {
                        return Err("the segment does not start with a checkpoint".into());
                    }
                    record => {
                        if let Record::Write { entries, .. } = &record {
                            max_index = max_index.max(entries.last().map(|e| e.index));
                        }
                        log.apply(record)?;
                    }
                }
                at = next;
            }
            Read::End => return Ok((at, max_index)),
            Read::Torn if last_segment => return Ok((at, max_index)),
            Read::Torn => {
                return Err(format!(
                    "a record at offset {at} was never wholly written, and segments follow"
                ));
            }
            Read::Damaged(why, body) => {
                // Name the entry, where the body shows which.
                let entry = body.and_then(|b| match record::decode(b) {
                    Err(BadRecord::Entry { after, .. }) => Some(entry_after(after)),
                    Ok(Record::Write { entries, .. }) if !entries.is_empty() => Some(format!(
                        "log entries {} to {}",
                        entries[0].index,
                        entries[entries.len() - 1].index
                    )),
                    _ => None,
                });
                return Err(match entry {
                    Some(entry) if entry.starts_with("log entries") => {
                        format!("{entry} are corrupt: {why}")
                    }
                    Some(entry) => format!("{entry} is corrupt: {why}"),
                    None => why,
                });
            }
        }
    }
}

fn describe(e: BadRecord, at: usize) -> String {
    match e {
        BadRecord::Entry { after, why } => format!("{} is corrupt: {why}", entry_after(after)),
        BadRecord::Other(why) => format!("the record at offset {at} does not decode: {why}"),
    }
}

/// The entry of a write record that follows the entry at `after` (none:
/// its first), named for an error.
fn entry_after(after: Option<u64>) -> String {
    after.map_or("the first log entry of a write".to_string(), |a| {
        format!("log entry {}", a + 1)
    })
}

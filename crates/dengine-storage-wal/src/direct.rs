//! Writing segments around the page cache (`O_DIRECT`, on Linux).
//!
//! A record written through the page cache is copied into it first, and
//! the pages it lands in are new ones: on this project's VM that copy was
//! the largest single cost of a write, about a quarter of the CPU of the
//! in-process benchmark on disk, for bytes nobody reads again (the log
//! is read from memory; the files only when a store opens). Written
//! directly, the bytes go from our buffer to the disk.
//!
//! Direct writes must start and end on block boundaries from a buffer
//! aligned to a block. The writer keeps the segment's last, partly filled
//! block in memory and writes it again, with what follows it, on the next
//! append: what the page cache does when it writes a page back. Rewriting
//! a block rewrites its earlier bytes with the same values, so a crash
//! during it leaves them as they were. Past the end of the records, a
//! block holds zeros, as the file did (see `spare`).
//!
//! Where the file system refuses `O_DIRECT` (tmpfs) or on other systems,
//! files are written through the page cache as before.

use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Seek, SeekFrom, Write};
use std::path::Path;

/// The unit of a direct write, and the alignment of its buffer.
pub(crate) const BLOCK: usize = 4096;

/// Blocks of room an appender keeps between writes (1 MiB).
const KEEP_BLOCKS: usize = 256;

/// One block of a write's buffer, aligned as direct writes need.
#[derive(Clone)]
#[repr(align(4096))]
pub(crate) struct Block(pub(crate) [u8; BLOCK]);

impl Block {
    pub(crate) const ZERO: Block = Block([0; BLOCK]);
}

/// Opens `path` with `options`, directly if the system allows; returns
/// whether it did.
pub(crate) fn open(path: &Path, options: &OpenOptions) -> std::io::Result<(File, bool)> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut direct = options.clone();
        direct.custom_flags(libc::O_DIRECT);
        match direct.open(path) {
            Ok(file) => return Ok((file, true)),
            // tmpfs and a few others refuse the flag.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    options.open(path).map(|f| (f, false))
}

/// Writes every byte of `blocks` to `file` at its cursor.
pub(crate) fn write_blocks(file: &mut File, blocks: &[Block]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = blocks.iter().map(|b| IoSlice::new(&b.0)).collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Appends to a segment file, directly where it was opened so.
pub(crate) struct Appender {
    file: File,
    direct: bool,
    /// Where the file's records end.
    end: u64,
    /// Direct only: the block the records end in, from its start to
    /// `end`, then zeros; and room for the blocks of a write (kept
    /// between writes, so that a write does not clear it first).
    blocks: Vec<Block>,
}

impl Appender {
    /// An appender for `file`, whose records end at `end`; `tail` is the
    /// file's bytes from the block `end` falls in to `end` (direct only).
    pub(crate) fn new(
        mut file: File,
        direct: bool,
        end: u64,
        tail: &[u8],
    ) -> std::io::Result<Appender> {
        let mut blocks = vec![Block::ZERO];
        if direct {
            let in_block = (end % BLOCK as u64) as usize;
            if tail.len() != in_block {
                return Err(std::io::Error::other(
                    "the bytes of the last block do not match where the records end",
                ));
            }
            blocks[0].0[..in_block].copy_from_slice(tail);
        } else {
            file.seek(SeekFrom::Start(end))?;
        }
        Ok(Appender {
            file,
            direct,
            end,
            blocks,
        })
    }

    /// Writes `bytes` after the records.
    pub(crate) fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if !self.direct {
            self.file.write_all(bytes)?;
            self.end += bytes.len() as u64;
            return Ok(());
        }
        let start = self.end - self.end % BLOCK as u64;
        let mut at = (self.end - start) as usize;
        let total = at + bytes.len();
        let count = total.div_ceil(BLOCK);
        if self.blocks.len() < count {
            self.blocks.resize(count, Block::ZERO);
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            let (block, offset) = (at / BLOCK, at % BLOCK);
            let n = rest.len().min(BLOCK - offset);
            self.blocks[block].0[offset..offset + n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            at += n;
        }
        // After the records, zeros: a reused buffer holds older bytes.
        if !total.is_multiple_of(BLOCK) {
            self.blocks[count - 1].0[total % BLOCK..].fill(0);
        }
        self.file.seek(SeekFrom::Start(start))?;
        write_blocks(&mut self.file, &self.blocks[..count])?;
        self.end += bytes.len() as u64;
        // The block the records now end in stays, first, for the next
        // write (its bytes after `end` are zeros, as written).
        if !total.is_multiple_of(BLOCK) {
            self.blocks.swap(0, count - 1);
        } else {
            self.blocks[0].0.fill(0);
        }
        // A rare large write (a batch of large entries) does not keep its
        // room for good.
        if self.blocks.len() > KEEP_BLOCKS {
            self.blocks.truncate(1);
            self.blocks.shrink_to(KEEP_BLOCKS);
        }
        Ok(())
    }

    /// Where the records end.
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    /// Makes what was appended durable.
    pub(crate) fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends of every awkward size, through a direct file where the
    /// system allows and a buffered one, with the appender made again
    /// from the file halfway (as when a store opens): the file holds the
    /// bytes appended, in order, then only zeros.
    #[test]
    fn appends_of_any_size_land_in_order_followed_by_zeros() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sizes = [
            1,
            4095,
            1,
            4096,
            4097,
            3,
            10_000,
            2 << 20,
            8192,
            12,
            0,
            5000,
            7,
        ];
        for try_direct in [true, false] {
            let path = dir.path().join(format!("seg-{try_direct}"));
            let options = File::options()
                .write(true)
                .create(true)
                .truncate(true)
                .clone();
            let (file, is_direct) = if try_direct {
                open(&path, &options).expect("open")
            } else {
                (options.open(&path).expect("open"), false)
            };
            let mut appender = Appender::new(file, is_direct, 0, &[]).expect("appender");
            let mut want = Vec::new();
            for (i, &n) in sizes.iter().enumerate() {
                let bytes: Vec<u8> = (0..n).map(|j| (i * 31 + j % 251 + 1) as u8).collect();
                appender.append(&bytes).expect("append");
                appender.sync().expect("sync");
                want.extend_from_slice(&bytes);
                if i == sizes.len() / 2 {
                    // Made again from what the file holds.
                    drop(appender);
                    let end = want.len();
                    let on_disk = std::fs::read(&path).expect("read");
                    let tail = &on_disk[end - end % BLOCK..end];
                    let (file, is_direct) = if try_direct {
                        open(&path, File::options().write(true)).expect("open")
                    } else {
                        (
                            File::options().write(true).open(&path).expect("open"),
                            false,
                        )
                    };
                    appender = Appender::new(file, is_direct, end as u64, tail).expect("again");
                }
            }
            let on_disk = std::fs::read(&path).expect("read");
            assert_eq!(
                &on_disk[..want.len()],
                &want[..],
                "trying direct: {try_direct}"
            );
            assert!(on_disk[want.len()..].iter().all(|&b| b == 0));
        }
    }
}

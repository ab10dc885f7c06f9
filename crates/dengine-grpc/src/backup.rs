//! Backups: the file `Maintenance.Snapshot` streams (what `etcdctl
//! snapshot save` writes), and the restore of one into the data directory
//! of a member of a new cluster (`dengine snapshot restore`).
//!
//! The file is `DENGINE-SNAPSHOT ‖ version (1) ‖ cluster id (u64) ‖ member
//! id (u64) ‖ revision (i64) ‖ the store's snapshot ‖ zero padding ‖ length
//! of the store's snapshot (u64) ‖ SHA-256 of all before`, integers
//! little-endian, padded so that all before the SHA-256 is a whole number
//! of 512-byte blocks. That is etcd's shape: its backups are a database of
//! whole pages followed by a SHA-256, and `etcdctl snapshot save` refuses
//! a stream whose size is not 32 more than a multiple of 512. The store's
//! snapshot is the one members send each other (its own format,
//! versioned): every key's history back to the compacted revision, and
//! the leases. A restore checks the SHA-256 before it writes anything.
//!
//! A restore, run once per member of the new cluster with that member's
//! flags, makes a data directory holding the backup's keys, history and
//! leases, and the new cluster's record; `dengine serve --data-dir` then
//! starts the member, and the new cluster's log begins above the restored
//! store. The old cluster's members are not restored: the new cluster is
//! the one `--initial-cluster` names.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use dengine_kv::KvStateMachine;
use dengine_runtime::StorageKind;
use sha2::{Digest, Sha256};

use crate::members::ClusterRecord;
use crate::server::{ServerConfig, ServerError};

/// A backup starts with these bytes.
const MAGIC: &[u8; 16] = b"DENGINE-SNAPSHOT";
const VERSION: u8 = 1;
const HEADER_LEN: u64 = 16 + 1 + 24;
/// The store snapshot's length and the SHA-256.
const TRAILER_LEN: u64 = 8 + 32;
/// What comes before the SHA-256 is a whole number of these.
const BLOCK: u64 = 512;

/// What a backup says of where it comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupHeader {
    /// The cluster it was taken from.
    pub cluster_id: u64,
    /// The member that made it.
    pub member_id: u64,
    /// The store's revision in it.
    pub revision: i64,
}

/// Why a file is not a backup that can be restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// The file is not a backup of this format, or is damaged.
    #[error("{path}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// A writer that counts and hashes what goes through it.
struct Hashing<W: Write> {
    inner: W,
    sha: Sha256,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a backup to `out`: the header, then the store's snapshot as
/// `snapshot` writes it (`KvStateMachine::write_snapshot` in a read job,
/// or a view the store detached, `KvStateMachine::detached_snapshot`).
pub fn write(
    out: &mut dyn Write,
    header: BackupHeader,
    snapshot: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let mut w = Hashing {
        inner: out,
        sha: Sha256::new(),
        len: 0,
    };
    w.write_all(MAGIC)?;
    w.write_all(&[VERSION])?;
    w.write_all(&header.cluster_id.to_le_bytes())?;
    w.write_all(&header.member_id.to_le_bytes())?;
    w.write_all(&header.revision.to_le_bytes())?;
    snapshot(&mut w)?;
    let store_len = w.len - HEADER_LEN;
    let pad = (BLOCK - (w.len + 8) % BLOCK) % BLOCK;
    w.write_all(&vec![0u8; pad as usize])?;
    w.write_all(&store_len.to_le_bytes())?;
    let sha = w.sha.finalize();
    let out = w.inner;
    out.write_all(&sha)?;
    out.flush()
}

/// Writes a backup (as [`write()`] does) into the file `path` and syncs it;
/// its size.
pub fn write_file(
    path: &Path,
    header: BackupHeader,
    snapshot: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<u64> {
    let file = File::create(path)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    write(&mut out, header, snapshot)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(file.metadata()?.len())
}

/// Checks the backup `path` whole (magic, version, size, SHA-256) and
/// reads its header; the length of the store's snapshot in it.
pub fn verify(path: &Path) -> Result<(BackupHeader, u64), BackupError> {
    let io_err = |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    };
    let invalid = |why: String| BackupError::Invalid {
        path: path.to_path_buf(),
        why,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let size = file.metadata().map_err(io_err)?.len();
    if size < HEADER_LEN + TRAILER_LEN {
        return Err(invalid(format!(
            "{size} bytes is too short for a dengine backup"
        )));
    }
    let mut head = [0u8; HEADER_LEN as usize];
    file.read_exact(&mut head).map_err(io_err)?;
    if &head[..16] != MAGIC {
        return Err(invalid(
            "not a dengine backup (a backup of etcd itself is restored with etcdutl)".into(),
        ));
    }
    if head[16] != VERSION {
        return Err(invalid(format!(
            "backup format version {}, which this program does not read (it reads {VERSION})",
            head[16]
        )));
    }
    let hashed = size - 32;
    if hashed % BLOCK != 0 {
        return Err(invalid(format!(
            "{size} bytes is not a whole backup: it was cut short or is damaged"
        )));
    }
    file.seek(SeekFrom::Start(0)).map_err(io_err)?;
    let mut sha = Sha256::new();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut left = hashed;
    let mut buf = vec![0u8; 1 << 16];
    let mut last = [0u8; 8];
    while left > 0 {
        let want = buf.len().min(left as usize);
        reader.read_exact(&mut buf[..want]).map_err(io_err)?;
        sha.update(&buf[..want]);
        left -= want as u64;
        if left == 0 {
            last.copy_from_slice(&buf[want - 8..want]);
        }
    }
    let mut stored = [0u8; 32];
    reader.read_exact(&mut stored).map_err(io_err)?;
    if sha.finalize().as_slice() != stored {
        return Err(invalid(
            "the SHA-256 does not match: the backup is damaged".into(),
        ));
    }
    let store_len = u64::from_le_bytes(last);
    if store_len > hashed - HEADER_LEN - 8 {
        return Err(invalid(format!(
            "the backup says its store takes {store_len} bytes, more than the file holds"
        )));
    }
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&head[17 + 8 * i..25 + 8 * i]);
        b
    };
    let header = BackupHeader {
        cluster_id: u64::from_le_bytes(word(0)),
        member_id: u64::from_le_bytes(word(1)),
        revision: i64::from_le_bytes(word(2)),
    };
    Ok((header, store_len))
}

/// What a restore made.
#[derive(Clone, Debug)]
pub struct Restored {
    /// Where the backup came from.
    pub from: BackupHeader,
    /// The new member's record (its id, the new cluster's id, the
    /// members).
    pub record: ClusterRecord,
}

/// Restores the backup `path` into `cfg.node.data_dir` as the data of the
/// member `cfg` describes in a new cluster (see the module docs). The
/// directory must not exist or be empty; nothing is written before the
/// backup is checked whole.
pub fn restore(path: &Path, cfg: &ServerConfig) -> Result<Restored, ServerError> {
    let (from, store_len) = verify(path).map_err(|e| ServerError::Config(e.to_string()))?;
    if cfg.node.storage == StorageKind::Memory {
        return Err(ServerError::Config(
            "a backup is restored into durable storage (--storage sled or rocksdb)".into(),
        ));
    }
    let dir = &cfg.node.data_dir;
    let in_use = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
    if in_use {
        return Err(ServerError::Config(format!(
            "the data directory {} is not empty: a restore makes a new one",
            dir.display()
        )));
    }
    let record = crate::server::new_cluster_record(cfg)?;
    let io_err = |e: io::Error| ServerError::Config(format!("{}: {e}", path.display()));
    let mut node = cfg.node.clone();
    node.node_id = record.member_id.0;
    node.cluster_id = record.cluster_id;
    let mut kv = KvStateMachine::open(&node)?;
    let mut file = File::open(path).map_err(io_err)?;
    file.seek(SeekFrom::Start(HEADER_LEN)).map_err(io_err)?;
    let mut body = BufReader::with_capacity(1 << 20, file).take(store_len);
    kv.restore_for_new_cluster(&mut body).map_err(io_err)?;
    drop(kv);
    record.save(dir)?;
    Ok(Restored { from, record })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dengine_kv::{KvCommand, PutRequest};
    use dengine_runtime::{EntryId, LogIndex, StateMachine, Term};

    fn store() -> KvStateMachine {
        let mut kv = KvStateMachine::in_memory();
        for (i, k) in ["a", "b", "a"].iter().enumerate() {
            let put = KvCommand::Put(PutRequest {
                key: k.as_bytes().to_vec(),
                value: format!("v{i}").into_bytes(),
                ..PutRequest::default()
            });
            let at = EntryId {
                term: Term(1),
                index: LogIndex(i as u64 + 1),
            };
            kv.apply(at, &put.encode()).expect("put");
        }
        kv.flush(LogIndex(3)).expect("flush");
        kv
    }

    #[test]
    fn a_backup_verifies_and_damage_anywhere_is_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("b.snap");
        let header = BackupHeader {
            cluster_id: 7,
            member_id: 9,
            revision: 4,
        };
        let kv = store();
        let size = write_file(&path, header, |w| kv.write_snapshot(w)).expect("write");
        // The same bytes from a view the store detached.
        let view = kv
            .detached_snapshot()
            .expect("the memory backend has a reader");
        let again = dir.path().join("view.snap");
        write_file(&again, header, view).expect("write from a view");
        assert_eq!(
            std::fs::read(&again).expect("read"),
            std::fs::read(&path).expect("read")
        );
        // etcdctl's rule: a whole number of 512-byte blocks, then 32 bytes.
        assert_eq!(size % 512, 32);
        assert_eq!(verify(&path).expect("verify").0, header);
        let good = std::fs::read(&path).expect("read");
        assert_eq!(good.len() as u64, size);
        for at in [0, 16, 30, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            std::fs::write(&path, &bad).expect("write");
            let e = verify(&path).expect_err("damaged").to_string();
            assert!(
                e.contains("not a dengine backup")
                    || e.contains("version")
                    || e.contains("SHA-256"),
                "{at}: {e}"
            );
        }
        std::fs::write(&path, &good[..good.len() - 5]).expect("write");
        let e = verify(&path).expect_err("short").to_string();
        assert!(e.contains("cut short"), "{e}");
        std::fs::write(&path, b"tiny").expect("write");
        assert!(
            verify(&path)
                .expect_err("tiny")
                .to_string()
                .contains("too short")
        );
    }
}

//! The replicated key-value store the standalone server runs: etcd's v3
//! data model (revisions; per key create and mod revisions and a version;
//! ranges; conditional transactions) as a [`StateMachine`] whose state
//! lives on the node's storage backend.
//!
//! Writes are [`KvCommand`]s proposed with [`KvCommand::encode`]; reads
//! run on the state machine under a [`dengine_runtime::ReadPolicy`]:
//!
//! ```
//! use dengine_kv::{KvCommand, KvStateMachine, PutRequest, RangeRequest};
//! use dengine_runtime::{Config, NodeBuilder, NodeId, ReadPolicy, StorageKind};
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config { storage: StorageKind::Memory, ..Config::default() };
//! let kv = KvStateMachine::open(&config)?;
//! let node = NodeBuilder::new(config, kv).initial_members([1].map(NodeId)).build().await?;
//! node.wait_for(std::time::Duration::from_secs(5), |m| m.leader.is_some()).await?;
//! let put = KvCommand::Put(PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() });
//! let done = node.propose(put.encode()).await?.response?;
//! assert_eq!(done.revision, 2);
//! let got = node
//!     .read(ReadPolicy::Linearizable, |kv: &KvStateMachine| kv.get(b"k"))
//!     .await??;
//! assert_eq!(got.map(|kv| kv.value), Some(b"v".to_vec()));
//! node.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! ## In memory and on disk
//! Every key and value is kept in an in-memory index, which applying and
//! reading use alone (as etcd keeps its index in memory): memory use is
//! about the size of the data. The records also live in a database of
//! their own under `data_dir/kv` (sled or RocksDB, as
//! [`dengine_runtime::Config::storage`] says), each sealed with a CRC32, all read and
//! checked when the store opens. Writes of a batch of entries go
//! in one atomic write together with the index they reach, without fsync:
//! the Raft log is the durable record, and after a crash the node replays
//! the log from the index the store says it holds (or restores the newest
//! snapshot if the store is behind it). Snapshots stream every record; a
//! restore first forgets the stored index, so a crash in the middle of one
//! is repaired by restoring again.
//!
//! ## Formats
//! What the store writes outlives the program that wrote it, so each
//! format carries a version, and a version this program does not read is
//! refused with an error naming it (never guessed at): commands (a first
//! byte, [`COMMAND_VERSION`], as in [`dengine_runtime::typed`]), each key's record
//! and the store's own record in the database (a first byte inside the
//! CRC32 seal), the sled database's layout (see `SledBackend`) and
//! snapshots (`DKV` and a version digit). A database or snapshot from
//! before versions is refused too; the node rebuilds the database from its
//! log or a snapshot. Changing a format means adding a version and keeping
//! the old one readable; fixtures of today's bytes in the tests catch a
//! change that forgets to.

#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod backend;
mod types;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

#[cfg(feature = "rocksdb")]
pub use backend::RocksBackend;
#[cfg(feature = "sled")]
pub use backend::SledBackend;
pub use backend::{Change, KvBackend, MemoryBackend, Visit};
pub use types::*;

use dengine_runtime::{Config, EntryId, Error, LogIndex, StateMachine, StorageKind};

/// Record keys: user keys under `k`, the store's own state under `m`.
const KEY_PREFIX: u8 = b'k';
const KEYS_END: &[u8] = b"l";
const META_KEY: &[u8] = b"m";
/// The format version of a key's record: the first byte of its body
/// (before the CRC seal): `1 ‖ create_revision ‖ mod_revision ‖ version ‖
/// value`, the integers little-endian `i64`.
const RECORD_VERSION: u8 = 1;
/// The format version of the store's own record (`m`): `1 ‖ applied index
/// (u64) ‖ revision (i64)`, little-endian. A body of 16 bytes is the
/// format before versions, refused.
const META_VERSION: u8 = 1;
/// A snapshot starts with these bytes and a format version.
const SNAPSHOT_MAGIC: &[u8; 3] = b"DKV";
/// The snapshot format version (an ASCII digit after the magic): `2` is
/// `revision (i64) ‖ (key length (u32) ‖ key ‖ record length (u32) ‖
/// record)* ‖ u32::MAX`, the records as in the database (so versioned
/// themselves). `1` was the same with records before versions: refused.
const SNAPSHOT_VERSION: u8 = b'2';
const SNAPSHOT_END: u32 = u32::MAX;
/// Restores write in batches of about this many bytes.
const RESTORE_BATCH: usize = 4 << 20;

fn record_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(KEY_PREFIX);
    k.extend_from_slice(key);
    k
}

fn encode_record(kv: &KeyValue) -> Vec<u8> {
    let mut body = Vec::with_capacity(25 + kv.value.len());
    body.push(RECORD_VERSION);
    body.extend_from_slice(&kv.create_revision.to_le_bytes());
    body.extend_from_slice(&kv.mod_revision.to_le_bytes());
    body.extend_from_slice(&kv.version.to_le_bytes());
    body.extend_from_slice(&kv.value);
    dengine_core::codec::seal(&body)
}

fn decode_record(key: &[u8], record: &[u8]) -> Result<KeyValue, KvError> {
    let corrupt = |what: String| {
        KvError::Storage(format!(
            "record of key {:?} is corrupt: {what}",
            String::from_utf8_lossy(key)
        ))
    };
    let body = dengine_core::codec::open(record).map_err(|e| corrupt(e.to_string()))?;
    let body = match body.split_first() {
        Some((&RECORD_VERSION, body)) => body,
        Some((&v, _)) => {
            return Err(KvError::Storage(format!(
                "record of key {:?} has format version {v}, which this program does not read \
                 (it reads version {RECORD_VERSION})",
                String::from_utf8_lossy(key)
            )));
        }
        None => return Err(corrupt("empty".into())),
    };
    let int = |i: usize| -> Result<i64, KvError> {
        body.get(i * 8..i * 8 + 8)
            .and_then(|b| b.try_into().ok())
            .map(i64::from_le_bytes)
            .ok_or_else(|| corrupt("truncated".into()))
    };
    Ok(KeyValue {
        key: key.to_vec(),
        create_revision: int(0)?,
        mod_revision: int(1)?,
        version: int(2)?,
        value: body[24..].to_vec(),
    })
}

fn encode_meta(applied: LogIndex, revision: i64) -> Vec<u8> {
    let mut body = vec![META_VERSION];
    body.extend_from_slice(&applied.0.to_le_bytes());
    body.extend_from_slice(&revision.to_le_bytes());
    dengine_core::codec::seal(&body)
}

fn decode_meta(record: &[u8]) -> Result<(LogIndex, i64), KvError> {
    let bad = |what: &str| KvError::Storage(format!("the store's own record is corrupt: {what}"));
    let body = dengine_core::codec::open(record).map_err(|e| bad(&e.to_string()))?;
    let body = match body.split_first() {
        // Written before records had versions (two integers alone).
        _ if body.len() == 16 => {
            return Err(KvError::Storage(
                "the key-value database was written by an older version, before its records \
                 had format versions: remove the directory, and the node rebuilds it from its \
                 log or a snapshot"
                    .into(),
            ));
        }
        Some((&META_VERSION, body)) => body,
        Some((&v, _)) => {
            return Err(KvError::Storage(format!(
                "the store's own record has format version {v}, which this program does not \
                 read (it reads version {META_VERSION})"
            )));
        }
        None => return Err(bad("empty")),
    };
    let (a, r) = body
        .split_first_chunk::<8>()
        .ok_or_else(|| bad("truncated"))?;
    let r: [u8; 8] = r.try_into().map_err(|_| bad("wrong length"))?;
    Ok((LogIndex(u64::from_le_bytes(*a)), i64::from_le_bytes(r)))
}

fn storage(e: io::Error) -> KvError {
    KvError::Storage(e.to_string())
}

/// The key-value state machine (see the [module docs](self)).
pub struct KvStateMachine {
    backend: Box<dyn KvBackend>,
    /// Every key's current value. Applying and reading use this alone; the
    /// backend holds the same records, written at each flush (as etcd keeps
    /// its index in memory and its values in a file it maps).
    keys: BTreeMap<Vec<u8>, KeyValue>,
    /// Writes of the entries applied since the last flush, for the backend:
    /// record key → record (`None`: removed).
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    revision: i64,
    /// The index the stored state reflects (durable backends only).
    applied: Option<LogIndex>,
    /// A failed write to the backend: every later flush fails, and the node
    /// stops.
    failed: Option<String>,
}

impl std::fmt::Debug for KvStateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStateMachine")
            .field("revision", &self.revision)
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
}

impl KvStateMachine {
    /// A store in memory.
    pub fn in_memory() -> KvStateMachine {
        KvStateMachine {
            backend: Box::new(backend::NoBackend),
            keys: BTreeMap::new(),
            pending: BTreeMap::new(),
            revision: 1,
            applied: None,
            failed: None,
        }
    }

    /// Opens the store on `backend`, checking every record.
    pub fn with_backend(backend: Box<dyn KvBackend>) -> Result<KvStateMachine, KvError> {
        let (applied, revision) = match backend.get(META_KEY).map_err(storage)? {
            Some(m) => {
                let (a, r) = decode_meta(&m)?;
                (Some(a), r)
            }
            None => (None, 1),
        };
        let mut bad = None;
        let mut keys = BTreeMap::new();
        backend
            .scan(
                &[KEY_PREFIX],
                Some(KEYS_END),
                &mut |k, v| match decode_record(&k[1..], v) {
                    Ok(kv) => {
                        keys.insert(kv.key.clone(), kv);
                        Ok(true)
                    }
                    Err(e) => {
                        bad = Some(e);
                        Ok(false)
                    }
                },
            )
            .map_err(storage)?;
        if let Some(e) = bad {
            return Err(e);
        }
        Ok(KvStateMachine {
            backend,
            keys,
            pending: BTreeMap::new(),
            revision,
            applied,
            failed: None,
        })
    }

    /// Opens the store for a node with these settings: in memory, or in
    /// `data_dir/kv` on the configured backend.
    #[cfg_attr(
        not(any(feature = "sled", feature = "rocksdb")),
        allow(unreachable_code, unused_variables)
    )]
    pub fn open(config: &Config) -> Result<KvStateMachine, Error> {
        let dir = config.data_dir.join("kv");
        let fail = |e: String| Error::Storage(format!("key-value store {}: {e}", dir.display()));
        let backend: Box<dyn KvBackend> = match config.storage {
            StorageKind::Memory => return Ok(KvStateMachine::in_memory()),
            #[cfg(feature = "sled")]
            StorageKind::Sled => {
                std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
                Box::new(SledBackend::open(&dir).map_err(|e| fail(e.to_string()))?)
            }
            #[cfg(feature = "rocksdb")]
            StorageKind::Rocksdb => {
                std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
                Box::new(RocksBackend::open(&dir).map_err(|e| fail(e.to_string()))?)
            }
            #[allow(unreachable_patterns)]
            other => {
                return Err(Error::Config(format!(
                    "storage {other:?} is not compiled in"
                )));
            }
        };
        KvStateMachine::with_backend(backend).map_err(|e| fail(e.to_string()))
    }

    /// The store's current revision (1 before the first write, as etcd).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The key's current value.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, KvError> {
        Ok(self.keys.get(key).cloned())
    }

    /// Reads keys (see [`RangeRequest`]).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, KvError> {
        let mut out = RangeResponse::default();
        for kv in self.in_range(&req.key, &req.range_end) {
            out.count += 1;
            if req.count_only {
                continue;
            }
            if req.limit > 0 && out.kvs.len() as u64 >= req.limit {
                out.more = true;
                continue;
            }
            out.kvs.push(if req.keys_only {
                KeyValue {
                    key: kv.key.clone(),
                    value: Vec::new(),
                    ..*kv
                }
            } else {
                kv.clone()
            });
        }
        Ok(out)
    }

    /// The keys of a range, in order.
    fn in_range<'a>(
        &'a self,
        key: &'a [u8],
        range_end: &'a [u8],
    ) -> impl Iterator<Item = &'a KeyValue> + 'a {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let bounds = match KeyRange::new(key, range_end) {
            KeyRange::Single(key) => (Included(key), Included(key)),
            KeyRange::Span(start, None) => (Included(start), Unbounded),
            // Empty (a map range whose end precedes its start panics).
            KeyRange::Span(start, Some(end)) if end <= start => (Included(start), Excluded(start)),
            KeyRange::Span(start, Some(end)) => (Included(start), Excluded(end)),
        };
        self.keys.range::<[u8], _>(bounds).map(|(_, kv)| kv)
    }

    /// Sets a key; a put with `ignore_value` or `ignore_lease` has been
    /// checked to find its key (see [`KvStateMachine::choose`]).
    fn put(&mut self, rev: i64, req: &PutRequest) -> OpResponse {
        let prev = self.keys.get(&req.key);
        let value = match prev {
            Some(p) if req.ignore_value => p.value.clone(),
            _ => req.value.clone(),
        };
        // `lease` and `ignore_lease`: there are no leases yet, so nothing is
        // kept of them (every key's lease is 0). Leases come in a later
        // change, with a record format that holds one.
        let kv = KeyValue {
            key: req.key.clone(),
            value,
            create_revision: prev.map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.map_or(1, |p| p.version + 1),
        };
        let prev_kv = prev.filter(|_| req.prev_kv).cloned();
        self.pending
            .insert(record_key(&kv.key), Some(encode_record(&kv)));
        self.keys.insert(kv.key.clone(), kv);
        OpResponse::Put { prev_kv }
    }

    fn delete(&mut self, req: &DeleteRangeRequest) -> OpResponse {
        let found: Vec<KeyValue> = self.in_range(&req.key, &req.range_end).cloned().collect();
        for kv in &found {
            self.pending.insert(record_key(&kv.key), None);
            self.keys.remove(&kv.key);
        }
        OpResponse::DeleteRange {
            deleted: found.len() as i64,
            prev_kvs: if req.prev_kv { found } else { Vec::new() },
        }
    }

    fn holds(&self, c: &Compare) -> bool {
        let mut keys = self.in_range(&c.key, &c.range_end).peekable();
        if keys.peek().is_none() {
            // As etcd: a value comparison on no key fails; the counters of
            // a missing key are 0.
            return !matches!(c.target, CompareTarget::Value(_))
                && compare(&KeyValue::default(), c);
        }
        keys.all(|kv| compare(kv, c))
    }

    /// Whether a put with `ignore_value` or `ignore_lease` finds its key
    /// when it runs after `earlier`, the writes of the command that run
    /// before it. As etcd (`checkPut`), the key must exist before the
    /// command runs; and it must still exist when the put runs, which etcd
    /// leaves to its server's check that no key is both deleted and put in
    /// one transaction (nested ones included), a check the store makes
    /// only within each branch (see [`validate`]).
    fn finds(&self, req: &PutRequest, earlier: &[Earlier<'_>]) -> bool {
        if !(req.ignore_value || req.ignore_lease) {
            return true;
        }
        let last = earlier.iter().rev().find_map(|w| match *w {
            Earlier::Put(k) if k == req.key.as_slice() => Some(true),
            Earlier::Delete(range) if range.contains(&req.key) => Some(false),
            _ => None,
        });
        self.keys.contains_key(&req.key) && last.unwrap_or(true)
    }

    /// Decides, as etcd does before a transaction runs, which branch it
    /// and every transaction nested in its chosen branch take: all their
    /// comparisons see the store as it is before the command. Pushes the
    /// choices to `path` in the order the transactions run, and checks on
    /// the way that each put of the chosen branches that keeps its key's
    /// value or lease finds the key, so a command that would fail changes
    /// nothing.
    fn choose<'a>(
        &self,
        t: &'a TxnRequest,
        path: &mut Vec<bool>,
        earlier: &mut Vec<Earlier<'a>>,
    ) -> Result<(), KvError> {
        let succeeded = t.compare.iter().all(|c| self.holds(c));
        path.push(succeeded);
        for op in if succeeded { &t.success } else { &t.failure } {
            match op {
                TxnOp::Range(_) => {}
                TxnOp::Put(p) => {
                    if !self.finds(p, earlier) {
                        return Err(key_not_found());
                    }
                    earlier.push(Earlier::Put(&p.key));
                }
                TxnOp::DeleteRange(d) => {
                    earlier.push(Earlier::Delete(KeyRange::new(&d.key, &d.range_end)));
                }
                TxnOp::Txn(nested) => self.choose(nested, path, earlier)?,
            }
        }
        Ok(())
    }

    /// Runs the branch of `t` that `path` (from [`KvStateMachine::choose`])
    /// says, nested transactions included, at revision `rev`; `wrote`
    /// tells whether anything changed.
    fn run_txn(
        &mut self,
        rev: i64,
        t: &TxnRequest,
        path: &mut impl Iterator<Item = bool>,
        wrote: &mut bool,
    ) -> Result<OpResponse, KvError> {
        // `choose` made one choice per transaction, in this order.
        let succeeded = path.next().unwrap_or(false);
        let branch = if succeeded { &t.success } else { &t.failure };
        let mut responses = Vec::with_capacity(branch.len());
        for op in branch {
            responses.push(match op {
                TxnOp::Range(r) => OpResponse::Range(self.range(r)?),
                TxnOp::Put(p) => {
                    *wrote = true;
                    self.put(rev, p)
                }
                TxnOp::DeleteRange(d) => {
                    let op = self.delete(d);
                    *wrote |= matches!(op, OpResponse::DeleteRange { deleted, .. } if deleted > 0);
                    op
                }
                TxnOp::Txn(nested) => self.run_txn(rev, nested, path, wrote)?,
            });
        }
        Ok(OpResponse::Txn {
            succeeded,
            responses,
        })
    }

    /// Runs a command; `Err` of kind `InvalidRequest` changed nothing.
    fn execute(&mut self, cmd: &KvCommand) -> Result<KvResponse, KvError> {
        validate(cmd)?;
        // One revision for the whole command, nested transactions
        // included, taken only if something changed.
        let rev = self.revision + 1;
        let mut wrote = false;
        let op = match cmd {
            KvCommand::Put(p) => {
                if !self.finds(p, &[]) {
                    return Err(key_not_found());
                }
                wrote = true;
                self.put(rev, p)
            }
            KvCommand::DeleteRange(d) => {
                let op = self.delete(d);
                wrote = matches!(op, OpResponse::DeleteRange { deleted, .. } if deleted > 0);
                op
            }
            KvCommand::Txn(t) => {
                let mut path = Vec::new();
                self.choose(t, &mut path, &mut Vec::new())?;
                self.run_txn(rev, t, &mut path.into_iter(), &mut wrote)?
            }
        };
        if wrote {
            self.revision = rev;
        }
        Ok(KvResponse {
            revision: self.revision,
            op,
        })
    }
}

/// A write of a transaction, as [`KvStateMachine::choose`] follows them.
#[derive(Clone, Copy)]
enum Earlier<'a> {
    Put(&'a [u8]),
    Delete(KeyRange<'a>),
}

/// etcd's answer to a put that keeps the value or lease of a key that does
/// not exist (`ErrKeyNotFound`, "etcdserver: key not found").
fn key_not_found() -> KvError {
    KvError::InvalidRequest("key not found".into())
}

fn compare(kv: &KeyValue, c: &Compare) -> bool {
    use std::cmp::Ordering;
    let ord = match &c.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::CreateRevision(v) => kv.create_revision.cmp(v),
        CompareTarget::ModRevision(v) => kv.mod_revision.cmp(v),
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
        // No key has a lease yet: every key's lease is 0.
        CompareTarget::Lease(v) => 0.cmp(v),
    };
    match c.op {
        CompareOp::Equal => ord == Ordering::Equal,
        CompareOp::NotEqual => ord != Ordering::Equal,
        CompareOp::Greater => ord == Ordering::Greater,
        CompareOp::Less => ord == Ordering::Less,
    }
}

/// Refuses malformed commands before anything runs, so a refused command
/// changes nothing on any replica. As etcd, in its order: each request in
/// turn, depth first (a transaction's compares, then its success ops, then
/// its failure ops, nested transactions inside them), must have a key, and
/// a put that keeps its key's value or lease must not give one; then,
/// within each branch (of every transaction, nested ones too), no key may
/// be written twice (put twice, or put and covered by a delete: etcd's
/// "duplicate key"). The etcd server runs etcd's whole check
/// (`checkIntervals`, across nested transactions too) before it proposes;
/// the store's own check must never be looser than this one.
fn validate(cmd: &KvCommand) -> Result<(), KvError> {
    match cmd {
        KvCommand::Put(p) => check_put(p),
        KvCommand::DeleteRange(d) => check_key(&d.key),
        KvCommand::Txn(t) => {
            check_requests(t)?;
            check_branches(t)
        }
    }
}

fn check_key(key: &[u8]) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::InvalidRequest("key is not provided".into()));
    }
    Ok(())
}

/// etcd's `checkPutRequest`.
fn check_put(p: &PutRequest) -> Result<(), KvError> {
    check_key(&p.key)?;
    if p.ignore_value && !p.value.is_empty() {
        return Err(KvError::InvalidRequest("value is provided".into()));
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(KvError::InvalidRequest("lease is provided".into()));
    }
    Ok(())
}

/// etcd's `checkTxnRequest`, less its limit on the number of operations
/// (the server's to set).
fn check_requests(t: &TxnRequest) -> Result<(), KvError> {
    for c in &t.compare {
        check_key(&c.key)?;
    }
    for op in t.success.iter().chain(&t.failure) {
        match op {
            TxnOp::Range(r) => check_key(&r.key)?,
            TxnOp::Put(p) => check_put(p)?,
            TxnOp::DeleteRange(d) => check_key(&d.key)?,
            TxnOp::Txn(nested) => check_requests(nested)?,
        }
    }
    Ok(())
}

/// No key written twice within one branch, in `t` and every transaction
/// nested in it.
fn check_branches(t: &TxnRequest) -> Result<(), KvError> {
    for branch in [&t.success, &t.failure] {
        let deleted: Vec<KeyRange<'_>> = branch
            .iter()
            .filter_map(|op| match op {
                TxnOp::DeleteRange(d) => Some(KeyRange::new(&d.key, &d.range_end)),
                _ => None,
            })
            .collect();
        let mut puts = std::collections::BTreeSet::new();
        for op in branch {
            match op {
                TxnOp::Put(p)
                    if !puts.insert(&p.key) || deleted.iter().any(|r| r.contains(&p.key)) =>
                {
                    return Err(KvError::InvalidRequest(
                        "duplicate key given in txn request".into(),
                    ));
                }
                TxnOp::Txn(nested) => check_branches(nested)?,
                _ => {}
            }
        }
    }
    Ok(())
}

impl StateMachine for KvStateMachine {
    type Response = Result<KvResponse, KvError>;

    fn apply(&mut self, _at: EntryId, command: &[u8]) -> Self::Response {
        if let Some(f) = &self.failed {
            return Err(KvError::Storage(f.clone()));
        }
        let cmd = KvCommand::decode(command)?;
        self.execute(&cmd)
    }

    fn flush(&mut self, applied: LogIndex) -> io::Result<()> {
        if let Some(f) = &self.failed {
            return Err(io::Error::other(f.clone()));
        }
        let mut changes: Vec<Change> = std::mem::take(&mut self.pending).into_iter().collect();
        changes.push((META_KEY.to_vec(), Some(encode_meta(applied, self.revision))));
        if let Err(e) = self.backend.write(changes) {
            self.failed = Some(e.to_string());
            return Err(e);
        }
        self.applied = Some(applied);
        Ok(())
    }

    fn applied_index(&self) -> Option<LogIndex> {
        self.applied.filter(|_| self.backend.durable())
    }

    fn snapshot(&mut self, out: &mut dyn Write) -> io::Result<()> {
        if !self.pending.is_empty() {
            return Err(io::Error::other("snapshot asked for before a flush"));
        }
        out.write_all(SNAPSHOT_MAGIC)?;
        out.write_all(&[SNAPSHOT_VERSION])?;
        out.write_all(&self.revision.to_le_bytes())?;
        for kv in self.keys.values() {
            let record = encode_record(kv);
            out.write_all(&(kv.key.len() as u32).to_le_bytes())?;
            out.write_all(&kv.key)?;
            out.write_all(&(record.len() as u32).to_le_bytes())?;
            out.write_all(&record)?;
        }
        out.write_all(&SNAPSHOT_END.to_le_bytes())
    }

    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("key-value snapshot: {what}"),
            )
        };
        // The header first: a snapshot of a format this program does not
        // read is refused before anything is forgotten.
        let mut header = [0u8; 4];
        input.read_exact(&mut header)?;
        let (magic, version) = header.split_at(3);
        if magic != SNAPSHOT_MAGIC {
            return Err(bad("not a key-value snapshot"));
        }
        if version != [SNAPSHOT_VERSION] {
            return Err(bad(&format!(
                "format version {}, which this program does not read (it reads version {})",
                version[0].escape_ascii(),
                char::from(SNAPSHOT_VERSION)
            )));
        }
        // Forget the stored index first: a crash from here on leaves a
        // store that says it holds nothing, and the next start restores
        // again.
        self.applied = None;
        self.pending.clear();
        self.keys.clear();
        self.failed = None;
        self.backend.write(vec![(META_KEY.to_vec(), None)])?;
        self.backend.clear()?;
        let mut b8 = [0u8; 8];
        input.read_exact(&mut b8)?;
        let revision = i64::from_le_bytes(b8);
        let mut batch: Vec<Change> = Vec::new();
        let mut batch_bytes = 0;
        fn read_len(input: &mut dyn Read, len: usize) -> io::Result<Vec<u8>> {
            let mut out = Vec::new();
            input.take(len as u64).read_to_end(&mut out)?;
            if out.len() != len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "key-value snapshot: truncated record",
                ));
            }
            Ok(out)
        }
        fn u32_of(input: &mut dyn Read) -> io::Result<u32> {
            let mut b = [0u8; 4];
            input.read_exact(&mut b)?;
            Ok(u32::from_le_bytes(b))
        }
        loop {
            let klen = u32_of(input)?;
            if klen == SNAPSHOT_END {
                break;
            }
            // Read as far as the stream goes, never allocating what a
            // length field merely claims.
            let key = read_len(input, klen as usize)?;
            let vlen = u32_of(input)? as usize;
            let record = read_len(input, vlen)?;
            let kv = decode_record(&key, &record).map_err(|e| bad(&e.to_string()))?;
            batch_bytes += key.len() + record.len();
            batch.push((record_key(&key), Some(record)));
            self.keys.insert(key, kv);
            if batch_bytes >= RESTORE_BATCH {
                self.backend.write(std::mem::take(&mut batch))?;
                batch_bytes = 0;
            }
        }
        self.backend.write(batch)?;
        self.revision = revision;
        Ok(())
    }
}

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

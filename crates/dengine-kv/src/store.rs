//! The store: applying commands to the history and reading it.

use std::borrow::Cow;
use std::collections::HashSet;
use std::io;
use std::time::{Duration, Instant};

use dengine_runtime::{Config, Error, LogIndex, StorageKind};

use crate::alarms::{ALARM_PREFIX, ALARMS_END, Alarms, decode_alarm};
use crate::auth::{AUTH_KEY, AuthError, AuthView};
use crate::backend::{Change, ChangeRef, KvBackend, MemoryBackend};
use crate::check::{check_put, validate};
use crate::events::{Event, EventKind, EventSink};
use crate::index::{Index, Revision};
use crate::lease::{LEASE_PREFIX, LEASES_END, Leases, decode_lease};
use crate::members::{MEMBER_PREFIX, MEMBERS_END, Members, decode_member};
use crate::pending::Pending;
use crate::record::{self, META_KEY, REV_PREFIX, REVS_END, V1_KEY_PREFIX, V1_KEYS_END};
use crate::types::*;

mod state_machine;
mod txn;

pub(crate) fn storage(e: io::Error) -> KvError {
    KvError::Storage(e.to_string())
}

/// Visits every record with `start <= key < end` until `visit` fails;
/// the first failure (the backend's or `visit`'s) is the result.
pub(crate) fn scan(
    backend: &dyn KvBackend,
    start: &[u8],
    end: Option<&[u8]>,
    mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), KvError>,
) -> Result<(), KvError> {
    let mut failed = None;
    backend
        .scan(start, end, &mut |k, v| match visit(k, v) {
            Ok(()) => Ok(true),
            Err(e) => {
                failed = Some(e);
                Ok(false)
            }
        })
        .map_err(storage)?;
    failed.map_or(Ok(()), Err)
}

/// The key-value state machine (see the [crate docs](crate)).
pub struct KvStateMachine {
    pub(crate) backend: Box<dyn KvBackend>,
    /// Every key's history; values live in the backend (and `pending`).
    pub(crate) index: Index,
    /// The records of the writes applied since the last flush, in
    /// revision order, for the backend.
    pub(crate) pending: Pending,
    /// The records compactions forgot since the last flush.
    pub(crate) removed: Vec<Revision>,
    /// Forgotten records left in the backend while a snapshot view read
    /// it, removed by the first flush after the views are gone (a restart
    /// before that finds them below the compacted revision and forgets
    /// them again).
    pub(crate) deferred: Vec<Revision>,
    /// Shared with the snapshot views that read the backend.
    pub(crate) holds: std::sync::Arc<crate::snapshot::Holds>,
    /// The revision of the last command that changed something (1 before
    /// the first write, as etcd).
    pub(crate) revision: i64,
    /// The revision of the last compaction: no read below it (0: none).
    pub(crate) compacted: i64,
    /// The sub revision the next write of the running command takes.
    next_sub: u32,
    /// When the oldest write not yet in a durable backend was flushed.
    unwritten_since: Option<Instant>,
    /// How long flushed writes may wait in memory ([`WRITE_AFTER`]; zero:
    /// each flush writes).
    pub(crate) write_after: Duration,
    /// The index the last flush was asked for.
    flush_target: Option<LogIndex>,
    /// Whether commands were applied since the last flush (then `pending`
    /// is ahead of `flush_target`).
    applied_since_flush: bool,
    /// The index the stored state reflects (durable backends only).
    pub(crate) applied: Option<LogIndex>,
    /// A failed write to the backend: every later flush fails, and the node
    /// stops.
    pub(crate) failed: Option<String>,
    /// Where the events of applied commands go (watchers), if anywhere.
    pub(crate) sink: Option<Box<dyn EventSink>>,
    /// The events of the running command, while the sink wants them.
    events: Option<Vec<Event>>,
    /// The leases.
    pub(crate) leases: Leases,
    /// The cluster's members.
    pub(crate) members: Members,
    /// The raised alarms.
    pub(crate) alarms: Alarms,
    /// Users, roles, permissions and tokens (shared with the server).
    pub(crate) auth: AuthView,
    /// Whether the auth store changed since the last flush.
    pub(crate) auth_changed: bool,
}

impl std::fmt::Debug for KvStateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStateMachine")
            .field("revision", &self.revision)
            .field("compacted", &self.compacted)
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
}

impl KvStateMachine {
    /// A store in memory.
    pub fn in_memory() -> KvStateMachine {
        KvStateMachine::empty(Box::new(MemoryBackend::default()))
    }

    fn empty(backend: Box<dyn KvBackend>) -> KvStateMachine {
        KvStateMachine {
            backend,
            index: Index::default(),
            pending: Pending::default(),
            removed: Vec::new(),
            deferred: Vec::new(),
            holds: Default::default(),
            revision: 1,
            compacted: 0,
            next_sub: 0,
            unwritten_since: None,
            write_after: WRITE_AFTER,
            flush_target: None,
            applied_since_flush: false,
            applied: None,
            failed: None,
            sink: None,
            events: None,
            leases: Leases::default(),
            members: Members::default(),
            alarms: Alarms::default(),
            auth: AuthView::default(),
            auth_changed: false,
        }
    }

    /// Opens the store on `backend`, checking every record and building
    /// the index from them. A database of format 1 (no history) is
    /// converted, in one atomic write, into a history compacted at its
    /// revision.
    pub fn with_backend(backend: Box<dyn KvBackend>) -> Result<KvStateMachine, KvError> {
        let mut sm = KvStateMachine::empty(backend);
        let Some(meta) = sm.backend.get(META_KEY).map_err(storage)? else {
            return Ok(sm);
        };
        let meta = record::decode_meta(&meta)?;
        if meta.v1 {
            sm.convert_v1(meta.applied, meta.revision)?;
        }
        sm.applied = Some(meta.applied);
        sm.revision = meta.revision;
        sm.compacted = meta.compacted;
        let index = &mut sm.index;
        scan(&*sm.backend, &[REV_PREFIX], Some(REVS_END), |k, v| {
            let rev = record::parse_rev_key(k)?;
            let r = record::decode(rev, v)?;
            index
                .entry(r.key)
                .restore(r.write, r.create_revision, r.version, r.lease);
            Ok(())
        })?;
        if sm.compacted > 0 {
            // Records a compaction forgot are still there if a snapshot
            // view held them until the stop: they go at the next flush.
            sm.index.compact(sm.compacted, &mut sm.removed);
        }
        let by_id = &mut sm.leases.by_id;
        scan(&*sm.backend, &[LEASE_PREFIX], Some(LEASES_END), |k, v| {
            let (id, ttl) = decode_lease(k, v)?;
            let keys = Default::default();
            by_id.insert(id, crate::lease::Lease { ttl, keys });
            Ok(())
        })?;
        sm.leases.attach_all(&sm.index);
        let list = &mut sm.members.list;
        scan(&*sm.backend, &[MEMBER_PREFIX], Some(MEMBERS_END), |k, v| {
            decode_member(k, v, list)
        })?;
        let raised = &mut sm.alarms.raised;
        scan(&*sm.backend, &[ALARM_PREFIX], Some(ALARMS_END), |k, v| {
            raised.insert(decode_alarm(k, v)?);
            Ok(())
        })?;
        if let Some(record) = sm.backend.get(AUTH_KEY).map_err(storage)? {
            let state = crate::auth::decode_record(&record)?;
            sm.auth.with_state(|s| *s = state);
        }
        Ok(sm)
    }

    /// Rewrites a database of format 1 (a record per key under `k`) as
    /// records of writes.
    fn convert_v1(&mut self, applied: LogIndex, revision: i64) -> Result<(), KvError> {
        let mut kvs = Vec::new();
        scan(
            &*self.backend,
            &[V1_KEY_PREFIX],
            Some(V1_KEYS_END),
            |k, v| {
                kvs.push(record::decode_v1(&k[1..], v)?);
                Ok(())
            },
        )?;
        let mut changes: Vec<Change> = Vec::with_capacity(2 * kvs.len() + 1);
        for kv in &kvs {
            let mut old = vec![V1_KEY_PREFIX];
            old.extend_from_slice(&kv.key);
            changes.push(Change::Remove(old));
        }
        for (rev, kv) in record::from_v1(kvs) {
            changes.push(Change::Put(
                record::rev_key(rev).to_vec(),
                record::encode(&kv, false),
            ));
        }
        changes.push(Change::Put(
            META_KEY.to_vec(),
            record::encode_meta(applied, revision, revision),
        ));
        self.backend.write(changes).map_err(storage)
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
            StorageKind::Sled if crate::backend::SledBackend::is_sled_dir(&dir) => {
                Box::new(crate::backend::SledBackend::open(&dir).map_err(|e| fail(e.to_string()))?)
            }
            #[cfg(feature = "sled")]
            StorageKind::Sled => {
                Box::new(crate::backend::LogBackend::open(&dir).map_err(|e| fail(e.to_string()))?)
            }
            #[cfg(feature = "rocksdb")]
            StorageKind::Rocksdb => {
                std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
                Box::new(crate::backend::RocksBackend::open(&dir).map_err(|e| fail(e.to_string()))?)
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

    /// The revision of the last compaction (0: none): reads at revisions
    /// below it fail with [`KvError::Compacted`].
    pub fn compacted_revision(&self) -> i64 {
        self.compacted
    }

    /// How many keys the index holds, deleted keys whose history is kept
    /// included.
    pub fn indexed_keys(&self) -> usize {
        self.index.len()
    }

    /// Gives back the space of compacted records (see
    /// [`KvBackend::defragment`]).
    pub fn defragment(&self) -> Result<(), KvError> {
        self.backend.defragment().map_err(storage)
    }

    /// The key's current value.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, KvError> {
        match self.index.get(key).and_then(|h| h.current()) {
            Some(c) => self.fetch_kv(c.rev).map(Some),
            None => Ok(None),
        }
    }

    /// The revision a read asking for `revision` reads at, as etcd: 0 or
    /// less is the current one.
    pub fn read_revision(&self, revision: i64) -> Result<i64, KvError> {
        if revision > self.revision {
            return Err(KvError::FutureRevision);
        }
        let at = if revision <= 0 {
            self.revision
        } else {
            revision
        };
        if at < self.compacted {
            return Err(KvError::Compacted);
        }
        Ok(at)
    }

    /// etcd's `checkRange` for a range inside a transaction, which is not
    /// quite [`Self::read_revision`]: 0 reads the current revision, but a
    /// negative revision is compared with the first revision kept, so
    /// once anything has been compacted it fails as compacted (etcd 3.4.23
    /// answers so; outside a transaction it reads the current revision).
    fn check_txn_range(&self, revision: i64) -> Result<(), KvError> {
        if revision == 0 {
            return Ok(());
        }
        if revision > self.revision {
            return Err(KvError::FutureRevision);
        }
        // etcd's first revision is -1 until the first compaction.
        let first = if self.compacted > 0 {
            self.compacted
        } else {
            -1
        };
        if revision < first {
            return Err(KvError::Compacted);
        }
        Ok(())
    }

    /// Runs `f` on the record of the write at `rev`.
    fn with_record<T>(
        &self,
        rev: Revision,
        f: impl FnOnce(record::RecordRef<'_>) -> T,
    ) -> Result<T, KvError> {
        let bytes: Cow<'_, [u8]> = match self.pending.get(rev) {
            Some(bytes) => Cow::Borrowed(bytes),
            None => Cow::Owned(
                self.backend
                    .get(&record::rev_key(rev))
                    .map_err(storage)?
                    .ok_or_else(|| {
                        KvError::Storage(format!(
                            "the record of revision {}.{} is missing",
                            rev.main, rev.sub
                        ))
                    })?,
            ),
        };
        record::decode(rev, &bytes).map(f)
    }

    /// The key-value the write at `rev` made.
    pub(crate) fn fetch_kv(&self, rev: Revision) -> Result<KeyValue, KvError> {
        self.with_record(rev, |r| r.to_kv())
    }

    /// Reads keys (see [`RangeRequest`]).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, KvError> {
        let at = self.read_revision(req.revision)?;
        self.range_at(req, at)
    }

    /// Reads keys at revision `at` (checked by the caller).
    fn range_at(&self, req: &RangeRequest, at: i64) -> Result<RangeResponse, KvError> {
        let mut out = RangeResponse::default();
        for (_, h) in self.index.range(KeyRange::new(&req.key, &req.range_end)) {
            let Some(rev) = h.at(at) else { continue };
            out.count += 1;
            if req.count_only {
                continue;
            }
            if req.limit > 0 && out.kvs.len() as u64 >= req.limit {
                out.more = true;
                continue;
            }
            let kv = if req.keys_only {
                self.with_record(rev, |r| KeyValue {
                    key: r.key.to_vec(),
                    value: Vec::new(),
                    create_revision: r.create_revision,
                    mod_revision: rev.main,
                    version: r.version,
                    lease: r.lease,
                })?
            } else {
                self.fetch_kv(rev)?
            };
            out.kvs.push(kv);
        }
        Ok(out)
    }

    fn next_rev(&mut self, main: i64) -> Revision {
        let rev = Revision {
            main,
            sub: self.next_sub,
        };
        self.next_sub += 1;
        rev
    }

    /// Sets a key; a put with `ignore_value` or `ignore_lease` has been
    /// checked to find its key (see [`KvStateMachine::choose`]).
    fn put(&mut self, main: i64, req: PutView<'_>) -> Result<OpResponse, KvError> {
        // Read before anything changes, so that a failed read changes
        // nothing; only puts that ask for the value before pay the lookup.
        let prev = match (req.prev_kv || req.ignore_value)
            .then(|| self.index.get(req.key).and_then(|h| h.current()))
            .flatten()
        {
            Some(c) => Some(self.fetch_kv(c.rev)?),
            None => None,
        };
        let rev = self.next_rev(main);
        // `ignore_lease` keeps the lease the key has (it was checked to
        // exist: see `finds`).
        let lease = (!req.ignore_lease).then_some(req.lease);
        let put = self.index.put(req.key, rev, lease);
        self.leases
            .reattach(req.key, put.before.map_or(0, |c| c.lease), put.lease);
        let value: &[u8] = match &prev {
            Some(p) if req.ignore_value => &p.value,
            _ => req.value,
        };
        let (create_revision, version, lease) = (put.create_revision, put.version, put.lease);
        if let Some(events) = &mut self.events {
            events.push(Event {
                kind: EventKind::Put,
                kv: KeyValue {
                    key: req.key.to_vec(),
                    value: value.to_vec(),
                    create_revision,
                    mod_revision: main,
                    version,
                    lease,
                },
            });
        }
        self.pending.push_with(rev, |out| {
            record::encode_parts_into(out, req.key, false, create_revision, version, lease, value);
        });
        Ok(OpResponse::Put {
            prev_kv: prev.filter(|_| req.prev_kv),
        })
    }

    pub(crate) fn delete(
        &mut self,
        main: i64,
        req: &DeleteRangeRequest,
    ) -> Result<OpResponse, KvError> {
        let found: Vec<(Vec<u8>, Revision, i64)> = self
            .index
            .range(KeyRange::new(&req.key, &req.range_end))
            .filter_map(|(k, h)| h.current().map(|c| (k.to_vec(), c.rev, c.lease)))
            .collect();
        let mut prev_kvs = Vec::new();
        for (key, was, lease) in &found {
            self.leases.reattach(key, *lease, 0);
            if req.prev_kv {
                prev_kvs.push(self.fetch_kv(*was)?);
            }
            let rev = self.next_rev(main);
            self.index.entry(key).tombstone(rev);
            if let Some(events) = &mut self.events {
                events.push(Event {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key: key.clone(),
                        mod_revision: main,
                        ..KeyValue::default()
                    },
                });
            }
            self.pending.push_with(rev, |out| {
                record::encode_parts_into(out, key, true, 0, 0, 0, b"");
            });
        }
        Ok(OpResponse::DeleteRange {
            deleted: found.len() as i64,
            prev_kvs,
        })
    }

    fn compact(&mut self, at: i64) -> Result<OpResponse, KvError> {
        if at <= self.compacted {
            return Err(KvError::Compacted);
        }
        if at > self.revision {
            return Err(KvError::FutureRevision);
        }
        let keys_before = self.index.len();
        let removed_before = self.removed.len();
        self.index.compact(at, &mut self.removed);
        self.compacted = at;
        tracing::info!(
            revision = at,
            revisions_removed = self.removed.len().saturating_sub(removed_before),
            keys_removed = keys_before.saturating_sub(self.index.len()),
            "compacted the history"
        );
        Ok(OpResponse::Compact)
    }

    /// Runs a command; `Err` of kind `InvalidRequest`, `Compacted` or
    /// `FutureRevision` changed nothing.
    pub(crate) fn execute(&mut self, cmd: &KvCommand) -> Result<KvResponse, KvError> {
        let cmd = match cmd {
            KvCommand::Authorized(a) => {
                self.check_authorized(a)?;
                &*a.command
            }
            // A client's command that came without its user (sent before
            // auth was enabled): etcd refuses it the same way.
            cmd if crate::auth::needs_user(cmd) && self.auth.enabled() => {
                return Err(AuthError::UserEmpty.into());
            }
            cmd => cmd,
        };
        validate(cmd)?;
        self.check_corrupt(cmd)?;
        self.check_space(cmd)?;
        let main = self.begin_command();
        let mut wrote = false;
        let op = match cmd {
            KvCommand::Put(p) => {
                wrote = true;
                self.put_alone(main, p.view())?
            }
            KvCommand::DeleteRange(d) => {
                let op = self.delete(main, d)?;
                wrote = matches!(op, OpResponse::DeleteRange { deleted, .. } if deleted > 0);
                op
            }
            KvCommand::Txn(t) => {
                let mut path = Vec::new();
                let mut ranges = Vec::new();
                let mut doomed = false;
                self.choose(t, &mut path, &mut Vec::new(), &mut ranges, &mut doomed)?;
                for revision in ranges {
                    self.check_txn_range(revision)?;
                }
                if doomed {
                    return Err(key_not_found());
                }
                self.run_txn(main, t, &mut path.into_iter(), &mut wrote)?
            }
            KvCommand::Compact(c) => self.compact(c.revision)?,
            KvCommand::LeaseGrant(g) => self.lease_grant(g)?,
            KvCommand::LeaseRevoke(r) => {
                wrote = self.lease_revoke(main, r.id)?;
                OpResponse::LeaseRevoke
            }
            KvCommand::LeaseKeepAlive(k) => self.lease_keep_alive(k.id),
            KvCommand::MemberAttrs(a) => self.member_attrs(a)?,
            KvCommand::MemberUpdate(u) => self.member_update(u)?,
            KvCommand::Alarm(a) => self.alarm(a),
            KvCommand::Auth(a) => self.auth_apply(a)?,
            KvCommand::Authorized(_) => {
                return Err(KvError::InvalidRequest(
                    "an authorized command inside another".into(),
                ));
            }
        };
        Ok(self.end_command(main, wrote, op))
    }

    /// What [`KvStateMachine::execute`] does with a put alone, for a put
    /// the apply path read in place from its entry (see [`decode_put`]):
    /// the same checks in the same order, then the same put.
    fn execute_put(&mut self, p: PutView<'_>) -> Result<KvResponse, KvError> {
        check_put(p)?;
        self.refuse_if_corrupt(true)?;
        self.refuse_if_no_space(true)?;
        let main = self.begin_command();
        let op = self.put_alone(main, p)?;
        Ok(self.end_command(main, true, op))
    }

    /// A put alone: it checks its lease first, as etcd's `Put` (inside a
    /// txn, etcd's `checkPut` looks at the key first).
    fn put_alone(&mut self, main: i64, p: PutView<'_>) -> Result<OpResponse, KvError> {
        if !self.lease_exists(p.lease) {
            return Err(KvError::LeaseNotFound);
        }
        if !self.finds(p, &[]) {
            return Err(key_not_found());
        }
        self.put(main, p)
    }

    /// Starts a command: gathers its events if someone watches; returns
    /// the revision it writes at. One revision for the whole command,
    /// nested transactions included, taken only if something changed.
    fn begin_command(&mut self) -> i64 {
        self.events = self
            .sink
            .as_ref()
            .filter(|s| s.wanted())
            .map(|_| Vec::new());
        self.next_sub = 0;
        self.revision + 1
    }

    /// Ends a command that answered `op`: if it `wrote`, the store is at
    /// revision `main` and its events go to the watchers.
    fn end_command(&mut self, main: i64, wrote: bool, op: OpResponse) -> KvResponse {
        if wrote {
            self.revision = main;
            if let (Some(sink), Some(events)) = (&mut self.sink, self.events.take()) {
                sink.publish(main, events);
            }
        }
        KvResponse {
            revision: self.revision,
            op,
        }
    }

    /// Writes what was applied since the last flush, with the index
    /// `applied` it reaches, in one atomic write.
    pub(crate) fn write_pending(&mut self, applied: LogIndex) -> io::Result<()> {
        let removed = std::mem::take(&mut self.removed);
        // A record written and forgotten in one batch is never written.
        let gone: HashSet<Revision> = removed.iter().copied().collect();
        // The keys the records go under, made before the batch borrows
        // them and the records: the backend copies both into its write,
        // so no record needs a key and a value of its own for it.
        let pending = &self.pending;
        let written: Vec<([u8; record::REV_KEY_LEN], &[u8])> = pending
            .iter()
            .filter(|(rev, _)| !gone.contains(rev))
            .map(|(rev, bytes)| (record::rev_key(rev), bytes))
            .collect();
        let mut removed: Vec<Revision> = removed
            .into_iter()
            .filter(|&rev| pending.get(rev).is_none())
            .collect();
        // A snapshot view may still have to read them.
        if crate::snapshot::viewed(self) {
            self.deferred.append(&mut removed);
        } else {
            removed.append(&mut self.deferred);
        }
        let removed: Vec<[u8; record::REV_KEY_LEN]> =
            removed.iter().map(|&rev| record::rev_key(rev)).collect();
        let mut owned = Vec::new();
        self.leases.take_changes(&mut owned);
        self.members.take_changes(&mut owned);
        self.alarms.take_changes(&mut owned);
        if std::mem::take(&mut self.auth_changed) {
            let record = crate::auth::encode_record(&self.auth.state());
            owned.push(Change::Put(AUTH_KEY.to_vec(), record));
        }
        owned.push(Change::Put(
            META_KEY.to_vec(),
            record::encode_meta(applied, self.revision, self.compacted),
        ));
        let mut changes: Vec<ChangeRef<'_>> =
            Vec::with_capacity(written.len() + removed.len() + owned.len());
        changes.extend(
            written
                .iter()
                .map(|(key, bytes)| ChangeRef::Insert(key, bytes)),
        );
        changes.extend(removed.iter().map(|key| ChangeRef::Remove(key)));
        changes.extend(owned.iter().map(Change::as_ref));
        let outcome = self.backend.write_refs(&changes);
        self.pending.clear();
        outcome
    }
}

/// Writes applied to a durable backend wait in memory until this many
/// records (written or removed) gather...
const WRITE_RECORDS: usize = 8192;
/// ... or the oldest has waited this long.
const WRITE_AFTER: Duration = Duration::from_millis(10);

impl KvStateMachine {
    /// Writes everything applied so far, stored as applied through
    /// `applied`.
    fn write_all_pending(&mut self, applied: LogIndex) -> io::Result<()> {
        if let Err(e) = self.write_pending(applied) {
            self.failed = Some(e.to_string());
            return Err(e);
        }
        self.applied = Some(applied);
        self.unwritten_since = None;
        Ok(())
    }
}

impl Drop for KvStateMachine {
    /// A store closed between batches writes what it kept in memory, so a
    /// clean stop replays nothing. Closed in the middle of a batch (the
    /// runtime stopping on a failure), it writes nothing: the writes it
    /// holds go beyond the last index it was told, and the log replays
    /// them.
    fn drop(&mut self) {
        let waiting = self.unwritten_since.is_some();
        if let (Some(target), true, false, None) = (
            self.flush_target,
            waiting,
            self.applied_since_flush,
            &self.failed,
        ) && let Err(e) = self.write_all_pending(target)
        {
            tracing::warn!(error = %e, "writing the key-value store's last batch failed");
        }
    }
}

/// etcd's answer to a put that keeps the value or lease of a key that does
/// not exist (`ErrKeyNotFound`, "etcdserver: key not found").
fn key_not_found() -> KvError {
    KvError::InvalidRequest("key not found".into())
}

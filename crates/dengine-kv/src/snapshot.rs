//! The store's snapshots: its whole history back to the compacted
//! revision, as the records of its writes.
//!
//! Format 5 (`DKV5`) is format 4 followed by the auth store: `length
//! (u32) ‖ state (postcard)` (users, roles, whether auth is on, its
//! revision; tokens are not kept).
//!
//! Format 4 (`DKV4`): `revision (i64) ‖ compacted revision (i64) ‖ (1 ‖
//! main (i64) ‖ sub (u32, big-endian) ‖ record length (u32) ‖ record)* ‖
//! 0 ‖ (1 ‖ lease id (i64) ‖ ttl (i64))* ‖ 0 ‖ (1 ‖ length (u32) ‖
//! member)* ‖ 0 ‖ (1 ‖ member id (u64) ‖ alarm kind (u8))* ‖ 0`, the
//! records as in the database (so versioned themselves), in revision
//! order, then the leases, then the members (postcard), then the raised
//! alarms. Format 3 (`DKV3`) is format 4 without the members and alarms
//! (a cluster whose members were not replicated yet). Format 2 (`DKV2`), from before the history was kept, is read
//! too: `revision ‖ (key length (u32) ‖ key ‖ record length (u32) ‖
//! record of format 1)* ‖ u32::MAX`, restored as a history compacted at its
//! revision. Format 1 is refused.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::backend::Change;
use crate::index::Revision;
use crate::pending::Pending;
use crate::record::{self, META_KEY, REV_PREFIX};
use crate::store::KvStateMachine;

/// A snapshot starts with these bytes and a format version digit.
const MAGIC: &[u8; 3] = b"DKV";
const VERSION: u8 = b'5';
const V4: u8 = b'4';
const V3: u8 = b'3';
const V2: u8 = b'2';
const V2_END: u32 = u32::MAX;
/// Restores write in batches of about this many bytes.
const RESTORE_BATCH: usize = 4 << 20;

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("key-value snapshot: {what}"),
    )
}

/// What a snapshot holds, taken from the store at one applied index:
/// everything but the records in the backend, which are read as the
/// snapshot is written (the store keeps them while a view lives; see
/// [`Holds`]).
pub(crate) struct View {
    revision: i64,
    compacted: i64,
    /// Records forgotten since the last flush, still in the backend.
    removed: HashSet<Revision>,
    /// Records not in the backend yet: newer than every record in it.
    pending: Pending,
    leases: Vec<(i64, i64)>,
    members: Vec<Vec<u8>>,
    alarms: Vec<(u64, crate::AlarmKind)>,
    auth: Vec<u8>,
}

/// Shared by the store and its snapshot views: while a view lives the
/// store removes no record from the backend (compactions' removals wait),
/// and a restore that replaces the backend's records under a view says so
/// here, failing that view's snapshot.
#[derive(Debug, Default)]
pub(crate) struct Holds {
    replaced: AtomicBool,
}

impl View {
    /// The store's state as it is now.
    pub(crate) fn of(sm: &KvStateMachine) -> View {
        View {
            revision: sm.revision,
            compacted: sm.compacted,
            removed: sm.removed.iter().copied().collect(),
            pending: sm.pending.clone(),
            leases: sm.leases(),
            members: sm.members.records(),
            alarms: sm.alarms(),
            auth: crate::auth::encode_for_snapshot(&sm.auth.state()),
        }
    }

    /// Writes the snapshot, reading the backend's records through `scan`:
    /// those older than the pending ones (at or before the view's
    /// revision), less those forgotten, then the pending ones.
    pub(crate) fn write(&self, scan: &ScanFn<'_>, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(MAGIC)?;
        out.write_all(&[VERSION])?;
        out.write_all(&self.revision.to_le_bytes())?;
        out.write_all(&self.compacted.to_le_bytes())?;
        let mut record = |rev: Revision, v: &[u8]| -> io::Result<()> {
            if self.removed.contains(&rev) {
                return Ok(());
            }
            let len = u32::try_from(v.len()).map_err(|_| bad("a record of over 4 GiB"))?;
            out.write_all(&[1])?;
            out.write_all(&rev.main.to_le_bytes())?;
            out.write_all(&rev.sub.to_be_bytes())?;
            out.write_all(&len.to_le_bytes())?;
            out.write_all(v)
        };
        // Records written to the backend after the view was taken are
        // newer than this, and are left out.
        let first_unwritten = self.pending.iter().next().map_or(
            Revision {
                main: self.revision.saturating_add(1),
                sub: 0,
            },
            |(rev, _)| rev,
        );
        let end = record::rev_key(first_unwritten);
        scan(&[REV_PREFIX], Some(&end), &mut |k, v| {
            let rev = record::parse_rev_key(k).map_err(|e| io::Error::other(e.to_string()))?;
            record(rev, v)?;
            Ok(true)
        })?;
        for (rev, v) in self.pending.iter() {
            record(rev, v)?;
        }
        out.write_all(&[0])?;
        for (id, ttl) in &self.leases {
            out.write_all(&[1])?;
            out.write_all(&id.to_le_bytes())?;
            out.write_all(&ttl.to_le_bytes())?;
        }
        out.write_all(&[0])?;
        for member in &self.members {
            let len = u32::try_from(member.len()).map_err(|_| bad("a member of over 4 GiB"))?;
            out.write_all(&[1])?;
            out.write_all(&len.to_le_bytes())?;
            out.write_all(member)?;
        }
        out.write_all(&[0])?;
        for &(member, kind) in &self.alarms {
            out.write_all(&[1])?;
            out.write_all(&crate::alarms::encode_for_snapshot(member, kind))?;
        }
        out.write_all(&[0])?;
        let len = u32::try_from(self.auth.len()).map_err(|_| bad("an auth store of over 4 GiB"))?;
        out.write_all(&len.to_le_bytes())?;
        out.write_all(&self.auth)
    }
}

/// A scan of the backend's records, as [`crate::KvBackend::scan`].
pub(crate) type ScanFn<'a> =
    dyn Fn(&[u8], Option<&[u8]>, &mut crate::Visit<'_>) -> io::Result<()> + 'a;

/// Writes the store's snapshot: the records in the backend and those not
/// written to it yet (which are newer), less those compacted since.
pub(crate) fn write(sm: &KvStateMachine, out: &mut dyn Write) -> io::Result<()> {
    View::of(sm).write(&|start, end, visit| sm.backend.scan(start, end, visit), out)
}

/// A view of the store that writes its snapshot on another thread while
/// the store goes on applying, if its backend can be read beside its
/// writes.
pub(crate) fn detached(sm: &KvStateMachine) -> Option<dengine_runtime::SnapshotView> {
    let reader = sm.backend.reader()?;
    let view = View::of(sm);
    let holds = Arc::clone(&sm.holds);
    Some(Box::new(move |out: &mut dyn Write| {
        view.write(&|start, end, visit| reader.scan(start, end, visit), out)?;
        if holds.replaced.load(Ordering::SeqCst) {
            return Err(io::Error::other(
                "the store was restored from another snapshot while this one was written",
            ));
        }
        Ok(())
    }))
}

/// Whether a snapshot view lives: the store then removes no record from
/// the backend.
pub(crate) fn viewed(sm: &KvStateMachine) -> bool {
    Arc::strong_count(&sm.holds) > 1
}

impl KvStateMachine {
    /// Writes the store's snapshot, as [`dengine_runtime::StateMachine::snapshot`]
    /// does, from a shared reference (a read job): the keys with their
    /// history, the leases and the members.
    pub fn write_snapshot(&self, out: &mut dyn Write) -> io::Result<()> {
        write(self, out)
    }

    /// The store as it is now, as a closure that writes the bytes
    /// [`KvStateMachine::write_snapshot`] would write now, from any thread
    /// while the store goes on applying (a backup taken in a read job and
    /// written after it). The store keeps the records the closure reads
    /// until it is dropped. `None` if the backend cannot be read beside
    /// its writes (a store left on sled).
    pub fn detached_snapshot(&self) -> Option<dengine_runtime::SnapshotView> {
        detached(self)
    }

    /// Makes this store the start of a new cluster from a snapshot (a
    /// backup): the keys with their history and the leases, not the old
    /// cluster's members (the new cluster's first entry names its own),
    /// stored as applied through index 0 so the new cluster's log applies
    /// on top of it.
    pub fn restore_for_new_cluster(&mut self, input: &mut dyn Read) -> io::Result<()> {
        restore(self, input)?;
        self.members = Default::default();
        self.write_pending(dengine_runtime::LogIndex::ZERO)?;
        self.backend.sync()?;
        self.applied = Some(dengine_runtime::LogIndex::ZERO);
        Ok(())
    }
}

/// Reads exactly `len` bytes, as far as the stream goes, never allocating
/// what a length field merely claims.
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

fn read_array<const N: usize>(input: &mut dyn Read) -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    input.read_exact(&mut b)?;
    Ok(b)
}

/// Replaces the store with the snapshot's.
pub(crate) fn restore(sm: &mut KvStateMachine, input: &mut dyn Read) -> io::Result<()> {
    // The header first: a snapshot of a format this program does not read
    // is refused before anything is forgotten.
    let header: [u8; 4] = read_array(input)?;
    let (magic, version) = header.split_at(3);
    if magic != MAGIC {
        return Err(bad("not a key-value snapshot"));
    }
    let version = version[0];
    if !matches!(version, VERSION | V4 | V3 | V2) {
        return Err(bad(&format!(
            "format version {}, which this program does not read (it reads versions {} to {})",
            version.escape_ascii(),
            char::from(V2),
            char::from(VERSION)
        )));
    }
    // Forget the stored index first: a crash from here on leaves a store
    // that says it holds nothing, and the next start restores again.
    sm.applied = None;
    sm.pending.clear();
    sm.removed.clear();
    // A view still reading the records that go now fails its snapshot;
    // the records removals waited for go with the rest.
    if viewed(sm) {
        sm.holds.replaced.store(true, Ordering::SeqCst);
        sm.holds = Arc::default();
    }
    sm.deferred.clear();
    sm.index.clear();
    sm.leases = Default::default();
    sm.members = Default::default();
    sm.alarms = Default::default();
    sm.auth.with_state(|s| *s = Default::default());
    sm.auth.forget_tokens(None);
    sm.auth_changed = true;
    sm.failed = None;
    sm.backend.write(vec![Change::Remove(META_KEY.to_vec())])?;
    sm.backend.clear()?;
    let revision = i64::from_le_bytes(read_array(input)?);
    let compacted = if version == V2 {
        restore_v2(sm, input)?;
        revision
    } else {
        let compacted = i64::from_le_bytes(read_array(input)?);
        restore_records(sm, input)?;
        restore_leases(sm, input)?;
        if matches!(version, VERSION | V4) {
            restore_members(sm, input)?;
            restore_alarms(sm, input)?;
        }
        if version == VERSION {
            restore_auth(sm, input)?;
        }
        compacted
    };
    sm.revision = revision;
    sm.compacted = compacted;
    sm.leases.attach_all(&sm.index);
    let all = sm.leases();
    if let Some(sink) = &mut sm.sink {
        sink.restored(revision);
        sink.lease(crate::LeaseChange::All(all));
        sink.members(&sm.members.list);
    }
    Ok(())
}

/// The auth store of format 5, written at the next flush.
fn restore_auth(sm: &mut KvStateMachine, input: &mut dyn Read) -> io::Result<()> {
    let len = u32::from_le_bytes(read_array(input)?) as usize;
    let bytes = read_len(input, len)?;
    let state = crate::auth::decode_from_snapshot(&bytes)
        .map_err(|e| bad(&format!("its auth store: {e}")))?;
    sm.auth.with_state(|s| *s = state);
    Ok(())
}

/// The alarms of format 4, written at the next flush.
fn restore_alarms(sm: &mut KvStateMachine, input: &mut dyn Read) -> io::Result<()> {
    loop {
        match read_array::<1>(input)? {
            [0] => return Ok(()),
            [1] => {}
            [t] => return Err(bad(&format!("unknown alarm tag {t}"))),
        }
        let alarm = crate::alarms::decode_from_snapshot(read_array(input)?)
            .ok_or_else(|| bad("an alarm of an unknown kind"))?;
        sm.alarms.raised.insert(alarm);
        sm.alarms.changed.insert(alarm);
    }
}

/// The members of format 4, written at the next flush.
fn restore_members(sm: &mut KvStateMachine, input: &mut dyn Read) -> io::Result<()> {
    let mut list = crate::MemberList::default();
    loop {
        match read_array::<1>(input)? {
            [0] => break,
            [1] => {}
            [t] => return Err(bad(&format!("unknown member tag {t}"))),
        }
        let len = u32::from_le_bytes(read_array(input)?) as usize;
        let bytes = read_len(input, len)?;
        crate::members::Members::read_record(&bytes, &mut list)
            .map_err(|e| bad(&format!("a member: {e}")))?;
    }
    sm.members.replace(list);
    Ok(())
}

/// The leases of format 3, written at the next flush.
fn restore_leases(sm: &mut KvStateMachine, input: &mut dyn Read) -> io::Result<()> {
    loop {
        match read_array::<1>(input)? {
            [0] => return Ok(()),
            [1] => {}
            [t] => return Err(bad(&format!("unknown lease tag {t}"))),
        }
        let id = i64::from_le_bytes(read_array(input)?);
        let ttl = i64::from_le_bytes(read_array(input)?);
        sm.leases.by_id.insert(
            id,
            crate::lease::Lease {
                ttl,
                keys: Default::default(),
            },
        );
        sm.leases.pending.insert(id, Some(ttl));
    }
}

/// Restored records, written to the backend in batches of about
/// [`RESTORE_BATCH`] bytes and read into the index as they come.
struct Restorer<'a> {
    sm: &'a mut KvStateMachine,
    batch: Vec<Change>,
    bytes: usize,
}

impl Restorer<'_> {
    /// Takes the record of the write at `rev`, checking it.
    fn take(&mut self, rev: Revision, record: Vec<u8>) -> io::Result<()> {
        let r = record::decode(rev, &record).map_err(|e| bad(&e.to_string()))?;
        self.sm
            .index
            .entry(r.key)
            .restore(r.write, r.create_revision, r.version, r.lease);
        self.bytes += record.len() + 13;
        self.batch
            .push(Change::Insert(record::rev_key(rev).to_vec(), record));
        if self.bytes >= RESTORE_BATCH {
            self.sm.backend.write(std::mem::take(&mut self.batch))?;
            self.bytes = 0;
        }
        Ok(())
    }

    fn finish(self) -> io::Result<()> {
        self.sm.backend.write(self.batch)
    }
}

/// The records of format 3, written to the backend and the index.
fn restore_records(sm: &mut KvStateMachine, input: &mut dyn Read) -> io::Result<()> {
    let mut out = Restorer {
        sm,
        batch: Vec::new(),
        bytes: 0,
    };
    let mut last: Option<Revision> = None;
    loop {
        match read_array::<1>(input)? {
            [0] => break,
            [1] => {}
            [t] => return Err(bad(&format!("unknown item tag {t}"))),
        }
        let main = i64::from_le_bytes(read_array(input)?);
        let sub = u32::from_be_bytes(read_array(input)?);
        let rev = Revision { main, sub };
        if last.is_some_and(|l| l >= rev) {
            return Err(bad("records out of revision order"));
        }
        last = Some(rev);
        let len = u32::from_le_bytes(read_array(input)?) as usize;
        out.take(rev, read_len(input, len)?)?;
    }
    out.finish()
}

/// A snapshot of format 2 (current values only, records of format 1),
/// written as a history compacted at its revision.
fn restore_v2(sm: &mut KvStateMachine, input: &mut dyn Read) -> io::Result<()> {
    let mut kvs = Vec::new();
    loop {
        let klen = u32::from_le_bytes(read_array(input)?);
        if klen == V2_END {
            break;
        }
        let key = read_len(input, klen as usize)?;
        let vlen = u32::from_le_bytes(read_array(input)?) as usize;
        let bytes = read_len(input, vlen)?;
        kvs.push(record::decode_v1(&key, &bytes).map_err(|e| bad(&e.to_string()))?);
    }
    let mut out = Restorer {
        sm,
        batch: Vec::new(),
        bytes: 0,
    };
    for (rev, kv) in record::from_v1(kvs) {
        out.take(rev, record::encode(&kv, false))?;
    }
    out.finish()
}

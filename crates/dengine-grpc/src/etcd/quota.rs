//! The space quota (`--quota-backend-bytes`), as etcd's: a write that
//! would grow the store (a put, a transaction that puts, a lease grant)
//! while this member's store is past its quota raises the `NOSPACE` alarm
//! for this member and fails with "etcdserver: mvcc: database space
//! exceeded". The alarm is replicated, so from then on every member's
//! store refuses such writes until an operator frees space (compaction,
//! defragmentation, or a larger quota) and disarms it
//! (`Maintenance.Alarm`). Reads, deletes and compactions always work.
//!
//! The store's size is the size of its files (`data_dir/kv`), measured
//! every half second rather than on each write; a store in memory has no
//! quota.
//!
//! A full disk is met the same way, before it is full: while the free
//! space of the data directory's filesystem is below a reserve
//! (`--disk-reserve-bytes`), this member raises its `NOSPACE` alarm and
//! writes that grow the store fail with etcd's error, so that the
//! reserve is left for what must still be written (the alarm itself,
//! deletes, compactions, Raft's own records) and a member never meets
//! the end of its disk in the middle of a write (which it would take as
//! fatal). Reads go on. Unlike the quota's alarm, which waits for an
//! operator as etcd's does, an alarm raised for the disk is disarmed by
//! the member itself once twice the reserve is free again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dengine_kv::{AlarmKind, AlarmRequest, KvCommand};
use tokio::sync::watch;
use tonic::Status;

use super::{EtcdCore, errors};

/// etcd's default quota, when the flag is 0.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 << 30;

/// How often the store's size is measured.
const MEASURE_EVERY: Duration = Duration::from_millis(500);

/// The file in the data directory that says this member raised its
/// `NOSPACE` alarm for its disk, so that it disarms it when space
/// returns also after a restart. Empty: it needs an inode, not space.
const DISK_MARKER: &str = "nospace-for-disk";

/// The default free space kept on the data directory's filesystem.
pub const DEFAULT_DISK_RESERVE_BYTES: u64 = 64 << 20;

/// Bytes free for an unprivileged writer on the filesystem holding
/// `dir` (`None` when it cannot be asked).
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Bytes of files under `dir`, recursively (0 when unreadable).
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A member's quota and what it knows of its store's size and of the
/// free space on its disk.
#[derive(Debug)]
pub struct Quota {
    /// Bytes allowed; `None`: no quota.
    limit: Option<u64>,
    /// Free bytes kept on the data directory's filesystem; 0: none.
    reserve: u64,
    /// The data directory; `None` in memory.
    data_dir: Option<PathBuf>,
    /// Where the store's files are; `None` in memory.
    dir: Option<PathBuf>,
    size: AtomicU64,
    /// Free bytes on the data directory's filesystem, as last measured
    /// (`u64::MAX` when unknown).
    free: AtomicU64,
    /// Whether this member's `NOSPACE` alarm is raised (as last seen).
    raised: AtomicBool,
    /// Whether this member raised it for its disk (and so may disarm it
    /// when space returns).
    raised_for_disk: AtomicBool,
    /// A file that says so across a restart (`None` in memory).
    disk_marker: Option<PathBuf>,
}

impl Quota {
    /// A quota of `limit` bytes (`None`: none) on the store in
    /// `data_dir/kv`, keeping `reserve` bytes free (0: no reserve) on the
    /// filesystem of `data_dir` (`None`: in memory, never measured).
    pub fn new(limit: Option<u64>, reserve: u64, data_dir: Option<&Path>) -> Quota {
        let dir = data_dir.map(|d| d.join("kv"));
        let size = dir.as_deref().map_or(0, dir_size);
        let free = data_dir.and_then(free_bytes).unwrap_or(u64::MAX);
        let disk_marker = data_dir.map(|d| d.join(DISK_MARKER));
        let for_disk = disk_marker.as_deref().is_some_and(Path::exists);
        Quota {
            limit: limit.filter(|_| dir.is_some()),
            reserve: if data_dir.is_some() { reserve } else { 0 },
            data_dir: data_dir.map(Path::to_path_buf),
            dir,
            size: AtomicU64::new(size),
            free: AtomicU64::new(free),
            raised: AtomicBool::new(false),
            raised_for_disk: AtomicBool::new(for_disk),
            disk_marker,
        }
    }

    /// Free bytes on the data directory's filesystem as last measured
    /// (`None` in memory or when unknown).
    pub fn free_bytes(&self) -> Option<u64> {
        Some(self.free.load(Ordering::Relaxed)).filter(|f| *f != u64::MAX)
    }

    /// The store's size as last measured.
    pub fn db_size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// Measures the store's size now.
    pub fn measure(&self) -> u64 {
        let size = self.dir.as_deref().map_or(0, dir_size);
        self.size.store(size, Ordering::Relaxed);
        metrics::gauge!("dengine_mvcc_db_size_bytes").set(size as f64);
        metrics::gauge!("etcd_mvcc_db_total_size_in_bytes").set(size as f64);
        // As Maintenance.Status says: the backends expose no free-page
        // count, so all of the store is counted in use.
        metrics::gauge!("etcd_mvcc_db_total_size_in_use_in_bytes").set(size as f64);
        if let Some(free) = self.data_dir.as_deref().and_then(free_bytes) {
            self.free.store(free, Ordering::Relaxed);
            metrics::gauge!("dengine_disk_free_bytes").set(free as f64);
        }
        size
    }

    /// Whether `cost` more bytes would take the store past its quota.
    fn over_quota(&self, cost: u64) -> bool {
        self.limit
            .is_some_and(|limit| self.db_size().saturating_add(cost) > limit)
    }

    /// Whether writing `cost` more bytes would eat into the disk's
    /// reserve.
    fn disk_low(&self, cost: u64) -> bool {
        self.reserve > 0 && self.free.load(Ordering::Relaxed) < self.reserve.saturating_add(cost)
    }

    /// Notes (or forgets) that the alarm was raised for the disk.
    fn set_for_disk(&self, for_disk: bool) {
        self.raised_for_disk.store(for_disk, Ordering::Relaxed);
        if let Some(marker) = &self.disk_marker {
            let done = if for_disk {
                std::fs::File::create(marker).map(drop)
            } else {
                std::fs::remove_file(marker).or_else(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Ok(()),
                    _ => Err(e),
                })
            };
            if let Err(e) = done {
                tracing::warn!(file = %marker.display(), error = %e,
                    "cannot note why the NOSPACE alarm is raised");
            }
        }
    }

    /// Whether `cost` more bytes would pass the quota or the reserve.
    fn exceeded(&self, cost: u64) -> bool {
        self.over_quota(cost) || self.disk_low(cost)
    }

    /// Whether the disk has room again for an alarm this member raised
    /// for it to be disarmed: twice the reserve free (so that it does not
    /// flap at the line), and the store within its quota.
    fn disk_recovered(&self) -> bool {
        self.free.load(Ordering::Relaxed) >= self.reserve.saturating_mul(2) && !self.over_quota(0)
    }
}

impl EtcdCore {
    /// etcd's quota check before a write: a write that grows the store
    /// while it is past its quota raises this member's `NOSPACE` alarm
    /// (once) and is refused.
    pub(super) async fn check_quota(&self, cmd: &KvCommand, cost: u64) -> Result<(), Status> {
        if !dengine_kv::grows(cmd) || !self.quota.exceeded(cost) {
            return Ok(());
        }
        if !self.quota.raised.load(Ordering::Relaxed) {
            if self.quota.over_quota(cost) {
                tracing::warn!(db_size = self.quota.db_size(), quota = ?self.quota.limit,
                    "the store is past its space quota: raising the NOSPACE alarm");
            }
            self.raise_no_space(self.quota.disk_low(cost)).await;
        }
        Err(errors::no_space())
    }

    /// Raises this member's `NOSPACE` alarm (once: not while it is seen
    /// raised), noting whether it was for the disk.
    async fn raise_no_space(&self, for_disk: bool) {
        if self.quota.raised.swap(true, Ordering::Relaxed) {
            // Raised already (for the quota, or before a restart): from
            // now on also for the disk.
            if for_disk && !self.quota.raised_for_disk.load(Ordering::Relaxed) {
                self.quota.set_for_disk(true);
            }
            return;
        }
        if for_disk {
            tracing::warn!(
                free = self.quota.free_bytes(),
                reserve = self.quota.reserve,
                "the data directory's disk is below its reserve: raising the NOSPACE alarm"
            );
            self.quota.set_for_disk(true);
        }
        if let Err(e) = Box::pin(self.write(&no_space_alarm(self.member_id.0, true))).await {
            self.quota.raised.store(false, Ordering::Relaxed);
            tracing::warn!(error = %e.message(), "raising the NOSPACE alarm failed");
        }
    }

    /// Disarms this member's `NOSPACE` alarm when it raised it for the
    /// disk and the disk has room again.
    async fn disarm_if_disk_recovered(&self) {
        let q = &self.quota;
        if !q.raised.load(Ordering::Relaxed)
            || !q.raised_for_disk.load(Ordering::Relaxed)
            || !q.disk_recovered()
        {
            return;
        }
        // Disarming is a write, but one that does not grow the store:
        // the check before it lets it through.
        match Box::pin(self.write(&no_space_alarm(self.member_id.0, false))).await {
            Ok(_) => {
                tracing::info!(
                    free = q.free_bytes(),
                    "the disk has room again: NOSPACE alarm disarmed"
                );
                q.set_for_disk(false);
                q.raised.store(false, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e.message(), "disarming the NOSPACE alarm failed"),
        }
    }
}

/// The command that raises (or disarms) `member`'s `NOSPACE` alarm.
fn no_space_alarm(member: u64, activate: bool) -> KvCommand {
    KvCommand::Alarm(AlarmRequest {
        activate,
        member,
        kind: AlarmKind::NoSpace,
    })
}

/// Measures the store's size and the disk's free space every half
/// second, and follows whether this member's `NOSPACE` alarm is raised
/// (it is raised once per crossing, and again after it is disarmed): it
/// raises it when the disk falls below its reserve, and disarms it when
/// the disk has room again. Until `stop`.
pub async fn run(core: Arc<EtcdCore>, mut stop: watch::Receiver<bool>) {
    if core.quota.limit.is_none() && core.quota.reserve == 0 {
        return;
    }
    let me = core.member_id.0;
    loop {
        core.quota.measure();
        if let Ok(alarms) = core.read(true, |kv| kv.alarms()).await {
            let raised = alarms.contains(&(me, AlarmKind::NoSpace));
            let was = core.quota.raised.swap(raised, Ordering::Relaxed);
            // Disarmed by someone else (an operator) since it was last
            // seen raised. (Not merely unseen: just after a restart the
            // store may not have applied the alarm yet.)
            if was && !raised && core.quota.raised_for_disk.load(Ordering::Relaxed) {
                core.quota.set_for_disk(false);
            }
        }
        if core.quota.disk_low(0) {
            core.raise_no_space(true).await;
        } else {
            core.disarm_if_disk_recovered().await;
        }
        tokio::select! {
            _ = tokio::time::sleep(MEASURE_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}

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

/// A member's quota and what it knows of its store's size.
#[derive(Debug)]
pub struct Quota {
    /// Bytes allowed; `None`: no quota.
    limit: Option<u64>,
    /// Where the store's files are; `None` in memory.
    dir: Option<PathBuf>,
    size: AtomicU64,
    /// Whether this member's `NOSPACE` alarm is raised (as last seen).
    raised: AtomicBool,
}

impl Quota {
    /// A quota of `limit` bytes (`None`: none) on the store in
    /// `data_dir/kv` (`None`: in memory, never measured).
    pub fn new(limit: Option<u64>, data_dir: Option<&Path>) -> Quota {
        let dir = data_dir.map(|d| d.join("kv"));
        let size = dir.as_deref().map_or(0, dir_size);
        Quota {
            limit: limit.filter(|_| dir.is_some()),
            dir,
            size: AtomicU64::new(size),
            raised: AtomicBool::new(false),
        }
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
        size
    }

    /// Whether `cost` more bytes would take the store past its quota.
    fn exceeded(&self, cost: u64) -> bool {
        self.limit
            .is_some_and(|limit| self.db_size().saturating_add(cost) > limit)
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
        if !self.quota.raised.swap(true, Ordering::Relaxed) {
            tracing::warn!(db_size = self.quota.db_size(), quota = ?self.quota.limit,
                "the store is past its space quota: raising the NOSPACE alarm");
            let raise = KvCommand::Alarm(AlarmRequest {
                activate: true,
                member: self.member_id.0,
                kind: AlarmKind::NoSpace,
            });
            if let Err(e) = Box::pin(self.write(&raise)).await {
                self.quota.raised.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e.message(), "raising the NOSPACE alarm failed");
            }
        }
        Err(errors::no_space())
    }
}

/// Measures the store's size every half second, and follows whether this
/// member's `NOSPACE` alarm is raised (it is raised once per crossing,
/// and again after it is disarmed), until `stop`.
pub async fn run(core: Arc<EtcdCore>, mut stop: watch::Receiver<bool>) {
    if core.quota.limit.is_none() {
        return;
    }
    let me = core.member_id.0;
    loop {
        core.quota.measure();
        if let Ok(alarms) = core.read(true, |kv| kv.alarms()).await {
            let raised = alarms.contains(&(me, AlarmKind::NoSpace));
            core.quota.raised.store(raised, Ordering::Relaxed);
        }
        tokio::select! {
            _ = tokio::time::sleep(MEASURE_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}

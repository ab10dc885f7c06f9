//! The store's metrics, recorded through the `metrics` facade once per
//! applied batch: its revision, compacted revision and keys, under
//! dengine's names and etcd's (`etcd_debugging_mvcc_*`, which etcd's
//! dashboards read).

use metrics::{describe_gauge, gauge};

use crate::store::KvStateMachine;

/// Gives the store's metrics their help text.
pub fn describe() {
    describe_gauge!("dengine_mvcc_revision", "The store's current revision.");
    describe_gauge!(
        "etcd_debugging_mvcc_current_revision",
        "etcd's name of dengine_mvcc_revision."
    );
    describe_gauge!(
        "dengine_mvcc_compact_revision",
        "The revision of the store's last compaction."
    );
    describe_gauge!(
        "etcd_debugging_mvcc_compact_revision",
        "etcd's name of dengine_mvcc_compact_revision."
    );
    describe_gauge!(
        "dengine_mvcc_keys",
        "Keys in the store's index (with history kept)."
    );
    describe_gauge!(
        "etcd_debugging_mvcc_keys_total",
        "etcd's name of dengine_mvcc_keys."
    );
    describe_gauge!("dengine_leases", "Leases alive in the store.");
    describe_gauge!(
        "dengine_mvcc_db_size_bytes",
        "The size of the store's files, as last measured."
    );
    describe_gauge!(
        "etcd_mvcc_db_total_size_in_bytes",
        "etcd's name of dengine_mvcc_db_size_bytes."
    );
    describe_gauge!(
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "The part of the store in use: all of it (the backends expose no free space), as Maintenance.Status reports."
    );
}

/// Records the store's state after a batch.
pub(crate) fn record(kv: &KvStateMachine) {
    let revision = kv.revision as f64;
    gauge!("dengine_mvcc_revision").set(revision);
    gauge!("etcd_debugging_mvcc_current_revision").set(revision);
    let compacted = kv.compacted as f64;
    gauge!("dengine_mvcc_compact_revision").set(compacted);
    gauge!("etcd_debugging_mvcc_compact_revision").set(compacted);
    let keys = kv.index.len() as f64;
    gauge!("dengine_mvcc_keys").set(keys);
    gauge!("etcd_debugging_mvcc_keys_total").set(keys);
    gauge!("dengine_leases").set(kv.leases.by_id.len() as f64);
}

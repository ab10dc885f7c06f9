//! Opening a node's storage: the store, the first entry of a new
//! cluster, the state machine brought to the snapshot the log starts
//! after.

use std::sync::Arc;

use dengine_core::{LogIndex, LogStorage, NodeId, RawNode, StoreIdentity, bootstrap_entry};

use crate::config::{Config, StorageKind};
use crate::error::Error;
use crate::runtime::Store;
use crate::snapshot::{SnapshotData, SnapshotStore};
use crate::state_machine::StateMachine;

/// What opening a node's storage gives.
pub(super) struct Opened<SM> {
    pub(super) raw: RawNode<Store>,
    pub(super) store: Store,
    pub(super) state_machine: SM,
    pub(super) applied: LogIndex,
    pub(super) snapshots: SnapshotStore,
    /// The snapshot the log starts after, if any.
    pub(super) known_snapshot: Option<SnapshotData>,
}

/// What a node of a new cluster writes as its first entry.
pub(super) struct Bootstrap {
    pub(super) voters: Vec<NodeId>,
    pub(super) context: Vec<u8>,
}

/// The blocking part of starting a node: opens the store (checking it
/// belongs to this cluster and node), writes the first entry of a new
/// cluster, and brings the state machine to the snapshot the log starts
/// after.
pub(super) fn open_and_restore<SM: StateMachine>(
    config: &Config,
    store: Option<Store>,
    bootstrap: Bootstrap,
    mut state_machine: SM,
) -> Result<Opened<SM>, Error> {
    let initial_members = bootstrap.voters;
    let id = NodeId(config.node_id);
    let store = match store {
        Some(s) => s,
        None => open_store(config)?,
    };
    let identity = StoreIdentity {
        cluster_id: config.cluster_id,
        node_id: id,
    };
    match store.identity()? {
        Some(found) if found != identity => {
            return Err(Error::Config(format!(
                "data in {} belongs to cluster {} node {}, not cluster {} node {}",
                config.data_dir.display(),
                found.cluster_id,
                found.node_id,
                config.cluster_id,
                config.node_id
            )));
        }
        Some(_) => {}
        None => store.set_identity(identity)?,
    }
    let fresh = store.last_index()? == LogIndex::ZERO
        && store.initial_state()?.hard_state == Default::default();
    if fresh && !initial_members.is_empty() {
        if !initial_members.contains(&id) {
            return Err(Error::Config(format!(
                "initial_members {initial_members:?} must include this node {id}"
            )));
        }
        let hs = dengine_core::HardState {
            term: dengine_core::Term(1),
            vote: NodeId::NONE,
            commit: LogIndex(1),
        };
        let mut first = bootstrap_entry(initial_members);
        if let dengine_core::EntryPayload::ConfChange(cc) = &mut first.payload {
            cc.context = bootstrap.context;
        }
        store.write(None, &[first], Some(&hs))?;
        store.sync()?;
    }

    let snapshot_dir = config.data_dir.join("snapshots");
    let snapshots = match config.storage {
        StorageKind::Memory => SnapshotStore::memory(),
        _ => SnapshotStore::open(snapshot_dir.clone()).map_err(|e| {
            Error::Storage(format!(
                "snapshot directory {}: {e}",
                snapshot_dir.display()
            ))
        })?,
    };
    // The snapshot to start from is the one the log says it starts after:
    // a newer file was made or received but never recorded (a crash came
    // between), so nothing may rely on it.
    let meta = store.snapshot_meta()?;
    snapshots.remove_newer_than(meta.last_index).map_err(|e| {
        Error::Storage(format!(
            "removing unrecorded snapshots in {}: {e}",
            snapshot_dir.display()
        ))
    })?;
    let known = if meta.last_index == LogIndex::ZERO {
        None
    } else {
        snapshots.find(&meta).map_err(|e| {
            Error::Storage(format!(
                "reading the snapshot at {} in {}: {e}",
                meta.last_index,
                snapshot_dir.display()
            ))
        })?
    };
    // A state machine that keeps its own state may be at or past the
    // snapshot already; otherwise it starts from the snapshot.
    let kept = state_machine.applied_index();
    let mut applied = kept.unwrap_or(LogIndex::ZERO);
    if let Some(data) = &known
        && applied < data.meta().last_index
    {
        let name = data
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        crate::snapshot::restore(&mut state_machine, data)
            .map_err(|e| Error::Storage(format!("restoring snapshot {name}: {e}")))?;
        applied = data.meta().last_index;
    } else if let Some(data) = &known {
        // Not read to restore, but read whole now all the same: damage
        // is found at start, with the file named, rather than when a
        // follower needs the snapshot.
        std::io::copy(&mut data.reader(), &mut std::io::sink()).map_err(|e| {
            let name = data
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            Error::Storage(format!("checking snapshot {name}: {e}"))
        })?;
    }
    if meta.last_index > applied {
        return Err(Error::Storage(format!(
            "the log starts after a snapshot at {} that is missing from {}",
            meta.last_index,
            snapshot_dir.display()
        )));
    }
    let mut raw = RawNode::new(config.core_config(), store.clone())?;
    if kept.is_some() {
        // Its state may be durable past the commit index the log made
        // durable: the core learns that those entries are committed, and
        // asks no snapshot the state machine could not write.
        raw.state_machine_restored(applied);
    }
    Ok(Opened {
        raw,
        store,
        state_machine,
        applied,
        snapshots,
        known_snapshot: known,
    })
}

pub(super) fn open_store(config: &Config) -> Result<Store, Error> {
    match config.storage {
        StorageKind::Memory => Ok(Arc::new(dengine_core::storage::MemStorage::new())),
        #[cfg(feature = "sled")]
        StorageKind::Sled => {
            std::fs::create_dir_all(&config.data_dir).map_err(|e| {
                Error::Config(format!("data_dir {}: {e}", config.data_dir.display()))
            })?;
            // A data directory made before the write-ahead log keeps its
            // log in sled.
            let sled_log = config.data_dir.join("log");
            if sled_log.exists() {
                return Ok(Arc::new(dengine_storage_sled::SledStore::open(sled_log)?));
            }
            let s = dengine_storage_wal::WalStore::open(config.data_dir.join("wal"))?;
            Ok(Arc::new(s))
        }
        #[cfg(feature = "rocksdb")]
        StorageKind::Rocksdb => {
            std::fs::create_dir_all(&config.data_dir).map_err(|e| {
                Error::Config(format!("data_dir {}: {e}", config.data_dir.display()))
            })?;
            let s = dengine_storage_rocksdb::RocksStore::open(config.data_dir.join("log"))?;
            Ok(Arc::new(s))
        }
        #[allow(unreachable_patterns)]
        _ => Err(Error::Config(format!(
            "storage {:?} is not compiled in",
            config.storage
        ))),
    }
}

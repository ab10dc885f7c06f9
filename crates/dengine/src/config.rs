//! Node settings: typed, validated at start, loadable from TOML and
//! overridable by environment variables (`DENGINE_<FIELD>` in upper case,
//! e.g. `DENGINE_TICK_MS=50`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::Error;

/// Where a node keeps its log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// In memory: nothing survives the process (tests, examples).
    Memory,
    /// sled in `data_dir` (feature `sled`, the default).
    #[default]
    Sled,
    /// RocksDB in `data_dir` (feature `rocksdb`).
    Rocksdb,
}

/// Settings of one node. Every field has a default (see [`Config::default`]).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's id; not 0. Default 1.
    pub node_id: u64,
    /// The cluster's id: a data directory made for another cluster is
    /// refused. Default 1.
    pub cluster_id: u64,
    /// Where the log and snapshots live (for disk storage). Default `./data`.
    pub data_dir: PathBuf,
    /// Which storage backend. Default `sled`.
    pub storage: StorageKind,
    /// Length of one logical tick in milliseconds. Default 10.
    pub tick_ms: u64,
    /// Election timeout in ticks (randomized in `[n, 2n)`). Default 20.
    pub election_ticks: u32,
    /// Heartbeat interval in ticks. Default 2.
    pub heartbeat_ticks: u32,
    /// Pre-vote. Default true.
    pub pre_vote: bool,
    /// Check-quorum (and lease reads). Default true.
    pub check_quorum: bool,
    /// Allow lease reads. Default true.
    pub lease_reads: bool,
    /// Clock drift allowance for leases, in ticks. Default 4.
    pub lease_drift_ticks: u32,
    /// Largest append message in bytes. Default 1 MiB.
    pub max_msg_bytes: u64,
    /// Append messages in flight per follower. Default 8: under load,
    /// entries that wait for a free slot go out together in the next
    /// message, and fewer, larger messages cost less per entry (in memory,
    /// 8 instead of 256 gives about 40% more proposals/s at 1,024
    /// proposers). Raise it for links with a long round trip, where each
    /// follower may need more than `8 * max_msg_bytes` in flight.
    pub max_inflight_msgs: usize,
    /// Take a snapshot every this many applied entries (0: never). Default 100,000.
    pub snapshot_threshold: u64,
    /// Entries kept behind a snapshot for slow followers. Default 10,000.
    pub compaction_lag: u64,
    /// Requests waiting for the node before new ones get `Overloaded`. Default 65,536.
    pub max_pending_requests: usize,
    /// Most bytes of uncommitted proposals. Default 64 MiB.
    pub max_uncommitted_bytes: u64,
    /// How long a propose or read waits before `Timeout`, in milliseconds. Default 5,000.
    pub request_timeout_ms: u64,
    /// Most bytes of committed entries handed to the state machine in one
    /// batch. Default 4 MiB.
    pub max_apply_bytes: u64,
    /// Most bytes of entries handed to the state machine and not yet
    /// applied; past it the node waits for the state machine instead of
    /// queueing more. Default 64 MiB.
    pub max_applying_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 1,
            cluster_id: 1,
            data_dir: PathBuf::from("./data"),
            storage: StorageKind::default(),
            tick_ms: 10,
            election_ticks: 20,
            heartbeat_ticks: 2,
            pre_vote: true,
            check_quorum: true,
            lease_reads: true,
            lease_drift_ticks: 4,
            max_msg_bytes: 1 << 20,
            max_inflight_msgs: 8,
            snapshot_threshold: 100_000,
            compaction_lag: 10_000,
            max_pending_requests: 65_536,
            max_uncommitted_bytes: 64 << 20,
            request_timeout_ms: 5_000,
            max_apply_bytes: 4 << 20,
            max_applying_bytes: 64 << 20,
        }
    }
}

impl Config {
    /// Parses TOML (unknown keys are errors), then validates.
    pub fn from_toml(text: &str) -> Result<Config, Error> {
        let c: Config = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    /// Reads a TOML file, applies `DENGINE_*` environment overrides, validates.
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Config, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        let mut c: Config =
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        c.apply_env(std::env::vars())?;
        c.validate()?;
        Ok(c)
    }

    /// Applies `DENGINE_<FIELD>=value` overrides from `vars`.
    pub fn apply_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), Error> {
        for (k, v) in vars {
            let Some(field) = k.strip_prefix("DENGINE_") else {
                continue;
            };
            let bad = |what: &str| Error::Config(format!("{k}={v}: {what}"));
            let num = || v.parse::<u64>().map_err(|e| bad(&e.to_string()));
            let flag = || v.parse::<bool>().map_err(|e| bad(&e.to_string()));
            let small = || num().and_then(|n| u32::try_from(n).map_err(|_| bad("out of range")));
            match field.to_ascii_lowercase().as_str() {
                "node_id" => self.node_id = num()?,
                "cluster_id" => self.cluster_id = num()?,
                "data_dir" => self.data_dir = PathBuf::from(&v),
                "storage" => {
                    self.storage = match v.as_str() {
                        "memory" => StorageKind::Memory,
                        "sled" => StorageKind::Sled,
                        "rocksdb" => StorageKind::Rocksdb,
                        _ => return Err(bad("expected memory, sled or rocksdb")),
                    }
                }
                "tick_ms" => self.tick_ms = num()?,
                "election_ticks" => self.election_ticks = small()?,
                "heartbeat_ticks" => self.heartbeat_ticks = small()?,
                "pre_vote" => self.pre_vote = flag()?,
                "check_quorum" => self.check_quorum = flag()?,
                "lease_reads" => self.lease_reads = flag()?,
                "lease_drift_ticks" => self.lease_drift_ticks = small()?,
                "max_msg_bytes" => self.max_msg_bytes = num()?,
                "max_inflight_msgs" => self.max_inflight_msgs = num()? as usize,
                "snapshot_threshold" => self.snapshot_threshold = num()?,
                "compaction_lag" => self.compaction_lag = num()?,
                "max_pending_requests" => self.max_pending_requests = num()? as usize,
                "max_uncommitted_bytes" => self.max_uncommitted_bytes = num()?,
                "request_timeout_ms" => self.request_timeout_ms = num()?,
                "max_apply_bytes" => self.max_apply_bytes = num()?,
                "max_applying_bytes" => self.max_applying_bytes = num()?,
                _ => return Err(Error::Config(format!("unknown setting {k}"))),
            }
        }
        Ok(())
    }

    /// Checks every setting; the error names the bad one.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |s: String| Err(Error::Config(s));
        if self.node_id == 0 {
            return bad("node_id must not be 0".into());
        }
        if self.tick_ms == 0 {
            return bad("tick_ms must be at least 1".into());
        }
        if self.max_pending_requests == 0 {
            return bad("max_pending_requests must be at least 1".into());
        }
        if self.request_timeout_ms == 0 {
            return bad("request_timeout_ms must be at least 1".into());
        }
        match self.storage {
            StorageKind::Sled if !cfg!(feature = "sled") => {
                return bad("storage = \"sled\" needs the `sled` feature".into());
            }
            StorageKind::Rocksdb if !cfg!(feature = "rocksdb") => {
                return bad("storage = \"rocksdb\" needs the `rocksdb` feature".into());
            }
            _ => {}
        }
        self.core_config()
            .validate()
            .map_err(|e| Error::Config(e.to_string()))
    }

    /// The protocol core's settings derived from these.
    pub fn core_config(&self) -> dengine_core::Config {
        let mut c = dengine_core::Config::new(dengine_core::NodeId(self.node_id));
        c.election_tick = self.election_ticks;
        c.heartbeat_tick = self.heartbeat_ticks;
        c.seed = self.node_id ^ self.cluster_id.rotate_left(17) ^ 0x6a09_e667_f3bc_c908;
        c.pre_vote = self.pre_vote;
        c.check_quorum = self.check_quorum;
        c.lease_reads = self.lease_reads;
        c.lease_drift_ticks = self.lease_drift_ticks;
        c.max_msg_bytes = self.max_msg_bytes;
        c.max_inflight_msgs = self.max_inflight_msgs;
        c.snapshot_threshold = self.snapshot_threshold;
        c.compaction_lag = self.compaction_lag;
        c.max_uncommitted_bytes = self.max_uncommitted_bytes;
        c.transfer_timeout_ticks = self.election_ticks;
        c.max_apply_bytes = self.max_apply_bytes;
        c.max_applying_bytes = self.max_applying_bytes;
        c
    }

    /// The tick length.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }

    /// The request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_env_overrides() {
        let c = Config::from_toml("node_id = 3\nstorage = \"memory\"\ntick_ms = 5\n").unwrap();
        assert_eq!((c.node_id, c.tick_ms), (3, 5));
        let mut c = c;
        c.apply_env([
            ("DENGINE_TICK_MS".to_string(), "7".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ])
        .unwrap();
        assert_eq!(c.tick_ms, 7);
        c.apply_env([("DENGINE_MAX_APPLYING_BYTES".to_string(), "1024".to_string())])
            .unwrap();
        assert_eq!(c.core_config().max_applying_bytes, 1024);
    }

    #[test]
    fn bad_values_are_named() {
        let e = Config::from_toml("node_id = 0\nstorage = \"memory\"").unwrap_err();
        assert!(e.to_string().contains("node_id"), "{e}");
        let e = Config::from_toml("nod_id = 2").unwrap_err();
        assert!(e.to_string().contains("nod_id"), "{e}");
        let e = Config::from_toml("storage = \"memory\"\nheartbeat_ticks = 30").unwrap_err();
        assert!(e.to_string().contains("election_tick"), "{e}");
        let e = Config::from_toml("storage = \"memory\"\nmax_applying_bytes = 0").unwrap_err();
        assert!(e.to_string().contains("max_applying_bytes"), "{e}");
        let mut c = Config::default();
        let e = c
            .apply_env([("DENGINE_TICK_MS".to_string(), "soon".to_string())])
            .unwrap_err();
        assert!(e.to_string().contains("DENGINE_TICK_MS"), "{e}");
    }
}

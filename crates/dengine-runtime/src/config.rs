//! Node settings: typed, validated at start, loadable from TOML and
//! overridable by environment variables (`DENGINE_<FIELD>` in upper case,
//! e.g. `DENGINE_TICK_MS=50`).
//!
//! Loading goes through [figment](https://docs.rs/figment): the TOML and
//! the variables are merged and deserialized into [`Config`] once, by its
//! serde derive, so each field is declared in one place only (its name,
//! type and default); unknown keys and unknown `DENGINE_*` variables are
//! errors, and every error names the field (and the variable).

use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Environment variables starting with this override settings.
const ENV_PREFIX: &str = "DENGINE_";

/// Where a node keeps its log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// In memory: nothing survives the process (tests, examples).
    Memory,
    /// The default disk storage (feature `sled`): the log in dengine's
    /// write-ahead log under `data_dir/wal` (`dengine-storage-wal`; a data
    /// directory made before it keeps its log on sled, `data_dir/log`).
    /// A state machine's own data goes where that state machine puts it:
    /// the key-value store's in a record log of its own (`data_dir/kv`),
    /// or on sled for a store made on sled.
    #[default]
    Sled,
    /// RocksDB in `data_dir` (feature `rocksdb`).
    Rocksdb,
}

/// Settings of one node. Every field has a default (see [`Config::default`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// How long a leader holds back a message that would carry nothing
    /// but a new commit index to a follower, in microseconds: an append
    /// to that follower within this time carries the commit instead, and
    /// the message is not sent. At one request at a time, the next
    /// request's append usually comes first, which saves each follower a
    /// message and its answer per write. A follower learns the last commit
    /// of a burst this much later (and never more than a tick later). 0:
    /// sent at once. Default 1,000.
    pub commit_notice_hold_us: u64,
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
            commit_notice_hold_us: 1_000,
        }
    }
}

/// `DENGINE_<FIELD>=value` variables as a figment provider: the field is
/// the rest of the name in lower case; the value is a boolean (`true`,
/// `false`), else an integer, else a string (settings hold nothing else),
/// except for `data_dir`, which is always a path.
struct EnvOverrides(Result<Dict, String>);

impl EnvOverrides {
    fn new(vars: impl IntoIterator<Item = (String, String)>) -> EnvOverrides {
        let mut dict = Dict::new();
        for (name, value) in vars {
            let Some(field) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let field = field.to_ascii_lowercase();
            let value = if field == "data_dir" {
                Value::from(value)
            } else if let Ok(flag) = value.parse::<bool>() {
                Value::from(flag)
            } else if let Ok(n) = value.parse::<u64>() {
                Value::from(n)
            } else if let Ok(n) = value.parse::<i64>() {
                Value::from(n)
            } else {
                Value::from(value)
            };
            dict.insert(field, value);
        }
        EnvOverrides(Ok(dict))
    }

    /// The process's variables (one that is not UTF-8 is an error, not
    /// skipped).
    fn from_process() -> EnvOverrides {
        let mut vars = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str().filter(|n| n.starts_with(ENV_PREFIX)) else {
                continue;
            };
            match value.into_string() {
                Ok(value) => vars.push((name.to_owned(), value)),
                Err(_) => return EnvOverrides(Err(format!("{name} is not valid UTF-8"))),
            }
        }
        EnvOverrides::new(vars)
    }
}

impl Provider for EnvOverrides {
    fn metadata(&self) -> Metadata {
        // Errors name the variable: `for key "DENGINE_TICK_MS"`.
        Metadata::named("environment variables").interpolater(|_: &Profile, keys: &[&str]| {
            format!("{ENV_PREFIX}{}", keys.join("_").to_ascii_uppercase())
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        match &self.0 {
            Ok(dict) => Ok(Profile::Default.collect(dict.clone())),
            Err(e) => Err(figment::Error::from(e.clone())),
        }
    }
}

/// TOML text as a figment provider whose errors name a field plainly
/// (`for key "tick_ms" in node.toml (TOML file)`).
struct TomlSource {
    text: String,
    file: Option<PathBuf>,
}

impl Provider for TomlSource {
    fn metadata(&self) -> Metadata {
        let md = match &self.file {
            Some(path) => Metadata::named("(TOML file)").source(path.as_path()),
            None => Metadata::named("TOML text"),
        };
        md.interpolater(|_: &Profile, keys: &[&str]| keys.join("."))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Toml::string(&self.text).data()
    }
}

impl Config {
    /// Parses TOML (unknown keys are errors), applies the `DENGINE_*`
    /// environment overrides, then validates: the same as [`Config::load`]
    /// with the text of a file.
    pub fn from_toml(text: &str) -> Result<Config, Error> {
        let toml = TomlSource {
            text: text.to_owned(),
            file: None,
        };
        Config::from_sources(toml, EnvOverrides::from_process())
    }

    /// Reads a TOML file, then as [`Config::from_toml`]: unknown keys are
    /// errors, `DENGINE_*` environment overrides apply, and the result is
    /// validated.
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Config, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        let toml = TomlSource {
            text,
            file: Some(path.to_owned()),
        };
        Config::from_sources(toml, EnvOverrides::from_process())
    }

    /// The one way settings are read: the TOML, then the variables over
    /// it, deserialized and validated.
    fn from_sources(toml: TomlSource, env: EnvOverrides) -> Result<Config, Error> {
        let c: Config = Figment::from(toml)
            .merge(env)
            .extract()
            .map_err(|e| Error::Config(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    /// Applies `DENGINE_<FIELD>=value` overrides from `vars` (others are
    /// ignored; an unknown field or a bad value is an error naming the
    /// variable, and changes nothing). Does not validate: a node validates
    /// its settings when it starts.
    pub fn apply_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), Error> {
        *self = Figment::from(Serialized::defaults(&*self))
            .merge(EnvOverrides::new(vars))
            .extract()
            .map_err(|e| Error::Config(e.to_string()))?;
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
        c.defer_commit_notices = self.commit_notice_hold_us > 0;
        c
    }

    /// How long a leader holds back a commit notice (see
    /// [`Config::commit_notice_hold_us`]).
    pub fn commit_notice_hold(&self) -> Duration {
        Duration::from_micros(self.commit_notice_hold_us)
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

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// TOML and variables as `from_toml` and `load` read them.
    fn read(toml: &str, env: &[(&str, &str)]) -> Result<Config, Error> {
        let toml = TomlSource {
            text: toml.to_owned(),
            file: None,
        };
        Config::from_sources(toml, EnvOverrides::new(vars(env)))
    }

    #[test]
    fn toml_and_env_overrides() {
        let c = Config::from_toml("node_id = 3\nstorage = \"memory\"\ntick_ms = 5\n").unwrap();
        assert_eq!((c.node_id, c.tick_ms), (3, 5));
        let mut c = c;
        c.apply_env(vars(&[("DENGINE_TICK_MS", "7"), ("PATH", "/bin")]))
            .unwrap();
        assert_eq!(c.tick_ms, 7);
        assert_eq!(c.node_id, 3, "the rest is kept");
        c.apply_env(vars(&[("DENGINE_MAX_APPLYING_BYTES", "1024")]))
            .unwrap();
        assert_eq!(c.core_config().max_applying_bytes, 1024);

        // Variables override the TOML, field by field, with every type.
        let c = read(
            "node_id = 3\nstorage = \"sled\"\ntick_ms = 5\n",
            &[
                ("DENGINE_TICK_MS", "9"),
                ("DENGINE_STORAGE", "memory"),
                ("DENGINE_PRE_VOTE", "false"),
                ("DENGINE_DATA_DIR", "1234"),
                ("DENGINE_MAX_INFLIGHT_MSGS", "3"),
                ("DENGINE_ELECTION_TICKS", "40"),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        let want = Config {
            node_id: 3,
            tick_ms: 9,
            storage: StorageKind::Memory,
            pre_vote: false,
            data_dir: PathBuf::from("1234"),
            max_inflight_msgs: 3,
            election_ticks: 40,
            ..Config::default()
        };
        assert_eq!(c, want);
        assert_eq!(read("", &[]).unwrap(), Config::default());
    }

    #[test]
    fn from_toml_and_load_read_alike() {
        let text = "node_id = 4\nstorage = \"memory\"\nlease_reads = false\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).unwrap();
        // Both apply the process's DENGINE_* variables (if any) the same way.
        assert_eq!(
            Config::load(&path).unwrap(),
            Config::from_toml(text).unwrap()
        );
        let e = Config::load(dir.path().join("missing.toml")).unwrap_err();
        assert!(e.to_string().contains("missing.toml"), "{e}");
        std::fs::write(&path, "storage = \"memory\"\ntick_ms = -1").unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("\"tick_ms\"") && e.contains("node.toml"), "{e}");
        std::fs::write(&path, "node_id = 0\nstorage = \"memory\"").unwrap();
        let e = Config::load(&path).unwrap_err();
        assert!(e.to_string().contains("node_id"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = Config::from_toml("node_id = 0\nstorage = \"memory\"").unwrap_err();
        assert!(e.to_string().contains("node_id"), "{e}");
        let e = Config::from_toml("nod_id = 2").unwrap_err();
        assert!(e.to_string().contains("nod_id"), "{e}");
        let e = Config::from_toml("tick_ms = \"fast\"").unwrap_err();
        assert!(e.to_string().contains("tick_ms"), "{e}");
        let e = Config::from_toml("storage = \"floppy\"").unwrap_err();
        assert!(e.to_string().contains("floppy"), "{e}");
        let e = Config::from_toml("storage = \"memory\"\nheartbeat_ticks = 30").unwrap_err();
        assert!(e.to_string().contains("election_tick"), "{e}");
        let e = Config::from_toml("storage = \"memory\"\nmax_applying_bytes = 0").unwrap_err();
        assert!(e.to_string().contains("max_applying_bytes"), "{e}");
        let e = Config::from_toml("tick_ms = 5\ntick_ms = 6").unwrap_err();
        assert!(e.to_string().contains("tick_ms"), "{e}");

        // Variables: a bad value, one out of range, an unknown setting.
        for (name, value) in [
            ("DENGINE_TICK_MS", "soon"),
            ("DENGINE_ELECTION_TICKS", "5000000000"),
            ("DENGINE_NOD_ID", "2"),
            ("DENGINE_NODE_ID", "-1"),
        ] {
            let e = read("storage = \"memory\"", &[(name, value)]).unwrap_err();
            assert!(e.to_string().contains(name), "{e}");
            let mut c = Config::default();
            let e = c.apply_env(vars(&[(name, value)])).unwrap_err();
            assert!(e.to_string().contains(name), "{e}");
            assert_eq!(c, Config::default(), "a refused override changes nothing");
        }
        let e = read("storage = \"memory\"", &[("DENGINE_NODE_ID", "0")]).unwrap_err();
        assert!(e.to_string().contains("node_id"), "{e}");
    }
}

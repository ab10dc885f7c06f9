//! Who is in the cluster: member ids from names, the cluster id from the
//! token, `--initial-cluster` parsing, and the record the data directory
//! keeps so that a restart needs only `--data-dir`.
//!
//! Ids are derived as etcd derives them, from what the operator names:
//! a member's id from the cluster token and its name, the cluster's id
//! from the token and its members' ids. The same command line on every
//! node therefore gives every node the same ids, with nothing exchanged.
//! (The hash is our own, FNV-1a, so the numbers differ from etcd's.)

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use dengine_core::NodeId;
use serde::{Deserialize, Serialize};

/// A bad member list or cluster record; the text says what and where.
#[derive(Debug, thiserror::Error)]
pub enum MembersError {
    /// `--initial-cluster` (or a member's URLs) does not parse.
    #[error("{0}")]
    Invalid(String),
    /// The cluster record in the data directory cannot be read or written.
    #[error("cluster record {path}: {source}")]
    Record {
        /// The record's file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
}

/// A member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its Raft id.
    #[serde(with = "node_id")]
    pub id: NodeId,
    /// Its name (`--name`).
    pub name: String,
    /// Where its peers reach it (`--initial-advertise-peer-urls`).
    pub peer_urls: Vec<String>,
    /// Where clients reach it (`--advertise-client-urls`); empty when not
    /// known (a member learns the others' client URLs later).
    pub client_urls: Vec<String>,
}

/// Ids as plain numbers in the record (the core's types carry no serde).
mod node_id {
    use dengine_core::NodeId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(id: &NodeId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(id.0)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NodeId, D::Error> {
        u64::deserialize(d).map(NodeId)
    }
}

/// FNV-1a, 64 bits: stable across versions and platforms, unlike std's
/// hasher.
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The id of the member called `name` in the cluster made with `token`.
/// Never 0 (Raft's "nobody").
pub fn member_id(token: &str, name: &str) -> NodeId {
    NodeId(fnv1a(&[b"dengine-member", token.as_bytes(), name.as_bytes()]).max(1))
}

/// The id of the cluster made with `token` of these members. Never 0.
pub fn cluster_id(token: &str, members: impl IntoIterator<Item = NodeId>) -> u64 {
    let ids: BTreeSet<NodeId> = members.into_iter().collect();
    let mut bytes = Vec::with_capacity(ids.len() * 8);
    for id in ids {
        bytes.extend_from_slice(&id.0.to_be_bytes());
    }
    fnv1a(&[b"dengine-cluster", token.as_bytes(), &bytes]).max(1)
}

/// Checks a URL as the server takes it: `http://host:port` (or
/// `https://`, refused until TLS is served), with nothing after the port.
pub fn check_url(url: &str) -> Result<(), MembersError> {
    let bad = |why: &str| MembersError::Invalid(format!("URL {url:?}: {why}"));
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return Err(bad("expected http://host:port or https://host:port"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let Some((host, port)) = rest.rsplit_once(':') else {
        return Err(bad("no port"));
    };
    if host.is_empty() || rest.contains('/') {
        return Err(bad("expected http://host:port or https://host:port"));
    }
    port.parse::<u16>()
        .map_err(|_| bad("the port is not a number from 0 to 65535"))?;
    Ok(())
}

/// Parses `--initial-cluster`: `name=url,name=url,...` (a name may repeat
/// to give a member several URLs, as etcd allows). Returns the names in
/// order with their URLs.
pub fn parse_initial_cluster(text: &str) -> Result<BTreeMap<String, Vec<String>>, MembersError> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((name, url)) = item.split_once('=') else {
            return Err(MembersError::Invalid(format!(
                "--initial-cluster: {item:?} is not name=url"
            )));
        };
        let (name, url) = (name.trim(), url.trim());
        if name.is_empty() {
            return Err(MembersError::Invalid(format!(
                "--initial-cluster: {item:?} has no name"
            )));
        }
        check_url(url).map_err(|e| MembersError::Invalid(format!("--initial-cluster: {e}")))?;
        out.entry(name.to_string())
            .or_default()
            .push(url.to_string());
    }
    if out.is_empty() {
        return Err(MembersError::Invalid("--initial-cluster is empty".into()));
    }
    Ok(out)
}

/// What a data directory remembers about its cluster: enough to restart
/// with only `--data-dir`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// The format of this record.
    pub version: u32,
    /// The cluster's id.
    pub cluster_id: u64,
    /// This member's id.
    #[serde(with = "node_id")]
    pub member_id: NodeId,
    /// The members as of the record's writing.
    pub members: Vec<Member>,
    /// The voters this member bootstraps a new cluster with (empty when
    /// it joined an existing one). Passed on every start: the node uses
    /// them only while its log is empty, so a crash before its first write
    /// still bootstraps the same cluster.
    pub initial_voters: Vec<u64>,
}

impl ClusterRecord {
    /// The record's format version.
    pub const VERSION: u32 = 1;
    /// The record's file name in the data directory.
    pub const FILE: &'static str = "cluster.json";

    /// This member.
    pub fn me(&self) -> Option<&Member> {
        self.members.iter().find(|m| m.id == self.member_id)
    }

    /// Reads the record of `data_dir`; `None` when there is none (a new
    /// member).
    pub fn load(data_dir: &Path) -> Result<Option<ClusterRecord>, MembersError> {
        let path = data_dir.join(Self::FILE);
        let err = |source| MembersError::Record {
            path: path.clone(),
            source,
        };
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(e)),
        };
        let record: ClusterRecord = serde_json::from_slice(&text)
            .map_err(|e| err(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        if record.version != Self::VERSION {
            return Err(err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "format version {} (this program reads {})",
                    record.version,
                    Self::VERSION
                ),
            )));
        }
        if record.me().is_none() {
            return Err(err(io::Error::new(
                io::ErrorKind::InvalidData,
                "this member is not among the recorded members",
            )));
        }
        Ok(Some(record))
    }

    /// Writes the record durably: a temporary file, fsync, rename, fsync
    /// of the directory. A crash leaves the old record or the new one.
    pub fn save(&self, data_dir: &Path) -> Result<(), MembersError> {
        let path = data_dir.join(Self::FILE);
        let err = |source| MembersError::Record {
            path: path.clone(),
            source,
        };
        let tmp = data_dir.join(format!("{}.tmp", Self::FILE));
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| err(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        let write = || -> io::Result<()> {
            std::fs::create_dir_all(data_dir)?;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(data_dir)?.sync_all()
        };
        write().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_depend_on_token_and_name_only() {
        assert_eq!(member_id("t", "a"), member_id("t", "a"));
        assert_ne!(member_id("t", "a"), member_id("t", "b"));
        assert_ne!(member_id("t", "a"), member_id("u", "a"));
        // The separator keeps ("t", "ab") apart from ("ta", "b").
        assert_ne!(member_id("t", "ab"), member_id("ta", "b"));
        let ids = [member_id("t", "a"), member_id("t", "b")];
        assert_eq!(cluster_id("t", ids), cluster_id("t", ids.into_iter().rev()));
        assert_ne!(cluster_id("t", ids), cluster_id("u", ids));
        assert_ne!(cluster_id("t", ids), cluster_id("t", [ids[0]]));
    }

    #[test]
    fn initial_cluster_parses_and_refuses_with_a_reason() {
        let m = parse_initial_cluster("a=http://127.0.0.1:2380, b=http://h:1,a=http://x:2")
            .expect("parses");
        assert_eq!(m.len(), 2);
        assert_eq!(m["a"], ["http://127.0.0.1:2380", "http://x:2"]);
        for (bad, why) in [
            ("", "empty"),
            ("a", "not name=url"),
            ("=http://h:1", "no name"),
            ("a=h:1", "expected http://host:port"),
            ("a=http://h", "no port"),
            ("a=http://h:99999", "port"),
            ("a=http://h:1/x", "expected http://host:port"),
            ("a=ftp://h:1", "or https://host:port"),
        ] {
            let e = parse_initial_cluster(bad).expect_err(bad).to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_record_survives_a_round_trip_and_refuses_other_versions() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(ClusterRecord::load(dir.path()).expect("none"), None);
        let me = Member {
            id: member_id("t", "a"),
            name: "a".into(),
            peer_urls: vec!["http://127.0.0.1:2380".into()],
            client_urls: vec!["http://127.0.0.1:2379".into()],
        };
        let record = ClusterRecord {
            version: ClusterRecord::VERSION,
            cluster_id: cluster_id("t", [me.id]),
            member_id: me.id,
            initial_voters: vec![me.id.0],
            members: vec![me],
        };
        record.save(dir.path()).expect("save");
        assert_eq!(
            ClusterRecord::load(dir.path()).expect("load"),
            Some(record.clone())
        );
        let mut newer = record;
        newer.version = 99;
        newer.save(dir.path()).expect("save");
        let e = ClusterRecord::load(dir.path()).expect_err("version 99");
        assert!(e.to_string().contains("format version 99"), "{e}");
        std::fs::write(dir.path().join(ClusterRecord::FILE), b"{garbage").expect("write");
        assert!(ClusterRecord::load(dir.path()).is_err());
    }
}

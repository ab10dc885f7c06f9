//! Shared by the integration tests: fast settings and a small state
//! machine. (Each test binary uses part of it.)
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::PathBuf;

use dengine::{Config, Node, NodeBuilder, NodeId, StateMachine, StorageKind};

/// Starts `builder` as the only member of a new cluster (node 1) and
/// waits until it leads.
pub async fn lone_leader<SM: StateMachine>(builder: NodeBuilder<SM>) -> Node<SM> {
    let node = builder
        .initial_members([NodeId(1)])
        .build()
        .await
        .expect("start");
    node.wait_for(std::time::Duration::from_secs(20), |m| m.leader.is_some())
        .await
        .expect("leader");
    node
}

/// The id of the node among `nodes` that leads, waiting up to `wait` for
/// one.
pub async fn leader<SM: StateMachine>(
    nodes: &BTreeMap<u64, Node<SM>>,
    wait: std::time::Duration,
) -> u64 {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some((id, _)) = nodes
            .iter()
            .find(|(_, n)| n.status().role == dengine::core::Role::Leader)
        {
            return *id;
        }
        assert!(tokio::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Settings for node `id` with 5 ms ticks, so a cluster elects a leader in
/// tens of milliseconds.
pub fn fast(id: u64, storage: StorageKind, data_dir: PathBuf) -> Config {
    Config {
        node_id: id,
        storage,
        data_dir,
        tick_ms: 5,
        election_ticks: 10,
        heartbeat_ticks: 1,
        lease_drift_ticks: 2,
        ..Config::default()
    }
}

/// A set of strings: each command adds itself; a snapshot is one line per
/// string.
#[derive(Default)]
pub struct Strings(pub BTreeSet<String>);

impl StateMachine for Strings {
    type Response = ();
    fn apply(&mut self, _: dengine::EntryId, command: &[u8]) {
        self.0.insert(String::from_utf8_lossy(command).into_owned());
    }
    fn snapshot(&mut self, out: &mut dyn Write) -> std::io::Result<()> {
        for k in &self.0 {
            writeln!(out, "{k}")?;
        }
        Ok(())
    }
    fn restore(&mut self, input: &mut dyn Read) -> std::io::Result<()> {
        let mut s = String::new();
        input.read_to_string(&mut s)?;
        self.0 = s.lines().map(str::to_string).collect();
        Ok(())
    }
}

/// Writes the one number a small state machine holds as its snapshot.
pub fn save_u64(out: &mut dyn Write, value: u64) -> std::io::Result<()> {
    out.write_all(&value.to_le_bytes())
}

/// Reads back what [`save_u64`] wrote.
pub fn load_u64(input: &mut dyn Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    input.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

//! Config files under fuzzing (see `dengine_core::testing::fuzz`): an
//! operator's file, damaged, must be refused with a message naming what
//! is wrong, never panic `dengine serve`.

use dengine_core::testing::fuzz::Corpus;

use super::{ServeArgs, config};

const FULL: &str = r#"name = "m1"
data_dir = "/var/lib/dengine"
listen_client_urls = ["http://127.0.0.1:2379"]
advertise_client_urls = ["http://10.0.0.1:2379"]
listen_peer_urls = ["http://127.0.0.1:2380"]
initial_advertise_peer_urls = ["http://10.0.0.1:2380"]
initial_cluster = "m1=http://10.0.0.1:2380,m2=http://10.0.0.2:2380"
initial_cluster_state = "new"
initial_cluster_token = "token"
heartbeat_interval = 100
election_timeout = 1000
snapshot_count = 10000
max_request_bytes = 1572864
max_txn_ops = 128
storage = "sled"
auto_compaction_mode = "periodic"
auto_compaction_retention = "1h"
quota_backend_bytes = 2147483648
log_format = "json"
log_level = "info"

[node]
request_timeout_ms = 2000
max_inflight_msgs = 64
"#;

const SMALL: &str =
    "name = \"x\"\nheartbeat_interval = 50\nelection_timeout = 500\n[node]\ntick_ms = 10\n";

#[test]
fn damaged_config_files_are_refused_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dengine.toml");
    let seeds = vec![FULL.as_bytes().to_vec(), SMALL.as_bytes().to_vec()];
    let corpus = Corpus::load("config-file", seeds);
    // The valid files are accepted: a check that the fuzzing below starts
    // from files that get past the parser.
    for seed in [FULL, SMALL] {
        std::fs::write(&path, seed).expect("write");
        let args = ServeArgs {
            config_file: Some(path.clone()),
            ..ServeArgs::default()
        };
        if let Err(e) = config(args) {
            panic!("a valid config file was refused: {e}\n{seed}");
        }
    }
    corpus.run(|bytes| {
        std::fs::write(&path, bytes).expect("write");
        let args = ServeArgs {
            config_file: Some(path.clone()),
            ..ServeArgs::default()
        };
        if let Err(e) = config(args) {
            assert!(!e.is_empty(), "a refusal without a reason");
        }
    });
}

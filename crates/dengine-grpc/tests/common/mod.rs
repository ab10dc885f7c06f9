//! What the in-process cluster tests share: free ports, a member's
//! settings, and a KV client of a member.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use dengine_grpc::proto::etcdserverpb::kv_client::KvClient;
use dengine_grpc::server::ServerConfig;
use dengine_runtime::{Config, StorageKind};

/// A port nobody listens on right now, for a member to bind a moment
/// later. Not one the kernel picks (`127.0.0.1:0`): those come from the
/// ephemeral range, where another test's outgoing connection may take it
/// before the member binds it (seen in CI: `AddrInUse` on a member's
/// start). As the serve tests' harness does: a block of 150 ports below
/// the ephemeral range per process (by pid), each checked free before it
/// is handed out.
pub fn port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const BLOCK: u32 = 150;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 10_000 + (std::process::id() % 150) * BLOCK;
    for _ in 0..4 * BLOCK {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % BLOCK;
        let port = u16::try_from(base + n).expect("ports below 32768");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {base}..{}", base + BLOCK);
}

/// Member `i` of a cluster whose members listen on `ports` (client,
/// peer), on sled under `dir`, with fast ticks (10 ms, elections after
/// 200 ms).
pub fn member_config(
    i: usize,
    ports: &[(u16, u16)],
    dir: &std::path::Path,
    token: &str,
) -> ServerConfig {
    let url = |p: u16| format!("http://127.0.0.1:{p}");
    let initial = ports
        .iter()
        .enumerate()
        .map(|(j, (_, peer))| format!("m{j}={}", url(*peer)))
        .collect::<Vec<_>>()
        .join(",");
    let (client, peer) = ports[i];
    ServerConfig {
        name: format!("m{i}"),
        listen_client_urls: vec![url(client)],
        advertise_client_urls: vec![url(client)],
        listen_peer_urls: vec![url(peer)],
        initial_advertise_peer_urls: vec![url(peer)],
        initial_cluster: initial,
        initial_cluster_token: token.into(),
        node: Config {
            storage: StorageKind::Sled,
            data_dir: dir.join(format!("m{i}")),
            tick_ms: 10,
            election_ticks: 20,
            heartbeat_ticks: 2,
            ..Config::default()
        },
        ..ServerConfig::default()
    }
}

/// A KV client of the member whose client port is `port`, once it takes
/// connections (within 10 s).
pub async fn kv(port: u16) -> KvClient<tonic::transport::Channel> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("url");
        match endpoint.connect().await {
            Ok(c) => return KvClient::new(c),
            Err(e) if Instant::now() > deadline => panic!("connect: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

//! The client against a running cluster (for example the 3 members of
//! `dengine cluster up`, or etcd's):
//!
//! ```sh
//! dengine cluster up --dir demo
//! DENGINE_ENDPOINTS=$(dengine cluster endpoints --dir demo) \
//!     cargo run -p dengine-client --example three_members
//! ```
//!
//! It writes and reads keys, runs a compare-and-swap, keeps a lease alive,
//! watches a prefix while writing to it, and prints the members' status.

use std::time::Duration;

use dengine_client::{
    Client, CompareOp, Comparison, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};

#[tokio::main]
async fn main() -> Result<(), dengine_client::Error> {
    let endpoints: Vec<String> = std::env::var("DENGINE_ENDPOINTS")
        .unwrap_or_else(|_| "127.0.0.1:2379".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let client = Client::connect(&endpoints).await?;
    println!(
        "endpoints: {:?}; leader: {:x?}",
        client.endpoints(),
        client.leader()
    );

    client.put("demo/a", "1", None).await?;
    let swapped = client
        .txn(
            Txn::new()
                .when([Comparison::value("demo/a", CompareOp::Equal, "1")])
                .and_then([TxnOp::put("demo/a", "2", None)])
                .or_else([TxnOp::get("demo/a", None)]),
        )
        .await?
        .succeeded;
    println!("compare-and-swap of demo/a: {swapped}");

    let lease = client.lease_grant(5, None).await?.id;
    let alive = client.lease_keep_alive(lease).await?;
    client
        .put(
            "demo/session",
            "me",
            Some(PutOptions::new().with_lease(lease)),
        )
        .await?;
    println!("lease {lease:x} kept alive, TTL {:?}", alive.ttl());

    let mut watch = client
        .watch("demo/", Some(WatchOptions::new().with_prefix()))
        .await?;
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            for i in 0..3 {
                let _ = client.put(format!("demo/w{i}"), format!("{i}"), None).await;
            }
        })
    };
    let mut events = 0;
    while events < 3 {
        let Ok(Some(response)) =
            tokio::time::timeout(Duration::from_secs(5), watch.message()).await
        else {
            break;
        };
        for e in response?.events {
            events += 1;
            if let Some(kv) = e.kv {
                println!(
                    "watched: {} = {} at revision {}",
                    String::from_utf8_lossy(&kv.key),
                    String::from_utf8_lossy(&kv.value),
                    kv.mod_revision
                );
            }
        }
    }
    let _ = writer.await;

    let all = client
        .get("demo/", Some(GetOptions::new().with_prefix()))
        .await?;
    println!("{} keys under demo/", all.count);
    for m in client.statuses().await {
        match m.status {
            Ok(s) => println!(
                "{}: leader {:x}, raft index {}",
                m.endpoint, s.leader, s.raft_index
            ),
            Err(e) => println!("{}: {e}", m.endpoint),
        }
    }
    drop(alive);
    client.lease_revoke(lease).await?;
    Ok(())
}

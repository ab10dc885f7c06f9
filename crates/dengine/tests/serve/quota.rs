//! The space quota: writes that grow a store past `--quota-backend-bytes`
//! raise the replicated NOSPACE alarm and fail with etcd's error, while
//! reads and deletes go on; the alarm survives restarts and is disarmed
//! with `etcdctl alarm disarm` once there is room (here: a larger quota).

use std::time::Duration;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use crate::etcdctl::ok;
use crate::harness::{Cluster, client, status_of, wait_leader};

const QUOTA: &str = "3000000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_quota_writes_fail_and_the_alarm_is_disarmed() {
    let mut c = Cluster::new(3);
    c.extra
        .extend(["--quota-backend-bytes".into(), QUOTA.into()]);
    c.start_and_wait().await;
    let mut cl = client(&c, 0).await;
    let big = vec![b'x'; 100_000];
    let mut refused = None;
    for i in 0..200 {
        match cl.put(format!("big{i:03}"), big.clone(), None).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => {
                refused = Some(status_of(e));
                break;
            }
        }
    }
    let (code, message) = refused.expect("the quota is reached within 20 MB");
    assert_eq!(code, tonic::Code::ResourceExhausted);
    assert_eq!(message, "etcdserver: mvcc: database space exceeded");

    let all = (0..3)
        .map(|i| c.members[i].endpoint())
        .collect::<Vec<_>>()
        .join(",");
    let alarms = ok(&all, &["alarm", "list"]);
    assert!(alarms.contains("alarm:NOSPACE"), "{alarms}");
    // Every member refuses what grows the store (the alarm is
    // replicated), and serves reads and deletes.
    for i in 0..3 {
        let mut m = client(&c, i).await;
        let e = m.put("small", "x", None).await.expect_err("no space");
        assert_eq!(status_of(e).1, "etcdserver: mvcc: database space exceeded");
        let e = m.lease_grant(60, None).await.expect_err("no space");
        assert_eq!(status_of(e).0, tonic::Code::ResourceExhausted);
        assert_eq!(m.get("big000", None).await.expect("get").kvs().len(), 1);
    }
    let txn = Txn::new()
        .when([Compare::version("big000", CompareOp::Greater, 0)])
        .and_then([TxnOp::delete("big000", None)])
        .or_else([TxnOp::put("other", "x", None)]);
    let e = cl.txn(txn).await.expect_err("a put in either branch grows");
    assert_eq!(status_of(e).0, tonic::Code::ResourceExhausted);
    let deleted = cl.delete("big001", None).await.expect("delete");
    assert_eq!(deleted.deleted(), 1);

    // The alarm survives a restart of every member.
    let larger = (1u64 << 30).to_string();
    let at = c.extra.len() - 1;
    c.extra[at] = larger;
    for i in 0..3 {
        c.kill(i);
        c.start(i);
    }
    for i in 0..3 {
        wait_leader(&c, i, Duration::from_secs(10)).await;
    }
    let alarms = ok(&all, &["alarm", "list"]);
    assert!(alarms.contains("alarm:NOSPACE"), "{alarms}");
    let mut cl = client(&c, 1).await;
    let e = cl.put("small", "x", None).await.expect_err("still raised");
    assert_eq!(status_of(e).0, tonic::Code::ResourceExhausted);
    let disarmed = ok(&all, &["alarm", "disarm"]);
    assert!(disarmed.contains("alarm:NOSPACE"), "{disarmed}");
    assert_eq!(ok(&all, &["alarm", "list"]), "");
    cl.put("small", "x", None).await.expect("room again");
}

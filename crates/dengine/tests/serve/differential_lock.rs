//! etcd as the oracle for the Lock and Election services (etcd's mutex
//! and election recipes, run by the server): one seeded sequence of lease
//! grants and revocations, locks and unlocks, campaigns, proclamations,
//! leader queries and resignations, sent to a fresh etcd member and a
//! fresh dengine member; every answer must be the same.
//!
//! A lock or campaign that would wait for another holder is not sent
//! (the answer would be a wait, not a difference): before each, etcd is
//! asked which keys hold the name.

use dengine_proto::etcdserverpb as pb;
use dengine_proto::v3electionpb as epb;
use dengine_proto::v3lockpb as lpb;
use epb::election_client::ElectionClient;
use lpb::lock_client::LockClient;
use pb::kv_client::KvClient;
use pb::lease_client::LeaseClient;
use tonic::transport::Channel;

use crate::differential::{Answer, Differences, Rng, answer, connect, headed, header, seeds};
use crate::harness::Cluster;

const LOCKS: &[&str] = &["lk1", "lk2"];
const ELECTIONS: &[&str] = &["el1", "el2"];
/// Lease ids granted and used (and 9, never granted).
const LEASES: &[i64] = &[1, 2, 3, 9];

#[derive(Debug)]
enum Call {
    Grant(i64),
    Revoke(i64),
    Lock(lpb::LockRequest),
    Unlock(lpb::UnlockRequest),
    Campaign(epb::CampaignRequest),
    Proclaim(epb::ProclaimRequest),
    Leader(epb::LeaderRequest),
    Resign(epb::ResignRequest),
}

struct Side {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    lock: LockClient<Channel>,
    election: ElectionClient<Channel>,
}

impl Side {
    async fn connect(endpoint: String) -> Side {
        let c = connect(endpoint).await;
        Side {
            kv: KvClient::new(c.clone()),
            lease: LeaseClient::new(c.clone()),
            lock: LockClient::new(c.clone()),
            election: ElectionClient::new(c),
        }
    }

    /// Whether a lock or campaign on `name` by `lease` would get it at
    /// once: no key holds the name, or only the lease's own.
    async fn free_for(&mut self, name: &str, lease: i64) -> bool {
        let r = self
            .kv
            .range(pb::RangeRequest {
                key: format!("{name}/").into_bytes(),
                range_end: format!("{name}0").into_bytes(),
                ..Default::default()
            })
            .await
            .expect("range")
            .into_inner();
        let own = format!("{name}/{lease:x}").into_bytes();
        r.kvs.iter().all(|kv| kv.key == own)
    }

    /// The answer, and the leader key of a campaign that was answered.
    async fn send(&mut self, call: &Call) -> (Answer, Option<epb::LeaderKey>) {
        let mut leader = None;
        let a = match call {
            Call::Grant(id) => headed(
                self.lease
                    .lease_grant(pb::LeaseGrantRequest { ttl: 600, id: *id })
                    .await,
                |r| &mut r.header,
            ),
            Call::Revoke(id) => headed(
                self.lease
                    .lease_revoke(pb::LeaseRevokeRequest { id: *id })
                    .await,
                |r| &mut r.header,
            ),
            Call::Lock(r) => headed(self.lock.lock(r.clone()).await, |r| &mut r.header),
            Call::Unlock(r) => headed(self.lock.unlock(r.clone()).await, |r| &mut r.header),
            Call::Campaign(r) => answer(self.election.campaign(r.clone()).await, |mut r| {
                header(&mut r.header);
                leader.clone_from(&r.leader);
                format!("{r:?}")
            }),
            Call::Proclaim(r) => headed(self.election.proclaim(r.clone()).await, |r| &mut r.header),
            Call::Leader(r) => headed(self.election.leader(r.clone()).await, |r| &mut r.header),
            Call::Resign(r) => headed(self.election.resign(r.clone()).await, |r| &mut r.header),
        };
        (a, leader)
    }
}

/// Two seeds (see [`seeds`](crate::differential::seeds)).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_and_elections_get_the_answers_etcd_gives() {
    for seed in seeds(2) {
        same_answers(seed).await;
    }
}

async fn same_answers(seed: u64) {
    let mut etcd = Cluster::etcd(1);
    etcd.start_and_wait().await;
    let mut ours = Cluster::new(1);
    ours.start_and_wait().await;
    let mut e = Side::connect(etcd.members[0].endpoint()).await;
    let mut d = Side::connect(ours.members[0].endpoint()).await;
    let mut rng = Rng::new(seed + 7_000);
    // Leader keys etcd gave, and lock keys, to use again (or forge).
    let mut leaders: Vec<epb::LeaderKey> = Vec::new();
    let mut differ = Differences::default();
    for i in 0..200 {
        let lease = *rng.pick(LEASES);
        let call = match rng.below(100) {
            0..=14 => Call::Grant(*rng.pick(&LEASES[..3])),
            15..=19 => Call::Revoke(lease),
            20..=39 => {
                let name = *rng.pick(LOCKS);
                if !e.free_for(name, lease).await {
                    continue;
                }
                Call::Lock(lpb::LockRequest {
                    name: name.into(),
                    lease,
                })
            }
            40..=49 => Call::Unlock(lpb::UnlockRequest {
                key: format!("{}/{:x}", rng.pick(LOCKS), lease).into_bytes(),
            }),
            50..=64 => {
                let name = *rng.pick(ELECTIONS);
                if !e.free_for(name, lease).await {
                    continue;
                }
                Call::Campaign(epb::CampaignRequest {
                    name: name.into(),
                    lease,
                    value: format!("v{i}").into_bytes(),
                })
            }
            65..=74 => Call::Leader(epb::LeaderRequest {
                name: rng.pick(ELECTIONS).as_bytes().to_vec(),
            }),
            _ => {
                // A leader key etcd gave, maybe stale, or one made up.
                let mut key = match leaders.len() {
                    0 => epb::LeaderKey::default(),
                    n => leaders[rng.below(n as u64) as usize].clone(),
                };
                if rng.chance(20) {
                    key.rev += 1;
                }
                if rng.chance(50) {
                    Call::Proclaim(epb::ProclaimRequest {
                        leader: Some(key),
                        value: format!("p{i}").into_bytes(),
                    })
                } else {
                    Call::Resign(epb::ResignRequest { leader: Some(key) })
                }
            }
        };
        let (from_etcd, leader) = e.send(&call).await;
        let (from_ours, _) = d.send(&call).await;
        leaders.extend(leader);
        let request = || format!("seed {seed}, call {i}: {call:?}");
        if !differ.compare(request, &from_etcd, &from_ours) {
            break;
        }
    }
    differ.assert_none();
}

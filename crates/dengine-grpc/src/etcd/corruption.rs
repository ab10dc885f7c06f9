//! etcd's initial corruption check
//! (`--experimental-initial-corrupt-check`): before a member that restarts
//! serves clients, it hashes its key-value history (etcd's `HashKV`) and
//! asks every peer for the hash of theirs at the same revision.
//!
//! Members that applied the same log hold the same history, so a
//! difference means a store holds what the log never said. Damage that
//! breaks a record's checksum is found earlier, when the store is opened
//! (every record is read then, and the first bad one is named by its
//! revision); this check finds the rest: a record rewritten whole, a
//! backend that returned other bytes than it was given, a bug.
//!
//! Which side is wrong is judged by the answers: when no peer agrees with
//! this member and at least one differs, this member refuses to start (its
//! store is the suspect; `dengine member repair` replaces it). When some
//! agree and some differ, the differing peers are the suspects: this member
//! starts and names them in its log. etcd refuses on any difference; a
//! healthy member that restarts next to a damaged one would then stay down
//! too, which helps nobody.
//!
//! Only hashes at the same revision and the same compacted revision are
//! compared (a store compacted elsewhere keeps other records). A peer that
//! does not answer, has not reached the revision yet, or compacted past it
//! is skipped, and logged: after the request timeout, or half a second
//! after another peer agreed (the member starts then, whatever the rest
//! say). The check never keeps a member from starting because a peer is
//! down.

use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use dengine_core::NodeId;
use dengine_kv::HistoryHash;
use dengine_proto::peer as wire;
use dengine_proto::peer::peer_client::PeerClient;
use tonic::{Code, Status};

use super::{EtcdCore, errors};
use crate::peer::{GrpcTransport, HashTarget, PeerIdentity, with_identity};

/// Answers peers' `HashKv` calls from this member's store.
pub struct Hashes(std::sync::Arc<EtcdCore>);

impl Hashes {
    /// Hashes for peers from `core`'s store.
    pub fn new(core: std::sync::Arc<EtcdCore>) -> Self {
        Hashes(core)
    }
}

impl HashTarget for Hashes {
    fn hash_kv(
        &self,
        revision: i64,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<wire::HashKvResponse, Status>> + Send + '_>>
    {
        Box::pin(async move {
            if revision < 1 {
                return Err(Status::invalid_argument(
                    "HashKv needs a revision of at least 1",
                ));
            }
            let h = self
                .0
                .read(true, move |kv| kv.hash_kv(revision))
                .await?
                .map_err(|e| errors::from_kv(&e))?;
            Ok(wire::HashKvResponse {
                hash: h.hash,
                revision: h.revision,
                compact_revision: h.compact_revision,
            })
        })
    }
}

/// What asking one peer gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerHash {
    /// Its hash.
    Hash(wire::HashKvResponse),
    /// Nothing to compare with, and why.
    Skipped(String),
}

/// What the check concludes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No peer differs: start.
    Consistent {
        /// Peers whose hash is this member's.
        agreed: usize,
        /// Peers not compared.
        skipped: usize,
    },
    /// Some peers agree with this member and these differ: they are the
    /// suspects; start, and name them.
    PeersDiffer(Vec<(NodeId, wire::HashKvResponse)>),
    /// Peers differ and none agrees: this member's store is the suspect;
    /// refuse to start.
    Inconsistent(Vec<(NodeId, wire::HashKvResponse)>),
}

/// Judges this member's hash against its peers' answers (see the module
/// docs).
pub fn judge(local: HistoryHash, answers: &[(NodeId, PeerHash)]) -> Verdict {
    let mut agreed = 0;
    let mut skipped = 0;
    let mut differ = Vec::new();
    for (id, answer) in answers {
        match answer {
            PeerHash::Hash(h)
                if h.revision == local.revision && h.compact_revision == local.compact_revision =>
            {
                if h.hash == local.hash {
                    agreed += 1;
                } else {
                    differ.push((*id, *h));
                }
            }
            _ => skipped += 1,
        }
    }
    match (differ.is_empty(), agreed) {
        (true, _) => Verdict::Consistent { agreed, skipped },
        (false, 0) => Verdict::Inconsistent(differ),
        (false, _) => Verdict::PeersDiffer(differ),
    }
}

/// Asks `peer` for its hash at `revision` until it answers, or `within`
/// has passed (a peer that starts too, or has not applied as far yet).
async fn ask(
    transport: &GrpcTransport,
    identity: &PeerIdentity,
    peer: NodeId,
    revision: i64,
    within: Duration,
) -> PeerHash {
    let deadline = tokio::time::Instant::now() + within;
    let mut last = String::from("no peer URL is known");
    loop {
        if let Some(channel) = transport.channel(peer) {
            let mut req = with_identity(identity, peer, wire::HashKvRequest { revision });
            req.set_timeout(Duration::from_secs(2).min(within));
            match PeerClient::new(channel).hash_kv(req).await {
                Ok(r) => return PeerHash::Hash(r.into_inner()),
                Err(s) if is_compacted(&s) => {
                    return PeerHash::Skipped(format!("it compacted past revision {revision}"));
                }
                Err(s) if s.code() == Code::Unimplemented => {
                    return PeerHash::Skipped("it does not serve HashKv".into());
                }
                Err(s) => last = format!("{:?}: {}", s.code(), s.message()),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return PeerHash::Skipped(last);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long the other peers are waited for once one agrees: whatever they
/// answer then, this member starts (see [`judge`]), so a peer that is down
/// delays the start no longer than this.
const AFTER_AGREEMENT: Duration = Duration::from_millis(500);

/// The answers of `asks`: all of them, or those in by [`AFTER_AGREEMENT`]
/// after the first that agrees with `local` (the others skipped).
async fn gather<F>(asks: Vec<F>, peers: &[NodeId], local: HistoryHash) -> Vec<(NodeId, PeerHash)>
where
    F: std::future::Future<Output = (NodeId, PeerHash)>,
{
    use futures_util::StreamExt;
    let mut pending: futures_util::stream::FuturesUnordered<F> = asks.into_iter().collect();
    let mut answers = Vec::with_capacity(peers.len());
    let mut cutoff: Option<tokio::time::Instant> = None;
    loop {
        let next = match cutoff {
            Some(at) => match tokio::time::timeout_at(at, pending.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => pending.next().await,
        };
        let Some((peer, answer)) = next else {
            return answers;
        };
        let agrees = matches!(&answer, PeerHash::Hash(h) if h.hash == local.hash
            && h.revision == local.revision && h.compact_revision == local.compact_revision);
        if agrees && cutoff.is_none() {
            cutoff = Some(tokio::time::Instant::now() + AFTER_AGREEMENT);
        }
        answers.push((peer, answer));
    }
    // The peers still asked (down, or slow) are skipped.
    let missing: Vec<NodeId> = peers
        .iter()
        .filter(|p| !answers.iter().any(|(a, _)| a == *p))
        .copied()
        .collect();
    answers.extend(missing.into_iter().map(|p| {
        (
            p,
            PeerHash::Skipped("no answer before another peer agreed".into()),
        )
    }));
    answers
}

fn is_compacted(s: &Status) -> bool {
    s.code() == Code::OutOfRange && s.message() == errors::compacted().message()
}

/// Where the check runs: this member, its store and its peers.
pub struct InitialCheck<'a> {
    /// This member's key-value service.
    pub core: &'a EtcdCore,
    /// The links to the peers.
    pub transport: &'a GrpcTransport,
    /// Who this member is.
    pub identity: &'a PeerIdentity,
    /// The other members.
    pub peers: Vec<NodeId>,
    /// This member's data directory (named in the refusal).
    pub data_dir: &'a Path,
    /// How this member is started (named in the refusal).
    pub name: &'a str,
    /// How long to wait for a peer.
    pub within: Duration,
}

impl InitialCheck<'_> {
    /// Runs the check: `Err` with the reason when this member must not
    /// start.
    pub async fn run(self) -> Result<(), String> {
        let local = self
            .core
            .read(true, |kv| kv.hash_kv(0))
            .await
            .map_err(|s| format!("hashing the store: {}", s.message()))?
            .map_err(|e| format!("hashing the store: {e}"))?;
        if local.revision <= 1 || self.peers.is_empty() {
            // Nothing written yet (a new member), or nobody to ask.
            return Ok(());
        }
        let asks = self.peers.iter().map(|&p| async move {
            let answer = ask(
                self.transport,
                self.identity,
                p,
                local.revision,
                self.within,
            )
            .await;
            (p, answer)
        });
        let answers = gather(asks.collect(), &self.peers, local).await;
        for (peer, answer) in &answers {
            if let PeerHash::Skipped(why) = answer {
                tracing::warn!(peer = %format!("{:x}", peer.0), revision = local.revision, why,
                    "initial corruption check: peer not compared");
            }
        }
        match judge(local, &answers) {
            Verdict::Consistent { agreed, skipped } => {
                tracing::info!(
                    revision = local.revision,
                    hash = %format!("{:08x}", local.hash),
                    agreed,
                    skipped,
                    "initial corruption check passed"
                );
                Ok(())
            }
            Verdict::PeersDiffer(differ) => {
                for (peer, h) in differ {
                    tracing::error!(peer = %format!("{:x}", peer.0), revision = local.revision,
                        local_hash = %format!("{:08x}", local.hash),
                        peer_hash = %format!("{:08x}", h.hash),
                        "found data inconsistency with peers: this peer's store differs from \
                         this member's and from others that agree with it; repair that peer \
                         (dengine member repair)");
                }
                Ok(())
            }
            Verdict::Inconsistent(differ) => {
                let peers: Vec<String> = differ
                    .iter()
                    .map(|(p, h)| format!("member {:x} holds {:08x}", p.0, h.hash))
                    .collect();
                Err(format!(
                    "found data inconsistency with peers: the key-value store in {} hashes to \
                     {:08x} at revision {} (compacted at {}), and {} at that revision. This \
                     member's store holds what the log never said. Run `dengine member repair \
                     {} --data-dir {}` to replace it from the cluster, or start it with \
                     --experimental-initial-corrupt-check=false to serve it as it is",
                    self.data_dir.join("kv").display(),
                    local.hash,
                    local.revision,
                    local.compact_revision,
                    peers.join(", "),
                    self.name,
                    self.data_dir.display(),
                ))
            }
        }
    }
}

/// etcd's periodic corruption check (`--experimental-corrupt-check-time`):
/// every `every`, the member that leads hashes its history at its current
/// revision and asks its peers for theirs. A peer that differs while
/// another agrees with the leader gets a `CORRUPT` alarm; when peers differ
/// and none agrees, the leader raises it for itself. The alarm is
/// replicated, and while it is raised every member refuses writes with
/// etcd's "etcdserver: corrupt cluster" (reads go on), until an operator
/// repairs the member and disarms it (`etcdctl alarm disarm`). Until
/// `stop`.
pub async fn run_periodic(
    core: std::sync::Arc<EtcdCore>,
    transport: GrpcTransport,
    identity: PeerIdentity,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let me = core.member_id;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        if core.leader_now() != Some(me) {
            continue;
        }
        let looked = core
            .read(true, move |kv| {
                let peers: Vec<NodeId> = kv
                    .members()
                    .members
                    .keys()
                    .map(|&id| NodeId(id))
                    .filter(|&id| id != me)
                    .collect();
                kv.hash_kv(0).map(|h| (h, peers, kv.alarms()))
            })
            .await;
        let Ok(Ok((local, peers, raised))) = looked else {
            continue;
        };
        let within = every.min(Duration::from_secs(5));
        let asks = peers.iter().map(|&p| {
            let (transport, identity) = (&transport, &identity);
            async move { (p, ask(transport, identity, p, local.revision, within).await) }
        });
        let answers = futures_util::future::join_all(asks).await;
        let suspects: Vec<NodeId> = match judge(local, &answers) {
            Verdict::Consistent { .. } => continue,
            Verdict::PeersDiffer(differ) => differ.into_iter().map(|(p, _)| p).collect(),
            Verdict::Inconsistent(_) => vec![me],
        };
        for member in suspects {
            if raised.contains(&(member.0, dengine_kv::AlarmKind::Corrupt)) {
                continue;
            }
            tracing::error!(member = %format!("{:x}", member.0), revision = local.revision,
                "found data inconsistency with peers: raising the CORRUPT alarm for this \
                 member; writes are refused until it is repaired and the alarm disarmed");
            let alarm = dengine_kv::KvCommand::Alarm(dengine_kv::AlarmRequest {
                activate: true,
                member: member.0,
                kind: dengine_kv::AlarmKind::Corrupt,
            });
            if let Err(e) = core.write(&alarm).await {
                tracing::warn!(error = %e.message(), "raising the CORRUPT alarm failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> HistoryHash {
        HistoryHash {
            hash: 7,
            revision: 100,
            compact_revision: 40,
        }
    }

    fn hash(hash: u32, revision: i64, compact_revision: i64) -> PeerHash {
        PeerHash::Hash(wire::HashKvResponse {
            hash,
            revision,
            compact_revision,
        })
    }

    #[test]
    fn equal_hashes_pass() {
        let answers = [(NodeId(2), hash(7, 100, 40)), (NodeId(3), hash(7, 100, 40))];
        assert_eq!(
            judge(local(), &answers),
            Verdict::Consistent {
                agreed: 2,
                skipped: 0
            }
        );
    }

    #[test]
    fn a_member_no_peer_agrees_with_is_refused() {
        let answers = [(NodeId(2), hash(8, 100, 40)), (NodeId(3), hash(9, 100, 40))];
        match judge(local(), &answers) {
            Verdict::Inconsistent(d) => assert_eq!(d.len(), 2),
            v => panic!("{v:?}"),
        }
        // One differs, the other cannot be compared: still refused.
        let answers = [
            (NodeId(2), hash(8, 100, 40)),
            (NodeId(3), PeerHash::Skipped("down".into())),
        ];
        assert!(matches!(judge(local(), &answers), Verdict::Inconsistent(_)));
    }

    #[test]
    fn a_differing_peer_next_to_an_agreeing_one_is_the_suspect() {
        let answers = [(NodeId(2), hash(7, 100, 40)), (NodeId(3), hash(9, 100, 40))];
        match judge(local(), &answers) {
            Verdict::PeersDiffer(d) => assert_eq!(d[0].0, NodeId(3)),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn hashes_of_other_revisions_or_compactions_are_not_compared() {
        let answers = [
            (NodeId(2), hash(8, 100, 41)),
            (NodeId(3), hash(8, 99, 40)),
            (NodeId(4), PeerHash::Skipped("down".into())),
        ];
        assert_eq!(
            judge(local(), &answers),
            Verdict::Consistent {
                agreed: 0,
                skipped: 3
            }
        );
    }

    type Ask = Pin<Box<dyn std::future::Future<Output = (NodeId, PeerHash)> + Send>>;

    fn answer(id: u64, h: PeerHash) -> Ask {
        Box::pin(async move { (NodeId(id), h) })
    }

    fn never(_id: u64) -> Ask {
        Box::pin(std::future::pending())
    }

    #[tokio::test]
    async fn a_peer_that_never_answers_is_skipped_once_another_agrees() {
        let asks = vec![answer(2, hash(7, 100, 40)), never(3)];
        let got = gather(asks, &[NodeId(2), NodeId(3)], local()).await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (NodeId(2), hash(7, 100, 40)));
        assert!(matches!(&got[1], (NodeId(3), PeerHash::Skipped(_))));
        assert!(matches!(
            judge(local(), &got),
            Verdict::Consistent {
                agreed: 1,
                skipped: 1
            }
        ));
    }

    #[tokio::test]
    async fn every_answer_is_awaited_while_none_agrees() {
        let late: Ask = Box::pin(async {
            tokio::time::sleep(AFTER_AGREEMENT * 2).await;
            (NodeId(3), hash(9, 100, 40))
        });
        let asks = vec![answer(2, hash(8, 100, 40)), late];
        let got = gather(asks, &[NodeId(2), NodeId(3)], local()).await;
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|(_, h)| matches!(h, PeerHash::Hash(_))));
        assert!(matches!(judge(local(), &got), Verdict::Inconsistent(d) if d.len() == 2));
    }
}

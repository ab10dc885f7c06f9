//! The durability side of the `Ready` contract, on `RawNode`s driven by
//! hand: acknowledgements and granted votes wait for their `PersistBatch`,
//! and a leader counts its own entries toward commit only once durable.

use std::collections::VecDeque;

use dengine_core::testing::MemStorage;
use dengine_core::{
    Config, Entry, EntryId, EntryPayload, HardState, LogIndex, LogStorage, Message, MessageBody,
    NodeId, PersistBatch, RawNode, Ready, Role, Term,
};

fn config(id: u64) -> Config {
    let mut c = Config::new(NodeId(id));
    c.lease_reads = false;
    c.snapshot_threshold = 0;
    c
}

/// Node `id` of a new cluster of `voters`, with the bootstrap entry applied.
fn start(id: u64, voters: &[u64]) -> RawNode<MemStorage> {
    let storage = MemStorage::bootstrap(voters.iter().map(|&v| NodeId(v)));
    let mut n = RawNode::new(config(id), storage).unwrap();
    let rd = n.ready().unwrap();
    assert_eq!(rd.committed_entries.len(), 1);
    if let Some(b) = &rd.persist {
        persist(&mut n, b);
    }
    n.on_applied(LogIndex(1)).unwrap();
    n
}

/// Makes `batch` durable and reports it.
fn persist(n: &mut RawNode<MemStorage>, batch: &PersistBatch) {
    n.storage().persist(batch, Vec::new()).unwrap();
    n.on_persisted(batch.persisted()).unwrap();
}

fn msg(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(term),
        body,
    }
}

fn blank(index: u64, term: u64) -> Entry {
    Entry {
        term: Term(term),
        index: LogIndex(index),
        payload: EntryPayload::Blank,
    }
}

fn append(prev: (u64, u64), entries: Vec<Entry>, commit: u64) -> MessageBody {
    MessageBody::AppendEntries {
        prev: EntryId::new(Term(prev.0), LogIndex(prev.1)),
        entries,
        commit: LogIndex(commit),
    }
}

fn ack(index: u64) -> MessageBody {
    MessageBody::AppendEntriesResponse {
        result: Ok(LogIndex(index)),
    }
}

/// Whether a message promises that something is durable on its sender.
fn promises_durability(m: &Message) -> bool {
    matches!(
        m.body,
        MessageBody::AppendEntriesResponse { result: Ok(_) }
            | MessageBody::RequestVoteResponse {
                pre_vote: false,
                granted: true
            }
    )
}

/// Whether `m`, handed out to send at once by node `n`, promises what `n`
/// has not made durable yet: a granted vote (whose term and vote are always
/// new), or an acknowledgement past the durable log or in a term not yet
/// durable.
fn promises_too_early(n: &RawNode<MemStorage>, m: &Message) -> bool {
    let durable_last = n.storage().last_index().unwrap();
    let durable_term = n.storage().initial_state().unwrap().hard_state.term;
    match m.body {
        MessageBody::AppendEntriesResponse { result: Ok(index) } => {
            index > durable_last || m.term > durable_term
        }
        MessageBody::RequestVoteResponse {
            pre_vote: false,
            granted: true,
        } => true,
        _ => false,
    }
}

fn no_durable_promise_in(rd: &Ready) {
    assert!(
        !rd.messages.iter().any(promises_durability),
        "an ack or a granted vote was handed out to send at once: {:?}",
        rd.messages
    );
}

#[test]
fn a_followers_ack_waits_for_its_entries_to_be_durable() {
    let mut n = start(2, &[1, 2, 3]);
    n.step(msg(1, 2, 2, append((1, 1), vec![blank(2, 2)], 1)))
        .unwrap();
    let rd = n.ready().unwrap();
    no_durable_promise_in(&rd);
    assert!(rd.messages.is_empty());
    let batch = rd.persist.unwrap();
    assert_eq!(batch.entries, vec![blank(2, 2)]);
    assert_eq!(batch.hard_state.map(|h| h.term), Some(Term(2)));
    assert_eq!(batch.messages, vec![msg(2, 1, 2, ack(2))]);
    persist(&mut n, &batch);

    // The term is durable now; the next ack still waits for its entry.
    n.step(msg(1, 2, 2, append((2, 2), vec![blank(3, 2)], 1)))
        .unwrap();
    let rd = n.ready().unwrap();
    assert!(rd.messages.is_empty());
    let batch = rd.persist.unwrap();
    assert_eq!(batch.entries, vec![blank(3, 2)]);
    assert_eq!(batch.hard_state, None);
    assert_eq!(batch.messages, vec![msg(2, 1, 2, ack(3))]);
    // A follower's durable entries let it move on only up to the commit
    // index (they may then be applied).
    assert_eq!(n.persist_unblocks_through(), LogIndex(1));
    // Handing out the next Ready before the disk write is done is allowed;
    // the write is still pending, so nothing is acknowledged early.
    assert!(!n.has_ready());
    persist(&mut n, &batch);

    // Answers that promise nothing about the disk go out at once.
    n.step(msg(
        1,
        2,
        2,
        MessageBody::Heartbeat {
            commit: LogIndex(1),
            read_round: 0,
        },
    ))
    .unwrap();
    n.step(msg(1, 2, 2, append((2, 7), vec![blank(8, 2)], 1)))
        .unwrap();
    let rd = n.ready().unwrap();
    assert!(rd.persist.is_none());
    assert_eq!(rd.messages.len(), 2);
    assert_eq!(
        rd.messages[0].body,
        MessageBody::HeartbeatResponse { read_round: 0 }
    );
    assert!(matches!(
        rd.messages[1].body,
        MessageBody::AppendEntriesResponse { result: Err(r) } if r.rejected == LogIndex(7)
    ));
}

#[test]
fn an_ack_of_entries_already_durable_goes_at_once() {
    let mut n = start(2, &[1, 2, 3]);
    n.step(msg(1, 2, 2, append((1, 1), vec![blank(2, 2)], 1)))
        .unwrap();
    let first = n.ready().unwrap().persist.unwrap();
    persist(&mut n, &first);

    // Entry 3 goes to the disk; while it is on its way, the leader tells
    // the commit index with an empty append anchored at entry 2, which is
    // durable: that answer promises nothing still to be written.
    n.step(msg(1, 2, 2, append((2, 2), vec![blank(3, 2)], 1)))
        .unwrap();
    let writing = n.ready().unwrap().persist.unwrap();
    assert_eq!(writing.messages, vec![msg(2, 1, 2, ack(3))]);
    n.step(msg(1, 2, 2, append((2, 2), Vec::new(), 2))).unwrap();
    let rd = n.ready().unwrap();
    assert_eq!(rd.messages, vec![msg(2, 1, 2, ack(2))]);
    let commit_only = rd.persist.unwrap();
    assert!(commit_only.entries.is_empty() && commit_only.messages.is_empty());
    assert_eq!(commit_only.hard_state.map(|h| h.commit), Some(LogIndex(2)));

    // Anchored at entry 3, still being written, the answer waits for it.
    n.step(msg(1, 2, 2, append((2, 3), Vec::new(), 3))).unwrap();
    let rd = n.ready().unwrap();
    no_durable_promise_in(&rd);
    assert_eq!(rd.persist.unwrap().messages, vec![msg(2, 1, 2, ack(3))]);
}

#[test]
fn a_granted_vote_waits_for_the_vote_to_be_durable() {
    let mut n = start(3, &[1, 2, 3]);
    let request = |pre_vote| MessageBody::RequestVote {
        pre_vote,
        last_log: EntryId::new(Term(1), LogIndex(1)),
        transfer: false,
    };

    // A pre-vote changes nothing on the voter: it is answered at once.
    n.step(msg(1, 3, 2, request(true))).unwrap();
    let rd = n.ready().unwrap();
    assert!(rd.persist.is_none());
    let granted_pre = MessageBody::RequestVoteResponse {
        pre_vote: true,
        granted: true,
    };
    assert_eq!(rd.messages, vec![msg(3, 1, 2, granted_pre)]);

    // A real vote is answered only once term and vote are durable.
    n.step(msg(1, 3, 2, request(false))).unwrap();
    let rd = n.ready().unwrap();
    assert!(rd.messages.is_empty());
    let votes = rd.persist.unwrap();
    let hs = HardState {
        term: Term(2),
        vote: NodeId(1),
        commit: LogIndex(1),
    };
    assert_eq!(votes.hard_state, Some(hs));
    let granted = MessageBody::RequestVoteResponse {
        pre_vote: false,
        granted: true,
    };
    assert_eq!(votes.messages, vec![msg(3, 1, 2, granted)]);

    // Until that write is reported, any answer would reveal the new term
    // and vote: it waits behind the write too.
    let hb = MessageBody::Heartbeat {
        commit: LogIndex(1),
        read_round: 0,
    };
    n.step(msg(1, 3, 2, hb.clone())).unwrap();
    let rd = n.ready().unwrap();
    assert!(rd.messages.is_empty());
    let hb_resp = MessageBody::HeartbeatResponse { read_round: 0 };
    assert_eq!(
        rd.persist.unwrap().messages,
        vec![msg(3, 1, 2, hb_resp.clone())]
    );

    persist(&mut n, &votes);
    n.step(msg(1, 3, 2, hb)).unwrap();
    let rd = n.ready().unwrap();
    assert_eq!(rd.messages, vec![msg(3, 1, 2, hb_resp)]);
}

#[test]
fn a_single_node_leader_commits_only_what_it_persisted() {
    let mut n = start(1, &[1]);
    n.campaign().unwrap();
    assert_eq!(n.status().soft_state.role, Role::Leader);
    assert_eq!(n.status().hard_state.term, Term(2));

    let rd1 = n.ready().unwrap();
    let b1 = rd1.persist.unwrap();
    assert_eq!(b1.entries, vec![blank(2, 2)]);
    assert!(rd1.committed_entries.is_empty());
    assert_eq!(n.propose(b"a".to_vec()).unwrap(), LogIndex(3));
    let rd2 = n.ready().unwrap();
    let b2 = rd2.persist.unwrap();
    assert_eq!(b2.entries.len(), 1);
    assert!(rd2.committed_entries.is_empty());
    // The only voter has written nothing yet: nothing is committed.
    assert_eq!(n.status().hard_state.commit, LogIndex(1));
    // The only voter: any entry it makes durable commits.
    assert_eq!(n.persist_unblocks_through(), LogIndex(u64::MAX));

    persist(&mut n, &b1);
    assert_eq!(n.status().hard_state.commit, LogIndex(2));
    persist(&mut n, &b2);
    assert_eq!(n.status().hard_state.commit, LogIndex(3));
    let rd3 = n.ready().unwrap();
    let applied: Vec<u64> = rd3.committed_entries.iter().map(|e| e.index.0).collect();
    assert_eq!(applied, vec![2, 3]);
}

#[test]
fn a_leader_needs_its_own_durable_copy_when_it_is_part_of_the_quorum() {
    let mut n = start(1, &[1, 2, 3]);
    n.campaign().unwrap();
    let rd = n.ready().unwrap();
    assert_eq!(rd.messages.len(), 2, "pre-votes go out at once");
    let pre = MessageBody::RequestVoteResponse {
        pre_vote: true,
        granted: true,
    };
    n.step(msg(2, 1, 2, pre)).unwrap();
    // The real vote requests reveal term 2 and the self-vote: they wait.
    let rd = n.ready().unwrap();
    assert!(rd.messages.is_empty());
    let candidacy = rd.persist.unwrap();
    assert_eq!(candidacy.messages.len(), 2);
    persist(&mut n, &candidacy);
    let vote = MessageBody::RequestVoteResponse {
        pre_vote: false,
        granted: true,
    };
    n.step(msg(2, 1, 2, vote)).unwrap();
    assert_eq!(n.status().soft_state.role, Role::Leader);

    let rd = n.ready().unwrap();
    no_durable_promise_in(&rd);
    // The appends to followers go out at once, in parallel with the write.
    let appends = rd
        .messages
        .iter()
        .filter(|m| m.body.kind() == "App")
        .count();
    assert_eq!(appends, 2);
    let batch = rd.persist.unwrap();
    assert_eq!(batch.entries, vec![blank(2, 2)]);

    // No follower has the no-op: the leader's own copy alone commits
    // nothing, so its report need not be heard at once.
    assert_eq!(n.persist_unblocks_through(), LogIndex(1));
    // Node 2 acknowledges the no-op; node 3 is silent. With the leader's own
    // copy not yet durable that is 1 of 3.
    n.step(msg(2, 1, 2, ack(2))).unwrap();
    assert_eq!(n.status().hard_state.commit, LogIndex(1));
    // Now the leader's own copy is what commits it.
    assert_eq!(n.persist_unblocks_through(), LogIndex(2));
    persist(&mut n, &batch);
    assert_eq!(n.status().hard_state.commit, LogIndex(2));
}

/// Three nodes run through elections and proposals with the contract kept
/// by a runtime that writes synchronously; no `Ready` ever hands out for
/// immediate sending an ack or a granted vote that is not durable already
/// (the answers to appends that carry only the commit index go at once).
#[test]
fn no_ready_ever_hands_out_a_promise_before_it_is_durable() {
    let mut nodes: Vec<RawNode<MemStorage>> = (1..=3).map(|id| start(id, &[1, 2, 3])).collect();
    let mut net: VecDeque<Message> = VecDeque::new();
    let mut readies = 0;
    let mut promises_seen = 0;
    let mut early_acks = 0;
    for round in 0..300u64 {
        for n in nodes.iter_mut() {
            n.tick().unwrap();
        }
        if round % 5 == 0 {
            for n in nodes.iter_mut() {
                if n.status().soft_state.role == Role::Leader {
                    n.propose(round.to_le_bytes().to_vec()).unwrap();
                }
            }
        }
        if round == 150 {
            // Force a change of leader.
            let leader = nodes
                .iter()
                .position(|n| n.status().soft_state.role == Role::Leader);
            if let Some(l) = leader {
                let next = NodeId(((l + 1) % 3) as u64 + 1);
                nodes[l].transfer_leader(next).unwrap();
            }
        }
        for _ in 0..20 {
            for n in nodes.iter_mut() {
                while n.has_ready() {
                    let rd = n.ready().unwrap();
                    readies += 1;
                    let early: Vec<&Message> = rd
                        .messages
                        .iter()
                        .filter(|m| promises_too_early(n, m))
                        .collect();
                    assert!(early.is_empty(), "promised before durable: {early:?}");
                    early_acks += rd
                        .messages
                        .iter()
                        .filter(|m| promises_durability(m))
                        .count();
                    net.extend(rd.messages.iter().cloned());
                    if let Some(b) = &rd.persist {
                        promises_seen +=
                            b.messages.iter().filter(|m| promises_durability(m)).count();
                        persist(n, b);
                        net.extend(b.messages.iter().cloned());
                    }
                    if let Some(last) = rd.committed_entries.last() {
                        n.on_applied(last.index).unwrap();
                    }
                }
            }
            if net.is_empty() {
                break;
            }
            for m in std::mem::take(&mut net) {
                let to = (m.to.0 - 1) as usize;
                let _ = nodes[to].step(m);
            }
        }
    }
    assert!(readies > 300);
    assert!(
        promises_seen > 100,
        "acks and votes did flow: {promises_seen}"
    );
    assert!(
        early_acks > 10,
        "acks of durable entries went at once: {early_acks}"
    );
    let commits: Vec<u64> = nodes
        .iter()
        .map(|n| n.status().hard_state.commit.0)
        .collect();
    assert!(commits.iter().all(|&c| c > 50), "{commits:?}");
}

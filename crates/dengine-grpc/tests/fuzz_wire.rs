//! What arrives on the member's ports under fuzzing (see
//! `dengine_core::testing::fuzz`): peer batches (protobuf from another
//! member, converted and stepped into the protocol) and client requests
//! (etcd's protobuf, checked, turned into commands and applied by the
//! store). Damaged input must be refused with an error, never panic a
//! member.

use dengine_core::testing::Cluster;
use dengine_core::testing::fuzz::Corpus;
use dengine_core::{MessageBody, NodeId};
use dengine_grpc::etcd::{range, txn};
use dengine_grpc::peer::{message_from_wire, message_to_wire};
use dengine_grpc::proto::etcdserverpb as pb;
use dengine_grpc::proto::peer as wire;
use dengine_kv::{KvStateMachine, RangeRequest as StoreRange};
use dengine_runtime::{EntryId, LogIndex, StateMachine, Term};
use prost::Message as _;

/// Three nodes, node 1 leading, a few entries committed.
fn cluster() -> Cluster {
    let mut c = Cluster::new(3);
    c.elect(1);
    for i in 0..3u8 {
        let _ = c.propose(1, &[b'x', i]);
    }
    c.stabilize();
    c
}

/// Real batches: what the leader and followers sent while electing,
/// replicating and answering.
fn peer_batches() -> Vec<Vec<u8>> {
    let mut c = Cluster::new(3);
    c.campaign(1);
    let mut batches = Vec::new();
    for round in 0..6u8 {
        if round > 2 {
            let _ = c.propose(1, &vec![round; 40 * round as usize]);
        }
        for id in 1..=3 {
            c.process_ready(NodeId(id));
        }
        let sent = c.take_msgs(|_| true);
        let batch = wire::RaftBatch {
            messages: sent
                .iter()
                .map(|e| message_to_wire(e.msg.clone()))
                .collect(),
        };
        if !batch.messages.is_empty() {
            batches.push(batch.encode_to_vec());
        }
        for env in sent {
            let _ = c.deliver(env);
        }
    }
    batches
}

#[test]
fn peer_batches_are_refused_or_stepped_cleanly() {
    let mut c = cluster();
    let mut stepped = 0u64;
    let corpus = Corpus::load("peer-batch", peer_batches());
    corpus.run(|bytes| {
        let Ok(batch) = wire::RaftBatch::decode(bytes) else {
            return;
        };
        for m in batch.messages {
            let Ok(msg) = message_from_wire(m) else {
                continue;
            };
            if matches!(msg.body, MessageBody::InstallSnapshot { .. }) {
                // Refused by the peer service: snapshots have their own call.
                continue;
            }
            // The service accepts only messages addressed to its member;
            // whom they claim to come from is left as it came.
            let to = if stepped.is_multiple_of(2) { 1 } else { 2 };
            let mut msg = msg;
            msg.to = NodeId(to);
            let _ = c.node_mut(to).raw.step(msg);
            stepped += 1;
            if c.node(to).raw.has_ready() {
                c.process_ready(NodeId(to));
            }
        }
        // Replies are dropped; a member that took garbage is replaced now
        // and then so that inputs meet a leader with a live log.
        let _ = c.take_msgs(|_| true);
        if stepped.is_multiple_of(64) {
            c = cluster();
        }
    });
    // The mutants reach the protocol, not only the protobuf decoder.
    assert!(
        stepped > corpus.iterations() / 4,
        "only {stepped} messages were stepped"
    );
}

/// A client request: its first byte says which kind (0 Put, 1 Range,
/// 2 DeleteRange, 3 Txn), the rest is etcd's protobuf.
fn tagged(kind: u8, body: Vec<u8>) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend(body);
    out
}

fn client_requests() -> Vec<Vec<u8>> {
    let put = pb::PutRequest {
        key: b"k".to_vec(),
        value: b"value".to_vec(),
        prev_kv: true,
        ..Default::default()
    };
    let range = pb::RangeRequest {
        key: b"a".to_vec(),
        range_end: b"z".to_vec(),
        limit: 5,
        sort_order: 1,
        sort_target: 3,
        ..Default::default()
    };
    let delete = pb::DeleteRangeRequest {
        key: b"k".to_vec(),
        range_end: vec![0],
        prev_kv: true,
    };
    let txn = pb::TxnRequest {
        compare: vec![pb::Compare {
            result: 0,
            target: 1,
            key: b"k".to_vec(),
            range_end: vec![],
            target_union: Some(pb::compare::TargetUnion::ModRevision(3)),
        }],
        success: vec![
            pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(put.clone())),
            },
            pb::RequestOp {
                request: Some(pb::request_op::Request::RequestRange(range.clone())),
            },
        ],
        failure: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestDeleteRange(delete.clone())),
        }],
    };
    vec![
        tagged(0, put.encode_to_vec()),
        tagged(1, range.encode_to_vec()),
        tagged(2, delete.encode_to_vec()),
        tagged(3, txn.encode_to_vec()),
    ]
}

/// A put, a range and a txn whose fields come from `bytes`.
fn made_of(bytes: &[u8]) -> (pb::PutRequest, pb::RangeRequest, pb::TxnRequest) {
    let byte = |i: usize| bytes.get(i).copied().unwrap_or(0);
    let number = |i: usize| {
        let mut b = [0u8; 8];
        for (j, x) in b.iter_mut().enumerate() {
            *x = byte(i + j);
        }
        i64::from_le_bytes(b)
    };
    let cut = usize::from(byte(0)) % (bytes.len() + 1);
    let (key, range_end) = bytes.split_at(cut);
    let small = |n: i64| n % 16;
    let put = pb::PutRequest {
        key: key.to_vec(),
        value: range_end.to_vec(),
        lease: small(number(1)),
        prev_kv: byte(2) & 1 == 1,
        ignore_value: byte(2) & 2 == 2,
        ignore_lease: byte(2) & 4 == 4,
    };
    let range = pb::RangeRequest {
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        limit: number(3),
        revision: small(number(4)),
        sort_order: i32::from(byte(5)) % 4,
        sort_target: i32::from(byte(6)) % 6,
        serializable: false,
        keys_only: byte(7) & 1 == 1,
        count_only: byte(7) & 2 == 2,
        min_mod_revision: small(number(8)),
        max_mod_revision: small(number(9)),
        min_create_revision: small(number(10)),
        max_create_revision: small(number(11)),
    };
    let compare = pb::Compare {
        result: i32::from(byte(12)) % 5,
        target: i32::from(byte(13)) % 5,
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        target_union: Some(match byte(14) % 5 {
            0 => pb::compare::TargetUnion::Version(small(number(15))),
            1 => pb::compare::TargetUnion::CreateRevision(small(number(15))),
            2 => pb::compare::TargetUnion::ModRevision(small(number(15))),
            3 => pb::compare::TargetUnion::Value(range_end.to_vec()),
            _ => pb::compare::TargetUnion::Lease(small(number(15))),
        }),
    };
    let op = |i: usize| pb::RequestOp {
        request: Some(match byte(i) % 3 {
            0 => pb::request_op::Request::RequestPut(put.clone()),
            1 => pb::request_op::Request::RequestRange(range.clone()),
            _ => pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: key.to_vec(),
                range_end: range_end.to_vec(),
                prev_kv: true,
            }),
        }),
    };
    let txn = pb::TxnRequest {
        compare: vec![compare],
        success: (0..usize::from(byte(16) % 4)).map(|i| op(17 + i)).collect(),
        failure: (0..usize::from(byte(21) % 3)).map(|i| op(22 + i)).collect(),
    };
    (put, range, txn)
}

/// What the KV service does with a request, up to the store: check it
/// (refusing what etcd refuses), convert it, and for writes apply the
/// command as every member would.
#[test]
fn client_requests_are_refused_or_served_cleanly() {
    let mut sm = KvStateMachine::in_memory();
    let mut index = 0u64;
    let mut served = 0u64;
    let mut apply = |sm: &mut KvStateMachine, bytes: Vec<u8>| {
        index += 1;
        let _ = sm.apply(EntryId::new(Term(1), LogIndex(index)), &bytes);
    };
    let corpus = Corpus::load("client-request", client_requests());
    corpus.run(|bytes| {
        let Some((&kind, body)) = bytes.split_first() else {
            return;
        };
        // Structured too: requests whose fields are made of the mutant's
        // bytes, so that the checks and the store meet odd keys, ranges,
        // sort options, limits and revisions, not only broken protobuf.
        let made = made_of(body);
        if range::check(&made.1).is_ok()
            && let Ok(got) = sm.range(&range::to_store(&made.1))
        {
            let _ = range::finish(&made.1, got);
            served += 1;
        }
        if txn::check_txn(&made.2, 128).is_ok()
            && let Ok(cmd) = txn::txn_command(made.2)
        {
            apply(&mut sm, cmd.encode());
            served += 1;
        }
        if txn::check_put(&made.0).is_ok() {
            let cmd = dengine_kv::KvCommand::Put(txn::put_to_store(made.0));
            apply(&mut sm, cmd.encode());
        }
        match kind % 4 {
            0 => {
                if let Ok(r) = pb::PutRequest::decode(body)
                    && txn::check_put(&r).is_ok()
                {
                    let cmd = dengine_kv::KvCommand::Put(txn::put_to_store(r));
                    apply(&mut sm, cmd.encode());
                    served += 1;
                }
            }
            1 => {
                if let Ok(r) = pb::RangeRequest::decode(body)
                    && range::check(&r).is_ok()
                {
                    let store: StoreRange = range::to_store(&r);
                    if let Ok(got) = sm.range(&store) {
                        let _ = range::finish(&r, got);
                    }
                    served += 1;
                }
            }
            2 => {
                if let Ok(r) = pb::DeleteRangeRequest::decode(body)
                    && txn::check_delete(&r).is_ok()
                {
                    let cmd = dengine_kv::KvCommand::DeleteRange(txn::delete_to_store(r));
                    apply(&mut sm, cmd.encode());
                    served += 1;
                }
            }
            _ => {
                if let Ok(r) = pb::TxnRequest::decode(body)
                    && txn::check_txn(&r, 128).is_ok()
                    && let Ok(cmd) = txn::txn_command(r)
                {
                    apply(&mut sm, cmd.encode());
                    served += 1;
                }
            }
        }
    });
    assert!(
        served > corpus.iterations() / 4,
        "only {served} requests got past the checks"
    );
}

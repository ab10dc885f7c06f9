//! The store's decoders of untrusted bytes under fuzzing (see
//! `dengine_core::testing::fuzz`): commands (every committed log entry is
//! decoded and applied on every member, and a peer can put anything in
//! an entry) and snapshots (a leader sends them). Damaged input is an
//! error, never a panic; a command that decodes applies or is refused.

use dengine_core::testing::fuzz::Corpus;
use dengine_kv::*;
use dengine_runtime::{EntryId, LogIndex, StateMachine, Term};

fn put(k: &str, v: &str, lease: i64) -> KvCommand {
    KvCommand::Put(PutRequest {
        key: k.into(),
        value: v.into(),
        lease,
        prev_kv: true,
        ..Default::default()
    })
}

fn commands() -> Vec<KvCommand> {
    vec![
        put("a", "1", 0),
        put("b/with/a/longer/key", &"v".repeat(300), 0),
        KvCommand::DeleteRange(DeleteRangeRequest {
            key: b"a".to_vec(),
            range_end: vec![0],
            prev_kv: true,
        }),
        KvCommand::Txn(TxnRequest {
            compare: vec![
                Compare {
                    key: b"a".to_vec(),
                    range_end: vec![],
                    target: CompareTarget::ModRevision(2),
                    op: CompareOp::Equal,
                },
                Compare {
                    key: b"b".to_vec(),
                    range_end: b"c".to_vec(),
                    target: CompareTarget::Value(b"x".to_vec()),
                    op: CompareOp::Greater,
                },
            ],
            success: vec![
                TxnOp::Put(PutRequest {
                    key: b"a".to_vec(),
                    value: b"2".to_vec(),
                    ..Default::default()
                }),
                TxnOp::Range(RangeRequest {
                    key: b"a".to_vec(),
                    range_end: vec![0],
                    limit: 10,
                    ..Default::default()
                }),
            ],
            failure: vec![TxnOp::DeleteRange(DeleteRangeRequest {
                key: b"b".to_vec(),
                range_end: vec![],
                prev_kv: false,
            })],
        }),
        KvCommand::Compact(CompactRequest { revision: 3 }),
        KvCommand::LeaseGrant(LeaseGrantRequest { id: 7, ttl: 60 }),
        KvCommand::LeaseKeepAlive(LeaseKeepAliveRequest { id: 7 }),
        KvCommand::LeaseRevoke(LeaseRevokeRequest { id: 7 }),
    ]
}

#[test]
fn commands_decode_and_apply_or_are_refused_cleanly() {
    let seeds = commands().iter().map(KvCommand::encode).collect();
    let mut sm = KvStateMachine::in_memory();
    let mut index = 0u64;
    Corpus::load("kv-command", seeds).run(|bytes| {
        if let Ok(cmd) = KvCommand::decode(bytes) {
            assert_eq!(KvCommand::decode(&cmd.encode()).as_ref(), Ok(&cmd));
        }
        // What a member does with a committed entry: apply (which decodes)
        // and, now and then, flush.
        index += 1;
        let _ = sm.apply(EntryId::new(Term(1), LogIndex(index)), bytes);
        if index.is_multiple_of(64) {
            sm.flush(LogIndex(index)).expect("flush");
        }
    });
}

fn a_snapshot() -> Vec<u8> {
    let mut sm = KvStateMachine::in_memory();
    let mut index = 0;
    for cmd in commands()
        .into_iter()
        .chain([
            put("c", "3", 0),
            KvCommand::LeaseGrant(LeaseGrantRequest { id: 9, ttl: 100 }),
        ])
        .chain([put("leased", "x", 9), put("d", "4", 0)])
    {
        index += 1;
        let _ = sm.apply(EntryId::new(Term(1), LogIndex(index)), &cmd.encode());
    }
    sm.flush(LogIndex(index)).expect("flush");
    let mut out = Vec::new();
    sm.snapshot(&mut out).expect("snapshot");
    out
}

#[test]
fn snapshots_restore_or_are_refused_cleanly() {
    Corpus::load("kv-snapshot", vec![a_snapshot()]).run(|bytes| {
        let mut sm = KvStateMachine::in_memory();
        if sm.restore(&mut &bytes[..]).is_ok() {
            let all = RangeRequest {
                key: vec![0],
                range_end: vec![0],
                ..Default::default()
            };
            let _ = sm.range(&all);
        }
    });
}

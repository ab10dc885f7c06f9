use std::io;

use super::*;
use crate::index::Revision;
use crate::record;
use dengine_runtime::{EntryId, LogIndex, StateMachine, Term};

pub(crate) fn put(k: &str, v: &str) -> KvCommand {
    KvCommand::Put(PutRequest {
        key: k.into(),
        value: v.into(),
        prev_kv: true,
        ..Default::default()
    })
}

pub(crate) fn del(k: &str, end: &[u8]) -> KvCommand {
    KvCommand::DeleteRange(DeleteRangeRequest {
        key: k.into(),
        range_end: end.to_vec(),
        prev_kv: true,
    })
}

pub(crate) fn range(k: &str, end: &[u8]) -> RangeRequest {
    RangeRequest {
        key: k.into(),
        range_end: end.to_vec(),
        ..Default::default()
    }
}

/// Applies `cmds` as one batch at indexes from `first`, then flushes.
pub(crate) fn run(
    sm: &mut KvStateMachine,
    first: u64,
    cmds: &[KvCommand],
) -> Vec<Result<KvResponse, KvError>> {
    let out: Vec<_> = cmds
        .iter()
        .enumerate()
        .map(|(i, c)| {
            sm.apply(
                EntryId::new(Term(1), LogIndex(first + i as u64)),
                &c.encode(),
            )
        })
        .collect();
    sm.flush(LogIndex(first + cmds.len() as u64 - 1))
        .expect("flush");
    out
}

pub(crate) fn one(sm: &mut KvStateMachine, index: u64, cmd: KvCommand) -> KvResponse {
    run(sm, index, &[cmd]).remove(0).expect("applies")
}

pub(crate) fn keys(r: &RangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

#[test]
fn puts_count_revisions_and_versions_as_etcd_does() {
    let mut sm = KvStateMachine::in_memory();
    assert_eq!(sm.revision(), 1);
    let r = one(&mut sm, 1, put("a", "1"));
    assert_eq!(r.revision, 2);
    assert_eq!(r.op, OpResponse::Put { prev_kv: None });
    one(&mut sm, 2, put("b", "1"));
    let r = one(&mut sm, 3, put("a", "2"));
    assert_eq!(r.revision, 4);
    let OpResponse::Put {
        prev_kv: Some(prev),
    } = r.op
    else {
        panic!("prev_kv asked for")
    };
    assert_eq!(
        (prev.value.as_slice(), prev.mod_revision, prev.version),
        (&b"1"[..], 2, 1)
    );
    let a = sm.get(b"a").expect("get").expect("a");
    assert_eq!(
        (a.create_revision, a.mod_revision, a.version, a.value),
        (2, 4, 2, b"2".to_vec())
    );
    // Deleted and written again: a new life with a new create revision.
    one(&mut sm, 4, del("a", b""));
    let r = one(&mut sm, 5, put("a", "3"));
    let a = sm.get(b"a").expect("get").expect("a");
    assert_eq!((a.create_revision, a.version), (r.revision, 1));
}

#[test]
fn deletes_follow_etcd_range_rules_and_count_only_real_deletions() {
    let mut sm = KvStateMachine::in_memory();
    for (i, k) in ["a", "b", "ba", "bb", "c"].iter().enumerate() {
        one(&mut sm, i as u64 + 1, put(k, "x"));
    }
    let rev = sm.revision();
    // Nothing to delete: the revision stays.
    let r = one(&mut sm, 6, del("zz", b""));
    assert_eq!(r.revision, rev);
    // [b, c): b, ba, bb.
    let r = one(&mut sm, 7, del("b", b"c"));
    assert_eq!(r.revision, rev + 1);
    let OpResponse::DeleteRange { deleted, prev_kvs } = r.op else {
        panic!("delete")
    };
    assert_eq!(deleted, 3);
    assert_eq!(prev_kvs.len(), 3);
    // [0]: from the key to the end.
    let r = one(&mut sm, 8, del("a\u{1}", &[0]));
    assert!(matches!(r.op, OpResponse::DeleteRange { deleted: 1, .. }));
    assert_eq!(keys(&sm.range(&range("\0", &[0])).expect("all")), ["a"]);
}

#[test]
fn ranges_limit_count_and_leave_values_out_on_request() {
    let mut sm = KvStateMachine::in_memory();
    let cmds: Vec<_> = (0..10).map(|i| put(&format!("k{i}"), "value")).collect();
    run(&mut sm, 1, &cmds);
    let mut req = range("k2", b"k7");
    assert_eq!(
        keys(&sm.range(&req).expect("range")),
        ["k2", "k3", "k4", "k5", "k6"]
    );
    req.limit = 2;
    let r = sm.range(&req).expect("range");
    assert_eq!(
        (keys(&r), r.count, r.more),
        (vec!["k2".into(), "k3".into()], 5, true)
    );
    req.keys_only = true;
    assert!(
        sm.range(&req)
            .expect("range")
            .kvs
            .iter()
            .all(|kv| kv.value.is_empty())
    );
    req.count_only = true;
    let r = sm.range(&req).expect("range");
    assert_eq!((r.kvs.len(), r.count), (0, 5));
    // A single key, a missing key, an end before the start.
    assert_eq!(sm.range(&range("k3", b"")).expect("one").count, 1);
    assert_eq!(sm.range(&range("nope", b"")).expect("none").count, 0);
    assert_eq!(sm.range(&range("k5", b"k1")).expect("empty").count, 0);
    // An end equal to the key is an empty range, not the key alone (found
    // by the model test).
    assert_eq!(sm.range(&range("k3", b"k3")).expect("empty").count, 0);
}

#[test]
fn writes_of_one_batch_see_each_other_before_the_flush() {
    let mut sm = KvStateMachine::in_memory();
    let out = run(
        &mut sm,
        1,
        &[put("a", "1"), put("a", "2"), put("b", "1"), del("a", b"")],
    );
    let OpResponse::Put {
        prev_kv: Some(prev),
    } = &out[1].as_ref().expect("put").op
    else {
        panic!("the second put sees the first")
    };
    assert_eq!(prev.value, b"1");
    assert!(matches!(
        out[3].as_ref().expect("delete").op,
        OpResponse::DeleteRange { deleted: 1, .. }
    ));
    assert_eq!(keys(&sm.range(&range("a", &[0])).expect("all")), ["b"]);
}

#[test]
fn transactions_compare_then_run_one_branch_at_one_revision() {
    let mut sm = KvStateMachine::in_memory();
    one(&mut sm, 1, put("a", "1"));
    let cas = |expect: i64, new: &str| {
        KvCommand::Txn(TxnRequest {
            compare: vec![Compare {
                key: b"a".to_vec(),
                range_end: vec![],
                target: CompareTarget::ModRevision(expect),
                op: CompareOp::Equal,
            }],
            success: vec![
                TxnOp::Put(PutRequest {
                    key: b"a".to_vec(),
                    value: new.into(),
                    ..Default::default()
                }),
                TxnOp::Put(PutRequest {
                    key: b"b".to_vec(),
                    value: new.into(),
                    ..Default::default()
                }),
                TxnOp::Range(range("a", b"")),
            ],
            failure: vec![TxnOp::Range(range("a", b""))],
        })
    };
    let r = one(&mut sm, 2, cas(2, "2"));
    let OpResponse::Txn {
        succeeded: true,
        responses,
    } = r.op
    else {
        panic!("the compare holds")
    };
    assert_eq!(r.revision, 3, "both puts share one revision");
    let OpResponse::Range(seen) = &responses[2] else {
        panic!("range")
    };
    assert_eq!(seen.kvs[0].value, b"2", "the range sees the branch's put");
    assert_eq!(sm.get(b"b").expect("b").expect("b").mod_revision, 3);
    // A stale compare runs the failure branch and writes nothing.
    let r = one(&mut sm, 3, cas(2, "3"));
    assert!(matches!(
        r.op,
        OpResponse::Txn {
            succeeded: false,
            ..
        }
    ));
    assert_eq!(r.revision, 3);
    // A value compare on a missing key fails; a version compare sees 0.
    let on_missing = |target| {
        KvCommand::Txn(TxnRequest {
            compare: vec![Compare {
                key: b"missing".to_vec(),
                range_end: vec![],
                target,
                op: CompareOp::Equal,
            }],
            ..Default::default()
        })
    };
    let r = one(&mut sm, 4, on_missing(CompareTarget::Value(vec![])));
    assert!(matches!(
        r.op,
        OpResponse::Txn {
            succeeded: false,
            ..
        }
    ));
    let r = one(&mut sm, 5, on_missing(CompareTarget::Version(0)));
    assert!(matches!(
        r.op,
        OpResponse::Txn {
            succeeded: true,
            ..
        }
    ));
}

#[test]
fn malformed_commands_are_refused_and_change_nothing() {
    let mut sm = KvStateMachine::in_memory();
    one(&mut sm, 1, put("a", "1"));
    let before = sm.range(&range("\0", &[0])).expect("all");
    let txn = KvCommand::Txn(TxnRequest {
        success: vec![
            TxnOp::Put(PutRequest {
                key: b"b".to_vec(),
                ..Default::default()
            }),
            TxnOp::Put(PutRequest::default()),
        ],
        ..Default::default()
    });
    let dup = KvCommand::Txn(TxnRequest {
        success: vec![
            TxnOp::Put(PutRequest {
                key: b"c".to_vec(),
                ..Default::default()
            });
            2
        ],
        ..Default::default()
    });
    // A put of a key that a delete of the same branch covers (found by
    // the model test: etcd refuses it as a duplicate key).
    let put_deleted = KvCommand::Txn(TxnRequest {
        failure: vec![
            TxnOp::Put(PutRequest {
                key: b"ba".to_vec(),
                ..Default::default()
            }),
            TxnOp::DeleteRange(DeleteRangeRequest {
                key: b"b".to_vec(),
                range_end: b"c".to_vec(),
                prev_kv: false,
            }),
        ],
        ..Default::default()
    });
    let out = run(&mut sm, 2, &[txn, dup, put_deleted, put("", "x")]);
    assert!(
        out.iter()
            .all(|r| matches!(r, Err(KvError::InvalidRequest(_)))),
        "{out:?}"
    );
    assert!(matches!(
        sm.apply(EntryId::new(Term(1), LogIndex(6)), b"\xff garbage"),
        Err(KvError::InvalidRequest(_))
    ));
    assert_eq!(sm.range(&range("\0", &[0])).expect("all"), before);
    assert_eq!(sm.revision(), 2);
}

/// A put that keeps the key's value (`ignore_value`) or lease.
fn keep(k: &str, value: bool, lease: bool) -> PutRequest {
    PutRequest {
        key: k.into(),
        prev_kv: true,
        ignore_value: value,
        ignore_lease: lease,
        ..Default::default()
    }
}

fn txn(compare: Vec<Compare>, success: Vec<TxnOp>, failure: Vec<TxnOp>) -> TxnRequest {
    TxnRequest {
        compare,
        success,
        failure,
    }
}

fn txn_put(k: &str, v: &str) -> TxnOp {
    TxnOp::Put(PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    })
}

fn cmp(k: &str, target: CompareTarget, op: CompareOp) -> Compare {
    Compare {
        key: k.into(),
        range_end: vec![],
        target,
        op,
    }
}

fn not_found() -> Result<KvResponse, KvError> {
    Err(KvError::InvalidRequest("key not found".into()))
}

fn all(sm: &KvStateMachine) -> RangeResponse {
    sm.range(&range("\0", &[0])).expect("all")
}

#[test]
fn ignore_value_keeps_the_value_and_counts_a_write() {
    let mut sm = KvStateMachine::in_memory();
    one(&mut sm, 1, put("a", "1"));
    let r = one(&mut sm, 2, KvCommand::Put(keep("a", true, false)));
    assert_eq!(r.revision, 3);
    let OpResponse::Put {
        prev_kv: Some(prev),
    } = r.op
    else {
        panic!("prev_kv asked for")
    };
    assert_eq!((prev.value.as_slice(), prev.version), (&b"1"[..], 1));
    let a = sm.get(b"a").expect("get").expect("a");
    assert_eq!(
        (
            a.value.as_slice(),
            a.create_revision,
            a.mod_revision,
            a.version
        ),
        (&b"1"[..], 2, 3, 2)
    );
    // ignore_lease alone: the new value, the key's (absent) lease.
    let r = one(
        &mut sm,
        3,
        KvCommand::Put(PutRequest {
            value: b"2".to_vec(),
            ..keep("a", false, true)
        }),
    );
    assert_eq!(r.revision, 4);
    let a = sm.get(b"a").expect("get").expect("a");
    assert_eq!((a.value.as_slice(), a.version), (&b"2"[..], 3));
    // Both on a key read in the same batch, before a flush.
    let out = run(
        &mut sm,
        4,
        &[put("b", "x"), KvCommand::Put(keep("b", true, true))],
    );
    assert_eq!(out[1].as_ref().map(|r| r.revision), Ok(6));
    assert_eq!(sm.get(b"b").expect("get").expect("b").value, b"x");
}

#[test]
fn keeping_the_value_of_a_missing_key_fails_and_changes_nothing() {
    let mut sm = KvStateMachine::in_memory();
    run(&mut sm, 1, &[put("a", "1"), del("a", b""), put("z", "1")]);
    let before = (all(&sm), sm.revision());
    let inner = |ops| TxnOp::Txn(txn(vec![], ops, vec![]));
    let cmds = [
        // Never there, or deleted.
        KvCommand::Put(keep("b", true, false)),
        KvCommand::Put(keep("a", false, true)),
        // In a txn: the check runs before any op does.
        KvCommand::Txn(txn(
            vec![],
            vec![txn_put("c", "1"), TxnOp::Put(keep("b", true, false))],
            vec![],
        )),
        // In a nested txn's chosen branch.
        KvCommand::Txn(txn(
            vec![],
            vec![
                txn_put("c", "1"),
                inner(vec![inner(vec![TxnOp::Put(keep("b", false, true))])]),
            ],
            vec![],
        )),
        // A key the command itself puts first does not count: etcd looks
        // at the store before the command (its server refuses this one as
        // a duplicate key anyway).
        KvCommand::Txn(txn(
            vec![],
            vec![
                txn_put("b", "1"),
                inner(vec![TxnOp::Put(keep("b", true, false))]),
            ],
            vec![],
        )),
        // Nor does a key it deletes first (etcd's server refuses this one
        // too; etcd itself would stop with a panic).
        KvCommand::Txn(txn(
            vec![],
            vec![
                TxnOp::DeleteRange(DeleteRangeRequest {
                    key: b"z".to_vec(),
                    range_end: vec![],
                    prev_kv: false,
                }),
                inner(vec![TxnOp::Put(keep("z", true, false))]),
            ],
            vec![],
        )),
        KvCommand::Txn(txn(
            vec![],
            vec![
                inner(vec![TxnOp::DeleteRange(DeleteRangeRequest {
                    key: b"a".to_vec(),
                    range_end: b"zz".to_vec(),
                    prev_kv: false,
                })]),
                TxnOp::Put(keep("z", true, false)),
            ],
            vec![],
        )),
    ];
    for (i, cmd) in cmds.into_iter().enumerate() {
        let got = run(&mut sm, 4 + i as u64, std::slice::from_ref(&cmd)).remove(0);
        assert_eq!(got, not_found(), "{cmd:?}");
        assert_eq!((all(&sm), sm.revision()), before, "{cmd:?}");
    }
    // A put of a branch that does not run is not checked; one that runs
    // after a delete and a new put of its key finds it.
    let ok = KvCommand::Txn(txn(
        vec![cmp("z", CompareTarget::Version(1), CompareOp::Equal)],
        vec![
            inner(vec![]),
            TxnOp::Txn(txn(
                vec![cmp("nope", CompareTarget::Version(0), CompareOp::Greater)],
                vec![TxnOp::Put(keep("b", true, false))],
                vec![txn_put("c", "1")],
            )),
        ],
        vec![TxnOp::Put(keep("b", true, false))],
    ));
    let r = one(&mut sm, 20, ok);
    assert_eq!(r.revision, before.1 + 1);
    let ok = KvCommand::Txn(txn(
        vec![],
        vec![
            TxnOp::DeleteRange(DeleteRangeRequest {
                key: b"z".to_vec(),
                range_end: vec![],
                prev_kv: false,
            }),
            inner(vec![txn_put("z", "2")]),
            inner(vec![TxnOp::Put(keep("z", true, false))]),
        ],
        vec![],
    ));
    let r = one(&mut sm, 21, ok);
    let z = sm.get(b"z").expect("get").expect("z");
    assert_eq!(
        (z.value.as_slice(), z.version, z.create_revision, r.revision),
        (&b"2"[..], 2, before.1 + 2, before.1 + 2)
    );
}

#[test]
fn nested_transactions_run_at_the_outer_revision_and_answer_nested() {
    let mut sm = KvStateMachine::in_memory();
    one(&mut sm, 1, put("a", "1"));
    let cmd = KvCommand::Txn(txn(
        vec![cmp(
            "a",
            CompareTarget::Value(b"1".to_vec()),
            CompareOp::Equal,
        )],
        vec![
            txn_put("b", "1"),
            // As etcd: decided on the store before the command, where b
            // does not exist yet (version 0), though the put above ran.
            TxnOp::Txn(txn(
                vec![cmp("b", CompareTarget::Version(0), CompareOp::Equal)],
                vec![
                    txn_put("c", "1"),
                    // Ops see the outer branch's earlier writes.
                    TxnOp::Range(range("b", b"")),
                ],
                vec![txn_put("d", "1")],
            )),
            // The failure branch of a nested txn, with one nested in it.
            TxnOp::Txn(txn(
                vec![cmp(
                    "a",
                    CompareTarget::Value(b"2".to_vec()),
                    CompareOp::Equal,
                )],
                vec![txn_put("e", "1")],
                vec![
                    TxnOp::Txn(txn(vec![], vec![TxnOp::Range(range("c", b""))], vec![])),
                    TxnOp::Put(keep("a", true, false)),
                ],
            )),
        ],
        vec![],
    ));
    let r = one(&mut sm, 2, cmd);
    assert_eq!(r.revision, 3, "one revision for the whole command");
    let kv = |k: &str, v: &str, version| KeyValue {
        key: k.into(),
        value: v.into(),
        create_revision: if k == "a" { 2 } else { 3 },
        mod_revision: 3,
        version,
        lease: 0,
    };
    let range_of = |kvs: Vec<KeyValue>| {
        OpResponse::Range(RangeResponse {
            count: kvs.len() as i64,
            kvs,
            more: false,
        })
    };
    assert_eq!(
        r.op,
        OpResponse::Txn {
            succeeded: true,
            responses: vec![
                OpResponse::Put { prev_kv: None },
                OpResponse::Txn {
                    succeeded: true,
                    responses: vec![
                        OpResponse::Put { prev_kv: None },
                        range_of(vec![kv("b", "1", 1)]),
                    ],
                },
                OpResponse::Txn {
                    succeeded: false,
                    responses: vec![
                        OpResponse::Txn {
                            succeeded: true,
                            responses: vec![range_of(vec![kv("c", "1", 1)])],
                        },
                        OpResponse::Put {
                            prev_kv: Some(KeyValue {
                                mod_revision: 2,
                                ..kv("a", "1", 1)
                            }),
                        },
                    ],
                },
            ],
        }
    );
    assert_eq!(
        all(&sm).kvs,
        [kv("a", "1", 2), kv("b", "1", 1), kv("c", "1", 1)]
    );
    // Nothing written anywhere: no new revision; a nested delete that
    // finds keys is a write.
    let read_only = KvCommand::Txn(txn(
        vec![],
        vec![TxnOp::Txn(txn(
            vec![],
            vec![
                TxnOp::Range(range("a", b"")),
                TxnOp::DeleteRange(DeleteRangeRequest {
                    key: b"x".to_vec(),
                    range_end: vec![],
                    prev_kv: false,
                }),
            ],
            vec![],
        ))],
        vec![],
    ));
    assert_eq!(one(&mut sm, 3, read_only).revision, 3);
    let nested_delete = KvCommand::Txn(txn(
        vec![cmp("zz", CompareTarget::Version(0), CompareOp::NotEqual)],
        vec![],
        vec![TxnOp::Txn(txn(
            vec![],
            vec![TxnOp::DeleteRange(DeleteRangeRequest {
                key: b"b".to_vec(),
                range_end: b"d".to_vec(),
                prev_kv: false,
            })],
            vec![],
        ))],
    ));
    let r = one(&mut sm, 4, nested_delete);
    assert_eq!(r.revision, 4);
    assert_eq!(all(&sm).kvs, [kv("a", "1", 2)]);
}

#[test]
fn lease_comparisons_see_the_keys_lease() {
    let mut sm = KvStateMachine::in_memory();
    one(&mut sm, 1, put("a", "1"));
    let holds = |sm: &mut KvStateMachine, index, k: &str, lease, op| {
        let cmd = KvCommand::Txn(txn(
            vec![cmp(k, CompareTarget::Lease(lease), op)],
            vec![],
            vec![],
        ));
        matches!(
            one(sm, index, cmd).op,
            OpResponse::Txn {
                succeeded: true,
                ..
            }
        )
    };
    assert!(holds(&mut sm, 2, "a", 0, CompareOp::Equal));
    assert!(holds(&mut sm, 3, "missing", 0, CompareOp::Equal));
    assert!(holds(&mut sm, 4, "a", 7, CompareOp::Less));
    assert!(holds(&mut sm, 5, "a", -1, CompareOp::Greater));
    assert!(!holds(&mut sm, 6, "a", 7, CompareOp::Equal));
    // A put's lease is kept with the key, kept by a put that ignores
    // the lease, and dropped by a put without one.
    let put_lease = |lease, ignore_lease| {
        KvCommand::Put(PutRequest {
            key: b"a".to_vec(),
            lease,
            ignore_lease,
            ..Default::default()
        })
    };
    let refused = sm.apply(
        EntryId::new(Term(1), LogIndex(7)),
        &put_lease(7, false).encode(),
    );
    assert_eq!(refused, Err(KvError::LeaseNotFound), "no lease 7 yet");
    let grant = KvCommand::LeaseGrant(LeaseGrantRequest { id: 7, ttl: 60 });
    one(&mut sm, 7, grant);
    one(&mut sm, 7, put_lease(7, false));
    assert!(holds(&mut sm, 8, "a", 7, CompareOp::Equal));
    one(&mut sm, 9, put_lease(0, true));
    assert!(holds(&mut sm, 10, "a", 7, CompareOp::Equal));
    assert_eq!(sm.get(b"a").expect("get").expect("a").lease, 7);
    one(&mut sm, 11, put_lease(0, false));
    assert!(holds(&mut sm, 12, "a", 0, CompareOp::Equal));
}

#[test]
fn nested_and_new_fields_are_validated_as_etcd_does() {
    let mut sm = KvStateMachine::in_memory();
    one(&mut sm, 1, put("a", "1"));
    let before = (all(&sm), sm.revision());
    let refused = |why: &str| Err(KvError::InvalidRequest(why.into()));
    let value = |k: &str| {
        TxnOp::Put(PutRequest {
            value: b"x".to_vec(),
            ..keep(k, true, false)
        })
    };
    let lease = |k: &str| {
        TxnOp::Put(PutRequest {
            lease: 5,
            ..keep(k, false, true)
        })
    };
    let nested = |t| KvCommand::Txn(txn(vec![], vec![], vec![TxnOp::Txn(t)]));
    let cases = [
        (
            KvCommand::Put(PutRequest {
                value: b"x".to_vec(),
                ..keep("a", true, true)
            }),
            "value is provided",
        ),
        (
            KvCommand::Put(PutRequest {
                lease: 1,
                ..keep("a", false, true)
            }),
            "lease is provided",
        ),
        (
            KvCommand::Put(PutRequest {
                value: b"x".to_vec(),
                lease: 1,
                ..keep("", true, true)
            }),
            "key is not provided",
        ),
        (
            nested(txn(vec![], vec![value("a")], vec![])),
            "value is provided",
        ),
        (
            nested(txn(vec![], vec![], vec![lease("a")])),
            "lease is provided",
        ),
        (
            nested(txn(
                vec![cmp("", CompareTarget::Lease(0), CompareOp::Equal)],
                vec![],
                vec![],
            )),
            "key is not provided",
        ),
        (
            nested(txn(vec![], vec![], vec![TxnOp::Range(range("", b""))])),
            "key is not provided",
        ),
        // In etcd's order: requests one by one, depth first; then
        // duplicates.
        (
            KvCommand::Txn(txn(
                vec![],
                vec![txn_put("d", "1"), txn_put("d", "2"), value("a")],
                vec![TxnOp::Txn(txn(vec![], vec![txn_put("", "1")], vec![]))],
            )),
            "value is provided",
        ),
        (
            KvCommand::Txn(txn(
                vec![],
                vec![
                    TxnOp::Txn(txn(vec![], vec![lease("a")], vec![])),
                    value("a"),
                ],
                vec![],
            )),
            "lease is provided",
        ),
        (
            nested(txn(
                vec![],
                vec![],
                vec![TxnOp::Txn(txn(
                    vec![],
                    vec![txn_put("d", "1"), txn_put("d", "2")],
                    vec![],
                ))],
            )),
            "duplicate key given in txn request",
        ),
        (
            nested(txn(
                vec![],
                vec![
                    TxnOp::DeleteRange(DeleteRangeRequest {
                        key: b"a".to_vec(),
                        range_end: b"c".to_vec(),
                        prev_kv: false,
                    }),
                    TxnOp::Put(keep("b", true, false)),
                ],
                vec![],
            )),
            "duplicate key given in txn request",
        ),
    ];
    for (i, (cmd, why)) in cases.into_iter().enumerate() {
        let got = run(&mut sm, 2 + i as u64, std::slice::from_ref(&cmd)).remove(0);
        assert_eq!(got, refused(why), "{cmd:?}");
        assert_eq!((all(&sm), sm.revision()), before);
    }
    // The store's own duplicate check is per branch: a key put by a branch
    // and by a transaction nested in it passes here (etcd's server refuses
    // it before proposing), and so do puts of a key in both branches.
    let across = KvCommand::Txn(txn(
        vec![],
        vec![
            txn_put("d", "1"),
            TxnOp::Txn(txn(
                vec![],
                vec![txn_put("d", "2")],
                vec![txn_put("d", "3")],
            )),
        ],
        vec![txn_put("d", "4")],
    ));
    one(&mut sm, 50, across);
    let d = sm.get(b"d").expect("get").expect("d");
    assert_eq!((d.value.as_slice(), d.version), (&b"2"[..], 2));
}

/// A command whose transactions nest `depth` levels (hand-made bytes, so
/// that no deep value is built, encoded or dropped here).
fn nested_bytes(depth: usize) -> Vec<u8> {
    // Version 2, `KvCommand::Txn`, then per level: no compares, one
    // success op, `TxnOp::Txn`; the innermost txn is empty; then each
    // level's empty failure branch.
    let mut bytes = vec![COMMAND_VERSION, 2];
    for _ in 0..depth {
        bytes.extend_from_slice(&[0, 1, 3]);
    }
    bytes.extend_from_slice(&[0, 0, 0]);
    bytes.extend(std::iter::repeat_n(0, depth));
    bytes
}

#[test]
fn transactions_nested_too_deep_are_refused_when_decoded() {
    // The deepest allowed decodes, applies and encodes the same, on a
    // thread with a small stack.
    let deepest = std::thread::Builder::new()
        .stack_size(512 << 10)
        .spawn(|| {
            let bytes = nested_bytes(MAX_TXN_DEPTH);
            let cmd = KvCommand::decode(&bytes).expect("decodes");
            assert_eq!(cmd.encode(), bytes);
            let mut sm = KvStateMachine::in_memory();
            let r = sm.apply(EntryId::new(Term(1), LogIndex(1)), &bytes);
            assert!(
                matches!(
                    r,
                    Ok(KvResponse {
                        revision: 1,
                        op: OpResponse::Txn {
                            succeeded: true,
                            ..
                        }
                    })
                ),
                "{r:?}"
            );
        })
        .expect("spawn")
        .join();
    assert!(deepest.is_ok());
    for depth in [MAX_TXN_DEPTH + 1, 1_000_000] {
        let Err(KvError::InvalidRequest(e)) = KvCommand::decode(&nested_bytes(depth)) else {
            panic!("{depth} levels decoded");
        };
        assert!(
            e.contains(&format!(
                "nested too deep (more than {MAX_TXN_DEPTH} levels)"
            )),
            "{e}"
        );
    }
    // The count starts again at the next command, and another error is
    // not mistaken for this one.
    assert!(KvCommand::decode(&nested_bytes(MAX_TXN_DEPTH)).is_ok());
    let mut truncated = nested_bytes(3);
    truncated.pop();
    let e = KvCommand::decode(&truncated).expect_err("truncated");
    assert!(!e.to_string().contains("too deep"), "{e}");
}

pub(crate) fn snapshot_of(sm: &mut KvStateMachine) -> Vec<u8> {
    let mut out = Vec::new();
    sm.snapshot(&mut out).expect("snapshot");
    out
}

#[test]
fn a_snapshot_restores_the_same_store_and_bad_snapshots_are_refused() {
    let mut a = KvStateMachine::in_memory();
    let cmds: Vec<_> = (0..500).map(|i| put(&format!("key{i:04}"), "v")).collect();
    run(&mut a, 1, &cmds);
    one(&mut a, 501, del("key0100", b"key0200"));
    let snap = snapshot_of(&mut a);
    let mut b = KvStateMachine::in_memory();
    one(&mut b, 1, put("stale", "x"));
    b.restore(&mut &snap[..]).expect("restore");
    b.flush(LogIndex(501)).expect("flush");
    let all = range("\0", &[0]);
    assert_eq!(b.range(&all).expect("b"), a.range(&all).expect("a"));
    assert_eq!(b.revision(), a.revision());

    let mut c = KvStateMachine::in_memory();
    assert!(
        c.restore(&mut &snap[..snap.len() - 1]).is_err(),
        "truncated"
    );
    let mut flipped = snap.clone();
    flipped[40] ^= 1;
    assert!(c.restore(&mut &flipped[..]).is_err(), "a damaged record");
    assert!(c.restore(&mut &b"nope"[..]).is_err(), "not a snapshot");
    // A length field claiming 4 GiB is refused without allocating it.
    let mut huge = b"DKV2".to_vec();
    huge.extend_from_slice(&2i64.to_le_bytes());
    huge.extend_from_slice(&(u32::MAX - 1).to_le_bytes());
    huge.extend_from_slice(b"k");
    assert!(c.restore(&mut &huge[..]).is_err(), "a huge key length");
    let mut huge = b"DKV3".to_vec();
    huge.extend_from_slice(&2i64.to_le_bytes());
    huge.extend_from_slice(&0i64.to_le_bytes());
    huge.push(1);
    huge.extend_from_slice(&2i64.to_le_bytes());
    huge.extend_from_slice(&0u32.to_be_bytes());
    huge.extend_from_slice(&(u32::MAX - 1).to_le_bytes());
    huge.extend_from_slice(b"k");
    assert!(c.restore(&mut &huge[..]).is_err(), "a huge record length");
}

#[test]
fn damaged_records_are_found_when_the_store_opens() {
    let mut backend = MemoryBackend::default();
    let mut rec = record::encode(
        &KeyValue {
            key: b"a".to_vec(),
            value: b"v".to_vec(),
            create_revision: 2,
            mod_revision: 2,
            version: 1,
            lease: 0,
        },
        false,
    );
    let last = rec.len() - 1;
    rec[last] ^= 1;
    let rev = Revision { main: 2, sub: 0 };
    backend
        .write(vec![
            Change::Insert(record::rev_key(rev).to_vec(), rec),
            Change::Put(b"m".to_vec(), record::encode_meta(LogIndex(1), 2, 0)),
        ])
        .expect("write");
    let e = KvStateMachine::with_backend(Box::new(backend)).expect_err("refused");
    assert!(
        e.to_string().contains("corrupt") && e.to_string().contains("revision 2.0"),
        "{e}"
    );
}

/// A backend whose writes fail: the node must stop, not go on diverged.
struct Failing(MemoryBackend);
impl KvBackend for Failing {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.0.get(key)
    }
    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut backend::Visit<'_>,
    ) -> io::Result<()> {
        self.0.scan(start, end, visit)
    }
    fn write(&mut self, _: Vec<Change>) -> io::Result<()> {
        Err(io::Error::other("disk full"))
    }
    fn clear(&mut self) -> io::Result<()> {
        self.0.clear()
    }
    fn durable(&self) -> bool {
        true
    }
}

#[test]
fn a_failed_write_stops_the_state_machine() {
    let mut sm =
        KvStateMachine::with_backend(Box::new(Failing(MemoryBackend::default()))).expect("open");
    sm.write_after = std::time::Duration::ZERO;
    assert!(
        sm.apply(EntryId::new(Term(1), LogIndex(1)), &put("a", "1").encode())
            .is_ok()
    );
    assert!(sm.flush(LogIndex(1)).is_err());
    assert!(matches!(
        sm.apply(EntryId::new(Term(1), LogIndex(2)), &put("b", "1").encode()),
        Err(KvError::Storage(_))
    ));
    assert!(sm.flush(LogIndex(2)).is_err());
}

/// What a durable backend keeps across a restart: flushed batches with
/// their index, never unflushed ones.
fn survives_restart(open: &dyn Fn() -> Box<dyn KvBackend>) {
    {
        let mut sm = KvStateMachine::with_backend(open()).expect("open");
        sm.write_after = std::time::Duration::ZERO;
        assert_eq!(sm.applied_index(), None);
        run(&mut sm, 1, &[put("a", "1"), put("b", "2")]);
        sm.apply(
            EntryId::new(Term(1), LogIndex(3)),
            &put("c", "lost").encode(),
        )
        .expect("apply");
        // Dropped before its flush.
    }
    let mut sm = KvStateMachine::with_backend(open()).expect("reopen");
    assert_eq!(sm.applied_index(), Some(LogIndex(2)));
    assert_eq!(sm.revision(), 3);
    assert_eq!(
        keys(&sm.range(&range("\0", &[0])).expect("all")),
        ["a", "b"]
    );
    // Leases, their keys and the history survive a restart too.
    let grant = KvCommand::LeaseGrant(LeaseGrantRequest { id: 9, ttl: 30 });
    let leased = KvCommand::Put(PutRequest {
        key: b"l".to_vec(),
        value: b"1".to_vec(),
        lease: 9,
        ..Default::default()
    });
    run(&mut sm, 3, &[grant, leased]);
    drop(sm);
    let mut sm = KvStateMachine::with_backend(open()).expect("reopen");
    assert_eq!(sm.leases(), [(9, 30)]);
    assert_eq!(sm.lease(9), Some((30, vec![b"l".to_vec()])));
    let at2 = RangeRequest {
        revision: 2,
        ..range("\0", &[0])
    };
    assert_eq!(keys(&sm.range(&at2).expect("at 2")), ["a"]);
    let revoke = KvCommand::LeaseRevoke(LeaseRevokeRequest { id: 9 });
    run(&mut sm, 5, &[revoke]);
    drop(sm);
    let mut sm = KvStateMachine::with_backend(open()).expect("reopen");
    assert_eq!(sm.leases(), []);
    assert_eq!(sm.get(b"l").expect("get"), None);
    // A restore forgets the index before it starts.
    let snap = {
        let mut other = KvStateMachine::in_memory();
        run(&mut other, 1, &[put("z", "9")]);
        snapshot_of(&mut other)
    };
    sm.restore(&mut &snap[..]).expect("restore");
    drop(sm);
    let mut sm = KvStateMachine::with_backend(open()).expect("reopen");
    assert_eq!(sm.applied_index(), None, "a restore without its flush");
    sm.restore(&mut &snap[..]).expect("restore");
    sm.flush(LogIndex(7)).expect("flush");
    drop(sm);
    let sm = KvStateMachine::with_backend(open()).expect("reopen");
    assert_eq!(sm.applied_index(), Some(LogIndex(7)));
    assert_eq!(keys(&sm.range(&range("\0", &[0])).expect("all")), ["z"]);
}

/// The default storage kind: a new store gets the record log; one made
/// on sled before it (sled's `conf` file in `kv`) stays on sled.
#[cfg(feature = "sled")]
#[test]
fn a_new_store_gets_the_record_log_and_one_made_on_sled_stays_on_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = |name: &str| dengine_runtime::Config {
        storage: dengine_runtime::StorageKind::Sled,
        data_dir: dir.path().join(name),
        ..Default::default()
    };
    let files = |name: &str| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join(name).join("kv"))
            .expect("the store's directory")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let everything = |sm: &KvStateMachine| keys(&sm.range(&range("\0", &[0])).expect("all"));

    let mut sm = KvStateMachine::open(&config("new")).expect("open");
    run(&mut sm, 1, &[put("a", "1")]);
    drop(sm);
    assert_eq!(files("new"), ["0000000000000001.kvlog"]);
    assert_eq!(
        everything(&KvStateMachine::open(&config("new")).expect("reopen")),
        ["a"]
    );

    let on_sled = dir.path().join("old").join("kv");
    let mut sm = KvStateMachine::with_backend(Box::new(SledBackend::open(&on_sled).expect("sled")))
        .expect("open");
    run(&mut sm, 1, &[put("b", "2")]);
    drop(sm);
    let sm = KvStateMachine::open(&config("old")).expect("reopen");
    assert_eq!(everything(&sm), ["b"]);
    drop(sm);
    assert!(files("old").iter().any(|f| f == "conf"));
    assert!(!files("old").iter().any(|f| f.ends_with(".kvlog")));
}

/// A checkpoint writes the batches waiting in memory and syncs them: the
/// log may be compacted behind the index it reports, which a store
/// opened after a crash (nothing written at drop) reports at least.
#[test]
fn a_checkpoint_writes_what_waits_in_memory_and_reports_its_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let open = || {
        KvStateMachine::with_backend(Box::new(
            crate::LogBackend::open(&path).expect("record log"),
        ))
        .expect("open")
    };
    let mut sm = open();
    sm.write_after = std::time::Duration::from_secs(3600);
    run(&mut sm, 1, &[put("a", "1"), put("b", "2")]);
    assert_eq!(sm.applied_index(), None, "the batch waits in memory");
    assert_eq!(sm.checkpoint().expect("checkpoint"), Some(LogIndex(2)));
    assert_eq!(sm.applied_index(), Some(LogIndex(2)));
    run(&mut sm, 3, &[put("c", "waits")]);
    // A crash: the store writes nothing more.
    std::mem::forget(sm);
    let sm = open();
    assert_eq!(sm.applied_index(), Some(LogIndex(2)));
    assert_eq!(
        keys(&sm.range(&range("\0", &[0])).expect("all")),
        ["a", "b"]
    );

    let mut in_memory = KvStateMachine::in_memory();
    run(&mut in_memory, 1, &[put("a", "1")]);
    assert_eq!(
        in_memory.checkpoint().expect("checkpoint"),
        None,
        "a store in memory has its data written at snapshots"
    );
}

#[test]
fn on_the_record_log_flushed_batches_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    survives_restart(&|| Box::new(crate::LogBackend::open(&path).expect("record log")));
}

#[cfg(feature = "sled")]
#[test]
fn on_sled_flushed_batches_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    survives_restart(&|| Box::new(SledBackend::open(&path).expect("sled")));
}

/// Flushed writes wait in memory (reads see them) until enough gather;
/// a clean close writes them; a store dropped in the middle of a batch
/// writes nothing, and its stored index says what the log must replay.
#[cfg(feature = "sled")]
#[test]
fn on_sled_flushed_writes_wait_in_memory_until_written_or_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = || {
        KvStateMachine::with_backend(Box::new(SledBackend::open(dir.path()).expect("sled")))
            .expect("open")
    };
    {
        let mut sm = open();
        run(&mut sm, 1, &[put("a", "1"), put("b", "2")]);
        assert_eq!(sm.applied_index(), None, "written at once");
        assert_eq!(
            keys(&sm.range(&range("\0", &[0])).expect("all")),
            ["a", "b"]
        );
        let mut snapshot = Vec::new();
        sm.snapshot(&mut snapshot)
            .expect("a snapshot of writes not yet written");
        let mut copy = KvStateMachine::in_memory();
        copy.restore(&mut snapshot.as_slice()).expect("restore");
        assert_eq!(
            keys(&copy.range(&range("\0", &[0])).expect("all")),
            ["a", "b"]
        );
        // Applied, not flushed: the close writes nothing.
        sm.apply(EntryId::new(Term(1), LogIndex(3)), &put("c", "3").encode())
            .expect("apply");
    }
    let mut sm = open();
    assert_eq!(sm.applied_index(), None);
    assert_eq!(sm.revision(), 1, "the log replays everything");
    run(&mut sm, 1, &[put("a", "1"), put("b", "2")]);
    drop(sm);
    let sm = open();
    assert_eq!(
        sm.applied_index(),
        Some(LogIndex(2)),
        "a clean close writes"
    );
    assert_eq!(
        keys(&sm.range(&range("\0", &[0])).expect("all")),
        ["a", "b"]
    );
}

#[cfg(feature = "rocksdb")]
#[test]
fn on_rocksdb_flushed_batches_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    survives_restart(&|| Box::new(RocksBackend::open(&path).expect("rocksdb")));
}

/// Bytes of today's formats, committed with the code: a change that makes
/// old commands, records or snapshots decode differently (or not at all)
/// fails here. Never edit these; a new format version adds new fixtures
/// next to them.
mod fixtures {
    use super::*;

    /// The `Put`, `DeleteRange` and `Txn` of [`commands`], command format 1.
    const COMMANDS: [&str; 3] = [
        "0100016b017601",
        "01010161016300",
        "010204016100000200016101000104010162016302d8040201630003017803020001610100020100010170017100\
         010201640001",
    ];
    /// The record of [`kv`], record format 1 (CRC32, then the body).
    const RECORD: &str = "b83ad2ac0102000000000000000500000000000000030000000000000076";
    /// The store's own record at index 7, revision 5, format 1.
    const META: &str = "efcc50fb0107000000000000000500000000000000";
    /// A snapshot (format `2`) of a store after `a = 1`, then `b = 2`.
    const SNAPSHOT: &str = "444b5632030000000000000001000000611e00000046ba0e4a01020000000000000002000000\
         0000000001000000000000003101000000621e000000b1b02af1010300000000000000030000000000000001000000\
         0000000032ffffffff";

    fn unhex(s: &str) -> Vec<u8> {
        let s: Vec<u8> = s.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
        s.chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).expect("ascii"), 16).expect("hex"))
            .collect()
    }

    fn commands() -> Vec<KvCommand> {
        let put = KvCommand::Put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            prev_kv: true,
            ..Default::default()
        });
        let delete = KvCommand::DeleteRange(DeleteRangeRequest {
            key: b"a".to_vec(),
            range_end: b"c".to_vec(),
            prev_kv: false,
        });
        let cmp = |key: &[u8], range_end: &[u8], target, op| Compare {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            target,
            op,
        };
        let txn = KvCommand::Txn(TxnRequest {
            compare: vec![
                cmp(b"a", b"", CompareTarget::Version(1), CompareOp::Equal),
                cmp(
                    b"a",
                    &[0],
                    CompareTarget::CreateRevision(2),
                    CompareOp::Greater,
                ),
                cmp(b"b", b"c", CompareTarget::ModRevision(300), CompareOp::Less),
                cmp(
                    b"c",
                    b"",
                    CompareTarget::Value(b"x".to_vec()),
                    CompareOp::NotEqual,
                ),
            ],
            success: vec![
                TxnOp::Range(RangeRequest {
                    key: b"a".to_vec(),
                    range_end: vec![0],
                    limit: 2,
                    keys_only: true,
                    count_only: false,
                    revision: 0,
                }),
                TxnOp::Put(PutRequest {
                    key: b"p".to_vec(),
                    value: b"q".to_vec(),
                    ..Default::default()
                }),
            ],
            failure: vec![TxnOp::DeleteRange(DeleteRangeRequest {
                key: b"d".to_vec(),
                range_end: vec![],
                prev_kv: true,
            })],
        });
        vec![put, delete, txn]
    }

    fn kv() -> KeyValue {
        KeyValue {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            lease: 0,
        }
    }

    #[test]
    fn commands_of_format_1_decode() {
        for (hex, want) in COMMANDS.iter().zip(commands()) {
            let bytes = unhex(hex);
            assert_eq!(KvCommand::decode(&bytes), Ok(want.clone()));
            // Today's encoding is of format 3 (pinned by `COMMANDS_3`).
            assert_eq!(want.encode()[0], 3, "{want:?}");
        }
    }

    /// The commands of [`commands`] (those of `COMMANDS`, the new fields
    /// at their defaults), then commands with every field and variant that
    /// format 2 added, command format 2.
    const COMMANDS_2: [&str; 6] = [
        "0200016b017601000000",
        "02010161016300",
        "020204016100000200016101000104010162016302d8040201630003017803020001610100020100010170017100\
         000000010201640001",
        "0200016b0000010100",
        "0200016b0176010000d804",
        "020201016100040e0102030101620004010301010162000001000001030000010201630000000161000000000101\
         017001710000000a",
    ];

    fn commands_2() -> Vec<KvCommand> {
        let mut cmds = commands();
        cmds.push(KvCommand::Put(PutRequest {
            key: b"k".to_vec(),
            ignore_value: true,
            ignore_lease: true,
            ..Default::default()
        }));
        cmds.push(KvCommand::Put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            prev_kv: true,
            lease: 300,
            ..Default::default()
        }));
        let cmp = |key: &[u8], target, op| Compare {
            key: key.to_vec(),
            range_end: vec![],
            target,
            op,
        };
        cmds.push(KvCommand::Txn(TxnRequest {
            compare: vec![cmp(b"a", CompareTarget::Lease(7), CompareOp::Greater)],
            success: vec![
                TxnOp::Txn(TxnRequest {
                    compare: vec![cmp(b"b", CompareTarget::Lease(-1), CompareOp::NotEqual)],
                    success: vec![TxnOp::Put(PutRequest {
                        key: b"b".to_vec(),
                        ignore_value: true,
                        ..Default::default()
                    })],
                    failure: vec![TxnOp::Txn(TxnRequest {
                        compare: vec![],
                        success: vec![],
                        failure: vec![TxnOp::DeleteRange(DeleteRangeRequest {
                            key: b"c".to_vec(),
                            range_end: vec![],
                            prev_kv: false,
                        })],
                    })],
                }),
                TxnOp::Range(RangeRequest {
                    key: b"a".to_vec(),
                    ..Default::default()
                }),
            ],
            failure: vec![TxnOp::Put(PutRequest {
                key: b"p".to_vec(),
                value: b"q".to_vec(),
                lease: 5,
                ..Default::default()
            })],
        }));
        cmds
    }

    #[test]
    fn commands_of_format_2_decode() {
        assert_eq!(COMMANDS_2.len(), commands_2().len());
        for (hex, want) in COMMANDS_2.iter().zip(commands_2()) {
            let bytes = unhex(hex);
            assert_eq!(KvCommand::decode(&bytes), Ok(want.clone()));
        }
    }

    /// The commands of [`commands_2`], then commands with every field and
    /// variant that format 3 added, command format 3.
    const COMMANDS_3: [&str; 8] = [
        "0300016b017601000000",
        "03010161016300",
        "030204016100000200016101000104010162016302d80402016300030178030200016101000201000001017001\
         7100000000010201640001",
        "0300016b0000010100",
        "0300016b0176010000d804",
        "030201016100040e0102030101620004010301010162000001000001030000010201630000000161000000000001\
         01017001710000000a",
        "0302000100016101000000001200",
        "0303d804",
    ];

    fn commands_3() -> Vec<KvCommand> {
        let mut cmds = commands_2();
        cmds.push(KvCommand::Txn(TxnRequest {
            compare: vec![],
            success: vec![TxnOp::Range(RangeRequest {
                key: b"a".to_vec(),
                range_end: vec![0],
                revision: 9,
                ..Default::default()
            })],
            failure: vec![],
        }));
        cmds.push(KvCommand::Compact(CompactRequest { revision: 300 }));
        cmds
    }

    #[test]
    fn commands_of_format_3_decode_and_are_todays_encoding() {
        assert_eq!(COMMANDS_3.len(), commands_3().len());
        for (hex, want) in COMMANDS_3.iter().zip(commands_3()) {
            let bytes = unhex(hex);
            assert_eq!(KvCommand::decode(&bytes), Ok(want.clone()));
            assert_eq!(want.encode(), bytes, "today's encoding of {want:?}");
        }
    }

    #[test]
    fn format_1_never_held_what_format_2_added() {
        // The txn of `COMMANDS` (and of `COMMANDS_2`) with its first
        // comparison's target made a `Lease` (the variant after `Value`),
        // and with its failure branch's delete made an empty `Txn` (the
        // variant after `DeleteRange`): format 2 only.
        let with_lease = |hex: &str| {
            let mut bytes = unhex(hex);
            assert_eq!(bytes[6..8], [0, 2], "Version(1)");
            bytes[6] = 4;
            bytes
        };
        let with_txn = |hex: &str| {
            let mut bytes = unhex(hex);
            let at = bytes.len() - 5;
            assert_eq!(bytes[at..], [2, 1, b'd', 0, 1], "the delete of d");
            bytes.truncate(at);
            bytes.extend_from_slice(&[3, 0, 0, 0]);
            bytes
        };
        for bytes in [with_lease(COMMANDS[2]), with_txn(COMMANDS[2])] {
            let e = KvCommand::decode(&bytes).expect_err("not of format 1");
            assert!(e.to_string().contains("key-value command"), "{e}");
        }
        let Ok(KvCommand::Txn(t)) = KvCommand::decode(&with_lease(COMMANDS_2[2])) else {
            panic!("format 2 has lease comparisons")
        };
        assert_eq!(t.compare[0].target, CompareTarget::Lease(1));
        let Ok(KvCommand::Txn(t)) = KvCommand::decode(&with_txn(COMMANDS_2[2])) else {
            panic!("format 2 has nested transactions")
        };
        assert_eq!(t.failure, [TxnOp::Txn(TxnRequest::default())]);
    }

    #[test]
    fn commands_of_another_format_version_are_refused_and_change_nothing() {
        let mut sm = KvStateMachine::in_memory();
        for version in [0, 4, 255] {
            let mut bytes = unhex(COMMANDS_2[0]);
            bytes[0] = version;
            let Err(KvError::InvalidRequest(e)) = KvCommand::decode(&bytes) else {
                panic!("a command of version {version} decoded");
            };
            assert!(
                e.contains(&format!("format version {version},"))
                    && e.contains("reads versions 1 to 3"),
                "{e}"
            );
            let out = sm.apply(EntryId::new(Term(1), LogIndex(1)), &bytes);
            assert!(matches!(out, Err(KvError::InvalidRequest(_))), "{out:?}");
            assert_eq!((sm.revision(), sm.get(b"k")), (1, Ok(None)));
        }
        assert!(matches!(
            KvCommand::decode(&[]),
            Err(KvError::InvalidRequest(_))
        ));
        // A body of the other version is not mistaken for this one's.
        let mut v1_as_2 = unhex(COMMANDS[0]);
        v1_as_2[0] = 2;
        assert!(KvCommand::decode(&v1_as_2).is_err());
    }

    #[test]
    fn records_of_format_1_decode_and_others_are_refused() {
        let bytes = unhex(RECORD);
        assert_eq!(record::decode_v1(b"k", &bytes), Ok(kv()));
        let mut body = dengine_core::codec::open(&bytes).expect("sealed").to_vec();
        body[0] = 2;
        let e = record::decode_v1(b"k", &dengine_core::codec::seal(&body)).expect_err("version 2");
        assert!(e.to_string().contains("format version 2"), "{e}");

        let meta = record::decode_meta(&unhex(META)).expect("meta");
        assert_eq!(
            (meta.applied, meta.revision, meta.compacted, meta.v1),
            (LogIndex(7), 5, 5, true)
        );
        let mut body = dengine_core::codec::open(&unhex(META))
            .expect("sealed")
            .to_vec();
        body[0] = 9;
        let e = record::decode_meta(&dengine_core::codec::seal(&body)).expect_err("version 9");
        assert!(e.to_string().contains("format version 9"), "{e}");
    }

    /// A record of today's format (2) of [`kv`] with lease 7, and a
    /// tombstone of `k`.
    const RECORD_2: &str =
        "7f6825ef0200010000006b02000000000000000300000000000000070000000000000076";
    const TOMBSTONE_2: &str =
        "ffb744390201010000006b000000000000000000000000000000000000000000000000";
    /// The store's own record at index 7, revision 5, compacted 3, format 2.
    const META_2: &str = "50c567bc02070000000000000005000000000000000300000000000000";

    #[test]
    fn records_of_format_2_decode_and_are_todays_encoding() {
        let rev = Revision { main: 5, sub: 1 };
        let kv = KeyValue { lease: 7, ..kv() };
        assert_eq!(record::encode(&kv, false), unhex(RECORD_2));
        assert_eq!(
            record::decode(rev, &unhex(RECORD_2))
                .expect("record")
                .to_kv(),
            kv
        );
        let gone = KeyValue {
            key: b"k".to_vec(),
            ..Default::default()
        };
        assert_eq!(record::encode(&gone, true), unhex(TOMBSTONE_2));
        let tombstone = unhex(TOMBSTONE_2);
        let t = record::decode(rev, &tombstone).expect("tombstone");
        assert!(t.write.tombstone);
        assert_eq!(record::encode_meta(LogIndex(7), 5, 3), unhex(META_2));
    }

    #[test]
    fn a_store_of_format_1_is_converted_to_a_history_when_it_opens() {
        // `a = 1` at 2, `b = 2` and `c = 3` in one txn at 4 (`b` made at
        // 3), the store at revision 4, index 7.
        let v1 = |key: &[u8], value: &[u8], create: i64, m: i64, version: i64| {
            let mut body = vec![1u8];
            for i in [create, m, version] {
                body.extend_from_slice(&i.to_le_bytes());
            }
            body.extend_from_slice(value);
            let mut k = vec![b'k'];
            k.extend_from_slice(key);
            Change::Put(k, dengine_core::codec::seal(&body))
        };
        let mut backend = MemoryBackend::default();
        let mut meta = vec![1u8];
        meta.extend_from_slice(&7u64.to_le_bytes());
        meta.extend_from_slice(&4i64.to_le_bytes());
        backend
            .write(vec![
                v1(b"a", b"1", 2, 2, 1),
                v1(b"b", b"2", 3, 4, 2),
                v1(b"c", b"3", 4, 4, 1),
                Change::Put(b"m".to_vec(), dengine_core::codec::seal(&meta)),
            ])
            .expect("write");
        let sm = KvStateMachine::with_backend(Box::new(backend)).expect("converted");
        assert_eq!(sm.revision(), 4);
        assert_eq!(sm.compacted_revision(), 4);
        let all = sm.range(&range("\0", &[0])).expect("all");
        let got: Vec<_> = all
            .kvs
            .iter()
            .map(|kv| {
                (
                    kv.key.clone(),
                    kv.value.clone(),
                    kv.create_revision,
                    kv.mod_revision,
                    kv.version,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (b"a".to_vec(), b"1".to_vec(), 2, 2, 1),
                (b"b".to_vec(), b"2".to_vec(), 3, 4, 2),
                (b"c".to_vec(), b"3".to_vec(), 4, 4, 1),
            ]
        );
        let at3 = RangeRequest {
            revision: 3,
            ..range("\0", &[0])
        };
        assert_eq!(sm.range(&at3), Err(KvError::Compacted));
        // Nothing of format 1 is left.
        let mut old = 0;
        sm.backend
            .scan(b"k", Some(b"l"), &mut |_, _| {
                old += 1;
                Ok(true)
            })
            .expect("scan");
        assert_eq!(old, 0);
    }

    #[test]
    fn a_store_of_records_before_versions_is_refused_when_it_opens() {
        // The store's own record as it was before versions: two integers.
        let mut old = 7u64.to_le_bytes().to_vec();
        old.extend_from_slice(&5i64.to_le_bytes());
        let mut backend = MemoryBackend::default();
        backend
            .write(vec![Change::Put(
                b"m".to_vec(),
                dengine_core::codec::seal(&old),
            )])
            .expect("write");
        let e = KvStateMachine::with_backend(Box::new(backend)).expect_err("refused");
        assert!(e.to_string().contains("older version"), "{e}");
    }

    #[test]
    fn a_snapshot_of_format_2_restores() {
        let bytes = unhex(SNAPSHOT);
        let mut sm = KvStateMachine::in_memory();
        sm.restore(&mut &bytes[..]).expect("restore");
        sm.flush(LogIndex(2)).expect("flush");
        assert_eq!(sm.revision(), 3);
        assert_eq!(sm.compacted_revision(), 3, "no history before");
        let kv = |k: &str, v: &str, rev| KeyValue {
            key: k.into(),
            value: v.into(),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: 0,
        };
        let all = sm.range(&range("\0", &[0])).expect("all");
        assert_eq!(all.kvs, [kv("a", "1", 2), kv("b", "2", 3)]);
    }

    /// A snapshot (format `3`) of a store after `a = 1`, then `b = 2`.
    const SNAPSHOT_3: &str = "444b563303000000000000000000000000000000010200000000000000000000002400\
         00009127a3f7020001000000610200000000000000010000000000000000000000000000003101030000000000\
         00000000000024000000dd0b7639020001000000620300000000000000010000000000000000000000000000003200\
         00";

    /// The same store's snapshot in format `4`: format 3 with an empty
    /// list of members and no alarm after the leases.
    fn snapshot_4() -> Vec<u8> {
        let mut bytes = unhex(SNAPSHOT_3);
        bytes[3] = b'4';
        bytes.extend([0, 0]);
        bytes
    }

    /// The same store's snapshot in format `5`: format 4 with the empty
    /// auth store (4 bytes of postcard: off, revision 0, no users, no
    /// roles).
    fn snapshot_5() -> Vec<u8> {
        let mut bytes = snapshot_4();
        bytes[3] = b'5';
        bytes.extend([4, 0, 0, 0, 0, 0, 0, 0]);
        bytes
    }

    #[test]
    fn snapshots_of_formats_3_to_5_restore_and_5_is_todays() {
        let mut again = KvStateMachine::in_memory();
        run(&mut again, 1, &[put("a", "1"), put("b", "2")]);
        assert_eq!(snapshot_of(&mut again), snapshot_5(), "today's snapshot");
        for bytes in [unhex(SNAPSHOT_3), snapshot_4(), snapshot_5()] {
            let mut sm = KvStateMachine::in_memory();
            sm.restore(&mut &bytes[..]).expect("restore");
            sm.flush(LogIndex(2)).expect("flush");
            assert_eq!(sm.revision(), 3);
            assert_eq!(sm.compacted_revision(), 0);
            let at2 = RangeRequest {
                revision: 2,
                ..range("\0", &[0])
            };
            assert_eq!(keys(&sm.range(&at2).expect("at 2")), ["a"]);
        }
    }

    #[test]
    fn a_snapshot_of_another_format_is_refused_before_anything_is_forgotten() {
        let mut sm = KvStateMachine::in_memory();
        one(&mut sm, 1, put("keep", "me"));
        for version in [b'1', b'6'] {
            let mut bytes = unhex(SNAPSHOT);
            bytes[3] = version;
            let e = sm.restore(&mut &bytes[..]).expect_err("refused");
            let want = format!("format version {}", char::from(version));
            assert!(e.to_string().contains(&want), "{e}");
            assert_eq!(sm.get(b"keep").expect("get").expect("kept").value, b"me");
        }
    }
}

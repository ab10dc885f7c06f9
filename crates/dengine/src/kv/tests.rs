use super::*;
use crate::Term;

fn put(k: &str, v: &str) -> KvCommand {
    KvCommand::Put(PutRequest {
        key: k.into(),
        value: v.into(),
        prev_kv: true,
    })
}

fn del(k: &str, end: &[u8]) -> KvCommand {
    KvCommand::DeleteRange(DeleteRangeRequest {
        key: k.into(),
        range_end: end.to_vec(),
        prev_kv: true,
    })
}

fn range(k: &str, end: &[u8]) -> RangeRequest {
    RangeRequest {
        key: k.into(),
        range_end: end.to_vec(),
        ..Default::default()
    }
}

/// Applies `cmds` as one batch at indexes from `first`, then flushes.
fn run(
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

fn one(sm: &mut KvStateMachine, index: u64, cmd: KvCommand) -> KvResponse {
    run(sm, index, &[cmd]).remove(0).expect("applies")
}

fn keys(r: &RangeResponse) -> Vec<String> {
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
                    prev_kv: false,
                }),
                TxnOp::Put(PutRequest {
                    key: b"b".to_vec(),
                    value: new.into(),
                    prev_kv: false,
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
    let out = run(&mut sm, 2, &[txn, dup, put("", "x")]);
    assert!(
        out.iter()
            .all(|r| matches!(r, Err(KvError::InvalidRequest(_)))),
        "{out:?}"
    );
    assert!(matches!(
        sm.apply(EntryId::new(Term(1), LogIndex(5)), b"\xff garbage"),
        Err(KvError::InvalidRequest(_))
    ));
    assert_eq!(sm.range(&range("\0", &[0])).expect("all"), before);
    assert_eq!(sm.revision(), 2);
}

fn snapshot_of(sm: &mut KvStateMachine) -> Vec<u8> {
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
    let mut huge = b"DKV1".to_vec();
    huge.extend_from_slice(&2i64.to_le_bytes());
    huge.extend_from_slice(&(u32::MAX - 1).to_le_bytes());
    huge.extend_from_slice(b"k");
    assert!(c.restore(&mut &huge[..]).is_err(), "a huge key length");
}

#[test]
fn damaged_records_are_found_when_the_store_opens() {
    let mut backend = MemoryBackend::default();
    let mut rec = encode_record(&KeyValue {
        key: b"a".to_vec(),
        value: b"v".to_vec(),
        create_revision: 2,
        mod_revision: 2,
        version: 1,
    });
    let last = rec.len() - 1;
    rec[last] ^= 1;
    backend
        .write(vec![(record_key(b"a"), Some(rec))])
        .expect("write");
    let e = KvStateMachine::with_backend(Box::new(backend)).expect_err("refused");
    assert!(
        e.to_string().contains("corrupt") && e.to_string().contains("\"a\""),
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

#[cfg(feature = "sled")]
#[test]
fn on_sled_flushed_batches_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    survives_restart(&|| Box::new(SledBackend::open(&path).expect("sled")));
}

#[cfg(feature = "rocksdb")]
#[test]
fn on_rocksdb_flushed_batches_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    survives_restart(&|| Box::new(RocksBackend::open(&path).expect("rocksdb")));
}

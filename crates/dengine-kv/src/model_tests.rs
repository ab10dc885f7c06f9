//! The store against a model of etcd's semantics, over random commands
//! applied in random batches (so staged writes are read back before they
//! reach the backend) and across snapshot round trips.
//!
//! The model shares no code with the store: its range, compare and
//! validation rules are written here from etcd's documentation (the
//! `rpc.proto` comments and the v3 API reference) and its request checks,
//! so a bug in the store's own `compare`, `validate` or range code shows
//! as a difference. Every response is compared whole: revisions, `prev_kv`
//! of puts, deleted counts and `prev_kvs`, the ranges run inside
//! transactions, and the errors of refused commands.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use dengine_runtime::Term;

/// etcd's error for a request without a key (`ErrGRPCEmptyKey`).
const EMPTY_KEY: &str = "key is not provided";
/// etcd's error for a transaction branch that writes a key twice
/// (`ErrGRPCDuplicateKey`).
const DUPLICATE_KEY: &str = "duplicate key given in txn request";

/// etcd's KV semantics on a sorted map, written as plainly as possible.
#[derive(Clone, Debug)]
struct Model {
    kvs: BTreeMap<Vec<u8>, KeyValue>,
    revision: i64,
}

/// Whether the request range `(key, range_end)` holds `k`. etcd: an empty
/// `range_end` is the key alone; `"\0"` is every key `>= key`; anything
/// else is `[key, range_end)` (nothing if `range_end <= key`).
fn covers(key: &[u8], range_end: &[u8], k: &[u8]) -> bool {
    if range_end.is_empty() {
        k == key
    } else if range_end == b"\0" {
        k >= key
    } else {
        key <= k && k < range_end
    }
}

/// etcd checks these before a request runs (`checkPutRequest`,
/// `checkDeleteRequest`, `checkTxnRequest`, then `checkIntervals` on each
/// branch): no empty key anywhere (compares, then the success ops, then
/// the failure ops); within one branch, no key put twice and no put of a
/// key that a delete of the same branch covers ("it is not allowed to
/// modify the same key several times within one txn").
fn check(cmd: &KvCommand) -> Result<(), KvError> {
    let empty = || Err(KvError::InvalidRequest(EMPTY_KEY.into()));
    let op_key = |op: &TxnOp| match op {
        TxnOp::Range(r) => r.key.is_empty(),
        TxnOp::Put(p) => p.key.is_empty(),
        TxnOp::DeleteRange(d) => d.key.is_empty(),
    };
    match cmd {
        KvCommand::Put(p) if p.key.is_empty() => empty(),
        KvCommand::DeleteRange(d) if d.key.is_empty() => empty(),
        KvCommand::Put(_) | KvCommand::DeleteRange(_) => Ok(()),
        KvCommand::Txn(t) => {
            if t.compare.iter().any(|c| c.key.is_empty())
                || t.success.iter().chain(&t.failure).any(op_key)
            {
                return empty();
            }
            for branch in [&t.success, &t.failure] {
                let deletes: Vec<&DeleteRangeRequest> = branch
                    .iter()
                    .filter_map(|op| match op {
                        TxnOp::DeleteRange(d) => Some(d),
                        _ => None,
                    })
                    .collect();
                let mut put = BTreeSet::new();
                for op in branch {
                    let TxnOp::Put(p) = op else { continue };
                    let deleted = deletes.iter().any(|d| covers(&d.key, &d.range_end, &p.key));
                    if !put.insert(p.key.clone()) || deleted {
                        return Err(KvError::InvalidRequest(DUPLICATE_KEY.into()));
                    }
                }
            }
            Ok(())
        }
    }
}

impl Model {
    fn new() -> Model {
        Model {
            kvs: BTreeMap::new(),
            revision: 1,
        }
    }

    fn hits(&self, key: &[u8], range_end: &[u8]) -> Vec<KeyValue> {
        self.kvs
            .values()
            .filter(|kv| covers(key, range_end, &kv.key))
            .cloned()
            .collect()
    }

    /// etcd's Range: `count` is every key in the range; at most `limit`
    /// keys (0: all) come back, `more` telling whether some were left out;
    /// `count_only` returns no keys (and `more` false); `keys_only` leaves
    /// the values out.
    fn range(&self, r: &RangeRequest) -> RangeResponse {
        let hits = self.hits(&r.key, &r.range_end);
        let count = hits.len();
        if r.count_only {
            return RangeResponse {
                kvs: Vec::new(),
                count: count as i64,
                more: false,
            };
        }
        let shown = if r.limit == 0 {
            count
        } else {
            count.min(r.limit as usize)
        };
        let kvs = hits[..shown]
            .iter()
            .map(|kv| KeyValue {
                value: if r.keys_only {
                    Vec::new()
                } else {
                    kv.value.clone()
                },
                ..kv.clone()
            })
            .collect();
        RangeResponse {
            kvs,
            count: count as i64,
            more: shown < count,
        }
    }

    /// etcd's `compareKV` on one key (or the zero key for a missing one).
    fn compare_kv(kv: &KeyValue, target: &CompareTarget, op: CompareOp) -> bool {
        let (mine, theirs): (Vec<u8>, Vec<u8>) = match target {
            CompareTarget::Value(v) => (kv.value.clone(), v.clone()),
            // Big-endian with the sign bit flipped sorts as the integer.
            CompareTarget::Version(n) => (sortable(kv.version), sortable(*n)),
            CompareTarget::CreateRevision(n) => (sortable(kv.create_revision), sortable(*n)),
            CompareTarget::ModRevision(n) => (sortable(kv.mod_revision), sortable(*n)),
        };
        match op {
            CompareOp::Equal => mine == theirs,
            CompareOp::NotEqual => mine != theirs,
            CompareOp::Greater => mine > theirs,
            CompareOp::Less => mine < theirs,
        }
    }

    /// etcd's `applyCompare`: every key of the range must pass; with no
    /// key, a value comparison fails and the others see zeros.
    fn holds(&self, c: &Compare) -> bool {
        let hits = self.hits(&c.key, &c.range_end);
        if hits.is_empty() {
            return match c.target {
                CompareTarget::Value(_) => false,
                _ => Model::compare_kv(&KeyValue::default(), &c.target, c.op),
            };
        }
        hits.iter().all(|kv| Model::compare_kv(kv, &c.target, c.op))
    }

    fn put(&mut self, rev: i64, p: &PutRequest) -> OpResponse {
        let prev = self.kvs.get(&p.key).cloned();
        let kv = KeyValue {
            key: p.key.clone(),
            value: p.value.clone(),
            create_revision: prev.as_ref().map_or(rev, |kv| kv.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(0, |kv| kv.version) + 1,
        };
        self.kvs.insert(p.key.clone(), kv);
        OpResponse::Put {
            prev_kv: if p.prev_kv { prev } else { None },
        }
    }

    fn delete(&mut self, d: &DeleteRangeRequest) -> OpResponse {
        let gone = self.hits(&d.key, &d.range_end);
        for kv in &gone {
            self.kvs.remove(&kv.key);
        }
        OpResponse::DeleteRange {
            deleted: gone.len() as i64,
            prev_kvs: if d.prev_kv { gone } else { Vec::new() },
        }
    }

    /// One command: refused whole, or run at one new revision, which the
    /// store takes only if something changed (a put, or a delete that
    /// found a key).
    fn apply(&mut self, cmd: &KvCommand) -> Result<KvResponse, KvError> {
        check(cmd)?;
        let before = self.kvs.clone();
        let rev = self.revision + 1;
        let mut writes = 0;
        let mut write = |model: &mut Model, op: &TxnOp| match op {
            TxnOp::Range(r) => OpResponse::Range(model.range(r)),
            TxnOp::Put(p) => {
                writes += 1;
                model.put(rev, p)
            }
            TxnOp::DeleteRange(d) => {
                let out = model.delete(d);
                if let OpResponse::DeleteRange { deleted, .. } = out {
                    writes += deleted;
                }
                out
            }
        };
        let op = match cmd {
            KvCommand::Put(p) => write(self, &TxnOp::Put(p.clone())),
            KvCommand::DeleteRange(d) => write(self, &TxnOp::DeleteRange(d.clone())),
            KvCommand::Txn(t) => {
                let succeeded = t.compare.iter().all(|c| self.holds(c));
                let branch = if succeeded { &t.success } else { &t.failure };
                let responses = branch.iter().map(|op| write(self, op)).collect();
                OpResponse::Txn {
                    succeeded,
                    responses,
                }
            }
        };
        if writes > 0 {
            self.revision = rev;
        } else {
            assert_eq!(self.kvs, before, "no write, no change");
        }
        Ok(KvResponse {
            revision: self.revision,
            op,
        })
    }
}

/// `n` as bytes that sort as the integers do.
fn sortable(n: i64) -> Vec<u8> {
    ((n as u64) ^ (1 << 63)).to_be_bytes().to_vec()
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => Just(Vec::new()),
        8 => prop::sample::select(vec![
            b"a".to_vec(),
            b"ab".to_vec(),
            b"b".to_vec(),
            b"c".to_vec(),
        ]),
    ]
}

fn range_end() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![
        vec![],
        vec![],
        vec![0],
        b"a".to_vec(),
        b"ab".to_vec(),
        b"b".to_vec(),
        b"c".to_vec(),
        b"d".to_vec(),
    ])
}

fn put() -> impl Strategy<Value = PutRequest> {
    (key(), 0u8..3, any::<bool>()).prop_map(|(key, v, prev_kv)| PutRequest {
        key,
        value: vec![v],
        prev_kv,
    })
}

fn delete() -> impl Strategy<Value = DeleteRangeRequest> {
    (key(), range_end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| DeleteRangeRequest {
        key,
        range_end,
        prev_kv,
    })
}

fn range() -> impl Strategy<Value = RangeRequest> {
    (
        key(),
        range_end(),
        0u64..4,
        any::<bool>(),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(key, range_end, limit, keys_only, count_only)| RangeRequest {
                key,
                range_end,
                limit,
                keys_only,
                count_only,
            },
        )
}

fn compare_one() -> impl Strategy<Value = Compare> {
    let target = prop_oneof![
        (-1i64..4).prop_map(CompareTarget::Version),
        (-1i64..12).prop_map(CompareTarget::ModRevision),
        (-1i64..12).prop_map(CompareTarget::CreateRevision),
        prop_oneof![Just(vec![]), (0u8..3).prop_map(|v| vec![v])].prop_map(CompareTarget::Value),
    ];
    let op = prop::sample::select(vec![
        CompareOp::Equal,
        CompareOp::NotEqual,
        CompareOp::Greater,
        CompareOp::Less,
    ]);
    (key(), range_end(), target, op).prop_map(|(key, range_end, target, op)| Compare {
        key,
        range_end,
        target,
        op,
    })
}

fn txn_op() -> impl Strategy<Value = TxnOp> {
    prop_oneof![
        put().prop_map(TxnOp::Put),
        delete().prop_map(TxnOp::DeleteRange),
        range().prop_map(TxnOp::Range),
    ]
}

fn command() -> impl Strategy<Value = KvCommand> {
    prop_oneof![
        put().prop_map(KvCommand::Put),
        delete().prop_map(KvCommand::DeleteRange),
        (
            prop::collection::vec(compare_one(), 0..3),
            prop::collection::vec(txn_op(), 0..4),
            prop::collection::vec(txn_op(), 0..4),
        )
            .prop_map(|(compare, success, failure)| KvCommand::Txn(TxnRequest {
                compare,
                success,
                failure,
            })),
    ]
}

/// Every key the store holds, read through its own range.
fn contents(sm: &KvStateMachine) -> Vec<KeyValue> {
    sm.range(&RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    })
    .expect("range")
    .kvs
}

/// Runs `cmds` on the store and the model in batches cut by `cuts`,
/// comparing every response, and after every batch the contents, the
/// `reads` and a snapshot copy of the store.
fn same_as_model(
    mut sm: KvStateMachine,
    cmds: Vec<KvCommand>,
    cuts: &[usize],
    reads: &[RangeRequest],
) -> Result<(), TestCaseError> {
    let mut model = Model::new();
    let mut index = 0u64;
    let mut cmds = cmds.into_iter();
    for cut in cuts.iter().cycle() {
        let batch: Vec<KvCommand> = cmds.by_ref().take(*cut).collect();
        if batch.is_empty() {
            break;
        }
        for cmd in &batch {
            index += 1;
            let got = sm.apply(EntryId::new(Term(1), LogIndex(index)), &cmd.encode());
            let want = model.apply(cmd);
            prop_assert_eq!(got, want, "{:?}", cmd);
        }
        sm.flush(LogIndex(index)).expect("flush");
        let want: Vec<KeyValue> = model.kvs.values().cloned().collect();
        prop_assert_eq!(contents(&sm), want.clone());
        prop_assert_eq!(sm.revision(), model.revision);
        for r in reads {
            prop_assert_eq!(sm.range(r).expect("range"), model.range(r), "{:?}", r);
        }

        let mut snap = Vec::new();
        sm.snapshot(&mut snap).expect("snapshot");
        let mut copy = KvStateMachine::in_memory();
        copy.restore(&mut &snap[..]).expect("restore");
        copy.flush(LogIndex(index)).expect("flush");
        prop_assert_eq!(contents(&copy), want);
        prop_assert_eq!(copy.revision(), model.revision);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every command gets the response the model gives (or the same
    /// refusal, changing nothing); a snapshot taken at any batch boundary
    /// restores the same store.
    #[test]
    fn the_store_behaves_as_the_model(
        cmds in prop::collection::vec(command(), 1..40),
        cuts in prop::collection::vec(1usize..6, 1..40),
        reads in prop::collection::vec(range(), 0..4),
    ) {
        same_as_model(KvStateMachine::in_memory(), cmds, &cuts, &reads)?;
    }
}

#[cfg(feature = "sled")]
proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The same on sled (its range scans, batches and clears).
    #[test]
    fn the_store_on_sled_behaves_as_the_model(
        cmds in prop::collection::vec(command(), 1..40),
        cuts in prop::collection::vec(1usize..6, 1..40),
        reads in prop::collection::vec(range(), 0..4),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = SledBackend::open(dir.path()).expect("sled");
        let sm = KvStateMachine::with_backend(Box::new(backend)).expect("open");
        same_as_model(sm, cmds, &cuts, &reads)?;
    }
}

/// The model's own rules, on the cases etcd documents.
#[test]
fn the_model_follows_etcd_on_documented_cases() {
    assert!(covers(b"a", b"", b"a") && !covers(b"a", b"", b"ab"));
    assert!(covers(b"a", &[0], b"zz") && !covers(b"b", &[0], b"a"));
    assert!(covers(b"a", b"b", b"ab") && !covers(b"a", b"b", b"b"));
    assert!(!covers(b"b", b"a", b"b") && !covers(b"a", b"a", b"a"));
    let txn = |success: Vec<TxnOp>| {
        KvCommand::Txn(TxnRequest {
            success,
            ..Default::default()
        })
    };
    let put = |k: &[u8]| {
        TxnOp::Put(PutRequest {
            key: k.to_vec(),
            ..Default::default()
        })
    };
    let del = |k: &[u8], end: &[u8]| {
        TxnOp::DeleteRange(DeleteRangeRequest {
            key: k.to_vec(),
            range_end: end.to_vec(),
            prev_kv: false,
        })
    };
    let dup = Err(KvError::InvalidRequest(DUPLICATE_KEY.into()));
    assert_eq!(check(&txn(vec![put(b"a"), put(b"a")])), dup);
    assert_eq!(check(&txn(vec![put(b"ab"), del(b"a", b"b")])), dup);
    assert_eq!(check(&txn(vec![del(b"a", &[0]), put(b"b")])), dup);
    assert_eq!(check(&txn(vec![del(b"a", b"a"), put(b"a")])), Ok(()));
    assert_eq!(check(&txn(vec![del(b"a", b""), del(b"a", &[0])])), Ok(()));
    // Empty keys are found before duplicates, wherever they are.
    let mut both = TxnRequest {
        success: vec![put(b"a"), put(b"a")],
        failure: vec![put(b"")],
        ..Default::default()
    };
    let empty = Err(KvError::InvalidRequest(EMPTY_KEY.into()));
    assert_eq!(check(&KvCommand::Txn(both.clone())), empty);
    both.failure.clear();
    assert_eq!(check(&KvCommand::Txn(both)), dup);
    // Comparisons of integers, including negative targets.
    let kv = KeyValue {
        version: 2,
        ..Default::default()
    };
    assert!(Model::compare_kv(
        &kv,
        &CompareTarget::Version(-1),
        CompareOp::Greater
    ));
    assert!(Model::compare_kv(
        &kv,
        &CompareTarget::Version(3),
        CompareOp::Less
    ));
    assert!(!Model::compare_kv(
        &kv,
        &CompareTarget::Version(2),
        CompareOp::NotEqual
    ));
}

//! The store against a plain model of etcd's semantics, over random
//! commands applied in random batches (so staged writes are read back
//! before they reach the backend) and across snapshot round trips.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::Term;

/// etcd's KV semantics on a map, written as plainly as possible.
#[derive(Clone, Debug, Default, PartialEq)]
struct Model {
    kvs: BTreeMap<Vec<u8>, KeyValue>,
    revision: i64,
}

impl Model {
    fn new() -> Model {
        Model {
            kvs: BTreeMap::new(),
            revision: 1,
        }
    }

    fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
        match end {
            [] => key == start,
            [0] => key >= start,
            end => key >= start && key < end,
        }
    }

    fn put(&mut self, rev: i64, key: &[u8], value: &[u8]) {
        let prev = self.kvs.get(key);
        let kv = KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: prev.map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.map_or(1, |p| p.version + 1),
        };
        self.kvs.insert(key.to_vec(), kv);
    }

    fn delete(&mut self, start: &[u8], end: &[u8]) -> bool {
        let before = self.kvs.len();
        self.kvs.retain(|k, _| !Model::in_range(k, start, end));
        self.kvs.len() != before
    }

    fn holds(&self, c: &Compare) -> bool {
        let hits: Vec<&KeyValue> = self
            .kvs
            .values()
            .filter(|kv| Model::in_range(&kv.key, &c.key, &c.range_end))
            .collect();
        if hits.is_empty() {
            return !matches!(c.target, CompareTarget::Value(_))
                && compare(&KeyValue::default(), c);
        }
        hits.iter().all(|kv| compare(kv, c))
    }

    fn apply(&mut self, cmd: &KvCommand) {
        let rev = self.revision + 1;
        let wrote = match cmd {
            KvCommand::Put(p) => {
                self.put(rev, &p.key, &p.value);
                true
            }
            KvCommand::DeleteRange(d) => self.delete(&d.key, &d.range_end),
            KvCommand::Txn(t) => {
                let ok = t.compare.iter().all(|c| self.holds(c));
                let mut wrote = false;
                for op in if ok { &t.success } else { &t.failure } {
                    match op {
                        TxnOp::Put(p) => {
                            self.put(rev, &p.key, &p.value);
                            wrote = true;
                        }
                        TxnOp::DeleteRange(d) => wrote |= self.delete(&d.key, &d.range_end),
                        TxnOp::Range(_) => {}
                    }
                }
                wrote
            }
        };
        if wrote {
            self.revision = rev;
        }
    }
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![
        b"a".to_vec(),
        b"ab".to_vec(),
        b"b".to_vec(),
        b"c".to_vec(),
    ])
}

fn range_end() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![
        vec![],
        vec![0],
        b"b".to_vec(),
        b"c".to_vec(),
        b"d".to_vec(),
    ])
}

fn put() -> impl Strategy<Value = PutRequest> {
    (key(), 0u8..3).prop_map(|(key, v)| PutRequest {
        key,
        value: vec![v],
        prev_kv: false,
    })
}

fn delete() -> impl Strategy<Value = DeleteRangeRequest> {
    (key(), range_end()).prop_map(|(key, range_end)| DeleteRangeRequest {
        key,
        range_end,
        prev_kv: true,
    })
}

fn compare_one() -> impl Strategy<Value = Compare> {
    let target = prop_oneof![
        (0i64..4).prop_map(CompareTarget::Version),
        (0i64..12).prop_map(CompareTarget::ModRevision),
        (0i64..12).prop_map(CompareTarget::CreateRevision),
        (0u8..3).prop_map(|v| CompareTarget::Value(vec![v])),
    ];
    let op = prop::sample::select(vec![
        CompareOp::Equal,
        CompareOp::NotEqual,
        CompareOp::Greater,
        CompareOp::Less,
    ]);
    (
        key(),
        prop::sample::select(vec![vec![], vec![0]]),
        target,
        op,
    )
        .prop_map(|(key, range_end, target, op)| Compare {
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
        (key(), range_end()).prop_map(|(key, range_end)| TxnOp::Range(RangeRequest {
            key,
            range_end,
            ..Default::default()
        })),
    ]
}

fn command() -> impl Strategy<Value = KvCommand> {
    prop_oneof![
        put().prop_map(KvCommand::Put),
        delete().prop_map(KvCommand::DeleteRange),
        (
            prop::collection::vec(compare_one(), 0..3),
            prop::collection::vec(txn_op(), 0..3),
            prop::collection::vec(txn_op(), 0..3),
        )
            .prop_map(|(compare, success, failure)| KvCommand::Txn(TxnRequest {
                compare,
                success,
                failure,
            })),
    ]
}

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
/// comparing after every batch (and a snapshot copy of the store).
fn same_as_model(
    mut sm: KvStateMachine,
    cmds: Vec<KvCommand>,
    cuts: &[usize],
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
            match sm.apply(EntryId::new(Term(1), LogIndex(index)), &cmd.encode()) {
                Ok(r) => {
                    model.apply(cmd);
                    prop_assert_eq!(r.revision, model.revision, "{:?}", cmd);
                }
                Err(KvError::InvalidRequest(_)) => {
                    prop_assert!(validate(cmd).is_err(), "refused a valid {:?}", cmd);
                }
                Err(e) => prop_assert!(false, "{e}"),
            }
        }
        sm.flush(LogIndex(index)).expect("flush");
        let want: Vec<KeyValue> = model.kvs.values().cloned().collect();
        prop_assert_eq!(contents(&sm), want.clone());
        prop_assert_eq!(sm.revision(), model.revision);

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

    /// Every command either does what the model does, or (a transaction
    /// putting one key twice, say) is refused and changes nothing; a
    /// snapshot taken at any batch boundary restores the same store.
    #[test]
    fn the_store_behaves_as_the_model(
        cmds in prop::collection::vec(command(), 1..40),
        cuts in prop::collection::vec(1usize..6, 1..40),
    ) {
        same_as_model(KvStateMachine::in_memory(), cmds, &cuts)?;
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
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = SledBackend::open(dir.path()).expect("sled");
        let sm = KvStateMachine::with_backend(Box::new(backend)).expect("open");
        same_as_model(sm, cmds, &cuts)?;
    }
}

//! The store against a model of etcd's semantics, over random commands
//! applied in random batches (so staged writes are read back before they
//! reach the backend) and across snapshot round trips.
//!
//! The model shares no code with the store: its range, compare and
//! validation rules are written here from etcd's documentation (the
//! `rpc.proto` comments and the v3 API reference) and its request checks
//! and applier (etcd 3.5's `checkPutRequest`, `checkTxnRequest`, `Put`,
//! `Txn`, `compareToPath`, `checkRequests`), so a bug in the store's own
//! `compare`, `validate`, range or transaction code shows as a
//! difference. Where the store has to choose (it runs on its own what
//! etcd leaves to its server's checks), the model takes the store's
//! documented choice, in its own way: it runs a command on its state and
//! puts the state back if the command fails, where the store checks
//! everything before it writes. Every response is compared whole:
//! revisions, `prev_kv` of puts, deleted counts and `prev_kvs`, the
//! ranges run inside transactions, nested transactions' answers, and the
//! errors of refused commands.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use dengine_runtime::{EntryId, LogIndex, StateMachine, Term};

/// etcd's error for a request without a key (`ErrGRPCEmptyKey`).
const EMPTY_KEY: &str = "key is not provided";
/// etcd's error for a transaction branch that writes a key twice
/// (`ErrGRPCDuplicateKey`).
const DUPLICATE_KEY: &str = "duplicate key given in txn request";
/// etcd's error for a put with `ignore_value` and a value
/// (`ErrGRPCValueProvided`).
const VALUE_PROVIDED: &str = "value is provided";
/// etcd's error for a put with `ignore_lease` and a lease
/// (`ErrGRPCLeaseProvided`).
const LEASE_PROVIDED: &str = "lease is provided";
/// etcd's error for a put with `ignore_value` or `ignore_lease` of a key
/// that does not exist (`ErrKeyNotFound`).
const KEY_NOT_FOUND: &str = "key not found";

fn refused<T>(why: &str) -> Result<T, KvError> {
    Err(KvError::InvalidRequest(why.into()))
}

/// etcd's KV semantics on a sorted map, written as plainly as possible,
/// with its history as a copy of the whole map at each revision.
#[derive(Clone, Debug)]
struct Model {
    kvs: BTreeMap<Vec<u8>, KeyValue>,
    revision: i64,
    /// The map as each revision left it, from the compacted one on.
    states: BTreeMap<i64, BTreeMap<Vec<u8>, KeyValue>>,
    compacted: i64,
    /// Lease ID → granted TTL.
    leases: BTreeMap<i64, i64>,
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
/// branch): each request in turn must be well formed (a key; no value
/// with `ignore_value`, no lease with `ignore_lease`), a transaction's
/// compares first, then its success ops, then its failure ops, each
/// nested transaction the same way where it stands; then, within one
/// branch, no key put twice and no put of a key that a delete of the same
/// branch covers ("it is not allowed to modify the same key several times
/// within one txn"). etcd's server checks that last rule across nested
/// transactions too; the store, and so the model, within each branch of
/// each transaction only.
fn check(cmd: &KvCommand) -> Result<(), KvError> {
    match cmd {
        KvCommand::Put(p) => check_put(p),
        KvCommand::DeleteRange(d) if d.key.is_empty() => refused(EMPTY_KEY),
        KvCommand::DeleteRange(_) => Ok(()),
        KvCommand::Txn(t) => {
            check_txn(t)?;
            check_duplicates(t)
        }
        KvCommand::Compact(_)
        | KvCommand::LeaseGrant(_)
        | KvCommand::LeaseRevoke(_)
        | KvCommand::LeaseKeepAlive(_)
        | KvCommand::MemberAttrs(_)
        | KvCommand::MemberUpdate(_)
        | KvCommand::Alarm(_)
        | KvCommand::Auth(_)
        | KvCommand::Authorized(_) => Ok(()),
    }
}

fn check_put(p: &PutRequest) -> Result<(), KvError> {
    if p.key.is_empty() {
        refused(EMPTY_KEY)
    } else if p.ignore_value && !p.value.is_empty() {
        refused(VALUE_PROVIDED)
    } else if p.ignore_lease && p.lease != 0 {
        refused(LEASE_PROVIDED)
    } else {
        Ok(())
    }
}

fn check_txn(t: &TxnRequest) -> Result<(), KvError> {
    if t.compare.iter().any(|c| c.key.is_empty()) {
        return refused(EMPTY_KEY);
    }
    for op in t.success.iter().chain(&t.failure) {
        match op {
            TxnOp::Range(r) if r.key.is_empty() => return refused(EMPTY_KEY),
            TxnOp::DeleteRange(d) if d.key.is_empty() => return refused(EMPTY_KEY),
            TxnOp::Put(p) => check_put(p)?,
            TxnOp::Txn(nested) => check_txn(nested)?,
            TxnOp::Range(_) | TxnOp::DeleteRange(_) => {}
        }
    }
    Ok(())
}

fn check_duplicates(t: &TxnRequest) -> Result<(), KvError> {
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
                return refused(DUPLICATE_KEY);
            }
        }
        for op in branch {
            if let TxnOp::Txn(nested) = op {
                check_duplicates(nested)?;
            }
        }
    }
    Ok(())
}

impl Model {
    fn new() -> Model {
        Model {
            kvs: BTreeMap::new(),
            revision: 1,
            states: BTreeMap::from([(1, BTreeMap::new())]),
            compacted: 0,
            leases: BTreeMap::new(),
        }
    }

    fn hits(&self, key: &[u8], range_end: &[u8]) -> Vec<KeyValue> {
        Model::hits_in(&self.kvs, key, range_end)
    }

    fn hits_in(kvs: &BTreeMap<Vec<u8>, KeyValue>, key: &[u8], range_end: &[u8]) -> Vec<KeyValue> {
        kvs.values()
            .filter(|kv| covers(key, range_end, &kv.key))
            .cloned()
            .collect()
    }

    /// etcd's revision rules for a read at `revision` on a store at
    /// `current`: after it is a future revision; 0 or less is the current
    /// one; before the compacted one is gone.
    fn check_revision(&self, current: i64, revision: i64) -> Result<(), KvError> {
        if revision > current {
            Err(KvError::FutureRevision)
        } else if revision > 0 && revision < self.compacted {
            Err(KvError::Compacted)
        } else {
            Ok(())
        }
    }

    /// A range at its revision, on the store of the last command (the
    /// map as it was at that revision), or on `kvs` as they are now for
    /// revision 0.
    fn range_checked(&self, r: &RangeRequest) -> Result<RangeResponse, KvError> {
        self.check_revision(self.revision, r.revision)?;
        Ok(self.range(r))
    }

    /// etcd's Range: `count` is every key in the range; at most `limit`
    /// keys (0: all) come back, `more` telling whether some were left out;
    /// `count_only` returns no keys (and `more` false); `keys_only` leaves
    /// the values out.
    fn range(&self, r: &RangeRequest) -> RangeResponse {
        let hits = if r.revision > 0 {
            let (_, kvs) = self
                .states
                .range(..=r.revision)
                .next_back()
                .expect("a state at every revision from the compacted one");
            Model::hits_in(kvs, &r.key, &r.range_end)
        } else {
            self.hits(&r.key, &r.range_end)
        };
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
            CompareTarget::Lease(n) => (sortable(kv.lease), sortable(*n)),
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

    /// etcd's `Put`: `ignore_value` and `ignore_lease` need the key as it
    /// is before the command and when the put runs, and take its value or
    /// its lease.
    fn put(&mut self, before: &Model, rev: i64, p: &PutRequest) -> Result<OpResponse, KvError> {
        let prev = self.kvs.get(&p.key).cloned();
        if (p.ignore_value || p.ignore_lease) && !before.kvs.contains_key(&p.key) {
            return refused(KEY_NOT_FOUND);
        }
        if p.lease != 0 && !self.leases.contains_key(&p.lease) {
            return Err(KvError::LeaseNotFound);
        }
        let value = match &prev {
            None if p.ignore_value || p.ignore_lease => return refused(KEY_NOT_FOUND),
            Some(kv) if p.ignore_value => kv.value.clone(),
            _ => p.value.clone(),
        };
        let lease = match &prev {
            Some(kv) if p.ignore_lease => kv.lease,
            _ => p.lease,
        };
        let kv = KeyValue {
            key: p.key.clone(),
            value,
            create_revision: prev.as_ref().map_or(rev, |kv| kv.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(0, |kv| kv.version) + 1,
            lease,
        };
        self.kvs.insert(p.key.clone(), kv);
        Ok(OpResponse::Put {
            prev_kv: if p.prev_kv { prev } else { None },
        })
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

    /// Runs one operation at revision `rev`, counting changes in
    /// `writes`. Transactions, nested ones included, choose their branch
    /// on `before`, the store before the command (etcd's
    /// `compareToPath`), and run it on the store as it is. A put that
    /// cannot run fails the command (in a txn, `check_txn` found it
    /// first).
    fn run(
        &mut self,
        before: &Model,
        rev: i64,
        op: &TxnOp,
        writes: &mut i64,
    ) -> Result<OpResponse, KvError> {
        Ok(match op {
            // Checked before the command ran (`check_txn`); a read at the
            // current revision sees the command's earlier writes.
            TxnOp::Range(r) => OpResponse::Range(self.range(r)),
            TxnOp::Put(p) => {
                *writes += 1;
                self.put(before, rev, p)?
            }
            TxnOp::DeleteRange(d) => {
                let out = self.delete(d);
                if let OpResponse::DeleteRange { deleted, .. } = out {
                    *writes += deleted;
                }
                out
            }
            TxnOp::Txn(t) => {
                let succeeded = t.compare.iter().all(|c| before.holds(c));
                let branch = if succeeded { &t.success } else { &t.failure };
                let mut responses = Vec::new();
                for op in branch {
                    responses.push(self.run(before, rev, op, writes)?);
                }
                OpResponse::Txn {
                    succeeded,
                    responses,
                }
            }
        })
    }

    /// etcd's `checkRequests` on a txn's chosen branches (chosen on the
    /// store before the command): `checkPut` on every put first (a put
    /// keeping the value or lease of a missing key, a lease that does not
    /// exist), then `checkRange` on every range, where 0 is the current
    /// revision but a negative one is compared with the first revision
    /// kept (-1 until the first compaction).
    fn check_txn(&self, t: &TxnRequest) -> Result<(), KvError> {
        let mut puts = Vec::new();
        let mut ranges = Vec::new();
        self.chosen_ops(t, &mut puts, &mut ranges);
        for p in puts {
            if (p.ignore_value || p.ignore_lease) && !self.kvs.contains_key(&p.key) {
                return refused(KEY_NOT_FOUND);
            }
            if p.lease != 0 && !self.leases.contains_key(&p.lease) {
                return Err(KvError::LeaseNotFound);
            }
        }
        let first = if self.compacted > 0 {
            self.compacted
        } else {
            -1
        };
        for r in ranges {
            if r.revision == 0 {
                continue;
            }
            if r.revision > self.revision {
                return Err(KvError::FutureRevision);
            }
            if r.revision < first {
                return Err(KvError::Compacted);
            }
        }
        Ok(())
    }

    /// The puts and ranges of `t`'s chosen branches, nested ones
    /// included, in running order.
    fn chosen_ops<'a>(
        &self,
        t: &'a TxnRequest,
        puts: &mut Vec<&'a PutRequest>,
        ranges: &mut Vec<&'a RangeRequest>,
    ) {
        let succeeded = t.compare.iter().all(|c| self.holds(c));
        for op in if succeeded { &t.success } else { &t.failure } {
            match op {
                TxnOp::Range(r) => ranges.push(r),
                TxnOp::Put(p) => puts.push(p),
                TxnOp::DeleteRange(_) => {}
                TxnOp::Txn(nested) => self.chosen_ops(nested, puts, ranges),
            }
        }
    }

    /// One command: refused whole, or run at one new revision, which the
    /// store takes only if something changed (a put, or a delete that
    /// found a key), nested transactions included. A command that fails
    /// as it runs (a put keeping the value of a key that is not there)
    /// changes nothing: the model puts its state back.
    fn apply(&mut self, cmd: &KvCommand) -> Result<KvResponse, KvError> {
        check(cmd)?;
        let before = self.clone();
        let rev = self.revision + 1;
        let mut writes = 0;
        let op = match cmd {
            // A put alone checks its lease before its key (etcd's `Put`).
            KvCommand::Put(p) if p.lease != 0 && !self.leases.contains_key(&p.lease) => {
                Err(KvError::LeaseNotFound)
            }
            KvCommand::Put(p) => self.run(&before, rev, &TxnOp::Put(p.clone()), &mut writes),
            KvCommand::DeleteRange(d) => {
                self.run(&before, rev, &TxnOp::DeleteRange(d.clone()), &mut writes)
            }
            KvCommand::Txn(t) => self
                .check_txn(t)
                .and_then(|()| self.run(&before, rev, &TxnOp::Txn(t.clone()), &mut writes)),
            KvCommand::Compact(c) => self.compact(c.revision),
            // etcd's lessor: IDs are positive and unique; a revoke
            // deletes the lease's keys at one revision; a renewal of a
            // lease that does not exist answers TTL 0.
            KvCommand::LeaseGrant(g) if g.id <= 0 => Err(KvError::InvalidRequest(format!(
                "lease ID {} (a lease ID is positive)",
                g.id
            ))),
            KvCommand::LeaseGrant(g) if self.leases.contains_key(&g.id) => {
                Err(KvError::LeaseExists)
            }
            KvCommand::LeaseGrant(g) => {
                self.leases.insert(g.id, g.ttl);
                Ok(OpResponse::LeaseGrant {
                    id: g.id,
                    ttl: g.ttl,
                })
            }
            KvCommand::LeaseRevoke(r) if self.leases.remove(&r.id).is_none() => {
                Err(KvError::LeaseNotFound)
            }
            KvCommand::LeaseRevoke(r) => {
                let gone: Vec<Vec<u8>> = self
                    .kvs
                    .values()
                    .filter(|kv| kv.lease == r.id)
                    .map(|kv| kv.key.clone())
                    .collect();
                for k in gone {
                    self.kvs.remove(&k);
                    writes += 1;
                }
                Ok(OpResponse::LeaseRevoke)
            }
            KvCommand::LeaseKeepAlive(k) => Ok(OpResponse::LeaseKeepAlive {
                id: k.id,
                ttl: self.leases.get(&k.id).copied().unwrap_or(0),
            }),
            // The model's store has no members (their list has tests of
            // its own).
            KvCommand::MemberAttrs(_) | KvCommand::MemberUpdate(_) => Err(KvError::MemberNotFound),
            // The model raises no alarm (alarms have tests of their own).
            KvCommand::Alarm(_) => Ok(OpResponse::Alarm { alarms: Vec::new() }),
            // The model has no users (auth has tests of its own).
            KvCommand::Auth(_) | KvCommand::Authorized(_) => {
                Err(KvError::InvalidRequest("the model has no auth".into()))
            }
        };
        let op = match op {
            Ok(op) => op,
            Err(e) => {
                *self = before;
                return Err(e);
            }
        };
        if writes > 0 {
            self.revision = rev;
            self.states.insert(rev, self.kvs.clone());
        } else {
            assert_eq!(self.kvs, before.kvs, "no write, no change");
        }
        Ok(KvResponse {
            revision: self.revision,
            op,
        })
    }
}

impl Model {
    /// etcd's `Compact`: only forward, never past the current revision;
    /// the map at `at` stays readable, earlier ones are gone.
    fn compact(&mut self, at: i64) -> Result<OpResponse, KvError> {
        if at <= self.compacted {
            return Err(KvError::Compacted);
        }
        if at > self.revision {
            return Err(KvError::FutureRevision);
        }
        let (&kept, _) = self
            .states
            .range(..=at)
            .next_back()
            .expect("a state at `at`");
        self.states = self.states.split_off(&kept);
        self.compacted = at;
        Ok(OpResponse::Compact)
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

/// Puts, a fifth keeping the key's value and a tenth its lease (some of
/// them, wrongly, with a value or a lease), some with a lease.
fn put() -> impl Strategy<Value = PutRequest> {
    (
        key(),
        0u8..3,
        any::<bool>(),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.1),
        prop::sample::select(vec![0i64, 0, 0, 5]),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(key, v, prev_kv, ignore_value, ignore_lease, lease, wrongly)| PutRequest {
                key,
                value: if ignore_value && !wrongly {
                    vec![]
                } else {
                    vec![v]
                },
                prev_kv,
                ignore_value,
                ignore_lease,
                lease: if ignore_lease && !wrongly { 0 } else { lease },
            },
        )
}

fn delete() -> impl Strategy<Value = DeleteRangeRequest> {
    (key(), range_end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| DeleteRangeRequest {
        key,
        range_end,
        prev_kv,
    })
}

/// Ranges, half of them at a past (or future, or compacted) revision.
fn range() -> impl Strategy<Value = RangeRequest> {
    (
        (
            key(),
            range_end(),
            0u64..4,
            any::<bool>(),
            prop::bool::weighted(0.2),
        ),
        prop_oneof![1 => Just(0i64), 1 => -1i64..30],
    )
        .prop_map(
            |((key, range_end, limit, keys_only, count_only), revision)| RangeRequest {
                key,
                range_end,
                limit,
                keys_only,
                count_only,
                revision,
            },
        )
}

fn compare_one() -> impl Strategy<Value = Compare> {
    let target = prop_oneof![
        (-1i64..4).prop_map(CompareTarget::Version),
        (-1i64..12).prop_map(CompareTarget::ModRevision),
        (-1i64..12).prop_map(CompareTarget::CreateRevision),
        prop_oneof![Just(vec![]), (0u8..3).prop_map(|v| vec![v])].prop_map(CompareTarget::Value),
        (-1i64..2).prop_map(CompareTarget::Lease),
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

/// A transaction with transactions nested in it, at most `depth` levels.
fn txn(depth: u32) -> BoxedStrategy<TxnRequest> {
    let op = if depth == 0 {
        txn_op().boxed()
    } else {
        prop_oneof![5 => txn_op(), 1 => txn(depth - 1).prop_map(TxnOp::Txn)].boxed()
    };
    (
        prop::collection::vec(compare_one(), 0..3),
        prop::collection::vec(op.clone(), 0..4),
        prop::collection::vec(op, 0..4),
    )
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        })
        .boxed()
}

fn command() -> impl Strategy<Value = KvCommand> {
    prop_oneof![
        put().prop_map(KvCommand::Put),
        delete().prop_map(KvCommand::DeleteRange),
        txn(2).prop_map(KvCommand::Txn),
        // Compactions, some behind the last one or after the current
        // revision.
        (0i64..30).prop_map(|revision| KvCommand::Compact(CompactRequest { revision })),
        // Leases 5 and 7 (the puts' lease), some IDs wrong.
        (prop::sample::select(vec![5i64, 7, 0]), 1i64..100)
            .prop_map(|(id, ttl)| KvCommand::LeaseGrant(LeaseGrantRequest { id, ttl })),
        prop::sample::select(vec![5i64, 7])
            .prop_map(|id| KvCommand::LeaseRevoke(LeaseRevokeRequest { id })),
        prop::sample::select(vec![5i64, 9])
            .prop_map(|id| KvCommand::LeaseKeepAlive(LeaseKeepAliveRequest { id })),
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
        prop_assert_eq!(sm.compacted_revision(), model.compacted);
        let leases: Vec<(i64, i64)> = model.leases.iter().map(|(&i, &t)| (i, t)).collect();
        prop_assert_eq!(sm.leases(), leases.clone());
        for (id, _) in &leases {
            let keys: Vec<Vec<u8>> = model
                .kvs
                .values()
                .filter(|kv| kv.lease == *id)
                .map(|kv| kv.key.clone())
                .collect();
            prop_assert_eq!(sm.lease(*id).map(|l| l.1), Some(keys));
        }
        for r in reads {
            prop_assert_eq!(sm.range(r), model.range_checked(r), "{:?}", r);
        }
        // Every revision the store keeps reads as the model's map then.
        for at in model.compacted.max(1)..=model.revision {
            let all = RangeRequest {
                key: vec![0],
                range_end: vec![0],
                revision: at,
                ..Default::default()
            };
            prop_assert_eq!(sm.range(&all), model.range_checked(&all), "at {}", at);
        }

        let mut snap = Vec::new();
        sm.snapshot(&mut snap).expect("snapshot");
        let mut copy = KvStateMachine::in_memory();
        copy.restore(&mut &snap[..]).expect("restore");
        copy.flush(LogIndex(index)).expect("flush");
        prop_assert_eq!(contents(&copy), want);
        prop_assert_eq!(copy.revision(), model.revision);
        prop_assert_eq!(copy.compacted_revision(), model.compacted);
        prop_assert_eq!(copy.leases(), leases.clone());
        for (id, _) in &leases {
            prop_assert_eq!(copy.lease(*id), sm.lease(*id));
        }
        for at in model.compacted.max(1)..=model.revision {
            let all = RangeRequest {
                key: vec![0],
                range_end: vec![0],
                revision: at,
                ..Default::default()
            };
            prop_assert_eq!(
                copy.range(&all),
                model.range_checked(&all),
                "copy at {}",
                at
            );
        }
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

    /// The same on the record log.
    #[test]
    fn the_store_on_the_record_log_behaves_as_the_model(
        cmds in prop::collection::vec(command(), 1..40),
        cuts in prop::collection::vec(1usize..6, 1..40),
        reads in prop::collection::vec(range(), 0..4),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = crate::LogBackend::open(dir.path()).expect("record log");
        let sm = KvStateMachine::with_backend(Box::new(backend)).expect("open");
        same_as_model(sm, cmds, &cuts, &reads)?;
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
    assert!(Model::compare_kv(
        &kv,
        &CompareTarget::Lease(0),
        CompareOp::Equal
    ));

    // A put that keeps the value: none given, and the key must exist.
    let keep = |k: &[u8]| PutRequest {
        key: k.to_vec(),
        ignore_value: true,
        ..Default::default()
    };
    let given = PutRequest {
        value: b"x".to_vec(),
        ..keep(b"a")
    };
    assert_eq!(
        check(&KvCommand::Put(given.clone())),
        refused(VALUE_PROVIDED)
    );
    let leased = PutRequest {
        ignore_value: false,
        ignore_lease: true,
        lease: 3,
        ..keep(b"a")
    };
    assert_eq!(
        check(&KvCommand::Put(leased.clone())),
        refused(LEASE_PROVIDED)
    );
    // Nested requests are checked where they stand, before duplicates.
    let nested = |t: TxnRequest| TxnOp::Txn(t);
    assert_eq!(
        check(&txn(vec![
            put(b"a"),
            put(b"a"),
            nested(TxnRequest {
                failure: vec![TxnOp::Put(leased), TxnOp::Put(given)],
                ..Default::default()
            }),
        ])),
        refused(LEASE_PROVIDED)
    );
    assert_eq!(
        check(&txn(vec![nested(TxnRequest {
            success: vec![put(b"b"), put(b"b")],
            ..Default::default()
        })])),
        dup
    );
    let mut m = Model::new();
    assert_eq!(m.apply(&KvCommand::Put(keep(b"a"))), refused(KEY_NOT_FOUND));
    let set = |k: &[u8], v: &[u8]| PutRequest {
        key: k.to_vec(),
        value: v.to_vec(),
        ..Default::default()
    };
    m.apply(&KvCommand::Put(set(b"a", b"1"))).expect("put");
    let r = m.apply(&KvCommand::Put(keep(b"a"))).expect("kept");
    assert_eq!(r.revision, 3);
    assert_eq!(
        (m.kvs[&b"a"[..]].value.as_slice(), m.kvs[&b"a"[..]].version),
        (&b"1"[..], 2)
    );
    // A txn whose chosen branches hold a put of a missing key changes
    // nothing, even after writes of its own.
    let failing = txn(vec![
        TxnOp::Put(set(b"b", b"1")),
        nested(TxnRequest {
            success: vec![TxnOp::Put(keep(b"c"))],
            ..Default::default()
        }),
    ]);
    assert_eq!(m.apply(&failing), refused(KEY_NOT_FOUND));
    assert_eq!((m.kvs.len(), m.revision), (1, 3));
    // Nested compares see the store before the command (etcd's
    // `compareToPath`), not the branch's earlier writes; nested ops run at
    // the command's one revision.
    let r = m
        .apply(&txn(vec![
            TxnOp::Put(set(b"b", b"1")),
            nested(TxnRequest {
                compare: vec![Compare {
                    key: b"b".to_vec(),
                    range_end: vec![],
                    target: CompareTarget::Version(0),
                    op: CompareOp::Equal,
                }],
                success: vec![TxnOp::Put(set(b"c", b"1"))],
                failure: vec![],
            }),
        ]))
        .expect("txn");
    let OpResponse::Txn { responses, .. } = r.op else {
        panic!("a txn")
    };
    assert!(matches!(
        responses[1],
        OpResponse::Txn {
            succeeded: true,
            ..
        }
    ));
    assert_eq!(r.revision, 4);
    assert_eq!(m.kvs[&b"c"[..]].mod_revision, 4);
    assert_eq!(m.kvs[&b"b"[..]].mod_revision, 4);
}

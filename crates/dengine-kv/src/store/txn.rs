//! Transactions: their comparisons, the branch each takes, and running
//! the branch taken.

use super::{KvStateMachine, key_not_found};
use crate::index::Current;
use crate::types::*;

impl KvStateMachine {
    fn holds(&self, c: &Compare) -> Result<bool, KvError> {
        let mut found = false;
        for (_, h) in self.index.range(KeyRange::new(&c.key, &c.range_end)) {
            let Some(now) = h.current() else { continue };
            found = true;
            if !self.compare(Some(now), c)? {
                return Ok(false);
            }
        }
        if found {
            return Ok(true);
        }
        // As etcd: a value comparison on no key fails; the counters of a
        // missing key are 0.
        if matches!(c.target, CompareTarget::Value(_)) {
            return Ok(false);
        }
        self.compare(None, c)
    }

    /// Whether the key whose value is `now` (`None`: missing) passes `c`.
    fn compare(&self, now: Option<Current>, c: &Compare) -> Result<bool, KvError> {
        use std::cmp::Ordering;
        let counter = |f: fn(&Current) -> i64| now.as_ref().map_or(0, f);
        let ord = match &c.target {
            CompareTarget::Version(v) => counter(|c| c.version).cmp(v),
            CompareTarget::CreateRevision(v) => counter(|c| c.create_revision).cmp(v),
            CompareTarget::ModRevision(v) => counter(|c| c.rev.main).cmp(v),
            CompareTarget::Lease(v) => counter(|c| c.lease).cmp(v),
            CompareTarget::Value(v) => match now {
                Some(c) => self.with_record(c.rev, |r| r.value.cmp(v.as_slice()))?,
                // A missing key has no value to compare.
                None => return Ok(false),
            },
        };
        Ok(match c.op {
            CompareOp::Equal => ord == Ordering::Equal,
            CompareOp::NotEqual => ord != Ordering::Equal,
            CompareOp::Greater => ord == Ordering::Greater,
            CompareOp::Less => ord == Ordering::Less,
        })
    }

    /// Whether a put with `ignore_value` or `ignore_lease` finds its key
    /// when it runs after `earlier`, the writes of the command that run
    /// before it. As etcd (`checkPut`), the key must exist before the
    /// command runs; and it must still exist when the put runs, which etcd
    /// leaves to its server's check that no key is both deleted and put in
    /// one transaction (nested ones included), a check the store makes
    /// only within each branch (see [`validate`]).
    pub(super) fn finds(&self, req: PutView<'_>, earlier: &[Earlier<'_>]) -> bool {
        if !(req.ignore_value || req.ignore_lease) {
            return true;
        }
        let last = earlier.iter().rev().find_map(|w| match *w {
            Earlier::Put(k) if k == req.key => Some(true),
            Earlier::Delete(range) if range.contains(req.key) => Some(false),
            _ => None,
        });
        let exists = self
            .index
            .get(req.key)
            .is_some_and(|h| h.current().is_some());
        exists && last.unwrap_or(true)
    }

    /// Decides, as etcd does before a transaction runs, which branch it
    /// and every transaction nested in its chosen branch take: all their
    /// comparisons see the store as it is before the command. Pushes the
    /// choices to `path` in the order the transactions run, and checks on
    /// the way, as etcd's `checkRequests` with `checkPut`, that each put
    /// of the chosen branches that keeps its key's value or lease finds
    /// the key and that its lease exists, so a command that would fail
    /// changes nothing. The revisions the chosen ranges read at go to
    /// `ranges`, in order: etcd checks them (`checkRange`) only after
    /// every put has passed. `doomed` is set when a put keeping its key's
    /// value or lease follows a delete of that key in the same command:
    /// the put would fail as it runs, so the command fails after the
    /// ranges' checks.
    pub(super) fn choose<'a>(
        &self,
        t: &'a TxnRequest,
        path: &mut Vec<bool>,
        earlier: &mut Vec<Earlier<'a>>,
        ranges: &mut Vec<i64>,
        doomed: &mut bool,
    ) -> Result<(), KvError> {
        let mut succeeded = true;
        for c in &t.compare {
            if !self.holds(c)? {
                succeeded = false;
                break;
            }
        }
        path.push(succeeded);
        for op in if succeeded { &t.success } else { &t.failure } {
            match op {
                TxnOp::Range(r) => ranges.push(r.revision),
                TxnOp::Put(p) => {
                    // etcd's `checkPut` looks at the store before the txn.
                    if !self.finds(p.view(), &[]) {
                        return Err(key_not_found());
                    }
                    if !self.lease_exists(p.lease) {
                        return Err(KvError::LeaseNotFound);
                    }
                    // A key the txn deleted first would be missing when the
                    // put runs: it fails then, after the ranges' checks.
                    *doomed |= !self.finds(p.view(), earlier);
                    earlier.push(Earlier::Put(&p.key));
                }
                TxnOp::DeleteRange(d) => {
                    earlier.push(Earlier::Delete(KeyRange::new(&d.key, &d.range_end)));
                }
                TxnOp::Txn(nested) => self.choose(nested, path, earlier, ranges, doomed)?,
            }
        }
        Ok(())
    }

    /// Runs the branch of `t` that `path` (from [`KvStateMachine::choose`])
    /// says, nested transactions included, at revision `main`; `wrote`
    /// tells whether anything changed.
    pub(super) fn run_txn(
        &mut self,
        main: i64,
        t: &TxnRequest,
        path: &mut impl Iterator<Item = bool>,
        wrote: &mut bool,
    ) -> Result<OpResponse, KvError> {
        // `choose` made one choice per transaction, in this order.
        let succeeded = path.next().unwrap_or(false);
        let branch = if succeeded { &t.success } else { &t.failure };
        let mut responses = Vec::with_capacity(branch.len());
        for op in branch {
            responses.push(match op {
                TxnOp::Range(r) => {
                    // As etcd's transactions: a read at the current
                    // revision sees the command's earlier writes, at the
                    // revision they are made at. `choose` checked the
                    // others.
                    let at = match r.revision {
                        at if at > 0 => at,
                        _ if *wrote => main,
                        _ => self.revision,
                    };
                    OpResponse::Range(self.range_at(r, at)?)
                }
                TxnOp::Put(p) => {
                    *wrote = true;
                    self.put(main, p.view())?
                }
                TxnOp::DeleteRange(d) => {
                    let op = self.delete(main, d)?;
                    *wrote |= matches!(op, OpResponse::DeleteRange { deleted, .. } if deleted > 0);
                    op
                }
                TxnOp::Txn(nested) => self.run_txn(main, nested, path, wrote)?,
            });
        }
        Ok(OpResponse::Txn {
            succeeded,
            responses,
        })
    }
}

/// A write of a transaction, as [`KvStateMachine::choose`] follows them.
#[derive(Clone, Copy)]
pub(super) enum Earlier<'a> {
    Put(&'a [u8]),
    Delete(KeyRange<'a>),
}

//! The checks of a command before it runs: what etcd refuses as
//! malformed, refused the same way on every replica before anything
//! changes.

use crate::types::{KeyRange, KvCommand, KvError, PutView, TxnOp, TxnRequest};

/// Refuses malformed commands before anything runs, so a refused command
/// changes nothing on any replica. As etcd, in its order: each request in
/// turn, depth first (a transaction's compares, then its success ops, then
/// its failure ops, nested transactions inside them), must have a key, and
/// a put that keeps its key's value or lease must not give one; then,
/// within each branch (of every transaction, nested ones too), no key may
/// be written twice (put twice, or put and covered by a delete: etcd's
/// "duplicate key"). The etcd server runs etcd's whole check
/// (`checkIntervals`, across nested transactions too) before it proposes;
/// the store's own check must never be looser than this one.
pub(crate) fn validate(cmd: &KvCommand) -> Result<(), KvError> {
    match cmd {
        KvCommand::Put(p) => check_put(p.view()),
        KvCommand::DeleteRange(d) => check_key(&d.key),
        KvCommand::Txn(t) => {
            check_requests(t)?;
            check_branches(t)
        }
        KvCommand::Compact(_)
        | KvCommand::LeaseGrant(_)
        | KvCommand::LeaseRevoke(_)
        | KvCommand::LeaseKeepAlive(_)
        | KvCommand::MemberAttrs(_)
        | KvCommand::MemberUpdate(_)
        | KvCommand::Alarm(_)
        | KvCommand::Auth(_) => Ok(()),
        KvCommand::Authorized(a) => validate(&a.command),
    }
}

fn check_key(key: &[u8]) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::InvalidRequest("key is not provided".into()));
    }
    Ok(())
}

/// etcd's `checkPutRequest`.
pub(crate) fn check_put(p: PutView<'_>) -> Result<(), KvError> {
    check_key(p.key)?;
    if p.ignore_value && !p.value.is_empty() {
        return Err(KvError::InvalidRequest("value is provided".into()));
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(KvError::InvalidRequest("lease is provided".into()));
    }
    Ok(())
}

/// etcd's `checkTxnRequest`, less its limit on the number of operations
/// (the server's to set).
fn check_requests(t: &TxnRequest) -> Result<(), KvError> {
    for c in &t.compare {
        check_key(&c.key)?;
    }
    for op in t.success.iter().chain(&t.failure) {
        match op {
            TxnOp::Range(r) => check_key(&r.key)?,
            TxnOp::Put(p) => check_put(p.view())?,
            TxnOp::DeleteRange(d) => check_key(&d.key)?,
            TxnOp::Txn(nested) => check_requests(nested)?,
        }
    }
    Ok(())
}

/// No key written twice within one branch, in `t` and every transaction
/// nested in it.
fn check_branches(t: &TxnRequest) -> Result<(), KvError> {
    for branch in [&t.success, &t.failure] {
        let deleted: Vec<KeyRange<'_>> = branch
            .iter()
            .filter_map(|op| match op {
                TxnOp::DeleteRange(d) => Some(KeyRange::new(&d.key, &d.range_end)),
                _ => None,
            })
            .collect();
        let mut puts = std::collections::BTreeSet::new();
        for op in branch {
            match op {
                TxnOp::Put(p)
                    if !puts.insert(&p.key) || deleted.iter().any(|r| r.contains(&p.key)) =>
                {
                    return Err(KvError::InvalidRequest(
                        "duplicate key given in txn request".into(),
                    ));
                }
                TxnOp::Txn(nested) => check_branches(nested)?,
                _ => {}
            }
        }
    }
    Ok(())
}

//! Snapshot views: a snapshot written from a view taken at one point
//! while the store goes on applying is the snapshot of that point.

use std::time::Duration;

use dengine_runtime::StateMachine;

use crate::record::{REV_PREFIX, REVS_END};
use crate::tests::{del, one, put, range, run, snapshot_of};
use crate::*;

fn compact(revision: i64) -> KvCommand {
    KvCommand::Compact(CompactRequest { revision })
}

/// Records of writes in the backend.
fn records(sm: &KvStateMachine) -> usize {
    let mut n = 0;
    sm.backend
        .scan(&[REV_PREFIX], Some(REVS_END), &mut |_, _| {
            n += 1;
            Ok(true)
        })
        .expect("scan");
    n
}

/// Some history: 200 keys written 3 times each, 50 deleted, compacted
/// halfway; from index 1 to 602.
fn history(sm: &mut KvStateMachine) {
    let cmds: Vec<_> = (0..600)
        .map(|i| put(&format!("key{:03}", i % 200), &format!("value {i}")))
        .collect();
    run(sm, 1, &cmds);
    one(sm, 601, del("key000", b"key050"));
    one(sm, 602, compact(300));
}

fn point_in_time(mut sm: KvStateMachine) {
    history(&mut sm);
    let expected = snapshot_of(&mut sm);
    let view = sm.snapshot_view().expect("the backend offers a view");
    // The store goes on: its waiting records are written, new ones come,
    // and a compaction forgets most of what the view holds.
    sm.write_after = Duration::ZERO;
    let more: Vec<_> = (0..300)
        .map(|i| put(&format!("key{:03}", i % 250), "later"))
        .collect();
    run(&mut sm, 603, &more);
    let now = sm.revision();
    one(&mut sm, 903, compact(now));
    assert!(
        !sm.deferred.is_empty(),
        "the records the view may read stay while it lives"
    );
    let mut written = Vec::new();
    view(&mut written).expect("the view writes its snapshot");
    assert!(
        written == expected,
        "the view's snapshot is not the store's at the view's point"
    );
    // Once the view is gone, the next flush removes what waited.
    one(&mut sm, 904, put("after", "x"));
    assert!(sm.deferred.is_empty());
    let mut copy = KvStateMachine::in_memory();
    copy.restore(&mut &snapshot_of(&mut sm)[..])
        .expect("restore");
    copy.flush(dengine_runtime::LogIndex(904)).expect("flush");
    assert_eq!(
        records(&sm),
        records(&copy),
        "compacted records left behind"
    );
}

#[test]
fn a_view_in_memory_writes_the_store_as_it_was() {
    point_in_time(KvStateMachine::in_memory());
}

#[test]
fn a_view_of_the_record_log_writes_the_store_as_it_was() {
    // Flushed writes wait in memory here (the backend is durable): the
    // view holds them, and must not read them again once written.
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = LogBackend::open(dir.path()).expect("open");
    let sm = KvStateMachine::with_backend(Box::new(backend)).expect("store");
    assert_eq!(sm.write_after, Duration::from_millis(10));
    point_in_time(sm);
}

#[test]
fn records_a_view_held_across_a_stop_are_forgotten_when_the_store_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = || {
        let backend = LogBackend::open(dir.path()).expect("open");
        let mut sm = KvStateMachine::with_backend(Box::new(backend)).expect("store");
        sm.write_after = Duration::ZERO;
        sm
    };
    let compacted = {
        let mut sm = open();
        history(&mut sm);
        let view = sm.snapshot_view().expect("a view");
        let now = sm.revision();
        one(&mut sm, 603, compact(now));
        assert!(!sm.deferred.is_empty());
        drop(view);
        now
    };
    let mut sm = open();
    assert!(records(&sm) > 150, "the held records are still stored");
    let old = RangeRequest {
        revision: compacted - 1,
        ..range("\0", &[0])
    };
    assert_eq!(sm.range(&old), Err(KvError::Compacted));
    let at = RangeRequest {
        revision: compacted,
        ..range("\0", &[0])
    };
    assert_eq!(sm.range(&at).expect("at the compaction").kvs.len(), 150);
    one(&mut sm, 604, put("after", "x"));
    assert_eq!(
        records(&sm),
        151,
        "one record per key left, and the new one"
    );
}

#[test]
fn a_restore_under_a_view_fails_the_views_snapshot() {
    let mut sm = KvStateMachine::in_memory();
    history(&mut sm);
    let view = sm.snapshot_view().expect("a view");
    let other = {
        let mut other = KvStateMachine::in_memory();
        one(&mut other, 1, put("z", "9"));
        snapshot_of(&mut other)
    };
    sm.restore(&mut &other[..]).expect("restore");
    let e = view(&mut Vec::new()).expect_err("the records it read were replaced");
    assert!(e.to_string().contains("restored"), "{e}");
    // A view taken after the restore is not affected.
    let view = sm.snapshot_view().expect("a view");
    let mut written = Vec::new();
    view(&mut written).expect("a view after the restore");
    assert_eq!(written, snapshot_of(&mut sm));
}

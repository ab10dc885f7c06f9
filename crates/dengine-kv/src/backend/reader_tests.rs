//! Readers scan while the backend goes on taking writes.

use std::collections::BTreeSet;

use super::*;

const KEYS: usize = 2000;

fn key(i: usize) -> Vec<u8> {
    format!("k{i:04}").into_bytes()
}

fn original(i: usize) -> Vec<u8> {
    let mut v = vec![b'a' + (i % 26) as u8; 1000];
    v.extend_from_slice(&key(i));
    v
}

fn rewritten(k: &[u8]) -> Vec<u8> {
    [b"new:".as_slice(), k].concat()
}

/// Scans every record through a reader while, every 50 records, the
/// backend rewrites 100 records ahead of the scan and removes one: the
/// scan sees keys in order, once each, with a value each held, and every
/// key never removed.
fn scan_beside_writes(b: &mut dyn KvBackend) {
    b.write(
        (0..KEYS)
            .map(|i| Change::Put(key(i), original(i)))
            .collect(),
    )
    .expect("write");
    let reader = b.reader().expect("a reader");
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let mut removed = BTreeSet::new();
    reader
        .scan(b"k", Some(b"l"), &mut |k, v| {
            let i: usize = std::str::from_utf8(&k[1..])
                .ok()
                .and_then(|s| s.parse().ok())
                .expect("a key of the test");
            assert!(
                v == original(i).as_slice() || v == rewritten(k).as_slice(),
                "{} holds a value it never had",
                String::from_utf8_lossy(k)
            );
            seen.push(k.to_vec());
            if seen.len().is_multiple_of(50) {
                let ahead = (i + 100..i + 200).filter(|&j| j < KEYS);
                let mut changes: Vec<Change> = ahead
                    .map(|j| Change::Put(key(j), rewritten(&key(j))))
                    .collect();
                if i + 400 < KEYS {
                    removed.insert(key(i + 400));
                    changes.push(Change::Remove(key(i + 400)));
                }
                b.write(changes)?;
            }
            Ok(true)
        })
        .expect("scan");
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "out of order or twice"
    );
    let seen: BTreeSet<_> = seen.into_iter().collect();
    for i in 0..KEYS {
        assert!(
            seen.contains(&key(i)) || removed.contains(&key(i)),
            "k{i:04} was never removed and not seen"
        );
    }
}

#[test]
fn a_memory_reader_scans_beside_writes() {
    scan_beside_writes(&mut MemoryBackend::default());
}

#[test]
fn a_record_log_reader_scans_beside_writes_and_collections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = LogBackend::open_with(dir.path(), 64 << 10, 128 << 10).expect("open");
    scan_beside_writes(&mut b);
    assert!(
        !dir.path().join(format!("{:016}.kvlog", 1)).exists(),
        "no segment was collected while the scan ran: the test is too small"
    );
}

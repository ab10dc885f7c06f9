use super::*;

const MIB: usize = 1024 * 1024;

fn value(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn scan_all(b: &SledBackend) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    b.scan(&[], None, &mut |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        Ok(true)
    })
    .unwrap();
    out
}

/// The blob files, and the largest key and value together, of the
/// closed database at `path`.
fn blobs_and_largest(path: &std::path::Path) -> (usize, usize) {
    let blobs = match std::fs::read_dir(path.join("blobs")) {
        Ok(dir) => dir.count(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => panic!("{e}"),
    };
    let db = dengine_storage_sled::open_db(path, &Default::default()).unwrap();
    let largest = db.iter().map(|kv| {
        let (k, v) = kv.unwrap();
        k.len() + v.len()
    });
    let largest = largest.max().unwrap_or(0);
    (blobs, largest)
}

#[test]
fn values_of_1_mib_are_stored_without_blobs_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut want: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"a".to_vec(), value(1, MIB)),
        (b"a\0\0\0\x01".to_vec(), value(2, 10)),
        (b"b".to_vec(), Vec::new()),
        (b"c".to_vec(), value(3, MIB + 17)),
        (vec![b'd'; 300], value(4, 3 * MIB)),
    ];
    let mut b = SledBackend::open(dir.path()).unwrap();
    let changes = want
        .iter()
        .map(|(k, v)| Change::Insert(k.clone(), v.clone()));
    b.write(changes.collect()).unwrap();
    assert_eq!(scan_all(&b), want);
    drop(b);
    let (blobs, largest) = blobs_and_largest(dir.path());
    assert_eq!(blobs, 0, "blob files");
    assert!(
        largest <= VALUE_MAX_BYTES,
        "{largest} bytes in one sled record"
    );

    let mut b = SledBackend::open(dir.path()).unwrap();
    assert_eq!(scan_all(&b), want, "after reopen");
    assert_eq!(b.get(b"c").unwrap().as_deref(), Some(&want[3].1[..]));
    // A large value made small, one removed, one changed twice.
    b.write(vec![
        Change::Put(b"a".to_vec(), b"small".to_vec()),
        Change::Remove(b"c".to_vec()),
        Change::Put(b"b".to_vec(), value(5, MIB)),
        Change::Put(b"b".to_vec(), value(6, 100)),
    ])
    .unwrap();
    want[0].1 = b"small".to_vec();
    want[2].1 = value(6, 100);
    want.remove(3);
    assert_eq!(scan_all(&b), want);
    drop(b);
    let (blobs, _) = blobs_and_largest(dir.path());
    assert_eq!(blobs, 0);
    let b = SledBackend::open(dir.path()).unwrap();
    assert_eq!(scan_all(&b), want, "after the second reopen");
    // Only the pieces of `dd…` are left.
    let pieces = b.db.range([PIECE]..[PIECE + 1]).count();
    assert_eq!(pieces, (3 * MIB).div_ceil(piece_max(&want[3].0)) - 1);
}

#[test]
fn a_missing_piece_and_an_old_database_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = SledBackend::open(dir.path()).unwrap();
    b.write(vec![Change::Insert(b"k".to_vec(), value(1, 20_000))])
        .unwrap();
    b.db.remove(piece_key(b"k", 2)).unwrap();
    let Err(e) = b.get(b"k") else {
        panic!("a record with a missing piece was read");
    };
    assert!(e.to_string().contains("piece 2 of 4 is missing"), "{e}");
    drop(b);

    let old = tempfile::tempdir().unwrap();
    let db = dengine_storage_sled::open_db(old.path(), &Default::default()).unwrap();
    db.insert(b"m", &b"meta"[..]).unwrap();
    db.flush().unwrap();
    drop(db);
    let Err(e) = SledBackend::open(old.path()) else {
        panic!("an old database opened");
    };
    assert!(e.to_string().contains("written by an older version"), "{e}");

    // A layout version this program does not know.
    let newer = tempfile::tempdir().unwrap();
    let db = dengine_storage_sled::open_db(newer.path(), &Default::default()).unwrap();
    db.insert(LAYOUT_KEY, &[7]).unwrap();
    db.flush().unwrap();
    drop(db);
    let Err(e) = SledBackend::open(newer.path()) else {
        panic!("a database of an unknown layout version opened");
    };
    assert!(e.to_string().contains("layout version 7"), "{e}");
}

#[test]
fn the_layout_version_is_written_once_and_survives_a_clear() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = SledBackend::open(dir.path()).unwrap();
    assert_eq!(
        b.db.get(LAYOUT_KEY).unwrap().as_deref(),
        Some(&[LAYOUT_VERSION][..])
    );
    b.write(vec![Change::Insert(b"k".to_vec(), value(1, 20_000))])
        .unwrap();
    b.clear().unwrap();
    assert_eq!(scan_all(&b), vec![]);
    assert_eq!(b.db.len(), 1, "only the layout version is left");
    drop(b);
    let b = SledBackend::open(dir.path()).expect("reopens after a clear");
    assert_eq!(scan_all(&b), vec![]);
}

/// A revision record's key.
fn rkey(main: u64, sub: u32) -> Vec<u8> {
    let mut k = vec![REV_PREFIX];
    k.extend_from_slice(&main.to_be_bytes());
    k.extend_from_slice(&sub.to_be_bytes());
    k
}

fn scan_range(b: &SledBackend, start: &[u8], end: Option<&[u8]>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    b.scan(start, end, &mut |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        Ok(true)
    })
    .unwrap();
    out
}

/// Every read the store makes agrees with a map of the same writes.
fn check_against(b: &SledBackend, model: &BTreeMap<Vec<u8>, Vec<u8>>, step: usize) {
    assert_eq!(
        scan_all(b),
        model.clone().into_iter().collect::<Vec<_>>(),
        "step {step}"
    );
    let bounds: Vec<Vec<u8>> = vec![
        vec![],
        b"a".to_vec(),
        PAGED_START.to_vec(),
        rkey(5, 0),
        rkey(40, 1),
        rkey(90, 0),
        REVS_END.to_vec(),
        b"t".to_vec(),
    ];
    for start in &bounds {
        for end in bounds.iter().map(|e| Some(e.as_slice())).chain([None]) {
            let want: Vec<_> = model
                .iter()
                .filter(|(k, _)| {
                    k.as_slice() >= start.as_slice() && end.is_none_or(|e| k.as_slice() < e)
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(
                scan_range(b, start, end),
                want,
                "step {step}: {start:?}..{end:?}"
            );
        }
    }
    // Stopping a scan stops it, inside a page too.
    let mut seen = 0;
    b.scan(&[], None, &mut |_, _| {
        seen += 1;
        Ok(seen < 3)
    })
    .unwrap();
    assert_eq!(seen, model.len().min(3), "step {step}");
}

#[test]
fn paged_records_read_back_as_written_through_appends_removals_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = SledBackend::open(dir.path()).unwrap();
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut main = 1u64;
    for step in 0..120 {
        let mut changes = Vec::new();
        match next() % 6 {
            // Appends of records small and large (a page of its own,
            // in pieces), with plain keys beside them.
            0..=2 => {
                for sub in 0..(next() % 40) as u32 {
                    let len = if next() % 25 == 0 {
                        20_000
                    } else {
                        (next() % 400) as usize
                    };
                    let k = rkey(main, sub);
                    let v = value(step as u8, len);
                    model.insert(k.clone(), v.clone());
                    changes.push(Change::Insert(k, v));
                }
                main += 1;
                let plain = format!("m{}", next() % 5).into_bytes();
                model.insert(plain.clone(), value(7, 30));
                changes.push(Change::Put(plain, value(7, 30)));
            }
            // A compaction: removes records anywhere.
            3 | 4 => {
                let keys: Vec<Vec<u8>> = model.keys().filter(|k| paged(k)).cloned().collect();
                for k in keys {
                    if next() % 3 == 0 {
                        model.remove(&k);
                        changes.push(Change::Remove(k));
                    }
                }
                changes.push(Change::Remove(rkey(main + 1000, 0)));
            }
            // Records written below the last one (no store does, but
            // the backend keeps them right): between pages and before
            // the first one.
            _ => {
                for _ in 0..5 {
                    let k = rkey(next() % (main + 1), 1_000 + (next() % 100) as u32);
                    let v = value(3, (next() % 300) as usize);
                    model.insert(k.clone(), v.clone());
                    changes.push(Change::Put(k, v));
                }
                let k = rkey(0, (next() % 5) as u32);
                model.insert(k.clone(), value(9, 9));
                changes.push(Change::Insert(k, value(9, 9)));
            }
        }
        b.write(changes).unwrap();
        for (k, v) in model.iter().filter(|(k, _)| paged(k)).take(50) {
            assert_eq!(b.get(k).unwrap().as_ref(), Some(v), "step {step}");
        }
        assert_eq!(b.get(&rkey(main + 5000, 0)).unwrap(), None);
        if step % 10 == 0 {
            check_against(&b, &model, step);
        }
        if step % 40 == 39 {
            drop(b);
            b = SledBackend::open(dir.path()).unwrap();
            check_against(&b, &model, step);
        }
    }
    check_against(&b, &model, 120);
    // Records are stored many to a value: a write of 300 small ones
    // adds a few pages.
    let pages = |b: &SledBackend| {
        b.db.range(head_key(PAGED_START)..head_key(REVS_END))
            .count()
    };
    let before = pages(&b);
    let many = (0..300).map(|sub| Change::Insert(rkey(main, sub), value(1, 200)));
    b.write(many.collect()).unwrap();
    let added = pages(&b) - before;
    assert!(added <= 300 * 220 / 5_000, "{added} pages");
    drop(b);
    let (blobs, _) = blobs_and_largest(dir.path());
    assert_eq!(blobs, 0);
}

#[test]
fn a_database_of_records_one_by_one_is_converted_to_pages_when_it_opens() {
    let dir = tempfile::tempdir().unwrap();
    let mut want = Vec::new();
    {
        let db = dengine_storage_sled::open_db(dir.path(), &Default::default()).unwrap();
        let mut batch = sled::Batch::default();
        batch.insert(LAYOUT_KEY, &[LAYOUT_BEFORE_PAGES]);
        for (k, v) in [
            (b"l1".to_vec(), value(1, 10)),
            (rkey(2, 0), value(2, 300)),
            (rkey(2, 1), value(3, 30_000)),
            (rkey(3, 0), value(4, 0)),
            (b"m".to_vec(), value(5, 8)),
        ] {
            insert_pieces(&mut batch, &k, &v).unwrap();
            want.push((k, v));
        }
        for main in 4..200u64 {
            let (k, v) = (rkey(main, 0), value(main as u8, 100));
            insert_pieces(&mut batch, &k, &v).unwrap();
            want.push((k, v));
        }
        db.apply_batch(batch).unwrap();
        db.flush().unwrap();
    }
    want.sort();
    let b = SledBackend::open(dir.path()).unwrap();
    assert_eq!(
        b.db.get(LAYOUT_KEY).unwrap().as_deref(),
        Some(&[LAYOUT_VERSION][..])
    );
    assert_eq!(scan_all(&b), want);
    assert_eq!(b.get(&rkey(2, 1)).unwrap(), Some(value(3, 30_000)));
    let heads =
        b.db.range(head_key(PAGED_START)..head_key(REVS_END))
            .count();
    assert!(heads < 10, "{heads} pages");
    drop(b);
    let b = SledBackend::open(dir.path()).unwrap();
    assert_eq!(scan_all(&b), want);
}

#[test]
fn a_damaged_page_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = SledBackend::open(dir.path()).unwrap();
    b.write(
        (0..10)
            .map(|m| Change::Insert(rkey(m, 0), value(1, 50)))
            .collect(),
    )
    .unwrap();
    let (k, mut first) =
        b.db.range(head_key(PAGED_START)..head_key(REVS_END))
            .next()
            .unwrap()
            .unwrap();
    let mut bytes = first.to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    first = bytes.into();
    b.db.insert(k, first).unwrap();
    let Err(e) = b.get(&rkey(3, 0)) else {
        panic!("a damaged page was read");
    };
    assert!(e.to_string().contains("page checksum mismatch"), "{e}");
}

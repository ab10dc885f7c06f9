#![allow(clippy::unwrap_used)]
use super::*;

fn all(b: &LogBackend) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    b.scan(b"", None, &mut |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        Ok(true)
    })
    .unwrap();
    out
}

fn put(k: &str, v: &str) -> Change {
    Change::Put(k.as_bytes().to_vec(), v.as_bytes().to_vec())
}

fn kv(k: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
    (k.as_bytes().to_vec(), v.as_bytes().to_vec())
}

#[test]
fn writes_read_back_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = LogBackend::open(dir.path()).unwrap();
    b.write(vec![put("a", "1"), put("b", "2"), put("c", "3")])
        .unwrap();
    b.write(vec![put("a", "10"), Change::Remove(b"b".to_vec())])
        .unwrap();
    assert_eq!(b.get(b"a").unwrap(), Some(b"10".to_vec()));
    assert_eq!(b.get(b"b").unwrap(), None);
    let want = vec![kv("a", "10"), kv("c", "3")];
    assert_eq!(all(&b), want);
    drop(b);
    let b = LogBackend::open(dir.path()).unwrap();
    assert_eq!(all(&b), want);
    let mut ranged = Vec::new();
    b.scan(b"b", Some(b"d"), &mut |k, _| {
        ranged.push(k.to_vec());
        Ok(true)
    })
    .unwrap();
    assert_eq!(ranged, [b"c".to_vec()]);
}

#[test]
fn every_mib_appended_is_written_back_before_any_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = LogBackend::open(dir.path()).unwrap();
    let value = "v".repeat(64 << 10);
    for i in 0..40 {
        b.write(vec![put(&format!("k{i}"), &value)]).unwrap();
    }
    // 2.5 MiB appended, no sync asked: the writeback thread synced.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while b.lock().writeback.syncs() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(b.lock().writeback.syncs() >= 1, "nothing was written back");
}

#[test]
fn a_write_cut_short_is_dropped_whole_and_appends_go_on_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = LogBackend::open(dir.path()).unwrap();
    b.write(vec![put("a", "1")]).unwrap();
    b.write(vec![put("b", "2"), put("a", "2")]).unwrap();
    let path = dir.path().join(name(1));
    let len = fs::metadata(&path).unwrap().len();
    drop(b);
    // Cut inside the second write.
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 3).unwrap();
    let mut b = LogBackend::open(dir.path()).unwrap();
    assert_eq!(all(&b), vec![kv("a", "1")]);
    b.write(vec![put("c", "3")]).unwrap();
    drop(b);
    let b = LogBackend::open(dir.path()).unwrap();
    assert_eq!(all(&b), vec![kv("a", "1"), kv("c", "3")]);
}

#[test]
fn damage_fails_the_open_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = LogBackend::open(dir.path()).unwrap();
    b.write(vec![put("a", "value-one")]).unwrap();
    b.write(vec![put("b", "value-two")]).unwrap();
    drop(b);
    let path = dir.path().join(name(1));
    let mut bytes = fs::read(&path).unwrap();
    // A byte of the first write's value (after the format frame).
    bytes[2 * frame::HEADER + 2 + 10] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let e = LogBackend::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains(&name(1)), "{e}");
    assert!(e.contains("checksum"), "{e}");
}

#[test]
fn collection_takes_space_back_and_keeps_every_current_value() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = LogBackend::open_with(dir.path(), 4096, 8192).unwrap();
    let value = "v".repeat(100);
    let mut model = BTreeMap::new();
    for round in 0..200u32 {
        let mut changes = Vec::new();
        for k in 0..10u32 {
            let key = format!("k{:03}", (round * 7 + k * 13) % 50);
            if (round + k) % 5 == 0 {
                changes.push(Change::Remove(key.clone().into_bytes()));
                model.remove(&key);
            } else {
                let v = format!("{value}{round}");
                changes.push(put(&key, &v));
                model.insert(key, v);
            }
        }
        b.write(changes).unwrap();
    }
    let want: Vec<_> = model.iter().map(|(k, v)| kv(k, v)).collect();
    assert_eq!(all(&b), want);
    // 2,000 writes of about 110 bytes went in; what is kept stays
    // within the bound (twice the live bytes, or the minimum, plus
    // the segment being written).
    let (live, segments) = {
        let inner = b.lock();
        (inner.live, inner.segments.len())
    };
    let bound = (2 * live).max(8192) + 2 * 4096;
    assert!(b.file_bytes() <= bound, "{} > {bound}", b.file_bytes());
    assert!(segments > 1, "{segments} segments");
    b.defragment().unwrap();
    assert!(
        b.file_bytes() <= live + 4096,
        "{} after defragmenting",
        b.file_bytes()
    );
    assert_eq!(all(&b), want);
    drop(b);
    let b = LogBackend::open_with(dir.path(), 4096, 8192).unwrap();
    assert_eq!(all(&b), want);
}

#[test]
fn a_segment_of_another_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = LogBackend::open(dir.path()).unwrap();
    b.write(vec![put("a", "1")]).unwrap();
    drop(b);
    let path = dir.path().join(name(1));
    let mut bytes = fs::read(&path).unwrap();
    let mut newer = Vec::new();
    frame::push_with(&mut newer, |out| out.extend_from_slice(&[OP_FORMAT, 9]));
    bytes[..newer.len()].copy_from_slice(&newer);
    fs::write(&path, &bytes).unwrap();
    let e = LogBackend::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("format version 9"), "{e}");
}

/// Today's bytes: a segment with one write (a put and a removal)
/// reads back as it did when this was written.
#[test]
fn a_fixture_of_format_1_reads_back() {
    let mut seg = Vec::new();
    frame::push_with(&mut seg, |out| out.extend_from_slice(&[4, 1]));
    frame::push_with(&mut seg, |out| {
        out.extend_from_slice(&[1, 1, 0, 0, 0, b'k', 2, 0, 0, 0, b'v', b'1']);
        out.extend_from_slice(&[2, 1, 0, 0, 0, b'x']);
    });
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("0000000000000001.kvlog"), &seg).unwrap();
    let b = LogBackend::open(dir.path()).unwrap();
    assert_eq!(all(&b), vec![kv("k", "v1")]);
}

#[test]
fn a_clear_empties_the_store_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = LogBackend::open(dir.path()).unwrap();
    b.write(vec![put("a", "1"), put("b", "2")]).unwrap();
    b.clear().unwrap();
    assert!(all(&b).is_empty());
    b.write(vec![put("c", "3")]).unwrap();
    drop(b);
    let b = LogBackend::open(dir.path()).unwrap();
    assert_eq!(all(&b), vec![kv("c", "3")]);
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

use super::*;
use dengine_core::{ConfState, NodeId, Term};

fn meta(index: u64) -> SnapshotMeta {
    SnapshotMeta {
        last_index: LogIndex(index),
        last_term: Term(3),
        conf_state: ConfState::with_voters([NodeId(1), NodeId(2)]),
    }
}

/// Bytes that differ from chunk to chunk, so a misplaced chunk shows.
fn state(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 1000) as u8).collect()
}

fn read_all(d: &SnapshotData) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    d.reader().read_to_end(&mut out)?;
    Ok(out)
}

fn write(store: &SnapshotStore, m: SnapshotMeta, bytes: &[u8]) -> SnapshotData {
    let mut w = store.writer(m).expect("writer");
    // Odd-sized writes, so frames do not line up with the writes.
    for piece in bytes.chunks(10_007) {
        w.write_all(piece).expect("write");
    }
    w.finish().expect("finish")
}

#[test]
fn a_snapshot_of_several_chunks_reads_back_in_memory_and_on_disk() {
    let bytes = state(CHUNK_SIZE * 3 + 12_345);
    let mem = write(&SnapshotStore::memory(), meta(9), &bytes);
    assert_eq!(read_all(&mem).expect("read"), bytes);
    assert_eq!(mem.frames().count(), 1 + 4 + 1, "meta, 4 chunks, end");

    let dir = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(dir.path().join("snaps")).expect("open");
    let disk = write(&store, meta(9), &bytes);
    assert_eq!(read_all(&disk).expect("read"), bytes);
    assert_eq!(
        disk.len(),
        mem.len(),
        "the same frames on disk and in memory"
    );
    let latest = store.latest().expect("latest").expect("a snapshot");
    assert_eq!(latest.meta(), &meta(9));
    assert_eq!(read_all(&latest).expect("read"), bytes);
    // from_bytes builds the same frames.
    assert_eq!(SnapshotData::from_bytes(meta(9), &bytes).len(), mem.len());
}

#[test]
fn an_empty_state_is_a_valid_snapshot() {
    let d = SnapshotData::from_bytes(meta(1), b"");
    assert_eq!(read_all(&d).expect("read"), b"");
}

#[test]
fn frames_sent_one_by_one_rebuild_the_snapshot_elsewhere() {
    let bytes = state(CHUNK_SIZE + 1);
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    let sa = SnapshotStore::open(a.path().to_path_buf()).expect("open");
    let sb = SnapshotStore::open(b.path().to_path_buf()).expect("open");
    let src = write(&sa, meta(5), &bytes);
    assert!(sa.holds(&src) && !sb.holds(&src));
    let copy = sb.import(&src).expect("import");
    assert!(sb.holds(&copy));
    assert_eq!(read_all(&copy).expect("read"), bytes);
    // Memory snapshots are imported into files too.
    let from_mem = sb
        .import(&SnapshotData::from_bytes(meta(6), &bytes))
        .expect("import");
    assert_eq!(read_all(&from_mem).expect("read"), bytes);
    assert_eq!(sb.latest().expect("latest").expect("one").meta(), &meta(6));
}

#[test]
fn every_flipped_byte_and_every_truncation_is_detected() {
    let bytes = state(300);
    let good = SnapshotData::from_bytes(meta(4), &bytes);
    let Body::Memory(raw) = &*good.body else {
        panic!("memory")
    };
    for i in 0..raw.len() {
        let mut bad = raw.clone();
        bad[i] ^= 0x40;
        let d = SnapshotData {
            meta: meta(4),
            body: Arc::new(Body::Memory(bad)),
        };
        let r = read_all(&d);
        assert!(r.is_err(), "flipping byte {i} went unnoticed");
        assert_eq!(r.err().map(|e| e.kind()), Some(io::ErrorKind::InvalidData));
    }
    for cut in 0..raw.len() {
        let d = SnapshotData {
            meta: meta(4),
            body: Arc::new(Body::Memory(raw[..cut].to_vec())),
        };
        assert!(read_all(&d).is_err(), "truncation at {cut} went unnoticed");
    }
}

#[test]
fn a_corrupt_file_on_disk_is_refused_as_it_is_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(dir.path().to_path_buf()).expect("open");
    let d = write(&store, meta(7), &state(1000));
    let path = d.path().expect("a file").to_path_buf();
    let mut raw = std::fs::read(&path).expect("read");
    raw[500] ^= 1;
    std::fs::write(&path, &raw).expect("write");
    let latest = store
        .latest()
        .expect("the metadata is intact")
        .expect("one");
    let e = read_all(&latest).expect_err("corruption found");
    assert!(e.to_string().contains("checksum"), "{e}");
}

#[test]
fn the_receiver_refuses_bad_frames() {
    let good = SnapshotData::from_bytes(meta(4), &state(100));
    let frames: Vec<Vec<u8>> = good.frames().collect::<io::Result<_>>().expect("frames");
    let store = SnapshotStore::memory();

    // Another snapshot's metadata.
    let mut rx = store.receiver(meta(5)).expect("receiver");
    assert!(rx.push(&frames[0]).is_err());

    // A flipped payload byte, a wrong length, a short frame.
    let mut rx = store.receiver(meta(4)).expect("receiver");
    rx.push(&frames[0]).expect("meta");
    let mut bad = frames[1].clone();
    bad[HEADER + 3] ^= 1;
    assert!(rx.push(&bad).is_err());
    assert!(rx.push(&frames[1][..frames[1].len() - 1]).is_err());
    assert!(rx.push(&[1, 2, 3]).is_err());
    // One receiver per snapshot at a time: the next waits for this one.
    drop(rx);

    // Finishing before the end frame, and frames after it.
    let mut rx = store.receiver(meta(4)).expect("receiver");
    rx.push(&frames[0]).expect("meta");
    rx.push(&frames[1]).expect("data");
    assert!(rx.finish().is_err(), "consumes the receiver, releasing it");
    let mut rx = store.receiver(meta(4)).expect("receiver");
    for f in &frames {
        rx.push(f).expect("frame");
    }
    assert!(rx.push(&frames[1]).is_err());
    let d = rx.finish().expect("complete");
    assert_eq!(read_all(&d).expect("read"), state(100));
}

#[test]
fn prune_keeps_the_recorded_snapshot_and_newer_ones_and_unfinished_files_vanish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(dir.path().to_path_buf()).expect("open");
    let first = write(&store, meta(10), b"a");
    for i in [20, 30, 40] {
        write(&store, meta(i), b"b");
    }
    store.prune(LogIndex(30)).expect("prune");
    let left: Vec<u64> = store
        .files()
        .expect("files")
        .iter()
        .map(|(i, _)| i.0)
        .collect();
    assert_eq!(left, vec![30, 40]);
    // A reader of a removed snapshot still has its file.
    assert_eq!(read_all(&first).expect("still readable"), b"a");

    // A writer that never finished removes its temporary file when dropped;
    // it is never taken for a snapshot.
    let mut w = store.writer(meta(50)).expect("writer");
    w.write_all(b"half").expect("write");
    drop(w);
    assert_eq!(tmp_files(dir.path()), 0);
    assert_eq!(
        store.latest().expect("latest").expect("one").meta(),
        &meta(40)
    );
    // One left behind by a crash is removed when the store opens.
    std::fs::write(dir.path().join("snap-x.recv.1-1.tmp"), b"torn").expect("write");
    let store = SnapshotStore::open(dir.path().to_path_buf()).expect("reopen");
    assert_eq!(tmp_files(dir.path()), 0);
    assert_eq!(store.files().expect("files").len(), 2);
    // Files newer than what the log records are removed at start.
    store.remove_newer_than(LogIndex(30)).expect("remove");
    assert_eq!(store.files().expect("files").len(), 1);
    assert_eq!(
        store.find(&meta(30)).expect("find").expect("there").meta(),
        &meta(30)
    );
    assert!(store.find(&meta(40)).expect("find").is_none());
}

fn tmp_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .expect("dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "tmp"))
        })
        .count()
}

#[test]
fn two_receivers_of_one_snapshot_cannot_interleave() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(dir.path().to_path_buf()).expect("open");
    let src = SnapshotData::from_bytes(meta(7), &state(CHUNK_SIZE * 2 + 5));
    let frames: Vec<Vec<u8>> = src.frames().map(|f| f.expect("frame")).collect();
    let mut a = store.receiver(meta(7)).expect("first receiver");
    let second = store.receiver(meta(7));
    assert_eq!(
        second.err().map(|e| e.kind()),
        Some(io::ErrorKind::AlreadyExists),
        "one receiver per snapshot at a time"
    );
    // Another snapshot can be received meanwhile, into a file of its own.
    let mut other = store.receiver(meta(8)).expect("another snapshot");
    other
        .push(&frames[0])
        .expect_err("metadata of another snapshot");
    a.push(&frames[0]).expect("meta");
    a.push(&frames[1]).expect("chunk");
    drop(other);
    // The first transfer breaks off; a retry starts where it stopped.
    let resume_at = a.received_len();
    drop(a);
    assert_eq!(
        tmp_files(dir.path()),
        0,
        "an abandoned transfer leaves nothing"
    );
    let mut b = store.receiver(meta(7)).expect("free again");
    for f in src.frames() {
        b.push(&f.expect("frame")).expect("push");
    }
    let got = b.finish().expect("finish");
    assert_eq!(read_all(&got).expect("read"), state(CHUNK_SIZE * 2 + 5));
    assert_eq!(resume_at, (frames[0].len() + frames[1].len()) as u64);
}

#[test]
fn a_transfer_resumes_from_the_last_good_frame() {
    let store = SnapshotStore::memory();
    let src = SnapshotData::from_bytes(meta(7), &state(CHUNK_SIZE * 3));
    let mut rx = store.receiver(meta(7)).expect("receiver");
    let mut frames = src.frames();
    rx.push(&frames.next().expect("meta").expect("ok"))
        .expect("meta");
    rx.push(&frames.next().expect("chunk").expect("ok"))
        .expect("chunk");
    let mut bad = frames.next().expect("chunk").expect("ok");
    bad[20] ^= 1;
    assert!(rx.push(&bad).is_err(), "a damaged frame is refused");
    // The sender resumes from what the receiver holds.
    for f in src.frames_from(rx.received_len()) {
        rx.push(&f.expect("frame")).expect("push");
    }
    let got = rx.finish().expect("finish");
    assert_eq!(read_all(&got).expect("read"), state(CHUNK_SIZE * 3));
    // An offset inside a frame is refused, not misread.
    assert!(src.frames_from(3).next().expect("one").is_err());
}

/// A snapshot received again (a duplicated message, a leader that sent
/// twice) must not replace the file of the one the node holds: found by the
/// torture test, where the copy was then declined and its file, the same
/// name, removed, and the node could not restart.
#[test]
fn a_second_copy_of_a_snapshot_keeps_the_first_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(dir.path().to_path_buf()).expect("open");
    let src = SnapshotData::from_bytes(meta(7), &state(1000));
    let first = store.import(&src).expect("first copy");
    let inode = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).expect("metadata").ino()
    };
    let before = inode(first.path().expect("a file"));
    let second = store.import(&src).expect("second copy");
    assert_eq!(second.path(), first.path(), "the same name");
    assert_eq!(
        inode(second.path().expect("a file")),
        before,
        "the same file"
    );
    assert_eq!(
        tmp_files(dir.path()),
        0,
        "the copy's temporary file is gone"
    );
    assert_eq!(read_all(&second).expect("read"), state(1000));
}

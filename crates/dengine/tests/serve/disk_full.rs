//! A disk that fills up: member 0's data directory is a small tmpfs.
//! When another file eats its free space below `--disk-reserve-bytes`,
//! the member raises its NOSPACE alarm, so writes that grow the store
//! fail everywhere with etcd's "database space exceeded" while reads and
//! deletes go on and no member stops; once the file is gone the member
//! disarms the alarm itself and writes are taken again. Every write
//! acknowledged is there at the end, also after a SIGKILL of the member
//! whose disk was full.
//!
//! Mounting a tmpfs needs root (as `cargo xtask ci` runs); without it the
//! test says so and does nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::etcdctl::ok;
use crate::harness::{Cluster, client, status_of, wait_leader};

const FS_BYTES: u64 = 160 << 20;
const RESERVE_BYTES: u64 = 48 << 20;
const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

/// A tmpfs mounted on a directory, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts one of `bytes` on `dir`, or says why it cannot.
    fn mount(dir: &Path, bytes: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: the member may still hold files open while it is killed.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Free bytes on the filesystem of `dir`.
fn free(dir: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df's answer")
}

/// Fills the filesystem of `dir` until `left` bytes are free.
fn fill(dir: &Path, left: u64) -> PathBuf {
    let path = dir.join("filler");
    let bytes = free(dir).saturating_sub(left);
    let f = std::fs::File::create(&path).expect("filler");
    // tmpfs has no fallocate for sparse tricks to matter: write it.
    let chunk = vec![0xa5u8; 1 << 20];
    let mut w = std::io::BufWriter::new(f);
    let mut done = 0;
    while done < bytes {
        let n = chunk.len().min((bytes - done) as usize);
        std::io::Write::write_all(&mut w, &chunk[..n]).expect("fill");
        done += n as u64;
    }
    std::io::Write::flush(&mut w).expect("fill");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_keeps_reads_and_recovers() {
    let mut c = Cluster::new(3);
    let _tmpfs = match Tmpfs::mount(c.dir(0), FS_BYTES) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: mounting a tmpfs needs root ({why})");
            return;
        }
    };
    c.extra
        .extend(["--disk-reserve-bytes".into(), RESERVE_BYTES.to_string()]);
    c.start_and_wait().await;
    let all = (0..3)
        .map(|i| c.members[i].endpoint())
        .collect::<Vec<_>>()
        .join(",");
    let mut cl = client(&c, 0).await;
    let mut acknowledged = Vec::new();
    for i in 0..50 {
        let key = format!("before/{i:02}");
        cl.put(key.as_str(), key.as_str(), None).await.expect("put");
        acknowledged.push(key);
    }

    // Another program eats the disk: below the reserve, writes that grow
    // the store are refused, on every member.
    let filler = fill(c.dir(0), RESERVE_BYTES / 3);
    let deadline = Instant::now() + Duration::from_secs(15);
    let refused = loop {
        let key = format!("during/{:03}", acknowledged.len());
        match cl.put(key.as_str(), key.as_str(), None).await {
            Ok(_) => acknowledged.push(key),
            Err(e) => break status_of(e),
        }
        assert!(
            Instant::now() < deadline,
            "writes still taken on a full disk"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(refused, (tonic::Code::ResourceExhausted, NO_SPACE.into()));
    let alarms = ok(&all, &["alarm", "list"]);
    assert!(alarms.contains("alarm:NOSPACE"), "{alarms}");
    for i in 0..3 {
        let mut m = client(&c, i).await;
        let e = m.put("refused", "x", None).await.expect_err("no space");
        assert_eq!(status_of(e).1, NO_SPACE);
        let got = m.get("before/00", None).await.expect("reads go on");
        assert_eq!(got.kvs()[0].value(), b"before/00");
    }
    let deleted = cl.delete("before/49", None).await.expect("deletes go on");
    assert_eq!(deleted.deleted(), 1);
    acknowledged.retain(|k| k != "before/49");
    assert!(
        c.members
            .iter_mut()
            .all(|m| m
                .child
                .as_mut()
                .is_some_and(|ch| ch.try_wait().ok().flatten().is_none())),
        "a member stopped on a full disk"
    );

    // Space returns: the member disarms its alarm and writes are taken.
    std::fs::remove_file(&filler).expect("free the disk");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match cl.put("after/00", "after/00", None).await {
            Ok(_) => break,
            Err(e) => assert_eq!(status_of(e).1, NO_SPACE),
        }
        assert!(Instant::now() < deadline, "writes still refused with room");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    acknowledged.push("after/00".into());
    assert_eq!(ok(&all, &["alarm", "list"]), "");
    assert!(
        c.log(0).contains("NOSPACE alarm disarmed"),
        "member 0's log does not say it disarmed the alarm"
    );

    // Nothing acknowledged is lost, also on the member whose disk was
    // full, after a SIGKILL.
    c.kill(0);
    c.start(0);
    wait_leader(&c, 0, Duration::from_secs(10)).await;
    let mut m0 = client(&c, 0).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = m0
            .get(
                "",
                Some(
                    etcd_client::GetOptions::new()
                        .with_all_keys()
                        .with_serializable(),
                ),
            )
            .await
            .expect("get");
        let keys: Vec<String> = got
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect();
        if keys.len() == acknowledged.len() {
            let mut want = acknowledged.clone();
            want.sort();
            assert_eq!(keys, want);
            for kv in got.kvs() {
                assert_eq!(kv.key(), kv.value());
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} keys of {}",
            keys.len(),
            acknowledged.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

//! The README's tour, run as written: the shell lines between its
//! `<!-- tour: begin -->` and `<!-- tour: end -->` markers, with the
//! `dengine` under test first on `PATH`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::binary;

/// The tour's shell lines.
fn tour() -> String {
    // The package's directory as cargo gives it when the test runs, not as
    // it was when the test was built: a build shared by two clones of the
    // repository (one target directory) must read this clone's README.
    let package = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let readme = std::fs::read_to_string(format!("{package}/../../README.md")).expect("README.md");
    let begin = readme
        .find("<!-- tour: begin -->")
        .expect("the README marks where its tour begins");
    let end = readme
        .find("<!-- tour: end -->")
        .expect("the README marks where its tour ends");
    let block = &readme[begin..end];
    let body: Vec<&str> = block
        .lines()
        .skip_while(|l| !l.starts_with("```sh"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .collect();
    assert!(body.len() > 5, "the tour has its commands: {block}");
    body.join("\n")
}

/// Stops what the tour started, whatever happened: `cluster down`, then
/// a SIGKILL to every process still working in the tour's directory (the
/// members and anything left in the background).
///
/// Each process by its own pid: never `kill -SIG -PGID`, which procps-ng
/// 4.0.2 (Debian 12's `kill`) reads as `kill -SIG -1`, a signal to every
/// process the caller may signal.
struct Cleanup {
    dir: std::path::PathBuf,
}

/// The pids of the processes whose working directory is under `dir`.
fn working_in(dir: &std::path::Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid > 1 && *pid != std::process::id())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
        })
        .collect()
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new(binary())
            .args(["cluster", "down", "--dir", "tour"])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for pid in working_in(&self.dir) {
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[test]
fn the_readme_tour_runs_as_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin_dir = std::path::Path::new(binary())
        .parent()
        .expect("the binary's directory")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = format!("set -euo pipefail\n{}\n", tour());
    // Output to files, not pipes: a command the tour left in the
    // background would hold a pipe open after bash exits.
    let stdout_path = dir.path().join("tour.out");
    let stderr_path = dir.path().join("tour.err");
    let file = |p: &std::path::Path| std::fs::File::create(p).expect("output file");
    let _cleanup = Cleanup {
        dir: dir.path().to_path_buf(),
    };
    let mut child = Command::new("bash")
        .args(["-c", &script])
        .current_dir(dir.path())
        .env("PATH", path)
        .env_remove("DENGINE_ENDPOINTS")
        .stdin(Stdio::null())
        .stdout(file(&stdout_path))
        .stderr(file(&stderr_path))
        .spawn()
        .expect("bash");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "the tour ran past 120 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(
        status.success(),
        "the tour failed ({status}):\n{stdout}\n{stderr}\n{script}"
    );
    for expected in [
        "greeting\nhello\n",
        "PUT\ngreeting\nhello again\n",
        "greeting\nwritten after the leader died\n",
        "MEMBER ",
    ] {
        assert!(
            stdout.contains(expected),
            "the tour did not print {expected:?}:\n{stdout}\n{stderr}"
        );
    }
}

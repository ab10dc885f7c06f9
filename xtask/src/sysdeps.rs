//! System packages the build needs beyond the Rust toolchain.
//!
//! RocksDB's bindings (`librocksdb-sys`) need libclang at build time. On
//! Debian, running as root, `cargo xtask ci` installs it; otherwise it stops
//! with the one command to run.

use std::path::Path;
use std::process::{Command, Stdio};

/// Where Debian and others put libclang.
fn libclang_present() -> bool {
    if let Ok(dir) = std::env::var("LIBCLANG_PATH")
        && Path::new(&dir).exists()
    {
        return true;
    }
    let dirs = [
        "/usr/lib",
        "/usr/lib64",
        "/usr/local/lib",
        "/usr/lib/x86_64-linux-gnu",
    ];
    let direct = dirs.iter().any(|d| has_libclang(Path::new(d)));
    let llvm = std::fs::read_dir("/usr/lib")
        .map(|rd| {
            rd.flatten().any(|e| {
                e.file_name().to_string_lossy().starts_with("llvm-")
                    && has_libclang(&e.path().join("lib"))
            })
        })
        .unwrap_or(false);
    direct || llvm
}

fn has_libclang(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libclang"))
        })
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn run_quiet(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure libclang is there, installing it when that is possible.
pub fn ensure_libclang() -> Result<(), String> {
    if libclang_present() {
        return Ok(());
    }
    const HINT: &str = "RocksDB's bindings need libclang: run `apt-get install -y libclang-dev clang` (as root) and retry";
    if !is_root() || !Path::new("/usr/bin/apt-get").exists() {
        return Err(HINT.to_string());
    }
    println!("==> installing libclang-dev and clang (needed to build RocksDB's bindings)");
    let ok = run_quiet("apt-get", &["update", "-qq"])
        && run_quiet(
            "apt-get",
            &["install", "-y", "-qq", "libclang-dev", "clang"],
        );
    if ok && libclang_present() {
        Ok(())
    } else {
        Err(format!("installing libclang failed. {HINT}"))
    }
}

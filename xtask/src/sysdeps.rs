//! System packages the build needs beyond the Rust toolchain.
//!
//! RocksDB's bindings (`librocksdb-sys`) need libclang at build time. On
//! Debian, running as root, `cargo xtask ci` installs it; otherwise it stops
//! with the one command to run.

use std::path::Path;
use std::process::{Command, Stdio};

/// Whether libclang (the library bindgen loads) and clang's builtin headers
/// are installed, as Debian's `libclang-dev` provides them. Note that
/// `libclang-cpp` (present on images with LLVM) is a different library.
fn libclang_present() -> bool {
    if let Ok(dir) = std::env::var("LIBCLANG_PATH")
        && has_libclang(Path::new(&dir))
    {
        return true;
    }
    let mut dirs: Vec<std::path::PathBuf> = [
        "/usr/lib",
        "/usr/lib64",
        "/usr/local/lib",
        "/usr/lib/x86_64-linux-gnu",
    ]
    .iter()
    .map(std::path::PathBuf::from)
    .collect();
    let llvm_dirs: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib")
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("llvm-"))
                .map(|e| e.path().join("lib"))
                .collect()
        })
        .unwrap_or_default();
    dirs.extend(llvm_dirs.iter().cloned());
    let library = dirs.iter().any(|d| has_libclang(d));
    // bindgen also needs clang's own headers (stddef.h and friends).
    let headers = llvm_dirs.iter().any(|lib| {
        std::fs::read_dir(lib.join("clang"))
            .map(|rd| {
                rd.flatten()
                    .any(|v| v.path().join("include/stddef.h").exists())
            })
            .unwrap_or(false)
    });
    library && headers
}

/// A `libclang.so` or `libclang-<version>.so[.N]` (not `libclang-cpp`).
fn has_libclang(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten().any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(rest) = name.strip_prefix("libclang") else {
                    return false;
                };
                rest.starts_with(".so")
                    || rest.strip_prefix('-').is_some_and(|v| {
                        v.starts_with(|c: char| c.is_ascii_digit()) && v.contains(".so")
                    })
            })
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

/// Whether `program` runs (found on `PATH`).
fn runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs iproute2 (`ip`, `tc`) when it is missing and this is root on
/// Debian: the fault harness makes its network namespaces and faults with
/// it. Without it the harness runs with process faults only, and says so.
pub fn ensure_iproute2() {
    if let Err(e) = ensure_debian_tool(
        ("ip", "-V"),
        "iproute2",
        "the fault harness' network faults need ip and tc",
    ) {
        println!("note: {e}");
    }
}

/// Makes sure `etcdctl` is installed: the interoperability tests run it
/// against `dengine serve` (a client nobody here wrote). Installs Debian's
/// `etcd-client` when root on Debian; otherwise says what to install.
pub fn ensure_etcdctl() -> Result<(), String> {
    ensure_debian_tool(
        ("etcdctl", "version"),
        "etcd-client",
        "the etcd interoperability tests need etcdctl",
    )
    .map(|_| ())
}

/// Makes sure `etcd` is installed: the client tests run the same checks
/// against an etcd cluster, to show the client speaks etcd and not only
/// dengine. Installs Debian's `etcd-server` when root on Debian (and stops
/// the service the package starts: the tests run their own members on
/// free ports); otherwise says what to install.
pub fn ensure_etcd() -> Result<(), String> {
    let installed = ensure_debian_tool(
        ("etcd", "--version"),
        "etcd-server",
        "the client tests run etcd itself for comparison",
    )?;
    if installed && Path::new("/usr/bin/systemctl").exists() {
        let _ = run_quiet("systemctl", &["disable", "--now", "etcd"]);
    }
    Ok(())
}

/// Makes sure `program` runs (`probe` is the program and an argument it
/// answers); installs Debian's `package` when root on Debian. Returns
/// whether it installed it.
fn ensure_debian_tool(probe: (&str, &str), package: &str, why: &str) -> Result<bool, String> {
    let (program, arg) = probe;
    if runs(program, arg) {
        return Ok(false);
    }
    let hint = format!(
        "{why}: run `apt-get install -y {package}` (as root), or put {program} 3.4+ on PATH, and retry"
    );
    if !is_root() || !Path::new("/usr/bin/apt-get").exists() {
        return Err(hint);
    }
    println!("==> installing {package} ({program}: {why})");
    let ok = run_quiet("apt-get", &["update", "-qq"])
        && run_quiet("apt-get", &["install", "-y", "-qq", package]);
    if ok && runs(program, arg) {
        Ok(true)
    } else {
        Err(format!("installing {package} failed. {hint}"))
    }
}

/// Makes sure `protoc` is installed: the `etcd-client` crate (the Rust
/// client the interoperability tests use; nobody here wrote it) compiles
/// etcd's protos with it in its build script. dengine's own code needs no
/// protoc (`cargo xtask codegen` uses protox). Installs Debian's
/// `protobuf-compiler` when root on Debian; otherwise says what to install.
pub fn ensure_protoc() -> Result<(), String> {
    let from_env = std::env::var_os("PROTOC").is_some();
    if from_env || runs("protoc", "--version") {
        return Ok(());
    }
    const HINT: &str = "the etcd-client crate (used by the tests) needs protoc: run \
        `apt-get install -y protobuf-compiler` (as root), or set PROTOC, and retry";
    if !is_root() || !Path::new("/usr/bin/apt-get").exists() {
        return Err(HINT.to_string());
    }
    println!("==> installing protobuf-compiler (protoc, for the etcd-client test dependency)");
    let ok = run_quiet("apt-get", &["update", "-qq"])
        && run_quiet("apt-get", &["install", "-y", "-qq", "protobuf-compiler"]);
    if ok && runs("protoc", "--version") {
        Ok(())
    } else {
        Err(format!("installing protobuf-compiler failed. {HINT}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[&str]) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "xtask-sysdeps-{}-{}",
            std::process::id(),
            files.join("+")
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        for f in files {
            std::fs::write(d.join(f), b"").unwrap();
        }
        d
    }

    #[test]
    fn libclang_cpp_is_not_libclang() {
        assert!(!has_libclang(&dir_with(&[
            "libclang-cpp.so.14",
            "libclang-cpp.so"
        ])));
        assert!(has_libclang(&dir_with(&["libclang-14.so.1"])));
        assert!(has_libclang(&dir_with(&["libclang.so"])));
    }
}

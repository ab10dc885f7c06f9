//! `cargo xtask codegen`: regenerates the Rust code of the gRPC contracts.
//!
//! ```text
//! cargo xtask codegen           write crates/dengine-proto/src/generated/
//! cargo xtask codegen --check   fail if what is committed there is stale
//! ```
//!
//! The `.proto` files under `proto/` are compiled by `protox` (pure Rust, no
//! `protoc`) into a descriptor set, which `tonic-prost-build` turns into
//! prost messages and tonic client and server stubs, one file per package.
//! The files are then formatted with rustfmt, so the committed code is
//! stable. Both modes generate into a fresh temporary directory first:
//! `codegen` then replaces the committed files, `--check` compares them.
//! `cargo xtask ci` runs the check first (it takes about a second).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use crate::step::{self, Step};

/// Where the `.proto` files live, relative to the workspace root; also the
/// root their imports are resolved from.
const PROTO_ROOT: &str = "proto";

/// The files to compile, relative to [`PROTO_ROOT`]. Their imports
/// (etcd's `kv.proto` and `auth.proto`) are generated with them.
const PROTOS: &[&str] = &[
    "etcd/etcdserverpb/rpc.proto",
    "etcd/v3lockpb/v3lock.proto",
    "etcd/v3electionpb/v3election.proto",
    "dengine/peer/v1/peer.proto",
];

/// Where the generated code is committed, relative to the workspace root.
const OUT_DIR: &str = "crates/dengine-proto/src/generated";

/// Protobuf paths whose `bytes` fields become `bytes::Bytes` rather than
/// `Vec<u8>`: the peer protocol, so entry payloads and snapshot frames are
/// sliced out of the received buffer instead of copied.
const BYTES_PATHS: &[&str] = &[".dengine.peer.v1"];

/// What a stale check says, and how to fix it.
const STALE: &str = "generated code is stale: run cargo xtask codegen";

/// Runs `codegen` with the user's arguments.
pub fn run(args: &[String]) -> ExitCode {
    let check = match args {
        [] => false,
        [flag] if flag == "--check" => true,
        _ => {
            eprintln!("usage: cargo xtask codegen [--check]");
            return ExitCode::from(2);
        }
    };
    let root = step::workspace_root();
    let result = if check {
        self::check(&root)
    } else {
        write(&root)
    };
    match result {
        Ok(message) => {
            println!("codegen: {message}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("codegen: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The check as a `cargo xtask ci` step: this same program, run again with
/// `codegen --check` (already built, so it costs no compilation).
pub fn check_step() -> Step {
    let program = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("xtask"));
    let mut command = Command::new(program);
    command.args(["codegen", "--check"]);
    command.current_dir(step::workspace_root());
    Step {
        name: "codegen",
        command,
    }
}

/// Regenerates the committed code: new files replace the old, and a file
/// no longer generated is removed.
fn write(root: &Path) -> Result<String, String> {
    let fresh = generate(root)?;
    let out_dir = root.join(OUT_DIR);
    fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let committed = read_rs_files(&out_dir)?;
    for name in committed.keys().filter(|name| !fresh.contains_key(*name)) {
        let path = out_dir.join(name);
        fs::remove_file(&path).map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
    }
    let mut changed = 0;
    for (name, text) in &fresh {
        if committed.get(name) != Some(text) {
            let path = out_dir.join(name);
            fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            changed += 1;
        }
    }
    Ok(format!(
        "{} files in {OUT_DIR}, {changed} changed",
        fresh.len()
    ))
}

/// Compares freshly generated code with what is committed.
fn check(root: &Path) -> Result<String, String> {
    let fresh = generate(root)?;
    let committed = read_rs_files(&root.join(OUT_DIR))?;
    let mut problems = Vec::new();
    for (name, text) in &fresh {
        match committed.get(name) {
            None => problems.push(format!("{OUT_DIR}/{name} is missing")),
            Some(old) if old != text => problems.push(format!("{OUT_DIR}/{name} differs")),
            Some(_) => {}
        }
    }
    for name in committed.keys().filter(|name| !fresh.contains_key(*name)) {
        problems.push(format!("{OUT_DIR}/{name} is no longer generated"));
    }
    if problems.is_empty() {
        Ok(format!("{OUT_DIR} is up to date ({} files)", fresh.len()))
    } else {
        Err(format!("{STALE} ({})", problems.join("; ")))
    }
}

/// Compiles the protos and generates formatted Rust code into a temporary
/// directory; returns each file's name and text.
fn generate(root: &Path) -> Result<BTreeMap<String, String>, String> {
    let proto_root = root.join(PROTO_ROOT);
    let fds = protox::compile(PROTOS, [&proto_root]).map_err(|e| {
        format!(
            "cannot compile the protos under {}: {e:?}",
            proto_root.display()
        )
    })?;
    let tmp = tempfile::Builder::new()
        .prefix("dengine-codegen-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let mut builder = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // No `connect` helpers on the clients: they would need tonic's
        // `transport` feature (hyper, tokio) in dengine-proto. A client
        // builds a `tonic::transport::Channel` itself and calls `new`.
        .build_transport(false)
        // prost's codec with small buffers (dengine-proto's `codec`
        // module says why).
        .codec_path("crate::codec::Codec")
        .emit_rerun_if_changed(false)
        .out_dir(tmp.path());
    for path in BYTES_PATHS {
        builder = builder.bytes(path);
    }
    builder
        .compile_fds(fds)
        .map_err(|e| format!("code generation failed: {e}"))?;
    let files = read_rs_files(tmp.path())?;
    if files.is_empty() {
        return Err("code generation wrote no file".to_string());
    }
    rustfmt(root, tmp.path(), files.keys())?;
    read_rs_files(tmp.path())
}

/// Formats these files of `dir` in place with the workspace's rustfmt
/// settings (run from the workspace root, so its toolchain is used).
fn rustfmt<'a>(
    root: &Path,
    dir: &Path,
    names: impl Iterator<Item = &'a String>,
) -> Result<(), String> {
    let mut command = Command::new("rustfmt");
    command.current_dir(root).args(["--edition", "2024"]);
    // rustfmt finds its configuration next to the file it formats, and
    // these files are outside the workspace: name the configuration.
    if let Some(config) = ["rustfmt.toml", ".rustfmt.toml"]
        .iter()
        .map(|name| root.join(name))
        .find(|path| path.is_file())
    {
        command.arg("--config-path").arg(config);
    }
    command.args(names.map(|name| dir.join(name)));
    let status = command
        .status()
        .map_err(|e| format!("cannot run rustfmt: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("rustfmt failed: {status}"))
    }
}

/// The `.rs` files directly in `dir`, by name. A missing directory has none.
fn read_rs_files(dir: &Path) -> Result<BTreeMap<String, String>, String> {
    let mut files = BTreeMap::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".rs") {
            let text = fs::read_to_string(entry.path())
                .map_err(|e| format!("cannot read {}: {e}", entry.path().display()))?;
            files.insert(name, text);
        }
    }
    Ok(files)
}

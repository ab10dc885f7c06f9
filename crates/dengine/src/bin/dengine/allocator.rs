//! The allocator of the `dengine` binary, and its one setting.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// mimalloc, not glibc's malloc: under load a member spent about a fifth
/// of its CPU in glibc's allocator (perf, 256 clients putting), and
/// mimalloc took 15-20% off the CPU per put and per read (benches/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The mimalloc option `serve` sets, and its value.
pub const EAGER_COMMIT: (&str, &str) = ("MIMALLOC_ARENA_EAGER_COMMIT", "0");

/// Makes a member's process run with mimalloc's eager commit of its
/// arenas off, by starting the binary again in its place with
/// [`EAGER_COMMIT`] in the environment; returns (and the process runs on
/// with mimalloc's defaults) if the environment already sets the option
/// or the binary cannot be started again.
///
/// Where the system overcommits memory (Linux), mimalloc by default
/// commits each arena whole when it reserves it. Measured here, a member
/// of a 3-member cluster under 800,000 puts from 1,024 clients had about
/// 91 MiB of heap in use at its peak (heaptrack) but peaked at 172-196
/// MiB resident; with eager commit off, at 124-136 MiB, with as many puts
/// per second (alternated runs, `benches/README.md`). mimalloc reads its
/// options from the environment when the process loads, before `main`,
/// and makes its first arena then, so setting the option from `main` is
/// too late (tried: no change). The process is replaced instead (`exec`:
/// the same pid, with nothing yet opened or started). `serve` and the
/// in-process benchmark (which shares this module) do this; the client
/// commands run briefly.
pub fn exec_with_eager_commit_off() {
    let (name, value) = EAGER_COMMIT;
    if std::env::var_os(name).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let arg0: OsString = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    // `exec` returns only if it failed; the member then runs as it is.
    let _failed = Command::new(&exe)
        .arg0(arg0)
        .args(args)
        .env(name, value)
        .exec();
}

//! The `dengine-bench` command (see the library's docs).

use std::process::ExitCode;

use clap::Parser;

/// The same allocator as the `dengine` binary: the load generator's own
/// CPU per operation is a bound on what this machine can measure.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = dengine_bench::Cli::parse();
    let json = cli.global.json;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // Requests that clients make together leave in one write per
    // connection, not one each (see .cargo/config.toml): the load
    // generator's CPU per operation bounds what this machine can measure.
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    let rt = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dengine-bench: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dengine_bench::run(cli)) {
        Ok(report) => {
            report.print_as(json);
            if report.ops == 0 {
                eprintln!("dengine-bench: no operation succeeded");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dengine-bench: {e}");
            ExitCode::from(2)
        }
    }
}

//! Running a sequence of named commands, failing fast.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

/// One named command of a sequence.
pub struct Step {
    /// Short name, printed in progress and failure messages.
    pub name: &'static str,
    /// The command, set to run from the workspace root.
    pub command: Command,
}

impl Step {
    /// A `cargo` step with these arguments.
    pub fn cargo(name: &'static str, args: &[&str]) -> Step {
        let mut command = cargo();
        command.args(args);
        Step { name, command }
    }

    /// Sets an environment variable for the step's command.
    pub fn env(mut self, key: &str, value: &str) -> Step {
        self.command.env(key, value);
        self
    }
}

/// Why a step failed.
#[derive(Debug)]
struct Failure {
    /// The step's name.
    step: &'static str,
    /// What went wrong.
    reason: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step `{}` failed: {}", self.step, self.reason)
    }
}

/// Runs `steps` in order, stopping at the first failure; prints each step's
/// name and elapsed time and a summary line prefixed with `task`.
pub fn run_all(task: &str, steps: Vec<Step>) -> ExitCode {
    let total = steps.len();
    let start = Instant::now();
    for (i, step) in steps.into_iter().enumerate() {
        match run_one(i + 1, total, step) {
            Ok(()) => {}
            Err(failure) => {
                eprintln!(
                    "{task}: FAILED: {failure} ({i}/{total} steps passed, {:.1}s)",
                    start.elapsed().as_secs_f64()
                );
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "{task}: ok: all {total} steps passed in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}

/// Runs one step, printing its name, command line and elapsed time.
fn run_one(number: usize, total: usize, mut step: Step) -> Result<(), Failure> {
    println!(
        "==> [{number}/{total}] {}: {}",
        step.name,
        describe(&step.command)
    );
    let start = Instant::now();
    let status = step.command.status().map_err(|e| Failure {
        step: step.name,
        reason: format!("could not start `{}`: {e}", describe(&step.command)),
    })?;
    let elapsed = start.elapsed().as_secs_f64();
    if !status.success() {
        return Err(Failure {
            step: step.name,
            reason: format!("{status} after {elapsed:.1}s"),
        });
    }
    println!("<== [{number}/{total}] {}: ok in {elapsed:.1}s", step.name);
    Ok(())
}

/// A `cargo` command (the one running this xtask, if known) set to run from
/// the workspace root.
pub fn cargo() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut command = Command::new(program);
    command.current_dir(workspace_root());
    command
}

/// The workspace root: the parent of this crate's directory. Taken from
/// the `CARGO_MANIFEST_DIR` cargo sets when it runs the task, before the
/// one compiled in: a binary built in another checkout sharing the target
/// directory (cargo reuses it) would otherwise work in that checkout, or
/// fail to start anything once it is gone.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .filter(|d| d.join("Cargo.toml").is_file())
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.clone(), Path::to_path_buf)
}

/// The command line, for messages: `cargo` plus its arguments and any
/// environment variables set for it.
fn describe(command: &Command) -> String {
    let mut parts: Vec<String> = command
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy())))
        .collect();
    // Name the program `cargo` rather than the full path in $CARGO.
    let program = Path::new(command.get_program()).file_name().map_or_else(
        || command.get_program().to_string_lossy(),
        |n| n.to_string_lossy(),
    );
    parts.push(program.into_owned());
    parts.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(name: &'static str, script: &str) -> Step {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        Step { name, command }
    }

    #[test]
    fn describes_commands() {
        let step = Step::cargo("docs", &["doc", "--no-deps"]).env("RUSTDOCFLAGS", "-D warnings");
        assert_eq!(
            describe(&step.command),
            "RUSTDOCFLAGS=-D warnings cargo doc --no-deps"
        );
    }

    #[test]
    fn stops_at_the_first_failure() {
        assert_eq!(
            run_all("t", vec![shell("a", "true"), shell("b", "true")]),
            ExitCode::SUCCESS
        );
        let steps = vec![
            shell("a", "true"),
            shell("b", "exit 3"),
            shell("c", "exit 9"),
        ];
        assert_eq!(run_all("t", steps), ExitCode::FAILURE);
        assert!(run_one(1, 1, shell("x", "exit 3")).is_err_and(|f| f.step == "x"));
    }

    #[test]
    fn finds_the_workspace_root() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("xtask").is_dir());
    }
}

//! Every external program guard runs goes through here. Programs are found in the fixed system
//! folders, never through $PATH: guard runs as root and must not be steered by the caller's
//! environment. Output is parsed from JSON where the tool offers it (`lvs --reportformat json`).
use crate::error::{Error, Result};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const SYSTEM_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// Finds a system program in the fixed folders.
pub fn find_program(name: &str) -> Option<PathBuf> {
    SYSTEM_DIRS
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| is_executable(p))
}

pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A system program, resolved once, that can be run with arguments.
pub fn system_command(name: &str) -> Result<Command> {
    let path = find_program(name).ok_or_else(|| {
        Error::refused(
            format!("{name} not found in {}", SYSTEM_DIRS.join(", ")),
            "install the package that provides it (lvm2 for lvm, util-linux for mount)",
        )
    })?;
    let mut cmd = Command::new(path);
    // Stable, parseable messages; lvm otherwise warns about every descriptor guard holds open.
    cmd.env("LC_ALL", "C").env("LVM_SUPPRESS_FD_WARNINGS", "1");
    cmd.stdin(Stdio::null());
    Ok(cmd)
}

/// The last lines of a program's stderr: enough to see why it failed, short enough for a log.
pub fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("WARNING: Sum of all thin"))
        .collect();
    let start = lines.len().saturating_sub(6);
    lines[start..].join(" / ")
}

/// `GUARD_TRACE=1`: every program guard runs, with its duration and the time since start, on
/// stderr. How the cost of a run is taken apart (bench/run.sh overhead); nothing else reads it.
pub fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("GUARD_TRACE").is_some())
}

fn start_time() -> std::time::Instant {
    static T0: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *T0.get_or_init(std::time::Instant::now)
}

/// A trace line (see `tracing`): a stage reached.
pub fn trace(what: &str) {
    if tracing() {
        eprintln!(
            "guard-trace {:7.1} ms  {what}",
            start_time().elapsed().as_secs_f64() * 1000.0
        );
    }
}

pub trait CommandExt {
    /// Runs to completion; a non-zero exit becomes an error carrying the stderr tail.
    fn run_checked(&mut self) -> Result<Output>;
    /// Runs and parses stdout as JSON.
    fn run_json<T: serde::de::DeserializeOwned>(&mut self) -> Result<T>;
}

impl CommandExt for Command {
    fn run_checked(&mut self) -> Result<Output> {
        let t = tracing().then(std::time::Instant::now);
        let out = self
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| {
                Error::io(
                    format!("cannot run {}", self.get_program().to_string_lossy()),
                    e,
                )
            })?;
        if let Some(t) = t {
            let args: Vec<_> = self.get_args().map(|a| a.to_string_lossy()).collect();
            trace(&format!(
                "{} {} ({:.1} ms)",
                Path::new(self.get_program()).display(),
                args.join(" "),
                t.elapsed().as_secs_f64() * 1000.0
            ));
        }
        if out.status.success() {
            return Ok(out);
        }
        Err(Error::Tool {
            program: Path::new(self.get_program())
                .file_name()
                .unwrap_or(OsStr::new("?"))
                .to_string_lossy()
                .into_owned(),
            args: self
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            status: match out.status.code() {
                Some(c) => format!("exit {c}"),
                None => "killed by a signal".into(),
            },
            stderr: stderr_tail(&out.stderr),
        })
    }

    fn run_json<T: serde::de::DeserializeOwned>(&mut self) -> Result<T> {
        let out = self.run_checked()?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_tail_keeps_the_last_lines_and_drops_thin_noise() {
        let s = b"  WARNING: Sum of all thin volume sizes exceeds\n a\n\n b\n c\n d\n e\n f\n g\n";
        assert_eq!(stderr_tail(s), "b / c / d / e / f / g");
    }

    #[test]
    fn failing_program_error_names_program_and_stderr() {
        let err = Command::new("/bin/sh")
            .args(["-c", "echo boom >&2; exit 3"])
            .run_checked()
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("sh -c"), "{msg}");
        assert!(msg.contains("exit 3"), "{msg}");
        assert!(msg.contains("boom"), "{msg}");
    }
}

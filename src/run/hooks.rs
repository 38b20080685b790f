//! Hooks and health checks: programs a policy (or `--check`) runs around the guarded command.
//! Each runs as an argument vector, never through a shell unless the policy itself says
//! `sh -c`, so nothing from the environment or the command line is pasted into shell text; what
//! a hook needs to know comes in GUARD_* environment variables.
//!
//! Programs are found in SECURE_PATH (sudo's secure_path), never in the caller's $PATH: guard
//! runs them as root, and whoever set up the caller's environment must not choose what runs.
//! Hooks also get SECURE_PATH as their PATH, so what they run in turn is found there too.
//!
//! Points: `pre_snapshot` (failure aborts the run, nothing changed), `hold` (started before the
//! snapshots; guard waits for its ready line and ends it once the snapshots exist: the database
//! lock case), `hold_failed` (a hold could not be put in place: show who blocks it),
//! `post_snapshot`, `pre_rollback` (e.g. stop services so the merge can start now),
//! `post_rollback`, `post_success`. Failures after the snapshots exist are reported, never allowed
//! to stop a rollback.
use crate::error::{Error, Result};
use crate::ui;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookPoint {
    PreSnapshot,
    Hold,
    /// A hold could not be put in place: say who is in the way (a database's long
    /// statements); nothing was changed.
    HoldFailed,
    PostSnapshot,
    PreRollback,
    PostRollback,
    PostSuccess,
}

impl HookPoint {
    pub fn as_str(self) -> &'static str {
        match self {
            HookPoint::PreSnapshot => "pre_snapshot",
            HookPoint::Hold => "hold",
            HookPoint::HoldFailed => "hold_failed",
            HookPoint::PostSnapshot => "post_snapshot",
            HookPoint::PreRollback => "pre_rollback",
            HookPoint::PostRollback => "post_rollback",
            HookPoint::PostSuccess => "post_success",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HookSpec {
    pub name: String,
    pub when: HookPoint,
    pub argv: Vec<String>,
    pub timeout: Duration,
    pub ready: Option<String>,
    pub stdin: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckSpec {
    pub name: String,
    pub argv: Vec<String>,
    pub timeout: Duration,
    pub fail_on_output: bool,
}

/// What every hook and check is told about the run.
#[derive(Debug, Clone, Default)]
pub struct HookEnv {
    pub run_id: String,
    pub targets: String,
    pub outcome: Option<String>,
    pub exit_status: Option<i32>,
}

impl HookEnv {
    /// What the hooks around a decision are told: the run, its targets, the command's outcome.
    pub fn for_record(rec: &crate::store::journal::RunRecord) -> HookEnv {
        use crate::store::journal::Outcome;
        HookEnv {
            run_id: rec.id.clone(),
            targets: rec
                .targets
                .iter()
                .map(|t| format!("{}/{}", t.vg, t.lv))
                .collect::<Vec<_>>()
                .join(", "),
            outcome: rec.outcome.map(|o| {
                match o {
                    Outcome::Success => "success",
                    Outcome::Failure => "failure",
                    Outcome::Aborted => "aborted",
                }
                .to_string()
            }),
            exit_status: rec.exit_status,
        }
    }
}

/// The folders hook and check programs are looked up in, in order (sudo's secure_path).
pub const SECURE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Finds a hook or check program: an absolute path as it is, a bare name in SECURE_PATH. A
/// relative path is refused: it would depend on the folder guard happens to be started in.
pub fn resolve_program(prog: &str) -> Result<PathBuf> {
    let runnable = |p: &Path| crate::exec::is_executable(p);
    if prog.is_empty() {
        return Err(Error::refused(
            "the program name is empty",
            "give an absolute path, e.g. \"/usr/bin/systemctl\"",
        ));
    }
    if prog.contains('/') {
        let p = Path::new(prog);
        if !p.is_absolute() {
            return Err(Error::refused(
                format!("program {prog:?} is a relative path: it would be looked up from whatever folder guard is started in"),
                "give an absolute path, or a bare name found in the secure path",
            ));
        }
        if !runnable(p) {
            return Err(Error::refused(
                format!("program {prog:?} does not exist or is not an executable file"),
                "install it, or fix the path",
            ));
        }
        return Ok(p.to_path_buf());
    }
    SECURE_PATH
        .split(':')
        .map(|d| Path::new(d).join(prog))
        .find(|p| runnable(p))
        .ok_or_else(|| {
            Error::refused(
                format!("program {prog:?} not found in the secure path {SECURE_PATH} (hooks and checks are never looked up in $PATH)"),
                format!("give its absolute path (e.g. \"/opt/tool/bin/{prog}\"), or install it in one of those folders"),
            )
        })
}

fn command(argv: &[String], env: &HookEnv, point: &str) -> Result<Command> {
    // Resolved when the policy was read (argv[0] is then absolute); resolved here again so that
    // nothing reaches exec through a $PATH lookup.
    let mut c = Command::new(resolve_program(&argv[0])?);
    c.args(&argv[1..])
        .env("PATH", SECURE_PATH)
        .env("GUARD_RUN", &env.run_id)
        .env("GUARD_HOOK", point)
        .env("GUARD_TARGETS", &env.targets);
    if let Some(o) = &env.outcome {
        c.env("GUARD_OUTCOME", o);
    }
    if let Some(s) = env.exit_status {
        c.env("GUARD_EXIT_STATUS", s.to_string());
    }
    // in a rehearsal, checks run where the command ran
    crate::run::rehearse::confine(&mut c);
    Ok(c)
}

/// Relays a child's output lines to guard's stderr with a prefix, and keeps them.
fn relay(r: impl Read + Send + 'static, prefix: String, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(|l| l.ok()) {
            ui::say(&format!("{prefix}: {line}"));
            if tx.send(line).is_err() {
                // nobody listens any more (a hold after its ready line): keep draining
                continue;
            }
        }
    });
}

/// Relays both output streams of a child; the receiver gets every line.
fn relay_output(child: &mut Child, prefix: String) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    relay(
        child.stdout.take().expect("piped"),
        prefix.clone(),
        tx.clone(),
    );
    relay(child.stderr.take().expect("piped"), prefix, tx);
    rx
}

fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits for a child with a deadline; on expiry kills it.
fn wait_deadline(child: &mut Child, timeout: Duration) -> Result<Option<std::process::ExitStatus>> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(st) = child
            .try_wait()
            .map_err(|e| Error::io("cannot wait for a hook", e))?
        {
            return Ok(Some(st));
        }
        if Instant::now() >= end {
            kill_and_reap(child);
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn(c: &mut Command, what: &str) -> Result<Child> {
    c.spawn()
        .map_err(|e| Error::Other(format!("cannot start {what}: {e}")))
}

/// Runs one ordinary hook to completion within its time limit.
pub fn run_hook(h: &HookSpec, env: &HookEnv) -> Result<()> {
    let what = format!("{} hook {}", h.when.as_str(), h.name);
    let mut c = command(&h.argv, env, h.when.as_str())?;
    c.stdin(if h.stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = spawn(&mut c, &what)?;
    if let (Some(text), Some(mut w)) = (&h.stdin, child.stdin.take()) {
        let _ = w.write_all(text.as_bytes());
    }
    let _rx = relay_output(&mut child, format!("hook {}", h.name));
    match wait_deadline(&mut child, h.timeout)? {
        Some(st) if st.success() => Ok(()),
        Some(st) => Err(Error::Other(format!("{what} failed ({st})"))),
        None => Err(Error::Other(format!(
            "{what} did not finish within {}",
            humantime::format_duration(h.timeout)
        ))),
    }
}

/// Runs every hook of one point in order; the first failure is returned.
pub fn run_point(hooks: &[HookSpec], point: HookPoint, env: &HookEnv) -> Result<()> {
    for h in hooks.iter().filter(|h| h.when == point) {
        ui::say(&format!("running {} hook {}", point.as_str(), h.name));
        run_hook(h, env)?;
    }
    Ok(())
}

/// Like `run_point`, for points after the snapshots exist: a failure is reported, and the
/// transaction goes on (a failing post_rollback hook must not undo a rollback).
pub fn run_point_reporting(hooks: &[HookSpec], point: HookPoint, env: &HookEnv) -> Vec<String> {
    let mut failures = Vec::new();
    for h in hooks.iter().filter(|h| h.when == point) {
        ui::say(&format!("running {} hook {}", point.as_str(), h.name));
        if let Err(e) = run_hook(h, env) {
            ui::warn(&e.to_string());
            failures.push(e.to_string());
        }
    }
    failures
}

/// A running `hold` hook: in place until `end` (or drop).
pub struct Hold {
    name: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    /// When it started: a lock that waits (FLUSH TABLES WITH READ LOCK behind a running
    /// statement) already holds writers back, so this bounds the hold from above.
    pub started: Instant,
}

/// Starts a hold hook and waits for its ready line.
pub fn start_hold(h: &HookSpec, env: &HookEnv) -> Result<Hold> {
    let what = format!("hold hook {}", h.name);
    let ready = h.ready.clone().unwrap_or_default();
    let mut c = command(&h.argv, env, "hold")?;
    // stdin stays open: closing it is how a session-type hold (mysql) is told to end
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    ui::say(&format!("starting {what}, waiting for {ready:?}"));
    let started = Instant::now();
    let mut child = spawn(&mut c, &what)?;
    let mut stdin = child.stdin.take();
    if let (Some(text), Some(w)) = (&h.stdin, stdin.as_mut()) {
        let _ = w.write_all(text.as_bytes());
        let _ = w.flush();
    }
    let rx = relay_output(&mut child, format!("hook {}", h.name));
    let end = Instant::now() + h.timeout;
    let mut hold = Hold {
        name: h.name.clone(),
        child: Some(child),
        stdin,
        started,
    };
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_millis(50))) {
            Ok(line) if line.contains(&ready) => return Ok(hold),
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Error::Other(format!(
                    "{what} ended before it printed {ready:?}"
                )))
            }
        }
        if let Some(st) = hold
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            // Lines may still be queued: give them a last look.
            while let Ok(line) = rx.try_recv() {
                if line.contains(&ready) {
                    return Err(Error::Other(format!(
                        "{what} printed its ready line but exited ({st}): it holds nothing"
                    )));
                }
            }
            hold.child = None;
            return Err(Error::Other(format!(
                "{what} exited ({st}) before it was ready"
            )));
        }
        if left.is_zero() {
            return Err(Error::Other(format!(
                "{what} was not ready within {}",
                humantime::format_duration(h.timeout)
            )));
        }
    }
}

impl Hold {
    /// Ends the hold: close its stdin, give it 5 s to leave, then SIGTERM, then SIGKILL.
    pub fn end(&mut self) {
        self.stdin = None;
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        for (grace, sig) in [
            (
                Duration::from_secs(5),
                Some(nix::sys::signal::Signal::SIGTERM),
            ),
            (Duration::from_secs(2), None),
        ] {
            let end = Instant::now() + grace;
            while Instant::now() < end {
                if let Ok(Some(_)) = child.try_wait() {
                    ui::say(&format!("hold hook {} ended", self.name));
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Some(s) = sig {
                let _ = nix::sys::signal::kill(pid, s);
            }
        }
        kill_and_reap(&mut child);
        ui::warn(&format!("hold hook {} had to be killed", self.name));
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.end();
    }
}

/// Runs the health checks in order; returns the first failure's description.
pub fn run_checks(checks: &[CheckSpec], env: &HookEnv) -> Option<String> {
    for c in checks {
        ui::say(&format!("health check: {}", c.name));
        if let Err(why) = run_check(c, env) {
            ui::warn(&format!("health check {} failed: {why}", c.name));
            return Some(format!("health check `{}` failed: {why}", c.name));
        }
    }
    None
}

fn run_check(c: &CheckSpec, env: &HookEnv) -> std::result::Result<(), String> {
    let mut cmd = command(&c.argv, env, "check").map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot start it: {e}"))?;
    let rx = relay_output(&mut child, format!("check {}", c.name));
    let st = wait_deadline(&mut child, c.timeout).map_err(|e| e.to_string())?;
    // the relays end at EOF, just after the exit
    std::thread::sleep(Duration::from_millis(20));
    let printed: Vec<String> = rx.try_iter().filter(|l| !l.trim().is_empty()).collect();
    match st {
        None => Err(format!(
            "no answer within {}",
            humantime::format_duration(c.timeout)
        )),
        Some(st) if !st.success() => Err(format!("{st}")),
        Some(_) if c.fail_on_output && !printed.is_empty() => {
            Err(format!("it reported: {}", printed.join(" / ")))
        }
        Some(_) => Ok(()),
    }
}

/// `--check "CMD ARGS"`: split like a shell would split words, without running one.
pub fn check_from_flag(s: &str) -> Result<CheckSpec> {
    let mut argv = shlex::split(s).filter(|v| !v.is_empty()).ok_or_else(|| {
        Error::refused(
            format!("--check {s:?} is not a command"),
            "quote it as one argument: --check 'curl -fsS http://localhost/health'",
        )
    })?;
    // Like a policy's checks: the secure path, never $PATH; kept absolute for the report.
    let program = resolve_program(&argv[0]).map_err(|e| match e {
        Error::Refused { problem, fix } => Error::refused(format!("--check {s:?}: {problem}"), fix),
        e => e,
    })?;
    argv[0] = program.display().to_string();
    Ok(CheckSpec {
        name: s.to_string(),
        argv,
        timeout: crate::cli::policy::DEFAULT_CHECK_TIMEOUT,
        fail_on_output: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(when: HookPoint, script: &str) -> HookSpec {
        HookSpec {
            name: "t".into(),
            when,
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            timeout: Duration::from_secs(5),
            ready: Some("READY".into()),
            stdin: None,
        }
    }

    #[test]
    fn a_hook_sees_the_run_in_its_environment_and_fails_on_nonzero() {
        let env = HookEnv {
            run_id: "r1".into(),
            ..Default::default()
        };
        run_hook(
            &hook(HookPoint::PreSnapshot, "test \"$GUARD_RUN\" = r1"),
            &env,
        )
        .unwrap();
        let e = run_hook(&hook(HookPoint::PreSnapshot, "exit 3"), &env).unwrap_err();
        assert!(e.to_string().contains("failed"), "{e}");
        let mut slow = hook(HookPoint::PreSnapshot, "sleep 5");
        slow.timeout = Duration::from_millis(200);
        let e = run_hook(&slow, &env).unwrap_err();
        assert!(e.to_string().contains("did not finish"), "{e}");
    }

    #[test]
    fn a_hold_waits_for_its_ready_line_and_ends_on_stdin_eof() {
        let env = HookEnv::default();
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ended");
        let script = format!("echo READY; cat >/dev/null; touch {}", marker.display());
        let mut h = start_hold(&hook(HookPoint::Hold, &script), &env).unwrap();
        assert!(!marker.exists());
        h.end();
        assert!(
            marker.exists(),
            "the hold ended at stdin EOF, not by a signal"
        );
        let e = start_hold(&hook(HookPoint::Hold, "exit 2"), &env)
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("before it was ready") || e.to_string().contains("ended before"),
            "{e}"
        );
    }

    #[test]
    fn checks_fail_on_status_or_on_output_when_asked() {
        let env = HookEnv::default();
        let mut c = check_from_flag("sh -c 'echo broken pkg'").unwrap();
        assert!(c.argv[0].starts_with('/') && c.argv[0].ends_with("/sh"));
        assert_eq!(c.argv[1..], ["-c", "echo broken pkg"]);
        assert!(run_checks(std::slice::from_ref(&c), &env).is_none());
        c.fail_on_output = true;
        let why = run_checks(std::slice::from_ref(&c), &env).unwrap();
        assert!(why.contains("broken pkg"), "{why}");
        let f = check_from_flag("false").unwrap();
        assert!(run_checks(&[f], &env).unwrap().contains("exit status: 1"));
        assert!(check_from_flag("").is_err());
        assert!(check_from_flag("/no/such/check").is_err());
    }

    #[test]
    fn hook_programs_come_from_the_secure_path_never_from_path() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // one name found nowhere in the secure path, one that /usr/bin has too
        let only_here = "guard-test-hook-only-in-path";
        for name in [only_here, "env"] {
            let p = dir.path().join(name);
            std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        // Put first, not instead: tests running alongside still find their programs.
        let old = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![dir.path().to_path_buf()];
        dirs.extend(std::env::split_paths(&old));
        std::env::set_var("PATH", std::env::join_paths(dirs).unwrap());
        let by_path = crate::run::child::resolve_program(std::ffi::OsStr::new(only_here));
        let hidden = resolve_program(only_here);
        let flag = check_from_flag(only_here);
        let policy = crate::cli::policy::parse(
            "t",
            "t.toml",
            &format!("[[hook]]\nwhen = \"pre_rollback\"\nrun = [\"{only_here}\"]\n[[check]]\nrun = [\"env\"]\n"),
        );
        let env = resolve_program("env");
        let sees = run_hook(
            &hook(
                HookPoint::PreRollback,
                &format!("test \"$PATH\" = {SECURE_PATH}"),
            ),
            &HookEnv::default(),
        );
        std::env::set_var("PATH", old);

        // the caller's PATH did hold the program: only guard's lookup ignores it
        assert_eq!(by_path.unwrap(), dir.path().join(only_here));
        let e = hidden.unwrap_err().to_string();
        assert!(e.contains(&format!("{only_here:?}")), "{e}");
        assert!(e.contains(SECURE_PATH), "{e}");
        assert!(e.contains("fix: give its absolute path"), "{e}");
        assert!(e.contains("or install it"), "{e}");
        let e = flag.unwrap_err().to_string();
        assert!(e.contains(SECURE_PATH), "{e}");
        let e = policy.unwrap_err().to_string();
        assert!(e.contains("t.toml:3:1"), "{e}");
        assert!(e.contains(SECURE_PATH), "{e}");
        assert_eq!(env.unwrap(), Path::new("/usr/bin/env"));
        let p = crate::cli::policy::parse("t", "t.toml", "[[check]]\nrun = [\"env\", \"-0\"]\n")
            .unwrap();
        assert_eq!(p.checks[0].argv, ["/usr/bin/env", "-0"]);
        sees.expect("a hook runs with PATH set to the secure path");
        // relative paths would be found from the current folder: refused
        let e = resolve_program("bin/x").unwrap_err().to_string();
        assert!(e.contains("relative path"), "{e}");
    }
}

//! Running the guarded command. It gets its own process group, so that guard can signal the
//! whole job (and a timeout kills its helpers too) while guard itself is never in the line of
//! fire. On a terminal the child's group is made the foreground group, as a shell does for a
//! job: an interactive `apt` prompt reads the terminal and Ctrl-C reaches the command, not guard.
//! Without a terminal guard forwards SIGINT, SIGTERM and SIGQUIT to the group. SIGHUP is ignored:
//! a dropped SSH session must not leave the transaction half done.
use crate::error::{Error, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// How long a timed-out command gets between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    TimedOut,
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
    /// The shell convention: a signal n becomes 128+n; a timeout 124 like timeout(1).
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
            Exit::TimedOut => 124,
        }
    }
    pub fn describe(self) -> String {
        match self {
            Exit::Code(c) => format!("exit status {c}"),
            Exit::Signal(s) => format!(
                "killed by signal {s} ({})",
                Signal::try_from(s).map(|s| s.as_str()).unwrap_or("?")
            ),
            Exit::TimedOut => "timed out".into(),
        }
    }
}

/// Signals guard receives during a run, shared with the thread that handles them.
#[derive(Default)]
pub struct SignalState {
    child_pgid: AtomicI32,
    /// A terminating signal that arrived while no command was running.
    pending: AtomicI32,
    hangup: AtomicBool,
    /// Any SIGINT/SIGTERM/SIGQUIT (also forwarded to the command): the watcher takes it on its
    /// next tick, and only a hold acts on it (the held command cannot).
    terminate: AtomicBool,
    /// `guard resume RUN` (SIGUSR1) and `guard rollback RUN` (SIGUSR2): the watcher takes them
    /// on its next tick, held or not, so that no request waits for a later hold.
    resume: AtomicBool,
    rollback: AtomicBool,
}

impl SignalState {
    /// Catches the signals for the whole transaction: from here on they cannot kill guard
    /// between two LVM steps.
    pub fn install() -> Result<Arc<SignalState>> {
        let state = Arc::new(SignalState::default());
        let mut signals = signal_hook::iterator::Signals::new([
            SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2,
        ])
        .map_err(|e| Error::io("cannot install signal handlers", e))?;
        let st = state.clone();
        std::thread::spawn(move || {
            for sig in signals.forever() {
                st.note(sig);
            }
        });
        Ok(state)
    }

    /// Records a signal guard received; a terminating one goes on to the command's group (or
    /// waits as `pending` while no command runs).
    pub fn note(&self, sig: i32) {
        match sig {
            SIGHUP => self.hangup.store(true, Ordering::SeqCst),
            SIGUSR1 => self.resume.store(true, Ordering::SeqCst),
            SIGUSR2 => self.rollback.store(true, Ordering::SeqCst),
            _ => self.terminate.store(true, Ordering::SeqCst),
        }
        if matches!(sig, SIGHUP | SIGUSR1 | SIGUSR2) {
            return;
        }
        let pgid = self.child_pgid.load(Ordering::SeqCst);
        if pgid > 0 {
            if let Ok(s) = Signal::try_from(sig) {
                let _ = killpg(Pid::from_raw(pgid), s);
            }
        } else {
            self.pending.store(sig, Ordering::SeqCst);
        }
    }

    pub fn pending(&self) -> Option<i32> {
        match self.pending.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }

    pub fn hung_up(&self) -> bool {
        self.hangup.load(Ordering::SeqCst)
    }

    pub fn take_terminate(&self) -> bool {
        self.terminate.swap(false, Ordering::SeqCst)
    }

    pub fn take_resume_request(&self) -> bool {
        self.resume.swap(false, Ordering::SeqCst)
    }

    pub fn take_rollback_request(&self) -> bool {
        self.rollback.swap(false, Ordering::SeqCst)
    }
}

/// Finds the program as execvp would, so that "not found" (127) and "not executable" (126) are
/// known before any snapshot is taken.
pub fn resolve_program(argv0: &OsStr) -> Result<PathBuf> {
    let shown = argv0.to_string_lossy().into_owned();
    if argv0.is_empty() {
        return Err(Error::refused(
            "the command is empty",
            "name the command after --, e.g. guard --lv vg0/root -- apt-get -y upgrade",
        ));
    }
    let check = |p: &Path| -> Option<Result<PathBuf>> {
        let meta = std::fs::metadata(p).ok()?;
        if meta.is_dir() || !crate::exec::is_executable(p) {
            return Some(Err(Error::CommandNotExecutable(p.display().to_string())));
        }
        Some(Ok(p.to_path_buf()))
    };
    if argv0.as_bytes().contains(&b'/') {
        return check(Path::new(argv0)).unwrap_or(Err(Error::CommandNotFound(shown)));
    }
    let path =
        std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/sbin:/usr/bin:/sbin:/bin"));
    let mut not_exec = None;
    for dir in std::env::split_paths(&path) {
        match check(&dir.join(argv0)) {
            Some(Ok(p)) => return Ok(p),
            Some(Err(e)) => not_exec = not_exec.or(Some(e)),
            None => {}
        }
    }
    Err(not_exec.unwrap_or(Error::CommandNotFound(shown)))
}

/// Is guard in the terminal's foreground? Only then may it hand the terminal to the command.
fn foreground_tty() -> bool {
    // SAFETY: plain queries on fd 0.
    unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() }
}

/// Gives the terminal to process group `pgid`. SIGTTOU is ignored around the call because a
/// background group (guard after handing over, the child before it is foreground) gets it.
fn give_terminal(pgid: libc::pid_t) {
    // SAFETY: async-signal-safe libc calls only (this also runs between fork and exec).
    unsafe {
        let old = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
        libc::tcsetpgrp(0, pgid);
        libc::signal(libc::SIGTTOU, old);
    }
}

pub struct Finished {
    pub exit: Exit,
    pub elapsed: Duration,
    pub pid: u32,
}

pub struct RunSpec<'a> {
    pub argv: &'a [OsString],
    pub env: Vec<(String, String)>,
    pub timeout: Option<Duration>,
    /// The wait before the first `tick`; then each tick says when it wants the next (the
    /// COW watcher lives there).
    pub first_tick: Duration,
}

/// What watches the command while it runs (the COW watcher, and the journal it updates).
pub trait Observer {
    /// The command started: its PID (also its process group).
    fn spawned(&mut self, pid: u32);
    /// Runs while the command lives; returns how long to wait before the next call.
    fn tick(&mut self) -> Duration;
    /// Whether the observer holds the command stopped (SIGSTOP) right now.
    fn paused(&self) -> bool {
        false
    }
    /// The command ran past its timeout and is being killed.
    fn timed_out(&mut self) {}
}

/// An observer that only waits (tests, and commands nobody watches).
pub struct Idle(pub Duration);

impl Observer for Idle {
    fn spawned(&mut self, _pid: u32) {}
    fn tick(&mut self) -> Duration {
        self.0
    }
}

/// Runs the command to its end, telling `obs` its PID at once and ticking it while it lives.
pub fn run(spec: &RunSpec, sig: &SignalState, obs: &mut dyn Observer) -> Result<Finished> {
    let program = resolve_program(&spec.argv[0])?;
    let mut cmd = Command::new(&program);
    cmd.arg0(&spec.argv[0])
        .args(&spec.argv[1..])
        .process_group(0);
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    crate::run::rehearse::confine(&mut cmd);
    let tty = foreground_tty();
    if tty {
        // SAFETY: the closure only calls async-signal-safe functions.
        unsafe {
            cmd.pre_exec(|| {
                give_terminal(libc::getpid());
                Ok(())
            });
        }
    }
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::CommandNotFound(program.display().to_string()),
        std::io::ErrorKind::PermissionDenied => {
            Error::CommandNotExecutable(program.display().to_string())
        }
        _ => Error::io(format!("cannot start {}", program.display()), e),
    })?;
    let pid = child.id();
    sig.child_pgid.store(pid as i32, Ordering::SeqCst);
    if tty {
        // also from this side: whichever runs first, the child owns the terminal before it reads
        give_terminal(pid as i32);
    }
    obs.spawned(pid);
    // A signal that came while the command was starting: pass it on now.
    if let Ok(s) = Signal::try_from(sig.pending.swap(0, Ordering::SeqCst)) {
        let _ = killpg(Pid::from_raw(pid as i32), s);
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let deadline = spec.timeout.map(|t| start + t);
    let mut killed_at: Option<Instant> = None;
    let mut wait = spec.first_tick;
    let status = loop {
        match rx.recv_timeout(wait) {
            Ok(st) => break st.map_err(|e| Error::io("cannot wait for the command", e))?,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Error::Other("lost track of the command".into()))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        wait = obs.tick();
        let now = Instant::now();
        match (deadline, killed_at) {
            (Some(d), None) if now >= d => {
                crate::ui::warn(&format!(
                    "the command ran past its timeout of {}: stopping it (SIGTERM, then SIGKILL after {}s)",
                    humantime::format_duration(spec.timeout.unwrap_or_default()),
                    KILL_GRACE.as_secs()
                ));
                obs.timed_out();
                if obs.paused() {
                    // Paused by the watcher (an extension not landed yet, or a full VG): waking
                    // it with SIGCONT would let it write into a snapshot without room. A timeout
                    // is a failure and is rolled back, so it dies where it stands.
                    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                } else {
                    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGTERM);
                }
                killed_at = Some(now);
            }
            (_, Some(k)) if now >= k + KILL_GRACE => {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            _ => {}
        }
    };
    sig.child_pgid.store(0, Ordering::SeqCst);
    if tty {
        // SAFETY: getpgrp cannot fail.
        give_terminal(unsafe { libc::getpgrp() });
    }
    let exit = if killed_at.is_some() {
        Exit::TimedOut
    } else if let Some(c) = status.code() {
        Exit::Code(c)
    } else {
        Exit::Signal(status.signal().unwrap_or(0))
    };
    Ok(Finished {
        exit,
        elapsed: start.elapsed(),
        pid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(Exit::Code(3).code(), 3);
        assert_eq!(Exit::Signal(9).code(), 137);
        assert_eq!(Exit::TimedOut.code(), 124);
        assert!(Exit::Signal(15).describe().contains("SIGTERM"));
    }

    #[test]
    fn resolves_programs_like_execvp() {
        assert!(resolve_program(OsStr::new("sh")).is_ok());
        assert!(matches!(
            resolve_program(OsStr::new("no-such-program-xyz")),
            Err(Error::CommandNotFound(_))
        ));
        assert!(matches!(
            resolve_program(OsStr::new("/etc/passwd")),
            Err(Error::CommandNotExecutable(_))
        ));
        assert!(matches!(
            resolve_program(OsStr::new("/")),
            Err(Error::CommandNotExecutable(_))
        ));
        assert!(matches!(
            resolve_program(OsStr::new("/nonexistent/x")),
            Err(Error::CommandNotFound(_))
        ));
    }

    #[test]
    fn runs_a_command_and_reports_signal_and_timeout() {
        let sig = SignalState::default();
        let run_sh = |script: &str, timeout: Option<Duration>| {
            let argv: Vec<OsString> = vec!["sh".into(), "-c".into(), script.into()];
            let spec = RunSpec {
                argv: &argv,
                env: vec![],
                timeout,
                first_tick: Duration::from_millis(20),
            };
            run(&spec, &sig, &mut Idle(Duration::from_millis(20)))
                .unwrap()
                .exit
        };
        assert_eq!(run_sh("exit 7", None), Exit::Code(7));
        assert_eq!(run_sh("kill -9 $$", None), Exit::Signal(9));
        assert_eq!(
            run_sh("sleep 5", Some(Duration::from_millis(100))),
            Exit::TimedOut
        );
    }
}

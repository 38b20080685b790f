//! What guard starts before it parses its command line: lvm2's start-up (~130 ms under
//! emulation, most of a bare `lvs`) then overlaps guard's own (argument parsing ~45 ms, the
//! journal). A guess that turns out wrong costs a process that ends with guard: nothing that
//! changes anything is ever started here.
//!
//! Two things can be started:
//! - the full LV report (`lvs -a`, JSON), as a process of its own. A guarded run plans from it
//!   before it locks anything, as it would a moment later, and plans again if a volume's lock
//!   changed hands since guard started (store/lock.rs `taken_after`); `status` only shows it.
//!   Commands that read LVM under their own locks never use it (`keep_only`). A process,
//!   not a command in the shell: the shell's own start-up (lvm2 defines all its commands
//!   before it reads the first line; a bare command defines only its own) costs ~90 ms more
//!   than a bare `lvm` process, and the report runs beside it on another CPU.
//! - the lvm shell (shell.rs) for the commands that run several lvm2 commands in a row.
use super::shell::Shell;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Mutex;

/// When this guard started: the oldest a report it uses can be (see `started`).
static STARTED: std::sync::OnceLock<crate::store::lock::Since> = std::sync::OnceLock::new();
/// The shell started early, if any.
static SHELL: Mutex<Option<Shell>> = Mutex::new(None);
/// The report asked for early: its words and the process producing it.
static REPORT: Mutex<Option<(Vec<String>, Child)>> = Mutex::new(None);

/// What guard is about to do, guessed from its raw arguments.
#[derive(Debug, PartialEq, Eq)]
struct Guess {
    report: bool,
    shell: bool,
}

fn guess(args: &[std::ffi::OsString]) -> Guess {
    // A guarded run (its first word an option or `--`), `snapshot` and `rehearse` run another
    // command after `--`; all of them plan from the full report and go on in the shell. Other
    // subcommands accept `--` too (`guard rollback -- RUN`): the first word decides, and
    // `keep_only` discards a wrong guess once the arguments are parsed.
    let sub = |names: &[&str]| args.get(1).is_some_and(|a| names.iter().any(|s| a == s));
    let first_is_option = args
        .get(1)
        .is_some_and(|a| a.as_encoded_bytes().starts_with(b"-"));
    let runs_a_command = args.iter().skip(1).any(|a| a == "--")
        && (first_is_option || sub(&["snapshot", "rehearse"]));
    Guess {
        report: runs_a_command || sub(&["status"]),
        // commit and rollback read their report under their locks: nothing sent ahead
        shell: runs_a_command || sub(&["commit", "rollback", "recover"]),
    }
}

/// When guard started, before anything it read of LVM: a volume lock another guard took after
/// this may have made its plan out of date (run/mod.rs lock_stage looks again). Where `start`
/// was not called (the library in tests), the epoch: every lock then counts as taken since.
pub fn started() -> crate::store::lock::Since {
    STARTED
        .get()
        .copied()
        .unwrap_or(crate::store::lock::Since::EPOCH)
}

/// Starts what the arguments call for (see the module's comment), when guard is root.
pub fn start(args: &[std::ffi::OsString]) {
    let _ = STARTED.set(crate::store::lock::Since::now());
    let g = guess(args);
    if !(g.report || g.shell) || !nix::unistd::geteuid().is_root() {
        return;
    }
    let Some(lvm) = crate::exec::find_program("lvm") else {
        return;
    };
    if g.report {
        let words = super::real::RealLvm::lvs_words();
        if let Some(child) = spawn_report(&words) {
            set_report(words, child);
        }
    }
    if g.shell {
        if let Some(sh) = Shell::start(&lvm) {
            *SHELL.lock().unwrap_or_else(|p| p.into_inner()) = Some(sh);
        }
    }
}

fn set_report(words: Vec<String>, child: Child) {
    *REPORT.lock().unwrap_or_else(|p| p.into_inner()) = Some((words, child));
}

fn spawn_report(words: &[String]) -> Option<Child> {
    use std::os::unix::process::CommandExt;
    let child = crate::exec::system_command("lvm")
        .ok()?
        .args(words)
        // not the caller's folder: nothing guard may unmount is pinned
        .current_dir("/")
        // a group of its own: a Ctrl-Z at the terminal must not stop it holding a VG's lock
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    crate::exec::trace(&format!("early report started: lvm {}", words.join(" ")));
    Some(child)
}

/// After parsing: keeps what the command will use and ends the rest (a guess from the raw
/// arguments can be wrong). A report kept but not taken would come from before the command's
/// locks: only a guarded run, `snapshot`, `rehearse` and `status` may keep it.
pub fn keep_only(report: bool, shell: bool) {
    if !report {
        if let Some((_, mut child)) = REPORT.lock().unwrap_or_else(|p| p.into_inner()).take() {
            // a read-only lvs: nothing to harm. Not waited for: one stuck in the kernel must
            // not stop the command (what is left of it ends with guard)
            let _ = child.kill();
            let _ = child.try_wait();
        }
    }
    if !shell {
        // (an unused shell has only been asked `version`: dropping it kills it)
        drop(SHELL.lock().unwrap_or_else(|p| p.into_inner()).take());
    }
}

/// The shell started early, if any; else a new one.
pub fn take_or_start_shell(program: &Path) -> Option<Shell> {
    let early = SHELL.lock().unwrap_or_else(|p| p.into_inner()).take();
    early.or_else(|| Shell::start(program))
}

/// The early report's output when `words` is what was asked for and it succeeded. None
/// otherwise: the caller runs the command itself, so a failure comes with its usual error.
pub fn take_report(words: &[String]) -> Option<Vec<u8>> {
    let mut slot = REPORT.lock().unwrap_or_else(|p| p.into_inner());
    if slot.as_ref().is_none_or(|(w, _)| w.as_slice() != words) {
        return None;
    }
    let (_, child) = slot.take()?;
    let t = std::time::Instant::now();
    let out = child.wait_with_output().ok();
    let ok = out.as_ref().is_some_and(|o| o.status.success());
    crate::exec::trace(&format!(
        "early report {}: lvm {} (waited {:.1} ms)",
        if ok { "used" } else { "failed, run again" },
        words.join(" "),
        t.elapsed().as_secs_f64() * 1000.0
    ));
    out.filter(|_| ok).map(|o| o.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(args: &[&str]) -> Guess {
        guess(&args.iter().map(Into::into).collect::<Vec<_>>())
    }

    #[test]
    fn the_early_report_serves_only_its_own_command_once_and_never_a_failure() {
        let sh = |script: &str| {
            std::process::Command::new("sh")
                .args(["-c", script])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let words = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        set_report(words("lvs -a"), sh("echo report"));
        assert_eq!(take_report(&words("vgs")), None, "another command's words");
        assert_eq!(
            take_report(&words("lvs -a")).as_deref(),
            Some(&b"report\n"[..])
        );
        assert_eq!(take_report(&words("lvs -a")), None, "used once");
        // a failed report is run again by the caller, for its usual error
        set_report(words("lvs -a"), sh("echo partial; exit 5"));
        assert_eq!(take_report(&words("lvs -a")), None);
        assert!(REPORT.lock().unwrap().is_none());
    }

    #[test]
    fn each_command_gets_what_it_will_use() {
        let both = Guess {
            report: true,
            shell: true,
        };
        assert_eq!(g(&["guard", "--lv", "vg/a", "--", "true"]), both);
        assert_eq!(g(&["guard", "snapshot", "x", "--", "true"]), both);
        let report = Guess {
            report: true,
            shell: false,
        };
        assert_eq!(g(&["guard", "status"]), report);
        assert_eq!(g(&["guard", "status", "--json"]), report);
        let shell = Guess {
            report: false,
            shell: true,
        };
        for c in ["commit", "rollback", "recover"] {
            assert_eq!(g(&["guard", c]), shell);
        }
        let none = Guess {
            report: false,
            shell: false,
        };
        assert_eq!(g(&["guard", "--version"]), none);
        assert_eq!(g(&["guard", "policy", "list"]), none);
        // a run's command named status is no `guard status`
        assert_eq!(g(&["guard", "--", "status"]), both);
        // `--` in another subcommand's arguments: no report from before its locks
        assert_eq!(g(&["guard", "rollback", "--", "20261129-000000-ab"]), shell);
        assert_eq!(
            g(&["guard", "restore", "20261129-000000-ab", "--", "/etc"]),
            none
        );
        assert_eq!(g(&["guard", "policy", "list", "--"]), none);
    }
}

//! One `lvm` process for all of a run's lvm2 commands: the lvm shell, driven the way lvm2's own
//! D-Bus daemon drives it (the `lvmdbusd` command profile, shipped with lvm2, makes every
//! command's report and status a JSON document on the file descriptor named by LVM_REPORT_FD).
//!
//! Why: in a guarded run the bare commands' own cost is the floor, and most of an lvm command's
//! time is the process starting and setting itself up (measured in the VM: `lvs` 196 ms alone,
//! 65 ms inside a running shell; `lvcreate -s` + `lvremove` 702 ms as two processes, 417 ms in
//! one). Each command still scans devices and reads metadata afresh and takes the same VG locks
//! (lvm2 drops its caches between shell commands), so nothing a command checks is skipped.
//!
//! Anything unexpected (no profile, no JSON, the process gone) makes the caller use one process
//! per command from then on; a command in flight when the shell broke is reported as failed
//! with an unknown outcome, as a killed lvm process would be. A failed command's messages come
//! from `lastlog` (lvm2 logs them to the report, not to the shell's stderr).
use serde_json::Value;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// The command profile lvm2 ships for driving its shell (/etc/lvm/profile/lvmdbusd.profile):
/// JSON reports, sizes in bytes, and a status line per command.
const PROFILE: &str = "lvmdbusd";
const PROFILE_FILE: &str = "/etc/lvm/profile/lvmdbusd.profile";
/// The report descriptor inside the shell.
const REPORT_FD: i32 = 3;
/// How long the start-up probe (`version`, no metadata, no locks) may take before the shell is
/// given up for one process per command. Real commands have no limit, as bare ones have none.
const PROBE_LIMIT: Duration = if cfg!(test) {
    Duration::from_millis(300)
} else {
    Duration::from_secs(10)
};

/// What one command in the shell answered.
#[derive(Debug)]
pub struct Reply {
    /// lvm2's return code: 1 (ECMD_PROCESSED) is success, 5 (ECMD_FAILED) failure.
    pub code: i64,
    /// The whole JSON document: `report` (for lvs/vgs) and `log`.
    pub doc: Vec<u8>,
}

impl Reply {
    pub fn success(&self) -> bool {
        self.code == 1
    }
}

/// The shell can no longer be used; the caller falls back to one process per command.
#[derive(Debug)]
pub struct Broken {
    pub why: String,
    /// The command was written to the shell: it may have run, in part or whole.
    pub sent: bool,
}

fn broken(why: impl Into<String>, sent: bool) -> Broken {
    Broken {
        why: why.into(),
        sent,
    }
}

pub struct Shell {
    child: Child,
    /// None once closed: after a question (end of input answers it "no") or to end the shell.
    stdin: Option<ChildStdin>,
    /// A command (not the probe, not a report sent ahead, not `lastlog`) was sent and its
    /// reply not read: the shell must not be killed (an lvm2 command stopped half-way can
    /// leave an origin suspended).
    busy: bool,
    report: File,
    stdout: ChildStdout,
    stderr: ChildStderr,
    probed: bool,
    /// Report bytes read past the end of the last reply: kept as the start of the next one,
    /// whose status must then name its own command (see `status_code`), never dropped.
    unread: Vec<u8>,
}

/// The command line as lvm's shell splits it (words separated by blanks, '…' or "…" quoting,
/// no escapes, `#` starting a comment); None when an argument cannot be written that way.
pub fn line(args: &[String]) -> Option<String> {
    // lvm2 takes at most 64 words and answers more with no reply at all; and the line editor
    // acts on control characters (TAB completes, C-u erases) and bytes past 0x7e
    if args.len() > 60 {
        return None;
    }
    let mut out = Vec::with_capacity(args.len());
    for a in args {
        if a.is_empty()
            || a.bytes().any(|b| !(0x20..=0x7e).contains(&b))
            || (a.contains('\'') && a.contains('"'))
        {
            return None;
        }
        if a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"' || c == '#') {
            if a.contains('\'') {
                out.push(format!("\"{a}\""));
            } else {
                out.push(format!("'{a}'"));
            }
        } else {
            out.push(a.clone());
        }
    }
    Some(out.join(" "))
}

/// lvm2's status for the command named `cmd` from the `log` section: its last "status" entry,
/// which must name that command where it names one (a reply credited to the wrong command
/// would give it another command's outcome).
pub fn status_code(doc: &Value, cmd: &str) -> Option<i64> {
    doc.get("log")?
        .as_array()?
        .iter()
        .rev()
        .find(|e| e.get("log_type").and_then(Value::as_str) == Some("status"))
        .filter(|e| {
            e.get("log_object_name")
                .and_then(Value::as_str)
                .is_none_or(|n| n == cmd)
        })
        .and_then(|e| match e.get("log_ret_code")? {
            Value::String(s) => s.trim().parse().ok(),
            Value::Number(n) => n.as_i64(),
            _ => None,
        })
}

/// The messages of a `lastlog` reply, of the given kinds ("error", "warn", "print").
pub fn messages(doc: &Value, kinds: &[&str]) -> Vec<String> {
    doc.get("log")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter(|e| {
                    e.get("log_type")
                        .and_then(Value::as_str)
                        .is_some_and(|t| kinds.contains(&t))
                })
                .filter_map(|e| e.get("log_message").and_then(Value::as_str))
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// The first complete JSON value at the start of `buf`, and the bytes it took; None while
/// more is to come.
fn first_document(buf: &[u8]) -> Result<Option<(Value, usize)>, serde_json::Error> {
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
    match it.next() {
        None => Ok(None),
        Some(Ok(v)) => Ok(Some((v, it.byte_offset()))),
        Some(Err(e)) if e.is_eof() => Ok(None),
        Some(Err(e)) => Err(e),
    }
}

fn nonblocking(fd: std::os::fd::BorrowedFd) -> std::io::Result<()> {
    let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// Reads what is there without blocking; Ok(true) at end of file.
fn drain(r: &mut impl Read, into: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut buf = [0u8; 16384];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

impl Shell {
    /// Starts `lvm` as a shell and asks for its version (answered on first use). None when
    /// lvm2's profile for this is not installed: one process per command then.
    pub fn start(program: &Path) -> Option<Shell> {
        if !Path::new(PROFILE_FILE).is_file() {
            return None;
        }
        Self::spawn(program)
    }

    fn spawn(program: &Path) -> Option<Shell> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ok()?;
        let w_raw = w.as_raw_fd();
        let mut cmd = Command::new(program);
        cmd.env("LC_ALL", "C")
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .env("LVM_COMMAND_PROFILE", PROFILE)
            .env("LVM_REPORT_FD", REPORT_FD.to_string())
            // lvm2 aborts a process that logged too many lines: a shell logs for many commands
            .env("LVM_LOG_FILE_MAX_LINES", "0")
            // The shell writes its history to $HOME after every command: on a frozen or held
            // filesystem that write would block, and guard with it. /dev/null is no folder.
            .env("HOME", "/dev/null")
            .env("TERM", "dumb")
            // not the caller's folder: the shell must pin no filesystem guard may unmount
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                // its own process group: a Ctrl-C at the terminal is guard's to handle, and
                // must not end the shell that is to remove or merge the snapshots
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if w_raw == REPORT_FD {
                    if libc::fcntl(REPORT_FD, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(w_raw, REPORT_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().ok()?;
        drop(w);
        let (stdin, stdout, stderr) = (
            child.stdin.take()?,
            child.stdout.take()?,
            child.stderr.take()?,
        );
        let report = File::from(r);
        let ok = nonblocking(report.as_fd()).is_ok()
            && nonblocking(stdout.as_fd()).is_ok()
            && nonblocking(stderr.as_fd()).is_ok();
        let mut sh = Shell {
            child,
            stdin: Some(stdin),
            busy: false,
            report,
            stdout,
            stderr,
            probed: false,
            unread: Vec::new(),
        };
        if !ok || sh.send("version").is_err() {
            return None;
        }
        Some(sh)
    }

    fn send(&mut self, line: &str) -> std::io::Result<()> {
        let stdin = self.stdin.as_mut().ok_or(std::io::ErrorKind::BrokenPipe)?;
        stdin.write_all(format!("{line}\n").as_bytes())?;
        stdin.flush()
    }

    /// Runs one command (its words, the first being the command's name) and waits for its
    /// report and status.
    pub fn run(&mut self, args: &[String]) -> Result<Reply, Broken> {
        if !self.probed {
            let v = self
                .reply(Some(Instant::now() + PROBE_LIMIT))
                .map_err(|why| broken(why, false))?;
            if status_code(&v.0, "version") != Some(1) {
                return Err(broken(
                    format!(
                        "the lvm shell's `version` did not succeed: {}",
                        String::from_utf8_lossy(&v.1)
                    ),
                    false,
                ));
            }
            self.probed = true;
        }
        let text = line(args).ok_or_else(|| broken("an argument the shell cannot quote", false))?;
        self.send(&text)
            .map_err(|e| broken(format!("cannot write to the lvm shell: {e}"), false))?;
        self.busy = true;
        let (doc, raw) = self.reply(None).map_err(|why| broken(why, true))?;
        self.busy = false;
        let code = status_code(&doc, &args[0]).ok_or_else(|| {
            broken(
                format!("no status for {text} in the lvm shell's reply"),
                true,
            )
        })?;
        Ok(Reply { code, doc: raw })
    }

    /// The messages of the given kinds lvm2 logged for the last command, from `lastlog`.
    pub fn last_messages(&mut self, kinds: &[&str]) -> Result<Vec<String>, Broken> {
        self.send("lastlog")
            .map_err(|e| broken(format!("cannot write to the lvm shell: {e}"), false))?;
        let (doc, _) = self.reply(None).map_err(|why| broken(why, false))?;
        Ok(messages(&doc, kinds))
    }

    /// Reads until one whole JSON document came on the report descriptor. A question on the
    /// terminal ("[y/n]") is answered no by closing the shell's input: guard passes -y where
    /// it means yes, and a shell waiting for an answer would wait forever.
    fn reply(&mut self, deadline: Option<Instant>) -> Result<(Value, Vec<u8>), String> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut report = std::mem::take(&mut self.unread);
        let mut err = Vec::new();
        let mut out = Vec::new();
        loop {
            match first_document(&report) {
                Ok(Some((v, n))) => {
                    self.unread = report.split_off(n);
                    return Ok((v, report));
                }
                Ok(None) => {}
                Err(e) => return Err(format!("the lvm shell's report is not JSON: {e}")),
            }
            let wait = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err("the lvm shell did not answer in time".into());
                    }
                    left.min(Duration::from_secs(1))
                }
                None => Duration::from_secs(1),
            };
            let mut fds = [
                PollFd::new(self.report.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.stderr.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.stdout.as_fd(), PollFlags::POLLIN),
            ];
            let ms = PollTimeout::try_from(wait.as_millis() as i32).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, ms) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(format!("poll: {e}")),
            }
            let eof = drain(&mut self.report, &mut report)
                .map_err(|e| format!("reading the lvm shell's report: {e}"))?;
            let _ = drain(&mut self.stderr, &mut err);
            let _ = drain(&mut self.stdout, &mut out);
            let asked = |b: &[u8]| b.windows(5).any(|w| w == b"[y/n]");
            if self.stdin.is_some() && (asked(&err) || asked(&out)) {
                // End of input is lvm2's "no". Nothing is written into the command stream (in
                // silent mode lvm2 asks without reading, and an answer would run as the next
                // command); the shell ends after this reply and guard goes on without it.
                self.stdin = None;
            }
            if eof || matches!(self.child.try_wait(), Ok(Some(_))) {
                // what it wrote before it ended is still worth a look
                let _ = drain(&mut self.report, &mut report);
                if let Ok(Some((v, n))) = first_document(&report) {
                    self.unread = report.split_off(n);
                    return Ok((v, report));
                }
                return Err(format!(
                    "the lvm shell ended: {}",
                    crate::exec::stderr_tail(&err)
                ));
            }
        }
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        // End of input ends the shell once it is back at its prompt.
        self.stdin = None;
        if self.busy {
            // A command is still running (or its reply was garbled): killing lvm2 half-way
            // could leave an origin suspended. Wait for it.
            let _ = self.child.wait();
        } else if !self.probed {
            // asked only `version`: nothing to harm, and it may never answer
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Else it is idle at its prompt and ends by itself on end of input; not waited for
        // (its own clean-up is ~30 ms under emulation, on every guard command).
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_quote_what_the_shell_would_split() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            line(&a(&["lvcreate", "-s", "-n", "x-guard-1", "vg/x"])).unwrap(),
            "lvcreate -s -n x-guard-1 vg/x"
        );
        assert_eq!(
            line(&a(&["lvs", "--config", "backup { backup = 0 }"])).unwrap(),
            "lvs --config 'backup { backup = 0 }'"
        );
        assert_eq!(line(&a(&["a'b"])).unwrap(), "\"a'b\"");
        assert_eq!(line(&a(&["#tag"])).unwrap(), "'#tag'");
        assert!(line(&a(&["a'b\"c"])).is_none());
        assert!(line(&a(&["a\nb"])).is_none());
        assert!(line(&a(&[""])).is_none());
        assert!(line(&a(&["a\tb"])).is_none());
        assert!(line(&a(&["caf\u{e9}"])).is_none());
        assert!(line(&vec!["x".to_string(); 61]).is_none());
    }

    // Replies captured from lvm 2.03.16's shell in the VM (Debian bookworm).
    const SUCCESS: &str = r#"  {
      "report": [
          {
              "lv": [
                  {"lv_name":"d1", "lv_size":"33554432"}
              ]
          }
      ]
      ,
      "log": [
          {"log_seq_num":"3", "log_type":"status", "log_context":"shell", "log_object_type":"cmd", "log_object_name":"lvs", "log_object_id":"", "log_object_group":"", "log_object_group_id":"", "log_message":"success", "log_errno":"0", "log_ret_code":"1"}
      ]
  }
  {
      "log": ["#;
    const FAILURE: &str = r#"  {
      "log": [
          {"log_seq_num":"3", "log_type":"status", "log_context":"shell", "log_object_type":"cmd", "log_object_name":"lvcreate", "log_object_id":"", "log_object_group":"", "log_object_group_id":"", "log_message":"failure", "log_errno":"0", "log_ret_code":"5"}
      ]
  }
"#;

    #[test]
    fn one_document_is_cut_from_the_stream_with_its_status() {
        let (v, n) = first_document(SUCCESS.as_bytes()).unwrap().unwrap();
        assert_eq!(status_code(&v, "lvs"), Some(1));
        assert!(SUCCESS[n..].trim_start().starts_with('{'));
        let lvs = crate::lvm::report::parse_lvs(&SUCCESS.as_bytes()[..n]).unwrap();
        assert_eq!(lvs[0].name, "d1");
        assert_eq!(lvs[0].size, 32 << 20);
        let (v, _) = first_document(FAILURE.as_bytes()).unwrap().unwrap();
        assert_eq!(status_code(&v, "lvcreate"), Some(5));
        // another command's status is not this one's
        assert_eq!(status_code(&v, "lvremove"), None);
        // a document cut short is waited for, not an error
        assert!(first_document(&FAILURE.as_bytes()[..100])
            .unwrap()
            .is_none());
        assert!(first_document(b"not json").is_err());
    }

    #[test]
    fn lastlog_messages_by_kind() {
        let doc: Value = serde_json::from_str(
            r#"{"log":[{"log_type":"error","log_message":"Logical Volume \"s\" already exists in volume group \"vg\""},
            {"log_type":"print","log_message":"Delaying merge since snapshot is open."},
            {"log_type":"status","log_message":"failure","log_ret_code":"5"}]}"#,
        )
        .unwrap();
        assert_eq!(
            messages(&doc, &["error"]),
            vec!["Logical Volume \"s\" already exists in volume group \"vg\""]
        );
        assert_eq!(messages(&doc, &["print", "warn"]).len(), 1);
        assert_eq!(status_code(&doc, "lvremove"), Some(5));
    }

    /// A stand-in "lvm" (a shell script) that speaks the protocol: proves the reading side
    /// (report on fd 3, questions answered no, an ending shell reported) without LVM.
    fn fake(script: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lvm");
        std::fs::write(&p, format!("#!/bin/sh\n{script}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        (d, p)
    }

    const OK: &str = r#"{"log":[{"log_type":"status","log_ret_code":"1"}]}"#;

    #[test]
    fn a_question_is_answered_no_and_the_status_read() {
        let (_d, p) = fake(&format!(
            r#"while read l; do case "$l" in
  version) echo '{OK}' >&3;;
  ask*) printf 'Really? [y/n]: ' >&2; if ! read a; then echo '{{"log":[{{"log_type":"status","log_ret_code":"5"}}]}}' >&3; exit 0; fi;;
  lvs*) printf '{{"report":[{{"lv":[]}}],\n' >&3; sleep 0.2; echo '"log":[{{"log_type":"status","log_ret_code":"1"}}]}}' >&3;;
  exit) exit 0;;
esac; done"#
        ));
        let mut sh = Shell::spawn(&p).unwrap();
        let r = sh.run(&["lvs".to_string()]).unwrap();
        assert!(r.success());
        assert!(crate::lvm::report::parse_lvs(&r.doc).unwrap().is_empty());
        let r = sh.run(&["ask".to_string()]).unwrap();
        assert_eq!(r.code, 5);
        // its input closed, the shell takes no further command: the caller goes on without it
        let e = sh.run(&["lvs".to_string()]).unwrap_err();
        assert!(!e.sent, "{}", e.why);
    }

    #[test]
    fn a_shell_that_ends_mid_command_is_broken_not_a_success() {
        let (_d, p) = fake(&format!(
            r#"while read l; do case "$l" in
  version) echo '{OK}' >&3;;
  *) echo dying >&2; exit 1;;
esac; done"#
        ));
        let mut sh = Shell::spawn(&p).unwrap();
        let e = sh
            .run(&["lvcreate".to_string(), "-s".to_string()])
            .unwrap_err();
        assert!(e.why.contains("ended") && e.sent, "{}", e.why);
    }

    #[test]
    fn a_shell_that_never_answers_the_probe_is_given_up() {
        let (_d, p) = fake("sleep 30");
        let t = Instant::now();
        let mut sh = Shell::spawn(&p).unwrap();
        let e = sh.run(&["lvs".to_string()]).unwrap_err();
        assert!(e.why.contains("in time") && !e.sent, "{}", e.why);
        // and it is killed, not waited for: it was asked nothing but `version`
        drop(sh);
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}

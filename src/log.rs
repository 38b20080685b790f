//! A run's history for later reading. Under systemd every event goes to the journal with
//! structured fields (GUARD_RUN, GUARD_LV, GUARD_USAGE, …) and a stable MESSAGE_ID per kind of
//! event, so `journalctl -t guard GUARD_RUN=…` or `journalctl MESSAGE_ID=…` find it; elsewhere
//! it goes to syslog. Best effort: logging never fails a run.
//!
//! The journal's native protocol (one datagram of KEY=value lines to
//! /run/systemd/journal/socket) is written here by hand: it is a dozen lines, and the crates
//! that speak it bring a logging facade guard does not otherwise use.
use std::ffi::CString;
use std::os::unix::net::UnixDatagram;
use std::sync::{Mutex, Once, OnceLock};

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Kinds of events. The MESSAGE_IDs are fixed forever: tools and alerts match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Info,
    Warning,
    Error,
    Plan,
    SnapshotCreated,
    Extended,
    Freeze,
    CommandResult,
    RollbackScheduled,
    RollbackCompleted,
    Commit,
    Kept,
    Recover,
}

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::Info,
        Kind::Warning,
        Kind::Error,
        Kind::Plan,
        Kind::SnapshotCreated,
        Kind::Extended,
        Kind::Freeze,
        Kind::CommandResult,
        Kind::RollbackScheduled,
        Kind::RollbackCompleted,
        Kind::Commit,
        Kind::Kept,
        Kind::Recover,
    ];

    pub fn message_id(self) -> &'static str {
        match self {
            Kind::Info => "5c1a0e0f6f3a4d51a3b1c0e9a1d2f001",
            Kind::Warning => "5c1a0e0f6f3a4d51a3b1c0e9a1d2f002",
            Kind::Error => "5c1a0e0f6f3a4d51a3b1c0e9a1d2f003",
            Kind::Plan => "5c1a0e0f6f3a4d51a3b1c0e9a1d2f010",
            Kind::SnapshotCreated => "5c1a0e0f6f3a4d51a3b1c0e9a1d2f011",
            Kind::Extended => "5c1a0e0f6f3a4d51a3b1c0e9a1d2f012",
            Kind::Freeze => "5c1a0e0f6f3a4d51a3b1c0e9a1d2f013",
            Kind::CommandResult => "5c1a0e0f6f3a4d51a3b1c0e9a1d2f014",
            Kind::RollbackScheduled => "5c1a0e0f6f3a4d51a3b1c0e9a1d2f015",
            Kind::RollbackCompleted => "5c1a0e0f6f3a4d51a3b1c0e9a1d2f016",
            Kind::Commit => "5c1a0e0f6f3a4d51a3b1c0e9a1d2f017",
            Kind::Kept => "5c1a0e0f6f3a4d51a3b1c0e9a1d2f018",
            Kind::Recover => "5c1a0e0f6f3a4d51a3b1c0e9a1d2f019",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Info => "info",
            Kind::Warning => "warning",
            Kind::Error => "error",
            Kind::Plan => "plan",
            Kind::SnapshotCreated => "snapshot-created",
            Kind::Extended => "extended",
            Kind::Freeze => "freeze",
            Kind::CommandResult => "command-result",
            Kind::RollbackScheduled => "rollback-scheduled",
            Kind::RollbackCompleted => "rollback-completed",
            Kind::Commit => "commit",
            Kind::Kept => "kept",
            Kind::Recover => "recover",
        }
    }

    fn priority(self) -> i32 {
        match self {
            Kind::Error => libc::LOG_ERR,
            Kind::Warning | Kind::RollbackScheduled | Kind::Freeze => libc::LOG_WARNING,
            Kind::Info => libc::LOG_INFO,
            _ => libc::LOG_NOTICE,
        }
    }
}

/// The run this process works on: added to every event as GUARD_RUN.
static RUN: Mutex<Option<String>> = Mutex::new(None);

pub fn set_run(id: &str) {
    if let Ok(mut r) = RUN.lock() {
        *r = Some(id.to_string());
    }
}

/// Whether events are logged at all (GUARD_NO_SYSLOG turns it off, for tests).
pub fn enabled() -> bool {
    std::env::var_os("GUARD_NO_SYSLOG").is_none()
}

/// systemd names the journal stream it connected to stderr in JOURNAL_STREAM ("dev:ino").
pub fn stderr_is_journal() -> bool {
    static IS: OnceLock<bool> = OnceLock::new();
    *IS.get_or_init(|| {
        let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
            return false;
        };
        let Ok(st) = nix::sys::stat::fstat(2) else {
            return false;
        };
        v.to_string_lossy() == format!("{}:{}", st.st_dev, st.st_ino) && journal_available()
    })
}

/// One event with extra fields (names upper-case, e.g. ("GUARD_LV", "vg0/root")).
pub fn structured(kind: Kind, msg: &str, fields: &[(&str, String)]) {
    if !enabled() {
        return;
    }
    let text = msg.strip_prefix("guard: ").unwrap_or(msg);
    let run = RUN.lock().ok().and_then(|r| r.clone());
    if journal_available() && send_journal(kind, text, run.as_deref(), fields) {
        return;
    }
    syslog(kind, text);
}

fn journal_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| std::path::Path::new(JOURNAL_SOCKET).exists())
}

/// Appends one field in the native protocol's format.
fn field(buf: &mut Vec<u8>, key: &str, value: &str) {
    if value.contains('\n') {
        // KEY\n, then the length as little-endian u64, the bytes, \n
        buf.extend_from_slice(key.as_bytes());
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
        buf.extend_from_slice(value.as_bytes());
        buf.push(b'\n');
    } else {
        buf.extend_from_slice(format!("{key}={value}\n").as_bytes());
    }
}

pub fn journal_datagram(
    kind: Kind,
    msg: &str,
    run: Option<&str>,
    fields: &[(&str, String)],
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256);
    field(&mut buf, "MESSAGE", msg);
    field(&mut buf, "PRIORITY", &kind.priority().to_string());
    field(&mut buf, "SYSLOG_IDENTIFIER", "guard");
    field(&mut buf, "SYSLOG_PID", &std::process::id().to_string());
    field(&mut buf, "MESSAGE_ID", kind.message_id());
    field(&mut buf, "GUARD_EVENT", kind.name());
    if let Some(r) = run {
        field(&mut buf, "GUARD_RUN", r);
    }
    for (k, v) in fields {
        field(&mut buf, k, v);
    }
    buf
}

fn send_journal(kind: Kind, msg: &str, run: Option<&str>, fields: &[(&str, String)]) -> bool {
    let Ok(sock) = UnixDatagram::unbound() else {
        return false;
    };
    // Never wait for journald: with / frozen by guard it cannot write its files, its queue
    // fills, and a blocking send would stop guard from acting on `guard rollback` or
    // `guard resume`, the very commands that end the freeze. A full queue drops the line
    // (stderr still has it) rather than falling back to syslog, which would block the same way.
    if sock.set_nonblocking(true).is_err() {
        return false;
    }
    match sock.send_to(&journal_datagram(kind, msg, run, fields), JOURNAL_SOCKET) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
    }
}

/// One line in the kernel's log, which its console prints (serial consoles, a cloud's console
/// log). For what must outlive a rollback of / that takes the journal with it: a write to
/// /dev/kmsg never blocks on a slow or stuck console, unlike a write to /dev/console.
pub fn kernel_line(kind: Kind, msg: &str) {
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .and_then(|mut f| std::io::Write::write_all(&mut f, &kmsg_record(kind, msg)));
}

/// "<PRIORITY>guard: MESSAGE\n", one line: the kernel keeps one record per write, and refuses
/// a write longer than a record (~976 bytes on 6.1) whole: a long reason (twenty services down,
/// a check's output) is cut short rather than lost. Control characters (a check's output may
/// carry escapes) become spaces: they would go to the console raw.
fn kmsg_record(kind: Kind, msg: &str) -> Vec<u8> {
    const MAX: usize = 900;
    let mut text: String = msg
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.len() > MAX {
        let mut cut = MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    format!("<{}>guard: {text}\n", kind.priority()).into_bytes()
}

fn syslog(kind: Kind, text: &str) {
    static OPEN: Once = Once::new();
    OPEN.call_once(|| {
        // SAFETY: the identity string is 'static, as openlog requires.
        unsafe { libc::openlog(c"guard".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
    });
    if let Ok(c) = CString::new(text.replace('\0', " ")) {
        // SAFETY: "%s" with one NUL-terminated argument.
        unsafe { libc::syslog(kind.priority(), c"%s".as_ptr(), c.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_log_line_is_one_record_at_the_kind_s_priority() {
        let r = kmsg_record(Kind::Error, "run r1: trial boot failed: a\nb\x1b[2J");
        assert_eq!(r, b"<3>guard: run r1: trial boot failed: a b [2J\n");
        // too long for one record: cut on a character boundary, marked, still one line
        let long = kmsg_record(Kind::Error, &"é".repeat(1000));
        let text = String::from_utf8(long).unwrap();
        assert!(text.len() < 976 && text.ends_with("…\n"), "{}", text.len());
        assert_eq!(text.matches('\n').count(), 1);
    }

    #[test]
    fn datagram_carries_the_fields_and_encodes_multiline_values() {
        let d = journal_datagram(
            Kind::Extended,
            "vg/a: extended",
            Some("r1"),
            &[
                ("GUARD_LV", "vg/a".into()),
                ("GUARD_NOTE", "two\nlines".into()),
            ],
        );
        let s = String::from_utf8_lossy(&d);
        assert!(s.starts_with("MESSAGE=vg/a: extended\nPRIORITY=5\n"), "{s}");
        assert!(s.contains("MESSAGE_ID=5c1a0e0f6f3a4d51a3b1c0e9a1d2f012\n"));
        assert!(s.contains("GUARD_RUN=r1\nGUARD_LV=vg/a\n"));
        let mut want = b"GUARD_NOTE\n".to_vec();
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(b"two\nlines\n");
        assert!(d.ends_with(&want));
    }

    #[test]
    fn message_ids_are_distinct() {
        let all = Kind::ALL;
        let mut ids: Vec<_> = all.iter().map(|k| k.message_id()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), all.len());
    }
}

//! A run's history for later reading: every operator line also goes to syslog (the journal on
//! systemd hosts picks it up as `journalctl -t guard`). Best effort: logging never fails a run.
use std::ffi::CString;
use std::sync::Once;

static OPEN: Once = Once::new();

pub fn event(msg: &str) {
    if std::env::var_os("GUARD_NO_SYSLOG").is_some() {
        return;
    }
    OPEN.call_once(|| {
        // SAFETY: the identity string is 'static, as openlog requires.
        unsafe { libc::openlog(c"guard".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
    });
    let text = msg.strip_prefix("guard: ").unwrap_or(msg);
    if let Ok(c) = CString::new(text.replace('\0', " ")) {
        // SAFETY: "%s" with one NUL-terminated argument.
        unsafe { libc::syslog(libc::LOG_NOTICE, c"%s".as_ptr(), c.as_ptr()) };
    }
}

//! Lines for the operator on stderr. Writes never panic: when the SSH session that started guard
//! drops, stderr becomes a dead terminal, and guard must still finish the transaction.
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);
/// Set while stderr leads to a filesystem guard holds frozen (`guard … 2>>/var/log/x` with /var
/// held): a write there would block guard until a thaw only guard can do. The journal still
/// gets every line (without waiting).
static MUTED: AtomicBool = AtomicBool::new(false);

pub fn set_muted(m: bool) {
    MUTED.store(m, Ordering::Relaxed);
}

pub fn set_quiet(q: bool) {
    QUIET.store(q, Ordering::Relaxed);
}

use crate::log::Kind;

fn emit(kind: Kind, line: &str, fields: &[(&str, String)]) {
    // Under a systemd unit stderr is itself a journal stream: the structured entry is enough.
    if (!crate::log::stderr_is_journal() || !crate::log::enabled())
        && !MUTED.load(Ordering::Relaxed)
    {
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
    crate::log::structured(kind, line, fields);
}

/// An event worth its own MESSAGE_ID in the journal (snapshot created, rollback scheduled…),
/// shown like `say`.
pub fn event(kind: Kind, msg: &str, fields: &[(&str, String)]) {
    if QUIET.load(Ordering::Relaxed) {
        crate::log::structured(kind, msg, fields);
    } else {
        emit(kind, &format!("guard: {msg}"), fields);
    }
}

/// Progress, suppressed by --quiet.
pub fn say(msg: &str) {
    event(Kind::Info, msg, &[]);
}

/// Always shown: something the operator must know.
pub fn warn(msg: &str) {
    emit(Kind::Warning, &format!("guard: warning: {msg}"), &[]);
}

pub fn error(msg: &str) {
    emit(Kind::Error, &format!("guard: error: {msg}"), &[]);
}

/// Text printed as it is (plans, summaries), still never panicking.
pub fn print_block(text: &str) {
    if !MUTED.load(Ordering::Relaxed) {
        let _ = write!(std::io::stderr().lock(), "{text}");
    }
}

pub fn is_quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Output on stdout (status, policy lists, JSON, completions). A reader that went away (`guard
/// status | head -3`) ends the output quietly with exit status 0, as ripgrep does (a pipeline
/// under `pipefail` does not fail for a `head`); any other failure to write (a full disk under
/// `> file`) is an error. Never a panic (println! panics on a closed pipe).
pub fn out(text: impl AsRef<[u8]>) -> crate::error::Result<()> {
    let mut o = std::io::stdout().lock();
    // flushed here: an error at exit, past the last write, would go unseen
    match o.write_all(text.as_ref()).and_then(|_| o.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(crate::error::Error::io(
            "cannot write to standard output",
            e,
        )),
        _ => Ok(()),
    }
}

//! Lines for the operator on stderr. Writes never panic: when the SSH session that started guard
//! drops, stderr becomes a dead terminal, and guard must still finish the transaction.
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);

pub fn set_quiet(q: bool) {
    QUIET.store(q, Ordering::Relaxed);
}

fn emit(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
    crate::log::event(line);
}

/// Progress, suppressed by --quiet.
pub fn say(msg: &str) {
    if QUIET.load(Ordering::Relaxed) {
        crate::log::event(msg);
    } else {
        emit(&format!("guard: {msg}"));
    }
}

/// Always shown: something the operator must know.
pub fn warn(msg: &str) {
    emit(&format!("guard: warning: {msg}"));
}

pub fn error(msg: &str) {
    emit(&format!("guard: error: {msg}"));
}

/// Text printed as it is (plans, summaries), still never panicking.
pub fn print_block(text: &str) {
    let _ = write!(std::io::stderr().lock(), "{text}");
}

pub fn is_quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

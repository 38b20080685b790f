//! Fault injection for the test suites (the kill and power-cut matrices): named points in the
//! transaction where `GUARD_TEST_FAULT` makes guard pause or fail, so a test can kill guard, or
//! cut the VM's power, at an exact phase. lvm2 has the same kind of hooks for its own tests.
//!
//!   GUARD_TEST_FAULT="pause:after-snapshot-1:30"   sleep 30 s at that point
//!   GUARD_TEST_FAULT="fail:snapshot-2"             make that step fail
//! Several entries are separated by commas. Unset (always, outside tests) it costs one getenv.
use std::time::Duration;

fn entries() -> Vec<(String, String, Option<u64>)> {
    let Ok(v) = std::env::var("GUARD_TEST_FAULT") else {
        return vec![];
    };
    v.split(',')
        .filter_map(|e| {
            let mut it = e.splitn(3, ':');
            let kind = it.next()?.to_string();
            let point = it.next()?.to_string();
            let secs = it.next().and_then(|s| s.parse().ok());
            Some((kind, point, secs))
        })
        .collect()
}

/// At a pause point: prints where it is (the test waits for this line), then sleeps.
pub fn pause(point: &str) {
    for (kind, p, secs) in entries() {
        if kind == "pause" && p == point {
            crate::ui::warn(&format!("test fault: pausing at {point}"));
            std::thread::sleep(Duration::from_secs(secs.unwrap_or(30)));
        }
    }
}

/// Whether the step at `point` is to fail.
pub fn fail(point: &str) -> bool {
    entries().iter().any(|(k, p, _)| k == "fail" && p == point)
}

//! Bounding the page cache's dirty data while a snapshot's room is short (Trust, item 10).
//!
//! A buffered writer can dirty far more page cache than a snapshot with a few MiB of VG room
//! left can take: the kernel writes it back (or a freeze flushes it) into the COW area at once,
//! and the snapshot is invalidated before the watcher can act. The per-device limits that would
//! bound one disk alone (`strict_limit`, `max_bytes`) arrived after Debian 12's 6.1 kernel, and
//! `max_ratio` alone does not bind a lone writer below the global "free run" threshold. So while
//! the room is short guard lowers the global limits (`vm.dirty_bytes`,
//! `vm.dirty_background_bytes`) to a fraction of the room, and puts the old values back when the
//! run ends; `guard recover` puts them back if guard died (the old values are kept in
//! /run/guard/dirty-limits). Writers are then throttled to the device's pace, and whatever is
//! dirty when guard freezes always fits.
use std::path::PathBuf;

const MIB: u64 = 1 << 20;

fn sysctl_dir() -> PathBuf {
    std::env::var_os("GUARD_SYSCTL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/proc/sys/vm".into())
}

fn saved_file() -> PathBuf {
    std::env::var_os("GUARD_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/run/guard".into())
        .join("dirty-limits")
}

fn read(name: &str) -> Option<u64> {
    std::fs::read_to_string(sysctl_dir().join(name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn write(name: &str, v: u64) -> std::io::Result<()> {
    std::fs::write(sysctl_dir().join(name), v.to_string())
}

/// The kernel's limits as they were: bytes, or a ratio when bytes is 0 (the two exclude each
/// other; writing one zeroes the other).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Limits {
    bytes: u64,
    ratio: u64,
    bg_bytes: u64,
    bg_ratio: u64,
}

impl Limits {
    fn read() -> Option<Limits> {
        Some(Limits {
            bytes: read("dirty_bytes")?,
            ratio: read("dirty_ratio")?,
            bg_bytes: read("dirty_background_bytes")?,
            bg_ratio: read("dirty_background_ratio")?,
        })
    }

    fn apply(self) -> std::io::Result<()> {
        // the ratio form is restored by writing the ratio (which zeroes the bytes form)
        if self.bytes > 0 {
            write("dirty_bytes", self.bytes)?;
        } else {
            write("dirty_ratio", self.ratio)?;
        }
        if self.bg_bytes > 0 {
            write("dirty_background_bytes", self.bg_bytes)
        } else {
            write("dirty_background_ratio", self.bg_ratio)
        }
    }

    /// The record: owner's PID and start time (a recycled PID is not the owner), then the old
    /// values.
    fn to_line(self) -> String {
        let me = std::process::id();
        format!(
            "{me} {} {} {} {} {}",
            crate::store::journal::process_start(me).unwrap_or(0),
            self.bytes,
            self.ratio,
            self.bg_bytes,
            self.bg_ratio
        )
    }

    fn from_line(s: &str) -> Option<(Owner, Limits)> {
        let v: Vec<u64> = s
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        (v.len() == 6).then(|| {
            (
                Owner {
                    pid: v[0] as u32,
                    start: v[1],
                },
                Limits {
                    bytes: v[2],
                    ratio: v[3],
                    bg_bytes: v[4],
                    bg_ratio: v[5],
                },
            )
        })
    }
}

/// The guard that lowered the limits.
#[derive(Debug, Clone, Copy)]
struct Owner {
    pid: u32,
    start: u64,
}

impl Owner {
    fn is_other_live_guard(self) -> bool {
        self.pid != std::process::id() && crate::store::journal::process_alive(self.pid, self.start)
    }
}

fn record() -> Option<(Owner, Limits)> {
    std::fs::read_to_string(saved_file())
        .ok()
        .and_then(|t| Limits::from_line(&t))
}

/// The dirty limit in force, in bytes (the ratio form is a share of the memory available).
pub fn effective_limit() -> u64 {
    let Some(l) = Limits::read() else {
        return u64::MAX;
    };
    if l.bytes > 0 {
        return l.bytes;
    }
    let avail = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    avail / 100 * l.ratio
}

/// The limit to set for `room` bytes of COW room left, if it is lower than `current`: a
/// quarter of the room (background writeback starts at half of that), never under 1 MiB.
pub fn target_for(room: u64, kernel: u64) -> Option<u64> {
    // only when the cache could hold more than the room: otherwise the kernel's own limit
    let t = (room / 4).max(MIB);
    (t < kernel).then_some(t)
}

/// Lowered limits, put back on drop.
#[derive(Debug, Default)]
pub struct DirtyLimit {
    saved: Option<Limits>,
    pub current: Option<u64>,
}

impl DirtyLimit {
    /// Sets the limit to `bytes`, below the kernel's own (lower as the room shrinks, higher as
    /// extensions give room back). Ok(true) when it changed.
    pub fn tighten(&mut self, bytes: u64) -> std::io::Result<bool> {
        if self.current == Some(bytes) || self.current == Some(0) {
            return Ok(false);
        }
        if self.saved.is_none() {
            let old = match record() {
                // another live guard lowered them and puts them back: its record must stay the
                // true old values. It bounds for its own room; this run says it relies on that.
                Some((owner, _)) if owner.is_other_live_guard() => {
                    crate::ui::warn(&format!(
                        "the dirty page cache is already bounded by guard pid {}; this run does not lower it further",
                        owner.pid
                    ));
                    self.current = Some(0);
                    return Ok(false);
                }
                // a guard that died left them lowered: its record holds the true old values
                // (the kernel's current ones are its lowered ones)
                Some((_, old)) => old,
                None => match Limits::read() {
                    Some(l) => l,
                    None => return Ok(false),
                },
            };
            // a record for recover, before anything changes
            if let Some(dir) = saved_file().parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            std::fs::write(saved_file(), old.to_line())?;
            self.saved = Some(old);
        }
        write("dirty_bytes", bytes)?;
        write("dirty_background_bytes", (bytes / 2).max(MIB / 2))?;
        self.current = Some(bytes);
        Ok(true)
    }

    /// Puts the kernel's limits back as they were.
    pub fn restore(&mut self) {
        if let Some(old) = self.saved.take() {
            if let Err(e) = old.apply() {
                crate::ui::warn(&format!(
                    "cannot restore the kernel's dirty page limits ({e}); `guard recover` will"
                ));
                return;
            }
            let _ = std::fs::remove_file(saved_file());
            self.current = None;
        }
    }
}

impl Drop for DirtyLimit {
    fn drop(&mut self) {
        self.restore();
    }
}

/// For `guard recover`: limits a guard that is gone left lowered are put back. Returns what it
/// did, if anything.
pub fn restore_after_crash() -> Option<String> {
    let (owner, old) = record()?;
    if owner.is_other_live_guard() || owner.pid == std::process::id() {
        return None;
    }
    old.apply().ok()?;
    let _ = std::fs::remove_file(saved_file());
    Some("restored the kernel's dirty page limits a guard that is gone had lowered".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_a_quarter_of_the_room_and_only_when_the_cache_could_overflow_it() {
        assert_eq!(target_for(16 * MIB, 200 * MIB), Some(4 * MIB));
        assert_eq!(target_for(2 * MIB, 200 * MIB), Some(MIB));
        // plenty of room for all the cache can hold: the kernel's own limit
        assert_eq!(target_for(1 << 40, 200 * MIB), None);
        assert_eq!(target_for(16 * MIB, 2 * MIB), None);
    }

    #[test]
    fn limits_are_lowered_then_put_back_as_they_were() {
        let d = tempfile::tempdir().unwrap();
        for (n, v) in [
            ("dirty_bytes", "0"),
            ("dirty_ratio", "20"),
            ("dirty_background_bytes", "0"),
            ("dirty_background_ratio", "10"),
        ] {
            std::fs::write(d.path().join(n), v).unwrap();
        }
        std::env::set_var("GUARD_SYSCTL_DIR", d.path());
        std::env::set_var("GUARD_RUN_DIR", d.path().join("run"));
        let mut l = DirtyLimit::default();
        assert!(l.tighten(4 * MIB).unwrap());
        assert!(!l.tighten(4 * MIB).unwrap());
        assert_eq!(read("dirty_bytes"), Some(4 * MIB));
        // raised again as extensions give room back
        assert!(l.tighten(8 * MIB).unwrap());
        assert_eq!(read("dirty_bytes"), Some(8 * MIB));
        assert!(saved_file().exists());
        drop(l);
        // the ratio form is back (as the kernel would zero bytes when the ratio is written)
        assert_eq!(read("dirty_ratio"), Some(20));
        assert_eq!(read("dirty_background_ratio"), Some(10));
        assert!(!saved_file().exists());

        // a guard killed while it held them lowered: the next one takes the old values from
        // its record, never the kernel's current (lowered) ones
        std::fs::write(d.path().join("dirty_bytes"), (4 * MIB).to_string()).unwrap();
        std::fs::write(d.path().join("dirty_ratio"), "0").unwrap();
        std::fs::create_dir_all(d.path().join("run")).unwrap();
        std::fs::write(saved_file(), "4194303 1 0 20 0 10").unwrap();
        let mut l = DirtyLimit::default();
        assert!(l.tighten(2 * MIB).unwrap());
        l.restore();
        assert_eq!(read("dirty_ratio"), Some(20), "the dead guard's old values");
        std::env::remove_var("GUARD_SYSCTL_DIR");
        std::env::remove_var("GUARD_RUN_DIR");
    }
}

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

    fn to_line(self) -> String {
        format!(
            "{} {} {} {} {}",
            std::process::id(),
            self.bytes,
            self.ratio,
            self.bg_bytes,
            self.bg_ratio
        )
    }

    fn from_line(s: &str) -> Option<(u32, Limits)> {
        let v: Vec<u64> = s
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        (v.len() == 5).then(|| {
            (
                v[0] as u32,
                Limits {
                    bytes: v[1],
                    ratio: v[2],
                    bg_bytes: v[3],
                    bg_ratio: v[4],
                },
            )
        })
    }
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
pub fn target_for(room: u64, current: u64) -> Option<u64> {
    // only when the cache could hold more than half the room
    if room / 2 > current {
        return None;
    }
    let t = (room / 4).max(MIB);
    (t < current).then_some(t)
}

/// Lowered limits, put back on drop.
#[derive(Debug, Default)]
pub struct DirtyLimit {
    saved: Option<Limits>,
    pub current: Option<u64>,
}

impl DirtyLimit {
    /// Lowers the limit to `bytes` (never raises it during a run). Ok(true) when it changed.
    pub fn tighten(&mut self, bytes: u64) -> std::io::Result<bool> {
        if self.current.is_some_and(|c| c <= bytes) {
            return Ok(false);
        }
        if self.saved.is_none() {
            // another live guard lowered them and will put them back: its record must stay the
            // true old values, so this run leaves them to it
            if let Some((pid, _)) = std::fs::read_to_string(saved_file())
                .ok()
                .and_then(|t| Limits::from_line(&t))
            {
                if pid != std::process::id()
                    && std::path::Path::new(&format!("/proc/{pid}")).exists()
                {
                    return Ok(false);
                }
            }
            let Some(old) = Limits::read() else {
                return Ok(false);
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
    let text = std::fs::read_to_string(saved_file()).ok()?;
    let (pid, old) = Limits::from_line(&text)?;
    if std::path::Path::new(&format!("/proc/{pid}")).exists() && pid != std::process::id() {
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
        // plenty of room for all the cache can hold: nothing to do
        assert_eq!(target_for(1 << 40, 200 * MIB), None);
        // never raised
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
        assert!(!l.tighten(8 * MIB).unwrap(), "never raised during a run");
        assert_eq!(read("dirty_bytes"), Some(4 * MIB));
        assert!(saved_file().exists());
        drop(l);
        // the ratio form is back (as the kernel would zero bytes when the ratio is written)
        assert_eq!(read("dirty_ratio"), Some(20));
        assert_eq!(read("dirty_background_ratio"), Some(10));
        assert!(!saved_file().exists());
        std::env::remove_var("GUARD_SYSCTL_DIR");
        std::env::remove_var("GUARD_RUN_DIR");
    }
}

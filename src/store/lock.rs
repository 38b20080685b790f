//! One lock per LV (flock on /run/lock/guard/<LV uuid>.lock): a second guard on an overlapping
//! set is refused at once, naming the holder, or waits with --wait. The lock is the kernel's, so
//! a guard killed by -9 releases it; and /run is emptied at boot. Keyed by UUID because LV names
//! with hyphens would make "vg-lv" file names ambiguous. One lock per run too
//! (run-<id>.lock), for the commands that act on a run.
//!
//! /run/lock is writable by every user: the folder must be root's and 0700 (tmpfiles.d makes it
//! at boot; guard makes it so otherwise), and lock files are opened with O_NOFOLLOW and checked
//! (store.rs), or a user could plant a symlink guard truncates as root, or hold the locks.
use crate::error::{Error, Result};
use crate::store::{Folder, Open, SecureDir};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

pub fn lock_dir() -> PathBuf {
    std::env::var_os("GUARD_LOCK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/run/lock/guard".into())
}

/// The lock folder, made 0700 or checked to be root's and closed to others.
pub fn open_lock_dir() -> Result<SecureDir> {
    crate::store::secure_dir(&lock_dir(), Folder::Runtime)
}

/// Held locks; dropping it releases them.
#[derive(Debug)]
pub struct LvLocks {
    files: Vec<File>,
}

impl Drop for LvLocks {
    fn drop(&mut self) {
        // emptied before the lock goes (see `taken_after`): the next taker sees when, and that
        // its holder let go rather than died
        for f in &self.files {
            let _ = f.set_len(0);
        }
    }
}

/// A held run lock; dropping it releases it.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// What one LV to lock is: its uuid and the name to show.
pub struct LockTarget {
    pub uuid: String,
    pub name: String,
}

fn flock(f: &File, wait: bool) -> std::io::Result<bool> {
    let op = libc::LOCK_EX | if wait { 0 } else { libc::LOCK_NB };
    loop {
        // SAFETY: flock on a descriptor we own.
        let r = unsafe { libc::flock(f.as_raw_fd(), op) };
        if r == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// How a lock attempt ended.
enum Got {
    Locked(File),
    /// Held by another: what its holder wrote (pid, command).
    Held(File, String),
}

fn try_lock(dir: &SecureDir, name: &str) -> Result<Got> {
    let mut f = dir.open(name, Open::Create)?;
    let path = dir.join(name);
    if flock(&f, false).map_err(|e| Error::io(format!("cannot lock {}", path.display()), e))? {
        return Ok(Got::Locked(f));
    }
    let mut who = String::new();
    let _ = f.read_to_string(&mut who);
    Ok(Got::Held(f, who.trim().replace('\n', ", ")))
}

fn wait_lock(dir: &SecureDir, name: &str, f: &File) -> Result<()> {
    flock(f, true)
        .map(|_| ())
        .map_err(|e| Error::io(format!("cannot lock {}", dir.join(name).display()), e))
}

/// Says who holds the lock now (the file is 0600: the command line is for root only).
fn mark(f: &mut File, holder: &str) {
    f.set_len(0).ok();
    f.rewind().ok();
    if writeln!(f, "pid {}\n{holder}", std::process::id()).is_err() {
        // (a full tmpfs, which any user can fill through /run/lock) the file must still not
        // read as let go should this holder die (see `taken_after`): growing it takes no space
        let _ = f.set_len(1);
    }
}

/// Whether a volume's lock changed hands while the caller was not holding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contended {
    No,
    /// Another guard held one of the locks after `since` (or the caller waited for it): what
    /// the caller read of the volumes before locking may be out of date.
    Yes,
}

/// Locks every target, in UUID order so that two waiting guards cannot deadlock. `since`:
/// when the caller's view of the volumes was taken (a run plans before it locks, from a
/// report started with the process); a lock another guard took after it counts as contended.
pub fn lock_all(
    targets: &[LockTarget],
    holder: &str,
    wait: bool,
    since: Option<Since>,
) -> Result<(LvLocks, Contended)> {
    lock_all_in(&open_lock_dir()?, targets, holder, wait, since)
}

/// A moment on two clocks: the one the kernel stamps files with (the coarse real-time clock)
/// and the boot clock, which no one can set, to tell when the first was stepped back.
#[derive(Debug, Clone, Copy)]
pub struct Since {
    wall: SystemTime,
    boot: Duration,
}

impl Since {
    /// Before anything: every lock counts as taken since.
    pub const EPOCH: Since = Since {
        wall: SystemTime::UNIX_EPOCH,
        boot: Duration::ZERO,
    };

    /// Now. What happens after this call has an mtime at or after `wall`, unless the clock is
    /// set back meanwhile (see `stepped_back`). (A precise reading could be a tick later than
    /// the mtime of a lock taken after it; a slack for that would make back-to-back runs of a
    /// pipeline look again for nothing.)
    pub fn now() -> Since {
        use nix::time::{clock_gettime, ClockId};
        let read = |c| {
            clock_gettime(c).ok().and_then(|t| {
                Some(Duration::new(
                    u64::try_from(t.tv_sec()).ok()?,
                    u32::try_from(t.tv_nsec()).ok()?,
                ))
            })
        };
        Since {
            // unreadable: the epoch, and every lock counts as taken since
            wall: read(ClockId::CLOCK_REALTIME_COARSE)
                .and_then(|d| SystemTime::UNIX_EPOCH.checked_add(d))
                .unwrap_or(SystemTime::UNIX_EPOCH),
            boot: read(ClockId::CLOCK_BOOTTIME).unwrap_or_default(),
        }
    }

    /// Whether the wall clock went back since (an NTP step, `date -s`): file times after this
    /// moment may then read as before it. Slewing (at most 500 ppm) and the coarse clock's
    /// tick are inside the 50 ms allowed.
    fn stepped_back(&self) -> bool {
        let now = Since::now();
        let wall = now.wall.duration_since(self.wall).unwrap_or_default();
        let boot = now.boot.saturating_sub(self.boot);
        wall + Duration::from_millis(50) + boot / 1000 < boot
    }
}

/// Whether the lock changed hands after `since`: every holder writes its name into the file
/// when it takes the lock (`mark`) and empties it when it lets go (`LvLocks`'s drop), and both
/// set the file's mtime (ftruncate stamps it even when the size does not change). So a file
/// that still names a holder had one that died holding it, and an mtime at or after `since`
/// means a holder took or let go of it since (a file made by this open counts too: the first
/// run on a volume after boot looks again once).
fn taken_after(f: &File, since: Option<&Since>) -> bool {
    let Some(since) = since else { return false };
    // unknown counts as taken: the caller then only looks again
    f.metadata()
        .and_then(|m| Ok(m.len() > 0 || m.modified()? >= since.wall))
        .unwrap_or(true)
}

fn lock_all_in(
    dir: &SecureDir,
    targets: &[LockTarget],
    holder: &str,
    wait: bool,
    since: Option<Since>,
) -> Result<(LvLocks, Contended)> {
    let mut sorted: Vec<&LockTarget> = targets.iter().collect();
    sorted.sort_by(|a, b| a.uuid.cmp(&b.uuid));
    // held in an LvLocks from the first: a refusal part-way lets go of the others as a release
    // does (emptied, so the next taker does not think their holder died)
    let mut held = LvLocks { files: Vec::new() };
    let mut contended = Contended::No;
    if since.is_some_and(|s| s.stepped_back()) {
        contended = Contended::Yes;
    }
    for t in sorted {
        let name = format!("{}.lock", t.uuid);
        let mut f = match try_lock(dir, &name)? {
            Got::Locked(f) => {
                if taken_after(&f, since.as_ref()) {
                    contended = Contended::Yes;
                }
                f
            }
            Got::Held(f, who) => {
                if !wait {
                    return Err(Error::refused(
                        format!("{} is in use by another guard run ({who})", t.name),
                        "wait for it to finish, or pass --wait to queue behind it",
                    ));
                }
                crate::ui::say(&format!(
                    "waiting for the guard run holding {} ({who})",
                    t.name
                ));
                wait_lock(dir, &name, &f)?;
                contended = Contended::Yes;
                f
            }
        };
        mark(&mut f, holder);
        held.files.push(f);
    }
    Ok((held, contended))
}

fn run_lock_name(run_id: &str) -> Result<String> {
    if !crate::store::journal::valid_run_id(run_id) {
        return Err(Error::refused(
            format!("{run_id:?} is not a run id"),
            "list runs with `guard status --all`",
        ));
    }
    Ok(format!("run-{run_id}.lock"))
}

/// Locks one run (flock on run-<id>.lock), so that two commands never act on it at once:
/// refused at once, naming the holder, or (wait) queued behind it.
pub fn lock_run(run_id: &str, holder: &str, wait: bool) -> Result<RunLock> {
    lock_run_in(&open_lock_dir()?, run_id, holder, wait)
}

fn lock_run_in(dir: &SecureDir, run_id: &str, holder: &str, wait: bool) -> Result<RunLock> {
    let name = run_lock_name(run_id)?;
    let mut f = match try_lock(dir, &name)? {
        Got::Locked(f) => f,
        Got::Held(f, who) => {
            if !wait {
                return Err(Error::refused(
                    format!("run {run_id} is in use by another guard command ({who})"),
                    "wait for it, or retry",
                ));
            }
            crate::ui::say(&format!(
                "waiting for the guard command holding run {run_id} ({who})"
            ));
            wait_lock(dir, &name, &f)?;
            f
        }
    };
    mark(&mut f, holder);
    Ok(RunLock { _file: f })
}

/// Locks one run if nobody holds it: None when another guard command does.
pub fn try_lock_run(run_id: &str) -> Result<Option<RunLock>> {
    try_lock_run_in(&open_lock_dir()?, run_id)
}

fn try_lock_run_in(dir: &SecureDir, run_id: &str) -> Result<Option<RunLock>> {
    match try_lock(dir, &run_lock_name(run_id)?)? {
        Got::Locked(mut f) => {
            mark(&mut f, &format!("run {run_id}"));
            Ok(Some(RunLock { _file: f }))
        }
        Got::Held(..) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::secure_dir;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn target() -> Vec<LockTarget> {
        vec![LockTarget {
            uuid: "u1".into(),
            name: "vg/a".into(),
        }]
    }

    #[test]
    fn second_locker_is_refused_with_the_holder_named() {
        let d = tempfile::tempdir().unwrap();
        // an explicit folder: the environment is shared by tests running in parallel
        let dir = secure_dir(&d.path().join("locks"), crate::store::Folder::Runtime).unwrap();
        let t = target;
        let (held, _) = lock_all_in(&dir, &t(), "guard -- sleep 9", false, None).unwrap();
        // flock locks belong to the open file description: a second open conflicts even
        // inside one process, as a second guard would.
        let err = lock_all_in(&dir, &t(), "x", false, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("vg/a is in use"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        assert!(err.contains("sleep 9"), "{err}");
        drop(held);
        assert!(lock_all_in(&dir, &t(), "x", false, None).is_ok());
    }

    #[test]
    fn a_refusal_part_way_lets_go_of_the_others_as_a_release_does() {
        let d = tempfile::tempdir().unwrap();
        let dir = secure_dir(&d.path().join("locks"), crate::store::Folder::Runtime).unwrap();
        let t = |u: &str| LockTarget {
            uuid: u.into(),
            name: format!("vg/{u}"),
        };
        let (_other, _) = lock_all_in(&dir, &[t("u2")], "other", false, None).unwrap();
        let err = lock_all_in(&dir, &[t("u1"), t("u2")], "x", false, None).unwrap_err();
        assert!(err.to_string().contains("vg/u2 is in use"), "{err}");
        // u1 was taken and marked first: emptied on the way out, not left naming a holder
        let len = std::fs::metadata(dir.join("u1.lock")).unwrap().len();
        assert_eq!(len, 0);
    }

    #[test]
    fn a_wall_clock_set_back_is_seen_on_the_boot_clock() {
        let now = Since::now();
        assert!(!now.stepped_back());
        // a second ago on the boot clock, ten seconds ahead on the wall clock: since then the
        // wall clock went back
        let before = Since {
            wall: now.wall + Duration::from_secs(10),
            boot: now.boot.saturating_sub(Duration::from_secs(1)),
        };
        assert!(before.stepped_back());
        let honest = Since {
            wall: now.wall - Duration::from_secs(1),
            boot: now.boot.saturating_sub(Duration::from_secs(1)),
        };
        assert!(!honest.stepped_back());
    }

    #[test]
    fn a_lock_that_changed_hands_after_the_callers_report_is_contended() {
        // tmpfs where there is one, as /run/lock is
        let d = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .unwrap();
        let dir = secure_dir(&d.path().join("locks"), crate::store::Folder::Runtime).unwrap();
        let ms = Duration::from_millis;
        // (another test's child between fork and exec can hold a copy of the descriptor for a
        // moment after a drop: a retry, not a failure)
        let lock = |since| {
            let mut tries = 0;
            loop {
                match lock_all_in(&dir, &target(), "x", false, Some(since)) {
                    Ok(l) => return l,
                    Err(e) if tries < 50 => {
                        tries += 1;
                        assert!(e.to_string().contains("in use"), "{e}");
                        std::thread::sleep(ms(10));
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        };
        // taken and let go before the caller's view: current
        drop(lock(Since::now()));
        std::thread::sleep(ms(100));
        let (l, c) = lock(Since::now());
        assert_eq!(c, Contended::No);
        // another guard held it after the caller's view
        let view = Since::now();
        drop(l);
        assert_eq!(lock(view).1, Contended::Yes);
        // taken before the view, let go after it (a run that made a kept snapshot meanwhile)
        let (other, _) = lock(Since::now());
        std::thread::sleep(ms(100));
        let view = Since::now();
        std::thread::sleep(ms(100));
        drop(other);
        assert_eq!(lock(view).1, Contended::Yes);
        // a holder that died holding it (its name still there) let go at an unknown time
        std::thread::sleep(ms(100));
        let mut later = Since::now();
        later.wall += ms(500);
        std::fs::write(dir.join("u1.lock"), "pid 1\nkilled\n").unwrap();
        assert_eq!(lock(later).1, Contended::Yes);
    }

    #[test]
    fn a_planted_symlink_lock_file_is_refused_and_its_target_untouched() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let dir = secure_dir(&d.path().join("locks"), Folder::Runtime).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("u1.lock")).unwrap();
        let err = lock_all_in(&dir, &target(), "guard -- x", false, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("u1.lock is a symlink"), "{err}");
        assert!(err.contains("fix: remove it"), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    }

    #[test]
    fn a_lock_dir_open_to_others_is_refused_with_the_fix_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("locks");
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err = secure_dir(&p, Folder::Runtime).unwrap_err().to_string();
        assert!(
            err.contains("writable by group or others (mode 1777)"),
            "{err}"
        );
        assert!(
            err.contains(&format!("chmod 0700 {}", p.display())),
            "{err}"
        );
        assert!(err.contains(&format!("rm -rf {}", p.display())), "{err}");
    }

    #[test]
    fn a_lock_dir_owned_by_another_user_is_refused_with_the_fix_named() {
        if !nix::unistd::geteuid().is_root() {
            return; // chown needs root
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("locks");
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
        let err = secure_dir(&p, Folder::Runtime).unwrap_err().to_string();
        assert!(err.contains("is owned by uid 65534, not root"), "{err}");
        assert!(err.contains(&format!("rm -rf {}", p.display())), "{err}");
    }

    #[test]
    fn a_symlinked_lock_dir_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(d.path().join("elsewhere"), d.path().join("locks")).unwrap();
        let err = secure_dir(&d.path().join("locks"), Folder::Runtime)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a symlink"), "{err}");
    }

    #[test]
    fn the_lock_dir_and_lock_files_are_private() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("locks");
        let dir = secure_dir(&p, Folder::Runtime).unwrap();
        let _l = lock_all_in(&dir, &target(), "guard -- secret", false, None).unwrap();
        let _r = lock_run_in(&dir, "20261127-101010-abcd", "guard commit", false).unwrap();
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(p.clone()), 0o700);
        assert_eq!(mode(p.join("u1.lock")), 0o600);
        assert_eq!(mode(p.join("run-20261127-101010-abcd.lock")), 0o600);
    }

    #[test]
    fn a_run_lock_is_refused_while_held_and_try_says_none() {
        let d = tempfile::tempdir().unwrap();
        let dir = secure_dir(&d.path().join("locks"), Folder::Runtime).unwrap();
        let id = "20261127-101010-0123456789abcdef";
        let held = lock_run_in(&dir, id, "guard rollback", false).unwrap();
        let err = lock_run_in(&dir, id, "guard commit", false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "run {id} is in use by another guard command (pid {}",
                std::process::id()
            )),
            "{err}"
        );
        assert!(err.contains("fix: wait for it, or retry"), "{err}");
        assert!(try_lock_run_in(&dir, id).unwrap().is_none());
        drop(held);
        assert!(try_lock_run_in(&dir, id).unwrap().is_some());
        assert!(lock_run_in(&dir, "../../tmp/x", "x", false).is_err());
    }
}

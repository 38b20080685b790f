//! One lock per LV (flock on /run/lock/guard/<LV uuid>.lock): a second guard on an overlapping
//! set is refused at once, naming the holder, or waits with --wait. The lock is the kernel's, so
//! a guard killed by -9 releases it; and /run is emptied at boot. Keyed by UUID because LV names
//! with hyphens would make "vg-lv" file names ambiguous.
use crate::error::{Error, Result};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

pub fn lock_dir() -> PathBuf {
    std::env::var_os("GUARD_LOCK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/run/lock/guard".into())
}

/// Held locks; dropping it releases them.
#[derive(Debug)]
pub struct LvLocks {
    _files: Vec<File>,
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

/// Locks every target, in UUID order so that two waiting guards cannot deadlock.
pub fn lock_all(targets: &[LockTarget], holder: &str, wait: bool) -> Result<(LvLocks, bool)> {
    let dir = lock_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let mut sorted: Vec<&LockTarget> = targets.iter().collect();
    sorted.sort_by(|a, b| a.uuid.cmp(&b.uuid));
    let mut files = Vec::new();
    let mut waited = false;
    for t in sorted {
        let path = dir.join(format!("{}.lock", t.uuid));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
        if !flock(&f, false).map_err(|e| Error::io(format!("cannot lock {}", path.display()), e))? {
            let mut who = String::new();
            let _ = f.read_to_string(&mut who);
            let who = who.trim().replace('\n', ", ");
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
            flock(&f, true).map_err(|e| Error::io(format!("cannot lock {}", path.display()), e))?;
            waited = true;
        }
        f.set_len(0).ok();
        f.rewind().ok();
        let _ = writeln!(f, "pid {}\n{holder}", std::process::id());
        files.push(f);
    }
    Ok((LvLocks { _files: files }, waited))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_locker_is_refused_with_the_holder_named() {
        let d = tempfile::tempdir().unwrap();
        std::env::set_var("GUARD_LOCK_DIR", d.path());
        let t = || {
            vec![LockTarget {
                uuid: "u1".into(),
                name: "vg/a".into(),
            }]
        };
        let (held, _) = lock_all(&t(), "guard -- sleep 9", false).unwrap();
        // flock locks belong to the open file description: a second open conflicts even
        // inside one process, as a second guard would.
        let err = lock_all(&t(), "x", false).unwrap_err().to_string();
        assert!(err.contains("vg/a is in use"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        assert!(err.contains("sleep 9"), "{err}");
        drop(held);
        assert!(lock_all(&t(), "x", false).is_ok());
    }
}

//! Filesystem freezes (FIFREEZE/FITHAW). A freeze stops every writer of a filesystem, also
//! those outside guard's process group, and flushes its dirty pages first. The `Frozen` value
//! thaws in Drop, so every return path, error and panic thaws; a guard killed by SIGKILL leaves
//! the mount points in its journal for `guard recover` to thaw.
//! Mind lvm2: on kernel 6.1 an lvm command that suspends a frozen filesystem's device fails with
//! EBUSY, so guard never runs lvextend/lvconvert on a volume it holds frozen.
use crate::error::{Error, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// _IOWR('X', 119, int) and _IOWR('X', 120, int)
const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;

fn ioctl_on(path: &Path, req: libc::c_ulong) -> std::io::Result<()> {
    let f = File::open(path)?;
    let mut arg: libc::c_int = 0;
    // SAFETY: FIFREEZE/FITHAW take an int argument, ignored by the kernel.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), req as _, &mut arg) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

pub fn thaw(path: &Path) -> Result<()> {
    match ioctl_on(path, FITHAW) {
        Ok(()) => Ok(()),
        // EINVAL: it was not frozen
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        Err(e) => Err(Error::io(format!("cannot thaw {}", path.display()), e)),
    }
}

/// The filesystems (by device number) this process holds frozen now. Anything guard itself
/// must write during a hold checks here first: a write to a frozen filesystem blocks in the
/// kernel until the thaw, and only guard can thaw it.
static FROZEN_DEVS: std::sync::Mutex<std::collections::BTreeSet<u64>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Is `path` (or its nearest existing ancestor) on a filesystem this process holds frozen?
/// stat does not block on a frozen filesystem.
pub fn on_frozen_fs(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let devs = FROZEN_DEVS.lock().unwrap_or_else(|e| e.into_inner());
    if devs.is_empty() {
        return false;
    }
    path.ancestors()
        .find_map(|p| std::fs::metadata(p).ok())
        .is_some_and(|m| devs.contains(&m.dev()))
}

#[derive(Debug, Default)]
pub struct Frozen {
    paths: Vec<PathBuf>,
}

impl Frozen {
    /// Freezes every path, or none: on an error those already frozen are thawed.
    /// A filesystem mounted in several places (bind mounts) is frozen once: FIFREEZE acts
    /// on the superblock, and a second one fails with EBUSY.
    pub fn freeze(paths: &[PathBuf]) -> Result<Frozen> {
        use std::os::unix::fs::MetadataExt;
        let mut done = Frozen::default();
        let mut seen = std::collections::BTreeSet::new();
        for p in paths {
            // stat does not block on a frozen filesystem; an unreadable path is frozen (and
            // fails) as before
            let dev = std::fs::metadata(p).ok().map(|m| m.dev());
            if let Some(d) = dev {
                if !seen.insert(d) {
                    continue;
                }
            }
            if let Err(e) = ioctl_on(p, FIFREEZE) {
                return Err(Error::io(format!("cannot freeze {}", p.display()), e));
            }
            if let Some(d) = dev {
                FROZEN_DEVS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(d);
            }
            done.paths.push(p.clone());
        }
        Ok(done)
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    pub fn thaw_all(&mut self) -> Result<()> {
        let mut first_err = None;
        for p in self.paths.drain(..).rev() {
            use std::os::unix::fs::MetadataExt;
            match thaw(&p) {
                Ok(()) => {
                    if let Ok(m) = std::fs::metadata(&p) {
                        FROZEN_DEVS
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&m.dev());
                    }
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Err(e) = self.thaw_all() {
            crate::ui::error(&e.to_string());
        }
    }
}

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

/// Is `path` (or its nearest existing ancestor) on a filesystem that a guard (this one or
/// another: the background watcher writes the journal too) holds frozen? stat does not block
/// on a frozen filesystem.
pub fn on_frozen_fs(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mut devs = FROZEN_DEVS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    devs.extend(frozen_by_others());
    if devs.is_empty() {
        return false;
    }
    path.ancestors()
        .find_map(|p| std::fs::metadata(p).ok())
        .is_some_and(|m| devs.contains(&m.dev()))
}

/// Where each freezing guard lists what it holds frozen (tmpfs: never frozen itself).
fn registry() -> PathBuf {
    std::env::var_os("GUARD_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/run/guard".into())
        .join("frozen")
}

/// Devices other live guards hold frozen, from their entries in the registry.
fn frozen_by_others() -> Vec<u64> {
    let Ok(rd) = std::fs::read_dir(registry()) else {
        return vec![];
    };
    let me = std::process::id();
    rd.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let text = std::fs::read_to_string(e.path()).ok()?;
            let mut nums = text
                .split_whitespace()
                .filter_map(|d| d.parse::<u64>().ok());
            let start = nums.next()?;
            // a guard killed while holding leaves its entry: only a live one counts
            (pid != me && crate::store::journal::process_alive(pid, start))
                .then(|| nums.collect::<Vec<u64>>())
        })
        .flatten()
        .collect()
}

/// Is this process's fd on one of `devs`? (fstat does not block on a frozen filesystem.)
fn fd_on(fd: i32, devs: &std::collections::BTreeSet<u64>) -> bool {
    // SAFETY: fstat into a zeroed stat buffer on a descriptor number; no memory is shared.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstat(fd, &mut st) } == 0)
        && (st.st_mode & libc::S_IFMT) == libc::S_IFREG
        && devs.contains(&st.st_dev)
}

/// Publishes this process's frozen devices (or removes its entry when none is left), and mutes
/// stderr while it leads to one of them.
fn publish(devs: &std::collections::BTreeSet<u64>) {
    crate::ui::set_muted(fd_on(2, devs));
    use std::os::unix::fs::DirBuilderExt;
    let dir = registry();
    let file = dir.join(std::process::id().to_string());
    if devs.is_empty() {
        let _ = std::fs::remove_file(file);
        return;
    }
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir);
    // the first number is this process's start time: a recycled PID is not this guard
    let me = std::process::id();
    let mut text = vec![crate::store::journal::process_start(me)
        .unwrap_or(0)
        .to_string()];
    text.extend(devs.iter().map(|d| d.to_string()));
    if let Err(e) = std::fs::write(file, text.join(" ")) {
        crate::ui::warn(&format!(
            "cannot record what guard holds frozen in {} ({e}): other guard commands may block on it",
            dir.display()
        ));
    }
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
                let already = FROZEN_DEVS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&d);
                if !seen.insert(d) || already {
                    continue;
                }
            }
            if let Err(e) = ioctl_on(p, FIFREEZE) {
                return Err(Error::io(format!("cannot freeze {}", p.display()), e));
            }
            if let Some(d) = dev {
                let mut devs = FROZEN_DEVS.lock().unwrap_or_else(|e| e.into_inner());
                devs.insert(d);
                publish(&devs);
            }
            done.paths.push(p.clone());
        }
        Ok(done)
    }

    /// Takes over what another freeze holds: one value thaws them all.
    pub fn absorb(&mut self, mut other: Frozen) {
        self.paths.append(&mut other.paths);
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
                        let mut devs = FROZEN_DEVS.lock().unwrap_or_else(|e| e.into_inner());
                        devs.remove(&m.dev());
                        publish(&devs);
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

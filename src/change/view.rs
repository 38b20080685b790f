//! A run's snapshots mounted for guard itself (`guard diff`, `restore`, a rollback's preserve,
//! `guard rehearse`), in a mount namespace of guard's own: nothing another process sees, and
//! nothing left mounted if guard dies (the namespace goes with its last process). Thin
//! snapshots that LVM skips at activation are activated for the moment and deactivated after.
use crate::error::{Error, Result};
use crate::exec::CommandExt;
use crate::lvm::Lvm;
use crate::model::record::TargetRecord;
use std::cell::Cell;
use std::path::{Path, PathBuf};

thread_local! {
    static PRIVATE: Cell<bool> = const { Cell::new(false) };
}

/// Moves the calling thread into a mount namespace of its own, once, receiving the host's
/// mount events but never sending its own: its mounts never reach the host's table. Per thread: a rollback that preserves paths
/// does it in a thread of its own, so that the rollback's own unmount and mount of the origin
/// (which the host must see) stay in the host's namespace.
pub fn private_namespace() -> Result<()> {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    if PRIVATE.with(|p| p.get()) {
        return Ok(());
    }
    unshare(CloneFlags::CLONE_NEWNS)
        .map_err(|e| Error::Other(format!("cannot make a private mount namespace: {e}")))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        // slave, not private: the host's unmounts still reach this namespace, so that it never
        // keeps a filesystem the host let go of (a snapshot to merge, an origin to close)
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| Error::Other(format!("cannot make the mount namespace private: {e}")))?;
    PRIVATE.with(|p| p.set(true));
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read only, nothing executable: `guard diff`, `restore`.
    Read,
    /// Writable, nothing executable: a rollback's preserve writes into the snapshot.
    Write,
    /// Writable and usable as a system: `guard rehearse` runs the command on it.
    System,
}

/// The filesystem type of an LV, from where it is mounted now (None when it is not).
pub fn fstype_of(t: &TargetRecord) -> Option<String> {
    let table = crate::mounts::read().ok()?;
    t.mountpoints.iter().find_map(|mp| {
        table
            .iter()
            .rev()
            .find(|m| &m.mountpoint == mp)
            .map(|m| m.fstype.clone())
    })
}

fn options(fstype: Option<&str>, access: Access) -> String {
    let mut o: Vec<&str> = match access {
        Access::Read => vec!["ro", "nosuid", "nodev", "noexec"],
        Access::Write => vec!["rw", "nosuid", "nodev", "noexec"],
        Access::System => vec!["rw"],
    };
    // xfs refuses a second filesystem with the origin's UUID while the origin is mounted
    if fstype == Some("xfs") {
        o.push("nouuid");
    }
    o.join(",")
}

/// [`options`] as mount(2) takes them.
fn flags(fstype: &str, access: Access) -> (nix::mount::MsFlags, Option<&'static str>) {
    use nix::mount::MsFlags as F;
    let f = match access {
        Access::Read => F::MS_RDONLY | F::MS_NOSUID | F::MS_NODEV | F::MS_NOEXEC,
        Access::Write => F::MS_NOSUID | F::MS_NODEV | F::MS_NOEXEC,
        Access::System => F::empty(),
    };
    (f, (fstype == "xfs").then_some("nouuid"))
}

/// The snapshots of a run, mounted under one private folder.
pub struct View {
    /// (index into the record's targets, where its snapshot is mounted)
    pub mounted: Vec<(usize, PathBuf)>,
    activated: Vec<(String, String)>,
    dir: Option<tempfile::TempDir>,
}

impl View {
    pub fn root(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or(Path::new("/"))
    }

    pub fn of(&self, target: usize) -> Option<&Path> {
        self.mounted
            .iter()
            .find(|(i, _)| *i == target)
            .map(|(_, p)| p.as_path())
    }

    /// Activates and mounts the snapshots of `which` targets (each at ROOT/N), in the calling
    /// thread's private namespace.
    pub fn open(
        lvm: &dyn Lvm,
        targets: &[TargetRecord],
        which: &[usize],
        access: Access,
    ) -> Result<View> {
        let activated = activate(lvm, targets, which)?;
        match View::mount(targets, which, access) {
            Ok(mut v) => {
                v.activated = activated;
                Ok(v)
            }
            Err(e) => {
                deactivate(lvm, &activated);
                Err(e)
            }
        }
    }

    /// Mounts the snapshots (activated already) in the calling thread's private namespace.
    pub fn mount(targets: &[TargetRecord], which: &[usize], access: Access) -> Result<View> {
        private_namespace()?;
        let dir = tempfile::Builder::new()
            .prefix("guard-view-")
            .tempdir_in("/run")
            .map_err(|e| Error::io("cannot make a folder under /run", e))?;
        let mut v = View {
            mounted: vec![],
            activated: vec![],
            dir: Some(dir),
        };
        for &i in which {
            let t = &targets[i];
            let fstype = fstype_of(t);
            let at = v.root().join(i.to_string());
            std::fs::create_dir(&at)
                .map_err(|e| Error::io(format!("cannot make {}", at.display()), e))?;
            let dev = format!("/dev/{}/{}", t.vg, t.snapshot);
            let failed = |e: String| {
                Error::Other(format!(
                    "cannot mount the snapshot {dev} of {}/{}: {e}",
                    t.vg, t.lv
                ))
            };
            match &fstype {
                // the type is known (the origin is mounted): the system call, no mount(8) to
                // start (this runs at the end of runs, where time counts)
                Some(f) => {
                    let (flags, data) = flags(f, access);
                    nix::mount::mount(Some(dev.as_str()), &at, Some(f.as_str()), flags, data)
                        .map_err(|e| failed(e.to_string()))?;
                }
                None => {
                    crate::exec::system_command("mount")?
                        .args(["-o", &options(None, access)])
                        .arg(&dev)
                        .arg(&at)
                        .run_checked()
                        .map_err(|e| failed(e.to_string()))?;
                }
            }
            v.mounted.push((i, at));
        }
        Ok(v)
    }

    /// Unmounts only (the thread that mounted); the caller deactivates.
    pub fn unmount(mut self) -> Result<()> {
        joined(self.unmount_all())
    }

    /// Unmounts everything, deepest first; what could not be unmounted cleanly.
    fn unmount_all(&mut self) -> Vec<String> {
        let mut errors = vec![];
        while let Some((_, at)) = self.mounted.pop() {
            if let Err(e) = nix::mount::umount(&at) {
                errors.push(format!("cannot unmount {}: {e}", at.display()));
                // busy (a process still in it): detach it, so that the folder can go
                if nix::mount::umount2(&at, nix::mount::MntFlags::MNT_DETACH).is_err() {
                    self.leak();
                }
            }
        }
        errors
    }

    /// Unmounts (and deactivates what was activated); errors are returned, not hidden: a
    /// snapshot still mounted cannot be merged.
    pub fn close(mut self, lvm: &dyn Lvm) -> Result<()> {
        self.close_inner(lvm)
    }

    fn close_inner(&mut self, lvm: &dyn Lvm) -> Result<()> {
        let mut errors = self.unmount_all();
        for (vg, lv) in self.activated.drain(..) {
            if let Err(e) = lvm.deactivate(&vg, &lv) {
                errors.push(format!("cannot deactivate {vg}/{lv}: {e}"));
            }
        }
        joined(errors)
    }
}

fn joined(errors: Vec<String>) -> Result<()> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Other(errors.join("; ")))
    }
}

impl View {
    /// Never remove the folder while something may still be mounted in it: removing it would
    /// walk into the snapshot and delete its files.
    fn leak(&mut self) {
        if let Some(d) = self.dir.take() {
            let _ = d.keep();
        }
    }
}

impl Drop for View {
    fn drop(&mut self) {
        // on an error path: at least unmount (deactivation needs the adapter)
        while let Some((_, at)) = self.mounted.pop() {
            if nix::mount::umount2(&at, nix::mount::MntFlags::MNT_DETACH).is_err() {
                self.leak();
            }
        }
    }
}

/// Activates the thin snapshots among `which` that LVM left inactive; returns them.
pub fn activate(
    lvm: &dyn Lvm,
    targets: &[TargetRecord],
    which: &[usize],
) -> Result<Vec<(String, String)>> {
    let mut done = vec![];
    for &i in which {
        let t = &targets[i];
        if t.thin && !Path::new(&format!("/dev/{}/{}", t.vg, t.snapshot)).exists() {
            if let Err(e) = lvm.activate(&t.vg, &t.snapshot) {
                deactivate(lvm, &done);
                return Err(e);
            }
            done.push((t.vg.clone(), t.snapshot.clone()));
        }
    }
    Ok(done)
}

pub fn deactivate(lvm: &dyn Lvm, list: &[(String, String)]) {
    for (vg, lv) in list {
        if let Err(e) = lvm.deactivate(vg, lv) {
            crate::ui::warn(&format!("cannot deactivate {vg}/{lv} again: {e}"));
        }
    }
}

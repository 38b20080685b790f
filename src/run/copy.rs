//! `guard snapshot`: a point-in-time copy of the set for a command (a consistent backup).
//!
//! The classic flow (FLUSH TABLES WITH READ LOCK → lvcreate -s → UNLOCK TABLES → mount → rsync →
//! umount → lvremove) as one guarded run: the policy's hold hook and the freeze give the moment,
//! the snapshots are mounted read-only under the folder the operator names (GUARD_SNAPSHOT_ROOT),
//! the watcher extends them while the command reads (a long backup of a busy server is when a
//! snapshot overflows), and they are always unmounted and removed at the end. Such a run is never
//! a rollback point: the record says so (`copy`), and rollback refuses it while recover only
//! cleans it up.
use crate::error::{Error, Result};
use crate::exec::CommandExt;
use crate::lvm::Lvm;
use crate::model::record::{CopyMount, CopyRun};
use crate::run::plan::{Plan, Target};
use crate::store::journal::{Journal, RunRecord};
use crate::ui;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Checks the folder the copy is mounted under, before anything changes: an absolute path, and
/// when it exists an empty folder (not a link, not a mount point). It is made (0700) later.
pub fn check_root(root: &Path) -> Result<()> {
    let fix = "name an empty folder, or one that does not exist yet, e.g. --mount-at /srv/snap";
    if !root.is_absolute() || root == Path::new("/") {
        return Err(Error::refused(
            format!(
                "--mount-at {}: the folder must be an absolute path other than /",
                root.display()
            ),
            fix,
        ));
    }
    match std::fs::symlink_metadata(root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = root.parent().unwrap_or(Path::new("/"));
            if !parent.is_dir() {
                return Err(Error::refused(
                    format!(
                        "--mount-at {}: its parent folder {} does not exist",
                        root.display(),
                        parent.display()
                    ),
                    fix,
                ));
            }
            Ok(())
        }
        Err(e) => Err(Error::io(format!("cannot inspect {}", root.display()), e)),
        Ok(m) if m.file_type().is_symlink() || !m.is_dir() => Err(Error::refused(
            format!(
                "--mount-at {}: not a folder (a file or a symbolic link)",
                root.display()
            ),
            fix,
        )),
        Ok(m) if m.uid() != 0 || m.mode() & 0o022 != 0 => Err(Error::refused(
            format!(
                "--mount-at {}: the folder is not root's alone (owner uid {}, mode {:o}): another user could reach into the copy",
                root.display(),
                m.uid(),
                m.mode() & 0o7777
            ),
            "name a folder owned by root and writable only by it, or one that does not exist yet (guard makes it 0700)",
        )),
        Ok(_) => {
            let busy = std::fs::read_dir(root)
                .map_err(|e| Error::io(format!("cannot read {}", root.display()), e))?
                .next()
                .is_some();
            let mounted = crate::mounts::read()
                .map(|t| t.iter().any(|m| m.mountpoint == root))
                .unwrap_or(false);
            if busy || mounted {
                return Err(Error::refused(
                    format!(
                        "--mount-at {}: the folder is not empty{}",
                        root.display(),
                        if mounted {
                            " (something is mounted there)"
                        } else {
                            ""
                        }
                    ),
                    fix,
                ));
            }
            Ok(())
        }
    }
}

/// Makes the folder (0700, root's) if it is missing.
pub fn prepare_root(root: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => check_root(root),
        Err(e) => Err(Error::io(format!("cannot make {}", root.display()), e)),
    }
}

/// Where each target's snapshot is mounted: one target at the root itself; several at
/// ROOT/VG/LV each, folders guard makes (a read-only copy cannot take new folders, so nesting
/// the copies as the origins are nested would fail where the parent lacks the folder).
pub fn layout(root: &Path, plan: &Plan) -> Vec<(usize, PathBuf)> {
    if plan.targets.len() == 1 {
        return vec![(0, root.to_path_buf())];
    }
    plan.targets
        .iter()
        .enumerate()
        .map(|(i, t)| (i, root.join(&t.vg).join(&t.lv)))
        .collect()
}

fn mount_options(t: &Target) -> String {
    // a copy is data to read, never programs or devices to use
    let base = "ro,nosuid,nodev,noexec";
    // xfs refuses a second filesystem with the origin's UUID while the origin is mounted
    match t.fstype.as_deref() {
        Some("xfs") => format!("{base},nouuid"),
        _ => base.into(),
    }
}

/// Mounts the run's snapshots read-only (thin snapshots are activated first: LVM skips them at
/// activation). Each mount point is journaled before its mount, so that recover unmounts it.
pub fn mount_all(
    lvm: &dyn Lvm,
    journal: &Journal,
    rec: &mut RunRecord,
    plan: &Plan,
    root: &Path,
) -> Result<()> {
    for (i, at) in layout(root, plan) {
        let t = &plan.targets[i];
        if t.pool.is_some() {
            lvm.activate(&t.vg, &t.snapshot)?;
        }
        if at != root {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&at)
                .map_err(|e| Error::io(format!("cannot make {}", at.display()), e))?;
        }
        let dev = format!("/dev/{}/{}", t.vg, t.snapshot);
        let rdev = {
            let m =
                std::fs::metadata(&dev).map_err(|e| Error::io(format!("cannot find {dev}"), e))?;
            let r = m.rdev();
            (libc::major(r), libc::minor(r))
        };
        if let Some(c) = rec.copy.as_mut() {
            c.mounted.push(CopyMount {
                at: at.clone(),
                dev: rdev,
            });
        }
        journal.write(rec)?;
        mount_snapshot(&dev, &at, t.fstype.as_deref(), &mount_options(t))?;
        ui::say(&format!(
            "snapshot of {} mounted read-only at {}",
            t.full_name(),
            at.display()
        ));
    }
    Ok(())
}

/// Unmounts what the copy mounted, deepest first. A mount still busy after a few tries (a
/// process the command left behind) is reported: its snapshot cannot be removed until it goes.
pub fn unmount_all(copy: &mut CopyRun) -> Vec<String> {
    let mut errors = Vec::new();
    while let Some(m) = copy.mounted.pop() {
        // only the snapshot guard mounted there, never what else may be mounted at that path
        if !is_mounted(&m) {
            continue;
        }
        let at = m.at.clone();
        let mut last = String::new();
        let mut done = false;
        for _ in 0..10 {
            match crate::exec::system_command("umount")
                .and_then(|mut c| c.arg(&at).run_checked().map(drop))
            {
                Ok(()) => {
                    done = true;
                    break;
                }
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        if !done {
            errors.push(format!("cannot unmount {}: {last}", at.display()));
            copy.mounted.push(m);
            break;
        }
    }
    errors
}

fn is_mounted(c: &CopyMount) -> bool {
    crate::mounts::read()
        .map(|t| t.iter().any(|m| m.mountpoint == c.at && m.dev == c.dev))
        .unwrap_or(true)
}

/// Ends a copy run: unmount, then remove the snapshots (never merge them). Used at the end of
/// `guard snapshot` and by recover for a copy run whose guard died.
pub fn end(lvm: &dyn Lvm, journal: &Journal, rec: &mut RunRecord) -> Result<()> {
    if let Some(mut c) = rec.copy.take() {
        let errors = unmount_all(&mut c);
        rec.copy = Some(c);
        journal.write(rec)?;
        if !errors.is_empty() {
            return Err(Error::Other(format!(
                "{}; the snapshots stay until it is unmounted, then `guard recover` removes them",
                errors.join("; ")
            )));
        }
    }
    crate::run::commit(lvm, journal, rec)
}

/// mount(8) of a snapshot at `at`, through a held descriptor of the folder (a folder swapped
/// for a link after it was checked is not followed), never canonicalized.
pub fn mount_snapshot(dev: &str, at: &Path, fstype: Option<&str>, opts: &str) -> Result<()> {
    let (_dir, held) = crate::ops::rollback::held_mountpoint(at)?;
    let mut cmd = crate::exec::system_command("mount")?;
    cmd.arg("--no-canonicalize");
    if let Some(f) = fstype {
        cmd.args(["-t", f]);
    }
    cmd.args(["-o", opts, dev, &held])
        .run_checked()
        .map(drop)
        .map_err(|e| {
            Error::Other(format!(
                "cannot mount the snapshot {dev} at {}: {e}",
                at.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_folder_must_be_absolute_and_empty() {
        assert!(check_root(Path::new("relative/snap")).is_err());
        assert!(check_root(Path::new("/")).is_err());
        let d = tempfile::tempdir().unwrap();
        if !nix::unistd::geteuid().is_root() {
            return; // the folder must be root's: the rest needs root
        }
        assert!(check_root(d.path()).is_ok(), "an empty folder is fine");
        assert!(check_root(&d.path().join("new")).is_ok(), "a new one too");
        assert!(check_root(&d.path().join("a/b")).is_err(), "no parent");
        std::fs::write(d.path().join("f"), "x").unwrap();
        let e = check_root(d.path()).unwrap_err().to_string();
        assert!(e.contains("not empty"), "{e}");
        std::os::unix::fs::symlink("/tmp", d.path().join("l")).unwrap();
        let e = check_root(&d.path().join("l")).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        let open = d.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let e = check_root(&open).unwrap_err().to_string();
        assert!(e.contains("not root's alone"), "{e}");
    }
}

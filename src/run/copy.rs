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
use crate::model::record::CopyRun;
use crate::run::plan::{Plan, Target};
use crate::store::journal::{Journal, RunRecord};
use crate::ui;
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

/// Where each target's snapshot is mounted: one target at the root itself; several at the root
/// plus their mount point (an unmounted one at ROOT/VG/LV), shallowest first so that nested
/// volumes land on their parent's copy.
pub fn layout(root: &Path, plan: &Plan) -> Vec<(usize, PathBuf)> {
    if plan.targets.len() == 1 {
        return vec![(0, root.to_path_buf())];
    }
    let mut v: Vec<(usize, PathBuf)> = plan
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let at = match t.mountpoints.first() {
                Some(mp) => root.join(mp.strip_prefix("/").unwrap_or(mp)),
                None => root.join(&t.vg).join(&t.lv),
            };
            (i, at)
        })
        .collect();
    v.sort_by_key(|(_, p)| p.components().count());
    v
}

fn mount_options(t: &Target) -> String {
    // xfs refuses a second filesystem with the origin's UUID while the origin is mounted
    match t.fstype.as_deref() {
        Some("xfs") => "ro,nouuid".into(),
        _ => "ro".into(),
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
        if !at.is_dir() {
            return Err(Error::Other(format!(
                "cannot mount the snapshot of {} at {}: no such folder in the copy above it",
                t.full_name(),
                at.display()
            )));
        }
        if let Some(c) = rec.copy.as_mut() {
            c.mounted.push(at.clone());
        }
        journal.write(rec)?;
        let dev = format!("/dev/{}/{}", t.vg, t.snapshot);
        let mut args = vec!["--no-canonicalize".to_string()];
        if let Some(f) = &t.fstype {
            args.extend(["-t".into(), f.clone()]);
        }
        args.extend(["-o".into(), mount_options(t), dev.clone()]);
        let (_dir, held) = crate::ops::rollback::held_mountpoint(&at)?;
        args.push(held);
        crate::exec::system_command("mount")?
            .args(&args)
            .run_checked()
            .map_err(|e| {
                Error::Other(format!(
                    "cannot mount the snapshot {dev} at {}: {e}",
                    at.display()
                ))
            })?;
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
    while let Some(at) = copy.mounted.pop() {
        if !is_mounted(&at) {
            continue;
        }
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
            copy.mounted.push(at);
            break;
        }
    }
    errors
}

fn is_mounted(at: &Path) -> bool {
    crate::mounts::read()
        .map(|t| t.iter().any(|m| m.mountpoint == at))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_folder_must_be_absolute_and_empty() {
        assert!(check_root(Path::new("relative/snap")).is_err());
        assert!(check_root(Path::new("/")).is_err());
        let d = tempfile::tempdir().unwrap();
        assert!(check_root(d.path()).is_ok(), "an empty folder is fine");
        assert!(check_root(&d.path().join("new")).is_ok(), "a new one too");
        assert!(check_root(&d.path().join("a/b")).is_err(), "no parent");
        std::fs::write(d.path().join("f"), "x").unwrap();
        let e = check_root(d.path()).unwrap_err().to_string();
        assert!(e.contains("not empty"), "{e}");
        std::os::unix::fs::symlink("/tmp", d.path().join("l")).unwrap();
        let e = check_root(&d.path().join("l")).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
    }
}

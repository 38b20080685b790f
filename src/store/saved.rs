//! Copies of paths that a rollback cannot reach. The classic case is /boot on a plain
//! partition: rolling back / (and /lib/modules with it) while /boot keeps the new kernel and
//! initramfs leaves the machine booting a kernel without its modules. So, like the Ansible
//! snapshot roles, guard archives such a path before the snapshots and puts it back when the
//! run is rolled back (at once, or at boot by `guard recover` once the deferred merge of / is
//! confirmed).
//!
//! The archive is written under /var/lib/guard/saved/RUN before the snapshots are taken: when
//! the filesystem holding it is itself rolled back, the archive is still there. An initramfs
//! may hold a disk-unlock key: the folders are made 0700 and checked before the archive is
//! written (store.rs), and the archive is made 0600.
use crate::error::{Error, Result};
use crate::store::{Open, SecureDir};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

pub use crate::model::record::SavedPath;

fn run_dir(run: &str) -> PathBuf {
    crate::store::journal::state_dir().join("saved").join(run)
}

/// Archives each path (with ownership, modes, xattrs; one filesystem only).
pub fn save(run: &str, paths: &[PathBuf]) -> Result<Vec<SavedPath>> {
    save_in(&crate::store::state_subdir("saved")?, run, paths)
}

fn save_in(saved: &SecureDir, run: &str, paths: &[PathBuf]) -> Result<Vec<SavedPath>> {
    if !crate::store::journal::valid_run_id(run) {
        return Err(Error::Other(format!("invalid run id {run:?}")));
    }
    let dir = saved.subdir(run)?;
    let mut out = Vec::new();
    for p in paths {
        let name = p.to_string_lossy().trim_matches('/').replace('/', "_");
        let name = format!("{}.tar", if name.is_empty() { "root" } else { &name });
        let archive = dir.join(&name);
        // O_EXCL: two paths that map to one name must not share (and overwrite) one archive
        let file = dir.open(&name, Open::CreateNew)?;
        write_archive(p, file).map_err(|e| {
            Error::io(
                format!("cannot archive {} to {}", p.display(), archive.display()),
                e,
            )
        })?;
        // the archive must be on disk before the snapshot is taken
        nix::unistd::sync();
        out.push(SavedPath {
            path: p.clone(),
            archive,
        });
    }
    Ok(out)
}

/// Archives one directory tree (modes, owners, times, symlinks as links), staying on its
/// filesystem: a mount below it (/boot/efi) is neither saved nor cleared.
fn write_archive(root: &Path, archive: std::fs::File) -> std::io::Result<()> {
    let dev = std::fs::metadata(root)?.dev();
    let mut b = tar::Builder::new(archive);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel))? {
            let e = e?;
            let name = rel.join(e.file_name());
            let meta = std::fs::symlink_metadata(e.path())?;
            if meta.dev() != dev {
                continue;
            }
            b.append_path_with_name(e.path(), &name)?;
            if meta.is_dir() {
                stack.push(name);
            }
        }
    }
    b.into_inner()?.sync_all()
}

/// Where a restore extracts the archive first, and where it moves the entries it replaces:
/// beside them on the same filesystem, so that the swap is renames only.
const STAGE: &str = ".guard-restore";
const OLD: &str = ".guard-old";

fn unpack(archive: &Path, into: &Path) -> Result<()> {
    let f = std::fs::File::open(archive)
        .map_err(|e| Error::io(format!("cannot open {}", archive.display()), e))?;
    let mut a = tar::Archive::new(f);
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(true);
    a.set_preserve_mtime(true);
    a.set_overwrite(true);
    a.unpack(into)
        .map_err(|e| Error::io(format!("cannot restore {}", into.display()), e))
}

/// The entries of `dir` a restore replaces: not lost+found, not its own folders, not another
/// filesystem mounted below (/boot/efi).
fn replaceable(dir: &Path, dev: u64) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))?;
    Ok(entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let other_fs = std::fs::symlink_metadata(p)
                .map(|m| m.dev() != dev)
                .unwrap_or(true);
            !matches!(name, "lost+found" | STAGE | OLD) && !other_fs
        })
        .collect())
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Puts a saved path back as it was: entries made since are removed, the archive extracted.
///
/// The archive is extracted beside the entries first, and swapped in by renames: a power cut
/// while it is written (seconds, for a /boot of kernels) leaves the path as it was, never half
/// empty. (/boot is what the next boot reads.) Without room for both, it is restored in place.
/// An interrupted restore is simply done again: the archive stays until one succeeds.
pub fn restore(s: &SavedPath) -> Result<()> {
    if !s.archive.exists() {
        return Err(Error::Other(format!(
            "the saved copy of {} ({}) is missing",
            s.path.display(),
            s.archive.display()
        )));
    }
    let meta = std::fs::metadata(&s.path)
        .map_err(|e| Error::io(format!("cannot read {}", s.path.display()), e))?;
    let dev = meta.dev();
    let stage = s.path.join(STAGE);
    let old = s.path.join(OLD);
    let _ = remove_any(&stage);
    let _ = remove_any(&old);
    let staged = std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&stage)
        .map_err(|e| Error::io(format!("cannot create {}", stage.display()), e))
        .and_then(|_| unpack(&s.archive, &stage));
    if let Err(e) = staged {
        let _ = remove_any(&stage);
        // only a lack of room restores in place: any other failure (an unreadable archive)
        // leaves the path untouched
        if !is_out_of_room(&e) {
            return Err(e);
        }
        for p in replaceable(&s.path, dev)? {
            remove_any(&p).map_err(|e| Error::io(format!("cannot clear {}", p.display()), e))?;
        }
        unpack(&s.archive, &s.path)?;
        nix::unistd::sync();
        return Ok(());
    }
    let _ = remove_any(&stage.join("lost+found"));
    nix::unistd::sync();
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&old)
        .map_err(|e| Error::io(format!("cannot create {}", old.display()), e))?;
    // Entry by entry: the current one aside, the saved one in at once, so that at any moment
    // at most one entry is missing (never all of /boot's kernels and grub/ at once).
    let staged_names: Vec<std::ffi::OsString> = replaceable(&stage, dev)?
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_owned()))
        .collect();
    for name in &staged_names {
        let dest = s.path.join(name);
        if let Ok(m) = std::fs::symlink_metadata(&dest) {
            if m.dev() != dev {
                // a filesystem mounted there now (/boot/efi): it is not ours to replace
                continue;
            }
            std::fs::rename(&dest, old.join(name))
                .map_err(|e| Error::io(format!("cannot move {} aside", dest.display()), e))?;
        }
        if let Err(e) = std::fs::rename(stage.join(name), &dest) {
            // put the current entry back rather than leave a hole
            let _ = std::fs::rename(old.join(name), &dest);
            return Err(Error::io(format!("cannot put back {}", dest.display()), e));
        }
    }
    // what the change added
    for p in replaceable(&s.path, dev)? {
        if !p
            .file_name()
            .is_some_and(|n| staged_names.iter().any(|x| x == n))
        {
            let to = old.join(p.file_name().expect("an entry has a name"));
            std::fs::rename(&p, &to)
                .map_err(|e| Error::io(format!("cannot remove {}", p.display()), e))?;
        }
    }
    let _ = std::fs::remove_dir_all(&stage);
    let _ = std::fs::remove_dir_all(&old);
    nix::unistd::sync();
    Ok(())
}

fn is_out_of_room(e: &Error) -> bool {
    match e {
        Error::Io { source, .. } => {
            // tar wraps the OS error (its code is lost, its message is not)
            let msg = source.to_string();
            matches!(
                source.raw_os_error(),
                Some(libc::ENOSPC) | Some(libc::EDQUOT)
            ) || msg.contains("No space left on device")
                || msg.contains("Disk quota exceeded")
        }
        _ => false,
    }
}

/// Drops a run's saved copies (the run was committed or aborted).
pub fn discard(run: &str) {
    // the id names the folder removed: never a path
    if !crate::store::journal::valid_run_id(run) {
        return;
    }
    let _ = std::fs::remove_dir_all(run_dir(run));
}

/// Restores every saved path of a run that was rolled back; each outcome is reported.
pub fn restore_all(run: &str, saved: &[SavedPath]) -> Vec<std::result::Result<String, String>> {
    let out = saved
        .iter()
        .map(|s| match restore(s) {
            Ok(()) => Ok(format!(
                "run {run}: {} restored from the copy saved before the change",
                s.path.display()
            )),
            Err(e) => Err(format!(
                "run {run}: cannot restore {}: {e} (the copy stays in {})",
                s.path.display(),
                s.archive.display()
            )),
        })
        .collect::<Vec<_>>();
    if out.iter().all(|r| r.is_ok()) {
        discard(run);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const R: &str = "20261127-101010-0123456789abcdef";

    /// GUARD_STATE_DIR is the process's: one test at a time sets it.
    static STATE_ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn save_then_restore_brings_back_the_tree_and_drops_new_files() {
        let _env = STATE_ENV.lock().unwrap_or_else(|e| e.into_inner());
        let state = tempfile::tempdir().unwrap();
        std::env::set_var("GUARD_STATE_DIR", state.path());
        let boot = tempfile::tempdir().unwrap();
        std::fs::write(boot.path().join("vmlinuz-1"), "old kernel").unwrap();
        std::fs::create_dir(boot.path().join("grub")).unwrap();
        std::fs::write(boot.path().join("grub/grub.cfg"), "menu 1").unwrap();
        let saved = save(R, &[boot.path().to_path_buf()]).unwrap();
        std::fs::write(boot.path().join("vmlinuz-2"), "new kernel").unwrap();
        std::fs::write(boot.path().join("grub/grub.cfg"), "menu 2").unwrap();
        let res = restore_all(R, &saved);
        assert!(res.iter().all(|r| r.is_ok()), "{res:?}");
        assert!(!boot.path().join("vmlinuz-2").exists());
        assert_eq!(
            std::fs::read_to_string(boot.path().join("grub/grub.cfg")).unwrap(),
            "menu 1"
        );
        assert!(
            !state.path().join("saved").join(R).exists(),
            "copies dropped once restored"
        );
    }

    #[test]
    fn a_restore_cut_short_is_done_again_and_leaves_no_staging() {
        let _env = STATE_ENV.lock().unwrap_or_else(|e| e.into_inner());
        let state = tempfile::tempdir().unwrap();
        std::env::set_var("GUARD_STATE_DIR", state.path());
        let boot = tempfile::tempdir().unwrap();
        std::fs::write(boot.path().join("vmlinuz-1"), "old kernel").unwrap();
        std::fs::create_dir(boot.path().join("lost+found")).unwrap();
        let saved = save(R, &[boot.path().to_path_buf()]).unwrap();
        std::fs::write(boot.path().join("vmlinuz-2"), "new kernel").unwrap();
        // a power cut left a half-written stage and half of the old entries moved aside
        std::fs::create_dir_all(boot.path().join(STAGE).join("grub")).unwrap();
        std::fs::create_dir_all(boot.path().join(OLD)).unwrap();
        std::fs::write(boot.path().join(OLD).join("x"), "moved aside").unwrap();
        restore(&saved[0]).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(boot.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["lost+found", "vmlinuz-1"]);
        assert_eq!(
            std::fs::read_to_string(boot.path().join("vmlinuz-1")).unwrap(),
            "old kernel"
        );
        discard(R);
    }

    #[test]
    fn an_unreadable_copy_leaves_the_path_untouched() {
        let _env = STATE_ENV.lock().unwrap_or_else(|e| e.into_inner());
        let state = tempfile::tempdir().unwrap();
        std::env::set_var("GUARD_STATE_DIR", state.path());
        let boot = tempfile::tempdir().unwrap();
        std::fs::write(boot.path().join("vmlinuz-1"), "old kernel").unwrap();
        let saved = save(R, &[boot.path().to_path_buf()]).unwrap();
        std::fs::write(boot.path().join("vmlinuz-2"), "new kernel").unwrap();
        // a damaged archive: not a reason to empty /boot
        std::fs::write(&saved[0].archive, vec![0xffu8; 4096]).unwrap();
        assert!(restore(&saved[0]).is_err());
        assert!(boot.path().join("vmlinuz-1").exists() && boot.path().join("vmlinuz-2").exists());
        discard(R);
    }

    #[test]
    fn the_state_folder_is_0700_before_a_saved_copy_is_written() {
        let _env = STATE_ENV.lock().unwrap_or_else(|e| e.into_inner());
        let top = tempfile::tempdir().unwrap();
        let state = top.path().join("state");
        // an older guard (or umask 022) left the state folder readable by all
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::env::set_var("GUARD_STATE_DIR", &state);
        let boot = tempfile::tempdir().unwrap();
        std::fs::write(boot.path().join("initrd.img"), "unlock key").unwrap();
        let saved = save(R, &[boot.path().to_path_buf()]).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("saved")), 0o700);
        assert_eq!(mode(&state.join("saved").join(R)), 0o700);
        assert_eq!(mode(&saved[0].archive), 0o600);
        assert!(save("../../tmp/x", &[boot.path().to_path_buf()]).is_err());
        discard(R);
    }
}

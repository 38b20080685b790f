//! guard's own folders and files: the lock folder (/run/lock/guard, in a folder every user may
//! write) and the state folder (/var/lib/guard: journal, saved copies). As systemd and util-linux
//! do, a folder is made with its owner and mode at once (mkdir 0700, not umask's default) and
//! then checked through its descriptor (open O_DIRECTORY|O_NOFOLLOW, fstat); files are opened
//! relative to that descriptor with O_NOFOLLOW and checked by fstat. So a folder another user
//! made first, or a symlink planted where guard opens a file as root, is refused, not followed.
pub mod journal;
pub mod lock;
pub mod saved;
use crate::error::{Error, Result};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Which folder it is decides what to do when it is too open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folder {
    /// In /run (the lock folder): its contents are transient. Group/other-writable means
    /// anything may have been planted: refused, the fix is to remove it.
    Runtime,
    /// Persistent state (journal, saved copies): a loose mode is an old install's umask, so it
    /// is tightened (and said); a folder owned by another user is refused.
    State,
}

/// A folder checked to be root's (or, in tests, guard's own user's) and 0700.
#[derive(Debug)]
pub struct SecureDir {
    fd: OwnedFd,
    path: PathBuf,
    kind: Folder,
}

/// How to open a file in a SecureDir. Every file is made 0600.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// Read and write, made if missing (lock files).
    Create,
    /// Read and write, must not exist yet (O_EXCL).
    CreateNew,
    /// Read only, must exist.
    Read,
}

/// Root, or guard's own user: tests run guard unprivileged in their own folders.
fn trusted(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

fn owner_name(uid: u32) -> String {
    if uid == 0 {
        "root".into()
    } else {
        format!("uid {uid}")
    }
}

fn is_type(mode: u32, t: SFlag) -> bool {
    SFlag::from_bits_truncate(mode) & SFlag::S_IFMT == t
}

fn errno_io(e: Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

/// A name inside a folder: one path component, never `..`.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Error::Other(format!("invalid file name {name:?}")));
    }
    Ok(())
}

/// Makes (mode 0700) or opens the folder `path` and checks it: a folder, not a symlink, owned
/// by root, not open to group or others. Missing parents are made as usual: they are the
/// system's (/run/lock, /var/lib), not guard's.
pub fn secure_dir(path: &Path, kind: Folder) -> Result<SecureDir> {
    let (parent, name) = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(p), Some(n)) => (
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            },
            n,
        ),
        _ => return Err(Error::Other(format!("invalid folder {}", path.display()))),
    };
    if !parent.exists() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("cannot create {}", parent.display()), e))?;
    }
    let pfd = nix::fcntl::open(
        parent,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(format!("cannot open {}", parent.display()), errno_io(e)))?;
    // SAFETY: open returned a new descriptor that nothing else owns.
    let pfd = unsafe { OwnedFd::from_raw_fd(pfd) };
    open_dir_at(&pfd, path.to_path_buf(), name, kind)
}

fn open_dir_at(parent: &OwnedFd, path: PathBuf, name: &str, kind: Folder) -> Result<SecureDir> {
    check_name(name)?;
    let shown = path.display().to_string();
    let made = match nix::sys::stat::mkdirat(Some(parent.as_raw_fd()), name, Mode::S_IRWXU) {
        Ok(()) => true,
        Err(Errno::EEXIST) => false,
        Err(e) => return Err(Error::io(format!("cannot create {shown}"), errno_io(e))),
    };
    let fd = nix::fcntl::openat(
        Some(parent.as_raw_fd()),
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        // O_DIRECTORY|O_NOFOLLOW on a symlink: ENOTDIR (or ELOOP); lstat tells which it is
        Errno::ELOOP | Errno::ENOTDIR => {
            let link = nix::sys::stat::fstatat(
                Some(parent.as_raw_fd()),
                name,
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .is_ok_and(|st| is_type(st.st_mode, SFlag::S_IFLNK));
            Error::refused(
                if link {
                    format!("{shown} is a symlink: guard does not follow it (another user may have planted it)")
                } else {
                    format!("{shown} is not a folder")
                },
                format!("remove it (guard makes the folder itself): rm {shown}"),
            )
        }
        e => Error::io(format!("cannot open {shown}"), errno_io(e)),
    })?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let st = nix::sys::stat::fstat(fd.as_raw_fd())
        .map_err(|e| Error::io(format!("cannot stat {shown}"), errno_io(e)))?;
    let mode = st.st_mode & 0o7777;
    let chown_fix = format!("chown root:root {shown} && chmod 0700 {shown}");
    if !trusted(st.st_uid) {
        return Err(Error::refused(
            format!(
                "{shown} is owned by {}, not root: another user may have made it to plant files \
                 that guard opens as root",
                owner_name(st.st_uid)
            ),
            match kind {
                Folder::Runtime => format!("remove it (guard makes it again): rm -rf {shown}"),
                Folder::State => format!("check what is in it, then: {chown_fix}"),
            },
        ));
    }
    if made {
        // mkdir's mode passed through the umask: set it exactly.
        if mode != 0o700 {
            fchmod(&fd, 0o700, &shown)?;
        }
    } else if mode & 0o022 != 0 && kind == Folder::Runtime {
        return Err(Error::refused(
            format!(
                "{shown} is writable by group or others (mode {mode:04o}): another user may \
                 have planted files in it that guard opens as root"
            ),
            format!("{chown_fix}, or remove it (guard makes it again): rm -rf {shown}"),
        ));
    } else if mode != 0o700 {
        fchmod(&fd, 0o700, &shown)?;
        crate::ui::warn(&format!(
            "{shown} had mode {mode:04o}: made it 0700 (only root may read guard's state)"
        ));
    }
    Ok(SecureDir { fd, path, kind })
}

fn fchmod(fd: &OwnedFd, mode: u32, shown: &str) -> Result<()> {
    nix::sys::stat::fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(mode))
        .map_err(|e| Error::io(format!("cannot chmod {shown}"), errno_io(e)))
}

/// The state folder (GUARD_STATE_DIR or /var/lib/guard), 0700 and root's: made or checked
/// before anything is written in it.
pub fn state_dir_secure() -> Result<SecureDir> {
    secure_dir(&crate::store::journal::state_dir(), Folder::State)
}

/// A folder of the state folder (`runs`, `saved`), both made or checked.
pub fn state_subdir(name: &str) -> Result<SecureDir> {
    state_dir_secure()?.subdir(name)
}

impl SecureDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// A folder inside this one, made or checked the same way.
    pub fn subdir(&self, name: &str) -> Result<SecureDir> {
        open_dir_at(&self.fd, self.path.join(name), name, self.kind)
    }

    /// Opens a file in this folder without following a symlink, made 0600, and checks it is a
    /// regular file of root's with no other hard link (a link to /etc/shadow is refused, not
    /// truncated). A file left more open by an older guard is tightened to 0600.
    pub fn open(&self, name: &str, how: Open) -> Result<File> {
        check_name(name)?;
        let shown = self.path.join(name).display().to_string();
        let base = OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
        let flags = match how {
            Open::Create => base | OFlag::O_RDWR | OFlag::O_CREAT,
            Open::CreateNew => base | OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL,
            Open::Read => base | OFlag::O_RDONLY | OFlag::O_NONBLOCK,
        };
        let fd = nix::fcntl::openat(
            Some(self.fd.as_raw_fd()),
            name,
            flags,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .map_err(|e| match e {
            Errno::ELOOP => Error::refused(
                format!("{shown} is a symlink: guard does not follow it (another user may have planted it)"),
                format!("remove it: rm {shown}"),
            ),
            e => Error::io(format!("cannot open {shown}"), errno_io(e)),
        })?;
        // SAFETY: openat returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let st = nix::sys::stat::fstat(fd.as_raw_fd())
            .map_err(|e| Error::io(format!("cannot stat {shown}"), errno_io(e)))?;
        let problem = if !is_type(st.st_mode, SFlag::S_IFREG) {
            Some("is not a regular file".to_string())
        } else if !trusted(st.st_uid) {
            Some(format!("is owned by {}, not root", owner_name(st.st_uid)))
        } else if st.st_nlink > 1 {
            Some("has other hard links".to_string())
        } else {
            None
        };
        if let Some(p) = problem {
            return Err(Error::refused(
                format!("{shown} {p}: guard does not use it (another user may have planted it)"),
                format!("remove it: rm {shown}"),
            ));
        }
        if st.st_mode & 0o7077 != 0 {
            fchmod(&fd, 0o600, &shown)?;
        }
        if how == Open::Read {
            // O_NONBLOCK only kept a planted FIFO from hanging the open.
            nix::fcntl::fcntl(
                fd.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()),
            )
            .map_err(|e| Error::io(format!("cannot open {shown}"), errno_io(e)))?;
        }
        Ok(File::from(fd))
    }

    /// The whole of a file, or None when it does not exist.
    pub fn read_to_string(&self, name: &str) -> Result<Option<String>> {
        use std::io::Read;
        let mut f = match self.open(name, Open::Read) {
            Ok(f) => f,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        let mut s = String::new();
        f.read_to_string(&mut s)
            .map_err(|e| Error::io(format!("cannot read {}", self.join(name).display()), e))?;
        Ok(Some(s))
    }

    /// Renames a file within this folder (atomic replace of `to`).
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        check_name(from)?;
        check_name(to)?;
        let fd = Some(self.fd.as_raw_fd());
        nix::fcntl::renameat(fd, from, fd, to).map_err(|e| {
            Error::io(
                format!("cannot rename {} to {to}", self.join(from).display()),
                errno_io(e),
            )
        })
    }

    /// Removes a file if it is there (a symlink itself, never its target).
    pub fn remove(&self, name: &str) -> Result<()> {
        check_name(name)?;
        match nix::unistd::unlinkat(
            Some(self.fd.as_raw_fd()),
            name,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(Error::io(
                format!("cannot remove {}", self.join(name).display()),
                errno_io(e),
            )),
        }
    }

    /// fsync of the folder: a rename in it survives a power cut.
    pub fn sync(&self) -> Result<()> {
        nix::unistd::fsync(self.fd.as_raw_fd())
            .map_err(|e| Error::io(format!("cannot sync {}", self.path.display()), errno_io(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_new_folder_and_its_subfolders_are_0700() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state");
        let s = secure_dir(&p, Folder::State).unwrap();
        assert_eq!(mode(&p), 0o700);
        s.subdir("runs").unwrap();
        assert_eq!(mode(&p.join("runs")), 0o700);
    }

    #[test]
    fn a_loose_state_folder_is_tightened() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state");
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        secure_dir(&p, Folder::State).unwrap();
        assert_eq!(mode(&p), 0o700);
    }

    #[test]
    fn a_state_folder_of_another_user_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            return; // chown needs root
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state");
        std::fs::create_dir(&p).unwrap();
        std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
        let e = secure_dir(&p, Folder::State).unwrap_err().to_string();
        assert!(e.contains("is owned by uid 65534, not root"), "{e}");
        assert!(e.contains("chown root:root"), "{e}");
    }

    #[test]
    fn files_are_0600_and_a_planted_fifo_or_hard_link_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let s = secure_dir(&d.path().join("x"), Folder::Runtime).unwrap();
        s.open("f", Open::Create).unwrap();
        assert_eq!(mode(&s.join("f")), 0o600);
        nix::unistd::mkfifo(&s.join("p"), Mode::S_IRWXU).unwrap();
        let e = s.open("p", Open::Read).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        std::fs::write(d.path().join("victim"), "keep").unwrap();
        std::fs::hard_link(d.path().join("victim"), s.join("h")).unwrap();
        let e = s.open("h", Open::Create).unwrap_err().to_string();
        assert!(e.contains("other hard links"), "{e}");
        assert!(s.open("../victim", Open::Read).is_err());
        assert!(s.open("n", Open::CreateNew).is_ok());
        assert!(s.open("n", Open::CreateNew).is_err());
    }
}

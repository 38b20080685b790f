//! Taking a path back from a snapshot (`guard restore`), or the other way before a rollback
//! (`--preserve`): make the tree at `to_root`/rel what the tree at `from_root`/rel is.
//!
//! Guard runs as root, but the live tree holds folders that local users control (/home, /tmp,
//! upload folders). A user must not be able to point guard's writes elsewhere with a symbolic
//! link or a mount, so no path string is ever walked twice: each folder is opened with
//! openat2(2) beneath the one before it (no symbolic links, no magic links, no mount crossing),
//! and every change is made relative to the folder descriptors (the *at calls) or on a
//! descriptor of the entry itself.
//!
//! What is copied: contents (holes kept where the filesystem reports them), owner, mode
//! (setuid, setgid, sticky included), extended attributes (so POSIX ACLs and file
//! capabilities) of files, folders, fifos and device nodes, access and modification times;
//! symbolic links as links (owner and times; Linux allows no user xattrs on links). Hard links
//! are copied as separate files: the walk does not track inodes, and a link's other names may
//! lie outside the restored path. A file replaces whatever is at its name in one rename, so a
//! reader sees the old or the new file, never half of one.
use std::collections::BTreeSet;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Copied {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// fifos, sockets, device nodes
    pub others: u64,
    /// the sizes of the files copied
    pub bytes: u64,
    /// entries removed from `to` (each one of a removed folder's tree counts)
    pub removed: u64,
}

#[derive(Debug)]
pub enum RestoreError {
    /// The path did not exist in `from` (the run created it); only `exact` removes it.
    NotInSource(PathBuf),
    /// A component of the path is a symlink or another mount in either tree: refused.
    Unsafe {
        path: PathBuf,
        why: String,
    },
    Io {
        path: PathBuf,
        source: io::Error,
    },
}

impl std::fmt::Display for RestoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreError::NotInSource(p) => write!(
                f,
                "{} did not exist before the run (it was created by it); --exact removes it",
                p.display()
            ),
            RestoreError::Unsafe { path, why } => write!(f, "{}: {why}", path.display()),
            RestoreError::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for RestoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RestoreError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

const ON_THE_WAY: &str = "a symbolic link or a mount point is on the way; guard does not follow it";
const A_MOUNT: &str = "it is a mount point; guard does not copy into or out of another filesystem";
/// Each level holds two folder descriptors and a stack frame: a bound well below the usual
/// limit of 1024 descriptors and a 2 MiB thread stack (preserve copies in a thread of its own).
const MAX_DEPTH: usize = 256;
const TEMP_PREFIX: &str = ".guard-restore-";

// linux/openat2.h; libc's open_how is non_exhaustive, so it cannot be built outside libc
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}
const RESOLVE_NO_XDEV: u64 = 0x01;
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_BENEATH: u64 = 0x08;

/// Makes `to_root/rel` what `from_root/rel` is. `rel` is relative, normal components only
/// (refuse "..", ".", absolute, empty with RestoreError::Unsafe). `display_prefix` is only used
/// to print paths in messages (e.g. "/srv/data" so that errors show the live path).
/// exact == false: a folder is merged (entries that exist only in `to` stay);
/// exact == true: entries only in `to` are removed, and a `rel` missing from `from` is removed from `to`.
///
/// Either way an entry whose type differs is replaced: a file restored over a folder removes
/// the folder's tree first (counted in `removed`), since getting the old type back is the
/// restore's point. Folders missing in `to` above `rel` are created with the owner, mode,
/// xattrs and times of `from`'s. A mount point inside the source tree is skipped; one inside
/// the destination, or a symbolic link or mount on the way to `rel` in either tree, is refused.
/// The first error stops the copy: what was copied before it stays, no temporary file does.
pub fn copy_tree(
    from_root: &Path,
    to_root: &Path,
    rel: &Path,
    exact: bool,
    display_prefix: &Path,
) -> Result<Copied, RestoreError> {
    let names = split_rel(rel).map_err(|why| RestoreError::Unsafe {
        path: display_prefix.join(rel),
        why,
    })?;
    if names.is_empty() {
        return Err(RestoreError::Unsafe {
            path: display_prefix.to_path_buf(),
            why: "an empty path names the whole volume, not a path in it".into(),
        });
    }
    let from = open_root(from_root).map_err(|source| RestoreError::Io {
        path: from_root.to_path_buf(),
        source,
    })?;
    let to = open_root(to_root).map_err(|source| RestoreError::Io {
        path: to_root.to_path_buf(),
        source,
    })?;
    let mut c = Copy {
        exact,
        prefix: display_prefix,
        euid: nix::unistd::geteuid().as_raw(),
        out: Copied::default(),
    };
    let (name, parents) = names.split_last().expect("not empty");

    // the source side: a missing folder on the way means `rel` is missing too
    let mut from_dirs = vec![from];
    let mut missing = false;
    for (i, comp) in parents.iter().enumerate() {
        let at = c.shown(&names[..=i]);
        match open_beneath(from_dirs.last().expect("root"), comp, DIR) {
            Ok(fd) => from_dirs.push(fd),
            Err(e) if is_missing(&e) => {
                missing = true;
                break;
            }
            Err(e) => return Err(walk_error(at, e)),
        }
    }
    let source = if missing {
        None
    } else {
        match open_beneath(from_dirs.last().expect("root"), name, PATH) {
            Ok(fd) => Some(fd),
            Err(e) if is_missing(&e) => None,
            Err(e) => return Err(walk_error(c.shown(&names), e)),
        }
    };

    let Some(source) = source else {
        if !exact {
            return Err(RestoreError::NotInSource(c.shown(&names)));
        }
        // exact: the path goes from `to` as well (if its folder is there at all)
        let mut dir = to;
        for (i, comp) in parents.iter().enumerate() {
            match open_beneath(&dir, comp, DIR) {
                Ok(fd) => dir = fd,
                Err(e) if is_missing(&e) => return Ok(c.out),
                Err(e) => return Err(walk_error(c.shown(&names[..=i]), e)),
            }
        }
        let shown = c.shown(&names);
        c.remove(&dir, name, &shown, 0)?;
        fsync(&dir).map_err(|e| c.io(&names[..names.len() - 1], e))?;
        return Ok(c.out);
    };
    // entry() opens it again, by the same safe walk, and looks at its type then
    drop(source);

    // the destination side: folders the run deleted are made again (0700 until the end)
    let mut to_dirs = vec![to];
    let mut created = vec![];
    for (i, comp) in parents.iter().enumerate() {
        let at = &names[..=i];
        let dir = to_dirs.last().expect("root");
        let fd = match open_beneath(dir, comp, DIR) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let made = mkdirat(dir, comp, 0o700);
                let fd = open_beneath(dir, comp, DIR).map_err(|e| walk_error(c.shown(at), e))?;
                match made {
                    Ok(()) => {
                        let st = fstat(&fd).map_err(|e| c.io(at, e))?;
                        c.check_ours(&st, at)?;
                        created.push(i + 1);
                    }
                    // made by someone else meanwhile: used as it is
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(c.io(at, e)),
                }
                fd
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                return Err(RestoreError::Io {
                    path: c.shown(at),
                    source: io::Error::other(format!(
                        "it is not a folder now; restore {} itself first",
                        c.shown(at).display()
                    )),
                })
            }
            Err(e) => return Err(walk_error(c.shown(at), e)),
        };
        to_dirs.push(fd);
    }

    let shown = c.shown(&names);
    let result = c.entry(
        from_dirs.last().expect("root"),
        to_dirs.last().expect("root"),
        name,
        &shown,
        true,
        0,
    );
    // the folders made above get their metadata last, even after a failure (no folder is
    // left root's 0700 that was not); deepest first, though no order changes another's times
    let mut after = Ok(());
    for &i in created.iter().rev() {
        let at = &names[..i];
        let r = fstat(&from_dirs[i])
            .and_then(|st| set_dir_meta(&from_dirs[i], &to_dirs[i], &st))
            .map_err(|e| c.io(at, e));
        match r {
            Ok(()) => c.out.dirs += 1,
            Err(e) => {
                if after.is_ok() {
                    after = Err(e);
                }
            }
        }
    }
    result?;
    after?;
    // the rename into the parent is durable only once the parent is
    fsync(to_dirs.last().expect("root")).map_err(|e| c.io(&names[..names.len() - 1], e))?;
    Ok(c.out)
}

/// Bytes the tree at root/rel occupies (st_blocks*512, plus 4096 per inode for metadata), not following
/// symlinks or crossing mounts; 0 if missing. The caller checks there is room before a preserve copy.
///
/// An empty `rel` measures the whole tree under `root`. Hard links count once per name (they
/// are copied once per name). A symbolic link or mount on the way to `rel` is an error
/// (ELOOP, EXDEV); a mount point inside the tree counts as nothing.
pub fn tree_size(root: &Path, rel: &Path) -> io::Result<u64> {
    let names = split_rel(rel).map_err(|why| io::Error::new(io::ErrorKind::InvalidInput, why))?;
    let mut dir = open_root(root)?;
    let Some((name, parents)) = names.split_last() else {
        let st = fstat(&dir)?;
        return Ok(inode_size(&st) + size_of_dir(&dir, 0)?);
    };
    for comp in parents {
        match open_beneath(&dir, comp, DIR) {
            Ok(fd) => dir = fd,
            Err(e) if is_missing(&e) => return Ok(0),
            Err(e) => return Err(e),
        }
    }
    size_of_entry(&dir, name, 0)
}

fn size_of_entry(dir: &OwnedFd, name: &CStr, depth: usize) -> io::Result<u64> {
    let fd = match open_beneath(dir, name, PATH) {
        Ok(fd) => fd,
        // gone meanwhile, or another filesystem mounted here: nothing of this tree
        Err(e) if is_missing(&e) || e.raw_os_error() == Some(libc::EXDEV) => return Ok(0),
        Err(e) => return Err(e),
    };
    let st = fstat(&fd)?;
    if !is_type(&st, libc::S_IFDIR) {
        return Ok(inode_size(&st));
    }
    if depth >= MAX_DEPTH {
        return Err(too_deep());
    }
    let d = match open_beneath(dir, name, DIR) {
        Ok(d) => d,
        Err(e) if is_missing(&e) => return Ok(inode_size(&st)),
        Err(e) => return Err(e),
    };
    Ok(inode_size(&st) + size_of_dir(&d, depth)?)
}

fn size_of_dir(d: &OwnedFd, depth: usize) -> io::Result<u64> {
    let mut sum = 0u64;
    for n in list(d)? {
        sum = sum.saturating_add(size_of_entry(d, &n, depth + 1)?);
    }
    Ok(sum)
}

fn inode_size(st: &libc::stat) -> u64 {
    (st.st_blocks.max(0) as u64)
        .saturating_mul(512)
        .saturating_add(4096)
}

struct Copy<'a> {
    exact: bool,
    prefix: &'a Path,
    euid: u32,
    out: Copied,
}

impl Copy<'_> {
    fn shown(&self, names: &[CString]) -> PathBuf {
        let mut p = self.prefix.to_path_buf();
        for n in names {
            p.push(OsStr::from_bytes(n.to_bytes()));
        }
        p
    }

    fn io(&self, names: &[CString], source: io::Error) -> RestoreError {
        RestoreError::Io {
            path: self.shown(names),
            source,
        }
    }

    /// A node guard just made must still be the one it made (root's, one name) before its
    /// owner or mode is changed: in a folder a user can write, the name may have been swapped.
    fn check_ours(&self, st: &libc::stat, names: &[CString]) -> Result<(), RestoreError> {
        let linked = !is_type(st, libc::S_IFDIR) && st.st_nlink != 1;
        if st.st_uid != self.euid || linked {
            return Err(replaced(&self.shown(names)));
        }
        Ok(())
    }

    /// Copies `name` of `sdir` to `name` of `ddir`; `shown` is its path in messages. `top` is
    /// the path asked for: a mount point there is refused, below it skipped (source side).
    fn entry(
        &mut self,
        sdir: &OwnedFd,
        ddir: &OwnedFd,
        name: &CStr,
        shown: &Path,
        top: bool,
        depth: usize,
    ) -> Result<(), RestoreError> {
        let io_err = |source| RestoreError::Io {
            path: shown.to_path_buf(),
            source,
        };
        let src = match open_beneath(sdir, name, PATH) {
            Ok(fd) => fd,
            Err(e) if !top && e.raw_os_error() == Some(libc::EXDEV) => return Ok(()),
            // gone from a live source since it was listed: nothing to copy
            Err(e) if !top && e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(entry_error(shown, e)),
        };
        let st = fstat(&src).map_err(io_err)?;
        let dest_kind = match open_beneath(ddir, name, PATH) {
            Ok(fd) => Some(fstat(&fd).map_err(io_err)?.st_mode & libc::S_IFMT),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
            Err(e) => return Err(entry_error(shown, e)),
        };
        let kind = st.st_mode & libc::S_IFMT;
        if kind == libc::S_IFDIR {
            return self.dir(sdir, ddir, name, shown, dest_kind, depth);
        }
        // a non-folder replaces a folder: the folder's tree goes first (rename cannot)
        if dest_kind == Some(libc::S_IFDIR) {
            self.remove(ddir, name, shown, depth)?;
        }
        match kind {
            libc::S_IFREG => self.file(sdir, ddir, name, shown),
            libc::S_IFLNK => self.symlink(&src, ddir, name, shown, &st),
            _ => self.node(&src, ddir, name, shown, &st),
        }
    }

    fn file(
        &mut self,
        sdir: &OwnedFd,
        ddir: &OwnedFd,
        name: &CStr,
        shown: &Path,
    ) -> Result<(), RestoreError> {
        let io_err = |source| RestoreError::Io {
            path: shown.to_path_buf(),
            source,
        };
        // O_NONBLOCK: should a live source turn into a fifo meanwhile, the open must not wait
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK;
        // O_NOATIME: reading a live file for --preserve leaves its access time as it was
        let src = match open_beneath(sdir, name, flags | libc::O_NOATIME) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => open_beneath(sdir, name, flags),
            r => r,
        }
        .map_err(|e| entry_error(shown, e))?;
        if !is_type(&fstat(&src).map_err(io_err)?, libc::S_IFREG) {
            return Err(io_err(io::Error::other(
                "it changed type while guard was copying it",
            )));
        }
        let src = File::from(src);
        let (tmp, dst) = Temp::file(ddir).map_err(io_err)?;
        let dst = File::from(dst);
        copy_data(&src, &dst).map_err(io_err)?;
        // metadata of the source as it is after the copy; the size cuts off what grew meanwhile
        let st = fstat(&src).map_err(io_err)?;
        dst.set_len(st.st_size.max(0) as u64).map_err(io_err)?;
        set_file_meta(&src, &dst, &st).map_err(io_err)?;
        dst.sync_all().map_err(io_err)?;
        tmp.rename_to(name).map_err(io_err)?;
        self.out.files += 1;
        self.out.bytes += st.st_size.max(0) as u64;
        Ok(())
    }

    fn symlink(
        &mut self,
        src: &OwnedFd,
        ddir: &OwnedFd,
        name: &CStr,
        shown: &Path,
        st: &libc::stat,
    ) -> Result<(), RestoreError> {
        let io_err = |source| RestoreError::Io {
            path: shown.to_path_buf(),
            source,
        };
        let target = readlink_fd(src).map_err(io_err)?;
        let tmp = Temp::symlink(ddir, &target).map_err(io_err)?;
        let fd = open_beneath(ddir, &tmp.name, PATH).map_err(io_err)?;
        let now = fstat(&fd).map_err(io_err)?;
        if !is_type(&now, libc::S_IFLNK) || now.st_uid != self.euid || now.st_nlink != 1 {
            return Err(replaced(shown));
        }
        // on the link itself, by its descriptor: never through it, never by a name
        chown_path_fd(&fd, st).map_err(io_err)?;
        utimes_path_fd(&fd, st).map_err(io_err)?;
        tmp.rename_to(name).map_err(io_err)?;
        self.out.symlinks += 1;
        Ok(())
    }

    /// fifos, sockets, device nodes
    fn node(
        &mut self,
        src: &OwnedFd,
        ddir: &OwnedFd,
        name: &CStr,
        shown: &Path,
        st: &libc::stat,
    ) -> Result<(), RestoreError> {
        let io_err = |source| RestoreError::Io {
            path: shown.to_path_buf(),
            source,
        };
        let tmp = Temp::node(ddir, st).map_err(io_err)?;
        // O_PATH: a device node is never opened (opening one can act on the device)
        let fd = open_beneath(ddir, &tmp.name, PATH).map_err(io_err)?;
        let now = fstat(&fd).map_err(io_err)?;
        let same_kind = now.st_mode & libc::S_IFMT == st.st_mode & libc::S_IFMT;
        if !same_kind || now.st_uid != self.euid || now.st_nlink != 1 {
            return Err(replaced(shown));
        }
        chown_path_fd(&fd, st).map_err(io_err)?;
        // fchmod and the f*xattr calls refuse O_PATH descriptors; /proc/self/fd/N names
        // exactly this inode, and a node (not a link) is not followed any further
        let dst_proc = proc_path(&fd);
        let src_proc = proc_path(src);
        chmod_path(&dst_proc, st.st_mode & 0o7777).map_err(io_err)?;
        sync_xattrs(&Node::Path(&src_proc), &Node::Path(&dst_proc)).map_err(io_err)?;
        utimes_path_fd(&fd, st).map_err(io_err)?;
        tmp.rename_to(name).map_err(io_err)?;
        self.out.others += 1;
        Ok(())
    }

    fn dir(
        &mut self,
        sdir: &OwnedFd,
        ddir: &OwnedFd,
        name: &CStr,
        shown: &Path,
        dest_kind: Option<u32>,
        depth: usize,
    ) -> Result<(), RestoreError> {
        let io_err = |source| RestoreError::Io {
            path: shown.to_path_buf(),
            source,
        };
        if depth >= MAX_DEPTH {
            return Err(io_err(too_deep()));
        }
        let s = match open_beneath(sdir, name, DIR) {
            Ok(fd) => fd,
            Err(e) if depth > 0 && e.raw_os_error() == Some(libc::EXDEV) => return Ok(()),
            Err(e) => return Err(entry_error(shown, e)),
        };
        // something else in its place goes; a missing folder is made root's 0700 until its
        // metadata is set at the end
        if dest_kind.is_some_and(|k| k != libc::S_IFDIR) {
            self.remove(ddir, name, shown, depth)?;
        }
        let d = if dest_kind == Some(libc::S_IFDIR) {
            open_beneath(ddir, name, DIR).map_err(|e| entry_error(shown, e))?
        } else {
            mkdirat(ddir, name, 0o700).map_err(io_err)?;
            let d = open_beneath(ddir, name, DIR).map_err(|e| entry_error(shown, e))?;
            let st = fstat(&d).map_err(io_err)?;
            if st.st_uid != self.euid {
                return Err(replaced(shown));
            }
            d
        };
        let names = list(&s).map_err(io_err)?;
        for n in &names {
            let child = shown.join(OsStr::from_bytes(n.to_bytes()));
            self.entry(&s, &d, n, &child, false, depth + 1)?;
        }
        if self.exact {
            let keep: BTreeSet<&CStr> = names.iter().map(|n| n.as_c_str()).collect();
            for n in list(&d).map_err(io_err)? {
                if !keep.contains(n.as_c_str()) {
                    let child = shown.join(OsStr::from_bytes(n.to_bytes()));
                    self.remove(&d, &n, &child, depth + 1)?;
                }
            }
        }
        // last: the entries made above changed the folder's times
        let st = fstat(&s).map_err(io_err)?;
        set_dir_meta(&s, &d, &st).map_err(io_err)?;
        self.out.dirs += 1;
        Ok(())
    }

    /// Removes `name` of `dir` and, for a folder, its tree; never through a link, never in
    /// another mount. Missing is not an error.
    fn remove(
        &mut self,
        dir: &OwnedFd,
        name: &CStr,
        shown: &Path,
        depth: usize,
    ) -> Result<(), RestoreError> {
        let io_err = |source| RestoreError::Io {
            path: shown.to_path_buf(),
            source,
        };
        let fd = match open_beneath(dir, name, PATH) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(entry_error(shown, e)),
        };
        let st = fstat(&fd).map_err(io_err)?;
        drop(fd);
        if is_type(&st, libc::S_IFDIR) {
            if depth >= MAX_DEPTH {
                return Err(io_err(too_deep()));
            }
            let d = open_beneath(dir, name, DIR).map_err(|e| entry_error(shown, e))?;
            for n in list(&d).map_err(io_err)? {
                let child = shown.join(OsStr::from_bytes(n.to_bytes()));
                self.remove(&d, &n, &child, depth + 1)?;
            }
            unlinkat(dir, name, libc::AT_REMOVEDIR).map_err(io_err)?;
        } else {
            unlinkat(dir, name, 0).map_err(io_err)?;
        }
        self.out.removed += 1;
        Ok(())
    }
}

/// A temporary name in a destination folder, removed on drop unless renamed over the real one.
struct Temp<'a> {
    dir: &'a OwnedFd,
    name: CString,
    done: bool,
}

impl<'a> Temp<'a> {
    /// Tries fresh random names until `make` does not find the name taken.
    fn make(
        dir: &'a OwnedFd,
        mut make: impl FnMut(&CStr) -> io::Result<Option<OwnedFd>>,
    ) -> io::Result<(Self, Option<OwnedFd>)> {
        for _ in 0..100 {
            let name = temp_name();
            match make(&name) {
                Ok(fd) => {
                    let t = Temp {
                        dir,
                        name,
                        done: false,
                    };
                    return Ok((t, fd));
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::from_raw_os_error(libc::EEXIST))
    }

    fn file(dir: &'a OwnedFd) -> io::Result<(Self, OwnedFd)> {
        let (t, fd) = Self::make(dir, |name| {
            let flags =
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
            // SAFETY: name is NUL-terminated; the mode argument is the one O_CREAT reads.
            let fd = unsafe {
                libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, 0o600 as libc::c_uint)
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a new descriptor, owned by nothing else.
            Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
        })?;
        Ok((t, fd.expect("made with a descriptor")))
    }

    fn symlink(dir: &'a OwnedFd, target: &CStr) -> io::Result<Self> {
        let (t, _) = Self::make(dir, |name| {
            // SAFETY: both strings are NUL-terminated.
            cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })?;
            Ok(None)
        })?;
        Ok(t)
    }

    fn node(dir: &'a OwnedFd, st: &libc::stat) -> io::Result<Self> {
        // no permission bits yet: they are set once the owner is
        let mode = st.st_mode & libc::S_IFMT;
        let (t, _) = Self::make(dir, |name| {
            // SAFETY: name is NUL-terminated.
            cvt(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, st.st_rdev) })?;
            Ok(None)
        })?;
        Ok(t)
    }

    fn rename_to(mut self, name: &CStr) -> io::Result<()> {
        let d = self.dir.as_raw_fd();
        // SAFETY: both names are NUL-terminated; both are single components in one folder.
        cvt(unsafe { libc::renameat(d, self.name.as_ptr(), d, name.as_ptr()) })?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Temp<'_> {
    fn drop(&mut self) {
        if !self.done {
            // SAFETY: the name is NUL-terminated; unlinkat never follows a link.
            unsafe { libc::unlinkat(self.dir.as_raw_fd(), self.name.as_ptr(), 0) };
        }
    }
}

fn temp_name() -> CString {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut b = [0u8; 6];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
    if n != b.len() as isize {
        // early at boot: unpredictable enough for a name that O_EXCL checks anyway
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let x =
            t ^ (u64::from(std::process::id()) << 32) ^ N.fetch_add(0x9e37_79b9, Ordering::Relaxed);
        b.copy_from_slice(&x.to_le_bytes()[..6]);
    }
    let mut s = TEMP_PREFIX.as_bytes().to_vec();
    s.extend(b.iter().map(|x| CHARS[usize::from(*x) % CHARS.len()]));
    CString::new(s).expect("no NUL")
}

/// `rel` as its components; "", ".", ".." and absolute paths are refused.
fn split_rel(rel: &Path) -> Result<Vec<CString>, String> {
    let bytes = rel.as_os_str().as_bytes();
    if bytes.starts_with(b"/") {
        return Err("an absolute path where a path inside the volume was expected".into());
    }
    let mut out = vec![];
    for seg in bytes.split(|b| *b == b'/') {
        match seg {
            // "a//b" and a trailing "/" name the same as "a/b"
            b"" => {}
            b"." | b".." => return Err("a path with \".\" or \"..\" in it is refused".into()),
            _ => {
                out.push(CString::new(seg).map_err(|_| "a path with a NUL byte in it".to_string())?)
            }
        }
    }
    Ok(out)
}

fn walk_error(path: PathBuf, e: io::Error) -> RestoreError {
    match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::EXDEV) => RestoreError::Unsafe {
            path,
            why: ON_THE_WAY.into(),
        },
        _ => RestoreError::Io { path, source: e },
    }
}

/// An error opening the entry itself: the walk to it already succeeded, so EXDEV says the
/// entry is a mount point (ELOOP: it became a link after it was looked at).
fn entry_error(path: &Path, e: io::Error) -> RestoreError {
    match e.raw_os_error() {
        Some(libc::EXDEV) => RestoreError::Unsafe {
            path: path.to_path_buf(),
            why: A_MOUNT.into(),
        },
        Some(libc::ELOOP) => RestoreError::Unsafe {
            path: path.to_path_buf(),
            why: "it became a symbolic link while guard was copying it; guard does not follow it"
                .into(),
        },
        _ => RestoreError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

/// What guard made at a name is not there any more (a user who can write the folder swapped
/// it): nothing more is done to whatever is there now.
fn replaced(path: &Path) -> RestoreError {
    RestoreError::Unsafe {
        path: path.to_path_buf(),
        why: "it was replaced by someone else while guard was copying it".into(),
    }
}

fn is_missing(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

fn too_deep() -> io::Error {
    io::Error::other(format!(
        "folders nested more than {MAX_DEPTH} levels deep: not copied"
    ))
}

fn is_type(st: &libc::stat, kind: libc::mode_t) -> bool {
    st.st_mode & libc::S_IFMT == kind
}

fn cvt(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Runs `f` again while it fails with EINTR.
fn retry(mut f: impl FnMut() -> libc::c_int) -> io::Result<()> {
    loop {
        match cvt(f()) {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            r => return r,
        }
    }
}

/// The names in folder `rel` beneath `root` (no symbolic link or mount crossed on the way):
/// one listing answers "did these paths exist?" for many paths at once.
pub fn names_in(root: &Path, rel: &Path) -> io::Result<std::collections::HashSet<OsString>> {
    let r = open_root(root)?;
    let d = if rel.as_os_str().is_empty() {
        r
    } else {
        let c = CString::new(rel.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        open_beneath(&r, &c, DIR)?
    };
    // listed through the descriptor just checked, not by the path again
    std::fs::read_dir(format!("/proc/self/fd/{}", d.as_raw_fd()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect()
}

/// Whether `rel` exists beneath `root` (itself may be a link; none on the way to it).
pub fn exists_beneath(root: &Path, rel: &Path) -> io::Result<bool> {
    let r = open_root(root)?;
    let c = CString::new(rel.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    match open_beneath(&r, &c, PATH) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// O_RDONLY, not O_PATH: the destination root is also fsync'd after a rename into it.
fn open_root(p: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: c is NUL-terminated.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A folder, readable (listing, fchown, fchmod, xattrs, futimens, fsync).
const DIR: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
/// Any entry itself, a link included, without opening it.
const PATH: libc::c_int = libc::O_PATH | libc::O_NOFOLLOW;

/// openat2 of one name (or a relative path) beneath `dir`: no symbolic link (ELOOP), no magic
/// link, no mount crossed (EXDEV), nothing outside `dir`.
fn open_beneath(dir: &OwnedFd, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV,
    };
    let mut tries = 0;
    loop {
        // SAFETY: name is NUL-terminated and `how` is an open_how of the size passed; the
        // kernel only reads both.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                name.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if r >= 0 {
            // SAFETY: a new descriptor, owned by nothing else.
            return Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) });
        }
        let e = io::Error::last_os_error();
        // O_DIRECTORY|O_NOFOLLOW says ENOTDIR for a trailing link, not ELOOP: a link on the
        // way must read as a link (refused), not as a missing folder
        if e.raw_os_error() == Some(libc::ENOTDIR) && flags & libc::O_DIRECTORY != 0 {
            let is_link = open_beneath(dir, name, PATH)
                .and_then(|fd| fstat(&fd))
                .is_ok_and(|st| is_type(&st, libc::S_IFLNK));
            if is_link {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
        }
        tries += 1;
        // EAGAIN: a rename or mount raced the walk; the kernel asks to try again
        match e.raw_os_error() {
            Some(libc::EINTR) | Some(libc::EAGAIN) if tries < 16 => continue,
            _ => return Err(e),
        }
    }
}

fn fstat(fd: &impl AsRawFd) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat fills the whole struct when it returns 0 (also for an O_PATH descriptor).
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: initialised by the successful fstat above.
    Ok(unsafe { st.assume_init() })
}

fn fsync(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fsync on a descriptor we own.
    retry(|| unsafe { libc::fsync(fd.as_raw_fd()) })
}

fn mkdirat(dir: &OwnedFd, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: name is NUL-terminated.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) })
}

fn unlinkat(dir: &OwnedFd, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: name is NUL-terminated; unlinkat never follows a link.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })
}

/// The target of the link `fd` (an O_PATH descriptor of the link itself).
fn readlink_fd(fd: &OwnedFd) -> io::Result<CString> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: the kernel writes at most buf.len() bytes into buf; an empty path with an
        // O_PATH descriptor of a link reads that link.
        let n = unsafe {
            libc::readlinkat(
                fd.as_raw_fd(),
                c"".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if n < buf.len() {
            buf.truncate(n);
            return CString::new(buf).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL));
        }
        // perhaps cut short: once more with room to spare
        let len = buf.len() * 2;
        buf.resize(len, 0);
    }
}

fn proc_path(fd: &OwnedFd) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL")
}

fn times_of(st: &libc::stat) -> [libc::timespec; 2] {
    [
        libc::timespec {
            tv_sec: st.st_atime as _,
            tv_nsec: st.st_atime_nsec as _,
        },
        libc::timespec {
            tv_sec: st.st_mtime as _,
            tv_nsec: st.st_mtime_nsec as _,
        },
    ]
}

/// Owner of the entry `fd` (O_PATH) itself, a link included.
fn chown_path_fd(fd: &OwnedFd, st: &libc::stat) -> io::Result<()> {
    let flags = libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW;
    // SAFETY: an empty, NUL-terminated path with AT_EMPTY_PATH acts on fd itself.
    cvt(unsafe { libc::fchownat(fd.as_raw_fd(), c"".as_ptr(), st.st_uid, st.st_gid, flags) })
}

/// Times of the entry `fd` (O_PATH) itself, a link included.
fn utimes_path_fd(fd: &OwnedFd, st: &libc::stat) -> io::Result<()> {
    let ts = times_of(st);
    let flags = libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW;
    // SAFETY: ts holds the two timespecs utimensat reads; the empty path with AT_EMPTY_PATH
    // acts on fd itself.
    cvt(unsafe { libc::utimensat(fd.as_raw_fd(), c"".as_ptr(), ts.as_ptr(), flags) })
}

fn chmod_path(p: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: p is NUL-terminated.
    cvt(unsafe { libc::chmod(p.as_ptr(), mode) })
}

/// Owner, then mode (chown clears setuid and setgid), then xattrs (chown would clear file
/// capabilities; ACLs are set after the mode so that the mode does not reshape them), times.
fn set_file_meta(src: &File, dst: &File, st: &libc::stat) -> io::Result<()> {
    set_fd_meta(src.as_raw_fd(), dst.as_raw_fd(), st)
}

fn set_dir_meta(src: &OwnedFd, dst: &OwnedFd, st: &libc::stat) -> io::Result<()> {
    set_fd_meta(src.as_raw_fd(), dst.as_raw_fd(), st)?;
    fsync(dst)
}

fn set_fd_meta(src: RawFd, dst: RawFd, st: &libc::stat) -> io::Result<()> {
    // SAFETY: fchown on a descriptor the caller holds open.
    cvt(unsafe { libc::fchown(dst, st.st_uid, st.st_gid) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fchmod(dst, st.st_mode & 0o7777) })?;
    sync_xattrs(&Node::Fd(src), &Node::Fd(dst))?;
    let ts = times_of(st);
    // SAFETY: ts holds the two timespecs futimens reads.
    cvt(unsafe { libc::futimens(dst, ts.as_ptr()) })
}

/// Copies the contents, holes kept where the source reports them (SEEK_DATA/SEEK_HOLE);
/// copy_file_range where the kernel can (same filesystem), read and write otherwise.
fn copy_data(src: &File, dst: &File) -> io::Result<()> {
    let mut buf = vec![];
    let mut in_kernel = true;
    let mut off: i64 = 0;
    loop {
        // SAFETY: lseek on a descriptor we hold open.
        let start = unsafe { libc::lseek(src.as_raw_fd(), off, libc::SEEK_DATA) };
        let (start, end) = if start < 0 {
            match io::Error::last_os_error().raw_os_error() {
                // no data from `off` on
                Some(libc::ENXIO) => return Ok(()),
                // no hole support: all of it is data
                _ => (off, i64::MAX),
            }
        } else {
            // SAFETY: as above.
            let end = unsafe { libc::lseek(src.as_raw_fd(), start, libc::SEEK_HOLE) };
            (start, if end < 0 { i64::MAX } else { end })
        };
        let reached = copy_range(src, dst, start, end, &mut in_kernel, &mut buf)?;
        if reached < end || end == i64::MAX {
            return Ok(());
        }
        off = reached;
    }
}

/// Copies [start, end) or up to the end of the file; returns the offset reached.
fn copy_range(
    src: &File,
    dst: &File,
    start: i64,
    end: i64,
    in_kernel: &mut bool,
    buf: &mut Vec<u8>,
) -> io::Result<i64> {
    let mut pos = start;
    while pos < end {
        let want = (end - pos).min(1 << 30) as usize;
        if *in_kernel {
            let (mut i, mut o) = (pos, pos);
            // SAFETY: both offsets are valid i64s that the kernel updates; both descriptors are open.
            let n = unsafe {
                libc::copy_file_range(src.as_raw_fd(), &mut i, dst.as_raw_fd(), &mut o, want, 0)
            };
            if n > 0 {
                pos += n as i64;
                continue;
            }
            if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // not between these filesystems (EXDEV, EINVAL, EOPNOTSUPP...), or 0, which some
            // filesystems also say for "cannot": read and write tell the real end of the file
            *in_kernel = false;
            continue;
        }
        if buf.is_empty() {
            buf.resize(1 << 17, 0);
        }
        let chunk = want.min(buf.len());
        let n = match src.read_at(&mut buf[..chunk], pos as u64) {
            Ok(0) => return Ok(pos),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all_at(&buf[..n], pos as u64)?;
        pos += n as i64;
    }
    Ok(pos)
}

/// Where the xattr calls act: an open descriptor, or a path (/proc/self/fd/N of an O_PATH one).
enum Node<'a> {
    Fd(RawFd),
    Path(&'a CStr),
}

impl Node<'_> {
    fn list(&self) -> io::Result<Vec<CString>> {
        loop {
            let len = self.list_into(&mut [])?;
            if len == 0 {
                return Ok(vec![]);
            }
            let mut buf = vec![0u8; len];
            match self.list_into(&mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf
                        .split(|b| *b == 0)
                        .filter(|s| !s.is_empty())
                        .map(|s| CString::new(s).expect("split at NUL"))
                        .collect());
                }
                // grew meanwhile
                Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn list_into(&self, buf: &mut [u8]) -> io::Result<usize> {
        let (p, len) = (buf.as_mut_ptr().cast(), buf.len());
        // SAFETY: the kernel writes at most len bytes at p (none when len is 0); paths are
        // NUL-terminated.
        let n = unsafe {
            match self {
                Node::Fd(fd) => libc::flistxattr(*fd, p, len),
                Node::Path(path) => libc::listxattr(path.as_ptr(), p, len),
            }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            // a filesystem without xattrs has none to copy
            return if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                Ok(0)
            } else {
                Err(e)
            };
        }
        Ok(n as usize)
    }

    fn get(&self, name: &CStr) -> io::Result<Vec<u8>> {
        loop {
            let len = self.get_into(name, &mut [])?;
            let mut buf = vec![0u8; len];
            match self.get_into(name, &mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn get_into(&self, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
        let (p, len) = (buf.as_mut_ptr().cast(), buf.len());
        // SAFETY: the kernel writes at most len bytes at p; names and paths are NUL-terminated.
        let n = unsafe {
            match self {
                Node::Fd(fd) => libc::fgetxattr(*fd, name.as_ptr(), p, len),
                Node::Path(path) => libc::getxattr(path.as_ptr(), name.as_ptr(), p, len),
            }
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn set(&self, name: &CStr, value: &[u8]) -> io::Result<()> {
        let (p, len) = (value.as_ptr().cast(), value.len());
        // SAFETY: the kernel reads len bytes at p; names and paths are NUL-terminated.
        cvt(unsafe {
            match self {
                Node::Fd(fd) => libc::fsetxattr(*fd, name.as_ptr(), p, len, 0),
                Node::Path(path) => libc::setxattr(path.as_ptr(), name.as_ptr(), p, len, 0),
            }
        })
    }

    fn remove(&self, name: &CStr) -> io::Result<()> {
        // SAFETY: names and paths are NUL-terminated.
        cvt(unsafe {
            match self {
                Node::Fd(fd) => libc::fremovexattr(*fd, name.as_ptr()),
                Node::Path(path) => libc::removexattr(path.as_ptr(), name.as_ptr()),
            }
        })
    }
}

/// `dst`'s xattrs become `src`'s: each of the source's set, any other removed (a new file may
/// have inherited a default ACL from its folder). One the destination's filesystem does not
/// support is skipped; the SELinux label the kernel gave is left when the source has none.
fn sync_xattrs(src: &Node, dst: &Node) -> io::Result<()> {
    let names = src.list()?;
    for n in &names {
        let v = match src.get(n) {
            Ok(v) => v,
            // removed meanwhile (a live source)
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(e),
        };
        match dst.set(n, &v) {
            Err(e) if e.raw_os_error() != Some(libc::EOPNOTSUPP) => return Err(e),
            _ => {}
        }
    }
    for n in dst.list()? {
        if names.contains(&n) || n.as_c_str() == c"security.selinux" {
            continue;
        }
        match dst.remove(&n) {
            Err(e)
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::ENODATA) | Some(libc::EOPNOTSUPP)
                ) =>
            {
                return Err(e)
            }
            _ => {}
        }
    }
    Ok(())
}

/// The names in folder `dir` ("." and ".." left out), sorted.
fn list(dir: &OwnedFd) -> io::Result<Vec<CString>> {
    // fdopendir takes over the descriptor and its offset: give it a fresh one of the same folder
    let fd = open_beneath(dir, c".", libc::O_RDONLY | libc::O_DIRECTORY)?;
    let raw = fd.into_raw_fd();
    // SAFETY: raw is an open folder descriptor; fdopendir owns it on success.
    let d = unsafe { libc::fdopendir(raw) };
    if d.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: not taken over by the failed fdopendir: still ours to close.
        unsafe { libc::close(raw) };
        return Err(e);
    }
    struct Closer(*mut libc::DIR);
    impl Drop for Closer {
        fn drop(&mut self) {
            // SAFETY: a stream from fdopendir, closed once (this also closes its descriptor).
            unsafe { libc::closedir(self.0) };
        }
    }
    let d = Closer(d);
    let mut out = vec![];
    loop {
        // SAFETY: errno is this thread's; it is reset so that the end tells from an error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: d.0 is an open stream used by this thread only.
        let ent = unsafe { libc::readdir(d.0) };
        if ent.is_null() {
            // SAFETY: as above.
            let errno = unsafe { *libc::__errno_location() };
            if errno != 0 {
                return Err(io::Error::from_raw_os_error(errno));
            }
            break;
        }
        // SAFETY: d_name is NUL-terminated, valid until the next readdir; copied at once.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        if name != c"." && name != c".." {
            out.push(name.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn set_times(p: &Path, secs: i64) {
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        let ts = [
            libc::timespec {
                tv_sec: secs as _,
                tv_nsec: 0,
            },
            libc::timespec {
                tv_sec: secs as _,
                tv_nsec: 123_456_789,
            },
        ];
        // SAFETY: a NUL-terminated path and two timespecs.
        let r = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                ts.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
    }

    /// false where the filesystem has no user xattrs
    fn set_xattr(p: &Path, name: &CStr, v: &[u8]) -> bool {
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: NUL-terminated path and name; v.len() bytes at v.
        let r = unsafe { libc::setxattr(c.as_ptr(), name.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
        if r != 0 {
            assert_eq!(
                io::Error::last_os_error().raw_os_error(),
                Some(libc::EOPNOTSUPP)
            );
            return false;
        }
        true
    }

    fn get_xattr(p: &Path, name: &CStr) -> Option<Vec<u8>> {
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        let mut buf = vec![0u8; 256];
        // SAFETY: at most buf.len() bytes written into buf.
        let n = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return None;
        }
        buf.truncate(n as usize);
        Some(buf)
    }

    fn mkfifo(p: &Path) {
        nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
    }

    fn write(p: &Path, data: &str, mode: u32, uid: u32, mtime: i64) {
        std::fs::write(p, data).unwrap();
        std::os::unix::fs::chown(p, Some(uid), Some(uid)).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        set_times(p, mtime);
    }

    struct Trees {
        _tmp: tempfile::TempDir,
        from: PathBuf,
        to: PathBuf,
        xattrs: bool,
    }

    /// `from` is the snapshot as it was; `to` the live tree the run changed.
    fn trees() -> Trees {
        let tmp = tempfile::Builder::new()
            .prefix("guard-restore-test")
            .tempdir_in("/tmp")
            .unwrap();
        let from = tmp.path().join("from");
        let to = tmp.path().join("to");
        for root in [&from, &to] {
            std::fs::create_dir(root).unwrap();
        }
        write(&from.join("a.txt"), "old a", 0o640, 1234, 1_000_000_000);
        let xattrs = set_xattr(&from.join("a.txt"), c"user.test", b"abc");
        write(&from.join("b.txt"), "old b", 0o644, 0, 1_000_000_100);
        write(&from.join("suid"), "#!/bin/sh\n", 0o4755, 0, 1_000_000_200);
        std::os::unix::fs::symlink("a.txt", from.join("link")).unwrap();
        std::os::unix::fs::lchown(from.join("link"), Some(1234), Some(1234)).unwrap();
        set_times(&from.join("link"), 1_000_000_300);
        std::fs::create_dir_all(from.join("dir/nested")).unwrap();
        write(
            &from.join("dir/nested/deep.txt"),
            "deep",
            0o600,
            1234,
            1_000_000_400,
        );
        write(&from.join("dir/one.txt"), "one", 0o644, 1234, 1_000_000_500);
        mkfifo(&from.join("dir/fifo"));
        std::fs::set_permissions(
            from.join("dir/nested"),
            std::fs::Permissions::from_mode(0o751),
        )
        .unwrap();
        set_times(&from.join("dir/nested"), 1_000_000_600);
        std::os::unix::fs::chown(from.join("dir"), Some(1234), Some(1234)).unwrap();
        std::fs::set_permissions(from.join("dir"), std::fs::Permissions::from_mode(0o750)).unwrap();
        set_times(&from.join("dir"), 1_000_000_700);

        write(
            &to.join("a.txt"),
            "new contents of a",
            0o666,
            0,
            1_700_000_000,
        );
        write(&to.join("b.txt"), "new b", 0o600, 0, 1_700_000_000);
        write(&to.join("suid"), "changed", 0o755, 0, 1_700_000_000);
        std::os::unix::fs::symlink("b.txt", to.join("link")).unwrap();
        std::fs::create_dir_all(to.join("dir/nested")).unwrap();
        write(
            &to.join("dir/nested/deep.txt"),
            "deep, changed",
            0o644,
            0,
            1_700_000_000,
        );
        write(
            &to.join("dir/extra.txt"),
            "made by the run",
            0o644,
            0,
            1_700_000_000,
        );
        write(
            &to.join("created.txt"),
            "made by the run",
            0o644,
            0,
            1_700_000_000,
        );
        Trees {
            _tmp: tmp,
            from,
            to,
            xattrs,
        }
    }

    fn same_file(a: &Path, b: &Path) {
        let (ma, mb) = (
            std::fs::symlink_metadata(a).unwrap(),
            std::fs::symlink_metadata(b).unwrap(),
        );
        assert_eq!(
            std::fs::read(a).unwrap(),
            std::fs::read(b).unwrap(),
            "{}",
            b.display()
        );
        assert_eq!(ma.mode(), mb.mode(), "{}", b.display());
        assert_eq!(
            (ma.uid(), ma.gid()),
            (mb.uid(), mb.gid()),
            "{}",
            b.display()
        );
        assert_eq!(
            (ma.mtime(), ma.mtime_nsec()),
            (mb.mtime(), mb.mtime_nsec()),
            "{}",
            b.display()
        );
    }

    fn no_temp_left(root: &Path) {
        for e in std::fs::read_dir(root).unwrap() {
            let e = e.unwrap();
            let name = e.file_name();
            assert!(
                !name.as_bytes().starts_with(TEMP_PREFIX.as_bytes()),
                "{} left",
                e.path().display()
            );
            if e.file_type().unwrap().is_dir() {
                no_temp_left(&e.path());
            }
        }
    }

    fn copy(t: &Trees, rel: &str, exact: bool) -> Result<Copied, RestoreError> {
        copy_tree(
            &t.from,
            &t.to,
            Path::new(rel),
            exact,
            Path::new("/srv/data"),
        )
    }

    #[test]
    fn one_file_is_restored_and_its_siblings_are_left() {
        let t = trees();
        let c = copy(&t, "a.txt", false).unwrap();
        assert_eq!((c.files, c.bytes, c.removed), (1, 5, 0));
        same_file(&t.from.join("a.txt"), &t.to.join("a.txt"));
        if t.xattrs {
            assert_eq!(
                get_xattr(&t.to.join("a.txt"), c"user.test").as_deref(),
                Some(&b"abc"[..])
            );
        }
        assert_eq!(
            std::fs::read_to_string(t.to.join("b.txt")).unwrap(),
            "new b"
        );
        assert_eq!(
            std::fs::read_to_string(t.to.join("created.txt")).unwrap(),
            "made by the run"
        );
        no_temp_left(&t.to);
    }

    #[test]
    fn setuid_survives_the_owner_change() {
        let t = trees();
        std::os::unix::fs::chown(t.from.join("suid"), Some(1234), Some(1234)).unwrap();
        std::fs::set_permissions(t.from.join("suid"), std::fs::Permissions::from_mode(0o6755))
            .unwrap();
        set_times(&t.from.join("suid"), 1_000_000_200);
        copy(&t, "suid", false).unwrap();
        same_file(&t.from.join("suid"), &t.to.join("suid"));
        assert_eq!(
            std::fs::metadata(t.to.join("suid")).unwrap().mode() & 0o7777,
            0o6755
        );
    }

    #[test]
    fn a_symlink_is_copied_as_a_link() {
        let t = trees();
        let c = copy(&t, "link", false).unwrap();
        assert_eq!(c.symlinks, 1);
        let l = t.to.join("link");
        assert_eq!(std::fs::read_link(&l).unwrap(), Path::new("a.txt"));
        let (ma, mb) = (
            std::fs::symlink_metadata(t.from.join("link")).unwrap(),
            std::fs::symlink_metadata(&l).unwrap(),
        );
        assert_eq!(
            (ma.uid(), ma.mtime(), ma.mtime_nsec()),
            (mb.uid(), mb.mtime(), mb.mtime_nsec())
        );
        // the link's target was not touched through it
        assert_eq!(
            std::fs::read_to_string(t.to.join("a.txt")).unwrap(),
            "new contents of a"
        );
        no_temp_left(&t.to);
    }

    #[test]
    fn a_folder_is_merged_or_made_exact() {
        let t = trees();
        let c = copy(&t, "dir", false).unwrap();
        assert_eq!((c.files, c.dirs, c.others, c.removed), (2, 2, 1, 0));
        assert!(t.to.join("dir/extra.txt").exists());
        same_file(
            &t.from.join("dir/nested/deep.txt"),
            &t.to.join("dir/nested/deep.txt"),
        );
        same_file(&t.from.join("dir/one.txt"), &t.to.join("dir/one.txt"));
        for d in ["dir", "dir/nested"] {
            let (ma, mb) = (
                std::fs::metadata(t.from.join(d)).unwrap(),
                std::fs::metadata(t.to.join(d)).unwrap(),
            );
            assert_eq!(
                (ma.mode(), ma.uid(), ma.mtime(), ma.mtime_nsec()),
                (mb.mode(), mb.uid(), mb.mtime(), mb.mtime_nsec()),
                "{d}"
            );
        }
        let fifo = std::fs::symlink_metadata(t.to.join("dir/fifo")).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(&fifo.file_type()));
        assert_eq!(fifo.mode() & 0o7777, 0o640);

        let c = copy(&t, "dir", true).unwrap();
        assert_eq!(c.removed, 1);
        assert!(!t.to.join("dir/extra.txt").exists());
        let mb = std::fs::metadata(t.to.join("dir")).unwrap();
        assert_eq!(
            mb.mtime(),
            1_000_000_700,
            "the folder's times are set after its entries changed"
        );
        no_temp_left(&t.to);
    }

    #[test]
    fn a_path_the_run_created_is_removed_only_when_exact() {
        let t = trees();
        match copy(&t, "created.txt", false) {
            Err(RestoreError::NotInSource(p)) => {
                assert_eq!(p, Path::new("/srv/data/created.txt"));
                let msg = RestoreError::NotInSource(p).to_string();
                assert!(msg.contains("did not exist before the run"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        assert!(t.to.join("created.txt").exists());
        let c = copy(&t, "created.txt", true).unwrap();
        assert_eq!(c.removed, 1);
        assert!(!t.to.join("created.txt").exists());
        // missing on both sides (its folder too): nothing to do
        assert_eq!(copy(&t, "nowhere/x", true).unwrap(), Copied::default());
        // a folder the run made goes with its tree
        std::fs::create_dir_all(t.to.join("newdir/sub")).unwrap();
        std::fs::write(t.to.join("newdir/sub/f"), "x").unwrap();
        assert_eq!(copy(&t, "newdir", true).unwrap().removed, 3);
        assert!(!t.to.join("newdir").exists());
    }

    #[test]
    fn a_deleted_ancestor_is_made_again_like_the_source() {
        let t = trees();
        std::fs::remove_dir_all(t.to.join("dir")).unwrap();
        let c = copy(&t, "dir/nested/deep.txt", false).unwrap();
        assert_eq!((c.files, c.dirs), (1, 2));
        same_file(
            &t.from.join("dir/nested/deep.txt"),
            &t.to.join("dir/nested/deep.txt"),
        );
        for d in ["dir", "dir/nested"] {
            let (ma, mb) = (
                std::fs::metadata(t.from.join(d)).unwrap(),
                std::fs::metadata(t.to.join(d)).unwrap(),
            );
            assert_eq!(
                (ma.mode(), ma.uid(), ma.gid(), ma.mtime()),
                (mb.mode(), mb.uid(), mb.gid(), mb.mtime()),
                "{d}"
            );
        }
        assert!(
            !t.to.join("dir/one.txt").exists(),
            "only the path asked for"
        );
    }

    #[test]
    fn a_type_change_is_undone() {
        let t = trees();
        // the run made a folder where a file was, and a file where a folder was
        std::fs::remove_file(t.to.join("b.txt")).unwrap();
        std::fs::create_dir_all(t.to.join("b.txt/inner")).unwrap();
        std::fs::remove_dir_all(t.to.join("dir")).unwrap();
        std::fs::write(t.to.join("dir"), "a file now").unwrap();
        let c = copy(&t, "b.txt", false).unwrap();
        assert_eq!((c.files, c.removed), (1, 2));
        same_file(&t.from.join("b.txt"), &t.to.join("b.txt"));
        let c = copy(&t, "dir", false).unwrap();
        assert_eq!((c.removed, c.dirs), (1, 2));
        same_file(&t.from.join("dir/one.txt"), &t.to.join("dir/one.txt"));
        no_temp_left(&t.to);
    }

    #[test]
    fn a_symlink_on_the_way_is_refused_and_nothing_written_through_it() {
        let t = trees();
        let elsewhere = tempfile::Builder::new()
            .prefix("guard-elsewhere")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::remove_dir_all(t.to.join("dir")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), t.to.join("dir")).unwrap();
        for rel in ["dir/one.txt", "dir/nested/deep.txt"] {
            match copy(&t, rel, false) {
                Err(RestoreError::Unsafe { path, why }) => {
                    assert_eq!(path, Path::new("/srv/data/dir"));
                    assert!(why.contains("symbolic link"), "{why}");
                }
                other => panic!("{rel}: {other:?}"),
            }
        }
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
        // the link itself is what a restore of "dir" replaces
        copy(&t, "dir", false).unwrap();
        assert!(std::fs::symlink_metadata(t.to.join("dir"))
            .unwrap()
            .is_dir());
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
        // on the source side too
        let t = trees();
        std::fs::remove_dir_all(t.from.join("dir")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), t.from.join("dir")).unwrap();
        assert!(matches!(
            copy(&t, "dir/one.txt", false),
            Err(RestoreError::Unsafe { .. })
        ));
    }

    #[test]
    fn bad_relative_paths_are_refused() {
        let t = trees();
        for rel in [
            "../x",
            "dir/../a.txt",
            "./a.txt",
            "dir/./one.txt",
            "/etc/passwd",
            "",
            "/",
            ".",
        ] {
            match copy(&t, rel, true) {
                Err(RestoreError::Unsafe { .. }) => {}
                other => panic!("{rel:?}: {other:?}"),
            }
        }
        assert_eq!(
            std::fs::read_to_string(t.to.join("a.txt")).unwrap(),
            "new contents of a"
        );
    }

    #[test]
    fn mount_points_are_skipped_in_the_source_and_refused_in_the_destination() {
        let t = trees();
        let (from, to) = (t.from.clone(), t.to.clone());
        // a private mount namespace in a thread of its own: the host's mounts stay as they are
        let r = std::thread::spawn(move || {
            use nix::mount::{mount, MsFlags};
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .unwrap();
            mount(
                Some("tmpfs"),
                &from.join("dir/nested"),
                Some("tmpfs"),
                MsFlags::empty(),
                None::<&str>,
            )
            .unwrap();
            std::fs::write(from.join("dir/nested/on-mount"), "x").unwrap();
            let shown = Path::new("/srv/data");
            let skipped = copy_tree(&from, &to, Path::new("dir"), true, shown).unwrap();
            let top = copy_tree(&from, &to, Path::new("dir/nested"), false, shown);
            let below = copy_tree(&from, &to, Path::new("dir/nested/on-mount"), false, shown);
            mount(
                Some("tmpfs"),
                &to.join("dir"),
                Some("tmpfs"),
                MsFlags::empty(),
                None::<&str>,
            )
            .unwrap();
            let into = copy_tree(&from, &to, Path::new("dir/one.txt"), false, shown);
            let onto = copy_tree(&from, &to, Path::new("dir"), false, shown);
            let listed = std::fs::read_dir(to.join("dir")).unwrap().count();
            (skipped, top, below, into, onto, listed)
        })
        .join()
        .unwrap();
        let (skipped, top, below, into, onto, listed) = r;
        // the mounted "nested" is neither copied nor, with exact, removed from `to`
        assert_eq!(skipped.dirs, 1);
        assert!(t.to.join("dir/nested/deep.txt").exists());
        assert!(!t.to.join("dir/nested/on-mount").exists());
        assert!(matches!(top, Err(RestoreError::Unsafe { .. })), "{top:?}");
        assert!(
            matches!(below, Err(RestoreError::Unsafe { .. })),
            "{below:?}"
        );
        assert!(matches!(into, Err(RestoreError::Unsafe { .. })), "{into:?}");
        assert!(matches!(onto, Err(RestoreError::Unsafe { .. })), "{onto:?}");
        assert_eq!(listed, 0, "nothing written into the mount");
    }

    /// A POSIX ACL in its xattr form: version 2, then (tag, perm, id) entries.
    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            v.extend(tag.to_le_bytes());
            v.extend(perm.to_le_bytes());
            v.extend(id.to_le_bytes());
        }
        v
    }

    #[test]
    fn acls_are_copied_and_not_inherited() {
        let t = trees();
        const ANY: u32 = u32::MAX;
        // user::rw- user:1234:rw- group::r-- mask::rw- other::---
        let access = acl(&[
            (0x01, 6, ANY),
            (0x02, 6, 1234),
            (0x04, 4, ANY),
            (0x10, 6, ANY),
            (0x20, 0, ANY),
        ]);
        if !set_xattr(&t.from.join("b.txt"), c"system.posix_acl_access", &access) {
            return;
        }
        set_times(&t.from.join("b.txt"), 1_000_000_100);
        // `to`'s folder gives new files an ACL of its own, which the restored a.txt must not keep
        let default = acl(&[
            (0x01, 7, ANY),
            (0x02, 7, 4321),
            (0x04, 5, ANY),
            (0x10, 7, ANY),
            (0x20, 5, ANY),
        ]);
        assert!(set_xattr(&t.to, c"system.posix_acl_default", &default));
        std::fs::write(t.to.join("probe"), "").unwrap();
        assert!(
            get_xattr(&t.to.join("probe"), c"system.posix_acl_access").is_some(),
            "inherited"
        );
        copy(&t, "a.txt", false).unwrap();
        copy(&t, "b.txt", false).unwrap();
        assert_eq!(
            get_xattr(&t.to.join("a.txt"), c"system.posix_acl_access"),
            None
        );
        same_file(&t.from.join("a.txt"), &t.to.join("a.txt"));
        assert_eq!(
            get_xattr(&t.to.join("b.txt"), c"system.posix_acl_access"),
            Some(access)
        );
        same_file(&t.from.join("b.txt"), &t.to.join("b.txt"));
    }

    #[test]
    fn device_nodes_and_sockets() {
        let t = trees();
        for (name, mode, dev) in [
            ("null", libc::S_IFCHR | 0o666, libc::makedev(1, 3)),
            ("sock", libc::S_IFSOCK | 0o755, 0),
        ] {
            let c = CString::new(t.from.join(name).as_os_str().as_bytes()).unwrap();
            // SAFETY: a NUL-terminated path.
            assert_eq!(unsafe { libc::mknod(c.as_ptr(), mode, dev) }, 0);
            std::fs::set_permissions(
                t.from.join(name),
                std::fs::Permissions::from_mode(mode & 0o7777),
            )
            .unwrap();
            std::os::unix::fs::lchown(t.from.join(name), Some(1234), Some(99)).unwrap();
            set_times(&t.from.join(name), 1_000_000_800);
            assert_eq!(copy(&t, name, false).unwrap().others, 1);
            let (ma, mb) = (
                std::fs::symlink_metadata(t.from.join(name)).unwrap(),
                std::fs::symlink_metadata(t.to.join(name)).unwrap(),
            );
            assert_eq!(
                (
                    ma.mode(),
                    ma.rdev(),
                    ma.uid(),
                    ma.gid(),
                    ma.mtime(),
                    ma.mtime_nsec()
                ),
                (
                    mb.mode(),
                    mb.rdev(),
                    mb.uid(),
                    mb.gid(),
                    mb.mtime(),
                    mb.mtime_nsec()
                ),
                "{name}"
            );
        }
        no_temp_left(&t.to);
    }

    #[test]
    fn sizes() {
        let t = trees();
        let f = t.to.join("big");
        std::fs::write(&f, vec![7u8; 1 << 20]).unwrap();
        assert!(tree_size(&t.to, Path::new("big")).unwrap() >= 1 << 20);
        let dir = tree_size(&t.to, Path::new("dir")).unwrap();
        assert!(dir >= 4 * 4096, "{dir}");
        assert!(tree_size(&t.to, Path::new("")).unwrap() >= (1 << 20) + dir);
        assert_eq!(tree_size(&t.to, Path::new("missing/x")).unwrap(), 0);
        assert!(tree_size(&t.to, Path::new("../x")).is_err());
        // a link is measured as the link
        assert_eq!(tree_size(&t.to, Path::new("link")).unwrap(), 4096);
    }

    #[test]
    fn sparse_and_empty_files() {
        let t = trees();
        let f = t.from.join("sparse");
        let file = File::create(&f).unwrap();
        file.set_len(64 << 20).unwrap();
        file.write_all_at(b"middle", 32 << 20).unwrap();
        drop(file);
        File::create(t.from.join("empty")).unwrap();
        copy(&t, "sparse", false).unwrap();
        copy(&t, "empty", false).unwrap();
        let m = std::fs::metadata(t.to.join("sparse")).unwrap();
        assert_eq!(m.len(), 64 << 20);
        assert!(
            m.blocks() * 512 < 1 << 20,
            "holes kept: {} blocks",
            m.blocks()
        );
        assert_eq!(
            std::fs::read(t.to.join("sparse")).unwrap(),
            std::fs::read(&f).unwrap()
        );
        assert_eq!(std::fs::metadata(t.to.join("empty")).unwrap().len(), 0);
        no_temp_left(&t.to);
    }

    #[test]
    fn messages_name_the_live_path() {
        let e = RestoreError::Unsafe {
            path: "/srv/x/dir".into(),
            why: ON_THE_WAY.into(),
        };
        assert_eq!(
            e.to_string(),
            "/srv/x/dir: a symbolic link or a mount point is on the way; guard does not follow it"
        );
        assert_eq!(
            RestoreError::NotInSource("/srv/x".into()).to_string(),
            "/srv/x did not exist before the run (it was created by it); --exact removes it"
        );
    }
}

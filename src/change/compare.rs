//! The change, found by comparing a snapshot (mounted read-only) with the live filesystem: for
//! a kept run whose recording is missing or incomplete (`guard diff --compare`). Metadata first;
//! contents are read only where the metadata says a file may have changed without its size
//! changing. A block-level snapshot keeps inode numbers, so an unchanged file has the same
//! inode, size, mtime and ctime on both sides, and a move is a deleted and an added path with
//! one inode.
use crate::model::change::{Change, ChangeKind};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

pub struct Compared {
    pub changes: Vec<Change>,
    /// Entries that could not be read (permission, I/O): the list may miss them.
    pub unreadable: u64,
}

/// `before` and `after` are the roots of the two trees; `shown` is where `after` is mounted
/// live (paths are reported under it); `skip` are live paths not compared (guard's journal).
pub fn compare(before: &Path, after: &Path, shown: &Path, skip: &[PathBuf]) -> Compared {
    let mut w = Walk {
        dev_before: dev_of(before),
        dev_after: dev_of(after),
        shown: shown.to_path_buf(),
        skip: skip.to_vec(),
        out: Vec::new(),
        unreadable: 0,
    };
    w.dir(before, after, Path::new(""));
    let changes = pair_moves(w.out);
    Compared {
        changes,
        unreadable: w.unreadable,
    }
}

fn dev_of(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).map(|m| m.dev()).unwrap_or(0)
}

struct Walk {
    dev_before: u64,
    dev_after: u64,
    shown: PathBuf,
    skip: Vec<PathBuf>,
    /// with the inode on the side where the path exists (for pairing moves)
    out: Vec<(Change, u64)>,
    unreadable: u64,
}

impl Walk {
    /// The entries of one folder, and the names where another filesystem is mounted.
    fn entries(
        &mut self,
        dir: &Path,
        dev: u64,
    ) -> (BTreeMap<OsString, Metadata>, BTreeSet<OsString>) {
        let (mut m, mut mounted) = (BTreeMap::new(), BTreeSet::new());
        let Ok(rd) = std::fs::read_dir(dir) else {
            self.unreadable += 1;
            return (m, mounted);
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(md) if md.dev() == dev => {
                    m.insert(e.file_name(), md);
                }
                Ok(_) => {
                    mounted.insert(e.file_name());
                }
                Err(_) => self.unreadable += 1,
            }
        }
        (m, mounted)
    }

    fn dir(&mut self, before: &Path, after: &Path, rel: &Path) {
        let (b, mb_) = self.entries(before, self.dev_before);
        let (a, ma_) = self.entries(after, self.dev_after);
        let names: BTreeSet<&OsString> = b.keys().chain(a.keys()).collect();
        for name in names {
            // another filesystem mounted there (on the live side: /proc, /boot…) is not this
            // target's: its mount point is not a change either
            if mb_.contains(name) || ma_.contains(name) {
                continue;
            }
            let r = rel.join(name);
            let live = self.shown.join(&r);
            if self.skip.iter().any(|s| live.starts_with(s)) {
                continue;
            }
            match (b.get(name), a.get(name)) {
                (Some(mb), None) => {
                    self.push(ChangeKind::Deleted, live, mb, None, mb.ino());
                    if mb.is_dir() {
                        self.one_side(&before.join(name), &r, self.dev_before, ChangeKind::Deleted);
                    }
                }
                (None, Some(ma)) => {
                    self.push(ChangeKind::Added, live, ma, None, ma.ino());
                    if ma.is_dir() {
                        self.one_side(&after.join(name), &r, self.dev_after, ChangeKind::Added);
                    }
                }
                (Some(mb), Some(ma)) => {
                    let (pb, pa) = (before.join(name), after.join(name));
                    if mb.file_type() != ma.file_type() {
                        self.push(ChangeKind::Modified, live, ma, Some("replaced"), ma.ino());
                        continue;
                    }
                    if let Some(what) = differs(mb, ma, &pb, &pa) {
                        self.push(ChangeKind::Modified, live, ma, Some(what), ma.ino());
                    }
                    if ma.is_dir() {
                        self.dir(&pb, &pa, &r);
                    }
                }
                (None, None) => {}
            }
        }
    }

    /// Everything under a folder that exists on one side only: all added, or all deleted.
    fn one_side(&mut self, dir: &Path, rel: &Path, dev: u64, kind: ChangeKind) {
        for (name, m) in self.entries(dir, dev).0 {
            let r = rel.join(&name);
            let live = self.shown.join(&r);
            self.push(kind, live, &m, None, m.ino());
            if m.is_dir() {
                self.one_side(&dir.join(&name), &r, dev, kind);
            }
        }
    }

    fn push(
        &mut self,
        kind: ChangeKind,
        path: PathBuf,
        m: &Metadata,
        detail: Option<&str>,
        ino: u64,
    ) {
        self.out.push((
            Change {
                kind,
                path,
                from: None,
                dir: m.is_dir(),
                detail: detail.map(str::to_string),
            },
            ino,
        ));
    }
}

/// What differs between two entries of the same type, or None when nothing does.
fn differs(b: &Metadata, a: &Metadata, pb: &Path, pa: &Path) -> Option<&'static str> {
    let attrs = b.mode() != a.mode() || b.uid() != a.uid() || b.gid() != a.gid();
    if a.is_dir() {
        // a folder's times and size change with its entries: those are listed themselves
        return attrs.then_some("attributes");
    }
    if a.file_type().is_symlink() {
        let (tb, ta) = (std::fs::read_link(pb).ok(), std::fs::read_link(pa).ok());
        return if tb != ta {
            Some("content")
        } else {
            attrs.then_some("attributes")
        };
    }
    let same_inode = b.ino() == a.ino()
        && b.size() == a.size()
        && b.mtime() == a.mtime()
        && b.mtime_nsec() == a.mtime_nsec()
        && b.ctime() == a.ctime()
        && b.ctime_nsec() == a.ctime_nsec();
    if same_inode && !attrs {
        return None;
    }
    if b.size() != a.size() {
        return Some("content");
    }
    if a.file_type().is_file() && !same_contents(pb, b, pa, a) {
        return Some("content");
    }
    if (a.file_type().is_block_device() || a.file_type().is_char_device()) && b.rdev() != a.rdev() {
        return Some("content");
    }
    // same bytes: owner, mode, times or xattrs changed (or the file was rewritten as it was)
    Some("attributes")
}

/// Opens a file listed as regular, for reading only if it still is that file: never through a
/// link swapped in since (O_NOFOLLOW), never blocking on a FIFO or acting as a device would
/// on open (O_NONBLOCK, then the type and inode checked on the descriptor).
fn open_listed(p: &Path, listed: &std::fs::Metadata) -> Option<std::fs::File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(p)
        .ok()?;
    let m = f.metadata().ok()?;
    (m.file_type().is_file() && m.dev() == listed.dev() && m.ino() == listed.ino()).then_some(f)
}

fn same_contents(a: &Path, ma: &std::fs::Metadata, b: &Path, mb: &std::fs::Metadata) -> bool {
    let (Some(mut fa), Some(mut fb)) = (open_listed(a, ma), open_listed(b, mb)) else {
        return false;
    };
    let mut ba = vec![0u8; 1 << 16];
    let mut bb = vec![0u8; 1 << 16];
    loop {
        let na = match read_full(&mut fa, &mut ba) {
            Ok(n) => n,
            Err(_) => return false,
        };
        let nb = match read_full(&mut fb, &mut bb) {
            Ok(n) => n,
            Err(_) => return false,
        };
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A deleted and an added path with one inode (and type) is a move. Hard-linked files share an
/// inode too, but a snapshot of one filesystem keeps both links where they were, so a link that
/// is gone on one side and new on the other did move.
fn pair_moves(list: Vec<(Change, u64)>) -> Vec<Change> {
    let mut added: BTreeMap<(u64, bool), Vec<usize>> = BTreeMap::new();
    for (i, (c, ino)) in list.iter().enumerate() {
        if c.kind == ChangeKind::Added {
            added.entry((*ino, c.dir)).or_default().push(i);
        }
    }
    let mut from: BTreeMap<usize, PathBuf> = BTreeMap::new();
    let mut gone: BTreeSet<usize> = BTreeSet::new();
    for (i, (c, ino)) in list.iter().enumerate() {
        if c.kind != ChangeKind::Deleted {
            continue;
        }
        if let Some(v) = added.get_mut(&(*ino, c.dir)) {
            if let Some(j) = v.pop() {
                from.insert(j, c.path.clone());
                gone.insert(i);
            }
        }
    }
    let mut out: Vec<Change> = list
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !gone.contains(i))
        .map(|(i, (mut c, _))| {
            if let Some(f) = from.remove(&i) {
                c.kind = ChangeKind::Moved;
                c.from = Some(f);
            }
            c
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn kinds(c: &Compared, base: &Path) -> Vec<String> {
        c.changes
            .iter()
            .map(|c| {
                let p = c.path.strip_prefix(base).unwrap().display().to_string();
                match &c.from {
                    Some(f) => format!(
                        "{} {} <- {}",
                        c.kind.mark(),
                        p,
                        f.strip_prefix(base).unwrap().display()
                    ),
                    None => format!(
                        "{} {} {}",
                        c.kind.mark(),
                        p,
                        c.detail.as_deref().unwrap_or("")
                    ),
                }
            })
            .collect()
    }

    #[test]
    fn names_exactly_the_changed_paths() {
        let d = tempfile::tempdir().unwrap();
        let (b, a) = (d.path().join("b"), d.path().join("a"));
        for t in [&b, &a] {
            fs::create_dir_all(t.join("lost+found")).unwrap();
            fs::create_dir_all(t.join("etc/sub")).unwrap();
            fs::write(t.join("etc/same"), "same").unwrap();
        }
        fs::write(b.join("etc/changed"), "one").unwrap();
        fs::write(a.join("etc/changed"), "two").unwrap();
        fs::write(b.join("etc/gone"), "x").unwrap();
        fs::write(a.join("etc/sub/new"), "y").unwrap();
        fs::write(b.join("etc/longer"), "1").unwrap();
        fs::write(a.join("etc/longer"), "12").unwrap();
        // a copy made by hand has new inodes and times: identical contents, so "attributes"
        let c = compare(&b, &a, Path::new("/srv"), &[]);
        let got = kinds(&c, Path::new("/srv"));
        assert!(
            got.contains(&"c etc/changed content".to_string()),
            "{got:?}"
        );
        assert!(got.contains(&"- etc/gone ".to_string()), "{got:?}");
        assert!(got.contains(&"+ etc/sub/new ".to_string()), "{got:?}");
        assert!(got.contains(&"c etc/longer content".to_string()), "{got:?}");
        assert!(!got.iter().any(|g| g.contains("lost+found")), "{got:?}");
        assert!(
            !got.iter()
                .any(|g| g.ends_with("etc ") || g.contains("etc/sub ")),
            "{got:?}"
        );
    }

    #[test]
    fn the_same_tree_compared_with_itself_shows_nothing_and_a_rename_is_a_move() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("x/y")).unwrap();
        fs::write(d.path().join("x/y/f"), "f").unwrap();
        let c = compare(d.path(), d.path(), Path::new("/m"), &[]);
        assert!(c.changes.is_empty(), "{:?}", c.changes);
        // a move: the same inode under another name (hard link stands for the renamed file)
        let e = tempfile::tempdir().unwrap();
        fs::create_dir_all(e.path().join("b")).unwrap();
        fs::create_dir_all(e.path().join("a")).unwrap();
        fs::write(e.path().join("b/old"), "f").unwrap();
        fs::hard_link(e.path().join("b/old"), e.path().join("a/new")).unwrap();
        let c = compare(
            &e.path().join("b"),
            &e.path().join("a"),
            Path::new("/m"),
            &[],
        );
        assert_eq!(kinds(&c, Path::new("/m")), vec!["m new <- old"]);
    }
}

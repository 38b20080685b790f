//! What a run changed: recorded while it runs (fanotify), compared from the snapshot, dpkg's
//! packages; and taking paths back from a snapshot (restore, preserve).
pub mod compare;
pub mod dpkg;
pub mod record;
pub mod restore;
pub mod view;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Folders with at least this many paths asked about are listed once instead of a stat per path.
pub const LIST_FROM: usize = 16;

/// For each path: whether it exists now (Some(is_dir)) or not (None). Paths of one folder are
/// answered from one listing of it when there are many of them (a run that made thousands of
/// files in one place), else by lstat.
pub fn exists_now<'a>(paths: impl Iterator<Item = &'a Path>) -> HashMap<PathBuf, Option<bool>> {
    let mut by_dir: BTreeMap<&Path, Vec<&Path>> = BTreeMap::new();
    for p in paths {
        by_dir.entry(p.parent().unwrap_or(p)).or_default().push(p);
    }
    let lstat = |p: &Path| std::fs::symlink_metadata(p).ok().map(|m| m.is_dir());
    let mut out = HashMap::new();
    for (d, ps) in by_dir {
        let listed: Option<HashMap<std::ffi::OsString, Option<bool>>> = (ps.len() >= LIST_FROM)
            .then(|| std::fs::read_dir(d).ok())
            .flatten()
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| {
                        // d_type where the filesystem gives it; else a stat
                        let dir = e.file_type().map(|t| t.is_dir()).ok();
                        (e.file_name(), dir)
                    })
                    .collect()
            });
        for p in ps {
            let v = match (&listed, p.file_name()) {
                (Some(l), Some(n)) => match l.get(n) {
                    Some(Some(dir)) => Some(*dir),
                    Some(None) => lstat(p),
                    None => None,
                },
                _ => lstat(p),
            };
            out.insert(p.to_path_buf(), v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exists_now_lists_big_folders_and_stats_the_rest() {
        let t = tempfile::tempdir().unwrap();
        for i in 0..20 {
            std::fs::write(t.path().join(format!("f{i}")), "x").unwrap();
        }
        std::fs::create_dir(t.path().join("d")).unwrap();
        let mut asked: Vec<PathBuf> = (0..30).map(|i| t.path().join(format!("f{i}"))).collect();
        asked.push(t.path().join("d"));
        asked.push(t.path().join("d/missing"));
        let m = exists_now(asked.iter().map(|p| p.as_path()));
        assert_eq!(m[&t.path().join("f3")], Some(false));
        assert_eq!(m[&t.path().join("f25")], None);
        assert_eq!(m[&t.path().join("d")], Some(true));
        assert_eq!(m[&t.path().join("d/missing")], None);
    }
}

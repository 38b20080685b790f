//! Seeing and picking from a run: `guard diff` (what changed), `guard mount` / `umount` (a
//! kept run's snapshots for the operator to look at), `guard restore` (take paths back from a
//! kept run's snapshot). Reading the recorded list needs no lock; whatever mounts a snapshot
//! holds the run's lock, so that a commit or rollback never meets a snapshot in use.
use crate::change::view::{Access, View};
use crate::error::{Error, Result};
use crate::lvm::Lvm;
use crate::model::change::{ChangeSource, RunChanges, TargetChanges};
use crate::model::record::{CopyMount, CopyRun, Event};
use crate::store::journal::{self, Journal, Phase, RunRecord};
use crate::ui;
use std::path::{Component, Path, PathBuf};

pub struct DiffArgs {
    pub run: String,
    pub json: bool,
    pub compare: bool,
    pub content: Option<PathBuf>,
    pub path: Option<PathBuf>,
}

fn check_id(id: &str) -> Result<()> {
    if journal::valid_run_id(id) {
        Ok(())
    } else {
        Err(Error::refused(
            format!("{id:?} is not a run id (they look like 20261127-101500-3f9a…)"),
            "list runs with `guard status --all`",
        ))
    }
}

fn refuse_unless_kept(rec: &RunRecord, what: &str) -> Result<()> {
    if rec.phase == Phase::Kept && rec.copy.is_none() {
        return Ok(());
    }
    Err(Error::refused(
        format!(
            "run {} is {}: {what} needs its snapshots, which only a kept run has",
            rec.id,
            crate::ops::status::phase_word(rec)
        ),
        "run it with --keep (or --on-failure keep) to keep the snapshots after the command",
    ))
}

/// An absolute path with no `.` or `..` (guard compares it as it stands, never through links).
fn check_path(p: &Path, flag: &str) -> Result<()> {
    let bad = !p.is_absolute()
        || p.components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir));
    if bad {
        return Err(Error::refused(
            format!(
                "{flag} {}: give an absolute path without . or ..",
                p.display()
            ),
            "e.g. /etc/app/app.conf",
        ));
    }
    Ok(())
}

/// The target whose (deepest) mount point holds `p`, and `p` relative to it.
pub fn target_of(rec: &RunRecord, p: &Path) -> Result<(usize, PathBuf, PathBuf)> {
    rec.targets
        .iter()
        .enumerate()
        .flat_map(|(i, t)| t.mountpoints.iter().map(move |m| (i, m)))
        .filter(|(_, m)| p.starts_with(m))
        .max_by_key(|(_, m)| m.components().count())
        .map(|(i, m)| (i, m.clone(), p.strip_prefix(m).unwrap_or(p).to_path_buf()))
        .ok_or_else(|| {
            let mps: Vec<String> = rec
                .targets
                .iter()
                .flat_map(|t| t.mountpoints.iter().map(|m| m.display().to_string()))
                .collect();
            Error::refused(
                format!(
                    "{} is not on a volume of run {} (its volumes are mounted at {})",
                    p.display(),
                    rec.id,
                    if mps.is_empty() {
                        "no folder".into()
                    } else {
                        mps.join(", ")
                    }
                ),
                "name a path under one of those folders",
            )
        })
}

pub fn diff(lvm: &dyn Lvm, j: &Journal, a: &DiffArgs) -> Result<i32> {
    check_id(&a.run)?;
    if let Some(p) = a.content.as_ref().or(a.path.as_ref()) {
        check_path(p, "path")?;
    }
    let rec = j.load(&a.run)?;
    if let Some(p) = &a.content {
        return content(lvm, j, &rec, p);
    }
    let stored = j.load_changes(&rec.id)?;
    let kept = rec.phase == Phase::Kept && rec.copy.is_none();
    if a.compare {
        refuse_unless_kept(&rec, "--compare")?;
    }
    // a target without a whole recording is compared, where its snapshot is there to compare
    let lacking: Vec<usize> = (0..rec.targets.len())
        .filter(|&i| {
            let s = stored.as_ref().and_then(|c| c.targets.get(i));
            a.compare || s.is_none_or(|t| !t.complete || t.source == ChangeSource::None)
        })
        .filter(|&i| !rec.targets[i].mountpoints.is_empty())
        .collect();
    let mut out = stored.unwrap_or_else(|| RunChanges {
        schema: crate::model::change::SCHEMA.into(),
        run: rec.id.clone(),
        targets: vec![],
        packages: vec![],
    });
    if out.targets.len() < rec.targets.len() {
        out.targets = rec
            .targets
            .iter()
            .map(|t| TargetChanges {
                target: format!("{}/{}", t.vg, t.lv),
                mountpoint: t.mountpoints.first().cloned(),
                source: ChangeSource::None,
                complete: false,
                changes: vec![],
                more_under: vec![],
                note: Some(if t.mountpoints.is_empty() {
                    "not mounted: guard records paths only on mounted filesystems".into()
                } else {
                    "no record of the change was kept for this run".into()
                }),
            })
            .collect();
    }
    if kept && !lacking.is_empty() {
        let held = crate::ops::hold(lvm, j, &rec.id, "diff")?;
        let view = View::open(lvm, &held.rec.targets, &lacking, Access::Read)?;
        for &i in &lacking {
            let (Some(snap), Some(mp)) = (view.of(i), rec.targets[i].mountpoints.first()) else {
                continue;
            };
            let skip = vec![j.dir().to_path_buf()];
            let c = crate::change::compare::compare(snap, mp, mp, &skip);
            out.targets[i] = TargetChanges {
                target: format!("{}/{}", rec.targets[i].vg, rec.targets[i].lv),
                mountpoint: Some(mp.clone()),
                source: ChangeSource::Compared,
                complete: c.unreadable == 0,
                changes: c.changes,
                more_under: vec![],
                note: (c.unreadable > 0)
                    .then(|| format!("{} entries could not be read", c.unreadable)),
            };
        }
        view.close(lvm)?;
        drop(held);
    }
    if let Some(p) = &a.path {
        for t in out.targets.iter_mut() {
            t.changes.retain(|c| c.path.starts_with(p));
            t.more_under
                .retain(|m| m.dir.starts_with(p) || p.starts_with(&m.dir));
        }
    }
    if a.json {
        ui::out(format!("{}\n", serde_json::to_string_pretty(&out)?))?;
    } else {
        ui::out(human(&rec, &out))?;
    }
    Ok(0)
}

pub fn human(rec: &RunRecord, c: &RunChanges) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let n: usize = c.targets.iter().map(|t| t.changes.len()).sum();
    let _ = writeln!(
        s,
        "run {} ({}): {n} path{} changed",
        rec.id,
        crate::ops::status::phase_word(rec),
        if n == 1 { "" } else { "s" }
    );
    for t in &c.targets {
        let how = match t.source {
            ChangeSource::Recorded => "recorded while the command ran",
            ChangeSource::Compared => "the snapshot compared with the live filesystem",
            ChangeSource::None => "no list",
        };
        let at = t
            .mountpoint
            .as_ref()
            .map(|m| format!(", mounted at {}", m.display()))
            .unwrap_or_default();
        let _ = writeln!(s, "{}{at} ({how}):", t.target);
        for ch in &t.changes {
            let mut line = format!("  {} {}", ch.kind.mark(), ch.path.display());
            if ch.dir {
                line.push('/');
            }
            if let Some(f) = &ch.from {
                let _ = write!(line, "  (from {})", f.display());
            }
            if let Some(d) = &ch.detail {
                let _ = write!(line, "  [{d}]");
            }
            let _ = writeln!(s, "{line}");
        }
        for m in &t.more_under {
            let _ = writeln!(s, "  … {} more under {}", m.count, m.dir.display());
        }
        if let Some(note) = &t.note {
            let _ = writeln!(s, "  note: {note}");
        }
    }
    if !c.packages.is_empty() {
        let _ = writeln!(s, "packages:");
        for p in &c.packages {
            use crate::model::change::PackageChangeKind as K;
            let v = match p.kind {
                K::Installed => p.new.clone().unwrap_or_default(),
                K::Removed => p.old.clone().unwrap_or_default(),
                K::Upgraded | K::Downgraded => format!(
                    "{} -> {}",
                    p.old.as_deref().unwrap_or("?"),
                    p.new.as_deref().unwrap_or("?")
                ),
                K::Broken => format!(
                    "{} left {} (dpkg failed on it)",
                    p.new.as_deref().unwrap_or("?"),
                    p.state.as_deref().unwrap_or("?")
                ),
            };
            let kind = format!("{:?}", p.kind).to_lowercase();
            let _ = writeln!(s, "  {kind:<10} {} {v}", p.package);
        }
    }
    s
}

/// `guard diff --content PATH RUN`: a unified diff of one file, the snapshot's against now.
fn content(lvm: &dyn Lvm, j: &Journal, rec: &RunRecord, p: &Path) -> Result<i32> {
    refuse_unless_kept(rec, "--content")?;
    let (i, _mp, rel) = target_of(rec, p)?;
    let held = crate::ops::hold(lvm, j, &rec.id, "diff")?;
    let view = View::open(lvm, &held.rec.targets, &[i], Access::Read)?;
    let before = view.of(i).map(|s| s.join(&rel)).unwrap_or_default();
    let exists = |q: &Path| std::fs::symlink_metadata(q).is_ok();
    let old = if exists(&before) {
        before.clone()
    } else {
        "/dev/null".into()
    };
    let new = if exists(p) {
        p.to_path_buf()
    } else {
        "/dev/null".into()
    };
    let out = crate::exec::system_command("diff")?
        .args(["-u", "--no-dereference", "--label"])
        .arg(format!("{} (before run {})", p.display(), rec.id))
        .arg("--label")
        .arg(format!("{} (now)", p.display()))
        .arg(&old)
        .arg(&new)
        .output()
        .map_err(|e| Error::io("cannot run diff", e))?;
    view.close(lvm)?;
    // diff: 0 same, 1 different, 2 trouble
    match out.status.code() {
        Some(0) => {
            ui::say(&format!("{}: unchanged since run {}", p.display(), rec.id));
            Ok(0)
        }
        Some(1) => {
            // as diff wrote it: file contents need not be UTF-8
            ui::out(&out.stdout)?;
            Ok(0)
        }
        _ => Err(Error::Other(format!(
            "diff failed: {}",
            crate::exec::stderr_tail(&out.stderr)
        ))),
    }
}

/// The default folder for `guard mount RUN`.
pub fn default_mount_dir(id: &str) -> PathBuf {
    PathBuf::from("/run/guard/mnt").join(id)
}

/// `guard mount RUN [DIR]`: the kept run's snapshots, read-only, for the operator (one target at
/// DIR, several at DIR/VG/LV). Recorded, so that commit, rollback and expiry unmount them.
pub fn mount(lvm: &dyn Lvm, j: &Journal, id: &str, dir: Option<PathBuf>) -> Result<i32> {
    check_id(id)?;
    let mut held = crate::ops::hold(lvm, j, id, "mount")?;
    let rec = &mut held.rec;
    refuse_unless_kept(rec, "guard mount")?;
    if let Some(m) = &rec.mounted {
        return Err(Error::refused(
            format!("run {id} is mounted already, at {}", m.root.display()),
            format!("use it there, or `guard umount {id}` first"),
        ));
    }
    let root = match dir {
        Some(d) => d,
        None => {
            use std::os::unix::fs::DirBuilderExt;
            let parent = PathBuf::from("/run/guard/mnt");
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&parent)
                .map_err(|e| Error::io(format!("cannot make {}", parent.display()), e))?;
            default_mount_dir(id)
        }
    };
    crate::run::copy::check_root(&root)?;
    crate::run::copy::prepare_root(&root)?;
    rec.mounted = Some(CopyRun {
        root: root.clone(),
        mounted: vec![],
        rehearsal: false,
    });
    let many = rec.targets.len() > 1;
    for i in 0..rec.targets.len() {
        let t = rec.targets[i].clone();
        let at = if many {
            root.join(&t.vg).join(&t.lv)
        } else {
            root.clone()
        };
        if many {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&at)
                .map_err(|e| Error::io(format!("cannot make {}", at.display()), e))?;
        }
        let dev = format!("/dev/{}/{}", t.vg, t.snapshot);
        if t.thin && !Path::new(&dev).exists() {
            lvm.activate(&t.vg, &t.snapshot)?;
        }
        let rdev = {
            use std::os::unix::fs::MetadataExt;
            let m =
                std::fs::metadata(&dev).map_err(|e| Error::io(format!("cannot find {dev}"), e))?;
            (libc::major(m.rdev()), libc::minor(m.rdev()))
        };
        if let Some(m) = rec.mounted.as_mut() {
            m.mounted.push(CopyMount {
                at: at.clone(),
                dev: rdev,
            });
        }
        j.write(rec)?;
        let fstype = crate::change::view::fstype_of(&t);
        let mut opts = String::from("ro,nosuid,nodev,noexec");
        if fstype.as_deref() == Some("xfs") {
            opts.push_str(",nouuid");
        }
        crate::run::copy::mount_snapshot(&dev, &at, fstype.as_deref(), &opts)?;
        ui::say(&format!(
            "snapshot of {}/{} (as it was before run {id}) mounted read-only at {}",
            t.vg,
            t.lv,
            at.display()
        ));
    }
    ui::say(&format!(
        "`guard umount {id}` unmounts it (commit and rollback do too)"
    ));
    Ok(0)
}

/// Unmounts what `guard mount` mounted; an error (busy) leaves the record as it is.
pub fn release_mounts(j: &Journal, rec: &mut RunRecord) -> Result<()> {
    let Some(mut m) = rec.mounted.take() else {
        return Ok(());
    };
    let made: Vec<PathBuf> = m.mounted.iter().map(|x| x.at.clone()).collect();
    let errors = crate::run::copy::unmount_all(&mut m);
    if !errors.is_empty() {
        rec.mounted = Some(m);
        return Err(Error::refused(
            format!(
                "run {}'s snapshots are still in use where `guard mount` put them: {}",
                rec.id,
                errors.join("; ")
            ),
            "leave that folder (see `fuser -vm DIR`), then run this again",
        ));
    }
    if m.root.starts_with("/run/guard/mnt") {
        // the folders made for several targets (ROOT/VG/LV), deepest first; remove_dir never
        // takes a folder that is not empty
        for at in made.iter().rev().filter(|a| a.starts_with(&m.root)) {
            for d in at.ancestors().take_while(|d| *d != m.root) {
                let _ = std::fs::remove_dir(d);
            }
        }
        let _ = std::fs::remove_dir(&m.root);
    }
    j.write(rec)
}

pub fn umount(lvm: &dyn Lvm, j: &Journal, id: &str) -> Result<i32> {
    check_id(id)?;
    let mut held = crate::ops::hold(lvm, j, id, "umount")?;
    if held.rec.mounted.is_none() {
        ui::say(&format!("run {id}: nothing of it is mounted"));
        return Ok(0);
    }
    release_mounts(j, &mut held.rec)?;
    ui::say(&format!("run {id}: snapshots unmounted"));
    Ok(0)
}

/// `guard restore RUN PATH… [--exact]`: each path made again what it was in the kept run's
/// snapshot (contents, owner, mode, times, xattrs and ACLs; links as links). The rest of the
/// change stays. Nothing is written through a symbolic link or into another mount.
pub fn restore(
    lvm: &dyn Lvm,
    j: &Journal,
    id: &str,
    paths: &[PathBuf],
    exact: bool,
) -> Result<i32> {
    check_id(id)?;
    if paths.is_empty() {
        return Err(Error::refused(
            "no path given",
            format!("e.g. guard restore {id} /etc/app/app.conf"),
        ));
    }
    for p in paths {
        check_path(p, "restore")?;
    }
    let mut held = crate::ops::hold(lvm, j, id, "restore")?;
    refuse_unless_kept(&held.rec, "guard restore")?;
    // every path checked before anything is written
    let mut plan = vec![];
    for p in paths {
        let (i, mp, rel) = target_of(&held.rec, p)?;
        if rel.as_os_str().is_empty() {
            return Err(Error::refused(
                format!(
                    "{} is the whole volume {}/{}",
                    p.display(),
                    held.rec.targets[i].vg,
                    held.rec.targets[i].lv
                ),
                format!("to take all of it back use `guard rollback {id}`"),
            ));
        }
        let table = crate::mounts::read()?;
        if !table
            .iter()
            .any(|m| m.mountpoint == mp && m.root == Path::new("/"))
        {
            return Err(Error::refused(
                format!(
                    "{} is not mounted now: nothing to restore into",
                    mp.display()
                ),
                "mount it, then run this again",
            ));
        }
        plan.push((i, mp, rel, p.clone()));
    }
    let which: Vec<usize> = {
        let mut v: Vec<usize> = plan.iter().map(|x| x.0).collect();
        v.sort();
        v.dedup();
        v
    };
    let view = View::open(lvm, &held.rec.targets, &which, Access::Read)?;
    // Writing into the origin fills its kept snapshot (or the thin pool) by as much: room
    // first, as the watcher would make it, or the restore is refused: the snapshot is the
    // rollback point and must not be invalidated by taking one path back.
    let lvs = lvm.lvs()?;
    for &i in &which {
        let bytes: u64 = plan
            .iter()
            .filter(|x| x.0 == i)
            .filter_map(|(_, _, rel, _)| crate::change::restore::tree_size(view.of(i)?, rel).ok())
            .sum();
        // the data twice (written, then its blocks' metadata and the filesystem's journal)
        // and a margin for a small restore's journal writes
        let need = 2 * bytes + (16 << 20);
        let t = &held.rec.targets[i];
        if let Err(why) = crate::ops::preserve::make_room(lvm, &lvs, t, need) {
            let _ = view.close(lvm);
            return Err(Error::refused(
                format!(
                    "restoring into {}/{} needs {} of room in its snapshot: {why}",
                    t.vg,
                    t.lv,
                    crate::size::human(need)
                ),
                "free space in the volume group (vgextend, or remove unneeded LVs), then run this again",
            ));
        }
    }
    let mut failed = vec![];
    for (i, mp, rel, p) in &plan {
        let Some(snap) = view.of(*i) else { continue };
        match crate::change::restore::copy_tree(snap, mp, rel, exact, mp) {
            Ok(c) => {
                let what = format!(
                    "{}: {} files, {} folders, {} links, {} bytes{}",
                    p.display(),
                    c.files,
                    c.dirs,
                    c.symlinks,
                    c.bytes,
                    if c.removed > 0 {
                        format!(", {} removed", c.removed)
                    } else {
                        String::new()
                    }
                );
                ui::say(&format!("restored {what}"));
                held.rec.restored.push(Event {
                    at: journal::now_rfc3339(),
                    kind: if exact {
                        "restore-exact".into()
                    } else {
                        "restore".into()
                    },
                    lv: format!("{}/{}", held.rec.targets[*i].vg, held.rec.targets[*i].lv),
                    detail: what,
                });
            }
            Err(e) => {
                ui::error(&format!("cannot restore {}: {e}", p.display()));
                failed.push(p.display().to_string());
            }
        }
    }
    view.close(lvm)?;
    j.write(&mut held.rec)?;
    crate::log::structured(
        crate::log::Kind::CommandResult,
        &format!(
            "run {id}: restored {} of {} paths",
            plan.len() - failed.len(),
            plan.len()
        ),
        &[],
    );
    Ok(if failed.is_empty() { 0 } else { 1 })
}

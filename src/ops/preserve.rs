//! `--preserve PATH`: paths whose new contents survive a rollback (the logs of what went
//! wrong). Before the merge, each is copied from the live filesystem INTO the snapshot (mounted
//! writable in guard's own namespace); the merge then brings the old volume back with those
//! paths as they are now. Nothing has to be put back afterwards, so it holds across the reboot
//! that completes a rollback of `/` as well. Writing into the snapshot uses its COW space: the
//! room is made first (or the path is not preserved), because an overflow here would cost the
//! rollback point itself.
use crate::change::view::{Access, View};
use crate::lvm::{self, Lvm};
use crate::model::record::Event;
use crate::store::journal::{self, RunRecord};
use crate::ui;
use std::path::PathBuf;

/// Room asked for beyond twice the bytes copied: the filesystem's journal and metadata.
const SLACK: u64 = 64 << 20;

/// Copies the run's preserve paths into its snapshots. Never fails the rollback: a path that
/// cannot be preserved is reported (and recorded) and the rollback goes on without it.
/// `invalid[i]`: the target's snapshot is known to be invalidated (nothing to write into).
pub fn preserve(lvm: &dyn Lvm, rec: &mut RunRecord, invalid: &[bool]) {
    if rec.preserve.is_empty() {
        return;
    }
    let table = crate::mounts::read().unwrap_or_default();
    let mut jobs: Vec<(usize, PathBuf, PathBuf, PathBuf)> = vec![];
    for p in rec.preserve.clone() {
        let found = crate::ops::see::target_of(rec, &p);
        let Ok((i, mp, rel)) = found else {
            note(
                rec,
                "",
                &format!(
                    "{} not preserved: it is not on a volume of the run",
                    p.display()
                ),
            );
            continue;
        };
        let t = &rec.targets[i];
        let lv = format!("{}/{}", t.vg, t.lv);
        if invalid.get(i).copied().unwrap_or(false) {
            note(
                rec,
                &lv,
                &format!("{} not preserved: the snapshot is invalidated", p.display()),
            );
            continue;
        }
        if !table
            .iter()
            .any(|m| m.mountpoint == mp && m.root == std::path::Path::new("/"))
        {
            note(
                rec,
                &lv,
                &format!(
                    "{} not preserved: {} is not mounted",
                    p.display(),
                    mp.display()
                ),
            );
            continue;
        }
        if rel.as_os_str().is_empty() {
            // a whole volume kept through its own rollback is no rollback: refused before any
            // room is taken for it
            note(
                rec,
                &lv,
                &format!(
                    "{} not preserved: it is the whole of {lv} (preserve a folder inside it)",
                    p.display()
                ),
            );
            continue;
        }
        jobs.push((i, mp, rel, p));
    }
    if jobs.is_empty() {
        return;
    }
    // room first, per target: the sum of what goes into its snapshot
    let lvs = lvm.lvs().unwrap_or_default();
    let mut ok_targets = vec![];
    let mut targets: Vec<usize> = jobs.iter().map(|j| j.0).collect();
    targets.sort();
    targets.dedup();
    for &i in &targets {
        let bytes: u64 = jobs
            .iter()
            .filter(|j| j.0 == i)
            .map(|j| crate::change::restore::tree_size(&j.1, &j.2).unwrap_or(0))
            .sum();
        let need = 2 * bytes + SLACK;
        let t = rec.targets[i].clone();
        let lv = format!("{}/{}", t.vg, t.lv);
        match make_room(lvm, &lvs, &t, need) {
            Ok(()) => ok_targets.push(i),
            Err(why) => note(
                rec,
                &lv,
                &format!(
                    "preserve paths on {lv} not preserved: {why} (they needed {} of room in the snapshot)",
                    crate::size::human(need)
                ),
            ),
        }
    }
    jobs.retain(|j| ok_targets.contains(&j.0));
    if jobs.is_empty() {
        return;
    }
    let activated = match crate::change::view::activate(lvm, &rec.targets, &ok_targets) {
        Ok(a) => a,
        Err(e) => {
            note(rec, "", &format!("preserve paths not preserved: {e}"));
            return;
        }
    };
    // in a thread of its own: its private mount namespace must not be the one in which the
    // rollback unmounts and mounts the origins again
    let targets = rec.targets.clone();
    let results = std::thread::scope(|s| {
        s.spawn(|| copy_into_snapshots(&targets, &ok_targets, &jobs))
            .join()
            .unwrap_or_else(|_| Err("the copy thread panicked".into()))
    });
    crate::change::view::deactivate(lvm, &activated);
    match results {
        Ok(list) => {
            for (lv, r) in list {
                match r {
                    Ok(msg) => {
                        ui::say(&msg);
                        rec.events.push(Event {
                            at: journal::now_rfc3339(),
                            kind: "preserved".into(),
                            lv,
                            detail: msg,
                        });
                    }
                    Err(msg) => note(rec, &lv, &msg),
                }
            }
        }
        Err(e) => note(rec, "", &format!("preserve paths not preserved: {e}")),
    }
}

type Outcomes = Vec<(String, std::result::Result<String, String>)>;

fn copy_into_snapshots(
    targets: &[crate::model::record::TargetRecord],
    which: &[usize],
    jobs: &[(usize, PathBuf, PathBuf, PathBuf)],
) -> std::result::Result<Outcomes, String> {
    let view = View::mount(targets, which, Access::Write).map_err(|e| e.to_string())?;
    let mut out = vec![];
    for (i, mp, rel, p) in jobs {
        let lv = format!("{}/{}", targets[*i].vg, targets[*i].lv);
        let Some(snap) = view.of(*i) else { continue };
        out.push((
            lv,
            match crate::change::restore::copy_tree(mp, snap, rel, true, mp) {
                Ok(c) => Ok(format!(
                    "{} preserved: its contents now ({} files, {}) stay after the rollback",
                    p.display(),
                    c.files,
                    crate::size::human(c.bytes)
                )),
                Err(e) => Err(format!("{} not preserved: {e}", p.display())),
            },
        ));
    }
    // a snapshot still mounted here would only merge at its next activation: say so
    if let Err(e) = view.unmount() {
        out.push((String::new(), Err(format!("after preserving: {e}"))));
    }
    Ok(out)
}

fn note(rec: &mut RunRecord, lv: &str, msg: &str) {
    ui::warn(msg);
    rec.events.push(Event {
        at: journal::now_rfc3339(),
        kind: "not-preserved".into(),
        lv: lv.into(),
        detail: msg.into(),
    });
}

/// Free COW (thick) or pool data (thin) of at least `need`, extending where the VG has room.
pub(crate) fn make_room(
    lvm: &dyn Lvm,
    lvs: &[lvm::Lv],
    t: &crate::model::record::TargetRecord,
    need: u64,
) -> std::result::Result<(), String> {
    let (name, size, pct) = if t.thin {
        let snap = lvm::find(lvs, &t.vg, &t.snapshot).ok_or("its snapshot is gone")?;
        let pool = snap.pool.clone().ok_or("its thin pool is unknown")?;
        let p = lvm::find(lvs, &t.vg, &pool).ok_or("its thin pool is gone")?;
        (pool, p.size, p.data_percent.unwrap_or(100.0))
    } else {
        let s = lvm::find(lvs, &t.vg, &t.snapshot).ok_or("its snapshot is gone")?;
        (t.snapshot.clone(), s.size, s.snap_percent.unwrap_or(100.0))
    };
    let free = (size as f64 * (100.0 - pct) / 100.0) as u64;
    if free >= need {
        return Ok(());
    }
    lvm.extend(&t.vg, &name, need - free)
        .map_err(|e| format!("no room to extend {}/{name}: {e}", t.vg))
}

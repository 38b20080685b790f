//! Rolling a set back: `lvconvert --merge` of every snapshot. Where an origin is open (mounted,
//! the root filesystem) LVM defers the merge to its next activation; guard then tags the origin
//! (the fact survives the rollback of the journal's own filesystem) and says what completes it.
//! `finish` completes deferred merges of volumes that can be closed now.
use crate::error::{Error, Result};
use crate::exec::{system_command, CommandExt};
use crate::journal::{Final, Journal, Phase, RunRecord, TargetRecord};
use crate::lvm::{self, Lvm, MergeState, MERGE_TAG_PREFIX};
use crate::mounts;
use crate::ui;
use std::path::Path;

/// What completes a deferred merge of this target, in words for the operator.
pub fn completes_by(t: &TargetRecord, run: &str) -> String {
    if t.mountpoints.iter().any(|m| m == Path::new("/")) {
        "at the next boot (/ is on it): reboot".into()
    } else if t.mountpoints.is_empty() {
        format!(
            "at the next activation of {}/{}: close what holds it open, then `guard rollback --finish {run}` (or reboot)",
            t.vg, t.lv
        )
    } else {
        let mps: Vec<String> = t
            .mountpoints
            .iter()
            .map(|m| m.display().to_string())
            .collect();
        format!(
            "at the next activation: `guard rollback --finish {run}` (unmounts {}, merges, mounts again) or reboot",
            mps.join(", ")
        )
    }
}

/// Merges every snapshot of the run. Never merges an invalid snapshot: that LV cannot be rolled
/// back, and the rest of the set still is. Returns what is left for the operator to do.
pub fn rollback_run(lvm: &dyn Lvm, journal: &Journal, rec: &mut RunRecord) -> Result<Vec<String>> {
    rollback_with(lvm, journal, rec, None)
}

/// A snapshot as the rollback needs to see it.
struct SnapView {
    invalid: bool,
    merging: bool,
}

/// What the live run knows of its snapshots from the watcher's device-mapper view (exists,
/// invalidated), so the rollback right after the command need not ask `lvs` again (~0.2 s).
#[derive(Debug, Clone, Copy)]
pub struct Known {
    pub invalid: bool,
}

pub fn rollback_with(
    lvm: &dyn Lvm,
    journal: &Journal,
    rec: &mut RunRecord,
    known: Option<&[Known]>,
) -> Result<Vec<String>> {
    // Resuming after guard was killed mid-rollback: a snapshot that is gone was merged (guard
    // removes snapshots in this phase only by merging them).
    let resuming = rec.phase == Phase::RollingBack;
    rec.phase = Phase::RollingBack;
    journal.write(rec)?;
    let lvs = match known {
        Some(_) => Vec::new(),
        None => lvm.lvs()?,
    };
    let mut todo = Vec::new();
    let mut errors = Vec::new();
    let id = rec.id.clone();
    for (i, t) in rec.targets.iter_mut().enumerate() {
        crate::fault::pause(&format!("before-merge-{}", i + 1));
        let name = format!("{}/{}", t.vg, t.lv);
        let origin_tagged = lvm::find(&lvs, &t.vg, &t.lv)
            .map(|o| o.merge_tag_runs().any(|r| r == id))
            .unwrap_or(false);
        let view = match known {
            Some(k) => Some(SnapView {
                invalid: k.get(i).is_some_and(|k| k.invalid),
                merging: false,
            }),
            None => lvm::find(&lvs, &t.vg, &t.snapshot).map(|s| SnapView {
                invalid: s.invalid,
                merging: s.merging,
            }),
        };
        match view {
            None if origin_tagged || t.rollback.as_deref() == Some("scheduled") => {
                t.rollback = Some("scheduled".into());
            }
            None if t.rollback.as_deref() == Some("done") || resuming => {
                t.rollback = Some("done".into());
            }
            None => {
                t.rollback = Some("impossible".into());
                t.note = Some(format!(
                    "its snapshot {}/{} no longer exists",
                    t.vg, t.snapshot
                ));
                ui::warn(&format!(
                    "{name} cannot be rolled back: its snapshot is gone"
                ));
            }
            Some(s) if s.invalid => {
                t.rollback = Some("impossible".into());
                t.note = Some(format!(
                    "snapshot {}/{} was invalidated (its COW space filled), the rollback point is lost",
                    t.vg, t.snapshot
                ));
                ui::warn(&format!(
                    "{name} CANNOT be rolled back: its snapshot was invalidated; removing the dead snapshot"
                ));
                if let Err(e) = lvm.remove(&t.vg, &t.snapshot) {
                    errors.push(e.to_string());
                }
            }
            Some(s) if s.merging => {
                t.rollback = Some("scheduled".into());
                t.note = Some(completes_by(t, &id));
            }
            Some(_) => match lvm.merge(&t.vg, &t.snapshot) {
                Ok(MergeState::Done) => {
                    t.rollback = Some("done".into());
                    ui::event(
                        crate::log::Kind::RollbackCompleted,
                        &format!("{name}: rolled back"),
                        &[("GUARD_LV", name.clone())],
                    );
                }
                Ok(MergeState::Deferred) => {
                    t.rollback = Some("scheduled".into());
                    t.note = Some(completes_by(t, &id));
                    if let Err(e) = lvm.add_tag(&t.vg, &t.lv, &format!("{MERGE_TAG_PREFIX}{id}")) {
                        ui::warn(&format!("cannot tag {name} with its pending merge: {e}"));
                    }
                    ui::event(
                        crate::log::Kind::RollbackScheduled,
                        &format!(
                            "{name}: rollback scheduled, completes {}",
                            completes_by(t, &id)
                        ),
                        &[("GUARD_LV", name.clone())],
                    );
                }
                Err(e) => {
                    t.rollback = Some("failed".into());
                    t.note = Some(e.to_string());
                    errors.push(format!("{name}: {e}"));
                }
            },
        }
        match t.rollback.as_deref() {
            Some("scheduled") => todo.push(format!(
                "{name}: rollback completes {}",
                completes_by(t, &id)
            )),
            Some("failed") => todo.push(format!(
                "{name}: merge failed; retry with `guard rollback {id}`"
            )),
            _ => {}
        }
    }
    rec.final_state = Some(Final::RolledBack);
    rec.phase = if rec
        .targets
        .iter()
        .any(|t| matches!(t.rollback.as_deref(), Some("scheduled" | "failed")))
    {
        Phase::RollbackScheduled
    } else {
        Phase::Done
    };
    journal.write(rec)?;
    // Paths outside LVM (/boot) go back now, even when / completes at the next boot: that boot
    // must find the old kernel and initramfs next to the old /lib/modules.
    if errors.is_empty() && !rec.saved.is_empty() {
        let results = crate::saved::restore_all(&id, &rec.saved);
        for r in &results {
            match r {
                Ok(s) => ui::event(crate::log::Kind::RollbackCompleted, s, &[]),
                Err(s) => {
                    ui::error(s);
                    todo.push(s.clone());
                }
            }
        }
        if results.iter().all(|r| r.is_ok()) {
            rec.saved.clear();
            journal.write(rec)?;
        }
    }
    if errors.is_empty() {
        Ok(todo)
    } else {
        Err(Error::Other(format!(
            "rollback incomplete: {}",
            errors.join("; ")
        )))
    }
}

fn run_prog(name: &str, args: &[&str]) -> Result<()> {
    system_command(name)?.args(args).run_checked().map(drop)
}

/// Completes the deferred merges of a run now: unmount the origins' mount points, reactivate,
/// wait for the merge, mount again. Refuses for `/`, which only a reboot can close.
pub fn finish(lvm: &dyn Lvm, journal: &Journal, rec: &mut RunRecord) -> Result<()> {
    let lvs = lvm.lvs()?;
    let table = mounts::read()?;
    let id = rec.id.clone();
    for t in rec.targets.iter_mut() {
        let name = format!("{}/{}", t.vg, t.lv);
        let Some(origin) = lvm::find(&lvs, &t.vg, &t.lv) else {
            continue;
        };
        let tag = format!("{MERGE_TAG_PREFIX}{id}");
        if !origin.merging {
            if origin.tags.contains(&tag) {
                lvm.del_tag(&t.vg, &t.lv, &tag)?;
            }
            if t.rollback.as_deref() == Some("scheduled") {
                t.rollback = Some("done".into());
            }
            continue;
        }
        let mounted = origin
            .kernel_dev
            .map(|d| mounts::of_device(&table, d))
            .unwrap_or_default();
        if mounted.iter().any(|m| m.mountpoint == Path::new("/")) {
            return Err(Error::refused(
                format!("{name} holds /, which cannot be unmounted while the system runs"),
                "reboot: the merge completes when the root volume is activated at boot",
            ));
        }
        let mut unmounted = Vec::new();
        for m in &mounted {
            let mp = m.mountpoint.to_string_lossy().into_owned();
            if let Err(e) = run_prog("umount", &[&mp]) {
                for back in unmounted.iter().rev() {
                    remount(origin, back).ok();
                }
                return Err(Error::refused(
                    format!("cannot unmount {mp} to finish the rollback of {name}: {e}"),
                    format!("stop what uses it (see `fuser -vm {mp}`), then run `guard rollback --finish {id}` again"),
                ));
            }
            unmounted.push(m.clone());
        }
        ui::say(&format!("{name}: reactivating to run the merge"));
        let merged = lvm
            .reactivate(&t.vg, &t.lv)
            .and_then(|_| lvm.finish_merge(&t.vg, &t.lv));
        for m in unmounted.iter().rev() {
            if let Err(e) = remount(origin, m) {
                ui::warn(&format!(
                    "cannot mount {} again: {e}",
                    m.mountpoint.display()
                ));
            }
        }
        merged?;
        lvm.del_tag(&t.vg, &t.lv, &tag)?;
        t.rollback = Some("done".into());
        t.note = None;
        ui::event(
            crate::log::Kind::RollbackCompleted,
            &format!("{name}: rolled back"),
            &[("GUARD_LV", name.clone())],
        );
    }
    if rec
        .targets
        .iter()
        .all(|t| t.rollback.as_deref() != Some("scheduled"))
    {
        rec.phase = Phase::Done;
    }
    journal.write(rec)
}

fn remount(origin: &lvm::Lv, m: &mounts::Mount) -> Result<()> {
    let dev = format!("/dev/{}/{}", origin.vg, origin.name);
    let mp = m.mountpoint.to_string_lossy().into_owned();
    run_prog("mount", &["-t", &m.fstype, "-o", &m.options, &dev, &mp])
}

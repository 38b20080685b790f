//! Rolling a set back: `lvconvert --merge` of every snapshot. Where an origin is open (mounted,
//! the root filesystem) LVM defers the merge to its next activation; guard then tags the origin
//! (the fact survives the rollback of the journal's own filesystem) and says what completes it.
//! `finish` completes deferred merges of volumes that can be closed now.
use crate::error::{Error, Result};
use crate::exec::{system_command, CommandExt};
use crate::lvm::{self, Lvm, MergeState, MERGE_TAG_PREFIX};
use crate::model::{SetRollback, TargetState};
use crate::mounts;
use crate::store::journal::{Final, Journal, Phase, RunRecord, TargetRecord};
use crate::ui;
use std::path::{Path, PathBuf};

/// The kernel's word on a thick snapshot: invalidated (its COW space filled)?
fn kernel_says_invalid(vg: &str, snapshot: &str) -> bool {
    let Ok(ctl) = crate::dm::Control::open() else {
        return false;
    };
    let Ok(targets) = ctl.status(&crate::dm::dm_name(vg, snapshot)) else {
        return false;
    };
    targets.first().is_some_and(|t| {
        matches!(
            crate::dm::parse_snapshot(&t.params),
            crate::dm::SnapshotUse::Invalid
        )
    })
}

/// Before acting on a record: every snapshot it names that still exists must be guard's
/// snapshot of this very run, of the recorded origin. A record is only a file; merging or
/// removing the wrong LV cannot be undone.
pub fn verify_targets(lvs: &[lvm::Lv], rec: &RunRecord) -> Result<()> {
    for t in &rec.targets {
        let Some(s) = lvm::find(lvs, &t.vg, &t.snapshot) else {
            continue;
        };
        if s.is_guard_snapshot()
            && s.run_id() == Some(rec.id.as_str())
            && s.origin.as_deref() == Some(t.lv.as_str())
        {
            continue;
        }
        return Err(Error::refused(
            format!(
                "{} is not guard's snapshot of {}/{} for run {} (origin {}, tags {}): refusing to touch it",
                s.full_name(),
                t.vg,
                t.lv,
                rec.id,
                s.origin.as_deref().unwrap_or("none"),
                if s.tags.is_empty() { "none".to_string() } else { s.tags.join(",") }
            ),
            "the run's record does not match LVM; see `lvs -o+origin,lv_tags`. guard only merges or removes LVs it tagged for the run",
        ));
    }
    Ok(())
}

/// The rollback hooks of the run's policy (kept in the journal): every rollback, whether the
/// live run's, `guard rollback RUN`'s or recover's, stops and starts what the policy says.
pub fn policy_hooks(rec: &RunRecord) -> Vec<crate::run::hooks::HookSpec> {
    run_policy(rec).0
}

/// The run's policy's hooks, and whether it asks for the finish of a rollback (`[run] finish`).
fn run_policy(rec: &RunRecord) -> (Vec<crate::run::hooks::HookSpec>, bool) {
    match rec.policy.as_deref().map(crate::cli::policy::load_recorded) {
        Some(Ok(p)) => (p.hooks, p.finish.unwrap_or(false)),
        Some(Err(e)) => {
            ui::warn(&format!(
                "the run's policy cannot be read, its rollback hooks are skipped: {e}"
            ));
            (vec![], false)
        }
        None => (vec![], false),
    }
}

/// Rolls the run back with its policy's pre_rollback and post_rollback hooks around the merge;
/// with `finish`, mounted volumes (not /) are completed before post_rollback, and a busy one
/// holds post_rollback back (it would start services on data about to be discarded).
pub fn rollback_with_hooks(
    lvm: &dyn Lvm,
    journal: &Journal,
    rec: &mut RunRecord,
    finish: bool,
) -> Result<Vec<String>> {
    use crate::run::hooks::{run_point_reporting, HookEnv, HookPoint};
    // a copy is refused before any hook runs (pre_rollback would stop the database for nothing)
    refuse_copy(rec, &lvm.lvs()?)?;
    // an armed trial boot must not boot the new state once more on its way back
    crate::run::end_trial(rec, "rolled back");
    // At boot (guard-recover.service, before sysinit.target) the services are not up yet and
    // a `systemctl start` would wait for the very boot that waits for guard: the boot itself
    // starts them, after the merge.
    let (hooks, policy_finish) = run_policy(rec);
    let at_boot = std::env::var_os("GUARD_AT_BOOT").is_some();
    let hooks = if at_boot {
        if !hooks.is_empty() {
            ui::say("at boot: the policy's rollback hooks are left to the boot (services start after guard-recover)");
        }
        vec![]
    } else {
        hooks
    };
    // the policy's finish applies to every rollback of the run, not only the live one (at boot
    // the activation itself completes the merges)
    let finish = finish || (policy_finish && !at_boot);
    let env = HookEnv::for_record(rec);
    let down_from = std::time::Instant::now();
    run_point_reporting(&hooks, HookPoint::PreRollback, &env);
    crate::watch::background::room_for_deferred_merges(lvm, rec);
    let mut todo = rollback_run(lvm, journal, rec)?;
    if finish && rec.phase == Phase::RollbackScheduled {
        let left = self::finish(lvm, journal, rec)?;
        let busy = !left.busy.is_empty();
        todo = scheduled_todo(rec, left);
        if busy {
            ui::warn("post_rollback hooks not run: they would start the services again on data the scheduled rollback is about to discard");
            return Ok(todo);
        }
    }
    run_point_reporting(&hooks, HookPoint::PostRollback, &env);
    record_downtime(journal, rec, &hooks, down_from);
    Ok(todo)
}

/// A rollback whose pre_rollback hooks stopped a service: how long it was down, from those
/// hooks' start to the end of the post_rollback hooks (which start it and wait for it).
pub fn record_downtime(
    journal: &Journal,
    rec: &mut RunRecord,
    hooks: &[crate::run::hooks::HookSpec],
    from: std::time::Instant,
) {
    use crate::run::hooks::HookPoint;
    if !hooks.iter().any(|h| h.when == HookPoint::PreRollback) {
        return;
    }
    let ms = from.elapsed().as_millis() as u64;
    rec.downtime_ms = Some(ms);
    ui::say(&format!(
        "services were down for {:.1} s (from the pre_rollback hooks to the end of the post_rollback hooks)",
        ms as f64 / 1000.0
    ));
    if let Err(e) = journal.write(rec) {
        ui::warn(&format!("cannot journal the downtime: {e}"));
    }
}

/// Tag put on an origin whose snapshot was found invalid before guard removes it: a journal
/// turned back by another target's merge must not read the gone snapshot as merged.
pub const LOST_TAG_PREFIX: &str = "guard-lost:";

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

/// A `guard snapshot` copy is a backup's source, never a rollback point: merging it would throw
/// away everything the server wrote since. Its record says so, and (for a record that lost or
/// never knew it) so do its snapshots' tags.
fn refuse_copy(rec: &RunRecord, lvs: &[lvm::Lv]) -> Result<()> {
    let by_tag = rec.targets.iter().any(|t| {
        lvm::find(lvs, &t.vg, &t.snapshot)
            .is_some_and(|s| s.tags.iter().any(|g| g == lvm::COPY_TAG))
    });
    if rec.copy.is_some() || by_tag {
        return Err(Error::refused(
            format!(
                "run {} is a `guard snapshot` copy{}: it has nothing to roll back",
                rec.id,
                if rec.copy.is_none() {
                    " (its snapshots say so)"
                } else {
                    ""
                }
            ),
            format!(
                "`guard commit {}` unmounts and removes its snapshots",
                rec.id
            ),
        ));
    }
    Ok(())
}

pub fn rollback_with(
    lvm: &dyn Lvm,
    journal: &Journal,
    rec: &mut RunRecord,
    known: Option<&[Known]>,
) -> Result<Vec<String>> {
    let lvs = match known {
        Some(_) => Vec::new(),
        None => lvm.lvs()?,
    };
    refuse_copy(rec, &lvs)?;
    // `guard mount`'s mounts first: a mounted snapshot would only merge at its next activation
    crate::ops::see::release_mounts(journal, rec)?;
    // Resuming after guard was killed mid-rollback: a snapshot that is gone was merged (guard
    // removes snapshots in this phase only by merging them).
    let resuming = rec.phase == Phase::RollingBack;
    if !resuming && !rec.preserve.is_empty() {
        let invalid: Vec<bool> = match known {
            Some(k) => k.iter().map(|k| k.invalid).collect(),
            None => rec
                .targets
                .iter()
                .map(|t| lvm::find(&lvs, &t.vg, &t.snapshot).is_none_or(|s| s.invalid || s.merging))
                .collect(),
        };
        crate::ops::preserve::preserve(lvm, rec, &invalid);
    }
    rec.phase = Phase::RollingBack;
    journal.write(rec)?;
    let mut todo = Vec::new();
    let mut errors = Vec::new();
    let mut dead: Vec<(String, String, String)> = Vec::new();
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
        // The view may be older than the last writes (the watcher's last tick, before a thaw
        // flushed what was dirty): ask the kernel once more. Merging an invalid snapshot
        // would start a merge that can never end.
        let view = view.map(|mut v| {
            v.invalid |= !t.thin && kernel_says_invalid(&t.vg, &t.snapshot);
            v
        });
        match view {
            // a rollback point found lost stays lost: a retry never calls it merged
            _ if t.rollback == Some(TargetState::Impossible) => {}
            None if origin_tagged || t.rollback == Some(TargetState::Scheduled) => {
                t.rollback = Some(TargetState::Scheduled);
            }
            None if (t.invalidated && !t.thin)
                || lvm::find(&lvs, &t.vg, &t.lv)
                    .is_some_and(|o| o.tags.contains(&format!("{LOST_TAG_PREFIX}{id}"))) =>
            {
                t.rollback = Some(TargetState::Impossible);
                t.note.get_or_insert_with(|| {
                    format!(
                        "snapshot {}/{} was invalidated, the rollback point is lost",
                        t.vg, t.snapshot
                    )
                });
            }
            None if t.rollback == Some(TargetState::Done) || resuming => {
                t.rollback = Some(TargetState::Done);
            }
            None => {
                t.rollback = Some(TargetState::Impossible);
                t.note = Some(format!(
                    "its snapshot {}/{} no longer exists",
                    t.vg, t.snapshot
                ));
                ui::warn(&format!(
                    "{name} cannot be rolled back: its snapshot is gone"
                ));
            }
            // a thin snapshot is "invalid" here only because its pool failed or went read-only:
            // the snapshot itself is intact and merges once the pool is repaired, so it is kept
            Some(s) if s.invalid && t.thin => {
                let why = format!(
                    "the thin pool of {}/{} is failed or read-only; repair it (lvconvert --repair), then `guard rollback {id}` merges the kept snapshot",
                    t.vg, t.snapshot
                );
                ui::error(&format!("{name}: {why}"));
                t.rollback = Some(TargetState::Failed);
                t.note = Some(why.clone());
                errors.push(format!("{name}: {why}"));
            }
            Some(s) if s.invalid => {
                t.rollback = Some(TargetState::Impossible);
                t.note = Some(format!(
                    "snapshot {}/{} was invalidated (its COW space filled), the rollback point is lost",
                    t.vg, t.snapshot
                ));
                ui::warn(&format!(
                    "{name} CANNOT be rolled back: its snapshot was invalidated; removing the dead snapshot"
                ));
                // removed only once the journal says so (and the origin's tag, for a journal
                // that a merge turns back): a gone snapshot must never be read as merged
                t.invalidated = true;
                dead.push((t.vg.clone(), t.lv.clone(), t.snapshot.clone()));
            }
            Some(s) if s.merging => {
                t.rollback = Some(TargetState::Scheduled);
                t.note = Some(completes_by(t, &id));
            }
            Some(_) => {
                // A mounted origin may hold the journal itself, which its deferred merge turns
                // back at the next activation: the tag that says the merge was started goes on
                // before the merge, so that no moment exists where the merge is pending and the
                // VG metadata does not say so (recover merges a tagged set's unmerged snapshots,
                // it never takes them for leftovers). A closed origin merges at once.
                let tag = format!("{MERGE_TAG_PREFIX}{id}");
                let pre_tagged = !t.mountpoints.is_empty() && !origin_tagged && {
                    match lvm.add_tag(&t.vg, &t.lv, &tag) {
                        Ok(_) => true,
                        Err(e) => {
                            ui::warn(&format!("cannot tag {name} before its merge: {e}"));
                            false
                        }
                    }
                };
                let took = std::time::Instant::now();
                let merged = lvm.merge(&t.vg, &t.lv, &t.snapshot);
                if matches!(merged, Ok(MergeState::Done)) {
                    t.merge_seconds = Some(round_ms(took.elapsed()));
                }
                if pre_tagged && !matches!(merged, Ok(MergeState::Deferred)) {
                    let _ = lvm.del_tag(&t.vg, &t.lv, &tag);
                }
                match merged {
                    Ok(MergeState::Done) => {
                        t.rollback = Some(TargetState::Done);
                        t.note = None;
                        ui::event(
                            crate::log::Kind::RollbackCompleted,
                            &format!("{name}: rolled back"),
                            &[("GUARD_LV", name.clone())],
                        );
                    }
                    Ok(MergeState::Deferred) => {
                        t.rollback = Some(TargetState::Scheduled);
                        t.note = Some(completes_by(t, &id));
                        if !pre_tagged && !origin_tagged {
                            if let Err(e) = lvm.add_tag(&t.vg, &t.lv, &tag) {
                                ui::warn(&format!("cannot tag {name} with its pending merge: {e}"));
                            }
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
                        // The snapshot is still there: the rollback point is kept and the run stays
                        // in RollingBack, so `guard rollback RUN` (or recover) tries again.
                        ui::error(&format!("{name}: the merge failed: {e}"));
                        t.rollback = Some(TargetState::Failed);
                        t.note = Some(e.to_string());
                        errors.push(format!("{name}: {e}"));
                    }
                }
            }
        }
        match t.rollback {
            Some(TargetState::Scheduled) => todo.push(format!(
                "{name}: rollback completes {}",
                completes_by(t, &id)
            )),
            Some(TargetState::Failed) => todo.push(format!(
                "{name}: merge failed, its snapshot is kept; fix the cause, then `guard rollback {id}` retries it"
            )),
            _ => {}
        }
    }
    rec.final_state = Some(Final::RolledBack);
    let set = SetRollback::of(rec.targets.iter().map(|t| t.rollback));
    let any_scheduled = rec
        .targets
        .iter()
        .any(|t| t.rollback == Some(TargetState::Scheduled));
    rec.phase = match set {
        SetRollback::Retry => Phase::RollingBack,
        // a pending merge keeps the run open (watched, confirmed at activation), also when
        // another target of the set was lost
        _ if any_scheduled => Phase::RollbackScheduled,
        _ => Phase::Done,
    };
    journal.write(rec)?;
    for (vg, lv, snap) in dead {
        let _ = lvm.add_tag(&vg, &lv, &format!("{LOST_TAG_PREFIX}{id}"));
        if let Err(e) = lvm.remove(&vg, &snap) {
            errors.push(e.to_string());
        }
    }
    if rec.phase == Phase::Done {
        // the journal says it all now: the lost-point tags go
        for t in rec
            .targets
            .iter()
            .filter(|t| t.rollback == Some(TargetState::Impossible))
        {
            let _ = lvm.del_tag(&t.vg, &t.lv, &format!("{LOST_TAG_PREFIX}{id}"));
        }
    }
    // Paths outside LVM (/boot) go back now, even when / completes at the next boot: that boot
    // must find the old kernel and initramfs next to the old /lib/modules. Not while a merge
    // failed: half a rollback with /boot put back would pair old kernels with new modules.
    if matches!(set, SetRollback::Retry | SetRollback::Partial) && !rec.saved.is_empty() {
        todo.push(format!(
            "the copies saved outside LVM ({}) are kept in /var/lib/guard/saved/{id} and were not put back: the volumes were not all rolled back",
            rec.saved.iter().map(|p| p.path.display().to_string()).collect::<Vec<_>>().join(", ")
        ));
    }
    if matches!(set, SetRollback::Complete | SetRollback::Scheduled) && !rec.saved.is_empty() {
        let results = crate::store::saved::restore_all(&id, &rec.saved);
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
            "rollback incomplete: {}; the snapshots are kept: fix the cause, then `guard rollback {id}` retries",
            errors.join("; ")
        )))
    }
}

fn run_prog(name: &str, args: &[&str]) -> Result<()> {
    system_command(name)?.args(args).run_checked().map(drop)
}

/// Completes the deferred merges of a run now: unmount the origins' mount points, reactivate,
/// wait for the merge, mount again. Refuses for `/`, which only a reboot can close.
pub fn finish(lvm: &dyn Lvm, journal: &Journal, rec: &mut RunRecord) -> Result<Unfinished> {
    let mut left = Unfinished::default();
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
            if t.rollback != Some(TargetState::Scheduled) {
                continue;
            }
            // The merge ended at an activation; it counts only if the snapshot did not die first.
            if let Some(why) = merge_ended_badly(&lvs, t) {
                t.rollback = Some(TargetState::Impossible);
                t.note = Some(why);
                continue;
            }
            if origin.tags.contains(&tag) {
                lvm.del_tag(&t.vg, &t.lv, &tag)?;
            }
            t.rollback = Some(TargetState::Done);
            continue;
        }
        // an invalidated snapshot cannot be merged: unmounting and reactivating would only
        // start a merge that never ends
        if !t.thin && kernel_says_invalid(&t.vg, &t.snapshot) {
            let why = format!(
                "snapshot {}/{} was invalidated before its merge could complete: the rollback point is lost, the change stays",
                t.vg, t.snapshot
            );
            ui::error(&format!("{name}: {why}"));
            t.rollback = Some(TargetState::Impossible);
            t.note = Some(why);
            drop_dead_merge(lvm, t, &tag);
            continue;
        }
        let mounted = origin
            .kernel_dev
            .map(|d| mounts::of_device(&table, d))
            .unwrap_or_default();
        if mounted.iter().any(|m| m.mountpoint == Path::new("/")) {
            // never unmounted: its rollback stays "at the next boot"
            left.root.push(format!(
                "{name} holds /, which cannot be unmounted while the system runs: reboot to complete its rollback"
            ));
            continue;
        }
        let mut unmounted = Vec::new();
        let mut busy = None;
        for m in &mounted {
            let mp = m.mountpoint.to_string_lossy().into_owned();
            if let Err(e) = run_prog("umount", &[&mp]) {
                busy = Some((m.mountpoint.clone(), e));
                break;
            }
            unmounted.push(m.clone());
        }
        if let Some((mp, e)) = busy {
            // mounted again as it was: whatever holds it goes on working on the current data,
            // and the rollback stays scheduled
            for e in remount_all(origin, &unmounted) {
                ui::warn(&e);
            }
            let who = origin.kernel_dev.map(holders_of).unwrap_or_default();
            let who = if who.is_empty() {
                format!("umount said: {e}")
            } else {
                format!("held by {}", who.join(", "))
            };
            let line = format!(
                "{name}: {} is busy ({who}); its rollback stays scheduled: stop those, then `guard rollback --finish {id}` (or reboot)",
                mp.display()
            );
            ui::error(&line);
            left.busy.push(line);
            continue;
        }
        ui::say(&format!("{name}: reactivating to run the merge"));
        let took = std::time::Instant::now();
        let merged = lvm
            .reactivate(&t.vg, &t.lv)
            .and_then(|_| lvm.finish_merge(&t.vg, &t.lv));
        for e in remount_all(origin, &unmounted) {
            ui::warn(&e);
        }
        merged?;
        t.merge_seconds = Some(round_ms(took.elapsed()));
        lvm.del_tag(&t.vg, &t.lv, &tag)?;
        t.rollback = Some(TargetState::Done);
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
        .all(|t| t.rollback != Some(TargetState::Scheduled))
    {
        rec.phase = Phase::Done;
    }
    journal.write(rec)?;
    Ok(left)
}

/// Seconds to the millisecond, as the record keeps them.
pub(crate) fn round_ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// A merge that can never run (its snapshot was invalidated) leaves the origin flagged as
/// merging at every activation: remove the dead snapshot and the merge tag, so that the volume
/// is an ordinary one again, holding the change.
pub fn drop_dead_merge(lvm: &dyn Lvm, t: &TargetRecord, tag: &str) {
    let name = format!("{}/{}", t.vg, t.lv);
    match lvm.remove(&t.vg, &t.snapshot) {
        Ok(_) => ui::say(&format!(
            "{name}: removed the dead snapshot {}/{}",
            t.vg, t.snapshot
        )),
        Err(e) => ui::warn(&format!(
            "{name}: cannot remove the dead snapshot {}/{} ({e}): remove it with `lvremove -f {}/{}`",
            t.vg, t.snapshot, t.vg, t.snapshot
        )),
    }
    let _ = lvm.del_tag(&t.vg, &t.lv, tag);
}

/// What is left to do after a finish: the busy mount points (with their holders), and how
/// every target still scheduled completes.
pub fn scheduled_todo(rec: &RunRecord, left: Unfinished) -> Vec<String> {
    let mut todo = left.busy;
    for t in rec
        .targets
        .iter()
        .filter(|t| t.rollback == Some(TargetState::Scheduled))
    {
        let name = format!("{}/{}", t.vg, t.lv);
        if !todo.iter().any(|l| l.starts_with(&format!("{name}:"))) {
            todo.push(format!(
                "{name}: rollback completes {}",
                completes_by(t, &rec.id)
            ));
        }
    }
    todo
}

/// What `finish` could not complete now.
#[derive(Debug, Default)]
pub struct Unfinished {
    /// Mount points still in use, with their holders and what to do: one line each.
    pub busy: Vec<String>,
    /// Targets holding /, which complete at the next boot.
    pub root: Vec<String>,
}

/// The processes using a filesystem (as `fuser -vm` shows them): any open file, working
/// folder, root or program on device `dev`. "PID (COMMAND)" each.
pub fn holders_of(dev: (u32, u32)) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let want = libc::makedev(dev.0, dev.1);
    let on_dev = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.dev() == want);
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let base = e.path();
        let mut uses = ["cwd", "root", "exe"].iter().any(|l| on_dev(&base.join(l)));
        if !uses {
            if let Ok(fds) = std::fs::read_dir(base.join("fd")) {
                uses = fds.flatten().any(|f| on_dev(&f.path()));
            }
        }
        if uses {
            let comm = std::fs::read_to_string(base.join("comm")).unwrap_or_default();
            out.push(format!("pid {pid} ({})", comm.trim()));
        }
    }
    out
}

/// A deferred merge that is no longer running: did it end with the data merged? A snapshot
/// still present and invalid means the kernel dropped it before (or instead of) merging.
pub fn merge_ended_badly(lvs: &[lvm::Lv], t: &TargetRecord) -> Option<String> {
    // The background watcher records an invalidation it saw while the merge waited; lvm may
    // have removed the dead snapshot at activation since.
    if t.invalidated && !t.thin {
        return Some(format!(
            "snapshot {}/{} was invalidated while its merge waited for the next activation: the rollback point is lost",
            t.vg, t.snapshot
        ));
    }
    lvm::find(lvs, &t.vg, &t.snapshot)
        .filter(|s| s.invalid)
        .map(|_| {
            format!(
                "snapshot {}/{} was invalidated before its merge completed: the rollback point is lost",
                t.vg, t.snapshot
            )
        })
}

/// Mounts a volume again everywhere it was (`unmounted` is deepest first, as unmounted): the
/// whole filesystem with its per-mount and superblock options, and each bind mount as a bind
/// of the same subfolder with its own flags. Returns what could not be done.
pub fn remount_all(origin: &lvm::Lv, unmounted: &[mounts::Mount]) -> Vec<String> {
    let dev = format!("/dev/{}/{}", origin.vg, origin.name);
    let mut errors = Vec::new();
    let mut order: Vec<&mounts::Mount> = unmounted.iter().rev().collect();
    // the whole filesystem first: the bind mounts are taken from it
    order.sort_by_key(|m| m.root != Path::new("/"));
    let mut whole: Option<PathBuf> = None;
    let mut scratch: Option<PathBuf> = None;
    for m in order {
        let mp = m.mountpoint.to_string_lossy().into_owned();
        if whole.is_none() {
            // only subfolders were mounted: mount the filesystem at a private folder to bind from
            let target = if m.root == Path::new("/") {
                m.mountpoint.clone()
            } else {
                // a fresh private folder (random name, 0700), never a guessable path in /tmp
                match tempfile::Builder::new().prefix("guard-remount-").tempdir() {
                    Ok(d) => {
                        let p = d.keep();
                        scratch = Some(p.clone());
                        p
                    }
                    Err(e) => {
                        errors.push(format!("cannot make a folder to mount {dev} at: {e}"));
                        break;
                    }
                }
            };
            let t = target.to_string_lossy().into_owned();
            let full = mount_options(m);
            let r = held_mountpoint(&target).and_then(|(_dir, at)| {
                run_prog(
                    "mount",
                    &["--no-canonicalize", "-t", &m.fstype, "-o", &full, &dev, &at],
                )
                .or_else(|_| {
                    // a superblock option mount(8) does not take back must not leave it unmounted
                    run_prog(
                        "mount",
                        &[
                            "--no-canonicalize",
                            "-t",
                            &m.fstype,
                            "-o",
                            &m.options,
                            &dev,
                            &at,
                        ],
                    )
                })
            });
            match r {
                Ok(()) => whole = Some(target),
                Err(e) => {
                    errors.push(format!("cannot mount {dev} at {t} again: {e}"));
                    break;
                }
            }
            if m.root == Path::new("/") {
                continue;
            }
        }
        let base = whole.clone().expect("mounted above");
        let src = base.join(m.root.strip_prefix("/").unwrap_or(&m.root));
        let src = src.to_string_lossy().into_owned();
        let r = held_mountpoint(&m.mountpoint)
            .and_then(|(_dir, at)| run_prog("mount", &["--no-canonicalize", "--bind", &src, &at]));
        // once mounted, the folder cannot be renamed (EBUSY): the path is safe again
        let r = r.and_then(|()| {
            // a bind mount takes its flags (ro, nosuid, …) only through a remount
            run_prog(
                "mount",
                &["-o", &format!("remount,bind,{}", m.options), &mp],
            )
        });
        if let Err(e) = r {
            errors.push(format!("cannot bind {src} at {mp} again: {e}"));
        }
    }
    if let Some(d) = scratch {
        let s = d.to_string_lossy().into_owned();
        if whole.as_deref() == Some(d.as_path()) {
            let _ = run_prog("umount", &[&s]);
        }
        let _ = std::fs::remove_dir(&d);
    }
    errors
}

/// The mount point, held open for mount(8): while the volume was unmounted for its merge, a
/// user who can write the mount point's parent folder could have put a symbolic link in its
/// place, and root would then mount the volume wherever it points. The folder is opened without
/// following a link (its path must be its own canonical path), and mount(8) is given
/// /proc/self/fd/N, the folder just checked. Returns the open folder and that path.
pub(crate) fn held_mountpoint(mp: &Path) -> Result<(std::fs::File, String)> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let canonical = std::fs::canonicalize(mp)
        .map_err(|e| Error::io(format!("cannot resolve {}", mp.display()), e))?;
    if canonical != mp {
        return Err(Error::refused(
            format!(
                "{} now leads to {} (a symbolic link in its path): not mounting there",
                mp.display(),
                canonical.display()
            ),
            "check who changed it; mount the volume by hand once the folder is back",
        ));
    }
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(mp)
        .map_err(|e| Error::io(format!("cannot open {} (not a folder?)", mp.display()), e))?;
    let fd = dir.as_raw_fd();
    // inherited by mount(8), which resolves /proc/self/fd/N in its own table
    // SAFETY: F_SETFD on a descriptor this function owns.
    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    Ok((dir, format!("/proc/self/fd/{fd}")))
}

/// The per-mount flags plus the superblock's options (errors=, data=, quota…), which a plain
/// `mount -o <per-mount flags>` would lose. rw/ro come from the per-mount flags.
fn mount_options(m: &mounts::Mount) -> String {
    let mut opts: Vec<&str> = m.options.split(',').filter(|o| !o.is_empty()).collect();
    for o in m.super_options.split(',') {
        if !o.is_empty() && o != "rw" && o != "ro" && !opts.contains(&o) {
            opts.push(o);
        }
    }
    opts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_point_swapped_for_a_symlink_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().canonicalize().unwrap();
        let mp = real.join("app");
        std::fs::create_dir(&mp).unwrap();
        let (_f, at) = held_mountpoint(&mp).unwrap();
        assert!(at.starts_with("/proc/self/fd/"), "{at}");
        // the folder replaced by a link to somewhere root-owned while the volume was unmounted
        std::fs::remove_dir(&mp).unwrap();
        std::os::unix::fs::symlink("/etc", &mp).unwrap();
        let err = held_mountpoint(&mp).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
    }
}

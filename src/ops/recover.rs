//! `guard recover`: finishes or cleans up whatever a killed guard, a lost terminal or a power
//! cut left, from the journal and the LVM tags. Safe at every boot and twice in a row: each step
//! checks the real state first and does nothing when there is nothing to do.
use crate::error::Result;
use crate::lvm::{self, Lv, Lvm, MERGE_TAG_PREFIX};
use crate::model::TargetState;
use crate::store::journal::{self, Final, Journal, Outcome, Phase, RunRecord, TargetRecord};

/// Tag put on a run's snapshots when its decision could only be kept under /run:
/// `guard-decided:success` or `guard-decided:failure`.
pub const DECIDED_TAG_PREFIX: &str = "guard-decided:";
use crate::ops::rollback;
use crate::run;
use crate::ui;
use std::collections::BTreeSet;

#[derive(Debug, Default)]
pub struct Summary {
    /// One line per thing done or found.
    pub lines: Vec<String>,
    pub changed: bool,
    pub errors: usize,
}

impl Summary {
    fn did(&mut self, s: String) {
        ui::event(crate::log::Kind::Recover, &s, &[]);
        self.lines.push(s);
        self.changed = true;
    }
    fn saw(&mut self, s: String) {
        ui::say(&s);
        self.lines.push(s);
    }
    fn failed(&mut self, s: String) {
        ui::error(&s);
        self.lines.push(s);
        self.errors += 1;
    }
}

fn expired(rec: &RunRecord) -> bool {
    rec.keep_until
        .as_deref()
        .and_then(|u| humantime::parse_rfc3339(u).ok())
        .map(|t| t <= std::time::SystemTime::now())
        .unwrap_or(false)
}

/// A run rebuilt from its snapshots' tags, for when the journal lost it (or never had it).
pub fn record_from_tags(lvs: &[Lv], run: &str) -> Option<RunRecord> {
    let mut targets: Vec<TargetRecord> = Vec::new();
    let mut copy = false;
    for s in lvs
        .iter()
        .filter(|l| l.is_guard_snapshot() && l.run_id() == Some(run))
    {
        let origin = s.origin.clone()?;
        targets.push(TargetRecord {
            vg: s.vg.clone(),
            lv: origin,
            snapshot: s.name.clone(),
            thin: s.is_thin(),
            cow_bytes: (!s.is_thin()).then_some(s.size),
            mountpoints: vec![],
            max_used_percent: None,
            rollback: s.merging.then_some(TargetState::Scheduled),
            note: None,
            extensions: 0,
            invalidated: s.invalid,
            merge_seconds: None,
            peak_used_bytes: None,
            added_bytes: 0,
        });
        copy |= s.tags.iter().any(|t| t == lvm::COPY_TAG);
    }
    if targets.is_empty() {
        return None;
    }
    let merging = targets.iter().any(|t| t.rollback.is_some());
    Some(RunRecord {
        schema: journal::SCHEMA,
        id: run.to_string(),
        started: String::new(),
        updated: String::new(),
        command: vec!["(unknown: rebuilt from LVM tags)".into()],
        guard_pid: 0,
        guard_start: 0,
        child_pid: None,
        child_start: None,
        phase: if merging {
            Phase::RollbackScheduled
        } else {
            Phase::Kept
        },
        on_failure: "keep".into(),
        on_success: "keep".into(),
        keep_until: None,
        outcome: None,
        exit_status: None,
        reason: Some("rebuilt from LVM tags".into()),
        final_state: merging.then_some(Final::RolledBack).or(Some(Final::Kept)),
        targets,
        frozen: vec![],
        events: vec![],
        suspended: vec![],
        policy: None,
        failed_check: None,
        saved: vec![],
        writers_held_ms: None,
        downtime_ms: None,
        copy: copy.then(|| crate::model::record::CopyRun {
            root: std::path::PathBuf::new(),
            mounted: vec![],
            rehearsal: false,
        }),
        notes: vec![],
        mounted: None,
        restored: vec![],
        preserve: vec![],
        trial: None,
    })
}

/// Loads a run from the journal, or rebuilds it from tags when the journal has none.
pub fn load_run(lvm: &dyn Lvm, journal: &Journal, run: &str) -> Result<RunRecord> {
    match journal.load(run) {
        Ok(r) => Ok(r),
        Err(e) => record_from_tags(&lvm.lvs()?, run).ok_or(e),
    }
}

pub fn recover(lvm: &dyn Lvm, journal: &Journal, expire: bool) -> Result<Summary> {
    let mut sum = Summary::default();
    // Thaw what a dead guard left frozen before anything is written: the journal may live on
    // that filesystem, and any write there (even a mkdir of an existing folder) would block.
    for rec in journal.list().0.iter().filter(|r| !r.frozen.is_empty()) {
        if rec.guard_pid != 0 && journal::process_alive(rec.guard_pid, rec.guard_start) {
            continue;
        }
        for p in &rec.frozen {
            match crate::dm::freeze::thaw(p) {
                Ok(()) => sum.did(format!(
                    "run {}: thawed {} (left frozen by a guard that is gone)",
                    rec.id,
                    p.display()
                )),
                Err(e) => sum.failed(format!("run {}: {e}", rec.id)),
            }
        }
    }
    if let Some(s) = crate::watch::dirty::restore_after_crash() {
        sum.did(s);
    }
    journal.catch_up();
    let (runs, problems) = journal.list();
    for p in problems {
        sum.failed(p);
    }
    let mut known: BTreeSet<String> = BTreeSet::new();
    let lvs_now = lvm.lvs()?;
    for rec in runs {
        known.insert(rec.id.clone());
        if rec.phase == Phase::Done {
            continue;
        }
        // under the run's lock, on the record as it is now: a `guard commit` or `guard
        // rollback` (or the guarded run itself) working on it is left to finish
        let mut held = match crate::ops::try_hold(lvm, journal, &rec.id, &lvs_now) {
            Ok(Some(h)) => h,
            Ok(None) => {
                sum.saw(format!(
                    "run {}: in use by another guard command, left alone",
                    rec.id
                ));
                continue;
            }
            Err(e) => {
                sum.failed(format!("run {}: {e}", rec.id));
                continue;
            }
        };
        if held.rec.phase == Phase::Done {
            continue;
        }
        if let Err(e) = recover_run(lvm, journal, &mut held.rec, expire, &mut sum) {
            sum.failed(format!("run {}: {e}", held.rec.id));
        }
    }
    // What the tags say that the journal does not.
    let lvs = lvm.lvs()?;
    let mut orphan_runs = BTreeSet::new();
    for s in lvs.iter().filter(|l| l.is_guard_snapshot()) {
        if let Some(run) = s.run_id() {
            if !known.contains(run) {
                orphan_runs.insert(run.to_string());
            }
        }
    }
    for run in orphan_runs {
        let copy = lvs
            .iter()
            .any(|s| s.run_id() == Some(run.as_str()) && s.tags.iter().any(|t| t == lvm::COPY_TAG));
        sum.saw(if copy {
            format!("run {run} is a `guard snapshot` copy with no journal entry: remove its snapshots with `guard commit {run}`")
        } else {
            format!("run {run} has guard snapshots but no journal entry: keep its change with `guard commit {run}`, undo it with `guard rollback {run}`")
        });
    }
    for o in lvs.iter().filter(|l| l.merge_tag_runs().next().is_some()) {
        let runs: Vec<String> = o.merge_tag_runs().map(String::from).collect();
        for run in runs {
            if known.contains(&run) {
                continue;
            }
            if !o.merging {
                lvm.del_tag(&o.vg, &o.name, &format!("{MERGE_TAG_PREFIX}{run}"))?;
                sum.did(format!(
                    "{}: rollback of run {run} completed at activation",
                    o.full_name()
                ));
            }
        }
    }
    if sum.lines.is_empty() {
        sum.saw("nothing to recover".into());
    }
    Ok(sum)
}

fn recover_run(
    lvm: &dyn Lvm,
    journal: &Journal,
    rec: &mut RunRecord,
    expire: bool,
    sum: &mut Summary,
) -> Result<()> {
    let id = rec.id.clone();
    let guard_alive = rec.guard_pid != 0 && journal::process_alive(rec.guard_pid, rec.guard_start);
    if guard_alive && rec.guard_pid != std::process::id() {
        sum.saw(format!(
            "run {id}: in progress (guard pid {}), left alone",
            rec.guard_pid
        ));
        return Ok(());
    }
    if !rec.frozen.is_empty() {
        for p in std::mem::take(&mut rec.frozen) {
            crate::dm::freeze::thaw(&p)?;
            sum.did(format!(
                "run {id}: thawed {} (left frozen by a guard that is gone)",
                p.display()
            ));
        }
        journal.write(rec)?;
    }
    if !rec.suspended.is_empty() {
        // The watchdog resumes these when guard dies; this is the second line of defence.
        let ctl = crate::dm::Control::open()?;
        for n in std::mem::take(&mut rec.suspended) {
            if ctl.is_suspended(&n) {
                ctl.resume(&n)?;
                sum.did(format!(
                    "run {id}: resumed {n} (left suspended by a guard that is gone)"
                ));
            }
        }
        journal.write(rec)?;
    }
    // The timer ends keep windows and nothing else: a run whose guard died with its outcome
    // unknown (or whose decision is still being carried out) is for the operator or the boot
    // to resolve, never for a timer that may roll back / five minutes after a success.
    if expire && rec.phase != Phase::Kept && rec.copy.is_none() {
        sum.saw(format!(
            "run {id}: {:?} and its guard is gone; left for `guard recover` (the expiry timer only ends keep windows)",
            rec.phase
        ));
        return Ok(());
    }
    // A `guard snapshot` copy whose guard is gone: unmount it and remove its snapshots, never
    // merge them (the server wrote on since the copy was taken).
    if rec.copy.is_some() && rec.phase != Phase::Done {
        if let (Phase::Running, Some(pid), Some(start)) =
            (rec.phase, rec.child_pid, rec.child_start)
        {
            if journal::process_alive(pid, start) {
                continue_stopped(pid);
                sum.saw(format!(
                    "run {id}: guard is gone but the command reading its copy (pid {pid}) still runs; run `guard recover` again when it has ended"
                ));
                return Ok(());
            }
        }
        crate::run::copy::end(lvm, journal, rec)?;
        sum.did(format!(
            "run {id}: a `guard snapshot` copy whose guard is gone: unmounted, snapshots removed"
        ));
        return Ok(());
    }
    let lvs = lvm.lvs()?;
    rollback::verify_targets(&lvs, rec)?;
    let merge_tagged = rec.targets.iter().any(|t| {
        lvm::find(&lvs, &t.vg, &t.lv)
            .map(|o| o.merge_tag_runs().any(|r| r == id))
            .unwrap_or(false)
    });
    // A rollback of the filesystem holding the journal turns this file back to the moment of
    // the snapshot; the origin's tag says what really happened.
    // The fallback of a failed trial boot: its initramfs merged the snapshots back (and
    // tagged the origins). Without the tag it could not: nothing here may remove them.
    let mut merge_tagged = merge_tagged;
    if rec.phase != Phase::Done
        && crate::boot::booted_for("guard.fallback").as_deref() == Some(id.as_str())
    {
        if crate::boot::note_fallback(rec) {
            sum.did(format!(
                "run {id}: the trial boot was not confirmed; this is its fallback boot (the state before the run)"
            ));
        }
        // the initramfs's merge is the evidence: tagged, or an origin merging its snapshot
        merge_tagged |= rec.targets.iter().any(|t| {
            lvm::find(&lvs, &t.vg, &t.lv).is_some_and(|o| o.merging)
                && lvm::find(&lvs, &t.vg, &t.snapshot).is_some_and(|s| s.merging)
        });
        if merge_tagged && rec.phase != Phase::RollbackScheduled {
            // whatever the record says (kept, when the journal is not on the rolled-back /):
            // the rollback was decided at boot, and is completed like any other
            rec.phase = Phase::RollingBack;
            rec.outcome.get_or_insert(Outcome::Failure);
            rec.final_state = Some(Final::RolledBack);
            journal.write(rec)?;
        }
        if !merge_tagged {
            sum.failed(format!(
                "run {id}: fallback boot, but the initramfs did not merge the snapshots back (see the boot log): they are kept; `guard rollback {id}` and a reboot complete the rollback"
            ));
            journal.write(rec)?;
            return Ok(());
        }
    }
    if merge_tagged
        && matches!(
            rec.phase,
            Phase::Snapshotting | Phase::Running | Phase::Decided | Phase::RollingBack
        )
    {
        // Resume the rollback, target by target: a tagged or merging origin is scheduled, a
        // snapshot not yet merged is merged now (never removed as a "leftover": guard may have
        // died between the merges of a set).
        rec.phase = Phase::RollingBack;
        rec.outcome.get_or_insert(Outcome::Failure);
        rec.final_state = Some(Final::RolledBack);
    }
    match rec.phase {
        Phase::Snapshotting => {
            for t in rec.targets.iter().rev() {
                lvm.remove(&t.vg, &t.snapshot)?;
            }
            crate::run::end_trial(rec, "aborted");
            rec.phase = Phase::Done;
            rec.outcome = Some(Outcome::Aborted);
            rec.final_state = Some(Final::Nothing);
            rec.reason
                .get_or_insert_with(|| "guard stopped before the command ran".into());
            journal.write(rec)?;
            sum.did(format!(
                "run {id}: stopped before the command ran; its snapshots are removed"
            ));
        }
        Phase::Running => {
            if let (Some(pid), Some(start)) = (rec.child_pid, rec.child_start) {
                if journal::process_alive(pid, start) {
                    // paused by the guard that died (an extension under way, a hold): it will
                    // never end by itself, and nobody watches its writes any more
                    sum.saw(if is_stopped(pid) {
                        format!(
                            "run {id}: guard is gone and its command (pid {pid}) is stopped, as guard paused it: end it (`kill -KILL -{pid}`) and run `guard recover` again to roll back, or continue it (`kill -CONT -{pid}`) and run `guard recover` when it has ended"
                        )
                    } else {
                        format!(
                            "run {id}: guard is gone but its command (pid {pid}) still runs; run `guard recover` again when it has ended"
                        )
                    });
                    return Ok(());
                }
            }
            // A decision the journal could not keep (its record was under /run, gone with the
            // reboot) was also written into the snapshots' tags: it wins over "running".
            let decided = rec.targets.iter().find_map(|t| {
                lvm::find(&lvs, &t.vg, &t.snapshot).and_then(|s| {
                    s.tags
                        .iter()
                        .find_map(|g| g.strip_prefix(DECIDED_TAG_PREFIX))
                })
            });
            match decided {
                Some(d) => {
                    rec.outcome = Some(if d == "success" {
                        Outcome::Success
                    } else {
                        Outcome::Failure
                    });
                    rec.reason = Some(format!(
                        "the command's outcome ({d}) recorded in the snapshots' tags while the journal could not be written"
                    ));
                }
                None => {
                    rec.outcome = Some(Outcome::Failure);
                    rec.reason = Some(
                        "guard was stopped while the command ran; its result is unknown".into(),
                    );
                }
            }
            rec.phase = Phase::Decided;
            journal.write(rec)?;
            apply(lvm, journal, rec, sum)?;
        }
        Phase::Decided => apply(lvm, journal, rec, sum)?,
        Phase::RollingBack => {
            rollback::rollback_with_hooks(lvm, journal, rec, false)?;
            sum.did(format!("run {id}: rollback resumed"));
            if rec.phase == Phase::RollbackScheduled {
                // merges that completed at this activation are confirmed in the same pass
                let lvs = lvm.lvs()?;
                finish_scheduled(lvm, journal, rec, &lvs, sum)?;
            }
            report_scheduled(rec, sum);
        }
        Phase::RollbackScheduled => finish_scheduled(lvm, journal, rec, &lvs, sum)?,
        Phase::Committing => {
            run::commit(lvm, journal, rec)?;
            sum.did(format!("run {id}: snapshots removed (commit finished)"));
        }
        Phase::Kept
            if rec.trial.as_ref().map(|t| t.state)
                == Some(crate::model::record::TrialState::FellBack) =>
        {
            // its fallback could not merge: left to the operator, never to the expiry timer
            sum.saw(format!(
                "run {id}: its trial boot fell back but the snapshots were not merged: `guard rollback {id}` and a reboot complete the rollback"
            ));
        }
        Phase::Kept
            if expire
                && rec.trial.as_ref().map(|t| t.state)
                    == Some(crate::model::record::TrialState::Armed) =>
        {
            // the trial boot has not happened yet: its fallback needs the snapshots
            sum.saw(format!(
                "run {id}: keep window over, but its trial boot is still armed: kept until the trial ends"
            ));
        }
        Phase::Kept => {
            if expire && expired(rec) {
                run::commit(lvm, journal, rec)?;
                sum.did(format!(
                    "run {id}: keep window ended, committed (snapshots removed)"
                ));
            } else {
                sum.saw(format!(
                    "run {id}: snapshots kept{}",
                    rec.keep_until
                        .as_deref()
                        .map(|u| format!(" until {u}"))
                        .unwrap_or_default()
                ));
            }
        }
        Phase::Done => {}
    }
    Ok(())
}

/// A copy's command (the reader: a backup) whose guard died while it was paused would stay
/// stopped for good: continue its group (it leads it), so that it can end. (A change's command
/// stays as guard left it: its writes have nobody watching the snapshot any more.)
fn continue_stopped(pid: u32) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGCONT,
    );
}

/// Is the process stopped (state T in /proc/PID/stat)?
fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
        })
        .is_some_and(|c| c == 'T')
}

fn apply(lvm: &dyn Lvm, journal: &Journal, rec: &mut RunRecord, sum: &mut Summary) -> Result<()> {
    let id = rec.id.clone();
    let success = rec.outcome == Some(Outcome::Success);
    let policy = if success {
        rec.on_success.as_str()
    } else {
        rec.on_failure.as_str()
    };
    if policy == "keep" {
        // as a run kept at its end: room for a burst before the background watcher has it
        crate::watch::background::room_for_keeping(lvm, rec);
        rec.phase = Phase::Kept;
        rec.final_state = Some(Final::Kept);
        journal.write(rec)?;
        sum.did(format!("run {id}: snapshots kept as its policy says"));
    } else if success {
        run::commit(lvm, journal, rec)?;
        sum.did(format!(
            "run {id}: the command had succeeded; snapshots removed"
        ));
    } else {
        rollback::rollback_with_hooks(lvm, journal, rec, false)?;
        sum.did(format!(
            "run {id}: rolled back ({})",
            rec.reason.as_deref().unwrap_or("failure")
        ));
        report_scheduled(rec, sum);
    }
    Ok(())
}

fn report_scheduled(rec: &RunRecord, sum: &mut Summary) {
    for t in rec
        .targets
        .iter()
        .filter(|t| t.rollback == Some(TargetState::Scheduled))
    {
        sum.saw(format!(
            "{}/{}: rollback completes {}",
            t.vg,
            t.lv,
            rollback::completes_by(t, &rec.id)
        ));
    }
}

/// Deferred merges: confirm those that completed at activation, finish those the kernel is
/// running, and leave alone those still waiting for their origin to close.
fn finish_scheduled(
    lvm: &dyn Lvm,
    journal: &Journal,
    rec: &mut RunRecord,
    lvs: &[Lv],
    sum: &mut Summary,
) -> Result<()> {
    let id = rec.id.clone();
    let tag = format!("{MERGE_TAG_PREFIX}{id}");
    for t in rec
        .targets
        .iter_mut()
        .filter(|t| t.rollback == Some(TargetState::Scheduled))
    {
        let name = format!("{}/{}", t.vg, t.lv);
        let Some(origin) = lvm::find(lvs, &t.vg, &t.lv) else {
            t.rollback = Some(TargetState::Impossible);
            t.note = Some("the origin LV no longer exists".into());
            sum.failed(format!("{name}: origin is gone"));
            continue;
        };
        if origin.merging {
            // An invalidated snapshot can never be merged: the change stays. Say so, once, and
            // never wait for a merge that cannot end (at boot that would hold the boot up).
            if let Some(why) = rollback::merge_ended_badly(lvs, t) {
                sum.failed(format!("{name}: {why}; the change stays"));
                t.rollback = Some(TargetState::Impossible);
                t.note = Some(why);
                rollback::drop_dead_merge(lvm, t, &tag);
                continue;
            }
            if !lvm.merge_in_progress(origin)? {
                sum.saw(format!(
                    "{name}: rollback still waits for the next activation ({})",
                    rollback::completes_by(t, &id)
                ));
                continue;
            }
            // (the time it waited here: the merge ran since the activation, at boot for /)
            let took = std::time::Instant::now();
            lvm.finish_merge(&t.vg, &t.lv)?;
            t.merge_seconds = Some(rollback::round_ms(took.elapsed()));
        }
        // The merge is over; a snapshot LV left behind by an interrupted poll is removed.
        if lvm::find(lvs, &t.vg, &t.snapshot).is_some_and(|s| !s.merging) {
            lvm.remove(&t.vg, &t.snapshot)?;
            sum.did(format!(
                "{name}: removed leftover snapshot {}/{} of a half-finished merge",
                t.vg, t.snapshot
            ));
        }
        if origin.tags.contains(&tag) {
            lvm.del_tag(&t.vg, &t.lv, &tag)?;
        }
        // "completed" only when the merge had a valid snapshot to merge
        if let Some(why) = rollback::merge_ended_badly(lvs, t) {
            t.rollback = Some(TargetState::Impossible);
            sum.failed(format!("{name}: {why}"));
            t.note = Some(why);
            continue;
        }
        t.rollback = Some(TargetState::Done);
        t.note = None;
        sum.did(format!("{name}: rollback of run {id} completed"));
    }
    if rec
        .targets
        .iter()
        .all(|t| t.rollback != Some(TargetState::Scheduled))
    {
        rec.phase = Phase::Done;
        // The copies saved outside LVM (/boot) were put back when the rollback was decided,
        // and `saved` emptied then. A copy still listed was never restored: try now, and
        // never discard it unrestored.
        let all_done = rec
            .targets
            .iter()
            .all(|t| t.rollback == Some(TargetState::Done));
        if !rec.saved.is_empty() && !all_done {
            sum.failed(format!(
                "run {id}: not every volume was rolled back, so the copies saved outside LVM are kept in /var/lib/guard/saved/{id} and not put back"
            ));
        } else if !rec.saved.is_empty() {
            let results = crate::store::saved::restore_all(&id, &rec.saved);
            for r in &results {
                match r {
                    Ok(s) => sum.did(s.clone()),
                    Err(s) => sum.failed(s.clone()),
                }
            }
            if results.iter().all(|r| r.is_ok()) {
                rec.saved.clear();
            }
        }
        if rec.saved.is_empty() {
            crate::store::saved::discard(&id);
        }
    }
    journal.write(rec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lvm::sim::{lv, SimLvm};

    #[test]
    fn rebuilds_a_run_from_tags() {
        let mut s = lv("vg", "data-guard-R", 8);
        s.origin = Some("data".into());
        s.tags = vec!["guard".into(), "guard-run:R".into()];
        let rec = record_from_tags(&[lv("vg", "data", 100), s], "R").unwrap();
        assert_eq!(rec.targets[0].lv, "data");
        assert_eq!(rec.phase, Phase::Kept);
        assert!(record_from_tags(&[], "R").is_none());
    }

    #[test]
    fn a_stopped_command_is_seen_as_stopped() {
        let mut c = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        assert!(!is_stopped(c.id()));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        let mut stopped = false;
        for _ in 0..100 {
            stopped = is_stopped(c.id());
            if stopped {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(stopped);
        let _ = c.kill();
        let _ = c.wait();
    }

    #[test]
    fn a_copy_lost_from_the_journal_is_still_a_copy_and_is_never_merged() {
        // a `guard snapshot` copy whose record is gone: rebuilt from the tags, it is a copy, a
        // rollback of it is refused, and recover only removes it
        let d = tempfile::tempdir().unwrap();
        std::env::set_var(
            "GUARD_LOCK_DIR",
            std::env::temp_dir().join("guard-unit-locks"),
        );
        let j = Journal::at(d.path());
        let sim = SimLvm::new("vg", 100, vec![lv("vg", "dbdata", 100)]);
        let id = "20261128-101010-c0c0";
        let mut snap = lv("vg", &format!("dbdata-guard-{id}"), 8);
        snap.origin = Some("dbdata".into());
        snap.tags = vec![
            "guard".into(),
            format!("guard-run:{id}"),
            lvm::COPY_TAG.into(),
        ];
        sim.state.borrow_mut().lvs.push(snap);
        let mut rec = record_from_tags(&sim.lvs().unwrap(), id).unwrap();
        assert!(rec.copy.is_some(), "the tag makes it a copy");
        let e = rollback::rollback_run(&sim, &j, &mut rec)
            .unwrap_err()
            .to_string();
        assert!(e.contains("copy"), "{e}");
        // the record lost the field (an older journal): the snapshot's tag still refuses
        rec.copy = None;
        let e = rollback::rollback_run(&sim, &j, &mut rec)
            .unwrap_err()
            .to_string();
        assert!(e.contains("its snapshots say so"), "{e}");
        assert!(
            !sim.state
                .borrow()
                .calls
                .iter()
                .any(|c| c.starts_with("merge")),
            "nothing merged"
        );
        // running, its guard and command gone: recover removes it, never merges
        let mut rec = record_from_tags(&sim.lvs().unwrap(), id).unwrap();
        rec.phase = Phase::Running;
        j.write(&mut rec).unwrap();
        recover(&sim, &j, false).unwrap();
        let calls = sim.state.borrow().calls.clone();
        assert!(!calls.iter().any(|c| c.starts_with("merge")), "{calls:?}");
        assert!(!sim.lvs().unwrap().iter().any(|l| l.is_guard_snapshot()));
        assert_eq!(j.load(id).unwrap().phase, Phase::Done);
    }

    #[test]
    fn a_decision_kept_in_the_tags_wins_over_a_running_record() {
        // its own LV name: the other recover test locks "data" in the same lock folder
        let d = tempfile::tempdir().unwrap();
        std::env::set_var(
            "GUARD_LOCK_DIR",
            std::env::temp_dir().join("guard-unit-locks"),
        );
        let j = Journal::at(d.path());
        let sim = SimLvm::new("vg", 100, vec![lv("vg", "kept", 100)]);
        let id = "20261127-101010-beef";
        let mut snap = lv("vg", &format!("kept-guard-{id}"), 8);
        snap.origin = Some("kept".into());
        snap.tags = vec![
            "guard".into(),
            format!("guard-run:{id}"),
            format!("{DECIDED_TAG_PREFIX}success"),
        ];
        sim.state.borrow_mut().lvs.push(snap);
        let mut rec = record_from_tags(&sim.lvs().unwrap(), id).unwrap();
        rec.phase = Phase::Running;
        rec.on_success = "keep".into();
        j.write(&mut rec).unwrap();
        recover(&sim, &j, false).unwrap();
        let after = j.load(id).unwrap();
        assert_eq!(after.phase, Phase::Kept, "{after:?}");
        assert_eq!(after.outcome, Some(Outcome::Success));
        assert!(sim.lvs().unwrap().iter().any(|l| l.is_guard_snapshot()));
    }

    #[test]
    fn recover_twice_changes_nothing_the_second_time() {
        let d = tempfile::tempdir().unwrap();
        // recover takes each run's lock: in a folder of this test's own (never removed while
        // another test may read the variable)
        let locks = std::env::temp_dir().join("guard-unit-locks");
        std::env::set_var("GUARD_LOCK_DIR", &locks);
        let j = Journal::at(d.path());
        let sim = SimLvm::new("vg", 100, vec![lv("vg", "data", 100)]);
        let id = "20261127-101010-abcd";
        let mut snap = lv("vg", &format!("data-guard-{id}"), 8);
        snap.origin = Some("data".into());
        snap.tags = vec!["guard".into(), format!("guard-run:{id}")];
        sim.state.borrow_mut().lvs.push(snap);
        let mut rec = record_from_tags(&sim.lvs().unwrap(), id).unwrap();
        rec.phase = Phase::Snapshotting;
        j.write(&mut rec).unwrap();
        let first = recover(&sim, &j, false).unwrap();
        assert!(first.changed);
        assert!(sim.lvs().unwrap().iter().all(|l| !l.is_guard_snapshot()));
        let second = recover(&sim, &j, false).unwrap();
        assert!(!second.changed, "{:?}", second.lines);
    }
}

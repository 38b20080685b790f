//! The guarded run: plan, lock, snapshot the set, run the command, decide, then commit or roll
//! back, and report. Every phase change is journaled before it is acted on, so that a guard
//! killed at any point leaves enough for `guard recover` to finish the job.
pub mod child;
pub mod copy;
pub mod hooks;
pub mod plan;
pub mod rehearse;
use crate::cli::report::Report;
use crate::error::{Error, Result};
use crate::log::Kind;
use crate::lvm::{Lvm, SnapshotRequest, RUN_TAG_PREFIX, TAG};
use crate::ops::rollback;
use crate::run::child::{Exit, RunSpec, SignalState};
use crate::run::hooks::{CheckSpec, HookEnv, HookPoint, HookSpec};
use crate::run::plan::{Plan, PlanRequest};
use crate::store::journal::{self, Final, Journal, Outcome, Phase, RunRecord, TargetRecord};
use crate::store::lock::{self, LockTarget};
use crate::ui;
use crate::watch::{WatchConfig, WatchItem, Watcher};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Merge the snapshots back: undo the change.
    Rollback,
    /// Keep the snapshots for `guard rollback RUN` or `guard commit RUN`.
    Keep,
    /// On a terminal, show the exit status and COW use and ask (rollback when nobody answers).
    Ask,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnSuccess {
    /// Remove the snapshots: keep the change.
    Discard,
    /// Keep the snapshots until `guard commit RUN` (or `guard rollback RUN`).
    Keep,
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub request: PlanRequest,
    pub command: Vec<OsString>,
    pub timeout: Option<Duration>,
    pub on_failure: OnFailure,
    pub on_success: OnSuccess,
    pub keep: Option<Duration>,
    pub dry_run: bool,
    pub wait: bool,
    pub json: bool,
    pub report_file: Option<PathBuf>,
    /// On a deferred rollback, unmount the targets to complete it now.
    pub finish: bool,
    pub watch: WatchConfig,
    /// Hold the set at one moment while it is snapshotted (sets of two or more volumes).
    pub freeze: bool,
    pub freeze_limit: Duration,
    /// Note thick targets (dry run, report): their snapshots slow synchronous writes.
    pub prefer_thin: bool,
    /// `guard snapshot --mount-at DIR`: a point-in-time copy mounted at DIR for the command,
    /// always removed afterwards (never a rollback point).
    pub copy_root: Option<PathBuf>,
    pub hooks: Vec<HookSpec>,
    pub checks: Vec<CheckSpec>,
    /// Paths that should be on LVM for a whole rollback: warn when not.
    pub warn_unless_on_lvm: Vec<PathBuf>,
    /// Paths archived before the change when not on LVM, restored on rollback.
    pub save_unless_on_lvm: Vec<PathBuf>,
    /// The policy the run follows, by name or path (kept in the journal).
    pub policy: Option<String>,
    /// Arm a trial boot when the run ends kept (boot/).
    pub trial_boot: bool,
    pub trial_deadline: Duration,
    /// Paths whose contents at a rollback are kept through it (logs).
    pub preserve: Vec<PathBuf>,
    /// Record the paths the command changes (fanotify), for `guard diff`.
    pub record: bool,
}

fn lossy(args: &[OsString]) -> Vec<String> {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// Runs the whole transaction; returns guard's exit code.
pub fn run(lvm: &dyn Lvm, journal: &Journal, opts: &RunOptions) -> i32 {
    match execute(lvm, journal, opts) {
        Ok(code) => code,
        Err(e) => {
            ui::error(&e.to_string());
            e.exit_code()
        }
    }
}

/// The guarded run, stage by stage: plan → lock → hooks → snapshot → run → decide → settle
/// → report. Each stage journals what it did before the next acts on it.
fn execute(lvm: &dyn Lvm, journal: &Journal, opts: &RunOptions) -> Result<i32> {
    // Not found / not executable must be known before anything changes.
    if opts.command.is_empty() {
        return Err(Error::refused(
            "no command given",
            "put the command after --, e.g. guard --lv vg0/root -- apt-get -y upgrade",
        ));
    }
    child::resolve_program(&opts.command[0])?;
    let sig = SignalState::install()?;
    let run_id = journal::new_run_id();
    crate::log::set_run(&run_id);
    crate::exec::trace("run: start");
    let planned = plan_stage(lvm, journal, opts)?;
    crate::exec::trace("run: planned");
    if opts.dry_run {
        let plan = plan::check_and_size(&planned.resolved, &planned.table, &opts.request, &run_id)?;
        ui::print_block(&plan::describe(&plan));
        for n in plan::notes(&plan, opts.prefer_thin) {
            ui::print_block(&format!("note: {n}\n"));
        }
        ui::print_block("dry run: nothing was changed\n");
        return Ok(0);
    }
    refuse_if_journal_frozen(journal)?;
    let (_locks, plan) = lock_stage(lvm, opts, &run_id, &planned)?;
    let started = Instant::now();
    let env = HookEnv {
        run_id: run_id.clone(),
        targets: names(&plan),
        ..Default::default()
    };
    crate::exec::trace("run: locked");
    let holds = hooks_stage(opts, &env)?;
    let mut rec = snapshot_stage(
        lvm,
        journal,
        opts,
        &plan,
        (&planned.to_save, planned.chain.as_ref()),
        holds,
        &env,
    )?;
    if let Some(s) = sig.pending() {
        abort_after_snapshots(
            lvm,
            journal,
            &mut rec,
            &format!("interrupted by signal {s}"),
        )?;
        return Ok(128 + s);
    }
    crate::exec::trace("run: snapshots taken");
    let recording = Recording::start(&plan, journal, opts.record);
    let (finished, watcher, mut rec) = run_stage(journal, opts, &plan, rec, &sig)?;
    crate::exec::trace("run: command ended");
    let finished = match finished {
        Ok(f) => f,
        Err(e) => {
            // It could not start after all: nothing ran, so nothing to roll back.
            abort_after_snapshots(lvm, journal, &mut rec, &e.to_string())?;
            return Err(e);
        }
    };
    // a run headed for a rollback does not wait on a look at its snapshot first
    let look = finished.exit.success() && !watcher.rollback_requested;
    recording.finish(lvm, journal, &rec, look);
    crate::exec::trace("run: recording finished");
    let code = decide_stage(
        lvm, journal, opts, &mut rec, &finished, &watcher, &sig, &env,
    )?;
    crate::fault::pause("before-decision");
    crate::exec::trace("run: decided");
    let todo = apply_decision(lvm, journal, &mut rec, opts, &watcher);
    crate::exec::trace("run: settled");
    let report = Report::from_record(&rec, Some(started.elapsed().as_secs_f64()), todo);
    emit_report(&report, opts);
    crate::exec::trace("run: reported");
    Ok(code)
}

/// `guard snapshot`: the set at one moment (hold hooks, freeze), mounted read-only for the
/// command, watched and extended while it runs, then unmounted and removed whatever the command
/// did. Returns the command's exit status, or 123 when a snapshot overflowed under it (the
/// copy it read is not whole).
pub fn copy(lvm: &dyn Lvm, journal: &Journal, opts: &RunOptions) -> i32 {
    match execute_copy(lvm, journal, opts) {
        Ok(code) => code,
        Err(e) => {
            ui::error(&e.to_string());
            e.exit_code()
        }
    }
}

fn execute_copy(lvm: &dyn Lvm, journal: &Journal, opts: &RunOptions) -> Result<i32> {
    let Some(root) = opts.copy_root.clone() else {
        return Err(Error::Other("a copy run without --mount-at".into()));
    };
    if opts.command.is_empty() {
        return Err(Error::refused(
            "no command given",
            "put the command after --, e.g. guard snapshot --policy mysql --mount-at /snap -- rsync -a /snap/ /backup/",
        ));
    }
    child::resolve_program(&opts.command[0])?;
    copy::check_root(&root)?;
    let sig = SignalState::install()?;
    let run_id = journal::new_run_id();
    crate::log::set_run(&run_id);
    let planned = plan_stage(lvm, journal, opts)?;
    if opts.dry_run {
        let plan = plan::check_and_size(&planned.resolved, &planned.table, &opts.request, &run_id)?;
        ui::print_block(&plan::describe(&plan));
        for (i, at) in copy::layout(&root, &plan) {
            ui::print_block(&format!(
                "  would mount the snapshot of {} read-only at {}\n",
                plan.targets[i].full_name(),
                at.display()
            ));
        }
        ui::print_block("dry run: nothing was changed\n");
        return Ok(0);
    }
    refuse_if_journal_frozen(journal)?;
    let (_locks, plan) = lock_stage(lvm, opts, &run_id, &planned)?;
    copy::prepare_root(&root)?;
    let started = Instant::now();
    let env = HookEnv {
        run_id: run_id.clone(),
        targets: names(&plan),
        ..Default::default()
    };
    let holds = hooks_stage(opts, &env)?;
    let mut rec = snapshot_stage(lvm, journal, opts, &plan, (&[], None), holds, &env)?;
    let mounted = match sig.pending() {
        Some(s) => Err(Error::Other(format!("interrupted by signal {s}"))),
        None => copy::mount_all(lvm, journal, &mut rec, &plan, &root),
    };
    if let Err(e) = mounted {
        if let Some(c) = rec.copy.as_mut() {
            for m in copy::unmount_all(c) {
                ui::error(&m);
            }
        }
        abort_after_snapshots(lvm, journal, &mut rec, &e.to_string())?;
        return Err(e);
    }
    let (finished, watcher, mut rec) = run_stage(journal, opts, &plan, rec, &sig)?;
    let mut code = match &finished {
        Ok(f) => {
            rec.outcome = Some(if f.exit.success() {
                Outcome::Success
            } else {
                Outcome::Failure
            });
            rec.exit_status = Some(f.exit.code());
            rec.reason = Some(f.exit.describe());
            ui::event(
                Kind::CommandResult,
                &format!("command {}", describe_exit(f.exit, f.elapsed)),
                &[("GUARD_EXIT_STATUS", f.exit.code().to_string())],
            );
            f.exit.code()
        }
        Err(e) => {
            rec.outcome = Some(Outcome::Aborted);
            rec.reason = Some(e.to_string());
            ui::error(&e.to_string());
            e.exit_code()
        }
    };
    let lost: Vec<String> = watcher
        .items
        .iter()
        .filter(|it| it.invalid)
        .map(|it| it.name())
        .collect();
    if !lost.is_empty() {
        let why = format!(
            "the snapshot of {} overflowed while the command read it: what it copied is not one consistent moment",
            lost.join(", ")
        );
        ui::error(&why);
        rec.reason = Some(why);
        rec.outcome = Some(Outcome::Failure);
        if code == 0 {
            code = EXIT_CHECK_FAILED;
        }
    }
    rec.phase = Phase::Decided;
    journal.write(&mut rec)?;
    let todo = match copy::end(lvm, journal, &mut rec) {
        Ok(()) => vec![],
        Err(e) => {
            ui::error(&e.to_string());
            vec![e.to_string()]
        }
    };
    let report = Report::from_record(&rec, Some(started.elapsed().as_secs_f64()), todo);
    emit_report(&report, opts);
    Ok(code)
}

/// What the command changes, recorded while it runs (`guard diff RUN`): fanotify on each
/// mounted target, and dpkg's database before and after when it lives on a target.
struct Recording {
    recorder: Option<crate::change::record::Recorder>,
    /// (index into the targets, mount point) of what is recorded
    watched: Vec<(usize, PathBuf)>,
    dpkg_before: Option<String>,
    why_not: Option<String>,
}

impl Recording {
    fn start(plan: &Plan, journal: &Journal, record: bool) -> Recording {
        use crate::change::record::{Recorder, Watch};
        let table = crate::mounts::read().unwrap_or_default();
        // a mount of the whole filesystem (a bind mount of a subfolder would name paths wrongly)
        let watched: Vec<(usize, PathBuf)> = plan
            .targets
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                t.mountpoints
                    .iter()
                    .find(|mp| {
                        table
                            .iter()
                            .any(|m| &m.mountpoint == *mp && m.root == std::path::Path::new("/"))
                    })
                    .map(|mp| (i, mp.clone()))
            })
            .collect();
        let status = std::path::Path::new("/").join(crate::change::dpkg::STATUS);
        let dpkg_on_target = crate::mounts::containing(&table, &status)
            .is_some_and(|m| watched.iter().any(|(_, mp)| *mp == m.mountpoint));
        let dpkg_before = dpkg_on_target
            .then(|| std::fs::read_to_string(&status).ok())
            .flatten();
        let watches: Vec<Watch> = watched
            .iter()
            .map(|(i, mp)| Watch {
                target: plan.targets[*i].full_name(),
                mountpoint: mp.clone(),
            })
            .collect();
        let exclude = vec![
            journal.dir().to_path_buf(),
            crate::store::journal::fallback_dir(),
        ];
        let (recorder, why_not) = if watches.is_empty() {
            (None, None)
        } else if !record {
            (None, Some("paths not recorded (--no-record)".to_string()))
        } else {
            match Recorder::start(watches, exclude, rehearse::RECORD_LIMIT) {
                Ok(r) => (Some(r), None),
                Err(e) => {
                    let why = format!("paths not recorded (fanotify: {e}); `guard diff --compare RUN` compares a kept run's snapshot");
                    ui::warn(&why);
                    (None, Some(why))
                }
            }
        };
        Recording {
            recorder,
            watched,
            dpkg_before,
            why_not,
        }
    }

    /// Stops recording and keeps the list beside the run's record.
    /// `look`: the snapshot may be read to tell replaced paths from new ones (not when the
    /// run is headed for a rollback: that waits for nothing; such paths then show as added).
    fn finish(self, lvm: &dyn Lvm, journal: &Journal, rec: &RunRecord, look: bool) {
        use crate::change::record::{classify, Ev};
        use crate::model::change::{ChangeSource, RunChanges, TargetChanges};
        use std::path::Path;
        if self.watched.is_empty() {
            return;
        }
        let recording = self.recorder.map(|r| r.stop());
        // whether each path exists at the end of the run, asked once
        let now_map = crate::change::exists_now(
            recording
                .iter()
                .flat_map(|r| r.targets.iter())
                .flat_map(|t| t.paths.keys().map(|p| p.as_path())),
        );
        let per_target = |before: &dyn Fn(usize, &Path) -> Option<bool>| -> Vec<TargetChanges> {
            let now = |p: &Path| match now_map.get(p) {
                Some(v) => *v,
                None => std::fs::symlink_metadata(p).ok().map(|m| m.is_dir()),
            };
            self.watched
                .iter()
                .enumerate()
                .map(|(k, (i, mp))| {
                    let t = &rec.targets[*i];
                    match recording.as_ref().and_then(|r| r.targets.get(k)) {
                        Some(tr) => {
                            let mut c = classify(tr, &now, &|p: &Path| before(*i, p));
                            c.target = format!("{}/{}", t.vg, t.lv);
                            c.mountpoint = Some(mp.clone());
                            c
                        }
                        None => TargetChanges {
                            target: format!("{}/{}", t.vg, t.lv),
                            mountpoint: Some(mp.clone()),
                            source: ChangeSource::None,
                            complete: false,
                            changes: vec![],
                            more_under: vec![],
                            note: self.why_not.clone(),
                        },
                    }
                })
                .collect()
        };
        // A path that arrived by a rename (dpkg and editors write a new file and rename it over
        // the old) may have replaced one that existed: only the snapshot can say which, so it is
        // looked at, read only, in a thread with a mount namespace of its own; runs without such
        // paths (most) never mount anything.
        let ambiguous: Vec<usize> = recording
            .iter()
            .flat_map(|r| r.targets.iter().enumerate())
            .filter(|(_, tr)| tr.paths.values().any(|s| s.first == Ev::MovedTo))
            .map(|(k, _)| self.watched[k].0)
            .collect();
        let unknown = |_: usize, _: &Path| None;
        let targets = if ambiguous.is_empty() || !look {
            per_target(&unknown)
        } else {
            match crate::change::view::activate(lvm, &rec.targets, &ambiguous) {
                Err(e) => {
                    ui::warn(&format!(
                        "cannot look at the snapshot to tell replaced paths from new ones: {e}"
                    ));
                    per_target(&unknown)
                }
                Ok(activated) => {
                    let t = std::thread::scope(|sc| {
                        sc.spawn(|| {
                            let view = match crate::change::view::View::mount(
                                &rec.targets,
                                &ambiguous,
                                crate::change::view::Access::Read,
                            ) {
                                Ok(v) => v,
                                Err(e) => {
                                    ui::warn(&format!("cannot look at the snapshot to tell replaced paths from new ones: {e}"));
                                    return per_target(&unknown);
                                }
                            };
                            // one listing per folder in the snapshot (not a lookup per path)
                            let mut existed: std::collections::HashMap<&Path, bool> =
                                std::collections::HashMap::new();
                            for (k, (i, mp)) in self.watched.iter().enumerate() {
                                let (Some(root), Some(tr)) = (
                                    view.of(*i),
                                    recording.as_ref().and_then(|r| r.targets.get(k)),
                                ) else {
                                    continue;
                                };
                                let mut by_dir: std::collections::BTreeMap<&Path, Vec<&Path>> =
                                    Default::default();
                                for (p, seen) in &tr.paths {
                                    if seen.first == Ev::MovedTo {
                                        if let Some(d) = p.parent().filter(|d| d.starts_with(mp)) {
                                            by_dir.entry(d).or_default().push(p);
                                        }
                                    }
                                }
                                for (d, ps) in by_dir {
                                    let rel = d.strip_prefix(mp).unwrap_or(Path::new(""));
                                    if ps.len() < crate::change::LIST_FROM {
                                        for p in ps {
                                            let r = p.strip_prefix(mp).unwrap_or(p);
                                            if let Ok(e) = crate::change::restore::exists_beneath(root, r) {
                                                existed.insert(p, e);
                                            }
                                        }
                                        continue;
                                    }
                                    let names = match crate::change::restore::names_in(root, rel) {
                                        Ok(n) => n,
                                        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => Default::default(),
                                        // a link or a mount on the way: unknown
                                        Err(_) => continue,
                                    };
                                    for p in ps {
                                        let n = p.file_name().unwrap_or_default();
                                        existed.insert(p, names.contains(n));
                                    }
                                }
                            }
                            let before = |_: usize, p: &Path| existed.get(p).copied();
                            let t = per_target(&before);
                            if let Err(e) = view.unmount() {
                                ui::warn(&format!("after reading the snapshot: {e}"));
                            }
                            t
                        })
                        .join()
                        .unwrap_or_else(|_| per_target(&unknown))
                    });
                    crate::change::view::deactivate(lvm, &activated);
                    t
                }
            }
        };
        let status = std::path::Path::new("/").join(crate::change::dpkg::STATUS);
        let packages = match (&self.dpkg_before, std::fs::read_to_string(&status)) {
            (Some(b), Ok(a)) if *b != a => crate::change::dpkg::diff(
                &crate::change::dpkg::parse(b),
                &crate::change::dpkg::parse(&a),
            ),
            _ => vec![],
        };
        let c = RunChanges {
            schema: crate::model::change::SCHEMA.into(),
            run: rec.id.clone(),
            targets,
            packages,
        };
        if let Err(e) = journal.write_changes(&c) {
            ui::warn(&format!("cannot keep the list of changed paths: {e}"));
        }
    }
}

/// Another guard holding the journal's filesystem frozen (its VG is full): this run's first
/// journal write would block, after its hooks (a database's read lock) had started.
fn refuse_if_journal_frozen(journal: &Journal) -> Result<()> {
    if crate::dm::freeze::on_frozen_fs(journal.dir()) {
        return Err(Error::refused(
            format!(
                "another guard holds the filesystem of {} frozen (its volume group is full)",
                journal.dir().display()
            ),
            "see `guard status`: free space and `guard resume RUN`, or `guard rollback RUN`, then run this again",
        ));
    }
    Ok(())
}

/// What planning found before anything is locked or changed.
struct Planned {
    table: Vec<crate::mounts::Mount>,
    resolved: plan::Resolved,
    /// Paths outside LVM to save before the change (e.g. /boot).
    to_save: Vec<PathBuf>,
    /// A trial boot's checked boot chain.
    chain: Option<crate::boot::Chain>,
}

/// plan: the targets, and the warnings about what a rollback will not reach.
fn plan_stage(lvm: &dyn Lvm, journal: &Journal, opts: &RunOptions) -> Result<Planned> {
    let table = crate::mounts::read()?;
    let resolved = plan::resolve(lvm, &table, &opts.request)?;
    let mut to_save = off_lvm(&resolved, &table, &opts.save_unless_on_lvm);
    let root_lv = plan::lv_for_mount(&resolved.lvs, &table, std::path::Path::new("/"))
        .ok()
        .map(|(lv, _)| lv.clone());
    let root_is_target = root_lv
        .as_ref()
        .is_some_and(|r| resolved.volumes().iter().any(|(v, _)| *v == r.uuid));
    let boot = PathBuf::from(crate::boot::BOOT);
    // (a copy is never a rollback point and saves nothing: it cannot tangle a trial)
    if !opts.dry_run && opts.copy_root.is_none() && (root_is_target || to_save.contains(&boot)) {
        crate::boot::refuse_if_pending(journal)?;
    }
    // A trial boot's fallback boots the old kernel on the old /: both must come back, so /
    // is a target and /boot (a plain partition: GRUB writes its counter there) is saved.
    let chain = if opts.trial_boot && !opts.dry_run {
        let chain = crate::boot::check_chain(&table)?;
        if !root_is_target {
            return Err(Error::refused(
                "--trial-boot: / is not among the targets (the fallback boots the old kernel, which needs the old / and /lib/modules); nothing was changed",
                "add --mount / (the kernel-upgrade and apt policies protect /), or --no-trial-boot",
            ));
        }
        // the fallback's initramfs handles a thick snapshot's merge; a thin one is not tested
        if root_lv.as_ref().is_some_and(|r| r.pool.is_some()) {
            return Err(Error::refused(
                "--trial-boot: / is a thin volume; the trial boot's fallback supports thick snapshots of / only (so far); nothing was changed",
                "run without a trial boot (--no-trial-boot); `guard rollback RUN` and a reboot still undo the change",
            ));
        }
        if !to_save.contains(&boot) {
            to_save.push(boot);
        }
        Some(chain)
    } else {
        None
    };
    for p in off_lvm(&resolved, &table, &opts.warn_unless_on_lvm) {
        ui::warn(&off_lvm_warning(&p, to_save.contains(&p)));
    }
    Ok(Planned {
        table,
        resolved,
        to_save,
        chain,
    })
}

/// The locks a run holds for its whole life.
struct RunLocks {
    // dropped in this order: the run first, then its volumes (as before the stages)
    _run: lock::RunLock,
    _lvs: lock::LvLocks,
}

/// lock: the volumes (a second guard on one of them is refused, naming the holder, or waits),
/// then the run; the plan is checked (and sized) under the locks.
fn lock_stage(
    lvm: &dyn Lvm,
    opts: &RunOptions,
    run_id: &str,
    planned: &Planned,
) -> Result<(RunLocks, Plan)> {
    // Lock before the state checks: a second guard on a volume in use should hear who holds it.
    let holder = format!("run {run_id}: guard -- {}", lossy(&opts.command).join(" "));
    let lock_targets: Vec<LockTarget> = planned
        .resolved
        .volumes()
        .into_iter()
        .map(|(uuid, name)| LockTarget { uuid, name })
        .collect();
    // (the plan's report may have been started with the process: lvm/early.rs)
    let since = crate::lvm::early::started();
    let (lvs, contended) = lock::lock_all(&lock_targets, &holder, opts.wait, Some(since))?;
    // and the run itself, for the commands that act on a run by its id
    let run = lock::lock_run(run_id, &holder, false)?;
    let plan = if contended == lock::Contended::Yes {
        // A run that held a volume since the plan's report (we waited for it, or it came and
        // went in between) may have left snapshots or a pending merge: look again.
        crate::exec::trace(
            "run: a volume's lock changed hands since guard started: planning again",
        );
        let table = crate::mounts::read()?;
        let again = plan::resolve(lvm, &table, &opts.request)?;
        // the volumes locked are the ones acted on: a name that now means another LV (removed
        // and made again meanwhile) is not taken over unlocked
        let uuids = |v: Vec<(String, String)>| {
            v.into_iter()
                .map(|(u, _)| u)
                .collect::<std::collections::BTreeSet<_>>()
        };
        if uuids(again.volumes()) != uuids(planned.resolved.volumes()) {
            return Err(Error::refused(
                "the volumes named changed while guard waited for their locks (another LV now has one of their names); nothing was changed",
                "look at `lvs` and run again",
            ));
        }
        plan::check_and_size(&again, &table, &opts.request, run_id)?
    } else {
        plan::check_and_size(&planned.resolved, &planned.table, &opts.request, run_id)?
    };
    Ok((
        RunLocks {
            _lvs: lvs,
            _run: run,
        },
        plan,
    ))
}

/// hooks: pre_snapshot, then the holds (a database lock in an open session), in place before
/// the snapshots; dropping them on an error path ends them too.
fn hooks_stage(opts: &RunOptions, env: &HookEnv) -> Result<Vec<hooks::Hold>> {
    let before = |e: Error| {
        Error::refused(
            format!("{e}; nothing was changed"),
            "fix the hook (see `guard policy check`), or run without the policy",
        )
    };
    hooks::run_point(&opts.hooks, HookPoint::PreSnapshot, env).map_err(before)?;
    let mut holds = Vec::new();
    for h in opts.hooks.iter().filter(|h| h.when == HookPoint::Hold) {
        match hooks::start_hold(h, env) {
            Ok(hold) => holds.push(hold),
            Err(e) => {
                // the holds in place end first: the diagnosis must not wait behind our own lock
                drop(holds);
                hooks::run_point_reporting(&opts.hooks, HookPoint::HoldFailed, env);
                return Err(before(e));
            }
        }
    }
    Ok(holds)
}

/// snapshot: the record (its first write is exclusive), the copies of paths outside LVM,
/// the snapshots of the set, then the holds end and post_snapshot runs.
fn snapshot_stage(
    lvm: &dyn Lvm,
    journal: &Journal,
    opts: &RunOptions,
    plan: &Plan,
    // what to save outside LVM, and a trial boot's checked chain
    (to_save, chain): (&[PathBuf], Option<&crate::boot::Chain>),
    holds: Vec<hooks::Hold>,
    env: &HookEnv,
) -> Result<RunRecord> {
    let run_id = &plan.run_id;
    let mut rec = new_record(plan, opts);
    if !to_save.is_empty() {
        rec.saved = crate::store::saved::save(run_id, to_save).map_err(|e| {
            crate::store::saved::discard(run_id);
            Error::refused(
                format!("cannot save a copy of a path outside LVM: {e}; nothing was changed"),
                "free space under /var/lib/guard, or move the path to an LV",
            )
        })?;
    }
    // after /boot was saved: its copy must not hold these (a rollback removes them with it)
    if let Some(chain) = chain {
        let secs = opts.trial_deadline.as_secs();
        rec.trial = Some(crate::boot::prepare(run_id, chain, secs).map_err(|e| {
            crate::store::saved::discard(run_id);
            Error::refused(
                format!("--trial-boot: cannot copy the running kernel for the fallback: {e}; nothing was changed"),
                "free space in /boot",
            )
        })?);
    }
    journal.create_exclusive(&mut rec).inspect_err(|_| {
        crate::store::saved::discard(run_id);
        crate::boot::discard_copies(run_id);
    })?;
    ui::event(
        Kind::Plan,
        &format!("run {run_id}: protecting {}", names(plan)),
        &[("GUARD_COMMAND", lossy(&opts.command).join(" "))],
    );
    let step = Instant::now();
    snapshot_set(lvm, journal, plan, &mut rec, opts)
        .inspect_err(|_| crate::boot::discard_copies(run_id))?;
    let held_from = holds.iter().map(|h| h.started).min().unwrap_or(step);
    for mut h in holds {
        h.end();
    }
    let held = held_from.elapsed();
    rec.writers_held_ms = Some(held.as_millis() as u64);
    let by = if opts.hooks.iter().any(|h| h.when == HookPoint::Hold) {
        "the hold hooks' lock, from their start"
    } else {
        "the snapshots' freeze, at most"
    };
    ui::say(&format!("writers held for {} ms ({by})", held.as_millis()));
    hooks::run_point_reporting(&opts.hooks, HookPoint::PostSnapshot, env);
    Ok(rec)
}

/// While the command runs: the watcher ticks, and what it changes (frozen paths, events) and
/// the command's PID go into the journal.
struct Watching<'a> {
    journal: &'a Journal,
    sig: &'a SignalState,
    rec: RunRecord,
    watcher: Watcher,
}

impl child::Observer for Watching<'_> {
    fn spawned(&mut self, pid: u32) {
        self.watcher.set_pgid(pid as i32);
        self.rec.child_pid = Some(pid);
        self.rec.child_start = journal::process_start(pid);
        if let Err(e) = self.journal.write(&mut self.rec) {
            ui::warn(&format!("cannot record the command's PID: {e}"));
        }
    }

    fn tick(&mut self) -> Duration {
        let next = self.watcher.tick(self.sig);
        if self.watcher.take_changed() {
            self.rec.frozen = self.watcher.frozen_paths();
            self.rec.events = self.watcher.events.clone();
            if let Err(e) = self.journal.write(&mut self.rec) {
                ui::warn(&format!("cannot journal the watcher's state: {e}"));
            }
        }
        next
    }

    fn paused(&self) -> bool {
        self.watcher.is_paused()
    }

    fn timed_out(&mut self) {
        self.watcher.stop_for_timeout();
    }
}

/// run: the command under the watcher; then settle (its dirty pages land while still watched).
#[allow(clippy::type_complexity)]
fn run_stage(
    journal: &Journal,
    opts: &RunOptions,
    plan: &Plan,
    mut rec: RunRecord,
    sig: &SignalState,
) -> Result<(Result<child::Finished>, Watcher, RunRecord)> {
    rec.phase = Phase::Running;
    journal.write(&mut rec)?;
    let spec = RunSpec {
        argv: &opts.command,
        env: std::iter::once(("GUARD_RUN".into(), plan.run_id.clone()))
            .chain(
                opts.copy_root
                    .iter()
                    .map(|r| ("GUARD_SNAPSHOT_ROOT".into(), r.display().to_string())),
            )
            .collect(),
        timeout: opts.timeout,
        first_tick: Duration::from_millis(20),
    };
    let mut w = Watching {
        journal,
        sig,
        rec,
        watcher: new_watcher(plan, opts.watch),
    };
    w.watcher.bound_dirty_cache();
    let result = child::run(&spec, sig, &mut w);
    let Watching {
        mut rec,
        mut watcher,
        ..
    } = w;
    watcher.settle(sig);
    watcher.finish();
    record_watch(&mut rec, &watcher);
    Ok((result, watcher, rec))
}

/// decide: success or failure, from the exit status, the operator's requests and the health
/// checks; journaled (and, if the journal could not take it, tagged on the snapshots) before
/// anything acts on it. Returns guard's exit code.
#[allow(clippy::too_many_arguments)]
fn decide_stage(
    lvm: &dyn Lvm,
    journal: &Journal,
    opts: &RunOptions,
    rec: &mut RunRecord,
    finished: &child::Finished,
    watcher: &Watcher,
    sig: &SignalState,
    env: &HookEnv,
) -> Result<i32> {
    if sig.hung_up() {
        ui::warn(
            "the terminal hung up while the command ran; the transaction was completed anyway",
        );
    }
    let exit = finished.exit;
    rec.outcome = Some(if exit.success() && !watcher.rollback_requested {
        Outcome::Success
    } else {
        Outcome::Failure
    });
    rec.exit_status = Some(exit.code());
    rec.reason = Some(match &watcher.rollback_reason {
        Some(why) => format!("stopped by guard to roll back: {why} ({})", exit.describe()),
        None => exit.describe(),
    });
    ui::event(
        Kind::CommandResult,
        &format!("command {}", describe_exit(exit, finished.elapsed)),
        &[("GUARD_EXIT_STATUS", exit.code().to_string())],
    );
    let mut code = exit.code();
    // Health checks judge a command that says it succeeded; they run before the decision.
    if exit.success() && !watcher.rollback_requested {
        let env = HookEnv {
            exit_status: Some(0),
            ..env.clone()
        };
        if let Some(why) = hooks::run_checks(&opts.checks, &env) {
            rec.outcome = Some(Outcome::Failure);
            rec.reason = Some(why.clone());
            rec.failed_check = Some(why);
            code = EXIT_CHECK_FAILED;
        }
    }
    // `guard rollback RUN` may arrive after the command ended: while its writes settled or the
    // health checks ran (the record still says Running, so the request came as a signal)
    if rec.outcome == Some(Outcome::Success) && sig.take_rollback_request() {
        ui::say("rollback requested (`guard rollback`) after the command ended: rolling back");
        rec.outcome = Some(Outcome::Failure);
        rec.reason = Some("rollback requested (`guard rollback`) after the command ended".into());
        code = EXIT_CHECK_FAILED;
    }
    rec.phase = Phase::Decided;
    journal.write(rec)?;
    if journal.fell_back(&rec.id) {
        // /run does not survive a reboot: keep the decision in the VG metadata too, so that
        // recover at boot does not take a success for a run of unknown outcome
        let d = if rec.outcome == Some(Outcome::Success) {
            "success"
        } else {
            "failure"
        };
        for t in &rec.targets {
            let tag = format!("{}{d}", crate::ops::recover::DECIDED_TAG_PREFIX);
            if let Err(e) = lvm.add_tag(&t.vg, &t.snapshot, &tag) {
                ui::warn(&format!(
                    "cannot record the decision on {}/{}: {e}",
                    t.vg, t.snapshot
                ));
            }
        }
    }
    Ok(code)
}

/// Exit status when the command exited 0 but the run failed after it: a health check failed,
/// or `guard rollback RUN` asked for the rollback (and the failure policy was applied). Next
/// to 124 (timeout) and 125 (guard refused).
pub const EXIT_CHECK_FAILED: i32 = 123;

/// Paths the policy wants on LVM (e.g. /boot for apt) that are not: a rollback of the set
/// does not reach them.
fn off_lvm(
    resolved: &plan::Resolved,
    table: &[crate::mounts::Mount],
    paths: &[PathBuf],
) -> Vec<PathBuf> {
    paths
        .iter()
        .filter(|p| p.is_dir())
        .filter(|p| plan::lv_for_mount(&resolved.lvs, table, p).is_err())
        .cloned()
        .collect()
}

fn off_lvm_warning(p: &std::path::Path, saved: bool) -> String {
    let p = p.display();
    if saved {
        format!("{p} is not on LVM, so the snapshots do not cover it: guard saves a copy of {p} before the change and puts it back if the run is rolled back (keeping kernels in step with / and /lib/modules)")
    } else {
        format!("{p} is not on LVM: a rollback will not restore it. For /boot this means the kernels and initramfs images there stay new while / and /lib/modules roll back; keep a copy of {p} (tar) before the change, or move it to an LV")
    }
}

fn new_watcher(plan: &Plan, cfg: WatchConfig) -> Watcher {
    let items = plan
        .targets
        .iter()
        .map(|t| match (&t.pool, t.cow_bytes) {
            (Some(pool), _) => WatchItem::pool(
                &t.vg,
                &t.lv,
                pool,
                t.pool_size.unwrap_or(0),
                t.extent,
                t.mountpoints.clone(),
            ),
            (None, cow) => WatchItem::snapshot(
                &t.vg,
                &t.lv,
                &t.snapshot,
                cow.unwrap_or(0),
                t.extent,
                t.mountpoints.clone(),
            ),
        })
        .collect();
    let free = plan
        .space
        .iter()
        .map(|v| (v.vg.clone(), v.free_after))
        .collect();
    Watcher::new(items, free, cfg, &plan.run_id)
}

/// What the watcher saw goes into the record (and so into the report and the journal).
fn record_watch(rec: &mut RunRecord, w: &Watcher) {
    for (t, it) in rec.targets.iter_mut().zip(&w.items) {
        t.max_used_percent = Some((it.max_pct * 10.0).round() / 10.0);
        t.extensions = it.extensions;
        t.invalidated = it.invalid;
        t.peak_used_bytes = it.peak_growth;
        t.added_bytes = it.added;
        if !t.thin {
            t.cow_bytes = Some(it.size);
        }
    }
    rec.frozen.clear();
    rec.events = w.events.clone();
}

fn names(plan: &Plan) -> String {
    plan.targets
        .iter()
        .map(|t| t.full_name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe_exit(exit: Exit, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    match exit {
        Exit::Code(0) => format!("succeeded after {secs:.1}s"),
        e => format!("failed after {secs:.1}s: {}", e.describe()),
    }
}

fn new_record(plan: &Plan, opts: &RunOptions) -> RunRecord {
    let me = std::process::id();
    RunRecord {
        schema: journal::SCHEMA,
        id: plan.run_id.clone(),
        started: journal::now_rfc3339(),
        updated: String::new(),
        command: lossy(&opts.command),
        guard_pid: me,
        guard_start: journal::process_start(me).unwrap_or(0),
        child_pid: None,
        child_start: None,
        phase: Phase::Snapshotting,
        // a copy is never merged, also by a guard that does not know `copy`
        on_failure: if opts.copy_root.is_some() {
            "keep".into()
        } else {
            format!("{:?}", opts.on_failure).to_lowercase()
        },
        on_success: format!("{:?}", opts.on_success).to_lowercase(),
        keep_until: None,
        outcome: None,
        exit_status: None,
        reason: None,
        final_state: None,
        targets: plan
            .targets
            .iter()
            .map(|t| TargetRecord {
                vg: t.vg.clone(),
                lv: t.lv.clone(),
                snapshot: t.snapshot.clone(),
                thin: t.pool.is_some(),
                cow_bytes: t.cow_bytes,
                mountpoints: t.mountpoints.clone(),
                max_used_percent: None,
                rollback: None,
                note: None,
                extensions: 0,
                invalidated: false,
                merge_seconds: None,
                peak_used_bytes: None,
                added_bytes: 0,
            })
            .collect(),
        frozen: vec![],
        events: vec![],
        suspended: vec![],
        policy: opts.policy.clone(),
        failed_check: None,
        saved: vec![],
        writers_held_ms: None,
        downtime_ms: None,
        copy: opts
            .copy_root
            .clone()
            .map(|root| crate::model::record::CopyRun {
                root,
                mounted: vec![],
                rehearsal: false,
            }),
        notes: plan::notes(plan, opts.prefer_thin),
        mounted: None,
        restored: vec![],
        preserve: opts.preserve.clone(),
        trial: None,
    }
}

/// Takes every snapshot of the set, or none: if one fails, those already made are removed and
/// the command never runs.
fn snapshot_set(
    lvm: &dyn Lvm,
    journal: &Journal,
    plan: &Plan,
    rec: &mut RunRecord,
    opts: &RunOptions,
) -> Result<()> {
    let mut tags = vec![TAG.to_string(), format!("{RUN_TAG_PREFIX}{}", plan.run_id)];
    if rec.copy.is_some() {
        tags.push(crate::lvm::COPY_TAG.to_string());
    }
    // One LV needs no hold: lvcreate freezes its filesystem itself while it snapshots it.
    let mut held = None;
    if opts.freeze && plan.targets.len() > 1 {
        let names: Vec<String> = plan
            .targets
            .iter()
            .map(|t| crate::dm::dm_name(&t.vg, &t.lv))
            .collect();
        rec.suspended = names.clone();
        journal.write(rec)?;
        match crate::dm::hold::hold(&names, opts.freeze_limit) {
            Ok(h) => held = Some(h),
            Err(e) => {
                rec.suspended.clear();
                let _ = abort_after_snapshots(lvm, journal, rec, "the set could not be held");
                return Err(Error::Other(format!(
                    "cannot hold the set at one moment: {e} (nothing was changed; --no-freeze snapshots each volume on its own)"
                )));
            }
        }
    }
    for (i, t) in plan.targets.iter().enumerate() {
        crate::fault::pause(&format!("before-snapshot-{}", i + 1));
        let req = SnapshotRequest {
            vg: t.vg.clone(),
            origin: t.lv.clone(),
            name: t.snapshot.clone(),
            cow_bytes: t.cow_bytes,
            tags: tags.clone(),
            held: held.is_some(),
        };
        let made = if crate::fault::fail(&format!("snapshot-{}", i + 1)) {
            Err(Error::Other("test fault: snapshot failed".into()))
        } else {
            lvm.create_snapshot(&req)
        };
        let made = made.and_then(|()| match &held {
            Some(h) if h.overdue() => Err(Error::Other(format!(
                "holding the set took longer than its limit ({:.1}s): the snapshots may not show one moment",
                h.elapsed().as_secs_f64()
            ))),
            _ => Ok(()),
        });
        if let Err(e) = made {
            // Resume the held volumes before removing snapshots (lvremove suspends origins).
            drop(held.take());
            rec.suspended.clear();
            let cause = Error::Other(format!("cannot snapshot {}: {e}", t.full_name()));
            return Err(
                match abort_after_snapshots(lvm, journal, rec, "a snapshot of the set failed") {
                    Ok(()) => cause,
                    Err(rollback) => Error::RollbackFailed {
                        cause: Box::new(cause),
                        rollback: Box::new(rollback),
                    },
                },
            );
        }
        ui::event(
            Kind::SnapshotCreated,
            &format!(
                "snapshot {}/{} of {} created ({})",
                t.vg,
                t.snapshot,
                t.full_name(),
                match t.cow_bytes {
                    Some(b) => format!("COW {}", crate::size::human(b)),
                    None => format!("thin, in pool {}", t.pool.as_deref().unwrap_or("?")),
                }
            ),
            &[
                ("GUARD_LV", t.full_name()),
                ("GUARD_SNAPSHOT", format!("{}/{}", t.vg, t.snapshot)),
                (
                    "GUARD_COW_BYTES",
                    t.cow_bytes.map(|b| b.to_string()).unwrap_or_default(),
                ),
            ],
        );
        crate::fault::pause(&format!("after-snapshot-{}", i + 1));
    }
    if let Some(mut h) = held {
        h.release()?;
        ui::say(&format!(
            "set held for {:.2}s: the snapshots show one moment",
            h.elapsed().as_secs_f64()
        ));
        rec.suspended.clear();
        journal.write(rec)?;
        // each VG once, also when the set's VGs interleave
        let vgs: std::collections::BTreeSet<&str> =
            plan.targets.iter().map(|t| t.vg.as_str()).collect();
        for vg in vgs {
            if let Err(e) = lvm.backup_metadata(vg) {
                ui::warn(&format!("cannot back up the metadata of VG {vg}: {e}"));
            }
        }
    }
    Ok(())
}

/// Removes whatever snapshots of the run exist; the run ends with nothing changed.
fn abort_after_snapshots(
    lvm: &dyn Lvm,
    journal: &Journal,
    rec: &mut RunRecord,
    why: &str,
) -> Result<()> {
    end_trial(rec, "aborted");
    let mut errors = Vec::new();
    for t in rec.targets.iter().rev() {
        if let Err(e) = lvm.remove(&t.vg, &t.snapshot) {
            errors.push(format!("{}/{}: {e}", t.vg, t.snapshot));
        }
    }
    rec.outcome = Some(Outcome::Aborted);
    rec.reason = Some(why.to_string());
    crate::store::saved::discard(&rec.id);
    rec.saved.clear();
    if errors.is_empty() {
        rec.final_state = Some(Final::Nothing);
        rec.phase = Phase::Done;
        journal.write(rec)?;
        ui::say(&format!("{why}: snapshots removed, nothing was changed"));
        Ok(())
    } else {
        rec.phase = Phase::Committing;
        journal.write(rec).ok();
        Err(Error::Other(format!(
            "snapshots left behind: {} (remove them with `guard recover`)",
            errors.join("; ")
        )))
    }
}

/// Acts on the outcome; returns what is left for the operator to do.
fn apply_decision(
    lvm: &dyn Lvm,
    journal: &Journal,
    rec: &mut RunRecord,
    opts: &RunOptions,
    watcher: &Watcher,
) -> Vec<String> {
    let success = rec.outcome == Some(Outcome::Success);
    let env = HookEnv::for_record(rec);
    let on_failure = match opts.on_failure {
        _ if watcher.rollback_requested => OnFailure::Rollback,
        OnFailure::Ask if !success => ask_after_failure(rec, watcher),
        other => other,
    };
    let keep = if success {
        opts.on_success == OnSuccess::Keep
    } else {
        on_failure == OnFailure::Keep
    };
    let id = rec.id.clone();
    // set when a finish found a mount point busy: the post_rollback hooks would start the
    // services again on data that the scheduled merge is about to discard
    let mut hold_post = false;
    let mut down_from = None;
    let result = if keep {
        keep_run(lvm, journal, rec, opts.keep)
    } else if success {
        commit(lvm, journal, rec).map(|_| vec![])
    } else {
        down_from = Some(Instant::now());
        hooks::run_point_reporting(&opts.hooks, HookPoint::PreRollback, &env);
        let known: Vec<rollback::Known> = watcher
            .items
            .iter()
            .map(|it| rollback::Known {
                invalid: it.invalid,
            })
            .collect();
        // also with finish: a busy mount point (or /) leaves its merge scheduled after all
        crate::watch::background::room_for_deferred_merges(lvm, rec);
        rollback::rollback_with(lvm, journal, rec, Some(&known)).and_then(|todo| {
            let todo = if opts.finish && rec.phase == Phase::RollbackScheduled {
                let left = match rollback::finish(lvm, journal, rec) {
                    Ok(l) => l,
                    Err(e) => {
                        // still scheduled: watched until it completes
                        crate::watch::background::hand_off(&rec.id);
                        return Err(e);
                    }
                };
                hold_post = !left.busy.is_empty();
                rollback::scheduled_todo(rec, left)
            } else {
                todo
            };
            if rec.phase == Phase::RollbackScheduled {
                crate::watch::background::hand_off(&rec.id);
            }
            Ok(todo)
        })
    };
    let result = settle_trial(journal, rec, success && keep, result);
    if hold_post {
        ui::warn("post_rollback hooks not run: they would start the services again on data the scheduled rollback is about to discard");
    }
    if result.is_ok() && !hold_post {
        // a failure whose snapshots are kept has no hook point: nothing was decided yet
        let point = match (success, keep) {
            (true, _) => Some(HookPoint::PostSuccess),
            (false, false) => Some(HookPoint::PostRollback),
            (false, true) => None,
        };
        if let Some(p) = point {
            hooks::run_point_reporting(&opts.hooks, p, &env);
        }
        if let Some(t) = down_from {
            rollback::record_downtime(journal, rec, &opts.hooks, t);
        }
    }
    match result {
        Ok(todo) => todo,
        Err(e) => {
            ui::error(&e.to_string());
            vec![format!(
                "guard could not finish run {id}: {e}; run `guard recover` after fixing the cause"
            )]
        }
    }
}

/// A prepared trial boot: armed when the change was kept after success, else ended (its
/// copies removed; a rollback put /boot back already).
fn settle_trial(
    journal: &Journal,
    rec: &mut RunRecord,
    kept_success: bool,
    result: Result<Vec<String>>,
) -> Result<Vec<String>> {
    use crate::model::record::TrialState;
    if rec.trial.as_ref().map(|t| t.state) != Some(TrialState::Prepared) {
        return result;
    }
    let mut todo = result?;
    if kept_success {
        match crate::boot::arm(rec, journal) {
            Ok(msg) => {
                ui::say(&msg);
                todo.push(msg);
            }
            Err(e) => {
                let why = format!("trial boot not armed: {e}");
                ui::error(&format!("{why}; the run stays kept"));
                for p in crate::boot::disarm(rec, TrialState::Ended, Some(why.clone())) {
                    ui::warn(&p);
                }
                todo.push(format!("{why}; reboot and check by hand, then `guard commit {}` or `guard rollback {}`", rec.id, rec.id));
            }
        }
    } else {
        for p in crate::boot::disarm(
            rec,
            TrialState::Ended,
            Some("no trial boot: the change was not kept".into()),
        ) {
            ui::warn(&p);
        }
    }
    journal.write(rec)?;
    Ok(todo)
}

/// `--on-failure ask`: on a terminal, show what happened and ask. Without an answer (no
/// terminal, end of input) the safe default is the rollback.
fn ask_after_failure(rec: &RunRecord, watcher: &Watcher) -> OnFailure {
    use std::io::{BufRead, Write};
    let Ok(tty) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
    else {
        ui::warn("--on-failure ask: no terminal to ask on; rolling back");
        return OnFailure::Rollback;
    };
    let mut out = &tty;
    let _ = writeln!(
        out,
        "\nguard: the command failed: {}",
        rec.reason.as_deref().unwrap_or("?")
    );
    for it in &watcher.items {
        let _ = writeln!(
            out,
            "  {}: snapshot use peaked at {:.1}%",
            it.name(),
            it.max_pct
        );
    }
    let mut reader = std::io::BufReader::new(&tty);
    loop {
        let _ = write!(
            out,
            "Roll back now [r], or keep the snapshots to decide later [k]? [r] "
        );
        let _ = out.flush();
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return OnFailure::Rollback,
            Ok(_) => match line.trim().to_lowercase().as_str() {
                "" | "r" | "rollback" => return OnFailure::Rollback,
                "k" | "keep" => return OnFailure::Keep,
                _ => {
                    let _ = writeln!(out, "please answer r or k");
                }
            },
        }
    }
}

fn keep_run(
    lvm: &dyn Lvm,
    journal: &Journal,
    rec: &mut RunRecord,
    keep: Option<Duration>,
) -> Result<Vec<String>> {
    // room for a burst before anyone writes again (recorded with the phase below)
    crate::watch::background::room_for_keeping(lvm, rec);
    rec.phase = Phase::Kept;
    rec.final_state = Some(Final::Kept);
    rec.keep_until = keep
        .map(|d| humantime::format_rfc3339_seconds(std::time::SystemTime::now() + d).to_string());
    journal.write(rec)?;
    let id = &rec.id;
    let mut todo = vec![format!(
        "snapshots kept: `guard commit {id}` keeps the change, `guard rollback {id}` undoes it"
    )];
    if let Some(until) = &rec.keep_until {
        todo.push(format!("after {until} `guard recover --expire` commits it"));
    }
    // Kept snapshots still fill as the origin changes: hand the run over to the background
    // watcher, and leave only once it has taken the run on.
    crate::watch::background::hand_off(&rec.id);
    Ok(todo)
}

/// Removes the run's snapshots: the change stays.
pub fn commit(lvm: &dyn Lvm, journal: &Journal, rec: &mut RunRecord) -> Result<()> {
    // `guard mount`'s mounts first: a mounted snapshot cannot be removed
    crate::ops::see::release_mounts(journal, rec)?;
    // a trial still armed would boot into a fallback whose snapshots are gone
    end_trial(rec, "committed");
    rec.phase = Phase::Committing;
    journal.write(rec)?;
    for (i, t) in rec.targets.iter().enumerate() {
        crate::fault::pause(&format!("before-remove-{}", i + 1));
        lvm.remove(&t.vg, &t.snapshot)?;
    }
    rec.phase = Phase::Done;
    rec.final_state = Some(Final::Committed);
    crate::store::saved::discard(&rec.id);
    rec.saved.clear();
    journal.write(rec)
}

/// Ends a trial that is still prepared or armed (commit, rollback): GRUB boots normally again.
/// A fallen-back trial's entries are ended by a commit only: a rollback's restore of /boot
/// removes them itself, and until it has, they keep booting the kernel that matches the
/// rolled-back /.
pub fn end_trial(rec: &mut RunRecord, how: &str) {
    use crate::model::record::TrialState;
    let problems = match rec.trial.as_ref().map(|t| (t.state, t.note.clone())) {
        Some((TrialState::Prepared | TrialState::Armed, _)) => crate::boot::disarm(
            rec,
            TrialState::Ended,
            Some(format!("trial ended: the run was {how}")),
        ),
        // its fallback entry must not outlive the run (a commit would leave it booting the
        // old kernel on the new / for good); what happened stays recorded
        Some((TrialState::FellBack, note)) if how == "committed" => {
            crate::boot::disarm(rec, TrialState::FellBack, note)
        }
        _ => vec![],
    };
    for p in problems {
        ui::warn(&p);
    }
}

fn emit_report(report: &Report, opts: &RunOptions) {
    let text = report.human();
    ui::print_block(&text);
    // The summary's first line is the run's outcome: the line a later reader looks for.
    if let Some(first) = text.lines().next() {
        crate::log::structured(
            Kind::CommandResult,
            first.trim_start_matches("guard: "),
            &[
                (
                    "GUARD_OUTCOME",
                    format!("{:?}", report.outcome).to_lowercase(),
                ),
                (
                    "GUARD_EXIT_STATUS",
                    report
                        .exit_status
                        .map(|c| c.to_string())
                        .unwrap_or_default(),
                ),
            ],
        );
    }
    if opts.json {
        ui::print_block(&format!("{}\n", report.json()));
    }
    if let Some(path) = &opts.report_file {
        if let Err(e) = std::fs::write(path, format!("{}\n", report.json())) {
            ui::error(&format!(
                "cannot write the report to {}: {e}",
                path.display()
            ));
        }
    }
}

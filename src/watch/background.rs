//! `guard watch`: the COW watcher for runs kept after their command (`--keep`, `--on-success
//! keep`, `--on-failure keep`) and for rollbacks scheduled for the origin's next activation. A
//! kept snapshot still fills as the origin changes, and a full one is invalidated: the rollback
//! point the operator kept would be lost without a word. So the same watcher that guards a
//! running command extends kept snapshots (and thin pools) early. A snapshot whose merge is
//! pending cannot be extended (LVM refuses), so guard grows it before scheduling the merge
//! (`room_for_deferred_merges`), and the watcher reads its use and warns while it waits.
//!
//! It never freezes a filesystem (the change was accepted for now; production runs on it): when
//! the VG has no room it says so loudly, in the journal and the system log, and carries on.
//! Started by guard when it keeps a run or schedules a rollback (as the unit guard-watch under
//! systemd, restarted if it fails), it re-reads the journal every second when it changed, the
//! VGs' free space every 10 s, and ends when no such run is left. An lvs or journal error is
//! logged and retried with a growing pause; it does not end the watch.
use crate::error::Result;
use crate::lvm::{self, Lvm};
use crate::model::TargetState;
use crate::run::child::SignalState;
use crate::size::human;
use crate::store::journal::{Journal, Phase, RunRecord};
use crate::store::{Open, SecureDir};
use crate::ui;
use crate::watch::model::{kept_room, merge_room, KEPT_RESERVE};
use crate::watch::{Event, WatchConfig, WatchItem, Watcher, WhenFull, BACKGROUND_EXTEND_AT};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The runs whose snapshots wait: kept ones, and rollbacks waiting for the next activation
/// (between the failure and a reboot hours away the origin keeps changing). The flag says that
/// some record could not be read: it may be a kept run, so the watcher must not end on "nothing
/// left" because of it (an exit 0 is not restarted).
fn watched(journal: &Journal) -> (Vec<RunRecord>, bool) {
    let (runs, problems) = journal.list();
    for p in &problems {
        ui::warn(&format!("guard watch: {p}"));
    }
    let runs = runs
        .into_iter()
        .filter(|r| matches!(r.phase, Phase::Kept | Phase::RollbackScheduled))
        .collect();
    (runs, !problems.is_empty())
}

fn watcher_for(rec: &RunRecord, lvs: &[lvm::Lv]) -> Option<Watcher> {
    let mut items = Vec::new();
    for t in &rec.targets {
        // of a scheduled rollback, only what still waits for its merge
        if rec.phase == Phase::RollbackScheduled && t.rollback != Some(TargetState::Scheduled) {
            continue;
        }
        let Some(origin) = lvm::find(lvs, &t.vg, &t.lv) else {
            continue;
        };
        let Some(snap) = lvm::find(lvs, &t.vg, &t.snapshot) else {
            continue;
        };
        if snap.invalid {
            continue;
        }
        let item = match &origin.pool {
            Some(pool) => {
                let size = lvm::find(lvs, &t.vg, pool).map(|p| p.size).unwrap_or(0);
                WatchItem::pool(
                    &t.vg,
                    &t.lv,
                    pool,
                    size,
                    origin.extent_size,
                    t.mountpoints.clone(),
                )
            }
            None => WatchItem::snapshot(
                &t.vg,
                &t.lv,
                &t.snapshot,
                snap.size,
                origin.extent_size,
                t.mountpoints.clone(),
            ),
        };
        // a pending merge: still a snapshot target until the activation, read as one (it
        // cannot be extended: merge_room grew it before)
        items.push(if snap.merging {
            item.merge_pending()
        } else if rec.phase == Phase::Kept {
            item.kept(origin.size)
        } else {
            item
        });
    }
    if items.is_empty() {
        return None;
    }
    let free: BTreeMap<String, u64> = lvm::vgs_from_lvs(lvs)
        .into_iter()
        .map(|v| (v.name, v.free))
        .collect();
    let cfg = WatchConfig {
        extend_at: BACKGROUND_EXTEND_AT,
        when_full: WhenFull::Continue,
    };
    Some(Watcher::new(items, free, cfg, &rec.id))
}

// In the lock folder, opened through store.rs (O_NOFOLLOW, checked): a forged watch.ready
// would tell guard a run is watched when it is not.
const READY: &str = "watch.ready";
const READY_TMP: &str = "watch.tmp";

/// Tells a guard that handed a run over which runs are watched now (one id a line).
fn announce(dir: &SecureDir, ids: &[String]) {
    use std::io::Write;
    // made anew (O_EXCL), never an old file or whatever a name points to
    let _ = dir.remove(READY_TMP);
    let written = dir
        .open(READY_TMP, Open::CreateNew)
        .and_then(|mut f| {
            f.write_all((ids.join("\n") + "\n").as_bytes())
                .map_err(|e| crate::error::Error::io("cannot write watch.tmp", e))
        })
        .is_ok();
    if written {
        let _ = dir.rename(READY_TMP, READY);
    }
}

/// Whether the background watcher has taken the run on.
pub fn is_watched(run: &str) -> bool {
    crate::store::lock::open_lock_dir()
        .and_then(|d| d.read_to_string(READY))
        .ok()
        .flatten()
        .is_some_and(|t| t.lines().any(|l| l == run))
}

/// Puts what a watcher did into its run's journal record, if the run still waits. The events
/// stay with the watcher until the write succeeds.
fn save_events(journal: &Journal, id: &str, w: &mut Watcher) -> Result<()> {
    if w.events.is_empty() {
        return Ok(());
    }
    // Under the run's lock, on the record as it is now: never "kept" written back over a
    // commit or rollback that finished meanwhile. A run held by another command keeps its
    // events for the next try.
    let Some(_lock) = crate::store::lock::try_lock_run(id)? else {
        return Ok(());
    };
    // an error keeps the events for the next try
    let mut rec = journal.load(id)?;
    if matches!(rec.phase, Phase::Kept | Phase::RollbackScheduled) {
        rec.events.extend(w.events.iter().cloned());
        // by name: the watcher has no item for a target it could not watch
        for t in rec.targets.iter_mut() {
            if let Some(it) = w.items.iter().find(|i| i.vg == t.vg && i.lv == t.lv) {
                // what this watcher did since its last save, on top of the run's own (a
                // rebuilt watcher starts from 0: its own deltas only)
                t.extensions = t
                    .extensions
                    .saturating_add(it.extensions.saturating_sub(it.extensions_saved));
                t.added_bytes = t
                    .added_bytes
                    .saturating_add(it.added.saturating_sub(it.added_saved));
                // a kept snapshot's size and use as they are now (a pool's growth is counted
                // from each watcher's start: only the run's own figure stands for it)
                if !t.thin && it.size > 0 {
                    t.cow_bytes = Some(t.cow_bytes.unwrap_or(0).max(it.size));
                    if let Some(p) = it.peak_growth {
                        t.peak_used_bytes = Some(t.peak_used_bytes.unwrap_or(0).max(p));
                    }
                }
                // rollback::merge_ended_badly reads it after the activation
                t.invalidated |= it.invalid;
            }
        }
        journal.write(&mut rec)?;
    }
    for it in w.items.iter_mut() {
        it.added_saved = it.added;
        it.extensions_saved = it.extensions;
    }
    w.events.clear();
    Ok(())
}

/// Saves every watcher's events; a failure is logged, and they are saved with the next try.
fn save_all(journal: &Journal, watchers: &mut [(String, Watcher)]) {
    for (id, w) in watchers.iter_mut() {
        if let Err(e) = save_events(journal, id, w) {
            ui::warn(&format!(
                "guard watch: cannot record run {id}'s events yet: {e}"
            ));
        }
    }
}

/// Watches every kept run until none is left (or `once`: for one `period`). The journal is
/// read every second, so a newly kept run is taken on at once; `lvs` only when the set changes.
pub fn watch(lvm: &dyn Lvm, journal: &Journal, period: Duration, once: bool) -> Result<i32> {
    // One watcher for all kept runs: a second `guard watch` leaves it to the first.
    let dir = crate::store::lock::open_lock_dir()?;
    let file = dir.open("watch.lock", Open::Create)?;
    let Ok(_lock) = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
    else {
        ui::say("another guard watch is already watching the kept runs");
        return Ok(0);
    };
    let sig = SignalState::install()?;
    let started = Instant::now();
    let mut watchers: Vec<(String, Watcher)> = Vec::new();
    // with their phases: a kept run whose rollback was scheduled since is watched anew
    let mut seen_runs: Vec<(String, Phase)> = Vec::new();
    let mut last_read = Instant::now() - Duration::from_secs(10);
    // Every journal write is a rename into the runs folder: its mtime says when to read again.
    let mut seen_change = None;
    let mut last_save = Instant::now();
    let mut last_vgs = Instant::now();
    let mut retry = Retry::default();
    loop {
        let due = last_read.elapsed() >= Duration::from_secs(1) && retry.due();
        let changed = due
            .then(|| {
                std::fs::metadata(journal.dir())
                    .and_then(|m| m.modified())
                    .ok()
            })
            .flatten();
        if due && (changed.is_none() || changed != seen_change || last_read.elapsed() >= period) {
            last_read = Instant::now();
            let (runs, unreadable) = watched(journal);
            let now_runs: Vec<(String, Phase)> =
                runs.iter().map(|r| (r.id.clone(), r.phase)).collect();
            if now_runs == seen_runs {
                seen_change = changed;
            } else {
                save_all(journal, &mut watchers);
                if runs.is_empty() && !unreadable {
                    let _ = dir.remove(READY);
                    ui::say("no kept run or scheduled rollback left to watch");
                    return Ok(0);
                }
                match lvm.lvs() {
                    Ok(lvs) => {
                        retry.ok();
                        seen_change = changed;
                        watchers = runs
                            .iter()
                            .filter_map(|r| watcher_for(r, &lvs).map(|w| (r.id.clone(), w)))
                            .collect();
                        let ids: Vec<String> = now_runs.iter().map(|(id, _)| id.clone()).collect();
                        seen_runs = now_runs;
                        last_vgs = Instant::now();
                        announce(&dir, &ids);
                        ui::say(&format!(
                            "watching the snapshots of run(s) {} (kept, or rollback scheduled)",
                            ids.join(", ")
                        ));
                    }
                    // the old watchers go on; the journal is read again after the pause
                    Err(e) => retry.failed("lvs", &e),
                }
            }
        }
        // The VGs' free space changes under the watcher (an added disk, a removed LV, other
        // LVs growing): read it again, sooner while some VG is full.
        let vgs_due = if watchers.iter().any(|(_, w)| w.vg_full()) {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(10)
        };
        if !watchers.is_empty() && last_vgs.elapsed() >= vgs_due && retry.due() {
            last_vgs = Instant::now();
            match lvm.vgs() {
                Ok(vgs) => {
                    retry.ok();
                    for (_, w) in watchers.iter_mut() {
                        for v in &vgs {
                            w.set_vg_free(&v.name, v.free);
                        }
                    }
                }
                Err(e) => retry.failed("vgs", &e),
            }
        }
        let mut next = Duration::from_millis(500);
        for (_, w) in watchers.iter_mut() {
            next = next.min(w.step());
        }
        if sig.take_terminate() || (once && started.elapsed() >= period) {
            break;
        }
        if last_save.elapsed() >= period || watchers.iter().any(|(_, w)| w.events.len() > 100) {
            last_save = Instant::now();
            save_all(journal, &mut watchers);
        }
        std::thread::sleep(next);
    }
    save_all(journal, &mut watchers);
    let _ = dir.remove(READY);
    Ok(0)
}

/// Transient errors (lvs, vgs) are logged and retried after a pause that doubles up to a
/// minute: a watcher that ended on the first one would leave the snapshots unwatched.
#[derive(Default)]
struct Retry {
    pause: Duration,
    until: Option<Instant>,
}

impl Retry {
    fn due(&self) -> bool {
        self.until.is_none_or(|t| Instant::now() >= t)
    }
    fn ok(&mut self) {
        self.pause = Duration::ZERO;
        self.until = None;
    }
    fn failed(&mut self, what: &str, e: &crate::error::Error) {
        self.pause = (self.pause * 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
        self.until = Some(Instant::now() + self.pause);
        ui::warn(&format!(
            "guard watch: {what} failed ({e}); trying again in {}s",
            self.pause.as_secs()
        ));
    }
}

/// Hands a run just kept, or whose rollback was just scheduled, over to the background
/// watcher, and returns once it has taken the run on (or after 10 s, with a warning).
pub fn hand_off(run: &str) {
    if start_background() {
        let until = Instant::now() + Duration::from_secs(10);
        while !is_watched(run) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if !is_watched(run) {
        ui::warn(&format!("no background watcher took run {run} on: its snapshots fill unwatched; run `guard watch` (or check them with `guard status`)"));
    }
}

/// Starts `guard watch` in the background: the unit guard-watch under systemd (the shipped
/// one, else a transient one), restarted if it fails; else a detached process. Best effort:
/// `guard status` still shows the use. Returns whether a watcher was started (or is running).
pub fn start_background() -> bool {
    let me = std::env::current_exe().unwrap_or_else(|_| "/usr/sbin/guard".into());
    // Only the guard binary itself (not a test harness linking the library) starts a watcher.
    if me.file_name().and_then(|n| n.to_str()) != Some("guard") {
        return false;
    }
    if std::path::Path::new("/run/systemd/system").exists() {
        // the shipped unit (dist/systemd/guard-watch.service), or the transient one running
        let started = crate::exec::system_command("systemctl")
            .map(|mut c| {
                c.args(["start", "--quiet", "guard-watch.service"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .unwrap_or(false);
        if started {
            return true;
        }
        if let Ok(mut c) = crate::exec::system_command("systemd-run") {
            let ok = c
                .args([
                    "--unit",
                    "guard-watch",
                    "--description",
                    "guard: watch kept snapshots and pending rollbacks",
                    // a crash or an error exit must not leave the snapshots unwatched; it exits
                    // 0 when no run is left
                    "-p",
                    "Restart=on-failure",
                    "-p",
                    "RestartSec=5s",
                    "--collect",
                    "--quiet",
                ])
                .arg(&me)
                .arg("watch")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            // a unit of that name already running watches every kept run: also fine
            if ok || unit_active() {
                return true;
            }
        }
    }
    use std::os::unix::process::CommandExt;
    std::process::Command::new(&me)
        .arg("watch")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .is_ok()
}

/// Grows the thick snapshots of a run about to be rolled back whose origin is in use, so that
/// LVM will defer the merge to the next activation: once the merge is pending LVM refuses to
/// extend the snapshot ("Can't resize internal logical volume"), and the origin keeps changing
/// until then. It grows to cover the whole origin when the VG has the room (it can then never
/// fill), else as far as the VG allows, and says what is left (see model::merge_room). The
/// space comes back when the merge completes. Best effort: a failure is a warning.
pub fn room_for_deferred_merges(lvm: &dyn Lvm, rec: &mut RunRecord) {
    grow_snapshots(lvm, rec, Growth::DeferredMerge);
}

/// Grows the thick snapshots of a run about to be kept to their reserve (model::kept_room)
/// before the background watcher takes them on: a burst right after guard returns must not
/// find only the few MiB a small snapshot has free while the watcher's first lvextend runs.
pub fn room_for_keeping(lvm: &dyn Lvm, rec: &mut RunRecord) {
    grow_snapshots(lvm, rec, Growth::Kept);
}

#[derive(Clone, Copy, PartialEq)]
enum Growth {
    DeferredMerge,
    Kept,
}

fn grow_snapshots(lvm: &dyn Lvm, rec: &mut RunRecord, why: Growth) {
    // Without a mounted thick target a deferred merge has nothing in use to wait for (the rest
    // merges at once): no lvs. Else every thick target whose origin is open (a mount, or
    // something else holding it) grows; and any thick target can be written while it is kept.
    let mounted = |t: &crate::store::journal::TargetRecord| !t.thin && !t.mountpoints.is_empty();
    if !rec
        .targets
        .iter()
        .any(|t| !t.thin && (why == Growth::Kept || mounted(t)))
    {
        return;
    }
    let lvs = match lvm.lvs() {
        Ok(l) => l,
        Err(e) => {
            short_of_room(rec, why, &format!("cannot read the volumes ({e})"));
            return;
        }
    };
    let mut vg_free: BTreeMap<String, u64> = lvm::vgs_from_lvs(&lvs)
        .into_iter()
        .map(|v| (v.name, v.free))
        .collect();
    // the targets to grow, with their origin and snapshot as they are now
    let grow: Vec<(usize, lvm::Lv, lvm::Lv)> = rec
        .targets
        .iter()
        .enumerate()
        .filter(|(_, t)| !t.thin)
        .filter_map(|(i, t)| {
            let origin = lvm::find(&lvs, &t.vg, &t.lv)?;
            let snap = lvm::find(&lvs, &t.vg, &t.snapshot)?;
            let open = why == Growth::Kept || origin.open;
            (open && !snap.invalid && !snap.merging).then(|| (i, origin.clone(), snap.clone()))
        })
        .collect();
    // The VG's room is shared among the set's targets in it, not all given to the first. A kept
    // run's reserve also leaves a share to the rest: its thin targets' pools, other volumes.
    let mut waiting: BTreeMap<String, u64> = BTreeMap::new();
    for (i, _, _) in &grow {
        *waiting.entry(rec.targets[*i].vg.clone()).or_default() += 1;
    }
    if why == Growth::Kept {
        for t in rec.targets.iter().filter(|t| t.thin) {
            *waiting.entry(t.vg.clone()).or_default() += 1;
        }
        for n in waiting.values_mut() {
            *n += 1;
        }
    }
    let mut events = Vec::new();
    for (i, origin, snap) in grow {
        let t = &mut rec.targets[i];
        let share = waiting.get(&t.vg).copied().unwrap_or(1).max(1);
        if let Some(n) = waiting.get_mut(&t.vg) {
            *n = n.saturating_sub(1);
        }
        let free = vg_free.get(&t.vg).copied().unwrap_or(0) / share;
        let used = (snap.size as f64 * snap.snap_percent.unwrap_or(0.0) / 100.0) as u64;
        let (add, enough) = match why {
            Growth::DeferredMerge => merge_room(origin.size, snap.size, origin.extent_size, free),
            Growth::Kept => kept_room(origin.size, snap.size, used, origin.extent_size, free),
        };
        let name = format!("{}/{}", t.vg, t.lv);
        if add > 0 {
            match lvm.extend(&t.vg, &t.snapshot, add) {
                Ok(()) => {
                    if let Some(f) = vg_free.get_mut(&t.vg) {
                        *f = f.saturating_sub(add);
                    }
                    t.cow_bytes = Some(snap.size + add);
                    if why == Growth::Kept {
                        // never trimmed by LVM (model::covered_at): the size it has now
                        t.added_bytes = t.added_bytes.saturating_add(add);
                        t.extensions = t.extensions.saturating_add(1);
                    }
                    let detail = format!(
                        "snapshot {}/{} +{} {}",
                        t.vg,
                        t.snapshot,
                        human(add),
                        match why {
                            Growth::DeferredMerge =>
                                "before its merge is scheduled (LVM cannot extend it once the merge is pending)",
                            Growth::Kept =>
                                "as it is kept: the background watcher cannot pause a writer while it extends, so a kept snapshot keeps room for a burst",
                        }
                    );
                    ui::say(&format!("{name}: extended {detail}"));
                    events.push(Event {
                        at: crate::store::journal::now_rfc3339(),
                        kind: "extended".into(),
                        lv: name.clone(),
                        detail,
                    });
                }
                Err(e) => {
                    ui::warn(&format!("{name}: cannot grow its snapshot: {e}"));
                    if why == Growth::Kept {
                        events.push(keep_room_short(&name, &format!("lvextend failed ({e})")));
                    }
                    continue;
                }
            }
        }
        if !enough {
            let room = human(snap.size + add);
            let event = match why {
                Growth::DeferredMerge => Event {
                    at: crate::store::journal::now_rfc3339(),
                    kind: "merge-room-short".into(),
                    lv: name.clone(),
                    detail: format!(
                        "volume group {} has no room to cover all of {name} ({}): its scheduled rollback is lost if the writes to it before the merge completes fill the snapshot's {room}",
                        t.vg,
                        human(origin.size),
                    ),
                },
                Growth::Kept => keep_room_short(
                    &name,
                    &format!("volume group {} has no room for it; the snapshot has {room}", t.vg),
                ),
            };
            ui::warn(&format!("{name}: {}", event.detail));
            events.push(event);
        }
    }
    rec.events.extend(events);
}

/// A kept snapshot left without its reserve (model::KEPT_RESERVE): said, and recorded.
fn keep_room_short(name: &str, why: &str) -> Event {
    Event {
        at: crate::store::journal::now_rfc3339(),
        kind: "keep-room-short".into(),
        lv: name.into(),
        detail: format!(
            "no reserve of {} for the kept snapshot of {name}: {why}; a burst of writes may fill it before the background watcher's extension lands",
            human(KEPT_RESERVE)
        ),
    }
}

/// Growth that could not even be planned: a warning, and for a kept run an event per target.
fn short_of_room(rec: &mut RunRecord, why: Growth, what: &str) {
    if why != Growth::Kept {
        ui::warn(&format!(
            "cannot grow the snapshots before the merge: {what}"
        ));
        return;
    }
    let events: Vec<Event> = rec
        .targets
        .iter()
        .filter(|t| !t.thin)
        .map(|t| keep_room_short(&format!("{}/{}", t.vg, t.lv), what))
        .collect();
    for e in &events {
        ui::warn(&format!("{}: {}", e.lv, e.detail));
    }
    rec.events.extend(events);
}

fn unit_active() -> bool {
    crate::exec::system_command("systemctl")
        .map(|mut c| {
            c.args(["is-active", "--quiet", "guard-watch"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{secure_dir, Folder};

    fn record(phase: &str, targets: serde_json::Value) -> RunRecord {
        serde_json::from_value(serde_json::json!({
            "schema": 1, "id": "20261127-004010-abcd", "started": "", "updated": "",
            "command": ["false"], "guard_pid": 1, "guard_start": 1, "child_pid": null,
            "child_start": null, "phase": phase, "on_failure": "rollback",
            "on_success": "discard", "keep_until": null, "outcome": "failure",
            "exit_status": 1, "reason": null, "final_state": null, "targets": targets
        }))
        .unwrap()
    }

    fn target(lv: &str, snap: &str, rollback: Option<&str>) -> serde_json::Value {
        serde_json::json!({"vg": "vg", "lv": lv, "snapshot": snap, "thin": false,
            "cow_bytes": 8388608, "mountpoints": ["/srv"], "rollback": rollback})
    }

    fn merging_lvs() -> Vec<lvm::Lv> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/lvs-merging.json"
        );
        crate::lvm::report::parse_lvs(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn a_scheduled_rollback_is_watched_and_its_pending_merge_not_extended() {
        let lvs = merging_lvs();
        // the fixture: [data-snap] merging into data at the next activation
        let rec = record(
            "rollback-scheduled",
            serde_json::json!([target("data", "data-snap", Some("scheduled"))]),
        );
        let w = watcher_for(&rec, &lvs).expect("a scheduled rollback is watched");
        assert_eq!(w.items.len(), 1);
        assert!(
            !w.items[0].extendable,
            "LVM refuses to extend a merging snapshot"
        );
        // a target whose merge already completed is not
        let rec = record(
            "rollback-scheduled",
            serde_json::json!([target("data", "data-snap", Some("done"))]),
        );
        assert!(watcher_for(&rec, &lvs).is_none());
    }

    #[test]
    fn events_go_to_the_target_of_the_same_name() {
        let d = tempfile::tempdir().unwrap();
        let journal = Journal::at(d.path().join("runs"));
        // two targets; the watcher could only watch the second
        let mut rec = record(
            "kept",
            serde_json::json!([
                target("gone", "gone-snap", None),
                target("data", "data-snap", None)
            ]),
        );
        journal.write(&mut rec).unwrap();
        let lvs = merging_lvs();
        let mut w = watcher_for(&rec, &lvs).unwrap();
        w.items[0].extensions = 2;
        w.items[0].invalid = true;
        w.events.push(Event {
            at: String::new(),
            kind: "extended".into(),
            lv: "vg/data".into(),
            detail: String::new(),
        });
        w.items[0].added = 8 << 20;
        save_events(&journal, &rec.id, &mut w).unwrap();
        let back = journal.load(&rec.id).unwrap();
        assert_eq!(
            (back.targets[0].extensions, back.targets[0].invalidated),
            (0, false)
        );
        assert_eq!(
            (back.targets[1].extensions, back.targets[1].invalidated),
            (2, true)
        );
        assert_eq!(back.targets[1].added_bytes, 8 << 20);
        assert_eq!(back.events.len(), 1);
        assert!(w.events.is_empty());
        // one more extension: only it is added, not the two saved already
        w.items[0].extensions = 3;
        w.items[0].added = 12 << 20;
        w.events.push(Event {
            at: String::new(),
            kind: "extended".into(),
            lv: "vg/data".into(),
            detail: String::new(),
        });
        save_events(&journal, &rec.id, &mut w).unwrap();
        let back = journal.load(&rec.id).unwrap();
        assert_eq!(back.targets[1].extensions, 3);
        assert_eq!(back.targets[1].added_bytes, 12 << 20);
    }

    #[test]
    fn announce_never_writes_through_a_planted_symlink_nor_reads_one() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let dir = secure_dir(&d.path().join("locks"), Folder::Runtime).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(READY_TMP)).unwrap();
        announce(&dir, &["R1".into()]);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(dir.read_to_string(READY).unwrap().as_deref(), Some("R1\n"));
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(dir.join(READY)).unwrap().mode() & 0o7777,
            0o600
        );
        // a forged watch.ready (a link to a file listing any run) is refused
        std::fs::remove_file(dir.join(READY)).unwrap();
        std::fs::write(d.path().join("forged"), "R2\n").unwrap();
        std::os::unix::fs::symlink(d.path().join("forged"), dir.join(READY)).unwrap();
        assert!(dir.read_to_string(READY).is_err());
    }
}

//! `guard watch`: the COW watcher for runs kept after their command (`--keep`, `--on-success
//! keep`, `--on-failure keep`). A kept snapshot still fills as the origin changes, and a full one
//! is invalidated: the rollback point the operator kept would be lost without a word. So the same
//! watcher that guards a running command extends kept snapshots (and thin pools) early.
//!
//! It never freezes a filesystem (the change was accepted for now; production runs on it): when
//! the VG has no room it says so loudly, in the journal and the system log, and carries on.
//! Started by guard when it keeps a run (as the transient unit guard-watch under systemd), it
//! re-reads the journal every minute and ends when no kept run is left.
use crate::child::SignalState;
use crate::error::Result;
use crate::journal::{Journal, Phase, RunRecord};
use crate::lvm::{self, Lvm};
use crate::ui;
use crate::watcher::{WatchConfig, WatchItem, Watcher, WhenFull, DEFAULT_EXTEND_AT};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn kept(journal: &Journal) -> Vec<RunRecord> {
    journal
        .list()
        .0
        .into_iter()
        .filter(|r| r.phase == Phase::Kept)
        .collect()
}

fn watcher_for(rec: &RunRecord, lvs: &[lvm::Lv]) -> Option<Watcher> {
    let mut items = Vec::new();
    for t in &rec.targets {
        let Some(origin) = lvm::find(lvs, &t.vg, &t.lv) else {
            continue;
        };
        let Some(snap) = lvm::find(lvs, &t.vg, &t.snapshot) else {
            continue;
        };
        if snap.invalid || snap.merging {
            continue;
        }
        items.push(match &origin.pool {
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
        extend_at: DEFAULT_EXTEND_AT,
        when_full: WhenFull::Continue,
    };
    Some(Watcher::new(items, free, cfg, &rec.id))
}

fn ready_file() -> std::path::PathBuf {
    crate::lock::lock_dir().join("watch.ready")
}

/// Tells a guard that handed a run over which runs are watched now (one id a line).
fn announce(ids: &[String]) {
    let path = ready_file();
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, ids.join("\n") + "\n").is_ok() {
        let _ = std::fs::rename(&tmp, &path);
    }
}

/// Whether the background watcher has taken the run on.
pub fn is_watched(run: &str) -> bool {
    std::fs::read_to_string(ready_file())
        .map(|t| t.lines().any(|l| l == run))
        .unwrap_or(false)
}

/// Puts what a watcher did into its run's journal record, if the run is still kept.
fn save_events(journal: &Journal, id: &str, w: &mut Watcher) -> Result<()> {
    if w.events.is_empty() {
        return Ok(());
    }
    if let Ok(mut rec) = journal.load(id) {
        if rec.phase == Phase::Kept {
            rec.events.extend(std::mem::take(&mut w.events));
            for (t, it) in rec.targets.iter_mut().zip(&w.items) {
                t.extensions = t.extensions.max(it.extensions);
                t.invalidated |= it.invalid;
            }
            journal.write(&mut rec)?;
        }
    }
    Ok(())
}

/// Watches every kept run until none is left (or `once`: for one `period`). The journal is
/// read every second, so a newly kept run is taken on at once; `lvs` only when the set changes.
pub fn watch(lvm: &dyn Lvm, journal: &Journal, period: Duration, once: bool) -> Result<i32> {
    // One watcher for all kept runs: a second `guard watch` leaves it to the first.
    let dir = crate::lock::lock_dir();
    let _ = std::fs::create_dir_all(&dir);
    let file = std::fs::File::create(dir.join("watch.lock"))
        .map_err(|e| crate::error::Error::io("cannot open the watch lock", e))?;
    let Ok(_lock) = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
    else {
        ui::say("another guard watch is already watching the kept runs");
        return Ok(0);
    };
    let sig = SignalState::install()?;
    let started = Instant::now();
    let mut watchers: Vec<(String, Watcher)> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    let mut last_read = Instant::now() - Duration::from_secs(10);
    // Every journal write is a rename into the runs folder: its mtime says when to read again.
    let mut seen_change = None;
    let mut last_save = Instant::now();
    loop {
        let due = last_read.elapsed() >= Duration::from_secs(1);
        let changed = due
            .then(|| {
                std::fs::metadata(journal.dir())
                    .and_then(|m| m.modified())
                    .ok()
            })
            .flatten();
        if due && (changed.is_none() || changed != seen_change || last_read.elapsed() >= period) {
            last_read = Instant::now();
            seen_change = changed;
            let runs = kept(journal);
            let now_ids: Vec<String> = runs.iter().map(|r| r.id.clone()).collect();
            if now_ids != ids {
                for (id, w) in watchers.iter_mut() {
                    save_events(journal, id, w)?;
                }
                if runs.is_empty() {
                    let _ = std::fs::remove_file(ready_file());
                    ui::say("no kept runs left to watch");
                    return Ok(0);
                }
                let lvs = lvm.lvs()?;
                watchers = runs
                    .iter()
                    .filter_map(|r| watcher_for(r, &lvs).map(|w| (r.id.clone(), w)))
                    .collect();
                ids = now_ids;
                announce(&ids);
                ui::say(&format!(
                    "watching the snapshots of kept run(s) {}",
                    ids.join(", ")
                ));
            }
        }
        let mut next = Duration::from_millis(500);
        for (_, w) in watchers.iter_mut() {
            next = next.min(w.tick(&sig));
        }
        if sig.take_terminate() || (once && started.elapsed() >= period) {
            break;
        }
        if last_save.elapsed() >= period {
            last_save = Instant::now();
            for (id, w) in watchers.iter_mut() {
                save_events(journal, id, w)?;
            }
        }
        std::thread::sleep(next);
    }
    for (id, w) in watchers.iter_mut() {
        save_events(journal, id, w)?;
    }
    let _ = std::fs::remove_file(ready_file());
    Ok(0)
}

/// Starts `guard watch` in the background for a run just kept: a transient systemd unit where
/// systemd runs, else a detached process. Best effort: `guard status` still shows the use.
/// Returns whether a watcher was started (or is running).
pub fn start_background() -> bool {
    let me = std::env::current_exe().unwrap_or_else(|_| "/usr/sbin/guard".into());
    // Only the guard binary itself (not a test harness linking the library) starts a watcher.
    if me.file_name().and_then(|n| n.to_str()) != Some("guard") {
        return false;
    }
    if std::path::Path::new("/run/systemd/system").exists() {
        if let Ok(mut c) = crate::exec::system_command("systemd-run") {
            let ok = c
                .args([
                    "--unit",
                    "guard-watch",
                    "--description",
                    "guard: watch kept snapshots",
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

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

/// Watches every kept run until none is left (or `once`: one pass of `period`).
pub fn watch(lvm: &dyn Lvm, journal: &Journal, period: Duration, once: bool) -> Result<i32> {
    // One watcher for all kept runs: a second `guard watch` leaves it to the first.
    let dir = crate::lock::lock_dir();
    let _ = std::fs::create_dir_all(&dir);
    let file = std::fs::File::create(dir.join("watch.lock"))
        .map_err(|e| crate::error::Error::io("cannot open the watch lock", e))?;
    if nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_err() {
        ui::say("another guard watch is already watching the kept runs");
        return Ok(0);
    }
    let sig = SignalState::install()?;
    loop {
        let runs = kept(journal);
        if runs.is_empty() {
            ui::say("no kept runs to watch");
            return Ok(0);
        }
        let lvs = lvm.lvs()?;
        let mut watchers: Vec<(RunRecord, Watcher)> = runs
            .into_iter()
            .filter_map(|r| watcher_for(&r, &lvs).map(|w| (r, w)))
            .collect();
        ui::say(&format!(
            "watching the snapshots of {} kept run(s): {}",
            watchers.len(),
            watchers
                .iter()
                .map(|(r, _)| r.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let until = Instant::now() + period;
        while Instant::now() < until {
            let mut next = Duration::from_millis(500);
            for (_, w) in watchers.iter_mut() {
                next = next.min(w.tick(&sig));
            }
            if sig.take_terminate() {
                return Ok(0);
            }
            std::thread::sleep(next);
        }
        for (mut rec, mut w) in watchers {
            w.finish();
            if w.events.is_empty() {
                continue;
            }
            // The run may have been committed or rolled back meanwhile: only a kept run is updated.
            if let Ok(cur) = journal.load(&rec.id) {
                if cur.phase == Phase::Kept {
                    rec = cur;
                    rec.events.extend(w.events.clone());
                    for (t, it) in rec.targets.iter_mut().zip(&w.items) {
                        t.extensions += it.extensions;
                        t.invalidated |= it.invalid;
                    }
                    journal.write(&mut rec)?;
                }
            }
        }
        if once {
            return Ok(0);
        }
    }
}

/// Starts `guard watch` in the background for a run just kept: a transient systemd unit where
/// systemd runs, else a detached process. Best effort: `guard status` still shows the use.
pub fn start_background() {
    let me = std::env::current_exe().unwrap_or_else(|_| "/usr/sbin/guard".into());
    // Only the guard binary itself (not a test harness linking the library) starts a watcher.
    if me.file_name().and_then(|n| n.to_str()) != Some("guard") {
        return;
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
                return;
            }
        }
    }
    use std::os::unix::process::CommandExt;
    let _ = std::process::Command::new(&me)
        .arg("watch")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn();
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

//! The COW watcher. While the command runs it reads every thick snapshot's COW use (and every
//! thin pool's data and metadata use) straight from device-mapper, many times a second, and
//! keeps the rollback point alive:
//! - it extends early: at --extend-at percent, or sooner when the observed write rate, plus the
//!   dirty page cache that can still land without any new write, would fill the free space
//!   within the time an `lvextend` takes; the step grows with the rate;
//! - while an extension is on its way and cannot arrive in time, it pauses the command's
//!   process group (SIGSTOP), and lets it go on once the space is there;
//! - when the volume group (or pool) has no room left, it acts per --when-full: `freeze` the
//!   origin's filesystem (this also stops writers outside the command) and hold the command
//!   until the operator frees space (`guard resume RUN`) or asks for `guard rollback RUN`;
//!   `rollback` stops the command and rolls back; `continue` lets the snapshot fill, recorded as
//!   the operator's choice.
//!
//! Freezing comes before the COW is full, while it still has room for every dirty page of the
//! page cache: the freeze flushes them into the COW. And no lvm command touches a volume while
//! guard holds it frozen (on 6.1 kernels its suspend fails with EBUSY): resume thaws first.
use crate::child::SignalState;
use crate::dm::{self, Control, SnapshotUse};
use crate::exec::system_command;
use crate::freeze::Frozen;
use crate::size::human;
use crate::ui;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// Freeze the filesystem and hold the command until `guard resume` or `guard rollback`
    Freeze,
    /// Stop the command and roll back
    Rollback,
    /// Let the snapshot fill: the operator accepts losing the rollback point
    Continue,
}

#[derive(Debug, Clone, Copy)]
pub struct WatchConfig {
    pub extend_at: f64,
    pub when_full: WhenFull,
}

/// Why 50: LVM's own autoextend will not act below 50 %, and half the COW is the runway that
/// covers the 0.4–1.5 s one lvextend takes at moderate rates; faster writers trigger earlier
/// through the rate term.
pub const DEFAULT_EXTEND_AT: f64 = 50.0;
const FAST: Duration = Duration::from_millis(20);
const SLOW: Duration = Duration::from_millis(100);
const MIN_STEP: u64 = 8 << 20;
const RATE_WINDOW: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Event {
    pub at: String,
    pub kind: String,
    pub lv: String,
    pub detail: String,
}

#[derive(Debug, Clone)]
pub struct WatchItem {
    pub vg: String,
    /// The origin, VG-relative.
    pub lv: String,
    /// The snapshot, or for thin origins the pool, that is extended.
    pub extend_lv: String,
    pub thin: bool,
    pub dm: String,
    pub mountpoints: Vec<PathBuf>,
    /// Bytes per thin-pool data block (from the pool's size at the start).
    pub block_bytes: u64,
    pub extent: u64,
    pub size: u64,
    pub used: u64,
    pub meta_pct: f64,
    pub rate: f64,
    pub max_pct: f64,
    pub extensions: u32,
    pub invalid: bool,
    last: Option<Instant>,
    /// The sample before `last`: the crossing that triggers an action happened after it.
    prev: Option<Instant>,
    /// Recent (time, used) samples: the rate is measured over RATE_WINDOW, so that one fsync
    /// landing between two 20 ms samples does not read as a torrent.
    hist: std::collections::VecDeque<(Instant, u64)>,
}

impl WatchItem {
    pub fn snapshot(
        vg: &str,
        origin: &str,
        snap: &str,
        cow: u64,
        extent: u64,
        mounts: Vec<PathBuf>,
    ) -> Self {
        Self::new(
            vg,
            origin,
            snap,
            false,
            dm::dm_name(vg, snap),
            cow,
            extent,
            mounts,
        )
    }
    pub fn pool(
        vg: &str,
        origin: &str,
        pool: &str,
        pool_size: u64,
        extent: u64,
        mounts: Vec<PathBuf>,
    ) -> Self {
        Self::new(
            vg,
            origin,
            pool,
            true,
            format!("{}-tpool", dm::dm_name(vg, pool)),
            pool_size,
            extent,
            mounts,
        )
    }
    #[allow(clippy::too_many_arguments)]
    fn new(
        vg: &str,
        lv: &str,
        ext: &str,
        thin: bool,
        dm: String,
        size: u64,
        extent: u64,
        mounts: Vec<PathBuf>,
    ) -> Self {
        WatchItem {
            vg: vg.into(),
            lv: lv.into(),
            extend_lv: ext.into(),
            thin,
            dm,
            mountpoints: mounts,
            block_bytes: 0,
            extent,
            size,
            used: 0,
            meta_pct: 0.0,
            rate: 0.0,
            max_pct: 0.0,
            extensions: 0,
            invalid: false,
            last: None,
            prev: None,
            hist: std::collections::VecDeque::new(),
        }
    }
    pub fn name(&self) -> String {
        format!("{}/{}", self.vg, self.lv)
    }
    pub fn pct(&self) -> f64 {
        if self.size == 0 {
            0.0
        } else {
            self.used as f64 * 100.0 / self.size as f64
        }
    }
    fn free(&self) -> u64 {
        self.size.saturating_sub(self.used)
    }
}

/// Should this item be extended now? At the threshold, or when what can land within the
/// horizon (writes at the observed rate, plus the dirty page cache) would not fit.
pub fn needs_extension(
    size: u64,
    used: u64,
    rate: f64,
    dirty: u64,
    horizon: Duration,
    extend_at: f64,
) -> bool {
    let free = size.saturating_sub(used) as f64;
    let pct = if size == 0 {
        100.0
    } else {
        used as f64 * 100.0 / size as f64
    };
    pct >= extend_at || free < rate * horizon.as_secs_f64() * 2.0 + dirty as f64
}

/// How much to add: half the size, or what the rate fills in four horizons, or twice the dirty
/// cache, whichever is most; whole extents; capped by what the VG has. None: no room at all.
pub fn extension_step(
    size: u64,
    rate: f64,
    dirty: u64,
    horizon: Duration,
    extent: u64,
    vg_free: u64,
) -> Option<u64> {
    let extent = extent.max(1);
    let want = [
        size / 2,
        (rate * horizon.as_secs_f64() * 4.0) as u64,
        dirty * 2,
        MIN_STEP,
    ]
    .into_iter()
    .max()
    .unwrap_or(MIN_STEP);
    let want = want.div_ceil(extent) * extent;
    let room = vg_free / extent * extent;
    (room > 0).then(|| want.min(room))
}

/// Is the rollback point about to be lost: would the dirty cache plus the next moments of
/// writing no longer fit?
pub fn in_danger(size: u64, used: u64, rate: f64, dirty: u64) -> bool {
    let free = size.saturating_sub(used) as f64;
    let safety = (size as f64 * 0.02).max(1024.0 * 1024.0);
    free < dirty as f64 + rate * 0.1 + safety
}

/// Dirty + Writeback from /proc/meminfo: an upper bound on what can still land on any device
/// without a new write.
pub fn dirty_bytes() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/meminfo") else {
        return 0;
    };
    text.lines()
        .filter(|l| l.starts_with("Dirty:") || l.starts_with("Writeback:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum::<u64>()
        * 1024
}

struct InFlight {
    child: Child,
    item: usize,
    bytes: u64,
    started: Instant,
    /// From the sample before the crossing to the lvextend issued: an upper bound on how long
    /// guard took to react.
    reaction: Duration,
}

pub struct Watcher {
    pub items: Vec<WatchItem>,
    ctl: Option<Control>,
    cfg: WatchConfig,
    run_id: String,
    vg_free: BTreeMap<String, u64>,
    vg_full: BTreeSet<String>,
    inflight: Option<InFlight>,
    extend_cost: Duration,
    pgid: Option<i32>,
    braked: bool,
    frozen: Option<Frozen>,
    held: bool,
    continue_noted: BTreeSet<usize>,
    pub events: Vec<Event>,
    /// Guard should stop the command and roll back (--when-full rollback, or asked).
    pub rollback_requested: bool,
    changed: bool,
    live: bool,
    last_draw: Option<Instant>,
    dirty: u64,
    dirty_at: Option<Instant>,
}

impl Watcher {
    pub fn new(
        items: Vec<WatchItem>,
        vg_free: BTreeMap<String, u64>,
        cfg: WatchConfig,
        run_id: &str,
    ) -> Self {
        let live = !ui::is_quiet() && nix::unistd::isatty(2).unwrap_or(false);
        Watcher {
            items,
            ctl: Control::open().ok(),
            cfg,
            run_id: run_id.into(),
            vg_free,
            vg_full: BTreeSet::new(),
            inflight: None,
            // measured in the VM: one lvextend of a snapshot takes ~0.4 s; refined as we go
            extend_cost: Duration::from_millis(800),
            pgid: None,
            braked: false,
            frozen: None,
            held: false,
            continue_noted: BTreeSet::new(),
            events: Vec::new(),
            rollback_requested: false,
            changed: false,
            live,
            last_draw: None,
            dirty: 0,
            dirty_at: None,
        }
    }

    pub fn set_pgid(&mut self, pgid: i32) {
        self.pgid = Some(pgid);
    }

    /// Mount points guard holds frozen now (for the journal: recover thaws them).
    pub fn frozen_paths(&self) -> Vec<PathBuf> {
        self.frozen
            .as_ref()
            .map(|f| f.paths().to_vec())
            .unwrap_or_default()
    }

    /// True once after each change worth journaling (freeze, thaw, extension).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    fn event(&mut self, kind: &'static str, lv: String, detail: String) {
        let k = match kind {
            "extended" => crate::log::Kind::Extended,
            k if k.contains("freez") || k.contains("thaw") || k.contains("hold") => {
                crate::log::Kind::Freeze
            }
            _ => crate::log::Kind::Info,
        };
        crate::log::structured(
            k,
            &format!("{lv}: {kind}: {detail}"),
            &[("GUARD_LV", lv.clone()), ("GUARD_DETAIL", detail.clone())],
        );
        self.events.push(Event {
            at: crate::journal::now_rfc3339(),
            kind: kind.into(),
            lv,
            detail,
        });
        self.changed = true;
    }

    fn signal_group(&self, s: Signal) {
        if let Some(p) = self.pgid {
            let _ = killpg(Pid::from_raw(p), s);
        }
    }

    /// One round: sample, decide, act. Returns how long to wait before the next.
    pub fn tick(&mut self, sig: &SignalState) -> Duration {
        self.poll_inflight();
        if self.held {
            self.while_held(sig);
            self.draw();
            return Duration::from_millis(200);
        }
        let now = Instant::now();
        // /proc/meminfo is costly to generate: read it at most every 250 ms
        if self
            .dirty_at
            .is_none_or(|t| now.duration_since(t) >= Duration::from_millis(250))
        {
            self.dirty = dirty_bytes();
            self.dirty_at = Some(now);
        }
        let dirty = self.dirty;
        let mut hot = false;
        for i in 0..self.items.len() {
            self.sample(i, now);
            let it = &self.items[i];
            if it.invalid {
                continue;
            }
            hot |= it.rate > 0.0 || it.pct() > self.cfg.extend_at / 2.0;
            self.decide(i, dirty);
        }
        self.draw();
        if hot {
            FAST
        } else {
            SLOW
        }
    }

    fn sample(&mut self, i: usize, now: Instant) {
        let Some(ctl) = &self.ctl else { return };
        let it = &self.items[i];
        let Ok(targets) = ctl.status(&it.dm) else {
            return;
        };
        let Some(t) = targets.first() else { return };
        let (used, size, meta_pct) = if it.thin {
            let Some(p) = dm::parse_thin_pool(&t.params) else {
                return;
            };
            let block = if it.block_bytes > 0 {
                it.block_bytes
            } else {
                it.size / p.data_total.max(1)
            };
            self.items[i].block_bytes = block;
            (
                p.data_used * block,
                p.data_total * block,
                p.meta_used as f64 * 100.0 / p.meta_total.max(1) as f64,
            )
        } else {
            match dm::parse_snapshot(&t.params) {
                SnapshotUse::Used {
                    allocated, total, ..
                } => (allocated * 512, total * 512, 0.0),
                SnapshotUse::Invalid => {
                    if !self.items[i].invalid {
                        self.items[i].invalid = true;
                        self.items[i].max_pct = 100.0;
                        let name = self.items[i].name();
                        ui::error(&format!(
                            "the snapshot of {name} was INVALIDATED by the kernel (its COW space filled): {name} can no longer be rolled back"
                        ));
                        self.event(
                            "invalidated",
                            name,
                            "COW space full; rollback point lost".into(),
                        );
                    }
                    return;
                }
                SnapshotUse::Other => return,
            }
        };
        let it = &mut self.items[i];
        it.hist.push_back((now, used));
        while it.hist.len() > 2
            && it
                .hist
                .get(1)
                .is_some_and(|(t, _)| now.duration_since(*t) >= RATE_WINDOW)
        {
            it.hist.pop_front();
        }
        if let Some(&(t0, u0)) = it.hist.front() {
            let dt = now.duration_since(t0).as_secs_f64();
            if dt > 0.0 {
                it.rate = used.saturating_sub(u0) as f64 / dt;
            }
        }
        it.used = used;
        it.size = size;
        it.meta_pct = meta_pct;
        it.prev = it.last;
        it.last = Some(now);
        it.max_pct = it.max_pct.max(it.pct());
    }

    fn decide(&mut self, i: usize, dirty: u64) {
        let horizon = self.extend_cost + Duration::from_millis(300);
        let it = &self.items[i];
        let vg_full = self.vg_full.contains(&it.vg);
        if self.inflight.is_none() && !vg_full {
            if needs_extension(
                it.size,
                it.used,
                it.rate,
                dirty,
                horizon,
                self.cfg.extend_at,
            ) {
                let free = self.vg_free.get(&it.vg).copied().unwrap_or(0);
                match extension_step(it.size, it.rate, dirty, horizon, it.extent, free) {
                    Some(step) => self.start_extension(i, step, false),
                    None => {
                        self.vg_full.insert(it.vg.clone());
                    }
                }
            } else if it.thin && it.meta_pct >= self.cfg.extend_at {
                self.start_extension(i, MIN_STEP / 2, true);
            }
        }
        let it = &self.items[i];
        if !in_danger(it.size, it.used, it.rate, dirty) {
            return;
        }
        if self.inflight.is_some() {
            if !self.braked {
                self.signal_group(Signal::SIGSTOP);
                self.braked = true;
                let name = it.name();
                ui::warn(&format!(
                    "{name}: writes outrun the extension under way: command paused until it lands"
                ));
                self.event(
                    "paused",
                    name,
                    "command stopped until the extension completes".into(),
                );
            }
        } else if self.vg_full.contains(&it.vg) {
            self.full(i);
        }
    }

    fn start_extension(&mut self, i: usize, bytes: u64, metadata: bool) {
        let it = &self.items[i];
        let target = format!("{}/{}", it.vg, it.extend_lv);
        let mut cmd = match system_command("lvm") {
            Ok(c) => c,
            Err(e) => {
                ui::error(&e.to_string());
                return;
            }
        };
        cmd.arg("lvextend").arg("-q");
        if metadata {
            cmd.args(["--poolmetadatasize", &format!("+{bytes}b")]);
        } else {
            cmd.args(["-L", &format!("+{bytes}b")]);
        }
        cmd.arg(&target)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let reaction = it.prev.map(|p| p.elapsed()).unwrap_or_default();
        match cmd.spawn() {
            Ok(child) => {
                self.inflight = Some(InFlight {
                    child,
                    item: i,
                    bytes,
                    started: Instant::now(),
                    reaction,
                })
            }
            Err(e) => ui::error(&format!("cannot run lvextend: {e}")),
        }
    }

    fn poll_inflight(&mut self) {
        let Some(f) = self.inflight.as_mut() else {
            return;
        };
        let Ok(Some(status)) = f.child.try_wait() else {
            return;
        };
        let f = self.inflight.take().expect("checked above");
        let took = f.started.elapsed();
        let name = self.items[f.item].name();
        let vg = self.items[f.item].vg.clone();
        if status.success() {
            self.extend_cost = (self.extend_cost + took.max(Duration::from_millis(100))) / 2;
            if let Some(free) = self.vg_free.get_mut(&vg) {
                *free = free.saturating_sub(f.bytes);
            }
            let it = &mut self.items[f.item];
            it.extensions += 1;
            it.size += f.bytes;
            let what = if it.thin { "thin pool" } else { "snapshot" };
            let detail = format!(
                "{what} {}/{} +{} in {:.2}s (issued <= {} ms after the need arose; {:.0}% of the old size used when it landed; rate {}/s)",
                it.vg,
                it.extend_lv,
                human(f.bytes),
                took.as_secs_f64(),
                f.reaction.as_millis(),
                it.used as f64 * 100.0 / it.size.saturating_sub(f.bytes).max(1) as f64,
                human(it.rate as u64)
            );
            ui::say(&format!("{name}: extended {detail}"));
            self.event("extended", name, detail);
        } else {
            let mut err = String::new();
            if let Some(mut e) = f.child.stderr {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            let err = crate::exec::stderr_tail(err.as_bytes());
            ui::warn(&format!("{name}: lvextend failed: {err}"));
            if err.contains("nsufficient") || err.contains("free space") {
                self.vg_full.insert(vg);
            }
            self.event("extend-failed", name, err);
        }
        if self.braked {
            self.signal_group(Signal::SIGCONT);
            self.braked = false;
        }
    }

    /// Waits for the extension under way, if any, and books its result.
    fn wait_inflight(&mut self) {
        if let Some(f) = self.inflight.as_mut() {
            let _ = f.child.wait();
        }
        self.poll_inflight();
    }

    fn full(&mut self, i: usize) {
        let it = &self.items[i];
        let name = it.name();
        let what = if it.thin {
            format!(
                "thin pool {}/{} is {:.0}% full",
                it.vg,
                it.extend_lv,
                it.pct()
            )
        } else {
            format!("its snapshot is {:.0}% full", it.pct())
        };
        match self.cfg.when_full {
            WhenFull::Continue => {
                if self.continue_noted.insert(i) {
                    ui::warn(&format!(
                        "{name}: {what} and volume group {} has no room; --when-full continue: the rollback point will be lost when it fills (the operator's choice)",
                        it.vg
                    ));
                    self.event(
                        "full-continue",
                        name,
                        "operator accepted losing the rollback point".into(),
                    );
                }
            }
            WhenFull::Freeze | WhenFull::Rollback => {
                let mounts = it.mountpoints.clone();
                let vg = it.vg.clone();
                self.signal_group(Signal::SIGSTOP);
                let frozen_what = match Frozen::freeze(&mounts) {
                    Ok(f) if !mounts.is_empty() => {
                        self.frozen = Some(f);
                        format!(
                            "froze {}",
                            mounts
                                .iter()
                                .map(|m| m.display().to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                    Ok(_) => "not mounted, nothing to freeze".to_string(),
                    Err(e) => format!("could not freeze ({e})"),
                };
                self.held = true;
                self.event(
                    "froze",
                    name.clone(),
                    format!("{what}; {frozen_what}; command stopped"),
                );
                if self.cfg.when_full == WhenFull::Rollback {
                    ui::warn(&format!("{name}: {what} and volume group {vg} has no room: {frozen_what}; --when-full rollback: stopping the command and rolling back"));
                    self.request_rollback();
                } else {
                    let pg = self.pgid.unwrap_or(0);
                    let run = &self.run_id;
                    ui::warn(&format!(
                        "{name}: {what} and volume group {vg} has no free space.\n  To keep the rollback point guard {frozen_what} and stopped the command (process group {pg}).\n  Free space in {vg} (vgextend {vg} DISK, or remove an LV), then: guard resume {run}\n  Or undo the change: guard rollback {run}"
                    ));
                }
            }
        }
    }

    fn request_rollback(&mut self) {
        self.rollback_requested = true;
        self.signal_group(Signal::SIGKILL);
        self.signal_group(Signal::SIGCONT);
        // processes blocked on the frozen filesystem can only die once it is thawed
        if let Some(mut f) = self.frozen.take() {
            let _ = f.thaw_all();
            self.event(
                "thawed",
                String::new(),
                "thawed to let the stopped command exit".into(),
            );
        }
        self.held = false;
    }

    fn while_held(&mut self, sig: &SignalState) {
        if sig.take_rollback_request() || sig.take_terminate() {
            ui::say("rollback requested: stopping the command");
            self.request_rollback();
            return;
        }
        if !sig.take_resume_request() {
            return;
        }
        let vgs = crate::lvm::Lvm::vgs(&crate::lvm::real::RealLvm);
        let held_vgs: Vec<String> = self.vg_full.iter().cloned().collect();
        let mut room = true;
        for vg in &held_vgs {
            let free = vgs
                .as_ref()
                .ok()
                .and_then(|v| v.iter().find(|x| &x.name == vg).map(|x| x.free))
                .unwrap_or(0);
            self.vg_free.insert(vg.clone(), free);
            room &= free >= MIN_STEP;
        }
        if !room {
            ui::warn(&format!(
                "resume: still no room in {}: free space first",
                held_vgs.join(", ")
            ));
            return;
        }
        // Thaw first: lvextend cannot suspend a frozen volume. The command stays stopped until
        // the extension has landed.
        if let Some(mut f) = self.frozen.take() {
            let _ = f.thaw_all();
        }
        for vg in held_vgs {
            self.vg_full.remove(&vg);
        }
        let dirty = dirty_bytes();
        for i in 0..self.items.len() {
            let it = &self.items[i];
            if it.invalid || !self.vg_full.is_empty() {
                continue;
            }
            let free = self.vg_free.get(&it.vg).copied().unwrap_or(0);
            if let Some(step) =
                extension_step(it.size, it.rate, dirty, self.extend_cost, it.extent, free)
            {
                if it.pct() >= self.cfg.extend_at / 2.0 {
                    self.start_extension(i, step, false);
                    self.wait_inflight();
                }
            }
        }
        self.held = false;
        self.signal_group(Signal::SIGCONT);
        self.event(
            "resumed",
            String::new(),
            "thawed and extended; command continued".into(),
        );
        ui::say("resumed: filesystem thawed, command continued");
    }

    fn draw(&mut self) {
        if !self.live
            || self
                .last_draw
                .is_some_and(|t| t.elapsed() < Duration::from_millis(500))
        {
            return;
        }
        self.last_draw = Some(Instant::now());
        let parts: Vec<String> = self
            .items
            .iter()
            .map(|it| {
                if it.invalid {
                    return format!("{} INVALID", it.lv);
                }
                let eta = if it.rate > 1.0 {
                    format!(" full in {:.0}s", it.free() as f64 / it.rate)
                } else {
                    String::new()
                };
                format!(
                    "{} {}/{} {:.0}% {}/s{eta} ext {}",
                    it.lv,
                    human(it.used),
                    human(it.size),
                    it.pct(),
                    human(it.rate as u64),
                    it.extensions
                )
            })
            .collect();
        let held = if self.held { " [HELD: frozen]" } else { "" };
        let _ = write!(
            std::io::stderr(),
            "\r\x1b[Kguard: {}{held}",
            parts.join(" | ")
        );
    }

    /// After the command: flush the targets' dirty pages (syncfs, on a helper thread) while
    /// still watching, so that what the command left in the page cache lands in a snapshot that
    /// has room for it, before guard decides.
    pub fn settle(&mut self, sig: &SignalState) {
        if self.rollback_requested || self.held {
            return;
        }
        let mut mounts: Vec<PathBuf> = self
            .items
            .iter()
            .flat_map(|i| i.mountpoints.clone())
            .collect();
        mounts.sort();
        mounts.dedup();
        if mounts.is_empty() {
            return;
        }
        let flusher = std::thread::spawn(move || {
            for m in mounts {
                if let Ok(f) = std::fs::File::open(&m) {
                    // SAFETY: syncfs on a descriptor we own.
                    unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) };
                }
            }
        });
        while !flusher.is_finished() {
            let next = self.tick(sig);
            std::thread::sleep(next.min(FAST));
        }
        let _ = flusher.join();
        // one last sample: the use after the flush
        let _ = self.tick(sig);
    }

    /// After the command: nothing left frozen or stopped, the live line cleared.
    pub fn finish(&mut self) {
        self.wait_inflight();
        if let Some(mut f) = self.frozen.take() {
            if let Err(e) = f.thaw_all() {
                ui::error(&e.to_string());
            }
        }
        if self.braked {
            self.signal_group(Signal::SIGCONT);
            self.braked = false;
        }
        if self.live && self.last_draw.is_some() {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const MIB: u64 = 1 << 20;

    #[test]
    fn extends_at_the_threshold_or_when_the_rate_demands() {
        let h = Duration::from_secs(1);
        assert!(!needs_extension(8 * MIB, 2 * MIB, 0.0, 0, h, 50.0));
        assert!(needs_extension(8 * MIB, 4 * MIB, 0.0, 0, h, 50.0));
        // 2 MiB used of 8, but 4 MiB/s fills the rest before an lvextend lands
        assert!(needs_extension(
            8 * MIB,
            2 * MIB,
            4.0 * MIB as f64,
            0,
            h,
            50.0
        ));
        // or the dirty page cache alone would not fit
        assert!(needs_extension(8 * MIB, 2 * MIB, 0.0, 7 * MIB, h, 50.0));
    }

    #[test]
    fn step_grows_with_the_rate_and_respects_the_vg() {
        let h = Duration::from_secs(1);
        let ext = 4 * MIB;
        assert_eq!(
            extension_step(8 * MIB, 0.0, 0, h, ext, 1 << 30),
            Some(8 * MIB)
        );
        assert_eq!(
            extension_step(8 * MIB, 50.0 * MIB as f64, 0, h, ext, 1 << 30),
            Some(200 * MIB)
        );
        assert_eq!(
            extension_step(8 * MIB, 50.0 * MIB as f64, 0, h, ext, 12 * MIB),
            Some(12 * MIB)
        );
        assert_eq!(extension_step(8 * MIB, 0.0, 0, h, ext, MIB), None);
    }

    #[test]
    fn danger_leaves_room_for_the_dirty_cache() {
        assert!(!in_danger(100 * MIB, 50 * MIB, 0.0, 10 * MIB));
        assert!(in_danger(100 * MIB, 95 * MIB, 0.0, 4 * MIB));
        assert!(in_danger(8 * MIB, 7 * MIB + MIB / 2, 0.0, 0));
    }

    #[test]
    fn reads_dirty_memory() {
        // a number, whatever it is on this machine
        let _ = dirty_bytes();
    }
}

//! The COW watcher. While the command runs it reads every thick snapshot's COW use (and every
//! thin pool's data and metadata use) straight from device-mapper, many times a second, and
//! keeps the rollback point alive:
//! - it extends early: at --extend-at percent of the room there was at the start, or sooner when
//!   the observed write rate, plus the dirty page cache that can still land here without any new
//!   write, would fill the free space within the time an `lvextend` takes; the step grows with
//!   the rate (the rules are in `model`);
//! - while an extension is on its way and cannot arrive in time, it pauses the command's
//!   process group (SIGSTOP), and lets it go on once the space is there;
//! - when the volume group (or pool) has no room left, it acts per --when-full: `freeze` the
//!   origin's filesystem (this also stops writers outside the command) and hold the command
//!   until the operator frees space (`guard resume RUN`) or asks for `guard rollback RUN`;
//!   `rollback` stops the command and rolls back; `continue` lets the snapshot fill, recorded as
//!   the operator's choice.
//!
//! The operator's requests (`guard rollback RUN`, `guard resume RUN`, a terminating signal) are
//! read on every tick, held or not: `guard rollback RUN` stops the command at once.
//!
//! Freezing comes before the COW is full, while it still has room for every dirty page of the
//! page cache: the freeze flushes them into the COW. And no lvm command touches a volume while
//! guard holds it frozen (on 6.1 kernels its suspend fails with EBUSY): resume thaws first.
pub mod background;
pub mod dirty;
pub mod model;

use crate::dm::freeze::Frozen;
use crate::dm::{self, Control, SnapshotUse};
use crate::exec::system_command;
use crate::run::child::SignalState;
use crate::size::human;
use crate::ui;
use model::{
    covered_at, dirty_allowance, extension_step, in_danger, kept_reserve, meta_step,
    needs_extension, pool_state, runway_used_pct, target_room, PoolState, ASSUMED_RATE,
    DIRTY_WINDOW, MIN_LEAD, MIN_STEP, STEP_RATE_SPAN, THIN_META_BLOCK,
};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
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

/// Why 80: the fill threshold is for writers too slow for the rate term to see (a writer that
/// shows its rate is extended for earlier, at two horizons of writing before the room runs
/// out); and with the steps of model::target_room a run ends with at most ~1.5× the COW it
/// used allocated (a threshold of 50 % alone leaves 2× allocated at every crossing).
pub const DEFAULT_EXTEND_AT: f64 = 80.0;
/// The background watcher of kept runs and pending rollbacks keeps half its room free: it has
/// no command to pause (production writes there), so a burst from idle has only the free room
/// to land in while the first lvextend is under way. Its steps follow the same rule, relative
/// to the use, so it leaves ~2.35x the use allocated after a step, not 1.5x.
pub const BACKGROUND_EXTEND_AT: f64 = 50.0;
const FAST: Duration = Duration::from_millis(20);
const SLOW: Duration = Duration::from_millis(100);
const RATE_WINDOW: Duration = Duration::from_millis(300);
/// The longest lead the danger test assumes (see decide).
const MAX_LEAD: Duration = Duration::from_millis(300);
/// Consecutive failed extensions (for another reason than no room) after which an item in
/// danger is handed to --when-full: a transient lvm failure is retried, a lasting one is not
/// waited on for ever.
const GIVE_UP_AFTER: u32 = 3;

/// A failed extension, retried after a growing pause (0.5 s, 1 s, 2 s ... 8 s).
#[derive(Debug, Clone, Copy)]
struct Retry {
    failures: u32,
    after: Instant,
}

impl Retry {
    fn next(prev: Option<Retry>, now: Instant) -> Retry {
        let failures = prev.map_or(0, |r| r.failures) + 1;
        let pause = Duration::from_millis(500 << (failures - 1).min(4));
        Retry {
            failures,
            after: now + pause,
        }
    }
}

/// lvextend's words for a VG without room ("Insufficient free space: N extents needed").
fn is_no_room(err: &str) -> bool {
    err.contains("nsufficient free space") || err.contains("nsufficient suitable")
}

pub use crate::model::record::Event;

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
    /// Bytes per thin-pool data block (from the pool's size in its status).
    pub block_bytes: u64,
    pub extent: u64,
    pub size: u64,
    pub used: u64,
    /// Thin pools: metadata size and use, in bytes.
    pub meta_size: u64,
    pub meta_used: u64,
    /// A thin pool out of data space: its writes wait in the kernel (until dm-thin's
    /// no_space_timeout fails them), and so would a freeze's flush.
    out_of_data: bool,
    pub rate: f64,
    /// The rate the size of a step is made for (model::STEP_RATE_SPAN), and its highest.
    step_rate: f64,
    peak_step_rate: f64,
    /// The fastest this run's writers have filled it: once the VG has no room left, the hold
    /// must come early enough for a writer at full speed, not at the pace of the last samples
    /// (the rate window is 300 ms; a writer paused for an extension shows a rate of 0).
    pub peak_rate: f64,
    pub max_pct: f64,
    /// The most the run has used (use over the base; None before a first sample), and what its
    /// extensions added to the VG's use (data and a pool's metadata, as requested: lvextend
    /// may trim a snapshot's request at the origin's size); `added_saved`: how much of it the
    /// background watcher has put into the journal already.
    pub peak_growth: Option<u64>,
    pub added: u64,
    pub added_saved: u64,
    pub extensions_saved: u32,
    pub extensions: u32,
    pub invalid: bool,
    /// False for a snapshot whose merge is pending: LVM refuses to extend it.
    pub extendable: bool,
    /// The use when the watch began (a thin pool is shared: its use before the run is nobody's
    /// growth); None until the first sample.
    base: Option<u64>,
    meta_base: Option<u64>,
    /// The origin's device number, for its own dirty pages (None inside: not found).
    origin_dev: Option<Option<(u32, u32)>>,
    /// The origin's dirty and writeback pages, where the kernel shows them.
    device_dirty: Option<u64>,
    last: Option<Instant>,
    /// The sample before `last`: the crossing that triggers an action happened after it.
    prev: Option<Instant>,
    /// Recent (time, used) samples: the rate is measured over RATE_WINDOW, so that one fsync
    /// landing between two 20 ms samples does not read as a torrent.
    hist: VecDeque<(Instant, u64)>,
    /// (time, used) about once a second over DIRTY_WINDOW: what landed lately.
    growth: VecDeque<(Instant, u64)>,
    /// The last fill level warned about for a snapshot that cannot be extended.
    warned_pct: f64,
    /// A kept thick snapshot's origin size: it keeps model::kept_reserve free (the background
    /// watcher has no command to pause).
    kept_origin: Option<u64>,
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
        let mut it = Self::new(
            vg,
            origin,
            snap,
            false,
            dm::dm_name(vg, snap),
            cow,
            extent,
            mounts,
        );
        // a snapshot starts empty: all its use is the run's
        it.base = Some(0);
        it
    }
    /// `pool_size` may be 0 (unknown): the pool's status gives it.
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
    /// A kept thick snapshot of an origin of `origin` bytes: it keeps its reserve free.
    pub fn kept(mut self, origin: u64) -> Self {
        if !self.thin {
            self.kept_origin = Some(origin);
        }
        self
    }
    /// The free room it keeps at all times (0: none), and the room a step brings it to.
    fn reserve(&self) -> (u64, u64) {
        let Some(origin) = self.kept_origin else {
            return (0, 0);
        };
        // the step half as much again: not an lvextend at every few MiB written
        let reserve = kept_reserve(origin, self.used);
        let step = (reserve + reserve / 2).min(covered_at(origin).saturating_sub(self.used));
        (reserve, step)
    }
    /// A kept snapshot that covers its whole origin can never fill, and LVM will not grow it
    /// further: nothing to extend, whatever its use.
    fn covers_origin(&self) -> bool {
        self.kept_origin.is_some_and(|o| self.size >= covered_at(o))
    }
    /// Watched every 20 ms rather than 100: it is being written, or past half the threshold.
    /// A kept snapshot that covers its origin cannot fill, so it never is: polling it closely
    /// would only cost CPU for as long as the run is kept.
    fn hot(&self, extend_at: f64) -> bool {
        !self.covers_origin()
            && (self.rate > 0.0
                || runway_used_pct(self.size, self.used, self.base.unwrap_or(0)) > extend_at / 2.0)
    }
    /// A snapshot whose merge is pending: watched, not extended (lvextend refuses it).
    pub fn merge_pending(mut self) -> Self {
        self.extendable = self.thin;
        self
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
            out_of_data: false,
            extent,
            size,
            used: 0,
            meta_size: 0,
            meta_used: 0,
            rate: 0.0,
            step_rate: 0.0,
            peak_step_rate: 0.0,
            peak_rate: 0.0,
            max_pct: 0.0,
            peak_growth: None,
            added: 0,
            added_saved: 0,
            extensions_saved: 0,
            extensions: 0,
            invalid: false,
            extendable: true,
            base: None,
            meta_base: None,
            origin_dev: None,
            device_dirty: None,
            last: None,
            prev: None,
            hist: VecDeque::new(),
            growth: VecDeque::new(),
            warned_pct: 0.0,
            kept_origin: None,
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
    pub fn meta_pct(&self) -> f64 {
        if self.meta_size == 0 {
            0.0
        } else {
            self.meta_used as f64 * 100.0 / self.meta_size as f64
        }
    }
    fn free(&self) -> u64 {
        self.size.saturating_sub(self.used)
    }
    /// What landed over the last DIRTY_WINDOW.
    fn recent_growth(&self) -> u64 {
        self.growth
            .front()
            .map(|&(_, u)| self.used.saturating_sub(u))
            .unwrap_or(0)
    }
    /// A thin pool's allocation unit for the danger test's margin; 0 for a snapshot.
    fn block(&self) -> u64 {
        if self.thin {
            self.block_bytes
        } else {
            0
        }
    }
    /// What landed since the watch began.
    fn growth_since_start(&self) -> u64 {
        self.used.saturating_sub(self.base.unwrap_or(0))
    }
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

/// One device's dirty and writeback pages: BdiReclaimable + BdiWriteback from the kernel's
/// per-device writeback stats (debugfs, /sys/kernel/debug/bdi/MAJ:MIN/stats; the only place a
/// device's own dirty pages are shown). None where debugfs is not mounted or is locked down.
/// On kernels before 6.3 it counts the root cgroup's writeback only, so it is one of several
/// estimates, never the only one (see model::dirty_allowance).
pub fn device_dirty_bytes(dev: (u32, u32)) -> Option<u64> {
    let text =
        std::fs::read_to_string(format!("/sys/kernel/debug/bdi/{}:{}/stats", dev.0, dev.1)).ok()?;
    let kb: u64 = text
        .lines()
        .filter(|l| l.starts_with("BdiWriteback:") || l.starts_with("BdiReclaimable:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    Some(kb * 1024)
}

/// The device number of /dev/mapper/NAME.
fn dm_dev(name: &str) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(format!("/dev/mapper/{name}"))
        .ok()?
        .rdev();
    Some((libc::major(rdev), libc::minor(rdev)))
}

/// Bytes the process tree under `pid` dirtied so far (/proc/PID/io write_bytes, counted when a
/// page is dirtied, minus cancelled_write_bytes; a reaped child's count is added to its parent's).
/// Walks /proc/PID/task/TID/children rather than all of /proc: a few files per tick.
fn tree_written(pid: i32) -> u64 {
    let mut total = 0u64;
    let mut todo = vec![pid];
    let mut seen = BTreeSet::new();
    while let Some(p) = todo.pop() {
        if !seen.insert(p) || seen.len() > 4096 {
            continue;
        }
        if let Ok(io) = std::fs::read_to_string(format!("/proc/{p}/io")) {
            let field = |k: &str| {
                io.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            total += field("write_bytes:").saturating_sub(field("cancelled_write_bytes:"));
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
                todo.extend(c.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
            }
        }
    }
    total
}

struct InFlight {
    child: Child,
    item: usize,
    bytes: u64,
    /// A thin pool's metadata, not its data.
    metadata: bool,
    started: Instant,
    /// From the sample before the crossing to the lvextend issued: an upper bound on how long
    /// guard took to react.
    reaction: Duration,
    /// It takes the last of the VG's room: when it lands, the hold is all that is left.
    last: bool,
    /// The size (data or metadata) it extends from: device-mapper shows the new size as soon
    /// as lvm2 resumes the device, before lvextend exits, so a sample in between has it already.
    from: u64,
}

pub struct Watcher {
    pub items: Vec<WatchItem>,
    ctl: Option<Control>,
    cfg: WatchConfig,
    run_id: String,
    vg_free: BTreeMap<String, u64>,
    vg_full: BTreeSet<String>,
    /// Failed extensions waiting to be retried, per item and data (false) or metadata (true).
    retry: BTreeMap<(usize, bool), Retry>,
    inflight: Option<InFlight>,
    extend_cost: Duration,
    pgid: Option<i32>,
    braked: bool,
    frozen: Option<Frozen>,
    /// The items whose filesystems this hold froze (a second item of the set can reach its
    /// limit while the first is held: it is held too, never instead).
    held_items: std::collections::BTreeSet<usize>,
    /// Lowered dirty page limits while the room is short (the live run only: see dirty.rs).
    dirty_limit: Option<dirty::DirtyLimit>,
    /// The kernel's own limit, read once (reading /proc/meminfo at every 20 ms tick would slow
    /// the very ticks that keep the snapshot extended), and when the bound was last checked.
    kernel_dirty_limit: Option<u64>,
    bound_at: Option<Instant>,
    held: bool,
    continue_noted: BTreeSet<usize>,
    pub events: Vec<Event>,
    /// Guard should stop the command and roll back (--when-full rollback, or asked).
    pub rollback_requested: bool,
    /// The command ran past its timeout and is being stopped (SIGTERM, then SIGKILL).
    timing_out: bool,
    /// Why, in words for the record: who asked for the rollback.
    pub rollback_reason: Option<String>,
    changed: bool,
    live: bool,
    last_draw: Option<Instant>,
    dirty: u64,
    dirty_at: Option<Instant>,
    /// The most the command's process tree has dirtied (it only grows; see tree_written).
    cmd_dirtied: u64,
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
            retry: BTreeMap::new(),
            inflight: None,
            // measured in the VM: one lvextend of a snapshot takes ~0.4 s; refined as we go
            extend_cost: Duration::from_millis(800),
            pgid: None,
            braked: false,
            frozen: None,
            held_items: Default::default(),
            dirty_limit: None,
            kernel_dirty_limit: None,
            bound_at: None,
            held: false,
            continue_noted: BTreeSet::new(),
            events: Vec::new(),
            rollback_requested: false,
            timing_out: false,
            rollback_reason: None,
            changed: false,
            live,
            last_draw: None,
            dirty: 0,
            dirty_at: None,
            cmd_dirtied: 0,
        }
    }

    pub fn set_pgid(&mut self, pgid: i32) {
        self.pgid = (pgid > 0).then_some(pgid);
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

    /// Whether some VG was found without room (the background watcher then reads the VGs'
    /// free space again sooner).
    pub fn vg_full(&self) -> bool {
        !self.vg_full.is_empty()
    }

    /// The VG's free space as read now. Room again (the operator added a disk, removed an LV)
    /// ends "VG full": a watcher that read the free space once would never extend again.
    /// A hold is left to `guard resume`, which also thaws.
    /// A timeout while held: processes blocked on the frozen filesystem can only die once it
    /// is thawed, and the run is a failure anyway: roll back (which thaws).
    pub fn stop_for_timeout(&mut self) {
        self.timing_out = true;
        if self.held {
            self.request_rollback("the command ran past its timeout while held");
        }
    }

    /// Whether the command's group is stopped by the watcher (braked or held).
    pub fn is_paused(&self) -> bool {
        self.braked || self.held
    }

    /// The live run bounds the dirty page cache while its room is short (dirty.rs); the
    /// background watcher does not (it watches many runs, for hours).
    pub fn bound_dirty_cache(&mut self) {
        self.dirty_limit.get_or_insert_with(Default::default);
        // Bound before the command starts: a writer dirties the page cache at memory speed, far
        // more in its first tenth of a second than a small room holds.
        let now = Instant::now();
        for i in 0..self.items.len() {
            self.sample(i, now);
        }
        self.bound_dirty();
    }

    /// The room the tightest target has before an extension can land: what its snapshot (or
    /// pool) still holds. An extension takes most of a second; the page cache can flush more
    /// than a small snapshot holds in that time, VG room or not.
    fn min_room(&self) -> Option<(usize, u64)> {
        self.items
            .iter()
            .enumerate()
            .filter(|(_, it)| !it.invalid && it.size > 0)
            .map(|(i, it)| (i, it.size.saturating_sub(it.used)))
            .min_by_key(|&(_, r)| r)
    }

    fn bound_dirty(&mut self) {
        if self.dirty_limit.is_none()
            || self
                .bound_at
                .is_some_and(|t| t.elapsed() < Duration::from_millis(250))
        {
            return;
        }
        self.bound_at = Some(Instant::now());
        let Some((i, room)) = self.min_room() else {
            return;
        };
        let kernel = *self
            .kernel_dirty_limit
            .get_or_insert_with(dirty::effective_limit);
        let Some(d) = self.dirty_limit.as_mut() else {
            return;
        };
        let Some(target) = dirty::target_for(room, kernel) else {
            // room enough for all the cache holds again: the kernel's own limits
            if d.current.is_some_and(|c| c > 0) {
                d.restore();
            }
            return;
        };
        // follow the room in steps, not at every extension
        let first = d.current.is_none();
        if d.current
            .is_some_and(|c| c == 0 || (target > c / 2 && target < c + c / 2))
        {
            return;
        }
        match d.tighten(target) {
            Ok(true) if first => {
                let name = self.items[i].name();
                let detail = format!(
                    "bounded the dirty page cache to {} (the kernel allows {}): {name} has {} of room until an extension lands, and whatever is dirty must fit in it",
                    human(target),
                    human(kernel),
                    human(room)
                );
                ui::say(&format!("{name}: {detail}"));
                self.event("dirty-limit", name, detail);
            }
            Ok(_) => {}
            Err(e) => ui::warn(&format!("cannot bound the dirty page cache: {e}")),
        }
    }

    pub fn set_vg_free(&mut self, vg: &str, free: u64) {
        self.vg_free.insert(vg.to_string(), free);
        if free >= MIN_STEP && !self.held && self.vg_full.remove(vg) {
            let items: Vec<usize> = (0..self.items.len())
                .filter(|&i| self.items[i].vg == vg)
                .collect();
            for i in items {
                self.continue_noted.remove(&i);
            }
            self.event(
                "vg-room",
                vg.to_string(),
                format!("{} free again: extending resumes", human(free)),
            );
        }
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
            at: crate::store::journal::now_rfc3339(),
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

    /// One round while the command runs: the operator's requests, then sample, decide, act.
    /// Returns how long to wait before the next.
    pub fn tick(&mut self, sig: &SignalState) -> Duration {
        self.steer(sig);
        self.step()
    }

    /// Acts on what the operator asked since the last tick. Every request is consumed here, on
    /// every tick: one left standing would be acted on later by a hold that did not exist when
    /// it was made (a SIGTERM the command already got and survived is no rollback request).
    fn steer(&mut self, sig: &SignalState) {
        let rollback = sig.take_rollback_request();
        let terminate = sig.take_terminate();
        let resume = sig.take_resume_request();
        if rollback {
            self.request_rollback("rollback requested (`guard rollback`)");
        } else if terminate && self.held {
            // held, the command cannot act on the signal: the operator wants out
            self.request_rollback("interrupted while the command was held");
        } else if resume {
            if self.held {
                self.try_resume();
            } else {
                ui::say("resume requested, but the run is not held: nothing to resume");
            }
        }
        // a terminating signal outside a hold was forwarded to the command's group already
    }

    /// One round without the operator's requests (the background watcher has no command):
    /// sample, decide, act.
    pub fn step(&mut self) -> Duration {
        self.poll_inflight();
        let now = Instant::now();
        if self.held {
            // The other targets keep changing (other filesystems of the set are not frozen):
            // keep watching them, extend them where their VG has room, hold them too when not,
            // and notice an invalidation.
            let mut hot = false;
            for i in 0..self.items.len() {
                if self.held_items.contains(&i) || !self.sample(i, now) || self.items[i].invalid {
                    continue;
                }
                hot |= self.items[i].hot(self.cfg.extend_at);
                let dirty = self.dirty_for(i);
                self.decide(i, dirty);
            }
            self.bound_dirty();
            self.draw();
            // a target still being written is watched as closely as outside a hold
            return if hot {
                FAST
            } else {
                Duration::from_millis(200)
            };
        }
        // /proc/meminfo is costly to generate: read it (and the other dirty figures) at most
        // every 250 ms
        if self
            .dirty_at
            .is_none_or(|t| now.duration_since(t) >= Duration::from_millis(250))
        {
            self.refresh_dirty();
            self.dirty_at = Some(now);
        }
        let mut hot = false;
        let mut danger = false;
        for i in 0..self.items.len() {
            if !self.sample(i, now) {
                continue;
            }
            if self.items[i].invalid {
                continue;
            }
            hot |= self.items[i].hot(self.cfg.extend_at);
            let dirty = self.dirty_for(i);
            danger |= self.decide(i, dirty);
        }
        // paused for the last extension, which has landed, and nothing in danger: continue
        if self.braked && !self.held && !danger && self.inflight.is_none() {
            self.signal_group(Signal::SIGCONT);
            self.braked = false;
        }
        self.bound_dirty();
        self.draw();
        if hot {
            FAST
        } else {
            SLOW
        }
    }

    fn refresh_dirty(&mut self) {
        self.dirty = dirty_bytes();
        if let Some(p) = self.pgid {
            self.cmd_dirtied = self.cmd_dirtied.max(tree_written(p));
        }
        for it in self.items.iter_mut() {
            let dev = *it
                .origin_dev
                .get_or_insert_with(|| dm_dev(&dm::dm_name(&it.vg, &it.lv)));
            it.device_dirty = dev.and_then(device_dirty_bytes);
        }
    }

    /// The dirty page cache that can still land in item `i` (see model::dirty_allowance).
    fn dirty_for(&self, i: usize) -> u64 {
        let it = &self.items[i];
        dirty_allowance(
            self.dirty,
            it.device_dirty,
            it.recent_growth(),
            self.cmd_dirtied.saturating_sub(it.growth_since_start()),
        )
    }

    /// Reads item `i`'s use from device-mapper; false when there was nothing to read.
    fn sample(&mut self, i: usize, now: Instant) -> bool {
        let Some(ctl) = &self.ctl else { return false };
        let it = &self.items[i];
        if it.invalid {
            return false;
        }
        let Ok(targets) = ctl.status(&it.dm) else {
            return false;
        };
        let Some(t) = targets.first() else {
            return false;
        };
        let (used, size) = if it.thin {
            if t.target_type != "thin-pool" {
                return false;
            }
            let Some(p) = dm::parse_thin_pool(&t.params) else {
                return false;
            };
            let state = pool_state(&p);
            if matches!(state, PoolState::Failed | PoolState::ReadOnly) {
                self.pool_unusable(i, state);
                return false;
            }
            // the pool device's length is its data size: no need for the plan to know it
            let pool_bytes = if t.length > 0 {
                t.length * 512
            } else {
                it.size
            };
            let block = pool_bytes / p.data_total.max(1);
            let it = &mut self.items[i];
            it.out_of_data = state == PoolState::OutOfData;
            it.block_bytes = block;
            it.meta_size = p.meta_total * THIN_META_BLOCK;
            it.meta_used = p.meta_used * THIN_META_BLOCK;
            it.meta_base.get_or_insert(it.meta_used);
            (p.data_used * block, p.data_total * block)
        } else {
            if t.target_type != "snapshot" && t.target_type != "snapshot-merge" {
                return false;
            }
            match dm::parse_snapshot(&t.params) {
                SnapshotUse::Used {
                    allocated, total, ..
                } => (allocated * 512, total * 512),
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
                    return false;
                }
                SnapshotUse::Other => return false,
            }
        };
        let it = &mut self.items[i];
        it.base.get_or_insert(used);
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
                it.step_rate =
                    used.saturating_sub(u0) as f64 / dt.max(STEP_RATE_SPAN.as_secs_f64());
                it.peak_rate = it.peak_rate.max(it.rate);
                it.peak_step_rate = it.peak_step_rate.max(it.step_rate);
            }
        }
        if it
            .growth
            .back()
            .is_none_or(|(t, _)| now.duration_since(*t) >= Duration::from_secs(1))
        {
            it.growth.push_back((now, used));
        }
        while it.growth.len() > 1
            && it
                .growth
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > DIRTY_WINDOW)
        {
            it.growth.pop_front();
        }
        it.used = used;
        it.size = size;
        it.prev = it.last;
        it.last = Some(now);
        it.max_pct = it.max_pct.max(it.pct());
        it.peak_growth = Some(it.peak_growth.unwrap_or(0).max(it.growth_since_start()));
        true
    }

    /// A failed or read-only pool: its thin snapshots cannot be merged (a merge writes the
    /// pool's metadata) until it is repaired, so the rollback point counts as lost.
    fn pool_unusable(&mut self, i: usize, state: PoolState) {
        let it = &mut self.items[i];
        if it.invalid {
            return;
        }
        it.invalid = true;
        let name = it.name();
        let pool = format!("{}/{}", it.vg, it.extend_lv);
        let what = if state == PoolState::Failed {
            "FAILED"
        } else {
            "READ-ONLY (its metadata needs repair)"
        };
        ui::error(&format!(
            "thin pool {pool} is {what}: {name} cannot be rolled back until the pool is repaired (lvconvert --repair {pool})"
        ));
        self.event(
            "pool-unusable",
            name,
            format!("thin pool {pool} is {what}; rollback point unusable"),
        );
    }

    /// The write rate item `i`'s danger test allows for. With no room left to add (the VG is
    /// full, or a pending merge cannot be extended) the hold must leave room for a writer at its
    /// full speed, even one that has not shown it yet (ASSUMED_RATE).
    fn hold_rate(&self, i: usize) -> f64 {
        let it = &self.items[i];
        if self.vg_full.contains(&it.vg) || !it.extendable {
            it.rate.max(it.peak_rate).max(ASSUMED_RATE)
        } else {
            it.rate
        }
    }

    /// What the rate term plans for: one lvextend, and the watcher's lead in seeing the need
    /// (the danger test and the brake cover a host slower than that).
    fn horizon(&self) -> Duration {
        self.extend_cost + MIN_LEAD
    }

    /// Extends, brakes or holds item `i` as its numbers say; true when it is in danger.
    fn decide(&mut self, i: usize, dirty: u64) -> bool {
        let horizon = self.horizon();
        // While guard bounds the page cache the writer can fill it to the bound at any moment,
        // whatever the last (up to 250 ms old) reading said. Braked, it counts too: the brake
        // ends on this same test, and a writer let go must not find the hold's room gone.
        let dirty = match self.dirty_limit.as_ref().and_then(|d| d.current) {
            Some(bound) if bound > 0 && !self.held => dirty.max(bound),
            _ => dirty,
        };
        let it = &self.items[i];
        let base = it.base.unwrap_or(0);
        let vg_full = self.vg_full.contains(&it.vg);
        // What lands before the watcher can act again: a host that delays its samples (a busy
        // or throttled machine) delays the hold as much. Capped: one slow tick (a journal
        // fsync) must not make a fast writer's hold come gigabytes early.
        let lead = match (it.prev, it.last) {
            (Some(p), Some(l)) => (l.duration_since(p) * 2).clamp(MIN_LEAD, MAX_LEAD),
            _ => MIN_LEAD,
        };
        let block = it.block();
        let (reserve, reserve_room) = it.reserve();
        // in danger is always reason to extend where there is room
        let data_need = !it.covers_origin()
            && (in_danger(it.size, it.used, self.hold_rate(i), dirty, lead, block)
                || it.free() < reserve
                || needs_extension(
                    it.size,
                    it.used,
                    base,
                    it.rate,
                    dirty,
                    horizon,
                    self.cfg.extend_at,
                ));
        let meta_need = it.thin
            && it.meta_size > 0
            && needs_extension(
                it.meta_size,
                it.meta_used,
                it.meta_base.unwrap_or(0),
                0.0,
                0,
                horizon,
                self.cfg.extend_at,
            );
        if !it.extendable {
            if data_need {
                self.merge_pending_warning(i);
            }
        } else if self.inflight.is_none() && !vg_full {
            let free = self.vg_free.get(&it.vg).copied().unwrap_or(0);
            let now = Instant::now();
            let waiting = |m: bool| self.retry.get(&(i, m)).is_some_and(|r| r.after > now);
            // a pool whose metadata fills turns read-only (no merge then): in danger, its
            // metadata goes before a data step that a steady writer may keep asking for
            let meta_danger = it.thin
                && it.meta_size > 0
                && in_danger(it.meta_size, it.meta_used, 0.0, 0, MIN_LEAD, 0);
            if meta_danger && !waiting(true) {
                self.extend_metadata(i, free);
            } else if data_need && waiting(false) {
                // the last try failed: its retry is due later
            } else if data_need {
                // With a command to pause, a step too small for a writer seen only for a few
                // milliseconds costs the command a pause (a writer outside its process group,
                // in a run's first ~100 ms, has the 3-horizon room of the next step only);
                // without one (the background watcher) it can cost the snapshot: there the raw
                // rate sizes the step too.
                let size_rate = if self.pgid.is_some() {
                    it.step_rate
                } else {
                    it.step_rate.max(it.rate)
                };
                let room = target_room(
                    it.growth_since_start(),
                    size_rate,
                    dirty,
                    horizon,
                    self.cfg.extend_at,
                )
                .max(reserve_room);
                match extension_step(it.size, it.used, room, block, it.extent, free) {
                    Some(step) => {
                        let extent = it.extent.max(1);
                        let last = step >= free / extent * extent;
                        let writing = it.rate > 0.0;
                        self.start_extension(i, step, false);
                        // with --when-full continue no hold follows: nothing to pause for
                        if last
                            && writing
                            && self.inflight.is_some()
                            && self.cfg.when_full != WhenFull::Continue
                        {
                            // After this one only the hold is left, and the writer must not use
                            // up the room while the extension is under way (a page-cache burst
                            // fills a small pool in a tenth of a second): pause it now; the
                            // next decision, with the new size, continues it or holds.
                            self.brake(i, "the volume group's last room is being added");
                        }
                        if let Some(f) = self.inflight.as_mut() {
                            f.last = last;
                        }
                    }
                    None => {
                        self.vg_full.insert(it.vg.clone());
                    }
                }
            } else if meta_need && !waiting(true) {
                self.extend_metadata(i, free);
            }
        }
        let it = &self.items[i];
        // pool metadata that fills is as fatal as data: the pool turns read-only
        let danger = in_danger(it.size, it.used, self.hold_rate(i), dirty, lead, block)
            || (it.thin
                && it.meta_size > 0
                && in_danger(it.meta_size, it.meta_used, 0.0, 0, MIN_LEAD, 0));
        if !danger {
            return false;
        }
        let failures = [false, true]
            .iter()
            .filter_map(|&m| self.retry.get(&(i, m)))
            .map(|r| r.failures)
            .max()
            .unwrap_or(0);
        if self.inflight.is_some() {
            self.brake(i, "writes outrun the extension under way");
        } else if self.vg_full.contains(&it.vg) || !it.extendable || failures >= GIVE_UP_AFTER {
            self.full(i);
        } else if failures > 0 && self.cfg.when_full != WhenFull::Continue {
            // the extension failed and is retried shortly: pause the writer meanwhile (step()
            // continues it once nothing is in danger)
            self.brake(i, "the extension failed and is retried");
        }
        true
    }

    /// Extends item `i`'s pool metadata by its step, within the VG's `free` room (none: the VG
    /// is full).
    fn extend_metadata(&mut self, i: usize, free: u64) {
        let it = &self.items[i];
        let extent = it.extent.max(1);
        let step = meta_step(it.meta_size).min(free / extent * extent);
        if step > 0 {
            self.start_extension(i, step, true);
        } else {
            self.vg_full.insert(it.vg.clone());
        }
    }

    /// Stops the command's group until the extension under way lands (and the next decision).
    fn brake(&mut self, i: usize, why: &str) {
        // no command (the background watcher): nothing to pause, and no "paused" to record
        if self.braked || self.held || self.rollback_requested || self.pgid.is_none() {
            return;
        }
        self.signal_group(Signal::SIGSTOP);
        self.braked = true;
        let name = self.items[i].name();
        ui::warn(&format!("{name}: {why}: command paused until it lands"));
        self.event(
            "paused",
            name,
            "command stopped until the extension completes".into(),
        );
    }

    /// A snapshot whose merge is pending fills and LVM cannot extend it: say so, at the
    /// threshold and at every further 10 % (the operator can still complete the rollback).
    fn merge_pending_warning(&mut self, i: usize) {
        let it = &self.items[i];
        let pct = it.pct();
        if pct < it.warned_pct + 10.0 && it.warned_pct > 0.0 {
            return;
        }
        self.items[i].warned_pct = pct;
        let it = &self.items[i];
        let name = it.name();
        let run = &self.run_id;
        let detail = format!(
            "the snapshot holding its scheduled rollback is {pct:.0}% full, and LVM cannot extend a snapshot whose merge is pending: complete the rollback before it fills (`guard rollback --finish {run}`, or reboot if it holds /)"
        );
        ui::warn(&format!("{name}: {detail}"));
        self.event("merge-pending-filling", name, detail);
    }

    fn start_extension(&mut self, i: usize, bytes: u64, metadata: bool) {
        let it = &self.items[i];
        let target = format!("{}/{}", it.vg, it.extend_lv);
        let mut cmd = match system_command("lvm") {
            Ok(c) => c,
            Err(e) => {
                ui::error(&e.to_string());
                self.failed_extension(i, metadata);
                return;
            }
        };
        cmd.arg("lvextend").arg("-q");
        // lvm archives metadata under /etc/lvm: on a filesystem this hold froze that would block
        if crate::dm::freeze::on_frozen_fs(std::path::Path::new("/etc/lvm")) {
            cmd.args(["--config", "backup{backup=0 archive=0}"]);
        }
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
                    metadata,
                    started: Instant::now(),
                    reaction,
                    last: false,
                    from: if metadata { it.meta_size } else { it.size },
                })
            }
            Err(e) => {
                ui::error(&format!("cannot run lvextend: {e}"));
                self.failed_extension(i, metadata);
            }
        }
    }

    /// Books a failed extension for a retry after a pause (see decide).
    fn failed_extension(&mut self, i: usize, metadata: bool) {
        let prev = self.retry.get(&(i, metadata)).copied();
        self.retry
            .insert((i, metadata), Retry::next(prev, Instant::now()));
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
            self.retry.remove(&(f.item, f.metadata));
            self.extend_cost = (self.extend_cost + took.max(Duration::from_millis(100))) / 2;
            if let Some(free) = self.vg_free.get_mut(&vg) {
                *free = free.saturating_sub(f.bytes);
            }
            if f.last {
                self.vg_full.insert(vg.clone());
            }
            let it = &mut self.items[f.item];
            it.extensions += 1;
            it.added += f.bytes;
            // the size never counts the step twice (see InFlight::from): the last one can land
            // after the last sample, and the report's size is this one
            let detail = if f.metadata {
                it.meta_size = it.meta_size.max(f.from + f.bytes);
                format!(
                    "thin pool {}/{} metadata +{} in {:.2}s ({:.0}% of the old size used)",
                    it.vg,
                    it.extend_lv,
                    human(f.bytes),
                    took.as_secs_f64(),
                    it.meta_used as f64 * 100.0
                        / it.meta_size.saturating_sub(f.bytes).max(1) as f64,
                )
            } else {
                it.size = it.size.max(f.from + f.bytes);
                let what = if it.thin { "thin pool" } else { "snapshot" };
                format!(
                    "{what} {}/{} +{} in {:.2}s (issued <= {} ms after the need arose; {:.0}% of the old size used when it landed; rate {}/s)",
                    it.vg,
                    it.extend_lv,
                    human(f.bytes),
                    took.as_secs_f64(),
                    f.reaction.as_millis(),
                    it.used as f64 * 100.0 / it.size.saturating_sub(f.bytes).max(1) as f64,
                    human(it.rate as u64)
                )
            };
            ui::say(&format!("{name}: extended {detail}"));
            self.event("extended", name, detail);
        } else {
            let mut err = String::new();
            if let Some(mut e) = f.child.stderr {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            let err = crate::exec::stderr_tail(err.as_bytes());
            ui::warn(&format!("{name}: lvextend failed: {err}"));
            if err.contains("internal logical volume") {
                // its merge was scheduled meanwhile: LVM extends such a snapshot no more
                self.items[f.item].extendable = false;
            } else if is_no_room(&err) {
                // --when-full decides (hold, roll back, continue) once the item is in danger;
                // room added later (set_vg_free, `guard resume`) ends it
                self.vg_full.insert(vg);
            } else {
                // Another failure (a metadata lock, a device): tried again after a pause; when
                // it keeps failing while the item is in danger, --when-full decides.
                self.failed_extension(f.item, f.metadata);
            }
            self.event("extend-failed", name, err);
        }
        // A held command stays stopped: only the hold's end continues it. After the last
        // extension landed the next decision, on the new size, continues it (or holds it).
        let keep_braked = f.last && status.success() && self.cfg.when_full != WhenFull::Continue;
        if self.braked && (self.held || !keep_braked) {
            if !self.held {
                self.signal_group(Signal::SIGCONT);
            }
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
        // The command is being killed for the rollback: a new hold would freeze the filesystem
        // under processes that must exit first (a writer waiting on a frozen filesystem cannot
        // die), and the rollback waits for them.
        if self.rollback_requested {
            return;
        }
        // Past its timeout the command is a failure and is being killed: a hold now would freeze
        // it where SIGKILL cannot reach it (a writer waiting on a frozen filesystem), and
        // nothing would thaw it. Roll back at once instead (kills, and thaws what was held).
        if self.timing_out {
            self.request_rollback("the command ran past its timeout and its room ran out");
            return;
        }
        let it = &self.items[i];
        let name = it.name();
        let what = if !it.extendable {
            format!(
                "its snapshot is {:.0}% full and cannot be extended (its merge is pending)",
                it.pct()
            )
        } else if it.thin && in_danger(it.meta_size, it.meta_used, 0.0, 0, MIN_LEAD, 0) {
            format!(
                "thin pool {}/{}'s metadata is {:.0}% full",
                it.vg,
                it.extend_lv,
                it.meta_pct()
            )
        } else if it.thin {
            format!(
                "thin pool {}/{} is {:.0}% full",
                it.vg,
                it.extend_lv,
                it.pct()
            )
        } else {
            format!("its snapshot is {:.0}% full", it.pct())
        };
        // not a full VG but an lvextend that kept failing (see decide): say that instead
        let failing = it.extendable && !self.vg_full.contains(&it.vg);
        let cause = if failing {
            format!(
                "lvextend of {}/{} keeps failing (above)",
                it.vg, it.extend_lv
            )
        } else {
            format!("volume group {} has no room", it.vg)
        };
        match self.cfg.when_full {
            WhenFull::Continue => {
                if self.continue_noted.insert(i) {
                    ui::warn(&format!(
                        "{name}: {what} and {cause}; --when-full continue: the rollback point will be lost when it fills (the operator's choice)"
                    ));
                    self.event(
                        "full-continue",
                        name,
                        "operator accepted losing the rollback point".into(),
                    );
                }
            }
            WhenFull::Freeze | WhenFull::Rollback => {
                if !self.held_items.insert(i) {
                    return;
                }
                // A pool already out of space holds every write, a freeze's flush too: FIFREEZE
                // would block guard with it (for dm-thin's no_space_timeout, or for ever where
                // that is 0). Stopping the command is all that can be done; the snapshot is
                // intact, the origin's queued writes wait for room.
                let mounts = if it.thin && it.out_of_data {
                    ui::error(&format!(
                        "thin pool {}/{} is OUT OF DATA SPACE: writes to its volumes wait (and fail after dm_thin_pool's no_space_timeout); the snapshot is intact",
                        it.vg, it.extend_lv
                    ));
                    Vec::new()
                } else {
                    it.mountpoints.clone()
                };
                let vg = it.vg.clone();
                self.signal_group(Signal::SIGSTOP);
                let frozen_what = match Frozen::freeze(&mounts) {
                    Ok(f) if !mounts.is_empty() => {
                        // added to what the hold froze already: replacing it would thaw that
                        match self.frozen.as_mut() {
                            Some(held) => held.absorb(f),
                            None => self.frozen = Some(f),
                        }
                        format!(
                            "froze {}",
                            mounts
                                .iter()
                                .map(|m| m.display().to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                    Ok(_) if self.items[i].out_of_data => {
                        "did not freeze (the pool cannot take a flush)".to_string()
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
                    ui::warn(&format!("{name}: {what} and {cause}: {frozen_what}; --when-full rollback: stopping the command and rolling back"));
                    self.request_rollback(&format!("--when-full rollback: {what} and {cause}"));
                } else if failing {
                    let pg = self.pgid.unwrap_or(0);
                    let run = &self.run_id;
                    ui::warn(&format!(
                        "{name}: {what} and {cause}.\n  To keep the rollback point guard {frozen_what} and stopped the command (process group {pg}).\n  Fix what stops lvextend, then: guard resume {run}\n  Or undo the change: guard rollback {run}"
                    ));
                } else {
                    let pg = self.pgid.unwrap_or(0);
                    let run = &self.run_id;
                    // lvm archives its metadata under /etc/lvm: with / frozen a plain vgextend
                    // or lvremove would block there like any other writer
                    let nb = if crate::dm::freeze::on_frozen_fs(std::path::Path::new("/etc/lvm")) {
                        " --config 'backup{backup=0 archive=0}'"
                    } else {
                        ""
                    };
                    ui::warn(&format!(
                        "{name}: {what} and volume group {vg} has no free space.\n  To keep the rollback point guard {frozen_what} and stopped the command (process group {pg}).\n  Free space in {vg} (vgextend{nb} {vg} DISK, or lvremove{nb} of an LV), then: guard resume {run}\n  Or undo the change: guard rollback {run} (with free space in {vg} first, the rollback is safe until it completes)"
                    ));
                }
            }
        }
    }

    /// Stops the command (its whole process group) so that the run rolls back.
    fn request_rollback(&mut self, why: &str) {
        if !self.rollback_requested {
            self.rollback_requested = true;
            self.rollback_reason = Some(why.to_string());
            ui::say(&format!("{why}: stopping the command to roll back"));
            self.event(
                "rollback-requested",
                String::new(),
                format!("{why}; the command's process group is killed"),
            );
        }
        self.signal_group(Signal::SIGKILL);
        self.signal_group(Signal::SIGCONT);
        // processes blocked on the frozen filesystem can only die once it is thawed
        self.held_items.clear();
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

    /// `guard resume RUN` while held: once the held VGs have room, thaw, extend, continue.
    fn try_resume(&mut self) {
        let vgs = crate::lvm::Lvm::vgs(&crate::lvm::real::RealLvm::default());
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
        // the operator asks to go on: failed extensions are tried again now
        self.retry.clear();
        // Thaw first: lvextend cannot suspend a frozen volume. The command stays stopped until
        // the extension has landed.
        if let Some(mut f) = self.frozen.take() {
            let _ = f.thaw_all();
        }
        for vg in held_vgs {
            self.vg_full.remove(&vg);
        }
        self.dirty = dirty_bytes();
        for i in 0..self.items.len() {
            let dirty = self.dirty_for(i);
            let it = &self.items[i];
            if it.invalid || !it.extendable || !self.vg_full.is_empty() {
                continue;
            }
            let free = self.vg_free.get(&it.vg).copied().unwrap_or(0);
            let base = it.base.unwrap_or(0);
            // held, its samples stopped and a braked writer shows no rate: its fastest pace
            let room = target_room(
                it.growth_since_start(),
                it.peak_step_rate,
                dirty,
                self.horizon(),
                self.cfg.extend_at,
            );
            let block = it.block();
            if let Some(step) = extension_step(it.size, it.used, room, block, it.extent, free) {
                if runway_used_pct(it.size, it.used, base) >= self.cfg.extend_at / 2.0 {
                    self.start_extension(i, step, false);
                    self.wait_inflight();
                }
            }
        }
        self.held = false;
        self.held_items.clear();
        self.signal_group(Signal::SIGCONT);
        self.braked = false;
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
        // a request made after the last tick of the run still counts
        self.steer(sig);
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
        // the command's writes have landed (settle): the kernel's own limits again
        if let Some(d) = self.dirty_limit.as_mut() {
            d.restore();
        }
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
    use signal_hook::consts::{SIGTERM, SIGUSR1, SIGUSR2};
    use std::os::unix::process::CommandExt;

    fn watcher() -> Watcher {
        let items = vec![WatchItem::snapshot(
            "vg",
            "a",
            "a-guard-x",
            8 << 20,
            4 << 20,
            vec![],
        )];
        let cfg = WatchConfig {
            extend_at: DEFAULT_EXTEND_AT,
            when_full: WhenFull::Freeze,
        };
        let mut w = Watcher::new(items, BTreeMap::new(), cfg, "20260101-000000-abcd");
        // no device-mapper in a unit test: only the operator's requests are exercised
        w.ctl = None;
        w
    }

    #[test]
    fn a_rollback_request_stops_a_running_command_at_the_next_tick() {
        let sig = SignalState::default();
        let mut w = watcher();
        // a real process group stands in for the command
        let mut child = command_stand_in(&mut w);
        sig.note(SIGUSR2);
        w.tick(&sig);
        assert!(w.rollback_requested, "not held, yet the request must act");
        assert!(w
            .rollback_reason
            .as_deref()
            .unwrap()
            .contains("guard rollback"));
        assert!(w.events.iter().any(|e| e.kind == "rollback-requested"));
        let st = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&st),
            Some(libc::SIGKILL)
        );
        // consumed: nothing is left for a later tick
        assert!(!sig.take_rollback_request());
    }

    #[test]
    fn a_resume_outside_a_hold_is_consumed_and_ignored() {
        let sig = SignalState::default();
        let mut w = watcher();
        sig.note(SIGUSR1);
        w.tick(&sig);
        assert!(!sig.take_resume_request());
        assert!(!w.rollback_requested && !w.held);
    }

    #[test]
    fn a_forwarded_terminate_is_no_rollback_request_for_a_later_hold() {
        let sig = SignalState::default();
        let mut w = watcher();
        // SIGTERM while the command runs: forwarded to it (it may handle it and go on)
        sig.note(SIGTERM);
        w.tick(&sig);
        assert!(!w.rollback_requested);
        // later the VG fills and guard holds the command
        w.held = true;
        w.tick(&sig);
        assert!(!w.rollback_requested, "a stale SIGTERM ended the hold");
        // a SIGTERM during the hold is the operator's wish to get out: roll back
        sig.note(SIGTERM);
        w.tick(&sig);
        assert!(w.rollback_requested && !w.held);
    }

    #[test]
    fn room_in_the_vg_again_ends_vg_full() {
        let mut w = watcher();
        w.vg_full.insert("vg".into());
        w.set_vg_free("vg", 1 << 20);
        assert!(w.vg_full(), "1 MiB is no room");
        w.set_vg_free("vg", 1 << 30);
        assert!(!w.vg_full());
        assert!(w.events.iter().any(|e| e.kind == "vg-room"));
    }

    /// A process in its own group, the watcher's command: what it pauses and continues.
    fn command_stand_in(w: &mut Watcher) -> std::process::Child {
        let child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        w.set_pgid(child.id() as i32);
        child
    }

    /// Books `child` as the lvextend of item 0's data, adding `bytes` to `from`, and waits for it.
    fn land(w: &mut Watcher, child: std::process::Child, bytes: u64, from: u64) {
        w.inflight = Some(InFlight {
            child,
            item: 0,
            bytes,
            metadata: false,
            started: Instant::now(),
            reaction: Duration::ZERO,
            last: false,
            from,
        });
        w.wait_inflight();
    }

    /// An lvextend stand-in that fails with `err` on stderr.
    fn failed_lvextend(w: &mut Watcher, err: &str) {
        let child = std::process::Command::new("sh")
            .args(["-c", &format!("echo '{err}' >&2; exit 5")])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let from = w.items[0].size;
        land(w, child, 4 << 20, from);
    }

    #[test]
    fn an_extension_seen_by_a_sample_before_lvextend_exits_is_not_counted_twice() {
        // lvm2 resumes the snapshot with its new size, then writes its metadata backup and
        // exits: a sample in between reads the new size already. The old bookkeeping added the
        // step again, and the last extension of a run (no sample after it) went into the report
        // 8-16 MiB too large.
        let mut w = watcher();
        // the sample's reading: already 12 MiB
        w.items[0].size = 12 << 20;
        let ok = || std::process::Command::new("true").spawn().unwrap();
        land(&mut w, ok(), 4 << 20, 8 << 20);
        assert_eq!(w.items[0].size, 12 << 20);
        assert_eq!(w.items[0].added, 4 << 20);
        assert_eq!(w.items[0].extensions, 1);
        // and when no sample came in between, the step is what it added
        land(&mut w, ok(), 8 << 20, 12 << 20);
        assert_eq!(w.items[0].size, 20 << 20);
    }

    #[test]
    fn a_transient_lvextend_failure_is_retried_not_taken_for_a_full_vg() {
        let mut w = watcher();
        failed_lvextend(&mut w, "  Volume group \"vg\" metadata lock timed out.");
        assert!(
            !w.vg_full(),
            "a failure that is not about room froze the run for good"
        );
        let r = w.retry[&(0, false)];
        assert_eq!(r.failures, 1);
        assert!(r.after > Instant::now(), "retried at once: no pause");
        failed_lvextend(&mut w, "  device busy");
        assert_eq!(w.retry[&(0, false)].failures, 2);
        // no room is a full VG, as before
        failed_lvextend(
            &mut w,
            "  Insufficient free space: 2 extents needed, but only 0 available",
        );
        assert!(w.vg_full());
    }

    #[test]
    fn a_failing_extension_pauses_the_writer_then_hands_over_to_when_full() {
        let mut w = watcher();
        // a command to pause (without one, the background watcher's case, there is nothing
        // to pause)
        let mut cmd = command_stand_in(&mut w);
        w.vg_free.insert("vg".into(), 1 << 30);
        // full to the brim: in danger
        w.items[0].used = w.items[0].size;
        let later = Instant::now() + Duration::from_secs(60);
        w.retry.insert(
            (0, false),
            Retry {
                failures: 1,
                after: later,
            },
        );
        assert!(w.decide(0, 0));
        assert!(w.braked && !w.held, "a retry is due: pause, not hold");
        assert!(w.inflight.is_none(), "retried before its pause ended");
        w.retry.insert(
            (0, false),
            Retry {
                failures: GIVE_UP_AFTER,
                after: later,
            },
        );
        assert!(w.decide(0, 0));
        assert!(w.held, "a lasting failure must reach --when-full");
        assert!(w.events.iter().any(|e| e.kind == "froze"));
        let _ = cmd.kill();
        let _ = cmd.wait();
    }

    #[test]
    fn a_kept_snapshot_is_extended_once_its_reserve_runs_short() {
        // the background watcher's numbers: 50 %, nothing to pause
        let kept = |origin: Option<u64>, used: u64| {
            let mut w = watcher();
            w.cfg = WatchConfig {
                extend_at: BACKGROUND_EXTEND_AT,
                when_full: WhenFull::Continue,
            };
            w.vg_free.insert("vg".into(), 1 << 30);
            if let Some(o) = origin {
                w.items[0] = w.items[0].clone().kept(o);
            }
            w.items[0].size = 72 << 20;
            w.items[0].used = used;
            w.decide(0, 0);
            // no lvm here: a started extension is one that failed to start, booked for a retry
            w.inflight.is_some() || w.retry.contains_key(&(0, false))
        };
        // 9 MiB written from idle (no rate yet), far below the threshold: 63 MiB free is short
        // of the reserve; without a reserve (a guarded command's own watcher) it waits
        assert!(kept(Some(200 << 20), 9 << 20));
        assert!(!kept(None, 9 << 20));
        assert!(
            !kept(Some(200 << 20), 8 << 20),
            "64 MiB free: the reserve is there"
        );
        // a snapshot covering its whole origin needs no reserve, and is not grown even past
        // the threshold (LVM would not add anything: an lvextend retried for ever)
        assert!(!kept(Some(60 << 20), 9 << 20));
        assert!(!kept(Some(71 << 20), 60 << 20));
        assert!(
            kept(Some(72 << 20), 60 << 20),
            "just short of covering it: the reserve"
        );
    }

    #[test]
    fn a_kept_snapshot_that_covers_its_origin_is_not_polled_closely() {
        let item = |origin: u64| {
            let mut it = watcher().items[0].clone().kept(origin);
            it.size = 72 << 20;
            it.used = 60 << 20;
            it.rate = 1e6;
            it
        };
        // written to and past the threshold: watched every 20 ms...
        assert!(item(200 << 20).hot(BACKGROUND_EXTEND_AT));
        // ...unless it covers its whole origin: it cannot fill, polling closely is only CPU
        assert!(!item(60 << 20).hot(BACKGROUND_EXTEND_AT));
        let mut idle = item(200 << 20);
        idle.rate = 0.0;
        idle.used = 8 << 20;
        assert!(!idle.hot(BACKGROUND_EXTEND_AT));
    }

    #[test]
    fn without_a_command_nothing_is_paused_and_no_pause_is_recorded() {
        // the background watcher: a "paused" event in a kept run's journal would be a lie
        let mut w = watcher();
        w.brake(0, "writes outrun the extension under way");
        assert!(!w.braked);
        assert!(w.events.is_empty());
    }

    #[test]
    fn a_full_vg_holds_while_a_fast_writer_could_still_fill_the_room() {
        // 16 MiB free of 44, no VG room, the writer only seen at 2 MiB/s (it was braked): a
        // disk writing back at 300 MiB/s fills that between two samples, so hold now
        let mut w = watcher();
        w.vg_full.insert("vg".into());
        w.items[0].size = 44 << 20;
        w.items[0].used = 28 << 20;
        w.items[0].rate = 2.0 * (1 << 20) as f64;
        w.items[0].peak_rate = w.items[0].rate;
        assert!(w.decide(0, 0));
        assert!(w.held);
        // half of it free: no hold
        let mut w = watcher();
        w.vg_full.insert("vg".into());
        w.items[0].size = 88 << 20;
        w.items[0].used = 44 << 20;
        assert!(!w.decide(0, 0));
        assert!(!w.held);
    }

    #[test]
    fn no_hold_once_the_command_is_being_killed() {
        // past the timeout: a hold would freeze the command where SIGKILL cannot reach it
        let mut w = watcher();
        w.vg_full.insert("vg".into());
        w.items[0].used = w.items[0].size;
        w.stop_for_timeout();
        assert!(w.decide(0, 0));
        assert!(!w.held && w.frozen.is_none(), "no hold while timing out");
        assert!(w.rollback_requested, "a timed-out run in danger rolls back");
        // and once the rollback is asked for, no new hold or brake either
        assert!(w.decide(0, 0));
        assert!(!w.held && !w.braked);
        assert!(!w
            .events
            .iter()
            .any(|e| e.kind == "froze" || e.kind == "paused"));
    }

    #[test]
    fn retries_back_off_to_eight_seconds() {
        let now = Instant::now();
        let mut r = Retry::next(None, now);
        assert_eq!(r.after - now, Duration::from_millis(500));
        for _ in 0..10 {
            r = Retry::next(Some(r), now);
        }
        assert_eq!(r.after - now, Duration::from_secs(8));
    }

    #[test]
    fn a_pending_merge_is_watched_not_extended() {
        let it = WatchItem::snapshot("vg", "a", "s", 8 << 20, 4 << 20, vec![]).merge_pending();
        assert!(!it.extendable);
        // a thin pool stays extendable: the pool is an ordinary LV
        let p = WatchItem::pool("vg", "t", "pool", 0, 4 << 20, vec![]).merge_pending();
        assert!(p.extendable);
    }

    #[test]
    fn reads_dirty_memory() {
        // a number, whatever it is on this machine
        let _ = dirty_bytes();
        let me = std::process::id() as i32;
        let _ = tree_written(me);
    }
}

//! The run record as the journal keeps it: phases, outcomes, per-target states, the watcher's
//! events, saved paths. Types only, no I/O: the store writes them, everything else reads them.
use super::TargetState;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What the watcher (or a rollback) did, as the journal and the report show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at: String,
    pub kind: String,
    pub lv: String,
    pub detail: String,
}

/// A path outside LVM archived before the change (e.g. /boot), put back on rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedPath {
    pub path: PathBuf,
    pub archive: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Written before the first snapshot: snapshots may or may not exist.
    Snapshotting,
    /// The command was started.
    Running,
    /// The command ended and the outcome is decided; the action may not have run yet.
    Decided,
    /// Merging snapshots back.
    RollingBack,
    /// Merges wait for the origins' next activation.
    RollbackScheduled,
    /// Removing snapshots after success.
    Committing,
    /// Snapshots kept on purpose, waiting for `guard commit` or `guard rollback`.
    Kept,
    /// Nothing left to do.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Success,
    Failure,
    /// Stopped before the command ran (refused, interrupted, snapshot failed).
    Aborted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Final {
    /// Snapshots removed: the change stays.
    Committed,
    /// Snapshots merged: the change is undone.
    RolledBack,
    /// Snapshots left for the operator.
    Kept,
    /// Nothing to do (aborted before the command).
    Nothing,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetRecord {
    pub vg: String,
    pub lv: String,
    pub snapshot: String,
    pub thin: bool,
    pub cow_bytes: Option<u64>,
    pub mountpoints: Vec<PathBuf>,
    /// The highest COW (thick) or pool data (thin) use seen, in percent.
    #[serde(default)]
    pub max_used_percent: Option<f64>,
    /// Set once a rollback was attempted.
    #[serde(default)]
    pub rollback: Option<TargetState>,
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub extensions: u32,
    #[serde(default)]
    pub invalidated: bool,
    /// How long the merge of a rollback took (lvm2's command, or `--finish`'s reactivation and
    /// wait): what the changed data cost to copy back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_seconds: Option<f64>,
    /// The most COW space the run used: a snapshot's allocated COW, or a thin pool's growth
    /// since the run began (whoever wrote it); and the VG space the watchers' extensions took
    /// (data and pool metadata): what the run cost the VG beyond the planned size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_used_bytes: Option<u64>,
    #[serde(default)]
    pub added_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub schema: u32,
    pub id: String,
    pub started: String,
    pub updated: String,
    pub command: Vec<String>,
    pub guard_pid: u32,
    /// /proc/PID/stat start time, so a recycled PID is not taken for guard or its child.
    pub guard_start: u64,
    pub child_pid: Option<u32>,
    pub child_start: Option<u64>,
    pub phase: Phase,
    pub on_failure: String,
    pub on_success: String,
    pub keep_until: Option<String>,
    pub outcome: Option<Outcome>,
    pub exit_status: Option<i32>,
    pub reason: Option<String>,
    pub final_state: Option<Final>,
    pub targets: Vec<TargetRecord>,
    /// Mount points guard froze and holds now: recover thaws them if guard died.
    #[serde(default)]
    pub frozen: Vec<PathBuf>,
    /// What the watcher did: extensions, freezes, invalidations.
    #[serde(default)]
    pub events: Vec<Event>,
    /// Device-mapper devices guard holds suspended (the consistency point of a set): the
    /// watchdog resumes them if guard dies; recover checks again.
    #[serde(default)]
    pub suspended: Vec<String>,
    /// The policy the run followed (its rollback hooks apply to `guard rollback RUN` too).
    #[serde(default)]
    pub policy: Option<String>,
    /// Why a command that exited 0 still counted as a failure.
    #[serde(default)]
    pub failed_check: Option<String>,
    /// Paths outside the set archived before the snapshots (e.g. /boot): restored on rollback.
    #[serde(default)]
    pub saved: Vec<SavedPath>,
    /// How long writers were held for the snapshots, in ms: from the hold hooks' ready line
    /// (a database's read lock granted) to their end; without hold hooks, the snapshot step.
    #[serde(default)]
    pub writers_held_ms: Option<u64>,
    /// A rollback with pre_rollback hooks (a service stopped): ms from those hooks' start to
    /// the end of the post_rollback hooks, the time the service was down.
    #[serde(default)]
    pub downtime_ms: Option<u64>,
    /// Set for `guard snapshot` runs: the snapshots are a point-in-time copy for a command
    /// (a backup), never a rollback point. Ending such a run always removes them.
    #[serde(default)]
    pub copy: Option<CopyRun>,
    /// `guard mount RUN`: a kept run's snapshots mounted read-only for the operator; commit and
    /// rollback unmount them first (a mounted snapshot cannot be merged or removed).
    #[serde(default)]
    pub mounted: Option<CopyRun>,
    /// `--preserve`: paths whose contents at the rollback are kept through it.
    #[serde(default)]
    pub preserve: Vec<PathBuf>,
    /// `guard restore RUN PATH`: what was taken back from the snapshot, when.
    #[serde(default)]
    pub restored: Vec<Event>,
    /// Advice about the run (a thick target under a database policy).
    #[serde(default)]
    pub notes: Vec<String>,
    /// A trial boot of the change (`--trial-boot`): its state and what its fallback boots.
    #[serde(default)]
    pub trial: Option<Trial>,
}

/// Where a trial boot stands. GRUB's own counter (armed → booting → fallback) lives in its
/// environment block; this is guard's side of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrialState {
    /// The old kernel and initramfs are copied; the change has not ended yet. (A fallback
    /// boot finds the run in this state: the journal went back to the moment of the snapshot.)
    Prepared,
    /// The next boot is the trial: GRUB's entries and counter are in place.
    Armed,
    /// The trial boot came up healthy: the fallback entry is gone, the run stays kept.
    Confirmed,
    /// The trial boot failed (panic, hang, missed deadline, failed check): GRUB booted the
    /// fallback, which rolled the change back.
    FellBack,
    /// Ended without a trial boot (committed, rolled back, or arming failed).
    Ended,
}

impl TrialState {
    pub fn as_str(self) -> &'static str {
        match self {
            TrialState::Prepared => "prepared",
            TrialState::Armed => "armed",
            TrialState::Confirmed => "confirmed",
            TrialState::FellBack => "fell-back",
            TrialState::Ended => "ended",
        }
    }
}

/// A trial as reports and `guard status` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrialReport {
    pub state: &'static str,
    pub old_kernel: String,
    pub deadline_seconds: u64,
    pub boot_id: Option<String>,
    pub note: Option<String>,
}

impl Trial {
    pub fn report(&self) -> TrialReport {
        TrialReport {
            state: self.state.as_str(),
            old_kernel: self.old_release.clone(),
            deadline_seconds: self.deadline_secs,
            boot_id: self.boot_id.clone(),
            note: self.note.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    pub state: TrialState,
    /// grub-common's version before the change (arming is refused when the change upgraded it).
    #[serde(default)]
    pub grub_version: Option<String>,
    /// The kernel release that ran before the change (what the fallback boots).
    pub old_release: String,
    /// Seconds the trial boot has to be confirmed before systemd reboots it.
    pub deadline_secs: u64,
    /// Units failed before the change: a trial boot is not blamed for them.
    #[serde(default)]
    pub failed_before: Vec<String>,
    /// Enabled services running before the change: the trial boot must run them too.
    #[serde(default)]
    pub active_before: Vec<String>,
    /// The boot (/proc/sys/kernel/random/boot_id) that confirmed or fell back.
    #[serde(default)]
    pub boot_id: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
}

/// A `guard snapshot` run: where the snapshots were mounted for the command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CopyRun {
    /// GUARD_SNAPSHOT_ROOT.
    pub root: PathBuf,
    /// What guard mounted, deepest last; recover unmounts them (deepest first).
    pub mounted: Vec<CopyMount>,
    /// `guard rehearse`: the command itself ran on these writable copies.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rehearsal: bool,
}

/// One snapshot mounted for a copy: where, and the device (major, minor), so that only that
/// mount is ever unmounted there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CopyMount {
    pub at: PathBuf,
    pub dev: (u32, u32),
}

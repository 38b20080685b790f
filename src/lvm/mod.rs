//! The LVM adapter. `Lvm` speaks at the level of what guard wants done (snapshot this origin,
//! merge that snapshot), not of command lines; `RealLvm` runs the lvm2 tools, `SimLvm` keeps an
//! in-memory model for fast unit tests of the transaction logic. Only the real one proves
//! anything about LVM: the VM tier (tests/vm) runs it against real volume groups.
pub mod early;
pub mod real;
pub mod report;
pub mod shell;
pub mod sim;

use crate::error::Result;

/// Tag on every snapshot guard makes: `lvs @guard` lists them.
pub const TAG: &str = "guard";
/// Tag naming the run a snapshot belongs to: `guard-run:<RUN>`.
pub const RUN_TAG_PREFIX: &str = "guard-run:";
/// On the snapshots of a `guard snapshot` copy: never a rollback point, whatever the journal
/// says (or no longer says).
pub const COPY_TAG: &str = "guard-copy";
/// Tag put on an origin whose merge was deferred to its next activation. It lives in the VG
/// metadata, so it survives the rollback of the filesystem that holds guard's journal.
pub const MERGE_TAG_PREFIX: &str = "guard-merge:";

#[derive(Debug, Clone, PartialEq)]
pub struct Lv {
    pub name: String,
    pub vg: String,
    pub attr: String,
    pub size: u64,
    pub extent_size: u64,
    /// The VG's free bytes, when the report carried it (saves a `vgs` call).
    pub vg_free: Option<u64>,
    pub origin: Option<String>,
    pub pool: Option<String>,
    pub tags: Vec<String>,
    pub merging: bool,
    pub invalid: bool,
    pub snap_percent: Option<f64>,
    pub data_percent: Option<f64>,
    pub metadata_percent: Option<f64>,
    pub kernel_dev: Option<(u32, u32)>,
    pub dm_path: String,
    pub segtype: String,
    pub active: bool,
    pub open: bool,
    pub uuid: String,
    pub hidden: bool,
}

impl Lv {
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.vg, self.name)
    }
    pub fn is_snapshot(&self) -> bool {
        self.origin.is_some() || matches!(self.attr.chars().next(), Some('s' | 'S'))
    }
    pub fn is_thin(&self) -> bool {
        self.segtype == "thin"
    }
    pub fn is_thick_snapshot(&self) -> bool {
        self.is_snapshot() && !self.is_thin()
    }
    /// Pools, their hidden parts, mirrors' legs and the like: never a target.
    pub fn is_internal(&self) -> bool {
        self.hidden
            || matches!(
                self.segtype.as_str(),
                "thin-pool" | "cache-pool" | "vdo-pool"
            )
    }
    pub fn run_id(&self) -> Option<&str> {
        self.tags
            .iter()
            .find_map(|t| t.strip_prefix(RUN_TAG_PREFIX))
    }
    pub fn is_guard_snapshot(&self) -> bool {
        self.is_snapshot() && self.tags.iter().any(|t| t == TAG)
    }
    pub fn merge_tag_runs(&self) -> impl Iterator<Item = &str> {
        self.tags
            .iter()
            .filter_map(|t| t.strip_prefix(MERGE_TAG_PREFIX))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Vg {
    pub name: String,
    pub size: u64,
    pub free: u64,
    pub extent_size: u64,
    pub free_extents: u64,
}

/// What the caller asks for: thick snapshots need a COW size, thin ones take none.
#[derive(Debug, Clone)]
pub struct SnapshotRequest {
    pub vg: String,
    pub origin: String,
    pub name: String,
    pub cow_bytes: Option<u64>,
    pub tags: Vec<String>,
    /// The origin is held suspended by guard (the consistency point): lvcreate must not wait
    /// for udev nor write metadata backups under /etc/lvm, which may be on a held volume.
    pub held: bool,
}

/// Whether an action changed anything (stratisd's Created/Identity), so that recovery can be
/// run twice and say truthfully that the second time did nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Changed,
    Identity,
}

/// How `lvconvert --merge` left a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeState {
    /// The origin was closed: the merge ran and the snapshot is gone.
    Done,
    /// The origin is open: the merge happens at its next activation.
    Deferred,
}

pub trait Lvm {
    /// Every LV of every VG, hidden ones included.
    fn lvs(&self) -> Result<Vec<Lv>>;
    fn vgs(&self) -> Result<Vec<Vg>>;
    fn create_snapshot(&self, req: &SnapshotRequest) -> Result<()>;
    /// Removes an LV; `Identity` if it was already gone.
    fn remove(&self, vg: &str, name: &str) -> Result<Action>;
    /// Starts merging a snapshot into its origin.
    fn merge(&self, vg: &str, origin: &str, snapshot: &str) -> Result<MergeState>;
    fn add_tag(&self, vg: &str, lv: &str, tag: &str) -> Result<()>;
    fn del_tag(&self, vg: &str, lv: &str, tag: &str) -> Result<()>;
    /// Deactivates and activates an LV: the moment a deferred merge starts.
    fn reactivate(&self, vg: &str, lv: &str) -> Result<()>;
    /// Waits in the foreground for a merge that has started to finish.
    fn finish_merge(&self, vg: &str, lv: &str) -> Result<()>;
    /// Is a merge running in the kernel now (after activation), rather than waiting for one?
    fn merge_in_progress(&self, origin: &Lv) -> Result<bool>;
    /// Grows an LV (a thick snapshot's COW, or a thin pool) by `bytes`.
    fn extend(&self, vg: &str, lv: &str, bytes: u64) -> Result<()>;
    /// Writes the VG's metadata backup (/etc/lvm/backup), skipped while volumes were held.
    fn backup_metadata(&self, vg: &str) -> Result<()>;
    /// Activates an LV, also one LVM skips at activation (a thin snapshot), to read it.
    /// Deactivates an LV guard activated for a moment (a thin snapshot read by `guard diff`).
    fn deactivate(&self, vg: &str, lv: &str) -> Result<()>;
    fn activate(&self, vg: &str, lv: &str) -> Result<()>;
}

/// The VGs as seen through an LV report (one `lvs` call answers both).
pub fn vgs_from_lvs(lvs: &[Lv]) -> Vec<Vg> {
    let mut out: Vec<Vg> = Vec::new();
    for l in lvs {
        if out.iter().any(|v| v.name == l.vg) {
            continue;
        }
        if let Some(free) = l.vg_free {
            out.push(Vg {
                name: l.vg.clone(),
                size: 0,
                free,
                extent_size: l.extent_size,
                free_extents: free / l.extent_size.max(1),
            });
        }
    }
    out
}

pub fn find<'a>(lvs: &'a [Lv], vg: &str, name: &str) -> Option<&'a Lv> {
    lvs.iter().find(|l| l.vg == vg && l.name == name)
}

//! What a run changed, as `guard diff` shows it and the journal keeps it: paths per target and,
//! where the run changed dpkg's database, packages. Types only, no I/O.
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub const SCHEMA: &str = "guard.diff/1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
    /// Renamed within the filesystem: `from` is where it was.
    Moved,
}

impl ChangeKind {
    /// One column, as `snapper status` and `git status --short` print it.
    pub fn mark(self) -> char {
        match self {
            ChangeKind::Added => '+',
            ChangeKind::Modified => 'c',
            ChangeKind::Deleted => '-',
            ChangeKind::Moved => 'm',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub kind: ChangeKind,
    /// The live path (absolute, where the target is mounted).
    pub path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<PathBuf>,
    #[serde(default)]
    pub dir: bool,
    /// For `modified`: what differs, when known ("content", "attributes").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// How the list of paths was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeSource {
    /// Recorded while the command ran (fanotify on the target's filesystem).
    Recorded,
    /// The snapshot compared with the live filesystem (metadata, then contents).
    Compared,
    /// Neither: the target was not mounted, or the recording failed and the snapshot is gone.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoreUnder {
    pub dir: PathBuf,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetChanges {
    /// vg/lv
    pub target: String,
    pub mountpoint: Option<PathBuf>,
    pub source: ChangeSource,
    /// False when paths may be missing (the kernel's event queue overflowed, a folder that was
    /// deleted before its events were read): `note` says why.
    pub complete: bool,
    pub changes: Vec<Change>,
    /// Past the limit on paths kept: how many more changed under each folder.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_under: Vec<MoreUnder>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PackageChangeKind {
    Installed,
    Upgraded,
    Downgraded,
    Removed,
    /// Left unpacked, half-installed or half-configured: dpkg failed on it.
    Broken,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageChange {
    pub kind: PackageChangeKind,
    /// name, with `:arch` for a foreign architecture
    pub package: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<String>,
    /// dpkg's status word for a broken package (half-configured, unpacked, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// A run's change, as the journal keeps it next to the record (`RUN.changes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunChanges {
    pub schema: String,
    pub run: String,
    pub targets: Vec<TargetChanges>,
    #[serde(default)]
    pub packages: Vec<PackageChange>,
}

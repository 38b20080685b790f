//! The journal: one JSON file per run under /var/lib/guard/runs, rewritten atomically (temp
//! file, fsync, rename, fsync of the folder) at every phase change, so that after a crash or a
//! power cut `guard recover` knows where each run stood. The LVM tags on the snapshots (and on an
//! origin whose merge was deferred) are the second source of truth: a rollback of the filesystem
//! holding this folder turns the journal back to the moment of the snapshot.
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const DEFAULT_DIR: &str = "/var/lib/guard";
pub const SCHEMA: u32 = 1;

/// Where the journal lives; GUARD_STATE_DIR moves it (tests, or a system whose /var is odd).
pub fn state_dir() -> PathBuf {
    std::env::var_os("GUARD_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| DEFAULT_DIR.into())
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
    /// done | scheduled | impossible | none, once a rollback was attempted.
    #[serde(default)]
    pub rollback: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub extensions: u32,
    #[serde(default)]
    pub invalidated: bool,
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
    pub events: Vec<crate::watcher::Event>,
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
    pub saved: Vec<crate::saved::SavedPath>,
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub fn open_default() -> Self {
        Journal {
            dir: state_dir().join("runs"),
        }
    }

    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Journal { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn ensure_dir(&self) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        if let Some(parent) = self.dir.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .ok();
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| Error::io(format!("cannot create {}", self.dir.display()), e))
    }

    /// Atomically replaces the run's file: a reader sees the old or the new record, never half.
    pub fn write(&self, rec: &mut RunRecord) -> Result<()> {
        self.ensure_dir()?;
        rec.updated = now_rfc3339();
        let ctx = |what: &str| format!("cannot {what} the journal in {}", self.dir.display());
        let mut tmp = tempfile::Builder::new()
            .prefix(".run-")
            .tempfile_in(&self.dir)
            .map_err(|e| Error::io(ctx("write"), e))?;
        let body = serde_json::to_vec_pretty(rec)?;
        tmp.write_all(&body)
            .map_err(|e| Error::io(ctx("write"), e))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| Error::io(ctx("sync"), e))?;
        tmp.persist(self.path(&rec.id))
            .map_err(|e| Error::io(ctx("rename into"), e.error))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(ctx("sync"), e))
    }

    pub fn load(&self, id: &str) -> Result<RunRecord> {
        let p = self.path(id);
        let text = std::fs::read(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::refused(
                    format!("no run {id:?} in {}", self.dir.display()),
                    "list runs with `guard status --all`",
                )
            } else {
                Error::io(format!("cannot read {}", p.display()), e)
            }
        })?;
        serde_json::from_slice(&text)
            .map_err(|e| Error::Other(format!("journal file {} is damaged: {e}", p.display())))
    }

    /// Every run, oldest first. Damaged files are reported, not fatal: one bad file must not
    /// stop recovery of the others.
    pub fn list(&self) -> (Vec<RunRecord>, Vec<String>) {
        let mut runs = Vec::new();
        let mut problems = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return (runs, problems);
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            match self.load(id) {
                Ok(r) => runs.push(r),
                Err(err) => problems.push(err.to_string()),
            }
        }
        runs.sort_by(|a, b| a.id.cmp(&b.id));
        (runs, problems)
    }
}

/// A run id: sortable by time, short enough for LV names, unique enough for one host.
pub fn new_run_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let compact: String = stamp
        .chars()
        .filter(|c| c.is_ascii_digit())
        .take(14)
        .collect();
    let salt = (now.subsec_nanos() ^ (std::process::id() << 12)) & 0xffff;
    format!("{}-{}-{salt:04x}", &compact[..8], &compact[8..])
}

/// Start time of a process (field 22 of /proc/PID/stat), to tell it from a recycled PID.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the command name may hold spaces and parentheses: fields start after the last ')'
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

pub fn process_alive(pid: u32, start: u64) -> bool {
    process_start(pid) == Some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> RunRecord {
        RunRecord {
            schema: SCHEMA,
            id: id.into(),
            started: now_rfc3339(),
            updated: String::new(),
            command: vec!["true".into()],
            guard_pid: 1,
            guard_start: 0,
            child_pid: None,
            child_start: None,
            phase: Phase::Snapshotting,
            on_failure: "rollback".into(),
            on_success: "discard".into(),
            keep_until: None,
            outcome: None,
            exit_status: None,
            reason: None,
            final_state: None,
            targets: vec![],
            frozen: vec![],
            events: vec![],
            suspended: vec![],
            policy: None,
            failed_check: None,
            saved: vec![],
        }
    }

    #[test]
    fn write_then_load_round_trips_and_leaves_no_temp_files() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::at(d.path().join("runs"));
        let mut r = record("20261127-101010-abcd");
        j.write(&mut r).unwrap();
        r.phase = Phase::Done;
        j.write(&mut r).unwrap();
        assert_eq!(j.load(&r.id).unwrap().phase, Phase::Done);
        let names: Vec<_> = std::fs::read_dir(j.dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn a_damaged_file_does_not_hide_the_others() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::at(d.path());
        j.write(&mut record("a")).unwrap();
        std::fs::write(d.path().join("b.json"), b"{truncated").unwrap();
        let (runs, problems) = j.list();
        assert_eq!(runs.len(), 1);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("damaged"));
    }

    #[test]
    fn run_ids_are_lv_name_safe() {
        let id = new_run_id();
        assert_eq!(id.len(), 20, "{id}");
        assert!(
            id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "{id}"
        );
    }

    #[test]
    fn own_process_is_alive_and_start_time_matters() {
        let me = std::process::id();
        let start = process_start(me).unwrap();
        assert!(process_alive(me, start));
        assert!(!process_alive(me, start + 1));
    }
}

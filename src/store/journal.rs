//! The journal: one JSON file per run under /var/lib/guard/runs, rewritten atomically (temp
//! file, fsync, rename, fsync of the folder) at every phase change, so that after a crash or a
//! power cut `guard recover` knows where each run stood. The LVM tags on the snapshots (and on an
//! origin whose merge was deferred) are the second source of truth: a rollback of the filesystem
//! holding this folder turns the journal back to the moment of the snapshot.
use crate::error::{Error, Result};
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

pub use crate::model::record::{Final, Outcome, Phase, RunRecord, TargetRecord};

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

pub struct Journal {
    dir: PathBuf,
    /// Where records go while `dir` cannot be written (see `write`).
    fallback: Option<PathBuf>,
}

impl Journal {
    pub fn open_default() -> Self {
        Journal {
            dir: state_dir().join("runs"),
            fallback: Some(fallback_dir()),
        }
    }

    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Journal {
            dir: dir.into(),
            fallback: None,
        }
    }

    pub fn with_fallback(mut self, dir: impl Into<PathBuf>) -> Self {
        self.fallback = Some(dir.into());
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// The journal's folder, made 0700 or checked (store.rs) before a record is written; the
    /// default one's parent, the state folder, too.
    fn ensure_dir(&self) -> Result<()> {
        self.secure_dir().map(|_| ())
    }

    fn secure_dir(&self) -> Result<crate::store::SecureDir> {
        if self.dir == state_dir().join("runs") {
            crate::store::state_subdir("runs")
        } else {
            crate::store::secure_dir(&self.dir, crate::store::Folder::State)
        }
    }

    /// The first write of a new run: its file must not exist yet, so that an id drawn twice
    /// never overwrites another run's journal. On a clash a new id is drawn (`rec.id` changes:
    /// call this before anything is named after the id), up to 5 times.
    pub fn create(&self, rec: &mut RunRecord) -> Result<()> {
        if !valid_run_id(&rec.id) {
            return Err(Error::Other(format!("invalid run id {:?}", rec.id)));
        }
        rec.updated = now_rfc3339();
        for _ in 0..5 {
            if self.write_new(rec)? {
                return Ok(());
            }
            rec.id = new_run_id();
        }
        Err(Error::Other(format!(
            "cannot create a journal file in {}: every run id drawn was taken",
            self.dir.display()
        )))
    }

    /// The guarded run's first write: its id is already in its snapshots' names, so a file
    /// that exists (a collision, or someone's planted file) is an error, never overwritten.
    pub fn create_exclusive(&self, rec: &mut RunRecord) -> Result<()> {
        rec.updated = now_rfc3339();
        if self.write_new(rec)? {
            Ok(())
        } else {
            Err(Error::Other(format!(
                "run {} is in the journal already; nothing was changed, run the command again",
                rec.id
            )))
        }
    }

    /// Like write_to, but only if the run's file does not exist yet: false when it does.
    fn write_new(&self, rec: &RunRecord) -> Result<bool> {
        let dir = self.secure_dir()?;
        let ctx = |what: &str| format!("cannot {what} the journal in {}", self.dir.display());
        let mut tmp = tempfile::Builder::new()
            .prefix(".run-")
            .tempfile_in(&self.dir)
            .map_err(|e| Error::io(ctx("write"), e))?;
        tmp.write_all(&serde_json::to_vec_pretty(rec)?)
            .map_err(|e| Error::io(ctx("write"), e))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| Error::io(ctx("sync"), e))?;
        // link(2) or renameat2(RENAME_NOREPLACE): atomic, and fails if the file exists
        match tmp.persist_noclobber(self.path(&rec.id)) {
            Ok(_) => {}
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(Error::io(ctx("rename into"), e.error)),
        }
        dir.sync()?;
        Ok(true)
    }

    /// Records the run. A failure to write the journal (a full /var after an upgrade, a frozen
    /// filesystem) must not lose a decision guard has taken: the record then goes to the
    /// fallback folder under /run (tmpfs), which `load` and `list` read first, and reaches the
    /// journal at the next write that succeeds. Fails only when neither can be written.
    pub fn write(&self, rec: &mut RunRecord) -> Result<()> {
        rec.updated = now_rfc3339();
        let fallback = self.fallback_path(&rec.id);
        let primary = if crate::fault::fail("journal-write") {
            Err(Error::Other("test fault: journal write failed".into()))
        } else if self.fallback.is_some() && crate::dm::freeze::on_frozen_fs(&self.dir) {
            // guard holds the journal's own filesystem frozen (the VG-full hold of / or /var):
            // writing there would block until a thaw only this process can do
            Err(Error::Other(format!(
                "{} is on a filesystem guard holds frozen",
                self.dir.display()
            )))
        } else {
            self.write_to(&self.dir, rec)
        };
        match primary {
            Ok(()) => {
                if let Some(f) = fallback.filter(|f| f.exists()) {
                    // the journal has caught up: the interim copy is stale now
                    let _ = std::fs::remove_file(f);
                }
                Ok(())
            }
            // an unsafe state folder is refused, not worked around
            Err(e @ Error::Refused { .. }) => Err(e),
            Err(e) => {
                let Some(fb) = self.fallback_dir() else {
                    return Err(e);
                };
                self.write_to(&fb, rec).map_err(|e2| {
                    Error::Other(format!(
                        "{e}; the fallback record under {} failed too: {e2}",
                        fb.display()
                    ))
                })?;
                crate::ui::warn(&format!(
                    "{e}: run {} is recorded under {} until the journal can be written",
                    rec.id,
                    fb.display()
                ));
                Ok(())
            }
        }
    }

    /// Moves records kept in the fallback folder into the journal once it can be written
    /// again, so that they outlive the next boot (which empties /run).
    pub fn catch_up(&self) {
        let Some(fb) = self.fallback_dir() else {
            return;
        };
        // a guard holds the journal's filesystem frozen: any write there would block
        if crate::dm::freeze::on_frozen_fs(&self.dir) {
            return;
        }
        let Ok(rd) = std::fs::read_dir(&fb) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name
                .strip_suffix(".json")
                .filter(|_| !name.starts_with('.'))
            else {
                continue;
            };
            let Ok(rec) = self.load(id) else { continue };
            // a live guard writes its own record (and may hold the journal's filesystem
            // frozen); otherwise only under the run's lock, never over a newer record
            if rec.guard_pid != 0 && process_alive(rec.guard_pid, rec.guard_start) {
                continue;
            }
            let Ok(Some(_lock)) = crate::store::lock::try_lock_run(id) else {
                continue;
            };
            if self.write_to(&self.dir, &rec).is_ok() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Whether run `id`'s latest record is only in the fallback folder (the journal could not
    /// be written): it would not survive a reboot.
    pub fn fell_back(&self, id: &str) -> bool {
        self.fallback_path(id).is_some_and(|p| p.exists())
    }

    /// Where records go when the journal cannot be written (None: the journal is itself there).
    fn fallback_dir(&self) -> Option<PathBuf> {
        self.fallback.clone().filter(|d| *d != self.dir)
    }

    fn fallback_path(&self, id: &str) -> Option<PathBuf> {
        self.fallback_dir().map(|d| d.join(format!("{id}.json")))
    }

    /// Atomically replaces the run's file in `dir`: a reader sees the old or the new record,
    /// never half.
    fn write_to(&self, dir: &Path, rec: &RunRecord) -> Result<()> {
        if dir == self.dir {
            self.ensure_dir()?;
        } else {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        }
        let ctx = |what: &str| format!("cannot {what} the journal in {}", dir.display());
        let mut tmp = tempfile::Builder::new()
            .prefix(".run-")
            .tempfile_in(dir)
            .map_err(|e| Error::io(ctx("write"), e))?;
        let body = serde_json::to_vec_pretty(rec)?;
        tmp.write_all(&body)
            .map_err(|e| Error::io(ctx("write"), e))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| Error::io(ctx("sync"), e))?;
        tmp.persist(dir.join(format!("{}.json", rec.id)))
            .map_err(|e| Error::io(ctx("rename into"), e.error))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(ctx("sync"), e))
    }

    pub fn load(&self, id: &str) -> Result<RunRecord> {
        // A record in the fallback folder is newer than the journal's (it is removed as soon as
        // the journal is written again).
        let p = match self.fallback_path(id).filter(|f| f.exists()) {
            Some(f) => f,
            None => self.path(id),
        };
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

    /// A run's change (`guard diff`), beside its record: written once when the command ends,
    /// not with every record write (it can hold many paths).
    pub fn write_changes(&self, c: &crate::model::change::RunChanges) -> Result<()> {
        if crate::dm::freeze::on_frozen_fs(&self.dir) {
            // another guard holds the journal's filesystem frozen (its VG is full): writing
            // would block this run before its decision; the list is the part that can go
            return Err(Error::Other(format!(
                "{} is frozen by another guard run: the change list is not kept",
                self.dir.display()
            )));
        }
        self.ensure_dir()?;
        let ctx = |what: &str| format!("cannot {what} the change list in {}", self.dir.display());
        let mut tmp = tempfile::Builder::new()
            .prefix(".changes-")
            .tempfile_in(&self.dir)
            .map_err(|e| Error::io(ctx("write"), e))?;
        tmp.write_all(&serde_json::to_vec(c)?)
            .map_err(|e| Error::io(ctx("write"), e))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| Error::io(ctx("sync"), e))?;
        tmp.persist(self.dir.join(format!("{}.changes", c.run)))
            .map_err(|e| Error::io(ctx("rename into"), e.error))?;
        Ok(())
    }

    /// None when the run has no change list (older guard, or the command never ran).
    pub fn load_changes(&self, id: &str) -> Result<Option<crate::model::change::RunChanges>> {
        let p = self.dir.join(format!("{id}.changes"));
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Other(format!("change list {} is damaged: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("cannot read {}", p.display()), e)),
        }
    }

    /// Every run, oldest first. Damaged files are reported, not fatal: one bad file must not
    /// stop recovery of the others.
    pub fn list(&self) -> (Vec<RunRecord>, Vec<String>) {
        let mut runs = Vec::new();
        let mut problems = Vec::new();
        let dirs = std::iter::once(self.dir.clone()).chain(self.fallback_dir());
        let mut seen = std::collections::BTreeSet::new();
        for e in dirs
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            if name.starts_with('.') || !seen.insert(id.to_string()) {
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

/// Where the journal's records go while it cannot be written: tmpfs, never frozen with a
/// guarded filesystem, emptied at boot (by then the journal is writable again, or the run is
/// rebuilt from the LVM tags). GUARD_RUN_DIR moves it (tests).
pub fn fallback_dir() -> PathBuf {
    std::env::var_os("GUARD_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/run/guard".into())
        .join("runs")
}

/// A run id, `YYYYMMDD-HHMMSS-<16 hex>` (UTC): sortable by time, short enough for LV names, and
/// 64 random bits so that runs started in the same second do not collide (Journal::create
/// still refuses to overwrite, should two ever do).
pub fn new_run_id() -> String {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let compact: String = stamp
        .chars()
        .filter(|c| c.is_ascii_digit())
        .take(14)
        .collect();
    format!("{}-{}-{:016x}", &compact[..8], &compact[8..], random_u64())
}

/// 64 bits from getrandom(2); not blocking early at boot (then /dev/urandom).
fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
    if n == b.len() as isize {
        return u64::from_ne_bytes(b);
    }
    use std::io::Read;
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u64::from_ne_bytes(b);
    }
    // std seeds its hasher keys from the OS as well; time and pid make each call differ
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// Whether `s` is a run id guard makes: `YYYYMMDD-HHMMSS-` then 16 lower-case hex digits, or 4
/// (ids before 64-bit ones: their journals stay usable). Nothing else, so that an id given on
/// the command line can name files safely.
pub fn valid_run_id(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    (b.len() == 20 || b.len() == 32)
        && digits(0..8)
        && b[8] == b'-'
        && digits(9..15)
        && b[15] == b'-'
        && b[16..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
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
            writers_held_ms: None,
            downtime_ms: None,
            copy: None,
            notes: vec![],
            mounted: None,
            restored: vec![],
            preserve: vec![],
            trial: None,
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
    fn a_decision_survives_a_journal_that_cannot_be_written() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::at(d.path().join("runs")).with_fallback(d.path().join("run"));
        let mut r = record("20261127-101010-abcd");
        j.write(&mut r).unwrap();
        // the journal's file cannot be replaced (as on a full /var; here a folder in its
        // place): the decision is kept under /run
        let file = d.path().join("runs").join(format!("{}.json", r.id));
        std::fs::remove_file(&file).unwrap();
        std::fs::create_dir_all(file.join("x")).unwrap();
        r.phase = Phase::Decided;
        j.write(&mut r).unwrap();
        assert_eq!(j.load(&r.id).unwrap().phase, Phase::Decided);
        assert_eq!(j.list().0[0].phase, Phase::Decided);
        // once the journal is writable again it catches up and the interim copy goes
        std::fs::remove_dir_all(&file).unwrap();
        r.phase = Phase::Done;
        j.write(&mut r).unwrap();
        assert!(!d.path().join("run").join(format!("{}.json", r.id)).exists());
        assert_eq!(j.load(&r.id).unwrap().phase, Phase::Done);
        assert_eq!(j.list().0.len(), 1);
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
        assert_eq!(id.len(), 32, "{id}");
        assert!(
            id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "{id}"
        );
    }

    #[test]
    fn run_ids_are_unique_over_many_draws_and_valid() {
        let ids: std::collections::HashSet<String> = (0..20000).map(|_| new_run_id()).collect();
        assert_eq!(ids.len(), 20000);
        assert!(ids.iter().all(|i| valid_run_id(i)), "{ids:?}");
    }

    #[test]
    fn valid_run_id_takes_the_new_and_the_old_format_only() {
        assert!(valid_run_id("20261127-101010-0123456789abcdef"));
        assert!(valid_run_id("20261127-101010-abcd"));
        for bad in [
            "",
            "../../tmp/x",
            "20261127-101010-abcd/../x",
            "20261127-101010-ABCD",
            "20261127-101010-abcde",
            "20261127-101010-0123456789abcdeg",
            "20261127-101010-0123456789abcdef0",
            "2026112a-101010-abcd",
            "20261127_101010-abcd",
            "20261127-101010.abcd",
            "20261127-101010-ab.d",
            "R",
        ] {
            assert!(!valid_run_id(bad), "{bad}");
        }
    }

    #[test]
    fn create_never_overwrites_a_run_and_draws_a_new_id() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::at(d.path().join("runs"));
        let id = "20261127-101010-0123456789abcdef";
        let mut first = record(id);
        j.create(&mut first).unwrap();
        assert_eq!(first.id, id);
        let mut second = record(id);
        second.command = vec!["other".into()];
        j.create(&mut second).unwrap();
        assert_ne!(second.id, id);
        assert!(valid_run_id(&second.id));
        assert_eq!(j.load(id).unwrap().command, vec!["true".to_string()]);
        assert_eq!(
            j.load(&second.id).unwrap().command,
            vec!["other".to_string()]
        );
        assert!(j.create(&mut record("../../tmp/x")).is_err());
    }

    #[test]
    fn journal_folders_and_files_are_private() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let runs = d.path().join("runs");
        std::fs::create_dir(&runs).unwrap();
        std::fs::set_permissions(&runs, std::fs::Permissions::from_mode(0o755)).unwrap();
        let j = Journal::at(&runs);
        let mut r = record("20261127-101010-0123456789abcdef");
        j.create(&mut r).unwrap();
        j.write(&mut r).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&runs), 0o700);
        assert_eq!(mode(&runs.join(format!("{}.json", r.id))), 0o600);
    }

    #[test]
    fn own_process_is_alive_and_start_time_matters() {
        let me = std::process::id();
        let start = process_start(me).unwrap();
        assert!(process_alive(me, start));
        assert!(!process_alive(me, start + 1));
    }
}

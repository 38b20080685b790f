//! The commands that change a run after its guard is gone (`commit`, `rollback RUN`, `recover`,
//! the background watcher) act under the run's lock and its volumes' locks, on the record read
//! again under those locks: two of them can never interleave on one run (a set half rolled back
//! and half committed, or a watcher writing "kept" over a finished commit).
pub mod preserve;
pub mod recover;
pub mod rollback;
pub mod see;
pub mod status;
use crate::error::Result;
use crate::lvm::{self, Lvm};
use crate::store::journal::{Journal, RunRecord};
use crate::store::lock::{self, LockTarget, LvLocks, RunLock};

/// A run held for one command: dropping it releases the locks.
pub struct Held {
    pub rec: RunRecord,
    _run: RunLock,
    _lvs: LvLocks,
}

/// Locks run `id` (refused at once when another guard command holds it), then its origins,
/// then reads its record again and checks it against the LVs' tags.
pub fn hold(lvm: &dyn Lvm, journal: &Journal, id: &str, what: &str) -> Result<Held> {
    let run = lock::lock_run(id, &format!("guard {what} {id}"), false)?;
    let rec = crate::ops::recover::load_run(lvm, journal, id)?;
    let lvs = lvm.lvs()?;
    crate::ops::rollback::verify_targets(&lvs, &rec)?;
    let lvs_locks = lock_origins(&lvs, &rec, &format!("guard {what} {id}"))?;
    Ok(Held {
        rec,
        _run: run,
        _lvs: lvs_locks,
    })
}

/// Like `hold`, for the commands that pass over every run (recover, the watcher): None when
/// another command holds the run now; it is left for the next pass.
pub fn try_hold(
    lvm: &dyn Lvm,
    journal: &Journal,
    id: &str,
    lvs: &[lvm::Lv],
) -> Result<Option<Held>> {
    let Some(run) = lock::try_lock_run(id)? else {
        return Ok(None);
    };
    let rec = journal.load(id)?;
    let Ok(lvs_locks) = lock_origins(lvs, &rec, &format!("guard recover {id}")) else {
        return Ok(None);
    };
    let _ = lvm;
    Ok(Some(Held {
        rec,
        _run: run,
        _lvs: lvs_locks,
    }))
}

/// The origins' locks, the same ones a guarded run takes: a new guard run on one of these
/// volumes waits or is refused while the run is being changed.
fn lock_origins(lvs: &[lvm::Lv], rec: &RunRecord, holder: &str) -> Result<LvLocks> {
    let targets: Vec<LockTarget> = rec
        .targets
        .iter()
        .filter_map(|t| {
            lvm::find(lvs, &t.vg, &t.lv).map(|o| LockTarget {
                uuid: o.uuid.clone(),
                name: o.full_name(),
            })
        })
        .collect();
    lock::lock_all(&targets, holder, false, None).map(|(l, _)| l)
}

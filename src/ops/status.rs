//! `guard status`: the runs in the journal with their snapshots as LVM sees them now (COW use,
//! pending merges, invalidation), plus guard snapshots the journal does not know.
use crate::error::Result;
use crate::lvm::{self, Lv, Lvm};
use crate::size::human;
use crate::store::journal::{Journal, Phase, RunRecord};
use serde::Serialize;

pub const SCHEMA: &str = "guard.status/1";

#[derive(Debug, Serialize)]
pub struct SnapshotStatus {
    pub lv: String,
    pub snapshot: String,
    pub exists: bool,
    pub kind: &'static str,
    pub size_bytes: Option<u64>,
    pub used_percent: Option<f64>,
    pub merging: bool,
    pub invalid: bool,
    pub rollback: Option<crate::model::TargetState>,
}

#[derive(Debug, Serialize)]
pub struct RunStatus {
    pub run: String,
    pub phase: Phase,
    pub started: String,
    pub command: Vec<String>,
    pub outcome: Option<crate::store::journal::Outcome>,
    pub exit_status: Option<i32>,
    pub keep_until: Option<String>,
    /// How a finished run ended: committed, rolled-back, kept, nothing.
    pub final_state: Option<crate::store::journal::Final>,
    pub reason: Option<String>,
    pub trial: Option<crate::model::record::TrialReport>,
    pub snapshots: Vec<SnapshotStatus>,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub schema: &'static str,
    pub runs: Vec<RunStatus>,
    /// Guard snapshots whose run the journal does not know: "VG/LV (run RUN)".
    pub orphans: Vec<String>,
    pub journal_problems: Vec<String>,
}

fn snapshot_status(lvs: &[Lv], rec: &RunRecord) -> Vec<SnapshotStatus> {
    rec.targets
        .iter()
        .map(|t| {
            let s = lvm::find(lvs, &t.vg, &t.snapshot);
            let pool = t
                .thin
                .then(|| lvm::find(lvs, &t.vg, &t.lv).and_then(|o| o.pool.clone()))
                .flatten()
                .and_then(|p| lvm::find(lvs, &t.vg, &p).cloned());
            SnapshotStatus {
                lv: format!("{}/{}", t.vg, t.lv),
                snapshot: format!("{}/{}", t.vg, t.snapshot),
                exists: s.is_some(),
                kind: if t.thin { "thin" } else { "thick" },
                size_bytes: s.filter(|s| !s.is_thin()).map(|s| s.size),
                used_percent: if t.thin {
                    pool.and_then(|p| p.data_percent)
                } else {
                    s.and_then(|s| s.snap_percent)
                },
                merging: s.map(|s| s.merging).unwrap_or(false),
                invalid: s.map(|s| s.invalid).unwrap_or(false),
                rollback: t.rollback,
            }
        })
        .collect()
}

pub fn collect(lvm: &dyn Lvm, journal: &Journal, all: bool) -> Result<Status> {
    // The journal first: guard's LV report is already on its way (lvm/early.rs), and reading
    // the runs overlaps it.
    let (records, problems) = journal.list();
    crate::exec::trace("status: journal read");
    let lvs = lvm.lvs()?;
    crate::exec::trace("status: lvs read");
    let known: std::collections::BTreeSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
    // a run that began between the two reads is no orphan: its record is there by now
    let mut orphans: Vec<String> = lvs
        .iter()
        .filter(|l| l.is_guard_snapshot() && l.run_id().is_some_and(|r| !known.contains(r)))
        .filter(|l| l.run_id().is_some_and(|r| journal.load(r).is_err()))
        .map(|l| format!("{} (run {})", l.full_name(), l.run_id().unwrap_or("?")))
        .collect();
    orphans.sort();
    let runs = records
        .iter()
        .filter(|r| all || r.phase != Phase::Done)
        .map(|r| RunStatus {
            run: r.id.clone(),
            phase: r.phase,
            started: r.started.clone(),
            command: r.command.clone(),
            final_state: r.final_state,
            reason: r.reason.clone(),
            outcome: r.outcome,
            exit_status: r.exit_status,
            keep_until: r.keep_until.clone(),
            trial: r.trial.as_ref().map(|t| t.report()),
            snapshots: snapshot_status(&lvs, r),
        })
        .collect();
    Ok(Status {
        schema: SCHEMA,
        runs,
        orphans,
        journal_problems: problems,
    })
}

pub fn human_text(st: &Status) -> String {
    let mut s = String::new();
    if st.runs.is_empty() && st.orphans.is_empty() {
        s += "no guard runs pending\n";
    }
    for r in &st.runs {
        let phase = serde_json::to_value(r.phase)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        s += &format!(
            "run {}  {phase}  started {}  $ {}\n",
            r.run,
            r.started,
            r.command.join(" ")
        );
        if r.phase == Phase::Done {
            let end = match r.final_state {
                Some(crate::store::journal::Final::Committed) => "committed: the change was kept",
                Some(crate::store::journal::Final::RolledBack) => {
                    "rolled back: the change was undone"
                }
                Some(crate::store::journal::Final::Kept) => "kept",
                _ => "nothing was changed",
            };
            s += &format!("  {end}");
            if let Some(why) = &r.reason {
                s += &format!(" ({why})");
            }
            s += "\n";
        }
        if let Some(k) = &r.keep_until {
            s += &format!("  kept until {k}\n");
        }
        if let Some(t) = &r.trial {
            s += &format!(
                "  trial boot: {} (fallback kernel {})",
                t.state, t.old_kernel
            );
            if let Some(n) = &t.note {
                s += &format!(": {n}");
            }
            s += "\n";
        }
        for sn in &r.snapshots {
            let state = if !sn.exists {
                use crate::model::TargetState;
                match sn.rollback {
                    Some(TargetState::Done) => "merged".to_string(),
                    Some(TargetState::Scheduled) => {
                        "merge completed at activation (run `guard recover`)".into()
                    }
                    _ => "gone".into(),
                }
            } else if sn.invalid {
                "INVALID: rollback point lost".into()
            } else if sn.merging {
                "merge pending (completes at next activation)".into()
            } else {
                match (sn.used_percent, sn.size_bytes) {
                    (Some(p), Some(b)) => format!("COW {p:.1}% of {}", human(b)),
                    (Some(p), None) => format!("thin pool data {p:.1}%"),
                    _ => "present".into(),
                }
            };
            s += &format!("  {} -> {}: {state}\n", sn.lv, sn.snapshot);
        }
    }
    for o in &st.orphans {
        s += &format!("orphan guard snapshot (no journal entry): {o}\n");
    }
    for p in &st.journal_problems {
        s += &format!("journal problem: {p}\n");
    }
    s
}

/// A run's phase as one word (the journal's spelling), with how a finished run ended.
pub fn phase_word(r: &RunRecord) -> String {
    if r.copy.as_ref().is_some_and(|c| c.rehearsal) {
        return "rehearsal".into();
    }
    let phase = serde_json::to_value(r.phase)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    match (r.phase, r.final_state) {
        (Phase::Done, Some(f)) => serde_json::to_value(f)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or(phase),
        _ => phase,
    }
}

//! The end-of-run summary: human lines on stderr, and the same as one JSON object (--json to
//! stderr, --report FILE) for pipelines. Schema: schema/report.schema.json ("guard.report/1").
use crate::size::human;
use crate::store::journal::{Final, Outcome, RunRecord};
use serde::Serialize;

pub const SCHEMA: &str = "guard.report/1";

#[derive(Debug, Serialize)]
pub struct TargetReport {
    pub lv: String,
    pub snapshot: String,
    pub kind: &'static str,
    pub cow_bytes: Option<u64>,
    pub mountpoints: Vec<String>,
    pub max_used_percent: Option<f64>,
    /// none | done | scheduled | failed | impossible
    pub rollback: String,
    pub completes_by: Option<String>,
    pub note: Option<String>,
    pub extensions: u32,
    pub invalidated: bool,
    /// How long the rollback's merge took, where it ran in this guard.
    pub merge_seconds: Option<f64>,
    /// The most COW the run used (thin: the pool's growth since the run began), and the VG
    /// space the watchers' extensions took.
    pub peak_used_bytes: Option<u64>,
    pub added_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub run: String,
    pub command: Vec<String>,
    pub outcome: Option<Outcome>,
    pub exit_status: Option<i32>,
    pub reason: Option<String>,
    /// Set when the command exited 0 but a health check failed (guard exits 123).
    pub failed_check: Option<String>,
    /// committed | rolled-back | rollback-scheduled | partial | kept | nothing
    /// (partial: some target was not rolled back; `targets[].rollback` says which)
    pub action: String,
    pub duration_seconds: Option<f64>,
    pub writers_held_ms: Option<u64>,
    pub downtime_ms: Option<u64>,
    pub copy_root: Option<String>,
    pub notes: Vec<String>,
    /// A trial boot (--trial-boot): armed, confirmed, fell-back, ended.
    pub trial: Option<crate::model::record::TrialReport>,
    pub targets: Vec<TargetReport>,
    pub events: Vec<crate::watch::Event>,
    pub todo: Vec<String>,
}

impl Report {
    pub fn from_record(rec: &RunRecord, duration: Option<f64>, todo: Vec<String>) -> Self {
        let action = match rec.final_state {
            Some(Final::RolledBack) => {
                crate::model::SetRollback::of(rec.targets.iter().map(|t| t.rollback)).action()
            }
            Some(Final::Committed) => "committed",
            Some(Final::Kept) => "kept",
            Some(Final::Nothing) | None => "nothing",
        };
        Report {
            schema: SCHEMA,
            run: rec.id.clone(),
            command: rec.command.clone(),
            outcome: rec.outcome,
            exit_status: rec.exit_status,
            reason: rec.reason.clone(),
            failed_check: rec.failed_check.clone(),
            action: action.into(),
            duration_seconds: duration.map(|d| (d * 1000.0).round() / 1000.0),
            writers_held_ms: rec.writers_held_ms,
            downtime_ms: rec.downtime_ms,
            copy_root: rec.copy.as_ref().map(|c| c.root.display().to_string()),
            notes: rec.notes.clone(),
            trial: rec.trial.as_ref().map(|t| t.report()),
            targets: rec
                .targets
                .iter()
                .map(|t| TargetReport {
                    lv: format!("{}/{}", t.vg, t.lv),
                    snapshot: format!("{}/{}", t.vg, t.snapshot),
                    kind: if t.thin { "thin" } else { "thick" },
                    cow_bytes: t.cow_bytes,
                    mountpoints: t
                        .mountpoints
                        .iter()
                        .map(|m| m.display().to_string())
                        .collect(),
                    max_used_percent: t.max_used_percent,
                    rollback: t.rollback.map_or("none", |s| s.as_str()).into(),
                    completes_by: t
                        .note
                        .clone()
                        .filter(|_| t.rollback == Some(crate::model::TargetState::Scheduled)),
                    note: t.note.clone(),
                    extensions: t.extensions,
                    invalidated: t.invalidated,
                    merge_seconds: t.merge_seconds,
                    peak_used_bytes: t.peak_used_bytes,
                    added_bytes: t.added_bytes,
                })
                .collect(),
            events: rec.events.clone(),
            todo,
        }
    }

    pub fn human(&self) -> String {
        let what = match self.outcome {
            Some(Outcome::Success) => "the command succeeded".to_string(),
            Some(Outcome::Failure) => {
                format!(
                    "the command failed ({})",
                    self.reason.as_deref().unwrap_or("?")
                )
            }
            Some(Outcome::Aborted) | None => {
                format!(
                    "stopped before the command ran ({})",
                    self.reason.as_deref().unwrap_or("?")
                )
            }
        };
        let action = match self.action.as_str() {
            "committed" if self.copy_root.is_some() => {
                "the copy was unmounted and its snapshots removed"
            }
            "committed" => "snapshots removed, the change is kept",
            "rolled-back" => "rolled back",
            "rollback-scheduled" => "rollback scheduled",
            "partial" => "ROLLBACK INCOMPLETE, see below",
            "kept" => "snapshots kept",
            _ => "nothing changed",
        };
        let mut s = format!("guard: run {}: {what}; {action}\n", self.run);
        for t in &self.targets {
            let used = match (t.peak_used_bytes, t.max_used_percent, t.cow_bytes) {
                // in bytes where known: the percentage was of the size at that moment, and a
                // kept run's background watcher may have grown it since
                (Some(peak), Some(_), Some(b)) => {
                    format!("COW use peaked at {} of {}", human(peak), human(b))
                }
                (_, Some(p), Some(b)) => format!("COW use peaked at {p:.1}% of {}", human(b)),
                (_, Some(p), None) => format!("thin pool data {p:.1}%"),
                _ => "use unknown".into(),
            };
            let used = match (t.extensions, t.invalidated) {
                (_, true) => format!("{used}, INVALIDATED"),
                (0, _) => used,
                (n, _) if t.added_bytes > 0 => {
                    format!("{used}, extended {n}x (+{})", human(t.added_bytes))
                }
                (n, _) => format!("{used}, extended {n}x"),
            };
            let state = match t.rollback.as_str() {
                "done" => match t.merge_seconds {
                    Some(sec) => format!("rolled back (merge {sec:.1}s)"),
                    None => "rolled back".to_string(),
                },
                "scheduled" => format!(
                    "ROLLBACK SCHEDULED: completes {}",
                    t.completes_by
                        .as_deref()
                        .unwrap_or("at the next activation")
                ),
                "impossible" => format!(
                    "CANNOT BE ROLLED BACK: {}",
                    t.note.as_deref().unwrap_or("?")
                ),
                "failed" => format!(
                    "MERGE FAILED, snapshot kept: {}",
                    t.note.as_deref().unwrap_or("?")
                ),
                _ => match self.action.as_str() {
                    "kept" => format!("snapshot {} kept", t.snapshot),
                    "committed" if self.copy_root.is_some() => "copied".into(),
                    "committed" => "change kept".into(),
                    _ => "unchanged".into(),
                },
            };
            s += &format!("guard:   {}: {state} ({used})\n", t.lv);
        }
        if let Some(ms) = self.writers_held_ms {
            s += &format!("guard:   writers held {ms} ms for the snapshots\n");
        }
        if let Some(ms) = self.downtime_ms {
            s += &format!(
                "guard:   services down {:.1} s for the rollback\n",
                ms as f64 / 1000.0
            );
        }
        for n in &self.notes {
            s += &format!("guard: note: {n}\n");
        }
        for t in &self.todo {
            s += &format!("guard: to do: {t}\n");
        }
        s
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("report serialises")
    }
}

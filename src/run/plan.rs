//! From what the operator named (--lv, --mount) to a checked plan: which LVs, which kind of
//! snapshot, how large, under which names. Every refusal happens here, before anything changes,
//! and names the problem and the fix.
use crate::error::{Error, Result};
use crate::lvm::{self, Lv, Lvm, Vg};
use crate::mounts::{self, Mount};
use crate::size::{human, SizeSpec};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct PlanRequest {
    pub lvs: Vec<String>,
    pub mounts: Vec<PathBuf>,
    pub size: SizeSpec,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub vg: String,
    pub lv: String,
    pub uuid: String,
    /// Thin LVs get thin snapshots (no COW size; the pool is what fills).
    pub pool: Option<String>,
    pub origin_size: u64,
    pub extent: u64,
    /// For thin origins: the pool's data size, which the watcher tracks.
    pub pool_size: Option<u64>,
    pub cow_bytes: Option<u64>,
    pub snapshot: String,
    pub mountpoints: Vec<PathBuf>,
    pub fstype: Option<String>,
    /// How the operator named it (--lv vg/x or --mount /x), for messages.
    pub named_as: String,
}

impl Target {
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.vg, self.lv)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct VgSpace {
    pub vg: String,
    pub free_before: u64,
    pub free_after: u64,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub run_id: String,
    pub targets: Vec<Target>,
    pub space: Vec<VgSpace>,
}

/// `vg/lv` or `/dev/vg/lv`.
pub fn parse_lv_name(s: &str) -> Result<(String, String)> {
    let t = s.strip_prefix("/dev/").unwrap_or(s);
    match t.split_once('/') {
        Some((vg, lv)) if !vg.is_empty() && !lv.is_empty() && !lv.contains('/') => {
            Ok((vg.to_string(), lv.to_string()))
        }
        _ => Err(Error::refused(
            format!("--lv {s:?} is not of the form VG/LV"),
            "name the logical volume as VG/LV (e.g. --lv vg0/root), or use --mount PATH",
        )),
    }
}

fn lookup_lv<'a>(lvs: &'a [Lv], vgs: &[Vg], vg: &str, name: &str, asked: &str) -> Result<&'a Lv> {
    if !vgs.iter().any(|v| v.name == vg) {
        let known: Vec<&str> = vgs.iter().map(|v| v.name.as_str()).collect();
        return Err(Error::refused(
            format!("volume group {vg:?} (from {asked}) does not exist"),
            format!(
                "check the name; volume groups here: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        ));
    }
    lvm::find(lvs, vg, name).ok_or_else(|| {
        let known: Vec<&str> = lvs
            .iter()
            .filter(|l| l.vg == vg && !l.is_internal() && !l.is_snapshot())
            .map(|l| l.name.as_str())
            .collect();
        Error::refused(
            format!("logical volume {vg}/{name} (from {asked}) does not exist"),
            format!(
                "check the name; logical volumes in {vg}: {}",
                known.join(", ")
            ),
        )
    })
}

pub fn lv_for_mount<'a>(lvs: &'a [Lv], mounts: &[Mount], path: &Path) -> Result<(&'a Lv, PathBuf)> {
    let canon = std::fs::canonicalize(path).map_err(|e| {
        Error::refused(
            format!("--mount {}: {e}", path.display()),
            "give an existing mount point or path, e.g. --mount /var",
        )
    })?;
    let m = mounts::containing(mounts, &canon).ok_or_else(|| {
        Error::refused(
            format!("no mount holds {}", canon.display()),
            "check /proc/self/mountinfo",
        )
    })?;
    let lv = lvs
        .iter()
        .find(|l| l.kernel_dev == Some(m.dev) && !l.hidden)
        .ok_or_else(|| {
            Error::refused(
                format!(
                    "{} is on {} ({}, mounted at {}), not on an LVM logical volume",
                    path.display(),
                    m.source,
                    m.fstype,
                    m.mountpoint.display()
                ),
                "guard protects LVM logical volumes only: name one with --lv VG/LV (see `lvs`)",
            )
        })?;
    Ok((lv, m.mountpoint.clone()))
}

/// The snapshot's LV name: `<lv>-guard-<run>`. Kept short enough that the device-mapper name
/// ("vg-lv" with each hyphen doubled, plus lvm2's "-cow" suffix) stays within DM's 128 bytes.
pub fn snapshot_name(vg: &str, lv: &str, run_id: &str) -> String {
    let suffix = format!("-guard-{run_id}");
    let dm_len = |s: &str| s.len() + s.matches('-').count();
    let budget = 120usize.saturating_sub(dm_len(vg) + 1 + dm_len(&suffix) + 4);
    let mut base = String::new();
    for c in lv.chars() {
        if dm_len(&base) + dm_len(&c.to_string()) > budget {
            break;
        }
        base.push(c);
    }
    format!("{base}{suffix}")
}

/// The LVs the operator named, resolved against one `lvs` read, before any state checks: enough
/// to take the locks, so that a second guard learns who holds a volume before anything else.
pub struct Resolved {
    pub lvs: Vec<Lv>,
    vgs: Vec<Vg>,
    /// (index into lvs, how it was named)
    chosen: Vec<(usize, String)>,
}

impl Resolved {
    /// (uuid, VG/LV) of every named volume.
    pub fn volumes(&self) -> Vec<(String, String)> {
        self.chosen
            .iter()
            .map(|(i, _)| (self.lvs[*i].uuid.clone(), self.lvs[*i].full_name()))
            .collect()
    }
}

pub fn resolve(lvm: &dyn Lvm, mount_table: &[Mount], req: &PlanRequest) -> Result<Resolved> {
    if req.lvs.is_empty() && req.mounts.is_empty() {
        return Err(Error::refused(
            "nothing to protect: no --lv or --mount given",
            "name what the command may change, e.g. --mount / --mount /var, or --lv vg0/root (or use --policy)",
        ));
    }
    let lvs = lvm.lvs()?;
    let mut vgs = lvm::vgs_from_lvs(&lvs);
    // A VG with no LV shows in no LV report: ask `vgs` only when a name is not found.
    let named_vgs = req
        .lvs
        .iter()
        .filter_map(|s| parse_lv_name(s).ok().map(|(vg, _)| vg));
    if named_vgs
        .into_iter()
        .any(|vg| !vgs.iter().any(|v| v.name == vg))
    {
        vgs = lvm.vgs()?;
    }
    let index = |lv: &Lv| {
        lvs.iter()
            .position(|l| l.uuid == lv.uuid)
            .expect("from this list")
    };
    let mut chosen = Vec::new();
    for s in &req.lvs {
        let (vg, name) = parse_lv_name(s)?;
        let lv = lookup_lv(&lvs, &vgs, &vg, &name, &format!("--lv {s}"))?;
        chosen.push((index(lv), format!("--lv {s}")));
    }
    for p in &req.mounts {
        let (lv, _) = lv_for_mount(&lvs, mount_table, p)?;
        chosen.push((index(lv), format!("--mount {}", p.display())));
    }
    for (i, (lv, named)) in chosen.iter().enumerate() {
        if let Some((_, first)) = chosen[..i].iter().find(|(o, _)| o == lv) {
            // Two paths on one LV (/ and /var when /var is not separate): take it once.
            if first.starts_with("--mount") && named.starts_with("--mount") {
                continue;
            }
            return Err(Error::refused(
                format!(
                    "{} is named twice ({first} and {named})",
                    lvs[*lv].full_name()
                ),
                "name each logical volume once",
            ));
        }
    }
    let mut seen = Vec::new();
    chosen.retain(|(lv, _)| {
        let first = !seen.contains(lv);
        seen.push(*lv);
        first
    });
    Ok(Resolved { lvs, vgs, chosen })
}

pub fn build(
    lvm: &dyn Lvm,
    mount_table: &[Mount],
    req: &PlanRequest,
    run_id: &str,
) -> Result<Plan> {
    let resolved = resolve(lvm, mount_table, req)?;
    check_and_size(&resolved, mount_table, req, run_id)
}

/// State checks and sizes, on the volumes resolved (and, in a run, locked) before.
pub fn check_and_size(
    r: &Resolved,
    mount_table: &[Mount],
    req: &PlanRequest,
    run_id: &str,
) -> Result<Plan> {
    let (lvs, vgs) = (&r.lvs, &r.vgs);
    let chosen: Vec<(&Lv, String)> = r
        .chosen
        .iter()
        .map(|(i, n)| (&lvs[*i], n.clone()))
        .collect();
    let mut targets: Vec<Target> = Vec::new();
    for (lv, named) in chosen.iter() {
        check_target(lvs, lv, named)?;
        let mountpoints: Vec<PathBuf> = lv
            .kernel_dev
            .map(|d| {
                mounts::of_device(mount_table, d)
                    .into_iter()
                    .map(|m| m.mountpoint)
                    .rev()
                    .collect()
            })
            .unwrap_or_default();
        let fstype = lv
            .kernel_dev
            .and_then(|d| mount_table.iter().find(|m| m.dev == d))
            .map(|m| m.fstype.clone());
        let vg = vgs
            .iter()
            .find(|v| v.name == lv.vg)
            .expect("looked up above");
        let thin = lv.is_thin();
        targets.push(Target {
            vg: lv.vg.clone(),
            lv: lv.name.clone(),
            uuid: lv.uuid.clone(),
            pool: if thin { lv.pool.clone() } else { None },
            origin_size: lv.size,
            extent: vg.extent_size,
            pool_size: lv
                .pool
                .as_ref()
                .and_then(|p| lvm::find(lvs, &lv.vg, p))
                .map(|p| p.size),
            cow_bytes: (!thin).then(|| req.size.resolve(lv.size, vg.free, vg.extent_size)),
            snapshot: snapshot_name(&lv.vg, &lv.name, run_id),
            mountpoints,
            fstype,
            named_as: named.clone(),
        });
    }
    // Every thick snapshot of a VG comes out of that VG's free extents.
    let mut need: BTreeMap<&str, u64> = BTreeMap::new();
    for t in &targets {
        *need.entry(t.vg.as_str()).or_default() += t.cow_bytes.unwrap_or(0);
    }
    let mut space = Vec::new();
    for (vg_name, bytes) in need {
        let vg = vgs
            .iter()
            .find(|v| v.name == vg_name)
            .expect("looked up above");
        if bytes > vg.free {
            let parts: Vec<String> = targets
                .iter()
                .filter(|t| t.vg == vg_name && t.cow_bytes.is_some())
                .map(|t| format!("{} {}", t.full_name(), human(t.cow_bytes.unwrap_or(0))))
                .collect();
            return Err(Error::refused(
                format!(
                    "volume group {vg_name} has {} free but the snapshots need {} ({})",
                    human(vg.free),
                    human(bytes),
                    parts.join(", ")
                ),
                if vg.free < vg.extent_size {
                    format!("free space in {vg_name} (remove or shrink an LV), or add a disk (pvcreate DISK; vgextend {vg_name} DISK)")
                } else {
                    format!(
                        "pass a smaller --size (e.g. --size {}M), free space in {vg_name}, or add a disk (pvcreate DISK; vgextend {vg_name} DISK)",
                        (vg.free >> 20) / targets.iter().filter(|t| t.vg == vg_name).count().max(1) as u64
                    )
                },
            ));
        }
        space.push(VgSpace {
            vg: vg_name.to_string(),
            free_before: vg.free,
            free_after: vg.free - bytes,
        });
    }
    Ok(Plan {
        run_id: run_id.to_string(),
        targets,
        space,
    })
}

fn check_target(lvs: &[Lv], lv: &Lv, named: &str) -> Result<()> {
    let name = lv.full_name();
    if lv.is_internal() {
        return Err(Error::refused(
            format!(
                "{name} ({named}) is a {}, not a volume that holds data",
                lv.segtype
            ),
            "name the thin volumes or logical volumes that hold filesystems",
        ));
    }
    if lv.is_snapshot() {
        return Err(Error::refused(
            format!(
                "{name} ({named}) is itself a snapshot of {}",
                lv.origin.as_deref().unwrap_or("?")
            ),
            format!(
                "protect the origin instead: --lv {}/{}",
                lv.vg,
                lv.origin.as_deref().unwrap_or("ORIGIN")
            ),
        ));
    }
    if lv.merging {
        return Err(Error::refused(
            format!("{name} ({named}) has a snapshot merge pending or running"),
            format!(
                "let the merge finish first: `guard recover`, or reactivate it (lvchange -an/-ay {name}; for / reboot)"
            ),
        ));
    }
    if let Some(snap) = lvs
        .iter()
        .find(|s| s.vg == lv.vg && s.origin.as_deref() == Some(&lv.name) && s.is_guard_snapshot())
    {
        let run = snap.run_id().unwrap_or("?");
        return Err(Error::refused(
            format!("{name} ({named}) already carries guard snapshot {} of run {run}", snap.name),
            format!("finish that run first: `guard commit {run}` to keep its change, or `guard rollback {run}` to undo it"),
        ));
    }
    Ok(())
}

/// The plan as an operator reads it (--dry-run).
/// Advice about the plan: with `prefer_thin` (the database policies), each thick target.
pub fn notes(plan: &Plan, prefer_thin: bool) -> Vec<String> {
    if !prefer_thin {
        return vec![];
    }
    plan.targets
        .iter()
        .filter(|t| t.pool.is_none())
        .map(|t| {
            format!(
                "{} is a thick LV: while its snapshot exists every first write to a chunk is copied before it lands, and synchronous writes (a database's commits) slow several-fold (see BENCHMARKS.md); a thin LV's snapshot does not cost that",
                t.full_name()
            )
        })
        .collect()
}

pub fn describe(plan: &Plan) -> String {
    let mut s = format!("plan for run {}:\n", plan.run_id);
    for t in &plan.targets {
        let mp = if t.mountpoints.is_empty() {
            "not mounted".to_string()
        } else {
            t.mountpoints
                .iter()
                .map(|m| m.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let kind = match (&t.pool, t.cow_bytes) {
            (Some(pool), _) => format!("thin snapshot in pool {}/{pool}", t.vg),
            (None, Some(b)) => format!("thick snapshot, COW {}", human(b)),
            _ => "snapshot".into(),
        };
        s += &format!(
            "  {} ({}, {}) [{mp}{}]: {kind} as {}/{}\n",
            t.full_name(),
            human(t.origin_size),
            t.named_as,
            t.fstype
                .as_deref()
                .map(|f| format!(", {f}"))
                .unwrap_or_default(),
            t.vg,
            t.snapshot
        );
    }
    for v in &plan.space {
        s += &format!(
            "  volume group {}: {} free before, {} after\n",
            v.vg,
            human(v.free_before),
            human(v.free_after)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lvm::sim::{lv, SimLvm};

    fn req(lvs: &[&str]) -> PlanRequest {
        PlanRequest {
            lvs: lvs.iter().map(|s| s.to_string()).collect(),
            mounts: vec![],
            size: SizeSpec::PercentOrigin(20.0),
        }
    }

    fn sim() -> SimLvm {
        let mut data = lv("vg", "data", 200);
        data.kernel_dev = Some((253, 1));
        let mut logs = lv("vg", "logs", 100);
        logs.kernel_dev = Some((253, 2));
        SimLvm::new("vg", 100, vec![data, logs])
    }

    #[test]
    fn plans_sizes_and_names() {
        let p = build(
            &sim(),
            &[],
            &req(&["vg/data", "/dev/vg/logs"]),
            "20261127-101010-abcd",
        )
        .unwrap();
        assert_eq!(p.targets.len(), 2);
        assert_eq!(p.targets[0].cow_bytes, Some(40 << 20));
        assert_eq!(p.targets[1].cow_bytes, Some(20 << 20));
        assert_eq!(p.targets[0].snapshot, "data-guard-20261127-101010-abcd");
        assert_eq!(p.space[0].free_after, 40 << 20);
    }

    #[test]
    fn refusals_name_problem_and_fix() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "nothing to protect"),
            (&["nope/data"], "volume group \"nope\""),
            (&["vg/nope"], "vg/nope"),
            (&["vg"], "not of the form VG/LV"),
            (&["vg/data", "vg/data"], "named twice"),
        ];
        for (lvs, want) in cases {
            let e = build(&sim(), &[], &req(lvs), "r").unwrap_err().to_string();
            assert!(e.contains(want), "{lvs:?}: {e}");
            assert!(e.contains("fix:"), "{lvs:?}: {e}");
        }
    }

    #[test]
    fn refuses_when_the_vg_lacks_room_for_the_whole_set() {
        let mut r = req(&["vg/data", "vg/logs"]);
        r.size = SizeSpec::Bytes(60 << 20);
        let e = build(&sim(), &[], &r, "r").unwrap_err().to_string();
        assert!(
            e.contains("100.0MiB free but the snapshots need 120.0MiB"),
            "{e}"
        );
    }

    #[test]
    fn refuses_snapshots_merging_and_guarded_origins() {
        let s = sim();
        let mut snap = lv("vg", "old", 8);
        snap.origin = Some("data".into());
        snap.tags = vec!["guard".into(), "guard-run:R1".into()];
        s.state.borrow_mut().lvs.push(snap);
        let e = build(&s, &[], &req(&["vg/old"]), "r")
            .unwrap_err()
            .to_string();
        assert!(e.contains("itself a snapshot"), "{e}");
        let e = build(&s, &[], &req(&["vg/data"]), "r")
            .unwrap_err()
            .to_string();
        assert!(e.contains("guard commit R1"), "{e}");
        s.state.borrow_mut().lvs[1].merging = true;
        let e = build(&s, &[], &req(&["vg/logs"]), "r")
            .unwrap_err()
            .to_string();
        assert!(e.contains("merge pending"), "{e}");
    }

    #[test]
    fn mount_paths_resolve_through_the_device_number() {
        let table = crate::mounts::parse("25 1 253:2 / / rw - ext4 /dev/mapper/vg-logs rw\n");
        let r = PlanRequest {
            lvs: vec![],
            mounts: vec!["/".into()],
            size: SizeSpec::Bytes(4 << 20),
        };
        let p = build(&sim(), &table, &r, "r").unwrap();
        assert_eq!(p.targets[0].lv, "logs");
        assert_eq!(p.targets[0].mountpoints, vec![PathBuf::from("/")]);
        let table = crate::mounts::parse("25 1 8:1 / / rw - ext4 /dev/sda1 rw\n");
        let e = build(&sim(), &table, &r, "r").unwrap_err().to_string();
        assert!(e.contains("is on /dev/sda1 (ext4"), "{e}");
    }

    #[test]
    fn long_names_stay_within_device_mapper_limits() {
        let lvname = "a-".repeat(60);
        let n = snapshot_name("my-vg", &lvname, "20261127-101010-abcd");
        let dm = format!("my--vg-{}-cow", n.replace('-', "--"));
        assert!(dm.len() <= 127, "{} {dm}", dm.len());
        assert!(n.ends_with("-guard-20261127-101010-abcd"));
    }
}

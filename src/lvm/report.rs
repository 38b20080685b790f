//! Parsing of `lvs`/`vgs --reportformat json --units b --nosuffix`. Every value in that report is
//! a string; empty means "not applicable". Tested against reports captured in the VM
//! (tests/fixtures/).
use super::{Lv, Vg};
use crate::error::{Error, Result};
use serde::Deserialize;

/// The fields guard asks `lvs` for, in one place so the parser and the call agree.
pub const LV_FIELDS: &str = "lv_name,vg_name,lv_attr,lv_size,origin,pool_lv,lv_tags,lv_merging,\
lv_snapshot_invalid,snap_percent,data_percent,metadata_percent,lv_kernel_major,lv_kernel_minor,\
lv_dm_path,segtype,lv_active,lv_device_open,lv_uuid,vg_extent_size,vg_free";
pub const VG_FIELDS: &str = "vg_name,vg_size,vg_free,vg_extent_size,vg_free_count";

#[derive(Deserialize)]
struct Report<T> {
    report: Vec<T>,
}

#[derive(Deserialize)]
struct LvSection {
    #[serde(default)]
    lv: Vec<RawLv>,
}

#[derive(Deserialize)]
struct VgSection {
    #[serde(default)]
    vg: Vec<RawVg>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawLv {
    lv_name: String,
    vg_name: String,
    lv_attr: String,
    lv_size: String,
    origin: String,
    pool_lv: String,
    lv_tags: String,
    lv_merging: String,
    lv_snapshot_invalid: String,
    snap_percent: String,
    data_percent: String,
    metadata_percent: String,
    lv_kernel_major: String,
    lv_kernel_minor: String,
    lv_dm_path: String,
    segtype: String,
    lv_active: String,
    lv_device_open: String,
    lv_uuid: String,
    vg_extent_size: String,
    vg_free: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawVg {
    vg_name: String,
    vg_size: String,
    vg_free: String,
    vg_extent_size: String,
    vg_free_count: String,
}

fn num(field: &str, v: &str) -> Result<u64> {
    v.trim()
        .parse()
        .map_err(|_| Error::Other(format!("lvm report: field {field} is not a number: {v:?}")))
}

fn opt_f64(v: &str) -> Option<f64> {
    v.trim().parse().ok()
}

fn opt_str(v: String) -> Option<String> {
    let v = v.trim();
    (!v.is_empty()).then(|| v.to_string())
}

pub fn parse_lvs(json: &[u8]) -> Result<Vec<Lv>> {
    let r: Report<LvSection> = serde_json::from_slice(json)?;
    let mut out = Vec::new();
    for raw in r.report.into_iter().flat_map(|s| s.lv) {
        // `lvs -a` shows hidden LVs (a merging snapshot, pool internals) in brackets
        let hidden = raw.lv_name.starts_with('[');
        let name = raw
            .lv_name
            .trim_matches(|c| c == '[' || c == ']')
            .to_string();
        let major: i64 = raw.lv_kernel_major.trim().parse().unwrap_or(-1);
        let minor: i64 = raw.lv_kernel_minor.trim().parse().unwrap_or(-1);
        out.push(Lv {
            size: num("lv_size", &raw.lv_size)?,
            extent_size: num("vg_extent_size", &raw.vg_extent_size).unwrap_or(4 << 20),
            vg_free: num("vg_free", &raw.vg_free).ok(),
            attr: raw.lv_attr.clone(),
            origin: opt_str(
                raw.origin
                    .trim_matches(|c| c == '[' || c == ']')
                    .to_string(),
            ),
            pool: opt_str(raw.pool_lv),
            tags: raw
                .lv_tags
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect(),
            merging: raw.lv_merging.trim() == "merging" || raw.lv_attr.starts_with('O'),
            invalid: raw.lv_snapshot_invalid.contains("invalid")
                || raw.lv_attr.chars().nth(4) == Some('I'),
            snap_percent: opt_f64(&raw.snap_percent),
            data_percent: opt_f64(&raw.data_percent),
            metadata_percent: opt_f64(&raw.metadata_percent),
            kernel_dev: (major >= 0 && minor >= 0).then_some((major as u32, minor as u32)),
            dm_path: raw.lv_dm_path,
            segtype: raw.segtype,
            active: raw.lv_active.trim() == "active",
            open: raw.lv_device_open.trim() == "open",
            uuid: raw.lv_uuid,
            hidden,
            name,
            vg: raw.vg_name,
        });
    }
    Ok(out)
}

pub fn parse_vgs(json: &[u8]) -> Result<Vec<Vg>> {
    let r: Report<VgSection> = serde_json::from_slice(json)?;
    r.report
        .into_iter()
        .flat_map(|s| s.vg)
        .map(|raw| {
            Ok(Vg {
                size: num("vg_size", &raw.vg_size)?,
                free: num("vg_free", &raw.vg_free)?,
                extent_size: num("vg_extent_size", &raw.vg_extent_size)?,
                free_extents: num("vg_free_count", &raw.vg_free_count)?,
                name: raw.vg_name,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/tests/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn parses_thick_and_thin_snapshots() {
        let lvs = parse_lvs(&fixture("lvs-thick-thin.json")).unwrap();
        let snap = lvs.iter().find(|l| l.name == "data-snap").unwrap();
        assert_eq!(snap.origin.as_deref(), Some("data"));
        assert!(snap.is_thick_snapshot());
        assert_eq!(snap.tags, vec!["guard", "guard-run:2026.x=1"]);
        assert_eq!(snap.size, 8 << 20);
        assert_eq!(snap.snap_percent, Some(0.15));
        assert!(!snap.invalid && !snap.merging);
        let data = lvs.iter().find(|l| l.name == "data").unwrap();
        assert_eq!(data.kernel_dev, Some((253, 0)));
        assert!(data.open && data.active && !data.is_snapshot());
        let thin = lvs.iter().find(|l| l.name == "thin").unwrap();
        assert!(thin.is_thin());
        assert_eq!(thin.pool.as_deref(), Some("pool"));
        let tsnap = lvs.iter().find(|l| l.name == "thin-snap").unwrap();
        assert!(tsnap.is_snapshot() && tsnap.is_thin() && !tsnap.is_thick_snapshot());
        assert_eq!(tsnap.kernel_dev, None);
        let pmspare = lvs.iter().find(|l| l.name == "lvol0_pmspare").unwrap();
        assert!(pmspare.hidden);
    }

    #[test]
    fn parses_a_deferred_merge() {
        let lvs = parse_lvs(&fixture("lvs-merging.json")).unwrap();
        let snap = lvs.iter().find(|l| l.name == "data-snap").unwrap();
        assert!(snap.merging && snap.hidden);
        assert!(lvs.iter().find(|l| l.name == "data").unwrap().merging);
        assert!(lvs.iter().find(|l| l.name == "thin-snap").unwrap().merging);
    }

    #[test]
    fn parses_vgs() {
        let vgs = parse_vgs(&fixture("vgs.json")).unwrap();
        assert_eq!(vgs.len(), 1);
        assert_eq!(vgs[0].name, "vg");
        assert_eq!(vgs[0].free, 163577856);
        assert_eq!(vgs[0].extent_size, 4 << 20);
        assert_eq!(vgs[0].free_extents, 39);
    }

    #[test]
    fn invalid_snapshot_is_recognised_from_attr() {
        let json = br#"{"report":[{"lv":[{"lv_name":"s","vg_name":"vg","lv_attr":"swi-I-s---",
            "lv_size":"8388608","origin":"data","lv_snapshot_invalid":"snapshot invalid",
            "snap_percent":"100.00","vg_extent_size":"4194304"}]}]}"#;
        let lvs = parse_lvs(json).unwrap();
        assert!(lvs[0].invalid);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_lvs(b"not json").is_err());
        assert!(parse_lvs(br#"{"report":[{"lv":[{"lv_size":"x"}]}]}"#).is_err());
    }
}

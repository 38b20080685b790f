//! An in-memory LVM for unit tests of planning and transaction logic. It models what those
//! decisions depend on (free extents, snapshots and their origins, tags, open origins deferring
//! merges) and nothing about data: it proves nothing about LVM itself.
use super::{Action, Lv, Lvm, MergeState, SnapshotRequest, Vg};
use crate::error::{Error, Result};
use std::cell::RefCell;

#[derive(Debug, Default)]
pub struct SimLvm {
    pub state: RefCell<SimState>,
}

#[derive(Debug, Default)]
pub struct SimState {
    pub vgs: Vec<Vg>,
    pub lvs: Vec<Lv>,
    /// Every call, in order: tests assert on what was (not) done.
    pub calls: Vec<String>,
    /// Fail the n-th snapshot creation (1-based), to test cleanup.
    pub fail_snapshot_nr: Option<usize>,
    pub snapshots_made: usize,
}

pub fn lv(vg: &str, name: &str, size_mib: u64) -> Lv {
    Lv {
        name: name.into(),
        vg: vg.into(),
        attr: "-wi-a-----".into(),
        size: size_mib << 20,
        extent_size: 4 << 20,
        vg_free: None,
        origin: None,
        pool: None,
        tags: vec![],
        merging: false,
        invalid: false,
        snap_percent: None,
        data_percent: None,
        metadata_percent: None,
        kernel_dev: Some((253, 0)),
        dm_path: format!("/dev/mapper/{vg}-{name}"),
        segtype: "linear".into(),
        active: true,
        open: false,
        uuid: format!("uuid-{vg}-{name}"),
        hidden: false,
    }
}

impl SimLvm {
    pub fn new(vg: &str, free_mib: u64, lvs: Vec<Lv>) -> Self {
        let s = SimLvm::default();
        s.state.borrow_mut().vgs.push(Vg {
            name: vg.into(),
            size: 1 << 40,
            free: free_mib << 20,
            extent_size: 4 << 20,
            free_extents: free_mib / 4,
        });
        s.state.borrow_mut().lvs = lvs;
        s
    }

    pub fn calls(&self) -> Vec<String> {
        self.state.borrow().calls.clone()
    }

    fn vg_mut<'a>(st: &'a mut SimState, vg: &str) -> Result<&'a mut Vg> {
        st.vgs
            .iter_mut()
            .find(|v| v.name == vg)
            .ok_or_else(|| Error::Other(format!("sim: no VG {vg}")))
    }
}

impl Lvm for SimLvm {
    fn lvs(&self) -> Result<Vec<Lv>> {
        let st = self.state.borrow();
        let mut lvs = st.lvs.clone();
        for l in lvs.iter_mut() {
            l.vg_free = st.vgs.iter().find(|v| v.name == l.vg).map(|v| v.free);
        }
        Ok(lvs)
    }

    fn vgs(&self) -> Result<Vec<Vg>> {
        Ok(self.state.borrow().vgs.clone())
    }

    fn backup_metadata(&self, vg: &str) -> Result<()> {
        self.state
            .borrow_mut()
            .calls
            .push(format!("vgcfgbackup {vg}"));
        Ok(())
    }

    fn create_snapshot(&self, req: &SnapshotRequest) -> Result<()> {
        let mut st = self.state.borrow_mut();
        st.calls.push(format!("create {}/{}", req.vg, req.name));
        st.snapshots_made += 1;
        if st.fail_snapshot_nr == Some(st.snapshots_made) {
            return Err(Error::Other("sim: Insufficient free space".into()));
        }
        let origin = super::find(&st.lvs, &req.vg, &req.origin)
            .cloned()
            .ok_or_else(|| Error::Other("sim: no origin".into()))?;
        let mut snap = lv(&req.vg, &req.name, 0);
        snap.origin = Some(req.origin.clone());
        snap.tags = req.tags.clone();
        snap.uuid = format!("uuid-{}-{}", req.vg, req.name);
        if let Some(b) = req.cow_bytes {
            let vg = Self::vg_mut(&mut st, &req.vg)?;
            if b > vg.free {
                return Err(Error::Other("sim: Insufficient free space".into()));
            }
            vg.free -= b;
            snap.size = b;
            snap.attr = "swi-a-s---".into();
            snap.snap_percent = Some(0.0);
        } else {
            snap.segtype = "thin".into();
            snap.pool = origin.pool.clone();
            snap.size = origin.size;
            snap.attr = "Vwi---tz-k".into();
        }
        st.lvs.push(snap);
        Ok(())
    }

    fn remove(&self, vg: &str, name: &str) -> Result<Action> {
        let mut st = self.state.borrow_mut();
        st.calls.push(format!("remove {vg}/{name}"));
        let Some(i) = st.lvs.iter().position(|l| l.vg == vg && l.name == name) else {
            return Ok(Action::Identity);
        };
        let gone = st.lvs.remove(i);
        if gone.is_thick_snapshot() {
            Self::vg_mut(&mut st, vg)?.free += gone.size;
        }
        Ok(Action::Changed)
    }

    fn merge(&self, vg: &str, _origin: &str, snapshot: &str) -> Result<MergeState> {
        let mut st = self.state.borrow_mut();
        st.calls.push(format!("merge {vg}/{snapshot}"));
        let snap = super::find(&st.lvs, vg, snapshot)
            .cloned()
            .ok_or_else(|| Error::Other("sim: no snapshot".into()))?;
        let origin = snap.origin.clone().unwrap_or_default();
        let open = super::find(&st.lvs, vg, &origin)
            .map(|o| o.open)
            .unwrap_or(false);
        if open {
            for l in st
                .lvs
                .iter_mut()
                .filter(|l| l.vg == vg && (l.name == snapshot || l.name == origin))
            {
                l.merging = true;
            }
            return Ok(MergeState::Deferred);
        }
        st.lvs.retain(|l| !(l.vg == vg && l.name == snapshot));
        if snap.is_thick_snapshot() {
            Self::vg_mut(&mut st, vg)?.free += snap.size;
        }
        Ok(MergeState::Done)
    }

    fn add_tag(&self, vg: &str, lv: &str, tag: &str) -> Result<()> {
        let mut st = self.state.borrow_mut();
        st.calls.push(format!("addtag {vg}/{lv} {tag}"));
        if let Some(l) = st.lvs.iter_mut().find(|l| l.vg == vg && l.name == lv) {
            l.tags.push(tag.into());
        }
        Ok(())
    }

    fn del_tag(&self, vg: &str, lv: &str, tag: &str) -> Result<()> {
        let mut st = self.state.borrow_mut();
        st.calls.push(format!("deltag {vg}/{lv} {tag}"));
        if let Some(l) = st.lvs.iter_mut().find(|l| l.vg == vg && l.name == lv) {
            l.tags.retain(|t| t != tag);
        }
        Ok(())
    }

    fn reactivate(&self, vg: &str, lv: &str) -> Result<()> {
        let mut st = self.state.borrow_mut();
        st.calls.push(format!("reactivate {vg}/{lv}"));
        // the deferred merge runs at activation: the snapshot goes away
        let merging: Vec<Lv> = st
            .lvs
            .iter()
            .filter(|l| l.vg == vg && l.origin.as_deref() == Some(lv) && l.merging)
            .cloned()
            .collect();
        for m in merging {
            st.lvs.retain(|l| l.uuid != m.uuid);
            if m.is_thick_snapshot() {
                Self::vg_mut(&mut st, vg)?.free += m.size;
            }
        }
        if let Some(o) = st.lvs.iter_mut().find(|l| l.vg == vg && l.name == lv) {
            o.merging = false;
        }
        Ok(())
    }

    fn finish_merge(&self, vg: &str, lv: &str) -> Result<()> {
        self.state
            .borrow_mut()
            .calls
            .push(format!("finish {vg}/{lv}"));
        Ok(())
    }

    fn merge_in_progress(&self, _origin: &Lv) -> Result<bool> {
        Ok(false)
    }

    fn deactivate(&self, vg: &str, lv: &str) -> Result<()> {
        self.state
            .borrow_mut()
            .calls
            .push(format!("deactivate {vg}/{lv}"));
        Ok(())
    }

    fn activate(&self, vg: &str, lv: &str) -> Result<()> {
        self.state
            .borrow_mut()
            .calls
            .push(format!("activate {vg}/{lv}"));
        Ok(())
    }

    fn extend(&self, vg: &str, lv: &str, bytes: u64) -> Result<()> {
        let mut st = self.state.borrow_mut();
        st.calls.push(format!("extend {vg}/{lv} {bytes}"));
        let v = Self::vg_mut(&mut st, vg)?;
        if bytes > v.free {
            return Err(Error::Other("sim: Insufficient free space".into()));
        }
        v.free -= bytes;
        if let Some(l) = st.lvs.iter_mut().find(|l| l.vg == vg && l.name == lv) {
            l.size += bytes;
        }
        Ok(())
    }
}

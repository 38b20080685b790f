//! The lvm2 command-line tools, run through the single `lvm` binary.
use super::report::{parse_lvs, parse_vgs, LV_FIELDS, VG_FIELDS};
use super::{Action, Lv, Lvm, MergeState, SnapshotRequest, Vg};
use crate::error::{Error, Result};
use crate::exec::{system_command, CommandExt};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct RealLvm;

impl RealLvm {
    fn lvm(&self, sub: &str) -> Result<Command> {
        let mut c = system_command("lvm")?;
        c.arg(sub);
        // lvm archives metadata under /etc/lvm before a change, while holding the VG's lock: on
        // a filesystem a guard holds frozen that write would block, and every lvm command on
        // the VG after it (the holding guard's own `vgs` on resume included)
        // (lvcreate sets its own --config: see create_snapshot)
        let writes = !matches!(sub, "lvs" | "vgs" | "pvs" | "lvcreate");
        if writes && crate::dm::freeze::on_frozen_fs(std::path::Path::new("/etc/lvm")) {
            c.args(["--config", "backup{backup=0 archive=0}"]);
        }
        Ok(c)
    }
}

fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::Tool { stderr, .. } if stderr.contains("Failed to find logical volume"))
}

impl Lvm for RealLvm {
    fn lvs(&self) -> Result<Vec<Lv>> {
        let out = self
            .lvm("lvs")?
            .args([
                "-a",
                "--reportformat",
                "json",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                LV_FIELDS,
            ])
            .run_checked()?;
        parse_lvs(&out.stdout)
    }

    fn vgs(&self) -> Result<Vec<Vg>> {
        let out = self
            .lvm("vgs")?
            .args([
                "--reportformat",
                "json",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                VG_FIELDS,
            ])
            .run_checked()?;
        parse_vgs(&out.stdout)
    }

    fn create_snapshot(&self, req: &SnapshotRequest) -> Result<()> {
        let mut c = self.lvm("lvcreate")?;
        c.args(["-q", "-y", "-s", "-n", &req.name]);
        if req.held {
            c.arg("--noudevsync");
        }
        if req.held || crate::dm::freeze::on_frozen_fs(std::path::Path::new("/etc/lvm")) {
            c.args(["--config", "backup { backup = 0 archive = 0 }"]);
        }
        if let Some(b) = req.cow_bytes {
            c.args(["-L", &format!("{b}b")]);
        }
        for t in &req.tags {
            c.args(["--addtag", t]);
        }
        c.arg(format!("{}/{}", req.vg, req.origin));
        c.run_checked().map(drop)
    }

    fn remove(&self, vg: &str, name: &str) -> Result<Action> {
        match self
            .lvm("lvremove")?
            .args(["-q", "-y", &format!("{vg}/{name}")])
            .run_checked()
        {
            Ok(_) => Ok(Action::Changed),
            Err(e) if is_not_found(&e) => Ok(Action::Identity),
            Err(e) => Err(e),
        }
    }

    fn deactivate(&self, vg: &str, lv: &str) -> Result<()> {
        self.lvm("lvchange")?
            .args(["-q", "-an", &format!("{vg}/{lv}")])
            .run_checked()
            .map(drop)
    }

    fn activate(&self, vg: &str, lv: &str) -> Result<()> {
        self.lvm("lvchange")?
            .args(["-q", "-ay", "-K", &format!("{vg}/{lv}")])
            .run_checked()
            .map(drop)
    }

    fn backup_metadata(&self, vg: &str) -> Result<()> {
        self.lvm("vgcfgbackup")?.arg(vg).run_checked().map(drop)
    }

    fn merge(&self, vg: &str, snapshot: &str) -> Result<MergeState> {
        // --interval 1: when the origin is closed lvconvert waits for the merge in the
        // foreground, checking every interval (15 s by default).
        let out = self
            .lvm("lvconvert")?
            .args(["--merge", "--interval", "1", &format!("{vg}/{snapshot}")])
            .run_checked()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(
            if text.contains("Delaying merge") || text.contains("next activation") {
                MergeState::Deferred
            } else {
                MergeState::Done
            },
        )
    }

    fn add_tag(&self, vg: &str, lv: &str, tag: &str) -> Result<()> {
        self.lvm("lvchange")?
            .args(["-q", "--addtag", tag, &format!("{vg}/{lv}")])
            .run_checked()
            .map(drop)
    }

    fn del_tag(&self, vg: &str, lv: &str, tag: &str) -> Result<()> {
        self.lvm("lvchange")?
            .args(["-q", "--deltag", tag, &format!("{vg}/{lv}")])
            .run_checked()
            .map(drop)
    }

    fn reactivate(&self, vg: &str, lv: &str) -> Result<()> {
        let name = format!("{vg}/{lv}");
        self.lvm("lvchange")?
            .args(["-q", "-an", &name])
            .run_checked()?;
        self.lvm("lvchange")?
            .args(["-q", "-ay", &name])
            .run_checked()
            .map(drop)
    }

    fn finish_merge(&self, vg: &str, lv: &str) -> Result<()> {
        // After activation the merge runs in the kernel; lvm2 notices its end only when polled
        // (lvmpolld or a background poller, every 15 s). `--poll y` restarts that polling,
        // then we wait for the origin to stop being marked as merging.
        let name = format!("{vg}/{lv}");
        let start = Instant::now();
        let mut polled = false;
        // progress: the merging snapshot's use falls as its chunks are copied back
        let mut first: Option<f64> = None;
        let mut said = Instant::now();
        loop {
            let lvs = self.lvs()?;
            let origin = super::find(&lvs, vg, lv)
                .ok_or_else(|| Error::Other(format!("{name} disappeared while merging")))?;
            if !origin.merging {
                if first.is_some() {
                    crate::ui::say(&format!(
                        "{name}: merge complete in {:.1}s",
                        start.elapsed().as_secs_f64()
                    ));
                }
                return Ok(());
            }
            let snap = lvs
                .iter()
                .find(|s| s.vg == vg && s.origin.as_deref() == Some(lv) && s.merging);
            if let Some((pct, size)) = snap.and_then(|s| s.snap_percent.map(|p| (p, s.size))) {
                let p0 = *first.get_or_insert(pct);
                if said.elapsed() >= Duration::from_secs(5) {
                    said = Instant::now();
                    let done = if p0 > 0.0 {
                        (p0 - pct) / p0 * 100.0
                    } else {
                        100.0
                    };
                    let bytes = (p0 - pct).max(0.0) / 100.0 * size as f64;
                    let rate = bytes / start.elapsed().as_secs_f64().max(0.1);
                    let left = pct / 100.0 * size as f64;
                    let eta = if rate > 0.0 {
                        format!(", about {:.0}s left", left / rate)
                    } else {
                        String::new()
                    };
                    crate::ui::say(&format!(
                        "{name}: rolling back, {done:.0}% of the changed data merged ({:.1} MiB/s{eta})",
                        rate / (1 << 20) as f64
                    ));
                }
            }
            // an invalidated snapshot never finishes merging: say so instead of waiting
            if let Some(s) = lvs
                .iter()
                .find(|s| s.vg == vg && s.origin.as_deref() == Some(lv) && s.invalid)
            {
                return Err(Error::Other(format!(
                    "snapshot {} was invalidated (its COW space filled): the merge into {name} cannot run and the rollback point is lost",
                    s.full_name()
                )));
            }
            if !origin.active {
                return Err(Error::refused(
                    format!("{name} is not active, so its merge cannot run"),
                    format!("activate it: lvchange -ay {name}"),
                ));
            }
            if !polled && start.elapsed() > Duration::from_millis(500) {
                self.lvm("lvchange")?
                    .args(["-q", "--poll", "y", &name])
                    .run_checked()?;
                polled = true;
            }
            if start.elapsed() > Duration::from_secs(600) {
                return Err(Error::Other(format!(
                    "the merge into {name} has not finished after 10 minutes; check `lvs -a {vg}`"
                )));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn merge_in_progress(&self, origin: &Lv) -> Result<bool> {
        // A running thick merge shows as a snapshot-merge table on the origin's device; a
        // deferred one leaves the snapshot-origin table in place until the next activation.
        let Some(dm_name) = origin.dm_path.strip_prefix("/dev/mapper/") else {
            return Ok(false);
        };
        if !origin.active {
            return Ok(false);
        }
        let out = system_command("dmsetup")?
            .args(["table", dm_name])
            .run_checked()?;
        Ok(String::from_utf8_lossy(&out.stdout).contains("snapshot-merge"))
    }

    fn extend(&self, vg: &str, lv: &str, bytes: u64) -> Result<()> {
        // lvextend takes sizes in whole sectors (it rounds up to extents itself)
        let bytes = bytes.div_ceil(512) * 512;
        self.lvm("lvextend")?
            .args(["-q", "-L", &format!("+{bytes}b"), &format!("{vg}/{lv}")])
            .run_checked()
            .map(drop)
    }
}

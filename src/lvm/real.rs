//! The lvm2 command-line tools, run through the single `lvm` binary: in one lvm shell for the
//! whole of a guarded run where lvm2's profile for that is installed (see shell.rs), else one
//! process per command. Both take the same arguments and give the same errors.
use super::report::{parse_lvs, parse_vgs, LV_FIELDS, VG_FIELDS};
use super::shell::Shell;
use super::{Action, Lv, Lvm, MergeState, SnapshotRequest, Vg};
use crate::error::{Error, Result};
use crate::exec::{system_command, CommandExt};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct RealLvm {
    /// The lvm shell, while it works; None: one process per command.
    shell: Mutex<Option<Shell>>,
}

impl std::fmt::Debug for RealLvm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RealLvm")
    }
}

impl RealLvm {
    /// With an lvm shell started now, so that its start-up overlaps guard's own. For the
    /// commands that run several lvm2 commands in a row (a guarded run, a rollback).
    pub fn with_shell() -> RealLvm {
        let shell =
            crate::exec::find_program("lvm").and_then(|p| super::early::take_or_start_shell(&p));
        RealLvm {
            shell: Mutex::new(shell),
        }
    }

    /// The words of an lvm2 command: `sub`, the config guard needs, then `args`.
    fn words(sub: &str, args: &[&str]) -> Vec<String> {
        let mut w = vec![sub.to_string()];
        // lvm archives metadata under /etc/lvm before a change, while holding the VG's lock: on
        // a filesystem a guard holds frozen that write would block, and every lvm command on
        // the VG after it (the holding guard's own `vgs` on resume included)
        // (lvcreate sets its own --config: see create_snapshot)
        let writes = !matches!(sub, "lvs" | "vgs" | "pvs" | "lvcreate");
        if writes && crate::dm::freeze::on_frozen_fs(std::path::Path::new("/etc/lvm")) {
            w.extend(["--config".into(), "backup{backup=0 archive=0}".into()]);
        }
        w.extend(args.iter().map(|a| a.to_string()));
        w
    }

    /// A JSON report in bytes: `lvs -a` or `vgs` with the fields guard parses.
    fn report_words(sub: &str, fields: &str) -> Vec<String> {
        let all: &[&str] = if sub == "lvs" { &["-a"] } else { &[] };
        let fixed = [
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            fields,
        ];
        Self::words(sub, &[all, &fixed[..]].concat())
    }

    /// The full LV report guard plans from (every LV, hidden ones too).
    pub fn lvs_words() -> Vec<String> {
        Self::report_words("lvs", LV_FIELDS)
    }

    /// Runs an lvm2 command, in the shell when there is one; returns its output (the JSON
    /// report of `lvs` and `vgs`).
    fn call(&self, words: Vec<String>) -> Result<Vec<u8>> {
        if let Some(report) = super::early::take_report(&words) {
            return Ok(report);
        }
        if let Some(done) = self.in_shell(&words) {
            return done;
        }
        let mut c = system_command("lvm")?;
        Ok(c.args(&words).run_checked()?.stdout)
    }

    /// The command in the shell; None when there is no shell (any more) and it is to run as
    /// a process of its own.
    fn in_shell(&self, words: &[String]) -> Option<Result<Vec<u8>>> {
        let mut slot = self.shell.lock().unwrap_or_else(|p| p.into_inner());
        let sh = slot.as_mut()?;
        let t = Instant::now();
        let reply = match sh.run(words) {
            Ok(r) => r,
            Err(b) => {
                let why = format!(
                    "lvm shell given up ({}); one lvm process per command from now on",
                    b.why
                );
                crate::exec::trace(&why);
                crate::log::structured(crate::log::Kind::Warning, &why, &[]);
                *slot = None;
                // a report is asked again; a change that may have happened is not made twice
                let read_only = matches!(words[0].as_str(), "lvs" | "vgs" | "pvs");
                return (b.sent && !read_only).then(|| {
                    Err(Error::Other(format!(
                        "the lvm shell broke while running `lvm {}` ({}): whether it took effect is unknown",
                        words.join(" "),
                        b.why
                    )))
                });
            }
        };
        crate::exec::trace(&format!(
            "lvm shell: {} ({:.1} ms)",
            words.join(" "),
            t.elapsed().as_secs_f64() * 1000.0
        ));
        if reply.success() {
            return Some(Ok(reply.doc));
        }
        // lvm2's error messages are in its log (`lastlog`), not on the shell's stderr
        let said = match sh.last_messages(&["error"]) {
            Ok(m) => m.join(" / "),
            Err(_) => {
                *slot = None;
                String::new()
            }
        };
        Some(Err(Error::Tool {
            program: "lvm".into(),
            args: words.join(" "),
            status: format!("exit {}", reply.code),
            stderr: said,
        }))
    }

    fn run(&self, sub: &str, args: &[&str]) -> Result<()> {
        self.call(Self::words(sub, args)).map(drop)
    }
}

/// Between two looks at `lvs` during a merge (each reads every PV's labels and metadata and
/// competes with the merge for the disk: polling it 4 times a second made a 1 GiB merge 3×
/// slower), watch the merge in the kernel, where reading it costs nothing: the origin's
/// snapshot-merge table reports what is left. Returns when that is nothing, when the table is
/// no longer a merge, or after `limit`; true when the kernel has nothing left to merge.
fn wait_in_kernel(dm_name: &str, limit: Duration) -> bool {
    let t = Instant::now();
    let Ok(ctl) = crate::dm::Control::open() else {
        std::thread::sleep(Duration::from_millis(250));
        return false;
    };
    // never faster than the old 250 ms between looks, also once the kernel is done and lvm2's
    // poller has yet to record it
    let rest = || {
        if let Some(r) = Duration::from_millis(250).checked_sub(t.elapsed()) {
            std::thread::sleep(r);
        }
    };
    while t.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(100));
        let Ok(targets) = ctl.status(dm_name) else {
            rest();
            return false;
        };
        let left = targets
            .iter()
            .find(|t| t.target_type == "snapshot-merge")
            .map(|t| crate::dm::parse_snapshot(&t.params));
        match left {
            Some(crate::dm::SnapshotUse::Used {
                allocated,
                metadata,
                ..
            }) if allocated > metadata => {}
            Some(crate::dm::SnapshotUse::Used { .. }) => {
                rest();
                return true;
            }
            _ => {
                rest();
                return false;
            }
        }
    }
    false
}

/// What device-mapper proves of a thick merge once `lvconvert --merge` returned (a finished
/// one removes the snapshot before it returns): the snapshot's device still there as a
/// snapshot, a merge waiting for the origin's next activation; gone (ENXIO, not just any
/// error) with the origin a plain device again, done. None for anything else: a thin origin,
/// an inactive one, device-mapper not answering.
fn thick_merge_state(vg: &str, origin: &str, snapshot: &str) -> Option<MergeState> {
    let ctl = crate::dm::Control::open().ok()?;
    match ctl.status(&crate::dm::dm_name(vg, snapshot)) {
        Ok(t) if t.iter().any(|t| t.target_type == "snapshot") => Some(MergeState::Deferred),
        Err(Error::Io { ref source, .. }) if source.raw_os_error() == Some(libc::ENXIO) => {
            let plain = ctl.status(&crate::dm::dm_name(vg, origin)).is_ok_and(|t| {
                !t.is_empty()
                    && t.iter().all(|t| {
                        !matches!(
                            t.target_type.as_str(),
                            "snapshot-origin" | "snapshot-merge" | "snapshot" | "thin"
                        )
                    })
            });
            plain.then_some(MergeState::Done)
        }
        _ => None,
    }
}

fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::Tool { stderr, .. } if stderr.contains("Failed to find logical volume"))
}

impl Lvm for RealLvm {
    fn lvs(&self) -> Result<Vec<Lv>> {
        parse_lvs(&self.call(Self::lvs_words())?)
    }

    fn vgs(&self) -> Result<Vec<Vg>> {
        parse_vgs(&self.call(Self::report_words("vgs", VG_FIELDS))?)
    }

    fn create_snapshot(&self, req: &SnapshotRequest) -> Result<()> {
        let mut w: Vec<String> = ["lvcreate", "-q", "-y", "-s", "-n", &req.name]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if req.held {
            w.push("--noudevsync".into());
        }
        if req.held || crate::dm::freeze::on_frozen_fs(std::path::Path::new("/etc/lvm")) {
            w.extend([
                "--config".into(),
                "backup { backup = 0 archive = 0 }".into(),
            ]);
        }
        if let Some(b) = req.cow_bytes {
            w.extend(["-L".into(), format!("{b}b")]);
        }
        for t in &req.tags {
            w.extend(["--addtag".into(), t.clone()]);
        }
        w.push(format!("{}/{}", req.vg, req.origin));
        self.call(w).map(drop)
    }

    fn remove(&self, vg: &str, name: &str) -> Result<Action> {
        match self.run("lvremove", &["-q", "-y", &format!("{vg}/{name}")]) {
            Ok(_) => Ok(Action::Changed),
            Err(e) if is_not_found(&e) => Ok(Action::Identity),
            Err(e) => Err(e),
        }
    }

    fn deactivate(&self, vg: &str, lv: &str) -> Result<()> {
        self.run("lvchange", &["-q", "-an", &format!("{vg}/{lv}")])
    }

    fn activate(&self, vg: &str, lv: &str) -> Result<()> {
        self.run("lvchange", &["-q", "-ay", "-K", &format!("{vg}/{lv}")])
    }

    fn backup_metadata(&self, vg: &str) -> Result<()> {
        self.run("vgcfgbackup", &[vg])
    }

    fn merge(&self, vg: &str, origin: &str, snapshot: &str) -> Result<MergeState> {
        // --interval 1: when the origin is closed lvconvert waits for the merge in the
        // foreground, checking every interval (15 s by default).
        self.run(
            "lvconvert",
            &["--merge", "--interval", "1", &format!("{vg}/{snapshot}")],
        )?;
        // Done or waiting for the origin's next activation: read from what is there, not from
        // lvm2's words (with `log/silent = 1` in lvm.conf it says nothing). A thick merge shows
        // in device-mapper at no cost; else the VG metadata: a snapshot still listed waits.
        if let Some(state) = thick_merge_state(vg, origin, snapshot) {
            return Ok(state);
        }
        // Unsure is "scheduled": the merge tag stays and `--finish`, recover or the next
        // activation complete it; "done" when it is not would drop all of that.
        let Ok(lvs) = self.lvs() else {
            return Ok(MergeState::Deferred);
        };
        Ok(if super::find(&lvs, vg, snapshot).is_some() {
            MergeState::Deferred
        } else {
            MergeState::Done
        })
    }

    fn add_tag(&self, vg: &str, lv: &str, tag: &str) -> Result<()> {
        self.run("lvchange", &["-q", "--addtag", tag, &format!("{vg}/{lv}")])
    }

    fn del_tag(&self, vg: &str, lv: &str, tag: &str) -> Result<()> {
        self.run("lvchange", &["-q", "--deltag", tag, &format!("{vg}/{lv}")])
    }

    fn reactivate(&self, vg: &str, lv: &str) -> Result<()> {
        let name = format!("{vg}/{lv}");
        self.run("lvchange", &["-q", "-an", &name])?;
        self.run("lvchange", &["-q", "-ay", &name])
    }

    fn finish_merge(&self, vg: &str, lv: &str) -> Result<()> {
        // After activation the merge runs in the kernel; lvm2 notices its end only when polled
        // (lvmpolld or a background poller, every 15 s). `--poll y` restarts that polling,
        // then we wait for the origin to stop being marked as merging.
        let name = format!("{vg}/{lv}");
        let start = Instant::now();
        let mut polled = false;
        // lvm2's poller records the end of a merge at its own interval (15 s): once the kernel
        // is done, guard records it itself with lvm2's poll command in the foreground (what
        // lvmpolld runs), once
        let mut kernel_done = false;
        let mut recorded = false;
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
            if kernel_done && !recorded {
                recorded = true;
                // a failure leaves the background poller to do it, as before
                let _ = self.run(
                    "lvpoll",
                    &["--polloperation", "merge", "--interval", "1", &name],
                );
                continue;
            }
            if !polled && start.elapsed() > Duration::from_millis(500) {
                self.run("lvchange", &["-q", "--poll", "y", &name])?;
                polled = true;
            }
            if start.elapsed() > Duration::from_secs(600) {
                return Err(Error::Other(format!(
                    "the merge into {name} has not finished after 10 minutes; check `lvs -a {vg}`"
                )));
            }
            kernel_done = match origin.dm_path.strip_prefix("/dev/mapper/") {
                Some(dm) => wait_in_kernel(dm, Duration::from_secs(2)),
                None => {
                    std::thread::sleep(Duration::from_millis(250));
                    false
                }
            };
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
        self.run(
            "lvextend",
            &["-q", "-L", &format!("+{bytes}b"), &format!("{vg}/{lv}")],
        )
    }
}

//! Trial boot (issue 13): a change to / and /boot that ends kept is booted once; if that boot
//! does not come up healthy, the boot after it is the state before the run, with nobody at
//! the console.
//!
//! - before the change: the boot chain is checked (GRUB, /boot a plain filesystem GRUB can
//!   write its environment to, the running kernel's files, guard's fallback in its initramfs)
//!   and the running kernel and initramfs are copied to /boot/guard/RUN, where no package
//!   removes them;
//! - after it (kept): guard.cfg (grub.rs) and GRUB's counter are armed, and the trial's
//!   deadline is written for guard-trial.target;
//! - the trial boot: guard-confirm.service (`guard trial confirm`) checks it, and ends the
//!   trial, or fails and reboots; a panic reboots (panic=N), a hang meets the deadline;
//! - the fallback boot: the old kernel, whose initramfs merges the snapshots back before /
//!   is mounted (dist/initramfs-tools); `guard recover` then completes the rollback and puts
//!   /boot back from the copy saved before the change, which also removes guard.cfg, the
//!   counter and the copies.
pub mod grub;

use crate::error::{Error, Result};
use crate::exec::{system_command, CommandExt};
use crate::model::record::{RunRecord, Trial, TrialState};
use crate::ui;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

pub const BOOT: &str = "/boot";
const GRUB_DIR: &str = "/boot/grub";
/// The trial's deadline, for guard-trial.target (a drop-in: the unit ships a default).
const DEADLINE_DROPIN: &str = "/etc/systemd/system/guard-trial.target.d/guard-deadline.conf";
/// guard-trial.target is pulled into the boot only while a trial is armed: its job timeout
/// counts from the start of every boot it is part of, and must never reboot an ordinary boot
/// (nor the fallback's, whose merge may take long). On /, so the fallback's rollback of /
/// removes it with the rest of the trial.
const TARGET_WANTS: &str = "/etc/systemd/system/multi-user.target.wants/guard-trial.target";
const TARGET_UNIT: &str = "/lib/systemd/system/guard-trial.target";
const INITRAMFS_SCRIPT: &str = "scripts/local-premount/guard";
/// A panicking trial kernel reboots after this many seconds (to the fallback).
const PANIC_SECS: u32 = 10;
pub const DEFAULT_DEADLINE_SECS: u64 = 600;

fn copies_dir(run: &str) -> PathBuf {
    Path::new(BOOT).join("guard").join(run)
}

pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

fn cmdline() -> String {
    std::fs::read_to_string("/proc/cmdline").unwrap_or_default()
}

/// The run a trial boot (guard.trial=RUN) or a fallback boot (guard.fallback=RUN) is for.
pub fn booted_for(key: &str) -> Option<String> {
    grub::cmdline_value(&cmdline(), key)
        .filter(|r| crate::store::journal::valid_run_id(r))
        .map(str::to_string)
}

/// GRUB's own version: a change that upgrades GRUB puts a new core image in the boot sector,
/// which the fallback's old /boot (its modules) would not match.
fn grub_version() -> Option<String> {
    let out = system_command("dpkg-query")
        .ok()?
        .args(["-W", "-f", "${Version}", "grub-common"])
        .run_checked()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|v| !v.is_empty())
}

/// A trial still pending (prepared or armed in the journal, or GRUB's counter set): another
/// change to / or /boot now would tangle the two (the second run's copy of /boot would hold the
/// first one's trial, and a fallback would merge one run's snapshot under the other's).
pub fn refuse_if_pending(journal: &crate::store::journal::Journal) -> Result<()> {
    let (records, _) = journal.list();
    let pending = records.iter().find(|r| {
        r.phase != crate::model::record::Phase::Done
            && matches!(
                r.trial.as_ref().map(|t| t.state),
                Some(TrialState::Prepared | TrialState::Armed | TrialState::FellBack)
            )
    });
    let env_run = system_command("grub-editenv")
        .ok()
        .and_then(|mut c| {
            c.arg(Path::new(GRUB_DIR).join("grubenv"))
                .arg("list")
                .run_checked()
                .ok()
        })
        .and_then(|o| {
            let list = String::from_utf8_lossy(&o.stdout).into_owned();
            grub::env_value(&list, "guard_run").map(str::to_string)
        });
    let run = pending.map(|r| r.id.clone()).or(env_run);
    match run {
        Some(run) => Err(Error::refused(
            format!("the trial boot of run {run} is still pending (GRUB's counter or the journal): a change to / or /boot now would be tangled with it; nothing was changed"),
            format!("reboot to finish the trial, or end it first: `guard commit {run}` or `guard rollback {run}`"),
        )),
        None => Ok(()),
    }
}

/// Removes the copies of a run whose trial never started (aborted, refused, recovered).
pub fn discard_copies(run: &str) {
    if crate::store::journal::valid_run_id(run) {
        let _ = std::fs::remove_dir_all(copies_dir(run));
        let _ = std::fs::remove_dir(Path::new(BOOT).join("guard"));
    }
}

fn running_release() -> Result<String> {
    Ok(nix::sys::utsname::uname()
        .map_err(|e| Error::Other(format!("uname: {e}")))?
        .release()
        .to_string_lossy()
        .into_owned())
}

fn refuse(problem: impl Into<String>, fix: impl Into<String>) -> Error {
    Error::refused(
        format!("--trial-boot: {}; nothing was changed", problem.into()),
        fix,
    )
}

/// What the checked chain found: what to copy, and what the fallback boots.
#[derive(Debug, Clone)]
pub struct Chain {
    pub release: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Checks, before anything changes, that a trial boot can fall back on this machine.
pub fn check_chain(table: &[crate::mounts::Mount]) -> Result<Chain> {
    let grub_cfg = Path::new(GRUB_DIR).join("grub.cfg");
    if !grub_cfg.exists() {
        let other = if Path::new("/boot/efi/loader/loader.conf").exists()
            || Path::new("/efi/loader/loader.conf").exists()
        {
            "this machine boots with systemd-boot"
        } else {
            "no /boot/grub/grub.cfg"
        };
        return Err(refuse(
            format!("{other}: a trial boot needs GRUB (grub-pc or grub-efi)"),
            "run it without a trial boot (--no-trial-boot; `guard rollback RUN` and a reboot still undo the change)",
        ));
    }
    if crate::exec::find_program("grub-editenv").is_none() {
        return Err(refuse(
            "grub-editenv not found",
            "apt-get install grub-common",
        ));
    }
    // GRUB writes its counter (save_env) in place, block by block: only on a plain
    // filesystem, never on LVM, RAID or an encrypted device.
    let boot = crate::mounts::containing(table, Path::new(GRUB_DIR))
        .ok_or_else(|| refuse("cannot find the filesystem of /boot/grub", "mount /boot"))?;
    let plain_dev = boot.source.starts_with("/dev/")
        && !boot.source.starts_with("/dev/mapper/")
        && !boot.source.starts_with("/dev/dm-")
        && !boot.source.starts_with("/dev/md");
    if !plain_dev || !matches!(boot.fstype.as_str(), "ext2" | "ext3" | "ext4" | "vfat") {
        return Err(refuse(
            format!(
                "/boot/grub is on {} ({}): GRUB cannot write its environment block there, so it cannot count the trial boot",
                boot.source, boot.fstype
            ),
            "put /boot on a plain ext4 partition (as Debian's guided LVM install does)",
        ));
    }
    let release = running_release()?;
    let kernel = Path::new(BOOT).join(format!("vmlinuz-{release}"));
    let initrd = Path::new(BOOT).join(format!("initrd.img-{release}"));
    for (p, what) in [(&kernel, "kernel"), (&initrd, "initramfs")] {
        if !p.is_file() {
            return Err(refuse(
                format!("the running kernel's {what} {} is missing: the fallback would have nothing to boot", p.display()),
                format!("reinstall the running kernel's package (linux-image-{release})"),
            ));
        }
    }
    let modules = Path::new("/lib/modules").join(&release);
    if !modules.is_dir() {
        return Err(refuse(
            format!("{} is missing", modules.display()),
            format!("reinstall linux-image-{release}"),
        ));
    }
    // the fallback's merge is done by guard's script in the old initramfs
    let out = system_command("lsinitramfs")
        .map_err(|_| {
            refuse(
                "lsinitramfs not found: guard's fallback needs initramfs-tools",
                "apt-get install initramfs-tools",
            )
        })?
        .arg(&initrd)
        .run_checked()?;
    if !String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.ends_with(INITRAMFS_SCRIPT))
    {
        return Err(refuse(
            format!(
                "{} does not hold guard's fallback script ({INITRAMFS_SCRIPT})",
                initrd.display()
            ),
            format!(
                "run `update-initramfs -u -k {release}` (the guard package installs the script)"
            ),
        ));
    }
    let need = size(&kernel) + size(&initrd);
    let st = nix::sys::statvfs::statvfs(BOOT)
        .map_err(|e| Error::Other(format!("statvfs /boot: {e}")))?;
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    // room for the copies and for the new kernel the change installs
    let want = need * 2 + (16 << 20);
    if free < want {
        return Err(refuse(
            format!(
                "/boot has {} free; the copies of the running kernel and initramfs and a new kernel need about {}",
                crate::size::human(free),
                crate::size::human(want)
            ),
            "remove old kernels (apt-get autoremove) to free /boot",
        ));
    }
    Ok(Chain {
        release,
        kernel,
        initrd,
    })
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Units failed now: a trial boot is not blamed for them.
fn failed_units() -> Vec<String> {
    let Ok(mut c) = system_command("systemctl") else {
        return vec![];
    };
    c.args([
        "list-units",
        "--state=failed",
        "--plain",
        "--no-legend",
        "--no-pager",
    ]);
    match c.run_checked() {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .filter(|u| !u.starts_with("guard-"))
            .collect(),
        Err(_) => vec![],
    }
}

fn systemctl_lines(args: &[&str]) -> Vec<String> {
    let Ok(mut c) = system_command("systemctl") else {
        return vec![];
    };
    c.args(args);
    // `is-enabled` exits non-zero when one unit is not enabled; its lines are still wanted
    match c.output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .collect(),
        Err(_) => vec![],
    }
}

/// `systemctl show -p P1,P2 U1 U2 …`: one block of `P=V` lines per unit, in the order given,
/// separated by empty lines (the properties in the bus's own order: read by name).
fn show(units: &[String], props: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut args = vec!["show", "-p", props];
    args.extend(units.iter().map(String::as_str));
    let Ok(mut c) = system_command("systemctl") else {
        return vec![];
    };
    c.args(&args);
    let Ok(o) = c.output() else {
        return vec![];
    };
    parse_show(&String::from_utf8_lossy(&o.stdout))
}

fn parse_show(text: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut out = vec![];
    let mut cur = std::collections::BTreeMap::new();
    for l in text.lines() {
        if l.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else if let Some((k, v)) = l.split_once('=') {
            cur.insert(k.to_string(), v.to_string());
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Enabled services running now (a login's user@ service or a timer's run are neither): the
/// server's own services, which a healthy boot starts again.
fn enabled_active_services() -> Vec<String> {
    let active: Vec<String> = systemctl_lines(&[
        "list-units",
        "--type=service",
        "--state=active",
        "--plain",
        "--no-legend",
        "--no-pager",
    ])
    .iter()
    .filter_map(|l| l.split_whitespace().next().map(str::to_string))
    .filter(|u| !u.starts_with("guard-"))
    .collect();
    let states = show(&active, "UnitFileState");
    if states.len() != active.len() {
        return vec![];
    }
    active
        .into_iter()
        .zip(states)
        .filter(|(_, st)| st.get("UnitFileState").map(String::as_str) == Some("enabled"))
        .map(|(u, _)| u)
        .collect()
}

/// Why a unit that ran before the change is not running in this boot, if it should be: still
/// loaded and enabled (the change may have removed or disabled it on purpose), and not skipped
/// by its own conditions (systemd-pstore with nothing to save).
fn down_reason(st: &std::collections::BTreeMap<String, String>) -> Option<&str> {
    let get = |k: &str| st.get(k).map(String::as_str).unwrap_or("");
    let expected = get("LoadState") == "loaded"
        && get("UnitFileState") == "enabled"
        && get("ConditionResult") != "no";
    (expected && get("ActiveState") != "active").then(|| get("ActiveState"))
}

/// The services of `units` not running in this boot: waits (up to `settle`) for those still
/// starting or restarting, so a service in a restart loop is judged by where it ends.
fn not_running(units: &[String], settle: std::time::Duration) -> Vec<String> {
    let start = std::time::Instant::now();
    loop {
        let states = show(units, "LoadState,ActiveState,UnitFileState,ConditionResult");
        if states.len() != units.len() {
            return vec![format!(
                "systemctl show answered for {} of {} units",
                states.len(),
                units.len()
            )];
        }
        let down: Vec<(String, &str)> = units
            .iter()
            .zip(&states)
            .filter_map(|(u, st)| down_reason(st).map(|r| (u.clone(), r)))
            .collect();
        let starting = down
            .iter()
            .any(|(_, r)| matches!(*r, "activating" | "reloading" | "deactivating"));
        if down.is_empty() || !starting || start.elapsed() >= settle {
            return down
                .into_iter()
                .map(|(u, r)| format!("{u} ({r})"))
                .collect();
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}

/// Copies the running kernel and initramfs where no package removes them (boom's lesson: an
/// entry whose kernel was removed boots nothing). Before the change, after /boot is saved.
pub fn prepare(run: &str, chain: &Chain, deadline_secs: u64) -> Result<Trial> {
    let dir = copies_dir(run);
    // root's alone: an initramfs may hold a disk-unlock key
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    for src in [&chain.kernel, &chain.initrd] {
        let name = src.file_name().expect("a file name");
        let dst = dir.join(name);
        std::fs::copy(src, &dst).map_err(|e| {
            let _ = std::fs::remove_dir_all(&dir);
            Error::io(
                format!("cannot copy {} to {}", src.display(), dst.display()),
                e,
            )
        })?;
    }
    nix::unistd::sync();
    Ok(Trial {
        state: TrialState::Prepared,
        grub_version: grub_version(),
        old_release: chain.release.clone(),
        deadline_secs,
        failed_before: failed_units(),
        active_before: enabled_active_services(),
        boot_id: None,
        note: None,
    })
}

fn editenv(args: &[&str]) -> Result<()> {
    let env = Path::new(GRUB_DIR).join("grubenv");
    system_command("grub-editenv")?
        .arg(&env)
        .args(args)
        .run_checked()?;
    Ok(())
}

/// Writes a file next to its final place and renames it in (a power cut leaves the old one
/// or the new one, never half of one).
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("guard-tmp");
    std::fs::write(&tmp, text)
        .map_err(|e| Error::io(format!("cannot write {}", tmp.display()), e))?;
    let f = std::fs::File::open(&tmp).map_err(|e| Error::io("open", e))?;
    let _ = f.sync_all();
    std::fs::rename(&tmp, path)
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
    nix::unistd::sync();
    Ok(())
}

/// After the change ended kept: the next boot is the trial. Returns what to tell the operator.
pub fn arm(rec: &mut RunRecord, journal: &crate::store::journal::Journal) -> Result<String> {
    let run = rec.id.clone();
    let Some(trial) = rec.trial.clone() else {
        return Err(Error::Other("no trial prepared".into()));
    };
    if trial.grub_version.is_some() && grub_version() != trial.grub_version {
        return Err(Error::Other(format!(
            "the change upgraded GRUB ({} to {}): the fallback would boot the old /boot's modules with the new boot sector",
            trial.grub_version.as_deref().unwrap_or("?"),
            grub_version().as_deref().unwrap_or("none")
        )));
    }
    let cfg_path = Path::new(GRUB_DIR).join("grub.cfg");
    let mut cfg = std::fs::read_to_string(&cfg_path)
        .map_err(|e| Error::io(format!("cannot read {}", cfg_path.display()), e))?;
    if !grub::sources_guard_cfg(&cfg) {
        // guard's generator is installed but update-grub has not run since
        if Path::new("/etc/grub.d/42_guard").exists() {
            system_command("update-grub")?.run_checked()?;
            cfg = std::fs::read_to_string(&cfg_path)
                .map_err(|e| Error::io(format!("cannot read {}", cfg_path.display()), e))?;
        }
        if !grub::sources_guard_cfg(&cfg) {
            return Err(Error::Other(
                "grub.cfg does not source guard.cfg: install /etc/grub.d/42_guard (the guard package) and run update-grub".into(),
            ));
        }
    }
    let body =
        grub::first_entry(&cfg).ok_or_else(|| Error::Other("grub.cfg has no menu entry".into()))?;
    let new_kernel = grub::linux_line(&body).map(|l| l.path).unwrap_or_default();
    let merge: Vec<String> = rec
        .targets
        .iter()
        .map(|t| format!("{}/{}", t.vg, t.snapshot))
        .collect();
    let text = grub::render(&grub::TrialEntries {
        run: &run,
        body: &body,
        old_release: &trial.old_release,
        merge: &merge,
        panic_secs: PANIC_SECS,
    })
    .map_err(Error::Other)?;
    let dropin = Path::new(DEADLINE_DROPIN);
    if let Some(d) = dropin.parent() {
        std::fs::create_dir_all(d)
            .map_err(|e| Error::io(format!("cannot create {}", d.display()), e))?;
    }
    write_atomic(
        dropin,
        &format!(
            "# guard: the deadline of the trial boot of run {run}\n[Unit]\nJobTimeoutSec={}s\n",
            trial.deadline_secs
        ),
    )?;
    if !Path::new(TARGET_WANTS).exists() {
        if let Some(d) = Path::new(TARGET_WANTS).parent() {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::io(format!("cannot create {}", d.display()), e))?;
        }
        std::os::unix::fs::symlink(TARGET_UNIT, TARGET_WANTS)
            .map_err(|e| Error::io(format!("cannot create {TARGET_WANTS}"), e))?;
    }
    write_atomic(&Path::new(GRUB_DIR).join("guard.cfg"), &text)?;
    // Armed in the journal before GRUB's counter: a crash between the two leaves a record that
    // the trial boot can confirm, never a trial that nothing confirms.
    if let Some(t) = rec.trial.as_mut() {
        t.state = TrialState::Armed;
    }
    journal.write(rec)?;
    // the counter last: until it is set the entries are inert
    editenv(&["set", "guard_trial=armed", &format!("guard_run={run}")])?;
    nix::unistd::sync();
    Ok(format!(
        "trial boot armed: the next boot runs {new_kernel} once; unless it is confirmed healthy within {} (guard-confirm.service after multi-user.target), the boot after it rolls back to before run {run} on kernel {} — reboot when ready",
        humantime::format_duration(std::time::Duration::from_secs(trial.deadline_secs)),
        trial.old_release
    ))
}

/// Ends a trial: GRUB's entries and counter, the deadline and the copies go. Safe to call
/// again; says what it could not remove.
pub fn disarm(rec: &mut RunRecord, state: TrialState, note: Option<String>) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(t) = rec.trial.as_mut() else {
        return problems;
    };
    let run = rec.id.clone();
    if let Ok(list) = system_command("grub-editenv").and_then(|mut c| {
        c.arg(Path::new(GRUB_DIR).join("grubenv"))
            .arg("list")
            .run_checked()
    }) {
        let list = String::from_utf8_lossy(&list.stdout).into_owned();
        // only our own counter: another run's trial is left alone
        if grub::env_value(&list, "guard_run") == Some(run.as_str()) {
            if let Err(e) = editenv(&["unset", "guard_trial", "guard_run"]) {
                problems.push(format!("cannot clear GRUB's trial counter: {e}"));
            }
        }
    }
    let cfg = Path::new(GRUB_DIR).join("guard.cfg");
    if std::fs::read_to_string(&cfg).is_ok_and(|c| c.contains(&format!("run {run}"))) {
        if let Err(e) = std::fs::remove_file(&cfg) {
            problems.push(format!("cannot remove {}: {e}", cfg.display()));
        }
    }
    if std::fs::read_to_string(DEADLINE_DROPIN).is_ok_and(|c| c.contains(&format!("run {run}"))) {
        let _ = std::fs::remove_file(DEADLINE_DROPIN);
        let _ = std::fs::remove_file(TARGET_WANTS);
    }
    let dir = copies_dir(&run);
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            problems.push(format!("cannot remove {}: {e}", dir.display()));
        }
    }
    let _ = std::fs::remove_dir(Path::new(BOOT).join("guard"));
    nix::unistd::sync();
    t.state = state;
    t.note = note;
    problems
}

/// `guard trial confirm` (guard-confirm.service, after multi-user.target in a trial boot):
/// healthy when no unit failed that had not failed before the change and the policy's boot
/// checks pass. Healthy: the trial ends, the run stays kept. Not: exit 1, and the unit's
/// FailureAction reboots into the fallback (GRUB's counter already points there).
pub fn confirm(lvm: &dyn crate::lvm::Lvm, journal: &crate::store::journal::Journal) -> Result<i32> {
    let Some(run) = booted_for("guard.trial") else {
        ui::say(
            "not a trial boot (no guard.trial= on the kernel command line): nothing to confirm",
        );
        return Ok(0);
    };
    // Waits for the lock: a `guard recover` or the watcher holding it for a moment must not
    // fail a healthy trial (the unit's own timeout bounds the wait).
    let _lock = crate::store::lock::lock_run(&run, "guard trial confirm", true)?;
    let mut rec = crate::ops::recover::load_run(lvm, journal, &run)?;
    let Some(trial) = rec.trial.clone() else {
        ui::warn(&format!("run {run} has no trial: nothing to confirm"));
        return Ok(0);
    };
    if trial.state != TrialState::Armed {
        ui::say(&format!(
            "the trial of run {run} is {}: nothing to confirm",
            trial.state.as_str()
        ));
        return Ok(0);
    }
    let new_failed: Vec<String> = failed_units()
        .into_iter()
        .filter(|u| !trial.failed_before.contains(u))
        .collect();
    let down = not_running(&trial.active_before, std::time::Duration::from_secs(90));
    let mut why = if !down.is_empty() {
        Some(format!(
            "services that ran before the change do not run in the trial boot: {}",
            down.join(", ")
        ))
    } else if !new_failed.is_empty() {
        Some(format!(
            "units failed in the trial boot that had not failed before the change: {}",
            new_failed.join(", ")
        ))
    } else {
        None
    };
    if why.is_none() {
        let checks = rec
            .policy
            .as_deref()
            .and_then(|p| crate::cli::policy::load_recorded(p).ok())
            .map(|p| p.boot_checks)
            .unwrap_or_default();
        let env = crate::run::hooks::HookEnv::for_record(&rec);
        why = crate::run::hooks::run_checks(&checks, &env);
    }
    let id = boot_id();
    match why {
        None => {
            let problems = disarm(&mut rec, TrialState::Confirmed, None);
            if let Some(t) = rec.trial.as_mut() {
                t.boot_id = id;
            }
            journal.write(&mut rec)?;
            for p in &problems {
                ui::warn(p);
            }
            ui::event(
                crate::log::Kind::Kept,
                &format!(
                    "run {run}: trial boot confirmed healthy; the fallback entry is removed and the run stays kept (`guard commit {run}` or `guard rollback {run}`)"
                ),
                &[],
            );
            Ok(0)
        }
        Some(why) => {
            if let Some(t) = rec.trial.as_mut() {
                t.note = Some(why.clone());
                t.boot_id = id;
            }
            // this record is on the / that the fallback rolls back, and this boot's journal
            // with it: the kernel's log, which its console prints, is where the reason stays
            let _ = journal.write(&mut rec);
            let line = format!(
                "run {run}: trial boot failed: {why}; rebooting to the fallback (the state before the run)"
            );
            crate::log::kernel_line(crate::log::Kind::Error, &line);
            ui::error(&line);
            Ok(1)
        }
    }
}

/// `guard recover` in the fallback boot: say what happened to the trial.
pub fn note_fallback(rec: &mut RunRecord) -> bool {
    if booted_for("guard.fallback").as_deref() != Some(rec.id.as_str()) {
        return false;
    }
    let Some(t) = rec.trial.as_mut() else {
        return false;
    };
    if t.state == TrialState::FellBack {
        return false;
    }
    t.state = TrialState::FellBack;
    t.boot_id = boot_id();
    t.note = Some(
        "the trial boot was not confirmed (a panic, a hang past its deadline, or a failed check): GRUB booted the fallback entry".into(),
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_that_should_run_and_does_not_is_named_others_are_not() {
        let text = "LoadState=loaded\nActiveState=activating\nUnitFileState=enabled\nConditionResult=yes\n\n\
LoadState=loaded\nActiveState=inactive\nUnitFileState=disabled\nConditionResult=yes\n\n\
LoadState=loaded\nActiveState=inactive\nUnitFileState=enabled\nConditionResult=no\n\n\
LoadState=not-found\nActiveState=inactive\nUnitFileState=\nConditionResult=no\n\n\
ActiveState=active\nConditionResult=yes\nLoadState=loaded\nUnitFileState=enabled\n";
        let st = parse_show(text);
        assert_eq!(st.len(), 5);
        // a restart loop, still starting: named (and waited for)
        assert_eq!(down_reason(&st[0]), Some("activating"));
        // disabled by the change, skipped by its condition, removed: not the boot's fault
        assert_eq!(down_reason(&st[1]), None);
        assert_eq!(down_reason(&st[2]), None);
        assert_eq!(down_reason(&st[3]), None);
        // running, whatever order the properties come in
        assert_eq!(down_reason(&st[4]), None);
    }
}

//! `guard rehearse -- CMD`: the command run on writable snapshots of its volumes instead of
//! the volumes themselves, to see what it would do on this very server.
//!
//! The snapshots are taken as for a guarded run (the same plan, locks, freeze of the set and
//! watcher), then mounted writable in guard's own mount namespace. The command is chrooted
//! into a root made of them: the copy of `/` when `/` is a target, else an overlay of
//! production's `/` whose writes go to memory; the other targets' copies where they belong,
//! every other filesystem as such an overlay, /proc and /sys read only where they reach the
//! kernel, a /dev without disks, an empty /run (no service manager to talk to). Writes outside
//! the copies are listed, then dropped. Services are never started:
//! a policy-rc.d that refuses (101) and SYSTEMD_OFFLINE=1. The policy's checks run in the same
//! place. Then the outcome, the exit status and the change are printed, and the copies removed.
//! The record is a copy run: never a rollback point, removed by `guard recover` if guard dies.
use crate::change::view::{Access, View};
use crate::error::{Error, Result};
use crate::lvm::Lvm;
use crate::model::change::{ChangeSource, RunChanges, TargetChanges};
use crate::run::{child, hooks, plan, RunOptions};
use crate::store::journal::{Journal, Outcome, Phase};
use crate::ui;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Where the command and the checks of a rehearsal run, set up in each child before exec.
struct Sandbox {
    chroot: Option<CString>,
    /// the working folder inside the chroot (else /)
    cwd: Option<CString>,
}

static SANDBOX: OnceLock<Arc<Sandbox>> = OnceLock::new();

/// linux/capability.h: CAP_NET_ADMIN, CAP_SYS_MODULE, CAP_SYS_RAWIO, CAP_SYS_PTRACE,
/// CAP_SYS_ADMIN, CAP_SYS_BOOT, CAP_SYS_TIME (libc does not name them).
const DROPPED_CAPS: [libc::c_ulong; 7] = [12, 16, 17, 19, 21, 22, 25];

/// Puts a child of a rehearsal into its sandbox (no-op outside a rehearsal). Called for the
/// command (child.rs) and the checks (hooks.rs).
pub fn confine(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let Some(sb) = SANDBOX.get().cloned() else {
        return;
    };
    cmd.env("GUARD_REHEARSAL", "1").env("SYSTEMD_OFFLINE", "1");
    // SAFETY: only raw system calls on memory prepared before the fork (no allocation).
    unsafe {
        cmd.pre_exec(move || {
            let err = std::io::Error::last_os_error;
            // its own mounts, host name and IPC: a `hostname` or a shared-memory segment of the
            // rehearsal stays in it
            if libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC) != 0 {
                return Err(err());
            }
            let root = c"/";
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ) != 0
            {
                return Err(err());
            }
            if let Some(r) = &sb.chroot {
                if libc::chroot(r.as_ptr()) != 0 {
                    return Err(err());
                }
                let into = |d: &CString| libc::chdir(d.as_ptr()) == 0;
                if !sb.cwd.as_ref().is_some_and(into) && libc::chdir(root.as_ptr()) != 0 {
                    return Err(err());
                }
            }
            // What no namespace here covers, taken from the command (root keeps the rest:
            // owners, modes, setuid for apt's downloads): loading kernel modules, rebooting,
            // setting the clock, raw I/O, tracing host processes, the network's configuration,
            // and mounting (a swap file on the copy, or a mount that would keep it busy).
            for cap in DROPPED_CAPS {
                libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
            }
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            );
            Ok(())
        });
    }
}

/// /proc, /sys, /dev and /run of the rehearsal's root: enough for package scripts, nothing
/// that reaches the machine itself. /sys and /proc/sys read only (no kernel setting, no EFI
/// variable); a /dev of its own with the harmless devices and the terminals, no disk (a boot
/// loader's install or a raw write fails instead of hitting the real disk); an empty /run (no
/// service manager, no LVM lock shared with the host).
fn system_mounts(mounts: &mut Mounts, r: &Path) -> Result<()> {
    use nix::mount::MsFlags as F;
    let ro = F::MS_BIND | F::MS_REMOUNT | F::MS_RDONLY | F::MS_NOSUID | F::MS_NODEV;
    let (proc_, sys, dev) = (r.join("proc"), r.join("sys"), r.join("dev"));
    mounts.mount(Some(Path::new("/proc")), &proc_, None, F::MS_BIND, None)?;
    for p in ["sys", "sysrq-trigger"] {
        let at = proc_.join(p);
        mounts.mount(Some(&at), &at, None, F::MS_BIND, None)?;
        mounts.remount(&at, ro)?;
    }
    mounts.mount(Some(Path::new("/sys")), &sys, None, F::MS_BIND, None)?;
    mounts.remount(&sys, ro)?;
    mounts.mount(
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        F::MS_NOSUID,
        Some("mode=0755,size=1m"),
    )?;
    for d in ["null", "zero", "full", "random", "urandom", "tty"] {
        let (host, at) = (Path::new("/dev").join(d), dev.join(d));
        if !host.exists() {
            continue;
        }
        std::fs::write(&at, b"").map_err(|e| Error::io("rehearsal: cannot make /dev", e))?;
        mounts.mount(Some(&host), &at, None, F::MS_BIND, None)?;
    }
    for d in ["pts", "shm"] {
        std::fs::create_dir(dev.join(d))
            .map_err(|e| Error::io("rehearsal: cannot make /dev", e))?;
    }
    if Path::new("/dev/pts/ptmx").exists() {
        mounts.mount(
            Some(Path::new("/dev/pts")),
            &dev.join("pts"),
            None,
            F::MS_BIND,
            None,
        )?;
    }
    mounts.mount(
        Some(Path::new("tmpfs")),
        &dev.join("shm"),
        Some("tmpfs"),
        F::MS_NOSUID | F::MS_NODEV,
        Some("mode=1777"),
    )?;
    for (l, t) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(t, dev.join(l))
            .map_err(|e| Error::io("rehearsal: cannot make /dev", e))?;
    }
    mounts.mount(
        Some(Path::new("tmpfs")),
        &r.join("run"),
        Some("tmpfs"),
        F::empty(),
        Some("mode=0755"),
    )
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::Other(format!("{} has a NUL byte", p.display())))
}

/// What a rehearsal cannot show, said every time.
const LIMITS: &str = "a rehearsal does not show: services (none is started or restarted), \
network side effects (downloads happen; other systems, and local services reached over the \
network or a socket, such as a database on 127.0.0.1, are not rehearsed: they see the command), \
and writes outside \
the protected volumes (they go to memory and are listed, then dropped); it keeps a command's mistakes off production, not a command bent on reaching it (that runs as root)";

pub fn rehearse(lvm: &dyn Lvm, journal: &Journal, opts: &RunOptions) -> i32 {
    match execute(lvm, journal, opts) {
        Ok(code) => code,
        Err(e) => {
            ui::error(&e.to_string());
            e.exit_code()
        }
    }
}

/// Mounts made for the sandbox in guard's namespace, undone in reverse order.
#[derive(Default)]
struct Mounts(Vec<PathBuf>);

impl Mounts {
    fn mount(
        &mut self,
        src: Option<&Path>,
        at: &Path,
        fstype: Option<&str>,
        flags: nix::mount::MsFlags,
        data: Option<&str>,
    ) -> Result<()> {
        nix::mount::mount(src, at, fstype, flags, data).map_err(|e| {
            Error::Other(format!(
                "rehearsal: cannot mount {} at {}: {e}",
                src.map(|s| s.display().to_string()).unwrap_or_default(),
                at.display()
            ))
        })?;
        self.0.push(at.to_path_buf());
        Ok(())
    }

    /// Flags changed on a mount made already (not recorded again).
    fn remount(&mut self, at: &Path, flags: nix::mount::MsFlags) -> Result<()> {
        nix::mount::mount(None::<&str>, at, None::<&str>, flags, None::<&str>).map_err(|e| {
            Error::Other(format!(
                "rehearsal: cannot make {} read only: {e}",
                at.display()
            ))
        })
    }

    fn undo(&mut self) {
        while let Some(at) = self.0.pop() {
            if nix::mount::umount(&at).is_err() {
                let _ = nix::mount::umount2(&at, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        self.undo();
    }
}

fn execute(lvm: &dyn Lvm, journal: &Journal, opts: &RunOptions) -> Result<i32> {
    if opts.command.is_empty() {
        return Err(Error::refused(
            "no command given",
            "put the command after --, e.g. guard rehearse --policy apt -- apt-get -y dist-upgrade",
        ));
    }
    child::resolve_program(&opts.command[0])?;
    let mut opts = opts.clone();
    // the rehearsal's own rules: nothing of the policy that acts on the live system
    opts.hooks.clear();
    opts.trial_boot = false;
    opts.save_unless_on_lvm.clear();
    opts.preserve.clear();
    opts.finish = false;
    // short of room, the rehearsal stops: its copies are frozen, never production
    opts.watch.when_full = crate::watch::WhenFull::Rollback;
    let sig = child::SignalState::install()?;
    let run_id = crate::store::journal::new_run_id();
    crate::log::set_run(&run_id);
    let planned = super::plan_stage(lvm, journal, &opts)?;
    if opts.dry_run {
        let plan = plan::check_and_size(&planned.resolved, &planned.table, &opts.request, &run_id)?;
        ui::print_block(&plan::describe(&plan));
        ui::print_block("dry run: nothing was changed (a rehearsal would run the command on writable snapshots of these volumes)\n");
        return Ok(0);
    }
    super::refuse_if_journal_frozen(journal)?;
    let (_locks, plan) = super::lock_stage(lvm, &opts, &run_id, &planned)?;
    let started = Instant::now();
    // a copy run: never merged, removed by recover if guard dies
    let root = PathBuf::from("/run/guard/rehearse").join(&run_id);
    opts.copy_root = Some(root.clone());
    let env = hooks::HookEnv {
        run_id: run_id.clone(),
        targets: super::names(&plan),
        ..Default::default()
    };
    let mut rec = super::snapshot_stage(lvm, journal, &opts, &plan, (&[], None), vec![], &env)?;
    if let Some(c) = rec.copy.as_mut() {
        c.rehearsal = true;
    }
    rec.notes.push(
        "a rehearsal: the command ran on writable snapshots, production was not written to".into(),
    );
    let result = rehearse_on_copies(lvm, journal, &opts, &plan, &mut rec, &sig);
    // whatever happened: the copies go
    rec.phase = Phase::Decided;
    journal.write(&mut rec)?;
    let end = super::copy::end(lvm, journal, &mut rec);
    let (code, changes) = result?;
    if let Err(e) = end {
        ui::error(&format!(
            "the rehearsal's snapshots could not all be removed: {e}"
        ));
    }
    if let Some(c) = &changes {
        if let Err(e) = journal.write_changes(c) {
            ui::warn(&format!("cannot keep the rehearsal's change list: {e}"));
        }
        ui::print_block(&crate::ops::see::human(&rec, c));
    }
    let report = crate::cli::report::Report::from_record(
        &rec,
        Some(started.elapsed().as_secs_f64()),
        vec![],
    );
    super::emit_report(&report, &opts);
    ui::print_block(&format!(
        "rehearsal {}: the command {} (exit status {code}); production was not changed\nnote: {LIMITS}\n",
        rec.id,
        if rec.outcome == Some(Outcome::Success) { "succeeded" } else { "FAILED" },
    ));
    Ok(code)
}

#[allow(clippy::type_complexity)]
fn rehearse_on_copies(
    lvm: &dyn Lvm,
    journal: &Journal,
    opts: &RunOptions,
    plan: &plan::Plan,
    rec: &mut crate::store::journal::RunRecord,
    sig: &child::SignalState,
) -> Result<(i32, Option<RunChanges>)> {
    use nix::mount::MsFlags;
    let which: Vec<usize> = (0..rec.targets.len())
        .filter(|&i| !rec.targets[i].mountpoints.is_empty())
        .collect();
    if which.is_empty() {
        return Err(Error::refused(
            "none of the volumes is mounted: there is nothing to run the command on",
            "rehearse mounted volumes (--mount PATH)",
        ));
    }
    let view = View::open(lvm, &rec.targets, &which, Access::System)?;
    let mut mounts = Mounts::default();
    let root_idx = which.iter().copied().find(|&i| {
        rec.targets[i]
            .mountpoints
            .iter()
            .any(|m| m == Path::new("/"))
    });
    // live mount point → where the command sees its copy, from guard's side
    let mut copy_of: Vec<(PathBuf, PathBuf)> = vec![];
    // the command's working folder, looked up again inside its root (a folder on a target is
    // then the copy's: a working folder kept from before the mounts would be production's)
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    let mut sandbox = Sandbox {
        chroot: None,
        cwd: Some(cstr(&cwd)?),
    };
    let mut outside: Option<Vec<(PathBuf, PathBuf)>> = None;
    // writes that land outside the protected volumes go to memory (and are listed)
    let upper = view.root().join("outside");
    std::fs::create_dir(&upper).map_err(|e| Error::io("rehearsal: cannot make a folder", e))?;
    mounts.mount(
        Some(Path::new("tmpfs")),
        &upper,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0700"),
    )?;
    let mut n = 0;
    let mut overlay = |mounts: &mut Mounts, lower: &Path, at: &Path| -> Result<PathBuf> {
        n += 1;
        let (u, w) = (upper.join(format!("{n}.u")), upper.join(format!("{n}.w")));
        for d in [&u, &w] {
            std::fs::create_dir(d).map_err(|e| Error::io("rehearsal: cannot make a folder", e))?;
        }
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            u.display(),
            w.display()
        );
        mounts.mount(
            Some(Path::new("overlay")),
            at,
            Some("overlay"),
            MsFlags::empty(),
            Some(&data),
        )?;
        Ok(u)
    };
    // The command always runs chrooted: into the copy of / when / is a target, else into an
    // overlay of production's / (reads see production, writes go to memory). Either way no
    // path it can name is production's, writable.
    let r = match root_idx {
        Some(ri) => view.of(ri).unwrap_or(Path::new("/")).to_path_buf(),
        None => {
            let r = view.root().join("root");
            std::fs::create_dir(&r).map_err(|e| Error::io("rehearsal: cannot make a folder", e))?;
            let u = overlay(&mut mounts, Path::new("/"), &r)?;
            outside.get_or_insert_with(Vec::new).push(("/".into(), u));
            r
        }
    };
    copy_of.push(("/".into(), r.clone()));
    // then every filesystem under /, parents before children: the other targets' copies,
    // and overlays of the rest
    enum Under {
        Copy(PathBuf),
        Overlay,
    }
    let mut under: Vec<(PathBuf, Under)> = which
        .iter()
        .filter(|&&i| Some(i) != root_idx)
        .filter_map(|&i| {
            Some((
                rec.targets[i].mountpoints.first()?.clone(),
                Under::Copy(view.of(i)?.to_path_buf()),
            ))
        })
        .collect();
    let table = crate::mounts::read()?;
    let targets_mp: Vec<&PathBuf> = rec
        .targets
        .iter()
        .flat_map(|t| t.mountpoints.iter())
        .collect();
    for m in table
        .iter()
        .filter(|m| m.source.starts_with("/dev/") && m.mountpoint != Path::new("/"))
    {
        if targets_mp.contains(&&m.mountpoint)
            || ["/proc", "/sys", "/dev", "/run"]
                .iter()
                .any(|v| m.mountpoint.starts_with(v))
            || m.mountpoint.starts_with(view.root())
            || under.iter().any(|(mp, _)| *mp == m.mountpoint)
        {
            continue;
        }
        under.push((m.mountpoint.clone(), Under::Overlay));
    }
    under.sort_by_key(|(mp, _)| mp.components().count());
    for (mp, what) in &under {
        let at = r.join(mp.strip_prefix("/").unwrap_or(mp));
        if !at.is_dir() {
            continue;
        }
        match what {
            Under::Copy(src) => {
                mounts.mount(Some(src), &at, None, MsFlags::MS_BIND, None)?;
                copy_of.push((mp.clone(), at));
            }
            Under::Overlay => {
                let u = overlay(&mut mounts, mp, &at)?;
                outside.get_or_insert_with(Vec::new).push((mp.clone(), u));
            }
        }
    }
    system_mounts(&mut mounts, &r)?;
    sandbox.chroot = Some(cstr(&r)?);
    // services are never started (invoke-rc.d and deb-systemd-invoke ask policy-rc.d)
    let rcd = copy_of
        .iter()
        .find(|(mp, _)| mp == Path::new("/"))
        .map(|(_, c)| c.join("usr/sbin/policy-rc.d"))
        .filter(|p| std::fs::symlink_metadata(p).is_err());
    if let Some(p) = &rcd {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(p)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"#!/bin/sh\n# guard rehearse: no service is started in a rehearsal\nexit 101\n"));
    }
    let _ = SANDBOX.set(Arc::new(sandbox));
    // what dpkg knew before: production's database (the copies start equal to it)
    let dpkg_at = |base: &Path| -> Option<PathBuf> {
        let (mp, c) = copy_of
            .iter()
            .filter(|(mp, _)| {
                Path::new("/")
                    .join(crate::change::dpkg::STATUS)
                    .starts_with(mp)
            })
            .max_by_key(|(mp, _)| mp.components().count())?;
        let rel = Path::new("/").join(crate::change::dpkg::STATUS);
        let rel = rel.strip_prefix(mp).ok()?;
        Some(if base == Path::new("/") {
            mp.join(rel)
        } else {
            c.join(rel)
        })
    };
    let dpkg_before = dpkg_at(Path::new("/")).and_then(|p| std::fs::read_to_string(p).ok());
    // the watcher freezes the copies if it must hold, never production
    let mut plan_w = plan.clone();
    for t in plan_w.targets.iter_mut() {
        if let Some((_, c)) = copy_of
            .iter()
            .find(|(mp, _)| t.mountpoints.first() == Some(mp))
        {
            t.mountpoints = vec![c.clone()];
        } else {
            t.mountpoints.clear();
        }
    }
    let watches: Vec<crate::change::record::Watch> = which
        .iter()
        .filter_map(|&i| {
            Some(crate::change::record::Watch {
                target: format!("{}/{}", rec.targets[i].vg, rec.targets[i].lv),
                mountpoint: view.of(i)?.to_path_buf(),
            })
        })
        .collect();
    let started = if opts.record {
        crate::change::record::Recorder::start(watches, vec![], RECORD_LIMIT)
    } else {
        Err(std::io::Error::other("--no-record"))
    };
    let recorder = match started {
        Ok(r) => Some(r),
        Err(e) => {
            ui::warn(&format!("cannot record the rehearsal's changes with fanotify ({e}): comparing the copies instead"));
            None
        }
    };
    let (finished, watcher, back) = super::run_stage(journal, opts, &plan_w, rec.clone(), sig)?;
    *rec = back;
    let recording = recorder.map(|r| r.stop());
    let mut code = match &finished {
        Ok(f) => {
            rec.exit_status = Some(f.exit.code());
            rec.reason = Some(f.exit.describe());
            rec.outcome = Some(if f.exit.success() {
                Outcome::Success
            } else {
                Outcome::Failure
            });
            f.exit.code()
        }
        Err(e) => {
            rec.outcome = Some(Outcome::Aborted);
            rec.reason = Some(e.to_string());
            e.exit_code()
        }
    };
    if watcher.rollback_requested {
        rec.outcome = Some(Outcome::Failure);
        rec.reason = Some(format!(
            "stopped: {}",
            watcher.rollback_reason.clone().unwrap_or_default()
        ));
    }
    if rec.outcome == Some(Outcome::Success) {
        if let Some(why) = hooks::run_checks(
            &opts.checks,
            &hooks::HookEnv {
                run_id: rec.id.clone(),
                exit_status: Some(0),
                ..Default::default()
            },
        ) {
            rec.outcome = Some(Outcome::Failure);
            rec.failed_check = Some(why.clone());
            rec.reason = Some(why);
            code = super::EXIT_CHECK_FAILED;
        }
    }
    // a daemon the command left behind (started by a package script, detached) would keep
    // the copies mounted and their snapshots from being removed: it is part of the rehearsal
    let left = kill_leftovers(&r);
    if left > 0 {
        ui::warn(&format!(
            "{left} process(es) the command left running in the rehearsal were stopped"
        ));
    }
    if let Some(p) = &rcd {
        let _ = std::fs::remove_file(p);
    }
    // the change: per target, as recorded (or compared), with paths shown where they live
    let mut targets = vec![];
    for (k, &i) in which.iter().enumerate() {
        let t = &rec.targets[i];
        let mp = t.mountpoints.first().cloned().unwrap_or_default();
        let copy = view.of(i).unwrap_or(Path::new("/")).to_path_buf();
        let mut tc = match recording.as_ref().and_then(|r| r.targets.get(k)) {
            Some(tr) => {
                let now = |p: &Path| std::fs::symlink_metadata(p).ok().map(|m| m.is_dir());
                let before = |p: &Path| {
                    let live = mp.join(p.strip_prefix(&copy).unwrap_or(p));
                    Some(std::fs::symlink_metadata(live).is_ok())
                };
                crate::change::record::classify(tr, &now, &before)
            }
            None => {
                let c = crate::change::compare::compare(&mp, &copy, &copy, &[]);
                TargetChanges {
                    target: String::new(),
                    mountpoint: None,
                    source: ChangeSource::Compared,
                    complete: c.unreadable == 0,
                    changes: c.changes,
                    more_under: vec![],
                    note: None,
                }
            }
        };
        tc.target = format!("{}/{}", t.vg, t.lv);
        tc.mountpoint = Some(mp.clone());
        let show = |p: &Path| mp.join(p.strip_prefix(&copy).unwrap_or(p));
        tc.changes
            .retain(|c| rcd.as_ref().is_none_or(|r| &c.path != r));
        for c in tc.changes.iter_mut() {
            c.path = show(&c.path);
            c.from = c.from.as_deref().map(show);
        }
        for m in tc.more_under.iter_mut() {
            m.dir = show(&m.dir);
        }
        targets.push(tc);
    }
    if let Some(list) = &outside {
        for (mp, upper) in list {
            let mut paths = vec![];
            list_upper(upper, upper, &mut paths);
            if !paths.is_empty() {
                ui::warn(&format!(
                    "the command wrote outside the protected volumes, under {} (not on a target: a guarded run would not roll these back): {}",
                    mp.display(),
                    paths.iter().take(20).map(|p| mp.join(p).display().to_string()).collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    let packages = match (dpkg_before, dpkg_at(Path::new(""))) {
        (Some(b), Some(after)) => std::fs::read_to_string(after)
            .map(|a| {
                crate::change::dpkg::diff(
                    &crate::change::dpkg::parse(&b),
                    &crate::change::dpkg::parse(&a),
                )
            })
            .unwrap_or_default(),
        _ => vec![],
    };
    drop(mounts);
    view.close(lvm)?;
    Ok((
        code,
        Some(RunChanges {
            schema: crate::model::change::SCHEMA.into(),
            run: rec.id.clone(),
            targets,
            packages,
        }),
    ))
}

/// Kills (SIGKILL) every process whose root is the rehearsal's root (the command and all it
/// started: they were all chrooted there), until none is left or 5 s have passed; how many.
fn kill_leftovers(root: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let Ok(r) = std::fs::metadata(root) else {
        return 0;
    };
    let me = std::process::id();
    let mut killed = std::collections::HashSet::new();
    for _ in 0..50 {
        let mut found = false;
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if pid as u32 == me {
                continue;
            }
            let same_root = std::fs::metadata(format!("/proc/{pid}/root"))
                .is_ok_and(|m| m.dev() == r.dev() && m.ino() == r.ino());
            if same_root {
                found = true;
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                killed.insert(pid);
            }
        }
        if !found {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    killed.len()
}

/// Most paths kept per volume; past it, counted per folder.
pub const RECORD_LIMIT: usize = 100_000;

fn list_upper(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if out.len() > 1000 {
            return;
        }
        // folders only hold what was written (copied up to hold it), not news themselves
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            list_upper(base, &p, out);
        } else {
            out.push(p.strip_prefix(base).unwrap_or(&p).to_path_buf());
        }
    }
}

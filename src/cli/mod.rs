//! The command line. Two steps, as in ripgrep: clap turns words into raw flags without touching
//! the system; `build_run_options` turns those into checked values (sizes, durations) and only
//! then does guard look at the machine (preflight) and act.
pub mod manpage;
pub mod policy;
pub mod report;
use crate::cli::policy::Policy;
use crate::error::{Error, Result};
use crate::lvm::real::RealLvm;
use crate::ops::{recover, rollback, status};
use crate::run::plan::PlanRequest;
use crate::run::{OnFailure, OnSuccess, RunOptions};
use crate::size::{SizeSpec, DEFAULT_SIZE};
use crate::store::journal::Journal;
use crate::{run as transaction, ui};
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

pub const EXIT_CODES: &str = "\
Exit status:
  0..=122  the command's own exit status is passed through (0: success, the change is kept)
  123      the command exited 0 but a health check failed or `guard rollback RUN` came after it (rolled back)
  124      the command ran past --timeout and was stopped (rolled back per --on-failure)
  125      guard refused or failed before the command ran: nothing was changed
  126      the command was found but cannot be executed (nothing was changed)
  127      the command was not found (nothing was changed)
  128+N    the command was killed by signal N
Subcommands exit 0 on success and 125 on error (recover: 1 when something could not be recovered).";

const ABOUT: &str =
    "Run a risky command under LVM snapshots: keep the change on success, roll back on failure";

const LONG_ABOUT: &str = "\
guard snapshots the LVM logical volumes a command may change, runs the command, and then removes
the snapshots (success) or merges them back (failure: non-zero exit, signal, timeout). Where a
volume is in use (mounted, or /), LVM finishes the merge at its next activation: for / that is
the next boot, and guard says so. Thin volumes get thin snapshots.";

const EXAMPLES: &str = "\
Examples:
  guard --mount / --mount /var -- apt-get -y dist-upgrade
  guard --lv vg0/app --timeout 10m -- ./deploy.sh v2.3
  guard --lv vg0/data --dry-run -- true
  guard rehearse --policy apt -- apt-get -y dist-upgrade
  guard status
  guard diff 20261127-101500-3f9a
  guard restore 20261127-101500-3f9a /etc/nginx/nginx.conf
  guard rollback --finish 20261127-101500-3f9a";

#[derive(Debug, Parser)]
#[command(
    name = "guard",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = EXAMPLES,
    after_long_help = format!("{EXAMPLES}\n\n{EXIT_CODES}"),
    args_conflicts_with_subcommands = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    pub sub: Option<Sub>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Follow a policy: a name (/etc/guard/policies, /usr/share/guard/policies, built-in) or a
    /// path to a .toml file; flags given here override it
    #[arg(long, value_name = "NAME|FILE")]
    pub policy: Option<String>,
    /// Protect this logical volume (repeatable)
    #[arg(long = "lv", value_name = "VG/LV")]
    pub lvs: Vec<String>,
    /// Protect the logical volume mounted at (or holding) this path (repeatable)
    #[arg(long = "mount", value_name = "PATH")]
    pub mounts: Vec<PathBuf>,
    /// COW size of each thick snapshot: 2G, 512M, 20%ORIGIN, 10%FREE [default: 20%ORIGIN]
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub size: Option<String>,
    /// Stop the command after this long (30s, 10m, 1h) and count it as a failure
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// After the command exits 0, run this health check (repeatable; split into words like a
    /// shell would, run without one); a failing check is a failure
    #[arg(long = "check", value_name = "CMD")]
    pub checks: Vec<String>,
    /// What to do when the command fails [default: rollback]
    #[arg(long, value_enum, value_name = "ACTION")]
    pub on_failure: Option<OnFailure>,
    /// What to do when the command succeeds [default: discard]
    #[arg(long, value_enum, value_name = "ACTION")]
    pub on_success: Option<OnSuccess>,
    /// Keep the snapshots this long after success (implies --on-success keep)
    #[arg(long, value_name = "DURATION")]
    pub keep: Option<String>,
    /// Extend a snapshot (or thin pool) when its use passes this percentage [default: 80]
    #[arg(long, value_name = "PCT")]
    pub extend_at: Option<f64>,
    /// When the VG (or thin pool) has no room to extend: freeze and hold, roll back, or continue
    /// [default: freeze]
    #[arg(long, value_enum, value_name = "ACTION")]
    pub when_full: Option<crate::watch::WhenFull>,
    /// Do not hold a set of volumes at one moment while snapshotting it (each LV is still
    /// snapshotted with its filesystem frozen by lvm2)
    #[arg(long)]
    pub no_freeze: bool,
    /// If a rollback is deferred because a target is mounted, unmount it to finish now (not /)
    #[arg(long)]
    pub finish: bool,
    /// After a kept change to /, boot it once on trial: unless that boot is confirmed healthy
    /// by its deadline, the next boot rolls it back by itself (GRUB; needs --keep)
    #[arg(long, conflicts_with = "no_trial_boot")]
    pub trial_boot: bool,
    /// Do not arm a trial boot, even if the policy asks for one
    #[arg(long)]
    pub no_trial_boot: bool,
    /// How long a trial boot has to come up healthy before it is rebooted into the fallback
    /// [default: the policy's, else 10m]
    #[arg(long, value_name = "DURATION")]
    pub trial_deadline: Option<String>,
    /// Keep this path's contents through a rollback (e.g. /var/log: the logs of what went
    /// wrong); copied into the snapshot just before it is merged (repeatable)
    #[arg(long, value_name = "PATH")]
    pub preserve: Vec<PathBuf>,
    /// Do not record which paths the command changes (`guard diff` of a kept run then compares
    /// its snapshot instead)
    #[arg(long)]
    pub no_record: bool,
    /// Print the plan (targets, snapshot kinds and sizes, VG space) and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Wait for another guard run holding one of the volumes instead of failing at once
    #[arg(long)]
    pub wait: bool,
    /// Also write the final report as one JSON object to stderr
    #[arg(long)]
    pub json: bool,
    /// Write the final report as JSON to FILE
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Print only warnings, errors and the summary
    #[arg(long, short)]
    pub quiet: bool,
    /// The command to run, after --
    #[arg(last = true, value_name = "COMMAND", value_parser = clap::value_parser!(OsString))]
    pub command: Vec<OsString>,
}

/// `guard snapshot`: the flags that make sense for a point-in-time copy.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Mount the snapshots read-only under this folder for the command (made 0700 if missing;
    /// must be empty); the command finds it in GUARD_SNAPSHOT_ROOT
    #[arg(long, value_name = "DIR")]
    pub mount_at: PathBuf,
    /// Follow a policy for its targets and its hold hook (e.g. mysql: FLUSH TABLES WITH READ
    /// LOCK held across the snapshots)
    #[arg(long, value_name = "NAME|FILE")]
    pub policy: Option<String>,
    /// Copy this logical volume (repeatable)
    #[arg(long = "lv", value_name = "VG/LV")]
    pub lvs: Vec<String>,
    /// Copy the logical volume mounted at (or holding) this path (repeatable)
    #[arg(long = "mount", value_name = "PATH")]
    pub mounts: Vec<PathBuf>,
    /// COW size of each thick snapshot: 2G, 512M, 20%ORIGIN, 10%FREE [default: 20%ORIGIN]
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub size: Option<String>,
    /// Stop the command after this long (30s, 10m, 1h)
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Extend a snapshot (or thin pool) when its use passes this percentage [default: 80]
    #[arg(long, value_name = "PCT")]
    pub extend_at: Option<f64>,
    /// Do not hold a set of volumes at one moment while snapshotting it
    #[arg(long)]
    pub no_freeze: bool,
    /// Print the plan and where the snapshots would be mounted; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Wait for another guard run holding one of the volumes instead of failing at once
    #[arg(long)]
    pub wait: bool,
    /// Also write the final report as one JSON object to stderr
    #[arg(long)]
    pub json: bool,
    /// Write the final report as JSON to FILE
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Print only warnings, errors and the summary
    #[arg(long, short)]
    pub quiet: bool,
    /// The command to run against the copy, after --
    #[arg(last = true, value_name = "COMMAND", value_parser = clap::value_parser!(OsString))]
    pub command: Vec<OsString>,
}

impl SnapshotArgs {
    /// As a run's flags: the copy is never rolled back, so only these apply.
    fn as_run_args(&self) -> RunArgs {
        RunArgs {
            policy: self.policy.clone(),
            lvs: self.lvs.clone(),
            mounts: self.mounts.clone(),
            size: self.size.clone(),
            timeout: self.timeout.clone(),
            checks: vec![],
            on_failure: None,
            on_success: None,
            keep: None,
            extend_at: self.extend_at,
            // the origin is live (a database serving): a full VG costs the copy (a thick
            // snapshot's overflow is reported and fails the command's result), never a frozen
            // server (a thin pool that fills still stops the origin's writes: keep it room)
            when_full: Some(crate::watch::WhenFull::Continue),
            no_freeze: self.no_freeze,
            finish: false,
            trial_boot: false,
            no_trial_boot: true,
            trial_deadline: None,
            preserve: vec![],
            no_record: false,
            dry_run: self.dry_run,
            wait: self.wait,
            json: self.json,
            report: self.report.clone(),
            quiet: self.quiet,
            command: self.command.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum TrialSub {
    /// In a trial boot: check it (no unit failed that had not failed before the change, and
    /// the policy's [trial] checks); healthy ends the trial, else exit 1 (the unit reboots
    /// into the fallback)
    Confirm,
}

#[derive(Debug, Subcommand)]
pub enum Sub {
    /// Take a consistent point-in-time copy of volumes (a database's, with its policy's lock),
    /// mount it read-only for a command (a backup), then unmount and remove it
    Snapshot(SnapshotArgs),
    /// List runs and their snapshots: phase, COW use, pending merges
    Status {
        /// Machine-readable output (schema guard.status/1)
        #[arg(long)]
        json: bool,
        /// Include finished runs
        #[arg(long)]
        all: bool,
    },
    /// Finish or clean up what a killed guard or a power cut left; safe at every boot
    Recover {
        /// Also commit kept runs whose keep window has ended
        #[arg(long)]
        expire: bool,
    },
    /// Remove a kept run's snapshots: its change stays
    Commit {
        #[arg(value_name = "RUN")]
        run: String,
    },
    /// Let a run that guard froze (its VG was full) go on, once space was freed
    Resume {
        #[arg(value_name = "RUN")]
        run: String,
    },
    /// Merge a run's snapshots back: its change is undone
    Rollback {
        #[arg(value_name = "RUN")]
        run: String,
        /// Complete a deferred merge now: unmount the targets, reactivate, wait, mount again
        #[arg(long)]
        finish: bool,
    },
    /// What a run changed: paths added, modified, deleted and moved per volume (recorded while
    /// it ran), and the packages it installed, upgraded or removed
    Diff {
        #[arg(value_name = "RUN")]
        run: String,
        /// Only paths under this one
        #[arg(value_name = "PATH")]
        path: Option<PathBuf>,
        /// Machine-readable output (schema guard.diff/1)
        #[arg(long)]
        json: bool,
        /// Compare the kept run's snapshot with the live filesystem instead of reading the
        /// recording (metadata first, contents where it differs)
        #[arg(long)]
        compare: bool,
        /// A unified diff of this file: as it was before the run (its kept snapshot) and now
        #[arg(long, value_name = "PATH", conflicts_with = "path")]
        content: Option<PathBuf>,
    },
    /// Mount a kept run's snapshots read-only (how the volumes were before it); one volume at
    /// DIR, several at DIR/VG/LV [default DIR: /run/guard/mnt/RUN]
    Mount {
        #[arg(value_name = "RUN")]
        run: String,
        #[arg(value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Unmount what `guard mount RUN` mounted
    Umount {
        #[arg(value_name = "RUN")]
        run: String,
    },
    /// Take paths back from a kept run's snapshot (contents, owner, mode, times, xattrs, ACLs);
    /// the rest of the change stays
    Restore {
        #[arg(value_name = "RUN")]
        run: String,
        #[arg(value_name = "PATH", required = true)]
        paths: Vec<PathBuf>,
        /// Make each path exactly as it was: remove what the run added inside it, and a path
        /// that did not exist before the run
        #[arg(long)]
        exact: bool,
    },
    /// Run a command on writable copies of the volumes, in a private mount namespace, and
    /// show what it would change; production is not written to and the copies are removed
    Rehearse(RunArgs),
    /// Trial boots (--trial-boot): `confirm` is run by guard-confirm.service in a trial boot
    Trial {
        #[command(subcommand)]
        sub: TrialSub,
    },
    /// Print the device-mapper status of a device as guard reads it (for diagnosis)
    #[command(hide = true)]
    DmStatus {
        #[arg(value_name = "DM_NAME")]
        name: String,
    },
    /// Watch the snapshots of kept runs and extend them before they fill (started in the
    /// background when a run is kept; ends when no kept run is left)
    Watch {
        /// Watch one period, then exit
        #[arg(long)]
        once: bool,
        /// How long to watch before reading the journal again
        #[arg(long, value_name = "DURATION", default_value = "60s")]
        period: String,
    },
    /// Check and list policies
    Policy {
        #[command(subcommand)]
        sub: PolicySub,
    },
    /// Print the man page (roff)
    #[command(hide = true)]
    Man,
    /// Print a shell completion script
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicySub {
    /// Validate a policy and print the settings it gives (merged with the defaults)
    Check {
        #[arg(value_name = "NAME|FILE")]
        policy: String,
        /// Machine-readable output (schema guard.policy/1)
        #[arg(long)]
        json: bool,
    },
    /// List the policies --policy can find, in search order
    List {
        #[arg(long)]
        json: bool,
    },
}

fn parse_duration(flag: &str, s: &str) -> Result<Duration> {
    let d = humantime::parse_duration(s).map_err(|e| {
        Error::refused(
            format!("invalid {flag} {s:?}: {e}"),
            "write a duration like 90s, 10m, 1h30m",
        )
    })?;
    if d.is_zero() {
        return Err(Error::refused(
            format!("{flag} must be longer than zero"),
            "write a duration like 90s, 10m",
        ));
    }
    Ok(d)
}

/// Second step: raw flags (and the policy, read beforehand) to checked options. No system
/// calls here beyond finding --check programs.
pub fn build_run_options(a: &RunArgs, policy: Option<&Policy>) -> Result<RunOptions> {
    let p = policy.cloned().unwrap_or_default();
    let size = match &a.size {
        Some(s) => s.parse::<SizeSpec>()?,
        None => p.size.unwrap_or(DEFAULT_SIZE),
    };
    let keep = match &a.keep {
        Some(k) => Some(parse_duration("--keep", k)?),
        None => p.keep,
    };
    let timeout = match &a.timeout {
        Some(t) => Some(parse_duration("--timeout", t)?),
        None => p.timeout,
    };
    let extend_at = match a.extend_at.or(p.extend_at) {
        None => crate::watch::DEFAULT_EXTEND_AT,
        Some(v) if (1.0..=99.0).contains(&v) => v,
        Some(v) => {
            return Err(Error::refused(
                format!("--extend-at {v} is out of range"),
                "give a percentage from 1 to 99, e.g. --extend-at 80",
            ))
        }
    };
    // Targets on the command line replace the policy's: "these volumes, with apt's rules".
    let (lvs, mounts) = if a.lvs.is_empty() && a.mounts.is_empty() {
        (p.lvs.clone(), p.mounts.clone())
    } else {
        (a.lvs.clone(), a.mounts.clone())
    };
    let mut checks = p.checks.clone();
    for c in &a.checks {
        checks.push(crate::run::hooks::check_from_flag(c)?);
    }
    let on_success = if a.keep.is_some() {
        OnSuccess::Keep
    } else {
        // a keep window alone (from the policy) means keep
        a.on_success.or(p.on_success).unwrap_or(if keep.is_some() {
            OnSuccess::Keep
        } else {
            OnSuccess::Discard
        })
    };
    let trial_boot = !a.no_trial_boot && (a.trial_boot || p.trial_boot);
    if trial_boot && on_success != OnSuccess::Keep {
        return Err(Error::refused(
            "a trial boot needs the snapshots kept after success (its fallback merges them)",
            "add --keep 1d (or --no-trial-boot)",
        ));
    }
    let mut preserve = p.preserve.clone();
    for x in &a.preserve {
        if !x.is_absolute()
            || x.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(Error::refused(
                format!(
                    "--preserve {}: give an absolute path without ..",
                    x.display()
                ),
                "e.g. --preserve /var/log",
            ));
        }
        if !preserve.contains(x) {
            preserve.push(x.clone());
        }
    }
    Ok(RunOptions {
        preserve,
        record: !a.no_record,
        request: PlanRequest { lvs, mounts, size },
        command: a.command.clone(),
        timeout,
        on_failure: a.on_failure.or(p.on_failure).unwrap_or(OnFailure::Rollback),
        on_success,
        keep,
        dry_run: a.dry_run,
        wait: a.wait,
        json: a.json,
        report_file: a.report.clone(),
        finish: a.finish || p.finish.unwrap_or(false),
        watch: crate::watch::WatchConfig {
            extend_at,
            when_full: a
                .when_full
                .or(p.when_full)
                .unwrap_or(crate::watch::WhenFull::Freeze),
        },
        freeze: !a.no_freeze && p.freeze.unwrap_or(true),
        freeze_limit: p.freeze_timeout.unwrap_or(crate::dm::hold::DEFAULT_LIMIT),
        prefer_thin: p.prefer_thin,
        copy_root: None,
        hooks: p.hooks.clone(),
        checks,
        warn_unless_on_lvm: p.warn_unless_on_lvm.clone(),
        save_unless_on_lvm: p.save_unless_on_lvm.clone(),
        policy: policy.map(Policy::recorded).or_else(|| a.policy.clone()),
        trial_boot,
        trial_deadline: match &a.trial_deadline {
            // a boot and the confirmation's settling take a minute or two; 0 would disable
            // systemd's job timeout altogether
            Some(s) => match parse_duration("--trial-deadline", s)? {
                d if d < Duration::from_secs(120) => {
                    return Err(Error::refused(
                        format!("--trial-deadline {s} is too short"),
                        "give 2m or more: the trial boot must come up and be checked within it",
                    ))
                }
                d => d,
            },
            None => p
                .trial_deadline
                .unwrap_or(Duration::from_secs(crate::boot::DEFAULT_DEADLINE_SECS)),
        },
    })
}

/// What guard needs from the machine: root, the lvm2 tools, device-mapper with snapshots.
pub fn preflight() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::refused(
            "guard must run as root: it creates, merges and removes LVM snapshots",
            "run it as root, e.g. sudo guard …",
        ));
    }
    if crate::exec::find_program("lvm").is_none() {
        return Err(Error::refused(
            "the lvm2 tools are not installed (no lvm in /usr/sbin or /sbin)",
            "install them: apt-get install lvm2 (dnf install lvm2)",
        ));
    }
    if !std::path::Path::new("/dev/mapper/control").exists() {
        return Err(Error::refused(
            "device-mapper is not available (/dev/mapper/control is missing)",
            "load it: modprobe dm-mod dm-snapshot (a kernel without device-mapper cannot run guard)",
        ));
    }
    if !std::path::Path::new("/sys/module/dm_snapshot").exists() {
        // lvcreate would load it too, but a missing module should stop guard before anything
        let loaded = crate::exec::system_command("modprobe")
            .and_then(|mut c| crate::exec::CommandExt::run_checked(c.arg("dm-snapshot")));
        if loaded.is_err() {
            return Err(Error::refused(
                "the device-mapper snapshot target (dm-snapshot) is not available",
                "load it: modprobe dm-snapshot (install the kernel's modules package if it is missing)",
            ));
        }
    }
    Ok(())
}

pub fn main_with_args(args: Vec<OsString>) -> i32 {
    crate::exec::trace("main");
    crate::lvm::early::start(&args);
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 125 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    ui::set_quiet(cli.run.quiet);
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            ui::error(&e.to_string());
            e.exit_code()
        }
    }
}

/// What a command uses of what was started before parsing (lvm/early.rs): the LV report, the
/// lvm shell. The rest ends once the command is known: a report from before a command's own
/// locks must never serve it (commit, rollback and recover read theirs under their locks).
fn early_use(sub: Option<&Sub>) -> (bool, bool) {
    match sub {
        None | Some(Sub::Snapshot(_) | Sub::Rehearse(_)) => (true, true),
        Some(Sub::Status { .. }) => (true, false),
        Some(Sub::Commit { .. } | Sub::Rollback { .. } | Sub::Recover { .. }) => (false, true),
        Some(_) => (false, false),
    }
}

fn dispatch(cli: Cli) -> Result<i32> {
    let (report, shell) = early_use(cli.sub.as_ref());
    crate::lvm::early::keep_only(report, shell);
    let journal = Journal::open_default();
    let lvm = RealLvm::default();
    // The commands that run several lvm2 commands in a row use one lvm shell (lvm/shell.rs),
    // started once the caller is known to be root.
    let Some(sub) = cli.sub else {
        if cli.run.command.is_empty() && cli.run.lvs.is_empty() && cli.run.mounts.is_empty() {
            let _ = Cli::command().print_help();
            return Ok(125);
        }
        crate::exec::trace("parsed");
        let policy = cli.run.policy.as_deref().map(policy::load).transpose()?;
        let opts = build_run_options(&cli.run, policy.as_ref())?;
        crate::exec::trace("options");
        preflight()?;
        crate::exec::trace("preflight");
        let lvm = RealLvm::with_shell();
        crate::exec::trace("lvm shell started");
        return Ok(transaction::run(&lvm, &journal, &opts));
    };
    match sub {
        Sub::Snapshot(a) => {
            ui::set_quiet(a.quiet);
            let policy = a.policy.as_deref().map(policy::load).transpose()?;
            let mut opts = build_run_options(&a.as_run_args(), policy.as_ref())?;
            // what the policy says to do after a change does not apply to a copy
            opts.checks.clear();
            opts.finish = false;
            opts.copy_root = Some(a.mount_at.clone());
            preflight()?;
            let lvm = RealLvm::with_shell();
            Ok(transaction::copy(&lvm, &journal, &opts))
        }
        Sub::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "guard", &mut script);
            ui::out(script)?;
            Ok(0)
        }
        Sub::Policy { sub } => policy_cmd(sub),
        Sub::Watch { once, period } => {
            let period = parse_duration("--period", &period)?;
            preflight()?;
            crate::watch::background::watch(&lvm, &journal, period, once)
        }
        Sub::Man => {
            let mut page = Vec::new();
            crate::cli::manpage::render(&mut page)
                .map_err(|e| Error::io("cannot render the man page", e))?;
            ui::out(page)?;
            Ok(0)
        }
        Sub::DmStatus { name } => {
            for t in crate::dm::Control::open()?.status(&name)? {
                ui::out(format!(
                    "{} {} {} {}\n",
                    t.start, t.length, t.target_type, t.params
                ))?;
            }
            Ok(0)
        }
        Sub::Status { json, all } => {
            preflight()?;
            // one lvm2 command: its report was started before the arguments were parsed
            // (lvm/early.rs), a shell would only add its own start-up
            let st = status::collect(&lvm, &journal, all)?;
            if json {
                ui::out(format!("{}\n", serde_json::to_string_pretty(&st)?))?;
            } else {
                ui::out(status::human_text(&st))?;
            }
            Ok(0)
        }
        Sub::Trial {
            sub: TrialSub::Confirm,
        } => {
            let r = preflight().and_then(|()| crate::boot::confirm(&lvm, &journal));
            if let Err(e) = &r {
                // the unit reboots to the fallback on an error too, and the fallback rolls back
                // the journal that holds it: the kernel's log keeps the reason
                crate::log::kernel_line(
                    crate::log::Kind::Error,
                    &format!(
                        "the trial boot's confirmation failed: {e}; rebooting to the fallback"
                    ),
                );
            }
            r
        }
        Sub::Recover { expire } => {
            preflight()?;
            let lvm = RealLvm::with_shell();
            let sum = recover::recover(&lvm, &journal, expire)?;
            Ok(if sum.errors > 0 { 1 } else { 0 })
        }
        Sub::Diff {
            run,
            path,
            json,
            compare,
            content,
        } => {
            preflight()?;
            crate::ops::see::diff(
                &lvm,
                &journal,
                &crate::ops::see::DiffArgs {
                    run,
                    json,
                    compare,
                    content,
                    path,
                },
            )
        }
        Sub::Mount { run, dir } => {
            preflight()?;
            crate::ops::see::mount(&lvm, &journal, &run, dir)
        }
        Sub::Umount { run } => {
            preflight()?;
            crate::ops::see::umount(&lvm, &journal, &run)
        }
        Sub::Restore { run, paths, exact } => {
            preflight()?;
            crate::ops::see::restore(&lvm, &journal, &run, &paths, exact)
        }
        Sub::Rehearse(a) => {
            ui::set_quiet(a.quiet);
            let policy = a.policy.as_deref().map(policy::load).transpose()?;
            let opts = build_run_options(&a, policy.as_ref())?;
            preflight()?;
            let lvm = RealLvm::with_shell();
            Ok(crate::run::rehearse::rehearse(&lvm, &journal, &opts))
        }
        Sub::Commit { run } => {
            preflight()?;
            let lvm = RealLvm::with_shell();
            let mut held = crate::ops::hold(&lvm, &journal, &run, "commit")?;
            commit_run(&lvm, &journal, &mut held.rec)
        }
        Sub::Resume { run } => {
            preflight()?;
            if !crate::store::journal::valid_run_id(&run) {
                return Err(bad_run_id(&run));
            }
            let rec = journal.load(&run)?;
            signal_running_guard(&rec, nix::sys::signal::Signal::SIGUSR1, "resume")
        }
        Sub::Rollback { run, finish } => {
            preflight()?;
            if !crate::store::journal::valid_run_id(&run) {
                return Err(bad_run_id(&run));
            }
            // a run still in its guard's hands is steered by a signal: that guard holds the locks
            if let Ok(rec) = journal.load(&run) {
                if rec.copy.is_some() {
                    return Err(Error::refused(
                        format!("run {run} is a `guard snapshot` copy: it has nothing to roll back"),
                        "it ends by itself when its command does; `guard commit RUN` removes a left-over copy",
                    ));
                }
                if rec.phase == crate::store::journal::Phase::Running
                    && crate::store::journal::process_alive(rec.guard_pid, rec.guard_start)
                {
                    return signal_running_guard(
                        &rec,
                        nix::sys::signal::Signal::SIGUSR2,
                        "roll back",
                    );
                }
            }
            let lvm = RealLvm::with_shell();
            let mut held = crate::ops::hold(&lvm, &journal, &run, "rollback")?;
            rollback_cmd(&lvm, &journal, &mut held.rec, finish)
        }
    }
}

fn bad_run_id(s: &str) -> Error {
    Error::refused(
        format!("{s:?} is not a run id (they look like 20261127-101500-3f9a…)"),
        "list runs with `guard status --all`",
    )
}

fn policy_cmd(sub: PolicySub) -> Result<i32> {
    match sub {
        PolicySub::List { json } => {
            let all = policy::list();
            if json {
                let v = serde_json::json!({"schema": "guard.policy-list/1", "policies": all});
                ui::out(format!("{}\n", serde_json::to_string_pretty(&v)?))?;
            } else {
                for p in all {
                    ui::out(format!(
                        "{:<16} {:<44} {}{}\n",
                        p.name,
                        p.source,
                        p.description,
                        if p.shadowed {
                            " (hidden by the one above)"
                        } else {
                            ""
                        }
                    ))?;
                }
            }
            Ok(0)
        }
        PolicySub::Check { policy: spec, json } => {
            let p = policy::load(&spec)?;
            let cli = Cli::try_parse_from(["guard", "--policy", &spec])
                .map_err(|e| Error::Other(e.to_string()))?;
            let o = build_run_options(&cli.run, Some(&p))?;
            let eff = policy::effective(&p, &o);
            if json {
                ui::out(format!("{}\n", serde_json::to_string_pretty(&eff)?))?;
            } else {
                ui::out(policy::effective_text(&eff))?;
            }
            Ok(0)
        }
    }
}

/// A run still in its guard's hands (held by the watcher) is steered by a signal to that guard.
fn signal_running_guard(
    rec: &crate::store::journal::RunRecord,
    sig: nix::sys::signal::Signal,
    what: &str,
) -> Result<i32> {
    if rec.phase != crate::store::journal::Phase::Running
        || !crate::store::journal::process_alive(rec.guard_pid, rec.guard_start)
    {
        return Err(Error::refused(
            format!(
                "run {} is not running under a live guard (phase {:?})",
                rec.id, rec.phase
            ),
            "see `guard status`; for a guard that is gone run `guard recover`",
        ));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(rec.guard_pid as i32), sig)
        .map_err(|e| Error::Other(format!("cannot signal guard pid {}: {e}", rec.guard_pid)))?;
    ui::say(&format!(
        "asked guard (pid {}) to {what} run {}",
        rec.guard_pid, rec.id
    ));
    Ok(0)
}

fn commit_run(
    lvm: &RealLvm,
    journal: &Journal,
    rec: &mut crate::store::journal::RunRecord,
) -> Result<i32> {
    use crate::store::journal::Phase;
    if rec.copy.is_some() && rec.phase != Phase::Done {
        // a copy's snapshots are unmounted first; whatever its phase, they are only removed
        transaction::copy::end(lvm, journal, rec)?;
        ui::say(&format!(
            "run {}: the copy is unmounted and its snapshots removed",
            rec.id
        ));
        return Ok(0);
    }
    match rec.phase {
        Phase::Kept | Phase::Committing | Phase::Decided => {
            transaction::commit(lvm, journal, rec)?;
            ui::say(&format!("run {}: committed, snapshots removed", rec.id));
            Ok(0)
        }
        Phase::Done => {
            ui::say(&format!("run {}: already finished, nothing to do", rec.id));
            Ok(0)
        }
        Phase::RollbackScheduled | Phase::RollingBack => Err(Error::refused(
            format!(
                "run {} is being rolled back; a started merge cannot be cancelled",
                rec.id
            ),
            format!(
                "let it complete (`guard rollback --finish {}` or reboot)",
                rec.id
            ),
        )),
        Phase::Snapshotting | Phase::Running => Err(Error::refused(
            format!("run {} is still in progress or was interrupted", rec.id),
            "wait for it, or run `guard recover` if its guard is gone",
        )),
    }
}

/// The error for a run with a volume that could not be rolled back (its snapshot invalidated
/// or gone), if it has one.
fn lost_rollback_point(rec: &crate::store::journal::RunRecord) -> Result<()> {
    match rec
        .targets
        .iter()
        .find(|t| t.rollback == Some(crate::model::TargetState::Impossible))
    {
        Some(t) => Err(Error::Other(format!(
            "{}/{} cannot be rolled back: {}",
            t.vg,
            t.lv,
            t.note.as_deref().unwrap_or("its snapshot is gone")
        ))),
        None => Ok(()),
    }
}

fn rollback_cmd(
    lvm: &RealLvm,
    journal: &Journal,
    rec: &mut crate::store::journal::RunRecord,
    finish: bool,
) -> Result<i32> {
    use crate::store::journal::Phase;
    match rec.phase {
        Phase::Kept | Phase::Decided | Phase::RollingBack => {
            let todo = rollback::rollback_with_hooks(lvm, journal, rec, finish)?;
            for t in &todo {
                ui::say(&format!("to do: {t}"));
            }
            if rec.phase == Phase::RollbackScheduled {
                crate::watch::background::hand_off(&rec.id);
            }
            // an invalidated snapshot was removed, nothing merged: not a success to a pipeline
            lost_rollback_point(rec)?;
            Ok(0)
        }
        Phase::RollbackScheduled if finish => {
            let left = rollback::finish(lvm, journal, rec)?;
            if !left.busy.is_empty() {
                return Err(Error::refused(
                    left.busy.join("\n"),
                    "stop what holds the mount points (the policy's pre_rollback hooks name the services), then run this again",
                ));
            }
            if rec.phase == Phase::RollbackScheduled && !left.root.is_empty() {
                return Err(Error::refused(
                    left.root.join("\n"),
                    "reboot: the merge completes when the root volume is activated at boot",
                ));
            }
            lost_rollback_point(rec)?;
            // the services the policy stops around a rollback start again on the merged data
            let env = crate::run::hooks::HookEnv::for_record(rec);
            crate::run::hooks::run_point_reporting(
                &rollback::policy_hooks(rec),
                crate::run::hooks::HookPoint::PostRollback,
                &env,
            );
            Ok(0)
        }
        Phase::RollbackScheduled => {
            for t in rec
                .targets
                .iter()
                .filter(|t| t.rollback == Some(crate::model::TargetState::Scheduled))
            {
                ui::say(&format!(
                    "{}/{}: rollback completes {}",
                    t.vg,
                    t.lv,
                    rollback::completes_by(t, &rec.id)
                ));
            }
            // asked again, the answer stays: `guard rollback RUN || guard rollback RUN` must not
            // hide a volume lost the first time
            lost_rollback_point(rec)?;
            Ok(0)
        }
        Phase::Done => {
            ui::say(&format!(
                "run {}: already finished, nothing to roll back",
                rec.id
            ));
            lost_rollback_point(rec)?;
            Ok(0)
        }
        Phase::Snapshotting | Phase::Running | Phase::Committing => Err(Error::refused(
            format!(
                "run {} cannot be rolled back from phase {:?}",
                rec.id, rec.phase
            ),
            "if its guard is gone, run `guard recover` first",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn only_commands_that_plan_before_locking_use_the_early_report() {
        let uses = |args: &[&str]| early_use(Cli::try_parse_from(args).unwrap().sub.as_ref());
        let id = "20261129-000000-0123456789abcdef";
        assert_eq!(uses(&["guard", "--lv", "vg/a", "--", "true"]), (true, true));
        assert_eq!(uses(&["guard", "status"]), (true, false));
        for c in ["commit", "rollback"] {
            // however the arguments are written
            assert_eq!(uses(&["guard", c, "--", id]), (false, true), "{c}");
            assert_eq!(uses(&["guard", c, id]), (false, true), "{c}");
        }
        assert_eq!(uses(&["guard", "recover"]), (false, true));
        assert_eq!(
            uses(&["guard", "restore", id, "--", "/etc"]),
            (false, false)
        );
        assert_eq!(uses(&["guard", "watch", "--once"]), (false, false));
    }

    #[test]
    fn a_trial_boot_needs_kept_snapshots_and_the_policy_can_be_overridden() {
        let opts = |args: &[&str], policy: Option<&Policy>| {
            let cli = Cli::try_parse_from(args).unwrap();
            build_run_options(&cli.run, policy)
        };
        let e = opts(
            &["guard", "--trial-boot", "--lv", "vg/a", "--", "true"],
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("--keep 1d"), "{e}");
        let o = opts(
            &[
                "guard",
                "--trial-boot",
                "--keep",
                "1d",
                "--lv",
                "vg/a",
                "--",
                "true",
            ],
            None,
        )
        .unwrap();
        assert!(o.trial_boot);
        assert_eq!(
            o.trial_deadline.as_secs(),
            crate::boot::DEFAULT_DEADLINE_SECS
        );
        let k = crate::cli::policy::load("kernel-upgrade").unwrap();
        assert!(k.trial_boot, "the kernel-upgrade policy arms a trial boot");
        let o = opts(&["guard", "--", "true"], Some(&k)).unwrap();
        assert!(o.trial_boot);
        let o = opts(&["guard", "--no-trial-boot", "--", "true"], Some(&k)).unwrap();
        assert!(!o.trial_boot, "--no-trial-boot wins over the policy");
        assert!(
            Cli::try_parse_from(["guard", "--trial-boot", "--no-trial-boot", "--", "true"])
                .is_err()
        );
    }

    #[test]
    fn raw_flags_become_checked_options() {
        let cli = Cli::try_parse_from([
            "guard", "--lv", "vg/a", "--size", "8M", "--keep", "10m", "--", "true",
        ])
        .unwrap();
        let o = build_run_options(&cli.run, None).unwrap();
        assert_eq!(o.request.size, SizeSpec::Bytes(8 << 20));
        assert_eq!(o.on_success, OnSuccess::Keep);
        assert_eq!(o.keep, Some(Duration::from_secs(600)));
        let cli = Cli::try_parse_from(["guard", "--lv", "vg/a", "--timeout", "soon", "--", "true"])
            .unwrap();
        let e = build_run_options(&cli.run, None).unwrap_err().to_string();
        assert!(e.contains("invalid --timeout"), "{e}");
    }
}

//! Policies: how a kind of change is guarded, written down once in TOML. A policy names the
//! targets, snapshot size, watcher thresholds, timeouts, what happens on success and failure,
//! hooks and health checks. Command-line flags override it.
//!
//! `--policy NAME` looks in /etc/guard/policies, then /usr/share/guard/policies, then the copies
//! built into the binary (the repo's `policies/`, so a bare binary has them too). A path (with a
//! `/` or ending in `.toml`) is read as it is.
//!
//! A policy runs hooks as root, so a policy file, and every folder on its path, must be owned by
//! root and not writable by group or others, as sudo and sshd demand of their files. The file is
//! opened once, folder by folder from `/` without following links, and what is checked and read
//! is that one descriptor: nobody can swap the file between the check and the read.
use crate::error::{Error, Result};
use crate::run::hooks::{CheckSpec, HookPoint, HookSpec};
use serde::Deserialize;
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

pub const ETC_DIR: &str = "/etc/guard/policies";
pub const SHARE_DIR: &str = "/usr/share/guard/policies";

/// The shipped policies, built in so that `--policy apt` works wherever the binary is.
pub const BUILTIN: &[(&str, &str)] = &[
    ("apt", include_str!("../../policies/apt.toml")),
    ("deploy", include_str!("../../policies/deploy.toml")),
    ("dnf", include_str!("../../policies/dnf.toml")),
    (
        "kernel-upgrade",
        include_str!("../../policies/kernel-upgrade.toml"),
    ),
    ("mysql", include_str!("../../policies/mysql.toml")),
    ("postgresql", include_str!("../../policies/postgresql.toml")),
];

// The file as written. Every table denies unknown keys: a misspelt key must not silently
// fall back to a default (a `tiemout` that never stops anything).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub description: Option<String>,
    #[serde(default)]
    pub targets: Targets,
    #[serde(default)]
    pub snapshot: SnapshotSection,
    #[serde(default)]
    pub watch: WatchSection,
    #[serde(default)]
    pub run: RunSection,
    #[serde(default)]
    pub hook: Vec<HookEntry>,
    #[serde(default)]
    pub check: Vec<CheckEntry>,
    #[serde(default)]
    pub trial: TrialSection,
}

/// `[trial]`: boot the change once on trial, and fall back when that boot is not healthy.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrialSection {
    /// Arm a trial boot when the run ends kept.
    #[serde(default)]
    pub boot: bool,
    /// How long the trial boot has to be confirmed (default 10m).
    pub deadline: Option<String>,
    /// Checks run in the trial boot after multi-user.target (besides "no unit failed that had
    /// not failed before the change").
    #[serde(default)]
    pub check: Vec<CheckEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    #[serde(default)]
    pub lvs: Vec<String>,
    #[serde(default)]
    pub mounts: Vec<PathBuf>,
    /// Paths that should be on LVM for a rollback to be whole (e.g. /boot for apt): guard
    /// warns before running when one is not.
    #[serde(default)]
    pub warn_unless_on_lvm: Vec<PathBuf>,
    /// Paths that, when not on LVM, guard archives before the change and restores when the
    /// run is rolled back (e.g. /boot, so kernels stay in step with / and /lib/modules).
    #[serde(default)]
    pub save_unless_on_lvm: Vec<PathBuf>,
    /// Paths whose contents at a rollback are kept through it (the logs of what went wrong).
    #[serde(default)]
    pub preserve: Vec<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSection {
    pub size: Option<String>,
    pub freeze: Option<bool>,
    pub freeze_timeout: Option<String>,
    /// Say (dry run, report) when a target is thick: its snapshot slows synchronous writes.
    #[serde(default)]
    pub prefer_thin: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchSection {
    pub extend_at: Option<f64>,
    pub when_full: Option<crate::watch::WhenFull>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    pub timeout: Option<String>,
    pub on_failure: Option<crate::run::OnFailure>,
    pub on_success: Option<crate::run::OnSuccess>,
    pub keep: Option<String>,
    /// On a rollback of mounted volumes (not /): after the pre_rollback hooks, unmount them,
    /// complete the merge, mount them again, and only then run post_rollback.
    pub finish: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookEntry {
    pub when: HookPoint,
    pub run: Vec<String>,
    pub name: Option<String>,
    pub timeout: Option<String>,
    /// `hold` hooks: the line (substring) that says the hold is in place.
    pub ready: Option<String>,
    /// Text written to the hook's standard input (kept open for a `hold` hook until the
    /// snapshots exist: closing it ends, for example, a `mysql` session and its lock).
    pub stdin: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckEntry {
    pub run: Vec<String>,
    pub name: Option<String>,
    pub timeout: Option<String>,
    /// Fail when the check prints anything (for `dpkg --audit`, which lists problems).
    #[serde(default)]
    pub fail_on_output: bool,
}

/// A policy read and checked: durations parsed, hook programs found.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub name: String,
    pub source: String,
    /// The canonical absolute path of the file read (None for a built-in policy).
    pub path: Option<PathBuf>,
    pub description: String,
    pub lvs: Vec<String>,
    pub mounts: Vec<PathBuf>,
    pub warn_unless_on_lvm: Vec<PathBuf>,
    pub save_unless_on_lvm: Vec<PathBuf>,
    pub preserve: Vec<PathBuf>,
    pub size: Option<crate::size::SizeSpec>,
    pub freeze: Option<bool>,
    pub freeze_timeout: Option<Duration>,
    pub prefer_thin: bool,
    pub extend_at: Option<f64>,
    pub when_full: Option<crate::watch::WhenFull>,
    pub timeout: Option<Duration>,
    pub on_failure: Option<crate::run::OnFailure>,
    pub on_success: Option<crate::run::OnSuccess>,
    pub keep: Option<Duration>,
    pub finish: Option<bool>,
    pub hooks: Vec<HookSpec>,
    pub checks: Vec<CheckSpec>,
    pub trial_boot: bool,
    pub trial_deadline: Option<Duration>,
    pub boot_checks: Vec<CheckSpec>,
}

pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(300);

/// Where `--policy X` reads from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    File(PathBuf),
    Builtin(&'static str, &'static str),
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Builtin(n, _) => format!("built-in policy {n}"),
        }
    }
}

pub fn is_path(spec: &str) -> bool {
    spec.contains('/') || spec.ends_with(".toml")
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.')
}

/// Finds a policy by name or path; touches the file system only to look.
pub fn locate(spec: &str) -> Result<Source> {
    if is_path(spec) {
        let p = PathBuf::from(spec);
        if !p.exists() {
            return Err(Error::refused(
                format!("policy file {spec} does not exist"),
                "check the path, or give a policy name (see `guard policy list`)",
            ));
        }
        return Ok(Source::File(p));
    }
    if !valid_name(spec) {
        return Err(Error::refused(
            format!("{spec:?} is not a policy name"),
            "policy names use letters, digits, '-', '_' and '.'; see `guard policy list`",
        ));
    }
    for dir in [ETC_DIR, SHARE_DIR] {
        let p = Path::new(dir).join(format!("{spec}.toml"));
        if p.exists() {
            return Ok(Source::File(p));
        }
    }
    if let Some((n, text)) = BUILTIN.iter().find(|(n, _)| *n == spec) {
        return Ok(Source::Builtin(n, text));
    }
    let names: Vec<String> = list().into_iter().map(|e| e.name).collect();
    let hint = nearest(spec, names.iter().map(|s| s.as_str()))
        .map(|n| format!("did you mean {n}? "))
        .unwrap_or_default();
    Err(Error::refused(
        format!("no policy named {spec} (looked in {ETC_DIR}, {SHARE_DIR} and the built-in ones)"),
        format!(
            "{hint}available: {}; or give a path: --policy ./{spec}.toml",
            names.join(", ")
        ),
    ))
}

/// Reads, checks the ownership of, parses and validates a policy.
pub fn load(spec: &str) -> Result<Policy> {
    match locate(spec)? {
        Source::File(p) => {
            let name = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            from_opened(&name, open_secure(&p)?)
        }
        Source::Builtin(n, t) => parse(n, &format!("built-in policy {n}"), t),
    }
}

/// `load` for the policy a run record names (`guard rollback RUN`): the record keeps the
/// canonical absolute path, so a relative one (written by an older guard) would be re-resolved
/// from wherever the rollback happens to be started, and may name another file.
pub fn load_recorded(spec: &str) -> Result<Policy> {
    if is_path(spec) && !Path::new(spec).is_absolute() {
        return Err(Error::refused(
            format!("the run recorded its policy as the relative path {spec}, which could name another file from this folder"),
            "run the policy's rollback hooks by hand if they are needed",
        ));
    }
    load(spec)
}

impl Policy {
    /// What the run record keeps to find this policy again: the canonical path of its file,
    /// or the name of a built-in one.
    pub fn recorded(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => self.name.clone(),
        }
    }
}

/// Reads a checked policy file from its descriptor and parses it.
fn from_opened(name: &str, o: Opened) -> Result<Policy> {
    let origin = o.path.display().to_string();
    let path = o.path.clone();
    let text = o.read_text()?;
    let mut p = parse(name, &origin, &text)?;
    p.path = Some(path);
    Ok(p)
}

/// Parses and validates policy text; `origin` names it in errors.
pub fn parse(name: &str, origin: &str, text: &str) -> Result<Policy> {
    let file: PolicyFile = toml::from_str(text).map_err(|e| toml_error(origin, text, &e))?;
    validate(name, origin, text, file)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

/// A TOML or schema error as FILE:LINE:COL, the key, and for a misspelt key the nearest valid one.
fn toml_error(origin: &str, text: &str, e: &toml::de::Error) -> Error {
    let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
    let msg = e.message().trim().to_string();
    let mut fix =
        "see the shipped policies in /usr/share/guard/policies or `guard policy check apt`"
            .to_string();
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let key = rest.split('`').next().unwrap_or("");
        let expected: Vec<&str> = rest
            .split("expected")
            .nth(1)
            .unwrap_or("")
            .split('`')
            .skip(1)
            .step_by(2)
            .collect();
        fix = match nearest(key, expected.iter().copied()) {
            Some(n) => format!(
                "did you mean `{n}`? valid keys here: {}",
                expected.join(", ")
            ),
            None => format!("valid keys here: {}", expected.join(", ")),
        };
        return Error::refused(
            format!("policy {origin}:{line}:{col}: unknown key `{key}`"),
            fix,
        );
    }
    if msg.contains("unknown variant") {
        fix = format!("use one of the values the message lists ({msg})");
    }
    Error::refused(format!("policy {origin}:{line}:{col}: {msg}"), fix)
}

/// The closest candidate by edit distance, if it is close enough to be a typo.
pub fn nearest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn key_error(origin: &str, text: &str, key: &str, problem: String, fix: &str) -> Error {
    // Point at the key's line when it can be found; serde has no span after deserializing.
    let at = text
        .lines()
        .position(|l| l.trim_start().starts_with(key))
        .map(|i| format!(":{}:1", i + 1))
        .unwrap_or_default();
    Error::refused(format!("policy {origin}{at}: {key}: {problem}"), fix)
}

fn duration(origin: &str, text: &str, key: &str, v: &Option<String>) -> Result<Option<Duration>> {
    let Some(s) = v else { return Ok(None) };
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(Some(d)),
        Ok(_) => Err(key_error(
            origin,
            text,
            key,
            "must be longer than zero".into(),
            "write a duration like 90s, 10m, 1h",
        )),
        Err(e) => Err(key_error(
            origin,
            text,
            key,
            format!("invalid duration {s:?}: {e}"),
            "write a duration like 90s, 10m, 1h30m",
        )),
    }
}

/// `[[check]]` and `[[trial.check]]` entries as checks (`what` names them in errors).
fn check_specs(
    origin: &str,
    text: &str,
    what: &str,
    entries: &[CheckEntry],
) -> Result<Vec<CheckSpec>> {
    entries
        .iter()
        .enumerate()
        .map(|(i, c)| {
            Ok(CheckSpec {
                name: c.name.clone().unwrap_or_else(|| c.run.join(" ")),
                argv: argv(origin, text, &format!("{what} #{}", i + 1), &c.run)?,
                timeout: duration(origin, text, "timeout", &c.timeout)?
                    .unwrap_or(DEFAULT_CHECK_TIMEOUT),
                fail_on_output: c.fail_on_output,
            })
        })
        .collect()
}

fn argv(origin: &str, text: &str, what: &str, run: &[String]) -> Result<Vec<String>> {
    if run.is_empty() || run[0].is_empty() {
        return Err(key_error(
            origin,
            text,
            "run",
            format!("the {what} has an empty command"),
            "write it as an argument vector: run = [\"/usr/bin/systemctl\", \"stop\", \"app\"]",
        ));
    }
    // Found now, not when a rollback is under way and the hook is needed; kept as the absolute
    // path found, so the run execs exactly what `guard policy check` shows.
    let program = crate::run::hooks::resolve_program(&run[0]).map_err(|e| {
        let (problem, fix) = match e {
            Error::Refused { problem, fix } => (problem, fix),
            e => (e.to_string(), String::new()),
        };
        // "program "x" not found…" reads as "the … hook #1 program "x" cannot be run: not found…"
        let shown = format!("program {:?} ", run[0]);
        key_error(
            origin,
            text,
            "run",
            format!(
                "the {what} {shown}cannot be run: {}",
                problem.strip_prefix(&shown).unwrap_or(&problem)
            ),
            &fix,
        )
    })?;
    let mut argv = run.to_vec();
    argv[0] = program.display().to_string();
    Ok(argv)
}

fn validate(name: &str, origin: &str, text: &str, f: PolicyFile) -> Result<Policy> {
    let size = match &f.snapshot.size {
        Some(s) => Some(s.parse::<crate::size::SizeSpec>().map_err(|e| {
            key_error(
                origin,
                text,
                "size",
                e.to_string().lines().next().unwrap_or("").to_string(),
                "write a size like 2G, 512M, 20%ORIGIN",
            )
        })?),
        None => None,
    };
    if let Some(p) = f.watch.extend_at {
        if !(1.0..=99.0).contains(&p) {
            return Err(key_error(
                origin,
                text,
                "extend_at",
                format!("{p} is out of range"),
                "give a percentage from 1 to 99",
            ));
        }
    }
    for l in &f.targets.lvs {
        crate::run::plan::parse_lv_name(l).map_err(|e| {
            key_error(
                origin,
                text,
                "lvs",
                e.to_string().lines().next().unwrap_or("").into(),
                "write VG/LV",
            )
        })?;
    }
    for m in f
        .targets
        .mounts
        .iter()
        .chain(&f.targets.warn_unless_on_lvm)
        .chain(&f.targets.save_unless_on_lvm)
        .chain(&f.targets.preserve)
    {
        if !m.is_absolute() {
            return Err(key_error(
                origin,
                text,
                "mounts",
                format!("{} is not an absolute path", m.display()),
                "write paths from /, e.g. \"/var\"",
            ));
        }
    }
    let mut hooks = Vec::new();
    for (i, h) in f.hook.iter().enumerate() {
        let what = format!("{} hook #{}", h.when.as_str(), i + 1);
        if h.when == HookPoint::Hold && h.ready.as_deref().unwrap_or("").is_empty() {
            return Err(key_error(
                origin,
                text,
                "ready",
                format!("the {what} needs a `ready` line"),
                "add ready = \"READY\" (a line the hold prints once in place)",
            ));
        }
        if h.when != HookPoint::Hold && h.ready.is_some() {
            return Err(key_error(
                origin,
                text,
                "ready",
                format!("`ready` only applies to hold hooks, not the {what}"),
                "remove it, or make the hook when = \"hold\"",
            ));
        }
        hooks.push(HookSpec {
            name: h
                .name
                .clone()
                .unwrap_or_else(|| h.run[..].first().cloned().unwrap_or_default()),
            when: h.when,
            argv: argv(origin, text, &what, &h.run)?,
            timeout: duration(origin, text, "timeout", &h.timeout)?.unwrap_or(DEFAULT_HOOK_TIMEOUT),
            ready: h.ready.clone(),
            stdin: h.stdin.clone(),
        });
    }
    let checks = check_specs(origin, text, "check", &f.check)?;
    let boot_checks = check_specs(origin, text, "trial check", &f.trial.check)?;
    Ok(Policy {
        name: name.to_string(),
        source: origin.to_string(),
        path: None,
        description: f.description.unwrap_or_default(),
        lvs: f.targets.lvs,
        mounts: f.targets.mounts,
        warn_unless_on_lvm: f.targets.warn_unless_on_lvm,
        save_unless_on_lvm: f.targets.save_unless_on_lvm,
        preserve: f.targets.preserve,
        size,
        freeze: f.snapshot.freeze,
        freeze_timeout: duration(origin, text, "freeze_timeout", &f.snapshot.freeze_timeout)?,
        prefer_thin: f.snapshot.prefer_thin,
        extend_at: f.watch.extend_at,
        when_full: f.watch.when_full,
        timeout: duration(origin, text, "timeout", &f.run.timeout)?,
        on_failure: f.run.on_failure,
        on_success: f.run.on_success,
        keep: duration(origin, text, "keep", &f.run.keep)?,
        finish: f.run.finish,
        hooks,
        checks,
        trial_boot: f.trial.boot,
        trial_deadline: duration(origin, text, "deadline", &f.trial.deadline)?,
        boot_checks,
    })
}

/// A policy file opened once, with the metadata of it and of every folder above it, each taken
/// from the descriptor the walk went through (never a second lookup by name).
#[derive(Debug)]
pub struct Opened {
    /// Canonical and absolute: what errors name and what the run record keeps.
    pub path: PathBuf,
    file: File,
    /// `/` first, the file itself last.
    chain: Vec<(PathBuf, Metadata)>,
}

impl Opened {
    /// The text of the very file whose metadata was checked.
    pub fn read_text(mut self) -> Result<String> {
        let mut text = String::new();
        self.file
            .read_to_string(&mut text)
            .map_err(|e| Error::io(format!("cannot read policy {}", self.path.display()), e))?;
        Ok(text)
    }
}

/// Opens a policy file and refuses it unless root alone could have written it.
///
/// A symlink anywhere in `path` (the final component too) is resolved to its canonical target
/// first, and that target, with every folder above it, is what is checked and read: a link
/// from an admin's folder to a root-owned file elsewhere keeps working, and a link in a user's
/// folder can only point at files root alone can write. What the link points at later does not
/// matter: the open below follows no link, so a link swapped in after resolving is refused.
pub fn open_secure(path: &Path) -> Result<Opened> {
    let full = std::fs::canonicalize(path)
        .map_err(|e| Error::io(format!("cannot resolve policy path {}", path.display()), e))?;
    if full.to_str().is_none() {
        // the run record keeps the path as text: it must come back as the same file
        return Err(Error::refused(
            format!("the policy path {} is not valid UTF-8", full.display()),
            format!("move the policy to {ETC_DIR}"),
        ));
    }
    let opened = open_canonical(&full)?;
    check_chain(&opened)?;
    Ok(opened)
}

fn sys_err(what: &str, p: &Path, e: nix::Error) -> Error {
    Error::io(
        format!("cannot open {what} {}", p.display()),
        std::io::Error::from(e),
    )
}

/// Walks `full` from `/`, one component at a time, opening each relative to the folder before it
/// with O_NOFOLLOW: the folders whose metadata is kept are exactly the ones the file was reached
/// through. `full` must already be canonical; a link met on the way is an error.
fn open_canonical(full: &Path) -> Result<Opened> {
    use nix::fcntl::{open, openat, OFlag};
    use nix::sys::stat::Mode;
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    // O_NONBLOCK|O_NOCTTY: a FIFO or terminal put there must not hang or capture guard before
    // fstat shows it is not a regular file.
    let file_flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_CLOEXEC
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY;
    let names: Vec<&OsStr> = full
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    if !full.is_absolute() || names.is_empty() || names.len() + 1 != full.components().count() {
        return Err(Error::Other(format!(
            "policy path {} is not canonical",
            full.display()
        )));
    }
    let own = |fd| -> File {
        // SAFETY: fd was just returned by open/openat and is owned by nobody else.
        File::from(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let meta = |f: &File, p: &Path| {
        f.metadata()
            .map_err(|e| Error::io(format!("cannot inspect {}", p.display()), e))
    };
    let mut at = PathBuf::from("/");
    // the last descriptor opened: a folder during the walk, the policy file at its end
    let mut cur = own(open("/", dir_flags, Mode::empty()).map_err(|e| sys_err("folder", &at, e))?);
    let mut chain = vec![(at.clone(), meta(&cur, &at)?)];
    for (i, name) in names.iter().enumerate() {
        at.push(name);
        let last = i + 1 == names.len();
        let fd = openat(
            Some(std::os::fd::AsRawFd::as_raw_fd(&cur)),
            *name,
            if last { file_flags } else { dir_flags },
            Mode::empty(),
        )
        .map_err(|e| match e {
            // O_NOFOLLOW: ELOOP for a link as the file; with O_DIRECTORY, ENOTDIR for a link
            // (or a file) where a folder was when the path was resolved.
            nix::Error::ELOOP | nix::Error::ENOTDIR => Error::refused(
                format!(
                    "{} changed into a symbolic link{} while guard opened the policy {}",
                    at.display(),
                    if last { "" } else { " or a file" },
                    full.display()
                ),
                "check who changes it, and give the policy's real path",
            ),
            e => sys_err(if last { "policy file" } else { "folder" }, &at, e),
        })?;
        let f = own(fd);
        chain.push((at.clone(), meta(&f, &at)?));
        cur = f;
    }
    Ok(Opened {
        path: full.to_path_buf(),
        file: cur,
        chain,
    })
}

/// Refuses a policy file that someone other than root could have written: the file (checked
/// first, so the message names the nearest problem) and then each folder up to `/`.
fn check_chain(o: &Opened) -> Result<()> {
    for (i, (p, m)) in o.chain.iter().enumerate().rev() {
        let file = i + 1 == o.chain.len();
        let what = if file { "policy file" } else { "folder" };
        if file && !m.is_file() {
            return Err(Error::refused(
                format!("the policy {} is not a regular file", p.display()),
                "give the path of a policy file (TOML)",
            ));
        }
        if m.uid() != 0 {
            return Err(Error::refused(
                format!("the {what} {} is owned by uid {}, not root: a policy runs hooks as root, so anyone who can change it could run anything as root", p.display(), m.uid()),
                format!("chown root:root {} (or move the policy to {ETC_DIR})", p.display()),
            ));
        }
        if m.mode() & 0o022 != 0 {
            return Err(Error::refused(
                format!("the {what} {} is writable by group or others (mode {:o}): a policy runs hooks as root", p.display(), m.mode() & 0o7777),
                format!("chmod go-w {} (or move the policy to {ETC_DIR})", p.display()),
            ));
        }
    }
    Ok(())
}

/// What a run under this policy would do: `guard policy check`.
#[derive(Debug, serde::Serialize)]
pub struct Effective {
    pub schema: &'static str,
    pub name: String,
    pub source: String,
    pub description: String,
    pub lvs: Vec<String>,
    pub mounts: Vec<String>,
    pub warn_unless_on_lvm: Vec<String>,
    pub save_unless_on_lvm: Vec<String>,
    pub preserve: Vec<String>,
    pub size: String,
    pub freeze: bool,
    pub freeze_timeout_seconds: f64,
    pub extend_at: f64,
    pub when_full: crate::watch::WhenFull,
    pub timeout_seconds: Option<f64>,
    pub on_failure: String,
    pub on_success: String,
    pub keep_seconds: Option<f64>,
    pub finish: bool,
    pub hooks: Vec<serde_json::Value>,
    pub checks: Vec<serde_json::Value>,
}

pub fn effective(p: &Policy, o: &crate::run::RunOptions) -> Effective {
    let s = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    Effective {
        schema: "guard.policy/1",
        name: p.name.clone(),
        source: p.source.clone(),
        description: p.description.clone(),
        lvs: o.request.lvs.clone(),
        mounts: o
            .request
            .mounts
            .iter()
            .map(|m| m.display().to_string())
            .collect(),
        warn_unless_on_lvm: o
            .warn_unless_on_lvm
            .iter()
            .map(|m| m.display().to_string())
            .collect(),
        save_unless_on_lvm: o
            .save_unless_on_lvm
            .iter()
            .map(|m| m.display().to_string())
            .collect(),
        preserve: o.preserve.iter().map(|m| m.display().to_string()).collect(),
        size: o.request.size.to_string(),
        freeze: o.freeze,
        freeze_timeout_seconds: o.freeze_limit.as_secs_f64(),
        extend_at: o.watch.extend_at,
        when_full: o.watch.when_full,
        timeout_seconds: s(o.timeout),
        on_failure: format!("{:?}", o.on_failure).to_lowercase(),
        on_success: format!("{:?}", o.on_success).to_lowercase(),
        keep_seconds: s(o.keep),
        finish: o.finish,
        hooks: o
            .hooks
            .iter()
            .map(|h| {
                serde_json::json!({"name": h.name, "when": h.when, "run": h.argv,
                "timeout_seconds": h.timeout.as_secs_f64(), "ready": h.ready})
            })
            .collect(),
        checks: o
            .checks
            .iter()
            .map(|c| {
                serde_json::json!({"name": c.name, "run": c.argv,
                "timeout_seconds": c.timeout.as_secs_f64(), "fail_on_output": c.fail_on_output})
            })
            .collect(),
    }
}

/// An argument vector on one line; its program is the absolute path the run will exec.
fn joined(run: &serde_json::Value) -> String {
    run.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

pub fn effective_text(e: &Effective) -> String {
    let d = |s: Option<f64>| match s {
        Some(s) => humantime::format_duration(Duration::from_secs_f64(s)).to_string(),
        None => "none".into(),
    };
    let mut t = format!("policy {} ({}): OK\n", e.name, e.source);
    if !e.description.is_empty() {
        t += &format!("  {}\n", e.description);
    }
    let targets: Vec<String> = e
        .lvs
        .iter()
        .cloned()
        .chain(e.mounts.iter().cloned())
        .collect();
    t += &format!(
        "  targets:      {}\n",
        if targets.is_empty() {
            "none (give --lv or --mount)".into()
        } else {
            targets.join(", ")
        }
    );
    if !e.warn_unless_on_lvm.is_empty() {
        t += &format!(
            "  warn unless on LVM: {}\n",
            e.warn_unless_on_lvm.join(", ")
        );
    }
    if !e.save_unless_on_lvm.is_empty() {
        t += &format!(
            "  saved and restored on rollback unless on LVM: {}\n",
            e.save_unless_on_lvm.join(", ")
        );
    }
    if !e.preserve.is_empty() {
        t += &format!("  kept across a rollback: {}\n", e.preserve.join(", "));
    }
    t += &format!("  size:         {}\n", e.size);
    t += &format!(
        "  freeze:       {}\n",
        if e.freeze {
            format!("yes, limit {}", d(Some(e.freeze_timeout_seconds)))
        } else {
            "no".into()
        }
    );
    t += &format!(
        "  extend at:    {}%, when full: {:?}\n",
        e.extend_at, e.when_full
    );
    t += &format!("  timeout:      {}\n", d(e.timeout_seconds));
    t += &format!(
        "  on failure:   {}\n  on success:   {}",
        e.on_failure, e.on_success
    );
    if e.keep_seconds.is_some() {
        t += &format!(" (keep {})", d(e.keep_seconds));
    }
    t += "\n";
    t += &format!(
        "  finish:       {}\n",
        if e.finish {
            "yes: a rollback of mounted volumes (not /) completes before post_rollback (unmount, merge, mount again)"
        } else {
            "no: a rollback of a mounted volume completes at its next activation"
        }
    );
    for h in &e.hooks {
        t += &format!(
            "  hook {:<13} {} ({})\n",
            h["when"].as_str().unwrap_or(""),
            h["name"].as_str().unwrap_or(""),
            joined(&h["run"])
        );
    }
    for c in &e.checks {
        t += &format!(
            "  check         {}{}: {}\n",
            c["name"].as_str().unwrap_or(""),
            if c["fail_on_output"].as_bool() == Some(true) {
                " (fails on any output)"
            } else {
                ""
            },
            joined(&c["run"])
        );
    }
    t
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    pub name: String,
    pub source: String,
    pub description: String,
    /// A policy of the same name earlier in the search order hides this one.
    pub shadowed: bool,
}

/// Every policy `--policy NAME` can find, in search order.
pub fn list() -> Vec<Listed> {
    let mut out: Vec<Listed> = Vec::new();
    let mut push = |name: String, source: String, text: &str| {
        let shadowed = out.iter().any(|l| l.name == name);
        let description = toml::from_str::<toml::Table>(text)
            .ok()
            .and_then(|t| {
                t.get("description")
                    .and_then(|d| d.as_str())
                    .map(String::from)
            })
            .unwrap_or_default();
        out.push(Listed {
            name,
            source,
            description,
            shadowed,
        });
    };
    for dir in [ETC_DIR, SHARE_DIR] {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        files.sort();
        for p in files {
            if p.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let name = p
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            push(name, p.display().to_string(), &text);
        }
    }
    for (n, t) in BUILTIN {
        push(n.to_string(), "built-in".into(), t);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse("t", "t.toml", text).unwrap_err().to_string()
    }

    #[test]
    fn every_shipped_policy_parses_its_structure() {
        for (n, t) in BUILTIN {
            // hook programs may be missing on the build machine: check the TOML shape only
            let f: std::result::Result<PolicyFile, _> = toml::from_str(t);
            assert!(f.is_ok(), "{n}: {:?}", f.err());
            assert!(f.unwrap().description.is_some(), "{n} has no description");
        }
    }

    #[test]
    fn a_misspelt_key_names_file_line_column_and_the_nearest_key() {
        let e = err("[run]\non_failure = \"rollback\"\ntiemout = \"5m\"\n");
        assert!(e.contains("t.toml:3:1"), "{e}");
        assert!(e.contains("unknown key `tiemout`"), "{e}");
        assert!(e.contains("did you mean `timeout`"), "{e}");
    }

    #[test]
    fn an_unknown_table_is_an_error() {
        let e = err("[snapshots]\nsize = \"1G\"\n");
        assert!(e.contains("unknown key `snapshots`"), "{e}");
        assert!(e.contains("did you mean `snapshot`"), "{e}");
    }

    #[test]
    fn wrong_types_and_values_are_located() {
        let e = err("[watch]\nextend_at = \"fifty\"\n");
        assert!(e.contains("t.toml:2:"), "{e}");
        let e = err("[run]\non_failure = \"explode\"\n");
        assert!(e.contains("unknown variant"), "{e}");
        let e = err("[run]\ntimeout = \"soon\"\n");
        assert!(e.contains("t.toml:2:1: timeout: invalid duration"), "{e}");
        let e = err("[snapshot]\nsize = \"-5G\"\n");
        assert!(e.contains("size"), "{e}");
        let e = err("[watch]\nextend_at = 120\n");
        assert!(e.contains("out of range"), "{e}");
    }

    #[test]
    fn hooks_need_a_runnable_program_and_holds_a_ready_line() {
        let e = err("[[hook]]\nwhen = \"pre_snapshot\"\nrun = [\"/nonexistent/prog\"]\n");
        assert!(e.contains("cannot be run"), "{e}");
        let e = err("[[hook]]\nwhen = \"hold\"\nrun = [\"/bin/sh\"]\n");
        assert!(e.contains("needs a `ready` line"), "{e}");
        let e = err("[[hook]]\nwhen = \"pre_snapshot\"\nrun = []\n");
        assert!(e.contains("empty command"), "{e}");
        let p = parse(
            "t",
            "t.toml",
            "[[hook]]\nwhen = \"hold\"\nrun = [\"/bin/sh\", \"-c\", \"echo READY; sleep 9\"]\nready = \"READY\"\ntimeout = \"5s\"\n[[check]]\nrun = [\"/bin/true\"]\n",
        )
        .unwrap();
        assert_eq!(p.hooks[0].timeout, Duration::from_secs(5));
        assert_eq!(p.checks[0].timeout, DEFAULT_CHECK_TIMEOUT);
    }

    #[test]
    fn names_are_checked_and_near_misses_suggested() {
        assert!(locate("../etc").is_err() || is_path("../etc"));
        let e = locate("apd").unwrap_err().to_string();
        assert!(e.contains("did you mean apt"), "{e}");
        assert!(locate("apt").is_ok());
    }

    #[test]
    fn an_insecure_policy_file_or_folder_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(&f, "description = \"x\"\n").unwrap();
        // the temporary folder sits in /tmp, which is world-writable (sticky): refused
        let e = open_secure(&f).unwrap_err().to_string();
        assert!(e.contains("writable by group or others"), "{e}");
        assert!(e.contains("chmod go-w /tmp"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = open_secure(&f).unwrap_err().to_string();
        assert!(e.contains("policy file"), "{e}");
    }

    #[test]
    fn the_text_read_is_the_text_of_the_file_whose_metadata_was_checked() {
        let dir = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap().join("p.toml");
        std::fs::write(&real, "description = \"checked\"\n").unwrap();
        let o = open_canonical(&real).unwrap();
        // the walk kept `/`, every folder and the file, in order, from its own descriptors
        let walked: Vec<&Path> = o.chain.iter().map(|(p, _)| p.as_path()).collect();
        let mut ancestors: Vec<&Path> = real.ancestors().collect();
        ancestors.reverse();
        assert_eq!(walked, ancestors);
        let checked = o.chain.last().unwrap().1.ino();
        assert_eq!(checked, std::fs::metadata(&real).unwrap().ino());
        // Swapped after the check: the path now names another file, with a hook in it.
        let other = real.with_file_name("other.toml");
        std::fs::write(
            &other,
            "description = \"swapped\"\n[[hook]]\nwhen = \"pre_snapshot\"\nrun = [\"/bin/true\"]\n",
        )
        .unwrap();
        std::fs::rename(&other, &real).unwrap();
        assert_ne!(std::fs::metadata(&real).unwrap().ino(), checked);
        let p = from_opened("p", o).unwrap();
        assert_eq!(p.description, "checked");
        assert!(p.hooks.is_empty());
        assert_eq!(p.path.as_deref(), Some(real.as_path()));
    }

    #[test]
    fn a_symlinked_policy_is_resolved_before_the_open_and_no_link_is_followed_by_it() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        // Resolved first: the target and its folders are what is checked and read, not the
        // (world-writable) folder the link sits in.
        let link = base.join("link.toml");
        std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
        let o = open_secure(&link).unwrap();
        assert_eq!(o.path, Path::new("/etc/passwd"));
        assert_eq!(
            o.read_text().unwrap(),
            std::fs::read_to_string("/etc/passwd").unwrap()
        );
        // A link met by the open itself (swapped in after resolving) is refused, whether it is
        // the file or a folder on the way.
        std::fs::write(base.join("real.toml"), "").unwrap();
        std::os::unix::fs::symlink(base.join("real.toml"), base.join("swapped.toml")).unwrap();
        let e = open_canonical(&base.join("swapped.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("symbolic link"), "{e}");
        std::fs::create_dir(base.join("d")).unwrap();
        std::fs::write(base.join("d/p.toml"), "").unwrap();
        std::os::unix::fs::symlink(base.join("d"), base.join("l")).unwrap();
        let e = open_canonical(&base.join("l/p.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("symbolic link"), "{e}");
    }

    #[test]
    fn the_recorded_policy_path_is_absolute() {
        // a relative path, from wherever the tests run, to a root-owned file
        let rel = format!("{}etc/passwd", "../".repeat(40));
        let o = open_secure(Path::new(&rel)).unwrap();
        assert!(o.path.is_absolute(), "{}", o.path.display());
        assert_eq!(o.path, Path::new("/etc/passwd"));
        let p = Policy {
            name: "p".into(),
            path: Some(o.path.clone()),
            ..Default::default()
        };
        assert_eq!(p.recorded(), "/etc/passwd");
        let builtin = Policy {
            name: "apt".into(),
            ..Default::default()
        };
        assert_eq!(builtin.recorded(), "apt");
        // a relative path in an old record is not re-resolved from the current folder
        let e = load_recorded("./p.toml").unwrap_err().to_string();
        assert!(e.contains("relative path ./p.toml"), "{e}");
    }
}

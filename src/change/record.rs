//! Which paths a run changes, recorded while it runs: one fanotify group with a
//! FAN_MARK_FILESYSTEM mark per target and names reported (FAN_REPORT_DFID_NAME), read by a
//! thread until the run ends; then [`classify`] turns what was seen into the list guard keeps.
//!
//! Events name a folder by its file handle and the entry by its name; the folder's path is
//! found with open_by_handle_at at read time, so a folder deleted before its events are read
//! has no path any more. Where the kernel reports the child's handle too
//! (FAN_REPORT_TARGET_FID, 5.17), the deletion of such a folder, seen later in its parent,
//! names it, and the events held back for it are placed then (`rm -rf` of a whole tree).
use crate::model::change::{Change, ChangeKind, ChangeSource, MoreUnder, TargetChanges};
// The kernel ABI, uapi/linux/fanotify.h; libc has all of these.
use libc::{
    FANOTIFY_METADATA_VERSION, FAN_ATTRIB, FAN_CREATE, FAN_DELETE, FAN_EVENT_INFO_TYPE_DFID,
    FAN_EVENT_INFO_TYPE_DFID_NAME, FAN_EVENT_INFO_TYPE_FID, FAN_EVENT_INFO_TYPE_NEW_DFID_NAME,
    FAN_EVENT_INFO_TYPE_OLD_DFID_NAME, FAN_MODIFY, FAN_MOVED_FROM, FAN_MOVED_TO, FAN_ONDIR,
    FAN_Q_OVERFLOW, FAN_RENAME,
};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

/// One filesystem to record: where it is mounted (a mount whose root is the filesystem's root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    /// vg/lv
    pub target: String,
    pub mountpoint: PathBuf,
}

/// A running recording: keep it alive for the whole run, then [`Recorder::stop`] it.
pub struct Recorder {
    /// A byte written here tells the thread to drain the queue and finish.
    stop_tx: Option<UnixStream>,
    thread: Option<JoinHandle<Recording>>,
    /// For an empty recording should the thread have panicked.
    watches: Vec<Watch>,
}

#[derive(Debug, Clone, Default)]
pub struct Recording {
    /// Same order as the watches.
    pub targets: Vec<TargetRecording>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TargetRecording {
    pub target: String,
    pub mountpoint: PathBuf,
    /// absolute live path -> what was seen
    pub paths: BTreeMap<PathBuf, Seen>,
    /// renames seen (old absolute path, new absolute path), in order
    pub renames: Vec<(PathBuf, PathBuf)>,
    /// Past the limit on paths kept: how many more paths changed per parent folder.
    pub more_under: BTreeMap<PathBuf, u64>,
    /// FAN_Q_OVERFLOW was read (or reading failed): events were lost.
    pub overflowed: bool,
    /// Events whose folder could not be resolved (deleted before they were read).
    pub unresolved: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The path's first event: whether it existed before the run follows from it.
    pub first: Ev,
    /// Bit set of [`Ev`].
    pub all: u8,
    pub dir: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ev {
    Created = 1,
    Deleted = 2,
    Modified = 4,
    Attrib = 8,
    MovedFrom = 16,
    MovedTo = 32,
}

impl Seen {
    pub fn has(&self, e: Ev) -> bool {
        self.all & e as u8 != 0
    }
}

/// sizeof(struct fanotify_event_metadata)
const METADATA_LEN: usize = 24;
/// Folder handle -> path entries kept per target before the cache is emptied.
const CACHE_MAX: usize = 65_536;
/// Events held back for a folder that is gone, waiting for its deletion to name it.
const PENDING_MAX: usize = 65_536;
/// Folders counted in `more_under`; past it, counted under the mount point.
const MORE_UNDER_MAX: usize = 10_000;
/// Paths remembered (as hashes) so `more_under` counts a path once, not once per event.
const COUNTED_MAX: usize = 262_144;
const READ_BUF: usize = 64 * 1024;
/// After the queue turns readable, how long the reader waits before reading it: events pile up
/// and the kernel merges repeats (a file written block by block is one queued event), and the
/// writer is spared a wake-up of the reader per event. Measured: 10, 50 and 100 ms cost the
/// same within noise; the queue holds 16384 events, so a reader that found many reads again
/// at once (BUSY).
const BATCH: std::time::Duration = std::time::Duration::from_millis(50);
/// Bytes read in one drain past which the next drain does not wait (about 2000 events).
const BUSY: usize = 128 * 1024;
/// Files whose later writes are no longer reported (evictable ignore marks), at most.
const QUIET_MAX: usize = 4096;
/// Files whose write events are counted, to find those written again and again.
const WRITTEN_MAX: usize = 65_536;

// ---------------------------------------------------------------------------------------------
// Parsing what read(2) returns

#[derive(Debug, PartialEq, Eq)]
struct Event<'a> {
    mask: u64,
    fd: i32,
    infos: Vec<Info<'a>>,
}

#[derive(Debug, PartialEq, Eq)]
struct Info<'a> {
    kind: u8,
    fsid: [i32; 2],
    /// struct file_handle as the kernel laid it out: handle_bytes, handle_type, f_handle.
    /// Passed back to open_by_handle_at as is, and the key of the folder caches.
    handle: &'a [u8],
    /// The entry's name, for the *_NAME record types.
    name: Option<&'a [u8]>,
}

impl Event<'_> {
    fn info(&self, kind: u8) -> Option<&Info<'_>> {
        self.infos.iter().find(|i| i.kind == kind)
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}
fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().unwrap())
}

/// The events in one read's bytes; `true` when the buffer was malformed (the rest is dropped).
fn parse(buf: &[u8]) -> (Vec<Event<'_>>, bool) {
    let mut out = Vec::new();
    let mut off = 0;
    while off < buf.len() {
        let b = &buf[off..];
        if b.len() < METADATA_LEN {
            return (out, true);
        }
        let event_len = u32_at(b, 0) as usize;
        let vers = b[4];
        let metadata_len = u16_at(b, 6) as usize;
        if vers != FANOTIFY_METADATA_VERSION
            || metadata_len < METADATA_LEN
            || event_len < metadata_len
            || event_len > b.len()
        {
            return (out, true);
        }
        let mask = u64_at(b, 8);
        let fd = i32_at(b, 16);
        let Some(infos) = parse_infos(&b[metadata_len..event_len]) else {
            // still hand back the fd so it is closed
            out.push(Event {
                mask: 0,
                fd,
                infos: vec![],
            });
            return (out, true);
        };
        out.push(Event { mask, fd, infos });
        off += event_len;
    }
    (out, false)
}

fn parse_infos(mut b: &[u8]) -> Option<Vec<Info<'_>>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 4 {
            return None;
        }
        let kind = b[0];
        let len = u16_at(b, 2) as usize;
        if len < 4 || len > b.len() {
            return None;
        }
        let rec = &b[4..len];
        let named = [
            FAN_EVENT_INFO_TYPE_DFID_NAME,
            FAN_EVENT_INFO_TYPE_OLD_DFID_NAME,
            FAN_EVENT_INFO_TYPE_NEW_DFID_NAME,
        ]
        .contains(&kind);
        if named || kind == FAN_EVENT_INFO_TYPE_FID || kind == FAN_EVENT_INFO_TYPE_DFID {
            // __kernel_fsid_t, then struct file_handle { u32 handle_bytes; i32 type; u8 f[] }
            if rec.len() < 16 {
                return None;
            }
            let fsid = [i32_at(rec, 0), i32_at(rec, 4)];
            let end = 16usize.checked_add(u32_at(rec, 8) as usize)?;
            if end > rec.len() {
                return None;
            }
            let name = named.then(|| {
                let rest = &rec[end..];
                &rest[..rest.iter().position(|&c| c == 0).unwrap_or(rest.len())]
            });
            out.push(Info {
                kind,
                fsid,
                handle: &rec[8..end],
                name,
            });
        }
        // other record types (pidfd, error) are not asked for; skipped by their length
        b = &b[len..];
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// Turning events into paths

/// A folder handle looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resolved {
    Path(PathBuf),
    /// Not under the target's mount point: the event is dropped.
    Outside,
    /// Deleted, stale: held back until the folder's own deletion names it.
    Gone,
}

/// What the event handling needs from the system; a fake in the tests.
trait Env {
    fn resolve(&mut self, target: usize, handle: &[u8]) -> Resolved;
    fn exists(&self, p: &Path) -> bool;
    /// A file (by its own handle) reported as written in two reads of the queue: it is
    /// recorded as modified already, so its further writes need not be reported at all.
    fn quiet(&mut self, _target: usize, _file: &[u8]) {}
}

/// An event for a folder that is gone, kept until the folder's path is known.
#[derive(Debug, Clone)]
struct Pending {
    /// event bits (FAN_RENAME already split into MOVED_FROM / MOVED_TO)
    mask: u64,
    /// None: the folder itself
    name: Option<Box<[u8]>>,
    dir: bool,
    /// the child folder's handle, for an event that takes it away (names its held events)
    child: Option<Box<[u8]>>,
}

struct Target {
    rec: TargetRecording,
    fsid: [i32; 2],
    cache: HashMap<Box<[u8]>, PathBuf>,
    pending: HashMap<Box<[u8]>, Vec<Pending>>,
    counted: HashSet<u64>,
    /// files (by handle) reported as written, and whether they were quieted already
    written: HashMap<Box<[u8]>, bool>,
    /// what becomes `rec.paths`: hashed while events come (a path's first event must be
    /// found among thousands, per event), sorted once at the end
    paths: HashMap<PathBuf, Seen>,
}

struct State<E: Env> {
    env: E,
    targets: Vec<Target>,
    exclude: Vec<PathBuf>,
    limit: usize,
    pending_total: usize,
    /// Without FAN_RENAME: the MOVED_FROM just read, paired with a MOVED_TO read right after.
    last_from: Option<(usize, PathBuf)>,
}

const ARRIVE: u64 = FAN_CREATE | FAN_MOVED_TO;
const LEAVE: u64 = FAN_DELETE | FAN_MOVED_FROM;
const CHANGE_BITS: u64 =
    FAN_CREATE | FAN_DELETE | FAN_MODIFY | FAN_ATTRIB | FAN_MOVED_FROM | FAN_MOVED_TO;

fn ev_bits(mask: u64) -> u8 {
    let mut b = 0;
    for (m, e) in [
        (FAN_CREATE, Ev::Created),
        (FAN_DELETE, Ev::Deleted),
        (FAN_MODIFY, Ev::Modified),
        (FAN_ATTRIB, Ev::Attrib),
        (FAN_MOVED_FROM, Ev::MovedFrom),
        (FAN_MOVED_TO, Ev::MovedTo),
    ] {
        if mask & m != 0 {
            b |= e as u8;
        }
    }
    b
}

/// `p` is `dir` or inside it: Path::starts_with on the bytes, per event (both paths are
/// normalized: from the kernel's readlink or joined from it, and absolute).
fn under(p: &Path, dir: &Path) -> bool {
    let (p, d) = (p.as_os_str().as_bytes(), dir.as_os_str().as_bytes());
    let d = d.strip_suffix(b"/").unwrap_or(d);
    p.starts_with(d) && (p.len() == d.len() || p[d.len()] == b'/')
}

fn join(dir: &Path, name: Option<&[u8]>) -> PathBuf {
    match name {
        None | Some(b".") | Some(b"") => dir.to_path_buf(),
        Some(n) => dir.join(OsStr::from_bytes(n)),
    }
}

impl<E: Env> State<E> {
    fn new(env: E, watches: &[(Watch, [i32; 2])], exclude: Vec<PathBuf>, limit: usize) -> Self {
        State {
            env,
            targets: watches
                .iter()
                .map(|(w, fsid)| Target {
                    rec: TargetRecording {
                        target: w.target.clone(),
                        mountpoint: w.mountpoint.clone(),
                        ..Default::default()
                    },
                    fsid: *fsid,
                    cache: HashMap::new(),
                    pending: HashMap::new(),
                    counted: HashSet::new(),
                    written: HashMap::new(),
                    paths: HashMap::new(),
                })
                .collect(),
            exclude,
            limit,
            pending_total: 0,
            last_from: None,
        }
    }

    fn buffer(&mut self, buf: &[u8]) {
        let (events, malformed) = parse(buf);
        for e in &events {
            if e.fd >= 0 {
                // SAFETY: in fid mode the kernel passes no fd; should one come, it is ours to close.
                drop(unsafe { OwnedFd::from_raw_fd(e.fd) });
            }
            self.event(e);
        }
        if malformed {
            // cannot tell which target lost what
            for t in self.targets.iter_mut() {
                t.rec.unresolved += 1;
            }
        }
    }

    fn event(&mut self, e: &Event) {
        let last_from = self.last_from.take();
        if e.mask & FAN_Q_OVERFLOW != 0 {
            // the queue is per group, not per filesystem
            for t in self.targets.iter_mut() {
                t.rec.overflowed = true;
            }
            return;
        }
        let Some(ti) = e
            .infos
            .first()
            .and_then(|i| self.targets.iter().position(|t| t.fsid == i.fsid))
        else {
            return;
        };
        let dir = e.mask & FAN_ONDIR != 0;
        // the child's own handle (FAN_REPORT_TARGET_FID), wanted for folders only
        let child = e
            .info(FAN_EVENT_INFO_TYPE_FID)
            .filter(|_| dir)
            .map(|i| Box::<[u8]>::from(i.handle));
        if dir && e.mask & (FAN_RENAME | FAN_MOVED_FROM) != 0 {
            // paths cached under the moved folder are wrong now
            self.targets[ti].cache.clear();
        }
        if e.mask & FAN_RENAME != 0 {
            let old = e.info(FAN_EVENT_INFO_TYPE_OLD_DFID_NAME).and_then(|o| {
                self.locate(ti, o.handle, o.name, FAN_MOVED_FROM, dir, child.clone())
            });
            let new = e
                .info(FAN_EVENT_INFO_TYPE_NEW_DFID_NAME)
                .and_then(|n| self.locate(ti, n.handle, n.name, FAN_MOVED_TO, dir, None));
            if let (Some(o), Some(n)) = (old, new) {
                self.renamed(ti, o, n);
            }
            return;
        }
        let bits = e.mask & CHANGE_BITS;
        if bits == 0 {
            return;
        }
        let at = e
            .info(FAN_EVENT_INFO_TYPE_DFID_NAME)
            .or_else(|| e.info(FAN_EVENT_INFO_TYPE_DFID))
            // an event on a folder itself may come with only its own handle
            .or_else(|| e.info(FAN_EVENT_INFO_TYPE_FID).filter(|_| dir));
        // a non-folder known by its handle only (the link count of a file renamed over): no name
        let Some(at) = at else { return };
        if !dir && bits & FAN_MODIFY != 0 {
            if let Some(f) = e.info(FAN_EVENT_INFO_TYPE_FID) {
                self.written(ti, f.handle);
            }
        }
        let child = child.filter(|_| bits & LEAVE != 0);
        let path = self.locate(ti, at.handle, at.name, bits, dir, child);
        if bits == FAN_MOVED_FROM {
            self.last_from = path.map(|p| (ti, p));
        } else if bits == FAN_MOVED_TO {
            if let (Some((t0, o)), Some(n)) = (last_from, path) {
                if t0 == ti {
                    self.renamed(ti, o, n);
                }
            }
        }
    }

    /// A write event for a file: the second one (in a later read: the kernel merges repeats
    /// while they are queued) quiets the file, a process writing it block by block then costs
    /// nothing more. Its other events (moved, deleted, attributes) still come.
    fn written(&mut self, ti: usize, file: &[u8]) {
        let t = &mut self.targets[ti];
        let room = t.written.len() < WRITTEN_MAX;
        match t.written.get_mut(file) {
            Some(quiet) if !*quiet => {
                *quiet = true;
                self.env.quiet(ti, file);
            }
            Some(_) => {}
            None if room => {
                t.written.insert(file.into(), false);
            }
            None => {}
        }
    }

    /// Records an event at folder `handle` / `name`; the path when it is known now.
    fn locate(
        &mut self,
        ti: usize,
        handle: &[u8],
        name: Option<&[u8]>,
        mask: u64,
        dir: bool,
        child: Option<Box<[u8]>>,
    ) -> Option<PathBuf> {
        match self.folder(ti, handle) {
            Resolved::Path(d) => {
                let p = join(&d, name);
                // what happened inside the folder came before it left
                if let Some(c) = child.filter(|_| mask & LEAVE != 0) {
                    self.flush(ti, c, p.clone());
                }
                self.record(ti, &p, mask, dir);
                Some(p)
            }
            Resolved::Outside => None,
            Resolved::Gone => {
                let t = &mut self.targets[ti];
                if self.pending_total >= PENDING_MAX {
                    t.rec.unresolved += 1;
                } else {
                    self.pending_total += 1;
                    t.pending.entry(handle.into()).or_default().push(Pending {
                        mask,
                        name: name.map(Into::into),
                        dir,
                        child,
                    });
                }
                None
            }
        }
    }

    fn folder(&mut self, ti: usize, handle: &[u8]) -> Resolved {
        if let Some(p) = self.targets[ti].cache.get(handle) {
            return Resolved::Path(p.clone());
        }
        let r = self.env.resolve(ti, handle);
        if let Resolved::Path(p) = &r {
            let t = &mut self.targets[ti];
            if !p.starts_with(&t.rec.mountpoint) {
                return Resolved::Outside;
            }
            if t.cache.len() >= CACHE_MAX {
                t.cache.clear();
            }
            t.cache.insert(handle.into(), p.clone());
        }
        r
    }

    /// A folder that is gone is named (`path`) by the event that took it away: its held-back
    /// events, and those of folders inside it, are placed now, in the order they happened (a
    /// folder's own events before the event that took it away).
    fn flush(&mut self, ti: usize, handle: Box<[u8]>, path: PathBuf) {
        enum Step {
            Flush(Box<[u8]>, PathBuf),
            Record(PathBuf, u64, bool),
        }
        // a stack, not recursion: a deep tree must not overflow the thread's stack
        let mut work = vec![Step::Flush(handle, path)];
        while let Some(step) = work.pop() {
            match step {
                Step::Record(at, mask, dir) => self.record(ti, &at, mask, dir),
                Step::Flush(h, base) => {
                    let Some(list) = self.targets[ti].pending.remove(&h) else {
                        continue;
                    };
                    self.pending_total -= list.len();
                    for p in list.into_iter().rev() {
                        let at = join(&base, p.name.as_deref());
                        let child = p.child.filter(|_| p.mask & LEAVE != 0);
                        work.push(Step::Record(at.clone(), p.mask, p.dir));
                        if let Some(c) = child {
                            work.push(Step::Flush(c, at));
                        }
                    }
                }
            }
        }
    }

    fn excluded(&self, p: &Path) -> bool {
        self.exclude.iter().any(|x| under(p, x))
    }

    fn record(&mut self, ti: usize, path: &Path, mask: u64, dir: bool) {
        if self.excluded(path) || !under(path, &self.targets[ti].rec.mountpoint) {
            return;
        }
        let bits = ev_bits(mask);
        if bits == 0 {
            return;
        }
        let limit = self.limit;
        if let Some(s) = self.targets[ti].paths.get_mut(path) {
            s.all |= bits;
            s.dir |= dir;
            return;
        }
        if self.targets[ti].paths.len() < limit {
            let first = self.first_of(mask, path);
            self.targets[ti].paths.insert(
                path.to_path_buf(),
                Seen {
                    first,
                    all: bits,
                    dir,
                },
            );
            return;
        }
        let t = &mut self.targets[ti];
        let mut h = std::collections::hash_map::DefaultHasher::new();
        path.hash(&mut h);
        let h = h.finish();
        if t.counted.contains(&h) {
            return;
        }
        if t.counted.len() < COUNTED_MAX {
            t.counted.insert(h);
        }
        let parent = match path.parent() {
            Some(d) if d.starts_with(&t.rec.mountpoint) => d.to_path_buf(),
            // the mount point itself
            _ => t.rec.mountpoint.clone(),
        };
        let key =
            if t.rec.more_under.contains_key(&parent) || t.rec.more_under.len() < MORE_UNDER_MAX {
                parent
            } else {
                t.rec.mountpoint.clone()
            };
        *t.rec.more_under.entry(key).or_default() += 1;
    }

    /// The first event of a path seen for the first time. Several bits at once are events the
    /// kernel merged, mostly in their natural order (created, then written); an arrival merged
    /// with a departure has lost its order, and whether the path exists now tells which was last.
    fn first_of(&self, mask: u64, path: &Path) -> Ev {
        let arrive = if mask & FAN_CREATE != 0 {
            Ev::Created
        } else {
            Ev::MovedTo
        };
        let leave = if mask & FAN_DELETE != 0 {
            Ev::Deleted
        } else {
            Ev::MovedFrom
        };
        match (mask & ARRIVE != 0, mask & LEAVE != 0) {
            (true, true) if self.env.exists(path) => leave,
            (true, _) => arrive,
            _ if mask & FAN_MODIFY != 0 => Ev::Modified,
            _ if mask & FAN_ATTRIB != 0 => Ev::Attrib,
            _ => leave,
        }
    }

    fn renamed(&mut self, ti: usize, old: PathBuf, new: PathBuf) {
        let limit = self.limit;
        let t = &mut self.targets[ti];
        if t.paths.contains_key(&old) && t.paths.contains_key(&new) && t.rec.renames.len() < limit {
            t.rec.renames.push((old, new));
        }
    }

    fn finish(self) -> Recording {
        Recording {
            targets: self
                .targets
                .into_iter()
                .map(|mut t| {
                    // events for folders never named are lost
                    t.rec.unresolved += t.pending.values().map(|v| v.len() as u64).sum::<u64>();
                    t.rec.paths = t.paths.into_iter().collect();
                    t.rec
                })
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The kernel side

struct Kernel {
    /// per target: the mount point's directory, the path /proc shows for it, the watch's path
    mounts: Vec<(File, PathBuf, PathBuf)>,
    /// the group again, for ignore marks (None: not marking)
    fan: Option<File>,
    quieted: usize,
}

impl Env for Kernel {
    fn resolve(&mut self, target: usize, handle: &[u8]) -> Resolved {
        let (mount, shown, mp) = &self.mounts[target];
        let Ok(fd) = open_by_handle(mount.as_fd(), handle) else {
            return Resolved::Gone;
        };
        let Ok(link) = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) else {
            return Resolved::Gone;
        };
        let mut bytes = link.as_os_str().as_bytes();
        const DELETED: &[u8] = b" (deleted)";
        if bytes.ends_with(DELETED) {
            // a folder removed but still in memory: its last path is still right; a live
            // folder whose name ends so has links
            if File::from(fd).metadata().map(|m| m.nlink()).unwrap_or(0) == 0 {
                bytes = &bytes[..bytes.len() - DELETED.len()];
            }
        }
        let path = Path::new(OsStr::from_bytes(bytes));
        match path.strip_prefix(shown) {
            Ok(rel) if rel.as_os_str().is_empty() => Resolved::Path(mp.clone()),
            Ok(rel) => Resolved::Path(mp.join(rel)),
            Err(_) => Resolved::Outside,
        }
    }

    fn exists(&self, p: &Path) -> bool {
        std::fs::symlink_metadata(p).is_ok()
    }

    fn quiet(&mut self, target: usize, file: &[u8]) {
        let Some(fan) = &self.fan else { return };
        if self.quieted >= QUIET_MAX {
            return;
        }
        let Ok(path_fd) = open_by_handle(self.mounts[target].0.as_fd(), file) else {
            return;
        };
        // a mark needs a file opened for real; only a regular file is opened (a device or a
        // FIFO could act on open), read only, without touching its access time
        let regular = File::from(path_fd);
        if !regular.metadata().is_ok_and(|m| m.file_type().is_file()) {
            return;
        }
        let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOATIME | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(format!("/proc/self/fd/{}", regular.as_raw_fd()))
        else {
            return;
        };
        // evictable: the mark never keeps the inode (or a deleted file's blocks) alive; if the
        // kernel drops it, the writes are reported again, nothing is lost
        // SAFETY: both fds are open; a null path marks `f` itself.
        let r = unsafe {
            libc::fanotify_mark(
                fan.as_raw_fd(),
                libc::FAN_MARK_ADD
                    | libc::FAN_MARK_IGNORED_MASK
                    | libc::FAN_MARK_IGNORED_SURV_MODIFY
                    | libc::FAN_MARK_EVICTABLE,
                FAN_MODIFY,
                f.as_raw_fd(),
                std::ptr::null(),
            )
        };
        if r < 0 {
            // before 5.19 there are no evictable marks: a pinning one is not worth it
            if is_errno(&io::Error::last_os_error(), libc::EINVAL) {
                self.fan = None;
            }
            return;
        }
        self.quieted += 1;
    }
}

fn is_errno(e: &io::Error, code: i32) -> bool {
    e.raw_os_error() == Some(code)
}

fn open_by_handle(mount: BorrowedFd, handle: &[u8]) -> io::Result<OwnedFd> {
    // the handle bytes in a u64 buffer: struct file_handle is 4-byte aligned
    let words: Vec<u64> = handle
        .chunks(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            u64::from_ne_bytes(w)
        })
        .collect();
    // SAFETY: `words` holds a whole struct file_handle (handle_bytes as the kernel wrote it,
    // checked against the record's length by the parser) and outlives the call; the kernel only
    // reads it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            words.as_ptr(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd from the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn fanotify_init(flags: u32) -> io::Result<File> {
    // SAFETY: plain syscall, no pointers.
    let fd = unsafe {
        libc::fanotify_init(
            flags,
            (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd from the kernel, owned by nobody else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn fanotify_mark(fan: &File, dir: &File, mask: u64) -> io::Result<()> {
    // SAFETY: both fds are open; a null path marks `dir` itself (its filesystem, here).
    let r = unsafe {
        libc::fanotify_mark(
            fan.as_raw_fd(),
            libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
            mask,
            dir.as_raw_fd(),
            std::ptr::null(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// statfs's f_fsid, as the kernel puts it in events.
fn fsid_of(dir: &File) -> io::Result<[i32; 2]> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `st` is a statfs the kernel fills; fsid_t is two c_ints (its field is private in
    // libc, hence the transmute, which checks the size).
    unsafe {
        if libc::fstatfs(dir.as_raw_fd(), st.as_mut_ptr()) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(std::mem::transmute::<libc::fsid_t, [libc::c_int; 2]>(
            st.assume_init().f_fsid,
        ))
    }
}

/// The fanotify group, what resolving its handles needs, and each watch's fsid.
type Group = (File, Kernel, Vec<(Watch, [i32; 2])>);

/// Opens the group and marks each watch's filesystem.
fn open_group(watches: &[Watch]) -> io::Result<Group> {
    let base = libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK;
    // the child's handle too where the kernel has it (5.17): it names deleted folders
    let fan = match fanotify_init(base | libc::FAN_REPORT_DFID_NAME_TARGET) {
        Err(e) if is_errno(&e, libc::EINVAL) => fanotify_init(base | libc::FAN_REPORT_DFID_NAME)?,
        r => r?,
    };
    let mut mounts = Vec::new();
    let mut with_fsid = Vec::new();
    for w in watches {
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&w.mountpoint)?;
        let fsid = fsid_of(&dir)?;
        if with_fsid.iter().any(|(_, f)| *f == fsid) {
            // events could not be told apart (an ext4 snapshot shares its origin's fsid)
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{} has the same filesystem id as another target",
                    w.mountpoint.display()
                ),
            ));
        }
        let shown = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
        with_fsid.push((w.clone(), fsid));
        mounts.push((dir, shown, w.mountpoint.clone()));
    }
    let common = FAN_CREATE | FAN_DELETE | FAN_MODIFY | FAN_ATTRIB | FAN_ONDIR;
    let mut mask = common | FAN_RENAME;
    for (dir, _, _) in &mounts {
        match fanotify_mark(&fan, dir, mask) {
            // before 5.17: no FAN_RENAME, moves as two events
            Err(e) if mask & FAN_RENAME != 0 && is_errno(&e, libc::EINVAL) => {
                mask = common | FAN_MOVED_FROM | FAN_MOVED_TO;
                fanotify_mark(&fan, dir, mask)?;
            }
            r => r?,
        }
    }
    let again = fan.try_clone().ok();
    Ok((
        fan,
        Kernel {
            mounts,
            fan: again,
            quieted: 0,
        },
        with_fsid,
    ))
}

impl Recorder {
    /// Starts recording the watches' filesystems. Err when fanotify or the flags are not
    /// available (ENOSYS, EINVAL, EPERM, EXDEV, ENODEV…): the caller falls back. `exclude`:
    /// absolute path prefixes whose events are dropped (guard's own journal folder). `limit`:
    /// most paths kept per target; past it, paths are counted per parent folder.
    pub fn start(watches: Vec<Watch>, exclude: Vec<PathBuf>, limit: usize) -> io::Result<Recorder> {
        let (fan, kernel, with_fsid) = open_group(&watches)?;
        let (stop_tx, stop_rx) = UnixStream::pair()?;
        let state = State::new(kernel, &with_fsid, exclude, limit);
        let thread = std::thread::Builder::new()
            .name("guard-record".into())
            .spawn(move || read_loop(fan, stop_rx, state))?;
        Ok(Recorder {
            stop_tx: Some(stop_tx),
            thread: Some(thread),
            watches,
        })
    }

    /// Stops the thread after draining what the kernel queued, and returns the recording.
    pub fn stop(mut self) -> Recording {
        self.halt().unwrap_or_else(|| Recording {
            // the thread died: say the recording is incomplete rather than empty and complete
            targets: self
                .watches
                .iter()
                .map(|w| TargetRecording {
                    target: w.target.clone(),
                    mountpoint: w.mountpoint.clone(),
                    overflowed: true,
                    ..Default::default()
                })
                .collect(),
        })
    }

    fn halt(&mut self) -> Option<Recording> {
        if let Some(mut tx) = self.stop_tx.take() {
            // if this fails the thread sees the hang-up when `tx` is dropped
            let _ = tx.write_all(&[1]);
        }
        self.thread.take()?.join().ok()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.halt();
    }
}

fn read_loop(fan: File, stop: UnixStream, mut state: State<Kernel>) -> Recording {
    let mut buf = vec![0u8; READ_BUF];
    let mut busy = false;
    loop {
        let mut fds = [
            PollFd::new(fan.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => {
                lost(&mut state);
                break;
            }
        }
        if fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLNVAL))
        {
            // not expected of a fanotify fd; never spin on it
            lost(&mut state);
            break;
        }
        let mut stopping = fds[1].revents().is_some_and(|r| !r.is_empty());
        if !stopping {
            // let events pile up (see BATCH); a stop request ends the wait
            let mut s = [PollFd::new(stop.as_fd(), PollFlags::POLLIN)];
            let ms = PollTimeout::try_from(if busy { 0 } else { BATCH.as_millis() as i32 })
                .unwrap_or(PollTimeout::ZERO);
            stopping = matches!(poll(&mut s, ms), Ok(n) if n > 0);
        }
        // on stop, the command has ended: everything it did is queued already
        busy = drain(&fan, &mut buf, &mut state) >= BUSY;
        if stopping {
            break;
        }
    }
    state.finish()
}

/// Reads until the queue is empty; the bytes read.
fn drain(mut fan: &File, buf: &mut [u8], state: &mut State<Kernel>) -> usize {
    let mut total = 0;
    loop {
        match fan.read(buf) {
            Ok(0) => return total,
            Ok(n) => {
                total += n;
                state.buffer(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return total,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                lost(state);
                return total;
            }
        }
    }
}

/// Reading failed: events were lost, as if the queue had overflowed.
fn lost<E: Env>(state: &mut State<E>) {
    for t in state.targets.iter_mut() {
        t.rec.overflowed = true;
    }
}

// ---------------------------------------------------------------------------------------------
// Classifying

/// Turns a recording into the list guard stores and prints. `now(path)`: whether the path
/// exists at the end of the run (Some(is_dir)) or not (None). `before(path)`: whether it
/// existed before the run (None: unknown), asked only for paths whose first event was an
/// arrival (created, moved in), which cannot tell a new path from one replaced.
pub fn classify(
    rec: &TargetRecording,
    now: &dyn Fn(&Path) -> Option<bool>,
    before: &dyn Fn(&Path) -> Option<bool>,
) -> TargetChanges {
    let now_of: HashMap<&Path, Option<bool>> =
        rec.paths.keys().map(|p| (p.as_path(), now(p))).collect();
    let is_now = |p: &Path| now_of.get(p).copied().flatten();
    let arrived = |s: &Seen| matches!(s.first, Ev::Created | Ev::MovedTo);
    // existed before the run
    let existed = |p: &Path, s: &Seen| !arrived(s) || before(p) == Some(true);

    let mut changes = Vec::new();
    let mut consumed: HashSet<&Path> = HashSet::new();

    // Moves: a path that existed and is gone, renamed (perhaps through several names) to one
    // that is new and exists: one entry instead of a deleted and an added one.
    let mut by_old: HashMap<&Path, Vec<usize>> = HashMap::new();
    for (i, (old, _)) in rec.renames.iter().enumerate() {
        by_old.entry(old.as_path()).or_default().push(i);
    }
    for (i, (old, new)) in rec.renames.iter().enumerate() {
        let Some(so) = rec.paths.get(old) else {
            continue;
        };
        if so.first != Ev::MovedFrom || now_of.get(old.as_path()).copied().flatten().is_some() {
            continue;
        }
        if consumed.contains(old.as_path()) {
            continue;
        }
        // follow later renames of the new name (bounded: a chain cannot be longer than this)
        let (mut cur, mut at) = (new.as_path(), i);
        for _ in 0..rec.renames.len().min(1000) {
            let next = by_old
                .get(cur)
                .and_then(|v| v.iter().find(|&&k| k > at).copied());
            match next {
                Some(k) => {
                    at = k;
                    cur = rec.renames[k].1.as_path();
                }
                None => break,
            }
        }
        let Some(sn) = rec.paths.get(cur) else {
            continue;
        };
        let Some(now_dir) = is_now(cur) else { continue };
        if sn.first != Ev::MovedTo || existed(cur, sn) || consumed.contains(cur) || cur == old {
            continue;
        }
        consumed.insert(old.as_path());
        consumed.insert(cur);
        changes.push(Change {
            kind: ChangeKind::Moved,
            path: cur.to_path_buf(),
            from: Some(old.clone()),
            dir: so.dir || sn.dir || now_dir,
            detail: None,
        });
    }

    for (path, s) in &rec.paths {
        if consumed.contains(path.as_path()) {
            continue;
        }
        let n = is_now(path);
        let dir = s.dir || n == Some(true);
        let change = |kind, detail: Option<&str>| Change {
            kind,
            path: path.clone(),
            from: None,
            dir,
            detail: detail.map(str::to_string),
        };
        match (existed(path, s), n) {
            // a temporary path: created and gone within the run
            (false, None) => {}
            (false, Some(_)) => changes.push(change(ChangeKind::Added, None)),
            (true, None) => changes.push(change(ChangeKind::Deleted, None)),
            (true, Some(_)) => {
                let replaced = arrived(s)
                    || s.has(Ev::Deleted)
                    || s.has(Ev::MovedFrom)
                    || s.has(Ev::Created)
                    || s.has(Ev::MovedTo);
                let detail = if replaced {
                    "replaced"
                } else if s.has(Ev::Modified) {
                    "content"
                } else {
                    "attributes"
                };
                changes.push(change(ChangeKind::Modified, Some(detail)));
            }
        }
    }
    changes.sort_by(|a, b| a.path.cmp(&b.path));

    let mut why = Vec::new();
    if rec.overflowed {
        why.push("the kernel's event queue overflowed: some paths are missing; for a kept run `guard diff --compare RUN` compares the snapshot".to_string());
    }
    match rec.unresolved {
        0 => {}
        1 => why.push("1 event in a folder deleted before it was read".to_string()),
        n => why.push(format!(
            "{n} events in folders deleted before they were read"
        )),
    }
    if !rec.more_under.is_empty() {
        why.push(format!(
            "more than {} paths changed: counted per folder",
            rec.paths.len()
        ));
    }
    TargetChanges {
        target: rec.target.clone(),
        mountpoint: Some(rec.mountpoint.clone()),
        source: ChangeSource::Recorded,
        complete: why.is_empty(),
        changes,
        more_under: rec
            .more_under
            .iter()
            .map(|(d, c)| MoreUnder {
                dir: d.clone(),
                count: *c,
            })
            .collect(),
        note: (!why.is_empty()).then(|| why.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FSID: [i32; 2] = [0x1234, 0x5678];

    /// One fid info record as the kernel lays it out (padded to 4 bytes).
    fn fid(kind: u8, fsid: [i32; 2], f_handle: &[u8], name: Option<&str>) -> Vec<u8> {
        let mut r = vec![kind, 0, 0, 0];
        r.extend(fsid[0].to_ne_bytes());
        r.extend(fsid[1].to_ne_bytes());
        r.extend((f_handle.len() as u32).to_ne_bytes());
        r.extend(1i32.to_ne_bytes());
        r.extend(f_handle);
        if let Some(n) = name {
            r.extend(n.as_bytes());
            r.push(0);
        }
        while r.len() % 4 != 0 {
            r.push(0);
        }
        let len = r.len() as u16;
        r[2..4].copy_from_slice(&len.to_ne_bytes());
        r
    }

    fn event(mask: u64, infos: &[Vec<u8>]) -> Vec<u8> {
        let body = infos.concat();
        let mut e = Vec::new();
        e.extend(((METADATA_LEN + body.len()) as u32).to_ne_bytes());
        e.push(FANOTIFY_METADATA_VERSION);
        e.push(0);
        e.extend((METADATA_LEN as u16).to_ne_bytes());
        e.extend(mask.to_ne_bytes());
        e.extend(libc::FAN_NOFD.to_ne_bytes());
        e.extend(4321i32.to_ne_bytes());
        e.extend(body);
        e
    }

    /// The handle as the parser hands it on: handle_bytes, handle_type, f_handle.
    fn key(f_handle: &[u8]) -> Vec<u8> {
        let mut k = (f_handle.len() as u32).to_ne_bytes().to_vec();
        k.extend(1i32.to_ne_bytes());
        k.extend(f_handle);
        k
    }

    #[test]
    fn parses_a_create_event() {
        let buf = event(
            FAN_CREATE,
            &[fid(
                FAN_EVENT_INFO_TYPE_DFID_NAME,
                FSID,
                b"DIRHANDL",
                Some("new.txt"),
            )],
        );
        let (evs, bad) = parse(&buf);
        assert!(!bad);
        let k = key(b"DIRHANDL");
        assert_eq!(
            evs,
            vec![Event {
                mask: FAN_CREATE,
                fd: -1,
                infos: vec![Info {
                    kind: FAN_EVENT_INFO_TYPE_DFID_NAME,
                    fsid: FSID,
                    handle: &k,
                    name: Some(b"new.txt"),
                }],
            }]
        );
    }

    #[test]
    fn parses_a_rename_with_old_and_new_names_and_the_child() {
        let buf = event(
            FAN_RENAME | FAN_ONDIR,
            &[
                fid(
                    FAN_EVENT_INFO_TYPE_OLD_DFID_NAME,
                    FSID,
                    b"OLDDIR",
                    Some("a"),
                ),
                fid(
                    FAN_EVENT_INFO_TYPE_NEW_DFID_NAME,
                    FSID,
                    b"NEWDIR__",
                    Some("bee"),
                ),
                fid(FAN_EVENT_INFO_TYPE_FID, FSID, b"CHILD", None),
            ],
        );
        let (evs, bad) = parse(&buf);
        assert!(!bad);
        assert_eq!(evs.len(), 1);
        let e = &evs[0];
        assert_eq!(e.mask, FAN_RENAME | FAN_ONDIR);
        let old = e.info(FAN_EVENT_INFO_TYPE_OLD_DFID_NAME).unwrap();
        assert_eq!(
            (old.handle, old.name),
            (&key(b"OLDDIR")[..], Some(&b"a"[..]))
        );
        let new = e.info(FAN_EVENT_INFO_TYPE_NEW_DFID_NAME).unwrap();
        assert_eq!(
            (new.handle, new.name),
            (&key(b"NEWDIR__")[..], Some(&b"bee"[..]))
        );
        let child = e.info(FAN_EVENT_INFO_TYPE_FID).unwrap();
        assert_eq!((child.handle, child.name), (&key(b"CHILD")[..], None));
    }

    #[test]
    fn parses_an_overflow_and_two_events_in_one_buffer() {
        let mut buf = event(FAN_Q_OVERFLOW, &[]);
        buf.extend(event(
            FAN_DELETE,
            &[fid(FAN_EVENT_INFO_TYPE_DFID_NAME, FSID, b"D", Some("x"))],
        ));
        let (evs, bad) = parse(&buf);
        assert!(!bad);
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].mask, FAN_Q_OVERFLOW);
        assert!(evs[0].infos.is_empty());
        assert_eq!(evs[1].mask, FAN_DELETE);
        assert_eq!(evs[1].infos[0].name, Some(&b"x"[..]));
    }

    #[test]
    fn a_truncated_buffer_is_malformed_not_a_panic() {
        let buf = event(
            FAN_CREATE,
            &[fid(
                FAN_EVENT_INFO_TYPE_DFID_NAME,
                FSID,
                b"DIRHANDL",
                Some("f"),
            )],
        );
        for cut in 1..buf.len() {
            let (evs, bad) = parse(&buf[..cut]);
            assert!(bad && evs.is_empty(), "cut at {cut}");
        }
        // a handle longer than its record
        let mut r = fid(FAN_EVENT_INFO_TYPE_DFID, FSID, b"H", None);
        r[12..16].copy_from_slice(&200u32.to_ne_bytes());
        let buf = event(FAN_ATTRIB, &[r]);
        let (evs, bad) = parse(&buf);
        assert!(bad);
        assert_eq!(evs.len(), 1); // kept only so its fd is closed
        assert_eq!(evs[0].mask, 0);
    }

    /// Folder handles (f_handle bytes) and what they resolve to.
    struct Fake {
        dirs: HashMap<Vec<u8>, Resolved>,
        exists: HashSet<PathBuf>,
    }
    impl Env for Fake {
        fn resolve(&mut self, _t: usize, handle: &[u8]) -> Resolved {
            self.dirs
                .get(&handle[8..])
                .cloned()
                .unwrap_or(Resolved::Gone)
        }
        fn exists(&self, p: &Path) -> bool {
            self.exists.contains(p)
        }
    }

    fn state(dirs: &[(&str, Resolved)], limit: usize) -> State<Fake> {
        let env = Fake {
            dirs: dirs
                .iter()
                .map(|(h, r)| (h.as_bytes().to_vec(), r.clone()))
                .collect(),
            exists: HashSet::new(),
        };
        let w = Watch {
            target: "vg/lv".into(),
            mountpoint: "/mnt".into(),
        };
        State::new(env, &[(w, FSID)], vec!["/mnt/var/lib/guard".into()], limit)
    }

    fn at(h: &str, name: &str) -> Vec<u8> {
        fid(
            FAN_EVENT_INFO_TYPE_DFID_NAME,
            FSID,
            h.as_bytes(),
            Some(name),
        )
    }
    fn child(h: &str) -> Vec<u8> {
        fid(FAN_EVENT_INFO_TYPE_FID, FSID, h.as_bytes(), None)
    }
    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }
    fn path_of(s: &str) -> Resolved {
        Resolved::Path(p(s))
    }

    #[test]
    fn under_is_path_prefix_on_whole_names() {
        assert!(under(Path::new("/a/b"), Path::new("/")));
        assert!(under(Path::new("/a/b"), Path::new("/a")));
        assert!(under(Path::new("/a"), Path::new("/a")));
        assert!(under(Path::new("/a/b"), Path::new("/a/")));
        assert!(!under(Path::new("/ab"), Path::new("/a")));
        assert!(!under(Path::new("/a"), Path::new("/a/b")));
    }

    #[test]
    fn events_become_paths() {
        let mut s = state(
            &[
                ("ROOT", path_of("/mnt")),
                ("ETC", path_of("/mnt/etc")),
                ("GUARD", path_of("/mnt/var/lib/guard")),
                ("ELSE", Resolved::Outside),
            ],
            100,
        );
        let mut buf = event(FAN_CREATE, &[at("ETC", "a")]);
        buf.extend(event(FAN_MODIFY, &[at("ETC", "a"), child("FA")]));
        buf.extend(event(FAN_ATTRIB | FAN_ONDIR, &[at("ETC", ".")]));
        buf.extend(event(FAN_MKDIR_TEST, &[at("ROOT", "d")]));
        buf.extend(event(
            FAN_RENAME,
            &[
                fid(FAN_EVENT_INFO_TYPE_OLD_DFID_NAME, FSID, b"ETC", Some("b")),
                fid(FAN_EVENT_INFO_TYPE_NEW_DFID_NAME, FSID, b"ROOT", Some("c")),
            ],
        ));
        buf.extend(event(FAN_CREATE, &[at("GUARD", "journal")]));
        buf.extend(event(FAN_CREATE, &[at("ELSE", "x")]));
        buf.extend(event(FAN_Q_OVERFLOW, &[]));
        s.buffer(&buf);
        let r = &s.finish().targets[0];
        let seen = |f: Ev, all: u8, dir: bool| Seen { first: f, all, dir };
        let want: BTreeMap<PathBuf, Seen> = [
            (p("/mnt/etc/a"), seen(Ev::Created, 1 | 4, false)),
            (p("/mnt/etc"), seen(Ev::Attrib, 8, true)),
            (p("/mnt/d"), seen(Ev::Created, 1, true)),
            (p("/mnt/etc/b"), seen(Ev::MovedFrom, 16, false)),
            (p("/mnt/c"), seen(Ev::MovedTo, 32, false)),
        ]
        .into_iter()
        .collect();
        assert_eq!(r.paths, want);
        assert_eq!(r.renames, vec![(p("/mnt/etc/b"), p("/mnt/c"))]);
        assert!(r.overflowed);
        assert_eq!(r.unresolved, 0);
    }
    const FAN_MKDIR_TEST: u64 = FAN_CREATE | FAN_ONDIR;

    #[test]
    fn moves_as_two_events_are_paired() {
        let mut s = state(&[("ROOT", path_of("/mnt"))], 100);
        let mut buf = event(FAN_MOVED_FROM, &[at("ROOT", "x")]);
        buf.extend(event(FAN_MOVED_TO, &[at("ROOT", "y")]));
        // a MOVED_TO not right after a MOVED_FROM is not paired
        buf.extend(event(FAN_MOVED_FROM, &[at("ROOT", "m")]));
        buf.extend(event(FAN_CREATE, &[at("ROOT", "n")]));
        buf.extend(event(FAN_MOVED_TO, &[at("ROOT", "o")]));
        s.buffer(&buf);
        let r = &s.finish().targets[0];
        assert_eq!(r.renames, vec![(p("/mnt/x"), p("/mnt/y"))]);
    }

    #[test]
    fn a_tree_deleted_before_it_is_read_is_named_by_its_deletions() {
        // rm -rf /mnt/a: a and a/b are gone when their events are read
        let mut s = state(&[("ROOT", path_of("/mnt"))], 100);
        let mut buf = event(FAN_DELETE, &[at("B", "f"), child("F")]);
        buf.extend(event(FAN_ATTRIB | FAN_ONDIR, &[at("B", ".")]));
        buf.extend(event(FAN_DELETE | FAN_ONDIR, &[at("A", "b"), child("B")]));
        buf.extend(event(FAN_DELETE, &[at("A", "g")]));
        buf.extend(event(
            FAN_DELETE | FAN_ONDIR,
            &[at("ROOT", "a"), child("A")],
        ));
        // a folder never named: counted as unresolved at the end
        buf.extend(event(FAN_DELETE, &[at("LOST", "z")]));
        s.buffer(&buf);
        assert_eq!(s.pending_total, 1);
        let r = &s.finish().targets[0];
        let got: Vec<(&Path, Ev, bool)> = r
            .paths
            .iter()
            .map(|(k, v)| (k.as_path(), v.first, v.dir))
            .collect();
        assert_eq!(
            got,
            vec![
                (Path::new("/mnt/a"), Ev::Deleted, true),
                (Path::new("/mnt/a/b"), Ev::Attrib, true),
                (Path::new("/mnt/a/b/f"), Ev::Deleted, false),
                (Path::new("/mnt/a/g"), Ev::Deleted, false),
            ]
        );
        assert!(r.paths[&p("/mnt/a/b")].has(Ev::Deleted));
        assert_eq!(r.unresolved, 1);
    }

    #[test]
    fn a_renamed_folder_is_not_named_from_the_cache() {
        let mut s = state(&[("ROOT", path_of("/mnt")), ("D", path_of("/mnt/d"))], 100);
        s.buffer(&event(FAN_CREATE, &[at("D", "1")]));
        // d renamed to e: the fake now resolves D to its new path
        s.env.dirs.insert(b"D".to_vec(), path_of("/mnt/e"));
        let mut buf = event(
            FAN_RENAME | FAN_ONDIR,
            &[
                fid(FAN_EVENT_INFO_TYPE_OLD_DFID_NAME, FSID, b"ROOT", Some("d")),
                fid(FAN_EVENT_INFO_TYPE_NEW_DFID_NAME, FSID, b"ROOT", Some("e")),
                child("D"),
            ],
        );
        buf.extend(event(FAN_CREATE, &[at("D", "2")]));
        s.buffer(&buf);
        let r = &s.finish().targets[0];
        assert!(r.paths.contains_key(&p("/mnt/d/1")));
        assert!(r.paths.contains_key(&p("/mnt/e/2")));
        assert_eq!(r.renames, vec![(p("/mnt/d"), p("/mnt/e"))]);
    }

    #[test]
    fn merged_arrival_and_departure_are_ordered_by_what_exists() {
        let mut s = state(&[("ROOT", path_of("/mnt"))], 100);
        s.env.exists.insert(p("/mnt/here"));
        s.buffer(&event(FAN_CREATE | FAN_DELETE, &[at("ROOT", "here")]));
        s.buffer(&event(FAN_CREATE | FAN_DELETE, &[at("ROOT", "gone")]));
        let r = &s.finish().targets[0];
        assert_eq!(r.paths[&p("/mnt/here")].first, Ev::Deleted);
        assert_eq!(r.paths[&p("/mnt/gone")].first, Ev::Created);
    }

    #[test]
    fn past_the_limit_paths_are_counted_per_folder_once() {
        let mut s = state(&[("ROOT", path_of("/mnt")), ("D", path_of("/mnt/d"))], 2);
        let mut buf = Vec::new();
        for n in ["a", "b", "c", "d", "c"] {
            buf.extend(event(FAN_CREATE, &[at("D", n)]));
        }
        buf.extend(event(FAN_MODIFY, &[at("D", "a")]));
        buf.extend(event(FAN_CREATE, &[at("ROOT", "top")]));
        s.buffer(&buf);
        let r = &s.finish().targets[0];
        assert_eq!(r.paths.len(), 2);
        assert!(r.paths[&p("/mnt/d/a")].has(Ev::Modified));
        let mu: Vec<(PathBuf, u64)> = r.more_under.clone().into_iter().collect();
        assert_eq!(mu, vec![(p("/mnt"), 1), (p("/mnt/d"), 2)]);
    }

    // ------------------------------------------------------------------ classify

    fn rec(paths: &[(&str, Ev, &[Ev], bool)], renames: &[(&str, &str)]) -> TargetRecording {
        TargetRecording {
            target: "vg/lv".into(),
            mountpoint: "/mnt".into(),
            paths: paths
                .iter()
                .map(|(p, first, rest, dir)| {
                    let all = rest.iter().fold(*first as u8, |a, e| a | *e as u8);
                    (
                        PathBuf::from(p),
                        Seen {
                            first: *first,
                            all,
                            dir: *dir,
                        },
                    )
                })
                .collect(),
            renames: renames.iter().map(|(a, b)| (p(a), p(b))).collect(),
            ..Default::default()
        }
    }

    fn exists_now(list: &'static [(&'static str, bool)]) -> impl Fn(&Path) -> Option<bool> {
        move |q: &Path| {
            list.iter()
                .find(|(x, _)| Path::new(x) == q)
                .map(|(_, d)| *d)
        }
    }
    fn unknown(_: &Path) -> Option<bool> {
        None
    }
    fn kinds(c: &TargetChanges) -> Vec<(String, ChangeKind, Option<String>, Option<String>)> {
        c.changes
            .iter()
            .map(|c| {
                (
                    c.path.display().to_string(),
                    c.kind,
                    c.from.as_ref().map(|f| f.display().to_string()),
                    c.detail.clone(),
                )
            })
            .collect()
    }
    fn ch(
        path: &str,
        kind: ChangeKind,
        from: Option<&str>,
        detail: Option<&str>,
    ) -> (String, ChangeKind, Option<String>, Option<String>) {
        (
            path.into(),
            kind,
            from.map(Into::into),
            detail.map(Into::into),
        )
    }

    #[test]
    fn classify_the_usual_cases() {
        use ChangeKind::*;
        let r = rec(
            &[
                (
                    "/mnt/tmp.123",
                    Ev::Created,
                    &[Ev::Modified, Ev::Deleted],
                    false,
                ),
                ("/mnt/etc/conf", Ev::Modified, &[Ev::Attrib], false),
                ("/mnt/etc/mode", Ev::Attrib, &[], false),
                ("/mnt/etc/gone", Ev::Deleted, &[], false),
                ("/mnt/etc/old", Ev::MovedFrom, &[], false),
                ("/mnt/etc/new", Ev::MovedTo, &[Ev::Modified], false),
                ("/mnt/etc/added", Ev::Created, &[Ev::Modified], false),
                ("/mnt/newdir", Ev::Created, &[], true),
                ("/mnt/etc", Ev::Attrib, &[], true),
                (
                    "/mnt/etc/f.dpkg-new",
                    Ev::Created,
                    &[Ev::Modified, Ev::MovedFrom],
                    false,
                ),
                ("/mnt/etc/f", Ev::MovedTo, &[], false),
                ("/mnt/etc/rm-then-new", Ev::Deleted, &[Ev::Created], false),
                ("/mnt/etc/mod-then-rm", Ev::Modified, &[Ev::Deleted], false),
            ],
            &[
                ("/mnt/etc/old", "/mnt/etc/new"),
                ("/mnt/etc/f.dpkg-new", "/mnt/etc/f"),
            ],
        );
        let now = exists_now(&[
            ("/mnt/etc/conf", false),
            ("/mnt/etc/mode", false),
            ("/mnt/etc/new", false),
            ("/mnt/etc/added", false),
            ("/mnt/newdir", true),
            ("/mnt/etc", true),
            ("/mnt/etc/f", false),
            ("/mnt/etc/rm-then-new", false),
        ]);
        let before = |q: &Path| Some(q == Path::new("/mnt/etc/f"));
        let c = classify(&r, &now, &before);
        assert_eq!(
            kinds(&c),
            vec![
                ch("/mnt/etc", Modified, None, Some("attributes")),
                ch("/mnt/etc/added", Added, None, None),
                ch("/mnt/etc/conf", Modified, None, Some("content")),
                ch("/mnt/etc/f", Modified, None, Some("replaced")),
                ch("/mnt/etc/gone", Deleted, None, None),
                ch("/mnt/etc/mod-then-rm", Deleted, None, None),
                ch("/mnt/etc/mode", Modified, None, Some("attributes")),
                ch("/mnt/etc/new", Moved, Some("/mnt/etc/old"), None),
                ch("/mnt/etc/rm-then-new", Modified, None, Some("replaced")),
                ch("/mnt/newdir", Added, None, None),
            ]
        );
        assert!(
            c.changes
                .iter()
                .find(|c| c.path == p("/mnt/newdir"))
                .unwrap()
                .dir
        );
        assert!(c.complete);
        assert_eq!(c.note, None);
        assert_eq!(c.source, ChangeSource::Recorded);
        assert_eq!(c.mountpoint, Some(p("/mnt")));

        // not knowing what existed before, a file renamed over is added
        let c = classify(&r, &now, &unknown);
        assert!(kinds(&c).contains(&ch("/mnt/etc/f", Added, None, None)));
    }

    #[test]
    fn a_move_through_several_names_is_one_move_and_a_replacing_move_is_not() {
        use ChangeKind::*;
        let r = rec(
            &[
                ("/mnt/a", Ev::MovedFrom, &[], false),
                ("/mnt/b", Ev::MovedTo, &[Ev::MovedFrom], false),
                ("/mnt/c", Ev::MovedTo, &[], false),
                ("/mnt/x", Ev::MovedFrom, &[], true),
                ("/mnt/y", Ev::MovedTo, &[], true),
            ],
            &[
                ("/mnt/a", "/mnt/b"),
                ("/mnt/b", "/mnt/c"),
                ("/mnt/x", "/mnt/y"),
            ],
        );
        let now = exists_now(&[("/mnt/c", false), ("/mnt/y", true)]);
        let c = classify(&r, &now, &unknown);
        assert_eq!(
            kinds(&c),
            vec![
                ch("/mnt/c", Moved, Some("/mnt/a"), None),
                ch("/mnt/y", Moved, Some("/mnt/x"), None),
            ]
        );
        assert!(c.changes[1].dir);
        // y existed before: x is gone and y was replaced
        let before = |q: &Path| Some(q == Path::new("/mnt/y"));
        let c = classify(&r, &now, &before);
        assert_eq!(
            kinds(&c),
            vec![
                ch("/mnt/c", Moved, Some("/mnt/a"), None),
                ch("/mnt/x", Deleted, None, None),
                ch("/mnt/y", Modified, None, Some("replaced")),
            ]
        );
    }

    #[test]
    fn an_incomplete_recording_says_why() {
        let mut r = rec(&[("/mnt/d/a", Ev::Created, &[], false)], &[]);
        r.more_under.insert(p("/mnt/d"), 7);
        let c = classify(&r, &exists_now(&[("/mnt/d/a", false)]), &unknown);
        assert!(!c.complete);
        assert_eq!(
            c.more_under,
            vec![MoreUnder {
                dir: p("/mnt/d"),
                count: 7
            }]
        );
        assert_eq!(
            c.note.as_deref(),
            Some("more than 1 paths changed: counted per folder")
        );
        r.overflowed = true;
        r.unresolved = 3;
        let note = classify(&r, &unknown, &unknown).note.unwrap();
        assert!(note.contains("overflowed"), "{note}");
        assert!(note.contains("3 events in folders deleted"), "{note}");
    }

    // ------------------------------------------------------------------ live

    /// The mount point of the filesystem holding `p` (mountinfo's longest matching mount).
    fn mountpoint_of(p: &Path) -> Option<(PathBuf, String)> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        info.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                Some((PathBuf::from(f.get(4)?), f.get(3)?.to_string()))
            })
            .filter(|(mp, _)| p.starts_with(mp))
            .max_by_key(|(mp, _)| mp.as_os_str().len())
    }

    #[test]
    fn live_recording_of_a_temp_folder() {
        use std::fs;
        use ChangeKind::*;
        if !nix::unistd::geteuid().is_root() {
            eprintln!("live fanotify test skipped: not root");
            return;
        }
        let tmp = tempfile::tempdir_in("/tmp").unwrap();
        let t = fs::canonicalize(tmp.path()).unwrap();
        let Some((mp, root)) = mountpoint_of(&t) else {
            eprintln!("live fanotify test skipped: no mount for {}", t.display());
            return;
        };
        if root != "/" {
            eprintln!(
                "live fanotify test skipped: {} is a bind mount",
                mp.display()
            );
            return;
        }
        let j = |n: &str| t.join(n);
        for f in ["keep", "attr", "gone", "old", "over"] {
            fs::write(j(f), "before").unwrap();
        }
        fs::create_dir_all(j("tree/sub")).unwrap();
        fs::write(j("tree/sub/x"), "x").unwrap();
        fs::write(j("tree/y"), "y").unwrap();
        fs::create_dir(j("d1")).unwrap();
        fs::write(j("d1/in"), "in").unwrap();
        fs::create_dir(j("excluded")).unwrap();
        fs::create_dir(j("cfg")).unwrap();
        let existed: HashSet<PathBuf> = fs::read_dir(&t)
            .unwrap()
            .map(|e| e.unwrap().path())
            .chain([j("tree/sub"), j("tree/sub/x"), j("tree/y"), j("d1/in")])
            .collect();

        let w = Watch {
            target: "test/live".into(),
            mountpoint: mp.clone(),
        };
        let rec = match Recorder::start(vec![w], vec![j("excluded")], 100_000) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("live fanotify test did not run: Recorder::start failed: {e}");
                return;
            }
        };
        fs::write(j("added"), "new").unwrap();
        fs::OpenOptions::new()
            .append(true)
            .open(j("keep"))
            .unwrap()
            .write_all(b" and after")
            .unwrap();
        fs::set_permissions(
            j("attr"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        fs::remove_file(j("gone")).unwrap();
        fs::rename(j("old"), j("new")).unwrap();
        fs::write(j("over.tmp"), "replacement").unwrap();
        fs::rename(j("over.tmp"), j("over")).unwrap();
        fs::write(j("transient"), "t").unwrap();
        fs::remove_file(j("transient")).unwrap();
        fs::remove_dir_all(j("tree")).unwrap();
        fs::rename(j("d1"), j("d2")).unwrap();
        fs::create_dir(j("newdir")).unwrap();
        fs::write(j("newdir/f"), "f").unwrap();
        fs::write(j("excluded/journal"), "j").unwrap();
        fs::set_permissions(
            j("cfg"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let recording = rec.stop();

        let tr = &recording.targets[0];
        assert_eq!(tr.target, "test/live");
        eprintln!(
            "live: {} paths, overflowed {}, unresolved {}",
            tr.paths.len(),
            tr.overflowed,
            tr.unresolved
        );
        let now = |q: &Path| fs::symlink_metadata(q).ok().map(|m| m.is_dir());
        let before = |q: &Path| Some(existed.contains(q));
        let c = classify(tr, &now, &before);
        let mine: Vec<_> = kinds(&c)
            .into_iter()
            .filter(|(path, ..)| Path::new(path).starts_with(&t) && Path::new(path) != t)
            .map(|(path, k, from, d)| {
                let rel = |x: &str| Path::new(x).strip_prefix(&t).unwrap().display().to_string();
                (rel(&path), k, from.as_deref().map(rel), d)
            })
            .collect();
        assert_eq!(
            mine,
            vec![
                ch("added", Added, None, None),
                ch("attr", Modified, None, Some("attributes")),
                ch("cfg", Modified, None, Some("attributes")),
                ch("d2", Moved, Some("d1"), None),
                ch("gone", Deleted, None, None),
                ch("keep", Modified, None, Some("content")),
                ch("new", Moved, Some("old"), None),
                ch("newdir", Added, None, None),
                ch("newdir/f", Added, None, None),
                ch("over", Modified, None, Some("replaced")),
                ch("tree", Deleted, None, None),
                ch("tree/sub", Deleted, None, None),
                ch("tree/sub/x", Deleted, None, None),
                ch("tree/y", Deleted, None, None),
            ]
        );
        let dirs: Vec<_> = c
            .changes
            .iter()
            .filter(|c| c.path.starts_with(&t) && c.dir)
            .map(|c| c.path.strip_prefix(&t).unwrap().display().to_string())
            .collect();
        assert_eq!(dirs, ["cfg", "d2", "newdir", "tree", "tree/sub"]);
        eprintln!("live fanotify test ran");
    }

    /// The kernel's events for a tree deleted before anything is read: the folders are gone,
    /// and their deletions (with the child's handle) must name them.
    #[test]
    fn live_tree_deleted_before_it_is_read() {
        use std::fs;
        if !nix::unistd::geteuid().is_root() {
            eprintln!("live fanotify test skipped: not root");
            return;
        }
        let tmp = tempfile::tempdir_in("/tmp").unwrap();
        let t = fs::canonicalize(tmp.path()).unwrap();
        let Some((mp, _)) = mountpoint_of(&t).filter(|(_, r)| r == "/") else {
            eprintln!("live fanotify test skipped: no whole-filesystem mount for /tmp");
            return;
        };
        fs::create_dir_all(t.join("a/b/c")).unwrap();
        fs::write(t.join("a/b/c/f"), "f").unwrap();
        fs::write(t.join("a/g"), "g").unwrap();
        let w = Watch {
            target: "test/late".into(),
            mountpoint: mp,
        };
        let (fan, kernel, with_fsid) = match open_group(std::slice::from_ref(&w)) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("live fanotify test did not run: {e}");
                return;
            }
        };
        // the fallback group (no child handles) cannot name the folders: nothing to check then
        let has_target_fid = fanotify_init(
            libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_REPORT_DFID_NAME_TARGET,
        )
        .is_ok();
        fs::set_permissions(
            t.join("a/b"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        fs::remove_dir_all(t.join("a")).unwrap();
        let mut state = State::new(kernel, &with_fsid, vec![], 1000);
        let mut buf = vec![0u8; READ_BUF];
        drain(&fan, &mut buf, &mut state);
        let r = state.finish().targets.remove(0);
        let mine: Vec<(String, Ev, bool)> = r
            .paths
            .iter()
            .filter(|(k, _)| k.starts_with(&t) && **k != t)
            .map(|(k, v)| {
                (
                    k.strip_prefix(&t).unwrap().display().to_string(),
                    v.first,
                    v.dir,
                )
            })
            .collect();
        eprintln!("late: {mine:?}, unresolved {}", r.unresolved);
        if !has_target_fid {
            return;
        }
        assert_eq!(
            mine,
            vec![
                ("a".to_string(), Ev::Deleted, true),
                ("a/b".to_string(), Ev::Attrib, true),
                ("a/b/c".to_string(), Ev::Deleted, true),
                ("a/b/c/f".to_string(), Ev::Deleted, false),
                ("a/g".to_string(), Ev::Deleted, false),
            ]
        );
    }
}

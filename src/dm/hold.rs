//! One moment for a set of snapshots. lvm2 snapshots one LV at a time; an application that
//! writes to two volumes (a database's log on one, its data on another) needs both snapshots to
//! show the same instant. So guard suspends every origin of the set first, each with its
//! filesystem frozen, then lets lvcreate snapshot them one by one; each origin resumes as its
//! snapshot is taken.
//!
//! Why device-mapper suspends and not FIFREEZE: on kernels before 6.8 a filesystem frozen by
//! FIFREEZE cannot be frozen again by the suspend lvcreate makes, which fails with EBUSY and
//! leaves a half-made snapshot ("Manual intervention required"; measured on Debian 12's 6.1). A
//! device-mapper suspend freezes the filesystem through its block device (freeze_bdev), which
//! lvm2's own suspend nests into; lvm2 finds the origin already suspended and goes on.
//!
//! While an origin is suspended nothing may wait on it: lvcreate runs with --noudevsync and
//! without metadata backups under /etc/lvm (which may be on a suspended volume); guard writes
//! the backups afterwards with vgcfgbackup.
//!
//! The hold has a hard time limit, and it is released on every path: Drop resumes; a separate
//! watchdog process resumes when the limit passes or guard dies (even by SIGKILL), because a
//! suspended `/` would leave nobody able to log in and run `dmsetup resume`.
use crate::dm::{self, Control};
use crate::error::{Error, Result};
use crate::ui;
use nix::unistd::{fork, ForkResult, Pid};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::time::{Duration, Instant};

pub const DEFAULT_LIMIT: Duration = Duration::from_secs(20);

pub struct Held {
    ctl: Control,
    /// Devices guard suspended and has not yet seen resumed.
    names: Vec<String>,
    watchdog: Option<Watchdog>,
    started: Instant,
    limit: Duration,
}

/// Suspends the devices in order. On an error, those already suspended are resumed.
pub fn hold(names: &[String], limit: Duration) -> Result<Held> {
    // Flush first, so the freezes inside the suspends are short.
    nix::unistd::sync();
    let ctl = Control::open()?;
    let watchdog = Watchdog::start(&ctl, names, limit)?;
    let mut held = Held {
        ctl,
        names: Vec::new(),
        watchdog: Some(watchdog),
        started: Instant::now(),
        limit,
    };
    for n in names {
        held.ctl.suspend(n)?;
        held.names.push(n.clone());
    }
    ui::say(&format!(
        "holding {} volume(s) at one moment (filesystems frozen, I/O queued; limit {})",
        names.len(),
        humantime::format_duration(limit)
    ));
    Ok(held)
}

impl Held {
    /// Past the limit the watchdog has resumed everything: the snapshots taken since may not
    /// describe one moment.
    pub fn overdue(&self) -> bool {
        self.started.elapsed() >= self.limit
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Resumes every device still suspended and stops the watchdog.
    pub fn release(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        for n in self.names.drain(..) {
            if self.ctl.is_suspended(&n) {
                if let Err(e) = self.ctl.resume(&n) {
                    errors.push(e.to_string());
                }
            }
        }
        if let Some(w) = self.watchdog.take() {
            w.stop();
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Other(errors.join("; ")))
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            ui::error(&format!("cannot resume a held volume: {e}"));
        }
    }
}

/// A forked process that resumes the devices if guard does not say "done" within the limit.
struct Watchdog {
    pid: Pid,
    tx: OwnedFd,
}

impl Watchdog {
    fn start(ctl: &Control, names: &[String], limit: Duration) -> Result<Watchdog> {
        // Everything the child needs is built before fork: after it, only async-signal-safe
        // calls (guard has threads).
        let mut reqs = names
            .iter()
            .map(|n| dm::dev_request(n, 0))
            .collect::<Result<Vec<_>>>()?;
        let fd = ctl.raw_fd();
        let ms = limit.as_millis().min(i32::MAX as u128) as libc::c_int;
        let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::Other(format!("cannot make a pipe: {e}")))?;
        // SAFETY: the child only calls signal, setsid, close, poll, read, ioctl and _exit.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => unsafe {
                for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
                    libc::signal(s, libc::SIG_IGN);
                }
                libc::setsid();
                libc::close(tx.into_raw_fd());
                let rfd = rx.as_raw_fd();
                let mut pfd = libc::pollfd {
                    fd: rfd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                let mut r = libc::poll(&mut pfd, 1, ms);
                // EINTR cannot come from the ignored signals; retry a few times anyway
                let mut tries = 0;
                while r < 0 && tries < 3 {
                    r = libc::poll(&mut pfd, 1, ms);
                    tries += 1;
                }
                if r > 0 {
                    let mut b = [0u8; 1];
                    if libc::read(rfd, b.as_mut_ptr() as *mut libc::c_void, 1) == 1 && b[0] == b'k'
                    {
                        libc::_exit(0);
                    }
                }
                // timeout, or guard is gone (EOF): resume all; resuming a running device is a no-op
                for req in reqs.iter_mut() {
                    dm::raw_suspend_ioctl(fd, req);
                }
                libc::_exit(1);
            },
            Ok(ForkResult::Parent { child }) => {
                drop(rx);
                Ok(Watchdog { pid: child, tx })
            }
            Err(e) => Err(Error::Other(format!("cannot start the hold watchdog: {e}"))),
        }
    }

    fn stop(self) {
        let _ = nix::unistd::write(&self.tx, b"k");
        drop(self.tx);
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

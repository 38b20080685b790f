//! Device-mapper status straight from the kernel (the DM_TABLE_STATUS ioctl on
//! /dev/mapper/control): one ioctl costs microseconds, where `lvs` costs ~0.2 s in the VM and
//! takes the VG lock, and `dmsetup status` ~0.04 s. The watcher reads this many times a second.
//! Written by hand against <linux/dm-ioctl.h> instead of the devicemapper crate, which needs
//! bindgen, libclang and libdevmapper-dev to build, for the one ioctl guard uses.
pub mod freeze;
pub mod hold;
use crate::error::{Error, Result};
use std::fs::File;
use std::os::fd::AsRawFd;

const DM_NAME_LEN: usize = 128;
/// sizeof(struct dm_ioctl)
const IOCTL_SIZE: usize = 312;
/// sizeof(struct dm_target_spec)
const SPEC_SIZE: usize = 40;
const DM_BUFFER_FULL_FLAG: u32 = 1 << 8;
/// thin-pool: report without committing metadata first
const DM_NOFLUSH_FLAG: u32 = 1 << 11;
/// _IOWR(0xfd, DM_TABLE_STATUS_CMD = 12, struct dm_ioctl)
const DM_TABLE_STATUS: libc::c_ulong =
    (3 << 30) | ((IOCTL_SIZE as libc::c_ulong) << 16) | (0xfd << 8) | 12;

/// One target line of a device's status: what `dmsetup status NAME` prints after the name.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetStatus {
    pub start: u64,
    pub length: u64,
    pub target_type: String,
    pub params: String,
}

pub struct Control {
    file: File,
}

impl Control {
    pub fn open() -> Result<Control> {
        let file = File::open("/dev/mapper/control")
            .map_err(|e| Error::io("cannot open /dev/mapper/control", e))?;
        Ok(Control { file })
    }

    /// The status of device `name` (as in /dev/mapper/NAME).
    pub fn status(&self, name: &str) -> Result<Vec<TargetStatus>> {
        if name.len() >= DM_NAME_LEN {
            return Err(Error::Other(format!("device-mapper name too long: {name}")));
        }
        // status lines are short: 4 KiB holds dozens of targets; it grows when the kernel says so
        let mut size = 4 * 1024;
        loop {
            // u64 words: the kernel reads the struct with 8-byte alignment
            let mut buf = vec![0u64; size / 8];
            let bytes: &mut [u8] =
                // SAFETY: reinterpreting an owned u64 buffer as bytes of the same length.
                unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut u8, size) };
            put_u32(bytes, 0, 4); // version 4.0.0
            put_u32(bytes, 12, size as u32); // data_size
            put_u32(bytes, 16, IOCTL_SIZE as u32); // data_start
            put_u32(bytes, 28, DM_NOFLUSH_FLAG); // flags
            bytes[48..48 + name.len()].copy_from_slice(name.as_bytes());
            // SAFETY: the buffer is `size` bytes, as data_size tells the kernel.
            let r = unsafe {
                libc::ioctl(
                    self.file.as_raw_fd(),
                    DM_TABLE_STATUS as _,
                    buf.as_mut_ptr(),
                )
            };
            let bytes: &[u8] =
                // SAFETY: as above.
                unsafe { std::slice::from_raw_parts(buf.as_ptr() as *const u8, size) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                return Err(Error::io(format!("device-mapper status of {name}"), e));
            }
            if get_u32(bytes, 28) & DM_BUFFER_FULL_FLAG != 0 && size < (1 << 22) {
                size *= 4;
                continue;
            }
            return Ok(parse_specs(bytes));
        }
    }
}

/// _IOWR(0xfd, DM_DEV_SUSPEND_CMD = 6, struct dm_ioctl): suspends, or resumes without the flag
const DM_DEV_SUSPEND: libc::c_ulong =
    (3 << 30) | ((IOCTL_SIZE as libc::c_ulong) << 16) | (0xfd << 8) | 6;
const DM_SUSPEND_FLAG: u32 = 1 << 1;

/// A `struct dm_ioctl` naming one device, with no payload: what DM_DEV_SUSPEND takes. Built
/// ahead of time so that a forked watchdog can issue it without allocating.
pub fn dev_request(name: &str, flags: u32) -> Result<Vec<u64>> {
    if name.len() >= DM_NAME_LEN {
        return Err(Error::Other(format!("device-mapper name too long: {name}")));
    }
    let mut buf = vec![0u64; IOCTL_SIZE.div_ceil(8)];
    // SAFETY: reinterpreting an owned u64 buffer as bytes of the same length.
    let bytes: &mut [u8] =
        unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut u8, buf.len() * 8) };
    put_u32(bytes, 0, 4);
    put_u32(bytes, 12, IOCTL_SIZE as u32);
    put_u32(bytes, 16, IOCTL_SIZE as u32);
    put_u32(bytes, 28, flags);
    bytes[48..48 + name.len()].copy_from_slice(name.as_bytes());
    Ok(buf)
}

/// Issues DM_DEV_SUSPEND with a prepared request; async-signal-safe (one ioctl).
pub fn raw_suspend_ioctl(fd: libc::c_int, req: &mut [u64]) -> libc::c_int {
    // SAFETY: `req` is a dm_ioctl of IOCTL_SIZE bytes built by dev_request.
    unsafe { libc::ioctl(fd, DM_DEV_SUSPEND as _, req.as_mut_ptr()) }
}

impl Control {
    pub fn raw_fd(&self) -> libc::c_int {
        self.file.as_raw_fd()
    }

    /// Suspends a device the way `dmsetup suspend` does: its filesystem, if any, is frozen
    /// through the block device (freeze_bdev, which lvm2's own suspends can nest into, unlike
    /// FIFREEZE on kernels before 6.8) and its I/O is queued.
    pub fn suspend(&self, name: &str) -> Result<()> {
        self.suspend_ioctl(name, DM_SUSPEND_FLAG, "suspend")
    }

    /// Resumes a suspended device; a device that is not suspended is left as it is.
    pub fn resume(&self, name: &str) -> Result<()> {
        self.suspend_ioctl(name, 0, "resume")
    }

    /// Whether the device exists and is suspended.
    pub fn is_suspended(&self, name: &str) -> bool {
        let Ok(mut req) = dev_request(name, 0) else {
            return false;
        };
        // DM_DEV_STATUS (cmd 7) reports the flags without changing anything
        const DM_DEV_STATUS: libc::c_ulong =
            (3 << 30) | ((IOCTL_SIZE as libc::c_ulong) << 16) | (0xfd << 8) | 7;
        // SAFETY: as in raw_suspend_ioctl.
        let r = unsafe { libc::ioctl(self.raw_fd(), DM_DEV_STATUS as _, req.as_mut_ptr()) };
        // SAFETY: reading the kernel's answer as bytes.
        let bytes = unsafe { std::slice::from_raw_parts(req.as_ptr() as *const u8, req.len() * 8) };
        r == 0 && get_u32(bytes, 28) & DM_SUSPEND_FLAG != 0
    }

    fn suspend_ioctl(&self, name: &str, flags: u32, what: &str) -> Result<()> {
        let mut req = dev_request(name, flags)?;
        if raw_suspend_ioctl(self.raw_fd(), &mut req) < 0 {
            let e = std::io::Error::last_os_error();
            return Err(Error::io(
                format!("cannot {what} device-mapper device {name}"),
                e,
            ));
        }
        Ok(())
    }
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn get_u64(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn parse_specs(b: &[u8]) -> Vec<TargetStatus> {
    let count = get_u32(b, 20) as usize;
    let data_start = get_u32(b, 16) as usize;
    let data_size = (get_u32(b, 12) as usize).min(b.len());
    let mut out = Vec::with_capacity(count);
    let mut off = data_start;
    for _ in 0..count {
        if off + SPEC_SIZE > data_size {
            break;
        }
        let spec = &b[off..];
        out.push(TargetStatus {
            start: get_u64(spec, 0),
            length: get_u64(spec, 8),
            target_type: cstr(&spec[24..40]),
            params: cstr(&spec[SPEC_SIZE..data_size - off]),
        });
        // `next` is relative to the start of the data area
        off = data_start + get_u32(spec, 20) as usize;
    }
    out
}

/// LVM's device-mapper name for VG/LV: each hyphen in a name doubled, joined by one hyphen.
pub fn dm_name(vg: &str, lv: &str) -> String {
    format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"))
}

/// A thick snapshot's COW use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SnapshotUse {
    /// allocated / total sectors of the COW area, plus metadata sectors
    Used {
        allocated: u64,
        total: u64,
        metadata: u64,
    },
    /// The kernel invalidated it: the rollback point is lost.
    Invalid,
    /// Merging, or another state that reports no use.
    Other,
}

pub fn parse_snapshot(params: &str) -> SnapshotUse {
    let p = params.trim();
    if p.starts_with("Invalid") || p.starts_with("Overflow") {
        return SnapshotUse::Invalid;
    }
    let mut it = p.split_whitespace();
    let (Some(frac), meta) = (it.next(), it.next()) else {
        return SnapshotUse::Other;
    };
    let Some((a, t)) = frac.split_once('/') else {
        return SnapshotUse::Other;
    };
    match (a.parse(), t.parse()) {
        (Ok(allocated), Ok(total)) => SnapshotUse::Used {
            allocated,
            total,
            metadata: meta.and_then(|m| m.parse().ok()).unwrap_or(0),
        },
        _ => SnapshotUse::Other,
    }
}

/// A thin pool's data and metadata use, in blocks, and its mode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolUse {
    pub meta_used: u64,
    pub meta_total: u64,
    pub data_used: u64,
    pub data_total: u64,
    /// `out_of_data_space`: writes queue (or fail) until the pool grows.
    pub out_of_space: bool,
    /// `ro`: the metadata went read-only after an error (or a full metadata device).
    pub read_only: bool,
    /// `needs_check`: the metadata must be repaired before the pool is writable again.
    pub needs_check: bool,
    /// `Fail`: the pool failed; no use can be read.
    pub failed: bool,
}

pub fn parse_thin_pool(params: &str) -> Option<PoolUse> {
    let f: Vec<&str> = params.split_whitespace().collect();
    if f.first().is_some_and(|s| *s == "Fail" || *s == "Error") {
        return Some(PoolUse {
            meta_used: 0,
            meta_total: 1,
            data_used: 0,
            data_total: 1,
            out_of_space: false,
            read_only: false,
            needs_check: false,
            failed: true,
        });
    }
    let frac = |s: &str| -> Option<(u64, u64)> {
        let (a, b) = s.split_once('/')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    };
    let (meta_used, meta_total) = frac(f.get(1)?)?;
    let (data_used, data_total) = frac(f.get(2)?)?;
    Some(PoolUse {
        meta_used,
        meta_total,
        data_used,
        data_total,
        // <transaction> <meta> <data> <held root> ro|rw|out_of_data_space ... needs_check|- ...
        out_of_space: f.get(4).is_some_and(|s| *s == "out_of_data_space"),
        read_only: f.get(4).is_some_and(|s| *s == "ro"),
        needs_check: f.iter().skip(5).any(|s| *s == "needs_check"),
        failed: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dm_names_double_hyphens() {
        assert_eq!(dm_name("vg", "data-snap"), "vg-data--snap");
        assert_eq!(dm_name("my-vg", "a-b-c"), "my--vg-a--b--c");
    }

    #[test]
    fn parses_snapshot_status_seen_in_the_vm() {
        assert_eq!(
            parse_snapshot("4232/16384 32"),
            SnapshotUse::Used {
                allocated: 4232,
                total: 16384,
                metadata: 32
            }
        );
        assert_eq!(parse_snapshot("Invalid"), SnapshotUse::Invalid);
        assert_eq!(parse_snapshot(""), SnapshotUse::Other);
        assert_eq!(parse_snapshot("Merge failed"), SnapshotUse::Other);
    }

    #[test]
    fn parses_thin_pool_status_seen_in_the_vm() {
        let p = parse_thin_pool("2 113/1024 78/640 - rw discard_passdown queue_if_no_space - 256")
            .unwrap();
        assert_eq!(
            (p.meta_used, p.meta_total, p.data_used, p.data_total),
            (113, 1024, 78, 640)
        );
        assert!(!p.out_of_space);
        let p = parse_thin_pool(
            "2 113/1024 640/640 - out_of_data_space discard_passdown queue_if_no_space -",
        )
        .unwrap();
        assert!(p.out_of_space);
        assert!(parse_thin_pool("Fail").unwrap().failed);
        assert!(parse_thin_pool("garbage").is_none());
    }

    #[test]
    fn parses_a_kernel_reply_buffer() {
        // one snapshot target, laid out as the kernel writes it
        let mut b = vec![0u8; 1024];
        put_u32(&mut b, 12, 1024);
        put_u32(&mut b, 16, IOCTL_SIZE as u32);
        put_u32(&mut b, 20, 1);
        let s = IOCTL_SIZE;
        b[s..s + 8].copy_from_slice(&0u64.to_ne_bytes());
        b[s + 8..s + 16].copy_from_slice(&81920u64.to_ne_bytes());
        b[s + 24..s + 32].copy_from_slice(b"snapshot");
        let params = b"24/16384 16\0";
        b[s + SPEC_SIZE..s + SPEC_SIZE + params.len()].copy_from_slice(params);
        let t = parse_specs(&b);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].length, 81920);
        assert_eq!(t[0].target_type, "snapshot");
        assert_eq!(t[0].params, "24/16384 16");
    }
}

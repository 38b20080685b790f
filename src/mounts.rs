//! The mount table, from /proc/self/mountinfo: it carries each mount's device number, which is
//! how a path is tied to an LV (LVM reports the kernel major:minor of every active LV).
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub dev: (u32, u32),
    /// The folder of the filesystem that is mounted here: "/" for the whole filesystem,
    /// else a bind mount of a subfolder.
    pub root: PathBuf,
    pub mountpoint: PathBuf,
    pub options: String,
    pub fstype: String,
    pub source: String,
    pub super_options: String,
}

/// Undo mountinfo's octal escapes (\040 for a space and so on).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            let (maj, min) = l.get(2)?.split_once(':')?;
            Some(Mount {
                dev: (maj.parse().ok()?, min.parse().ok()?),
                root: PathBuf::from(unescape(l.get(3)?)),
                mountpoint: PathBuf::from(unescape(l.get(4)?)),
                options: l.get(5)?.to_string(),
                fstype: r.first()?.to_string(),
                source: unescape(r.get(1).unwrap_or(&"")),
                super_options: r.get(2).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

pub fn read() -> Result<Vec<Mount>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("cannot read /proc/self/mountinfo", e))?;
    Ok(parse(&text))
}

/// The mount that holds `path` (already canonical): the last, longest matching mount point,
/// since a later mount over the same point hides the earlier one.
pub fn containing<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| path.starts_with(&m.mountpoint))
        .max_by_key(|(i, m)| (m.mountpoint.components().count(), *i))
        .map(|(_, m)| m)
}

/// Every place a device is mounted, deepest first (the order to unmount in).
pub fn of_device(mounts: &[Mount], dev: (u32, u32)) -> Vec<Mount> {
    let mut v: Vec<Mount> = mounts.iter().filter(|m| m.dev == dev).cloned().collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.mountpoint.components().count()));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
1 1 0:2 / / rw - rootfs rootfs rw
25 1 253:7 / /mnt/d rw,relatime - ext4 /dev/vg/data rw
26 1 253:0 / /mnt/with\\040space rw,relatime shared:1 - xfs /dev/mapper/vg-thin rw,stripe=64
27 25 253:3 / /mnt/d/inner ro,relatime - ext4 /dev/vg/inner ro
";

    #[test]
    fn parses_guest_mountinfo_fixture() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/mountinfo-guest.txt"
        ))
        .unwrap();
        let m = parse(&text);
        let d = m
            .iter()
            .find(|m| m.mountpoint == Path::new("/mnt/d"))
            .unwrap();
        assert_eq!(d.dev, (253, 7));
        assert_eq!(d.fstype, "ext4");
    }

    #[test]
    fn parses_escapes_and_optional_fields() {
        let m = parse(SAMPLE);
        assert_eq!(m.len(), 4);
        assert_eq!(m[2].mountpoint, PathBuf::from("/mnt/with space"));
        assert_eq!(m[2].fstype, "xfs");
        assert_eq!(m[2].source, "/dev/mapper/vg-thin");
        assert_eq!(m[0].root, PathBuf::from("/"));
    }

    #[test]
    fn a_bind_mount_of_a_subfolder_keeps_its_root() {
        let m = parse(
            "30 1 253:7 /sub/dir /srv/x rw,nosuid - ext4 /dev/vg/data rw,errors=remount-ro\n",
        );
        assert_eq!(m[0].root, PathBuf::from("/sub/dir"));
        assert_eq!(m[0].mountpoint, PathBuf::from("/srv/x"));
    }

    #[test]
    fn finds_the_mount_holding_a_path() {
        let m = parse(SAMPLE);
        assert_eq!(
            containing(&m, Path::new("/mnt/d/x/y")).unwrap().dev,
            (253, 7)
        );
        assert_eq!(
            containing(&m, Path::new("/mnt/d/inner/z")).unwrap().dev,
            (253, 3)
        );
        assert_eq!(containing(&m, Path::new("/etc")).unwrap().fstype, "rootfs");
        assert_eq!(of_device(&m, (253, 7)).len(), 1);
    }
}

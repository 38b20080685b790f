//! Snapshot sizes as admins write them: `2G`, `512M` (binary units, as lvcreate -L reads them;
//! a bare number is MiB like lvcreate's), `20%ORIGIN`, `10%FREE` (of the VG's free space).
use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SizeSpec {
    Bytes(u64),
    PercentOrigin(f64),
    PercentFree(f64),
}

/// Why 20% of the origin: a package upgrade or deployment rewrites a small part of a filesystem,
/// and a fifth leaves room for that without taking much of a typical VG's free space; the COW
/// watcher extends the snapshot further when a command writes more.
pub const DEFAULT_SIZE: SizeSpec = SizeSpec::PercentOrigin(20.0);

const FIX: &str = "write it like 2G, 512M, 20%ORIGIN or 10%FREE";

impl FromStr for SizeSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        let bad = |why: &str| Error::refused(format!("invalid size {s:?}: {why}"), FIX);
        if t.is_empty() {
            return Err(bad("it is empty"));
        }
        if t.starts_with('-') {
            return Err(bad("a size cannot be negative"));
        }
        if let Some((num, of)) = t.split_once('%') {
            let pct: f64 = num
                .parse()
                .map_err(|_| bad("the percentage is not a number"))?;
            if pct.is_nan() || pct <= 0.0 {
                return Err(bad("the percentage must be greater than 0"));
            }
            if pct > 100.0 {
                return Err(bad("more than 100% cannot be allocated"));
            }
            return match of.to_ascii_uppercase().as_str() {
                "ORIGIN" => Ok(SizeSpec::PercentOrigin(pct)),
                "FREE" => Ok(SizeSpec::PercentFree(pct)),
                _ => Err(bad("after % comes ORIGIN or FREE")),
            };
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| bad("it does not start with a number"))?;
        let unit = unit.trim().to_ascii_uppercase();
        let unit = unit.trim_end_matches("IB").trim_end_matches('B');
        let mult: u64 = match unit {
            "" | "M" => 1 << 20,
            "K" => 1 << 10,
            "G" => 1 << 30,
            "T" => 1 << 40,
            "S" => 512,
            _ => return Err(bad("unknown unit (use K, M, G or T)")),
        };
        let bytes = n * mult as f64;
        if bytes.is_nan() || bytes < 1.0 {
            return Err(bad("it must be greater than zero"));
        }
        if bytes > (1u64 << 60) as f64 {
            return Err(bad("it is larger than any volume group"));
        }
        Ok(SizeSpec::Bytes(bytes.ceil() as u64))
    }
}

impl fmt::Display for SizeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeSpec::Bytes(b) => write!(f, "{}", human(*b)),
            SizeSpec::PercentOrigin(p) => write!(f, "{p}%ORIGIN"),
            SizeSpec::PercentFree(p) => write!(f, "{p}%FREE"),
        }
    }
}

impl SizeSpec {
    /// The COW size in bytes, rounded up to whole extents (never less than one).
    pub fn resolve(&self, origin_bytes: u64, vg_free: u64, extent: u64) -> u64 {
        let raw = match *self {
            SizeSpec::Bytes(b) => b,
            SizeSpec::PercentOrigin(p) => (origin_bytes as f64 * p / 100.0).ceil() as u64,
            SizeSpec::PercentFree(p) => (vg_free as f64 * p / 100.0).floor() as u64,
        };
        let extent = extent.max(1);
        raw.div_ceil(extent).max(1) * extent
    }
}

/// Bytes as an admin reads them: 8.0MiB, 1.5GiB.
pub fn human(b: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_admins_write() {
        assert_eq!("2G".parse::<SizeSpec>().unwrap(), SizeSpec::Bytes(2 << 30));
        assert_eq!(
            "512M".parse::<SizeSpec>().unwrap(),
            SizeSpec::Bytes(512 << 20)
        );
        assert_eq!(
            "512MiB".parse::<SizeSpec>().unwrap(),
            SizeSpec::Bytes(512 << 20)
        );
        assert_eq!(
            "1.5g".parse::<SizeSpec>().unwrap(),
            SizeSpec::Bytes(3 << 29)
        );
        assert_eq!("64".parse::<SizeSpec>().unwrap(), SizeSpec::Bytes(64 << 20));
        assert_eq!(
            "20%ORIGIN".parse::<SizeSpec>().unwrap(),
            SizeSpec::PercentOrigin(20.0)
        );
        assert_eq!(
            "10%free".parse::<SizeSpec>().unwrap(),
            SizeSpec::PercentFree(10.0)
        );
    }

    #[test]
    fn refuses_nonsense_with_the_reason() {
        for (s, why) in [
            ("0", "greater than zero"),
            ("0G", "greater than zero"),
            ("-5G", "negative"),
            ("200%FREE", "more than 100%"),
            ("0%ORIGIN", "greater than 0"),
            ("abc", "number"),
            ("5X", "unknown unit"),
            ("10%VG", "ORIGIN or FREE"),
            ("", "empty"),
        ] {
            let e = s.parse::<SizeSpec>().unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
            assert!(e.contains("fix:"), "{s}: {e}");
        }
    }

    #[test]
    fn resolves_to_whole_extents() {
        let ext = 4 << 20;
        assert_eq!(SizeSpec::Bytes(1).resolve(0, 0, ext), ext);
        assert_eq!(
            SizeSpec::PercentOrigin(20.0).resolve(200 << 20, 0, ext),
            40 << 20
        );
        assert_eq!(
            SizeSpec::PercentOrigin(20.0).resolve(100 << 20, 0, ext),
            20 << 20
        );
        assert_eq!(SizeSpec::PercentOrigin(20.0).resolve(10 << 20, 0, ext), ext);
        assert_eq!(
            SizeSpec::PercentFree(50.0).resolve(0, 100 << 20, ext),
            52 << 20
        );
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(8 << 20), "8.0MiB");
        assert_eq!(human(1536 << 20), "1.5GiB");
        assert_eq!(human(12), "12B");
    }
}

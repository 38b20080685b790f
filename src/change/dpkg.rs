//! Packages a run installed, upgraded, removed or left broken, from dpkg's status database
//! before and after. Only the three fields that matter are read: a Debian server's status file
//! is a few MiB and this runs once per run that touched it.
use crate::model::change::{PackageChange, PackageChangeKind};
use std::collections::BTreeMap;
use std::path::Path;

/// Where dpkg keeps its database, relative to a root.
pub const STATUS: &str = "var/lib/dpkg/status";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkg {
    pub version: String,
    /// dpkg's third status word: installed, half-configured, unpacked, config-files, …
    pub state: String,
}

/// package (with `:arch` when not the native or `all`) → version and state. Packages that are
/// merely known (not-installed) are left out.
pub fn parse(text: &str) -> BTreeMap<String, Pkg> {
    let mut out = BTreeMap::new();
    for stanza in text.split("\n\n") {
        let (mut name, mut arch, mut version, mut state) = (None, None, None, None);
        for line in stanza.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Architecture: ") {
                arch = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Status: ") {
                state = v.split_whitespace().nth(2);
            }
        }
        let (Some(name), Some(state)) = (name, state) else {
            continue;
        };
        if state == "not-installed" || state == "config-files" {
            continue;
        }
        // Multi-Arch packages of several architectures share a name
        let key = match arch {
            Some(a) if a != "all" && !native(a) => format!("{name}:{a}"),
            _ => name.to_string(),
        };
        out.insert(
            key,
            Pkg {
                version: version.unwrap_or("").to_string(),
                state: state.to_string(),
            },
        );
    }
    out
}

fn native(arch: &str) -> bool {
    let me = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "i386",
        other => other,
    };
    arch == me
}

pub fn read(root: &Path) -> Option<BTreeMap<String, Pkg>> {
    std::fs::read_to_string(root.join(STATUS))
        .ok()
        .map(|t| parse(&t))
}

/// Compares Debian versions well enough to tell an upgrade from a downgrade: dpkg's ordering
/// (epoch, then upstream and revision compared as alternating non-digit/digit runs, `~` first).
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    fn split(v: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, r)) if e.chars().all(|c| c.is_ascii_digit()) => (e.parse().unwrap_or(0), r),
            _ => (0, v),
        };
        match rest.rsplit_once('-') {
            Some((u, r)) => (epoch, u, r),
            None => (epoch, rest, ""),
        }
    }
    fn order(c: Option<u8>) -> i32 {
        match c {
            Some(b'~') => -1,
            None => 0,
            Some(c) if c.is_ascii_alphabetic() => c as i32,
            Some(c) => c as i32 + 256,
        }
    }
    fn part(a: &str, b: &str) -> std::cmp::Ordering {
        use std::cmp::Ordering::Equal;
        let (a, b) = (a.as_bytes(), b.as_bytes());
        let (mut i, mut j) = (0, 0);
        let letter = |s: &[u8], k: usize| s.get(k).copied().filter(|c| !c.is_ascii_digit());
        while i < a.len() || j < b.len() {
            // a run of non-digits, compared character by character
            while letter(a, i).is_some() || letter(b, j).is_some() {
                let (ca, cb) = (letter(a, i), letter(b, j));
                match order(ca).cmp(&order(cb)) {
                    Equal => {}
                    o => return o,
                }
                i += ca.is_some() as usize;
                j += cb.is_some() as usize;
            }
            // then a run of digits, compared as a number
            let number = |s: &[u8], k: &mut usize| {
                let mut n: u128 = 0;
                while let Some(d) = s.get(*k).filter(|c| c.is_ascii_digit()) {
                    n = n.saturating_mul(10).saturating_add((d - b'0') as u128);
                    *k += 1;
                }
                n
            };
            match number(a, &mut i).cmp(&number(b, &mut j)) {
                Equal => {}
                o => return o,
            }
        }
        Equal
    }
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| part(ua, ub))
        .then_with(|| part(ra, rb))
}

pub fn diff(before: &BTreeMap<String, Pkg>, after: &BTreeMap<String, Pkg>) -> Vec<PackageChange> {
    let mut out = Vec::new();
    for (name, new) in after {
        let old = before.get(name);
        let broken = new.state != "installed";
        let kind = match old {
            _ if broken => PackageChangeKind::Broken,
            None => PackageChangeKind::Installed,
            Some(o) if o.version == new.version && o.state == new.state => continue,
            Some(o) => match compare_versions(&new.version, &o.version) {
                std::cmp::Ordering::Less => PackageChangeKind::Downgraded,
                // same version reinstalled after being broken counts as an upgrade of state
                _ => PackageChangeKind::Upgraded,
            },
        };
        // a package broken before and still broken the same way is not this run's doing
        if broken && old == Some(new) {
            continue;
        }
        out.push(PackageChange {
            kind,
            package: name.clone(),
            old: old.map(|o| o.version.clone()),
            new: Some(new.version.clone()),
            state: broken.then(|| new.state.clone()),
        });
    }
    for (name, old) in before {
        if !after.contains_key(name) {
            out.push(PackageChange {
                kind: PackageChangeKind::Removed,
                package: name.clone(),
                old: Some(old.version.clone()),
                new: None,
                state: None,
            });
        }
    }
    out.sort_by(|a, b| (a.kind, &a.package).cmp(&(b.kind, &b.package)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering::*;

    const BEFORE: &str =
        "Package: a\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.0-1\n\n\
Package: b\nStatus: install ok installed\nArchitecture: all\nVersion: 2.0\n\n\
Package: gone\nStatus: install ok installed\nArchitecture: amd64\nVersion: 3\n\n\
Package: old\nStatus: deinstall ok config-files\nVersion: 1\n\n\
Package: same\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5\n";

    const AFTER: &str =
        "Package: a\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.0-2\n\n\
Package: b\nStatus: install ok installed\nArchitecture: all\nVersion: 1.9\n\n\
Package: new\nStatus: install ok installed\nArchitecture: amd64\nVersion: 0.1\n\n\
Package: bad\nStatus: install ok half-configured\nArchitecture: amd64\nVersion: 9\n\n\
Package: same\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5\n";

    #[test]
    fn versions_compare_as_dpkg_does() {
        assert_eq!(compare_versions("1.0-1", "1.0-2"), Less);
        assert_eq!(compare_versions("1.10", "1.9"), Greater);
        assert_eq!(compare_versions("1:0.1", "9.9"), Greater);
        assert_eq!(compare_versions("1.0~rc1", "1.0"), Less);
        assert_eq!(compare_versions("2.36.1-8+deb12u1", "2.36.1-8"), Greater);
        assert_eq!(compare_versions("1.0", "1.0"), Equal);
        assert_eq!(compare_versions("1.0a", "1.0"), Greater);
    }

    #[test]
    fn the_diff_names_each_kind_with_versions() {
        let d = diff(&parse(BEFORE), &parse(AFTER));
        let line = |c: &PackageChange| {
            format!(
                "{:?} {} {:?} {:?} {:?}",
                c.kind, c.package, c.old, c.new, c.state
            )
        };
        let got: Vec<String> = d.iter().map(line).collect();
        assert_eq!(
            got,
            vec![
                "Installed new None Some(\"0.1\") None",
                "Upgraded a Some(\"1.0-1\") Some(\"1.0-2\") None",
                "Downgraded b Some(\"2.0\") Some(\"1.9\") None",
                "Removed gone Some(\"3\") None None",
                "Broken bad None Some(\"9\") Some(\"half-configured\")",
            ]
        );
    }
}

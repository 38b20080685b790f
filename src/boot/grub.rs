//! GRUB's side of a trial boot, as text: what guard reads from grub.cfg and what it writes to
//! $prefix/guard.cfg. No I/O here, so the parsing is tested on captured configurations.
//!
//! The trial uses only stock GRUB and Debian's conventions: /etc/grub.d/42_guard makes grub.cfg
//! source guard.cfg when it exists, and guard.cfg keeps a counter in the environment block
//! (grubenv, written by `save_env`): armed → booting (the trial entry boots once) → fallback
//! (every later boot, until guard ends the trial). A trial boot that reaches guard's
//! confirmation clears it; one that panics, hangs or fails its checks never does.

/// The menu entry GRUB boots by default (the first top-level one: update-grub puts the newest
/// kernel there): its body lines, between `menuentry ... {` and `}`.
pub fn first_entry(cfg: &str) -> Option<Vec<String>> {
    let mut lines = cfg.lines();
    lines.find(|l| l.starts_with("menuentry ") && l.trim_end().ends_with('{'))?;
    let mut body = Vec::new();
    for l in lines {
        if l.trim_end() == "}" && !l.starts_with(char::is_whitespace) {
            return Some(body);
        }
        body.push(l.to_string());
    }
    None
}

/// Does this grub.cfg source guard.cfg (written by /etc/grub.d/42_guard)?
pub fn sources_guard_cfg(cfg: &str) -> bool {
    cfg.lines()
        .any(|l| l.trim_start().starts_with("source") && l.contains("/guard.cfg"))
}

/// What a boot entry's `linux` line says: the kernel's path as GRUB sees it and its arguments.
#[derive(Debug, PartialEq)]
pub struct LinuxLine {
    pub path: String,
    pub args: Vec<String>,
}

fn is_cmd(line: &str, names: &[&str]) -> bool {
    let first = line.split_whitespace().next().unwrap_or("");
    names.contains(&first)
}

const LINUX: &[&str] = &["linux", "linux16", "linuxefi"];
const INITRD: &[&str] = &["initrd", "initrd16", "initrdefi"];

pub fn linux_line(body: &[String]) -> Option<LinuxLine> {
    let l = body.iter().find(|l| is_cmd(l, LINUX))?;
    let mut w = l.split_whitespace().skip(1);
    Some(LinuxLine {
        path: w.next()?.to_string(),
        args: w.map(str::to_string).collect(),
    })
}

/// The kernel release a path names (/vmlinuz-6.1.0-28-amd64 → 6.1.0-28-amd64).
pub fn release_of(path: &str) -> Option<&str> {
    path.rsplit('/').next()?.strip_prefix("vmlinuz-")
}

/// Where /boot's files are as GRUB sees them: "/" when /boot is its own filesystem, "/boot/"
/// when it is a folder of /.
pub fn boot_prefix(kernel_path: &str) -> &str {
    match kernel_path.rfind('/') {
        Some(i) => &kernel_path[..=i],
        None => "/",
    }
}

/// What guard.cfg needs to know.
pub struct TrialEntries<'a> {
    pub run: &'a str,
    /// The default entry's body (the new state).
    pub body: &'a [String],
    /// The kernel release that ran before the change; its kernel and initramfs were copied to
    /// /boot/guard/RUN/.
    pub old_release: &'a str,
    /// VG/SNAPSHOT of each snapshot the fallback merges back.
    pub merge: &'a [String],
    /// Seconds after a kernel panic before the machine reboots (to the fallback).
    pub panic_secs: u32,
}

/// Copies a body, rewriting its `linux` and `initrd` lines; other lines (modules, search,
/// root) stay as update-grub wrote them.
fn rewrite(
    body: &[String],
    linux: impl Fn(&str, &[String]) -> String,
    initrd: impl Fn() -> Option<String>,
) -> Vec<String> {
    body.iter()
        .map(|l| {
            let indent: String = l.chars().take_while(|c| c.is_whitespace()).collect();
            if is_cmd(l, LINUX) {
                let mut w = l.split_whitespace();
                let cmd = w.next().unwrap_or("linux");
                let path = w.next().unwrap_or("");
                let args: Vec<String> = w.map(str::to_string).collect();
                format!("{indent}{cmd} {}", linux(path, &args))
            } else if is_cmd(l, INITRD) {
                let cmd = l.split_whitespace().next().unwrap_or("initrd");
                match initrd() {
                    Some(p) => format!("{indent}{cmd} {p}"),
                    None => l.clone(),
                }
            } else {
                l.clone()
            }
        })
        .collect()
}

/// Drops arguments guard sets itself (an old panic=, a stale guard.*).
fn without_ours(args: &[String]) -> Vec<String> {
    args.iter()
        .filter(|a| !a.starts_with("panic=") && !a.starts_with("guard."))
        .cloned()
        .collect()
}

/// guard.cfg: the counter and the two entries.
pub fn render(t: &TrialEntries) -> Result<String, String> {
    let Some(linux) = linux_line(t.body) else {
        return Err("the default GRUB entry has no `linux` line".into());
    };
    if !t.body.iter().any(|l| is_cmd(l, INITRD)) {
        return Err("the default GRUB entry has no `initrd` line".into());
    }
    let run = t.run;
    let panic = t.panic_secs;
    let prefix = boot_prefix(&linux.path);
    let trial = rewrite(
        t.body,
        |path, args| {
            let mut a = without_ours(args);
            a.push(format!("panic={panic}"));
            a.push(format!("guard.trial={run}"));
            format!("{path} {}", a.join(" "))
        },
        || None,
    );
    let copies = format!("{prefix}guard/{run}");
    let fallback = rewrite(
        t.body,
        |_, args| {
            let mut a = without_ours(args);
            a.push(format!("panic={panic}"));
            a.push(format!("guard.fallback={run}"));
            a.push(format!("guard.merge={}", t.merge.join(",")));
            format!("{copies}/vmlinuz-{} {}", t.old_release, a.join(" "))
        },
        || Some(format!("{copies}/initrd.img-{}", t.old_release)),
    );
    let mut s = format!(
        "# Written by guard for the trial boot of run {run}; removed when the trial ends.\n\
# GRUB's counter: armed -> booting (the trial entry, once) -> fallback (until guard ends it).\n\
load_env guard_trial guard_run\n\
if [ \"${{guard_run}}\" = \"{run}\" ]; then\n\
  if [ \"${{guard_trial}}\" = \"armed\" ]; then\n\
    set guard_trial=booting\n\
    # the trial only once the counter says so: a trial that panics must not boot again\n\
    if save_env guard_trial; then\n\
      set default=\"guard-trial\"\n\
      set fallback=\"guard-fallback\"\n\
    else\n\
      set default=\"guard-fallback\"\n\
    fi\n\
  elif [ \"${{guard_trial}}\" = \"booting\" ]; then\n\
    set guard_trial=fallback\n\
    save_env guard_trial\n\
    set default=\"guard-fallback\"\n\
  elif [ \"${{guard_trial}}\" = \"fallback\" ]; then\n\
    set default=\"guard-fallback\"\n\
  fi\n\
fi\n"
    );
    let entry = |title: String, id: &str, body: Vec<String>| {
        format!(
            "menuentry '{title}' --id {id} {{\n{}\n}}\n",
            body.join("\n")
        )
    };
    s += &entry(
        format!("guard: trial boot of run {run} (the new state)"),
        "guard-trial",
        trial,
    );
    s += &entry(
        format!("guard: fallback to before run {run} (rolls the change back)"),
        "guard-fallback",
        fallback,
    );
    Ok(s)
}

/// A `key=value` from a kernel command line.
pub fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// `grub-editenv list` output → one variable.
pub fn env_value<'a>(list: &'a str, key: &str) -> Option<&'a str> {
    list.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The top of a grub.cfg made by update-grub on the Debian bed (bookworm, /boot on its own
    // partition, / on vg0/root), shortened.
    const CFG: &str = r#"### BEGIN /etc/grub.d/00_header ###
if [ -s $prefix/grubenv ]; then
  set have_grubenv=true
  load_env
fi
set default="0"
### END /etc/grub.d/00_header ###
### BEGIN /etc/grub.d/10_linux ###
function gfxmode {
	set gfxpayload="${1}"
}
menuentry 'Debian GNU/Linux' --class debian --class gnu-linux --class gnu --class os $menuentry_id_option 'gnulinux-simple-0d4c' {
	load_video
	insmod gzio
	if [ x$grub_platform = xxen ]; then insmod xzio; insmod lzopio; fi
	insmod part_msdos
	insmod ext2
	set root='hd0,msdos1'
	if [ x$feature_platform_search_hint = xy ]; then
	  search --no-floppy --fs-uuid --set=root --hint-bios=hd0,msdos1  5e2a
	else
	  search --no-floppy --fs-uuid --set=root 5e2a
	fi
	echo	'Loading Linux 6.1.0-99-guardtest ...'
	linux	/vmlinuz-6.1.0-99-guardtest root=/dev/mapper/vg0-root ro  console=ttyS0
	echo	'Loading initial ramdisk ...'
	initrd	/initrd.img-6.1.0-99-guardtest
}
submenu 'Advanced options for Debian GNU/Linux' $menuentry_id_option 'gnulinux-advanced-0d4c' {
	menuentry 'Debian GNU/Linux, with Linux 6.1.0-28-amd64' --class debian {
		linux	/vmlinuz-6.1.0-28-amd64 root=/dev/mapper/vg0-root ro  console=ttyS0
	}
}
### END /etc/grub.d/10_linux ###
### BEGIN /etc/grub.d/42_guard ###
if [ -f ${config_directory}/guard.cfg ]; then
  source ${config_directory}/guard.cfg
elif [ -z "${config_directory}" -a -f $prefix/guard.cfg ]; then
  source $prefix/guard.cfg
fi
### END /etc/grub.d/42_guard ###
"#;

    #[test]
    fn finds_the_default_entry_and_its_kernel() {
        let body = first_entry(CFG).unwrap();
        assert!(body.last().unwrap().contains("initrd"));
        let l = linux_line(&body).unwrap();
        assert_eq!(l.path, "/vmlinuz-6.1.0-99-guardtest");
        assert_eq!(release_of(&l.path), Some("6.1.0-99-guardtest"));
        assert_eq!(boot_prefix(&l.path), "/");
        assert_eq!(boot_prefix("/boot/vmlinuz-x"), "/boot/");
        assert!(sources_guard_cfg(CFG));
        assert!(!sources_guard_cfg(&CFG.replace("guard.cfg", "custom.cfg")));
    }

    #[test]
    fn renders_a_trial_and_a_fallback_entry() {
        let body = first_entry(CFG).unwrap();
        let merge = vec!["vg0/root-guard-x".to_string()];
        let run = "20261128-120000-0123456789abcdef";
        let s = render(&TrialEntries {
            run,
            body: &body,
            old_release: "6.1.0-28-amd64",
            merge: &merge,
            panic_secs: 10,
        })
        .unwrap();
        assert!(s.contains(&format!("if [ \"${{guard_run}}\" = \"{run}\" ]")));
        assert!(s.contains(&format!(
            "\tlinux /vmlinuz-6.1.0-99-guardtest root=/dev/mapper/vg0-root ro console=ttyS0 panic=10 guard.trial={run}\n"
        )));
        assert!(s.contains(&format!(
            "\tlinux /guard/{run}/vmlinuz-6.1.0-28-amd64 root=/dev/mapper/vg0-root ro console=ttyS0 panic=10 guard.fallback={run} guard.merge=vg0/root-guard-x\n"
        )));
        assert!(s.contains(&format!(
            "\tinitrd /guard/{run}/initrd.img-6.1.0-28-amd64\n"
        )));
        // the trial boots the new kernel's own initramfs
        assert!(s.contains("\tinitrd\t/initrd.img-6.1.0-99-guardtest\n"));
        assert_eq!(s.matches("menuentry ").count(), 2);
        assert_eq!(s.matches("--id guard-trial {").count(), 1);
        assert_eq!(s.matches("--id guard-fallback {").count(), 1);
    }

    #[test]
    fn an_entry_without_a_kernel_is_refused() {
        let body = vec!["\tchainloader +1".to_string()];
        let r = render(&TrialEntries {
            run: "r",
            body: &body,
            old_release: "x",
            merge: &[],
            panic_secs: 10,
        });
        assert!(r.unwrap_err().contains("linux"));
    }

    #[test]
    fn reads_the_kernel_command_line_and_the_environment() {
        let c = "BOOT_IMAGE=/guard/r/vmlinuz-6 root=/dev/mapper/vg0-root ro guard.fallback=r guard.merge=vg0/s";
        assert_eq!(cmdline_value(c, "guard.fallback"), Some("r"));
        assert_eq!(cmdline_value(c, "guard.merge"), Some("vg0/s"));
        assert_eq!(cmdline_value(c, "guard.trial"), None);
        let env = "# GRUB Environment Block\nguard_trial=booting\nguard_run=r\n";
        assert_eq!(env_value(env, "guard_trial"), Some("booting"));
        assert_eq!(env_value(env, "guard_run"), Some("r"));
    }
}

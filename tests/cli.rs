//! The command line, without privileges or LVM: parsing, refusals that happen before guard looks
//! at the system, exit codes, and the committed completion scripts.
use assert_cmd::Command;
use predicates::prelude::*;

fn guard() -> Command {
    let mut c = Command::cargo_bin("guard").unwrap();
    c.env("GUARD_NO_SYSLOG", "1");
    c
}

mod usage {
    use super::*;

    #[test]
    fn help_lists_exit_codes_and_examples() {
        guard()
            .arg("--help")
            .assert()
            .success()
            .stdout(predicate::str::contains("Exit status:"))
            .stdout(predicate::str::contains("125"))
            .stdout(predicate::str::contains(
                "guard --mount / --mount /var -- apt-get",
            ));
    }

    #[test]
    fn no_arguments_prints_help_and_exits_125() {
        guard()
            .assert()
            .code(125)
            .stdout(predicate::str::contains("Usage:"));
    }

    #[test]
    fn unknown_flag_is_a_usage_error_with_exit_125() {
        guard()
            .args(["--frobnicate", "--", "true"])
            .assert()
            .code(125)
            .stderr(predicate::str::contains("--frobnicate"));
    }

    #[test]
    fn command_words_need_the_double_dash() {
        guard().args(["--lv", "vg/a", "apt-get"]).assert().code(125);
    }
}

mod bad_input {
    use super::*;

    fn refused(args: &[&str], needle: &str) {
        guard()
            .args(args)
            .assert()
            .code(125)
            .stderr(predicate::str::contains(needle))
            .stderr(predicate::str::contains("fix:"));
    }

    #[test]
    fn sizes() {
        refused(
            &["--lv", "vg/a", "--size", "0", "--", "true"],
            "greater than zero",
        );
        refused(&["--lv", "vg/a", "--size", "-5G", "--", "true"], "negative");
        refused(
            &["--lv", "vg/a", "--size", "200%FREE", "--", "true"],
            "more than 100%",
        );
        refused(&["--lv", "vg/a", "--size", "abc", "--", "true"], "number");
    }

    #[test]
    fn durations_and_thresholds() {
        refused(
            &["--lv", "vg/a", "--timeout", "soon", "--", "true"],
            "invalid --timeout",
        );
        refused(
            &["--lv", "vg/a", "--keep", "0s", "--", "true"],
            "--keep must be longer",
        );
        refused(
            &["--lv", "vg/a", "--extend-at", "100", "--", "true"],
            "--extend-at 100 is out of range",
        );
    }

    #[test]
    fn bad_enum_values_name_the_choices() {
        guard()
            .args(["--lv", "vg/a", "--on-failure", "pray", "--", "true"])
            .assert()
            .code(125)
            .stderr(predicate::str::contains("rollback"));
    }
}

mod completions {
    use super::*;

    /// The committed scripts must be what the current CLI generates: regenerate with
    /// `scripts/gen-completions` after changing a flag.
    #[test]
    fn committed_completions_are_current() {
        for (shell, file) in [
            ("bash", "guard.bash"),
            ("zsh", "_guard"),
            ("fish", "guard.fish"),
        ] {
            let out = guard().args(["completions", shell]).output().unwrap();
            assert!(out.status.success());
            let committed =
                std::fs::read(format!("{}/completions/{file}", env!("CARGO_MANIFEST_DIR")))
                    .unwrap_or_default();
            assert!(
                committed == out.stdout,
                "completions/{file} is stale: run scripts/gen-completions and commit"
            );
        }
    }

    #[test]
    fn committed_man_page_is_current_and_has_the_admin_sections() {
        let out = guard().arg("man").output().unwrap();
        assert!(out.status.success());
        let page = String::from_utf8(out.stdout.clone()).unwrap();
        for section in [
            ".SH NAME",
            ".SH SYNOPSIS",
            ".SH OPTIONS",
            ".SH \"EXIT STATUS\"",
            ".SH FILES",
            ".SH EXAMPLES",
        ] {
            assert!(page.contains(section), "man page lacks {section}");
        }
        let committed = std::fs::read(format!("{}/man/guard.8", env!("CARGO_MANIFEST_DIR")))
            .unwrap_or_default();
        assert!(
            committed == out.stdout,
            "man/guard.8 is stale: run scripts/gen-completions and commit"
        );
    }
}

mod output {
    /// `guard policy list | head -1`: a reader that goes away early ends guard's output quietly,
    /// as it does `ls`'s, never with a panic and its exit status 101.
    #[test]
    fn a_reader_that_stops_early_is_no_crash() {
        use std::process::{Command, Stdio};
        let bin = assert_cmd::cargo::cargo_bin("guard");
        for args in [
            &["policy", "list"][..],
            &["policy", "list", "--json"][..],
            &["completions", "bash"][..],
            &["man"][..],
        ] {
            let mut child = Command::new(&bin)
                .args(args)
                .env("GUARD_NO_SYSLOG", "1")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // the reader is gone before guard writes a byte
            drop(child.stdout.take());
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
            assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        }
    }

    /// A reader still there that cannot take it (a full disk) is a failure, said as one.
    #[test]
    fn output_that_cannot_be_written_is_an_error() {
        let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
            return; // no /dev/full here: nothing to show it with
        };
        let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("guard"))
            .args(["policy", "list"])
            .env("GUARD_NO_SYSLOG", "1")
            .stdout(full)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{stderr}");
        assert!(
            stderr.contains("cannot write to standard output"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

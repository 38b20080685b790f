//! guard(1), generated from the one clap definition (clap_mangen) plus the sections an admin
//! looks for in a man page: exit status, files, examples. `scripts/gen-completions` writes it
//! to man/guard.1; a test checks the committed page is current.
use crate::cli::Cli;
use clap::CommandFactory;
use std::io::Write;

const EXTRA: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR\-\fB122\fR
The command's own exit status, passed through (0: success, the change is kept).
.TP
\fB123\fR
The command exited 0 but a health check (\fB\-\-check\fR, or a policy's [[check]]) failed, or
\fBguard rollback RUN\fR asked for the rollback after it ended; the failure policy was applied.
.TP
\fB124\fR
The command ran past \fB\-\-timeout\fR and was stopped.
.TP
\fB125\fR
guard refused or failed before the command ran: nothing was changed.
.TP
\fB126\fR, \fB127\fR
The command cannot be executed, or was not found (nothing was changed).
.TP
\fB128+N\fR
The command was killed by signal N.
.PP
Subcommands exit 0 on success and 125 on error; \fBguard recover\fR exits 1 when something could
not be recovered.
.SH FILES
.TP
\fI/var/lib/guard/runs/RUN.json\fR
The journal: one file per run, written atomically at every phase change (GUARD_STATE_DIR
overrides /var/lib/guard).
.TP
\fI/var/lib/guard/runs/RUN.changes\fR
The paths (and dpkg packages) a run changed, recorded while it ran; read by \fBguard diff\fR.
.TP
\fI/var/lib/guard/saved/RUN/\fR
Copies of paths outside LVM (e.g. /boot) saved before a change, restored on rollback.
.TP
\fI/etc/guard/policies/NAME.toml\fR
Local policies; must be owned by root and not writable by group or others.
.TP
\fI/usr/share/guard/policies/NAME.toml\fR
Shipped policies: apt, dnf, kernel\-upgrade, mysql, postgresql, deploy.
.TP
\fI/run/lock/guard/UUID.lock\fR
One lock per logical volume (by LV UUID), held by the guard that protects it.
.TP
\fIguard\-recover.service\fR, \fIguard\-expire.timer\fR
Finish interrupted runs and deferred rollbacks at boot; commit expired keep windows.
.SH EXAMPLES
.TP
Upgrade a Debian server, rolled back at the next boot if anything breaks:
\fBguard \-\-policy apt \-\- apt\-get \-y dist\-upgrade\fR
.TP
A deployment step with a health check, kept for 30 minutes:
\fBguard \-\-lv vg0/app \-\-check 'curl \-fsS http://127.0.0.1/health' \-\-keep 30m \-\- ./deploy.sh v2.3\fR
.TP
A runbook line, with a machine\-readable report for the pipeline:
\fBguard \-\-mount /srv \-\-timeout 10m \-\-report /tmp/guard.json \-\- /usr/local/bin/migrate \-\-apply\fR
.TP
See what is pending, and undo a kept run:
\fBguard status\fR; \fBguard rollback RUN\fR
.TP
What a run changed (paths, and packages when dpkg ran), and one file's edit:
\fBguard diff RUN\fR; \fBguard diff RUN \-\-content /etc/nginx/nginx.conf\fR
.TP
Take back one path from a kept run's snapshot, leaving the rest of the change:
\fBguard restore RUN /etc/nginx/nginx.conf\fR
.TP
Keep the logs of what went wrong across a rollback:
\fBguard \-\-policy apt \-\-preserve /var/log \-\- apt\-get \-y dist\-upgrade\fR
.TP
Try the command on clones of the volumes first; production is not written to:
\fBguard rehearse \-\-policy apt \-\- apt\-get \-y dist\-upgrade\fR
.SH "SEE ALSO"
\fBlvcreate\fR(8), \fBlvconvert\fR(8), \fBlvmthin\fR(7), \fBjournalctl\fR(1)
"#;

pub fn render(w: &mut dyn Write) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(Cli::command())
        .section("8")
        .manual("System Administration")
        .source(format!("guard {}", env!("CARGO_PKG_VERSION")));
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    man.render_subcommands_section(w)?;
    w.write_all(EXTRA.as_bytes())?;
    man.render_version_section(w)
}

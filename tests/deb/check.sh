#!/bin/bash
# Builds the .deb (scripts/build-deb) and checks what it installs, with dpkg-deb -c and -I.
# The Debian tier (tests/debian/run.sh) then installs this package into the test server.
set -uo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd); cd "$top"
passed=0; failed=0
deb=$(scripts/build-deb | tail -1) || { echo "FAIL deb_builds"; echo "deb: 0 passed, 1 failed"; exit 1; }
echo "PASS deb_builds ($deb, $(du -h "$deb" | cut -f1))"; passed=1
dpkg-deb -c "$deb" > /tmp/guard-deb-contents
dpkg-deb -I "$deb" > /tmp/guard-deb-info
want() {  # MODE PATH: the package holds PATH with permissions MODE
  if grep -qE "^$1 (root/root|0/0) .* \./$2\$" /tmp/guard-deb-contents; then echo "  ok: $2 ($1)"; else echo "  not ok: $2 ($1) missing"; bad=1; fi
}
bad=0
want -rwxr-xr-x usr/sbin/guard
want -rw-r--r-- 'usr/share/man/man8/guard.8(.gz)?'
want -rw-r--r-- usr/share/bash-completion/completions/guard
want -rw-r--r-- usr/share/zsh/vendor-completions/_guard
want -rw-r--r-- usr/share/fish/vendor_completions.d/guard.fish
for p in apt dnf kernel-upgrade mysql postgresql deploy; do want -rw-r--r-- "usr/share/guard/policies/$p.toml"; done
want -rw-r--r-- lib/systemd/system/guard-recover.service
want -rw-r--r-- lib/systemd/system/guard-expire.service
want -rw-r--r-- lib/systemd/system/guard-expire.timer
want -rw-r--r-- lib/systemd/system/guard-watch.service
want -rw-r--r-- usr/lib/tmpfiles.d/guard.conf
# trial boots: the confirmation and deadline units, the fallback's initramfs script, GRUB's generator
want -rw-r--r-- lib/systemd/system/guard-confirm.service
want -rw-r--r-- lib/systemd/system/guard-trial.target
want -rwxr-xr-x usr/share/initramfs-tools/scripts/local-premount/guard
want -rwxr-xr-x etc/grub.d/42_guard
# /run/lock/guard made at boot, root's and 0700: no other user can make it first
if dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/lib/tmpfiles.d/guard.conf | grep -qxE 'd +/run/lock/guard +0700 +root +root +-'; then echo "  ok: tmpfiles.d makes /run/lock/guard 0700 root root"; else echo "  not ok: tmpfiles.d entry for /run/lock/guard"; bad=1; fi
for f in Depends:.*lvm2 'postinst' 'Section: admin'; do
  if grep -qE "$f" /tmp/guard-deb-info; then echo "  ok: control has $f"; else echo "  not ok: control lacks $f"; bad=1; fi
done
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./postinst > /tmp/guard-deb-postinst
if grep -qE 'install -d -m 0700 (-o root -g root )?/var/lib/guard' /tmp/guard-deb-postinst; then echo "  ok: postinst makes /var/lib/guard 0700"; else echo "  not ok: postinst"; bad=1; fi
# guard-trial.target's deadline must never apply to an ordinary boot: guard links it in per trial
if grep -q 'guard-confirm.service' /tmp/guard-deb-postinst && ! grep -q 'guard-trial.target' /tmp/guard-deb-postinst; then echo "  ok: postinst enables guard-confirm.service, not guard-trial.target"; else echo "  not ok: postinst and the trial units"; bad=1; fi
if grep -q 'systemd-tmpfiles --create guard.conf' /tmp/guard-deb-postinst; then echo "  ok: postinst makes /run/lock/guard now"; else echo "  not ok: postinst lacks systemd-tmpfiles --create guard.conf"; bad=1; fi
if [ "$bad" = 0 ]; then echo "PASS deb_contents"; passed=$((passed + 1)); else echo "FAIL deb_contents"; sed 's/^/  | /' /tmp/guard-deb-contents; failed=1; fi
echo "deb: $passed passed, $failed failed"
[ "$failed" = 0 ]

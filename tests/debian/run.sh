#!/bin/bash
# The headline case end to end (issue 7): `guard --policy apt -- apt-get -y dist-upgrade` on a
# real Debian server booted from its root LV (tests/debian/image.sh), driven over ssh on a
# loopback port. Each scenario boots a fresh copy of the pristine disk.
#   tests/debian/run.sh [SCENARIO-PATTERN]
# Prints each check, then "debian: N passed, N failed".
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd); top=$(cd "$here/../.." && pwd)
CACHE=${GUARD_DEBIAN_CACHE:-$HOME/.cache/guard-debian}
pattern=${1:-}
"$here/image.sh" || { echo "debian: 0 passed, 1 failed (image)"; exit 1; }
(cd "$top" && cargo build -q) || exit 1
. "$here/lib.sh"

repo() { g "sed -i 's#file:/srv/repo/[a-z0-9]*#file:/srv/repo/$1#' /etc/apt/sources.list.d/guardtest.list && apt-get update -qq"; }
pkgstate() { g "dpkg-query -W -f='\${Package} \${Version} \${db:Status-Abbrev}\n' 'guardtest-*'; sha256sum /var/lib/dpkg/status /etc/guardtest.conf /usr/lib/guardtest/data"; }
bootstate() { g 'cd /boot && find . -path ./lost+found -prune -o -type f -print | sort | xargs sha256sum'; }
no_guard_lvs() { [ -z "$(g "lvs --noheadings -o lv_name @guard; lvs --noheadings -o lv_merging vg0/root" | tr -d ' \n')" ]; }

# 1. the upgrade breaks: rollback at the next boot, finished and confirmed by guard-recover
if want postinst_fails; then
begin postinst_fails_rollback_at_next_boot
if start_vm; then
  repo bad; pkgstate > "$W/before"; bootstate > "$W/boot-before"
  g 'guard --policy apt -- apt-get -y dist-upgrade' > "$W/out" 2>&1; rc=$?
  cp "$W/out" "$CACHE/scenario1.out"
  check_eq "apt-get's exit status 100 passes through" "$rc" 100
  check_out "warns before running that /boot is not on LVM and is saved" "$W/out" "/boot is not on LVM.*guard saves a copy of /boot"
  check_out "/boot is put back at once, before the reboot" "$W/out" "/boot restored from the copy saved before the change"
  bootstate > "$W/boot-now"
  if cmp -s "$W/boot-before" "$W/boot-now"; then ok "/boot holds the old kernel again before the reboot"; else bad "/boot differs"; diff "$W/boot-before" "$W/boot-now" | sed 's/^/    | /'; fi
  g 'journalctl -o export -t guard GUARD_EVENT=rollback-scheduled' > "$W/journal" 2>&1
  check_out "journal: rollback-scheduled event with its MESSAGE_ID" "$W/journal" "MESSAGE_ID=5c1a0e0f6f3a4d51a3b1c0e9a1d2f015"
  check_out "journal: the event names the LV" "$W/journal" "GUARD_LV=vg0/root"
  check_out "guard says the rollback happens at the next boot" "$W/out" "ROLLBACK SCHEDULED: completes at the next boot"
  g 'dpkg --audit' > "$W/audit" 2>&1
  check_out "before the reboot the damage is real (dpkg --audit)" "$W/audit" "guardtest-bad"
  if reboot_vm; then
    g 'journalctl -b -o cat -u guard-recover.service' > "$W/recover" 2>&1
    cp "$W/recover" "$CACHE/scenario1.recover"
    bootstate > "$W/boot-after"
    if cmp -s "$W/boot-before" "$W/boot-after"; then ok "/boot after the reboot: old kernel, in step with /"; else bad "/boot differs after reboot"; fi
    check_eq "the saved copy is cleaned up" "$(g 'ls /var/lib/guard/saved 2>/dev/null')" ""
    check_out "guard-recover at boot reports the completed rollback" "$W/recover" "vg0/root: rollback of run [0-9a-f-]+ completed"
    pkgstate > "$W/after"
    if cmp -s "$W/before" "$W/after"; then ok "package state byte-for-byte as before (dpkg status, conffile, /usr file)"; else bad "package state differs"; diff "$W/before" "$W/after" | sed 's/^/    | /'; fi
    check_eq "dpkg --audit is clean" "$(g 'dpkg --audit' 2>&1)" ""
    if no_guard_lvs; then ok "no snapshot left, nothing merging"; else bad "snapshots or a merge left"; g 'lvs -a vg0' | sed 's/^/    | /'; fi
    g 'guard status --all' > "$W/status" 2>&1
    check_out "guard status shows the run rolled back" "$W/status" "rolled back: the change was undone"
  else bad "reboot"; fi
  stop_vm
else bad "boot"; fi
end
fi

# 2. a clean upgrade: snapshots removed, upgrade kept, nothing pending
if want clean_upgrade; then
begin clean_upgrade_is_kept
if start_vm; then
  repo good
  g 'guard --policy apt -- apt-get -y dist-upgrade' > "$W/out" 2>&1; rc=$?
  check_eq "exit 0" "$rc" 0
  check_out "dpkg --audit check ran" "$W/out" "health check: dpkg --audit"
  check_out "summary says the change is kept" "$W/out" "snapshots removed, the change is kept"
  check_eq "upgrade kept" "$(g 'cat /usr/share/guardtest/guardtest-ok /usr/lib/guardtest/data /etc/guardtest.conf' | tr '\n' ,)" "guardtest-ok 2.0,data 2.0,setting=2.0,"
  check_eq "/boot has the new kernel only" "$(g 'ls /boot | grep guardtest')" "guardtest-vmlinuz-2.0"
  check_eq "no saved copy left" "$(g 'ls /var/lib/guard/saved 2>/dev/null')" ""
  g 'journalctl -o export -t guard GUARD_EVENT=snapshot-created' > "$W/journal" 2>&1
  check_out "journal: snapshot-created event with GUARD_RUN and GUARD_LV" "$W/journal" "GUARD_LV=vg0/root"
  if no_guard_lvs; then ok "no snapshot left"; else bad "snapshot left"; fi
  check_eq "nothing pending in guard status" "$(g 'guard status' 2>&1 | grep -c 'kept\|scheduled\|running')" 0
  stop_vm
else bad "boot"; fi
end
fi

# 3. kept for 10 minutes, then rolled back by hand after it looked fine but was not
if want keep_then_rollback; then
begin keep_window_then_rollback_after_reboot
if start_vm; then
  repo good; pkgstate > "$W/before"
  g 'guard --policy apt --keep 10m -- apt-get -y dist-upgrade' > "$W/out" 2>&1; rc=$?
  run=$(sed -nE 's/.*run ([0-9]{8}-[0-9]{6}-([0-9a-f]{16}|[0-9a-f]{4}))([^0-9a-f].*)?$/\1/p' "$W/out" | head -1)
  check_eq "exit 0" "$rc" 0
  check_out "kept, with how to commit or roll back" "$W/out" "guard rollback $run"
  check_eq "the snapshot is kept" "$(g "lvs --noheadings -o lv_name @guard-run:$run" | tr -d ' ')" "root-guard-$run"
  if grep -q "no background watcher" "$W/out"; then bad "the kept run was not handed to guard watch"; else ok "the kept run was handed to guard watch"; fi
  check_eq "guard watch runs as the transient unit guard-watch" "$(g 'systemctl is-active guard-watch')" active
  g "guard rollback $run" > "$W/rb" 2>&1; rc=$?
  check_eq "guard rollback exits 0" "$rc" 0
  check_out "rollback of / completes at the next boot" "$W/rb" "next boot"
  if reboot_vm; then
    pkgstate > "$W/after"
    if cmp -s "$W/before" "$W/after"; then ok "the upgrade is undone, byte for byte"; else bad "package state differs"; diff "$W/before" "$W/after" | sed 's/^/    | /'; fi
    if no_guard_lvs; then ok "no snapshot left, nothing merging"; else bad "snapshots or a merge left"; fi
  else bad "reboot"; fi
  stop_vm
else bad "boot"; fi
end
fi

# 4. the SSH session that started guard is cut mid-run
if want ssh_cut; then
begin ssh_session_cut_mid_upgrade
if start_vm; then
  repo good
  ssh -tt -q -i "$CACHE/id_ed25519" -p "$PORT" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    root@127.0.0.1 'guard --policy apt -- sh -c "sleep 8; apt-get -y dist-upgrade"' > "$W/out" 2>&1 &
  sp=$!
  for _ in $(seq 1 60); do g 'guard status' 2>/dev/null | grep -q running && break; sleep 1; done
  kill -9 "$sp" 2>/dev/null; wait "$sp" 2>/dev/null
  # the run goes on without its terminal: wait until it has decided and acted (the rollback of
  # / grows the snapshot and restores /boot, which takes a while under TCG)
  for _ in $(seq 1 180); do g 'guard status --all' 2>/dev/null | grep -qE 'rolled.back|rollback.scheduled|committed' && break; sleep 1; done
  g 'guard status --all' > "$W/status" 2>&1
  for _ in $(seq 1 60); do g 'journalctl -o cat -t guard' 2>/dev/null | grep -qE 'run [0-9-]+[0-9a-f]+: the command (failed|succeeded)' && break; sleep 1; done
  check_out "the run finished without its terminal" "$W/status" "rolled.back|rollback.scheduled|committed"
  g 'journalctl -o cat -t guard' > "$W/log" 2>&1
  check_out "the hangup is in the system log" "$W/log" "terminal hung up"
  check_out "the outcome is in the system log" "$W/log" "run [0-9-]+[0-9a-f]+: the command (failed|succeeded)"
  if reboot_vm; then
    if no_guard_lvs; then ok "after a reboot nothing is left pending"; else bad "left pending"; fi
    check_eq "dpkg --audit is clean" "$(g 'dpkg --audit' 2>&1)" ""
  else bad "reboot"; fi
  stop_vm
else bad "boot"; fi
end
fi

# 5. the package as installed, and Ansible driving a guarded rollout
if want package_and_ansible && [ -n "$DEB" ]; then
begin package_installed_and_ansible_rollout
if start_vm; then
  check_eq "guard-recover.service enabled by the package" "$(g 'systemctl is-enabled guard-recover.service')" enabled
  check_eq "guard-expire.timer enabled" "$(g 'systemctl is-enabled guard-expire.timer')" enabled
  check_eq "/var/lib/guard is 0700 root" "$(g 'stat -c %a:%U /var/lib/guard')" "700:root"
  check_eq "shipped policies under /usr/share/guard/policies" "$(g 'ls /usr/share/guard/policies | tr "\n" " "')" "apt.toml deploy.toml dnf.toml kernel-upgrade.toml mysql.toml postgresql.toml "
  check_eq "bash completion installed" "$(g 'test -f /usr/share/bash-completion/completions/guard && echo yes')" yes
  # ansible-core from PyPI; run as a module so that a fresh pip install needs no PATH change
  if python3 -c 'import ansible' 2>/dev/null || python3 -m pip install -q ansible-core >/dev/null 2>&1; then
    A=$top/contrib/ansible; R=$W/reports; mkdir -p "$R"
    # two names for the one test server: with serial 1 and max_fail_percentage 0, the second
    # must not be reached once the first rolls back
    printf '[fleet]
srv-a
srv-b
[fleet:vars]
ansible_host=127.0.0.1
ansible_port=%s
ansible_user=root
ansible_ssh_private_key_file=%s
ansible_python_interpreter=/usr/bin/python3
' "$PORT" "$CACHE/id_ed25519" > "$W/inventory"
    ( cd "$A" && python3 -m ansible.cli.playbook --syntax-check -i "$W/inventory" guarded-rollout.yml ) > "$W/syntax" 2>&1
    check_out "ansible-playbook --syntax-check" "$W/syntax" "playbook: guarded-rollout.yml"
    repo good
    ( cd "$A" && ANSIBLE_HOST_KEY_CHECKING=False python3 -m ansible.cli.playbook -i "$W/inventory" guarded-rollout.yml -l srv-a \
        -e "{\"guard_command\": [\"apt-get\", \"-y\", \"dist-upgrade\"], \"guard_policy\": \"apt\", \"guard_report_dir\": \"$R\"}" ) > "$W/play1" 2>&1
    cp "$W/play1" "$CACHE/ansible-play1.out"
    check_out "a clean rollout: the host succeeds" "$W/play1" "srv-a +: ok=[0-9]+ +changed=[1-9].*failed=0"
    check_eq "summary: srv-a action committed" "$(python3 -c 'import json,sys; print([r["action"] for r in json.load(open(sys.argv[1]))["reports"] if r["host"]=="srv-a"][0])' "$R/summary.json")" committed
    rm -f "$R"/*.json; repo bad
    ( cd "$A" && ANSIBLE_HOST_KEY_CHECKING=False python3 -m ansible.cli.playbook -i "$W/inventory" guarded-rollout.yml \
        -e "{\"guard_command\": [\"apt-get\", \"-y\", \"dist-upgrade\"], \"guard_policy\": \"apt\", \"guard_report_dir\": \"$R\"}" ) > "$W/play2" 2>&1
    cp "$W/play2" "$CACHE/ansible-play2.out"
    check_out "a breaking rollout: srv-a fails" "$W/play2" "srv-a +: .*failed=1"
    check_out "the role rebooted srv-a to complete the rollback" "$W/play2" "Reboot to complete a rollback"
    if grep -qE "^srv-b +: ok=[1-9]" "$W/play2"; then bad "srv-b was reached after srv-a rolled back"; else ok "the rollout stopped: srv-b untouched"; fi
    check_eq "summary: srv-a rolled back, confirmed after the reboot" "$(python3 -c 'import json,sys; r=[r for r in json.load(open(sys.argv[1]))["reports"] if r["host"]=="srv-a"][0]; print(r["action"], r["after_reboot"]["pending_runs"])' "$R/summary.json")" "rollback-scheduled 0"
    check_eq "the host has the old guardtest-bad again, dpkg clean" "$(g "dpkg-query -W -f='\${Version}' guardtest-bad; dpkg --audit")" "1.0"
  else bad "ansible-core could not be installed"; fi
  stop_vm
else bad "boot"; fi
end
fi

# 6. Trust item 2: / under the apt policy with a full VG. guard freezes /, where its journal
#    lives; it must keep acting (its state goes under /run during the hold): `guard status`
#    answers and `guard rollback RUN` completes from a second session, and the host is usable.
if want frozen_root; then
begin frozen_root_still_answers_and_rolls_back
if start_vm; then
  # a connection opened before the freeze: a new login would write wtmp on the frozen /
  ctl="$W/ctl"
  ssh -q -M -S "$ctl" -fN -i "$CACHE/id_ed25519" -p "$PORT" -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null -o BatchMode=yes root@127.0.0.1
  gm() { timeout "$1" ssh -q -S "$ctl" -p "$PORT" root@127.0.0.1 "${@:2}"; }
  g 'lvcreate -q -y -l 100%FREE -n filler vg0 >/dev/null && lvreduce -q -y -L -24M vg0/filler >/dev/null; echo before > /root/marker; sync'
  g 'guard --policy apt --size 16M -- sh -c "echo during > /root/marker; i=0; while [ \$i -lt 400 ]; do dd if=/dev/zero of=/root/big bs=1M count=1 seek=\$i conv=notrunc oflag=dsync 2>/dev/null; i=\$((i+1)); done"' > "$W/out" 2>&1 &
  gp=$!
  for _ in $(seq 1 150); do grep -q "froze /" "$W/out" && break; sleep 1; done
  check_out "guard froze / (the VG has no room left)" "$W/out" "froze /"
  run=$(sed -nE 's/.*run ([0-9]{8}-[0-9]{6}-([0-9a-f]{16}|[0-9a-f]{4}))([^0-9a-f].*)?$/\1/p' "$W/out" | head -1)
  gm 60 'guard status' > "$W/status" 2>&1; rc=$?
  check_eq "guard status answers during the hold" "$rc" 0
  check_out "and shows the run" "$W/status" "$run"
  check_out "guard says how to free space while / is frozen" "$W/out" "backup\\{backup=0 archive=0\\}"
  # the operator frees space as guard says (a plain lvremove would block archiving on /), then
  # rolls back: the snapshot gets room for all of / before the merge is scheduled
  gm 60 "lvremove -q -y --config 'backup{backup=0 archive=0}' vg0/filler" > "$W/lvremove" 2>&1; rc=$?
  check_eq "lvremove as guard says answers during the hold" "$rc" 0
  gm 60 "guard rollback $run" > "$W/rb" 2>&1; rc=$?
  check_eq "guard rollback RUN answers during the hold" "$rc" 0
  for _ in $(seq 1 120); do kill -0 "$gp" 2>/dev/null || break; sleep 1; done
  if kill -0 "$gp" 2>/dev/null; then bad "guard is still running 2 minutes after the rollback request"; else ok "guard finished after the rollback request"; fi
  check_eq "/ is thawed: writes work" "$(gm 30 'echo x > /root/after && echo written')" written
  check_eq "a new login works" "$(g 'echo in')" in
  check_out "guard schedules the rollback of / for the next boot" "$W/out" "ROLLBACK SCHEDULED: completes at the next boot"
  ssh -q -S "$ctl" -O exit -p "$PORT" root@127.0.0.1 2>/dev/null
  if reboot_vm; then
    check_eq "after the reboot / is as before the run" "$(g 'cat /root/marker; test -e /root/big && echo big')" before
    if no_guard_lvs; then ok "no snapshot left, nothing merging"; else bad "snapshots or a merge left"; g 'lvs -a vg0' | sed 's/^/    | /'; fi
    g 'journalctl -b -o cat -u guard-recover.service' > "$W/recover" 2>&1
    check_out "guard-recover at boot reports the completed rollback" "$W/recover" "vg0/root: rollback of run $run completed"
  else bad "reboot"; fi
  stop_vm
else bad "boot"; fi
end
fi

# 7. issue 14: rehearse the bad upgrade on a clone (the server stays as it was), then keep a good
#    upgrade and see it: guard diff lists the packages with versions, a file's diff, one path back
if want rehearse_and_diff; then
begin rehearse_then_diff_of_a_kept_upgrade
if start_vm; then
  repo bad; pkgstate > "$W/before"; bootstate > "$W/boot-before"
  g 'lvs -a --noheadings -o lv_name,lv_attr,lv_size,origin vg0' > "$W/lvs-before"
  g 'systemctl show -p ActiveEnterTimestamp ssh cron' > "$W/svc-before"
  g 'guard rehearse --policy apt -- apt-get -y dist-upgrade' > "$W/out" 2>&1; rc=$?
  cp "$W/out" "$CACHE/rehearse.out"
  check_eq "the rehearsal passes apt-get's exit status through (100)" "$rc" 100
  check_out "it reports the failing package" "$W/out" "broken +guardtest-bad 2.0 left (half-configured|unpacked|half-installed)"
  check_out "and what the upgrade did to the others" "$W/out" "upgraded +guardtest-ok 1.0 -> 2.0"
  check_out "it names changed paths" "$W/out" "/usr/share/guardtest/guardtest-ok"
  check_out "it says the kernel file it wrote in /boot is outside the protected volumes" "$W/out" "wrote outside the protected volumes, under /boot"
  check_out "it says what a rehearsal cannot show" "$W/out" "does not show: services"
  pkgstate > "$W/after"; bootstate > "$W/boot-after"
  if cmp -s "$W/before" "$W/after"; then ok "the server's packages are as they were (dpkg status, conffile, /usr file)"; else bad "package state changed"; diff "$W/before" "$W/after" | sed 's/^/    | /'; fi
  if cmp -s "$W/boot-before" "$W/boot-after"; then ok "/boot is as it was"; else bad "/boot changed"; fi
  check_eq "dpkg --audit is clean" "$(g 'dpkg --audit' 2>&1)" ""
  g 'lvs -a --noheadings -o lv_name,lv_attr,lv_size,origin vg0' > "$W/lvs-after"
  if cmp -s "$W/lvs-before" "$W/lvs-after"; then ok "LVM as it was (no clone left)"; else bad "LVM changed"; diff "$W/lvs-before" "$W/lvs-after" | sed 's/^/    | /'; fi
  g 'systemctl show -p ActiveEnterTimestamp ssh cron' > "$W/svc-after"
  if cmp -s "$W/svc-before" "$W/svc-after"; then ok "no service was restarted"; else bad "a service was restarted"; fi
  repo good
  g 'guard --policy apt --keep 1h -- apt-get -y dist-upgrade' > "$W/out2" 2>&1; rc=$?
  run=$(sed -nE 's/.*run ([0-9]{8}-[0-9]{6}-([0-9a-f]{16}|[0-9a-f]{4}))([^0-9a-f].*)?$/\1/p' "$W/out2" | head -1)
  check_eq "the good upgrade is kept" "$rc" 0
  g "guard diff $run" > "$W/diff" 2>&1
  cp "$W/diff" "$CACHE/diff.out"
  check_out "guard diff lists the upgraded packages with versions" "$W/diff" "upgraded +guardtest-ok 1.0 -> 2.0"
  check_out "all of them" "$W/diff" "upgraded +guardtest-conf 1.0 -> 2.0"
  check_out "and the changed conffile" "$W/diff" "c /etc/guardtest.conf"
  g "guard diff --content /etc/guardtest.conf $run" > "$W/content" 2>&1
  check_out "guard diff --content shows the conffile's old line" "$W/content" "^-setting=1.0"
  check_out "and its new one" "$W/content" "^\+setting=2.0"
  g "guard restore $run /etc/guardtest.conf" > "$W/restore" 2>&1; rc=$?
  check_eq "guard restore of one conffile exits 0" "$rc" 0
  check_eq "the conffile is as before" "$(g 'cat /etc/guardtest.conf')" "setting=1.0"
  check_eq "the rest of the upgrade stays" "$(g 'cat /usr/lib/guardtest/data')" "data 2.0"
  g "guard commit $run" > "$W/commit" 2>&1
  if no_guard_lvs; then ok "committed: no snapshot left"; else bad "snapshot left"; fi
  stop_vm
else bad "boot"; fi
end
fi

if want package_and_ansible && [ -z "$DEB" ]; then
  begin package_installed_and_ansible_rollout
  bad "no .deb in target/debian: build it first (tests/deb/check.sh, as scripts/test does)"
  end
fi

echo "debian: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

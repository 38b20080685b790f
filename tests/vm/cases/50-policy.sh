# Policies, hooks, health checks, the consistency hold and the keep window (issue 4).

# writer A B: append 1, 2, 3… to A/log then B/log until /tmp/w/stop exists
writer() { rm -f /tmp/w/stop; ( i=0; while [ ! -e /tmp/w/stop ]; do i=$((i+1)); echo $i >> "$1/log"; echo $i >> "$2/log"; done ) & }
last_in_snapshot() {  # VG/SNAP FSTYPE: last line of log in a snapshot, mounted read-only
  mkdir -p /mnt/s; o=ro; [ "$2" = xfs ] && o=ro,nouuid,norecovery
  mount -o $o /dev/"$1" /mnt/s && tail -1 /mnt/s/log; umount /mnt/s
}
suspended() { dmsetup info -c --noheadings -o name,suspended 2>/dev/null | grep -c Suspended; }

begin freeze_holds_an_ext4_and_xfs_set_at_one_moment_with_etc_lvm_on_it
mkfs_lv a 64M /mnt/a ext4
mkfs_lv b 300M /mnt/b xfs   # xfsprogs 6 makes nothing smaller than 300 MiB
# /etc/lvm on the held set: lvcreate must neither write its backups there nor wait on it
cp -a /etc/lvm /mnt/a/etc-lvm; mount --bind /mnt/a/etc-lvm /etc/lvm
writer /mnt/a /mnt/b; sleep 1
guard --lv vg/a --lv vg/b --on-success keep -- true > out 2>&1; rc=$?
touch /tmp/w/stop; wait
run=$(run_id_of out)
check_eq "exit 0" "$rc" 0
check_out "says the set was held" out "set held for [0-9.]+s: the snapshots show one moment"
check_eq "no device left suspended" "$(suspended)" 0
na=$(last_in_snapshot vg/a-guard-$run ext4); nb=$(last_in_snapshot vg/b-guard-$run xfs)
note "last line in the snapshots: a=$na b=$nb"
check "both snapshots show one moment (a = b or b+1)" sh -c "[ -n '$na' ] && [ -n '$nb' ] && [ \$(( $na - $nb )) -ge 0 ] && [ \$(( $na - $nb )) -le 1 ]"
check "ext4 snapshot is clean without journal replay" sh -c "e2fsck -fn /dev/vg/a-guard-$run >/dev/null 2>&1"
check "VG metadata backup written after the hold" sh -c "[ /etc/lvm/backup/vg -nt out ] || grep -q a-guard-$run /etc/lvm/backup/vg"
guard commit "$run" > /dev/null 2>&1
# control: without the hold the second snapshot is taken a second later: the test can tell
writer /mnt/a /mnt/b; sleep 1
guard --no-freeze --lv vg/a --lv vg/b --on-success keep -- true > out 2>&1
touch /tmp/w/stop; wait
run=$(run_id_of out)
na=$(last_in_snapshot vg/a-guard-$run ext4); nb=$(last_in_snapshot vg/b-guard-$run xfs)
note "control without the hold: a=$na b=$nb"
check "control: --no-freeze snapshots drift apart (b ahead of a)" sh -c "[ \$(( $nb - $na )) -gt 1 ]"
guard commit "$run" > /dev/null 2>&1
umount /etc/lvm
end

begin a_snapshot_failing_while_held_leaves_nothing_suspended_or_made
mkfs_lv a 64M /mnt/a; mkfs_lv b 64M /mnt/b
lvs_state > before
GUARD_TEST_FAULT=fail:snapshot-2 guard --lv vg/a --lv vg/b -- true > out 2>&1; rc=$?
lvs_state > after
check_eq "exit 125" "$rc" 125
check_out "names the failed snapshot" out "cannot snapshot vg/b"
check_eq "no device left suspended" "$(suspended)" 0
check "lvs identical before and after" cmp -s before after
check "both filesystems take writes" timeout 10 sh -c 'echo x > /mnt/a/g && echo x > /mnt/b/g && sync'
end

begin sigterm_during_the_hold_releases_and_changes_nothing
mkfs_lv a 64M /mnt/a; mkfs_lv b 64M /mnt/b
lvs_state > before
GUARD_TEST_FAULT=pause:after-snapshot-1:3 guard --lv vg/a --lv vg/b -- true > out 2>&1 &
gp=$!
i=0; while ! grep -q "pausing at after-snapshot-1" out && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
check_eq "vg-b is held while guard pauses" "$(dmsetup info -c --noheadings -o suspended vg-b | tr -d ' ')" Suspended
kill -TERM $gp; wait $gp; rc=$?
lvs_state > after
check_eq "exit 143 (128+SIGTERM)" "$rc" 143
check_eq "no device left suspended" "$(suspended)" 0
check "lvs identical before and after" cmp -s before after
end

begin sigkill_during_the_hold_the_watchdog_resumes_at_once
mkfs_lv a 64M /mnt/a; mkfs_lv b 64M /mnt/b
GUARD_TEST_FAULT=pause:after-snapshot-1:60 guard --lv vg/a --lv vg/b -- true > out 2>&1 &
gp=$!
i=0; while ! grep -q "pausing at after-snapshot-1" out && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
kill -KILL $gp; wait $gp 2>/dev/null
sleep 0.5
check_eq "the watchdog resumed every held device" "$(suspended)" 0
check "the held filesystem takes writes" timeout 10 sh -c 'echo x > /mnt/b/g && sync'
guard recover > rec 2>&1
check "recover removes the half-made set" no_guard_snapshots
guard recover > rec2 2>&1
check_out "a second recover changes nothing" rec2 "nothing to (do|recover)|^$"
end

begin hooks_run_in_order_and_the_hold_spans_the_snapshots
mkfs_lv data 64M /mnt/data
mkdir -p /etc/guard/policies /usr/local/bin
cat > /usr/local/bin/holdlock <<'H'
#!/bin/sh
echo "hold-start" >> /tmp/w/order; echo READY
cat > /dev/null   # held until guard closes stdin
echo "hold-end snapshots=$(lvs --noheadings -o lv_name @guard | wc -l)" >> /tmp/w/order
H
chmod 755 /usr/local/bin/holdlock; mkdir -p /usr/local/bin
cat > /etc/guard/policies/order.toml <<'P'
description = "hook order test"
[targets]
lvs = ["vg/data"]
[[hook]]
when = "pre_snapshot"
run = ["/bin/sh", "-c", "echo pre_snapshot >> /tmp/w/order"]
[[hook]]
when = "hold"
run = ["/usr/local/bin/holdlock"]
ready = "READY"
timeout = "20s"
[[hook]]
when = "post_snapshot"
run = ["/bin/sh", "-c", "echo post_snapshot >> /tmp/w/order"]
[[hook]]
when = "post_success"
run = ["/bin/sh", "-c", "echo post_success $GUARD_OUTCOME >> /tmp/w/order"]
[[hook]]
when = "pre_rollback"
run = ["/bin/sh", "-c", "echo pre_rollback $GUARD_EXIT_STATUS >> /tmp/w/order"]
[[hook]]
when = "post_rollback"
run = ["/bin/sh", "-c", "echo post_rollback >> /tmp/w/order"]
[[check]]
run = ["/bin/sh", "-c", "echo check >> /tmp/w/order"]
P
rm -f /tmp/w/order
guard --policy order -- sh -c 'echo command >> /tmp/w/order' > out 2>&1; rc=$?
check_eq "exit 0" "$rc" 0
check_eq "success order" "$(tr '\n' ',' < /tmp/w/order)" "pre_snapshot,hold-start,hold-end snapshots=1,post_snapshot,command,check,post_success success,"
rm -f /tmp/w/order
guard --policy order -- sh -c 'echo command >> /tmp/w/order; exit 4' > out 2>&1; rc=$?
check_eq "exit 4" "$rc" 4
check_eq "failure order" "$(tr '\n' ',' < /tmp/w/order)" "pre_snapshot,hold-start,hold-end snapshots=1,post_snapshot,command,pre_rollback 4,post_rollback,"
check "no guard snapshot left" no_guard_snapshots
# a kept run rolled back later by hand runs the policy's rollback hooks too
# (vg/data waits for its deferred merge: targets on the command line replace the policy's)
mkfs_lv kept 32M
guard --policy order --lv vg/kept --on-success keep -- true > out 2>&1; run=$(run_id_of out)
rm -f /tmp/w/order; guard rollback "$run" > rb 2>&1
check_eq "guard rollback RUN runs the policy's rollback hooks" "$(tr '\n' ',' < /tmp/w/order)" "pre_rollback 0,post_rollback,"
# a hold that never gets ready stops the run before any snapshot
printf '[[hook]]\nwhen = "hold"\nrun = ["/bin/sleep", "30"]\nready = "READY"\ntimeout = "2s"\n' > /etc/guard/policies/stuck.toml
mkfs_lv other 32M
lvs_state > before
guard --policy stuck --lv vg/other -- true > out 2>&1; rc=$?
lvs_state > after
check_eq "stuck hold: exit 125" "$rc" 125
check_out "stuck hold: says so" out "was not ready within 2s"
check "stuck hold: lvs unchanged" cmp -s before after
end

begin a_failing_health_check_rolls_back
mkfs_lv data 64M
guard --lv vg/data --check 'sh -c "echo unhealthy; exit 2"' --json --report /host/json/report-check-failed.json -- sh -c 'mkdir -p /mnt/x; mount /dev/vg/data /mnt/x; echo new > /mnt/x/f; umount /mnt/x' > out 2>&1; rc=$?
check_eq "exit 123 (check failed)" "$rc" 123
check_eq "original bytes are back" "$(content data)" original
check_out "report names the failed check" out '"failed_check":"health check .*failed'
check "no guard snapshot left" no_guard_snapshots
guard --lv vg/data --check 'true' -- sh -c 'mkdir -p /mnt/x; mount /dev/vg/data /mnt/x; echo new > /mnt/x/f; umount /mnt/x' > out 2>&1; rc=$?
check_eq "a passing check keeps the change" "$rc/$(content data)" "0/new"
end

begin keep_window_then_rollback_undoes_a_success
mkfs_lv data 64M
guard --lv vg/data --keep 10m --report /host/json/report-kept.json -- sh -c 'mkdir -p /mnt/x; mount /dev/vg/data /mnt/x; echo v2 > /mnt/x/f; umount /mnt/x' > out 2>&1
run=$(run_id_of out)
check_out "says how long it is kept" out "after .* .guard recover --expire. commits it"
guard status > st 2>&1; guard status --json > /host/json/status-kept.json
check_out "status shows the kept run with its COW use" st "$run.*kept"
guard recover --expire > rec 2>&1
check "not expired yet: still kept" sh -c "lvs --noheadings -o lv_name @guard | grep -q data-guard-$run"
guard rollback "$run" > rb 2>&1; rc=$?
check_eq "rollback exits 0" "$rc" 0
check_eq "the success is undone" "$(content data)" original
check "no guard snapshot left" no_guard_snapshots
end

begin policy_check_list_and_the_apt_policy_warnings
mkfs_lv root 64M /mnt/root
mkdir -p /boot/grub; echo old > /boot/vmlinuz-old; echo menu-old > /boot/grub/grub.cfg; printf '#!/bin/sh\nexit 0\n' > /usr/bin/dpkg; chmod 755 /usr/bin/dpkg
guard policy list > pl 2>&1
check_out "list shows the shipped apt policy" pl "^apt +built-in +Package upgrades"
guard policy check apt > pc 2>&1; rc=$?
check_eq "check apt exits 0" "$rc" 0
check_out "check prints the effective targets" pc "targets: +/, /var"
check_out "check prints the dpkg check" pc "check +dpkg --audit \(fails on any output\)"
guard policy check apt --json > pj 2>&1; cp pj /host/json/policy-apt.json
check_out "json has the schema" pj '"schema": "guard.policy/1"'
guard --policy apt --lv vg/root -- true > out 2>&1; rc=$?
check_eq "apt on vg/root: exit 0" "$rc" 0
check_out "warns that /boot is not on LVM and saves it" out "/boot is not on LVM.*guard saves a copy of /boot"
printf '#!/bin/sh\necho "The following packages are only half configured"\n' > /usr/bin/dpkg
guard --policy apt --lv vg/root --report /host/json/report-rollback-scheduled.json -- sh -c 'echo new > /mnt/root/f; echo k > /boot/vmlinuz-new; echo menu-new > /boot/grub/grub.cfg; sync' > out 2>&1; rc=$?
check_eq "dirty dpkg --audit: exit 123" "$rc" 123
check_out "rollback scheduled (the LV is mounted)" out "ROLLBACK SCHEDULED"
check_out "/boot put back at once" out "/boot restored from the copy saved before the change"
check_eq "/boot as before: no new kernel, old menu" "$(ls /boot | tr '\n' ,)$(cat /boot/grub/grub.cfg)" "grub,vmlinuz-old,menu-old"
rm -f /usr/bin/dpkg
end

begin on_failure_ask_on_a_terminal
# --on-failure ask: on a real pseudo-terminal guard shows the failure and asks; "k" keeps
mkfs_lv data 64M
( sleep 5; echo k ) | timeout 60 /sbin/script -qfec "guard --lv vg/data --on-failure ask -- sh -c 'mkdir -p /mnt/x; mount /dev/vg/data /mnt/x; echo broken > /mnt/x/f; umount /mnt/x; exit 2'" /dev/null > out 2>&1; rc=$?
check_eq "exit status 2 passes through" "$rc" 2
check_out "the failure and the COW use are shown" out "the command failed: exit status 2"
check_out "the question is asked" out "Roll back now \[r\], or keep the snapshots"
run=$(run_id_of out)
check "answer k: the snapshot is kept" sh -c "lvs --noheadings -o lv_name @guard | grep -q data-guard-$run"
guard rollback "$run" > rb 2>&1
check_eq "then rolled back by hand" "$(content data)" original
# without a terminal nobody can answer: the safe default, rollback
setsid guard --lv vg/data --on-failure ask -- sh -c 'mkdir -p /mnt/x; mount /dev/vg/data /mnt/x; echo broken > /mnt/x/f; umount /mnt/x; exit 2' > out 2>&1 < /dev/null
check_out "no terminal: says so and rolls back" out "no terminal to ask on; rolling back"
check_eq "rolled back" "$(content data)" original
end

# After guard exits, a kept snapshot still fills as the origin changes; `guard watch` (started
# in the background when the run is kept) extends it before it is invalidated. It has no command
# to pause, so a burst from idle lands in whatever is free while its first lvextend runs: a kept
# snapshot keeps 64 MiB free (model::KEPT_RESERVE). With only the 4 MiB of an 8 MiB snapshot at
# the 50 % threshold, the burst and the two writers invalidated it in every try and the stream
# in about one of ten.
kept_snapshot_survives() {  # SHAPE: stream, burst or two writers, 64 MiB in all
  begin "kept_snapshot_survives_a_${1}_from_idle"
  mkfs_lv data 200M /mnt/data
  guard --lv vg/data --size 8M --keep 10m -- true > out 2>&1; run=$(run_id_of out)
  check_out "kept with room for a burst" out "extended snapshot vg/data-guard-$run \+[0-9.]+MiB as it is kept"
  size0=$(lvs --noheadings --units b --nosuffix -o lv_size "vg/data-guard-$run" | tr -d ' ')
  case $1 in
    stream) write_mb /mnt/data/big 64 sync ;;
    burst) dd if=/dev/zero of=/mnt/data/big bs=1M count=64 2>/dev/null; sync ;;
    writers) write_mb /mnt/data/big 32 sync & w=$!; write_mb /mnt/data/big2 32 sync; wait $w ;;
  esac
  sleep 3
  size1=$(lvs --noheadings --units b --nosuffix -o lv_size "vg/data-guard-$run" | tr -d ' ')
  note "kept snapshot: $size0 bytes before, $size1 after 64 MiB written"
  check "the kept snapshot was extended" [ "$size1" -gt "$size0" ]
  check "and is still valid" sh -c "! lvs --noheadings -o lv_attr vg/data-guard-$run | grep -q 'swi-I'"
  guard rollback "$run" --finish > rb 2>&1; rc=$?
  check_eq "the kept run rolls back" "$rc" 0
  check "what was written is gone (mounted again as it was)" sh -c "grep -q ' /mnt/data ' /proc/mounts && test ! -e /mnt/data/big -a ! -e /mnt/data/big2"
  check_eq "the original bytes are there" "$(content data)" original
  sleep 1
  end
}
kept_snapshot_survives stream
kept_snapshot_survives burst
kept_snapshot_survives writers

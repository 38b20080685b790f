# Issue 15 (cost): one lvm shell for all of a run's lvm2 commands, and the one-process-per-command
# fallback when lvm2's lvmdbusd profile is not there. GUARD_TRACE=1 names every lvm2 command and
# where it ran ("lvm shell: …" or "/sbin/lvm …").
PROFILE=/etc/lvm/profile/lvmdbusd.profile

# The commands mount the volume themselves, so that it is closed when guard decides: a failing
# run then rolls back at once rather than at the volume's next activation.
inside() { echo "mkdir -p /mnt/x; mount /dev/vg/data /mnt/x && ( $1 ); r=\$?; umount /mnt/x; exit \$r"; }
data() { mount /dev/vg/data /mnt/data && cat /mnt/data/f; umount /mnt/data; }

begin a_guarded_run_drives_one_lvm_shell
mkfs_lv data 32M /mnt/data
echo old > /mnt/data/f; umount /mnt/data
GUARD_TRACE=1 guard --lv vg/data -- sh -c "$(inside 'echo new > /mnt/x/f')" > t1 2>&1; rc=$?
check_eq "a succeeding run exits 0" "$rc" 0
check_out "it planned from the LV report started before its arguments were parsed" t1 "early report used: lvm lvs -a"
check_out "its snapshot was made in the shell" t1 "lvm shell: lvcreate .*vg/data"
check_out "and removed there" t1 "lvm shell: lvremove"
check "no lvm process of its own was run" sh -c "! grep -q 'guard-trace.*/sbin/lvm ' t1"
check_eq "no snapshot is left" "$(lvs --noheadings @guard | wc -l)" 0
GUARD_TRACE=1 guard --lv vg/data -- sh -c "$(inside 'echo broken > /mnt/x/f; exit 3')" > t2 2>&1; rc=$?
check_eq "a failing run exits with the command's status" "$rc" 3
check_out "the rollback's merge ran in the shell" t2 "lvm shell: lvconvert --merge"
check_out "and the report says it is rolled back" t2 "rolled back"
check_eq "the data is back" "$(data)" new
check_eq "no snapshot is left" "$(lvs --noheadings -a vg | grep -c guard)" 0
# (guard closes the idle shell's input and does not wait: it ends on its own, at once)
i=0; while ps | grep -v grep | grep -qE '[ /]lvm$' && [ $i -lt 20 ]; do sleep 0.1; i=$((i+1)); done
check "no lvm shell outlives guard by more than a moment" sh -c "! ps | grep -v grep | grep -qE '[ /]lvm\$'"
end

begin without_lvm2s_profile_each_command_is_its_own_process
mkfs_lv data 32M /mnt/data
echo old > /mnt/data/f; umount /mnt/data
mv $PROFILE $PROFILE.off
GUARD_TRACE=1 guard --lv vg/data -- sh -c "$(inside 'echo broken > /mnt/x/f; exit 4')" > t3 2>&1; rc=$?
mv $PROFILE.off $PROFILE
check_eq "the failing run exits 4" "$rc" 4
check_out "lvcreate ran as its own process" t3 "/sbin/lvm lvcreate"
check_out "so did the merge" t3 "/sbin/lvm lvconvert --merge"
check "and nothing in a shell" sh -c "! grep -q 'lvm shell:' t3"
check_eq "the data is back" "$(data)" old
check_eq "no snapshot is left" "$(lvs --noheadings -a vg | grep -c guard)" 0
end

begin ctrl_c_at_the_terminal_rolls_back_through_the_shell
# A terminal's Ctrl-C signals the whole foreground process group: guard and its command. The
# lvm shell has a group of its own, so it is there for the rollback's merge.
mkfs_lv data 32M /mnt/data
echo old > /mnt/data/f; umount /mnt/data
# (setsid, not being a group leader here, execs in place: $! is guard, leading a new group)
GUARD_TRACE=1 setsid guard --lv vg/data -- sh -c 'mkdir -p /mnt/x; mount /dev/vg/data /mnt/x; trap "umount /mnt/x; exit 130" INT; echo broken > /mnt/x/f; sync; sleep 30' > t4 2>&1 < /dev/null &
pg=$!
i=0; while ! grep -q 'snapshots taken' t4 && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
sleep 0.5
check_eq "guard leads its own process group" "$(awk '{print $5}' /proc/$pg/stat)" "$pg"
kill -s INT "-$pg"
i=0; while [ -n "$(lvs --noheadings -a vg | grep guard)" ] && [ $i -lt 150 ]; do sleep 0.2; i=$((i+1)); done
wait
check_out "the command ended by the Ctrl-C (its trap exits 130)" t4 "exit status 130"
check_out "the rollback's merge ran in the shell" t4 "lvm shell: lvconvert --merge"
check_eq "the data is back" "$(data)" old
check_eq "no snapshot is left" "$(lvs --noheadings -a vg | grep -c guard)" 0
end

begin status_reads_the_early_report_and_a_kept_run_commits_through_the_shell
mkfs_lv data 32M /mnt/data
guard -q --lv vg/data --keep 1h -- true > o 2>&1
run=$(ls /var/lib/guard/runs | sed -n 's/\.json$//p' | head -1)
GUARD_TRACE=1 guard status > s 2>&1; rc=$?
check_eq "guard status exits 0" "$rc" 0
check_out "it read the LV report started before its arguments were parsed" s "early report used: lvm lvs -a"
check "and started no lvm shell for its one command" sh -c "! grep -q 'lvm shell' s"
check_out "and shows the kept run" s "$run"
# (`--` before the run id: a raw argument guard's early start must not read as a guarded run)
GUARD_TRACE=1 guard commit -- "$run" > c 2>&1; rc=$?
check_eq "guard commit exits 0" "$rc" 0
check "it used no LV report from before its lock" sh -c "! grep -q 'early report' c"
check_out "its lvremove ran in the shell" c "lvm shell: lvremove"
check_eq "no snapshot is left" "$(lvs --noheadings -a vg | grep -c guard)" 0
end

# silent_failing_run LV MOUNTPOINT: with log/silent = 1, a failing run on the mounted LV must be
# scheduled, not claimed done, and `guard rollback --finish` must then complete it
silent_failing_run() {
  echo old > "$2/f"; sync
  cp /etc/lvm/lvm.conf lvm.conf.saved
  echo 'log { silent = 1 }' >> /etc/lvm/lvm.conf
  guard --lv "vg/$1" -- sh -c "echo broken > $2/f; exit 5" > silent.out 2>&1; rc=$?
  cp lvm.conf.saved /etc/lvm/lvm.conf
  check_eq "the failing run exits 5" "$rc" 5
  check_out "the rollback is scheduled, not claimed done" silent.out "rollback scheduled"
  check "it does not say rolled back" sh -c "! grep -q 'vg/$1: rolled back' silent.out"
  run=$(ls /var/lib/guard/runs | sed -n 's/\.json$//p' | head -1)
  guard rollback --finish "$run" > finish.out 2>&1; rc=$?
  check_eq "guard rollback --finish completes it" "$rc" 0
  check_eq "the data is back" "$(cat "$2/f")" old
  check_eq "no snapshot is left" "$(lvs --noheadings -a vg | grep -c guard)" 0
}

begin a_deferred_merge_is_known_also_when_lvm_says_nothing
# With log/silent = 1 lvm2 prints no "Delaying merge": guard must still see that the merge waits
# for the volume's next activation (its snapshot is still there), not report it done.
mkfs_lv data 32M /mnt/data
silent_failing_run data /mnt/data
end

begin a_deferred_thin_merge_is_known_also_when_lvm_says_nothing
# The same for a thin volume: lvm2 deactivates a thin snapshot before it finds the origin open,
# so no device is left to see; guard asks the VG metadata.
lvcreate -q -y -L 96M -T vg/pool >/dev/null
lvcreate -q -y -V 64M -T vg/pool -n tdata >/dev/null
mkfs.ext4 -q /dev/vg/tdata; mkdir -p /mnt/tdata; mount /dev/vg/tdata /mnt/tdata
silent_failing_run tdata /mnt/tdata
end

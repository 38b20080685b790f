# The core transaction on real LVM (issue 2).

begin success_thick_keeps_change_and_removes_snapshot
mkfs_lv data 64M /mnt/data
guard --lv vg/data -- sh -c 'echo new > /mnt/data/f; sync' > out 2>&1; rc=$?
check_eq "exit status passes through" "$rc" 0
check_eq "the change is kept" "$(content data)" new
check "no guard snapshot left" no_guard_snapshots
check_out "summary says the change is kept" out "snapshots removed, the change is kept"
check "journal says done/committed" grep -q '"final_state": "committed"' /var/lib/guard/runs/*.json
end

begin tags_name_the_run_while_the_command_runs
mkfs_lv data 64M /mnt/data
guard --lv vg/data -- sh -c 'lvs --noheadings -o lv_name,lv_tags,origin @guard > /tmp/seen; echo $GUARD_RUN > /tmp/run' > out 2>&1
run=$(cat /tmp/run)
check "snapshot of data tagged guard while running" grep -q "data-guard-$run .*guard,guard-run:$run .*data" /tmp/seen
check "gone afterwards" no_guard_snapshots
end

begin failure_unmounted_origin_rolls_back_at_once
mkfs_lv data 64M
guard --lv vg/data -- sh -c 'mkdir -p /mnt/x; mount /dev/vg/data /mnt/x; echo broken > /mnt/x/f; umount /mnt/x; exit 3' > out 2>&1; rc=$?
check_eq "exit status 3 passes through" "$rc" 3
check_eq "original bytes are back" "$(content data)" original
check "no guard snapshot left" no_guard_snapshots
check_out "summary says rolled back" out "rolled back"
check "filesystem clean" fsck_clean data
end

begin failure_mounted_origin_defers_then_finish_completes
mkfs_lv data 64M /mnt/data
guard --lv vg/data -- sh -c 'echo broken > /mnt/data/f; sync; exit 1' > out 2>&1; rc=$?
run=$(run_id_of out)
check_eq "exit status 1" "$rc" 1
check_out "says the rollback is scheduled and how it completes" out "ROLLBACK SCHEDULED: completes at the next activation: .guard rollback --finish $run"
check "origin is marked merging" sh -c "lvs --noheadings -o lv_merging vg/data | grep -q merging"
check "origin carries the merge tag" sh -c "lvs --noheadings -o lv_tags vg/data | grep -q guard-merge:$run"
guard rollback --finish "$run" > out2 2>&1; rc=$?
check_eq "rollback --finish exits 0" "$rc" 0
check_eq "original bytes are back" "$(content data)" original
check "mounted again at /mnt/data" grep -q ' /mnt/data ' /proc/mounts
check "no guard snapshot left" no_guard_snapshots
check "merge tag removed" sh -c "! lvs --noheadings -o lv_tags vg/data | grep -q guard-merge"
end

begin deferred_merge_completes_at_reactivation_and_recover_confirms
mkfs_lv data 64M /mnt/data
guard --lv vg/data -- sh -c 'echo broken > /mnt/data/f; sync; false' > out 2>&1
run=$(run_id_of out)
umount /mnt/data; vgchange -q -an vg >/dev/null; vgchange -q -ay vg >/dev/null
guard recover > rec 2>&1; rc=$?
check_eq "recover exits 0" "$rc" 0
check_out "recover reports the completed rollback" rec "rollback of run $run completed"
check_eq "original bytes are back" "$(content data)" original
check "no guard snapshot left" no_guard_snapshots
guard recover > rec2 2>&1
check_out "a second recover has nothing to do" rec2 "nothing to recover"
guard status --all --json > st 2>&1
check_out "status shows the run done" st '"phase": "done"'
end

begin thin_success_and_failure
thin_lv thin 64M 64M /mnt/thin
guard --lv vg/thin -- sh -c 'lvs --noheadings -o segtype,origin @guard > /tmp/kind; echo new > /mnt/thin/f; sync' > out 2>&1; rc=$?
check_eq "success exits 0" "$rc" 0
check "the snapshot was thin" grep -q 'thin *thin' /tmp/kind
check_eq "change kept" "$(content thin)" new
check "no guard snapshot left" no_guard_snapshots
guard --lv vg/thin --finish -- sh -c 'echo broken > /mnt/thin/f; sync; exit 2' > out 2>&1; rc=$?
check_eq "failure exits 2" "$rc" 2
check_eq "thin origin rolled back to the last committed bytes" "$(content thin)" new
check "no guard snapshot left" no_guard_snapshots
check "mounted again" grep -q ' /mnt/thin ' /proc/mounts
end

begin two_lv_set_second_snapshot_fails_leaves_nothing
# fragmented free space + contiguous allocation: the plan's total fits, the 2nd lvcreate fails
lvcreate -q -y -L 20M -n a vg >/dev/null; lvcreate -q -y -L 8M -n g1 vg >/dev/null
lvcreate -q -y -L 60M -n b vg >/dev/null; lvcreate -q -y -L 8M -n g2 vg >/dev/null
lvcreate -q -y -l 100%FREE -n filler vg >/dev/null; lvremove -q -y vg/g1 vg/g2 >/dev/null
vgchange -q --alloc contiguous vg >/dev/null
lvs_state > before
guard --lv vg/a --lv vg/b -- sh -c 'echo RAN > /tmp/ran' > out 2>&1; rc=$?
lvs_state > after
check_eq "guard exits 125" "$rc" 125
check_out "error names the failed snapshot" out "cannot snapshot vg/b"
check "the command never ran" test ! -e /tmp/ran
check "lvs identical before and after" cmp -s before after
check "journal says aborted" grep -q '"outcome": "aborted"' /var/lib/guard/runs/*.json
end

begin dry_run_changes_nothing
mkfs_lv data 64M /mnt/data
lvs_state > before
guard --lv vg/data --mount /mnt/data --dry-run -- true > out 2>&1; rc=$?
check_eq "a duplicate target is refused even in a dry run" "$rc" 125
guard --mount /mnt/data --size 16M --dry-run -- true > out 2>&1; rc=$?
lvs_state > after
check_eq "dry run exits 0" "$rc" 0
check_out "plan names target, mount, kind, size" out "vg/data .*/mnt/data, ext4.*thick snapshot, COW 16.0MiB"
check_out "plan shows VG space before and after" out "volume group vg: .* free before, .* after"
check "lvs unchanged" cmp -s before after
end

begin exit_codes_signal_and_timeout
mkfs_lv data 64M
guard --lv vg/data -- sh -c 'exit 7' >/dev/null 2>&1; check_eq "exit 7 passes through" "$?" 7
guard --lv vg/data -- sh -c 'kill -TERM $$' >/dev/null 2>&1; check_eq "signal 15 becomes 143" "$?" 143
guard --lv vg/data --timeout 1s -- sh -c 'mkdir -p /mnt/x; mount /dev/vg/data /mnt/x; echo broken > /mnt/x/f; umount /mnt/x; sleep 30' > out 2>&1; rc=$?
check_eq "timeout gives 124" "$rc" 124
check_out "timeout is reported" out "timed out"
check_eq "timeout rolled back" "$(content data)" original
guard --lv vg/data -- /no/such/cmd > out 2>&1; check_eq "not found: 127" "$?" 127
guard --lv vg/data -- /etc/passwd > out 2>&1; check_eq "not executable: 126" "$?" 126
check "no guard snapshot left" no_guard_snapshots
end

begin sigterm_is_forwarded_and_sighup_survived
mkfs_lv data 64M /mnt/data
guard --lv vg/data -- sh -c 'echo broken > /mnt/data/f; sync; sleep 20; exit 0' > out 2>&1 &
gpid=$!; sleep 3
kill -HUP $gpid; sleep 1
check "guard survives SIGHUP" kill -0 $gpid
kill -TERM $gpid; wait $gpid; rc=$?
check_eq "child killed by the forwarded SIGTERM: 143" "$rc" 143
check_out "failure is rolled back (scheduled: mounted)" out "ROLLBACK SCHEDULED"
run=$(run_id_of out); guard rollback --finish "$run" >/dev/null 2>&1
check_eq "original bytes after finish" "$(content data)" original
end

begin keep_on_failure_then_rollback_and_keep_on_success_then_commit
mkfs_lv data 64M
guard --lv vg/data --on-failure keep -- sh -c 'mkdir -p /mnt/x; mount /dev/vg/data /mnt/x; echo broken > /mnt/x/f; umount /mnt/x; exit 1' > out 2>&1
run=$(run_id_of out)
check_out "kept" out "snapshots kept"
check_eq "change still there while kept" "$(content data)" broken
guard status > st 2>&1
check_out "status lists the kept run with COW use" st "run $run  kept.*|vg/data -> vg/data-guard-$run: COW"
guard rollback "$run" > out 2>&1
check_eq "guard rollback RUN restores" "$(content data)" original
check "no guard snapshot left" no_guard_snapshots
guard --lv vg/data --keep 10m -- sh -c 'mkdir -p /mnt/x; mount /dev/vg/data /mnt/x; echo v2 > /mnt/x/f; umount /mnt/x' > out 2>&1
run=$(run_id_of out)
check "snapshot kept after success" test -n "$(guard_snapshots)"
guard commit "$run" > out 2>&1
check_eq "commit keeps the change" "$(content data)" v2
check "commit removed the snapshot" no_guard_snapshots
end

begin second_guard_on_same_lv_is_refused_with_holder_pid
mkfs_lv data 64M
guard --lv vg/data -- sleep 6 > out1 2>&1 &
gpid=$!; sleep 3
lvs_state > before
guard --lv vg/data -- true > out2 2>&1; rc=$?
check_eq "second guard exits 125" "$rc" 125
check_out "names the holder's pid and command" out2 "vg/data is in use by another guard run \(pid $gpid, run .*sleep 6"
wait $gpid
check_eq "the first run ends well" "$?" 0
guard --lv vg/data --wait -- true > out4 2>&1; check_eq "with the holder gone, runs" "$?" 0
end

begin guard_inside_guard_is_refused
mkfs_lv data 64M
guard --lv vg/data -- guard --lv vg/data -- true > out 2>&1; rc=$?
check_eq "outer guard passes the inner refusal through (125)" "$rc" 125
check_out "inner refusal names the problem" out "vg/data is in use by another guard run"
check "no guard snapshot left" no_guard_snapshots
end

begin kill9_mid_command_then_recover
mkfs_lv data 64M
guard --lv vg/data -- sh -c 'mkdir -p /mnt/x; mount /dev/vg/data /mnt/x; echo broken > /mnt/x/f; umount /mnt/x; sleep 4' > out 2>&1 &
gpid=$!; sleep 3
kill -9 $gpid; wait $gpid 2>/dev/null
guard recover > rec1 2>&1
check_out "recover leaves a run whose command still runs" rec1 "still runs"
sleep 3
guard recover > rec2 2>&1
check_out "then rolls it back" rec2 "rolled back"
check_eq "original bytes" "$(content data)" original
check "no guard snapshot left" no_guard_snapshots
check "no lock left held" sh -c 'for l in /run/lock/guard/*.lock; do [ -e "$l" ] || continue; flock -n "$l" true || exit 1; done'
guard recover > rec3 2>&1
check_out "second recover changes nothing" rec3 "nothing to recover"
end

begin interactive_command_gets_the_terminal
# Under a real pseudo-terminal (script(1)), the command must be the terminal's foreground job:
# otherwise its read of the terminal stops it with SIGTTIN and the run hangs.
mkfs_lv data 64M /mnt/data
( sleep 4; echo yes ) | timeout 60 /sbin/script -qfec "guard --lv vg/data -- sh -c 'printf \"Continue? \"; read answer; echo \"answer=\$answer\" > /mnt/data/answer'" /dev/null > out 2>&1; rc=$?
check_eq "guard under a terminal exits 0" "$rc" 0
check_out "the prompt reached the terminal" out "Continue\?"
check "the command read the answer from the terminal" grep -q 'answer=yes' /mnt/data/answer
check "no guard snapshot left" no_guard_snapshots
end

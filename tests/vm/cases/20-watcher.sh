# The COW watcher on real LVM (issue 3): the rollback point is never lost unnoticed.

# wait until guard's journal says it holds a filesystem frozen (the VG-full path)
wait_frozen() { i=0; while [ $i -lt 150 ]; do grep -q '"frozen": \[$' /var/lib/guard/runs/*.json 2>/dev/null && return 0; sleep 0.2; i=$((i+1)); done; return 1; }
snap_attr() { lvs --noheadings -o lv_attr @guard 2>/dev/null | tr -d ' '; }
not_invalid() { ! dmsetup status 2>/dev/null | grep -q 'snapshot Invalid'; }
# is the filesystem at $1 frozen? a write from outside guard's process group must block
# (in the background: a writer blocked by a freeze cannot be killed until the thaw)
is_frozen() { ( echo probe > "$1/probe.$$" ) 2>/dev/null & p=$!; sleep 1; kill -0 $p 2>/dev/null; }

begin extends_8M_snapshot_under_100M_of_synced_writes_then_rolls_back
mkfs_lv data 200M /mnt/data
guard --lv vg/data --size 8M --json -- sh -c 'write_mb /mnt/data/big 100 sync; exit 1' > out 2>&1; rc=$?
run=$(run_id_of out)
check_eq "failure passes through" "$rc" 1
check_out "the snapshot was extended" out "extended snapshot vg/data-guard"
check_out "never invalidated (report)" out '"invalidated":false'
check "never invalidated (kernel)" not_invalid
guard rollback --finish "$run" > out2 2>&1
check_eq "original bytes back" "$(content data)" original
check "the written file is gone" test ! -e /mnt/data/big
check "no guard snapshot left" no_guard_snapshots
end

begin extends_under_100M_of_unsynced_writes_the_dirty_cache_lands_safely
mkfs_lv data 200M /mnt/data
guard --lv vg/data --size 8M --json -- sh -c 'dd if=/dev/zero of=/mnt/data/big bs=1M count=100 2>/dev/null; exit 1' > out 2>&1; rc=$?
run=$(run_id_of out)
check_eq "failure passes through" "$rc" 1
check_out "extended" out "extended snapshot"
check_out "never invalidated" out '"invalidated":false'
check "never invalidated (kernel)" not_invalid
guard rollback --finish "$run" > out2 2>&1
check_eq "original bytes back" "$(content data)" original
check "filesystem clean" fsck_clean data
end

begin steps_follow_the_runs_growth_thick_and_thin
# Issue 15: a step was half the size (2-3.5x the use allocated at the end); now it is relative
# to the run's own growth. A writer at 2 MiB/s, where the fill rule sizes the steps (faster ones
# get 3 horizons of writing: bench/run.sh cow; 1 MiB fsynced pieces read as up to ~3.3 MiB/s,
# so 3 horizons stay under half the growth while an lvextend takes under ~1.5 s), from a 4 MiB
# snapshot and from a pool with ~4 MiB free.
mkfs_lv data 200M /mnt/data
guard --lv vg/data --size 4M --json -- write_rate /mnt/data/f 32 2 > out 2>&1; rc=$?
check_eq "the command succeeded" "$rc" 0
check_out "never invalidated" out '"invalidated":false'
cow=$(json_num cow_bytes out)
peak=$(json_num peak_used_bytes out)
check "the report gives the COW size and peak use" [ -n "$cow" -a -n "$peak" ]
# (less one 4 MiB extent: steps are whole extents, which a 32 MiB run feels)
check_ratio "thick: the COW allocated at the end, less one extent / the most the run used" "$(( ${cow:-0} - (4 << 20) ))" "$peak" 1.5
umount /mnt/data
thin_lv tdata 300M 48M /mnt/thin
pfree() { s=$(lvs --noheadings --units b --nosuffix -o lv_size vg/pool | tr -d ' '); lvs --noheadings -o data_percent vg/pool | awk -v s="$s" '{ printf "%d", s - s * $1 / 100 }'; }
dd if=/dev/zero of=/mnt/thin/pad bs=1M count=$(( ($(pfree) >> 20) - 4 )) conv=fsync 2>/dev/null
free0=$(pfree)
guard --lv vg/tdata --json -- write_rate /mnt/thin/f 32 2 > out2 2>&1; rc=$?
check_eq "thin: the command succeeded" "$rc" 0
added=$(json_num added_bytes out2)
check "the report gives what the watcher added (it extended the pool)" [ "${added:-0}" -gt 0 ]
check_ratio "thin: the pool's room for the run (free at the start + added), less one extent / its peak growth" "$((free0 + ${added:-0} - (4 << 20)))" "$(json_num peak_used_bytes out2)" 1.5
end

begin vg_full_freezes_before_the_snapshot_fills_then_rollback
mkfs_lv data 200M /mnt/data
lvcreate -q -y -l 100%FREE -n filler vg >/dev/null; lvreduce -q -y -L -8M vg/filler >/dev/null
# a writer outside guard's process group, started before guard
( while :; do echo tick >> /mnt/data/daemon.log; sleep 0.1; done ) &
dpid=$!
guard --lv vg/data --size 8M -- sh -c 'write_mb /mnt/data/big 100 sync; exit 0' > out 2>&1 &
gpid=$!
check "guard froze the filesystem" wait_frozen
run=$(run_id_of out)
s1=$(stat -c %s /mnt/data/daemon.log); sleep 1.5; s2=$(stat -c %s /mnt/data/daemon.log)
check_eq "the outside writer is held too" "$s1" "$s2"
check "writes block while frozen" is_frozen /mnt/data
check "snapshot still valid" not_invalid
check_out "the operator is told what to do" out "guard resume $run"
guard rollback "$run" > out2 2>&1
wait $gpid; rc=$?
check "the command was stopped (non-zero)" test "$rc" -ne 0
kill $dpid 2>/dev/null; wait $dpid 2>/dev/null
check "thawed: writes work again" sh -c 'echo ok > /mnt/data/after'
guard rollback --finish "$run" > out3 2>&1
check_eq "original bytes back" "$(content data)" original
check "no guard snapshot left" no_guard_snapshots
end

begin vg_full_freeze_then_resume_after_space_is_added
mkfs_lv data 200M /mnt/data
lvcreate -q -y -l 100%FREE -n filler vg >/dev/null; lvreduce -q -y -L -8M vg/filler >/dev/null
guard --lv vg/data --size 8M -- sh -c 'write_mb /mnt/data/big 40 sync; echo new > /mnt/data/f' > out 2>&1 &
gpid=$!
check "guard froze the filesystem" wait_frozen
run=$(run_id_of out)
pvcreate -q -y /dev/vdb >/dev/null; vgextend -q vg /dev/vdb >/dev/null
guard resume "$run" > out2 2>&1
wait $gpid; rc=$?
check_eq "the command finished well" "$rc" 0
check_out "resumed" out "resumed"
check_eq "change kept" "$(content data)" new
check "never invalidated" not_invalid
check "no guard snapshot left" no_guard_snapshots
end

begin thin_pool_is_extended_and_pool_full_is_held
thin_lv thin 300M 64M /mnt/thin
guard --lv vg/thin --json -- sh -c 'write_mb /mnt/thin/big 100 sync; exit 1' > out 2>&1; rc=$?
run=$(run_id_of out)
check_eq "failure passes through" "$rc" 1
check_out "the pool was extended" out "extended thin pool vg/pool"
guard rollback --finish "$run" > out2 2>&1
check_eq "original bytes back" "$(content thin)" original
end

begin thin_pool_full_is_held_like_a_full_vg
thin_lv thin 300M 64M /mnt/thin
lvcreate -q -y -l 100%FREE -n filler vg >/dev/null 2>&1
guard --lv vg/thin -- sh -c 'write_mb /mnt/thin/big2 100 sync; exit 0' > out3 2>&1 &
gpid=$!
check "pool full: guard froze the filesystem" wait_frozen
run=$(run_id_of out3)
check_out "the operator is told" out3 "thin pool vg/pool is .* full"
guard rollback "$run" > out4 2>&1; wait $gpid
guard rollback --finish "$run" > out5 2>&1
check_eq "original bytes back" "$(content thin)" original
check "pool never ran out (not out_of_data_space)" sh -c '! dmsetup status vg-pool-tpool | grep -q out_of_data_space'
end

begin when_full_continue_is_recorded_as_the_operators_choice
mkfs_lv data 200M /mnt/data
lvcreate -q -y -l 100%FREE -n filler vg >/dev/null; lvreduce -q -y -L -8M vg/filler >/dev/null
guard --lv vg/data --size 8M --when-full continue --json -- sh -c 'write_mb /mnt/data/big 30 sync; exit 1' > out 2>&1; rc=$?
check_out "the choice is recorded" out "full-continue"
check_out "the invalidation is reported" out "INVALIDATED|CANNOT be rolled back"
check_out "report says impossible" out '"rollback":"impossible"'
check "no guard snapshot left (the dead one is removed)" no_guard_snapshots
end

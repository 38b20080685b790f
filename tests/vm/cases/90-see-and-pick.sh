# Issue 14: see what a run changed (guard diff), look at the snapshot (guard mount), take back one
# path (guard restore), keep logs through a rollback (--preserve), and rehearse on a clone.

# every file's path, size, mode, owner and mtime, and contents: "production unchanged" means this
manifest() { (cd "$1" && find . -xdev ! -name . -print | sort | while read -r p; do
  if [ -f "$p" ] && [ ! -L "$p" ]; then s=$(md5sum < "$p" | cut -c1-32); else s=-; fi
  echo "$(stat -c '%n %s %a %u %g %Y %F' "$p") $s"; done); }
# the change list as "MARK PATH" lines, sorted (guard diff's own format: "  + /path  [detail]";
# a folder ends in /)
marks() { sed -nE 's#^  ([-+cm]) (/[^ ]*).*#\1 \2#p' "$1" | sort; }

setup_data() {
  mkfs_lv data 64M /mnt/data
  cd /mnt/data || return
  echo a > a; echo b > b; echo old > old-name; echo r > r; mkdir -p dir/sub; echo c > dir/sub/c
  chown 1234:1234 b; chmod 640 b; touch -d '2020-01-02 03:04:05' b
  setfattr -n user.origin -v snapshot b
  setfacl -m u:4321:r b
  sync; cd /tmp/w || return
}

begin diff_names_exactly_the_changed_paths
setup_data
guard -q --lv vg/data --keep 1h -- sh -c '
  cd /mnt/data
  echo new > added; echo changed > f; rm b; mv old-name new-name; chmod 600 a
  echo tmp > t; rm t; mkdir dir/new-dir; echo d > dir/new-dir/d; rm -r dir/sub
  echo r2 > r.new; mv r.new r' > out 2>&1; rc=$?
check_eq "the run succeeded and was kept" "$rc" 0
run=$(ls /var/lib/guard/runs | sed -n 's/\.changes$//p' | head -1)
check "its change list is in the journal" test -s /var/lib/guard/runs/$run.changes
guard diff "$run" > d 2>&1
printf '%s\n' "+ /mnt/data/added" "c /mnt/data/f" "- /mnt/data/b" "m /mnt/data/new-name" \
  "c /mnt/data/a" "c /mnt/data/r" "+ /mnt/data/dir/new-dir/" "+ /mnt/data/dir/new-dir/d" "- /mnt/data/dir/sub/" | sort > want
marks d | grep -v '^- /mnt/data/dir/sub/c$' > got
check_eq "guard diff names exactly the changed paths (recorded)" "$(tr '\n' '|' < got)" "$(tr '\n' '|' < want)"
check_out "it says how the list was made" d "recorded while the command ran"
check_out "a move shows where it came from" d "new-name +\(from /mnt/data/old-name\)"
check_out "a content change and an attribute change are told apart" d "/mnt/data/a +\[attributes\]"
check_out "a file renamed over one that existed is a replacement, not an addition" d "c /mnt/data/r +\[replaced\]"
check "no lost+found, no transient file" sh -c "! grep -qE 'lost\+found|/t$' d"
guard diff --compare "$run" > dc 2>&1
marks dc | grep -v '^- /mnt/data/dir/sub/c$' > gotc
check_eq "--compare (snapshot against the live filesystem) finds the same paths" "$(tr '\n' '|' < gotc)" "$(tr '\n' '|' < want)"
check_out "and says so" dc "the snapshot compared with the live filesystem"
guard diff --json "$run" > dj 2>&1
check_out "--json has the schema" dj '"schema": "guard.diff/1"'
cp dj /host/json/diff-$run.json 2>/dev/null
guard diff "$run" /mnt/data/dir > dd 2>&1
check_eq "a PATH limits the list" "$(marks dd | tr '\n' '|')" "+ /mnt/data/dir/new-dir/|+ /mnt/data/dir/new-dir/d|- /mnt/data/dir/sub/|- /mnt/data/dir/sub/c|"
guard diff --content /mnt/data/f "$run" > dx 2>&1
check_out "--content shows the old line" dx "^-original"
check_out "and the new one" dx "^\+changed"
end

NOFRESH=1; begin mount_shows_the_snapshot_read_only; NOFRESH=
# (continues on the same disks: the kept run above)
guard mount "$run" > m 2>&1; rc=$?
check_eq "guard mount exits 0" "$rc" 0
check_eq "the mounted snapshot has the old f" "$(cat /run/guard/mnt/$run/f 2>&1)" original
check "and is read-only" sh -c "! touch /run/guard/mnt/$run/x 2>/dev/null"
refuse 125 "mounted already" guard mount "$run"
guard umount "$run" > u 2>&1
check "guard umount unmounts it" sh -c "! grep -q /run/guard/mnt/$run /proc/mounts"
end

NOFRESH=1; begin restore_takes_back_one_path_and_leaves_the_rest; NOFRESH=
guard restore "$run" /mnt/data/f > r1 2>&1; rc=$?
check_eq "restore exits 0" "$rc" 0
[ "$rc" = 0 ] || sed 's/^/    | /' r1
check_eq "f is as before the run" "$(cat /mnt/data/f)" original
check_eq "the rest of the change stays (added)" "$(cat /mnt/data/added 2>&1)" new
check "the rest of the change stays (b still deleted)" test ! -e /mnt/data/b
guard restore "$run" /mnt/data/b > r2 2>&1
check_eq "a deleted file comes back with its contents" "$(cat /mnt/data/b 2>&1)" b
check_eq "owner, mode and mtime" "$(stat -c '%u:%g %a %Y' /mnt/data/b)" "1234:1234 640 $(date -d '2020-01-02 03:04:05' +%s)"
check_out_cmd() { "$@" > xo 2>&1; }
getfattr -n user.origin --only-values /mnt/data/b > xa 2>&1
check_out "its xattr" xa "^snapshot$"
getfacl -p /mnt/data/b > xl 2>&1
check_out "its ACL" xl "^user:4321:r--"
guard restore "$run" /mnt/data/dir > r3 2>&1
check_eq "a deleted folder comes back whole" "$(cat /mnt/data/dir/sub/c 2>&1)" c
check "without --exact what the run added inside stays" test -e /mnt/data/dir/new-dir/d
guard restore --exact "$run" /mnt/data/dir > r4 2>&1
check "with --exact it goes" test ! -e /mnt/data/dir/new-dir
refuse 1 "did not exist before the run" guard restore "$run" /mnt/data/added
check "a path the run created stays without --exact" test -e /mnt/data/added
guard restore --exact "$run" /mnt/data/added > r5 2>&1
check "and is removed with --exact" test ! -e /mnt/data/added
refuse 125 "not on a volume of run" guard restore "$run" /etc/passwd
refuse 125 "whole volume" guard restore "$run" /mnt/data
# a symbolic link planted where the restore writes: refused, nothing written through it
mkdir -p /tmp/elsewhere; rm -rf /mnt/data/dir; ln -s /tmp/elsewhere /mnt/data/dir
guard restore "$run" /mnt/data/dir/sub/c > r6 2>&1; rc=$?
check "a symbolic link on the way is refused" sh -c "[ $rc -ne 0 ] && grep -q 'symbolic link' r6"
check "and nothing was written through it" test ! -e /tmp/elsewhere/sub
rm /mnt/data/dir
guard status --all > st 2>&1
guard mount "$run" > m2 2>&1
guard commit "$run" > cm 2>&1; rc=$?
check_eq "commit of a mounted run unmounts it first, then commits" "$rc" 0
check "nothing left mounted" sh -c "! grep -q /run/guard/mnt/$run /proc/mounts"
check "no guard snapshot left" no_guard_snapshots
guard diff "$run" > d2 2>&1
check_out "a committed run's diff comes from the journal" d2 "/mnt/data/added"
refuse 125 "only a kept run" guard restore "$run" /mnt/data/f
end

begin mount_of_two_volumes_leaves_nothing_behind
mkfs_lv a1 32M /mnt/a1; mkfs_lv a2 32M /mnt/a2
guard -q --lv vg/a1 --lv vg/a2 --keep 1h -- sh -c 'echo x > /mnt/a1/x' > o2 2>&1
run2=$(ls -t /var/lib/guard/runs | sed -n 's/\.json$//p' | head -1)
guard mount "$run2" > m2 2>&1; rc=$?
check_eq "guard mount of a two-volume run exits 0" "$rc" 0
check_eq "each volume's snapshot in its own folder" "$(cat /run/guard/mnt/$run2/vg/a1/f /run/guard/mnt/$run2/vg/a2/f 2>&1 | tr '\n' ' ')" "original original "
guard umount "$run2" > u2 2>&1
check "guard umount leaves no folder behind" test ! -e /run/guard/mnt/$run2
guard mount "$run2" > m3 2>&1; rc=$?
check_eq "so it can be mounted again" "$rc" 0
guard commit "$run2" > c2 2>&1; rc=$?
check_eq "and committed (unmounted first)" "$rc" 0
check "nothing left there" test ! -e /run/guard/mnt/$run2
end

begin preserve_keeps_logs_through_a_deferred_rollback
mkfs_lv data 64M /mnt/data
mkdir -p /mnt/data/log; echo "before" > /mnt/data/log/app.log; sync
guard --lv vg/data --preserve /mnt/data/log -- sh -c '
  echo broken > /mnt/data/f; echo "what went wrong" >> /mnt/data/log/app.log; sync; exit 1' > out 2>&1; rc=$?
check_eq "the failure passes through" "$rc" 1
check_out "the rollback is deferred (mounted)" out "next activation|scheduled"
check_out "the log is preserved" out "/mnt/data/log preserved"
umount /mnt/data; lvchange -an vg/data; lvchange -ay vg/data
i=0; while [ $i -lt 60 ] && [ -n "$(lvs --noheadings -o lv_merging vg/data | tr -d ' ')" ]; do sleep 1; i=$((i+1)); done
mount /dev/vg/data /mnt/data
check_eq "after the merge the data is the snapshot's" "$(cat /mnt/data/f)" original
check_eq "and the log has what went wrong" "$(tr '\n' '|' < /mnt/data/log/app.log)" "before|what went wrong|"
check "the filesystem is clean" sh -c "umount /mnt/data && e2fsck -fn /dev/vg/data >/dev/null 2>&1; r=\$?; mount /dev/vg/data /mnt/data; [ \$r = 0 ]"
end

begin preserve_with_finish_on_a_thin_volume
thin_lv tdata 64M 128M /mnt/t
mkdir -p /mnt/t/log; echo "before" > /mnt/t/log/app.log; sync
guard --lv vg/tdata --finish --preserve /mnt/t/log -- sh -c '
  echo broken > /mnt/t/f; echo "thin went wrong" >> /mnt/t/log/app.log; exit 1' > out 2>&1; rc=$?
check_eq "the failure passes through" "$rc" 1
check_eq "finished now: the data is the snapshot's" "$(cat /mnt/t/f)" original
check_eq "the log has what went wrong" "$(tr '\n' '|' < /mnt/t/log/app.log)" "before|thin went wrong|"
end

begin rehearse_a_failing_and_a_passing_command
setup_data
lvs_state > lvs-before; manifest /mnt/data > man-before
guard rehearse --lv vg/data -- sh -c 'echo rehearsed > /mnt/data/f; echo n > /mnt/data/new; rm /mnt/data/a; exit 3' > rh 2>&1; rc=$?
check_eq "a failing rehearsal exits with the command's status" "$rc" 3
check_out "and says it failed" rh "the command FAILED \(exit status 3\)"
check_eq "the rehearsal's diff" "$(marks rh | tr '\n' '|')" "+ /mnt/data/new|- /mnt/data/a|c /mnt/data/f|"
check_out "headed as a rehearsal, not as a run that was kept or committed" rh "^run [0-9a-f-]+ \(rehearsal\): 3 paths changed"
check_out "it says what a rehearsal cannot show" rh "does not show: services"
manifest /mnt/data > man-after
check "production unchanged, file by file (contents, sizes, modes, owners, times)" cmp -s man-before man-after
lvs_state > lvs-after
check "LVM unchanged (no snapshot left)" cmp -s lvs-before lvs-after
guard rehearse --lv vg/data --check "test -e /mnt/data/new" -- sh -c 'echo n > /mnt/data/new' > rh2 2>&1; rc=$?
check_eq "a passing rehearsal (with its check, run on the copy) exits 0" "$rc" 0
check_out "and says it succeeded" rh2 "the command succeeded"
check "production has no new file" test ! -e /mnt/data/new
manifest /mnt/data > man-after2
check "production unchanged again" cmp -s man-before man-after2
lvs_state > lvs-after2
check "LVM unchanged again" cmp -s lvs-before lvs-after2
guard rehearse --lv vg/data --check "test -e /mnt/data/nothing" -- true > rh3 2>&1; rc=$?
check_eq "a check that fails on the copy fails the rehearsal (123)" "$rc" 123
# the command's own working folder on the target, a write outside the volumes, the machine
# itself (a disk, a kernel setting): none reaches production
host_name=$(hostname)
cd /mnt/data || exit 1
guard rehearse --lv vg/data -- sh -c 'echo x > rel-file; echo y > /tmp/w/outside-file
  ls /dev/vda >/dev/null 2>&1 && echo SAW-DISK; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null && echo WROTE-SYSCTL
  echo 1 > /sys/kernel/mm/ksm/run 2>/dev/null && echo WROTE-SYS
  mount -t tmpfs t /mnt 2>/dev/null && echo WROTE-MOUNT; hostname rehearsed 2>/dev/null; true' > /tmp/w/rh4 2>&1; rc=$?
cd /tmp/w || exit 1
check_eq "a rehearsal run from a folder on the target exits 0" "$rc" 0
check "its relative write went to the copy, not production" test ! -e /mnt/data/rel-file
check_out "and is in the rehearsal's diff" rh4 "\+ /mnt/data/rel-file"
check "a write outside the protected volumes did not reach production" test ! -e /tmp/w/outside-file
check_out "and is named" rh4 "wrote outside the protected volumes, under / .*: /tmp/w/outside-file"
check "the rehearsal's /dev has no disk" sh -c "! grep -q SAW-DISK rh4"
check "nor can it write a kernel setting (/proc/sys, /sys) or mount" sh -c "! grep -q WROTE- rh4"
check_eq "nor rename the machine" "$(hostname)" "$host_name"
manifest /mnt/data > man-after4
check "production unchanged once more" cmp -s man-before man-after4
# a daemon left running (its own session, its working folder on the copy) must not keep the copy
guard rehearse --lv vg/data -- sh -c 'cd /mnt/data && setsid sleep 4242 </dev/null >/dev/null 2>&1 & sleep 0.2' > rh5 2>&1; rc=$?
check_eq "a rehearsal that leaves a daemon exits 0" "$rc" 0
check_out "and says it stopped it" rh5 "left running in the rehearsal were stopped"
check "no such process is left" sh -c "! ps | grep -v grep | grep -q 'sleep 4242'"
lvs_state > lvs-after5
check "its snapshot was removed (LVM unchanged)" cmp -s lvs-before lvs-after5
umount /mnt/data
refuse 125 "none of the volumes is mounted" guard rehearse --lv vg/data -- true
end

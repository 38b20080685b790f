# Concurrency (issue 6): overlapping sets, eight guards at once. (Guard inside guard on the same
# LV and two guards on one LV are in 10-transaction.)

begin overlapping_sets_refused_at_once_or_waited_for
mkfs_lv a 32M; mkfs_lv b 32M; mkfs_lv c 32M
guard --lv vg/a --lv vg/b -- sh -c 'touch /tmp/w/holder-started; sleep 6' > out1 2>&1 &
hp=$!
i=0; while [ ! -e /tmp/w/holder-started ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done
lvs_state > before
guard --lv vg/b --lv vg/c -- true > out2 2>&1; rc=$?
lvs_state > after
check_eq "the second guard is refused (125)" "$rc" 125
check_out "it names the holder's pid" out2 "vg/b is in use by another guard run \(pid $hp"
check "it changed nothing" cmp -s before after
guard --lv vg/b --lv vg/c --wait -- sh -c 'touch /tmp/w/waiter-ran' > out3 2>&1 &
wp=$!
sleep 2
check "with --wait it waits while the holder runs" [ ! -e /tmp/w/waiter-ran ]
wait $hp; check_eq "the holder ends well" "$?" 0
wait $wp; check_eq "the waiter then runs and ends well" "$?" 0
check "the waiter's command ran after the holder" [ -e /tmp/w/waiter-ran ]
check "no guard snapshot left" no_guard_snapshots
end

begin eight_guards_on_eight_lvs_at_once
for n in 1 2 3 4 5 6 7 8; do mkfs_lv "l$n" 24M; done
start=$(cut -d' ' -f1 /proc/uptime)
for n in 1 2 3 4 5 6 7 8; do
  # odd runs fail (rolled back), even runs succeed (kept)
  code=$((n % 2 * 3))
  guard --lv "vg/l$n" -- sh -c "mkdir -p /mnt/x$n; mount /dev/vg/l$n /mnt/x$n; echo run$n > /mnt/x$n/f; umount /mnt/x$n; sleep 1; exit $code" > "out$n" 2>&1 &
  eval "p$n=\$!"
done
for n in 1 2 3 4 5 6 7 8; do eval "wait \$p$n"; eval "rc$n=\$?"; done
note "eight guards took $(awk "BEGIN{print $(cut -d' ' -f1 /proc/uptime) - $start}")s"
for n in 1 2 3 4 5 6 7 8; do
  eval "rc=\$rc$n"
  if [ $((n % 2)) = 1 ]; then
    check_eq "l$n: failure passes through (3) and is rolled back" "$rc/$(content "l$n")" "3/original"
  else
    check_eq "l$n: success (0) and its change kept" "$rc/$(content "l$n")" "0/run$n"
  fi
  check "l$n: e2fsck -n clean" fsck_clean "l$n"
done
check "no guard snapshot left" no_guard_snapshots
check_eq "eight runs in the journal, all done" "$(grep -l '"phase": "done"' /var/lib/guard/runs/*.json | wc -l)" 8
end

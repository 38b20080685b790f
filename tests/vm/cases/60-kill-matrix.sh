# Kill matrix (issue 6): guard gets SIGKILL at each phase, for a command that succeeds and one
# that fails; then `guard recover`. Each case protects a two-LV set (vg/a, vg/b; origins not
# mounted, so merges finish at once). Expected end state, the table this file runs:
#
#   phase (pause point)                  command  both origins hold   why
#   after planning (before-snapshot-1)   ok/fail  before-bytes        the command never ran
#   between snapshots (after-snapshot-1) ok/fail  before-bytes        half a set is removed
#   command running (command-running)    ok/fail  before-bytes        result unknown: rolled back
#   before the decision (before-decision) ok      after-bytes         success was journaled
#   before the decision (before-decision) fail    before-bytes        failure was journaled
#   during the merge (before-merge-2)    fail     before-bytes        a merged, b merged by recover
#   during removal (before-remove-2)     ok       after-bytes         a removed, b by recover
#
# Every case also checks: e2fsck -n clean, no guard snapshot, no lock held, nothing suspended,
# and a second `guard recover` changes nothing (lvs identical, nothing done).

CMD_OK='for l in a b; do mkdir -p /mnt/$l; mount /dev/vg/$l /mnt/$l; echo after > /mnt/$l/f; umount /mnt/$l; done; sync'
locks_free() { for f in /run/lock/guard/*.lock; do [ -e "$f" ] || continue; flock -n "$f" true || return 1; done; }
none_suspended() { ! dmsetup info -c --noheadings -o suspended 2>/dev/null | grep -q Suspended; }

km() {  # km PHASE POINT ok|fail EXPECTED
  begin "kill9_${1}_${3}"
  mkfs_lv a 32M; mkfs_lv b 32M; rm -f /tmp/w/cmd-running
  cmd=$CMD_OK
  [ "$2" = command-running ] && cmd="$cmd; touch /tmp/w/cmd-running; sleep 3"
  [ "$3" = fail ] && cmd="$cmd; exit 3"
  GUARD_TEST_FAULT="pause:$2:60" guard --lv vg/a --lv vg/b -- sh -c "$cmd" > out 2>&1 &
  gp=$!; i=0
  while [ $i -lt 300 ]; do
    if [ "$2" = command-running ]; then [ -e /tmp/w/cmd-running ] && break
    else grep -q "pausing at $2" out && break; fi
    sleep 0.1; i=$((i+1))
  done
  check "guard reached $2" [ $i -lt 300 ]
  kill -9 $gp; wait $gp 2>/dev/null
  [ "$2" = command-running ] && sleep 4   # the command outlives guard; recover waits for it
  guard recover > rec1 2>&1; rc=$?
  check_eq "recover exits 0" "$rc" 0
  check_eq "a holds the $4-bytes" "$(content a)" "$4"
  check_eq "b holds the $4-bytes" "$(content b)" "$4"
  check "a: e2fsck -n clean" fsck_clean a
  check "b: e2fsck -n clean" fsck_clean b
  check "no guard snapshot left" no_guard_snapshots
  check "no lock held" locks_free
  check "nothing left suspended" none_suspended
  lvs_state > s1; guard recover > rec2 2>&1; lvs_state > s2
  check "a second recover leaves lvs as it was" cmp -s s1 s2
  check "a second recover does nothing" sh -c "! grep -qE 'removed|rolled back|committed|resumed|thawed' rec2"
  [ "$TFAIL" = 0 ] || sed 's/^/    rec1| /' rec1 | tail -8
  end
}

km after_planning     before-snapshot-1 ok   original
km after_planning     before-snapshot-1 fail original
km between_snapshots  after-snapshot-1  ok   original
km between_snapshots  after-snapshot-1  fail original
km command_running    command-running   ok   original
km command_running    command-running   fail original
km before_decision    before-decision   ok   after
km before_decision    before-decision   fail original
km during_merge       before-merge-2    fail original
km during_removal     before-remove-2   ok   after

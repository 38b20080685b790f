# guard's folders on real LVM (Trust issue, items 12, 15, 16): a lock folder another user made
# first (in /run/lock, which every user may write) is refused, and nothing planted in it is
# followed; the state folder, the journal and the lock files are root's alone; two guards
# started in the same second get different run ids.

# refused_here CODE PATTERN... -- guard-args...: the exit code, every pattern in the output (as
# one line: problem, then fix), and lvs unchanged
refused_here() {
  want=$1; shift; : > pats
  while [ "$1" != -- ]; do printf '%s\n' "$1" >> pats; shift; done; shift
  lvs_state > before
  "$@" > out 2>&1; rc=$?
  lvs_state > after
  ok=1; [ "$rc" = "$want" ] || ok=0; cmp -s before after || ok=0
  tr "\n" " " < out > out1
  while read -r p; do grep -qE -- "$p" out1 || { ok=0; echo "  # no /$p/"; }; done < pats
  if [ $ok = 1 ]; then echo "  ok: $* -> $rc"; else
    echo "  not ok: $* -> $rc (want $want, lvs unchanged: $(cmp -s before after && echo yes || echo NO))"
    sed 's/^/    | /' out | tail -6; TFAIL=1
  fi
}
mode_of() { stat -c %a "$1"; }
victim_intact() { [ "$(cat /etc/victim)" = "do not touch" ] && [ ! -L /etc/victim ]; }

begin a_lock_folder_made_by_another_user_is_refused
mkfs_lv a 32M
echo "do not touch" > /etc/victim
mkdir -p /run/lock; rm -rf /run/lock/guard
# what any local user can do before guard's first run (no tmpfiles.d entry in this VM)
mkdir -m 1777 /run/lock/guard; chown 65534 /run/lock/guard
ln -s /etc/victim /run/lock/guard/watch.lock
uuid=$(lvs --noheadings -o lv_uuid vg/a | tr -d ' ')
ln -s /etc/victim "/run/lock/guard/$uuid.lock"
refused_here 125 '/run/lock/guard is owned by uid 65534, not root' 'fix: remove it .*rm -rf /run/lock/guard' -- guard --lv vg/a -- true
refused_here 125 '/run/lock/guard is owned by uid 65534' -- guard watch
check "/etc/victim unchanged" victim_intact
check "no guard snapshot" no_guard_snapshots
# root's, but open to all (1777): anything may have been planted in it
chown 0 /run/lock/guard
refused_here 125 '/run/lock/guard is writable by group or others \(mode 1777\)' 'chown root:root /run/lock/guard && chmod 0700 /run/lock/guard' -- guard --lv vg/a -- true
check "/etc/victim unchanged" victim_intact
# made private afterwards (as tmpfiles.d does), the planted links are still not followed
chmod 0700 /run/lock/guard
refused_here 125 "/run/lock/guard/$uuid.lock is a symlink" "fix: remove it: rm /run/lock/guard/$uuid.lock" -- guard --lv vg/a -- true
refused_here 125 '/run/lock/guard/watch.lock is a symlink' -- guard watch
check "/etc/victim unchanged" victim_intact
check "the planted links are left as they were" sh -c "[ -L /run/lock/guard/watch.lock ] && [ -L /run/lock/guard/$uuid.lock ]"
check "no guard snapshot" no_guard_snapshots
# the fix named works: guard makes the folder itself, 0700
rm -rf /run/lock/guard
guard --lv vg/a -- true > out 2>&1; check_eq "after rm -rf the run succeeds" "$?" 0
check_eq "guard made /run/lock/guard 0700" "$(mode_of /run/lock/guard)" 700
check_eq "owned by root" "$(stat -c %u /run/lock/guard)" 0
check "/etc/victim unchanged" victim_intact
rm -f /etc/victim
end

begin state_journal_and_lock_files_are_root_only
mkfs_lv a 32M
rm -rf /var/lib/guard /run/lock/guard
umask 022
guard --lv vg/a -- sh -c 'echo "secret token" > /dev/null' > out 2>&1; check_eq "a normal run succeeds" "$?" 0
check_eq "/var/lib/guard is 0700" "$(mode_of /var/lib/guard)" 700
check_eq "/var/lib/guard/runs is 0700" "$(mode_of /var/lib/guard/runs)" 700
check_eq "/run/lock/guard is 0700" "$(mode_of /run/lock/guard)" 700
n=0; for f in /var/lib/guard/runs/*.json; do n=$((n+1)); check_eq "journal $(basename "$f") is 0600" "$(mode_of "$f")" 600; done
check "there is a journal file" [ "$n" -ge 1 ]
n=0; for f in /run/lock/guard/*.lock; do n=$((n+1)); check_eq "lock $(basename "$f") is 0600" "$(mode_of "$f")" 600; done
check "there is a lock file" [ "$n" -ge 1 ]
# a kept run hands over to guard watch: its lock and ready files are private too
guard --lv vg/a --on-success keep -- true > out 2>&1; check_eq "a kept run succeeds" "$?" 0
run=$(run_id_of out)
for f in watch.lock watch.ready; do
  check_eq "$f is 0600" "$(mode_of /run/lock/guard/$f 2>&1)" 600
done
guard commit "$run" > out 2>&1; check_eq "commit" "$?" 0
# an older install left the state folder readable by all: tightened, and said so
chmod 755 /var/lib/guard /var/lib/guard/runs
guard --lv vg/a -- true > out 2>&1; check_eq "a run on loose folders succeeds" "$?" 0
check_out "it says it tightened the state folder" out "/var/lib/guard had mode 0755: made it 0700"
check_eq "/var/lib/guard is 0700 again" "$(mode_of /var/lib/guard)" 700
check_eq "/var/lib/guard/runs is 0700 again" "$(mode_of /var/lib/guard/runs)" 700
# a state folder another user owns is refused before any snapshot: nothing is written into it
chown 65534 /var/lib/guard
ls /var/lib/guard/runs > runs_before
refused_here 125 '/var/lib/guard is owned by uid 65534, not root' 'chown root:root /var/lib/guard && chmod 0700 /var/lib/guard' -- guard --lv vg/a -- true
ls /var/lib/guard/runs > runs_after
check "no journal file was added" cmp -s runs_before runs_after
chown 0 /var/lib/guard
check "no guard snapshot left" no_guard_snapshots
end

begin two_guards_in_one_second_get_different_run_ids
mkfs_lv a 32M; mkfs_lv b 32M
try=0
while :; do
  try=$((try+1))
  # start both right after a second turns, so that they share it
  s=$(date +%s); while [ "$(date +%s)" = "$s" ]; do :; done
  guard --lv vg/a -- true > o1 2>&1 & p1=$!
  guard --lv vg/b -- true > o2 2>&1 & p2=$!
  wait $p1; r1c=$?; wait $p2; r2c=$?
  r1=$(run_id_of o1); r2=$(run_id_of o2)
  [ "${r1%-*}" = "${r2%-*}" ] || [ $try -ge 3 ] || continue
  break
done
note "run ids: $r1 $r2"
check_eq "both succeed" "$r1c/$r2c" "0/0"
check_eq "both run ids have the same second" "${r1%-*}" "${r2%-*}"
check "the run ids differ" sh -c "[ -n '$r1' ] && [ '$r1' != '$r2' ]"
check "64 random bits: 16 hex digits" sh -c "echo '$r1 $r2' | grep -qE '^[0-9]{8}-[0-9]{6}-[0-9a-f]{16} [0-9]{8}-[0-9]{6}-[0-9a-f]{16}\$'"
check "one journal file each" sh -c "[ -f /var/lib/guard/runs/$r1.json ] && [ -f /var/lib/guard/runs/$r2.json ]"
check "no guard snapshot left" no_guard_snapshots
end

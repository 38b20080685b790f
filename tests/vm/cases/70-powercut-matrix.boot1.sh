# Power-cut matrix (issue 6): the kill matrix's phases, but the whole VM loses power (the qemu
# process is killed) and boots again from the same disks; `guard recover` runs as at boot.
# All cases run at once, each on its own two LVs, each guard paused at its phase; then one cut.
# The journal is on /dev/vdb (a plain disk, like /var/lib/guard on a real root), which survives.
# Expected end states: the table in 60-kill-matrix.sh.
fresh
mkfs.ext4 -q /dev/vdb; mkdir -p /var/lib/guard; mount /dev/vdb /var/lib/guard
# CASE POINT ok|fail: start a paused guard on vg/CASEa + vg/CASEb
pc() {
  mkfs_lv "${1}a" 16M; mkfs_lv "${1}b" 16M
  cmd="for l in ${1}a ${1}b; do mkdir -p /mnt/\$l; mount /dev/vg/\$l /mnt/\$l; echo after > /mnt/\$l/f; umount /mnt/\$l; done; sync"
  [ "$2" = command-running ] && cmd="$cmd; touch /tmp/w/$1.running; sleep 120"
  [ "$3" = fail ] && cmd="$cmd; exit 3"
  echo "$1 $2 $3" >> /var/lib/guard/cases
  GUARD_TEST_FAULT="pause:$2:120" guard --lv "vg/${1}a" --lv "vg/${1}b" -- sh -c "$cmd" > "/var/lib/guard/$1.out" 2>&1 &
}
reached() {  # CASE POINT
  if [ "$2" = command-running ]; then [ -e "/tmp/w/$1.running" ]; else grep -q "pausing at $2" "/var/lib/guard/$1.out"; fi
}
waitfor() { i=0; while [ $i -lt 400 ] && ! reached "$1" "$2"; do sleep 0.1; i=$((i+1)); done; reached "$1" "$2" || echo "boot1: $1 never reached $2"; }
# one at a time: each reaches its phase before the next starts (lvm serializes on the VG anyway)
for c in "p1 before-snapshot-1 ok" "p2 command-running ok" "p3 command-running fail" \
         "p4 before-decision ok" "p5 before-decision fail" "p6 before-merge-2 fail" \
         "p7 before-remove-2 ok" "p8 after-snapshot-1 fail"; do
  set -- $c; pc "$1" "$2" "$3"; waitfor "$1" "$2"
done
# p8 holds vg-p8b suspended (its second snapshot not yet taken): cut now, inside the hold
echo "boot1: all guards at their phase, cutting the power"
touch /host/.powercut; sleep 60

# Sourced by every guest-side test script (busybox sh, as root, in the VM).
# A case: begin NAME; check "what" CMD...; end. The host runner counts PASS/FAIL lines.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export GUARD_NO_SYSLOG=1
TNAME=""; TFAIL=0

# NOFRESH=1 keeps the disks as they are (the second boot of a two-boot case)
begin() { TNAME=$1; TFAIL=0; echo "--- $TNAME"; [ -n "${NOFRESH:-}" ] || fresh; }
end() { if [ "$TFAIL" = 0 ]; then echo "PASS $TNAME"; else echo "FAIL $TNAME"; fi; }
note() { echo "  # $*"; }
# check "description" command args...   (passes when the command exits 0)
check() { d=$1; shift; if "$@"; then echo "  ok: $d"; else echo "  not ok: $d"; TFAIL=1; fi; }
# check_out "description" FILE PATTERN   (grep -E in a captured output file)
check_out() { if grep -qE -- "$3" "$2"; then echo "  ok: $1"; else echo "  not ok: $1 (no /$3/ in $2:)"; sed 's/^/    | /' "$2" | tail -15; TFAIL=1; fi; }
# json_num KEY FILE: the first number under "KEY" in a JSON report
json_num() { grep -o "\"$1\": *[0-9.]*" "$2" | head -1 | grep -o '[0-9.]*$'; }
# check_ratio DESC A B MAX: 0 < A / B <= MAX (the figures are noted either way; a missing or
# non-positive figure fails)
check_ratio() { r=$(awk -v a="$2" -v b="$3" 'BEGIN{ if (a ~ /^[0-9]+$/ && b ~ /^[0-9]+$/ && a > 0 && b > 0) printf "%.2f", a / b; else print "bad" }'); note "$1: $2 / $3 = $r"; check "$1 <= $4" awk -v r="$r" -v m="$4" 'BEGIN{ exit !(r != "bad" && r + 0 <= m + 0) }'; }
check_eq() { if [ "$2" = "$3" ]; then echo "  ok: $1"; else echo "  not ok: $1 (got '$2', want '$3')"; TFAIL=1; fi; }

# Wipe every VG and start again: vg on /dev/vda (512 MiB); /dev/vdb stays free for a second VG.
fresh() {
  for m in $(grep -o ' /mnt/[^ ]*' /proc/mounts | sort -r); do /sbin/fsfreeze -u "$m" 2>/dev/null; umount -l "$m" 2>/dev/null; done
  for vg in $(vgs --noheadings -o vg_name 2>/dev/null); do vgremove -q -ff -y "$vg" >/dev/null 2>&1; done
  dmsetup remove_all -f >/dev/null 2>&1
  for d in /dev/vda /dev/vdb; do [ -b $d ] && pvremove -q -ff -y $d >/dev/null 2>&1; done
  rm -rf /var/lib/guard /run/lock/guard /etc/guard
  pvcreate -q -ff -y /dev/vda >/dev/null && vgcreate -q vg /dev/vda >/dev/null
}

# mkfs_lv NAME SIZE [MOUNTPOINT] [FSTYPE]: a filesystem LV holding a file "f" = original
mkfs_lv() {
  lvcreate -q -y -L "$2" -n "$1" vg >/dev/null
  # ext4 inits its inode tables and journal lazily, in the background after the first mount:
  # an unseen writer that would fill a small snapshot. Init everything now.
  if [ "${4:-ext4}" = ext4 ]; then lazy="-E lazy_itable_init=0,lazy_journal_init=0"; else lazy=""; fi
  mkfs."${4:-ext4}" -q $lazy /dev/vg/"$1" >/dev/null 2>&1
  mkdir -p /mnt/tmp; mount /dev/vg/"$1" /mnt/tmp; echo original > /mnt/tmp/f; sync; umount /mnt/tmp
  if [ -n "${3:-}" ]; then mkdir -p "$3"; mount /dev/vg/"$1" "$3"; fi
}
# thin_lv NAME VSIZE POOLSIZE [MOUNTPOINT]
thin_lv() {
  lvs vg/pool >/dev/null 2>&1 || lvcreate -q -y -L "$3" -T vg/pool >/dev/null 2>&1
  lvcreate -q -y -V "$2" -T vg/pool -n "$1" >/dev/null 2>&1
  mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 /dev/vg/"$1" >/dev/null 2>&1
  mkdir -p /mnt/tmp; mount /dev/vg/"$1" /mnt/tmp; echo original > /mnt/tmp/f; sync; umount /mnt/tmp
  if [ -n "${4:-}" ]; then mkdir -p "$4"; mount /dev/vg/"$1" "$4"; fi
}
# content of f on an LV, mounting it read-only if needed
content() {
  mp=$(grep -E "^(/dev/mapper/vg-$(echo "$1" | sed 's/-/--/g')|/dev/vg/$1) " /proc/mounts | awk '{print $2}' | head -1)
  if [ -n "$mp" ]; then cat "$mp/f"; return; fi
  mkdir -p /mnt/ro; mount -o ro /dev/vg/"$1" /mnt/ro && cat /mnt/ro/f; umount /mnt/ro
}
# refuse CODE PATTERN command...: a refusal with that exit code and message, and `lvs -a
# -o+lv_tags` identical before and after (bad input changes nothing)
refuse() {
  want=$1; pat=$2; shift 2
  lvs_state > before
  "$@" > out 2>&1; rc=$?
  lvs_state > after
  # the message may span lines (problem, then fix): match it as one line
  if [ "$rc" = "$want" ] && tr "\n" " " < out | grep -qE -- "$pat" && cmp -s before after; then
    echo "  ok: $* -> $rc"
  else
    echo "  not ok: $* -> $rc (want $want and /$pat/, lvs unchanged: $(cmp -s before after && echo yes || echo NO))"
    sed 's/^/    | /' out | tail -6; TFAIL=1
  fi
}
guard_snapshots() { lvs --noheadings -o lv_name @guard 2>/dev/null | tr -d ' '; }
no_guard_snapshots() { [ -z "$(guard_snapshots)" ]; }
lvs_state() { lvs -a --noheadings -o vg_name,lv_name,lv_attr,lv_size,origin,lv_tags 2>&1; }
# run ids: YYYYMMDD-HHMMSS- and 16 hex digits (4 before 64-bit ids)
run_id_of() { sed -nE 's/.*run ([0-9]{8}-[0-9]{6}-([0-9a-f]{16}|[0-9a-f]{4}))([^0-9a-f].*)?$/\1/p' "$1" | head -1; }
fsck_clean() { e2fsck -fn /dev/vg/"$1" >/dev/null 2>&1; }
# write_mb FILE MIB [sync]: write MIB MiB of zeros in 1 MiB pieces, each one fsynced with "sync"
# (busybox dd has no oflag=dsync). A program, so that `guard -- sh -c '...'` can call it.
cat > /usr/bin/write_mb <<'W'
#!/bin/sh
if [ "${3:-}" = sync ]; then
  i=0; while [ $i -lt "$2" ]; do dd if=/dev/zero of="$1" bs=1M count=1 seek=$i conv=notrunc,fsync 2>/dev/null || exit 1; i=$((i+1)); done
else
  dd if=/dev/zero of="$1" bs=1M count="$2" 2>/dev/null
fi
W
chmod +x /usr/bin/write_mb
# write_rate FILE MIB RATE: MIB MiB in 1 MiB fsynced pieces at about RATE MiB/s (0: as fast as possible)
cat > /usr/bin/write_rate <<'W'
#!/bin/sh
ms() { awk '{printf "%d", $1*1000}' /proc/uptime; }
i=0; t0=$(ms)
while [ $i -lt "$2" ]; do
  dd if=/dev/zero of="$1" bs=1M count=1 seek=$i conv=notrunc,fsync 2>/dev/null || exit 1
  i=$((i+1))
  if [ "$3" != 0 ]; then
    due=$(( t0 + i * 1000 / $3 )); now=$(ms)
    if [ $due -gt $now ]; then usleep $(( (due - now) * 1000 )); fi
  fi
done
exit 0
W
chmod +x /usr/bin/write_rate

# Guest side of `bench/run.sh cow`.
# busybox date has no %N: milliseconds from /proc/uptime (10 ms resolution)
ms() { awk '{printf "%d", $1*1000}' /proc/uptime; }
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
RATES=${RATES:-2 4 8 16 32 64 0}
MIB=${MIB:-64}
echo "== COW race: ${MIB} MiB written in 1 MiB fsynced pieces into an ext4 LV, snapshot starts at 4 MiB =="
fresh; mkfs_lv data 600M /mnt/data
printf '%-10s %-12s %-10s %-10s %-14s %s\n' "rate" "guard" "final COW" "extends" "reaction(ms)" "achieved MiB/s"
for r in $RATES; do
  t0=$(ms)
  guard --lv vg/data --size 4M --json -- write_rate /mnt/data/f 64 $r > out 2>&1
  t1=$(ms)
  inv=$(grep -q '"invalidated":true' out && echo INVALID || echo survived)
  ext=$(grep -o '"extensions":[0-9]*' out | head -1 | cut -d: -f2)
  react=$(grep -o 'issued <= [0-9]* ms' out | awk '{print $3}' | sort -n | tr '\n' ',' | sed 's/,$//')
  size=$(grep -o '"cow_bytes":[0-9]*' out | head -1 | cut -d: -f2)
  ach=$(awk "BEGIN{printf \"%.1f\", $MIB*1000/($t1-$t0)}")
  printf '%-10s %-12s %-10s %-10s %-14s %s\n' "${r}MiB/s" "$inv" "$((size/1048576))MiB" "$ext" "${react:--}" "$ach"
  [ -n "$size" ] || sed 's/^/    | /' out | tail -5
  grep '^guard: vg/data: extended' out | sed 's/.*extended snapshot [^ ]* /      step /; s/ (issued.*used when it landed; / (/'
  rm -f /mnt/data/f; sync
done

echo; echo "== watcher CPU: guard's own CPU time over a 30 s command =="
fresh; mkfs_lv data 200M /mnt/data
guard --lv vg/data --size 64M -- sh -c 'sleep 30; cat /proc/$PPID/stat > /tmp/gstat' >/dev/null 2>&1
set -- $(sed 's/.*) //' /tmp/gstat); echo "idle command:  utime+stime = $(( ${12} + ${13} )) ticks (1 tick = 10 ms) over 30 s => $(awk "BEGIN{printf \"%.2f\", (${12}+${13})/30}")% of a core"
guard --lv vg/data --size 64M -- sh -c 'write_rate /mnt/data/slow 30 1; cat /proc/$PPID/stat > /tmp/gstat' >/dev/null 2>&1
set -- $(sed 's/.*) //' /tmp/gstat); echo "1 MiB/s writer: utime+stime = $(( ${12} + ${13} )) ticks over ~30 s => $(awk "BEGIN{printf \"%.2f\", (${12}+${13})/30}")% of a core (fast polling, every 20 ms)"

echo; echo "== the same bursts with LVM's own protection (dmeventd, monitoring=1, threshold 70, +20%), no guard =="
cat > /etc/lvm/lvm.conf <<C
activation { udev_sync = 0 udev_rules = 0 monitoring = 1 snapshot_autoextend_threshold = 70 snapshot_autoextend_percent = 20 }
devices { obtain_device_list_from_udev = 0 }
global { use_lvmpolld = 0 }
dmeventd { executable = "/sbin/dmeventd" snapshot_library = "libdevmapper-event-lvm2snapshot.so" }
C
dmeventd; sleep 1
fresh; mkfs_lv data 600M /mnt/data
printf '%-10s %-12s %-10s\n' "rate" "dmeventd" "final COW"
for r in $RATES; do
  lvcreate -q -y -s -L 4M -n s vg/data >/dev/null
  write_rate /mnt/data/f 64 $r
  st=$(dmsetup status vg-s | awk '{print $4}')
  sz=$(lvs --noheadings --units m -o lv_size vg/s | tr -d ' ')
  printf '%-10s %-12s %-10s\n' "${r}MiB/s" "$( [ "$st" = Invalid ] && echo INVALID || echo survived)" "$sz"
  lvremove -q -y vg/s >/dev/null; rm -f /mnt/data/f; sync
done
echo "(rate 0 = as fast as the VM writes)"

echo; echo "== emulation factor: the same CPU-bound work in the guest (compare with the host figure below) =="
t=$(ms); dd if=/dev/zero bs=1M count=64 2>/dev/null | sha256sum >/dev/null; echo "guest: sha256sum of 64 MiB took $(( $(ms) - t )) ms"

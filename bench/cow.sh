# Guest side of `bench/run.sh cow`.
# busybox date has no %N: milliseconds from /proc/uptime (10 ms resolution)
ms() { awk '{printf "%d", $1*1000}' /proc/uptime; }
# write_rate: tests/vm/lib.sh
RATES=${RATES:-2 4 8 16 32 64 0}
MIB=${MIB:-64}
num() { grep -o "\"$1\": *[0-9.]*" "$2" | head -1 | grep -o '[0-9.]*$'; }
ratio() { awk "BEGIN{ if ($2 > 0) printf \"%.2f\", $1 / $2; else print \"-\" }"; }
echo "== COW race: ${MIB} MiB written in 1 MiB fsynced pieces into an ext4 LV, snapshot starts at 4 MiB =="
echo "   (peak: the most COW the run used; final: allocated at the end; ratio = final / peak, target <= 1.5)"
fresh; mkfs_lv data 600M /mnt/data
printf '%-9s %-9s %-8s %-9s %-6s %-8s %-22s %s\n' "rate" "guard" "peak" "final" "ratio" "extends" "reaction(ms)" "achieved MiB/s"
for r in $RATES; do
  t0=$(ms)
  guard --lv vg/data --size 4M --json -- write_rate /mnt/data/f $MIB $r > out 2>&1
  t1=$(ms)
  inv=$(grep -q '"invalidated":true' out && echo INVALID || echo survived)
  ext=$(grep -o '"extensions":[0-9]*' out | head -1 | cut -d: -f2)
  react=$(grep '^guard: ' out | grep -o 'issued <= [0-9]* ms' | awk '{print $3}' | sort -n | tr '\n' ',' | sed 's/,$//')
  size=$(num cow_bytes out); peak=$(num peak_used_bytes out)
  grep -q extend-failed out && echo "      (an lvextend failed: $(grep -c extend-failed out))"
  ach=$(awk "BEGIN{printf \"%.1f\", $MIB*1000/($t1-$t0)}")
  printf '%-9s %-9s %-8s %-9s %-6s %-8s %-22s %s\n' "${r}MiB/s" "$inv" "$((peak/1048576))MiB" "$((size/1048576))MiB" "$(ratio $size $peak)" "$ext" "${react:--}" "$ach"
  [ -n "$size" ] || sed 's/^/    | /' out | tail -5
  grep '^guard: vg/data: extended' out | sed 's/.*extended snapshot [^ ]* /      step /; s/ (issued.*used when it landed; / (/'
  rm -f /mnt/data/f; sync
done

echo; echo "== the same race on a thin origin: a 600 MiB thin LV whose pool has ~4 MiB free at the start =="
echo "   (room: the pool's free space at the start plus what guard added; ratio = room / the run's peak growth)"
printf '%-9s %-9s %-10s %-8s %-10s %-6s %-8s %s\n' "rate" "guard" "pool free" "peak" "added" "ratio" "extends" "achieved MiB/s"
for r in $RATES; do
  # a fresh pool each time: 64 MiB, the filesystem's own blocks, then a file guard does not
  # watch fills it to ~4 MiB free
  fresh
  lvcreate -q -y -L 64M -T vg/pool >/dev/null
  lvcreate -q -y -V 600M -T vg/pool -n tdata >/dev/null 2>&1
  mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 /dev/vg/tdata; mkdir -p /mnt/t; mount /dev/vg/tdata /mnt/t
  pool_free() {
    sz=$(lvs --noheadings --units b --nosuffix -o lv_size vg/pool | tr -d ' ')
    pct=$(lvs --noheadings -o data_percent vg/pool | tr -d ' ')
    awk "BEGIN{printf \"%d\", $sz - $sz * $pct / 100}"
  }
  free0=$(pool_free)
  dd if=/dev/zero of=/mnt/t/pad bs=1M count=$(( (free0 >> 20) - 4 )) conv=fsync status=none
  free0=$(pool_free)
  t0=$(ms)
  guard --lv vg/tdata --json -- write_rate /mnt/t/f $MIB $r > out 2>&1
  t1=$(ms)
  inv=$(grep -q '"invalidated":true' out && echo INVALID || echo survived)
  ext=$(grep -o '"extensions":[0-9]*' out | head -1 | cut -d: -f2)
  peak=$(num peak_used_bytes out); added=$(num added_bytes out)
  ach=$(awk "BEGIN{printf \"%.1f\", $MIB*1000/($t1-$t0)}")
  printf '%-9s %-9s %-10s %-8s %-10s %-6s %-8s %s\n' "${r}MiB/s" "$inv" "$((free0/1048576))MiB" "$((${peak:-0}/1048576))MiB" "$((${added:-0}/1048576))MiB" "$(ratio $((free0 + ${added:-0})) ${peak:-0})" "$ext" "$ach"
  [ -n "$peak" ] || sed 's/^/    | /' out | tail -5
  grep '^guard: vg/tdata: extended' out | sed 's/.*extended thin pool [^ ]* /      step /; s/ (issued.*used when it landed; / (/'
  umount /mnt/t
done

echo; echo "== a kept run's background watcher: ${MIB} MiB written after the run ended =="
echo "   (it cannot pause writers: it never stops production; so it needs a start that outlasts one lvextend)"
printf '%-9s %-7s %-9s %-8s %-9s %s\n' "rate" "start" "snapshot" "used" "size" "ratio"
# rate 0: as fast as one fsynced writer goes; burst: buffered, then `sync` (writeback at full speed)
for c in 8:4 0:16 burst:4; do
  r=${c%%:*}; st0=${c##*:}
  fresh; mkfs_lv data 600M /mnt/data
  guard -q --lv vg/data --size ${st0}M --keep 1h -- true >/dev/null 2>&1
  sleep 2
  if [ "$r" = burst ]; then
    dd if=/dev/zero of=/mnt/data/f bs=1M count=$MIB 2>/dev/null
  else
    write_rate /mnt/data/f $MIB $r
  fi
  sync; sleep 3
  snap=$(lvs --noheadings -o lv_name @guard | tr -d ' ' | head -1)
  st=$(dmsetup status vg-$(echo $snap | sed 's/-/--/g') | awk '{print $4}')
  if [ "$st" = Invalid ]; then
    printf '%-9s %-7s %-9s\n' "$r$([ "$r" = burst ] || echo MiB/s)" "${st0}MiB" INVALID
  else
    usedb=$(( $(echo "$st" | cut -d/ -f1) * 512 )); sizeb=$(( $(echo "$st" | cut -d/ -f2) * 512 ))
    printf '%-9s %-7s %-9s %-8s %-9s %s\n' "$r$([ "$r" = burst ] || echo MiB/s)" "${st0}MiB" valid "$((usedb/1048576))MiB" "$((sizeb/1048576))MiB" "$(ratio $sizeb $usedb)"
  fi
  pkill -f 'guard watch' 2>/dev/null || true
done

echo; echo "== watcher CPU: guard's own CPU time between 5 s and 25 s into the command (start-up left out) =="
ticks() { set -- $(sed 's/.*) //' "$1"); echo $(( ${12} + ${13} )); }
fresh; mkfs_lv data 200M /mnt/data
guard --lv vg/data --size 64M -- sh -c 'sleep 5; cat /proc/$PPID/stat > /tmp/g1; sleep 20; cat /proc/$PPID/stat > /tmp/g2' >/dev/null 2>&1
d=$(( $(ticks /tmp/g2) - $(ticks /tmp/g1) )); echo "idle command:   utime+stime = $d ticks (1 tick = 10 ms) over 20 s => $(awk "BEGIN{printf \"%.2f\", $d/20}")% of a core"
guard --lv vg/data --size 64M -- sh -c 'write_rate /mnt/data/slow 30 1 & sleep 5; cat /proc/$PPID/stat > /tmp/g1; sleep 20; cat /proc/$PPID/stat > /tmp/g2; wait' >/dev/null 2>&1
d=$(( $(ticks /tmp/g2) - $(ticks /tmp/g1) )); echo "1 MiB/s writer: utime+stime = $d ticks over 20 s => $(awk "BEGIN{printf \"%.2f\", $d/20}")% of a core (fast polling, every 20 ms)"

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

# Guest side of `bench/run.sh merge`: what a rollback costs for 10 / 100 / 1000 MiB of changed
# data, thick and thin, in one boot. Three figures per case:
#   bare    `lvconvert --merge --interval 1` of a closed origin (lvm2 alone)
#   guard   the merge inside `guard -- CMD` failing on a closed origin (the report's merge_seconds)
#   finish  `guard rollback --finish RUN` of a mounted origin: the downtime (unmount, reactivate,
#           merge, mount), the whole command's wall time
# The data is written straight to the LV (thick: every chunk copied to the COW; thin: new blocks
# in the pool), in 4 MiB direct writes.
ms() { awk '{printf "%d", $1*1000}' /proc/uptime; }
fresh
vgremove -q -ff -y vg >/dev/null 2>&1
pvcreate -q -ff -y /dev/vdb >/dev/null
vgcreate -q vg /dev/vda /dev/vdb >/dev/null       # 4 GiB: room for 1 GiB changed and its COW
num() { grep -o "\"$1\": *[0-9.]*" "$2" | head -1 | grep -o '[0-9.]*$'; }
rate() { awk "BEGIN{ if ($2 > 0) printf \"%.0f\", $1 / ($2 / 1000); else print \"-\" }"; }

one_case() {  # KIND MiB
  kind=$1 mb=$2 lv=o
  lvremove -q -y vg >/dev/null 2>&1
  if [ "$kind" = thin ]; then
    lvcreate -q -y -L 1400M -T vg/pool >/dev/null
    lvcreate -q -y -V 1200M -T vg/pool -n $lv >/dev/null
    size=""
  else
    lvcreate -q -y -L 1200M -n $lv vg >/dev/null
    size="-L $((mb + mb / 8 + 8))M"
  fi
  w="dd if=/dev/zero of=/dev/vg/$lv bs=4M count=$((mb / 4 > 0 ? mb / 4 : 1)) oflag=direct status=none"
  [ "$mb" = 10 ] && w="dd if=/dev/zero of=/dev/vg/$lv bs=1M count=10 oflag=direct status=none"
  # bare lvm2
  if [ "$kind" = thin ]; then lvcreate -q -y -s -n s vg/$lv >/dev/null; else lvcreate -q -y -s $size -n s vg/$lv >/dev/null; fi
  sh -c "$w"
  t=$(ms); lvconvert -q --merge --interval 1 vg/s >/dev/null 2>&1; bare=$(( $(ms) - t ))
  lvchange -q -an vg/$lv >/dev/null 2>&1; lvchange -q -ay vg/$lv >/dev/null 2>&1   # a thin merge completes at activation
  # guard, closed origin: the merge in the run
  gsize=${size#-L }; [ -n "$gsize" ] && gsize="--size $gsize"
  guard -q --json --lv vg/$lv $gsize -- sh -c "$w; exit 1" 2> r >/dev/null
  g=$(num merge_seconds r); g=${g:-0}; gms=$(awk "BEGIN{printf \"%d\", $g * 1000}")
  act=$(grep -o '"action": *"[a-z-]*"' r | head -1)
  # guard, mounted origin: the merge is scheduled, --finish is the downtime
  mkfs.ext4 -q -F /dev/vg/$lv >/dev/null 2>&1; mkdir -p /mnt/m; mount /dev/vg/$lv /mnt/m
  fw="dd if=/dev/zero of=/mnt/m/fill bs=4M count=$((mb / 4 > 0 ? mb / 4 : 1)) oflag=direct status=none"
  [ "$mb" = 10 ] && fw="dd if=/dev/zero of=/mnt/m/fill bs=1M count=10 oflag=direct status=none"
  guard -q --lv vg/$lv $gsize -- sh -c "$fw; exit 1" >/dev/null 2>&1
  run=$(ls -t /var/lib/guard/runs/*.json | head -1); run=$(basename "$run" .json)
  t=$(ms); guard rollback --finish "$run" > f 2>&1; fin=$(( $(ms) - t ))
  grep -q "rolled back" f || { echo "--finish of $run did not roll back:"; tail -5 f; }
  umount /mnt/m 2>/dev/null
  printf '%-5s %5s MiB | bare %6s ms %5s MiB/s | guard %6s ms %5s MiB/s (%s) | --finish downtime %6s ms\n' \
    "$kind" "$mb" "$bare" "$(rate $mb $bare)" "$gms" "$(rate $mb $gms)" "${act#*: }" "$fin"
}
echo "== rollback merge: 10 / 100 / 1000 MiB changed, thick and thin (one boot) =="
for kind in ${KINDS:-thick thin}; do for mb in ${SIZES:-10 100 1000}; do one_case $kind $mb; done; done

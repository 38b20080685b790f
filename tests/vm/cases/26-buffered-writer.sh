# Trust item 10: no VG room and a command writing at full buffered speed. The page cache can
# hold far more dirty data than the COW room left; the flush at a freeze (or plain writeback)
# would then invalidate the snapshot. guard bounds the dirty cache while the room is short, so
# what can still land always fits: the snapshot is never invalidated, the run is held, and the
# rollback gives back the original bytes. At 4, 8 and 16 MiB of VG room, thick and thin.

wait_held_or_done() { i=0; while [ $i -lt 600 ]; do grep -q '"frozen": \[$' /var/lib/guard/runs/*.json 2>/dev/null && return 0; kill -0 "$1" 2>/dev/null || return 0; sleep 0.2; i=$((i+1)); done; return 1; }
no_hold_after_rollback() { ! awk '/rollback requested/ {r=1} r && /guard froze|guard did not freeze/ {bad=1} END {exit !bad}' "$1"; }
not_invalid() { ! dmsetup status 2>/dev/null | grep -q 'snapshot Invalid'; }
pool_ok() { ! dmsetup status 2>/dev/null | grep -q 'thin-pool.* \(out_of_data_space\|Fail\|ro\) '; }

buffered_case() {  # KIND ROOM_MB
  kind=$1; room=$2
  if [ "$kind" = thick ]; then
    mkfs_lv data 300M /mnt/data
    free_mb=$(vgs --noheadings --units m --nosuffix -o vg_free vg | tr -d ' ' | cut -d. -f1)
    lvcreate -q -y -L "$((free_mb - 8 - room))M" -n filler vg >/dev/null
    size="--size 8M"
  else
    thin_lv data 300M 40M /mnt/data
    free_mb=$(vgs --noheadings --units m --nosuffix -o vg_free vg | tr -d ' ' | cut -d. -f1)
    lvcreate -q -y -L "$((free_mb - room))M" -n filler vg >/dev/null
    size=""
  fi
  guard --lv vg/data $size -- sh -c 'dd if=/dev/zero of=/mnt/data/big bs=1M count=250 2>/dev/null; exit 0' > out 2>&1 &
  gp=$!
  check "$kind/$room MiB: guard holds the run (or ends) in time" wait_held_or_done $gp
  run=$(run_id_of out)
  check "$kind/$room MiB: the snapshot was never invalidated" not_invalid
  [ "$kind" = thin ] && check "$kind/$room MiB: the pool never ran out of space" pool_ok
  # on a failure, what guard said and what device-mapper shows, for the log
  [ "$TFAIL" = 0 ] || { sed 's/^/    | /' out | tail -20; dmsetup status | sed 's/^/    | dm: /'; }
  check_out "$kind/$room MiB: guard bounded the dirty page cache" out "dirty page cache"
  guard rollback "$run" > out2 2>&1
  wait $gp
  guard rollback --finish "$run" > out3 2>&1
  # once the rollback is asked for, the command is killed: a new hold would freeze the
  # filesystem under the processes that must exit first
  check "$kind/$room MiB: no new hold after the rollback request" no_hold_after_rollback out
  check_eq "$kind/$room MiB: the original bytes are back" "$(content data)" original
  check "$kind/$room MiB: e2fsck clean" fsck_clean data
  check_eq "$kind/$room MiB: the kernel's dirty limits are restored" "$(cat /proc/sys/vm/dirty_bytes)/$(cat /proc/sys/vm/dirty_ratio)" "0/20"
}

for room in 4 8 16; do
  begin "buffered_writer_thick_${room}M_room"
  buffered_case thick $room
  end
done
for room in 4 8 16; do
  begin "buffered_writer_thin_${room}M_room"
  buffered_case thin $room
  end
done

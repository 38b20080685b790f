# Guest side of `bench/run.sh record`: the cost of recording changed paths (fanotify) during a
# guarded run, against the same run with --no-record, interleaved, in one boot.
# Two writers on an ext4 LV of 600 MiB: many small files (create, write, rename, delete: the
# event-heavy case) and 64 MiB in 4 KiB writes (a write(2) each: one FAN_MODIFY each).
ms() { awk '{printf "%d", $1*1000}' /proc/uptime; }
N=${N:-11}
fresh
mkfs_lv data 600M /mnt/data
small='i=0; while [ $i -lt 2000 ]; do echo $i > /mnt/data/s$i; mv /mnt/data/s$i /mnt/data/r$i; i=$((i+1)); done; rm -f /mnt/data/r*; sync'
big='dd if=/dev/zero of=/mnt/data/big bs=4k count=16384 2>/dev/null; sync; rm -f /mnt/data/big; sync'
med() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { awk "BEGIN{printf \"%.3f\", $1/$2}"; }
# the command times itself too: the writer's own slowdown, apart from guard's work after it
timed() { echo 'ms() { awk "{printf \"%d\", \$1*1000}" /proc/uptime; }; t0=$(ms); '"$1"'; echo $(( $(ms) - t0 )) >> /tmp/w/'"$2"; }
for w in small big; do
  eval "cmd=\$$w"
  : > on; : > off; : > on_in; : > off_in
  for k in $(seq $N); do
    t=$(ms); guard -q --lv vg/data --size 300M --no-record -- sh -c "$(timed "$cmd" off_in)" >/dev/null 2>&1; echo $(( $(ms) - t )) >> off
    t=$(ms); guard -q --lv vg/data --size 300M -- sh -c "$(timed "$cmd" on_in)" >/dev/null 2>&1; echo $(( $(ms) - t )) >> on
  done
  OFF=$(med < off); ON=$(med < on); OFFI=$(med < off_in); ONI=$(med < on_in)
  echo "$w writer: guarded run --no-record ${OFF} ms, recording ${ON} ms (ratio $(ratio $ON $OFF)); the command alone ${OFFI} vs ${ONI} ms (ratio $(ratio $ONI $OFFI)); medians of $N, interleaved"
done
run=$(ls -t /var/lib/guard/runs/*.changes | head -1)
echo "last change list: $(wc -c < "$run") bytes"
# guard's peak memory at the end of the event-heavy writer (the recorder holds its paths then)
hwm() { guard -q --lv vg/data --size 300M "$@" -- sh -c "$small"'; grep VmHWM /proc/$PPID/status' 2>/dev/null | awk '{print $2}'; }
echo "guard VmHWM after the small-file writer: --no-record $(hwm --no-record) KiB, recording $(hwm) KiB"

# Guest side of `bench/run.sh overhead`: guard's cost over the bare lvm2 commands it needs.
# Medians of N interleaved repetitions, all in one boot. "one process per command" is guard
# with lvm2's lvmdbusd profile moved aside, which makes it run lvm once per command (as before
# it drove the lvm shell).
# busybox date has no %N: milliseconds from /proc/uptime (10 ms resolution)
ms() { awk '{printf "%d", $1*1000}' /proc/uptime; }
N=${N:-11}
PROFILE=/etc/lvm/profile/lvmdbusd.profile
noshell() { mv $PROFILE $PROFILE.off; "$@"; r=$?; mv $PROFILE.off $PROFILE; return $r; }
med() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { awk "BEGIN{printf \"%.2f\", $1/$2}"; }
fresh
for i in 1 2 3 4 5 6 7 8; do lvcreate -q -y -L 32M -n d$i vg >/dev/null; done
guard -q --lv vg/d1 --size 8M -- true >/dev/null 2>&1   # warm the page cache for guard itself

# ASLR: under TCG, code is translated per virtual address, so a process whose binary and
# libraries land at new random addresses translates all the code it runs afresh; with
# randomize_va_space=0 translations are reused across processes, as a real CPU needs none. Both
# are shown: the first is the target's figure, the second what the ratio is made of natively.
one_lv() {
echo "== one LV, randomize_va_space=$(cat /proc/sys/kernel/randomize_va_space): median of $N interleaved repetitions, wall ms (same boot) =="
: > a; : > b; : > b1; : > c; : > d; : > d1
for k in $(seq $N); do
  t=$(ms); lvcreate -q -y -s -L 8M -n s vg/d1 >/dev/null; lvremove -q -y vg/s >/dev/null; echo $(( $(ms) - t )) >> a
  t=$(ms); guard -q --lv vg/d1 --size 8M -- true >/dev/null 2>&1; echo $(( $(ms) - t )) >> b
  t=$(ms); noshell guard -q --lv vg/d1 --size 8M -- true >/dev/null 2>&1; echo $(( $(ms) - t )) >> b1
  t=$(ms); lvcreate -q -y -s -L 8M -n s vg/d1 >/dev/null; lvconvert -q --merge --interval 1 vg/s >/dev/null; echo $(( $(ms) - t )) >> c
  t=$(ms); guard -q --lv vg/d1 --size 8M -- false >/dev/null 2>&1; echo $(( $(ms) - t )) >> d
  t=$(ms); noshell guard -q --lv vg/d1 --size 8M -- false >/dev/null 2>&1; echo $(( $(ms) - t )) >> d1
done
A=$(med < a); B=$(med < b); B1=$(med < b1); C=$(med < c); D=$(med < d); D1=$(med < d1)
echo "bare lvcreate -s + lvremove:            ${A} ms"
echo "guard -- true:                          ${B} ms  (ratio $(ratio $B $A), target <= 1.05)"
echo "guard -- true, one process per command: ${B1} ms  (ratio $(ratio $B1 $A))"
echo "bare lvcreate -s + lvconvert --merge:   ${C} ms"
echo "guard -- false (rollback):              ${D} ms  (ratio $(ratio $D $C), target <= 1.05)"
echo "guard -- false, one process per command: ${D1} ms  (ratio $(ratio $D1 $C))"
}
ASLR=/proc/sys/kernel/randomize_va_space; aslr0=$(cat $ASLR)
one_lv; echo 0 > $ASLR; one_lv; echo "$aslr0" > $ASLR

echo; echo "== where a guarded run's time goes (GUARD_TRACE=1, one run) =="
GUARD_TRACE=1 guard -q --lv vg/d1 --size 8M -- true 2>&1 | grep guard-trace | sed 's/ -o lv_name,[^ ]*//; s/[0-9]\{8\}-[0-9]\{6\}-[0-9a-f]*/RUN/g' | cut -c1-120
t=$(ms); for k in $(seq $N); do lvm version >/dev/null; done; echo "an lvm process that does nothing (lvm version): $(( ($(ms) - t) / N )) ms"
t=$(ms); for k in $(seq $N); do lvs >/dev/null; done; echo "one bare lvs: $(( ($(ms) - t) / N )) ms"
t=$(ms); for k in $(seq $N); do echo "lvs"; done | lvm >/dev/null 2>&1; echo "one lvs inside a running lvm shell: $(( ($(ms) - t) / N )) ms"

echo; echo "== a set of 1, 2, 4, 8 LVs: guard -- true, and how long the origins are held =="
one=$(for k in 1 2 3 4 5; do t=$(ms); lvcreate -q -y -s -L 8M -n s vg/d1 >/dev/null; echo $(( $(ms) - t )); lvremove -q -y vg/s >/dev/null; done | med)
echo "one bare lvcreate -s: ${one} ms (target: the 8-LV set held under $((2 * one)) ms)"
for n in 1 2 4 8; do
  args=""; i=1; while [ $i -le $n ]; do args="$args --lv vg/d$i"; i=$((i+1)); done
  : > e; : > h
  for k in 1 2 3 4 5; do
    t=$(ms); guard -q --json $args --size 8M -- true 2>r >/dev/null; echo $(( $(ms) - t )) >> e
    grep -o '"writers_held_ms": *[0-9]*' r | grep -o '[0-9]*$' >> h
  done
  H=$(med < h)
  echo "$n LV(s): run $(med < e) ms, longest hold $H ms ($(ratio $H $one)x one lvcreate -s; $(( H / n )) ms per snapshot)"
done

echo; echo "== guard start-up and memory =="
t=$(ms); for k in $(seq 20); do guard --version >/dev/null; done; echo "guard --version: $(( ($(ms) - t) / 20 )) ms each"
guard --lv vg/d1 --size 8M -- sh -c 'grep VmHWM /proc/$PPID/status' 2>/dev/null | head -1

echo; echo "== guard status with 100 runs in the journal and 20 snapshots =="
fresh
for i in $(seq 20); do lvcreate -q -y -L 8M -n k$i vg >/dev/null; guard -q --lv vg/k$i --size 4M --on-success keep -- true >/dev/null 2>&1; done
one=$(ls /var/lib/guard/runs/*.json | head -1)
for i in $(seq 80); do sed "s/\"id\": \"[^\"]*\"/\"id\": \"20260101-000000-$(printf %04x $i)\"/; s/\"phase\": \"kept\"/\"phase\": \"done\"/" "$one" > "/var/lib/guard/runs/20260101-000000-$(printf %04x $i).json"; done
echo "journal: $(ls /var/lib/guard/runs | wc -l) runs, $(lvs --noheadings @guard | wc -l) guard snapshots"
# the fields guard reads (src/lvm/report.rs LV_FIELDS): open counts and kernel devices cost more
FIELDS=lv_name,vg_name,lv_attr,lv_size,origin,pool_lv,lv_tags,lv_merging,lv_snapshot_invalid,snap_percent,data_percent,metadata_percent,lv_kernel_major,lv_kernel_minor,lv_dm_path,segtype,lv_active,lv_device_open,lv_uuid,vg_extent_size,vg_free
status_rows() {
echo "-- randomize_va_space=$(cat $ASLR)"
: > s; : > l; : > sa; : > s1; : > lf; : > v
for k in $(seq $N); do
  t=$(ms); lvs -a >/dev/null; echo $(( $(ms) - t )) >> l
  t=$(ms); lvs -a --reportformat json --units b --nosuffix -o "$FIELDS" >/dev/null; echo $(( $(ms) - t )) >> lf
  t=$(ms); guard status >/dev/null; echo $(( $(ms) - t )) >> s
  t=$(ms); noshell guard status >/dev/null; echo $(( $(ms) - t )) >> s1
  t=$(ms); guard status --all --json >/dev/null; echo $(( $(ms) - t )) >> sa
  # the cheapest guard process there is (10 in a row: the clock ticks in 10 ms)
  t=$(ms); for j in 1 2 3 4 5 6 7 8 9 10; do guard --version >/dev/null; done; echo $(( $(ms) - t )) >> v
done
L=$(med < l); S=$(med < s); S1=$(med < s1); SA=$(med < sa); LF=$(med < lf); V=$(( $(med < v) / 10 ))
echo "bare lvs -a:                          ${L} ms"
echo "bare lvs -a with guard's fields, JSON: ${LF} ms  (ratio $(ratio $LF $L))"
echo "guard status:                         ${S} ms  (ratio $(ratio $S $L), target <= 1.10)"
echo "guard status, no lvmdbusd profile:    ${S1} ms  (ratio $(ratio $S1 $L))"
echo "guard status --all --json:            ${SA} ms  (ratio $(ratio $SA $L))"
echo "guard --version (a guard process that only parses its arguments): ${V} ms"
echo "floor: bare lvs -a + one guard process: $((L + V)) ms  (ratio $(ratio $((L + V)) $L))"
}
status_rows; echo 0 > $ASLR; status_rows; echo "$aslr0" > $ASLR

# Guest side of `bench/run.sh overhead`: guard's cost over the bare lvm2 commands it needs.
# busybox date has no %N: milliseconds from /proc/uptime (10 ms resolution)
ms() { awk '{printf "%d", $1*1000}' /proc/uptime; }
N=${N:-5}
fresh
for i in 1 2 3 4 5 6 7 8; do lvcreate -q -y -L 32M -n d$i vg >/dev/null; done
t=$(ms); for k in $(seq $N); do lvs >/dev/null; done; echo "one bare lvs: $(( ($(ms) - t) / N )) ms (guard needs one to plan)"
avg() { awk '{s+=$1} END {printf "%.0f", s/NR}'; }
echo "== one LV, $N repetitions each, wall ms (same boot) =="
: > a; : > b; : > c; : > d
for k in $(seq $N); do
  t=$(ms); lvcreate -q -y -s -L 8M -n s vg/d1 >/dev/null; lvremove -q -y vg/s >/dev/null; echo $(( $(ms) - t )) >> a
  t=$(ms); guard -q --lv vg/d1 --size 8M -- true >/dev/null 2>&1; echo $(( $(ms) - t )) >> b
  t=$(ms); lvcreate -q -y -s -L 8M -n s vg/d1 >/dev/null; lvconvert -q --merge --interval 1 vg/s >/dev/null; echo $(( $(ms) - t )) >> c
  t=$(ms); guard -q --lv vg/d1 --size 8M -- false >/dev/null 2>&1; echo $(( $(ms) - t )) >> d
done
A=$(avg < a); B=$(avg < b); C=$(avg < c); D=$(avg < d)
echo "bare lvcreate -s + lvremove:          ${A} ms"
echo "guard -- true:                        ${B} ms  (ratio $(awk "BEGIN{printf \"%.2f\", $B/$A}"))"
echo "bare lvcreate -s + lvconvert --merge: ${C} ms"
echo "guard -- false (rollback):            ${D} ms  (ratio $(awk "BEGIN{printf \"%.2f\", $D/$C}"))"
echo; echo "== set size: guard -- true over 1, 2, 4, 8 LVs =="
for n in 1 2 4 8; do
  args=""; i=1; while [ $i -le $n ]; do args="$args --lv vg/d$i"; i=$((i+1)); done
  : > e
  for k in $(seq 3); do t=$(ms); guard -q $args --size 8M -- true >/dev/null 2>&1; echo $(( $(ms) - t )) >> e; done
  echo "$n LV(s): $(avg < e) ms"
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
: > s; : > l; : > sa
for k in $(seq $N); do
  t=$(ms); lvs -a >/dev/null; echo $(( $(ms) - t )) >> l
  t=$(ms); guard status >/dev/null; echo $(( $(ms) - t )) >> s
  t=$(ms); guard status --all --json >/dev/null; echo $(( $(ms) - t )) >> sa
done
L=$(avg < l); S=$(avg < s); SA=$(avg < sa)
echo "bare lvs -a:                 ${L} ms"
echo "guard status:                ${S} ms  (ratio $(awk "BEGIN{printf \"%.2f\", $S/$L}"))"
echo "guard status --all --json:   ${SA} ms  (ratio $(awk "BEGIN{printf \"%.2f\", $SA/$L}"))"

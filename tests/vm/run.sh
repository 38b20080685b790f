#!/bin/bash
# Runs the real-LVM tier: builds guard, boots the VM (tests/vm/vm.sh) and runs every case file
# in tests/vm/cases/ inside it. Prints each case's checks, then "N passed, N failed".
#   tests/vm/run.sh [PATTERN]     only case files whose name matches PATTERN
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd); top=$(cd "$here/../.." && pwd)
pattern=${1:-}
profile=${GUARD_VM_PROFILE:-debug}
# scripts/test has built it (cargo test builds the binary too) and builds the .deb beside this
# tier: a build here would wait for that one's lock on target/
if [ -z "${GUARD_VM_PREBUILT:-}" ] || [ "$profile" != debug ]; then
  ( cd "$top" && if [ "$profile" = release ]; then cargo build -q --release; else cargo build -q; fi ) || exit 1
fi
share=$(mktemp -d /tmp/guard-vm-share.XXXXXX)
trap 'rm -rf "$share"' EXIT
cp "$top/target/$profile/guard" "$share/guard"
cp "$here/lib.sh" "$share/"
mkdir -p "$share/json"   # cases write --report / --json output here; validated at the end
"$here/vm.sh" prepare
passed=0; failed=0; start=$(date +%s)
tally() {  # NAME OUTPUT: print and count one boot's results
  local name=$1 out=$2 p fl
  echo "$out" | sed "s|^|[$name] |"
  p=$(echo "$out" | grep -c '^PASS '); fl=$(echo "$out" | grep -c '^FAIL ')
  passed=$((passed + p)); failed=$((failed + fl))
}
# Two-boot cases (NAME.boot1.sh, NAME.boot2.sh): the same disks across both boots, so the second
# is a reboot; boot 1 may end in a power cut (the guest creates /host/.powercut).
for f in "$here"/cases/*.boot1.sh; do
  [ -e "$f" ] || continue
  name=$(basename "$f" .boot1.sh)
  [ -n "$pattern" ] && [[ "$name" != *$pattern* ]] && continue
  t0=$(date +%s)
  d1=$(mktemp /tmp/guard-vm-pdisk.XXXXXX); d2=$(mktemp /tmp/guard-vm-pdisk.XXXXXX)
  truncate -s 512M "$d1" "$d2"
  for b in 1 2; do
    { echo '. /host/lib.sh; mkdir -p /tmp/w; cd /tmp/w'; cat "$here/cases/$name.boot$b.sh"; } > "$share/case.sh"
    out=$("$here/vm.sh" run --disk "$d1" --disk "$d2" --share "$share" --timeout 600 "$share/case.sh" 2>&1)
    tally "$name/boot$b" "$out"
    [ -n "$out" ] || { echo "[$name/boot$b] (no output; console:)"; tail -5 "$share/.vm-console" | sed "s#^#[$name/boot$b] | #"; }
  done
  if [ "$(echo "$out" | grep -c '^\(PASS\|FAIL\) ')" = 0 ]; then
    failed=$((failed + 1)); echo "[$name] FAIL (boot 2 finished no case: boot or harness problem)"
  fi
  rm -f "$d1" "$d2"
  echo "[$name] two boots in $(( $(date +%s) - t0 ))s"
done
for f in "$here"/cases/*.sh; do
  name=$(basename "$f" .sh)
  [[ "$name" == *.boot[12] ]] && continue
  [ -n "$pattern" ] && [[ "$name" != *$pattern* ]] && continue
  # each case file gets its own boot: a hung case cannot take the others with it
  { echo '. /host/lib.sh; mkdir -p /tmp/w; cd /tmp/w'; cat "$f"; } > "$share/case.sh"
  t0=$(date +%s)
  out=$("$here/vm.sh" run --disks 2 --mb 512 --share "$share" --timeout "${GUARD_VM_CASE_TIMEOUT:-900}" "$share/case.sh" 2>&1)
  echo "$out" | sed "s|^|[$name] |"
  p=$(echo "$out" | grep -c '^PASS '); fl=$(echo "$out" | grep -c '^FAIL ')
  if [ "$p" -eq 0 ] && [ "$fl" -eq 0 ]; then fl=1; echo "[$name] FAIL (no case finished: boot or harness problem)"; fi
  passed=$((passed + p)); failed=$((failed + fl))
  echo "[$name] $p passed, $fl failed in $(( $(date +%s) - t0 ))s"
done
# the JSON that real runs printed must follow the documented schemas (schema/)
if ls "$share"/json/*.json >/dev/null 2>&1; then
  if (cd "$top" && GUARD_JSON_DIR="$share/json" cargo test -q --test schema the_json_of_the_current_vm_run 2>&1 | tail -3); then
    echo "PASS json_output_follows_the_schemas ($(ls "$share"/json/*.json | wc -l) documents)"; passed=$((passed + 1))
  else
    echo "FAIL json_output_follows_the_schemas"; failed=$((failed + 1))
  fi
  [ -n "${GUARD_KEEP_JSON:-}" ] && cp "$share"/json/*.json "$GUARD_KEEP_JSON"/
fi
echo "real-LVM tier: $(( $(date +%s) - start ))s"
echo "vm: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

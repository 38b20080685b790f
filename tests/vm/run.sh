#!/bin/bash
# Runs the real-LVM tier: builds guard, boots the VM (tests/vm/vm.sh) and runs every case file
# in tests/vm/cases/ inside it. Prints each case's checks, then "N passed, N failed".
#   tests/vm/run.sh [PATTERN]     only case files whose name matches PATTERN
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd); top=$(cd "$here/../.." && pwd)
pattern=${1:-}
profile=${GUARD_VM_PROFILE:-debug}
( cd "$top" && if [ "$profile" = release ]; then cargo build -q --release; else cargo build -q; fi ) || exit 1
share=$(mktemp -d /tmp/guard-vm-share.XXXXXX)
trap 'rm -rf "$share"' EXIT
cp "$top/target/$profile/guard" "$share/guard"
cp "$here/lib.sh" "$share/"
"$here/vm.sh" prepare
passed=0; failed=0; start=$(date +%s)
for f in "$here"/cases/*.sh; do
  name=$(basename "$f" .sh)
  [ -n "$pattern" ] && [[ "$name" != *$pattern* ]] && continue
  # each case file gets its own boot: a hung case cannot take the others with it
  { echo '. /host/lib.sh; mkdir -p /tmp/w; cd /tmp/w'; cat "$f"; } > "$share/case.sh"
  t0=$(date +%s)
  out=$("$here/vm.sh" run --disks 2 --mb 512 --share "$share" --timeout "${GUARD_VM_CASE_TIMEOUT:-900}" "$share/case.sh" 2>&1)
  echo "$out" | sed "s/^/[$name] /"
  p=$(echo "$out" | grep -c '^PASS '); fl=$(echo "$out" | grep -c '^FAIL ')
  if [ "$p" -eq 0 ] && [ "$fl" -eq 0 ]; then fl=1; echo "[$name] FAIL (no case finished: boot or harness problem)"; fi
  passed=$((passed + p)); failed=$((failed + fl))
  echo "[$name] $p passed, $fl failed in $(( $(date +%s) - t0 ))s"
done
echo "real-LVM tier: $(( $(date +%s) - start ))s"
echo "vm: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

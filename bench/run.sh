#!/bin/bash
# Benchmarks on real LVM in the VM (run on demand; figures go into BENCHMARKS.md).
#   bench/run.sh cow        the COW race: reaction time, highest write rate survived from a 4 MiB
#                           snapshot, watcher CPU, and LVM's dmeventd autoextend under the same bursts
#   bench/run.sh overhead   a guarded run vs the bare lvm2 commands it needs, 1/2/4/8 LVs
#   bench/run.sh record     the cost of recording changed paths (fanotify) vs --no-record
#   bench/run.sh merge      a rollback's merge: 10/100/1000 MiB, thick and thin, and --finish downtime
# Everything in one boot per benchmark, so ratios compare like with like.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); top=$(cd "$here/.." && pwd)
which=${1:?usage: bench/run.sh cow|overhead|record|merge}
(cd "$top" && cargo build -q --release)
share=$(mktemp -d /tmp/guard-bench.XXXXXX); trap 'rm -rf "$share"' EXIT
cp "$top/target/release/guard" "$share/guard"; cp "$top/tests/vm/lib.sh" "$share/"
{ echo '. /host/lib.sh; mkdir -p /tmp/w; cd /tmp/w'; cat "$here/$which.sh"; } > "$share/bench.sh"
"$top/tests/vm/vm.sh" run --disks 2 --mb 2048 --mem 2048 --share "$share" --timeout 1800 "$share/bench.sh"
if [ "$which" = cow ]; then
  t0=$(date +%s%N); dd if=/dev/zero bs=1M count=64 2>/dev/null | sha256sum >/dev/null
  echo "host:  sha256sum of 64 MiB took $(( ($(date +%s%N) - t0) / 1000000 )) ms (the guest/host ratio converts the guest's CPU figures)"
fi

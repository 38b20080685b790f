# Sourced by the Debian bed's runners (run.sh, db.sh): boot a copy of $CACHE's pristine disk under
# qemu, drive it over ssh, count checks. The runner sets CACHE, top and pattern first, and
# BOOT=grub for a disk that boots through GRUB (image.sh grub); else the kernel is given to qemu.
BOOT=${BOOT:-kernel}
BIN=$top/target/debug/guard
# The package when it was built (scripts/test builds it first), else the binary and the unit.
DEB=$(ls "$top"/target/debian/guard_*.deb 2>/dev/null | head -1)
# A package older than the source would test yesterday's guard: use the fresh binary instead.
if [ -n "$DEB" ] && [ -n "$(find "$top/src" "$top/dist" "$top/Cargo.toml" -newer "$DEB" -print -quit)" ]; then
  echo "note: $DEB is older than the source; installing target/debug/guard (tests/deb/check.sh rebuilds the package)" >&2
  DEB=""
fi
W=$(mktemp -d /tmp/guard-debian.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
passed=0; failed=0; T=""; TF=0
cleanup() { [ -f "$W/qemu.pid" ] && kill "$(cat "$W/qemu.pid")" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT

g() { ssh -q -i "$CACHE/id_ed25519" -p "$PORT" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
        -o BatchMode=yes -o ConnectTimeout=5 -o ServerAliveInterval=5 root@127.0.0.1 "$@"; }
qemu() {
  local -a boot
  if [ "$BOOT" = grub ]; then
    # the BIOS boots the first disk: GRUB in its MBR. A reboot (or panic=N) restarts in place.
    boot=(-drive "file=$W/boot.img,format=raw,if=virtio" -drive "file=$W/disk.img,format=raw,if=virtio")
  else
    boot=(-kernel "$CACHE/vmlinuz" -initrd "$CACHE/initrd.img" -append "root=/dev/vg0/root console=ttyS0 ro"
          -drive "file=$W/disk.img,format=raw,if=virtio" -drive "file=$W/boot.img,format=raw,if=virtio")
  fi
  qemu-system-x86_64 -accel tcg -m 1024 -smp 2 -nographic "${boot[@]}" \
    -nic "user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:$PORT-:22" \
    </dev/null >> "$W/console.log" 2>&1 &
  echo $! > "$W/qemu.pid"
}
waitssh() {  # LIMIT [OLD_BOOT_ID]: until ssh answers (from another boot than OLD_BOOT_ID)
  local end=$(( $(date +%s) + $1 )) id
  while [ "$(date +%s)" -lt "$end" ]; do
    id=$(g cat /proc/sys/kernel/random/boot_id 2>/dev/null) && [ -n "$id" ] && [ "$id" != "${2:-}" ] && return 0
    kill -0 "$(cat "$W/qemu.pid")" 2>/dev/null || return 1
    sleep 2
  done
  return 1
}
start_vm() {
  cp --sparse=always "$CACHE/disk.img" "$W/disk.img"; cp --sparse=always "$CACHE/boot.img" "$W/boot.img"
  : > "$W/console.log"; local t0; t0=$(date +%s)
  qemu
  if ! waitssh 240; then  # a TCG boot can stall: one retry
    echo "  # boot stalled, retrying"; kill "$(cat "$W/qemu.pid")"; sleep 1; qemu
    waitssh 240 || { echo "  # no ssh after two boots; console:"; tail -20 "$W/console.log" | sed 's/^/  | /'; return 1; }
  fi
  echo "  # booted in $(( $(date +%s) - t0 ))s"
  # guard installed as a user would: the .deb (dpkg -i), or before it exists the binary and unit
  if [ -n "$DEB" ]; then
    g 'cat > /tmp/guard.deb && dpkg -i /tmp/guard.deb >/dev/null && rm /tmp/guard.deb' < "$DEB"
  else
    g 'cat > /usr/sbin/guard && chmod 755 /usr/sbin/guard' < "$BIN"
    g 'cat > /lib/systemd/system/guard-recover.service' < "$top/dist/systemd/guard-recover.service"
    g 'mkdir -p -m 0700 /var/lib/guard && systemctl daemon-reload && systemctl enable -q guard-recover.service'
  fi
}
reboot_vm() {
  local id t0; id=$(g cat /proc/sys/kernel/random/boot_id); t0=$(date +%s)
  g 'systemctl reboot' 2>/dev/null
  if ! waitssh 300 "$id"; then echo "  # no ssh after the reboot; console:"; tail -20 "$W/console.log" | sed 's/^/  | /'; return 1; fi
  echo "  # rebooted in $(( $(date +%s) - t0 ))s"
}
stop_vm() { g 'systemctl poweroff' 2>/dev/null; sleep 3; kill "$(cat "$W/qemu.pid")" 2>/dev/null; rm -f "$W/qemu.pid"; }

begin() { T=$1; TF=0; echo "--- $T"; }
end() { if [ "$TF" = 0 ]; then echo "PASS $T"; passed=$((passed + 1)); else echo "FAIL $T"; failed=$((failed + 1)); fi; }
ok() { echo "  ok: $1"; }
note() { echo "  # $*"; }
bad() { echo "  not ok: $1"; TF=1; }
check_eq() { if [ "$2" = "$3" ]; then ok "$1"; else bad "$1 (got '$2', want '$3')"; fi; }
check_out() { if grep -qE -- "$3" "$2"; then ok "$1"; else bad "$1 (no /$3/ in:)"; tail -15 "$2" | sed 's/^/    | /'; fi; }
want() { [ -z "$pattern" ] || [[ "$1" == *$pattern* ]]; }

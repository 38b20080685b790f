#!/bin/bash
# Trial boots (issue 13) on a Debian server that boots through GRUB (tests/debian/image.sh grub:
# GRUB in the boot disk's MBR, /boot on its first partition, / on vg0/root), driven over ssh.
# Each group boots a fresh copy of the pristine disk; a reboot (or a panic with panic=N) restarts
# the same VM, through GRUB again.
#   tests/debian/trial.sh [GROUP-PATTERN]
# Groups: smoke. Prints each check, then "debian-trial: N passed, N failed".
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd); top=$(cd "$here/../.." && pwd)
CACHE=${GUARD_DEBIAN_GRUB_CACHE:-$HOME/.cache/guard-debian-grub}
BOOT=grub
pattern=${1:-}
"$here/image.sh" grub || { echo "debian-trial: 0 passed, 1 failed (image)"; exit 1; }
(cd "$top" && cargo build -q) || exit 1
. "$here/lib.sh"

# GRUB prints this line on the serial console for each entry it boots
grub_boots() { grep -c "Booting \`" "$W/console.log"; }
first_kernel() { g "grep -m1 -oE '^[[:space:]]*linux[[:space:]]+[^ ]+' /boot/grub/grub.cfg" | awk '{print $2}'; }

# --- the bed itself: GRUB boots it, guard's boot pieces are in, a reboot comes back through GRUB
smoke() {
  begin smoke_boots_through_grub
  if start_vm; then
    g 'cat /proc/cmdline' > "$W/cmdline"
    check_out "GRUB booted the kernel (BOOT_IMAGE= on its command line)" "$W/cmdline" "BOOT_IMAGE=/vmlinuz-"
    check_eq "GRUB's default entry on the console" "$(grub_boots)" 1
    g 'guard --version' > "$W/version" 2>&1
    check_out "guard runs" "$W/version" "^guard "
    g 'lsinitramfs /boot/initrd.img-$(uname -r)' > "$W/initramfs"
    check_out "guard's local-premount script is in the initramfs" "$W/initramfs" "local-premount/guard$"
    g 'cat /boot/grub/grub.cfg' > "$W/grub.cfg"
    check_out "grub.cfg sources guard.cfg when there is one (42_guard)" "$W/grub.cfg" 'source \$\{config_directory\}/guard.cfg'
    if reboot_vm; then
      g 'cat /proc/cmdline' > "$W/cmdline"
      check_out "back through GRUB after the reboot" "$W/cmdline" "BOOT_IMAGE=/vmlinuz-$(g 'uname -r') "
      check_eq "GRUB booted twice in this VM" "$(grub_boots)" 2
      # the trial repository, offline: the test kernels go first in the menu, sshd breaks later
      g 'apt-get install -y linux-image-guardtest-panic linux-image-guardtest-good guardtest-sshbreak' > "$W/apt" 2>&1
      check_out "the trial packages install offline" "$W/apt" "Setting up guardtest-sshbreak"
      check_eq "update-grub puts the panicking test kernel first (entry 0)" "$(first_kernel)" /vmlinuz-6.1.0-99-guardtest
      check_eq "sshd -t refuses the broken config" "$(g 'sshd -t >/dev/null 2>&1; echo $?')" 255
      check_eq "the running sshd still serves" "$(g 'echo up')" up
    else bad "reboot"; fi
    stop_vm
  else bad "boot"; fi
  end
}

want smoke && smoke
echo "debian-trial: $passed passed, $failed failed"
[ "$failed" = 0 ]

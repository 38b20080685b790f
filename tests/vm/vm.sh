#!/bin/bash
# The real-LVM tier's virtual machine: a stock Debian kernel and lvm2 under qemu (TCG emulation),
# because the build and CI machines run a kernel without device-mapper.
#
#   vm.sh prepare     fetch the Debian kernel and lvm2 packages, build the initramfs (cached)
#   vm.sh run [--disk FILE]... [--disks N] [--mb MB] [--share DIR] [--timeout S] SCRIPT
#                     boot, run SCRIPT as root in the guest with DIR at /host, print what it printed
#                     and exit with its status. Disks named by --disk are kept (a second run on the
#                     same files is a reboot); --disks N adds N throwaway disks of MB MiB each.
#                     If the guest creates /host/.powercut, qemu is killed at once (a power cut).
#
# Cache: $GUARD_VM_CACHE (default ~/.cache/guard-vm). Needs root for apt-get. Why TCG: /dev/kvm
# exists on these machines but a KVM guest hangs at "Booting from ROM"; TCG boots in ~2 s anyway.
set -euo pipefail
CACHE=${GUARD_VM_CACHE:-$HOME/.cache/guard-vm}
PKGS="linux-image-amd64 lvm2 dmsetup libdevmapper1.02.1 libdevmapper-event1.02.1 dmeventd libaio1
      libedit2 liblvm2cmd2.03 thin-provisioning-tools e2fsprogs libext2fs2 libcom-err2 libss2 xfsprogs libinih1 liburcu8 acl attr"
HOST_TOOLS="qemu-system-x86 busybox-static kmod cpio"
# Bump when the image recipe changes, so a stale cache is rebuilt.
RECIPE=11

need_host_tools() {
  local missing="" p
  for p in $HOST_TOOLS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  [ -z "$missing" ] && return 0
  echo "vm: installing host packages:$missing" >&2
  apt-get update -qq
  # qemu-system-x86 from the default suite may replace a newer qemu-utils: we never use qemu-img.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

# copy a program and every shared library it needs into the image, at the path it has on a system
copy_prog() {
  local src=$1 root=$2 stage=${3:-} l d
  cp -L "$src" "$root/sbin/"
  for l in $(ldd "$src" 2>/dev/null | grep -o '/[^ ]*'); do
    d=${l#"$stage"}; mkdir -p "$root$(dirname "$d")"; cp -Ln "$l" "$root$d" 2>/dev/null || true
  done
}

prepare() {
  need_host_tools
  [ -f "$CACHE/initrd.gz" ] && [ -f "$CACHE/vmlinuz" ] && [ "$(cat "$CACHE/recipe" 2>/dev/null)" = "$RECIPE" ] && return 0
  echo "vm: building the guest image in $CACHE" >&2
  # a build that fails half-way must not pass for a finished one next time
  rm -f "$CACHE/recipe"
  mkdir -p "$CACHE/debs"
  ( cd "$CACHE/debs"
    # linux-image-amd64 is a meta package: fetch the versioned image it depends on too
    img=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
    [ -n "$img" ] || { apt-get update -qq; img=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}'); }
    apt-get download $PKGS "$img" 2>&1 | grep -v -e unsandboxed -e '^Get:' -e '^Fetched' || true )
  local X="$CACHE/x" R="$CACHE/root" K
  rm -rf "$X" "$R"; mkdir -p "$X"
  for f in "$CACHE"/debs/*.deb; do dpkg -x "$f" "$X"; done
  K=$(ls "$X/lib/modules" | head -1)
  cp "$X"/boot/vmlinuz-"$K" "$CACHE/vmlinuz"
  mkdir -p "$R"/{bin,sbin,usr/sbin,usr/bin,etc/lvm,proc,sys,dev,run,tmp,mnt,host,var/lib,lib/modules/$K}
  cp /bin/busybox "$R/bin/busybox"
  # busybox --list names busybox itself: linking that over the binary panics the kernel (ELOOP)
  for a in $("$R/bin/busybox" --list); do [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"; done
  cp -a "$X/lib/modules/$K"/modules.* "$R/lib/modules/$K/"
  (cd "$X/lib/modules/$K" && find kernel/drivers/md kernel/drivers/virtio kernel/drivers/block kernel/fs/ext4 \
     kernel/fs/jbd2 kernel/fs/mbcache.ko kernel/fs/xfs kernel/lib kernel/crypto kernel/net/9p kernel/fs/9p \
     kernel/fs/netfs kernel/fs/fscache kernel/fs/overlayfs -name '*.ko*' 2>/dev/null | cpio -pdm "$R/lib/modules/$K/" 2>/dev/null)
  depmod -b "$R" "$K"   # the .deb ships no modules.dep: depmod makes it at install time
  export LD_LIBRARY_PATH="$X/lib/x86_64-linux-gnu:$X/usr/lib/x86_64-linux-gnu"
  mkdir -p "$R/lib/x86_64-linux-gnu"
  cp -a "$X/lib/x86_64-linux-gnu/device-mapper" "$R/lib/x86_64-linux-gnu/"
  cp -a "$X"/lib/x86_64-linux-gnu/liblvm2cmd* "$X"/lib/x86_64-linux-gnu/libdevmapper-event* "$R/lib/x86_64-linux-gnu/" 2>/dev/null || true
  for b in "$X/sbin/lvm" "$X/sbin/dmsetup" "$X/sbin/dmeventd" "$X/sbin/mkfs.ext4" "$X/sbin/e2fsck" \
           "$X/usr/sbin/pdata_tools" "$X/sbin/mkfs.xfs" "$X/usr/sbin/xfs_freeze" "$X/usr/sbin/xfs_repair" \
           "$X/bin/setfacl" "$X/bin/getfacl" "$X/usr/bin/setfattr" "$X/usr/bin/getfattr"; do
    [ -e "$b" ] && copy_prog "$b" "$R" "$X"
  done
  # util-linux and coreutils as a real server has them (guard execs by PATH and gets these first)
  for b in /usr/bin/findmnt /usr/bin/lsblk /usr/sbin/fsfreeze /usr/sbin/blkid /usr/bin/mount /usr/bin/umount \
           /usr/bin/flock /usr/bin/setsid /usr/bin/setpriv /usr/bin/timeout /usr/bin/md5sum /usr/bin/sha256sum \
           /usr/bin/stat /usr/bin/env /usr/bin/script /usr/bin/diff /usr/bin/find; do
    [ -e "$b" ] && copy_prog "$b" "$R"
  done
  # Rust binaries unwind through libgcc_s
  cp -Ln /lib/x86_64-linux-gnu/libgcc_s.so.1 "$R/lib/x86_64-linux-gnu/"
  for t in lvcreate lvs vgcreate pvcreate lvconvert lvremove lvextend lvrename vgs pvs lvchange vgchange \
           lvdisplay vgremove pvremove vgextend lvresize lvreduce vgcfgbackup; do ln -sf lvm "$R/sbin/$t"; done
  for t in thin_check thin_dump thin_repair thin_restore; do
    ln -sf pdata_tools "$R/sbin/$t"; ln -sf /sbin/pdata_tools "$R/usr/sbin/$t"; done
  ln -sf /sbin/pdata_tools "$R/usr/sbin/pdata_tools"
  # lvm2's command profiles, as the package installs them (guard drives the lvm shell with one)
  cp -a "$X/etc/lvm/profile" "$R/etc/lvm/"
  # No udev in the guest; lvmpolld is not running either (lvconvert would warn and poll itself).
  cat > "$R/etc/lvm/lvm.conf" <<'C'
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
devices { obtain_device_list_from_udev = 0 }
global { use_lvmpolld = 0 }
C
  echo 'root:x:0:0:root:/root:/bin/sh' > "$R/etc/passwd"
  echo 'nobody:x:65534:65534:nobody:/nonexistent:/bin/sh' >> "$R/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$R/etc/group"
  cat > "$R/init" <<'I'
#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts; mount -t devpts -o ptmxmode=666 devpts /dev/pts; ln -sf pts/ptmx /dev/ptmx
mkdir -p /run/lock /run/lvm /dev/shm /host /tmp /var/lib /var/log /root; ln -sf /proc/self/mounts /etc/mtab
# crc32c_generic first, or ext4 mounts fail with "Cannot load crc32c driver"
for m in crc32c_generic libcrc32c virtio_pci virtio_blk dm-mod dm-snapshot dm-thin-pool ext4 xfs overlay 9pnet_virtio 9p; do
  modprobe $m 2>/dev/null; done
mount -t 9p -o trans=virtio,version=9p2000.L host /host
[ -x /host/guard ] && cp /host/guard /usr/sbin/guard
cd /host; sh /host/.vm-script > /host/.vm-out 2>&1; echo $? > /host/.vm-rc; sync
poweroff -f
I
  chmod +x "$R/init"
  (cd "$R" && find . | cpio -o -H newc 2>/dev/null | gzip -1 > "$CACHE/initrd.gz")
  echo "$RECIPE" > "$CACHE/recipe"
}

run() {
  local share="" mb=256 tmo=${GUARD_VM_TIMEOUT:-600} ndisks=0 mem=1024 drives=() tmpdisks=()
  while [ $# -gt 1 ]; do
    case "$1" in
      --disk) drives+=(-drive "file=$2,format=raw,if=virtio"); shift 2 ;;
      --disks) ndisks=$2; shift 2 ;;
      --mb) mb=$2; shift 2 ;;
      --mem) mem=$2; shift 2 ;;
      --share) share=$2; shift 2 ;;
      --timeout) tmo=$2; shift 2 ;;
      *) break ;;
    esac
  done
  local script=$1
  prepare
  [ -n "$share" ] || share=$(mktemp -d)
  local i d
  for ((i = 0; i < ndisks; i++)); do
    d=$(mktemp /tmp/guard-vm-disk.XXXXXX); truncate -s "${mb}M" "$d"; tmpdisks+=("$d")
    drives+=(-drive "file=$d,format=raw,if=virtio")
  done
  cp "$script" "$share/.vm-script"; rm -f "$share/.vm-out" "$share/.vm-rc" "$share/.powercut"
  timeout "$tmo" qemu-system-x86_64 -accel tcg -m "$mem" -smp 2 -nographic -no-reboot \
    -kernel "$CACHE/vmlinuz" -initrd "$CACHE/initrd.gz" -append "console=ttyS0 quiet panic=-1" \
    "${drives[@]}" -virtfs "local,path=$share,mount_tag=host,security_model=none" \
    </dev/null >"$share/.vm-console" 2>&1 &
  local qpid=$!
  # a power cut: the guest asks for it by creating .powercut; kill qemu without warning
  while kill -0 "$qpid" 2>/dev/null; do
    if [ -e "$share/.powercut" ]; then pkill -9 -P "$qpid" 2>/dev/null; kill -9 "$qpid" 2>/dev/null; break; fi
    sleep 0.2
  done
  wait "$qpid" 2>/dev/null || true
  for d in "${tmpdisks[@]}"; do rm -f "$d"; done
  if [ -e "$share/.powercut" ]; then cat "$share/.vm-out" 2>/dev/null; return 0; fi
  cat "$share/.vm-out" 2>/dev/null || { echo "vm: no output; console:"; tail -20 "$share/.vm-console"; }
  return "$(cat "$share/.vm-rc" 2>/dev/null || echo 99)"
}

case "${1:-}" in
  prepare) prepare ;;
  run) shift; run "$@" ;;
  *) sed -n '2,13p' "$0"; exit 2 ;;
esac

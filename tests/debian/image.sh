#!/bin/bash
# The headline test bed (issue 7): a real Debian bookworm server whose root filesystem is the LV
# vg0/root, booted under qemu as a full system (systemd as PID 1, its own initramfs activating the
# root LV, udev, lvm2, sshd, dpkg, apt). Built once and cached; each scenario boots a sparse copy
# of the pristine disk.
#
#   image.sh [base|db|grub]  build (or reuse) $CACHE: disk.img (PV: vg0/root), boot.img (/boot, a
#                  plain ext4 disk), vmlinuz, initrd.img, id_ed25519, repo/
#
# The db variant (issue 12, its own cache) adds MariaDB and PostgreSQL 15 from Debian's archive,
# each on its own LV: /var/lib/mysql on vg0/mysql (thick), /var/lib/postgresql on vg0/pg, a thin
# LV in the pool vg0/pool; both servers started by systemd at boot.
#
# The grub variant (issue 13, its own cache) boots through GRUB as an installed server does:
# boot.img is an MBR disk, GRUB (grub-pc, BIOS) in its MBR, /boot on its first partition; the
# runner boots it with BOOT=grub (lib.sh), boot disk first. It carries guard's boot pieces (the
# local-premount script in the initramfs, /etc/grub.d/42_guard; the recipe follows their content)
# and the repository trial: linux-image-guardtest-panic (6.1.0-99-guardtest, sorts first: its
# initramfs is empty, the kernel panics), linux-image-guardtest-good (6.1.0-98-guardtest, the
# real kernel and initramfs under another name), guardtest-hang (a start-up job that never ends)
# and guardtest-sshbreak (sshd refuses its config
# from the next boot on).
#
# Steps: debootstrap (minbase) → packages and config in a host chroot (the initramfs is built
# there too: inside the emulated guest it takes 8 minutes) → mkfs.ext4 -d into root.img → the
# initramfs VM of tests/vm makes the PV, vg0 and vg0/root and copies root.img in.
#
# Packages for the scenarios come from local apt repositories made with dpkg-deb (no network in
# the guest): guardtest-ok (upgrades cleanly), guardtest-conf (changes a conffile and a file under
# /usr), guardtest-bad (its 2.0 postinst fails). repo-v1 is installed in the image; repo-good has
# ok and conf 2.0; repo-bad has all three at 2.0.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); top=$(cd "$here/../.." && pwd)
VARIANT=${1:-base}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PKGS="systemd-sysv lvm2 thin-provisioning-tools linux-image-amd64 initramfs-tools openssh-server
      e2fsprogs udev kmod dbus zstd iproute2 ifupdown isc-dhcp-client procps less python3"
case $VARIANT in
  base) CACHE=${GUARD_DEBIAN_CACHE:-$HOME/.cache/guard-debian}; RECIPE=5 ;;
  db) CACHE=${GUARD_DEBIAN_DB_CACHE:-$HOME/.cache/guard-debian-db}; RECIPE=db2
      PKGS="$PKGS mariadb-server mariadb-client postgresql-15 postgresql-client-15 rsync xfsprogs" ;;
  grub) CACHE=${GUARD_DEBIAN_GRUB_CACHE:-$HOME/.cache/guard-debian-grub}
        RECIPE=grub2-$(cat "$top/dist/initramfs-tools/scripts/local-premount/guard" "$top/dist/grub.d/42_guard" | sha256sum | cut -c1-12)
        PKGS="$PKGS grub-pc" ;;
  *) echo "image.sh: unknown variant '$VARIANT' (base, db or grub)" >&2; exit 2 ;;
esac

# scripts/test builds the images beside the VM tier: a runner that wants an image being built
# waits for that build rather than starting a second one in the same folder
mkdir -p "$(dirname "$CACHE")"; exec 9>"$CACHE.lock"; flock 9
if [ -f "$CACHE/disk.img" ] && [ "$(cat "$CACHE/recipe" 2>/dev/null)" = "$RECIPE" ]; then exit 0; fi
for p in debootstrap dpkg-dev openssh-client e2fsprogs $([ "$VARIANT" = grub ] && echo fdisk cpio); do
  dpkg -s "$p" >/dev/null 2>&1 || missing="${missing:-} $p"
done
if [ -n "${missing:-}" ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
"$top/tests/vm/vm.sh" prepare
rm -rf "$CACHE"; mkdir -p "$CACHE"; cd "$CACHE"
t0=$(date +%s)

# --- the scenario packages and their repositories
mkpkg() {  # NAME VERSION [postinst-exit]
  local d=pkgsrc/$1-$2
  mkdir -p "$d/DEBIAN" "$d/usr/share/guardtest" "$d/usr/lib/guardtest" "$d/etc" "$d/boot"
  printf 'Package: %s\nVersion: %s\nArchitecture: all\nMaintainer: guard tests <root@localhost>\nDescription: guard test package\n' "$1" "$2" > "$d/DEBIAN/control"
  echo "$1 $2" > "$d/usr/share/guardtest/$1"
  # guardtest-ok plays a kernel: a file in /boot that must stay in step with the root
  [ "$1" = guardtest-ok ] && echo "kernel $2" > "$d/boot/guardtest-vmlinuz-$2"
  if [ "$1" = guardtest-conf ]; then
    echo "setting=$2" > "$d/etc/guardtest.conf"; echo /etc/guardtest.conf > "$d/DEBIAN/conffiles"
    echo "data $2" > "$d/usr/lib/guardtest/data"
  fi
  if [ -n "${3:-}" ]; then printf '#!/bin/sh\necho "guardtest: postinst fails on purpose" >&2\nexit %s\n' "$3" > "$d/DEBIAN/postinst"; chmod 755 "$d/DEBIAN/postinst"; fi
  dpkg-deb --root-owner-group --build "$d" "pkgs/$1_$2_all.deb" >/dev/null
}
mkdir -p pkgs
mkpkg guardtest-ok 1.0; mkpkg guardtest-conf 1.0; mkpkg guardtest-bad 1.0
mkpkg guardtest-ok 2.0; mkpkg guardtest-conf 2.0; mkpkg guardtest-bad 2.0 1
mkrepo() {  # NAME DEB...
  local r=repo/$1; shift; mkdir -p "$r"; cp "$@" "$r/"
  (cd "$r" && dpkg-scanpackages -m . /dev/null 2>/dev/null > Packages)
}
mkrepo v1 pkgs/*_1.0_all.deb
mkrepo good pkgs/guardtest-ok_2.0_all.deb pkgs/guardtest-conf_2.0_all.deb pkgs/guardtest-bad_1.0_all.deb
mkrepo bad pkgs/*_2.0_all.deb

# --- the root filesystem, in a host chroot
R=$CACHE/root
debootstrap --variant=minbase bookworm "$R" "$MIRROR" > debootstrap.log 2>&1 || { tail -20 debootstrap.log; exit 1; }
mounts() { mount -t proc proc "$R/proc"; mount -t sysfs sys "$R/sys"; mount --bind /dev "$R/dev"; mount -t devpts devpts "$R/dev/pts"; }
umounts() { for m in dev/pts dev sys proc; do umount "$R/$m" 2>/dev/null || true; done; }
trap umounts EXIT
mounts
printf '#!/bin/sh\nexit 101\n' > "$R/usr/sbin/policy-rc.d"; chmod +x "$R/usr/sbin/policy-rc.d"
cp -n "$HOME"/.cache/guard-vm/debs/linux-image-*.deb "$R/var/cache/apt/archives/" 2>/dev/null || true
mkdir -p "$R/etc/initramfs-tools/conf.d"
echo MODULES=most > "$R/etc/initramfs-tools/conf.d/modules"
printf 'dm-mod\ndm-snapshot\ndm-thin-pool\nvirtio_pci\nvirtio_blk\ncrc32c_generic\next4\n' >> "$R/etc/initramfs-tools/modules"
# fstab before the kernel's postinst runs update-initramfs: the hook looks at the root device.
# /boot is a plain partition (the second disk), as Debian's guided LVM install makes it.
printf '/dev/vg0/root / ext4 defaults,errors=remount-ro 0 1\nLABEL=boot /boot ext4 defaults 0 2\n' > "$R/etc/fstab"
if [ "$VARIANT" = db ]; then
  printf '/dev/vg0/mysql /var/lib/mysql ext4 defaults 0 2\n/dev/vg0/pg /var/lib/postgresql ext4 defaults 0 2\n' >> "$R/etc/fstab"
  # a 1 GiB guest runs both servers: small buffers
  mkdir -p "$R/etc/mysql/mariadb.conf.d"
  printf '[mysqld]\ninnodb_buffer_pool_size = 64M\nperformance_schema = OFF\n' > "$R/etc/mysql/mariadb.conf.d/90-guardtest.cnf"
fi
chroot "$R" apt-get update -qq
# grub-pc's postinst would ask where to install: nowhere yet (the guest does it, below)
if [ "$VARIANT" = grub ]; then
  printf 'grub-pc grub-pc/install_devices multiselect\ngrub-pc grub-pc/install_devices_empty boolean true\n' | chroot "$R" debconf-set-selections
fi
DEBIAN_FRONTEND=noninteractive chroot "$R" apt-get install -y -qq --no-install-recommends $PKGS > apt.log 2>&1 || { tail -20 apt.log; exit 1; }
if [ "$VARIANT" = grub ]; then
  # a serial console the runner reads; the first entry (the newest kernel) without a prompt
  cat > "$R/etc/default/grub" <<'G'
GRUB_DEFAULT=0
GRUB_TIMEOUT=1
GRUB_DISTRIBUTOR=Debian
GRUB_TERMINAL=serial
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_CMDLINE_LINUX="console=ttyS0"
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_DISABLE_OS_PROBER=true
G
  # guard's boot pieces as its .deb installs them, in before the initramfs is built below
  install -m 0755 "$top/dist/initramfs-tools/scripts/local-premount/guard" "$R/usr/share/initramfs-tools/scripts/local-premount/guard"
  install -m 0755 "$top/dist/grub.d/42_guard" "$R/etc/grub.d/42_guard"
fi
# the guest has no network: only the local repositories
rm -f "$R"/etc/apt/sources.list "$R"/etc/apt/sources.list.d/*
mkdir -p "$R/srv"; cp -a repo "$R/srv/repo"
echo 'deb [trusted=yes] file:/srv/repo/v1 ./' > "$R/etc/apt/sources.list.d/guardtest.list"
chroot "$R" apt-get update -qq
DEBIAN_FRONTEND=noninteractive chroot "$R" apt-get install -y -qq guardtest-ok guardtest-conf guardtest-bad >> apt.log 2>&1
chroot "$R" apt-get clean
if [ "$VARIANT" = db ]; then
  # PostgreSQL's cluster: small shared buffers, local connections as in a stock install
  sed -i 's/^shared_buffers = .*/shared_buffers = 32MB/' "$R"/etc/postgresql/15/main/postgresql.conf
  [ -d "$R/var/lib/mysql/mysql" ] && [ -d "$R/var/lib/postgresql/15/main" ] \
    || { echo "debian image: the database servers' data folders were not created" >&2; exit 1; }
fi
echo lvmroot > "$R/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 lvmroot\n' > "$R/etc/hosts"
mkdir -p "$R/root/.ssh"; chmod 700 "$R/root/.ssh"
ssh-keygen -q -t ed25519 -N '' -f "$CACHE/id_ed25519"
cp "$CACHE/id_ed25519.pub" "$R/root/.ssh/authorized_keys"; chmod 600 "$R/root/.ssh/authorized_keys"
printf 'auto lo\niface lo inet loopback\nallow-hotplug ens3\niface ens3 inet dhcp\nallow-hotplug enp0s3\niface enp0s3 inet dhcp\n' > "$R/etc/network/interfaces"
# Measured on this bed: the background merge poller that the initramfs udev rule forks survives
# into the real root and once hung a boot. Polling is guard's job at boot (guard-recover).
mkdir -p "$R/etc/udev/rules.d"
sed 's/vgchange -aay --autoactivation event/vgchange -aay --poll n --autoactivation event/' \
  "$R/lib/udev/rules.d/69-lvm.rules" > "$R/etc/udev/rules.d/69-lvm.rules"
: > "$R/etc/machine-id"
rm -f "$R/usr/sbin/policy-rc.d"
chroot "$R" update-initramfs -u -k all > initramfs.log 2>&1
if [ "$VARIANT" = grub ]; then
  # the trial packages need the kernel and the initramfs just built
  K=$(basename "$R"/boot/vmlinuz-*); K=${K#vmlinuz-}
  for v in 6.1.0-99-guardtest 6.1.0-98-guardtest; do  # update-grub puts the highest first (sort -V)
    [ "$(printf '%s\n' "$K" "$v" | sort -V | tail -1)" = "$v" ] || { echo "debian image: $v does not sort above the kernel $K" >&2; exit 1; }
  done
  mkkernel() {  # NAME VERSION VMLINUZ INITRD: a kernel package, its hooks as Debian's zz-update-grub
    local d=pkgsrc/$1-1.0 s
    mkdir -p "$d/DEBIAN" "$d/boot" "$d/lib/modules/$2"
    printf 'Package: %s\nVersion: 1.0\nArchitecture: all\nMaintainer: guard tests <root@localhost>\nDescription: guard test kernel %s\n' "$1" "$2" > "$d/DEBIAN/control"
    cp "$3" "$d/boot/vmlinuz-$2"; cp "$4" "$d/boot/initrd.img-$2"
    echo "$1" > "$d/lib/modules/$2/guardtest"
    for s in postinst postrm; do
      printf '#!/bin/sh\nset -e\nif command -v update-grub >/dev/null; then update-grub; fi\n' > "$d/DEBIAN/$s"; chmod 755 "$d/DEBIAN/$s"
    done
    # -Znone: the payload is compressed already
    dpkg-deb -Znone --root-owner-group --build "$d" "pkgs/$1_1.0_all.deb" >/dev/null
  }
  # an initramfs with an empty folder only: no /init, no modules, no disk: "VFS: Unable to mount root fs"
  mkdir -p pkgsrc/initrd-panic/empty
  (cd pkgsrc/initrd-panic && find . | cpio -o -H newc --quiet) | gzip -9 > pkgsrc/initrd-panic.img
  mkkernel linux-image-guardtest-panic 6.1.0-99-guardtest "$R/boot/vmlinuz-$K" pkgsrc/initrd-panic.img
  mkkernel linux-image-guardtest-good 6.1.0-98-guardtest "$R/boot/vmlinuz-$K" "$R/boot/initrd.img-$K"
  # sshd -t fails from now on: ssh.service will not start at the next boot. No postinst: the
  # running sshd (its config read at start) keeps serving until then.
  d=pkgsrc/guardtest-sshbreak-1.0; mkdir -p "$d/DEBIAN" "$d/etc/ssh/sshd_config.d"
  printf 'Package: guardtest-sshbreak\nVersion: 1.0\nArchitecture: all\nMaintainer: guard tests <root@localhost>\nDescription: guard test package: breaks sshd at the next boot\n' > "$d/DEBIAN/control"
  echo 'NoSuchOption yes' > "$d/etc/ssh/sshd_config.d/guardtest-broken.conf"
  dpkg-deb --root-owner-group --build "$d" pkgs/guardtest-sshbreak_1.0_all.deb >/dev/null
  # a unit that never ends, ordered before multi-user.target: the boot never gets there, so
  # guard's confirmation never runs and the trial's deadline must end it (ssh still starts)
  d=pkgsrc/guardtest-hang-1.0; mkdir -p "$d/DEBIAN" "$d/lib/systemd/system" "$d/etc/systemd/system/multi-user.target.wants"
  printf 'Package: guardtest-hang\nVersion: 1.0\nArchitecture: all\nMaintainer: guard tests <root@localhost>\nDescription: guard test package: the next boot hangs before multi-user.target\n' > "$d/DEBIAN/control"
  printf '[Unit]\nDescription=guard test: a start-up job that never ends\nBefore=multi-user.target\n[Service]\nType=oneshot\nExecStart=/bin/sleep infinity\nTimeoutStartSec=infinity\n[Install]\nWantedBy=multi-user.target\n' > "$d/lib/systemd/system/guardtest-hang.service"
  ln -s /lib/systemd/system/guardtest-hang.service "$d/etc/systemd/system/multi-user.target.wants/guardtest-hang.service"
  dpkg-deb --root-owner-group --build "$d" pkgs/guardtest-hang_1.0_all.deb >/dev/null
  mkrepo trial pkgs/linux-image-guardtest-*_1.0_all.deb pkgs/guardtest-sshbreak_1.0_all.deb pkgs/guardtest-hang_1.0_all.deb
  cp -a repo/trial "$R/srv/repo/trial"
  # a list of its own: run.sh's repo() rewrites guardtest.list
  echo 'deb [trusted=yes] file:/srv/repo/trial ./' > "$R/etc/apt/sources.list.d/guardtest-trial.list"
  chroot "$R" apt-get update -qq
fi
umounts; trap - EXIT
cp "$R"/boot/vmlinuz-* vmlinuz; cp "$R"/boot/initrd.img-* initrd.img
if [ "$VARIANT" = grub ]; then
  # an MBR disk as the installer makes it: /boot on a partition from 1 MiB, the gap before it for
  # GRUB's core.img
  rm -f boot.img bootfs.img; mkfs.ext4 -q -F -L boot -d "$R/boot" bootfs.img 256M
  truncate -s 257M boot.img
  printf 'label: dos\nstart=2048, size=524288, type=83, bootable\n' | sfdisk -q boot.img
  dd if=bootfs.img of=boot.img bs=1M seek=1 conv=notrunc,sparse status=none
  rm bootfs.img
else
  rm -f boot.img; mkfs.ext4 -q -F -L boot -d "$R/boot" boot.img 256M
fi
find "$R/boot" -mindepth 1 -delete
rm -f root.img; mkfs.ext4 -q -F -L root -d "$R" root.img 1536M
rm -rf "$R"

# --- the LVM layout, in the initramfs VM of the real-LVM tier
truncate -s 4G disk.img
mkdir -p share
cat > share/layout.sh <<'L'
set -e
pvcreate -q /dev/vda; vgcreate -q vg0 /dev/vda
lvcreate -q -y -Wy -Zy -L 1536M -n root vg0
dd if=/dev/vdb of=/dev/vg0/root bs=4M conv=fsync 2>/dev/null
e2fsck -fn /dev/vg0/root >/dev/null
L
if [ "$VARIANT" = db ]; then
  # the datadirs move from the root LV to their own LVs (same owners and modes)
  cat >> share/layout.sh <<'L'
lvcreate -q -y -Wy -Zy -L 256M -n mysql vg0
lvcreate -q -y -Wy -Zy -L 320M -T vg0/pool
lvcreate -q -y -V 256M -T vg0/pool -n pg
mkdir -p /r /d
mount /dev/vg0/root /r
for pair in mysql:var/lib/mysql pg:var/lib/postgresql; do
  lv=${pair%%:*}; dir=/r/${pair#*:}
  mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 /dev/vg0/$lv
  mount /dev/vg0/$lv /d
  cp -a "$dir"/. /d/
  rm -rf /d/lost+found
  own=$(stat -c %u:%g "$dir"); mode=$(stat -c %a "$dir")
  chown "$own" /d; chmod "$mode" /d
  rm -rf "$dir"; mkdir "$dir"; chown "$own" "$dir"; chmod "$mode" "$dir"
  umount /d
done
umount /r
e2fsck -fn /dev/vg0/mysql >/dev/null; e2fsck -fn /dev/vg0/pg >/dev/null
L
fi
cat >> share/layout.sh <<'L'
echo "layout ok"
vgchange -an vg0 >/dev/null
L
"$top/tests/vm/vm.sh" run --disk disk.img --disk root.img --share share --timeout 600 share/layout.sh | grep -q "layout ok" \
  || { echo "debian image: the LVM layout failed" >&2; exit 1; }
rm -rf root.img share
if [ "$VARIANT" = grub ]; then
  # GRUB into the MBR from the installed system, booted once the old way with the boot disk first
  # (vda, as the runner's BOOT=grub has it)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  gg() { ssh -q -i id_ed25519 -p "$port" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
           -o BatchMode=yes -o ConnectTimeout=5 root@127.0.0.1 "$@"; }
  qemu-system-x86_64 -accel tcg -m 1024 -smp 2 -nographic \
    -kernel vmlinuz -initrd initrd.img -append "root=/dev/vg0/root console=ttyS0 ro" \
    -drive file=boot.img,format=raw,if=virtio -drive file=disk.img,format=raw,if=virtio \
    -nic "user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:$port-:22" </dev/null > grub-console.log 2>&1 &
  qpid=$!; trap 'kill $qpid 2>/dev/null || true' EXIT
  grubfail() { echo "debian image: GRUB install failed: $1; console:" >&2; tail -20 grub-console.log | sed 's/^/  | /' >&2; exit 1; }
  t1=$(date +%s)
  until gg true 2>/dev/null; do
    kill -0 $qpid 2>/dev/null || grubfail "qemu exited"
    [ $(( $(date +%s) - t1 )) -lt 400 ] || grubfail "no ssh after 400 s"
    sleep 2
  done
  echo "grub: guest up in $(( $(date +%s) - t1 ))s" > grub-install.log
  gg 'grub-install /dev/vda && update-grub' >> grub-install.log 2>&1 || { cat grub-install.log >&2; grubfail "grub-install or update-grub"; }
  gg 'grep -q "^menuentry " /boot/grub/grub.cfg && grep -qF "source \${config_directory}/guard.cfg" /boot/grub/grub.cfg' \
    || grubfail "grub.cfg lacks a menuentry or 42_guard's lines"
  # back to a machine that has never booted: each copy's first boot is its own
  gg ': > /etc/machine-id; systemctl poweroff' || true
  t1=$(date +%s)
  while kill -0 $qpid 2>/dev/null; do
    [ $(( $(date +%s) - t1 )) -lt 180 ] || grubfail "no poweroff after 180 s"
    sleep 2
  done
  trap - EXIT
fi
echo "$RECIPE" > recipe
echo "debian image built in $(( $(date +%s) - t0 ))s ($(du -sh --apparent-size disk.img | cut -f1) disk, $(du -sh disk.img | cut -f1) used)"

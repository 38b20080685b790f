# Bad input on real LVM: a clear refusal that names the problem (and the fix), the documented
# exit code, and nothing changed: `lvs -a -o+lv_tags` is identical before and after.


begin bad_input_is_refused_and_changes_nothing
mkfs_lv data 64M /mnt/data
mkfs_lv other-name 32M
lvcreate -q -y -L 8M -n data-plainsnap -s vg/data >/dev/null
thin_lv thin 64M 32M
mkfs_lv merging 32M /mnt/merging
lvcreate -q -y -L 8M -n merging-snap -s vg/merging >/dev/null; lvconvert -q --merge vg/merging-snap >/dev/null 2>&1
refuse 125 'volume group "nope" .* does not exist' guard --lv nope/data -- true
refuse 125 'vg/nope .* does not exist.*' guard --lv vg/nope -- true
refuse 125 'not of the form VG/LV' guard --lv data -- true
refuse 125 'is on .*9p.*not on an LVM logical volume' guard --mount /host -- true
refuse 125 'is on rootfs .*not on an LVM logical volume' guard --mount /etc -- true
refuse 125 'no-such-dir: No such file' guard --mount /no-such-dir -- true
refuse 125 'itself a snapshot of data' guard --lv vg/data-plainsnap -- true
refuse 125 'thin-pool' guard --lv vg/pool -- true
refuse 125 'named twice' guard --lv vg/data --mount /mnt/data -- true
refuse 125 'merge pending or running' guard --lv vg/merging -- true
refuse 125 'has .* free but the snapshots need' guard --lv vg/data --size 900M -- true
refuse 125 'greater than zero' guard --lv vg/data --size 0 -- true
refuse 125 'negative' guard --lv vg/data --size -5G -- true
refuse 125 'more than 100%' guard --lv vg/data --size 200%FREE -- true
refuse 125 'does not start with a number' guard --lv vg/data --size abc -- true
refuse 127 'command not found' guard --lv vg/data -- no-such-command-xyz
refuse 126 'not executable' guard --lv vg/data -- /etc/passwd
refuse 126 'not executable' guard --lv vg/data -- /tmp
refuse 125 'no command given' guard --lv vg/data --
refuse 125 'nothing to protect' guard -- true
refuse 125 "must run as root" /sbin/setpriv --reuid=65534 --regid=65534 --clear-groups guard --lv vg/data -- true
refuse 125 'invalid --timeout' guard --lv vg/data --timeout forever -- true
refuse 125 'no run .* in' guard commit 20991231-000000-dead
refuse 125 'no run .* in' guard rollback 20991231-000000-dead
# policies: a mistake names file, line and key; an insecure file or folder is refused
mkdir -p /etc/guard/policies; chmod 755 /etc/guard /etc/guard/policies
printf '[run]\ntiemout = "5m"\n' > /etc/guard/policies/typo.toml
refuse 125 'typo.toml:2:1: unknown key .tiemout.*did you mean .timeout.' guard --policy typo --lv vg/data -- true
printf '[watch]\nextend_at = "fifty"\n' > /etc/guard/policies/type.toml
refuse 125 'type.toml:2:13: invalid type' guard --policy type --lv vg/data -- true
printf '[[hook]]\nwhen = "pre_snapshot"\nrun = ["/usr/local/bin/nope"]\n' > /etc/guard/policies/hook.toml
refuse 125 'hook.toml:3:1: run: the pre_snapshot hook #1 program "/usr/local/bin/nope" cannot be run' guard --policy hook --lv vg/data -- true
printf 'description = "x"\n' > /etc/guard/policies/open.toml; chmod 666 /etc/guard/policies/open.toml
refuse 125 'policy file /etc/guard/policies/open.toml is writable by group or others' guard --policy open --lv vg/data -- true
mkdir -p /srv/pol; printf 'description = "x"\n' > /srv/pol/p.toml; chown 1000 /srv/pol
refuse 125 'folder /srv/pol is owned by uid 1000, not root' guard --policy /srv/pol/p.toml --lv vg/data -- true
refuse 125 'no policy named apd.*did you mean apt' guard --policy apd --lv vg/data -- true
refuse 125 'is not a command' guard --lv vg/data --check '' -- true
# a trial boot: needs the snapshots kept, and GRUB (this VM boots without one)
refuse 125 'trial boot needs the snapshots kept.*--keep 1d' guard --trial-boot --lv vg/data -- true
refuse 125 'trial-boot: no /boot/grub/grub.cfg: a trial boot needs GRUB.*nothing was changed' guard --trial-boot --keep 1h --lv vg/data -- true
refuse 125 'trial-boot: no /boot/grub/grub.cfg' guard --policy kernel-upgrade --lv vg/data -- true
# a hyphenated, long LV name works end to end (dm names double the hyphens)
long=a-very-long-name-with-many-hyphens-$(printf 'x%.0s' $(seq 1 60))
lvcreate -q -y -L 16M -n "$long" vg >/dev/null
guard --lv "vg/$long" -- true > out 2>&1; check_eq "long hyphenated LV name: success" "$?" 0
check "no guard snapshot left" no_guard_snapshots
# an LV that already carries a guard snapshot (a kept run) is refused, naming the run
guard --lv vg/other-name --on-success keep -- true > out 2>&1; run=$(run_id_of out)
refuse 125 "finish that run first: .guard commit $run" guard --lv vg/other-name -- true
guard commit "$run" >/dev/null 2>&1
end

begin non_utf8_arguments_reach_the_command_untouched
mkfs_lv data 64M
arg=$(printf 'caf\351-\377')
guard --lv vg/data -- sh -c 'printf %s "$1" > /tmp/got' sh "$arg" > out 2>&1
check_eq "exit 0" "$?" 0
check "bytes identical" sh -c "printf %s '$arg' | cmp -s - /tmp/got"
end

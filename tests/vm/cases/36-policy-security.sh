# Policy security (Trust issue, items 14 and 17): hook programs never come from the caller's
# $PATH, and `guard rollback RUN` reads the very policy file the run was made with.


# Item 17: a program found only through the caller's PATH is refused, before anything changes.
begin a_hook_program_only_on_the_callers_path_is_refused
mkfs_lv data 64M
mkdir -p /tmp/evil/bin /etc/guard/policies; chmod 755 /etc/guard /etc/guard/policies
rm -f /tmp/evil/ran
printf '#!/bin/sh\ntouch /tmp/evil/ran\n' > /tmp/evil/bin/stophook; chmod 755 /tmp/evil/bin/stophook
printf '[[hook]]\nwhen = "pre_snapshot"\nrun = ["stophook"]\n' > /etc/guard/policies/evil.toml
chmod 644 /etc/guard/policies/evil.toml
sp='/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
refuse 125 "evil.toml:3:1: run: .*\"stophook\" cannot be run: not found in the secure path $sp .*fix: give its absolute path.*or install it" env PATH="/tmp/evil/bin:$PATH" guard --policy evil --lv vg/data -- true
refuse 125 "stophook.*not found in the secure path" env PATH="/tmp/evil/bin:$PATH" guard policy check evil
refuse 125 "--check \"stophook\": program \"stophook\" not found in the secure path" env PATH="/tmp/evil/bin:$PATH" guard --lv vg/data --check stophook -- true
check "the program on the caller's PATH never ran" [ ! -e /tmp/evil/ran ]
check "no guard snapshot made" no_guard_snapshots
# a bare name in the secure path runs as the absolute path `guard policy check` shows, and
# hooks see the secure path as their PATH, whatever the caller's is
printf '[[hook]]\nwhen = "pre_snapshot"\nrun = ["sh", "-c", "echo \\"$PATH\\" > /tmp/w/hookpath"]\n' > /etc/guard/policies/path.toml
env PATH="/tmp/evil/bin:$PATH" guard policy check path > pc 2>&1
check_out "policy check shows the resolved program" pc "hook pre_snapshot +sh \(/[a-z/]*/sh -c "
rm -f /tmp/w/hookpath
env PATH="/tmp/evil/bin:$PATH" guard --policy path --lv vg/data -- true > out 2>&1; rc=$?
check_eq "a hook from the secure path runs: exit 0" "$rc" 0
check_eq "the hook's PATH is the secure path" "$(cat /tmp/w/hookpath 2>/dev/null)" "$sp"
check "no guard snapshot left" no_guard_snapshots
end

# Item 14: `guard rollback RUN` from another folder, after a run made with
# --policy ./relative.toml, runs the hooks of the same file: the record keeps its absolute path.
begin rollback_from_another_folder_uses_the_runs_own_policy_file
mkfs_lv data 64M
mkdir -p /srv; chmod 755 /srv
rm -rf /srv/p36; mkdir -p /srv/p36/a /srv/p36/b; chmod 755 /srv/p36 /srv/p36/a /srv/p36/b
for d in a b; do
  printf '[[hook]]\nwhen = "pre_rollback"\nrun = ["/bin/sh", "-c", "echo %s > /tmp/w/marker"]\n' "$d" > /srv/p36/$d/relative.toml
  chmod 644 /srv/p36/$d/relative.toml
done
rm -f /tmp/w/marker
cd /srv/p36/a
guard --policy ./relative.toml --lv vg/data --keep 10m -- sh -c 'mkdir -p /mnt/x; mount /dev/vg/data /mnt/x; echo new > /mnt/x/f; umount /mnt/x' > /tmp/w/out 2>&1; rc=$?
run=$(run_id_of /tmp/w/out)
check_eq "the kept run: exit 0" "$rc" 0
check "the record keeps the absolute path" grep -q '"policy": "/srv/p36/a/relative.toml"' /var/lib/guard/runs/$run.json
# the same relative path names another policy from here
cd /srv/p36/b
guard rollback "$run" > /tmp/w/rb 2>&1; rc=$?
cd /tmp/w
check_eq "guard rollback RUN from another folder: exit 0" "$rc" 0
check_eq "its pre_rollback hook came from the run's own file (a, not b)" "$(cat /tmp/w/marker 2>/dev/null)" a
check_eq "the success is undone" "$(content data)" original
check "no guard snapshot left" no_guard_snapshots
end

# A symlinked policy is read as its canonical target (checked folder by folder from /); a
# policy whose own folder others can write is refused before any snapshot.
begin a_policy_is_checked_and_read_as_its_canonical_target
mkfs_lv data 64M
mkdir -p /etc/guard/policies /tmp/lnk; chmod 755 /etc/guard /etc/guard/policies
printf 'description = "real"\n' > /etc/guard/policies/real.toml; chmod 644 /etc/guard/policies/real.toml
ln -sf /etc/guard/policies/real.toml /tmp/lnk/link.toml
guard policy check /tmp/lnk/link.toml > pc 2>&1; rc=$?
check_eq "a link to a root-only file: exit 0" "$rc" 0
check_out "the source shown is the canonical target" pc "^policy link \(/etc/guard/policies/real.toml\): OK"
mkdir -p /tmp/lnk/open; chmod 777 /tmp/lnk/open
printf 'description = "x"\n' > /tmp/lnk/open/p.toml; chmod 644 /tmp/lnk/open/p.toml
refuse 125 "folder /tmp/lnk/open is writable by group or others.*chmod go-w /tmp/lnk/open" guard --policy /tmp/lnk/open/p.toml --lv vg/data -- true
# a link to it from a root-only folder does not make it safe: its own folders are checked
ln -sf /tmp/lnk/open/p.toml /etc/guard/policies/viaetc.toml
refuse 125 "folder /tmp/lnk/open is writable by group or others" guard --policy viaetc --lv vg/data -- true
end

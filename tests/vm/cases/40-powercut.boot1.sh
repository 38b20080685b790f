# Power cut while the guarded command runs (issue 2: crash safety). Boot 1: set up, start guard,
# let the command break the file, then cut the power. The journal lives on /dev/vdb (not LVM),
# which survives the cut like /var/lib/guard on a real disk.
fresh
mkfs.ext4 -q /dev/vdb; mkdir -p /var/lib/guard; mount /dev/vdb /var/lib/guard
mkfs_lv data 64M
# a second run whose rollback is deferred (origin mounted) and completes at the next activation
mkfs_lv web 64M /mnt/web
guard --lv vg/web -- sh -c 'echo broken > /mnt/web/f; sync; exit 1' > /var/lib/guard/web.out 2>&1
guard --lv vg/data -- sh -c 'mkdir -p /mnt/x; mount /dev/vg/data /mnt/x; echo broken > /mnt/x/f; umount /mnt/x; sync; sleep 60' > /var/lib/guard/data.out 2>&1 &
i=0; while [ $i -lt 100 ] && ! grep -q '"phase": "running"' /var/lib/guard/runs/*.json 2>/dev/null; do sleep 0.1; i=$((i+1)); done
sleep 2
echo "boot1: guard running, cutting the power"
sync; touch /host/.powercut; sleep 60

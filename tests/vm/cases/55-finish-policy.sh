# Issue 16: a policy that stops a service around a rollback gets the data back before it starts
# the service again (`[run] finish = true`), and never starts it on data about to be discarded.

# A stand-in service: a process group appending to /mnt/app/log; its start records what data it
# finds, so the test can tell whether it started before or after the merge.
cat > /usr/bin/appctl <<'A'
#!/bin/sh
case $1 in
start)
  echo "started f=$(cat /mnt/app/f 2>/dev/null) merging=$(lvs --noheadings -o lv_merging vg/app 2>/dev/null | tr -d ' ')" >> /tmp/w/app-events
  cd /
  setsid sh -c 'while :; do date >> /mnt/app/log; sleep 0.2; done' </dev/null >/dev/null 2>&1 &
  echo $! > /run/app.pid ;;
stop)
  p=$(cat /run/app.pid 2>/dev/null)
  [ -n "$p" ] && kill -- -"$p" 2>/dev/null
  while [ -n "$p" ] && kill -0 "$p" 2>/dev/null; do sleep 0.1; done
  sleep 0.3
  echo stopped >> /tmp/w/app-events ;;
esac
A
chmod 755 /usr/bin/appctl
app_policy() {
  mkdir -p /etc/guard/policies
  cat > /etc/guard/policies/app.toml <<'P'
description = "stand-in app on its own LV"
[targets]
mounts = ["/mnt/app"]
[run]
on_failure = "rollback"
finish = true
[[hook]]
name = "stop app"
when = "pre_rollback"
run = ["/usr/bin/appctl", "stop"]
[[hook]]
name = "start app"
when = "post_rollback"
run = ["/usr/bin/appctl", "start"]
P
}
app_running() { p=$(cat /run/app.pid 2>/dev/null); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }
log_grows() { a=$(stat -c %s /mnt/app/log 2>/dev/null || echo 0); sleep 1; b=$(stat -c %s /mnt/app/log 2>/dev/null || echo 0); [ "$b" -gt "$a" ]; }
not_merging() { [ -z "$(lvs --noheadings -o lv_merging vg/app | tr -d ' ')" ]; }

begin policy_finish_stops_merges_mounts_then_starts
mkfs_lv app 64M /mnt/app; app_policy; rm -f /tmp/w/app-events
guard policy check app > pc 2>&1
check_out "guard policy check shows finish" pc "finish: +yes"
/usr/bin/appctl start; : > /tmp/w/app-events
check "the service runs before the change" log_grows
guard --policy app -- sh -c 'echo broken > /mnt/app/f; sync; exit 1' > out 2>&1; rc=$?
check_eq "the deployment's failure passes through (1)" "$rc" 1
check_eq "after guard exits the data is the snapshot's" "$(content app)" original
check_eq "stopped, then started on the merged data, nothing merging" "$(tr '\n' '|' < /tmp/w/app-events)" "stopped|started f=original merging=|"
check "the service runs again" app_running
check "and writes to the volume again" log_grows
check "mounted again at /mnt/app" grep -q ' /mnt/app ' /proc/mounts
check "no guard snapshot left" no_guard_snapshots
check "nothing merging" not_merging
check_out "the summary says rolled back" out "rolled back"
/usr/bin/appctl stop
end

begin policy_finish_with_a_busy_mount_leaves_it_scheduled_and_the_service_stopped
mkfs_lv app 64M /mnt/app; app_policy; rm -f /tmp/w/app-events
/usr/bin/appctl start; : > /tmp/w/app-events
# something the hooks do not stop keeps the mount point busy
( cd /mnt/app && exec sleep 300 ) &
hp=$!
sleep 0.3
guard --policy app --report /host/json/finish-busy.json -- sh -c 'echo broken > /mnt/app/f; sync; exit 1' > out 2>&1; rc=$?
run=$(run_id_of out)
check_eq "the deployment's failure passes through (1)" "$rc" 1
check_out "guard names the holder" out "/mnt/app is busy \(held by pid $hp \(sleep\)"
check_out "and says what to do" out "stop those, then .guard rollback --finish $run."
check_out "and that the start hook was held back" out "post_rollback hooks not run"
check_eq "the start hook did not run" "$(tr '\n' '|' < /tmp/w/app-events)" "stopped|"
p=$(cat /run/app.pid)
check "the service is not running" sh -c "! kill -0 $p 2>/dev/null"
check "the rollback stays scheduled (origin merging)" sh -c "lvs --noheadings -o lv_merging vg/app | grep -q merging"
check "the report's todo has it" grep -q "is busy (held by pid $hp" /host/json/finish-busy.json
check "the report says rollback-scheduled" grep -q '"action":"rollback-scheduled"' /host/json/finish-busy.json
kill $hp; wait $hp 2>/dev/null
guard rollback --finish "$run" > fin 2>&1; rc=$?
check_eq "once the holder is gone, rollback --finish exits 0" "$rc" 0
check_eq "the data is the snapshot's" "$(content app)" original
check_eq "and the service is started on it" "$(tr '\n' '|' < /tmp/w/app-events)" "stopped|started f=original merging=|"
check "no guard snapshot left" no_guard_snapshots
/usr/bin/appctl stop
end

# The policy's finish holds for `guard rollback RUN` of a kept run too (deploy keeps 30 minutes):
# stop, unmount, merge, mount, start on the old data; nothing left pending.
begin policy_finish_also_for_a_later_guard_rollback_of_a_kept_run
mkfs_lv app 64M /mnt/app; app_policy
sed -i 's/^on_failure = "rollback"$/on_failure = "rollback"\non_success = "keep"/' /etc/guard/policies/app.toml
/usr/bin/appctl start; : > /tmp/w/app-events
guard --policy app -- sh -c 'echo release2 > /mnt/app/f; sync; exit 0' > out 2>&1; rc=$?
run=$(run_id_of out)
check_eq "the deployment succeeds and is kept" "$rc" 0
guard rollback "$run" > rb 2>&1; rc=$?
check_eq "guard rollback RUN exits 0" "$rc" 0
check_eq "the data is the snapshot's" "$(content app)" original
check_eq "stopped, then started on the merged data" "$(tr '\n' '|' < /tmp/w/app-events)" "stopped|started f=original merging=|"
check "no guard snapshot left, nothing merging" sh -c 'no_guard_snapshots() { [ -z "$(lvs --noheadings -o lv_name @guard 2>/dev/null | tr -d " ")" ]; }; no_guard_snapshots && [ -z "$(lvs --noheadings -o lv_merging vg/app | tr -d " ")" ]'
/usr/bin/appctl stop
end

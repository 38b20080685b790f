# Boot 2, after the power cut: activation (as at boot), then `guard recover` as the boot service would.
vgchange -q -ay vg >/dev/null 2>&1
mkdir -p /var/lib/guard; mount /dev/vdb /var/lib/guard
NOFRESH=1 begin power_cut_mid_command_then_recover_at_boot
drun=$(run_id_of /var/lib/guard/data.out); wrun=$(run_id_of /var/lib/guard/web.out)
note "runs: data $drun, web $wrun"
guard recover > rec1 2>&1; rc=$?
check_eq "recover exits 0" "$rc" 0
check_out "the run cut mid-command is rolled back per its failure policy" rec1 "run $drun: rolled back"
check_out "the deferred merge that completed at activation is confirmed" rec1 "vg/web: rollback of run $wrun completed"
check_eq "data holds exactly the before-bytes" "$(content data)" original
check_eq "web holds exactly the before-bytes" "$(content web)" original
check "data filesystem clean" fsck_clean data
check "web filesystem clean" fsck_clean web
check "no guard snapshot left" no_guard_snapshots
check "no merge tag left" sh -c '! lvs --noheadings -o lv_tags vg | grep -q guard-merge'
guard recover > rec2 2>&1
check_out "a second recover changes nothing" rec2 "nothing to recover"
guard status --all --json > st
check "both runs are done in the journal" sh -c "[ \$(grep -c '\"phase\": \"done\"' st) -ge 2 ]"
end

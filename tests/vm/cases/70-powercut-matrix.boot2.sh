# Boot 2 after the cut: activate, mount the journal's disk, `guard recover` as at boot, check.
vgchange -q -ay vg >/dev/null 2>&1
mkdir -p /var/lib/guard; mount /dev/vdb /var/lib/guard
guard recover > /tmp/w/rec1 2>&1; rc1=$?
while read -r c point kind; do
  NOFRESH=1 begin "powercut_${point}_${kind}"
  want=original; [ "$point/$kind" = before-decision/ok ] || [ "$point/$kind" = before-remove-2/ok ] && want=after
  check_eq "recover exits 0" "$rc1" 0
  check_eq "${c}a holds the $want-bytes" "$(content "${c}a")" "$want"
  check_eq "${c}b holds the $want-bytes" "$(content "${c}b")" "$want"
  check "${c}a: e2fsck -n clean" fsck_clean "${c}a"
  check "${c}b: e2fsck -n clean" fsck_clean "${c}b"
  check "no snapshot of ${c} left" sh -c "! lvs --noheadings -o lv_name @guard | grep -q ' ${c}[ab]-guard'"
  end
done < /var/lib/guard/cases
NOFRESH=1 begin powercut_second_recover_changes_nothing
check "no guard snapshot at all" no_guard_snapshots
lvs_state > s1; guard recover > rec2 2>&1; lvs_state > s2
check "lvs identical" cmp -s s1 s2
check_out "nothing to recover" rec2 "nothing to recover"
[ "$TFAIL" = 0 ] || sed 's/^/    rec1| /' /tmp/w/rec1 | tail -20
end

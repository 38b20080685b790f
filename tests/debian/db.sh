#!/bin/bash
# Databases for real (issue 12): MariaDB and PostgreSQL 15 on their own LVs in a real Debian
# server (tests/debian/image.sh db: /var/lib/mysql on vg0/mysql, thick; /var/lib/postgresql on
# vg0/pg, thin), driven over ssh. One boot per server; in each, a writer inserts rows all along:
#   - a failing migration (ALTER + UPDATE, exit 1) is undone in place: the server is stopped,
#     the volume merged, the server started; schema and rows as before, tables check clean;
#   - a passing migration is kept and health-checked;
#   - (MariaDB) a long statement in the way of FLUSH TABLES WITH READ LOCK: a clean refusal that
#     names it, writers never stalled, lvs unchanged;
#   - a backup from `guard snapshot`, restored into a scratch server: it starts and a/b match;
#   - (MariaDB) guard killed (-9) mid-migration: `guard recover` stops, merges and starts.
#   tests/debian/db.sh [SCENARIO-PATTERN]
# Prints each check, then "debian-db: N passed, N failed".
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd); top=$(cd "$here/../.." && pwd)
CACHE=${GUARD_DEBIAN_DB_CACHE:-$HOME/.cache/guard-debian-db}
pattern=${1:-}
"$here/image.sh" db || { echo "debian-db: 0 passed, 1 failed (image)"; exit 1; }
(cd "$top" && cargo build -q) || exit 1
. "$here/lib.sh"
d() { g ". /root/db.sh; $*"; }
lvs_now() { g 'lvs --noheadings -o vg_name,lv_name,lv_size,lv_attr,origin | sort'; }
bench=$CACHE/bench.txt; : > "$bench"

boot_bed() {
  start_vm || return 1
  g 'cat > /root/db.sh' < "$here/db-guest.sh"
  for m in bad ok slow; do :; done
  g 'cat > /root/migrate-bad-mysql.sh && chmod 755 /root/migrate-bad-mysql.sh' <<'S'
#!/bin/sh
# a migration that fails half-way: the ALTER and UPDATE are in, then it errors out
mysql app -e "ALTER TABLE acct ADD COLUMN note VARCHAR(20); UPDATE acct SET bal = bal + 1000, note = 'migrated';" || exit 9
. /root/db.sh; state mysql > /root/during   # the test's proof that the migration did change it
echo "migration step 2 failed" >&2
exit 1
S
  g 'cat > /root/migrate-ok-mysql.sh && chmod 755 /root/migrate-ok-mysql.sh' <<'S'
#!/bin/sh
mysql app -e "ALTER TABLE acct ADD COLUMN tier INT NOT NULL DEFAULT 1; UPDATE acct SET tier = 2 WHERE id % 2 = 0;"
S
  g 'cat > /root/migrate-slow-mysql.sh && chmod 755 /root/migrate-slow-mysql.sh' <<'S'
#!/bin/sh
mysql app -e "ALTER TABLE acct ADD COLUMN slow INT; UPDATE acct SET bal = 0;" &&
  touch /root/migrated
sleep 600
S
  g 'cat > /root/migrate-bad-pg.sh && chmod 755 /root/migrate-bad-pg.sh' <<'S'
#!/bin/sh
runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 app -c "ALTER TABLE acct ADD COLUMN note TEXT" -c "UPDATE acct SET bal = bal + 1000, note = 'migrated'" || exit 9
. /root/db.sh; state pg > /root/during   # the test's proof that the migration did change it
echo "migration step 2 failed" >&2
exit 1
S
  g 'cat > /root/migrate-ok-pg.sh && chmod 755 /root/migrate-ok-pg.sh' <<'S'
#!/bin/sh
runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 app -c "ALTER TABLE acct ADD COLUMN tier INT NOT NULL DEFAULT 1" -c "UPDATE acct SET tier = 2 WHERE id % 2 = 0"
S
  if ! d wait_servers; then echo "  # the servers did not come up; console:"; tail -20 "$W/console.log" | sed 's/^/  | /'; return 1; fi
  d setup_db > "$W/setup" 2>&1 || { echo "  # setup failed:"; sed 's/^/  | /' "$W/setup"; return 1; }
}

# --- failing migration undone in place; passing migration kept (both servers)
migrations() {  # mysql|pg
  local s=$1 unit pol
  if [ "$s" = mysql ]; then unit=mariadb; pol=mysql; else unit=postgresql; pol=postgresql; fi
  begin "${s}_failing_migration_undone_in_place"
  d start_writer "$s"; sleep 3
  d state "$s" > "$W/before"
  g "rm -f /root/during; guard --policy $pol --report /root/report.json -- /root/migrate-bad-$s.sh" > "$W/out" 2>&1; rc=$?
  g 'cat /root/during' > "$W/during" 2>/dev/null
  if [ -s "$W/during" ] && ! cmp -s "$W/before" "$W/during"; then ok "the migration changed schema and rows before it failed"; else bad "the migration changed nothing: the rollback check below would prove nothing"; fi
  cp "$W/out" "$CACHE/$s-failing-migration.out"
  d stop_writer
  check_eq "the migration's exit status 1 passes through" "$rc" 1
  check_out "writers held for a measured time" "$W/out" "writers held for [0-9]+ ms"
  check_out "the server was stopped, the volume merged and mounted again" "$W/out" "rolled back"
  check_out "the report says how long the database was down" "$W/out" "services down [0-9.]+ s for the rollback"
  if grep -qE "hook .* (failed|did not finish)|cannot start" "$W/out"; then bad "a rollback hook failed"; grep "hook" "$W/out" | sed 's/^/    | /'; else ok "every rollback hook succeeded"; fi
  g 'cat /root/report.json' > "$W/report"
  check_out "report: action rolled-back" "$W/report" '"action":"rolled-back"'
  check_out "report: downtime_ms" "$W/report" '"downtime_ms":[0-9]+'
  check_out "report: writers_held_ms" "$W/report" '"writers_held_ms":[0-9]+'
  check_eq "the server answers again" "$(g "systemctl is-active $unit")" active
  d state "$s" > "$W/after"
  if cmp -s "$W/before" "$W/after"; then ok "schema and rows are the snapshot moment's"; else bad "the data differs"; diff "$W/before" "$W/after" | head -10 | sed 's/^/    | /'; fi
  if d tables_clean "$s"; then ok "tables check clean ($( [ "$s" = mysql ] && echo CHECK TABLE || echo pg_amcheck))"; else bad "table check failed"; fi
  check_eq "no guard snapshot left" "$(d guard_lvs)" ""
  [ "$s" = mysql ] && check_out "the summary points to thin LVs for a thick datadir" "$W/out" "note: vg0/mysql is a thick LV"
  [ "$s" = mysql ] && check_out "so does the JSON report" "$W/report" '"notes":\["vg0/mysql is a thick LV'
  if [ "$s" = mysql ]; then
    g "guard --policy $pol --dry-run -- true" > "$W/dry" 2>&1
    check_out "so does the dry run" "$W/dry" "note: vg0/mysql is a thick LV"
  fi
  echo "$s failing migration: $(grep -oE 'writers held for [0-9]+ ms' "$W/out"), $(grep -oE 'services were down for [0-9.]+ s' "$W/out")" >> "$bench"
  end

  begin "${s}_passing_migration_kept"
  d start_writer "$s"; sleep 2
  g "guard --policy $pol -- /root/migrate-ok-$s.sh" > "$W/out" 2>&1; rc=$?
  d stop_writer
  check_eq "exit 0" "$rc" 0
  check_out "the health checks ran (a query answers)" "$W/out" "a query answers"
  check_out "the change is kept" "$W/out" "change kept"
  if d state "$s" | grep -q tier; then ok "the new column is there"; else bad "the migration was undone"; fi
  check_eq "the server is up" "$(g "systemctl is-active $unit")" active
  check_eq "no guard snapshot left" "$(d guard_lvs)" ""
  pause=$(d longest_pause_ms "$s")
  note "the writer's longest pause across the run: ${pause} ms"
  echo "$s passing migration: $(grep -oE 'writers held for [0-9]+ ms' "$W/out"), writer's longest pause ${pause} ms" >> "$bench"
  end
}

# --- a backup from the snapshot, restored into a scratch server
backup() {  # mysql|pg
  local s=$1 pol src
  if [ "$s" = mysql ]; then pol=mysql; src=/snap/; else pol=postgresql; src=/snap/15/main/; fi
  begin "${s}_backup_from_snapshot_restores_consistent"
  d start_writer "$s"; sleep 2
  lvs_now > "$W/lvs-before"
  g "mkdir -p /backup && guard snapshot --policy $pol --mount-at /snap --json -- sh -c 'test \"\$GUARD_SNAPSHOT_ROOT\" = /snap && rsync -a $src /backup/$s/'" > "$W/out" 2>&1; rc=$?
  cp "$W/out" "$CACHE/$s-backup.out"
  check_eq "the backup command's exit status 0 passes through" "$rc" 0
  check_out "the snapshot was mounted read-only for it" "$W/out" "mounted read-only at /snap"
  check_eq "/snap is unmounted afterwards" "$(g 'grep -c " /snap " /proc/mounts')" 0
  check_eq "no guard snapshot left" "$(d guard_lvs)" ""
  g "guard snapshot --policy $pol --mount-at /snap -- sh -c 'exit 7'" > "$W/out7" 2>&1; rc=$?
  check_eq "a failing backup command's status (7) passes through" "$rc" 7
  lvs_now > "$W/lvs-after"
  if cmp -s "$W/lvs-before" "$W/lvs-after"; then ok "lvs as before: the snapshots were removed both times"; else bad "lvs differ"; diff "$W/lvs-before" "$W/lvs-after" | sed 's/^/    | /'; fi
  d stop_writer
  if [ "$s" = mysql ]; then r=$(d scratch_mysql /backup/mysql 2>&1); else r=$(d scratch_pg /backup/pg 2>&1); fi
  note "restored copy: a b = $r"
  if echo "$r" | grep -qE '^([0-9]+) \1$' && ! echo "$r" | grep -q check-failed && [ "$(echo "$r" | head -1 | cut -d' ' -f1)" -gt 0 ]; then
    ok "the restored copy starts in a scratch server, checks clean, and a/b match (one transaction each)"
  else
    bad "restored copy: $r"
  fi
  end
}

# --- MariaDB: a long statement in the way of the lock
lock_refused() {
  begin mysql_long_statement_refuses_the_lock_cleanly
  d start_writer mysql
  # a unit of its own: nothing of the ssh session's can end it
  # a report query that reads acct for minutes (a three-way join of 2000 rows)
  g "systemd-run -q --unit=guardtest-sleeper mysql app -e 'SELECT COUNT(*) FROM acct x, acct y, acct z WHERE x.bal + y.bal + z.bal < 0'"
  i=0; until g "mysql -N -e \"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT COUNT(*) FROM acct x%' AND TIME >= 3\"" | grep -q '^1$'; do
    i=$((i+1)); [ $i -gt 30 ] && { note "the long statement did not start:"; g 'journalctl -q -u guardtest-sleeper | tail -5; mysql -e "SHOW PROCESSLIST"' | sed 's/^/    | /'; break; }; sleep 1
  done
  lvs_now > "$W/lvs-before"
  flushes() { g "mysql -N -e \"SHOW GLOBAL STATUS LIKE 'Com_flush'\"" | awk '{print $2}'; }
  f1=$(flushes)
  g 'guard --policy mysql -- true' > "$W/out" 2>&1; rc=$?
  f2=$(flushes)
  lvs_now > "$W/lvs-after"
  check_eq "FLUSH TABLES WITH READ LOCK was never issued: no writer waited behind it" "$f2" "$f1"
  check_eq "guard refuses (125)" "$rc" 125
  check_out "it names the session in the way" "$W/out" "session [0-9]+ \\(root, [0-9]+ s\\): SELECT COUNT"
  check_out "the hold_failed hook lists the statements" "$W/out" "statements in the way of the lock"
  check_out "nothing was changed" "$W/out" "nothing was changed"
  if cmp -s "$W/lvs-before" "$W/lvs-after"; then ok "lvs unchanged"; else bad "lvs changed"; fi
  n1=$(d rows mysql w); sleep 2; n2=$(d rows mysql w)
  if [ "$n2" -gt "$n1" ]; then ok "the writer still writes"; else bad "the writer is stalled ($n1 -> $n2)"; fi
  g "mysql -N -e \"SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT COUNT(*) FROM acct x%'\" | xargs -r -n1 mysqladmin kill" >/dev/null 2>&1
  g "systemctl stop guardtest-sleeper" >/dev/null 2>&1
  d stop_writer
  end
}

# --- MariaDB: guard killed mid-migration; recover finishes per the policy
killed_mid_migration() {
  begin mysql_guard_killed_mid_migration_recover_undoes_it
  d state mysql > "$W/before"
  g 'rm -f /root/migrated; nohup guard --policy mysql -- /root/migrate-slow-mysql.sh >/root/killed.out 2>&1 &'
  i=0; until g 'test -e /root/migrated'; do i=$((i+1)); [ $i -gt 60 ] && break; sleep 1; done
  g "pkill -9 -x guard; sleep 1; pkill -f '^/bin/sh /root/migrate-slow'; pkill -x sleep; true"
  sleep 1
  g 'guard recover' > "$W/out" 2>&1; rc=$?
  cp "$W/out" "$CACHE/mysql-recover.out"
  check_eq "recover exits 0" "$rc" 0
  check_out "recover rolled the run back" "$W/out" "rolled back"
  check_eq "the server answers again" "$(g 'systemctl is-active mariadb')" active
  d state mysql > "$W/after"
  if cmp -s "$W/before" "$W/after"; then ok "schema and rows are the snapshot moment's"; else bad "the data differs"; diff "$W/before" "$W/after" | head -6 | sed 's/^/    | /'; fi
  if d tables_clean mysql; then ok "tables check clean"; else bad "table check failed"; fi
  check_eq "no guard snapshot left" "$(d guard_lvs)" ""
  end
}

# --- benchmarks (BENCHMARKS.md; only with the pattern "bench", never in the suite): each figure
# next to its baseline from the same boot
bench_db() {
  echo "--- (boot: benchmarks)"
  boot_bed || return 1
  # rows/s of a writer committing each row (fsync per commit), 20 s each: no snapshot, then with
  # the snapshot guard takes (MariaDB's LV is thick, PostgreSQL's thin)
  g 'cat > /root/rate.sh && chmod 755 /root/rate.sh' <<'S'
#!/bin/sh
# rate.sh mysql|pg SECONDS: rows committed one by one in SECONDS
. /root/db.sh
a=$(rows $1 w)
if [ "$1" = mysql ]; then
  timeout "$2" sh -c 'yes "INSERT INTO w (t) VALUES (NOW(6));" | mysql app' >/dev/null 2>&1
else
  timeout "$2" sh -c 'yes "INSERT INTO w (t) VALUES (clock_timestamp());" | runuser -u postgres -- psql -X -q app' >/dev/null 2>&1
fi
b=$(rows $1 w)
echo $(( (b - a) / $2 ))
S
  for s in mysql pg; do
    pol=$([ $s = mysql ] && echo mysql || echo postgresql)
    base=$(g "/root/rate.sh $s 20")
    under=$(g "guard --policy $pol -q -- /root/rate.sh $s 20" 2>/dev/null | tail -1)
    echo "throughput $s ($([ $s = mysql ] && echo thick || echo thin)): ${base} rows/s without a snapshot, ${under} rows/s under guard's snapshot" | tee -a "$bench"
  done
  # a raw synchronous writer (4 KiB O_DSYNC writes to a file) on a thick and a thin LV of the
  # same VG, with and without a snapshot
  g 'lvcreate -q -y -L 64M -n bthick vg0 && lvcreate -q -y -V 64M -T vg0/pool -n bthin && for l in bthick bthin; do mkfs.ext4 -q /dev/vg0/$l && mkdir -p /mnt/$l && mount /dev/vg0/$l /mnt/$l; done' >/dev/null 2>&1
  for l in bthick bthin; do
    cmd="dd if=/dev/zero of=/mnt/$l/f bs=4k count=2000 oflag=dsync 2>&1 | tail -1"
    base=$(g "$cmd")
    under=$(g "guard -q --lv vg0/$l -- sh -c '$cmd'" 2>/dev/null | grep copied)
    echo "dsync 4 KiB writes on $l: without a snapshot: ${base##*, }; under a snapshot: ${under##*, }" | tee -a "$bench"
  done
  # downtime of an in-place rollback against the size of the change (rewritten pages)
  # a 130,000-row table (~45 MiB); the changes rewrite part of it, or all of it twice: the COW
  # the change used is its size as the merge sees it
  g "mysql app -e \"SET SESSION max_recursive_iterations = 1000000; CREATE TABLE big (id INT PRIMARY KEY, pad CHAR(255)) ENGINE=InnoDB; INSERT INTO big WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 130000) SELECT n, REPEAT('a', 255) FROM s;\""
  for change in "WHERE id <= 30000" "; UPDATE big SET pad = REPEAT('c', 255)"; do
    g "cat > /root/change.sh" <<S
#!/bin/sh
mysql app -e "UPDATE big SET pad = REPEAT('b', 255) $change"
sync
lvs --noheadings --nosuffix --units m -o lv_size,snap_percent @guard | awk '{printf "%d\\n", \$1 * \$2 / 100}' > /root/cow.txt
exit 1
S
    g 'chmod 755 /root/change.sh'
    g 'guard --policy mysql --size 200M --report /root/r.json -- /root/change.sh' >/dev/null 2>&1
    r=$(g 'cat /root/r.json')
    dt=$(echo "$r" | grep -oE '"downtime_ms":[0-9]+' | cut -d: -f2)
    used=$(g 'cat /root/cow.txt')
    echo "in-place rollback of a change that used ${used} MiB of COW (MariaDB): downtime ${dt} ms" | tee -a "$bench"
  done
  stop_vm
}

if want bench && [ -n "$pattern" ]; then
  bench_db
  echo "# measured in one boot:"; sed 's/^/#   /' "$bench"
  exit 0
fi
if want mysql; then
  echo "--- (boot: MariaDB on vg0/mysql, thick)"
  if boot_bed; then
    migrations mysql
    lock_refused
    backup mysql
    killed_mid_migration
  else
    begin mysql_bed_boots; bad "the db bed did not come up"; end
  fi
  stop_vm
fi
if want pg; then
  echo "--- (boot: PostgreSQL 15 on vg0/pg, thin)"
  if boot_bed; then
    migrations pg
    backup pg
  else
    begin pg_bed_boots; bad "the db bed did not come up"; end
  fi
  stop_vm
fi
echo "# measured in these boots:"; sed 's/^/#   /' "$bench"
echo "debian-db: $passed passed, $failed failed"
[ "$failed" = 0 ]

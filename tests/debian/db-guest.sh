# Guest-side helpers for the database scenarios (tests/debian/db.sh): sourced in the db bed as
# /root/db.sh. MariaDB's datadir is vg0/mysql (thick), PostgreSQL's vg0/pg (thin).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
cd /tmp  # runuser -u postgres cannot stay in /root
PGBIN=/usr/lib/postgresql/15/bin
psqlc() { runuser -u postgres -- psql -X -q -A -t "$@"; }

wait_servers() {
  i=0; until mysqladmin --connect-timeout=2 ping >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 120 ] && return 1; sleep 1; done
  pg_isready -q -t 120
}

# The schema both servers get: acct (the data a migration changes), a/b (written in one
# transaction each: a consistent copy has as many rows in each), w (the writer's heartbeat).
setup_db() {
  mysql -e "CREATE DATABASE app;
    CREATE TABLE app.acct (id INT PRIMARY KEY, bal INT) ENGINE=InnoDB;
    CREATE TABLE app.a (id BIGINT AUTO_INCREMENT PRIMARY KEY, v INT) ENGINE=InnoDB;
    CREATE TABLE app.b (id BIGINT AUTO_INCREMENT PRIMARY KEY, v INT) ENGINE=InnoDB;
    CREATE TABLE app.w (id BIGINT AUTO_INCREMENT PRIMARY KEY, t DATETIME(6)) ENGINE=InnoDB;
    SET SESSION max_recursive_iterations = 1000000;
    INSERT INTO app.acct WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 2000) SELECT n, n * 10 FROM s;" &&
  runuser -u postgres -- createdb app &&
  psqlc app -c "CREATE EXTENSION amcheck;
    CREATE TABLE acct (id INT PRIMARY KEY, bal INT);
    CREATE TABLE a (id BIGSERIAL PRIMARY KEY, v INT);
    CREATE TABLE b (id BIGSERIAL PRIMARY KEY, v INT);
    CREATE TABLE w (id BIGSERIAL PRIMARY KEY, t TIMESTAMPTZ);
    INSERT INTO acct SELECT g, g * 10 FROM generate_series(1, 2000) g;" &&
  # the scenarios compare these rows before and after: they must be there
  [ "$(rows mysql acct)" = 2000 ] && [ "$(rows pg acct)" = 2000 ]
}

# A writer inserting all along, through one session: a heartbeat row and a pair a/b in one
# transaction, every 20 ms. It ends with its session (a server stop ends it too).
start_writer() {  # mysql|pg
  # the writer's rows start after this id: its pauses are measured from here
  if [ "$1" = mysql ]; then mysql -N app -e "SELECT COALESCE(MAX(id), 0) FROM w"; else psqlc app -c "SELECT COALESCE(MAX(id), 0) FROM w"; fi > /root/w.start
  if [ "$1" = mysql ]; then
    setsid -f sh -c 'while :; do echo "INSERT INTO w (t) VALUES (NOW(6)); BEGIN; INSERT INTO a (v) VALUES (1); INSERT INTO b (v) VALUES (1); COMMIT;"; sleep 0.02; done | mysql app' </dev/null >/dev/null 2>&1
    return 0
  else
    setsid -f sh -c 'while :; do echo "INSERT INTO w (t) VALUES (clock_timestamp()); BEGIN; INSERT INTO a (v) VALUES (1); INSERT INTO b (v) VALUES (1); COMMIT;"; sleep 0.02; done | runuser -u postgres -- psql -X -q app' </dev/null >/dev/null 2>&1
  fi
}
stop_writer() { pkill -f 'while :; do echo "INSERT INTO w' 2>/dev/null; sleep 0.5; return 0; }

# What a migration changes, as the SQL sees it: the table's definition and a digest of its rows.
state() {  # mysql|pg
  if [ "$1" = mysql ]; then
    mysql -N app -e "SHOW CREATE TABLE acct; SELECT COUNT(*), SUM(bal), MD5(GROUP_CONCAT(id, ':', bal ORDER BY id)) FROM acct;"
  else
    psqlc app -c "SELECT column_name || ' ' || data_type FROM information_schema.columns WHERE table_name = 'acct' ORDER BY ordinal_position;" \
      -c "SELECT COUNT(*), SUM(bal), md5(string_agg(id || ':' || bal, ',' ORDER BY id)) FROM acct;"
  fi
}
tables_clean() {  # mysql|pg
  if [ "$1" = mysql ]; then
    ! mysqlcheck --all-databases 2>&1 | grep -v ' OK$' | grep -q .
  else
    runuser -u postgres -- $PGBIN/pg_amcheck app
  fi
}
longest_pause_ms() {  # mysql|pg: the longest gap between the writer's heartbeats
  if [ "$1" = mysql ]; then
    mysql -N app -e "SELECT COALESCE(ROUND(MAX(g) / 1000), 0) FROM (SELECT TIMESTAMPDIFF(MICROSECOND, LAG(t) OVER (ORDER BY id), t) AS g FROM w WHERE id > $(cat /root/w.start)) x;"
  else
    psqlc app -c "SELECT COALESCE(ROUND(MAX(EXTRACT(EPOCH FROM g)) * 1000), 0) FROM (SELECT t - LAG(t) OVER (ORDER BY id) AS g FROM w WHERE id > $(cat /root/w.start)) x;"
  fi
}
rows() {  # mysql|pg TABLE
  if [ "$1" = mysql ]; then mysql -N app -e "SELECT COUNT(*) FROM $2"; else psqlc app -c "SELECT COUNT(*) FROM $2"; fi
}
guard_lvs() { lvs --noheadings -o lv_name @guard 2>/dev/null | tr -d ' '; }

# A restored backup in a scratch server (not the system's): it starts, recovers on its own and
# a/b match. Prints "a b" row counts.
scratch_mysql() {  # DATADIR
  chown -R mysql:mysql "$1"
  mariadbd --no-defaults --user=mysql --datadir="$1" --socket=/tmp/scratch.sock --skip-networking \
    --pid-file=/tmp/scratch.pid --innodb-buffer-pool-size=32M >/tmp/scratch.log 2>&1 &
  i=0; until mysqladmin -S /tmp/scratch.sock ping >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 120 ] && { tail -5 /tmp/scratch.log; return 1; }; sleep 1; done
  mysql -S /tmp/scratch.sock -N app -e "SELECT (SELECT COUNT(*) FROM a), (SELECT COUNT(*) FROM b)" | tr '\t' ' '
  mysqlcheck -S /tmp/scratch.sock app 2>&1 | grep -v ' OK$' | grep -q . && echo "check-failed"
  mysqladmin -S /tmp/scratch.sock shutdown
}
scratch_pg() {  # DATADIR (the cluster folder: 15/main)
  # a copy of a running cluster has its postmaster.pid: the scratch server is not that one
  rm -f "$1/postmaster.pid"
  chown -R postgres:postgres "$1"; chmod 700 "$1"
  : > "$1/postgresql.conf"; echo 'local all all trust' > "$1/pg_hba.conf"; : > "$1/pg_ident.conf"
  chown postgres:postgres "$1"/*.conf
  runuser -u postgres -- $PGBIN/pg_ctl -D "$1" -l /tmp/scratch-pg.log -w -t 120 \
    -o "-p 5499 -k /tmp -c listen_addresses='' -c shared_buffers=16MB" start >/dev/null || { tail -5 /tmp/scratch-pg.log; return 1; }
  runuser -u postgres -- psql -X -q -A -t -h /tmp -p 5499 app -c "SELECT (SELECT COUNT(*) FROM a) || ' ' || (SELECT COUNT(*) FROM b)"
  runuser -u postgres -- $PGBIN/pg_amcheck -h /tmp -p 5499 app || echo "check-failed"
  runuser -u postgres -- $PGBIN/pg_ctl -D "$1" -w stop -m fast >/dev/null
}

#!/usr/bin/env bash
# Runs a command with throwaway PostgreSQL and MariaDB servers (Debian's packages, installed by
# `scripts/setup.sh --test-servers`) on free loopback ports, each with a fresh data folder, and
# exports where they are as IMGSEARCH_TEST_POSTGRES_URL and IMGSEARCH_TEST_MYSQL_URL (without a
# database name: each test creates its own). Stops both and removes their data whatever happens.
# A server that does not start fails the run with its log: no test is skipped for want of one.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { printf 'test-databases: %s\n' "$*" >&2; exit 1; }
free_port() { .venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$pg_bin/initdb" ] || die "PostgreSQL not installed: run scripts/setup.sh --test-servers"
command -v mariadbd >/dev/null || die "MariaDB not installed: run scripts/setup.sh --test-servers"

# As root the servers run as other users, who must reach the folder: /tmp, not a private TMPDIR.
if [ "$(id -u)" -eq 0 ]; then tmp_root=/tmp; else tmp_root=${TMPDIR:-/tmp}; fi
data=$(mktemp -d "$tmp_root/imgsearch-databases.XXXXXX")
chmod 755 "$data"
# PostgreSQL refuses to run as root: as root, its files and process belong to the postgres user.
if [ "$(id -u)" -eq 0 ]; then
  as_postgres() { runuser -u postgres -- "$@"; }
  mysql_user=root
else
  as_postgres() { "$@"; }
  mysql_user=$(id -un)
fi

pg_port=$(free_port)
mysql_port=""
mysql_socket="$data/mysql.sock"
mysql_pid=""
stop() {
  as_postgres "$pg_bin/pg_ctl" -D "$data/pg" -m immediate stop >/dev/null 2>&1 || true
  if [ -n "$mysql_pid" ]; then
    kill "$mysql_pid" 2>/dev/null || true
    wait "$mysql_pid" 2>/dev/null || true
  fi
  rm -rf "$data"
}
trap stop EXIT

mkdir "$data/pg"
[ "$(id -u)" -eq 0 ] && chown postgres "$data/pg"
as_postgres "$pg_bin/initdb" -D "$data/pg" -U imgsearch --auth=trust -E UTF8 >"$data/pg-initdb.log" 2>&1 ||
  { cat "$data/pg-initdb.log" >&2; die "initdb failed"; }
# fsync off: throwaway data, and the tests' many small transactions run much faster.
as_postgres "$pg_bin/pg_ctl" -D "$data/pg" -l "$data/pg/server.log" -w -t 60 \
  -o "-p $pg_port -k $data/pg -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null ||
  { cat "$data/pg/server.log" >&2; die "PostgreSQL did not start"; }

mkdir "$data/mysql"
# Chosen now that PostgreSQL holds its port, so the two cannot be handed the same one.
mysql_port=$(free_port)
mariadb-install-db --no-defaults --datadir="$data/mysql" --user="$mysql_user" \
  --auth-root-authentication-method=socket --skip-test-db >"$data/mysql-install.log" 2>&1 ||
  { cat "$data/mysql-install.log" >&2; die "mariadb-install-db failed"; }
mariadbd --no-defaults --datadir="$data/mysql" --user="$mysql_user" --port="$mysql_port" \
  --bind-address=127.0.0.1 --socket="$mysql_socket" --pid-file="$data/mysql.pid" \
  --innodb-flush-log-at-trx-commit=0 --max-connections=200 >"$data/mysql.log" 2>&1 &
mysql_pid=$!
for _ in $(seq 1 300); do
  mariadb-admin --no-defaults -S "$mysql_socket" -u "$mysql_user" ping >/dev/null 2>&1 && break
  kill -0 "$mysql_pid" 2>/dev/null || { cat "$data/mysql.log" >&2; die "MariaDB exited before it was ready"; }
  sleep 0.2
done
mariadb-admin --no-defaults -S "$mysql_socket" -u "$mysql_user" ping >/dev/null 2>&1 ||
  { cat "$data/mysql.log" >&2; die "MariaDB did not start within 60 s"; }
mariadb --no-defaults -S "$mysql_socket" -u "$mysql_user" -e \
  "CREATE USER 'imgsearch'@'%' IDENTIFIED BY 'imgsearch'; GRANT ALL ON *.* TO 'imgsearch'@'%';"

export IMGSEARCH_TEST_POSTGRES_URL="postgres://imgsearch@127.0.0.1:$pg_port"
export IMGSEARCH_TEST_MYSQL_URL="mysql://imgsearch:imgsearch@127.0.0.1:$mysql_port"
echo "==> PostgreSQL on 127.0.0.1:$pg_port, MariaDB on 127.0.0.1:$mysql_port" >&2
"$@"

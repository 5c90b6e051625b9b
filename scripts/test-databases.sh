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

command -v mariadbd >/dev/null || die "MariaDB not installed: run scripts/setup.sh --test-servers"

# As root the servers run as other users, who must reach the folder: /tmp, not a private TMPDIR.
if [ "$(id -u)" -eq 0 ]; then tmp_root=/tmp; else tmp_root=${TMPDIR:-/tmp}; fi
data=$(mktemp -d "$tmp_root/imgsearch-databases.XXXXXX")
chmod 755 "$data"
if [ "$(id -u)" -eq 0 ]; then mysql_user=root; else mysql_user=$(id -un); fi

pg_port=$(free_port)
mysql_port=""
mysql_socket="$data/mysql.sock"
mysql_pid=""
stop() {
  scripts/postgres.sh stop "$data"
  if [ -n "$mysql_pid" ]; then
    kill "$mysql_pid" 2>/dev/null || true
    wait "$mysql_pid" 2>/dev/null || true
  fi
  rm -rf "$data"
}
trap stop EXIT

scripts/postgres.sh init "$data"
scripts/postgres.sh start "$data" "$pg_port"

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

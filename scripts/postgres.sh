#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback, from Debian's packages (scripts/setup.sh
# --test-servers installs them): used by test-databases.sh for the shared test server and by
# the soak, which stops and restarts its own one mid-run.
#   postgres.sh init DIR          a new cluster in DIR/pg, user imgsearch, trust on loopback
#   postgres.sh start DIR PORT    start it on 127.0.0.1:PORT and wait until it accepts
#   postgres.sh stop DIR          stop it at once (immediate: as a crash would, no checkpoint)
set -euo pipefail
die() { printf 'postgres.sh: %s\n' "$*" >&2; exit 1; }

pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$pg_bin/initdb" ] || die "PostgreSQL not installed: run scripts/setup.sh --test-servers"
# PostgreSQL refuses to run as root: as root, its files and process belong to the postgres user
# (so DIR must be reachable by that user: under /tmp, not a private TMPDIR).
if [ "$(id -u)" -eq 0 ]; then
  as_postgres() { runuser -u postgres -- "$@"; }
else
  as_postgres() { "$@"; }
fi

command=${1:-}
data=${2:?usage: postgres.sh init|start|stop DIR [PORT]}
case "$command" in
  init)
    mkdir -p "$data/pg"
    chmod 755 "$data"
    [ "$(id -u)" -eq 0 ] && chown postgres "$data/pg"
    as_postgres "$pg_bin/initdb" -D "$data/pg" -U imgsearch --auth=trust -E UTF8 >"$data/pg-initdb.log" 2>&1 ||
      { cat "$data/pg-initdb.log" >&2; die "initdb failed"; }
    ;;
  start)
    port=${3:?usage: postgres.sh start DIR PORT}
    as_postgres "$pg_bin/pg_ctl" -D "$data/pg" -l "$data/pg/server.log" -w -t 60 \
      -o "-p $port -k $data/pg -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null ||
      { cat "$data/pg/server.log" >&2; die "PostgreSQL did not start"; }
    ;;
  stop)
    as_postgres "$pg_bin/pg_ctl" -D "$data/pg" -m immediate stop >/dev/null 2>&1 || true
    ;;
  *) die "unknown command ${command:-(none)}: init, start or stop" ;;
esac

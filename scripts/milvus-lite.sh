#!/usr/bin/env bash
# Runs a command with a Milvus Lite server for it: starts one on a free loopback port with a
# throwaway data folder, exports its address as IMGSEARCH_TEST_MILVUS_URI, runs "$@", and stops
# the server whatever happens. One server for the whole test run keeps the suite fast.
set -euo pipefail
cd "$(dirname "$0")/.."

data=$(mktemp -d "${TMPDIR:-/tmp}/imgsearch-milvus.XXXXXX")
port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log="$data/server.log"
.venv/bin/milvus-lite server --data-dir "$data/db" --host 127.0.0.1 --port "$port" >"$log" 2>&1 &
server=$!
stop() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -rf "$data"
}
trap stop EXIT

for _ in $(seq 1 300); do
  grep -q listening "$log" && break
  kill -0 "$server" 2>/dev/null || { cat "$log" >&2; echo "milvus-lite exited before listening" >&2; exit 1; }
  sleep 0.2
done
grep -q listening "$log" || { cat "$log" >&2; echo "milvus-lite did not start within 60 s" >&2; exit 1; }

export IMGSEARCH_TEST_MILVUS_URI="http://127.0.0.1:$port"
echo "==> Milvus Lite on $IMGSEARCH_TEST_MILVUS_URI" >&2
"$@"

#!/usr/bin/env bash
# Runs a command with a real Milvus 2.3.5 standalone server (the embedded build in the PyPI
# package `milvus`, installed into .venv by scripts/setup.sh): starts it with a throwaway data
# folder and a free proxy port, exports its address as IMGSEARCH_TEST_MILVUS_SERVER_URI, runs
# "$@", and stops it whatever happens. It takes about 25 s to start. Its other components use
# the package's fixed default ports, so one runs per machine at a time.
set -euo pipefail
cd "$(dirname "$0")/.."

data=$(mktemp -d "${TMPDIR:-/tmp}/imgsearch-milvus-server.XXXXXX")
port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log="$data/server.log"
# Its own session, so that stopping it reaches the milvus process the wrapper starts (which
# can outlive a wrapper that was only sent SIGTERM).
setsid .venv/bin/milvus-server --data "$data/db" --proxy-port "$port" >"$log" 2>&1 &
server=$!
stop() {
  kill -TERM -- "-$server" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 -- "-$server" 2>/dev/null || break
    sleep 0.2
  done
  kill -KILL -- "-$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -rf "$data"
}
trap stop EXIT

ready() { .venv/bin/python -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null; }
for _ in $(seq 1 240); do
  ready && break
  kill -0 "$server" 2>/dev/null || { tail -50 "$log" >&2; echo "milvus-server exited before listening" >&2; exit 1; }
  sleep 0.5
done
ready || { tail -50 "$log" >&2; echo "milvus-server did not listen within 120 s" >&2; exit 1; }

export IMGSEARCH_TEST_MILVUS_SERVER_URI="http://127.0.0.1:$port"
echo "==> Milvus 2.3.5 on $IMGSEARCH_TEST_MILVUS_SERVER_URI" >&2
"$@"

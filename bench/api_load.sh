#!/usr/bin/env bash
# GET /samples/{id}/neighbors with random ids, from wrk on loopback, against `aeknn serve --workers 2`.
# Usage: bench/api_load.sh DATABASE_URL [seconds]   (the database must hold a succeeded experiment)
set -euo pipefail
cd "$(dirname "$0")/.."
url=$1; secs=${2:-20}; port=${AEKNN_BENCH_PORT:-8077}
n=$(.venv/bin/python - "$url" <<'PY'
import sys
from common import storage as db
f = db.session_factory(db.make_engine(sys.argv[1]))
with f() as s:
    e = db.get_experiment(session=s, experiment_id=db.latest_experiment_id(session=s))
    print(s.scalar(db.select(db.DatasetRow.n).where(db.DatasetRow.id == e.dataset_id)))
PY
)
lua=$(mktemp --suffix=.lua)
cat > "$lua" <<LUA
math.randomseed(42)
request = function()
  return wrk.format("GET", "/samples/" .. math.random(0, $((n - 1))) .. "/neighbors?space=encoded&k=20")
end
LUA
.venv/bin/aeknn serve --workers 2 --port "$port" --db "$url" > /tmp/aeknn-bench-serve.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; pkill -f "port $port" 2>/dev/null || true; rm -f "$lua"' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/samples/0/neighbors" >/dev/null && break; sleep 0.5; done
wrk -t2 -c16 -d2s -s "$lua" "http://127.0.0.1:$port" >/dev/null  # warm the caches
echo "database: ${url%%:*}  samples: $n  uvicorn workers: 2  wrk: 2 threads, 16 connections, ${secs}s"
wrk -t2 -c16 -d"${secs}s" --latency -s "$lua" "http://127.0.0.1:$port"

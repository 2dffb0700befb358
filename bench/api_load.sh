#!/usr/bin/env bash
# The API under load, from wrk on loopback, against `aeknn serve --workers 2`:
#   1. GET /samples/{id}/neighbors with random ids;
#   2. the same while another client reads metric tables at random k never asked before (each k is a
#      lookup: the metrics stage stores every k);
#   3. a flood of 300 POST /experiments at once: at most AEKNN_MAX_PENDING (8) pending afterwards, every
#      other answer 429 (their experiments are cancelled again at the end).
# Usage: bench/api_load.sh DATABASE_URL [seconds]   (the database must hold a succeeded experiment)
set -euo pipefail
cd "$(dirname "$0")/.."
url=$1; secs=${2:-20}; port=${AEKNN_BENCH_PORT:-8077}
export AEKNN_BROKER_URL=${AEKNN_BENCH_BROKER:-redis://127.0.0.1:6379/14}
n=$(.venv/bin/python - "$url" <<'PY'
import sys
from common.store import db as db
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
reader=
trap 'kill $server ${reader:-} 2>/dev/null; pkill -f "port $port" 2>/dev/null || true; rm -f "$lua"' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/samples/0/neighbors" >/dev/null && break; sleep 0.5; done
# wrk counts error answers as throughput: a run with any is a failure, not a figure
checked_wrk() { out=$(wrk "$@"); echo "$out"; if grep -q "Non-2xx or 3xx responses" <<<"$out"; then
  echo "api_load: the API answered errors (above): these figures do not measure reads" >&2; exit 1; fi; }
checked_wrk -t2 -c16 -d2s -s "$lua" "http://127.0.0.1:$port" >/dev/null  # warm the caches
echo "## 1. neighbours alone"
echo "database: ${url%%:*}  samples: $n  uvicorn workers: 2  wrk: 2 threads, 16 connections, ${secs}s"
checked_wrk -t2 -c16 -d"${secs}s" --latency -s "$lua" "http://127.0.0.1:$port"

echo; echo "## 2. neighbours while another client reads metric tables at new k"
(
  i=0; slow=0; worst=0
  while true; do
    ks="$((RANDOM % 200 + 1)),$((RANDOM % 200 + 1)),$((RANDOM % 200 + 1))"
    code=$(curl -s -o /dev/null -w "%{http_code} %{time_total}" "http://127.0.0.1:$port/metrics/label_agreement?k=$ks")
    i=$((i + 1)); echo "$code" >> /tmp/aeknn-bench-reader.log
  done
) &
reader=$!
: > /tmp/aeknn-bench-reader.log
checked_wrk -t2 -c16 -d"${secs}s" --latency -s "$lua" "http://127.0.0.1:$port"
kill $reader 2>/dev/null || true; reader=
awk '{n++; s[$1]++; if ($2 > m) m = $2} END {printf "metric reads meanwhile: %d, statuses:", n; for (c in s) printf " %s x%d", c, s[c]; printf ", slowest %.3f s\n", m}' /tmp/aeknn-bench-reader.log

echo; echo "## 3. a flood of 300 submits"
.venv/bin/python - "$port" "$url" <<'PY'
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx

from common.store import db as db

port, url = sys.argv[1], sys.argv[2]
f = db.session_factory(db.make_engine(url))
with f() as s:
    before = {e.id for e in db.pending_experiments(session=s)}
with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda i: c.post("/experiments", json={"limit": 1000, "seed": 1000 + i}), range(300)))
    codes = {}
    for a in answers:
        codes[a.status_code] = codes.get(a.status_code, 0) + 1
    with f() as s:
        pending = [e.id for e in db.pending_experiments(session=s) if e.id not in before]
    retry = {a.headers.get("retry-after") for a in answers if a.status_code == 429}
    print(f"answers: {dict(sorted(codes.items()))}; Retry-After: {sorted(retry)}; new pending experiments: "
          f"{len(pending)}")
    for eid in pending:
        c.post(f"/experiments/{eid}/cancel")
PY
redis-cli -n "${AEKNN_BROKER_URL##*/}" flushdb > /dev/null

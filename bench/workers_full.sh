#!/usr/bin/env bash
# The full seed study (60,000 MNIST, 4 models x 100 epochs, 10 tables) on N local worker processes.
# Usage: bench/workers_full.sh N   (needs the machine's Redis and PostgreSQL; uses database aeknn_bench_N)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1}
db=aeknn_bench_$n
psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
export AEKNN_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/$db
export AEKNN_BROKER_URL=redis://127.0.0.1:6379/13
export AEKNN_DATA_DIR=${AEKNN_DATA_DIR:-$(cd ../shared/data && pwd)}
redis-cli -n 13 flushdb >/dev/null
pids=()
for i in $(seq "$n"); do
  # n pool processes on 2 cores: each gets cores/n torch threads
  AEKNN_WORKER_THREADS=$(( $(nproc) / n > 0 ? $(nproc) / n : 1 )) \
    .venv/bin/aeknn worker -n "bench$i@%h" --loglevel warning > "/tmp/aeknn-bench-worker$i.log" 2>&1 &
  pids+=($!)
done
sleep 8
start=$(date +%s.%N)
id=$(.venv/bin/aeknn submit)
while :; do
  status=$(.venv/bin/aeknn status "$id" --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
  [ "$status" = running ] || [ "$status" = queued ] || break
  sleep 5
done
end=$(date +%s.%N)
.venv/bin/aeknn status "$id"
echo "workers=$n status=$status wall_s=$(python3 -c "print(round($end-$start,1))")"
kill "${pids[@]}" 2>/dev/null || true
pkill -f "bench[0-9]*@" 2>/dev/null || true

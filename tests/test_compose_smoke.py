"""What `docker compose up` does, without a Docker engine: each service of docker-compose.yml is started
with its own command and environment, as a local process, against this machine's PostgreSQL and Redis
(database and broker addresses swapped for local ones): init (migrations + the study, once), the API under
uvicorn, one worker per queue. A small study is submitted by init, followed over HTTP to the end, and its
neighbours and metrics read over HTTP; init run again starts no second study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from common.store import migrate
from tests.services import ROOT, free_port, fresh_database, wait_for
from tests.test_compose import compose_config

pytestmark = pytest.mark.workers
BROKER = "redis://127.0.0.1:6379/14"
STUDY = {"limit": 1000, "epochs": 2, "k": 50, "ks": [5, 10, 20]}


def service_env(service: dict, local: dict[str, str]) -> dict[str, str]:
    env = {k: str(v) for k, v in service.get("environment", {}).items()}
    env.update(local)
    bindir = str(Path(sys.executable).parent)  # where the `aeknn` console script lives
    return {**os.environ, **env, "PATH": f"{bindir}:{os.environ.get('PATH', '')}"}


def start(name: str, service: dict, env: dict[str, str], logs: Path) -> subprocess.Popen:
    return subprocess.Popen(service["command"], cwd=ROOT, env=service_env(service, env),
                            stdout=open(logs / f"{name}.log", "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def test_compose_services_as_processes(tmp_path, data_dir):
    services = compose_config("docker-compose.yml")["services"]
    redis.Redis.from_url(BROKER).flushdb()
    port = free_port()
    local = {"AEKNN_DATABASE_URL": fresh_database("aeknn_compose"), "AEKNN_BROKER_URL": BROKER,
             "AEKNN_DATA_DIR": str(data_dir), "AEKNN_CACHE_DIR": str(tmp_path / "cache"),
             "AEKNN_HOST": "127.0.0.1", "AEKNN_PORT": str(port), "AEKNN_INIT_STUDY": json.dumps(STUDY),
             "AEKNN_MEMORY_BUDGET": "8000000", "AEKNN_WORKER_THREADS": "1"}
    init = subprocess.run(services["init"]["command"], cwd=ROOT, env=service_env(services["init"], local),
                          capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    assert f"schema at {migrate.head()}; init study submitted: experiment 1" in init.stdout
    procs = {}
    try:
        for name in ("api", "control", "worker-train", "worker-neighbors"):
            procs[name] = start(name, services[name], local, tmp_path)
        base = f"http://127.0.0.1:{port}"

        def done():
            for name, p in procs.items():
                assert p.poll() is None, f"{name} died:\n{(tmp_path / f'{name}.log').read_text()[-3000:]}"
            try:
                body = httpx.get(f"{base}/experiments/1", timeout=5).json()
            except httpx.HTTPError:
                return None
            assert body["status"] in ("queued", "running", "succeeded"), body
            return body if body["status"] == "succeeded" else None

        exp = wait_for(done, 420, "the init study to succeed over HTTP", every=1)
        assert exp["config"]["limit"] == 1000 and exp["chunks_done"] == exp["chunks_total"] > 0
        nb = httpx.get(f"{base}/samples/5/neighbors", params={"space": "encoded", "k": 20}).json()
        assert len(nb["neighbors"]) == 20 and nb["experiment"] == 1
        table = httpx.get(f"{base}/metrics/score_at_k").json()
        assert len(table["rows"]) == 8 and all(v is not None for r in table["rows"] for v in r["values"].values())
        assert httpx.get(f"{base}/health").json() == {"database": "ok", "broker": "ok"}
        assert "<canvas id=\"map\"" in httpx.get(f"{base}/").text
        # each queue's work ran on its own worker
        assert "Task aeknn.train[" in (tmp_path / "worker-train.log").read_text()
        assert "Task aeknn.neighbor_chunk[" in (tmp_path / "worker-neighbors.log").read_text()
        assert "Task aeknn.neighbor_chunk[" not in (tmp_path / "worker-train.log").read_text()
        # a second `docker compose up`: init runs again, and no second study starts
        again = subprocess.run(services["init"]["command"], cwd=ROOT, env=service_env(services["init"], local),
                               capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and "init study already submitted: experiment 1" in again.stdout, again.stderr
        page = httpx.get(f"{base}/experiments").json()
        assert page["total"] == 1
        assert redis.Redis.from_url(BROKER).llen("control") == 0
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)

"""Real services for the integration tests: Celery worker processes, a PostgreSQL database of their
own, the machine's Redis, and a TCP proxy that can cut the database's connections for real."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_START = ("redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' --appendonly no "
               "--dir /var/lib/redis --logfile /var/log/redis/ci.log")


def fresh_database(name: str) -> str:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def wait_for(check: Callable[[], object], timeout: float, what: str, every: float = 0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class Worker:
    """``celery -A worker.celery_app worker`` as a real process (prefork, one child)."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, queues: str = "control,train,neighbors",
                 beat: bool = False) -> None:
        self.name = name
        self.log = log_dir / f"worker-{name}.log"
        cmd = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", queues, "-c", "1",
               "-n", f"{name}@%h", "--loglevel", "info", "--without-gossip", "--without-mingle"]
        if beat:
            cmd += ["--beat", "--schedule", str(log_dir / f"beat-{name}")]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=open(self.log, "w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: "ready." in self.text() or self.proc.poll() is not None, 60, f"worker {name} to start")
        assert self.proc.poll() is None, f"worker {name} died:\n{self.text()[-3000:]}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def kill_child(self) -> int:
        """SIGKILL the pool process that runs the tasks (as the OOM killer would)."""
        child = self.children()[0]  # one pool process (-c 1), and no beat in the tests that kill
        os.kill(child, signal.SIGKILL)
        return child

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


class TcpProxy:
    """Forwards a local port to PostgreSQL; ``cut(seconds)`` drops every connection and refuses new
    ones for that long, as a network failure would."""

    def __init__(self, target_port: int = 5432) -> None:
        self.target = ("127.0.0.1", target_port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.down_until = 0.0
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if time.monotonic() < self.down_until:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self, seconds: float) -> None:
        self.down_until = time.monotonic() + seconds
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def close(self) -> None:
        self.closed = True
        self.server.close()
        self.cut(0)


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


class ApiServer:
    """The API under uvicorn as a real process (the command ``aeknn serve`` and the compose file run)."""

    def __init__(self, env: dict[str, str], log_dir: Path, cmd: list[str] | None = None) -> None:
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"api-{self.port}.log"
        cmd = cmd or [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app"]
        self.proc = subprocess.Popen([*cmd, "--host", "127.0.0.1", "--port", str(self.port)], cwd=ROOT,
                                     env={**os.environ, **env}, stdout=open(self.log, "w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"the API died:\n{self.log.read_text()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/openapi.json", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 60, "the API to start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)


class Encoder:
    """``aeknn encoder`` as a real process: it answers POST /experiments/{id}/encode over ``broker``."""

    def __init__(self, db_url: str, broker: str, log_dir: Path) -> None:
        import redis

        from common.study import jobs

        self.redis = redis.Redis.from_url(broker)
        self.redis.delete(jobs.ENCODER_ALIVE, jobs.ENCODE_QUEUE)
        self.log = log_dir / "encoder.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "cli", "encoder"], cwd=ROOT, stdout=open(self.log, "w"),
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, "AEKNN_DATABASE_URL": db_url, "AEKNN_BROKER_URL": broker})
        wait_for(lambda: self.redis.exists(jobs.ENCODER_ALIVE) or self.proc.poll() is not None, 60,
                 "the encoder to start")
        assert self.proc.poll() is None, f"the encoder died:\n{self.log.read_text()[-3000:]}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def study_in_process(url: str, config, data_dir: Path, cache_dir: Path) -> tuple[int, object]:
    """A study run whole in this process (as `aeknn run` does) into the database at ``url``: its id and
    the session factory (the caller disposes of ``factory.kw["bind"]`` when done)."""
    from common.study.database import open_database
    from common.study.run import run_experiment
    from common.study.runtime import Runtime
    from common.study.stages import record_experiment

    factory = open_database(url)
    eid = record_experiment(factory, config)
    run_experiment(Runtime(factory=factory, data_dir=data_dir, cache_dir=cache_dir, device="cpu"), eid)
    return eid, factory

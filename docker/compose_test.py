"""`make compose-test`: build the image and play what a `docker compose up` user does, for real.

1. up with a small init study; follow it over HTTP from the host to `succeeded`; read a sample's
   neighbours, place a drawn digit through the encoder service, and read the score@k table;
2. down (volumes kept) and up again: the results are still there and no second study starts;
3. scale worker-neighbors to 2, submit a second study (relu_mse and the reference maps pca, umap and
   tsne, fitted by the image's maps extra), `docker kill` one neighbours container mid-job, and see the
   study finish with every table complete and every model scored;
4. down -v, and remove the images it built (KEEP_IMAGES=1 keeps them).
Before that: the Docker daemon is started when it is not running, base images are built from Debian's
packages when the registry cannot be reached (docker/local-images.sh), with the wheels from this
machine (docker/wheelhouse.sh); the image's size is reported, and a rebuild after touching one source
file is timed (only the code layer is rebuilt). Each step prints its time. Only the host's Python.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = os.environ.get("COMPOSE_PROJECT", "aeknn-ci")
PORT = int(os.environ.get("COMPOSE_TEST_PORT", "18080"))
API = f"http://127.0.0.1:{PORT}"
DATA = Path(os.environ.get("AEKNN_DATA_DIR", ROOT.parent / "shared" / "data")).resolve()
TAG = "ci"
MAPS = ["pca", "umap", "tsne"]  # every reference map (common/compute/names.py): the image carries the maps extra
timings: list[tuple[str, float]] = []


def sh(*cmd: str, check: bool = True, capture: bool = False, env: dict | None = None, timeout: float = 900):
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, text=True, timeout=timeout,
                          capture_output=capture)
    if check and proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{(proc.stderr or '')[-3000:]}")
    return proc


def step(name: str):
    class Timer:
        def __enter__(self):
            self.t0 = time.monotonic()
            print(f"== {name}", flush=True)

        def __exit__(self, *exc):
            if exc[0] is None:
                took = time.monotonic() - self.t0
                timings.append((name, took))
                print(f"   {name}: {took:.1f} s", flush=True)
    return Timer()


def get(path: str, timeout: float = 10):
    with urllib.request.urlopen(API + path, timeout=timeout) as r:
        return json.loads(r.read())


def post(path: str, body: dict):
    req = urllib.request.Request(API + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, json.loads(r.read())


def _encode(body: dict):
    """POST /experiments/1/encode, or None while the encoder is not up yet (503)."""
    try:
        return post("/experiments/1/encode?k=20", body)
    except urllib.error.HTTPError as exc:
        if exc.code == 503:
            return None
        raise


def wait_for(what: str, check, timeout: float, every: float = 2.0):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            value = check()
            if value:
                return value
        except (urllib.error.URLError, ConnectionError, OSError, KeyError) as exc:
            last = exc
        time.sleep(every)
    logs = compose("logs", "--tail", "60", check=False, capture=True).stdout
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last})\n{logs[-6000:]}")


# ---------------------------------------------------------------- Docker itself


def ensure_daemon() -> None:
    if shutil.which("docker") is None or shutil.which("dockerd") is None:
        sh("apt-get", "install", "-y", "-q", "docker.io")
    if sh("docker", "info", check=False, capture=True).returncode == 0:
        return
    subprocess.Popen(["dockerd"], stdout=open("/tmp/dockerd.log", "w"), stderr=subprocess.STDOUT,
                     start_new_session=True)
    end = time.monotonic() + 60
    while sh("docker", "info", check=False, capture=True).returncode != 0:
        if time.monotonic() > end:
            raise SystemExit("dockerd did not start: see /tmp/dockerd.log")
        time.sleep(1)


def image_settings() -> dict[str, str]:
    """The base images: the defaults where a registry answers, else built from Debian's packages, with
    the wheels from this machine (the containers reach no package index either)."""
    if sh("docker", "pull", "-q", "python:3.11-slim", check=False, capture=True, timeout=120).returncode == 0:
        return {}
    print("   no image registry: base images from Debian's packages, wheels from this machine", flush=True)
    out = sh("docker/local-images.sh", capture=True, timeout=900).stdout
    env = dict(line.split("=", 1) for line in out.split() if "=" in line)
    sh("docker/wheelhouse.sh", timeout=900)
    return {**env, "PIP_ARGS": "--no-index --find-links /wheels"}


# ---------------------------------------------------------------- compose


OVERRIDE = ROOT / "docker" / ".compose-test.yml"
ENV: dict[str, str] = {}


def compose(*args: str, **kw):
    return sh("docker-compose", "-p", PROJECT, "-f", "docker-compose.yml", "-f", str(OVERRIDE), *args,
              env=ENV, **kw)


def write_override() -> None:
    """The test's own settings: MNIST from this machine (read-only; no download), the API on 127.0.0.1
    only, fast loss detection, a network of its own (compose makes one per project)."""
    services = ("init", "api", "control", "worker-train", "worker-neighbors", "encoder")
    env = {"AEKNN_DATA_DIR": "/mnist", "AEKNN_LOST_AFTER": "12", "AEKNN_HEARTBEAT_EVERY": "2",
           "AEKNN_SWEEP_EVERY": "3", "AEKNN_STALE_AFTER": "20", "AEKNN_MEMORY_BUDGET": "2000000"}
    lines = ["version: '3.8'", "services:"]
    for s in services:
        lines += [f"  {s}:", "    volumes:", f"      - {DATA}:/mnist:ro", "    environment:"]
        lines += [f"      {k}: '{v}'" for k, v in env.items()]
    OVERRIDE.write_text("\n".join(lines) + "\n")


def experiments() -> list[dict]:
    return get("/experiments?per_page=100")["items"]


def finished(eid: int) -> dict | None:
    e = get(f"/experiments/{eid}")
    if e["status"] in ("failed", "cancelled"):
        raise SystemExit(f"experiment {eid} {e['status']}: {e['error']}")
    return e if e["status"] == "succeeded" else None


def main() -> None:
    t_all = time.monotonic()
    with step("docker daemon"):
        ensure_daemon()
    with step("base images and wheels"):
        ENV.update(image_settings())
        ENV.update({"AEKNN_IMAGE_TAG": TAG, "API_PORT": f"127.0.0.1:{PORT}",
                    "AEKNN_INIT_STUDY": json.dumps({"limit": 2000, "epochs": 2})})
    write_override()
    try:
        with step("build the image"):
            compose("build", "api", capture=True)
        size = sh("docker", "image", "inspect", "-f", "{{.Size}}", f"aeknn:{TAG}", capture=True).stdout.strip()
        print(f"   image aeknn:{TAG}: {int(size) / 1e9:.2f} GB", flush=True)
        with step("rebuild after changing one source file"):
            probe = ROOT / "api" / "__init__.py"
            before = probe.read_text()
            try:
                probe.write_text(before + f"# rebuild probe {time.time()}\n")
                out = compose("build", "api", capture=True).stdout
            finally:
                probe.write_text(before)
        steps = out.split("\nStep ")
        deps = next(x for x in steps if "--extra-index-url" in x)
        code = next(x for x in steps if x.split("\n", 1)[0].rstrip().endswith("COPY api ./api"))
        assert "Using cache" in deps and "Using cache" not in code, out[-3000:]
        print("   the dependency layer came from the cache; the code layers were rebuilt", flush=True)

        with step("1. up; the init study succeeds; neighbours and score@k over HTTP"):
            compose("up", "-d", "--quiet-pull")
            wait_for("the API", lambda: get("/health"), 180)
            wait_for("the init study to succeed", lambda: finished(1), 420, every=3)
            nb = get("/samples/3/neighbors?space=encoded&k=20")
            assert nb["experiment"] == 1 and len(nb["neighbors"]) == 20, nb
            digit = [[255 if 4 <= r < 24 and 13 <= c < 15 else 0 for c in range(28)] for r in range(28)]  # a 1
            status, placed = wait_for("the encoder", lambda: _encode({"arrays": [digit]}), 120)
            item = placed["images"][0]
            assert status == 200 and len(item["pixel"]["l2"]) == 20 and item["models"]["relu_mse"]["placed"], placed
            print(f"   a drawn 1 placed on every map by the encoder service; relu_mse code "
                  f"{item['models']['relu_mse']['code']}", flush=True)
            table = get("/metrics/score_at_k")
            assert len(table["rows"]) == 8 and all(v is not None for r in table["rows"] for v in r["values"].values())
            users = sh("docker", "exec", f"{PROJECT}_api_1", "sh", "-c", "id -u; touch /opt/venv/x 2>&1 || true; "
                       "touch /data/.w && echo data-writable", capture=True).stdout
            assert users.splitlines()[0] == "10001" and "Permission denied" in users and "data-writable" in users, users
            print("   the API runs as uid 10001, cannot write its code, can write /data", flush=True)

        with step("2. down (volumes kept) and up again: results kept, no second study"):
            compose("down")
            compose("up", "-d")
            wait_for("the API", lambda: get("/health"), 180)
            assert [e["id"] for e in experiments()] == [1]
            assert finished(1) and get("/samples/3/neighbors?space=encoded&k=20")["neighbors"] == nb["neighbors"]
            init = compose("logs", "init", capture=True).stdout
            assert "already submitted" in init, init[-2000:]

        with step("3. two neighbour workers, one killed mid-job: the study, with the reference maps fitted in "
                  "the image, finishes, every table complete"):
            compose("up", "-d", "--scale", "worker-neighbors=2")
            status, body = post("/experiments", {"limit": 3000, "epochs": 1, "seed": 1,
                                                 "models": ["relu_mse", *MAPS]})
            assert status == 202, body
            eid = body["id"]
            wait_for("chunks under way", lambda: 0 < get(f"/experiments/{eid}")["chunks_done"], 300, every=1)
            sh("docker", "kill", f"{PROJECT}_worker-neighbors_2")
            print("   killed worker-neighbors_2", flush=True)
            done = wait_for(f"experiment {eid} to succeed", lambda: finished(eid), 420, every=3)
            assert all(t["complete"] and t["chunks_done"] == t["chunks_total"] for t in done["tables"]), done["tables"]
            assert done["chunks_done"] == done["chunks_total"] > 0
            rows = get(f"/metrics/score_at_k?experiment={eid}")["rows"]
            assert sorted({r["model"] for r in rows}) == sorted(["relu_mse", *MAPS]), rows
            assert all(v is not None for r in rows for v in r["values"].values()), rows
            print(f"   {', '.join(MAPS)} fitted in the image, each scored", flush=True)
    except BaseException:
        print(compose("ps", check=False, capture=True).stdout, flush=True)
        for service in ("init", "api", "control", "worker-train", "worker-neighbors", "encoder", "postgres"):
            logs = compose("logs", "--tail", "25", service, check=False, capture=True).stdout
            print(logs[-2500:], flush=True)
        raise
    finally:
        with step("4. down -v, and the images it built removed"):
            compose("down", "-v", "--remove-orphans", check=False, capture=True)
            if os.environ.get("KEEP_IMAGES") != "1":
                sh("docker", "rmi", "-f", f"aeknn:{TAG}", check=False, capture=True)
            OVERRIDE.unlink(missing_ok=True)
    total = time.monotonic() - t_all
    print("\ncompose test: " + ", ".join(f"{n.split(';')[0]} {t:.0f} s" for n, t in timings) + f"; total {total:.0f} s")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as exc:
        print(f"compose test failed: {exc}", file=sys.stderr)
        sys.exit(1)

"""How fast a new image is answered (POST /experiments/{id}/encode), over HTTP, at N = 60,000.

    python bench/encode.py --data-dir ../shared/data [--db study.db] [--requests 200]

Without --db it first runs the study on all 60,000 MNIST training images with one epoch (latency does not
depend on how long the models trained) and relu_keep beside the four autoencoders. Then it starts the real
processes (`aeknn encoder` and `aeknn serve`, Redis as the broker) and posts MNIST test images as PNGs one
at a time: all four autoencoders at k = 20, both distances (the issue's target: median under 50 ms, p99 under
150 ms), then relu_keep alone (its placement: under 1 s). Prints the processor and its flags.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from embeddings import processor  # noqa: E402

from common.compute.data import load_dataset  # noqa: E402

AUTOENCODERS = "linear_l1,linear_mse,relu_l1,relu_mse"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(client: httpx.Client, url: str, pngs: list[bytes], count: int) -> list[float]:
    out = []
    for i in range(count):
        t0 = time.perf_counter()
        r = client.post(url, content=pngs[i % len(pngs)], headers={"Content-Type": "image/png"})
        out.append(time.perf_counter() - t0)
        r.raise_for_status()
    return out


def report(what: str, seconds: list[float]) -> None:
    ms = sorted(s * 1000 for s in seconds)
    p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
    print(f"{what}: median {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, min {ms[0]:.1f} ms "
          f"({len(ms)} requests)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--db", help="a finished study's SQLite file (default: run one)")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--broker", default="redis://127.0.0.1:6379/13")
    ap.add_argument("--avx2", action="store_true", help="the encoder as on a machine with AVX2 only: torch's "
                    "kernels capped at AVX2 (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA), the sad-avx2 L1 path")
    a = ap.parse_args()
    print(f"processor: {processor()}")
    work = Path(tempfile.mkdtemp(prefix="aeknn-encode-"))
    db = a.db or str(work / "study.db")
    env = {**os.environ, "AEKNN_DATABASE_URL": f"sqlite:///{Path(db).resolve()}", "AEKNN_BROKER_URL": a.broker,
           "AEKNN_DATA_DIR": str(a.data_dir.resolve())}
    aeknn = [sys.executable, "-m", "cli"]
    if a.db is None:
        t0 = time.perf_counter()
        subprocess.run(aeknn + ["run", "--epochs", "1", "--models", AUTOENCODERS + ",relu_keep"], cwd=ROOT, env=env,
                       check=True, stdout=subprocess.DEVNULL)
        print(f"study (N = 60,000, 1 epoch, four autoencoders and relu_keep): {time.perf_counter() - t0:.0f} s")
    port = free_port()
    capped = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "AEKNN_KERNEL": "sad-avx2"}
    if a.avx2:
        print("encoder capped at AVX2: " + ", ".join(f"{k}={v}" for k, v in capped.items()))
    procs = [subprocess.Popen(aeknn + ["encoder"], cwd=ROOT, env={**env, **(capped if a.avx2 else {})},
                              stderr=subprocess.DEVNULL),
             subprocess.Popen(aeknn + ["serve", "--port", str(port)], cwd=ROOT, env=env, stderr=subprocess.DEVNULL)]
    try:
        test = load_dataset("mnist", a.data_dir, work / "cache", split="test")
        pngs = []
        for img in test.images[:100]:
            buf = io.BytesIO()
            Image.fromarray(img.reshape(28, 28)).save(buf, "PNG")
            pngs.append(buf.getvalue())
        base = f"http://127.0.0.1:{port}/experiments/1/encode"
        with httpx.Client(timeout=60) as client:
            for _ in range(300):  # until both processes are up; the first answer loads the experiment
                try:
                    t0 = time.perf_counter()
                    if client.post(base, content=pngs[0], headers={"Content-Type": "image/png"}).status_code == 200:
                        print(f"first answer (the encoder loads the experiment): {time.perf_counter() - t0:.2f} s")
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            timed(client, f"{base}?k=20&models={AUTOENCODERS}", pngs, 20)  # warm
            report("one image, four autoencoders, L1 + L2, k = 20", timed(client, f"{base}?k=20&models={AUTOENCODERS}",
                                                                           pngs, a.requests))
            report("one image, relu_keep placed on its map, L1 + L2, k = 20",
                   timed(client, f"{base}?k=20&models=relu_keep", pngs, max(20, a.requests // 4)))
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)


if __name__ == "__main__":
    main()

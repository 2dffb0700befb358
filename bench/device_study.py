"""The seed study's compute on one device, with each stage timed, using only the compute core
(torch, numpy, scipy: what a bare GPU machine has; no database, no web stack). Then the check that the
device's tables are the CPU's: every table's first --check rows recomputed by the CPU path from the
same points (pixels, or the device's own codes) must give the same ids and distances.

    python bench/device_study.py --data-dir ../shared/data [--device cuda] [--epochs 100] [--check 2000]

Prints one JSON object: the device, each stage's seconds, the checks, and score@k / kNN accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import metrics as M  # noqa: E402
from common.data import load_dataset, reconstruction_ids  # noqa: E402
from common.names import MODEL_NAMES  # noqa: E402
from common.neighbors import exact_knn  # noqa: E402
from common.training import TrainConfig, configure_numerics, encode, load_trained, resolve_device, train_group  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/aeknn-device-cache"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--check", type=int, default=2000, help="rows of each table recomputed on the CPU")
    a = ap.parse_args()
    configure_numerics()
    import torch

    dev = resolve_device(a.device)
    times: dict[str, float] = {}
    t_all = time.perf_counter()

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times[name] = round(time.perf_counter() - t0, 2)
        return out

    ds = timed("data", lambda: load_dataset("mnist", a.data_dir, a.cache_dir, a.limit))
    tables = {}
    for d in ("l1", "l2"):
        tables[("original", d)] = timed(f"table original {d}",
                                        lambda d=d: exact_knn(ds.images, k=a.k, distance=d, device=dev))
    x = ds.scaled()
    cks = timed("train", lambda: train_group(list(MODEL_NAMES), x, TrainConfig(epochs=a.epochs),
                                             recon_ids=reconstruction_ids(ds.labels), device=str(dev)))
    codes = {n: timed(f"encode {n}", lambda n=n: encode(load_trained(n, cks[n].model_state).to(dev), x).numpy())
             for n in MODEL_NAMES}
    for n in MODEL_NAMES:
        for d in ("l1", "l2"):
            tables[(n, d)] = timed(f"table {n} {d}", lambda n=n, d=d: exact_knn(codes[n], k=a.k, distance=d,
                                                                             device=dev))
    times["total"] = round(time.perf_counter() - t_all, 2)

    checks = {}
    rows = min(a.check, ds.n)
    for (space, d), t in tables.items():
        pts = ds.images if space == "original" else codes[space]
        from common.neighbors import knn_rows, prepare

        cpu = knn_rows(prepare(pts, d, "cpu"), 0, rows, a.k)
        checks[f"{space} {d}"] = bool(np.array_equal(cpu.ids, t.ids[:rows])
                                      and np.array_equal(cpu.distances, t.distances[:rows]))
    results = {n: {"score@20": round(M.score_at_k(tables[("original", "l2")].ids, tables[(n, "l2")].ids, 20), 4),
                   "knn_acc@5": round(M.knn_accuracy(tables[(n, "l2")].ids, ds.labels, 5), 4),
                   "final_loss": round(cks[n].losses[-1], 4)} for n in MODEL_NAMES}
    print(json.dumps({"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                      "torch": torch.__version__, "n": ds.n, "epochs": a.epochs, "seconds": times,
                      "identical_to_cpu": checks, "results": results}, indent=1))


if __name__ == "__main__":
    main()

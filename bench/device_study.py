"""The seed study's compute on one device, each stage timed and printed as it ends, using only the
compute core (torch, numpy, scipy: what a bare GPU machine has; no database, no web stack).

    python bench/device_study.py --data-dir ../shared/data [--device cuda] [--epochs 100] [--check 2000]
        [--stages data,pixels,train,codes,metrics] [--codes device|cpu|both] [--memory-budget 1G]
        [--reference cpu_losses.json] [--repeat-train 3] [--chunk-check]

Stages: data (load MNIST), pixels (the two pixel tables), train (four models, 100 epochs; on CUDA one
CUDA graph per step), codes (encode, then the eight 2-D tables on the device, on the CPU's KD-tree, or
both, each timed), metrics (every table of STUDY.md from the id tables). Then the checks:
- every table's first --check rows recomputed by the CPU path from the same points (pixels, or the
  device's own codes) must give the same ids and distances;
- --reference: the device's losses against a CPU run's (JSON {model: [loss per epoch]}) at every tenth
  epoch (a GPU rounds differently: the target is within 1 %);
- --repeat-train N: N more epochs trained twice from the same seed must end on the same bits;
- --chunk-check: a code-table chunk planned for a CPU (KD-tree sized: 48,003 rows) computed on the
  device's dense path under the budget: its peak device memory against the budget.
Ends with one JSON object: the device, each stage's seconds, the checks, and the study's numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.compute import metrics as M  # noqa: E402
from common.compute.data import load_dataset, reconstruction_ids  # noqa: E402
from common.compute.devices import resolve_device  # noqa: E402
from common.compute.names import SEED_MODELS as MODEL_NAMES  # noqa: E402 - the autoencoders
from common.compute.neighbors import exact_knn, knn_rows, plan_chunk, prepare  # noqa: E402
from common.compute.sizes import DEFAULT_MEMORY_BUDGET  # noqa: E402
from common.compute.training import (  # noqa: E402
    TrainConfig,
    configure_numerics,
    encode,
    load_trained,
    train_group,
)

KS = (5, 10, 20, 50)


def _size(text: str) -> int:
    from common.compute.sizes import parse_size  # noqa: PLC0415

    return parse_size(text)


def say(text: str) -> None:
    print(text, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/aeknn-device-cache"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--stages", default="data,pixels,train,codes,metrics")
    ap.add_argument("--codes", choices=["device", "cpu", "both"], default="both",
                    help="where the 2-D tables are computed (both: each timed, the device's are kept)")
    ap.add_argument("--memory-budget", type=_size, default=DEFAULT_MEMORY_BUDGET)
    ap.add_argument("--check", type=int, default=2000, help="rows of each table recomputed on the CPU")
    ap.add_argument("--reference", type=Path, help="a CPU run's losses, JSON {model: [loss per epoch]}")
    ap.add_argument("--repeat-train", type=int, default=0, help="epochs trained twice to check determinism")
    ap.add_argument("--chunk-check", action="store_true")
    a = ap.parse_args()
    configure_numerics()
    import torch

    dev = resolve_device(a.device)
    stages = set(a.stages.split(","))
    times: dict[str, float] = {}
    out: dict = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                 "torch": torch.__version__, "memory_budget": a.memory_budget}
    say(f"device {out['device']}, torch {torch.__version__}")
    t_all = time.perf_counter()

    def timed(name, fn):
        t0 = time.perf_counter()
        result = fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times[name] = round(time.perf_counter() - t0, 2)
        say(f"stage {name}: {times[name]:.2f} s")
        return result

    ds = timed("data", lambda: load_dataset("mnist", a.data_dir, a.cache_dir, a.limit))
    out["n"] = ds.n
    tables: dict[tuple[str, str], object] = {}
    if "pixels" in stages:
        for d in ("l1", "l2"):
            tables[("original", d)] = timed(f"table original {d}", lambda d=d: exact_knn(
                ds.images, k=a.k, distance=d, device=dev, memory_budget=a.memory_budget))
    x = ds.scaled()
    cks, codes = None, {}
    if "train" in stages:
        cfg = TrainConfig(epochs=a.epochs)
        t = {"last": time.perf_counter()}

        def progress(ck):
            epoch = next(iter(ck.values())).epoch
            if epoch % 10 == 0 or epoch == 1:
                now = time.perf_counter()
                say(f"  epoch {epoch}: " + " ".join(f"{n}={c.losses[-1]:.5f}" for n, c in ck.items())
                    + f"  ({now - t['last']:.2f} s)")
                t["last"] = now

        cks = timed("train", lambda: train_group(list(MODEL_NAMES), x, cfg, recon_ids=reconstruction_ids(ds.labels),
                                                 device=str(dev), on_epoch_end=progress))
        out["final_loss"] = {n: round(cks[n].losses[-1], 5) for n in MODEL_NAMES}
    if "codes" in stages and cks is not None:
        models = {n: load_trained(n, cks[n].model_state).to(dev) for n in MODEL_NAMES}
        codes = timed("encode", lambda: {n: encode(models[n], x).numpy() for n in MODEL_NAMES})
        made = {}
        for where in (["device", "cpu"] if a.codes == "both" else [a.codes]):
            on = dev if where == "device" else "cpu"
            made[where] = timed(f"code tables ({where})", lambda on=on: {
                (n, d): exact_knn(codes[n], k=a.k, distance=d, device=on, memory_budget=a.memory_budget)
                for n in MODEL_NAMES for d in ("l1", "l2")})
        tables.update(made.get("device", made.get("cpu")))
        if len(made) == 2:
            out["code_tables_device_equal_cpu"] = all(
                np.array_equal(made["device"][key].ids, made["cpu"][key].ids)
                and np.array_equal(made["device"][key].distances, made["cpu"][key].distances) for key in made["cpu"])
    if "metrics" in stages and ("original", "l2") in tables and codes:
        out["results"] = timed("metrics", lambda: study_metrics(tables, ds.labels, ds.n))
    times["total"] = round(time.perf_counter() - t_all, 2)
    say(f"total {times['total']:.2f} s (the stages above, end to end)")
    out["seconds"] = times

    checks = {}
    rows = min(a.check, ds.n)
    for (space, d), t in tables.items():
        pts = ds.images if space == "original" else codes[space]
        cpu = knn_rows(prepare(pts, d, "cpu"), 0, rows, a.k)
        checks[f"{space} {d}"] = bool(np.array_equal(cpu.ids, t.ids[:rows])
                                      and np.array_equal(cpu.distances, t.distances[:rows]))
    out["identical_to_cpu"] = checks
    say(f"first {rows} rows of every table identical to the CPU path's: {all(checks.values())}")

    if a.reference and cks is not None:
        ref = json.loads(a.reference.read_text())
        worst = 0.0
        rel = {}
        for n in MODEL_NAMES:
            pts = [e for e in range(10, len(cks[n].losses) + 1, 10) if e <= len(ref.get(n, []))]
            rel[n] = [round(abs(cks[n].losses[e - 1] - ref[n][e - 1]) / ref[n][e - 1], 5) for e in pts]
            worst = max([worst, *rel[n]])
        out["losses_vs_cpu"] = {"relative_difference_every_10th_epoch": rel, "worst": worst,
                                "within_1_percent": worst <= 0.01}
        say(f"losses against the CPU run: worst relative difference {worst:.4%}")
    if a.repeat_train:
        cfg = TrainConfig(epochs=a.repeat_train)
        runs = [train_group(list(MODEL_NAMES), x, cfg, recon_ids=[0], device=str(dev)) for _ in range(2)]
        same = all(runs[0][n].losses == runs[1][n].losses and all(
            torch.equal(runs[0][n].model_state[k], runs[1][n].model_state[k]) for k in runs[0][n].model_state)
            for n in MODEL_NAMES)
        out["deterministic"] = {"epochs": a.repeat_train, "same_bits": same}
        say(f"{a.repeat_train} epochs trained twice: same bits: {same}")
    if a.chunk_check and dev.type == "cuda" and codes:
        out["chunk_check"] = chunk_check(codes["relu_mse"], a.k, a.memory_budget, dev)
        say(f"chunk check: {out['chunk_check']}")
    print(json.dumps(out, indent=1), flush=True)


def study_metrics(tables, labels, n) -> dict:
    res = {}
    for m in MODEL_NAMES:
        for d in ("l1", "l2"):
            o, e = tables[("original", d)].ids, tables[(m, d)].ids
            top = o.shape[1]  # the tables' K: with --k below 50, the k above it are left out
            kl = min(20, top)  # the study's k for the label tables
            res[f"{m} {d}"] = {
                **{f"score@{k}": round(M.score_at_k(o, e, k), 4) for k in KS if k <= top},
                **{f"r_nx@{k}": round(M.r_nx(M.score_at_k(o, e, k), n, k), 4) for k in KS if k <= top},
                "knn_acc@5": round(M.knn_accuracy(e, labels, min(5, top)), 4),
                f"label_change@{kl}": round(M.label_agreement(o, e, labels, kl)["change"], 4),
                f"score@{kl}_by_label": {str(c): round(v, 4)
                                         for c, v in M.score_at_k_by_label(o, e, labels, kl).items()},
            }
    for d in ("l1", "l2"):
        o = tables[("original", d)].ids
        res[f"original {d}"] = {"knn_acc@5": round(M.knn_accuracy(o, labels, min(5, o.shape[1])), 4)}
    return res


def chunk_check(points: np.ndarray, k: int, budget: int, dev) -> dict:
    """A chunk planned for a CPU's KD-tree, computed on the device's dense path within the budget."""
    import torch

    rows = plan_chunk(len(points), points.shape[1], k, "l2", pixels=False, memory_budget=budget, device="cpu")
    space = prepare(points, "l2", dev)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    knn_rows(space, 0, rows, k, memory_budget=budget)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated(dev) - base
    return {"planned_rows": rows, "block_rows": space.chunk(k, budget), "peak_bytes": int(peak),
            "budget_bytes": budget, "within_budget": peak <= budget,
            "unsplit_would_need_bytes": rows * len(points) * space.bytes_per_pair}


if __name__ == "__main__":
    main()

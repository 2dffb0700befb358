"""How the study's cost grows with N, on your data: MNIST's training split cut to N = 17,500 and 35,000, MNIST
train + test (70,000), and MNIST + Fashion-MNIST train + test (140,000), each run whole by `aeknn run --data`
in a process of its own (a fresh SQLite database), so its peak memory is its own.

    python bench/scale.py --data-dir ../shared/data [--fashion /usr/share/datasets] [--ns 17500,35000,70000,140000]
                          [--epochs 1] [--out docs/scale.json]

Per N and stage: the seconds the study recorded, the process's peak resident memory and the database's size.
Then each stage's growth exponent (the least-squares slope of log time on log N over every N, and over the
last doubling alone) and a projection to N = 1,000,000 with the larger of the two: its time on this machine,
and how many such 2-core workers would finish it in one hour (the tables' chunks split across workers;
loading, training and the metrics with their exact-rank passes are one task each). Training runs ``--epochs`` epochs
at each N and is projected at ``--study-epochs`` (the study's 100). Prints the processor and its flags.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from embeddings import processor  # noqa: E402

SPLITS = ("train", "test")


def build(data_dir: Path, fashion: Path | None, n: int, folder: Path) -> Path:
    """An .npz of the first n samples of MNIST train, MNIST train + test, then Fashion-MNIST's."""
    from common.compute.data import load_dataset

    path = folder / f"scale{n}.npz"
    if path.is_file():
        return path
    cache = folder / "cache"
    parts = [load_dataset("mnist", data_dir, cache, None, split=s) for s in SPLITS]
    if n > 70_000:
        if fashion is None:
            raise SystemExit(f"N = {n} needs Fashion-MNIST: --fashion DIR (apt-get install dataset-fashion-mnist "
                             "puts it in /usr/share/datasets)")
        parts += [load_dataset("fashion-mnist", fashion, cache, None, split=s) for s in SPLITS]
    x = np.concatenate([p.images for p in parts])[:n]
    y = np.concatenate([p.labels + (10 if i >= 2 else 0) for i, p in enumerate(parts)])[:n]  # 20 classes
    if len(x) < n:
        raise SystemExit(f"only {len(x)} samples for N = {n}")
    np.savez(path, X=x.reshape(n, 28, 28), y=y)
    return path


def run_one(data: Path, epochs: int, folder: Path) -> dict:
    """`aeknn run --data` in a child process: its stage times, peak memory and database size."""
    db_path = folder / f"{data.stem}.db"
    db_path.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AEKNN_")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cli", "run", "--data", str(data), "--epochs", str(epochs),
                           "--db", str(db_path)], cwd=ROOT, env={**env, "AEKNN_CACHE_DIR": str(folder / "cache")},
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"aeknn run failed on {data}: {proc.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0  # the largest child so far
    from common.store import db as db

    engine = db.make_engine(f"sqlite:///{db_path}")
    with db.session_factory(engine)() as s:
        (exp,) = s.query(db.Experiment).all()
        timings = dict(exp.timings)
    engine.dispose()
    return {"wall_s": wall, "peak_rss_mb": peak, "db_mb": db_path.stat().st_size / 2**20, "stages": timings}


def grouped(stages: dict[str, float]) -> dict[str, float]:
    """The stages as the report groups them."""
    out = {"data": 0.0, "pixel tables": 0.0, "training": 0.0, "code tables": 0.0, "metrics (with ranks)": 0.0}
    for name, s in stages.items():
        if name == "total" or name.startswith(("ranks ", "store ")):  # parts of "metrics" and of the tables
            continue
        key = ("data" if name == "data" else "pixel tables" if name.startswith("table original")
               else "code tables" if name.startswith("table ") else "training" if name.startswith("train")
               else "metrics (with ranks)" if name.startswith("metrics") else None)
        if key is not None:
            out[key] += s
    return out


def exponent(ns: list[int], ts: list[float]) -> float:
    x, y = np.log(ns), np.log(np.maximum(ts, 1e-3))
    return float(np.polyfit(x, y, 1)[0])


def summary(runs: dict[int, dict], ns: list[int], epochs: int, study_epochs: int) -> None:
    """Each stage against N: its exponent fitted over every N and over the last doubling; projected to
    N = 1,000,000 with the larger of the two, training counted at the study's epochs."""
    if len(ns) < 2:  # one N: its figures above are all there is; a growth needs two
        print("\n(one N: no growth exponent or projection; give --ns two or more sizes for them)")
        return
    at_1m: dict[str, float] = {}
    print(f"\n{'stage':<22}" + "".join(f"{n:>11,}" for n in ns) + "   fitted    last   at 1,000,000")
    rows = [(name, [grouped(runs[n]["stages"])[name] for n in ns]) for name in grouped(runs[ns[0]]["stages"])]
    rows.append(("  of which rank passes",
                 [sum(v for k, v in runs[n]["stages"].items() if k.startswith("ranks ")) for n in ns]))
    rows.append(("database (MB)", [runs[n]["db_mb"] for n in ns]))
    rows.append(("peak RSS (MB)", [runs[n]["peak_rss_mb"] for n in ns]))
    for name, ts in rows:
        fitted = exponent(ns, ts)
        last = math.log(max(ts[-1], 1e-3) / max(ts[-2], 1e-3)) / math.log(ns[-1] / ns[-2])
        scale = (1_000_000 / ns[-1]) ** max(fitted, last)
        if name == "training":
            scale *= study_epochs / epochs
        at_1m[name] = ts[-1] * scale
        unit = "s" if "(MB)" not in name else ""
        shown = (f"{at_1m[name] / 3600:9.1f} h" if unit else f"{at_1m[name] / 1024:9.1f} GB")
        print(f"{name:<22}" + "".join(f"{t:>10.1f}{unit or ' '}" for t in ts) + f"  {fitted:7.2f} {last:7.2f}  "
              + shown)
    stages = [n for n, _ in rows[:5]]
    total = sum(at_1m[n] for n in stages)
    # one task each on the workers: loading, training, and the metrics (their exact-rank passes inside)
    alone = at_1m["data"] + at_1m["training"] + at_1m["metrics (with ranks)"]
    print(f"\nat N = 1,000,000, the study ({study_epochs} epochs) on this machine: {total / 3600:.1f} h; "
          f"loading, training and the metrics with their rank passes ({alone / 3600:.1f} h) run as one task "
          f"each, one after another; only the tables ({(total - alone) / 3600:.1f} h) split over workers: "
          + (f"{math.ceil((total - alone) / (3600 - alone))} such workers finish it in one hour" if alone < 3600
             else "no number of such workers finishes it in one hour"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--fashion", type=Path, default=None)
    p.add_argument("--ns", default="17500,35000,70000,140000")
    p.add_argument("--epochs", type=int, default=1, help="training epochs run at each N (default 1)")
    p.add_argument("--study-epochs", type=int, default=100, help="the epochs the projection counts (default 100)")
    p.add_argument("--from-json", type=Path, default=None, help="summarise a run saved with --out")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--work", type=Path, default=None, help="folder for the .npz files and databases")
    a = p.parse_args()
    if a.from_json:
        saved = json.loads(a.from_json.read_text())
        print(f"processor: {saved['processor']}")
        runs = {int(n): r for n, r in saved["runs"].items()}
        summary(runs, sorted(runs), saved["epochs"], a.study_epochs)
        return
    ns = [int(v) for v in a.ns.split(",")]
    folder = a.work or Path(tempfile.mkdtemp(prefix="aeknn-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"processor: {processor()}")
    runs = {}
    for n in ns:
        data = build(a.data_dir, a.fashion, n, folder)
        runs[n] = run_one(data, a.epochs, folder)
        g = grouped(runs[n]["stages"])
        print(f"N = {n:>7,}: wall {runs[n]['wall_s']:7.1f} s, peak RSS {runs[n]['peak_rss_mb']:7.0f} MB, "
              f"database {runs[n]['db_mb']:7.0f} MB; " + ", ".join(f"{k} {v:.1f} s" for k, v in g.items()),
              flush=True)
    summary(runs, ns, a.epochs, a.study_epochs)
    if a.out:
        a.out.write_text(json.dumps({"processor": processor(), "epochs": a.epochs,
                                     "runs": {str(n): r for n, r in runs.items()}}, indent=1))


if __name__ == "__main__":
    main()

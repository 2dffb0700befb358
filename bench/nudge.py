"""How far the training losses move when every initial weight moves by one unit in the last place.

    .venv/bin/python bench/nudge.py [--epochs 100] [--models linear_l1,relu_l1] [--limit N] [--json out.json]

Trains the models twice on this CPU, once as the study does and once with every initial weight nudged
by one ulp (up or down at random, seeded), and prints the relative difference of each model's loss at
every tenth epoch. Same machine, same code, same batch order: the gap is what a change of rounding alone
does, the floor against which a GPU's losses (which round differently) can be compared.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--models", default="linear_l1,relu_l1", help="one stack: models of one loss")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    from common.compute import training
    from common.compute.data import load_dataset
    from common.settings import get_settings

    training.configure_numerics()
    s = get_settings()
    x = load_dataset("mnist", s.data_dir, s.cache_dir, args.limit).scaled()
    names = args.models.split(",")
    cfg = training.TrainConfig(epochs=args.epochs, seed=args.seed)
    plain_state = training.initial_state

    def nudged_state(name: str, seed: int) -> dict:
        g = torch.Generator().manual_seed(12345 + training.model_seed(seed, name))
        out = {}
        for key, w in plain_state(name, seed).items():
            up = torch.rand(w.shape, generator=g) < 0.5
            out[key] = torch.nextafter(w, torch.where(up, torch.tensor(float("inf")), torch.tensor(float("-inf"))))
        return out

    runs = {}
    for label, init in (("plain", plain_state), ("nudged", nudged_state)):
        training.initial_state = init
        t0 = time.perf_counter()
        cks = training.train_group(names, x, cfg, recon_ids=[0])
        runs[label] = {n: ck.losses for n, ck in cks.items()}
        print(f"{label}: {time.perf_counter() - t0:.1f} s", flush=True)
    training.initial_state = plain_state

    marks = [e for e in range(10, args.epochs + 1, 10)] or [args.epochs]
    print(f"\nrelative loss difference, nudged vs plain (%), N = {x.shape[0]}")
    print(f"{'model':12}" + "".join(f"{'e' + str(e):>9}" for e in marks) + f"{'max':>9}")
    result = {}
    for n in names:
        a, b = runs["plain"][n], runs["nudged"][n]
        rel = [abs(b[e - 1] - a[e - 1]) / a[e - 1] * 100 for e in marks]
        result[n] = {"epochs": marks, "relative_percent": rel, "plain": a, "nudged": b}
        print(f"{n:12}" + "".join(f"{r:9.3g}" for r in rel) + f"{max(rel):9.3g}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

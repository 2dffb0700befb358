"""The rank-based measures (trustworthiness, continuity, MRRE both ways, LCMC) against ZADU, and their cost at
full scale beside the pixel tables.

    python bench/ranks.py --data-dir DIR [--ns 5000,10000] [--ks 5,10,20]
    python bench/ranks.py --db aeknn.db [--experiment ID]

Peers: the first N MNIST images and their two principal components (numpy), both distances for ours and
ZADU's (euclidean) for it; each side runs in a process of its own, timed from the loaded data to every
measure at every k asked, with its peak resident memory (``ru_maxrss``) beside the memory once the data
is loaded. The values are compared (the largest difference is printed). Needs `pip install zadu`.

Full scale (``--db``): the exact-rank passes of a stored experiment computed again here (every model, both
distances), each timed, beside the stored times of its two pixel tables. Prints the processor and flags.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from embeddings import principal_components, processor  # noqa: E402


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load(data_dir: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    from common.compute.data import load_dataset

    ds = load_dataset("mnist", Path(data_dir), Path(".aeknn-cache"), n)
    return ds.images, principal_components(ds.images, 2)


def ours(x: np.ndarray, codes: np.ndarray, ks: list[int]) -> dict:
    from common.compute import metrics as M
    from common.compute.neighbors import exact_knn
    from common.study.ranking import rank_sums

    top, n, out = max(ks), len(x), {}
    for d in ("l2", "l1"):
        orig = exact_knn(x, k=top, distance=d).ids
        enc = exact_knn(codes, k=top, distance=d).ids
        r = rank_sums(x, {"pca": codes}, {d: orig}, {("pca", d): enc}, top)[("pca", d)]
        q = M.overlap_sums(orig, enc)[0] / n / np.arange(1, top + 1)
        curves = {"trustworthiness": M.trustworthiness_curve(r.false, n),
                  "continuity": M.trustworthiness_curve(r.missing, n),
                  "mrre_false": M.mrre_curve(r.relative_false, n), "mrre_missing": M.mrre_curve(r.relative_missing, n),
                  "lcmc": M.lcmc_curve(q, n)}
        out[d] = {name: {k: float(c[k - 1]) for k in ks} for name, c in curves.items()}
    return out


def zadu(x: np.ndarray, codes: np.ndarray, ks: list[int]) -> dict:
    from zadu.measures import local_continuity_meta_criteria as lcmc
    from zadu.measures import mean_relative_rank_error as mrre
    from zadu.measures import trustworthiness_continuity as tnc

    xf, out = x.astype(np.float64), {}
    for k in ks:
        t, m, c = tnc.measure(xf, codes, k=k), mrre.measure(xf, codes, k=k), lcmc.measure(xf, codes, k=k)
        out[k] = {"trustworthiness": t["trustworthiness"], "continuity": t["continuity"],
                  "mrre_false": m["mrre_false"], "mrre_missing": m["mrre_missing"], "lcmc": c["lcmc"]}
    return {"l2": {name: {k: out[k][name] for k in ks} for name in out[ks[0]]}}


def one(side: str, data_dir: str, n: int, ks: list[int]) -> None:
    x, codes = load(data_dir, n)
    base = rss_mb()
    t0 = time.perf_counter()
    values = (ours if side == "ours" else zadu)(x, codes, ks)
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mb": rss_mb(), "loaded_mb": base, "values": values}))


def peers(data_dir: str, ns: list[int], ks: list[int]) -> None:
    print(f"processor: {processor()}")
    print(f"| N | ours: both distances, every k to {max(ks)} | its peak RSS (data loaded) | ZADU 0.5.4: euclidean, "
          f"k = {','.join(map(str, ks))} | its peak RSS (data loaded) | largest difference |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n in ns:
        res = {}
        for side in ("ours", "zadu"):
            p = subprocess.run([sys.executable, __file__, "--one", side, "--data-dir", data_dir, "--n", str(n),
                                "--ks", ",".join(map(str, ks))], capture_output=True, text=True)
            if p.returncode:
                sys.exit(f"{side} at N={n} failed:\n{p.stderr[-2000:]}")
            res[side] = json.loads(p.stdout.strip().splitlines()[-1])
        a, b = res["ours"]["values"]["l2"], res["zadu"]["values"]["l2"]
        diff = max(abs(a[m][str(k)] - b[m][str(k)]) for m in b for k in ks)
        o, z = res["ours"], res["zadu"]
        print(f"| {n:,} | {o['seconds']:.1f} s | {o['peak_mb']:,.0f} MiB ({o['loaded_mb']:,.0f}) | "
              f"{z['seconds']:.1f} s | {z['peak_mb']:,.0f} MiB ({z['loaded_mb']:,.0f}) | {diff:.1e} |")


def full_scale(url: str, experiment: int | None) -> None:
    from common.store import db
    from common.study import reads, scoring
    from common.study.config import StudyConfig
    from common.study.ranking import RankSettings

    print(f"processor: {processor()}")
    f = db.session_factory(db.make_engine(url if "://" in url else f"sqlite:///{url}"))
    with f() as s:
        exp = db.get_experiment(session=s, experiment_id=experiment or reads.finished(s, None).id)
        cfg = StudyConfig.model_validate(exp.config)
        names = [m.value for m in cfg.models]
        st = RankSettings()
        t0 = time.perf_counter()
        scoring.rank_sums_of(s, exp.id, cfg, names, st)
        total = time.perf_counter() - t0
        tables = {k: v for k, v in (exp.timings or {}).items() if k.startswith("table original")}
        n = s.get(db.DatasetRow, exp.dataset_id).n
    print(f"experiment {exp.id}: N = {n:,}, K = {cfg.k}, models {', '.join(names)}")
    for k, v in st.seconds.items():
        print(f"  {k}: {v:.1f} s")
    print(f"every rank pass: {total:.1f} s (peak RSS {rss_mb():,.0f} MiB); the stored pixel tables: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in tables.items()) + f" (together {sum(tables.values()):.1f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--ns", default="5000,10000")
    ap.add_argument("--ks", default="5,10,20")
    ap.add_argument("--db")
    ap.add_argument("--experiment", type=int)
    ap.add_argument("--one", choices=["ours", "zadu"], help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    ks = [int(k) for k in a.ks.split(",")]
    if a.one:
        one(a.one, a.data_dir, a.n, ks)
    elif a.db:
        full_scale(a.db, a.experiment)
    else:
        peers(a.data_dir, [int(n) for n in a.ns.split(",")], ks)


if __name__ == "__main__":
    main()

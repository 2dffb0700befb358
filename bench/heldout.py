"""The held-out test split's metrics on a stored study (one run with "split": "all" or "test"), timed piece by
piece: each test image's exact top-K among the training images in pixel space (one C kernel pass a block of
test images), in each model's code space (float64, the tables' formula), then the metrics; peak memory; and
a brute force of random test images' pixel-space rows.

    python bench/heldout.py --db full.db [--experiment ID] [--avx2] [--check 100]

--avx2 runs the same on AVX2 alone: the C kernels' AVX2 path, torch's (ATEN_CPU_CAPABILITY,
ONEDNN_MAX_CPU_ISA) and numpy's (NPY_DISABLE_CPU_FEATURES) without AVX-512; the L2 path is then measured
again among those. Prints the processor and its flags.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

AVX512 = "AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", required=True, help="a database URL or SQLite file holding the study")
    ap.add_argument("--experiment", type=int, help="its id (default: the latest that scored its test split)")
    ap.add_argument("--avx2", action="store_true", help="AVX2 alone: the C kernels and numpy")
    ap.add_argument("--check", type=int, default=100, help="test images checked against a brute force")
    args = ap.parse_args()
    if args.avx2 and os.environ.get("NPY_DISABLE_CPU_FEATURES") != AVX512:  # numpy reads it at import
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  {**os.environ, "NPY_DISABLE_CPU_FEATURES": AVX512, "AEKNN_BENCH_AVX2": "1",
                   "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"})
    root = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(root), str(root / "bench")]
    import numpy as np
    from embeddings import processor

    from common.compute import metrics as M
    from common.compute.neighbors import choose_pixel_path
    from common.compute.placing import code_cross_table, pixel_cross_table
    from common.store import db
    from common.study.config import StudyConfig
    from common.study.database import open_existing
    from common.study.scoring import heldout_metrics, top_k

    url = args.db if "://" in args.db else f"sqlite:///{Path(args.db).absolute()}"
    factory = open_existing(url)
    print(processor())
    with factory() as s:
        eid = args.experiment or s.scalar(db.select(db.Experiment.id).where(
            db.Experiment.test_dataset_id.is_not(None), db.Experiment.status == db.SUCCEEDED)
            .order_by(db.Experiment.id.desc()).limit(1))
        exp = db.get_experiment(session=s, experiment_id=eid)
        cfg = StudyConfig.model_validate(exp.config)
        train, test = s.get(db.DatasetRow, exp.dataset_id), s.get(db.DatasetRow, exp.test_dataset_id)
        x, xt = db.dataset_values(train), db.dataset_values(test)
        labels, own = np.frombuffer(train.labels, np.uint8), np.frombuffer(test.labels, np.uint8)
        codes = {m.name: (db.model_codes(m).copy(), db.model_test_codes(m).copy())
                 for m in db.list_models(session=s, experiment_id=eid) if m.test_codes is not None}
    top = top_k(cfg, len(x))
    kernel = "sad-avx2" if os.environ.get("AEKNN_BENCH_AVX2") else None
    print(f"experiment {eid}: {len(xt)} test images against {len(x)} training images, K = {top}, "
          f"{'AVX2 alone (C kernels sad-avx2, torch and numpy without AVX-512)' if kernel else 'as built'}")
    t_all = time.perf_counter()
    orig = {}
    for d in (v.value for v in cfg.distances):
        t0 = time.perf_counter()
        orig[d] = pixel_cross_table(x, xt, d, top, kernel=kernel)
        print(f"  pixel space {d}: {time.perf_counter() - t0:6.2f} s (path {choose_pixel_path(x, d, kernel=kernel)})")
    enc = {}
    for m, (c, ct) in codes.items():
        for d in orig:
            t0 = time.perf_counter()
            enc[(m, d)] = code_cross_table(c, ct, d, top)
            print(f"  {m:<10} {d}: {time.perf_counter() - t0:6.2f} s")
    t0 = time.perf_counter()
    values = heldout_metrics(cfg, len(x), labels, own, orig, enc.items())
    print(f"  metrics ({len(values)} values): {time.perf_counter() - t0:.2f} s")
    print(f"held-out metrics in all: {time.perf_counter() - t_all:.1f} s; peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    rng = np.random.default_rng(0)
    rows = rng.choice(len(xt), min(args.check, len(xt)), replace=False)
    xf = x.astype(np.float64)
    for d, table in orig.items():
        for i in rows:
            q = xt[i].astype(np.float64)
            sums = ((xf - q) ** 2).sum(1) if d == "l2" else np.abs(xf - q).sum(1)
            want = np.lexsort((np.arange(len(x)), sums))[:top]
            assert np.array_equal(table[i], want), (d, i)
    print(f"brute force: {len(rows)} random test images' pixel-space rows equal, at each distance")
    k = 10 if top >= 10 else top
    for (m, d), e in enc.items():
        if d == "l2":
            print(f"  score@{k} {m} (l2): {M.overlap(orig[d], e, k).mean() / k:.4f}")


if __name__ == "__main__":
    main()

"""Your embedding at full scale: how long an uploaded embedding takes to score (its code-space tables at the
experiment's K for both distances, then every metric at every k), for codes of each dimension asked for.

    python bench/embeddings.py --db aeknn.db [--experiment ID] [--dims 2,64]

The codes are the data's principal components (numpy only), stored as an upload would be; each is scored
in this process as a worker would (``stage_embedding``), timed from the stored upload to ready. The
upload is removed again afterwards. Prints the processor and its flags, the wall time and the peak memory.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import time

import numpy as np


def processor() -> str:
    info = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    wanted = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16") if f in flags]
    return (f"{fields.get('Model name', '?').strip()} (family {fields.get('CPU family', '?').strip()}, model "
            f"{fields.get('Model', '?').strip()}), {fields.get('CPU(s)', '?').strip()} CPUs; flags: {' '.join(wanted)}")


def principal_components(images: np.ndarray, m: int) -> np.ndarray:
    x = images.astype(np.float64)
    x -= x.mean(axis=0)
    _, vecs = np.linalg.eigh(x.T @ x)
    return x @ vecs[:, ::-1][:, :m]


def checked(factory, exp, name: str, codes: np.ndarray, rows: int = 200) -> str:
    """Rows of the stored tables against a float64 brute force (the sum over coordinates in their order,
    ties to the lower id), for ``rows`` random samples."""
    from common.store import db as db

    picks = np.random.default_rng(0).choice(len(codes), rows, replace=False)
    out = []
    for d in exp.config["distances"]:
        with factory() as s:
            t = db.find_table(session=s, experiment_id=exp.id, space=name, distance=d)
            got = {r.sample_id: db.unpack_ids(r.ids, t.k) for r in s.scalars(db.select(db.NeighborRow).where(
                db.NeighborRow.table_id == t.id, db.NeighborRow.sample_id.in_(picks.tolist())))}
        same = 0
        for i in picks:
            v = np.zeros(len(codes))
            for j in range(codes.shape[1]):
                diff = codes[i, j] - codes[:, j]
                v = v + (np.abs(diff) if d == "l1" else diff * diff)
            v[i] = np.inf
            same += np.array_equal(np.lexsort((np.arange(len(codes)), v))[:t.k], got[int(i)])
        out.append(f"{d} {same} of {rows} rows equal a float64 brute force")
    return "; ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", required=True, help="a database holding a succeeded experiment (sqlite path or URL)")
    ap.add_argument("--experiment", type=int, help="default: the latest succeeded")
    ap.add_argument("--dims", default="2,64", help="comma list of code dimensions (default: 2,64)")
    a = ap.parse_args()

    from sqlalchemy import delete

    from common.compute.training import configure_numerics
    from common.settings import Settings
    from common.store import db as db
    from common.study import embeddings, reads
    from common.study.database import open_existing
    from common.study.runtime import Runtime
    from common.study.stages import stage_embedding

    configure_numerics()
    url = a.db if "://" in a.db else f"sqlite:///{a.db}"
    factory = open_existing(url)
    with factory() as s:
        exp = reads.finished(s, a.experiment)
        images = reads.images(s, exp.dataset_id)
    rt = Runtime.from_settings(Settings(database_url=url), factory)
    print(f"processor: {processor()}")
    print(f"experiment {exp.id}: N = {exp.n:,}, K = {exp.config['k']}, distances {', '.join(exp.config['distances'])}")
    for m in (int(x) for x in a.dims.split(",")):
        codes = principal_components(images, m)
        name = f"bench-pca{m}"
        model_id, _ = embeddings.record(factory, exp.id, name, codes)
        t0 = time.perf_counter()
        stage_embedding(rt, exp.id, name)
        wall = time.perf_counter() - t0
        with factory() as s:
            timings = db.get_experiment(session=s, experiment_id=exp.id).timings
            paths = {t.distance: t.path for t in s.scalars(db.select(db.TableRow).where(db.TableRow.space == name))}
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        tables = ", ".join(f"{d} {timings.get(f'table {name} {d}', 0):.1f} s ({paths.get(d)})" for d in sorted(paths))
        print(f"{m:>3}-D codes: scored in {wall:.1f} s (tables: {tables}; metrics "
              f"{wall - sum(timings.get(f'table {name} {d}', 0) for d in paths):.1f} s); peak memory {peak:,.0f} MiB")
        print(f"      exact: {checked(factory, exp, name, codes)}")
        with db.transaction(factory) as s:  # leave the database as it was
            s.execute(delete(db.MetricValue).where(db.MetricValue.experiment_id == exp.id,
                                                   db.MetricValue.space == name))
            s.execute(delete(db.ModelRow).where(db.ModelRow.id == model_id))
            row = s.get(db.Experiment, exp.id)
            row.timings = {k: v for k, v in row.timings.items() if name not in k}


if __name__ == "__main__":
    main()

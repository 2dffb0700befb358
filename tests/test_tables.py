"""Building a stored table in one process: the whole-table sweep, resumed around stored chunks, and the
record of how each table was computed (its path, compute time and work)."""

from __future__ import annotations

import numpy as np

from common.compute.neighbors import exact_knn, prepare
from common.compute.sizes import DEFAULT_MEMORY_BUDGET
from common.store import db as db
from common.study import reads
from common.study.runtime import Runtime
from common.study.tables import build_chunk, build_table


def _table(f, images, labels, k, chunk):
    with db.transaction(f) as s:
        ds = db.get_or_create_dataset(session=s, name="mnist", labels=labels, images=images)
        eid = db.create_experiment(session=s, config={})
        t = db.get_or_create_table(session=s, dataset_id=ds, space=db.ORIGINAL, model_id=None, distance="l2",
                                   k=k, n=len(images), chunk_size=chunk)
    return eid, t


def test_a_half_written_table_is_finished_by_the_sweep_to_the_same_rows(engine, mnist, tmp_path):
    f = db.session_factory(engine)
    images, labels = mnist.images[:1500], mnist.labels[:1500]
    eid, table = _table(f, images, labels, 60, 170)  # chunks of 170 rows: panels straddle them
    space = prepare(images, "l2", kernel="f32")
    for start in (170, 680):  # two chunks stored earlier, out of order (a worker, or a stopped run)
        assert build_chunk(f, table, space, start, memory_budget=DEFAULT_MEMORY_BUDGET)
    notes: list[str] = []

    class Notes:
        def begin(self, *a): pass
        def advance(self, *a, **k): pass
        def end(self): pass
        def note(self, text): notes.append(text)

    rt = Runtime(factory=f, data_dir=tmp_path, cache_dir=tmp_path, device="cpu", kernel="f32", progress=Notes())
    build_table(rt, experiment_id=eid, table=table, points=images, title="original l2")
    want = exact_knn(images, k=60, distance="l2")
    with f() as s:
        t = db.get_table(session=s, table_id=table.id)
        assert t.complete and t.path == "f32" and t.compute_seconds > 0
        # every row against every other, counted once: 2 x dims x rows x cols / 1e9, the sweep's half or more
        dims = int((images != images[:1]).any(axis=0).sum())
        full = 2 * dims * 1500 * 1500 / 1e9
        assert full / 2 < t.work < full
        assert len(db.done_chunks(session=s, table_id=t.id)) == 9
        for i in (0, 169, 170, 500, 849, 1499):
            ids, lab, dist = reads.stored_neighbors(s, t, t.dataset_id, i)
            np.testing.assert_array_equal(ids, want.ids[i])
            np.testing.assert_array_equal(dist, want.distances[i])
            np.testing.assert_array_equal(lab, labels[want.ids[i]])
        chunks = s.query(db.ChunkRow).filter_by(table_id=t.id).all()
        assert all(c.path == "f32" and c.seconds > 0 and c.work > 0 for c in chunks)
    assert notes and notes[0].startswith("table original l2: f32, ") and "GFLOP/s" in notes[0]


def test_a_table_computed_by_workers_on_different_paths_says_so(engine, mnist):
    f = db.session_factory(engine)
    images, labels = mnist.images[:400], mnist.labels[:400]
    _, table = _table(f, images, labels, 20, 200)
    build_chunk(f, table, prepare(images, "l2", kernel="f32"), 0, memory_budget=DEFAULT_MEMORY_BUDGET)
    build_chunk(f, table, prepare(images, "l2", kernel="torch"), 200, memory_budget=DEFAULT_MEMORY_BUDGET)
    from common.study.tables import finish_table

    assert finish_table(f, table.id, seconds=1.0)
    with f() as s:
        t = db.get_table(session=s, table_id=table.id)
        assert t.path == "f32+torch" and t.work == 2 * 784 * 400 * 200 / 1e9 + 2 * int(
            (images != images[:1]).any(axis=0).sum()) * 400 * 200 / 1e9

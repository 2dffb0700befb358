"""One neighbour table, built and stored: planned once (its chunks fixed, so every worker agrees), computed
chunk by chunk or in one sweep, each chunk stored with its done-mark in one transaction, then marked complete.
The in-process run builds whole tables (:func:`build_table`); a worker builds one chunk (:func:`build_chunk`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from common.compute.devices import resolve_device
from common.compute.kernels import describe_rate, throughput
from common.compute.neighbors import NeighborTable, Space, knn_rows, plan_chunk, prepare, release_scratch
from common.store import db as db
from common.study.runtime import Runtime

log = logging.getLogger(__name__)


def plan_table(factory: sessionmaker[Session], *, dataset_id: int, space: str, model_id: int | None,
               distance: str, k: int, n: int, dim: int, memory_budget: int, device: str) -> db.TableRow:
    """The table's row, planned once: its chunks are fixed here so that every worker agrees on them."""
    pixels = space == db.ORIGINAL
    size = plan_chunk(n, dim, k, distance, pixels=pixels, memory_budget=memory_budget,
                      device=resolve_device(device))
    with db.transaction(factory) as s:
        return db.get_or_create_table(session=s, dataset_id=dataset_id, space=space, model_id=model_id,
                                      distance=distance, k=k, n=n, chunk_size=size)


def table_points(session: Session, table: db.TableRow) -> tuple[np.ndarray, np.ndarray]:
    """The points of a table's space (uint8 pixels or float codes) and the samples' labels."""
    ds = session.get(db.DatasetRow, table.dataset_id)
    labels = np.frombuffer(ds.labels, np.uint8)
    if table.model_id is None:
        return np.frombuffer(ds.images, np.uint8).reshape(ds.n, -1).copy(), labels
    return db.model_codes(session.get(db.ModelRow, table.model_id)).copy(), labels


def prepare_space(points: np.ndarray, distance: str, *, device: str, kernel: str, cache_dir: Path | str) -> Space:
    """The points ready for one distance, on the path ``kernel`` asks for (auto: the fastest measured)."""
    return prepare(points, distance, resolve_device(device), kernel=kernel, cache_dir=str(cache_dir))


def store_chunk(factory: sessionmaker[Session], table: db.TableRow, labels: np.ndarray, start: int,
                part: NeighborTable, *, worker: str | None = None, path: str | None = None,
                seconds: float | None = None, work: float | None = None,
                store_seconds: list[float] | None = None) -> bool:
    """Store one chunk's rows with its done-mark (and how it was computed) in one transaction.

    Returns False when the chunk was already stored (a repeated delivery): nothing is written twice.
    ``store_seconds`` collects the time spent storing (the benchmark reports it apart).
    """
    t0 = time.perf_counter()
    try:
        with db.transaction(factory) as s:
            return db.save_chunk(session=s, table_id=table.id, start=start, ids=part.ids,
                                 labels=labels[part.ids], distances=part.distances, worker=worker, path=path,
                                 seconds=seconds, work=work)
    except IntegrityError:  # the same chunk committed by another delivery in the meantime
        return False
    finally:
        if store_seconds is not None:
            store_seconds.append(time.perf_counter() - t0)


def build_chunk(factory: sessionmaker[Session], table: db.TableRow, space: Space, labels: np.ndarray,
                start: int, worker: str | None = None, store_seconds: list[float] | None = None,
                memory_budget: int | None = None) -> bool:
    """Compute one chunk (its rows against every point) and store it; False when already stored.
    ``memory_budget``: the computing process's own, which sizes the blocks its device computes at once."""
    with factory() as s:
        if start in db.done_chunks(session=s, table_id=table.id):
            return False
    stop = min(table.n, start + table.chunk_size)
    t0 = time.perf_counter()
    part = knn_rows(space, start, stop, table.k, memory_budget)
    return store_chunk(factory, table, labels, start, part, worker=worker, path=space.path,
                       seconds=time.perf_counter() - t0, work=space.work_of(stop - start, table.n),
                       store_seconds=store_seconds)


def swept_chunks(space: Space, table: db.TableRow, start: int, memory_budget: int
                 ) -> Iterator[tuple[int, NeighborTable, float, float | None]]:
    """The table's chunks from ``start`` on, computed by the space's whole-table sweep (each block of
    the distance matrix read once for two row sets): (start, rows, compute seconds, work) per chunk."""
    n, k = table.n, table.k
    ids, dist = np.empty((0, k), np.int32), np.empty((0, k), np.float32)
    secs, work = np.empty(0), np.empty(0)  # per pending row: its share of its block's time and work
    sweep = space.sweep(k, memory_budget, start)
    for c0, c1 in db.table_chunks(table):
        if c0 < start:
            continue
        while len(ids) < c1 - c0:
            t0 = time.perf_counter()
            i0, part = next(sweep)
            b = len(part.ids)
            w = space.work_of(b, n - i0 + start)  # the sweep scores these rows against i0..N and 0..start
            secs = np.concatenate([secs, np.full(b, (time.perf_counter() - t0) / b)])
            work = np.concatenate([work, np.full(b, np.nan if w is None else w / b)])
            ids, dist = np.concatenate([ids, part.ids]), np.concatenate([dist, part.distances])
        r = c1 - c0
        w = float(work[:r].sum())
        yield c0, NeighborTable(ids[:r], dist[:r]), float(secs[:r].sum()), None if np.isnan(w) else w
        ids, dist, secs, work = ids[r:], dist[r:], secs[r:], work[r:]


def finish_table(factory: sessionmaker[Session], table_id: int, seconds: float | None = None) -> bool:
    """Mark the table complete when every chunk is stored (decided from the database). True if complete."""
    with db.transaction(factory) as s:
        table = db.get_table(session=s, table_id=table_id)
        if table.complete:
            return True
        if len(db.done_chunks(session=s, table_id=table_id)) < len(db.table_chunks(table)):
            return False
        db.mark_table_complete(session=s, table_id=table_id, seconds=seconds)
        return True


def build_table(rt: Runtime, *, experiment_id: int, table: db.TableRow, points: np.ndarray,
                 labels: np.ndarray, title: str) -> None:
    """Every chunk not yet stored, in this process; a table left half-written continues where it was.
    Pixel tables go in one sweep from the first missing chunk on where the budget holds its state.
    Records the seconds spent storing its rows as the timing "store <title>", and says how it was computed."""
    t0 = time.perf_counter()
    stored: list[float] = []
    space = prepare_space(points, table.distance, device=rt.device, kernel=rt.kernel, cache_dir=rt.cache_dir)
    with rt.factory() as s:
        done = db.done_chunks(session=s, table_id=table.id)
    chunks = db.table_chunks(table)
    todo = [(a, b) for a, b in chunks if a not in done]
    rt.progress.begin(title, table.n, "rows")
    rt.progress.advance(table.n - sum(b - a for a, b in todo))
    if todo and space.sweep_panel(table.k, rt.memory_budget, todo[0][0]) is not None:
        for start, part, seconds, work in swept_chunks(space, table, todo[0][0], rt.memory_budget):
            if start not in done:
                store_chunk(rt.factory, table, labels, start, part, path=space.path, seconds=seconds, work=work,
                            store_seconds=stored)
            rt.progress.advance(len(part.ids))
    else:
        for start, stop in todo:
            build_chunk(rt.factory, table, space, labels, start, store_seconds=stored, memory_budget=rt.memory_budget)
            rt.progress.advance(stop - start)
    rt.progress.end()
    release_scratch()
    finish_table(rt.factory, table.id, seconds=time.perf_counter() - t0)
    with db.transaction(rt.factory) as s:
        db.record_timing(session=s, experiment_id=experiment_id, stage=f"store {title}", seconds=sum(stored))
        done_table = db.get_table(session=s, table_id=table.id)
        rate = throughput(done_table.path, table.distance, table.n, done_table.compute_seconds, done_table.work)
    rt.progress.note(f"table {title}: {describe_rate(rate)} (computing {done_table.compute_seconds or 0:.1f} s, "
                     f"storing {sum(stored):.1f} s)")

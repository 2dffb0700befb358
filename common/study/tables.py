"""One neighbour table, built and stored: planned once (its chunks fixed, so every worker agrees), computed
chunk by chunk or in one sweep, each chunk stored with its done-mark in one transaction, then marked complete.
The in-process run builds whole tables (:func:`build_table`); a worker builds one chunk (:func:`build_chunk`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from common.compute.devices import resolve_device
from common.compute.kernels import describe_rate, throughput
from common.compute.neighbors import NeighborTable, Space, plan_chunk, prepare, release_scratch, table_rows
from common.store import db as db
from common.study.runtime import Runtime

log = logging.getLogger(__name__)


def plan_table(factory: sessionmaker[Session], *, dataset_id: int, space: str, model_id: int | None,
               distance: str, k: int, n: int, dim: int, memory_budget: int, device: str) -> db.TableRow:
    """The table's row, planned once: its chunks are fixed here so that every worker agrees on them."""
    pixels = space == db.ORIGINAL
    if pixels:  # your float data's space is planned as codes are (float64 values, not bytes)
        with factory() as s:
            pixels = (s.get(db.DatasetRow, dataset_id).dtype or "uint8") == "uint8"
    size = plan_chunk(n, dim, k, distance, pixels=pixels, memory_budget=memory_budget,
                      device=resolve_device(device))
    with db.transaction(factory) as s:
        return db.get_or_create_table(session=s, dataset_id=dataset_id, space=space, model_id=model_id,
                                      distance=distance, k=k, n=n, chunk_size=size)


def table_points(session: Session, table: db.TableRow) -> np.ndarray:
    """The points of a table's space: uint8 pixels or float values, or a model's codes."""
    if table.model_id is None:
        return db.dataset_values(session.get(db.DatasetRow, table.dataset_id))
    return db.model_codes(session.get(db.ModelRow, table.model_id)).copy()


def prepare_space(points: np.ndarray, distance: str, *, device: str, kernel: str, cache_dir: Path | str) -> Space:
    """The points ready for one distance, on the path ``kernel`` asks for (auto: the fastest measured)."""
    return prepare(points, distance, resolve_device(device), kernel=kernel, cache_dir=str(cache_dir))


def store_chunk(factory: sessionmaker[Session], table: db.TableRow, start: int, part: NeighborTable, *,
                worker: str | None = None, path: str | None = None, seconds: float | None = None,
                work: float | None = None, store_seconds: list[float] | None = None) -> bool:
    """Store one chunk's rows with its done-mark (and how it was computed) in one transaction.

    Returns False when the chunk was already stored (a repeated delivery): nothing is written twice.
    ``store_seconds`` collects the time spent storing (the benchmark reports it apart).
    """
    t0 = time.perf_counter()
    try:
        with db.transaction(factory) as s:
            return db.save_chunk(session=s, table_id=table.id, start=start, ids=part.ids, worker=worker, path=path,
                                 seconds=seconds, work=work)
    except IntegrityError:  # the same chunk committed by another delivery in the meantime
        return False
    finally:
        if store_seconds is not None:
            store_seconds.append(time.perf_counter() - t0)


def build_chunk(factory: sessionmaker[Session], table: db.TableRow, space: Space, start: int, *,
                memory_budget: int, worker: str | None = None) -> bool:
    """Compute one chunk (its rows against every point) and store it; False when already stored.
    ``memory_budget``: the computing process's own, which sizes the blocks its device computes at once."""
    with factory() as s:
        if start in db.done_chunks(session=s, table_id=table.id):
            return False
    stop = min(table.n, start + table.chunk_size)
    ((_, part, seconds, work),) = table_rows(space, table.k, memory_budget, [(start, stop)])
    return store_chunk(factory, table, start, part, worker=worker, path=space.path, seconds=seconds, work=work)


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


def build_table(rt: Runtime, *, experiment_id: int, table: db.TableRow, points: np.ndarray, title: str) -> None:
    """Every chunk not yet stored, in this process; a table left half-written continues where it was.
    The engine decides how (common/compute/neighbors.py, ``table_rows``): one sweep from the first missing
    chunk on where it can (a half-written table included), chunk by chunk otherwise.
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
    for start, part, seconds, work in table_rows(space, table.k, rt.memory_budget, todo):
        store_chunk(rt.factory, table, start, part, path=space.path, seconds=seconds, work=work,
                    store_seconds=stored)
        rt.progress.advance(len(part.ids))
    rt.progress.end()
    release_scratch()
    finish_table(rt.factory, table.id, seconds=time.perf_counter() - t0)
    with db.transaction(rt.factory) as s:
        db.record_timing(session=s, experiment_id=experiment_id, stage=f"store {title}", seconds=sum(stored))
        done_table = db.get_table(session=s, table_id=table.id)
        rate = throughput(done_table.path, table.distance, table.n, done_table.compute_seconds, done_table.work)
    rt.progress.note(f"table {title}: {describe_rate(rate)} (computing {done_table.compute_seconds or 0:.1f} s, "
                     f"storing {sum(stored):.1f} s)")

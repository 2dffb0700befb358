"""Caches for the hot read path. A succeeded experiment never changes (its tables, config and data set
are final), so what identifies its tables is kept per process; "the latest succeeded experiment" is
looked up again at most once a second."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import conflict, not_found
from common.store import db as db

MAX_ID = 2**31 - 1  # ids are 32-bit integers in PostgreSQL: anything larger cannot exist
LATEST_TTL = 1.0


@dataclass(frozen=True)
class Finished:
    id: int
    config: dict
    dataset_id: int
    n: int


_lock = threading.Lock()
_finished: dict[tuple[str, int], Finished] = {}
_tables: dict[tuple[str, int, str, str], tuple[int, int] | None] = {}
_latest: dict[str, tuple[float, int | None]] = {}


def _key(session: Session) -> str:
    return str(session.get_bind().url)


def get_experiment(session: Session, experiment_id: int) -> db.Experiment | None:
    if not 1 <= experiment_id <= MAX_ID:
        return None
    return db.get_experiment(session=session, experiment_id=experiment_id)


def finished(session: Session, experiment: int | None) -> Finished:
    """The experiment asked for (it must have succeeded), or the latest that succeeded."""
    key = _key(session)
    if experiment is None:
        at, found = _latest.get(key, (0.0, None))
        if time.monotonic() - at > LATEST_TTL:
            found = db.latest_experiment_id(session=session)
            _latest[key] = (time.monotonic(), found)
        if found is None:
            raise not_found("no experiment has succeeded yet")
        experiment = found
    hit = _finished.get((key, experiment))
    if hit is not None:
        return hit
    exp = get_experiment(session, experiment)
    if exp is None:
        raise not_found(f"no experiment {experiment}")
    if exp.status != db.SUCCEEDED:
        raise conflict(f"experiment {experiment} is {exp.status}: its tables are not complete yet")
    n = int(session.scalar(select(db.DatasetRow.n).where(db.DatasetRow.id == exp.dataset_id)))
    out = Finished(exp.id, dict(exp.config), exp.dataset_id, n)
    with _lock:
        _finished[(key, experiment)] = out
    return out


def table(session: Session, exp: Finished, space: str, distance: str) -> tuple[int, int] | None:
    """(table id, K) of a finished experiment's complete table, or None."""
    key = (_key(session), exp.id, space, distance)
    if key not in _tables:
        t = db.find_table(session=session, experiment_id=exp.id, space=space, distance=distance)
        with _lock:
            _tables[key] = None if t is None else (t.id, t.k)
    return _tables[key]

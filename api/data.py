"""Read-side helpers with small caches: stored data never changes once written (a data set's
pixels and labels, a model's codes), so the web process keeps the last few in memory."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import conflict, invalid, not_found
from api.lookup import Finished
from common.store import db as db


@lru_cache(maxsize=4)
def _dataset(url: str, dataset_id: int) -> tuple[np.ndarray, np.ndarray]:
    engine = db.make_engine(url)
    try:
        with db.session_factory(engine)() as s:
            row = s.get(db.DatasetRow, dataset_id)
            return (np.frombuffer(row.labels, np.uint8).copy(),
                    np.frombuffer(row.images, np.uint8).reshape(row.n, -1).copy())
    finally:
        engine.dispose()


def labels(session: Session, dataset_id: int) -> np.ndarray:
    return _dataset(str(session.get_bind().url.render_as_string(hide_password=False)), dataset_id)[0]


def images(session: Session, dataset_id: int) -> np.ndarray:
    return _dataset(str(session.get_bind().url.render_as_string(hide_password=False)), dataset_id)[1]


def dataset_size(session: Session, dataset_id: int) -> int:
    """N, without loading the data set's blobs (this runs on every neighbours request)."""
    return int(session.scalar(select(db.DatasetRow.n).where(db.DatasetRow.id == dataset_id)))


def check_sample_id(experiment_id: int, n: int, sample_id: int) -> None:
    if not 0 <= sample_id < n:
        raise not_found(f"sample {sample_id} is not in experiment {experiment_id} (ids 0..{n - 1})")


def check_sample(session: Session, exp: db.Experiment, sample_id: int) -> None:
    check_sample_id(exp.id, dataset_size(session, exp.dataset_id), sample_id)


def check_model(exp: db.Experiment | Finished, model: str) -> None:
    if model not in exp.config["models"]:
        raise invalid(f"model: experiment {exp.id} has no model {model!r} (it has {exp.config['models']})")


def model_row(session: Session, exp: db.Experiment, model: str) -> db.ModelRow:
    check_model(exp, model)
    row = next((m for m in db.list_models(session=session, experiment_id=exp.id) if m.name == model), None)
    if row is None or row.codes is None:
        raise conflict(f"experiment {exp.id}: model {model} is not trained yet")
    return row

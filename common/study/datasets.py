"""Uploaded data sets (``POST /datasets``): an ``.npz`` of arrays X and y, checked as a file on disk is
(common/compute/sources.py), stored whole in the database under a name and the SHA-256 of its bytes, so the
same bytes are one data set and workers on any machine read it from there. An experiment names it by id or
name in its config's ``dataset``. Also read_data: the data a study's config names, of any source. numpy and SQL
only: the API calls this, and `aeknn run` reads your data through it before torch is loaded."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.compute.data import Dataset, load_dataset
from common.compute.names import DATASETS, USER_NAME, USER_NAME_RULE
from common.compute.sources import locate, read_source, read_upload
from common.errors import Conflict, DataError, Invalid, NotFound
from common.store import db as db
from common.study.config import StudyConfig


def check_name(name: str) -> None:
    if not re.fullmatch(USER_NAME, name or ""):
        raise Invalid(f"name: {name!r} is not a data set name ({USER_NAME_RULE})")
    if name in DATASETS:
        raise Invalid(f"name: {name!r} is a named data set of aeknn's; choose another name")


def read(f: BinaryIO, name: str) -> Dataset:
    """The upload's data set, or Invalid saying what is wrong with the body."""
    try:
        return read_upload(f, name)
    except DataError as exc:
        raise Invalid(str(exc)) from None


def store(factory: sessionmaker[Session], name: str, ds: Dataset, sha256: str) -> tuple[int, bool]:
    """Store the upload once: (its id, whether it is new). The same bytes again are the data set stored
    before (under its first name); a name taken by other bytes is a Conflict."""
    with db.transaction(factory) as s:
        db.serialize(session=s, name="datasets")
        same = s.scalar(select(db.DatasetRow).where(db.DatasetRow.sha256 == sha256))
        if same is not None:
            return same.id, False
        if s.scalar(select(db.DatasetRow.id).where(db.DatasetRow.name == name)) is not None:
            raise Conflict(f"name: a data set named {name!r} is stored already, with other data")
        row = db.DatasetRow(name=name, n=ds.n, labels=ds.labels.tobytes(), images=ds.images.tobytes(),
                            shape=list(ds.shape), dtype=ds.images.dtype.name, labelled=ds.labelled,
                            sha256=sha256,
                            created_at=db.utcnow())
        s.add(row)
        s.flush()
        return row.id, True


def _find(session: Session, ref: int | str) -> db.DatasetRow | None:
    col = db.DatasetRow.id if isinstance(ref, int) else db.DatasetRow.name
    return session.scalar(select(db.DatasetRow).where(col == ref, db.DatasetRow.sha256.is_not(None)))


def describe(row: db.DatasetRow) -> dict[str, Any]:
    labels = np.frombuffer(row.labels, np.uint8)
    return {"id": row.id, "name": row.name, "n": row.n, "shape": list(db.dataset_shape(row)),
            "classes": int(len(np.unique(labels))) if db.dataset_labelled(row) else None,
            "sha256": row.sha256, "created_at": row.created_at,
            "links": {"self": f"/datasets/{row.id}"}}


def one(session: Session, ref: int | str) -> dict[str, Any]:
    row = _find(session, ref)
    if row is None:
        raise NotFound(f"no uploaded data set {ref!r}")
    return describe(row)


def listing(session: Session) -> list[dict[str, Any]]:
    rows = session.scalars(select(db.DatasetRow).where(db.DatasetRow.sha256.is_not(None))
                           .order_by(db.DatasetRow.id)).all()
    return [describe(r) for r in rows]


def uploaded(factory: sessionmaker[Session], ref: int | str) -> Dataset:
    """The uploaded data set ``ref`` (id or name) as the data stage reads it; DataError if it is not stored."""
    with factory() as s:
        row = _find(s, ref)
        if row is None:
            raise DataError(f"uploaded data set {ref!r}: not stored (POST /datasets uploads one; GET /datasets "
                            "lists them)")
        return Dataset(row.name, db.dataset_values(row), np.frombuffer(row.labels, np.uint8).copy(),
                       db.dataset_shape(row), db.dataset_labelled(row))


def check_study(session: Session, cfg: StudyConfig) -> None:
    """Invalid unless an uploaded data set the study names is stored and large enough for it."""
    if cfg.upload is None:
        return
    row = _find(session, cfg.upload)
    if row is None:
        raise Invalid(f"dataset: no uploaded data set {cfg.upload!r} (GET /datasets lists them; the named ones "
                      f"are {', '.join(DATASETS)})")
    try:
        cfg.check_n(row.n)
    except ValueError as exc:
        raise Invalid(f"{exc} (the data set {row.name!r})") from None


def read_data(cfg: StudyConfig, data_dir: Path, cache_dir: Path,
              factory: sessionmaker[Session] | None = None) -> Dataset:
    """The data the config names (a named data set, your data: common/compute/sources.py, or an upload read
    through ``factory``), its first ``limit`` samples, checked against the study's sizes (K, ks, each model's
    least N) before any work."""
    if cfg.named is not None:
        ds = load_dataset(cfg.named, data_dir, cache_dir, cfg.limit)
    else:
        if cfg.upload is not None:
            if factory is None:
                raise ValueError("an uploaded data set is read from the database: give the factory")
            ds = uploaded(factory, cfg.upload)
        else:
            ds = read_source(locate(cfg.data, data_dir, cache_dir), cfg.labels)
        if cfg.limit is not None and cfg.limit < ds.n:
            ds = Dataset(ds.name, np.ascontiguousarray(ds.images[: cfg.limit]),
                         np.ascontiguousarray(ds.labels[: cfg.limit]), ds.shape, ds.labelled)
    try:
        cfg.check_n(ds.n)
    except ValueError as exc:
        raise DataError(f"{cfg.source}: {ds.n} samples: {exc}") from exc
    return ds

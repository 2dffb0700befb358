"""Your embedding: a user's codes (any map, any dimension) scored beside the study's models.

The record side, importable without torch (the API reads and stores an upload with it): the codes are
read from a ``.npy`` (or an ``.npz`` holding ``codes``), checked against the experiment (N rows in its
sample order, m >= 1 finite columns, a name of its own), and stored whole in the database as an
uploaded space (float64, as given), so that a worker on any machine reads them from there. Scoring (its
code-space tables at the experiment's K, every metric at every k) is ``stages.stage_embeddings``.
"""

from __future__ import annotations

import io
import re
import zipfile
from typing import Any, BinaryIO

import numpy as np
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from common.compute.names import MODEL_NAMES, REFERENCE_MAPS, USER_NAME, USER_NAME_RULE, model_kind
from common.errors import Conflict, Invalid, NotFound, NotReady
from common.settings import Settings
from common.store import db as db
from common.study import jobs

UPLOADED = "uploaded"
QUEUED, SCORING, READY, FAILED = "queued", "scoring", "ready", "failed"


def read_codes(data: bytes | BinaryIO, source: str = "the body") -> np.ndarray:
    """The array of a ``.npy`` file, or of an ``.npz`` file's ``codes`` (bytes, or a binary file at its
    start); never unpickles."""
    f = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    head = f.read(6)
    f.seek(0)
    try:
        if head == b"\x93NUMPY":
            return np.load(f, allow_pickle=False)
        if head[:4] == b"PK\x03\x04":
            with np.load(f, allow_pickle=False) as z:
                if "codes" not in z.files:
                    raise Invalid(f"{source} is an .npz without an array named 'codes' (it holds: "
                                  f"{', '.join(z.files) or 'nothing'})")
                return z["codes"]
    except (ValueError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise Invalid(f"{source} is not a readable .npy or .npz file ({e})") from None
    raise Invalid(f"{source} is not a .npy or .npz file (a .npy starts with \\x93NUMPY; save codes with "
                  "numpy.save)" if head else f"{source} is empty: expected a .npy file")


def check_codes(codes: np.ndarray, n: int, source: str = "the codes") -> np.ndarray:
    """N x m real numbers, all finite, m >= 1: as float64, C-ordered. A 1-D array of N is one column."""
    if codes.dtype.kind not in "iuf":
        raise Invalid(f"{source} hold {codes.dtype} values; expected real numbers (float or integer)")
    if codes.ndim == 1:
        codes = codes[:, None]
    if codes.ndim != 2:
        raise Invalid(f"{source} have shape {codes.shape}; expected N x m (one row per sample)")
    if codes.shape[0] != n:
        raise Invalid(f"{source} have {codes.shape[0]} rows; the experiment has {n} samples (one row each, "
                      "in its sample order)")
    if codes.shape[1] < 1:
        raise Invalid(f"{source} have m = 0 columns; expected at least 1")
    out = np.ascontiguousarray(codes, dtype=np.float64)
    bad = ~np.isfinite(out)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise Invalid(f"{source} hold {int(bad.sum())} NaN or infinite values (rows {', '.join(map(str, rows[:5]))}"
                      f"{', ...' if len(rows) > 5 else ''})")
    return out


def check_name(name: str, taken: list[str]) -> None:
    if not re.fullmatch(USER_NAME, name or ""):
        raise Invalid(f"name: {name!r} is not a space name ({USER_NAME_RULE})")
    if name == db.ORIGINAL or name in MODEL_NAMES:
        raise Invalid(f"name: {name!r} is the name of a study model or of the pixel space; choose another")
    if name in taken:
        raise Conflict(f"name: {name!r} is already a space of this experiment ({', '.join(taken)})")


def experiment_for_upload(session: Session, experiment_id: int) -> tuple[db.Experiment, int]:
    """The experiment an embedding is scored against, and its N: it must have succeeded (its pixel
    tables complete and its metrics stored)."""
    exp = db.get_experiment(session=session, experiment_id=experiment_id)
    if exp is None:
        raise NotFound(f"no experiment {experiment_id}")
    if exp.status != db.SUCCEEDED:
        raise NotReady(f"experiment {experiment_id} is {exp.status}: an embedding is scored against a "
                       "finished experiment's pixel tables")
    return exp, int(session.get(db.DatasetRow, exp.dataset_id).n)


def record(factory: sessionmaker[Session], experiment_id: int, name: str, codes: np.ndarray,
           source: str = "the codes") -> tuple[int, bool]:
    """Check and store an upload (state queued). The same name with the same codes again is the same
    upload (a retried request): its id, and False for "not new". Nothing is stored when a check fails."""
    return record_all(factory, experiment_id, [(name, codes, source)])[0]


def record_all(factory: sessionmaker[Session], experiment_id: int,
               uploads: list[tuple[str, np.ndarray, str]]) -> list[tuple[int, bool]]:
    """``record`` for several (name, codes, source) at once, in one transaction: all are stored or, when one
    check fails, none."""
    if len({name for name, _, _ in uploads}) < len(uploads):
        raise Invalid("each space needs a name of its own: a name is given twice")
    out = []
    with db.transaction(factory) as s:
        exp, n = experiment_for_upload(s, experiment_id)
        rows = {m.name: m for m in db.list_models(session=s, experiment_id=experiment_id)}  # the names differ
        for name, codes, source in uploads:
            codes = check_codes(codes, n, source)
            same = rows.get(name)
            if same is not None and same.source == UPLOADED and same.codes == codes.tobytes():
                out.append((same.id, False))
                continue
            check_name(name, spaces(s, exp))
            row = db.ModelRow(experiment_id=experiment_id, name=name, epochs_done=0, losses=[], source=UPLOADED,
                              code_dim=codes.shape[1], codes=codes.tobytes(), created_at=db.utcnow(), state=QUEUED)
            s.add(row)
            s.flush()
            out.append((row.id, True))
    return out


def submit(factory: sessionmaker[Session], settings: Settings, experiment_id: int, name: str, codes: np.ndarray,
           app=None) -> tuple[int, bool]:
    """Record an upload and send its scoring to the workers (the API's way in). When it cannot be sent
    (BrokerUnavailable), nothing is kept: the upload is removed and the error raised."""
    model_id, new = record(factory, experiment_id, name, codes)
    if new:
        try:
            jobs.send(app or jobs.broker_client(settings), jobs.EMBED, model_id)
        except BaseException:
            with db.transaction(factory) as s:
                s.execute(delete(db.ModelRow).where(db.ModelRow.id == model_id, db.ModelRow.state == QUEUED))
            raise
    return model_id, new


def upload(session: Session, experiment_id: int, name: str | None = None, model_id: int | None = None) -> db.ModelRow:
    """An uploaded embedding of an experiment, by name (or by its row id), or NotFound."""
    row = session.get(db.ModelRow, model_id) if model_id is not None else next(
        (m for m in db.list_models(session=session, experiment_id=experiment_id) if m.name == name), None)
    if row is None or row.source != UPLOADED or row.experiment_id != experiment_id:
        raise NotFound(f"experiment {experiment_id} has no uploaded embedding {name!r}")
    return row


def spaces(session: Session, exp: db.Experiment) -> list[str]:
    """Every code space of an experiment: its config's models, then its uploads (in upload order)."""
    uploads = [m.name for m in db.list_models(session=session, experiment_id=exp.id) if m.source == UPLOADED]
    return list(exp.config["models"]) + uploads


def ready_uploads(session: Session, experiment_id: int) -> list[str]:
    """The uploads whose tables and metrics are stored (what the reads show), in upload order."""
    return [m.name for m in db.list_models(session=session, experiment_id=experiment_id)
            if m.source == UPLOADED and m.state == READY]


def set_state(factory: sessionmaker[Session], model_id: int, state: str, error: str | None = None) -> None:
    with db.transaction(factory) as s:
        row = s.get(db.ModelRow, model_id)
        row.state, row.error = state, error
        if state == READY:
            exp = s.get(db.Experiment, row.experiment_id)
            exp.revision = (exp.revision or 0) + 1


def describe_space(m: db.ModelRow) -> dict[str, Any]:
    """What GET /experiments/{id} says of a space: its kind, who made it and when, and its state."""
    kind = UPLOADED if m.source == UPLOADED else model_kind(m.name)
    return {"kind": kind, "dim": m.code_dim or 2, "created_at": m.created_at, "state": m.state, "error": m.error,
            "made_by": (f"uploaded as {m.name!r}" if m.source == UPLOADED
                        else "fitted by a library" if m.name in REFERENCE_MAPS else "trained by aeknn")}

"""The study's metric tables, served from stored values: every k from 1 to K is stored by the metrics
stage, so a read never computes. JSON by default; CSV with `Accept: text/csv` or `?format=csv`."""

from __future__ import annotations

import csv
import io
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel

from api import cache, data
from api.deps import SessionDep, finished_experiment, require_read
from api.errors import ERROR_RESPONSES, conflict, invalid
from api.schemas import (
    AccuracyTable,
    AgreementRow,
    AgreementTable,
    ByLabelRow,
    ByLabelTable,
    ScoreTable,
    SpaceRow,
    ValuesRow,
)
from common.compute.names import BY_LABEL_K, DEFAULT_KS, MODEL_NAMES
from common.store import db as db

router = APIRouter(prefix="/metrics", tags=["metrics"], responses=ERROR_RESPONSES,
                   dependencies=[Depends(require_read)])
ExperimentQ = Annotated[int | None, Query(ge=1, description="default: the latest succeeded experiment")]
KsQ = Annotated[str, Query(max_length=200, description="k values, each at most K: a comma list, ranges a-b "
                           "(1-200) or `all` (1..K)", pattern=r"^\s*(all|\d{1,6}(\s*-\s*\d{1,6})?(\s*,\s*\d{1,6}"
                           r"(\s*-\s*\d{1,6})?)*)\s*$")]
DEFAULT_K_TEXT = ",".join(map(str, DEFAULT_KS))
CSV = {200: {"content": {"application/json": {}, "text/csv": {}}}}


class Format(StrEnum):
    json = "json"
    csv = "csv"


def _ks(text: str, exp: db.Experiment, n: int) -> list[int]:
    top = min(int(exp.config["k"]), n - 2)
    ks: set[int] = set()
    for part in "".join(text.split()).split(","):  # no whitespace of any kind (the pattern allows \r)
        if part == "all":
            ks.update(range(1, top + 1))
        elif "-" in part:
            lo, hi = (int(x) for x in part.split("-"))
            if hi < lo or hi > top:
                raise invalid(f"k: range {part} must run upwards within 1..{top} (the table's K, and below N-1)")
            ks.update(range(lo, hi + 1))
        elif part:
            ks.add(int(part))
    ks = sorted(ks)
    bad = [k for k in ks if not 1 <= k <= top]
    if bad or not ks:
        raise invalid(f"k: {bad or text!r} must each be in 1..{top} (the table's K, and below N-1)")
    return ks


def _values(session, exp: db.Experiment, metric: str, ks: list[int] | None = None) -> dict[tuple, float]:
    return {(v.space, v.distance, v.k, v.label): v.value
            for v in db.load_metrics(session=session, experiment_id=exp.id, metric=metric, ks=ks)}


def _pairs(exp: db.Experiment) -> list[tuple[str, str]]:
    models = sorted(exp.config["models"], key=MODEL_NAMES.index)
    return [(m, d) for m in models for d in sorted(exp.config["distances"])]


def _respond(request: Request, fmt: Format | None, model: BaseModel, header: list[str], rows: list[list],
             explicit: bool) -> Response:
    """JSON or CSV; immutable (a finished experiment's stored values), so with an ETag."""
    wants_csv = fmt == Format.csv or (fmt is None and "text/csv" in request.headers.get("accept", ""))

    def make() -> Response:
        if not wants_csv:
            return cache.json_response(model)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows([["" if c is None else c for c in r] for r in rows])
        return Response(buf.getvalue(), media_type="text/csv")

    response = cache.immutable(request, model.experiment, explicit, make)
    response.headers["Vary"] = "Accept"
    return response


def _prepare(session, experiment: int | None, k: str) -> tuple[db.Experiment, list[int]]:
    exp = finished_experiment(session, experiment)
    ks = _ks(k, exp, data.dataset_size(session, exp.dataset_id))
    if not exp.metrics_all_k:  # stored before every k was: the sweeper has a worker fill the rest
        have = db.stored_ks(session=session, experiment_id=exp.id)
        missing = [x for x in ks if x not in have]
        if missing:
            raise conflict(f"k: experiment {exp.id} was stored with k in {sorted(have)} only; a worker is filling "
                           f"in every other k (or run `aeknn metrics --backfill --experiment {exp.id}`), "
                           f"so {missing} will be there shortly")
    return exp, ks


def _values_table(metric: str):
    def endpoint(request: Request, session: SessionDep, experiment: ExperimentQ = None,
                 k: KsQ = DEFAULT_K_TEXT, format: Format | None = None):  # noqa: A002
        exp, ks = _prepare(session, experiment, k)
        v = _values(session, exp, metric, ks)
        rows = [ValuesRow(model=m, distance=d, values={str(x): v.get((m, d, x, -1)) for x in ks})
                for m, d in _pairs(exp)]
        return _respond(request, format, ScoreTable(experiment=exp.id, k=ks, rows=rows),
                        ["model", "distance", *[f"k={x}" for x in ks]],
                        [[r.model, r.distance, *r.values.values()] for r in rows], experiment is not None)
    return endpoint


router.add_api_route("/score_at_k", _values_table("score_at_k"), methods=["GET"], response_model=ScoreTable,
                     responses=CSV, summary="score@k (table 1): share of each pixel-space neighbourhood kept",
                     name="score_at_k")
router.add_api_route("/r_nx", _values_table("r_nx"), methods=["GET"], response_model=ScoreTable,
                     responses=CSV, summary="R_NX(k): score@k corrected for chance", name="r_nx")


@router.get("/score_at_k/by_label", response_model=ByLabelTable, responses=CSV)
def score_at_k_by_label(request: Request, session: SessionDep, experiment: ExperimentQ = None,
                        k: Annotated[int, Query(ge=1)] = BY_LABEL_K, format: Format | None = None):  # noqa: A002
    """score@k over the samples of each label (table 2: the study shows k = 20; every k up to K is stored)."""
    exp = finished_experiment(session, experiment)
    v = _values(session, exp, "score_at_k_by_label", [k])
    if not v:
        stored = sorted({key[2] for key in _values(session, exp, "score_at_k_by_label")})
        shown = f"1..{stored[-1]}" if stored == list(range(1, len(stored) + 1)) else str(stored)
        raise invalid(f"k: experiment {exp.id} stores score@k by label at k in {shown}, got {k}")
    rows = []
    for m, d in _pairs(exp):
        per = {str(key[3]): val for key, val in sorted(v.items()) if key[:3] == (m, d, k)}
        rows.append(ByLabelRow(model=m, distance=d, k=k, by_label=per))
    labels = sorted({lab for r in rows for lab in r.by_label}, key=int)
    return _respond(request, format, ByLabelTable(experiment=exp.id, k=k, rows=rows),
                    ["model", "distance", "k", *labels],
                    [[r.model, r.distance, r.k, *[r.by_label.get(lab) for lab in labels]] for r in rows],
                    experiment is not None)


@router.get("/label_agreement", response_model=AgreementTable, responses=CSV)
def label_agreement(request: Request, session: SessionDep, experiment: ExperimentQ = None,
                    k: KsQ = DEFAULT_K_TEXT, format: Format | None = None):  # noqa: A002
    """Same-label rates before and after encoding, their change (enc - orig) and mean |change| (tables 3, 4)."""
    exp, ks = _prepare(session, experiment, k)
    rate = _values(session, exp, "same_label_rate", ks)
    change = _values(session, exp, "label_agreement_change", ks)
    dist = _values(session, exp, "label_agreement_distance", ks)
    rows = [AgreementRow(model=m, distance=d, k=x, original_rate=rate.get((db.ORIGINAL, d, x, -1)),
                         encoded_rate=rate.get((m, d, x, -1)), change=change.get((m, d, x, -1)),
                         abs_change=dist.get((m, d, x, -1)))
            for m, d in _pairs(exp) for x in ks]
    return _respond(request, format, AgreementTable(experiment=exp.id, k=ks, rows=rows),
                    ["model", "distance", "k", "original_rate", "encoded_rate", "change", "abs_change"],
                    [[r.model, r.distance, r.k, r.original_rate, r.encoded_rate, r.change, r.abs_change]
                     for r in rows], experiment is not None)


@router.get("/knn_accuracy", response_model=AccuracyTable, responses=CSV)
def knn_accuracy(request: Request, session: SessionDep, experiment: ExperimentQ = None,
                 k: KsQ = DEFAULT_K_TEXT, format: Format | None = None):  # noqa: A002
    """Leave-one-out kNN accuracy@k of every space (ties go to the nearest label)."""
    exp, ks = _prepare(session, experiment, k)
    v = _values(session, exp, "knn_accuracy", ks)
    spaces = [db.ORIGINAL, *sorted(exp.config["models"], key=MODEL_NAMES.index)]
    rows = [SpaceRow(space=s, distance=d, values={str(x): v.get((s, d, x, -1)) for x in ks})
            for s in spaces for d in sorted(exp.config["distances"])]
    return _respond(request, format, AccuracyTable(experiment=exp.id, k=ks, rows=rows),
                    ["space", "distance", *[f"k={x}" for x in ks]],
                    [[r.space, r.distance, *r.values.values()] for r in rows], experiment is not None)

"""The study's metric tables, served from stored values: every k from 1 to K is stored by the metrics
stage, so a read never computes. The rows come from common/study/reads.py, as the CLI's do. JSON by
default; CSV with `Accept: text/csv` or `?format=csv`."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel

from api import cache
from api.deps import SessionDep, require_read
from api.errors import ERROR_RESPONSES
from api.schemas import (
    AccuracyTable,
    AgreementRow,
    AgreementTable,
    AucRow,
    AucTable,
    ByLabelRow,
    ByLabelTable,
    KsQ,
    MrreRow,
    MrreTable,
    ScoreTable,
    SpaceRow,
    ValuesRow,
)
from common.study import reads, report
from common.study.config import MAX_K

router = APIRouter(prefix="/metrics", tags=["metrics"], responses=ERROR_RESPONSES,
                   dependencies=[Depends(require_read)])
ExperimentQ = Annotated[int | None, Query(ge=1, description="default: the latest succeeded experiment")]


class Split(StrEnum):
    train = "train"
    test = "test"


SplitQ = Annotated[Split, Query(description="train (default): the study's samples; test: the held-out test split "
                                            "(score_at_k, its by_label, knn_accuracy and label_agreement), each test "
                                            "sample against the training samples, of a study with split test or all")]
CSV = {200: {"content": {"application/json": {}, "text/csv": {}}}}


class Format(StrEnum):
    json = "json"
    csv = "csv"


def _respond(request: Request, fmt: Format | None, model: BaseModel, table: report.Table,
             explicit: bool, revision: int) -> Response:
    """JSON (``model``) or CSV (``table``, laid out by common/study/report.py as the CLI's is), with an ETag
    of the experiment's revision: an uploaded embedding adds rows, so a client revalidates (a 304 until then)."""
    wants_csv = fmt == Format.csv or (fmt is None and "text/csv" in request.headers.get("accept", ""))

    def make() -> Response:
        if not wants_csv:
            return cache.json_response(model)
        return Response(report.csv_of(table), media_type="text/csv")

    response = cache.immutable(request, model.experiment, explicit, make, revision=revision, changes=True)
    response.headers["Vary"] = "Accept"
    return response


def _split(table: report.Table, split: Split) -> report.Table:
    return report.held_out(table) if split == Split.test else table


def _prepare(session, experiment: int | None, k: str | None) -> tuple[reads.Finished, list[int]]:
    """The experiment and the k columns asked for (by default its own ks)."""
    exp = reads.finished(session, experiment, fresh=True)
    return exp, reads.parse_ks(k, exp.top_k) if k else reads.check_ks(list(exp.config["ks"]), exp.top_k)


def _values_table(metric: str):
    def endpoint(request: Request, session: SessionDep, experiment: ExperimentQ = None,
                 k: KsQ = None, format: Format | None = None, split: SplitQ = Split.train):  # noqa: A002
        exp, ks = _prepare(session, experiment, k)
        found = reads.value_rows(session, exp, metric, ks, split.value)
        rows = [ValuesRow(model=r["space"], distance=r["distance"], values={str(x): v for x, v in r["values"].items()})
                for r in found]
        return _respond(request, format, ScoreTable(experiment=exp.id, k=ks, rows=rows, split=split.value),
                        _split(report.values_table(metric, found, ks), split), experiment is not None, exp.revision)
    return endpoint


router.add_api_route("/score_at_k", _values_table("score_at_k"), methods=["GET"], response_model=ScoreTable,
                     responses=CSV, summary="score@k (table 1): share of each pixel-space neighbourhood kept",
                     name="score_at_k")
router.add_api_route("/r_nx", _values_table("r_nx"), methods=["GET"], response_model=ScoreTable,
                     responses=CSV, summary="R_NX(k): score@k corrected for chance", name="r_nx")
for _name, _summary in (
        ("trustworthiness", "trustworthiness T(k) (Venna and Kaski): code-space neighbours that are far in pixel "
                            "space cost their exact pixel rank beyond k. Defined for k < N/2 (null beyond)"),
        ("continuity", "continuity C(k): trustworthiness with the two spaces swapped. Defined for k < N/2"),
        ("lcmc", "LCMC(k) = score@k - k/(N-1) (local continuity meta-criterion)")):
    router.add_api_route(f"/{_name}", _values_table(_name), methods=["GET"], response_model=ScoreTable,
                         responses=CSV, summary=_summary, name=_name)


@router.get("/mrre", response_model=MrreTable, responses=CSV)
def mrre(request: Request, session: SessionDep, experiment: ExperimentQ = None, k: KsQ = None,
         format: Format | None = None, split: SplitQ = Split.train):  # noqa: A002
    """Mean relative rank errors as ZADU reports them (higher is better), both ways: ``false`` over each sample's
    code-space neighbours, ``missing`` over its pixel-space ones. Defined for k < N/2 (null beyond)."""
    exp, ks = _prepare(session, experiment, k)
    reads.check_split(exp, split.value, "mrre")
    found = reads.mrre_rows(session, exp, ks)
    rows = [MrreRow(model=r["space"], distance=r["distance"], direction=r["direction"],
                    values={str(x): v for x, v in r["values"].items()}) for r in found]
    return _respond(request, format, MrreTable(experiment=exp.id, k=ks, rows=rows), report.mrre_table(found, ks),
                    experiment is not None, exp.revision)


@router.get("/auc_rnx", response_model=AucTable, responses=CSV)
def auc_rnx(request: Request, session: SessionDep, experiment: ExperimentQ = None,
            format: Format | None = None, split: SplitQ = Split.train):  # noqa: A002
    """The area under the R_NX(k) curve with log-k weights (Lee and Verleysen) over k = 1..K: one number per
    model and distance."""
    exp = reads.finished(session, experiment, fresh=True)
    reads.check_split(exp, split.value, "auc_rnx")
    found = reads.auc_rows(session, exp)
    rows = [AucRow(model=r["space"], distance=r["distance"], k_max=r["k_max"], value=r["value"]) for r in found]
    return _respond(request, format, AucTable(experiment=exp.id, rows=rows), report.auc_table(found),
                    experiment is not None, exp.revision)


@router.get("/score_at_k/by_label", response_model=ByLabelTable, responses=CSV)
def score_at_k_by_label(request: Request, session: SessionDep, experiment: ExperimentQ = None,
                        k: Annotated[int | None, Query(ge=1, le=MAX_K, description="default: 20, or K where smaller")]
                        = None, format: Format | None = None, split: SplitQ = Split.train):  # noqa: A002
    """score@k over the samples of each label (table 2: the study shows k = 20; every k up to K is stored)."""
    exp = reads.finished(session, experiment, fresh=True)
    k = reads.by_label_k(exp.top_k) if k is None else k
    found = reads.by_label_rows(session, exp, k, split.value)
    return _respond(request, format, ByLabelTable(experiment=exp.id, k=k, rows=[ByLabelRow(**r) for r in found],
                                                  split=split.value),
                    _split(report.by_label_table(found, k), split), experiment is not None, exp.revision)


@router.get("/label_agreement", response_model=AgreementTable, responses=CSV)
def label_agreement(request: Request, session: SessionDep, experiment: ExperimentQ = None,
                    k: KsQ = None, format: Format | None = None, split: SplitQ = Split.train):  # noqa: A002
    """Same-label rates before and after encoding, their change (enc - orig) and mean |change| (tables 3, 4)."""
    exp, ks = _prepare(session, experiment, k)
    found = reads.agreement_rows(session, exp, ks, split.value)
    return _respond(request, format, AgreementTable(experiment=exp.id, k=ks, rows=[AgreementRow(**r) for r in found],
                                                    split=split.value),
                    _split(report.agreement_table(found), split), experiment is not None, exp.revision)


@router.get("/knn_accuracy", response_model=AccuracyTable, responses=CSV)
def knn_accuracy(request: Request, session: SessionDep, experiment: ExperimentQ = None,
                 k: KsQ = None, format: Format | None = None, split: SplitQ = Split.train):  # noqa: A002
    """Leave-one-out kNN accuracy@k of every space (ties go to the nearest label); of the held-out test split
    (split=test), each test sample's label voted for by its k nearest training samples."""
    exp, ks = _prepare(session, experiment, k)
    found = reads.value_rows(session, exp, "knn_accuracy", ks, split.value)
    rows = [SpaceRow(space=r["space"], distance=r["distance"], values={str(x): v for x, v in r["values"].items()})
            for r in found]
    return _respond(request, format, AccuracyTable(experiment=exp.id, k=ks, rows=rows, split=split.value),
                    _split(report.values_table("knn_accuracy", found, ks), split), experiment is not None,
                    exp.revision)

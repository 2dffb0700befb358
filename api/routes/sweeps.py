"""Sweeps: submit one (a base study and a grid), follow it, cancel it, and read its metric tables as the
mean, standard deviation, minimum and maximum over its seeds (common/study/sweeps.py)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from api.bodies import StrictJSONRoute
from api.deps import FactoryDep, SessionDep, SettingsDep, require_read, require_write
from api.errors import ERROR_RESPONSES, AppError
from api.schemas import ExperimentCreate, KsQ
from common.study import jobs, reads, report, submissions, sweeps
from common.study.config import StudyConfig

router = APIRouter(prefix="/sweeps", tags=["sweeps"], responses=ERROR_RESPONSES, route_class=StrictJSONRoute,
                   dependencies=[Depends(require_read)])


def _values_of(field: str):
    """A list of values of one StudyConfig field, each checked as that field is (its schema says so)."""
    info = StudyConfig.model_fields[field]
    one = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    return Annotated[list[one],  # absent means not varied; null is not a list of values
                     Field(None, min_length=1, json_schema_extra={"uniqueItems": True})]


SweepGrid = create_model("SweepGrid", __config__=ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1}),
                         __doc__=f"field -> its values (at most {sweeps.MAX_POINTS} points in all); the last "
                                 "field given varies fastest",
                         **{f: _values_of(f) for f in sweeps.GRID_FIELDS})


class SweepCreate(BaseModel):
    """A base study (every field optional: the seed study) and a grid over some of its fields."""

    model_config = ConfigDict(extra="forbid")
    base: ExperimentCreate = Field(default_factory=ExperimentCreate, description="POST /experiments' body")
    grid: SweepGrid = Field(description=f"fields: {', '.join(sweeps.GRID_FIELDS)}")

    @field_validator("grid", mode="wrap")
    @classmethod
    def _in_given_order(cls, value: Any, handler) -> dict[str, list]:
        """Checked as SweepGrid, kept as a dict in the order given (the expansion's order)."""
        checked = handler(value).model_dump(mode="json", exclude_none=True)
        if not checked:
            raise ValueError("empty; give at least one field and its values, e.g. {\"seed\": [0, 1, 2]}")
        return {f: checked[f] for f in value if f in checked}

    def base_fields(self) -> dict[str, Any]:
        """The base study's fields as given (the others take the study's defaults)."""
        return self.base.model_dump(mode="json", exclude_unset=True)


class SweepPoint(BaseModel):
    index: int
    experiment: int
    status: str
    reused: bool
    config: dict[str, Any]


class SweepGroup(BaseModel):
    point: dict[str, Any]
    seeds: list[Any]
    experiments: list[int]


class SweepPublic(BaseModel):
    id: int
    status: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    done: int
    total: int
    points: list[SweepPoint]
    groups: list[SweepGroup]
    links: dict[str, str]


class SweepRow(BaseModel):
    point: dict[str, Any]
    space: str
    distance: str
    k: int
    label: int | None = None
    mean: float
    sd: float | None  # null for a single run
    min: float
    max: float
    n: int
    seeds: list[Any]


class SweepTable(BaseModel):
    sweep: int
    metric: str
    k: list[int]
    rows: list[SweepRow]


SweepMetric = StrEnum("SweepMetric", {m: m for m in sweeps.METRICS})


def _public(session, sweep_id: int) -> SweepPublic:
    info = sweeps.describe(session, sweep_id)
    base = f"/sweeps/{sweep_id}"
    return SweepPublic(**{k: info[k] for k in ("id", "status", "base", "grid", "done", "total", "points", "groups")},
                       links={"self": base, "cancel": f"{base}/cancel",
                              "score_at_k": f"{base}/metrics/score_at_k"})


@router.post("", status_code=202, response_model=SweepPublic, dependencies=[Depends(require_write)])
def create_sweep(body: SweepCreate, factory: FactoryDep, settings: SettingsDep,
                 idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> SweepPublic:
    """Expand the grid (refused whole, naming the field and value, if a point is not a valid study), record
    one experiment per point (reusing any earlier experiment with the same config) and queue the new ones."""
    try:
        sweep_id, _ = sweeps.create(factory, settings, body.base_fields(), body.grid, queue=True,
                                    idempotency_key=idempotency_key)
    except jobs.BrokerUnavailable as exc:
        raise AppError("unavailable", f"not submitted: {exc}") from None
    except submissions.TooManyPending as exc:
        raise AppError("too_many", str(exc), headers={"Retry-After": str(exc.retry_after)}) from None
    with factory() as s:
        return _public(s, sweep_id)


class SweepSummary(BaseModel):
    id: int
    status: str
    grid: dict[str, list[Any]]
    done: int
    total: int


@router.get("", response_model=list[SweepSummary])
def list_sweeps(session: SessionDep) -> list[SweepSummary]:
    """Every sweep, newest first (at most 100)."""
    ids = sweeps.recent_ids(session, 100)
    return [SweepSummary(**{k: v for k, v in sweeps.describe(session, i).items() if k in SweepSummary.model_fields})
            for i in ids]


@router.get("/{sweep_id}", response_model=SweepPublic)
def get_sweep(sweep_id: int, session: SessionDep) -> SweepPublic:
    """The sweep's status (from its experiments'), its points and their experiments, grouped by everything
    but the seed."""
    return _public(session, sweep_id)


@router.post("/{sweep_id}/cancel", response_model=SweepPublic, dependencies=[Depends(require_write)])
def cancel_sweep(sweep_id: int, factory: FactoryDep) -> SweepPublic:
    """Cancel every pending experiment the sweep made."""
    sweeps.cancel(factory, sweep_id)
    with factory() as s:
        return _public(s, sweep_id)


@router.get("/{sweep_id}/metrics/{metric}", response_model=SweepTable,
            responses={200: {"content": {"application/json": {}, "text/csv": {}}}})
def sweep_metric(request: Request, sweep_id: int, metric: SweepMetric, session: SessionDep, k: KsQ = None,
                 format: str | None = Query(None, pattern="^(json|csv)$")) -> Response:  # noqa: A002
    """One metric table of the sweep: for each grid point (seeds aside), space, distance and k, the mean,
    sd, min and max over the seeds that succeeded, and n. score_at_k_by_label is at k = 20 (or K where
    smaller), as in an experiment's tables."""
    info = sweeps.describe(session, sweep_id)
    top = reads.top_k(int(info["base"]["k"]), 10**9)
    ks = reads.parse_ks(k, top) if k else reads.check_ks(list(info["base"]["ks"]), top)
    rows = sweeps.aggregate(session, sweep_id, metric.value, ks, label_k=reads.by_label_k(top))
    if format == "csv" or (format is None and "text/csv" in request.headers.get("accept", "")):
        return Response(report.csv_of(report.sweep_table(info["grid"], metric.value, rows)), media_type="text/csv")
    return Response(SweepTable(sweep=sweep_id, metric=metric.value, k=ks, rows=[SweepRow(**r) for r in rows])
                    .model_dump_json(), media_type="application/json")

"""Submit experiments, follow them, cancel them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query

from api.bodies import StrictJSONRoute
from api.deps import ExperimentDep, FactoryDep, SessionDep, SettingsDep, require_read, require_write
from api.errors import ERROR_RESPONSES, AppError, conflict, invalid, not_found
from api.schemas import ExperimentCreate, ExperimentPage, ExperimentPublic, ExperimentSummary
from common.study import jobs, reads
from common.study import submissions as experiments

router = APIRouter(prefix="/experiments", tags=["experiments"], responses=ERROR_RESPONSES,
                   route_class=StrictJSONRoute, dependencies=[Depends(require_read)])
ERRORS = {404: {"model": None}, 409: {"model": None}, 422: {"model": None}}


def links(experiment_id: int) -> dict[str, str]:
    base = f"/experiments/{experiment_id}"
    return {"self": base, "cancel": f"{base}/cancel", "loss": f"{base}/loss", "codes": f"{base}/codes",
            "metrics": f"/metrics/score_at_k?experiment={experiment_id}",
            "neighbors": f"/samples/0/neighbors?experiment={experiment_id}"}


def public(session, experiment_id: int) -> ExperimentPublic:
    info = experiments.describe(session, experiment_id)
    if info is None:
        raise not_found(f"no experiment {experiment_id}")
    return ExperimentPublic(**info, links=links(experiment_id))


@router.post("", status_code=202, response_model=ExperimentPublic, dependencies=[Depends(require_write)])
def create_experiment(body: ExperimentCreate, factory: FactoryDep, settings: SettingsDep,
                      idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> ExperimentPublic:
    """Queue a study; it runs on the workers. 202 means it exists and its work is queued. Repeating an
    Idempotency-Key (or a study already pending) returns the same experiment; past AEKNN_MAX_PENDING
    pending experiments, 429 with Retry-After."""
    try:
        experiment_id = experiments.submit(factory, settings, body, idempotency_key=idempotency_key)
    except jobs.BrokerUnavailable as exc:
        raise AppError("unavailable", f"not submitted: {exc}") from None
    except experiments.TooManyPending as exc:
        raise AppError("too_many", str(exc), headers={"Retry-After": str(exc.retry_after)}) from None
    except experiments.KeyReused as exc:
        raise invalid(f"Idempotency-Key: {exc}") from None
    with factory() as s:
        return public(s, experiment_id)


@router.get("", response_model=ExperimentPage)
def list_experiments(session: SessionDep, page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
                     per_page: Annotated[int, Query(ge=1, le=100)] = 20) -> ExperimentPage:
    """Experiments, newest first."""
    rows, total = reads.experiment_page(session, page=page, per_page=per_page)
    return ExperimentPage(items=[ExperimentSummary(id=e.id, status=e.status, stage=e.stage, created_at=e.created_at,
                                                   started_at=e.started_at, finished_at=e.finished_at,
                                                   config=e.config, links=links(e.id)) for e in rows],
                          total=total, page=page, per_page=per_page)


@router.get("/{experiment_id}", response_model=ExperimentPublic)
def get_experiment(exp: ExperimentDep, session: SessionDep) -> ExperimentPublic:
    """Status, stage, each model's epoch and latest loss, chunks done/total, attempts, error, timings."""
    return public(session, exp.id)


@router.post("/{experiment_id}/cancel", response_model=ExperimentPublic, dependencies=[Depends(require_write)])
def cancel_experiment(exp: ExperimentDep, factory: FactoryDep) -> ExperimentPublic:
    """Stop a queued or running experiment within one task."""
    status = experiments.cancel(factory, exp.id)
    if status != experiments.CANCELLED:
        raise conflict(f"experiment {exp.id} is {status}: only a queued or running experiment can be cancelled")
    with factory() as s:
        return public(s, exp.id)

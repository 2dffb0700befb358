"""Your embedding: upload your own codes beside an experiment's models, follow their scoring, and compare
two spaces' neighbourhoods. The codes are checked and stored here (numpy only); the workers score them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from api.deps import FactoryDep, SessionDep, SettingsDep, require_read, require_write
from api.errors import ERROR_RESPONSES, AppError
from api.schemas import EmbeddingOut
from api.uploads import spooled
from common.compute.names import USER_NAME, USER_NAME_RULE
from common.study import embeddings, jobs, reads
from common.study.config import Distance

router = APIRouter(prefix="/experiments", tags=["embeddings"], responses=ERROR_RESPONSES,
                   dependencies=[Depends(require_read)])
NameQ = Annotated[str, Query(pattern=f"^{USER_NAME}$",
                             description=f"the space's name: {USER_NAME_RULE}")]
UPLOAD = {"requestBody": {"required": True, "description": "the codes as a .npy file (N x m numbers, one row per "
                          "sample in the experiment's order), or an .npz holding an array named codes",
                          "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


def _out(experiment_id: int, row) -> EmbeddingOut:
    base = f"/experiments/{experiment_id}"
    return EmbeddingOut(experiment=experiment_id, name=row.name, state=row.state, error=row.error,
                        dim=row.code_dim or 2, created_at=row.created_at,
                        links={"self": f"{base}/embeddings/{row.name}", "experiment": base,
                               "neighbors": f"/samples/0/neighbors?experiment={experiment_id}&model={row.name}",
                               "metrics": f"/metrics/score_at_k?experiment={experiment_id}"})


@router.post("/{experiment_id}/embeddings", status_code=202, response_model=EmbeddingOut, openapi_extra=UPLOAD,
             dependencies=[Depends(require_write)])
async def upload_embedding(experiment_id: int, name: NameQ, request: Request, factory: FactoryDep,
                           settings: SettingsDep) -> EmbeddingOut:
    """Score your own codes beside the experiment's models: the body is a .npy file, streamed to disk up
    to AEKNN_MAX_UPLOAD (413 past it). 202: checked, stored, and queued for the workers; follow the
    ``self`` link. NAME then reads as one more model everywhere (neighbours, metric tables, codes, plots).
    The same name with the same codes again is the same upload. 409: the experiment has not finished, or
    the name is taken; 422: the codes are not N x m finite numbers."""
    async with spooled(request, settings) as (f, _):
        codes = await run_in_threadpool(embeddings.read_codes, f, "the body")
    try:
        model_id, _ = await run_in_threadpool(embeddings.submit, factory, settings, experiment_id, name, codes)
    except jobs.BrokerUnavailable as exc:  # nothing is kept
        raise AppError("unavailable", f"not queued: {exc}") from None
    with factory() as s:
        return _out(experiment_id, embeddings.upload(s, experiment_id, model_id=model_id))


@router.get("/{experiment_id}/embeddings/{name}", response_model=EmbeddingOut)
def embedding(experiment_id: int, name: str, session: SessionDep) -> EmbeddingOut:
    """An uploaded embedding's state: queued, scoring, ready (it reads as a model everywhere) or failed
    (with the reason)."""
    reads.experiment(session, experiment_id)
    return _out(experiment_id, embeddings.upload(session, experiment_id, name))


class CompareOut(BaseModel):
    experiment: int
    models: list[str]
    distance: str
    k: int
    agreement: float
    by_label: dict[str, float]
    differ_most: list[dict]


@router.get("/{experiment_id}/compare", response_model=CompareOut)
def compare(experiment_id: int, session: SessionDep,
            models: Annotated[str, Query(pattern=r"^[A-Za-z0-9_.-]{1,64},[A-Za-z0-9_.-]{1,64}$",
                                         description="two spaces, like relu_mse,my_umap")],
            k: Annotated[int, Query(ge=1, le=1000)] = 10, distance: Distance = Distance.l2) -> CompareOut:
    """How often two spaces' k-neighbourhoods agree (the mean share of each sample's k neighbours they
    have in common), per label, and the 20 samples where they differ most, each with the share of its
    pixel-space neighbourhood that either space keeps."""
    exp = reads.finished(session, experiment_id, fresh=True)
    return CompareOut(**reads.compare(session, exp, models.split(","), distance.value, k))

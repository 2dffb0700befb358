"""Your data set over REST: upload an .npz of arrays X and y, list and read what is stored. An experiment
names an upload in its config's ``dataset`` (by id or name); the workers read it from the database."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from api.deps import FactoryDep, SessionDep, SettingsDep, require_read, require_write
from api.errors import ERROR_RESPONSES
from api.schemas import DatasetOut
from api.uploads import spooled
from common.compute.names import USER_NAME, USER_NAME_RULE
from common.study import datasets

router = APIRouter(prefix="/datasets", tags=["datasets"], responses=ERROR_RESPONSES,
                   dependencies=[Depends(require_read)])
NameQ = Annotated[str, Query(pattern=f"^{USER_NAME}$", description=f"the data set's name: {USER_NAME_RULE}")]
UPLOAD = {"requestBody": {"required": True, "description": "an .npz file (numpy.savez) holding the data as X "
                          "(N x D, N x H x W or N x H x W x C whole numbers in 0..255) and the labels as y (N whole "
                          "numbers in 0..255)",
                          "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


@router.post("", status_code=201, response_model=DatasetOut, openapi_extra=UPLOAD,
             dependencies=[Depends(require_write)], responses={200: {"model": DatasetOut}})
async def upload_dataset(name: NameQ, request: Request, response: Response, factory: FactoryDep,
                         settings: SettingsDep) -> DatasetOut:
    """Store your data set: the body is an .npz of arrays X and y, streamed to disk up to AEKNN_MAX_UPLOAD (413
    past it) and checked as `aeknn run --data` checks a file (422 naming the problem). 201: stored; 200: the
    same bytes were stored before (that data set, under its first name); 409: the name is taken by other
    data. Then `POST /experiments` with `"dataset": NAME` (or its id) studies it on the workers."""
    datasets.check_name(name)
    async with spooled(request, settings) as (f, sha256):
        ds = await run_in_threadpool(datasets.read, f, name)
    dataset_id, created = await run_in_threadpool(datasets.store, factory, name, ds, sha256)
    if not created:
        response.status_code = 200
    with factory() as s:
        return DatasetOut(**datasets.one(s, dataset_id))


@router.get("", response_model=list[DatasetOut])
def list_datasets(session: SessionDep) -> list[DatasetOut]:
    """Every uploaded data set, oldest first."""
    return [DatasetOut(**d) for d in datasets.listing(session)]


@router.get("/{ref}", response_model=DatasetOut)
def dataset(ref: Annotated[str, Path(pattern=f"^{USER_NAME}$", description="its id or name")],
            session: SessionDep) -> DatasetOut:
    """An uploaded data set, by id or name."""
    return DatasetOut(**datasets.one(session, int(ref) if ref.isdigit() else ref))

"""Any sample: its label, its codes, its image, and its nearest neighbours in any table."""

from __future__ import annotations

import io
import json
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy.orm import Session, sessionmaker

from api import cache
from api.deps import ReadFactoryDep, SessionDep, require_read
from api.errors import ERROR_RESPONSES
from api.schemas import ModelQ, NeighborsOut, SampleOut
from common.compute import pictures
from common.study import reads
from common.study.config import Distance, Space

router = APIRouter(prefix="/samples", tags=["samples"], responses=ERROR_RESPONSES,
                   dependencies=[Depends(require_read)])
ExperimentQ = Annotated[int | None, Query(ge=1, description="default: the latest succeeded experiment")]


SPRITE_COLUMNS = 20  # digits per row of a sprite
MAX_SPRITE_CHARS = 3999  # at most 2,000 ids, whatever their digits


@router.get("/sprite.png", response_class=Response, responses={200: {"content": {"image/png": {}}}})
def sprite(session: SessionDep,
           ids: Annotated[str, Query(pattern=r"^\d+(,\d+)*$", max_length=MAX_SPRITE_CHARS,
                                     description="comma list of sample ids (so at most 2,000)")],
           experiment: ExperimentQ = None, scale: Annotated[int, Query(ge=1, le=4)] = 2) -> Response:
    """Many digits in one PNG (the page's neighbour thumbnails: one request instead of one per image): the
    i-th id at column i mod 20, row i div 20, each as its picture (28 x 28 for MNIST; a vector as a square of
    its values) scaled up ``scale`` times."""
    from PIL import Image

    exp = reads.finished(session, experiment)
    wanted = [int(i) for i in ids.split(",")]
    for i in wanted:
        reads.check_sample(exp, exp.n, i)
    shape = reads.sample_shape(session, exp.dataset_id)
    sheet = pictures.sheet(reads.picture_rows(session, exp.dataset_id, wanted), shape, SPRITE_COLUMNS)
    img = Image.fromarray(sheet, mode=pictures.mode(shape)).resize(
        (sheet.shape[1] * scale, sheet.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return Response(buf.getvalue(), media_type="image/png", headers={"Cache-Control": "public, max-age=86400"})


@router.get("/{sample_id}/neighbors", response_model=NeighborsOut)
async def neighbors(request: Request, sample_id: int, factory: ReadFactoryDep, space: Space = Space.encoded,
                    model: ModelQ = None, distance: Distance = Distance.l2,
                    k: Annotated[int, Query(ge=1, description="at most the table's K")] = 20,
                    experiment: ExperimentQ = None) -> Response:
    """The sample's k nearest neighbours in pixel space (original) or in a model's code space.

    The hot path: a plain request is answered below the framework by the same function
    (api/hotpath.py); this route answers the rest and is the reference for validation and errors."""
    return neighbors_response(request, factory, sample_id, space=space.value, model=model,
                              distance=distance.value, k=k, experiment=experiment)


def neighbors_response(request: Request, factory: sessionmaker[Session], sample_id: int, *, space: str,
                       model: str | None,
                       distance: str, k: int, experiment: int | None) -> Response:
    """The experiment and its tables are looked up once per process (common/study/reads.py), the row is
    one primary-key read (sub-millisecond, so it runs on the event loop instead of hopping to a thread),
    and the JSON is written directly (same shape as NeighborsOut)."""
    with factory() as session:
        exp = reads.finished(session, experiment)
        return cache.immutable(request, exp.id, experiment is not None, lambda: Response(json.dumps(
            reads.neighbors(session, exp, sample_id, space=space, model=model, distance=distance, k=k),
            separators=(",", ":")), media_type="application/json"))


@router.get("/{sample_id}", response_model=SampleOut)
def sample(sample_id: int, session: SessionDep, experiment: ExperimentQ = None) -> SampleOut:
    """The sample's label and its 2-D code under each model."""
    exp = reads.finished(session, experiment)
    codes = reads.sample_codes(session, exp, sample_id)
    label = int(reads.labels(session, exp.dataset_id)[sample_id]) if exp.labelled else None
    return SampleOut(experiment=exp.id, id=sample_id, label=label,
                     codes=codes)


@router.get("/{sample_id}/image.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
def image(sample_id: int, session: SessionDep, experiment: ExperimentQ = None,
          scale: Annotated[int, Query(ge=1, le=8)] = 2) -> Response:
    """The sample as a PNG (the 28 x 28 digit for MNIST; a vector as a square of its values), scaled up
    ``scale`` times."""
    from PIL import Image

    exp = reads.finished(session, experiment)
    reads.check_sample(exp, exp.n, sample_id)
    shape = reads.sample_shape(session, exp.dataset_id)
    [pixels] = pictures.pictures(reads.picture_rows(session, exp.dataset_id, [sample_id]), shape)
    img = Image.fromarray(pixels, mode=pictures.mode(shape)).resize(
        (pixels.shape[1] * scale, pixels.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return Response(buf.getvalue(), media_type="image/png",
                    headers={"Cache-Control": "public, max-age=86400"})

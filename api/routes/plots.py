"""The study's plots as PNG and the data behind them as JSON. A finished experiment's plots are drawn
once and stored; its answers carry an ETag and Cache-Control (api/cache.py)."""

from __future__ import annotations

import json

import numpy as np
from fastapi import APIRouter, Depends, Request, Response

from api import cache
from api.deps import ExperimentDep, FactoryDep, SessionDep, require_read
from api.errors import ERROR_RESPONSES, conflict
from api.schemas import CodesOut, LossOut
from common.compute.names import MODEL_NAMES
from common.store import db as db
from common.study import plots, reads
from common.study.config import ModelName

router = APIRouter(prefix="/experiments/{experiment_id}", tags=["plots"], responses=ERROR_RESPONSES,
                   dependencies=[Depends(require_read)])
PNG = {200: {"content": {"image/png": {}}}}


def _models(session, exp: db.Experiment, model: ModelName | None) -> list[db.ModelRow]:
    if model is not None:
        return [reads.model_row(session, exp, model.value)]
    rows = [m for m in db.list_models(session=session, experiment_id=exp.id) if m.codes is not None]
    if not rows:
        raise conflict(f"experiment {exp.id} has no trained model yet")
    return sorted(rows, key=lambda m: MODEL_NAMES.index(m.name))


def _finished(request: Request, exp: db.Experiment, make) -> Response:
    """A finished experiment's answer is immutable (ETag, Cache-Control); a running one's is not kept."""
    if exp.status != db.SUCCEEDED:
        response = make()
        response.headers["Cache-Control"] = "no-store"
        return response
    return cache.immutable(request, exp.id, True, make)


def _plot(request: Request, exp: db.Experiment, factory, name: str, model: str, draw) -> Response:
    """The stored PNG of a finished experiment (drawn and stored on first use); a running one's, drawn."""
    def make() -> Response:
        if exp.status != db.SUCCEEDED:
            return Response(draw(), media_type="image/png")
        with factory() as s:
            png = db.get_plot(session=s, experiment_id=exp.id, name=name, model=model)
        if png is None:
            png = draw()
            with db.transaction(factory) as s:
                db.save_plot(session=s, experiment_id=exp.id, name=name, model=model, png=png)
        return Response(png, media_type="image/png")

    return _finished(request, exp, make)


@router.get("/loss", response_model=LossOut)
def loss(exp: ExperimentDep, session: SessionDep) -> LossOut:
    """The mean loss of every finished epoch, per model (grows while training runs)."""
    return LossOut(experiment=exp.id, losses={m.name: list(m.losses or [])
                                              for m in db.list_models(session=session, experiment_id=exp.id)})


def _shortest(codes: np.ndarray) -> list[list[float]]:
    """Each float32 as the shortest decimal that reads back as the same float32 (exact, and short)."""
    return [[float(str(a)), float(str(b))] for a, b in codes.astype(np.float32)]


@router.get("/codes", response_model=CodesOut)
def codes(request: Request, exp: ExperimentDep, session: SessionDep, model: ModelName = ModelName.relu_mse):
    """Every sample's id, label and 2-D code under one model, each code exactly its float32."""
    row = reads.model_row(session, exp, model.value)

    def make() -> Response:
        c = db.model_codes(row)
        body = {"experiment": exp.id, "model": model.value, "ids": list(range(len(c))),
                "labels": reads.labels(session, exp.dataset_id).tolist(), "codes": _shortest(c)}
        return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")

    return _finished(request, exp, make)


@router.get("/codes.bin", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}})
def codes_bin(request: Request, exp: ExperimentDep, session: SessionDep,
              model: ModelName = ModelName.relu_mse) -> Response:
    """The same as /codes, packed for the web page's map: N x 2 float32 codes (little-endian, row-major),
    then N uint8 labels. Sample i is row i. N is in the X-Count header."""
    row = reads.model_row(session, exp, model.value)

    def make() -> Response:
        c = np.ascontiguousarray(db.model_codes(row), dtype="<f4")
        labels = reads.labels(session, exp.dataset_id)
        return Response(c.tobytes() + labels.astype(np.uint8).tobytes(), media_type="application/octet-stream",
                        headers={"X-Count": str(len(c))})

    return _finished(request, exp, make)


@router.get("/plots/loss.png", response_class=Response, responses=PNG)
def loss_png(request: Request, exp: ExperimentDep, session: SessionDep, factory: FactoryDep) -> Response:
    """The training loss per epoch: one panel per loss (L1, MSE), one curve per model."""
    def draw() -> bytes:
        rows = sorted(db.list_models(session=session, experiment_id=exp.id), key=lambda m: MODEL_NAMES.index(m.name))
        return plots.loss(exp.id, {m.name: list(m.losses) for m in rows if m.losses})  # a reference map has none

    return _plot(request, exp, factory, "loss", "", draw)


@router.get("/plots/latent.png", response_class=Response, responses=PNG)
def latent_png(request: Request, exp: ExperimentDep, session: SessionDep, factory: FactoryDep,
               model: ModelName | None = None) -> Response:
    """The 2-D codes of all samples coloured by label (one panel per model, or the one asked for)."""
    rows = _models(session, exp, model)

    def draw() -> bytes:
        return plots.latent([(m.name, db.model_codes(m)) for m in rows], reads.labels(session, exp.dataset_id))

    return _plot(request, exp, factory, "latent", model.value if model else "", draw)


@router.get("/plots/reconstructions.png", response_class=Response, responses=PNG)
def reconstructions_png(request: Request, exp: ExperimentDep, session: SessionDep, factory: FactoryDep,
                        model: ModelName | None = None) -> Response:
    """Originals (top row) and each model's reconstructions at epoch 90 (or the last)."""
    rows = [m for m in _models(session, exp, model) if m.reconstructions is not None]
    if not rows:
        raise conflict(f"experiment {exp.id} has no reconstructions yet")

    def draw() -> bytes:
        ids = rows[0].recon_ids
        originals = reads.images(session, exp.dataset_id)[ids].astype(np.float32) / 255 * 2 - 1
        return plots.reconstructions([("original", originals)] + [
            (f"{m.name} (epoch {m.recon_epoch})", np.frombuffer(m.reconstructions, "<f4").reshape(len(ids), -1))
            for m in rows])

    return _plot(request, exp, factory, "reconstructions", model.value if model else "", draw)

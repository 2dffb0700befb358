"""The study's plots as PNG and the data behind them as JSON. A finished experiment's plots are drawn
once per process and kept in memory (a GET writes nothing); its answers carry an ETag and Cache-Control
(api/cache.py)."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict

import numpy as np
from fastapi import APIRouter, Depends, Request, Response

from api import cache
from api.deps import ExperimentDep, SessionDep, require_read
from api.errors import ERROR_RESPONSES, conflict
from api.schemas import CodesOut, LossOut, ModelQ
from common.study import plots, reads

router = APIRouter(prefix="/experiments/{experiment_id}", tags=["plots"], responses=ERROR_RESPONSES,
                   dependencies=[Depends(require_read)])
PNG = {200: {"content": {"image/png": {}}}}


def _finished(request: Request, exp: reads.Experiment, make, changes: bool = False) -> Response:
    """A finished experiment's answer is immutable (ETag, Cache-Control; ``changes``: one about all its
    spaces, revalidated); a running one's is not kept."""
    if not reads.is_final(exp):
        response = make()
        response.headers["Cache-Control"] = "no-store"
        return response
    return cache.immutable(request, exp.id, True, make, revision=exp.revision or 0, changes=changes)


# A GET never writes: a finished experiment's plot is drawn once per process and kept here (at most
# MAX_DRAWN of them, the least recently used go first), or read where an older aeknn stored it.
MAX_DRAWN = 64
_drawn: OrderedDict[tuple, bytes] = OrderedDict()
_drawn_lock = threading.Lock()


def _plot(request: Request, exp: reads.Experiment, session, name: str, model: str, draw) -> Response:
    """The PNG of a finished experiment (stored by an older aeknn, or drawn once here); a running one's, drawn."""
    def make() -> Response:
        if not reads.is_final(exp):
            return Response(draw(), media_type="image/png")
        key = (request.app.state.settings.database_url, exp.id, exp.revision or 0, name, model)
        with _drawn_lock:
            png = _drawn.get(key)
            if png is not None:
                _drawn.move_to_end(key)
        if png is None:
            png = reads.stored_plot(session, exp, name, model) or draw()
            with _drawn_lock:
                _drawn[key] = png
                while len(_drawn) > MAX_DRAWN:
                    _drawn.popitem(last=False)
        return Response(png, media_type="image/png")

    return _finished(request, exp, make, changes=not model)  # every model's plot grows with an upload


@router.get("/loss", response_model=LossOut)
def loss(exp: ExperimentDep, session: SessionDep) -> LossOut:
    """The mean loss of every finished epoch, per model (grows while training runs)."""
    return LossOut(experiment=exp.id, losses=reads.losses(session, exp))


def _shortest(codes: np.ndarray) -> list[list[float]]:
    """Each float32 as the shortest decimal that reads back as the same float32 (exact, and short)."""
    return [[float(str(a)), float(str(b))] for a, b in codes.astype(np.float32)]


@router.get("/codes", response_model=CodesOut)
def codes(request: Request, exp: ExperimentDep, session: SessionDep, model: ModelQ = None):
    """Every sample's id, label and code under one model: a 2-D code exactly its float32; an uploaded
    embedding's m values as it was given (float64)."""
    row = reads.model_row(session, exp, model)

    def make() -> Response:
        c = reads.codes(row)
        body = {"experiment": exp.id, "model": row.name, "ids": list(range(len(c))),
                "labels": None if (labs := reads.known_labels(session, exp.dataset_id)) is None else labs.tolist(),
                "codes": _shortest(c) if c.dtype == np.float32 else c.tolist()}
        return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")

    return _finished(request, exp, make)


@router.get("/codes.bin", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}})
def codes_bin(request: Request, exp: ExperimentDep, session: SessionDep,
              model: ModelQ = None) -> Response:
    """The map's codes, packed for the web page: N x 2 float32 (little-endian, row-major), then N uint8
    labels. Sample i is row i. N is in the X-Count header. An uploaded embedding of m != 2 dimensions is
    drawn from its first two principal components (m = 1: y is 0); X-Map says so. Data without labels
    send zeros there and say ``X-Labelled: false``."""
    row = reads.model_row(session, exp, model)

    def make() -> Response:
        c = np.ascontiguousarray(reads.map_codes(row), dtype="<f4")
        labels = reads.known_labels(session, exp.dataset_id)
        note = reads.map_note(row)
        packed = np.zeros(len(c), np.uint8) if labels is None else labels.astype(np.uint8)
        return Response(c.tobytes() + packed.tobytes(), media_type="application/octet-stream",
                        headers={"X-Count": str(len(c)), **({"X-Map": note} if note else {}),
                                 **({} if labels is not None else {"X-Labelled": "false"})})

    return _finished(request, exp, make)


@router.get("/plots/loss.png", response_class=Response, responses=PNG)
def loss_png(request: Request, exp: ExperimentDep, session: SessionDep) -> Response:
    """The training loss per epoch: one panel per loss (L1, MSE), one curve per model."""
    def draw() -> bytes:
        return plots.loss(exp.id, {name: ls for name, ls in reads.losses(session, exp).items() if ls})

    return _plot(request, exp, session, "loss", "", draw)


@router.get("/plots/latent.png", response_class=Response, responses=PNG)
def latent_png(request: Request, exp: ExperimentDep, session: SessionDep, model: ModelQ = None) -> Response:
    """The 2-D codes of all samples coloured by label (one panel per model, or the one asked for)."""
    rows = reads.trained_models(session, exp, model)

    def draw() -> bytes:
        return plots.latent([(m.name, reads.map_codes(m)) for m in rows], reads.labels(session, exp.dataset_id))

    return _plot(request, exp, session, "latent", model or "", draw)


@router.get("/plots/reconstructions.png", response_class=Response, responses=PNG)
def reconstructions_png(request: Request, exp: ExperimentDep, session: SessionDep,
                        model: ModelQ = None) -> Response:
    """Originals (top row) and each model's reconstructions at epoch 90 (or the last)."""
    rows = [m for m in reads.trained_models(session, exp, model)
            if m.reconstructions is not None]
    if not rows:
        raise conflict(f"experiment {exp.id} has no reconstructions yet")

    def draw() -> bytes:
        ids = rows[0].recon_ids
        originals = reads.unit_rows(session, exp.dataset_id, ids)
        return plots.reconstructions(reads.sample_shape(session, exp.dataset_id), [("original", originals)] + [
            (f"{m.name} (epoch {m.recon_epoch})", np.frombuffer(m.reconstructions, "<f4").reshape(len(ids), -1))
            for m in rows])

    return _plot(request, exp, session, "reconstructions", model or "", draw)

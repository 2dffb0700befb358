"""The study's plots as PNG (matplotlib) and the data behind them as JSON."""

from __future__ import annotations

import io

import numpy as np
from fastapi import APIRouter, Response

from api import data
from api.deps import ExperimentDep, SessionDep
from api.errors import ERROR_RESPONSES, conflict
from api.schemas import CodesOut, LossOut
from common import storage as db
from common.config import ModelName
from common.names import MODEL_NAMES

router = APIRouter(prefix="/experiments/{experiment_id}", tags=["plots"], responses=ERROR_RESPONSES)
PNG = {200: {"content": {"image/png": {}}}}


def _png(fig) -> Response:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return Response(buf.getvalue(), media_type="image/png")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _models(session, exp: db.Experiment, model: ModelName | None) -> list[db.ModelRow]:
    if model is not None:
        return [data.model_row(session, exp, model.value)]
    rows = [m for m in db.list_models(session=session, experiment_id=exp.id) if m.codes is not None]
    if not rows:
        raise conflict(f"experiment {exp.id} has no trained model yet")
    return sorted(rows, key=lambda m: MODEL_NAMES.index(m.name))


@router.get("/loss", response_model=LossOut)
def loss(exp: ExperimentDep, session: SessionDep) -> LossOut:
    """The mean loss of every finished epoch, per model (grows while training runs)."""
    return LossOut(experiment=exp.id, losses={m.name: list(m.losses or [])
                                              for m in db.list_models(session=session, experiment_id=exp.id)})


@router.get("/codes", response_model=CodesOut)
def codes(exp: ExperimentDep, session: SessionDep, model: ModelName = ModelName.relu_mse) -> CodesOut:
    """Every sample's id, label and 2-D code under one model (for a scatter)."""
    row = data.model_row(session, exp, model.value)
    c = db.model_codes(row)
    labels = data.labels(session, exp.dataset_id)
    return CodesOut(experiment=exp.id, model=model.value, ids=list(range(len(c))), labels=labels.tolist(),
                    codes=np.round(c.astype(np.float64), 6).tolist())


@router.get("/codes.bin", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}})
def codes_bin(exp: ExperimentDep, session: SessionDep, model: ModelName = ModelName.relu_mse) -> Response:
    """The same as /codes, packed for the web page's map: N x 2 float32 codes (little-endian, row-major),
    then N uint8 labels. Sample i is row i. N is in the X-Count header."""
    row = data.model_row(session, exp, model.value)
    c = np.ascontiguousarray(db.model_codes(row), dtype="<f4")
    labels = data.labels(session, exp.dataset_id)
    return Response(c.tobytes() + labels.astype(np.uint8).tobytes(), media_type="application/octet-stream",
                    headers={"X-Count": str(len(c)), "Cache-Control": "private, max-age=3600"})


@router.get("/plots/loss.png", response_class=Response, responses=PNG)
def loss_png(exp: ExperimentDep, session: SessionDep) -> Response:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in sorted(db.list_models(session=session, experiment_id=exp.id), key=lambda m: MODEL_NAMES.index(m.name)):
        ax.plot(range(1, len(m.losses or []) + 1), m.losses or [], label=m.name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean training loss")
    ax.set_title(f"experiment {exp.id}: training loss")
    ax.legend()
    return _png(fig)


@router.get("/plots/latent.png", response_class=Response, responses=PNG)
def latent_png(exp: ExperimentDep, session: SessionDep, model: ModelName | None = None) -> Response:
    """The 2-D codes of all samples coloured by label (one panel per model, or the one asked for)."""
    plt = _pyplot()
    rows = _models(session, exp, model)
    labels = data.labels(session, exp.dataset_id)
    fig, axes = plt.subplots(1, len(rows), figsize=(4.5 * len(rows), 4.5), squeeze=False)
    for ax, m in zip(axes[0], rows, strict=True):
        c = db.model_codes(m)
        sc = ax.scatter(c[:, 0], c[:, 1], c=labels, cmap="tab10", s=0.5, vmin=-0.5, vmax=9.5, rasterized=True)
        ax.set_title(m.name)
    fig.colorbar(sc, ax=axes[0].tolist(), ticks=range(10), label="label")
    return _png(fig)


@router.get("/plots/reconstructions.png", response_class=Response, responses=PNG)
def reconstructions_png(exp: ExperimentDep, session: SessionDep, model: ModelName | None = None) -> Response:
    """Originals (top row) and each model's reconstructions at epoch 90 (or the last)."""
    plt = _pyplot()
    rows = [m for m in _models(session, exp, model) if m.reconstructions is not None]
    if not rows:
        raise conflict(f"experiment {exp.id} has no reconstructions yet")
    ids = rows[0].recon_ids
    originals = data.images(session, exp.dataset_id)[ids].astype(np.float32) / 255 * 2 - 1
    fig, axes = plt.subplots(len(rows) + 1, len(ids), figsize=(len(ids) * 0.9, (len(rows) + 1) * 1.0),
                             squeeze=False)
    grids = [("original", originals)] + [
        (f"{m.name} (epoch {m.recon_epoch})", np.frombuffer(m.reconstructions, "<f4").reshape(len(ids), -1))
        for m in rows]
    for r, (title, imgs) in enumerate(grids):
        for c in range(len(ids)):
            ax = axes[r][c]
            ax.imshow(imgs[c].reshape(28, 28), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(title, rotation=0, ha="right", fontsize=7)
    return _png(fig)

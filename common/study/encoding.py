"""New samples placed on a finished experiment's maps (``POST /experiments/{id}/encode``): for each row, for
each model, its 2-D code, its exact top-k among the experiment's samples in pixel space and in that model's
code space, and how much the two lists share.

- the autoencoders encode it with their encoder;
- relu_keep places it on its refined map held still, from the median of its nearest samples' codes
  (keeping.map_start, keeping.place: its first neighbours in pixel space as positives), as the study places
  unseen images;
- PCA projects it on the axes of the experiment's data (recomputed here, exactly as the study fits them);
- UMAP, t-SNE and uploaded embeddings cannot place it and say why.

The encoder process (worker/encoder.py) keeps the last experiments it served in memory; the database is the
source of truth. torch is imported only here, never by the web process.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.compute import placing
from common.compute.names import KEEP_MODELS, SEED_MODELS
from common.errors import NotFound, NotReady
from common.settings import get_settings
from common.store import db
from common.study.config import StudyConfig

KEPT = 2  # experiments kept in memory

WHY_NOT = {
    "umap": "umap: the study keeps UMAP's codes, not its fitted model, so a new sample cannot be transformed",
    "tsne": "tsne: t-SNE places only the samples it was fitted on (the study keeps no fitted openTSNE map)",
}


@dataclass
class Loaded:
    """What answering needs of one finished experiment."""

    id: int
    n: int
    shape: tuple[int, ...]
    values: np.ndarray  # (N, D) the samples
    labels: np.ndarray | None
    distances: list[str]
    k: int  # K of its tables
    pixels: placing.Pixels
    codes: dict[str, np.ndarray] = field(default_factory=dict)  # every model's (N, 2) codes
    place: dict[str, object] = field(default_factory=dict)  # model -> rows (M, D) -> codes (M, 2)
    why_not: dict[str, str] = field(default_factory=dict)  # model -> why it cannot place a new sample


def sample_format(session: Session, experiment_id: int) -> tuple[tuple[int, ...], np.dtype]:
    """A finished experiment's sample shape and value type (what the API brings new images to), read without
    its values; NotFound / NotReady otherwise."""
    exp = session.get(db.Experiment, experiment_id)
    if exp is None:
        raise NotFound(f"no experiment {experiment_id}")
    if exp.status != db.SUCCEEDED:
        raise NotReady(f"experiment {experiment_id} is {exp.status}: new samples are placed on finished ones")
    row = session.execute(select(db.DatasetRow.shape, db.DatasetRow.dtype)  # not its values: tens of MB
                          .where(db.DatasetRow.id == exp.dataset_id)).one()
    return db.dataset_shape(row), np.dtype(row.dtype or "uint8")


_cache: OrderedDict[int, Loaded] = OrderedDict()
_lock = threading.Lock()


def load(factory: sessionmaker[Session], experiment_id: int) -> Loaded:
    with _lock:
        hit = _cache.get(experiment_id)
        if hit is not None:
            _cache.move_to_end(experiment_id)
            return hit
    with factory() as s:
        loaded = _load(s, experiment_id)
    with _lock:
        _cache[experiment_id] = loaded
        while len(_cache) > KEPT:
            _cache.popitem(last=False)
    return loaded


def _load(s: Session, experiment_id: int) -> Loaded:
    sample_format(s, experiment_id)
    exp = s.get(db.Experiment, experiment_id)
    cfg = StudyConfig.model_validate(exp.config)
    row = s.get(db.DatasetRow, exp.dataset_id)
    values = db.dataset_values(row)
    labels = np.frombuffer(row.labels, np.uint8).copy() if db.dataset_labelled(row) else None
    out = Loaded(id=exp.id, n=len(values), shape=db.dataset_shape(row), values=values, labels=labels,
                 distances=[d.value for d in cfg.distances], k=cfg.k,
                 pixels=placing.Pixels(values, kernel=get_settings().kernel))
    models = s.scalars(select(db.ModelRow).where(db.ModelRow.experiment_id == experiment_id)
                       .order_by(db.ModelRow.id)).all()
    for m in models:
        if m.codes is None or (m.source == "uploaded" and m.state != "ready"):
            continue
        codes = db.model_codes(m)
        if m.source == "uploaded":
            out.why_not[m.name] = (f"{m.name}: an uploaded embedding: its codes came from your own map, which "
                                   "aeknn does not hold")
            continue
        out.codes[m.name] = codes
        if m.name in SEED_MODELS or m.name in KEEP_MODELS:
            out.place[m.name] = _encoder(m, cfg, values, codes, out)
        elif m.name == "pca":
            out.place[m.name] = _pca(values)
        else:
            out.why_not[m.name] = WHY_NOT.get(m.name, f"{m.name}: cannot place a new sample")
    return out


def _scaled(rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    from common.compute.pictures import unit_scaled

    return unit_scaled(rows, values)


def _encoder(m: db.ModelRow, cfg: StudyConfig, values: np.ndarray, codes: np.ndarray, loaded: Loaded):
    if m.name in KEEP_MODELS:  # placed on the stored map; its encoder only started that map (not loaded)
        return _keep_placer(cfg, codes, loaded)
    import io

    import torch

    from common.compute.training import encode, load_trained

    model = load_trained(m.name, torch.load(io.BytesIO(m.weights), map_location="cpu", weights_only=True))

    def each(rows: np.ndarray) -> np.ndarray:
        """One row at a time: a GEMM's last bit may move with the batch, and an image's code must not
        depend on the images sent with it."""
        x = torch.from_numpy(_scaled(rows, values))
        return np.vstack([encode(model, x[i: i + 1]).numpy() for i in range(len(x))])

    return each


def _keep_placer(cfg: StudyConfig, codes: np.ndarray, loaded: Loaded):
    from common.compute.keeping import PLACE_EPOCHS, PLACE_POSITIVES, map_start, place
    from common.study.stages import keep_config, keep_distance

    kcfg, distance = keep_config(cfg), keep_distance(cfg)

    def keep(rows: np.ndarray) -> np.ndarray:
        nbr = np.stack([ids for ids, _ in loaded.pixels.neighbors(rows, distance, PLACE_POSITIVES)])
        return place(map_start(codes, nbr), codes, nbr, kcfg, PLACE_EPOCHS)  # as the study places its test

    return keep


def _pca(values: np.ndarray):
    from common.compute.references import pca

    _, transform = pca(_scaled(values, values))
    return lambda rows: transform(_scaled(rows, values))


def _listed(loaded: Loaded, ids: np.ndarray, dist: np.ndarray) -> list[dict]:
    return [{"rank": r + 1, "id": int(i), "label": None if loaded.labels is None else int(loaded.labels[i]),
             "distance": float(d)} for r, (i, d) in enumerate(zip(ids, dist, strict=True))]


def answer(loaded: Loaded, rows: np.ndarray, k: int, models: list[str] | None = None) -> list[dict]:
    """Per row of ``rows`` (M, D) of the data's type: its pixel-space top-k (each distance of the study),
    and per model its code, its code-space top-k and the share of the k it has in common with pixel
    space; a model that cannot place it says why."""
    placing.check_k(k, loaded.n)
    names = list(loaded.codes) + [n for n in loaded.why_not if n not in loaded.codes]
    if models is not None:
        unknown = [m for m in models if m not in names]
        if unknown:
            raise NotFound(f"experiment {loaded.id} has no model {', '.join(unknown)} (it has {', '.join(names)})")
        names = models
    pixel = {d: loaded.pixels.neighbors(rows, d, k) for d in loaded.distances}
    placed = {n: np.asarray(loaded.place[n](rows), np.float32) for n in names if n in loaded.place}
    out = []
    for i in range(len(rows)):
        item = {"pixel": {d: _listed(loaded, *pixel[d][i]) for d in loaded.distances}, "models": {}}
        for n in names:
            if n not in placed:
                item["models"][n] = {"placed": False, "why": loaded.why_not.get(n, f"{n}: cannot place it")}
                continue
            code = placed[n][i]
            near = {d: placing.code_neighbors(loaded.codes[n], code, d, k) for d in loaded.distances}
            item["models"][n] = {
                "placed": True, "code": [float(v) for v in code],
                "neighbors": {d: _listed(loaded, *near[d]) for d in loaded.distances},
                "overlap": {d: len(np.intersect1d(near[d][0], pixel[d][i][0])) / k for d in loaded.distances}}
        out.append(item)
    return out


"""Metric values from the stored neighbour tables: what the metrics stage stores, and what the API
computes (once, then stores) for a k that was not asked for at first. Imports only numpy and SQL."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from common import metrics as M
from common import storage as db
from common.config import StudyConfig


def compute_metrics(cfg: StudyConfig, labels: np.ndarray, orig: dict[str, np.ndarray],
                    enc: Mapping[tuple[str, str], np.ndarray] | Iterable[tuple[tuple[str, str], np.ndarray]],
                    ks: Sequence[int] | None = None, by_label: bool = True) -> list[dict]:
    """Every metric of STUDY.md from the id tables: orig[distance], enc[(model, distance)].

    ``enc`` may also be an iterable of ((model, distance), table) pairs, read one at a time. ``ks``
    defaults to the config's; ``by_label`` adds score@k by label at k = 20 (or K, if smaller).
    """
    ks = list(cfg.ks if ks is None else ks)
    n = labels.shape[0]
    out: list[dict] = []

    def put(metric: str, space: str, distance: str, k: int, value: float, label: int = -1) -> None:
        out.append({"metric": metric, "space": space, "distance": distance, "k": k, "label": label,
                    "value": float(value)})

    by_label_k = _by_label_k(cfg)
    for d, o in orig.items():
        for k in ks:
            put("same_label_rate", db.ORIGINAL, d, k, M.same_label_rate(o, labels, k).mean())
            put("knn_accuracy", db.ORIGINAL, d, k, M.knn_accuracy(o, labels, k))
    for (m, d), e in enc.items() if isinstance(enc, Mapping) else enc:
        o = orig[d]
        for k in ks:
            q = M.score_at_k(o, e, k)
            put("score_at_k", m, d, k, q)
            put("r_nx", m, d, k, M.r_nx(q, n, k))
            la = M.label_agreement(o, e, labels, k)
            put("same_label_rate", m, d, k, la["encoded_rate"])
            put("label_agreement_change", m, d, k, la["change"])
            put("label_agreement_distance", m, d, k, la["abs_change"])
            put("knn_accuracy", m, d, k, M.knn_accuracy(e, labels, k))
        if by_label:
            for label, v in M.score_at_k_by_label(o, e, labels, by_label_k).items():
                put("score_at_k_by_label", m, d, by_label_k, v, label)
    return out


def _by_label_k(cfg: StudyConfig) -> int:
    return min(M.BY_LABEL_K, cfg.k)


def _tables(session: Session, experiment_id: int, cfg: StudyConfig, width: int):
    """Labels, the pixel-space id tables, and the code-space ones as a generator that reads each
    table when it is reached; only the first ``width`` columns of each (the largest k asked for)."""
    exp = db.get_experiment(session=session, experiment_id=experiment_id)
    labels = db.dataset_labels(session=session, dataset_id=exp.dataset_id)

    def ids(space: str, d: str) -> np.ndarray:
        t = db.find_table(session=session, experiment_id=experiment_id, space=space, distance=d)
        if t is None:
            raise LookupError(f"experiment {experiment_id}: the {space}/{d} table is not complete")
        return db.load_table_ids(session=session, table_id=t.id, n=t.n, k=t.k, cols=min(width, t.k))

    distances = [d.value for d in cfg.distances]
    orig = {d: ids(db.ORIGINAL, d) for d in distances}
    enc = (((m.value, d), ids(m.value, d)) for m in cfg.models for d in distances)
    return labels, orig, enc


def store_metrics(factory: sessionmaker[Session], experiment_id: int) -> None:
    """Compute and store every metric of an experiment (replacing what was stored)."""
    with factory() as s:  # one table in memory at a time, beside the pixel-space ones
        cfg = StudyConfig.model_validate(db.get_experiment(session=s, experiment_id=experiment_id).config)
        width = max([*cfg.ks, _by_label_k(cfg)])
        labels, orig, enc = _tables(s, experiment_id, cfg, width)
        values = compute_metrics(cfg, labels, orig, enc)
    with db.transaction(factory) as s:
        db.save_metrics(session=s, experiment_id=experiment_id, values=values)


def ensure_ks(factory: sessionmaker[Session], experiment_id: int, ks: Sequence[int]) -> None:
    """Make sure the metric values at each k of ``ks`` are stored, computing the missing ones once."""
    with factory() as s:
        cfg = StudyConfig.model_validate(db.get_experiment(session=s, experiment_id=experiment_id).config)
        have = db.stored_ks(session=s, experiment_id=experiment_id)
        missing = sorted(set(ks) - have)
        if not missing:
            return
        labels, orig, enc = _tables(s, experiment_id, cfg, max(missing))
        values = compute_metrics(cfg, labels, orig, enc, ks=missing, by_label=False)
    with db.transaction(factory) as s:
        db.add_metrics(session=s, experiment_id=experiment_id, values=values)

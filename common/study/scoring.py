"""Metric values from the stored neighbour tables: what the metrics stage stores. Every metric is stored
at every k from 1 to K (one pass over each table: common/metrics.py's curves), so a read of any k is a
lookup and no request ever computes. The rank-based measures also need exact ranks beyond the tables,
from the points themselves (common/study/ranking.py, imported when they are computed: it needs torch).
Imports only numpy and SQL."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from common.compute import metrics as M
from common.store import db as db
from common.study.config import StudyConfig
from common.study.embeddings import ready_uploads


def top_k(cfg: StudyConfig, n: int) -> int:
    """The largest k stored: K, or N - 2 where that is smaller (R_NX needs k < N - 1)."""
    return min(cfg.k, n - 2)


RANK_MEASURES = ("trustworthiness", "continuity", "mrre_false", "mrre_missing")  # need ranks beyond K


def compute_metrics(cfg: StudyConfig, labels: np.ndarray | None, orig: dict[str, np.ndarray],
                    enc: Mapping[tuple[str, str], np.ndarray] | Iterable[tuple[tuple[str, str], np.ndarray]],
                    ranks: Mapping | None = None) -> list[dict]:
    """Every metric of STUDY.md at every k = 1..top_k from the id tables: orig[distance], enc[(model,
    distance)], score@k by label too. ``enc`` may be an iterable of ((model, distance), table) pairs, read
    one at a time. Values are sums of integers divided once (score@k = total overlap / (N k)). With
    ``ranks`` (common/study/ranking.py's sums per (model, distance)), the rank-based measures at each k
    where they are defined (k < N / 2); LCMC at every k and the AUC of R_NX (stored at k = top) always.
    ``labels`` None (your data came without them): every label-based metric is left out, not stored as 0."""
    labelled = labels is not None
    n = next(iter(orig.values())).shape[0]
    if labels is None:
        labels = np.zeros(n, np.uint8)
    top = top_k(cfg, n)
    ks = np.arange(1, top + 1)
    classes = int(labels.max()) + 1
    per_label = np.bincount(labels, minlength=classes)
    out: list[dict] = []

    def put(metric: str, space: str, distance: str, values: np.ndarray, label: int = -1) -> None:
        out.extend({"metric": metric, "space": space, "distance": distance, "k": int(k), "label": label,
                    "value": float(v)} for k, v in zip(ks, values, strict=True))

    for d, o in orig.items():
        o = o[:, :top]
        if labelled:
            put("same_label_rate", db.ORIGINAL, d, M.same_label_curves(o, None, labels)["original_rate"])
            put("knn_accuracy", db.ORIGINAL, d, M.knn_accuracy_curve(o, labels))
    for (m, d), e in enc.items() if isinstance(enc, Mapping) else enc:
        o, e = orig[d][:, :top], e[:, :top]
        shared = M.overlap_sums(o, e, labels, classes)  # (labels, top): summed overlaps of each label's rows
        q = shared.sum(axis=0) / n / ks
        put("score_at_k", m, d, q)
        rnx = ((n - 1) * q - ks) / (n - 1 - ks)
        put("r_nx", m, d, rnx)
        put("lcmc", m, d, M.lcmc_curve(q, n))
        out.append({"metric": "auc_rnx", "space": m, "distance": d, "k": top, "label": -1,
                    "value": M.auc_rnx(rnx)})
        if ranks is not None and (m, d) in ranks:
            r, kr = ranks[(m, d)], len(M.rank_measure_ks(n, top))
            for metric, curve in (("trustworthiness", M.trustworthiness_curve(r.false[:kr], n)),
                                  ("continuity", M.trustworthiness_curve(r.missing[:kr], n)),
                                  ("mrre_false", M.mrre_curve(r.relative_false[:kr], n)),
                                  ("mrre_missing", M.mrre_curve(r.relative_missing[:kr], n))):
                out.extend({"metric": metric, "space": m, "distance": d, "k": int(k), "label": -1,
                            "value": float(v)} for k, v in zip(ks[:kr], curve, strict=True))
        if not labelled:
            continue
        la = M.same_label_curves(o, e, labels)
        put("same_label_rate", m, d, la["encoded_rate"])
        put("label_agreement_change", m, d, la["change"])
        put("label_agreement_distance", m, d, la["abs_change"])
        put("knn_accuracy", m, d, M.knn_accuracy_curve(e, labels))
        for label in np.flatnonzero(per_label):
            put("score_at_k_by_label", m, d, shared[label] / per_label[label] / ks, int(label))
    return out


TEST = "test_"  # the held-out test split's metrics are stored under these names: test_score_at_k, ...


def heldout_metrics(cfg: StudyConfig, n_train: int, labels: np.ndarray | None, test_labels: np.ndarray | None,
                    orig: dict[str, np.ndarray],
                    enc: Iterable[tuple[tuple[str, str], np.ndarray]]) -> list[dict]:
    """The held-out test split's metrics at every k = 1..top_k, stored as test_<metric>: each test sample's k
    nearest training samples in pixel space (``orig[distance]``, (M, K) ids of training samples) against its k
    nearest training codes (``enc``'s ((model, distance), (M, K)) pairs): score@k (the share kept), score@k by
    label, kNN accuracy (the training samples' labels voting for the test sample's own) and label agreement,
    as STUDY.md defines them with the test samples as the rows. ``labels`` None: only score@k."""
    top = top_k(cfg, n_train)
    ks = np.arange(1, top + 1)
    m_rows = len(next(iter(orig.values())))
    labelled = labels is not None and test_labels is not None
    classes = int(max(labels.max(), test_labels.max())) + 1 if labelled else 1
    own = test_labels if labelled else np.zeros(m_rows, np.uint8)
    per_label = np.bincount(own, minlength=classes)
    out: list[dict] = []

    def put(metric: str, space: str, distance: str, values: np.ndarray, label: int = -1) -> None:
        out.extend({"metric": TEST + metric, "space": space, "distance": distance, "k": int(k), "label": label,
                    "value": float(v)} for k, v in zip(ks, values, strict=True))

    for d, o in orig.items():
        if labelled:
            put("same_label_rate", db.ORIGINAL, d, M.same_label_curves(o, None, labels, own)["original_rate"])
            put("knn_accuracy", db.ORIGINAL, d, M.knn_accuracy_curve(o, labels, own))
    for (m, d), e in enc:
        o = orig[d]
        shared = M.overlap_sums(o, e, own, classes)
        put("score_at_k", m, d, shared.sum(axis=0) / m_rows / ks)
        if not labelled:
            continue
        la = M.same_label_curves(o, e, labels, own)
        put("same_label_rate", m, d, la["encoded_rate"])
        put("label_agreement_change", m, d, la["change"])
        put("label_agreement_distance", m, d, la["abs_change"])
        put("knn_accuracy", m, d, M.knn_accuracy_curve(e, labels, own))
        for label in np.flatnonzero(per_label):
            put("score_at_k_by_label", m, d, shared[label] / per_label[label] / ks, int(label))
    return out


def heldout_values(session: Session, experiment_id: int, cfg: StudyConfig, settings=None) -> list[dict]:
    """The held-out test split's metrics (:func:`heldout_metrics`) from its stored samples and codes: each test
    sample's exact top-K among the training samples, in pixel space and in every model's code space, computed
    here a block of test samples at a time (common/compute/placing.py: the tables' engine for bytes, a
    KD-tree proven by the tables' float64 formula for codes; ties to the lower id). Imports the kernels (and
    torch) when called."""
    from common.compute.placing import code_cross_table, pixel_cross_table

    exp = db.get_experiment(session=session, experiment_id=experiment_id)
    train, test = session.get(db.DatasetRow, exp.dataset_id), session.get(db.DatasetRow, exp.test_dataset_id)
    if test is None:
        raise LookupError(f"experiment {experiment_id}: its test split is not stored (split {cfg.split.value})")
    top = top_k(cfg, train.n)
    distances = [d.value for d in cfg.distances]
    x, xt = db.dataset_values(train), db.dataset_values(test)
    where = {"kernel": getattr(settings, "kernel", None), "cache_dir": getattr(settings, "cache_dir", None)}
    orig = {d: pixel_cross_table(x, xt, d, top, **where) for d in distances}
    del x
    rows = {r.name: r for r in db.list_models(session=session, experiment_id=experiment_id)}

    def enc():
        for m in (x.value for x in cfg.models):
            codes, placed = db.model_codes(rows[m]), db.model_test_codes(rows[m])
            if placed is None:
                raise LookupError(f"experiment {experiment_id}: {m} has not placed the test split")
            for d in distances:
                yield (m, d), code_cross_table(codes, placed, d, top)

    labelled = db.dataset_labelled(train) and db.dataset_labelled(test)
    labels = np.frombuffer(train.labels, np.uint8) if labelled else None
    test_labels = np.frombuffer(test.labels, np.uint8) if labelled else None
    return heldout_metrics(cfg, train.n, labels, test_labels, orig, enc())


def _ids(session: Session, experiment_id: int, space: str, d: str, width: int) -> np.ndarray:
    """The first ``width`` columns of a complete stored id table."""
    t = db.find_table(session=session, experiment_id=experiment_id, space=space, distance=d)
    if t is None:
        raise LookupError(f"experiment {experiment_id}: the {space}/{d} table is not complete")
    return db.load_table_ids(session=session, table_id=t.id, n=t.n, k=t.k, cols=min(width, t.k))


def _tables(session: Session, experiment_id: int, cfg: StudyConfig, width: int, spaces: list[str] | None = None):
    """Labels (None: the data came without them), the pixel-space id tables, and the code-space ones
    (``spaces``, default every model and every scored upload) as a generator that reads each table when it
    is reached; only the first ``width`` columns of each."""
    exp = db.get_experiment(session=session, experiment_id=experiment_id)
    labelled = session.scalar(db.select(db.DatasetRow.labelled).where(db.DatasetRow.id == exp.dataset_id))
    labels = db.dataset_labels(session=session, dataset_id=exp.dataset_id) if labelled is not False else None
    distances = [d.value for d in cfg.distances]
    orig = {d: _ids(session, experiment_id, db.ORIGINAL, d, width) for d in distances}
    names = spaces if spaces is not None else [m.value for m in cfg.models] + ready_uploads(session, experiment_id)
    enc = (((m, d), _ids(session, experiment_id, m, d, width)) for m in names for d in distances)
    return labels, orig, enc


def rank_sums_of(session: Session, experiment_id: int, cfg: StudyConfig, names: list[str], settings=None):
    """Exact-rank sums (common/study/ranking.py) of the spaces ``names``, from the stored points, codes and
    tables: every model's table of one distance is read at once, beside the pixel one."""
    from common.study.ranking import rank_sums

    exp = db.get_experiment(session=session, experiment_id=experiment_id)
    ds = session.get(db.DatasetRow, exp.dataset_id)
    top = top_k(cfg, ds.n)
    pixels = db.dataset_values(ds)  # writable, as torch wants its arrays
    rows = {r.name: r for r in db.list_models(session=session, experiment_id=experiment_id)}
    codes = {m: db.model_codes(rows[m]).copy() for m in names}
    out = {}
    for d in (x.value for x in cfg.distances):
        enc = {(m, d): _ids(session, experiment_id, m, d, top) for m in names}
        orig = {d: _ids(session, experiment_id, db.ORIGINAL, d, top)}
        out.update(rank_sums(pixels, codes, orig, enc, top, settings))
        del enc, orig
    return out


def store_metrics(factory: sessionmaker[Session], experiment_id: int, settings=None) -> None:
    """Compute and store every metric of an experiment at every k (replacing what was stored): its training
    split's, its held-out test split's, or both, as its config's split says. ``settings``: where the exact
    ranks are computed (common/study/ranking.py's RankSettings)."""
    with factory() as s:  # one table in memory at a time, beside the pixel-space ones
        exp = db.get_experiment(session=s, experiment_id=experiment_id)
        cfg = StudyConfig.model_validate(exp.config)
        n = s.get(db.DatasetRow, exp.dataset_id).n
        values = []
        if cfg.scores_train:
            names = [m.value for m in cfg.models] + ready_uploads(s, experiment_id)
            ranks = rank_sums_of(s, experiment_id, cfg, names, settings)
            labels, orig, enc = _tables(s, experiment_id, cfg, top_k(cfg, n))
            values = compute_metrics(cfg, labels, orig, enc, ranks)
            del orig, enc
        if cfg.scores_test:
            t0 = time.perf_counter()
            values += heldout_values(s, experiment_id, cfg, settings)
            if settings is not None:  # recorded as a stage's time, beside the rank passes'
                settings.seconds["metrics test split"] = time.perf_counter() - t0
    with db.transaction(factory) as s:
        db.save_metrics(session=s, experiment_id=experiment_id, values=values)
        db.update_experiment(session=s, experiment_id=experiment_id, metrics_all_k=True)


def store_space_metrics(factory: sessionmaker[Session], experiment_id: int, space: str) -> None:
    """Compute and store every metric of one code space (an upload) but the rank measures, replacing that
    space's only: read from its tables alone, in seconds (its rank measures follow: store_space_ranks)."""
    with factory() as s:
        exp = db.get_experiment(session=s, experiment_id=experiment_id)
        cfg = StudyConfig.model_validate(exp.config)
        n = s.get(db.DatasetRow, exp.dataset_id).n
        labels, orig, enc = _tables(s, experiment_id, cfg, top_k(cfg, n), [space])
        values = [v for v in compute_metrics(cfg, labels, orig, enc) if v["space"] == space]
    with db.transaction(factory) as s:
        db.save_metrics(session=s, experiment_id=experiment_id, values=values, space=space)


def has_rank_measures(session: Session, experiment_id: int, space: str) -> bool:
    return session.scalar(db.select(db.MetricValue.id).where(
        db.MetricValue.experiment_id == experiment_id, db.MetricValue.space == space,
        db.MetricValue.metric == RANK_MEASURES[0]).limit(1)) is not None


def store_space_ranks(factory: sessionmaker[Session], experiment_id: int, names: list[str], settings=None) -> None:
    """The rank measures of code spaces (uploads), from exact ranks (common/study/ranking.py: one pass over the
    pixels per distance, shared by every space given), replacing those spaces'; the experiment's revision is
    bumped, so cached answers about all its spaces are revalidated."""
    with factory() as s:
        exp = db.get_experiment(session=s, experiment_id=experiment_id)
        cfg = StudyConfig.model_validate(exp.config)
        n = s.get(db.DatasetRow, exp.dataset_id).n
        ranks = rank_sums_of(s, experiment_id, cfg, names, settings)
        labels, orig, enc = _tables(s, experiment_id, cfg, top_k(cfg, n), names)
        values = [v for v in compute_metrics(cfg, labels, orig, enc, ranks)
                  if v["space"] in names and v["metric"] in RANK_MEASURES]
    with db.transaction(factory) as s:
        for name in names:
            db.save_metrics(session=s, experiment_id=experiment_id, values=[v for v in values if v["space"] == name],
                            space=name, metrics=RANK_MEASURES)
        row = s.get(db.Experiment, experiment_id)
        row.revision = (row.revision or 0) + 1


def backfill(factory: sessionmaker[Session], experiment_id: int | None = None, settings=None) -> list[int]:
    """Store every metric at every k of the succeeded experiments marked for it (stored before every k, or
    before the rank measures, were: migration 0006 marks those): the one experiment asked for, or all of
    them; the exact ranks where ``settings`` (common/study/ranking.py's RankSettings) say. Returns the ids
    filled."""
    with factory() as s:
        ids = db.experiments_missing_k(session=s) if experiment_id is None else [experiment_id]
    for i in ids:
        store_metrics(factory, i, settings)
    return ids

"""The read side, shared by the command line and the API: the finished experiment a read is about, a
sample's neighbours, the metric tables, and the rule for k. Functions raise the domain errors of
common/errors.py (NotFound, NotReady, Invalid); the CLI turns them into exit codes, the API into statuses.

A succeeded experiment never changes (its config, data set and tables are final), so what identifies it
and its tables, and its data set's labels and pixels, are kept per process; "the latest succeeded
experiment" is looked up again at most once a second. Everything goes through the caller's session.
No torch.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.compute import pictures, placing
from common.compute.names import BY_LABEL_K, DEFAULT_MODEL, MODEL_NAMES
from common.errors import Invalid, NotFound, NotReady
from common.store import db
from common.study.embeddings import READY, UPLOADED, ready_uploads

MAX_ID = 2**31 - 1  # ids are 32-bit integers in PostgreSQL: anything larger cannot exist
LATEST_TTL = 1.0


@dataclass(frozen=True)
class Finished:
    """A succeeded experiment: what every read needs, without its rows."""

    id: int
    config: dict
    dataset_id: int
    n: int
    metrics_all_k: bool
    uploads: tuple[str, ...] = ()  # its scored uploads (common/study/embeddings.py), in upload order
    revision: int = 0  # bumped when a space is added: part of every ETag of its answers
    labelled: bool = True  # False: its data came without labels, so it has no label-based metric

    @property
    def models(self) -> list[str]:
        """Every code space: the config's models in the study's order, then the scored uploads."""
        return sorted(self.config["models"], key=study_order) + list(self.uploads)

    @property
    def top_k(self) -> int:
        """The largest k of its metrics: K, or N - 2 where that is smaller (R_NX needs k < N - 1)."""
        return top_k(int(self.config["k"]), self.n)

    def pairs(self, split: str = "train") -> list[tuple[str, str]]:
        """(model, distance) of every code table, in the study's order; of the test split, the study's models
        (an uploaded embedding holds codes of the training samples alone)."""
        models = self.models if split == "train" else sorted(self.config["models"], key=study_order)
        return [(m, d) for m in models for d in sorted(self.config["distances"])]

    @property
    def splits(self) -> list[str]:
        """The splits it scores: train, test, or both."""
        split = self.config.get("split", "train")
        return ["train", "test"] if split == "all" else [split]


def study_order(name: str) -> tuple[int, str]:
    """The sort key that lists models in the study's order (MODEL_NAMES), any other name after them."""
    return (MODEL_NAMES.index(name), name) if name in MODEL_NAMES else (len(MODEL_NAMES), name)


MRRE_DIRECTIONS = ("false", "missing")


def top_k(k: int, n: int) -> int:
    return min(k, n - 2)


def by_label_k(top: int) -> int:
    """The k of score@k by label when none is asked for: the study's 20, or the largest k stored below it."""
    return min(BY_LABEL_K, top)


_lock = threading.Lock()
_finished: dict[tuple[str, int], tuple[float, Finished]] = {}  # with when its revision was last checked
_tables: dict[tuple[str, int, str, str], tuple[int, int, int | None, str] | None] = {}
_latest: dict[str, tuple[float, int | None]] = {}
_datasets: OrderedDict[tuple[str, int], tuple[np.ndarray, np.ndarray | None]] = OrderedDict()
_codes: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()  # a model's codes as float64, the last eight


def forget() -> None:
    """Drop what this process keeps (as a new process would start)."""
    with _lock:
        _finished.clear(), _tables.clear(), _latest.clear(), _datasets.clear(), _codes.clear()


_keys: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _key(session: Session) -> str:
    """The database a session reads (its URL without the password), rendered once per engine."""
    bind = session.get_bind()
    key = _keys.get(bind)
    if key is None:
        key = str(bind.url)
        with _lock:
            _keys[bind] = key
    return key


def get_experiment(session: Session, experiment_id: int) -> db.Experiment | None:
    if not 1 <= experiment_id <= MAX_ID:
        return None
    return db.get_experiment(session=session, experiment_id=experiment_id)


def experiment(session: Session, experiment_id: int) -> db.Experiment:
    """Any experiment, or NotFound."""
    exp = get_experiment(session, experiment_id)
    if exp is None:
        raise NotFound(f"no experiment {experiment_id}")
    return exp


def finished(session: Session, experiment_id: int | None, fresh: bool = False) -> Finished:
    """The experiment asked for (it must have succeeded), or the latest that succeeded. What this process
    keeps of it is checked against its revision once a second, or at once when ``fresh`` (the metric
    tables, which an upload extends, read it so: one small read)."""
    key = _key(session)
    if experiment_id is None:
        at, found = _latest.get(key, (0.0, None))
        if time.monotonic() - at > LATEST_TTL:
            found = db.latest_experiment_id(session=session)
            _latest[key] = (time.monotonic(), found)
        if found is None:
            raise NotFound("no experiment has succeeded yet")
        experiment_id = found
    at, hit = _finished.get((key, experiment_id), (0.0, None))
    if hit is not None:
        if time.monotonic() - at <= LATEST_TTL and not fresh:
            return hit
        # an upload may have added a space since: one small read a second tells
        if session.scalar(select(db.Experiment.revision).where(db.Experiment.id == experiment_id)) == hit.revision:
            with _lock:
                _finished[(key, experiment_id)] = (time.monotonic(), hit)
            return hit
    exp = experiment(session, experiment_id)
    if exp.status != db.SUCCEEDED:
        raise NotReady(f"experiment {experiment_id} is {exp.status}: its tables are not complete yet")
    n, labelled = session.execute(select(db.DatasetRow.n, db.DatasetRow.labelled)
                                  .where(db.DatasetRow.id == exp.dataset_id)).one()
    out = Finished(exp.id, dict(exp.config), exp.dataset_id, int(n), bool(exp.metrics_all_k),
                   tuple(ready_uploads(session, exp.id)), int(exp.revision or 0), labelled is not False)
    if out.metrics_all_k:  # final: kept (one still being filled is looked up again)
        with _lock:
            _finished[(key, experiment_id)] = (time.monotonic(), out)
    return out


def table(session: Session, exp: Finished, space: str, distance: str) -> tuple[int, int] | None:
    """(table id, K) of a finished experiment's complete table, or None."""
    found = _table(session, exp, space, distance)
    return None if found is None else found[:2]


def _table(session: Session, exp: Finished, space: str, distance: str,
           ) -> tuple[int, int, int | None, str] | None:
    """(table id, K, its model's id, distance) of a finished experiment's complete table, or None."""
    key = (_key(session), exp.id, space, distance)
    if key not in _tables:
        t = db.find_table(session=session, experiment_id=exp.id, space=space, distance=distance)
        with _lock:
            _tables[key] = None if t is None else (t.id, t.k, t.model_id, t.distance)
    return _tables[key]


def stored_neighbors(session: Session, t: db.TableRow | tuple[int, int, int | None, str], dataset_id: int,
                     sample_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A sample's row of a table ((table id, K, model id) or its TableRow): ids, labels and distances,
    nearest first. A row that keeps its ids alone (common/store/db.py, NeighborRow) gets its labels from the
    data set and its distances computed again from the points in the tables' own arithmetic: exact integers
    for bytes (the square root for L2, in units of the models' [-1, 1] inputs), float64 one coordinate at a
    time for float values and codes, each rounded once to float32."""
    table_id, k, model_id, distance = (t.id, t.k, t.model_id, t.distance) if isinstance(t, db.TableRow) else t
    got = db.sample_neighbors(session=session, table_id=table_id, sample_id=sample_id, k=k)
    if got is None:
        raise NotFound(f"table {table_id} has no row for sample {sample_id}")
    ids, labs, dists = got
    if labs is not None:  # a row stored whole by an older aeknn
        return ids, labs, dists
    points = images(session, dataset_id) if model_id is None else _model_codes(session, model_id)
    return ids, labels(session, dataset_id)[ids], placing.exact_distances(points, ids, sample_id, distance)


def _model_codes(session: Session, model_id: int) -> np.ndarray:
    key = (_key(session), model_id)
    hit = _codes.get(key)
    if hit is None:
        row = session.execute(select(db.ModelRow.codes, db.ModelRow.code_dim)
                              .where(db.ModelRow.id == model_id)).one()
        hit = db.model_codes(row).astype(np.float64)
        with _lock:
            _codes[key] = hit
            while len(_codes) > 8:
                _codes.popitem(last=False)
    return hit


def _dataset(session: Session, dataset_id: int, pixels: bool,
             ) -> tuple[np.ndarray, np.ndarray | None, tuple, bool]:
    """A data set's labels (and pixels), one sample's shape and whether it came with labels, the last four
    kept: stored data never changes once written."""
    key = (_key(session), dataset_id)
    hit = _datasets.get(key)
    if hit is None or (pixels and hit[1] is None):
        row = session.get(db.DatasetRow, dataset_id)
        labels = np.frombuffer(row.labels, np.uint8).copy()
        images = db.dataset_values(row) if pixels else None
        hit = (labels, images, db.dataset_shape(row), db.dataset_labelled(row))
        with _lock:
            _datasets[key] = hit
            while len(_datasets) > 4:
                _datasets.popitem(last=False)
    return hit


def labels(session: Session, dataset_id: int) -> np.ndarray:
    return _dataset(session, dataset_id, False)[0]


def known_labels(session: Session, dataset_id: int) -> np.ndarray | None:
    """The labels, or None where the data came without them (stored as zeros)."""
    hit = _dataset(session, dataset_id, False)
    return hit[0] if hit[3] else None


def images(session: Session, dataset_id: int) -> np.ndarray:
    return _dataset(session, dataset_id, True)[1]


def unit_rows(session: Session, dataset_id: int, ids: list[int]) -> np.ndarray:
    """The samples' values as the models see them, in [-1, 1]: bytes as x/255*2-1, float data by the data
    set's smallest and largest value (as common/compute/data.py scales them). (len(ids), D) float32."""
    values = images(session, dataset_id)
    return pictures.unit_scaled(values[ids], values)


def picture_rows(session: Session, dataset_id: int, ids: list[int]) -> np.ndarray:
    """The samples' values as bytes to draw: as they are, or float data spread over 0..255 by their range."""
    values = images(session, dataset_id)
    if values.dtype == np.uint8:
        return values[ids]
    return np.rint((unit_rows(session, dataset_id, ids) + 1) / 2 * 255).astype(np.uint8)


def sample_shape(session: Session, dataset_id: int) -> tuple[int, ...]:
    """One sample's shape: (H, W) grey, (H, W, C) colour or (D,) values."""
    return _dataset(session, dataset_id, False)[2]


# ---------------------------------------------------------------- checks


def check_sample(exp: Finished | db.Experiment, n: int, sample_id: int) -> None:
    if not 0 <= sample_id < n:
        raise NotFound(f"sample {sample_id} is not in experiment {exp.id} (ids 0..{n - 1})")


def default_model(exp: Finished | db.Experiment) -> str:
    """The model a read shows when none is named: the study's default where the experiment has it, else
    the experiment's first in the study's order (every default follows the experiment it reads)."""
    models = models_of(exp)
    return DEFAULT_MODEL if DEFAULT_MODEL in models else models[0]


def models_of(exp: Finished | db.Experiment, session: Session | None = None) -> list[str]:
    """Its code spaces: the config's models in the study's order, then (once finished) its scored uploads
    (read with ``session`` for a stored experiment)."""
    if isinstance(exp, Finished):
        return exp.models
    uploads = ready_uploads(session, exp.id) if session is not None and exp.status == db.SUCCEEDED else []
    return sorted(exp.config["models"], key=study_order) + uploads


def check_model(exp: Finished | db.Experiment, model: str, session: Session | None = None) -> None:
    if model not in (names := models_of(exp, session)):
        raise NotFound(f"model: experiment {exp.id} has no model {model!r} (its models: {', '.join(names)})")


def check_distance(exp: Finished | db.Experiment, distance: str) -> None:
    if distance not in exp.config["distances"]:
        raise NotFound(f"distance: experiment {exp.id} has no {distance} tables (its distances: "
                       f"{', '.join(exp.config['distances'])})")


def check_ks(ks: list[int], top: int, field: str = "k") -> list[int]:
    """The k rule: each k in 1..top (the table's K, and below N - 1). Returns them sorted, without repeats."""
    bad = [k for k in ks if not 1 <= k <= top]
    if bad or not ks:
        raise Invalid(f"{field}: {bad or ks} must each be in 1..{top} (the table's K, and below N-1)")
    return sorted(set(ks))


def parse_ks(text: str, top: int, field: str = "k") -> list[int]:
    """k values written as a comma list, ranges a-b, or `all` (1..top), checked by :func:`check_ks`."""
    ks: list[int] = []
    for part in text.replace(" ", "").split(","):
        if part == "all":
            ks.extend(range(1, top + 1))
        elif "-" in part.strip("-") and all(p.isdigit() for p in part.split("-")):
            a, b = (int(x) for x in part.split("-"))
            ks.extend(range(min(a, b), max(a, b) + 1))  # 50-5 is 5..50
        elif part.isdigit():
            ks.append(int(part))
        elif part:
            raise Invalid(f"{field}: {part!r} is not a whole number, a range a-b or `all`")
    return check_ks(ks, top, field)


# ---------------------------------------------------------------- a sample's neighbours


def neighbors(session: Session, exp: Finished, sample_id: int, *, space: str, model: str | None,
              distance: str, k: int) -> dict:
    """A sample's k nearest in pixel space (``space`` "original") or in a model's code space: its id and
    label, then k rows of rank, id, label and distance."""
    check_sample(exp, exp.n, sample_id)
    model = default_model(exp) if model is None else model
    name = db.ORIGINAL if space == "original" else model
    if space != "original":
        if model not in exp.models:  # an upload scored in the last second: look again before a 404
            exp = finished(session, exp.id, fresh=True)
        check_model(exp, model)
    check_distance(exp, distance)
    found = table(session, exp, name, distance)
    if found is None:
        raise NotReady(f"experiment {exp.id} has no complete {name}/{distance} table")
    _, big_k = found
    if not 1 <= k <= big_k:
        raise Invalid(f"k: must be in 1..{big_k} (the table's K), got {k}")
    ids, labs, dists = stored_neighbors(session, _table(session, exp, name, distance), exp.dataset_id, sample_id)
    own = int(labels(session, exp.dataset_id)[sample_id]) if exp.labelled else None
    if not exp.labelled:
        labs = np.full(len(labs), None, object)
    return {"experiment": exp.id, "sample": {"id": sample_id, "label": own}, "space": space,
            "model": None if space == "original" else model, "distance": distance, "k": k,
            "neighbors": [{"rank": r + 1, "id": i, "label": lab, "distance": d} for r, (i, lab, d) in
                          enumerate(zip(ids[:k].tolist(), labs[:k].tolist(), dists[:k].tolist(), strict=True))]}


# ---------------------------------------------------------------- the metric tables


def _stored(session: Session, exp: Finished, ks: list[int]) -> None:
    """NotReady for a k an experiment stored before every k was (a worker is filling the rest)."""
    if exp.metrics_all_k:
        return
    have = db.stored_ks(session=session, experiment_id=exp.id)
    missing = [x for x in ks if x not in have]
    if missing:
        raise NotReady(f"k: experiment {exp.id} was stored with k in {sorted(have)} only; a worker is filling in "
                       f"every other k (or run `aeknn metrics --backfill --experiment {exp.id}`), so {missing} "
                       "will be there shortly")


HELDOUT = ("score_at_k", "score_at_k_by_label", "knn_accuracy", "label_agreement")  # the test split's tables


def check_split(exp: Finished, split: str, what: str = "score_at_k") -> None:
    """NotFound unless the experiment scored ``split`` (and, of the test split, the metric ``what``)."""
    if split not in exp.splits:
        if split == "test":
            raise NotFound(f"split: experiment {exp.id} scored its training split only (its split is train); a "
                           "study with \"split\": \"test\" or \"all\" scores the held-out test split")
        raise NotFound(f"split: experiment {exp.id} scored its held-out test split only (its split is test): "
                       "ask with split=test")
    if split == "test" and what not in HELDOUT:
        raise NotFound(f"split: the held-out test split is scored by {', '.join(HELDOUT)}; {what} needs the test "
                       "samples' own neighbour tables (ask it of the training split)")


def _values(session: Session, exp: Finished, metric: str, ks: list[int], split: str = "train") -> dict[tuple, float]:
    name = metric if split == "train" else f"test_{metric}"
    return {(v.space, v.distance, v.k, v.label): v.value
            for v in db.load_metrics(session=session, experiment_id=exp.id, metric=name, ks=ks)}


def check_labelled(exp: Finished, what: str) -> None:
    """NotFound for a label-based metric of an experiment whose data came without labels."""
    if not exp.labelled:
        raise NotFound(f"experiment {exp.id}: its data came without labels, so it has no {what}")


def value_rows(session: Session, exp: Finished, metric: str, ks: list[int], split: str = "train") -> list[dict]:
    """score_at_k, r_nx, trustworthiness, continuity, lcmc (a row per model and distance) or knn_accuracy
    (the pixel space too): each row's value at every k of ``ks`` (None where it is not defined: the rank
    measures need k < N / 2, or where the experiment was scored before the measure was stored). ``split``
    test: the held-out test split's (score_at_k and knn_accuracy)."""
    check_split(exp, split, metric)
    _stored(session, exp, ks)
    if metric == "knn_accuracy":
        check_labelled(exp, "kNN accuracy")
    v = _values(session, exp, metric, ks, split)
    if metric == "knn_accuracy":
        models = exp.models if split == "train" else sorted(exp.config["models"], key=study_order)
        pairs = [(s, d) for s in [db.ORIGINAL, *models] for d in sorted(exp.config["distances"])]
    else:
        pairs = exp.pairs(split)
    return [{"space": s, "distance": d, "values": {k: v.get((s, d, k, -1)) for k in ks}} for s, d in pairs]


def mrre_rows(session: Session, exp: Finished, ks: list[int]) -> list[dict]:
    """MRRE both ways, a row per model, distance and direction (``false``: the code-space neighbours'
    relative rank errors; ``missing``: the pixel-space neighbours'), each at every k of ``ks``."""
    check_split(exp, "train")
    _stored(session, exp, ks)
    v = {d: _values(session, exp, f"mrre_{d}", ks) for d in MRRE_DIRECTIONS}
    return [{"space": m, "distance": d, "direction": way, "values": {k: v[way].get((m, d, k, -1)) for k in ks}}
            for m, d in exp.pairs() for way in MRRE_DIRECTIONS]


def auc_rows(session: Session, exp: Finished) -> list[dict]:
    """The area under R_NX with log-k weights over k = 1..K, one per model and distance."""
    check_split(exp, "train")
    v = {(m.space, m.distance): m.value for m in db.load_metrics(session=session, experiment_id=exp.id,
                                                                 metric="auc_rnx", ks=[exp.top_k])}
    return [{"space": m, "distance": d, "k_max": exp.top_k, "value": v.get((m, d))} for m, d in exp.pairs()]


def agreement_rows(session: Session, exp: Finished, ks: list[int], split: str = "train") -> list[dict]:
    """Both same-label rates, their change (encoded - original) and mean |change|, per model, distance, k."""
    check_split(exp, split, "label_agreement")
    check_labelled(exp, "label agreement")
    _stored(session, exp, ks)
    rate = _values(session, exp, "same_label_rate", ks, split)
    change = _values(session, exp, "label_agreement_change", ks, split)
    dist = _values(session, exp, "label_agreement_distance", ks, split)
    return [{"model": m, "distance": d, "k": x, "original_rate": rate.get((db.ORIGINAL, d, x, -1)),
             "encoded_rate": rate.get((m, d, x, -1)), "change": change.get((m, d, x, -1)),
             "abs_change": dist.get((m, d, x, -1))} for m, d in exp.pairs(split) for x in ks]


def by_label_rows(session: Session, exp: Finished, k: int, split: str = "train") -> list[dict]:
    """score@k over the samples of each label, per model and distance."""
    check_split(exp, split, "score_at_k_by_label")
    check_labelled(exp, "score@k by label")
    check_ks([k], exp.top_k)
    v = _values(session, exp, "score_at_k_by_label", [k], split)
    if not v:
        stored = sorted(db.stored_ks(session=session, experiment_id=exp.id))
        shown = f"1..{stored[-1]}" if stored == list(range(1, len(stored) + 1)) else str(stored)
        raise Invalid(f"k: experiment {exp.id} stores score@k by label at k in {shown}, got {k}")
    return [{"model": m, "distance": d, "k": k,
             "by_label": {str(key[3]): val for key, val in sorted(v.items()) if key[:3] == (m, d, k)}}
            for m, d in exp.pairs(split)]


def model_row(session: Session, exp: Finished | db.Experiment, model: str | None) -> db.ModelRow:
    """A trained model of an experiment (its codes, weights, reconstructions; by default the experiment's
    default model), or NotFound / NotReady."""
    model = default_model(exp) if model is None else model
    if isinstance(exp, Finished) and model not in exp.models:  # an upload scored in the last second
        exp = finished(session, exp.id, fresh=True)
    check_model(exp, model, session)
    row = next((m for m in db.list_models(session=session, experiment_id=exp.id) if m.name == model), None)
    if row is None or not _shown(row):
        raise NotReady(f"experiment {exp.id}: model {model} is not trained yet")
    return row


# ---------------------------------------------------------------- what the routes and commands show

Experiment = db.Experiment  # the stored experiment (its status, config, timings): for type hints


def is_final(exp: Finished | db.Experiment) -> bool:
    """Whether the experiment succeeded: its answers never change from then on."""
    return isinstance(exp, Finished) or exp.status == db.SUCCEEDED


def experiment_page(session: Session, *, page: int, per_page: int) -> tuple[list[db.Experiment], int]:
    """One page of experiments, newest first, and how many there are."""
    return db.list_experiments(session=session, offset=(page - 1) * per_page, limit=per_page)


def experiment_lines(session: Session, limit: int) -> tuple[list[dict], int]:
    """The newest ``limit`` experiments, each as its id, status, stage, data, models and key settings; and
    how many there are."""
    rows, total = experiment_page(session, page=1, per_page=limit)
    return [{"id": e.id, "status": e.status, "stage": e.stage, "created_at": str(e.created_at)[:19],
             "dataset": e.config.get("dataset") or e.config["data"], "n": e.config.get("limit") or "all",
             "models": e.config["models"],
             "epochs": e.config["epochs"], "seed": e.config["seed"], "k": e.config["k"]} for e in rows], total


def trained_models(session: Session, exp: Finished | db.Experiment, model: str | None = None) -> list[db.ModelRow]:
    """The model asked for, or every model of the experiment with codes, in the study's order; NotReady when
    none is trained yet."""
    if model is not None:
        return [model_row(session, exp, model)]
    rows = [m for m in db.list_models(session=session, experiment_id=exp.id) if _shown(m)]
    if not rows:
        raise NotReady(f"experiment {exp.id} has no trained model yet")
    return sorted(rows, key=lambda m: study_order(m.name))


def _shown(m: db.ModelRow) -> bool:
    """Whether a model row is shown: it has codes, and if it is an upload, it is scored."""
    return m.codes is not None and (m.source != UPLOADED or m.state == READY)


def codes(row: db.ModelRow) -> np.ndarray:
    """A model's codes: (N, 2) float32, or an upload's (N, m) float64 as it was given."""
    return db.model_codes(row)


def map_codes(row: db.ModelRow) -> np.ndarray:
    """What the map draws, (N, 2) float32: a model's codes; an upload's wider codes projected on their
    first two principal components (signs fixed: each axis's largest loading positive); a 1-D upload's
    codes as x with y = 0."""
    c = db.model_codes(row)
    if c.shape[1] == 2:
        return c.astype(np.float32)
    if c.shape[1] == 1:
        return np.hstack([c, np.zeros_like(c)]).astype(np.float32)
    centred = c - c.mean(axis=0)
    _, vecs = np.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    top = vecs[:, ::-1][:, :2]
    top *= np.where(top[np.abs(top).argmax(axis=0), [0, 1]] < 0, -1.0, 1.0)
    return (centred @ top).astype(np.float32)


def map_note(row: db.ModelRow) -> str | None:
    """How the map shows a model's codes when they are not 2-D (None when they are)."""
    dim = row.code_dim or 2
    if dim == 2:
        return None
    return "1-D codes: x is the code, y is 0" if dim == 1 else \
        f"{dim}-D codes: the first two principal components"


def sample_codes(session: Session, exp: Finished, sample_id: int) -> dict[str, list[float]]:
    """A sample's code under each model of the experiment that has codes (an upload's, all m values)."""
    check_sample(exp, exp.n, sample_id)
    return {m.name: [float(v) for v in db.model_codes(m)[sample_id]]
            for m in db.list_models(session=session, experiment_id=exp.id) if _shown(m)}


def losses(session: Session, exp: Finished | db.Experiment) -> dict[str, list[float]]:
    """The mean loss of every finished epoch, per model (a reference map has none; an upload is not shown)."""
    rows = sorted(db.list_models(session=session, experiment_id=exp.id), key=lambda m: study_order(m.name))
    return {m.name: list(m.losses or []) for m in rows if m.source != UPLOADED}


def stored_plot(session: Session, exp: Finished | db.Experiment, name: str, model: str) -> bytes | None:
    """A plot an older aeknn drew and stored, if there is one."""
    return db.get_plot(session=session, experiment_id=exp.id, name=name, model=model)


# ---------------------------------------------------------------- two spaces compared


def row_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each row, how many ids the two (N, k) id tables share (each row's ids are distinct)."""
    both = np.sort(np.concatenate([a, b], axis=1), axis=1)
    return (both[:, 1:] == both[:, :-1]).sum(axis=1)


def compare(session: Session, exp: Finished, models: list[str], distance: str, k: int, worst: int = 20) -> dict:
    """How often two spaces' k-neighbourhoods agree: the mean share of each sample's k neighbours they have
    in common, overall and per label (none for data without labels), and the ``worst`` samples where they
    differ most (lowest share, lower id first), each with how much of its pixel-space neighbourhood either
    space keeps."""
    if len(models) != 2:
        raise Invalid(f"models: name two models, like relu_mse,pca (got {','.join(models)})")
    for m in models:
        check_model(exp, m)
    check_distance(exp, distance)
    check_ks([k], exp.top_k)
    ids = {}
    for space in (*models, db.ORIGINAL):
        found = table(session, exp, space, distance)
        if found is None:
            raise NotReady(f"experiment {exp.id} has no complete {space}/{distance} table")
        ids[space] = db.load_table_ids(session=session, table_id=found[0], n=exp.n, k=found[1], cols=k)
    shared = row_overlap(ids[models[0]], ids[models[1]]) / k
    kept = [row_overlap(ids[db.ORIGINAL], ids[m]) / k for m in models]
    labs = known_labels(session, exp.dataset_id)
    order = np.lexsort((np.arange(exp.n), shared))[:worst]
    return {"experiment": exp.id, "models": models, "distance": distance, "k": k,
            "agreement": float(shared.mean()),
            "by_label": {} if labs is None else {str(int(lab)): float(shared[labs == lab].mean())
                                                 for lab in np.unique(labs)},
            "differ_most": [{"id": int(i), "label": None if labs is None else int(labs[i]),
                             "agreement": float(shared[i]),
                             "kept": {m: float(kept[j][i]) for j, m in enumerate(models)}} for i in order]}

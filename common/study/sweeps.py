"""Sweeps: one base study and a grid over some of its fields, run as ordinary experiments.

A sweep expands into one experiment per grid point; each is readable through every endpoint as any
other. A grid point whose config already ran (or is running) is not run again: that experiment is
reused. The pixel-space tables are shared by every experiment on the same data (they belong to the
data set). The aggregates group the points by everything but the seed and give, for every metric, the
mean, the standard deviation, the minimum and the maximum over the seeds. No torch.
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from common.errors import Invalid, NotFound
from common.settings import Settings
from common.store import db
from common.study import jobs, submissions
from common.study.config import StudyConfig, error_text

GRID_FIELDS = ("dataset", "models", "epochs", "batch_size", "lr", "weight_decay", "seed")
MAX_POINTS = 256
METRICS = ("score_at_k", "r_nx", "knn_accuracy", "same_label_rate", "label_agreement_change",
           "label_agreement_distance", "score_at_k_by_label", "trustworthiness", "continuity", "mrre_false",
           "mrre_missing", "lcmc", "auc_rnx",
           # the held-out test split's, of a sweep whose base has "split": "test" or "all"
           "test_score_at_k", "test_knn_accuracy", "test_same_label_rate", "test_label_agreement_change",
           "test_label_agreement_distance", "test_score_at_k_by_label")


def expand(base: dict[str, Any], grid: dict[str, list]) -> list[StudyConfig]:
    """Every grid point's config, in the grid's order (the last field varies fastest). Everything is
    checked before anything is stored; Invalid names the field and the value."""
    try:
        StudyConfig(**base)
    except ValidationError as exc:
        e = exc.errors()[0]
        raise Invalid(f"base.{'.'.join(str(p) for p in e['loc'])}: {error_text(e)}") from None
    if not grid:
        raise Invalid("grid: empty; give at least one field and its values, e.g. {\"seed\": [0, 1, 2]}")
    for field, values in grid.items():
        if field not in GRID_FIELDS:
            raise Invalid(f"grid.{field}: not a field a sweep varies (one of {', '.join(GRID_FIELDS)})")
        if not isinstance(values, list) or not values:
            raise Invalid(f"grid.{field}: give a non-empty list of values, got {values!r}")
        seen = [json.dumps(v, sort_keys=True) for v in values]
        if len(set(seen)) != len(seen):
            raise Invalid(f"grid.{field}: a value is repeated in {values!r}")
    size = math.prod(len(v) for v in grid.values())
    if size > MAX_POINTS:
        raise Invalid(f"grid: {size} points, more than the {MAX_POINTS} a sweep may have")
    configs = []
    for combo in itertools.product(*grid.values()):
        point = dict(zip(grid, combo, strict=True))
        try:
            configs.append(StudyConfig(**{**base, **point}))
        except ValidationError as exc:
            e = exc.errors()[0]
            field = ".".join(str(p) for p in e["loc"]) or "config"
            raise Invalid(f"grid point {json.dumps(point)}: {field}: {error_text(e)}") from None
    return configs


def unfinished(session: Session, sweep_id: int) -> list[int]:
    """The sweep's experiments that have not succeeded and were not cancelled, each once, in order."""
    return list(dict.fromkeys(e.id for _, e in points(session, sweep_id)[1]
                              if e.status not in (db.SUCCEEDED, db.CANCELLED)))


def group_key(config: dict[str, Any], grid: dict[str, list]) -> dict[str, Any]:
    """What a grid point is, seeds aside: its values of the varied fields other than the seed."""
    return {f: config[f] for f in grid if f != "seed"}


def create(factory: sessionmaker[Session], settings: Settings, base: dict[str, Any], grid: dict[str, list], *,
           queue: bool, app=None, idempotency_key: str | None = None) -> tuple[int, list[int]]:
    """Record a sweep and its points; with ``queue``, send every new experiment to the workers (all or
    nothing: BrokerUnavailable keeps nothing). Returns the sweep's id and the ids of the new experiments.

    A point whose config matches an experiment that succeeded or is pending reuses it. A sweep counts as
    one submission against AEKNN_MAX_PENDING (common/study/submissions.py)."""
    configs = expand(base, grid)
    new: list[int] = []
    with db.transaction(factory) as s:
        db.serialize(session=s, name="submit")
        if idempotency_key is not None:
            found = s.scalar(select(db.SweepRow).where(db.SweepRow.idempotency_key == idempotency_key))
            if found is not None:
                if (found.base, found.grid) != (StudyConfig(**base).as_json(), grid):
                    raise Invalid(f"Idempotency-Key {idempotency_key!r} was used for another sweep ({found.id})")
                return found.id, []
        if queue:
            pending = submissions.pending_submissions(s)
            if pending >= settings.max_pending:
                raise submissions.TooManyPending(pending, settings.max_pending)
        known = {json.dumps(e.config, sort_keys=True): e.id for e in s.scalars(
            select(db.Experiment).where(db.Experiment.status.in_([*db.PENDING, db.SUCCEEDED]))
            .order_by(db.Experiment.id))}
        sweep = db.SweepRow(base=StudyConfig(**base).as_json(), grid=grid, idempotency_key=idempotency_key)
        s.add(sweep)
        s.flush()
        for i, cfg in enumerate(configs):
            body = cfg.as_json()
            key = json.dumps(body, sort_keys=True)
            reused = key in known
            if not reused:
                known[key] = db.create_experiment(session=s, config=body,
                                                  status=db.SUBMITTING if queue else db.QUEUED)
                new.append(known[key])
            s.add(db.SweepPoint(sweep_id=sweep.id, index=i, config=body, experiment_id=known[key], reused=reused))
        sweep_id = sweep.id
    if queue and new:
        client = app or jobs.broker_client(settings)
        try:
            for eid in new:
                jobs.send(client, jobs.ADVANCE, eid)
        except jobs.BrokerUnavailable:
            with db.transaction(factory) as s:  # not accepted: nothing of it stays
                s.execute(delete(db.SweepRow).where(db.SweepRow.id == sweep_id))
                s.execute(delete(db.Experiment).where(db.Experiment.id.in_(new)))
            raise
        with db.transaction(factory) as s:
            s.execute(update(db.Experiment).where(db.Experiment.id.in_(new),
                                                  db.Experiment.status == db.SUBMITTING).values(status=db.QUEUED))
    return sweep_id, new


def points(s: Session, sweep_id: int) -> tuple[db.SweepRow, list[tuple[db.SweepPoint, db.Experiment]]]:
    sweep = s.get(db.SweepRow, sweep_id) if 1 <= sweep_id < 2**31 else None
    if sweep is None:
        raise NotFound(f"no sweep {sweep_id}")
    rows = s.execute(select(db.SweepPoint, db.Experiment)
                     .join(db.Experiment, db.Experiment.id == db.SweepPoint.experiment_id)
                     .where(db.SweepPoint.sweep_id == sweep_id).order_by(db.SweepPoint.index)).all()
    return sweep, [(p, e) for p, e in rows]


def recent_ids(s: Session, limit: int) -> list[int]:
    return list(s.scalars(select(db.SweepRow.id).order_by(db.SweepRow.id.desc()).limit(limit)))


def status_of(statuses: list[str]) -> str:
    if all(x == db.SUCCEEDED for x in statuses):
        return db.SUCCEEDED
    if any(x == db.FAILED for x in statuses):
        return db.FAILED
    if any(x == db.CANCELLED for x in statuses) and not any(x in db.PENDING for x in statuses):
        return db.CANCELLED
    return db.RUNNING if any(x in (db.RUNNING, db.SUCCEEDED) for x in statuses) else db.QUEUED


def describe(s: Session, sweep_id: int) -> dict[str, Any]:
    """The sweep, its status (from its experiments'), and its points grouped by everything but the seed."""
    sweep, rows = points(s, sweep_id)
    groups: dict[str, dict] = {}
    for p, e in rows:
        key = group_key(p.config, sweep.grid)
        g = groups.setdefault(json.dumps(key, sort_keys=True), {"point": key, "seeds": [], "experiments": []})
        g["seeds"].append(p.config["seed"])
        g["experiments"].append(e.id)
    return {"id": sweep.id, "created_at": sweep.created_at, "base": sweep.base, "grid": sweep.grid,
            "status": status_of([e.status for _, e in rows]),
            "points": [{"index": p.index, "experiment": e.id, "status": e.status, "reused": p.reused,
                        "config": {f: p.config[f] for f in sweep.grid}} for p, e in rows],
            "groups": list(groups.values()),
            "done": sum(e.status == db.SUCCEEDED for _, e in rows), "total": len(rows)}


def cancel(factory: sessionmaker[Session], sweep_id: int) -> int:
    """Cancel every pending experiment this sweep made (reused ones belong to whoever made them)."""
    with factory() as s:
        _, rows = points(s, sweep_id)
        mine = [e.id for p, e in rows if not p.reused and e.status in db.PENDING]
    for eid in mine:
        submissions.cancel(factory, eid)
    return len(mine)


def aggregate(s: Session, sweep_id: int, metric: str, ks: list[int], label_k: int | None = None) -> list[dict]:
    """For each grid point (seeds aside), each space and distance and k (and label): the mean, standard
    deviation (n - 1; 0 for one run), minimum and maximum over the seeds that succeeded, and n."""
    if metric not in METRICS:
        raise Invalid(f"metric: {metric!r} is not one of {', '.join(METRICS)}")
    info = describe(s, sweep_id)
    status = {p["experiment"]: p["status"] for p in info["points"]}
    out = []
    for g in info["groups"]:
        done = [e for e in g["experiments"] if status[e] == db.SUCCEEDED]
        seeds = [seed for seed, e in zip(g["seeds"], g["experiments"], strict=True) if status[e] == db.SUCCEEDED]
        values: dict[tuple, list[float]] = {}
        for eid in done:
            want = [label_k] if metric.endswith("score_at_k_by_label") and label_k else ks
            # the AUC of R_NX is one number per run, stored at its K: every k asked is ignored
            for v in db.load_metrics(session=s, experiment_id=eid, metric=metric,
                                     ks=None if metric == "auc_rnx" else want):
                values.setdefault((v.space, v.distance, v.k, v.label), []).append(v.value)
        for (space, distance, k, label), vs in sorted(values.items(), key=lambda kv: _order(kv[0])):
            mean = sum(vs) / len(vs)
            # the sample sd; of one run it is undefined (None), not 0
            sd = math.sqrt(sum((v - mean) ** 2 for v in vs) / (len(vs) - 1)) if len(vs) > 1 else None
            out.append({"point": g["point"], "space": space, "distance": distance, "k": k,
                        **({"label": label} if label >= 0 else {}), "mean": mean, "sd": sd, "min": min(vs),
                        "max": max(vs), "n": len(vs), "seeds": seeds})
    return out


def _order(key: tuple) -> tuple:
    from common.compute.names import MODEL_NAMES

    space, distance, k, label = key
    return (MODEL_NAMES.index(space) + 1 if space in MODEL_NAMES else 0, distance, k, label)

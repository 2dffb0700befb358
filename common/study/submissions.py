"""Submitting, cancelling and describing experiments: what the CLI and the API share. No torch."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from common.compute import kernels
from common.compute.names import (
    KEEP_EARLY_ITERATIONS,
    KEEP_LATE_ITERATIONS,
    KEEP_MODELS,
    REFERENCE_MAPS,
    keep_encoder_epochs,
    model_kind,
)
from common.settings import Settings
from common.store import db as db
from common.study import datasets, embeddings, jobs
from common.study.config import StudyConfig

CANCELLED = db.CANCELLED  # what cancel() returns when it cancelled


class TooManyPending(RuntimeError):
    """The cap on pending experiments (AEKNN_MAX_PENDING) is reached; nothing was stored."""

    def __init__(self, pending: int, limit: int, retry_after: int = 30) -> None:
        super().__init__(f"{pending} submissions (experiments, a sweep counting once) are queued or running, the "
                         f"most this server takes at once (AEKNN_MAX_PENDING={limit}); try again once one has finished")
        self.retry_after = retry_after


class KeyReused(ValueError):
    """An Idempotency-Key already used for another study; nothing was stored."""


WAIT_FOR_SUBMITTER = 15.0  # seconds a request waits for a concurrent submission of the same study


def submit(factory: sessionmaker[Session], settings: Settings, config: StudyConfig, app=None,
           idempotency_key: str | None = None) -> int:
    """Record an experiment and send its first task, all or nothing; returns its id.

    - An ``idempotency_key`` used before returns that experiment (KeyReused if its study differs), and
      so does an identical study already pending: nothing is queued twice.
    - At most ``settings.max_pending`` experiments may be pending: TooManyPending past it.
    - The experiment is "submitting" until its first task is sent, then "queued". If the task cannot be
      sent (BrokerUnavailable when the broker cannot be reached, or any other error) it is removed and
      the error raised: no one is ever told about an experiment that is then removed. A request that
      finds another one's submission in flight waits for its outcome.
    Reads and writes of one submission are serialised in the database, so the cap holds across processes.
    """
    body = config.as_json()
    with db.transaction(factory) as s:
        datasets.check_study(s, config)  # an upload it names: stored, and large enough
        db.serialize(session=s, name="submit")
        found = _existing(s, body, idempotency_key)
        if found is None:
            pending = pending_submissions(s)  # a sweep's experiments count once
            if pending >= settings.max_pending:
                raise TooManyPending(pending, settings.max_pending)
            experiment_id = db.create_experiment(session=s, config=body, idempotency_key=idempotency_key,
                                                 status=db.SUBMITTING)
    if found is not None:
        return _wait_until_sent(factory, found)
    try:
        jobs.send(app or jobs.broker_client(settings), jobs.ADVANCE, experiment_id)
    except BaseException:  # the broker unreachable, or anything else: not accepted, so nothing is kept
        with db.transaction(factory) as s:  # (a record left "submitting" would wait forever and hold a place)
            s.execute(delete(db.Experiment).where(db.Experiment.id == experiment_id,
                                                  db.Experiment.status == db.SUBMITTING))
        raise
    with db.transaction(factory) as s:  # (its first task may have moved it on already)
        s.execute(update(db.Experiment).where(db.Experiment.id == experiment_id,
                                              db.Experiment.status == db.SUBMITTING).values(status=db.QUEUED))
    return experiment_id


def by_key(factory: sessionmaker[Session], key: str) -> int | None:
    """The experiment submitted with this Idempotency-Key, if any."""
    with factory() as s:
        return db.experiment_by_key(session=s, idempotency_key=key)


def active(factory: sessionmaker[Session]) -> list[int]:
    """The experiments queued or running."""
    with factory() as s:
        return db.active_experiment_ids(session=s)


def pending_submissions(s: Session) -> int:
    """Pending experiments, a sweep's counting once: what AEKNN_MAX_PENDING bounds."""
    in_sweeps = select(db.SweepPoint.experiment_id)
    alone = s.scalars(select(db.Experiment.id).where(db.Experiment.status.in_(db.PENDING),
                                                     db.Experiment.id.not_in(in_sweeps))).all()
    sweeps = s.scalars(select(db.SweepPoint.sweep_id)
                       .join(db.Experiment, db.Experiment.id == db.SweepPoint.experiment_id)
                       .where(db.Experiment.status.in_(db.PENDING)).distinct()).all()
    return len(alone) + len(sweeps)


def _existing(s: Session, body: dict[str, Any], key: str | None) -> int | None:
    """The experiment this submission is a repeat of: the same key, or the same study still pending."""
    if key is not None:
        found = db.experiment_by_key(session=s, idempotency_key=key)
        if found is not None:
            if db.get_experiment(session=s, experiment_id=found).config != body:
                raise KeyReused(f"Idempotency-Key {key!r} was used for another study (experiment {found}); "
                                "use a new key for a new study")
            return found
    return next((e.id for e in db.pending_experiments(session=s) if e.config == body), None)


def _wait_until_sent(factory: sessionmaker[Session], experiment_id: int) -> int:
    """Return the experiment once its submission has been sent; BrokerUnavailable if it was removed."""
    deadline = time.monotonic() + WAIT_FOR_SUBMITTER
    while True:
        with factory() as s:
            exp = db.get_experiment(session=s, experiment_id=experiment_id)
            status = None if exp is None else exp.status
        if status is None:
            raise jobs.BrokerUnavailable("the same study was being submitted at the same moment "
                                         "and its first task could not be sent (the broker is unreachable)")
        if status != db.SUBMITTING:
            return experiment_id
        if time.monotonic() > deadline:
            raise jobs.BrokerUnavailable(f"experiment {experiment_id} is still being submitted "
                                         "by another request; try again")
        time.sleep(0.05)


def cancel(factory: sessionmaker[Session], experiment_id: int) -> str | None:
    """Cancel a queued or running experiment. Returns its status afterwards (None if unknown). Its queued
    work items close with it; a running one closes when its worker stops it, within one task."""
    with db.transaction(factory) as s:
        exp = db.get_experiment(session=s, experiment_id=experiment_id)
        if exp is None:
            return None
        if exp.status in db.PENDING:
            db.update_experiment(session=s, experiment_id=experiment_id, status=db.CANCELLED,
                                 error="cancelled by request", finished_at=db.utcnow())
            db.close_items(session=s, experiment_id=experiment_id, reason="cancelled by request")
            return db.CANCELLED
        return exp.status


def _epochs(model: str, epochs: int) -> int:
    """The epochs a model's progress counts: a map is fitted once; relu_keep counts its encoder's."""
    return 1 if model in REFERENCE_MAPS else keep_encoder_epochs(epochs) if model in KEEP_MODELS else epochs


def _phases(model: str, epochs: int) -> str | None:
    if model not in KEEP_MODELS:
        return None
    first = keep_encoder_epochs(epochs)
    iterations = KEEP_EARLY_ITERATIONS + KEEP_LATE_ITERATIONS
    return (f"its encoder trains {first} epoch{'s' * (first != 1)}, then its map of the training codes is "
            f"refined under t-SNE's objective, {iterations:,} iterations (not counted in the epochs; done when "
            "the model is trained)")


def describe(session: Session, experiment_id: int) -> dict[str, Any] | None:
    """Status, stage, each model's epoch and latest loss, chunks done/total, attempts, error, timings."""
    exp = db.get_experiment(session=session, experiment_id=experiment_id)
    if exp is None:
        return None
    rows = db.list_models(session=session, experiment_id=experiment_id)
    models = [{"name": m.name, "kind": model_kind(m.name), "epochs_done": m.epochs_done,
               "epochs": _epochs(m.name, exp.config["epochs"]), "phases": _phases(m.name, exp.config["epochs"]),
               "loss": m.losses[-1] if m.losses else None, "trained": m.codes is not None}
              for m in rows if m.source != embeddings.UPLOADED]
    spaces = [{"name": m.name, **embeddings.describe_space(m)} for m in rows]
    tables = []
    for t in db.experiment_tables(session=session, experiment_id=experiment_id):
        tables.append({"space": t.space, "distance": t.distance, "complete": t.complete,
                       "chunks_done": len(db.done_chunks(session=session, table_id=t.id)),
                       "chunks_total": len(db.table_chunks(t)), "seconds": t.seconds,
                       "compute_seconds": t.compute_seconds,
                       **kernels.throughput(t.path, t.distance, t.n, t.compute_seconds, t.work)})
    items = db.items_of(session=session, experiment_id=experiment_id)
    return {
        "id": exp.id, "status": exp.status, "stage": exp.stage, "error": exp.error,
        "config": exp.config, "created_at": exp.created_at, "started_at": exp.started_at,
        "finished_at": exp.finished_at, "timings": exp.timings or {},
        "attempts": max([exp.attempts, *[i.attempts for i in items]]) if items else exp.attempts,
        "tasks": {"total": len(items), "done": sum(i.state == db.DONE for i in items),
                  "retried": sum(i.attempts > 1 for i in items)},
        "models": models, "spaces": spaces, "tables": tables,
        "chunks_done": sum(t["chunks_done"] for t in tables),
        "chunks_total": sum(t["chunks_total"] for t in tables),
    }



"""Submitting, cancelling and describing experiments: what the CLI and the API share. No torch."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from common import jobs, kernels
from common import storage as db
from common.config import StudyConfig
from common.settings import Settings


def submit(factory: sessionmaker[Session], settings: Settings, config: StudyConfig, app=None,
           idempotency_key: str | None = None) -> int:
    """Record a queued experiment and send its first task; returns its id. Raises BrokerUnavailable,
    keeping nothing. With an ``idempotency_key`` already used, returns that experiment, sending nothing."""
    if idempotency_key is not None:
        with factory() as s:
            found = db.experiment_by_key(session=s, idempotency_key=idempotency_key)
        if found is not None:
            return found
    try:
        with db.transaction(factory) as s:
            experiment_id = db.create_experiment(session=s, config=config.as_json(),
                                                 idempotency_key=idempotency_key)
    except IntegrityError:  # the same key submitted at the same moment: that one wins
        with factory() as s:
            return db.experiment_by_key(session=s, idempotency_key=idempotency_key)
    try:
        jobs.send(app or jobs.broker_client(settings), jobs.ADVANCE, experiment_id)
    except jobs.BrokerUnavailable:
        with db.transaction(factory) as s:  # not accepted: leave no job waiting forever
            s.execute(delete(db.Experiment).where(db.Experiment.id == experiment_id))
        raise
    return experiment_id


def cancel(factory: sessionmaker[Session], experiment_id: int) -> str | None:
    """Cancel a queued or running experiment. Returns its status afterwards (None if unknown)."""
    with db.transaction(factory) as s:
        exp = db.get_experiment(session=s, experiment_id=experiment_id)
        if exp is None:
            return None
        if exp.status in (db.QUEUED, db.RUNNING):
            db.update_experiment(session=s, experiment_id=experiment_id, status=db.CANCELLED,
                                 error="cancelled by request", finished_at=db.utcnow())
            return db.CANCELLED
        return exp.status


def describe(session: Session, experiment_id: int) -> dict[str, Any] | None:
    """Status, stage, each model's epoch and latest loss, chunks done/total, attempts, error, timings."""
    exp = db.get_experiment(session=session, experiment_id=experiment_id)
    if exp is None:
        return None
    models = [{"name": m.name, "epochs_done": m.epochs_done, "epochs": exp.config["epochs"],
               "loss": m.losses[-1] if m.losses else None, "trained": m.codes is not None}
              for m in db.list_models(session=session, experiment_id=experiment_id)]
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
        "models": models, "tables": tables,
        "chunks_done": sum(t["chunks_done"] for t in tables),
        "chunks_total": sum(t["chunks_total"] for t in tables),
    }



"""Thin Celery tasks: each takes an id, and the functions in worker/pipeline.py do the work."""

from __future__ import annotations

import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc

from common import jobs
from common.settings import get_settings
from worker import context, pipeline
from worker.celery_app import app

# Errors worth retrying with backoff: the database or the broker went away for a moment.
TRANSIENT = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.DisconnectionError,
             kombu.exceptions.OperationalError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
RETRY = {"autoretry_for": TRANSIENT, "retry_backoff": 1, "retry_backoff_max": 30, "retry_jitter": False,
         "max_retries": 8}


def _send(name: str, *args) -> None:
    app.send_task(name, args=list(args))


def _run(item_id: int, body) -> None:
    from celery import current_task

    settings = get_settings()
    experiment_id = pipeline.run_item(context.factory(), settings, item_id,
                                      lambda item: body(context.factory(), settings, item),
                                      worker=current_task.request.hostname, transient=TRANSIENT)
    if experiment_id is not None:
        _send(jobs.ADVANCE, experiment_id)


@app.task(name=jobs.ADVANCE, **RETRY)
def advance(experiment_id: int) -> None:
    pipeline.advance(context.factory(), get_settings(), experiment_id, _send)


@app.task(name=jobs.SWEEP, **RETRY)
def sweep() -> None:
    pipeline.sweep(context.factory(), get_settings(), _send)


@app.task(name=jobs.PREPARE, **RETRY)
def prepare_data(item_id: int) -> None:
    _run(item_id, pipeline.do_data)


@app.task(name=jobs.TRAIN, **RETRY)
def train(item_id: int) -> None:
    _run(item_id, pipeline.do_train)


@app.task(name=jobs.CHUNK, **RETRY)
def neighbor_chunk(item_id: int) -> None:
    _run(item_id, pipeline.do_chunk)


@app.task(name=jobs.METRICS, **RETRY)
def metrics(item_id: int) -> None:
    _run(item_id, pipeline.do_metrics)

"""Thin Celery tasks: each takes an id, and the functions in worker/pipeline.py do the work.

Transient errors (the database or the broker went away for a moment) are retried with backoff for up to
AEKNN_RETRY_BUDGET seconds, counted from the first one: the message carries when that was (``since``).
They never use up the attempts meant for work that fails by itself; past the budget the experiment
fails with the cause named.
"""

from __future__ import annotations

import time

import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc

from common.settings import get_settings
from common.study import jobs
from worker import context, pipeline
from worker.celery_app import app

# Errors worth retrying with backoff: the database or the broker went away for a moment.
TRANSIENT = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.DisconnectionError,
             kombu.exceptions.OperationalError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
BACKOFF_MAX = 30.0  # seconds between two tries at most
# max_retries=None on every task: Celery would otherwise stop after 3; the budget above bounds them


def _send(name: str, *args) -> None:
    app.send_task(name, args=list(args))


def _retry(task, exc: BaseException, since: float | None, item_id: int | None = None) -> None:
    """Retry ``task`` after a transient error, within the budget; past it, fail the item (if any)."""
    now = time.time()
    since = since or now
    settings = get_settings()
    if now - since > settings.retry_budget:
        if item_id is not None:
            pipeline.give_up(context.factory(), item_id, exc, now - since)
        return
    countdown = min(BACKOFF_MAX, 2.0 ** min(task.request.retries, 5))
    raise task.retry(exc=exc, countdown=countdown, args=task.request.args,
                     kwargs={**(task.request.kwargs or {}), "since": since})


def _run(task, item_id: int, body, since: float | None) -> None:
    settings = get_settings()
    try:
        experiment_id = pipeline.run_item(context.factory(), settings, item_id,
                                          lambda item: body(context.factory(), settings, item),
                                          worker=task.request.hostname, transient=TRANSIENT,
                                          retrying=since is not None)
        if experiment_id is not None:
            _send(jobs.ADVANCE, experiment_id)
    except TRANSIENT as exc:
        _retry(task, exc, since, item_id)


@app.task(name=jobs.ADVANCE, bind=True, max_retries=None)
def advance(self, experiment_id: int, since: float | None = None) -> None:
    try:
        pipeline.advance(context.factory(), get_settings(), experiment_id, _send)
    except TRANSIENT as exc:
        _retry(self, exc, since)


@app.task(name=jobs.SWEEP, bind=True, max_retries=None)
def sweep(self, since: float | None = None) -> None:
    try:
        pipeline.sweep(context.factory(), get_settings(), _send)
    except TRANSIENT:  # the next beat sweeps again
        pass


@app.task(name=jobs.BACKFILL, bind=True, max_retries=None)
def backfill_metrics(self, experiment_id: int, since: float | None = None) -> None:
    try:
        pipeline.backfill(context.factory(), experiment_id, get_settings())
    except TRANSIENT as exc:
        _retry(self, exc, since)


@app.task(name=jobs.EMBED, bind=True, max_retries=None)
def score_embedding(self, model_id: int, since: float | None = None) -> None:
    try:
        pipeline.score_embedding(context.factory(), get_settings(), model_id)
    except TRANSIENT as exc:
        _retry(self, exc, since)


@app.task(name=jobs.PREPARE, bind=True, max_retries=None)
def prepare_data(self, item_id: int, since: float | None = None) -> None:
    _run(self, item_id, pipeline.do_data, since)


@app.task(name=jobs.TRAIN, bind=True, max_retries=None)
def train(self, item_id: int, since: float | None = None) -> None:
    _run(self, item_id, pipeline.do_train, since)


@app.task(name=jobs.TRAIN_KEEP, bind=True, max_retries=None)
def train_keeping(self, item_id: int, since: float | None = None) -> None:
    _run(self, item_id, pipeline.do_train, since)


@app.task(name=jobs.FIT_MAPS, bind=True, max_retries=None)
def fit_maps(self, item_id: int, since: float | None = None) -> None:
    _run(self, item_id, pipeline.do_train, since)


@app.task(name=jobs.CHUNK, bind=True, max_retries=None)
def neighbor_chunk(self, item_id: int, since: float | None = None) -> None:
    _run(self, item_id, pipeline.do_chunk, since)


@app.task(name=jobs.METRICS, bind=True, max_retries=None)
def metrics(self, item_id: int, since: float | None = None) -> None:
    _run(self, item_id, pipeline.do_metrics, since)

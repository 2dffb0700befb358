"""The experiment's state machine on the broker. Nothing here is a Celery task: the tasks in
``worker/tasks.py`` call these functions with ids, and these functions read and write the database.

- :func:`advance` looks at what is stored and sends what is due next. It is safe to run at any time,
  any number of times, at once: each unit of work is a row (``work_items``) with a unique key.
- :func:`run_item` runs one unit: it claims the row (counting the attempt), gives up after
  ``max_attempts`` deliveries, stops when the experiment was cancelled, and marks the row done.
- :func:`sweep` sends again what the broker lost (a Redis restart, a dead worker).
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import threading
from collections.abc import Callable

from sqlalchemy import update
from sqlalchemy.exc import DisconnectionError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from common.secrets import scrub
from common.settings import Settings
from common.store import db as db
from common.study import jobs, plan
from common.study.plan import Due
from common.study.runtime import Runtime
from common.study.stages import (
    load_config,
    stage_data,
    stage_keep,
    stage_maps,
    stage_metrics,
    stage_train,
    stored_dataset,
)
from common.study.tables import build_chunk, table_points

log = logging.getLogger(__name__)
Send = Callable[..., None]  # send(task_name, *args)
TERMINAL = (db.SUCCEEDED, db.FAILED, db.CANCELLED)


class Cancelled(Exception):
    """The experiment was cancelled (or failed elsewhere) while this task ran."""


# ---------------------------------------------------------------- deciding what is due


def _due(factory: sessionmaker[Session], settings: Settings, exp: db.Experiment) -> tuple[list[Due], str, bool]:
    """What must run next, the stage to show, and whether everything is finished: the plan's stages
    (common/study/plan.py) whose needs are done each list their work that is not done yet."""
    stored = plan.Stored(factory, exp, settings.memory_budget)
    done: set[str] = set()
    due: list[Due] = []
    shown: list[str] = []
    while True:
        now = [s for s in plan.ready(done) if s.name not in shown]
        if not now:
            break
        for stage in now:
            units = stage.pending(stored)
            if units:
                due += units
                shown.append(stage.name)
            else:
                done.add(stage.name)
    finished = len(done) == len(plan.PLAN)
    return due, " and ".join(shown) if shown else "done", finished


def _looks_lost(item: db.WorkItem, settings: Settings, now: dt.datetime) -> bool:
    """Queued and never started for too long, or running with no heartbeat for too long (its worker died)."""
    beat = item.heartbeat_at or item.started_at
    return (item.state == db.QUEUED and now - item.enqueued_at > dt.timedelta(seconds=settings.stale_after)) or (
        item.state == db.RUNNING and beat is not None and now - beat > dt.timedelta(seconds=settings.lost_after))


def _ensure(factory: sessionmaker[Session], settings: Settings, experiment_id: int, d: Due, send: Send) -> None:
    """Create the work item and send it; send again only what looks lost (see :func:`sweep`)."""
    now = db.utcnow()
    with db.transaction(factory) as s:
        item = db.get_item(session=s, experiment_id=experiment_id, kind=d.kind, table_id=d.table_id, start=d.start)
        if item is None:
            try:
                with s.begin_nested():
                    item = db.add_item(session=s, experiment_id=experiment_id, kind=d.kind,
                                       table_id=d.table_id, start=d.start)
            except IntegrityError:  # another advance created it at the same moment: it sends it
                return
            item_id = item.id
        else:
            if not _looks_lost(item, settings, now):
                return
            log.warning("experiment %d: %s looks lost (%s since %s); sending it again",
                        experiment_id, item.key, item.state, item.enqueued_at)
            item.state, item.enqueued_at = db.QUEUED, now
            item_id = item.id
    task = {"data": jobs.PREPARE, "train": jobs.TRAIN, "keep": jobs.TRAIN_KEEP, "maps": jobs.FIT_MAPS,
            "chunk": jobs.CHUNK, "metrics": jobs.METRICS}[d.kind]
    send(task, item_id)


def advance(factory: sessionmaker[Session], settings: Settings, experiment_id: int, send: Send) -> str | None:
    """Move an experiment on: send every unit of work that is due. Returns its status."""
    with db.transaction(factory) as s:
        exp = db.get_experiment(session=s, experiment_id=experiment_id)
        if exp is None or exp.status in TERMINAL:
            return None if exp is None else exp.status
        if exp.status in (db.QUEUED, db.SUBMITTING):  # submitting: its first task was sent just now
            db.update_experiment(session=s, experiment_id=experiment_id, status=db.RUNNING,
                                 started_at=exp.started_at or db.utcnow())
    due, stage, finished = _due(factory, settings, exp)
    with db.transaction(factory) as s:
        exp = db.get_experiment(session=s, experiment_id=experiment_id)
        if exp.status in TERMINAL:
            return exp.status
        if finished:
            db.update_experiment(session=s, experiment_id=experiment_id, status=db.SUCCEEDED, stage="done",
                                 finished_at=db.utcnow())
            return db.SUCCEEDED
        db.update_experiment(session=s, experiment_id=experiment_id, stage=stage)
    with factory() as s:  # one read of the items made already: only new or lost ones need a transaction each
        known = {(i.kind, i.table_id, i.start): i for i in db.items_of(session=s, experiment_id=experiment_id)}
    now = db.utcnow()
    for d in due:
        item = known.get((d.kind, d.table_id, d.start))
        if item is None or _looks_lost(item, settings, now):
            _ensure(factory, settings, experiment_id, d, send)
    return db.RUNNING


def sweep(factory: sessionmaker[Session], settings: Settings, send: Send) -> list[int]:
    """Advance every queued or running experiment: whatever the broker lost is sent again. Experiments
    stored before every k of their metrics was get a worker to fill them in. A stopped experiment's
    items still open are closed (queued ones at once, running ones once their heartbeat is lost)."""
    with factory() as s:
        ids = db.active_experiment_ids(
            session=s, submitting_before=db.utcnow() - dt.timedelta(seconds=settings.stale_after))
        old = db.experiments_missing_k(session=s)
        stopped = db.open_items_of_stopped(session=s)
    for experiment_id in stopped:  # items a stop left open: queued ones never ran, running ones lost their worker
        with db.transaction(factory) as s:
            db.close_items(session=s, experiment_id=experiment_id, states=(db.QUEUED, db.RUNNING),
                           reason="closed by the sweeper: its experiment had stopped",
                           beat_before=db.utcnow() - dt.timedelta(seconds=settings.lost_after))
    for experiment_id in ids:
        advance(factory, settings, experiment_id, send)
    for experiment_id in old:
        send(jobs.BACKFILL, experiment_id)
    with factory() as s:  # uploads whose message the broker may have lost: sent again (idempotent)
        waiting = db.waiting_uploads(session=s, before=db.utcnow() - dt.timedelta(seconds=settings.lost_after))
    for model_id in waiting:
        send(jobs.EMBED, model_id)
    return ids


def backfill(factory: sessionmaker[Session], experiment_id: int, settings: Settings | None = None) -> None:
    """Every metric at every k of one experiment (the rank measures too, computed where ``settings`` say:
    device, pixel path, memory budget), unless a repeated delivery already stored them."""
    from common.study.ranking import RankSettings
    from common.study.scoring import store_metrics

    with factory() as s:
        exp = db.get_experiment(session=s, experiment_id=experiment_id)
        if exp is None or exp.metrics_all_k or exp.status != db.SUCCEEDED:
            return
    log.info("experiment %d: storing its metrics at every k", experiment_id)
    store_metrics(factory, experiment_id, None if settings is None else RankSettings.of(settings))


def score_embedding(factory: sessionmaker[Session], settings: Settings, model_id: int) -> None:
    """An uploaded embedding's tables and metrics (common/study/stages.py, ``stage_embedding``): a repeated
    delivery continues where one stopped, or does nothing once it is ready. A failure is stored on the
    upload (its state and reason, shown by GET /experiments/{id}), not raised again."""
    from common.study import embeddings
    from common.study.stages import stage_embedding

    with factory() as s:
        row = s.get(db.ModelRow, model_id)
        if row is None or row.source != embeddings.UPLOADED or row.state == embeddings.READY:
            return
        experiment_id, name = row.experiment_id, row.name
    log.info("experiment %d: scoring the uploaded embedding %r", experiment_id, name)
    try:
        stage_embedding(runtime(factory, settings, experiment_id), experiment_id, name)
    except Exception as exc:  # stored as the upload's state by stage_embedding; transient ones retried
        if isinstance(exc, (OperationalError, InterfaceError, DisconnectionError)):  # the database went away
            raise
        log.warning("experiment %d: the embedding %r failed: %s", experiment_id, name, exc)


# ---------------------------------------------------------------- running one unit of work


def _fail(factory: sessionmaker[Session], experiment_id: int, item_id: int, reason: str) -> None:
    """The item failed, and with it the experiment: its other queued items are closed too (running
    ones close themselves within one task, see :func:`run_item`)."""
    with db.transaction(factory) as s:
        item = s.get(db.WorkItem, item_id)
        item.state, item.error, item.finished_at = db.FAILED, reason, db.utcnow()
        exp = db.get_experiment(session=s, experiment_id=experiment_id)
        if exp.status not in TERMINAL:
            db.update_experiment(session=s, experiment_id=experiment_id, status=db.FAILED, error=reason,
                                 finished_at=db.utcnow())
        db.close_items(session=s, experiment_id=experiment_id, reason=f"experiment failed: {item.key}")
    log.error("experiment %d: FAILED: %s", experiment_id, reason)


def check_live(factory: sessionmaker[Session], experiment_id: int) -> None:
    """Raise Cancelled when the experiment has stopped (cancelled or failed elsewhere)."""
    with factory() as s:
        status = db.get_experiment(session=s, experiment_id=experiment_id).status
    if status in TERMINAL:
        raise Cancelled(status)


def describe_error(exc: BaseException) -> str:
    """What failed, in words for a user: the driver's own error for a database failure, without the SQL
    statement or its parameters (those go to the log), and without any secret."""
    from sqlalchemy.exc import StatementError

    if isinstance(exc, StatementError) and exc.orig is not None:
        orig = exc.orig
        first = (str(orig).strip().splitlines() or [""])[0]
        text = f"{type(exc).__name__} ({type(orig).__name__}): {first}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return scrub(text)[:500]


class _Heartbeat:
    """Writes the item's heartbeat every few seconds while its body runs (a daemon thread), so that the
    sweeper can tell a lost worker (no heartbeat) from a long task."""

    def __init__(self, factory: sessionmaker[Session], item_id: int, every: float) -> None:
        self.factory, self.item_id, self.every = factory, item_id, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"heartbeat-{item_id}", daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                with db.transaction(self.factory) as s:
                    s.execute(update(db.WorkItem).where(db.WorkItem.id == self.item_id,
                                                        db.WorkItem.state == db.RUNNING)
                              .values(heartbeat_at=db.utcnow()))
            except Exception as exc:  # noqa: BLE001 - the database may be down for a moment: try again later
                log.debug("heartbeat of item %d not written: %s", self.item_id, exc)

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def run_item(factory: sessionmaker[Session], settings: Settings, item_id: int,
             body: Callable[[db.WorkItem], None], *, worker: str | None = None,
             transient: tuple[type[BaseException], ...] = (), retrying: bool = False) -> int | None:
    """Claim and run one unit of work; returns its experiment id (for the next advance) or None.

    ``max_attempts`` bounds the deliveries that died (a lost worker) or failed by themselves; a
    delivery that retries after a transient error (``retrying``: the database or the broker went away
    for a moment) is not one of them. Transient errors propagate to the task, which retries them with
    backoff within ``retry_budget`` (worker/tasks.py)."""
    worker = worker or socket.gethostname()
    with db.transaction(factory) as s:
        item = s.get(db.WorkItem, item_id, with_for_update=True)
        if item is None:
            return None
        experiment_id = item.experiment_id
        exp = db.get_experiment(session=s, experiment_id=experiment_id)
        if item.state in db.CLOSED:
            return None  # a repeated delivery: nothing to do
        if exp.status in TERMINAL:  # the experiment stopped before this ran: close it unrun
            item.state, item.finished_at, item.error = db.CANCELLED, db.utcnow(), f"experiment {exp.status} first"
            return None
        if not retrying or item.attempts == 0:
            item.attempts += 1
        attempts = item.attempts
        now = db.utcnow()
        item.state, item.started_at, item.heartbeat_at, item.worker = db.RUNNING, now, now, worker
        db.update_experiment(session=s, experiment_id=experiment_id, attempts=max(exp.attempts, attempts))
    if attempts > settings.max_attempts:
        _fail(factory, experiment_id, item_id,
              f"{item.key}: gave up after {settings.max_attempts} attempts (the worker was lost each time; "
              f"last error: {item.error or 'none recorded'})")
        return None
    log.info("experiment %d: %s (attempt %d%s) on %s", experiment_id, item.key, attempts,
             ", retrying after a transient error" if retrying else "", worker)
    try:
        with _Heartbeat(factory, item_id, settings.heartbeat_every):
            body(item)
    except Cancelled as exc:
        log.info("experiment %d: stopped: %s", experiment_id, item.key)
        with db.transaction(factory) as s:
            it = s.get(db.WorkItem, item_id)
            if it.state not in db.CLOSED:
                it.state, it.finished_at, it.error = db.CANCELLED, db.utcnow(), f"stopped: experiment {exc}"
        return None
    except transient as exc:
        try:  # best effort: the database may be what is down
            with db.transaction(factory) as s:
                it = s.get(db.WorkItem, item_id)
                it.state, it.error = db.QUEUED, f"retrying after {describe_error(exc)}"
        except Exception:  # noqa: BLE001 - the retry below is what matters
            pass
        raise
    except Exception as exc:  # a real failure: the experiment fails with the reason, no retry loop
        log.exception("experiment %d: %s failed", experiment_id, item.key)
        _fail(factory, experiment_id, item_id, f"{item.kind}: {describe_error(exc)}")
        return None
    with db.transaction(factory) as s:
        it = s.get(db.WorkItem, item_id)
        it.state, it.finished_at, it.error = db.DONE, db.utcnow(), None
    return experiment_id


def give_up(factory: sessionmaker[Session], item_id: int, exc: BaseException, seconds: float) -> None:
    """A transient error outlasted the retry budget: the experiment fails, naming the cause (best effort:
    with the database still down, the sweeper sends the item again once it is back)."""
    reason = (f"gave up after {seconds:.0f} s of transient errors (AEKNN_RETRY_BUDGET): "
              f"{describe_error(exc)}")
    try:
        with factory() as s:
            item = s.get(db.WorkItem, item_id)
            experiment_id = None if item is None else item.experiment_id
        if experiment_id is not None:
            _fail(factory, experiment_id, item_id, f"{item.kind}: {reason}")
    except Exception as again:  # noqa: BLE001
        log.error("item %d: %s (not recorded: %s)", item_id, reason, describe_error(again))


# ---------------------------------------------------------------- the bodies


def runtime(factory: sessionmaker[Session], settings: Settings, experiment_id: int) -> Runtime:
    def stop_if_cancelled(name: str, ck) -> None:  # noqa: ANN001 - called after every epoch
        check_live(factory, experiment_id)

    return Runtime.from_settings(settings, factory, on_epoch_end=stop_if_cancelled)


def do_data(factory, settings, item: db.WorkItem) -> None:
    check_live(factory, item.experiment_id)
    stage_data(runtime(factory, settings, item.experiment_id), item.experiment_id,
               load_config(factory, item.experiment_id))


def do_train(factory, settings, item: db.WorkItem) -> None:
    """The autoencoders (item kind ``train``), relu_keep (``keep``) or the reference maps (``maps``)."""
    check_live(factory, item.experiment_id)
    stage = {"train": stage_train, "keep": stage_keep, "maps": stage_maps}[item.kind]
    stage(runtime(factory, settings, item.experiment_id), item.experiment_id, load_config(factory, item.experiment_id),
          stored_dataset(factory, item.experiment_id))


_space_cache: dict[int, object] = {}


def do_chunk(factory, settings, item: db.WorkItem) -> None:
    """One chunk of a neighbour table; its rows and done-mark commit together (item.worker computed it)."""
    from common.study.tables import prepare_space

    check_live(factory, item.experiment_id)
    cached = _space_cache.get(item.table_id)
    with factory() as s:
        table = db.get_table(session=s, table_id=item.table_id)
        if cached is None:
            points = table_points(s, table)
    if cached is None:
        _space_cache.clear()  # one table's points per worker process at a time
        cached = prepare_space(points, table.distance, device=settings.device, kernel=settings.kernel,
                               cache_dir=settings.cache_dir)
        _space_cache[item.table_id] = cached
    build_chunk(factory, table, cached, item.start, worker=item.worker, memory_budget=settings.memory_budget)


def do_metrics(factory, settings, item: db.WorkItem) -> None:
    check_live(factory, item.experiment_id)
    stage_metrics(runtime(factory, settings, item.experiment_id), item.experiment_id)

"""How work is named and routed on the broker, shared by the workers and by whoever submits.

The API and the CLI send tasks by name (``send_task``), so they never import the workers (or torch).
"""

from __future__ import annotations

import threading
from typing import Any

from common.secrets import redact, scrub
from common.settings import Settings

# task names
ADVANCE = "aeknn.advance"  # look at an experiment's state in the database and send what is due next
PREPARE = "aeknn.prepare_data"
TRAIN = "aeknn.train"
TRAIN_KEEP = "aeknn.train_keeping"  # relu_keep, which needs the pixel tables first
FIT_MAPS = "aeknn.fit_maps"  # the reference maps (PCA, UMAP, t-SNE)
CHUNK = "aeknn.neighbor_chunk"
METRICS = "aeknn.metrics"
SWEEP = "aeknn.sweep"
BACKFILL = "aeknn.backfill_metrics"  # store every k of an experiment stored before every k was
EMBED = "aeknn.score_embedding"  # an uploaded embedding's tables and metrics (common/study/embeddings.py)

# new samples placed on a finished experiment's maps (POST /experiments/{id}/encode): the API pushes a request
# on this Redis list and waits for the answer on the reply key it names; `aeknn encoder` answers, and while
# it runs keeps ENCODER_ALIVE set (expiring after ENCODER_ALIVE_TTL seconds), so the API knows to send 503
ENCODE_QUEUE, ENCODER_ALIVE, ENCODER_ALIVE_TTL = "aeknn:encode", "aeknn:encoder:alive", 5

# queues: training and neighbour work apart, so that each can get its own workers
CONTROL, TRAIN_QUEUE, NEIGHBORS = "control", "train", "neighbors"
QUEUES = (CONTROL, TRAIN_QUEUE, NEIGHBORS)
ROUTES = {ADVANCE: CONTROL, PREPARE: CONTROL, METRICS: CONTROL, SWEEP: CONTROL, BACKFILL: CONTROL,
          TRAIN: TRAIN_QUEUE, TRAIN_KEEP: TRAIN_QUEUE, FIT_MAPS: TRAIN_QUEUE, CHUNK: NEIGHBORS, EMBED: NEIGHBORS}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for long jobs on Redis (see README, "Running on workers")."""
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 5,
        # a task is acknowledged when it finishes, and given back when its worker process dies
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout,
                                     "socket_connect_timeout": 5, "socket_timeout": 30},
        "task_routes": {name: {"queue": q} for name, q in ROUTES.items()},
        "task_default_queue": CONTROL,
        "task_ignore_result": True,  # the database holds every result and state
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_max_memory_per_child": settings.worker_max_memory_kib,
        "worker_hijack_root_logger": False,
        "beat_schedule": {"sweep": {"task": SWEEP, "schedule": settings.sweep_every}},
    }


class BrokerUnavailable(RuntimeError):
    """The broker could not be reached; nothing was enqueued and nothing was kept."""


_import_lock = threading.Lock()


def broker_client(settings: Settings):
    """A Celery app that only sends tasks by name (it imports no task code, hence no torch).

    Celery's package replaces itself with a lazy module while it is first imported, and a second thread
    importing it in that moment gets "cannot import name 'Celery'" (seen: one 500 among 300 concurrent
    submits, the API's first): the first import happens under a lock."""
    with _import_lock:
        from celery import Celery

    app = Celery("aeknn-client")
    app.conf.update(celery_config(settings))
    return app


def check_broker(settings: Settings, wait: float = 10.0) -> None:
    """BrokerUnavailable unless the broker answers within ``wait`` seconds (tried every second)."""
    import time

    deadline = time.monotonic() + wait
    app = broker_client(settings)
    while True:
        try:
            with app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            return
        except Exception as exc:  # kombu/redis raise several kinds; all mean "not reachable"
            if time.monotonic() >= deadline:
                raise BrokerUnavailable(f"the broker at {redact(settings.broker_url)} is unreachable: "
                                        f"{scrub(str(exc))}") from exc
            time.sleep(1.0)


def send(app, name: str, *args: Any) -> None:
    """Send a task by name; BrokerUnavailable when the broker cannot be reached (no endless retry)."""
    try:
        app.send_task(name, args=list(args), retry=True,
                      retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5})
    except Exception as exc:  # kombu/redis raise several kinds; all mean "not enqueued"
        raise BrokerUnavailable(f"the broker at {redact(app.conf.broker_url)} is unreachable: "
                                f"{scrub(str(exc))}") from exc

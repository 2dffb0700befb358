"""The Celery app of the workers: ``celery -A worker.celery_app worker`` (or ``aeknn worker``).

Settings come from common/study/jobs.py (late acks, requeue on a lost worker, prefetch 1, a long visibility
timeout, separate queues). Each pool child gets its own database engine and its own torch threads,
set up after the fork: an engine or an OpenMP pool inherited across a fork is not safe.
"""

from __future__ import annotations

import logging

from celery import Celery, signals

from common import secrets
from common.settings import get_settings
from common.study.jobs import celery_config

secrets.install(get_settings())  # no password in any log line of a worker
app = Celery("aeknn", include=["worker.tasks"])
app.conf.update(celery_config(get_settings()))


@signals.worker_process_init.connect
def _after_fork(**_kwargs) -> None:
    from worker import context

    context.after_fork()


@signals.setup_logging.connect
def _logging(**_kwargs) -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")

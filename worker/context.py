"""Per-process resources of a worker: the database engine and torch's threads."""

from __future__ import annotations

import os

from sqlalchemy.orm import Session, sessionmaker

from common.settings import get_settings
from common.study.database import open_database

_factory: sessionmaker[Session] | None = None
_pid: int | None = None


def factory() -> sessionmaker[Session]:
    """This process's session factory (a new engine in each process, never one shared across a fork)."""
    global _factory, _pid
    if _factory is None or _pid != os.getpid():
        _factory, _pid = open_database(get_settings().database_url), os.getpid()
    return _factory


def after_fork() -> None:
    """In a new pool child: drop the parent's engine, flush subnormals, size torch's thread pool."""
    global _factory, _pid
    if _factory is not None:
        _factory.kw["bind"].dispose(close=False)  # the parent's connections stay the parent's
    _factory, _pid = None, None
    import torch

    from common.compute.training import configure_numerics

    configure_numerics()  # before this child starts any torch thread pool
    threads = get_settings().worker_threads  # `aeknn worker -c N` sets it to cores / N
    if threads:
        torch.set_num_threads(threads)

"""Shared fixtures: the real MNIST folder, databases (SQLite and the machine's PostgreSQL)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import text

from common.compute.training import configure_numerics
from common.store import db as db

configure_numerics()  # as the CLI and the workers do, before any torch thread pool exists

ROOT = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    given = os.environ.get("AEKNN_DATA_DIR")
    return Path(given) if given else ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = _data_dir()
    if not (d / "mnist" / "train-images-idx3-ubyte.gz").exists() and not (d / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"the real MNIST files are not in {d}: set AEKNN_DATA_DIR to the folder that holds mnist/")
    return d


@pytest.fixture(scope="session")
def mnist(data_dir, tmp_path_factory):
    from common.compute.data import load_dataset

    return load_dataset("mnist", data_dir, tmp_path_factory.mktemp("cache"))


POSTGRES_URL = os.environ.get("AEKNN_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _fresh_postgres():
    engine = db.make_engine(POSTGRES_URL)
    try:
        with engine.connect() as c:
            c.execute(text("select 1"))
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_URL}: {exc}")
    db.Base.metadata.drop_all(engine)
    with engine.begin() as c:
        c.execute(text("DROP TABLE IF EXISTS alembic_version"))
    db.init_db(engine)
    return engine


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request, tmp_path):
    """A fresh, empty database of each kind (what this process keeps of the last one at that URL forgotten)."""
    from common.study import reads

    reads.forget()
    if request.param == "sqlite":
        eng = db.make_engine(f"sqlite:///{tmp_path / 'test.db'}")
        db.init_db(eng)
    else:
        eng = _fresh_postgres()
    yield eng
    eng.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'aeknn.db'}"

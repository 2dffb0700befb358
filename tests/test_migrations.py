"""Alembic migrations on SQLite and PostgreSQL: the schema they build is the models' schema, and a
database at a revision this aeknn cannot use is refused, with a message that says what to run."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from common.store import db as db
from common.store import migrate
from tests.services import ROOT, ApiServer, fresh_database

HEAD = "0008"  # this aeknn's newest revision: a new migration must change it here on purpose


@pytest.fixture(params=["sqlite", "postgres"])
def empty(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}" if request.param == "sqlite" else fresh_database("aeknn_migrations")
    engine = db.make_engine(url)
    yield engine
    engine.dispose()


def test_upgrade_builds_exactly_the_models_schema(empty):
    assert migrate.state(empty) == ("empty", None)
    assert migrate.upgrade(empty) == migrate.head() == HEAD
    with empty.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), db.Base.metadata)
    assert diff == []
    assert set(inspect(empty).get_table_names()) == set(db.Base.metadata.tables) | {"alembic_version"}
    assert migrate.upgrade(empty) == HEAD  # again: nothing to do
    migrate.prepare(empty)  # at head: accepted


def test_a_database_made_at_the_first_revision_is_upgraded_with_every_row_kept(empty):
    """Rows in every table, as revision 0001 stored them (models, tables and metrics pointing at an
    experiment): refused until upgraded, then every row is still there (a table copied by a migration
    must not cascade deletes)."""
    migrate.upgrade(empty, "0001")
    b = {"b": b"\x00"}
    rows = [
        ("INSERT INTO datasets (id, name, n, labels, images) VALUES (1, 'mnist', 1, :b, :b)", b),
        ("INSERT INTO experiments (id, created_at, config, status, timings, attempts, dataset_id) "
         "VALUES (1, '2026-11-27 10:00:00', '{}', 'succeeded', '{}', 1, 1)", {}),
        ("INSERT INTO models (id, experiment_id, name, epochs_done, losses, codes) "
         "VALUES (1, 1, 'relu_mse', 2, '[0.5, 0.4]', :b)", b),
        ("INSERT INTO neighbor_tables (id, key, dataset_id, space, distance, k, n, chunk_size, complete) "
         "VALUES (1, 'original:dataset=1:l2:K=5', 1, 'original', 'l2', 5, 1, 1, true)", {}),
        ("INSERT INTO neighbor_tables (id, key, dataset_id, model_id, space, distance, k, n, chunk_size, complete) "
         "VALUES (2, 'relu_mse:model=1:l2:K=5', 1, 1, 'relu_mse', 'l2', 5, 1, 1, true)", {}),
        ("INSERT INTO neighbor_chunks (table_id, start, stop, done_at) VALUES (2, 0, 1, '2026-11-27 10:00:00')", {}),
        ("INSERT INTO neighbor_rows (table_id, sample_id, ids, labels, distances) VALUES (2, 0, :b, :b, :b)", b),
        ("INSERT INTO work_items (id, experiment_id, key, kind, state, attempts, enqueued_at) "
         "VALUES (1, 1, '1:data::', 'data', 'done', 1, '2026-11-27 10:00:00')", {}),
        ("INSERT INTO metric_values (id, experiment_id, metric, space, distance, k, label, value) "
         "VALUES (1, 1, 'score_at_k', 'relu_mse', 'l2', 5, -1, 0.25)", {}),
    ]
    with empty.begin() as c:
        for sql, params in rows:
            c.execute(text(sql), params)
    tables = ["datasets", "experiments", "models", "neighbor_tables", "neighbor_chunks", "neighbor_rows",
              "work_items", "metric_values"]

    def counts():
        with empty.connect() as c:
            return {t: c.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in tables}

    before = counts()
    assert set(before.values()) == {1, 2} and before["neighbor_tables"] == 2
    with pytest.raises(migrate.SchemaError, match="run `aeknn db upgrade`"):
        migrate.prepare(empty)
    assert migrate.upgrade(empty) == HEAD
    migrate.prepare(empty)
    assert counts() == before
    with empty.connect() as c:
        row = c.execute(text("SELECT key, complete, path, compute_seconds FROM neighbor_tables WHERE id = 1")).one()
        assert tuple(row) == ("original:dataset=1:l2:K=5", True, None, None)
        assert c.execute(text("SELECT metrics_all_k FROM experiments")).scalar() in (False, 0)


def test_0006_marks_the_experiments_scored_before_the_rank_measures_for_a_backfill(empty):
    """At 0005: experiment 1 succeeded with every k but no rank measure, 2 has them, 3 is still running.
    After 0006 only 1 is marked (metrics_all_k false: the sweeper sends it a backfill); no row is lost."""
    migrate.upgrade(empty, "0005")
    with empty.begin() as c:
        c.execute(text("INSERT INTO datasets (id, name, n, labels, images) VALUES (1, 'mnist', 1, :b, :b)"),
                  {"b": b"\x00"})
        for i, status in ((1, "succeeded"), (2, "succeeded"), (3, "running")):
            c.execute(text("INSERT INTO experiments (id, created_at, config, status, timings, attempts, dataset_id, "
                           "metrics_all_k, revision) VALUES (:i, '2026-12-06 09:00:00', '{}', :s, '{}', 1, 1, "
                           "true, 0)"), {"i": i, "s": status})
        c.execute(text("INSERT INTO metric_values (experiment_id, metric, space, distance, k, label, value) "
                       "VALUES (2, 'auc_rnx', 'relu_mse', 'l2', 5, -1, 0.1), "
                       "(1, 'score_at_k', 'relu_mse', 'l2', 5, -1, 0.2)"))
    assert migrate.upgrade(empty) == HEAD
    with empty.connect() as c:
        marked = dict(c.execute(text("SELECT id, metrics_all_k FROM experiments ORDER BY id")).all())
        assert {i: bool(v) for i, v in marked.items()} == {1: False, 2: True, 3: True}
        assert c.execute(text("SELECT count(*) FROM metric_values")).scalar() == 2


def test_first_use_of_an_empty_database_applies_the_migrations(empty):
    db.init_db(empty)
    assert migrate.current(empty) == migrate.head()


def test_an_unknown_revision_is_refused_and_nothing_is_touched(empty):
    db.init_db(empty)
    with empty.begin() as c:
        c.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
    for call in (migrate.prepare, migrate.upgrade):
        with pytest.raises(migrate.SchemaError, match="revision f00d, which this aeknn does not know"):
            call(empty)
    assert migrate.current(empty) == "f00d"


def test_tables_without_a_revision_are_refused(empty):
    db.Base.metadata.create_all(empty)  # what an aeknn before migrations made
    with pytest.raises(migrate.SchemaError, match="no schema revision.*aeknn db stamp head"):
        migrate.prepare(empty)
    migrate.stamp(empty, "head")
    migrate.prepare(empty)


@pytest.mark.postgres
def test_concurrent_upgrades_on_postgres_are_serialised():
    url = fresh_database("aeknn_migrations")
    engines = [db.make_engine(url) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(migrate.upgrade, engines)) == [HEAD] * 4
    for e in engines:
        e.dispose()


def run(*args: str, url: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args, "--db", url], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_db_commands_and_the_refusals_of_every_process(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    p = run("db", "current", url=url)
    assert p.returncode == 1 and f"- (empty; this aeknn's newest revision is {HEAD})" in p.stdout
    p = run("db", "upgrade", url=url)
    assert p.returncode == 0 and f"upgraded from None to {HEAD}" in p.stdout, p.stderr
    assert f"already at {HEAD}" in run("db", "upgrade", url=url).stdout
    assert run("db", "current", url=url).returncode == 0
    engine = db.make_engine(url)
    with engine.begin() as c:
        c.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
    engine.dispose()
    for args in (("status", "1"), ("metrics",), ("db", "upgrade")):
        p = run(*args, url=url)
        assert p.returncode == 1 and "schema revision f00d" in p.stderr and "Traceback" not in p.stderr, p.stderr
    # the API refuses to start on it, and says why
    api = None
    with pytest.raises(AssertionError, match="the API died"):
        api = ApiServer({"AEKNN_DATABASE_URL": url}, tmp_path)
    assert api is None
    log = next(tmp_path.glob("api-*.log")).read_text()
    assert "schema revision f00d, which this aeknn does not know" in log

"""Schema migrations (Alembic, scripts in common/store/migrations): the revision a database is at, upgrading
it, and the guard every process runs before it uses a database.

A new, empty database is brought to the newest revision on first use, so ``make run`` and the tests
need no extra step. Any other database must already be at this aeknn's newest revision: one behind is
refused with "run `aeknn db upgrade`", one at a revision this aeknn does not know (migrated by a newer
aeknn) is refused too. Nothing is ever changed behind the user's back.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
PG_LOCK = 0x61656B6E  # "aekn": one migrating process at a time on PostgreSQL
OURS = "experiments"  # a table every revision has


class SchemaError(RuntimeError):
    """The database is not at a revision this aeknn can use; the message says what to run."""


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


@lru_cache(maxsize=1)
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head() -> str:
    """This aeknn's newest revision."""
    return _scripts().get_current_head()


def known(revision: str) -> bool:
    try:
        return _scripts().get_revision(revision) is not None
    except Exception:  # noqa: BLE001 - alembic raises several kinds for an unknown id
        return False


def current(engine: Engine) -> str | None:
    """The revision the database is at (None: never migrated)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def state(engine: Engine) -> tuple[str, str | None]:
    """("empty" | "legacy" | "head" | "behind" | "unknown", the database's revision)."""
    rev = current(engine)
    if rev is None:
        return ("legacy" if inspect(engine).has_table(OURS) else "empty"), None
    if rev == head():
        return "head", rev
    return ("behind" if known(rev) else "unknown"), rev


def _where(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Apply the migrations up to ``revision``; returns the revision reached. Safe to run from several
    processes at once (PostgreSQL: an advisory lock; SQLite: its write lock)."""
    status, rev = state(engine)
    if status == "unknown":
        raise SchemaError(_unknown(engine, rev))
    if status == "legacy":
        raise SchemaError(_legacy(engine))
    cfg = _config()
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:  # a migration that copies a table (SQLite's way to alter it) must not cascade deletes
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")  # outside any transaction, or SQLite ignores it
            conn.commit()
        try:
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK})
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise SchemaError(f"the upgrade of {_where(engine)} would break {len(broken)} references "
                                          f"(first: {broken[0]}); nothing was changed")
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()
    return current(engine)


def stamp(engine: Engine, revision: str) -> None:
    """Record ``revision`` without running anything (for a database made before migrations whose
    schema is known to match)."""
    if not known(revision) and revision != "head":
        raise SchemaError(f"unknown revision {revision!r}; this aeknn knows up to {head()}")
    cfg = _config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.stamp(cfg, revision)


def _unknown(engine: Engine, rev: str | None) -> str:
    return (f"the database {_where(engine)} is at schema revision {rev}, which this aeknn does not know "
            f"(its newest is {head()}): a newer aeknn migrated it. Run that newer aeknn, or point "
            "AEKNN_DATABASE_URL (--db) at another database.")


def _legacy(engine: Engine) -> str:
    return (f"the database {_where(engine)} has aeknn's tables but no schema revision: it was made before "
            "migrations existed. Recreate it (delete the file or drop the database), or, if you know its "
            f"schema is the current one, run `aeknn db stamp head`.")


def prepare(engine: Engine) -> None:
    """The guard every process runs before using a database: create the schema in an empty one,
    accept one at the newest revision, refuse anything else with a message that says what to run."""
    status, rev = state(engine)
    if status == "head":
        return
    if status == "empty":
        upgrade(engine)
        return
    if status == "behind":
        raise SchemaError(f"the database {_where(engine)} is at schema revision {rev}, older than this "
                          f"aeknn's {head()}: run `aeknn db upgrade` (with AEKNN_DATABASE_URL or --db "
                          "pointing at it) and start again.")
    if status == "unknown":
        raise SchemaError(_unknown(engine, rev))
    raise SchemaError(_legacy(engine))

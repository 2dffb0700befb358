"""Opening the database: the one way the command line, the API and the workers do it. No torch.

A process that writes opens it with :func:`open_database` (an empty database gets the schema; one at
another schema revision is refused, saying what to run). A command that only reads opens it with
:func:`open_existing`, which creates and changes nothing: a missing file, a file that is not a database
and a database without aeknn's tables are each refused by name.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from common.errors import NotFound
from common.secrets import redact
from common.store import db, migrate

SchemaError = migrate.SchemaError
SQLITE_MAGIC = b"SQLite format 3\x00"


def open_database(url: str, *, pre_ping: bool = True) -> sessionmaker[Session]:
    """Sessions on ``url``, its schema created if it is empty (``pre_ping``: test pooled connections first)."""
    engine = db.make_engine(url, pre_ping=pre_ping)
    db.init_db(engine)
    return db.session_factory(engine)


def open_existing(url: str) -> sessionmaker[Session]:
    """Sessions on a database that already holds aeknn's tables; NotFound naming what is there instead."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database)
        if not path.is_file():
            raise NotFound(f"no database at {path}: run `aeknn run` first, or point --db (AEKNN_DATABASE_URL) at "
                           "the database that holds the study")
        with path.open("rb") as f:
            if f.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
                raise NotFound(f"{path} is not a SQLite database (an empty file, or another kind of file)")
    engine = db.make_engine(url)
    status, _ = migrate.state(engine)
    if status == "empty":
        engine.dispose()
        raise NotFound(f"the database at {redact(url)} holds no aeknn study")
    migrate.prepare(engine)  # at the newest revision: nothing to do; otherwise SchemaError says what to run
    return db.session_factory(engine)


def autocommit(factory: sessionmaker[Session]) -> sessionmaker[Session]:
    """Sessions on the same engine for single-statement reads: autocommit, no BEGIN/ROLLBACK round trips."""
    return db.session_factory(factory.kw["bind"].execution_options(isolation_level="AUTOCOMMIT"))


def close(factory: sessionmaker[Session]) -> None:
    """Close the factory's connections (before a process hands over to another, or exits)."""
    factory.kw["bind"].dispose()


def where(factory: sessionmaker[Session]) -> str:
    """The database's URL without its password."""
    return factory.kw["bind"].url.render_as_string(hide_password=True)


def url_of(factory: sessionmaker[Session]) -> str:
    """The database's URL with its password, for a child process (through a pipe, never argv or a log)."""
    return factory.kw["bind"].url.render_as_string(hide_password=False)


def upgrade(url: str, revision: str = "head") -> tuple[str | None, str]:
    """The schema upgraded to ``revision``: (the revision before, the revision now)."""
    engine = db.make_engine(url)
    try:
        return migrate.current(engine), migrate.upgrade(engine, revision)
    finally:
        engine.dispose()


def schema_state(url: str) -> tuple[str, str | None, str]:
    """("empty" | "legacy" | "head" | "behind" | "unknown", the database's revision, this aeknn's newest)."""
    engine = db.make_engine(url)
    try:
        status, rev = migrate.state(engine)
        return status, rev, migrate.head()
    finally:
        engine.dispose()


def stamp(url: str, revision: str) -> str | None:
    """Mark the database as being at ``revision`` without running anything; returns the revision now."""
    engine = db.make_engine(url)
    try:
        migrate.stamp(engine, revision)
        return migrate.current(engine)
    finally:
        engine.dispose()

"""Dependencies as types: the settings, a database session, an experiment that must exist."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from api import lookup
from api.errors import not_found
from common import storage as db
from common.settings import Settings


async def get_settings_dep(request: Request) -> Settings:  # async: no thread hop for a lookup
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


@lru_cache(maxsize=8)
def _factory(url: str) -> sessionmaker[Session]:
    engine = db.make_engine(url, pre_ping=False)
    db.init_db(engine)
    return db.session_factory(engine)


def get_factory_for(settings: Settings) -> sessionmaker[Session]:
    return _factory(settings.database_url)


async def get_factory(settings: SettingsDep) -> sessionmaker[Session]:
    return get_factory_for(settings)


FactoryDep = Annotated[sessionmaker[Session], Depends(get_factory)]


@lru_cache(maxsize=8)
def _read_factory(url: str) -> sessionmaker[Session]:
    """Sessions for single-statement reads: autocommit, so no BEGIN/ROLLBACK round trips."""
    return db.session_factory(_factory(url).kw["bind"].execution_options(isolation_level="AUTOCOMMIT"))


async def get_read_factory(settings: SettingsDep) -> sessionmaker[Session]:
    return _read_factory(settings.database_url)


ReadFactoryDep = Annotated[sessionmaker[Session], Depends(get_read_factory)]


def get_db(factory: FactoryDep) -> Iterator[Session]:
    with factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]


def experiment_or_404(experiment_id: int, session: SessionDep) -> db.Experiment:
    exp = lookup.get_experiment(session, experiment_id)
    if exp is None:
        raise not_found(f"no experiment {experiment_id}")
    return exp


ExperimentDep = Annotated[db.Experiment, Depends(experiment_or_404)]


def finished_experiment(session: Session, experiment: int | None) -> db.Experiment:
    """The experiment asked for (it must have succeeded), or the latest that succeeded."""
    return lookup.get_experiment(session, lookup.finished(session, experiment).id)

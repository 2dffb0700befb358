"""Dependencies as types: the settings, a database session, an experiment that must exist."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from functools import lru_cache
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from api.errors import unauthorized
from common.settings import Settings
from common.study import database, reads


async def get_settings_dep(request: Request) -> Settings:  # async: no thread hop for a lookup
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


READ_COOKIE = "aeknn_read"  # set by POST /session: HttpOnly, SameSite=Strict, opens reads only


def read_token(read_key: str) -> str:
    """What the page's cookie holds: derived from the read key, so the cookie is never a key itself and
    nothing read from it opens a write."""
    return hmac.new(read_key.encode(), b"aeknn: the page's read cookie, v1", hashlib.sha256).hexdigest()


def _bearer(request: Request) -> str:
    """The token of ``Authorization: Bearer <token>``, or "" for any other header or none."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _one_of(given: str, keys: list[str]) -> bool:
    """Whether ``given`` is one of the non-empty ``keys`` (compared in constant time)."""
    return bool(given) and any(hmac.compare_digest(given.encode(), k.encode()) for k in keys if k)


def bearer_opens_reads(request: Request, settings: Settings) -> bool:
    return _one_of(_bearer(request), [settings.read_key, settings.api_key])


async def require_write(request: Request, settings: SettingsDep) -> None:
    """Writes need AEKNN_API_KEY when one is set, as ``Authorization: Bearer <key>`` and in no other way:
    no other scheme, and never a cookie (a page on another site could make a browser send that)."""
    if settings.api_key and not _one_of(_bearer(request), [settings.api_key]):
        raise unauthorized("this write needs the API key: send Authorization: Bearer <AEKNN_API_KEY>")


async def require_read(request: Request, settings: SettingsDep) -> None:
    """Reads are open unless AEKNN_READ_KEY is set; then they need either key as a Bearer token, or the
    read cookie that POST /session sets (an <img> sends no header)."""
    if not settings.read_key or bearer_opens_reads(request, settings):
        return
    if _one_of(request.cookies.get(READ_COOKIE, ""), [read_token(settings.read_key)]):
        return
    raise unauthorized("reads need a key here: send Authorization: Bearer <AEKNN_READ_KEY>")


@lru_cache(maxsize=8)
def _factory(url: str) -> sessionmaker[Session]:
    return database.open_database(url, pre_ping=False)  # its reads are one round trip: no ping before


def get_factory_for(settings: Settings) -> sessionmaker[Session]:
    return _factory(settings.database_url)


async def get_factory(settings: SettingsDep) -> sessionmaker[Session]:
    return get_factory_for(settings)


FactoryDep = Annotated[sessionmaker[Session], Depends(get_factory)]


@lru_cache(maxsize=8)
def _read_factory(url: str) -> sessionmaker[Session]:
    """Sessions for single-statement reads: autocommit, so no BEGIN/ROLLBACK round trips."""
    return database.autocommit(_factory(url))


def read_factory_for(settings: Settings) -> sessionmaker[Session]:
    return _read_factory(settings.database_url)


async def get_read_factory(settings: SettingsDep) -> sessionmaker[Session]:
    return read_factory_for(settings)


ReadFactoryDep = Annotated[sessionmaker[Session], Depends(get_read_factory)]


def get_db(factory: FactoryDep) -> Iterator[Session]:
    with factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]


def experiment_or_404(experiment_id: int, session: SessionDep) -> reads.Experiment:
    return reads.experiment(session, experiment_id)  # NotFound: 404


ExperimentDep = Annotated[reads.Experiment, Depends(experiment_or_404)]

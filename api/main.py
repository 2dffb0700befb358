"""The REST API over what the workers and `aeknn run` stored. It never imports torch.

Run: ``aeknn serve`` or ``uvicorn --factory api.main:create_app``.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from api import deps, errors
from api.hotpath import NeighborsHotPath
from api.routes import datasets, embeddings, encode, experiments, health, metrics, page, plots, samples, session, sweeps
from common import secrets
from common.settings import Settings, get_settings

MAX_BODY = 1 << 20  # 1 MiB: a study config is a few hundred bytes
log = logging.getLogger("aeknn.api")


@asynccontextmanager
async def lifespan(app: FastAPI):
    """Refuse to start on a database at a schema revision this aeknn cannot use (the message says what
    to run); an empty database gets the schema."""
    from common.store.migrate import SchemaError

    try:
        deps.get_factory_for(app.state.settings)
    except SchemaError as exc:
        log.error("%s", exc)
        raise
    yield


def create_app(settings: Settings | None = None) -> FastAPI:
    # the docs pages (/docs, /redoc) load Swagger UI and ReDoc from this package, not from a CDN: they work
    # on a machine without internet
    app = FastAPIOffline(title="aeknn", version="0.1.0",
                  description="When an autoencoder compresses MNIST to 2-D, which neighbourhoods survive? "
                              "Exact neighbour tables and metric tables, stored and served.",
                  lifespan=lifespan)
    app.state.settings = settings or get_settings()
    secrets.install(app.state.settings)  # no password or key in any answer or log line
    errors.install(app)
    for r in (experiments.router, encode.router, datasets.router, embeddings.router, sweeps.router, samples.router,
              metrics.router, plots.router, health.router, session.router, page.router):
        app.include_router(r)
    app.mount("/static", page.static_files(), name="static")
    app.add_middleware(errors.BodyLimit, limit=MAX_BODY, uploads=app.state.settings.max_upload)
    app.add_middleware(NeighborsHotPath)  # a plain neighbours read skips the rest
    app.add_middleware(errors.HeadAsGet)  # outermost: HEAD goes everywhere GET goes, the hot path included
    return app

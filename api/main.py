"""The REST API over what the workers and `aeknn run` stored. It never imports torch.

Run: ``aeknn serve`` or ``uvicorn --factory api.main:create_app``.
"""

from __future__ import annotations

from fastapi import FastAPI

from api import errors
from api.routes import experiments, health, metrics, page, plots, samples
from common.settings import Settings, get_settings

MAX_BODY = 1 << 20  # 1 MiB: a study config is a few hundred bytes


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(title="aeknn", version="0.1.0",
                  description="When an autoencoder compresses MNIST to 2-D, which neighbourhoods survive? "
                              "Exact neighbour tables and metric tables, stored and served.")
    app.state.settings = settings or get_settings()
    errors.install(app)
    for r in (experiments.router, samples.router, metrics.router, plots.router, health.router, page.router):
        app.include_router(r)
    app.mount("/static", page.static_files(), name="static")
    app.add_middleware(errors.BodyLimit, limit=MAX_BODY)
    return app

"""Liveness for compose health checks: the database and the broker answer."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import FactoryDep, SettingsDep
from api.schemas import HealthOut

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthOut, responses={503: {"model": HealthOut}})
def health(factory: FactoryDep, settings: SettingsDep):
    out = {"database": "ok", "broker": "ok"}
    try:
        with factory() as s:
            s.execute(text("select 1"))
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        out["database"] = f"unreachable: {type(exc).__name__}"
    try:
        import redis

        redis.Redis.from_url(settings.broker_url, socket_connect_timeout=1, socket_timeout=1).ping()
    except Exception as exc:  # noqa: BLE001
        out["broker"] = f"unreachable: {type(exc).__name__}"
    status = 200 if out == {"database": "ok", "broker": "ok"} else 503
    return JSONResponse(status_code=status, content=out)

"""What this server is: its models (GET /models), and whether its database and broker answer (GET /health,
for compose health checks)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import FactoryDep, SettingsDep
from api.schemas import HealthOut, ModelInfo, ModelsOut
from common.compute.names import DEFAULT_MODEL, MODEL_NAMES, SEED_MODELS, model_kind

router = APIRouter(tags=["health"])


@router.get("/models", response_model=ModelsOut)
def models() -> ModelsOut:
    """Every model a study may ask for (POST /experiments' "models"), whether it is trained or a reference
    map, and the one a read shows when none is named: what the web page builds its colours and marks from."""
    return ModelsOut(models=[ModelInfo(name=n, kind=model_kind(n), reconstructs=n in SEED_MODELS) for n in MODEL_NAMES],
                     default=DEFAULT_MODEL)


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

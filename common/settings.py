"""Settings in one place: read from the environment (prefix ``AEKNN_``) with working defaults.

No other module reads ``os.environ``; everything asks :func:`get_settings`, which tests can
override with ``get_settings.cache_clear()`` after changing the environment.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.compute.sizes import DEFAULT_MEMORY_BUDGET, parse_size


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AEKNN_", extra="ignore", env_ignore_empty=True)

    # Where results live; a SQLite file needs no server. PostgreSQL: postgresql+psycopg://...
    database_url: str = "sqlite:///aeknn.db"
    # Where the MNIST / Fashion-MNIST IDX files are looked for (flat, in <dir>/<dataset>/, or a
    # torchvision root); torchvision downloads them into cache_dir when they are nowhere and the
    # network allows.
    data_dir: Path = Path("data")
    # Writable folder where the data files are staged for torchvision (links, extracted copies).
    cache_dir: Path = Path(".aeknn-cache")
    # Working memory for one chunk of neighbour rows: bytes, or a size such as 256M or 1G (default 1 GiB).
    memory_budget: Annotated[int, BeforeValidator(parse_size)] = Field(default=DEFAULT_MEMORY_BUDGET, gt=0)
    # The largest upload (an embedding's .npy, a data set's .npz) the API takes: bytes, or a size such as 512M.
    max_upload: Annotated[int, BeforeValidator(parse_size)] = Field(default=1 << 30, gt=0)
    # auto = CUDA when present, else the CPU.
    device: str = "auto"
    # How pixel tables are computed: auto = the fastest exact path here, measured once per machine and
    # cached in cache_dir; or path names, comma-separated, to force them (int8, f32, f32-numpy, torch for
    # L2; sad-avx512, sad-avx2, sad-portable, torch for L1; sparse for both). A forced path this machine lacks
    # is an error.
    kernel: str = "auto"

    # --- the Celery path (aeknn submit / worker); `aeknn run` needs none of this
    broker_url: str = "redis://127.0.0.1:6379/0"
    # Seconds before Redis hands an unacknowledged task to another worker: longer than any task.
    visibility_timeout: int = Field(default=4 * 3600, gt=0)
    # Deliveries of one task (worker lost, killed, out of memory) before its experiment is FAILED.
    max_attempts: int = Field(default=3, gt=0)
    # A queued task not started after this many seconds is sent again by the sweeper (lost message).
    stale_after: int = Field(default=600, gt=0)
    # How often the sweeper (celery beat inside `aeknn worker`) looks for lost work, in seconds.
    sweep_every: float = Field(default=60.0, gt=0)
    # A worker child is replaced after its resident memory passes this many KiB.
    worker_max_memory_kib: int = Field(default=6 * 1024 * 1024, gt=0)
    # Transient database or broker errors are retried with backoff for this many seconds before the
    # experiment fails; they do not use up max_attempts (which counts deliveries that died or failed).
    retry_budget: float = Field(default=600.0, gt=0)
    # A running task whose worker sent no heartbeat for this many seconds is lost (its machine died): the
    # sweeper sends it again (the broker alone would wait for the visibility timeout).
    lost_after: float = Field(default=120.0, gt=0)
    # How often a running task's worker writes its heartbeat, in seconds.
    heartbeat_every: float = Field(default=20.0, gt=0)

    # --- serving (`aeknn serve`): the address uvicorn listens on (0.0.0.0 inside a container)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # When set, every write (POST /experiments, cancel) needs `Authorization: Bearer <api_key>` (401
    # without); reads stay open unless read_key is set too (then they need either key).
    api_key: str = Field(default="", repr=False)
    read_key: str = Field(default="", repr=False)
    # At most this many experiments queued or running at once; a submit past it gets 429 + Retry-After.
    max_pending: int = Field(default=8, gt=0)
    # The study `aeknn init` submits once (JSON of the POST /experiments body; {} = the seed study)
    init_study: dict[str, Any] = Field(default_factory=dict)

    # How long POST /experiments/{id}/encode waits for the encoder process (`aeknn encoder`), in seconds.
    encode_timeout: float = Field(default=30.0, gt=0)

    # torch threads in each worker pool process (0 = torch's default, all cores; `aeknn worker -c N`
    # sets cores / N).
    worker_threads: int = Field(default=0, ge=0)

    @field_validator("kernel")
    @classmethod
    def _known_kernels(cls, v: str) -> str:
        from common.compute.kernels import parse_spec

        parse_spec(v)  # raises ValueError naming an unknown path
        return v.strip() or "auto"


@lru_cache
def get_settings() -> Settings:
    return Settings()

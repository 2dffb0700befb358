"""Settings in one place: read from the environment (prefix ``AEKNN_``) with working defaults.

No other module reads ``os.environ``; everything asks :func:`get_settings`, which tests can
override with ``get_settings.cache_clear()`` after changing the environment.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AEKNN_", extra="ignore")

    # Where results live; a SQLite file needs no server. PostgreSQL: postgresql+psycopg://...
    database_url: str = "sqlite:///aeknn.db"
    # Where the MNIST / Fashion-MNIST IDX files are looked for (flat, in <dir>/<dataset>/, or a
    # torchvision root); torchvision downloads them into cache_dir when they are nowhere and the
    # network allows.
    data_dir: Path = Path("data")
    # Writable folder where the data files are staged for torchvision (links, extracted copies).
    cache_dir: Path = Path(".aeknn-cache")
    # Working memory for one chunk of neighbour rows, in bytes (default 1 GiB).
    memory_budget: int = Field(default=1 << 30, gt=0)
    # auto = CUDA when present, else the CPU.
    device: str = "auto"


@lru_cache
def get_settings() -> Settings:
    return Settings()

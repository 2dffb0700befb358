"""Where and how the stages run (not part of the study's config): the database, the folders, the device, the
memory budget, the pixel path, and how progress is reported."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from common.compute.sizes import DEFAULT_MEMORY_BUDGET
from common.settings import Settings

log = logging.getLogger("common.study.stages")


class Progress(Protocol):
    """What the stages report; the CLI draws progress bars from it, workers log it."""

    def begin(self, stage: str, total: int, unit: str) -> None: ...
    def advance(self, n: int = 1, info: str | None = None) -> None: ...
    def end(self) -> None: ...
    def note(self, text: str) -> None: ...  # a line worth keeping (how a table was computed)


class LogProgress:
    def begin(self, stage: str, total: int, unit: str) -> None:
        log.info("%s: %d %s", stage, total, unit)

    def advance(self, n: int = 1, info: str | None = None) -> None:
        if info:
            log.debug(info)

    def end(self) -> None:
        pass

    def note(self, text: str) -> None:
        log.info(text)


@dataclass
class Runtime:
    """Where and how the stages run (not part of the study's config)."""

    factory: sessionmaker[Session]
    data_dir: Path
    cache_dir: Path
    device: str = "auto"
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    kernel: str = "auto"  # the pixel tables' path: auto (fastest measured) or forced (common/kernels.py)
    progress: Progress = field(default_factory=LogProgress)
    on_epoch_end: object = None  # optional callable(model_name, Checkpoint), e.g. to stop a run

    @classmethod
    def from_settings(cls, settings: Settings, factory: sessionmaker[Session], **kw) -> Runtime:
        """The runtime the (validated) settings describe: what the CLI and the workers both build."""
        return cls(factory=factory, data_dir=settings.data_dir, cache_dir=settings.cache_dir, device=settings.device,
                   memory_budget=settings.memory_budget, kernel=settings.kernel, **kw)

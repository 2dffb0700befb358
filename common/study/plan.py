"""The study's plan, and the one table that dispatches its stages.

Each stage says what it needs, what it makes, how it runs in this process (``run``) and what work it
lists for the workers (``pending``: the units not done yet; none means the stage is done). The in-process
run (common/study/run.py) goes through the stages in this order; the workers' advance (worker/pipeline.py)
sends the work of every stage whose needs are done, so pixel tables and training run side by side there.
A new stage is a line in PLAN and its two functions here; what it does is in common/study/stages.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from common.compute.data import Dataset
from common.compute.models import is_autoencoder
from common.compute.names import KEEP_MODELS, REFERENCE_MAPS
from common.store import db as db
from common.study import stages
from common.study.config import StudyConfig
from common.study.runtime import Runtime
from common.study.tables import finish_table, plan_table


@dataclass
class InProcess:
    """One experiment run in this process: what a stage's ``run`` gets (the config loaded once)."""

    rt: Runtime
    experiment_id: int
    cfg: StudyConfig
    ds: Dataset | None = None  # the data set, once the "data" stage has loaded it

    def show(self, stage: str) -> None:
        """The experiment's stage as the API shows it ("table original l2" while that table is built)."""
        with db.transaction(self.rt.factory) as s:
            db.update_experiment(session=s, experiment_id=self.experiment_id, stage=stage)

    def tables(self, spaces: list[str]) -> None:
        for name in spaces:
            for d in (x.value for x in self.cfg.distances):
                self.show(f"table {name} {d}")
                if name == db.ORIGINAL:
                    stages.stage_pixel_table(self.rt, self.experiment_id, self.cfg, self.ds, d)
                else:
                    stages.stage_code_table(self.rt, self.experiment_id, self.cfg, self.ds, name, d)


@dataclass(frozen=True)
class Due:
    """One unit of work for the workers: a work item's kind, and for a chunk its table and first row."""

    kind: str  # data | train | keep | maps | chunk | metrics
    table_id: int | None = None
    start: int | None = None


@dataclass
class Stored:
    """What the workers' advance reads of one experiment to list the work not done (each read once)."""

    factory: sessionmaker[Session]
    exp: db.Experiment
    memory_budget: int
    cfg: StudyConfig = field(init=False)
    _data: tuple | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.cfg = StudyConfig.model_validate(self.exp.config)

    def data(self) -> tuple[int, int, dict[str, db.ModelRow]]:
        """The data set's N and dimension, and the experiment's model rows by name."""
        if self._data is None:
            with self.factory() as s:
                ds = s.get(db.DatasetRow, self.exp.dataset_id)
                self._data = (ds.n, len(ds.images) // ds.n // np.dtype(ds.dtype or "uint8").itemsize,
                              {m.name: m for m in db.list_models(session=s, experiment_id=self.exp.id)})
        return self._data

    def models(self, which: Callable[[str], bool] = lambda name: True) -> list[str]:
        return [m.value for m in self.cfg.models if which(m.value)]

    def trained(self, names: list[str]) -> bool:
        rows = self.data()[2]
        return all(m in rows and rows[m].codes is not None for m in names)

    def chunks(self, space: str, model_id: int | None, width: int) -> list[Due]:
        """The chunks not stored of the space's tables (planned here on first sight: every worker agrees)."""
        due = []
        for d in (x.value for x in self.cfg.distances):
            table = plan_table(self.factory, dataset_id=self.exp.dataset_id, space=space, model_id=model_id,
                               distance=d, k=self.cfg.k, n=self.data()[0], dim=width,
                               memory_budget=self.memory_budget, device="cpu")
            if table.complete or finish_table(self.factory, table.id):
                continue
            with self.factory() as s:
                done = db.done_chunks(session=s, table_id=table.id)
            due += [Due("chunk", table.id, start) for start, _ in db.table_chunks(table) if start not in done]
        return due

    def item_done(self, kind: str) -> bool:
        with self.factory() as s:
            item = db.get_item(session=s, experiment_id=self.exp.id, kind=kind)
        return item is not None and item.state == db.DONE


@dataclass(frozen=True)
class Stage:
    name: str  # shown as the experiment's stage
    needs: tuple[str, ...]  # stages that must be done before this one starts
    does: str  # what it makes, in words
    run: Callable[[InProcess], None]  # every unit of the stage, in this process
    pending: Callable[[Stored], list[Due]]  # the units the workers must still run ([] = done)


def _once(kind: str, trained: Callable[[str], bool]) -> Callable[[Stored], list[Due]]:
    """A stage whose work is one item: due until every model it trains has codes."""
    return lambda st: [] if st.trained(st.models(trained)) else [Due(kind)]


def _set_data(r: InProcess) -> None:
    r.ds = stages.stage_data(r.rt, r.experiment_id, r.cfg, r.ds)


PLAN: tuple[Stage, ...] = (
    Stage("data", (), "load, check and store the data set (once per data set and N)",
          _set_data, lambda st: [] if st.exp.dataset_id is not None else [Due("data")]),
    Stage("reference maps", ("data",),
          "fit the reference maps asked for (PCA, UMAP, t-SNE; common/compute/references.py): codes, no weights",
          lambda r: stages.stage_maps(r.rt, r.experiment_id, r.cfg, r.ds), _once("maps", REFERENCE_MAPS.__contains__)),
    Stage("pixel tables", ("data",), "the pixel-space neighbour tables (shared by experiments on the same data)",
          lambda r: r.tables([db.ORIGINAL]), lambda st: st.chunks(db.ORIGINAL, None, st.data()[1])),
    Stage("train", ("data",), "train the autoencoders side by side, with a checkpoint every epoch, then encode",
          lambda r: stages.stage_train(r.rt, r.experiment_id, r.cfg, r.ds), _once("train", is_autoencoder)),
    Stage("train keeping", ("pixel tables",),
          "train relu_keep, when asked for, on the stored pixel-space neighbours (common/compute/keeping.py)",
          lambda r: stages.stage_keep(r.rt, r.experiment_id, r.cfg, r.ds), _once("keep", KEEP_MODELS.__contains__)),
    Stage("code tables", ("reference maps", "train", "train keeping"),
          "the neighbour tables of each model's 2-D codes",
          lambda r: r.tables([m.value for m in r.cfg.models]),
          lambda st: [u for m in st.models() for u in st.chunks(m, st.data()[2][m].id, 2)]),
    Stage("metrics", ("pixel tables", "code tables"), "every metric at every k, from the stored tables",
          lambda r: stages.stage_metrics(r.rt, r.experiment_id),
          lambda st: [] if st.item_done("metrics") else [Due("metrics")]),
)
NAMES = tuple(s.name for s in PLAN)
# The stages after training: in a sweep run here they run in a second process while the next
# experiment trains (common/study/run.py, run_experiments). Nothing before them needs them.
TAIL: tuple[str, ...] = ("code tables", "metrics")


def ready(done: set[str]) -> list[Stage]:
    """The stages not done whose needs all are: what may run now."""
    return [s for s in PLAN if s.name not in done and all(n in done for n in s.needs)]


def _check() -> None:
    """The plan's order is one in which every stage comes after what it needs."""
    seen: set[str] = set()
    for s in PLAN:
        missing = [n for n in s.needs if n not in seen]
        if missing:
            raise AssertionError(f"stage {s.name!r} comes before {missing} that it needs")
        seen.add(s.name)
    if NAMES[len(NAMES) - len(TAIL):] != TAIL:
        raise AssertionError(f"the tail stages {TAIL} must end the plan")


_check()

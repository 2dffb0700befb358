"""The study's stages, each reading its inputs from and writing its results to the database.

The CLI drives them in one process (:func:`run_experiment`); the workers call the same stage
functions from thin tasks. Every stage is idempotent: what is already stored is kept, so a run that
stopped resumes where it stopped (training from its last epoch checkpoint).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from common.compute.data import Dataset, load_dataset, reconstruction_ids
from common.compute.devices import resolve_device
from common.compute.keeping import ENCODER_SHARE, KeepConfig, keep_map, train_keeping
from common.compute.kernels import describe_rate, throughput
from common.compute.models import is_autoencoder
from common.compute.names import REFERENCE_MAPS
from common.compute.neighbors import NeighborTable, Space, knn_rows, plan_chunk, prepare, release_scratch
from common.compute.references import check_available, fit_map
from common.compute.training import Checkpoint, TrainConfig, encode, load_trained, train_group
from common.store import db as db
from common.study import plan
from common.study.config import StudyConfig
from common.study.scoring import store_metrics

log = logging.getLogger(__name__)


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
    memory_budget: int = 1 << 30
    kernel: str = "auto"  # the pixel tables' path: auto (fastest measured) or forced (common/kernels.py)
    progress: Progress = field(default_factory=LogProgress)
    on_epoch_end: object = None  # optional callable(model_name, Checkpoint), e.g. to stop a run


def record_experiment(factory: sessionmaker[Session], config: StudyConfig) -> int:
    """A new experiment, recorded (queued) for this process to run; sends nothing to any broker (that is
    common/study/submissions.py's submit). Returns its id."""
    with db.transaction(factory) as s:
        return db.create_experiment(session=s, config=config.as_json())


def load_config(factory: sessionmaker[Session], experiment_id: int) -> StudyConfig:
    with factory() as s:
        exp = db.get_experiment(session=s, experiment_id=experiment_id)
        if exp is None:
            raise LookupError(f"no experiment {experiment_id}")
        return StudyConfig.model_validate(exp.config)


def _timed(rt: Runtime, experiment_id: int, stage: str, t0: float) -> None:
    with db.transaction(rt.factory) as s:
        db.record_timing(session=s, experiment_id=experiment_id, stage=stage, seconds=time.perf_counter() - t0)


# ---------------------------------------------------------------- stages


def stage_data(rt: Runtime, experiment_id: int) -> Dataset:
    """Load the data set and store it (labels, pixels) once per (data set, N)."""
    cfg = load_config(rt.factory, experiment_id)
    t0 = time.perf_counter()
    ds = load_dataset(cfg.dataset.value, rt.data_dir, rt.cache_dir, cfg.limit)
    with db.transaction(rt.factory) as s:
        dataset_id = db.get_or_create_dataset(session=s, name=ds.name, labels=ds.labels, images=ds.images)
        db.update_experiment(session=s, experiment_id=experiment_id, dataset_id=dataset_id)
    _timed(rt, experiment_id, "data", t0)
    return ds


def plan_table(factory: sessionmaker[Session], *, dataset_id: int, space: str, model_id: int | None,
               distance: str, k: int, n: int, dim: int, memory_budget: int, device: str) -> db.TableRow:
    """The table's row, planned once: its chunks are fixed here so that every worker agrees on them."""
    pixels = space == db.ORIGINAL
    size = plan_chunk(n, dim, k, distance, pixels=pixels, memory_budget=memory_budget,
                      device=resolve_device(device))
    with db.transaction(factory) as s:
        return db.get_or_create_table(session=s, dataset_id=dataset_id, space=space, model_id=model_id,
                                      distance=distance, k=k, n=n, chunk_size=size)


def table_points(session: Session, table: db.TableRow) -> tuple[np.ndarray, np.ndarray]:
    """The points of a table's space (uint8 pixels or float codes) and the samples' labels."""
    ds = session.get(db.DatasetRow, table.dataset_id)
    labels = np.frombuffer(ds.labels, np.uint8)
    if table.model_id is None:
        return np.frombuffer(ds.images, np.uint8).reshape(ds.n, -1).copy(), labels
    return db.model_codes(session.get(db.ModelRow, table.model_id)).copy(), labels


def prepare_space(points: np.ndarray, distance: str, *, device: str, kernel: str, cache_dir: Path | str) -> Space:
    """The points ready for one distance, on the path ``kernel`` asks for (auto: the fastest measured)."""
    return prepare(points, distance, resolve_device(device), kernel=kernel, cache_dir=str(cache_dir))


def store_chunk(factory: sessionmaker[Session], table: db.TableRow, labels: np.ndarray, start: int,
                part: NeighborTable, *, worker: str | None = None, path: str | None = None,
                seconds: float | None = None, work: float | None = None,
                store_seconds: list[float] | None = None) -> bool:
    """Store one chunk's rows with its done-mark (and how it was computed) in one transaction.

    Returns False when the chunk was already stored (a repeated delivery): nothing is written twice.
    ``store_seconds`` collects the time spent storing (the benchmark reports it apart).
    """
    t0 = time.perf_counter()
    try:
        with db.transaction(factory) as s:
            return db.save_chunk(session=s, table_id=table.id, start=start, ids=part.ids,
                                 labels=labels[part.ids], distances=part.distances, worker=worker, path=path,
                                 seconds=seconds, work=work)
    except IntegrityError:  # the same chunk committed by another delivery in the meantime
        return False
    finally:
        if store_seconds is not None:
            store_seconds.append(time.perf_counter() - t0)


def build_chunk(factory: sessionmaker[Session], table: db.TableRow, space: Space, labels: np.ndarray,
                start: int, worker: str | None = None, store_seconds: list[float] | None = None,
                memory_budget: int | None = None) -> bool:
    """Compute one chunk (its rows against every point) and store it; False when already stored.
    ``memory_budget``: the computing process's own, which sizes the blocks its device computes at once."""
    with factory() as s:
        if start in db.done_chunks(session=s, table_id=table.id):
            return False
    stop = min(table.n, start + table.chunk_size)
    t0 = time.perf_counter()
    part = knn_rows(space, start, stop, table.k, memory_budget)
    return store_chunk(factory, table, labels, start, part, worker=worker, path=space.path,
                       seconds=time.perf_counter() - t0, work=space.work_of(stop - start, table.n),
                       store_seconds=store_seconds)


def swept_chunks(space: Space, table: db.TableRow, start: int, memory_budget: int
                 ) -> Iterator[tuple[int, NeighborTable, float, float | None]]:
    """The table's chunks from ``start`` on, computed by the space's whole-table sweep (each block of
    the distance matrix read once for two row sets): (start, rows, compute seconds, work) per chunk."""
    n, k = table.n, table.k
    ids, dist = np.empty((0, k), np.int32), np.empty((0, k), np.float32)
    secs, work = np.empty(0), np.empty(0)  # per pending row: its share of its block's time and work
    sweep = space.sweep(k, memory_budget, start)
    for c0, c1 in db.table_chunks(table):
        if c0 < start:
            continue
        while len(ids) < c1 - c0:
            t0 = time.perf_counter()
            i0, part = next(sweep)
            b = len(part.ids)
            w = space.work_of(b, n - i0 + start)  # the sweep scores these rows against i0..N and 0..start
            secs = np.concatenate([secs, np.full(b, (time.perf_counter() - t0) / b)])
            work = np.concatenate([work, np.full(b, np.nan if w is None else w / b)])
            ids, dist = np.concatenate([ids, part.ids]), np.concatenate([dist, part.distances])
        r = c1 - c0
        w = float(work[:r].sum())
        yield c0, NeighborTable(ids[:r], dist[:r]), float(secs[:r].sum()), None if np.isnan(w) else w
        ids, dist, secs, work = ids[r:], dist[r:], secs[r:], work[r:]


def finish_table(factory: sessionmaker[Session], table_id: int, seconds: float | None = None) -> bool:
    """Mark the table complete when every chunk is stored (decided from the database). True if complete."""
    with db.transaction(factory) as s:
        table = db.get_table(session=s, table_id=table_id)
        if table.complete:
            return True
        if len(db.done_chunks(session=s, table_id=table_id)) < len(db.table_chunks(table)):
            return False
        db.mark_table_complete(session=s, table_id=table_id, seconds=seconds)
        return True


def _build_table(rt: Runtime, *, experiment_id: int, table: db.TableRow, points: np.ndarray,
                 labels: np.ndarray, title: str) -> None:
    """Every chunk not yet stored, in this process; a table left half-written continues where it was.
    Pixel tables go in one sweep from the first missing chunk on where the budget holds its state.
    Records the seconds spent storing its rows as the timing "store <title>", and says how it was computed."""
    t0 = time.perf_counter()
    stored: list[float] = []
    space = prepare_space(points, table.distance, device=rt.device, kernel=rt.kernel, cache_dir=rt.cache_dir)
    with rt.factory() as s:
        done = db.done_chunks(session=s, table_id=table.id)
    chunks = db.table_chunks(table)
    todo = [(a, b) for a, b in chunks if a not in done]
    rt.progress.begin(title, table.n, "rows")
    rt.progress.advance(table.n - sum(b - a for a, b in todo))
    if todo and space.sweep_panel(table.k, rt.memory_budget, todo[0][0]) is not None:
        for start, part, seconds, work in swept_chunks(space, table, todo[0][0], rt.memory_budget):
            if start not in done:
                store_chunk(rt.factory, table, labels, start, part, path=space.path, seconds=seconds, work=work,
                            store_seconds=stored)
            rt.progress.advance(len(part.ids))
    else:
        for start, stop in todo:
            build_chunk(rt.factory, table, space, labels, start, store_seconds=stored, memory_budget=rt.memory_budget)
            rt.progress.advance(stop - start)
    rt.progress.end()
    release_scratch()
    finish_table(rt.factory, table.id, seconds=time.perf_counter() - t0)
    with db.transaction(rt.factory) as s:
        db.record_timing(session=s, experiment_id=experiment_id, stage=f"store {title}", seconds=sum(stored))
        done_table = db.get_table(session=s, table_id=table.id)
        rate = throughput(done_table.path, table.distance, table.n, done_table.compute_seconds, done_table.work)
    rt.progress.note(f"table {title}: {describe_rate(rate)} (computing {done_table.compute_seconds or 0:.1f} s, "
                     f"storing {sum(stored):.1f} s)")


def stage_pixel_table(rt: Runtime, experiment_id: int, ds: Dataset, distance: str) -> None:
    """The pixel-space table, shared by every experiment on the same (data set, N, distance, K)."""
    cfg = load_config(rt.factory, experiment_id)
    t0 = time.perf_counter()
    with rt.factory() as s:
        dataset_id = db.get_experiment(session=s, experiment_id=experiment_id).dataset_id
    table = plan_table(rt.factory, dataset_id=dataset_id, space=db.ORIGINAL, model_id=None, distance=distance,
                       k=cfg.k, n=ds.n, dim=ds.images.shape[1], memory_budget=rt.memory_budget, device=rt.device)
    if table.complete:
        log.info("experiment %d: reusing the stored original/%s table", experiment_id, distance)
        return
    _build_table(rt, experiment_id=experiment_id, table=table, points=ds.images, labels=ds.labels,
                 title=f"original {distance}")
    _timed(rt, experiment_id, f"table original {distance}", t0)


def stage_train(rt: Runtime, experiment_id: int, ds: Dataset, names: list[str]) -> None:
    """Train the models side by side (resuming from their checkpoints), then store each one's
    weights, reconstructions and codes. A model already stored is not trained again."""
    cfg = load_config(rt.factory, experiment_id)
    names = [n for n in names if is_autoencoder(n)]  # relu_keep: stage_keep, once the pixel tables are stored
    with db.transaction(rt.factory) as s:
        rows = {n: db.get_or_create_model(session=s, experiment_id=experiment_id, name=n) for n in names}
    todo = [n for n in names if rows[n].codes is None]
    if not todo:
        return
    saved = {n: Checkpoint.from_bytes(rows[n].checkpoint) for n in todo if rows[n].checkpoint}
    resume = saved if len(saved) == len(todo) and len({c.epoch for c in saved.values()}) == 1 else None
    if saved and resume is None:
        log.warning("experiment %d: checkpoints of %s do not match; training them from the start",
                    experiment_id, todo)
    t0 = time.perf_counter()
    tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                       weight_decay=cfg.weight_decay, seed=cfg.seed)
    rids = reconstruction_ids(ds.labels)
    rt.progress.begin(f"train {','.join(todo)}", cfg.epochs, "epochs")
    if resume is not None:
        log.info("experiment %d: resuming %s from epoch %d", experiment_id, todo,
                 next(iter(resume.values())).epoch)
        rt.progress.advance(next(iter(resume.values())).epoch)

    def on_epoch_end(cks: dict[str, Checkpoint]) -> None:
        with db.transaction(rt.factory) as s:  # every model's epoch, or none of them
            for name, ck in cks.items():
                db.save_checkpoint(session=s, model_id=rows[name].id, epoch=ck.epoch, losses=ck.losses,
                                   checkpoint=ck.to_bytes())
        rt.progress.advance(1, " ".join(f"{n}={ck.losses[-1]:.4f}" for n, ck in cks.items()))
        if callable(rt.on_epoch_end):
            for name, ck in cks.items():
                rt.on_epoch_end(name, ck)

    x = ds.scaled()
    final = train_group(todo, x, tcfg, recon_ids=rids, device=rt.device, resume=resume,
                        on_epoch_end=on_epoch_end)
    rt.progress.end()
    seconds = time.perf_counter() - t0
    for name, ck in final.items():
        _store_trained(rt, rows[name].id, load_trained(name, ck.model_state), x, seconds, recon_ids=rids,
                       recon_epoch=ck.recon_epoch, reconstructions=ck.reconstructions)
    _timed(rt, experiment_id, "train", t0)


def _store_trained(rt: Runtime, model_id: int, model: torch.nn.Module, x: torch.Tensor, seconds: float, *,
                   recon_ids: list[int], recon_epoch: int | None, reconstructions: torch.Tensor | None,
                   codes: np.ndarray | None = None) -> None:
    """A trained model's weights, reconstructions and the code of every sample (``codes``, else the
    model's encoding of ``x``), in one transaction."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    with db.transaction(rt.factory) as s:
        db.save_trained(session=s, model_id=model_id, weights=buf.getvalue(), recon_ids=recon_ids,
                        recon_epoch=recon_epoch,
                        reconstructions=None if reconstructions is None else reconstructions.numpy(),
                        codes=encode(model, x).numpy() if codes is None else codes, seconds=seconds)


def keep_distance(cfg: StudyConfig) -> str:
    """The pixel-space table whose neighbours relu_keep keeps: L2 when the study has it, else L1."""
    distances = [d.value for d in cfg.distances]
    return "l2" if "l2" in distances else distances[0]


def keep_config(cfg: StudyConfig) -> KeepConfig:
    """relu_keep's recipe: the encoder trained keeping.ENCODER_SHARE of the study's epochs (at least 1), at
    its learning rate and seed; its own batch (256 anchors and their positives: the other 510 samples of a
    batch are each anchor's negatives), no weight decay, positives among the first 15 neighbours
    narrowing to the first keeping.FINAL_POSITIVES (each at most K), the pull weighted by
    keeping.ATTRACTION, each anchor's input with keeping.NOISE's noise; then its codes refined for the
    study's epochs (the two together take about one seed model's time)."""
    return KeepConfig(epochs=max(1, round(cfg.epochs * ENCODER_SHARE)), lr=cfg.lr, seed=cfg.seed,
                      positives=min(KeepConfig.positives, cfg.k),
                      final_positives=min(KeepConfig.final_positives, cfg.k), refine_epochs=cfg.epochs)


def stage_keep(rt: Runtime, experiment_id: int, ds: Dataset, names: list[str]) -> None:
    """Train relu_keep (when the experiment has it) on its stored pixel-space table, resuming from its
    checkpoint; store its weights and codes. Stored already: nothing to do."""
    if "relu_keep" not in names:
        return
    cfg = load_config(rt.factory, experiment_id)
    with db.transaction(rt.factory) as s:
        row = db.get_or_create_model(session=s, experiment_id=experiment_id, name="relu_keep")
    if row.codes is not None:
        return
    kcfg, distance = keep_config(cfg), keep_distance(cfg)
    with rt.factory() as s:
        table = db.find_table(session=s, experiment_id=experiment_id, space=db.ORIGINAL, distance=distance)
        if table is None:
            raise RuntimeError(f"relu_keep needs the stored original/{distance} table, which is not complete")
        nbr = db.load_table_ids(session=s, table_id=table.id, n=ds.n, k=table.k, cols=kcfg.columns)
    resume = Checkpoint.from_bytes(row.checkpoint) if row.checkpoint else None
    t0 = time.perf_counter()
    rt.progress.begin("train relu_keep", kcfg.epochs, "epochs")
    if resume is not None:
        log.info("experiment %d: resuming relu_keep from epoch %d", experiment_id, resume.epoch)
        rt.progress.advance(resume.epoch)

    def on_epoch_end(ck: Checkpoint) -> None:
        with db.transaction(rt.factory) as s:
            db.save_checkpoint(session=s, model_id=row.id, epoch=ck.epoch, losses=ck.losses,
                               checkpoint=ck.to_bytes())
        rt.progress.advance(1, f"relu_keep={ck.losses[-1]:.4f}")
        if callable(rt.on_epoch_end):
            rt.on_epoch_end("relu_keep", ck)

    x = ds.scaled()
    model, _ = train_keeping(x, nbr, kcfg, resume=resume, on_epoch_end=on_epoch_end)
    rt.progress.end()
    codes = keep_map(model, x, nbr, kcfg)  # not checkpointed: a resume after the last epoch redoes the same bits
    _store_trained(rt, row.id, model, x, time.perf_counter() - t0, recon_ids=[], recon_epoch=None,
                   reconstructions=None, codes=codes)
    _timed(rt, experiment_id, "train relu_keep", t0)


def stage_maps(rt: Runtime, experiment_id: int, ds: Dataset, names: list[str]) -> None:
    """Fit the reference maps the experiment asks for (PCA; UMAP and t-SNE with the maps extra), each
    seeded by the study's seed, and store their codes: read-only models, no weights. Stored already:
    nothing to do. A missing library fails here, at once (the stage comes first after the data)."""
    cfg = load_config(rt.factory, experiment_id)
    names = [n for n in names if n in REFERENCE_MAPS]
    with db.transaction(rt.factory) as s:
        rows = {n: db.get_or_create_model(session=s, experiment_id=experiment_id, name=n) for n in names}
    todo = [n for n in names if rows[n].codes is None]
    check_available(todo)
    x = ds.scaled().numpy()
    for name in todo:
        t0 = time.perf_counter()
        rt.progress.begin(f"fit {name}", 1, "maps")
        codes, _ = fit_map(name, x, seed=cfg.seed)
        rt.progress.advance(1)
        rt.progress.end()
        with db.transaction(rt.factory) as s:
            db.save_map(session=s, model_id=rows[name].id, codes=codes, seconds=time.perf_counter() - t0)
        _timed(rt, experiment_id, f"fit {name}", t0)


def stage_code_table(rt: Runtime, experiment_id: int, ds: Dataset, name: str, distance: str) -> None:
    cfg = load_config(rt.factory, experiment_id)
    t0 = time.perf_counter()
    with db.transaction(rt.factory) as s:
        dataset_id = db.get_experiment(session=s, experiment_id=experiment_id).dataset_id
        row = db.get_or_create_model(session=s, experiment_id=experiment_id, name=name)
    codes = db.model_codes(row).copy()
    table = plan_table(rt.factory, dataset_id=dataset_id, space=name, model_id=row.id, distance=distance,
                       k=cfg.k, n=ds.n, dim=codes.shape[1], memory_budget=rt.memory_budget, device=rt.device)
    if table.complete:
        return
    _build_table(rt, experiment_id=experiment_id, table=table, points=codes, labels=ds.labels,
                 title=f"{name} {distance}")
    _timed(rt, experiment_id, f"table {name} {distance}", t0)


def stage_metrics(rt: Runtime, experiment_id: int) -> None:
    """All metric tables, from the stored neighbour tables (the database is the source of truth)."""
    t0 = time.perf_counter()
    store_metrics(rt.factory, experiment_id)
    _timed(rt, experiment_id, "metrics", t0)


# ---------------------------------------------------------------- the whole study in one process


class _Run:
    """One experiment run in this process: started (marked running), its stages run in the plan's order
    (all at once, or in two parts on two threads: :func:`run_experiments`), then finished."""

    def __init__(self, rt: Runtime, experiment_id: int) -> None:
        self.rt, self.id = rt, experiment_id
        cfg = load_config(rt.factory, experiment_id)
        self.distances = [d.value for d in cfg.distances]
        self.models = [m.value for m in cfg.models]
        self.ctx: dict = {}
        self.t0 = time.perf_counter()

    def start(self) -> None:
        with db.transaction(self.rt.factory) as s:
            exp = db.get_experiment(session=s, experiment_id=self.id)
            db.update_experiment(session=s, experiment_id=self.id, status=db.RUNNING, error=None,
                                 attempts=exp.attempts + 1, started_at=exp.started_at or db.utcnow())
        self.t0 = time.perf_counter()

    def _stage(self, name: str) -> None:
        with db.transaction(self.rt.factory) as s:
            db.update_experiment(session=s, experiment_id=self.id, stage=name)

    def _tables(self, space: str) -> None:
        rt, eid = self.rt, self.id
        for name in ([db.ORIGINAL] if space == "pixel" else self.models):
            for d in self.distances:
                self._stage(f"table {name} {d}")
                if name == db.ORIGINAL:
                    stage_pixel_table(rt, eid, self.ctx["ds"], d)
                else:
                    stage_code_table(rt, eid, self.ctx["ds"], name, d)

    def stages(self, names: tuple[str, ...]) -> None:
        """The plan's stages among ``names``, in the plan's order; on any error the experiment is failed."""
        rt, eid, ctx = self.rt, self.id, self.ctx
        runners = {  # one per stage of common/study/plan.py
            "data": lambda: ctx.update(ds=stage_data(rt, eid)),
            "reference maps": lambda: stage_maps(rt, eid, ctx["ds"], self.models),
            "pixel tables": lambda: self._tables("pixel"),
            "train": lambda: stage_train(rt, eid, ctx["ds"], self.models),
            "train keeping": lambda: stage_keep(rt, eid, ctx["ds"], self.models),
            "code tables": lambda: self._tables("code"),
            "metrics": lambda: stage_metrics(rt, eid),
        }
        try:
            for st in plan.PLAN:
                if st.name in names:
                    self._stage(st.name)
                    runners[st.name]()
        except BaseException as exc:
            self.fail("interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}")
            raise

    def fail(self, reason: str) -> None:
        with db.transaction(self.rt.factory) as s:
            db.update_experiment(session=s, experiment_id=self.id, status=db.FAILED, error=reason)

    def finish(self) -> None:
        with db.transaction(self.rt.factory) as s:
            db.record_timing(session=s, experiment_id=self.id, stage="total", seconds=time.perf_counter() - self.t0)
            db.update_experiment(session=s, experiment_id=self.id, status=db.SUCCEEDED, stage="done",
                                 finished_at=db.utcnow())


def run_experiment(rt: Runtime, experiment_id: int) -> None:
    """Run (or resume) every stage of an experiment in this process; mark it succeeded or failed."""
    run = _Run(rt, experiment_id)
    run.start()
    run.stages(plan.NAMES)
    run.finish()


class _NoteLines:
    """The progress of a tail process: its notes as lines on stderr, without bars that would fight the
    parent's."""

    def __init__(self, experiment_id: int) -> None:
        self.prefix = f"experiment {experiment_id}: "

    def begin(self, stage: str, total: int, unit: str) -> None:
        pass

    def advance(self, n: int = 1, info: str | None = None) -> None:
        pass

    def end(self) -> None:
        pass

    def note(self, text: str) -> None:
        print(self.prefix + text, file=sys.stderr, flush=True)


def _tail_process(url: str, fields: dict, experiment_id: int, elapsed: float) -> None:
    """A process's whole work: one experiment's code tables and metrics, at idle priority (Linux
    ``SCHED_IDLE``: it runs only on cores nothing else wants, and so do the threads it starts)."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    from common.compute.training import configure_numerics

    configure_numerics()
    engine = db.make_engine(url)
    try:
        rt = Runtime(factory=db.session_factory(engine), progress=_NoteLines(experiment_id), **fields)
        run = _Run(rt, experiment_id)
        run.t0 -= elapsed  # the experiment's total counts its training too
        cfg = load_config(rt.factory, experiment_id)  # the data set its "data" stage loaded (from the cache)
        run.ctx["ds"] = load_dataset(cfg.dataset.value, rt.data_dir, rt.cache_dir, cfg.limit)
        run.stages(plan.TAIL)
        run.finish()
    finally:
        engine.dispose()


def _start_tail(rt: Runtime, experiment_id: int, elapsed: float):
    """A process (spawned: no copy of this one's threads or torch state) that runs ``_tail_process``."""
    url = rt.factory.kw["bind"].url.render_as_string(hide_password=False)  # through a pipe, never in argv
    fields = {f.name: getattr(rt, f.name) for f in dataclasses.fields(rt)
              if f.name not in ("factory", "progress", "on_epoch_end")}
    proc = multiprocessing.get_context("spawn").Process(
        target=_tail_process, args=(url, fields, experiment_id, elapsed), name=f"aeknn-tail-{experiment_id}",
        daemon=True)
    proc.start()
    return proc


def _separate_processes(rt: Runtime) -> bool:
    """A second process can share the database (not an in-memory SQLite one)."""
    url = rt.factory.kw["bind"].url
    return not (url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"))


def run_experiments(rt: Runtime, experiment_ids: list[int]) -> None:
    """Several experiments in this process (a sweep), each one's code tables and metrics in a second
    process while the next one trains.

    Training's two stacks leave the cores idle part of the time (their threads take turns at Python's
    GIL). The 2-D tables and metrics (about 35 s an experiment at N = 60,000 on 2 cores) fill those gaps:
    they run in a process of their own at idle priority (Linux ``SCHED_IDLE``). A process, not a thread:
    a thread of this process would share the GIL with training, and one preempted while holding it
    stalls both training threads. Every result is the same as :func:`run_experiment`'s (training runs
    on its own threads, one torch thread each; the tables and metrics are exact). One tail runs at a
    time, and the last experiment's runs here once its training is done. If a tail fails (or its process
    dies), the sweep stops once the experiment beside it has trained, and that experiment is marked failed
    too; ``aeknn sweep --resume`` continues both from what is stored.
    """
    if not _separate_processes(rt):
        for eid in experiment_ids:
            run_experiment(rt, eid)
        return
    head_stages = tuple(n for n in plan.NAMES if n not in plan.TAIL)
    pending, previous = None, None

    def wait_for_previous(run: _Run) -> None:
        pending.join()
        if pending.exitcode == 0:
            return
        with rt.factory() as s:
            exp = db.get_experiment(session=s, experiment_id=previous)
            error = exp.error if exp.status == db.FAILED else None
        if error is None:  # the process died before it could say why (killed, out of memory)
            how = f"signal {-pending.exitcode}" if pending.exitcode < 0 else f"exit status {pending.exitcode}"
            error = f"its tables and metrics process ended with {how}"
            with db.transaction(rt.factory) as s:
                db.update_experiment(session=s, experiment_id=previous, status=db.FAILED, error=error)
        run.fail(f"stopped after training: experiment {previous} failed (resuming continues from what is stored)")
        raise RuntimeError(f"experiment {previous} failed: {error}")

    try:
        for i, eid in enumerate(experiment_ids):
            rt.progress.note(f"experiment {eid}")
            run = _Run(rt, eid)
            run.start()
            run.stages(head_stages)
            if pending is not None:
                wait_for_previous(run)
                pending = None
            if i == len(experiment_ids) - 1:  # nothing left to overlap with: here, at full priority
                run.stages(plan.TAIL)
                run.finish()
            else:
                pending, previous = _start_tail(rt, eid, time.perf_counter() - run.t0), eid
    finally:
        if pending is not None and pending.is_alive():  # interrupted: the tail goes too (it resumes later)
            pending.terminate()
            pending.join()

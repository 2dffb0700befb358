"""The study's stages, each reading its inputs from and writing its results to the database.

The CLI drives them in one process (common/study/run.py); the workers call the same stage
functions from thin tasks (worker/pipeline.py). Every stage is idempotent: what is already stored is kept, so a run that
stopped resumes where it stopped (training from its last epoch checkpoint).
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import numpy as np
import torch
from sqlalchemy.orm import Session, sessionmaker

from common.compute.data import Dataset, load_dataset, reconstruction_ids
from common.compute.keeping import KeepConfig, keep_map, train_keeping
from common.compute.models import is_autoencoder
from common.compute.names import REFERENCE_MAPS, keep_encoder_epochs
from common.compute.references import check_available, fit_map
from common.compute.refining import refine_columns
from common.compute.sources import has_test_split, locate, read_source
from common.compute.training import Checkpoint, TrainConfig, encode, load_trained, train_group
from common.errors import DataError
from common.store import db as db
from common.study import embeddings
from common.study.config import StudyConfig
from common.study.datasets import read_data
from common.study.ranking import RankSettings
from common.study.runtime import Runtime
from common.study.scoring import has_rank_measures, store_metrics, store_space_metrics, store_space_ranks
from common.study.tables import build_table, plan_table

log = logging.getLogger(__name__)


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


def test_name(name: str) -> str:
    """The stored name of a data set's test split (32 characters at most, as every data set's)."""
    return f"{name[:27]}/test"


def read_test(cfg: StudyConfig, ds: Dataset, data_dir: Path, cache_dir: Path) -> Dataset | None:
    """The held-out test split the config scores (None: it scores the training split only), its first ``limit``
    samples, checked to be samples of the training data's shape and type."""
    if not cfg.scores_test:
        return None
    if cfg.named is not None:
        test = load_dataset(cfg.named, data_dir, cache_dir, cfg.limit, split="test")
    else:
        path = locate(cfg.data, data_dir, cache_dir) if cfg.data is not None else None
        if path is None or not has_test_split(path):
            raise DataError(f"split: {cfg.source} has no test split that aeknn reads (mnist, fashion-mnist and "
                            f"CIFAR folders have one); got split {cfg.split.value}: study it with split train")
        test = read_source(path, split="test")
    images, labels = test.images[: cfg.limit], test.labels[: cfg.limit]
    if tuple(test.shape) != tuple(ds.shape) or images.dtype != ds.images.dtype or not len(images):
        raise DataError(f"split: {cfg.source}'s test split holds {len(images)} samples of shape {tuple(test.shape)} "
                        f"({images.dtype}); its training samples are {tuple(ds.shape)} ({ds.images.dtype})")
    return Dataset(test_name(ds.name), np.ascontiguousarray(images), np.ascontiguousarray(labels), ds.shape,
                   ds.labelled)


def stored_test(factory: sessionmaker[Session], experiment_id: int) -> Dataset | None:
    """The experiment's held-out test split as its data stage stored it, or None (it scores its training split)."""
    with factory() as s:
        exp = db.get_experiment(session=s, experiment_id=experiment_id)
        if exp.test_dataset_id is None:
            return None
        row = s.get(db.DatasetRow, exp.test_dataset_id)
        return Dataset(row.name, db.dataset_values(row), np.frombuffer(row.labels, np.uint8), db.dataset_shape(row),
                       db.dataset_labelled(row))


def scaled_like(test: Dataset, ds: Dataset) -> torch.Tensor:
    """The test split's inputs as the models see the training data's: bytes as x/255*2-1, float data by the
    training data's range."""
    from common.compute.pictures import unit_scaled

    return torch.from_numpy(unit_scaled(test.images, ds.images))


def stored_dataset(factory: sessionmaker[Session], experiment_id: int) -> Dataset:
    """The experiment's data as its data stage stored it (the database is the source of truth)."""
    with factory() as s:
        exp = db.get_experiment(session=s, experiment_id=experiment_id)
        row = s.get(db.DatasetRow, exp.dataset_id)
        return Dataset(row.name, db.dataset_values(row), np.frombuffer(row.labels, np.uint8),
                       db.dataset_shape(row), db.dataset_labelled(row))


def stage_data(rt: Runtime, experiment_id: int, cfg: StudyConfig, ds: Dataset | None = None) -> Dataset:
    """Load the data set (unless ``ds`` is it, read already) and store it (labels, pixels, one sample's
    shape) once per (data set, N); the held-out test split too, when the study scores it."""
    t0 = time.perf_counter()
    if ds is None:
        ds = read_data(cfg, rt.data_dir, rt.cache_dir, rt.factory)
    test = read_test(cfg, ds, rt.data_dir, rt.cache_dir)
    with db.transaction(rt.factory) as s:
        dataset_id = db.get_or_create_dataset(session=s, name=ds.name, labels=ds.labels, images=ds.images,
                                              shape=ds.shape, labelled=ds.labelled)
        test_id = None if test is None else db.get_or_create_dataset(
            session=s, name=test.name, labels=test.labels, images=test.images, shape=test.shape,
            labelled=test.labelled)
        db.update_experiment(session=s, experiment_id=experiment_id, dataset_id=dataset_id, test_dataset_id=test_id)
    _timed(rt, experiment_id, "data", t0)
    return ds


def stage_pixel_table(rt: Runtime, experiment_id: int, cfg: StudyConfig, ds: Dataset, distance: str) -> None:
    """The pixel-space table, shared by every experiment on the same (data set, N, distance, K)."""
    t0 = time.perf_counter()
    with rt.factory() as s:
        dataset_id = db.get_experiment(session=s, experiment_id=experiment_id).dataset_id
    table = plan_table(rt.factory, dataset_id=dataset_id, space=db.ORIGINAL, model_id=None, distance=distance,
                       k=cfg.k, n=ds.n, dim=ds.images.shape[1], memory_budget=rt.memory_budget, device=rt.device)
    if table.complete:
        log.info("experiment %d: reusing the stored original/%s table", experiment_id, distance)
        return
    build_table(rt, experiment_id=experiment_id, table=table, points=ds.images,
                 title=f"original {distance}")
    _timed(rt, experiment_id, f"table original {distance}", t0)


def stage_train(rt: Runtime, experiment_id: int, cfg: StudyConfig, ds: Dataset) -> None:
    """Train the autoencoders side by side (resuming from their checkpoints), then store each one's
    weights, reconstructions and codes. A model already stored is not trained again."""
    names = [m.value for m in cfg.models if is_autoencoder(m.value)]  # relu_keep: stage_keep, after the pixels
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
    test = stored_test(rt.factory, experiment_id)
    xt = None if test is None else scaled_like(test, ds)
    for name, ck in final.items():
        model = load_trained(name, ck.model_state)
        _store_trained(rt, rows[name].id, model, x, seconds, recon_ids=rids, recon_epoch=ck.recon_epoch,
                       reconstructions=ck.reconstructions,
                       test_codes=None if xt is None else encode(model, xt).numpy())
    _timed(rt, experiment_id, "train", t0)


def _store_trained(rt: Runtime, model_id: int, model: torch.nn.Module, x: torch.Tensor, seconds: float, *,
                   recon_ids: list[int], recon_epoch: int | None, reconstructions: torch.Tensor | None,
                   codes: np.ndarray | None = None, test_codes: np.ndarray | None = None) -> None:
    """A trained model's weights, reconstructions and the code of every sample (``codes``, else the
    model's encoding of ``x``), and the held-out test split's codes when the study scores it, in one
    transaction."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    with db.transaction(rt.factory) as s:
        db.save_trained(session=s, model_id=model_id, weights=buf.getvalue(), recon_ids=recon_ids,
                        recon_epoch=recon_epoch,
                        reconstructions=None if reconstructions is None else reconstructions.numpy(),
                        codes=encode(model, x).numpy() if codes is None else codes, seconds=seconds,
                        test_codes=test_codes)


def keep_distance(cfg: StudyConfig) -> str:
    """The pixel-space table whose neighbours relu_keep keeps: L2 when the study has it, else L1."""
    distances = [d.value for d in cfg.distances]
    return "l2" if "l2" in distances else distances[0]


def keep_config(cfg: StudyConfig) -> KeepConfig:
    """relu_keep's recipe: the encoder trained names.KEEP_ENCODER_SHARE of the study's epochs (at least 1), at
    its learning rate and seed; its own batch (256 anchors and their positives: the other 510 samples of a
    batch are each anchor's negatives), no weight decay, positives among the first 15 neighbours
    narrowing to the first keeping.FINAL_POSITIVES (each at most K), the pull weighted by
    keeping.ATTRACTION, each anchor's input with keeping.NOISE's noise; then its codes refined under
    t-SNE's objective over the exact table (common/compute/refining.py; the two together take less time
    than openTSNE on the same images)."""
    return KeepConfig(epochs=keep_encoder_epochs(cfg.epochs), lr=cfg.lr, seed=cfg.seed,
                      positives=min(KeepConfig.positives, cfg.k),
                      final_positives=min(KeepConfig.final_positives, cfg.k), refine_epochs=cfg.epochs)


def stage_keep(rt: Runtime, experiment_id: int, cfg: StudyConfig, ds: Dataset) -> None:
    """Train relu_keep (when the experiment has it) on its stored pixel-space table, resuming from its
    checkpoint; store its weights and codes. Stored already: nothing to do."""
    if "relu_keep" not in [m.value for m in cfg.models]:
        return
    with db.transaction(rt.factory) as s:
        row = db.get_or_create_model(session=s, experiment_id=experiment_id, name="relu_keep")
    if row.codes is not None:
        return
    kcfg, distance = keep_config(cfg), keep_distance(cfg)
    with rt.factory() as s:
        table = db.find_table(session=s, experiment_id=experiment_id, space=db.ORIGINAL, distance=distance)
        if table is None:
            raise RuntimeError(f"relu_keep needs the stored original/{distance} table, which is not complete")
        nbr = db.load_table_ids(session=s, table_id=table.id, n=ds.n, k=table.k,
                                cols=min(table.k, max(kcfg.columns, refine_columns())))
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
    codes = keep_map(model, x, nbr, kcfg, ds.images, distance)  # not checkpointed: a resume redoes the same bits
    test, t1 = stored_test(rt.factory, experiment_id), time.perf_counter()
    test_codes = None if test is None else place_test(codes, ds, test, kcfg, distance)
    if test is not None:
        _timed(rt, experiment_id, "place test split relu_keep", t1)
    _store_trained(rt, row.id, model, x, time.perf_counter() - t0, recon_ids=[], recon_epoch=None,
                   reconstructions=None, codes=codes, test_codes=test_codes)
    _timed(rt, experiment_id, "train relu_keep", t0)


def place_test(codes: np.ndarray, ds: Dataset, test: Dataset, kcfg: KeepConfig, distance: str) -> np.ndarray:
    """The held-out test split on relu_keep's refined map, held still: each started at the median of its
    nearest training images' codes, then placed together as keeping.place places unseen samples (each
    pulled towards its first pixel-space neighbours among the training and test samples)."""
    from common.compute.keeping import PLACE_EPOCHS, PLACE_POSITIVES, map_start, place
    from common.compute.placing import unseen_neighbors

    nbr = unseen_neighbors(ds.images, test.images, distance, PLACE_POSITIVES)
    return place(map_start(codes, nbr), codes, nbr, kcfg, PLACE_EPOCHS)


def stage_maps(rt: Runtime, experiment_id: int, cfg: StudyConfig, ds: Dataset) -> None:
    """Fit the reference maps the experiment asks for (PCA; UMAP and t-SNE with the maps extra), each
    seeded by the study's seed, and store their codes (and the held-out test split's, placed by each map's
    transform, when the study scores it): read-only models, no weights. Stored already:
    nothing to do. A missing library fails here, at once (the stage comes first after the data)."""
    names = [m.value for m in cfg.models if m.value in REFERENCE_MAPS]
    with db.transaction(rt.factory) as s:
        rows = {n: db.get_or_create_model(session=s, experiment_id=experiment_id, name=n) for n in names}
    todo = [n for n in names if rows[n].codes is None]
    check_available(todo)
    x = ds.scaled().numpy()
    test = stored_test(rt.factory, experiment_id) if todo else None
    for name in todo:
        t0 = time.perf_counter()
        rt.progress.begin(f"fit {name}", 1, "maps")
        codes, transform = fit_map(name, x, seed=cfg.seed)
        test_codes = None if test is None else transform(scaled_like(test, ds).numpy())  # its library's transform
        rt.progress.advance(1)
        rt.progress.end()
        with db.transaction(rt.factory) as s:
            db.save_map(session=s, model_id=rows[name].id, codes=codes, seconds=time.perf_counter() - t0,
                        test_codes=test_codes)
        _timed(rt, experiment_id, f"fit {name}", t0)


def stage_code_table(rt: Runtime, experiment_id: int, cfg: StudyConfig, ds: Dataset, name: str,
                     distance: str) -> None:
    """A model's code-space table (2-D codes, exact float rule)."""
    t0 = time.perf_counter()
    with db.transaction(rt.factory) as s:
        dataset_id = db.get_experiment(session=s, experiment_id=experiment_id).dataset_id
        row = db.get_or_create_model(session=s, experiment_id=experiment_id, name=name)
    codes = db.model_codes(row).copy()
    table = plan_table(rt.factory, dataset_id=dataset_id, space=name, model_id=row.id, distance=distance,
                       k=cfg.k, n=ds.n, dim=codes.shape[1], memory_budget=rt.memory_budget, device=rt.device)
    if table.complete:
        return
    build_table(rt, experiment_id=experiment_id, table=table, points=codes,
                 title=f"{name} {distance}")
    _timed(rt, experiment_id, f"table {name} {distance}", t0)


def stage_embedding(rt: Runtime, experiment_id: int, name: str) -> None:
    """Score one uploaded embedding: ``stage_embeddings`` of it alone (a worker's task)."""
    stage_embeddings(rt, experiment_id, [name])


def stage_embeddings(rt: Runtime, experiment_id: int, names: list[str]) -> None:
    """Score uploaded embeddings (common/study/embeddings.py): each one's code-space tables at the experiment's
    K for each of its distances, then every metric at every k. Each is ready, and the experiment's revision
    bumped, once all are stored but the rank measures, which follow for all of them at once (one pass over
    the pixels per distance, however many spaces: they read null until then); a repeated run continues where
    one stopped, a ready one with its rank measures costs nothing."""
    pending = [name for name in names if _score_embedding(rt, experiment_id, name)]
    if pending:
        t1 = time.perf_counter()
        store_space_ranks(rt.factory, experiment_id, pending, rank_settings(rt))
        for name in pending:  # the time until its measures were stored: one pass shared by all of them
            _timed(rt, experiment_id, f"embedding {name} rank measures", t1)


def _score_embedding(rt: Runtime, experiment_id: int, name: str) -> bool:
    """An upload's tables and every metric but the rank measures, then ready; whether its rank measures are
    still to be stored."""
    t0 = time.perf_counter()
    with rt.factory() as s:
        exp = db.get_experiment(session=s, experiment_id=experiment_id)
        row = embeddings.upload(s, experiment_id, name)
        if row.state == embeddings.READY:
            return not has_rank_measures(s, experiment_id, name)
        cfg = StudyConfig.model_validate(exp.config)
        labels = db.dataset_labels(session=s, dataset_id=exp.dataset_id).copy()
        codes = db.model_codes(row).copy()
    embeddings.set_state(rt.factory, row.id, embeddings.SCORING)
    try:
        for d in (x.value for x in cfg.distances):
            table = plan_table(rt.factory, dataset_id=exp.dataset_id, space=name, model_id=row.id, distance=d,
                               k=cfg.k, n=len(labels), dim=codes.shape[1], memory_budget=rt.memory_budget,
                               device=rt.device)
            if not table.complete:
                t1 = time.perf_counter()
                build_table(rt, experiment_id=experiment_id, table=table, points=codes,
                            title=f"{name} {d}")
                _timed(rt, experiment_id, f"table {name} {d}", t1)
        store_space_metrics(rt.factory, experiment_id, name)
    except Exception as e:
        embeddings.set_state(rt.factory, row.id, embeddings.FAILED, f"{type(e).__name__}: {e}")
        raise
    embeddings.set_state(rt.factory, row.id, embeddings.READY)
    _timed(rt, experiment_id, f"embedding {name}", t0)
    return True


def rank_settings(rt: Runtime) -> RankSettings:
    """The exact-rank passes run where the tables do (device, pixel path, memory budget)."""
    return RankSettings.of(rt)


def stage_metrics(rt: Runtime, experiment_id: int) -> None:
    """All metric tables, from the stored neighbour tables (the database is the source of truth), and the
    rank-based measures from exact ranks over the stored points and codes (each pass's time recorded)."""
    t0 = time.perf_counter()
    settings = rank_settings(rt)
    store_metrics(rt.factory, experiment_id, settings)
    with db.transaction(rt.factory) as s:
        for stage, seconds in settings.seconds.items():
            db.record_timing(session=s, experiment_id=experiment_id, stage=stage, seconds=seconds)
    _timed(rt, experiment_id, "metrics", t0)



"""The storage schema and the repository functions every stage uses (SQLAlchemy 2.0).

SQLite (WAL, busy timeout) by default; PostgreSQL through a ``postgresql+psycopg://`` URL.
A neighbour table is one row per sample: its K ids (int32), labels (uint8) and distances (float32)
packed little-endian in three blobs, so one sample's neighbours cost one indexed read.
Routes, tasks and the CLI go through the functions here, not through raw ``select()``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from sqlalchemy import (
    JSON,
    Engine,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    false,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

# job states; "submitting": recorded, its first task being sent (a 202 is answered only once it is sent)
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
SUBMITTING = "submitting"
JOB_STATES = (SUBMITTING, QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
PENDING = (SUBMITTING, QUEUED, RUNNING)  # what counts against the cap on pending experiments
ORIGINAL = "original"  # the pixel space; code spaces are named by their model


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class DatasetRow(Base):
    """A data set as studied: name, the first n samples, their labels and pixels."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("name", "n"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(32))
    n: Mapped[int] = mapped_column(Integer)
    labels: Mapped[bytes] = mapped_column(LargeBinary)  # (n,) uint8
    images: Mapped[bytes] = mapped_column(LargeBinary)  # (n, D) uint8: (n, 784) for MNIST
    # one sample's shape: [H, W] grey, [H, W, C] colour, [D] values; none (stored before 0007): 28 x 28
    shape: Mapped[list | None] = mapped_column(JSON)
    # false: the data came without labels (stored as 0; every label metric absent); none (before 0007): true
    labelled: Mapped[bool | None] = mapped_column()
    # the values' type: uint8 (none: stored before 0007) on the exact integer paths, float32 or float64 otherwise
    dtype: Mapped[str | None] = mapped_column(String(8))
    # an upload (POST /datasets): the SHA-256 of its body, so the same bytes are one data set; none otherwise
    sha256: Mapped[str | None] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[dt.datetime | None] = mapped_column(default=utcnow)


class Experiment(Base):
    __tablename__ = "experiments"
    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    config: Mapped[dict] = mapped_column(JSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    stage: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    timings: Mapped[dict] = mapped_column(JSON, default=dict)  # stage -> seconds
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"))
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    # every metric is stored at every k from 1 to K (older experiments have their config's ks only,
    # until a worker fills the rest: see common/scoring.py)
    metrics_all_k: Mapped[bool] = mapped_column(default=False, server_default=false())
    # bumped whenever a space is added (an uploaded embedding): what a cache of its spaces revalidates by
    revision: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # the held-out test split ("split": "test" or "all"), stored beside the training data: a datasets row
    test_dataset_id: Mapped[int | None] = mapped_column(Integer)


class ModelRow(Base):
    """One trained (or training) model of an experiment, with its checkpoint and results."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("experiment_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(32))
    epochs_done: Mapped[int] = mapped_column(Integer, default=0)
    losses: Mapped[list] = mapped_column(JSON, default=list)  # mean loss of each epoch
    checkpoint: Mapped[bytes | None] = mapped_column(LargeBinary)  # latest epoch, written atomically
    weights: Mapped[bytes | None] = mapped_column(LargeBinary)  # final state_dict (torch.save)
    recon_ids: Mapped[list | None] = mapped_column(JSON)
    recon_epoch: Mapped[int | None] = mapped_column(Integer)
    reconstructions: Mapped[bytes | None] = mapped_column(LargeBinary)  # (R, 784) float32
    codes: Mapped[bytes | None] = mapped_column(LargeBinary)  # (n, 2) float32; an upload's (n, code_dim) float64
    test_codes: Mapped[bytes | None] = mapped_column(LargeBinary)  # the held-out test split's (n_test, 2) float32
    seconds: Mapped[float | None] = mapped_column(Float)
    # an uploaded embedding (source "uploaded"): a user's codes scored beside the study's models
    source: Mapped[str | None] = mapped_column(String(16))  # None: trained or a reference map (by its name)
    code_dim: Mapped[int | None] = mapped_column(Integer)  # None: 2 (float32)
    created_at: Mapped[dt.datetime | None]
    state: Mapped[str | None] = mapped_column(String(16))  # an upload's: queued, scoring, ready, failed
    error: Mapped[str | None] = mapped_column(Text)


class TableRow(Base):
    """A neighbour table. Pixel-space tables belong to a data set and are shared by experiments."""

    __tablename__ = "neighbor_tables"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    space: Mapped[str] = mapped_column(String(32))  # "original" or the model's name
    distance: Mapped[str] = mapped_column(String(8))
    k: Mapped[int] = mapped_column(Integer)
    n: Mapped[int] = mapped_column(Integer)
    chunk_size: Mapped[int] = mapped_column(Integer)  # query rows per chunk, fixed when the table is planned
    complete: Mapped[bool] = mapped_column(default=False)
    seconds: Mapped[float | None] = mapped_column(Float)  # wall time of the whole table, storing included
    # how its chunks were computed, summed from them when it completes (common/kernels.py names the paths)
    path: Mapped[str | None] = mapped_column(String(64))  # "f32"; "int8+f32" when workers differed
    compute_seconds: Mapped[float | None] = mapped_column(Float)  # computing only, storing excluded
    work: Mapped[float | None] = mapped_column(Float)  # billions of the path's units (GFLOP or pair-SADs)


class ChunkRow(Base):
    """A chunk of a table whose rows are stored: written in the same transaction as the rows."""

    __tablename__ = "neighbor_chunks"
    table_id: Mapped[int] = mapped_column(
        ForeignKey("neighbor_tables.id", ondelete="CASCADE"), primary_key=True
    )
    start: Mapped[int] = mapped_column(Integer, primary_key=True)
    stop: Mapped[int] = mapped_column(Integer)
    done_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    worker: Mapped[str | None] = mapped_column(String(200))  # who computed it
    path: Mapped[str | None] = mapped_column(String(32))  # how (common/kernels.py)
    seconds: Mapped[float | None] = mapped_column(Float)  # computing its rows, storing excluded
    work: Mapped[float | None] = mapped_column(Float)  # billions of the path's units of work


class NeighborRow(Base):
    __tablename__ = "neighbor_rows"
    table_id: Mapped[int] = mapped_column(
        ForeignKey("neighbor_tables.id", ondelete="CASCADE"), primary_key=True
    )
    sample_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # (K,) ids: 3 bytes each, little-endian, where every id is below 2^24; else int32 (and rows stored by an
    # older aeknn). Its labels and distances are not kept (empty): the reads layer takes them from the data
    # set's labels and computes them again from the points, in the tables' own arithmetic (about 3 times
    # smaller). Rows written before hold them: (K,) uint8 and (K,) float32 little-endian.
    ids: Mapped[bytes] = mapped_column(LargeBinary)
    labels: Mapped[bytes] = mapped_column(LargeBinary)
    distances: Mapped[bytes] = mapped_column(LargeBinary)


class WorkItem(Base):
    """One unit of an experiment's work on the broker (data, train, a chunk, metrics): its state and
    attempts live here, so that the broker may lose or repeat messages without losing or repeating work."""

    __tablename__ = "work_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(32))  # data | train | keep | maps | chunk | metrics
    table_id: Mapped[int | None] = mapped_column(Integer)
    start: Mapped[int | None] = mapped_column(Integer)
    # queued | running, then closed: done | failed | cancelled (its experiment stopped first)
    state: Mapped[str] = mapped_column(String(16), default=QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    enqueued_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    worker: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    # written every few seconds while it runs: a running item whose heartbeat stops was lost with its worker
    heartbeat_at: Mapped[dt.datetime | None]


class SweepRow(Base):
    """A sweep: a base study and a grid over some of its fields, run as ordinary experiments."""

    __tablename__ = "sweeps"
    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    base: Mapped[dict] = mapped_column(JSON)  # the study config every point starts from
    grid: Mapped[dict] = mapped_column(JSON)  # field -> the values it takes
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)


class SweepPoint(Base):
    """One grid point of a sweep: its config, and the experiment that runs it (new, or an earlier one with
    the same config, reused)."""

    __tablename__ = "sweep_points"
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    config: Mapped[dict] = mapped_column(JSON)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id"))
    reused: Mapped[bool] = mapped_column(default=False)  # an experiment that existed before the sweep


class PlotRow(Base):
    """A rendered plot of a finished experiment: drawn once, then served as stored."""

    __tablename__ = "plots"
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(32), primary_key=True)  # loss | latent | reconstructions
    model: Mapped[str] = mapped_column(String(32), primary_key=True)  # "" = every model
    png: Mapped[bytes] = mapped_column(LargeBinary)


class MetricValue(Base):
    """One number of one metric table. ``space`` is "original" or a model; label -1 = all samples."""

    __tablename__ = "metric_values"
    __table_args__ = (UniqueConstraint("experiment_id", "metric", "space", "distance", "k", "label"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    metric: Mapped[str] = mapped_column(String(32))
    space: Mapped[str] = mapped_column(String(32))
    distance: Mapped[str] = mapped_column(String(8))
    k: Mapped[int] = mapped_column(Integer)
    label: Mapped[int] = mapped_column(Integer, default=-1)
    value: Mapped[float] = mapped_column(Float)


# ---------------------------------------------------------------- engine and sessions


def make_engine(url: str, *, pre_ping: bool = True) -> Engine:
    """An engine with SQLite set up for one writer and many readers (WAL, busy timeout).

    ``pre_ping`` tests each pooled PostgreSQL connection before use (one round trip): the workers
    want it; the API, whose reads are one round trip themselves, turns it off and answers 503 once
    if a connection went stale."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            # a new file only (no effect once it has tables): a neighbour row is ~1.8 KB, so 4 KB pages
            # hold two and waste 11 %; 32 KB pages hold 18 (the ten seed tables: 1.24 -> 1.12 GB)
            cur.execute("PRAGMA page_size=32768")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=pre_ping)


def init_db(engine: Engine) -> None:
    """Make the database ready: an empty one gets the schema (Alembic's migrations); one at another
    revision is refused with a message that says what to run (common.migrate.SchemaError)."""
    from common.store.migrate import prepare

    prepare(engine)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One short transaction: committed on success, rolled back on any error."""
    with factory() as session, session.begin():
        yield session


# ---------------------------------------------------------------- data sets


def _insert_or_find(session: Session, row: Base, find) -> Any:
    """Insert ``row``; if another process inserted the same unique key at the same moment (two workers
    preparing two experiments on one data set), use that one: ``find()`` reads it back."""
    from sqlalchemy.exc import IntegrityError

    try:
        with session.begin_nested():  # a savepoint: the caller's transaction survives a lost race
            session.add(row)
            session.flush()
        return row
    except IntegrityError:
        found = find()
        if found is None:
            raise
        return found


def dataset_shape(row: DatasetRow) -> tuple[int, ...]:
    """One sample's shape: (H, W), (H, W, C) or (D,); a row stored before the column existed is MNIST's."""
    return tuple(row.shape) if row.shape else (28, 28)


def dataset_labelled(row: DatasetRow) -> bool:
    """Whether the data set came with labels (a row stored before the column existed did)."""
    return row.labelled is not False


def dataset_values(row: DatasetRow) -> np.ndarray:
    """The data set's (n, D) values, writable (as torch wants its arrays): bytes, or float32/float64."""
    return np.frombuffer(row.images, np.dtype(row.dtype or "uint8")).reshape(row.n, -1).copy()


def get_or_create_dataset(*, session: Session, name: str, labels: np.ndarray, images: np.ndarray,
                          shape: Sequence[int] = (28, 28), labelled: bool = True) -> int:
    n = int(labels.shape[0])

    def find():
        return session.scalar(select(DatasetRow.id).where(DatasetRow.name == name, DatasetRow.n == n))

    found = find()
    if found is not None:
        return found
    if images.dtype not in (np.uint8, np.float32, np.float64):
        raise ValueError(f"values of type {images.dtype}; stored are uint8, float32 and float64")
    row = DatasetRow(name=name, n=n, labels=labels.astype(np.uint8).tobytes(), images=images.tobytes(),
                     shape=[int(v) for v in shape], dtype=images.dtype.name, labelled=labelled)
    got = _insert_or_find(session, row, find)
    return got.id if isinstance(got, DatasetRow) else got


def dataset_labels(*, session: Session, dataset_id: int) -> np.ndarray:
    data = session.scalar(select(DatasetRow.labels).where(DatasetRow.id == dataset_id))
    return np.frombuffer(data, np.uint8)


# ---------------------------------------------------------------- experiments


def create_experiment(*, session: Session, config: dict[str, Any], idempotency_key: str | None = None,
                      status: str = QUEUED) -> int:
    exp = Experiment(config=config, status=status, timings={}, idempotency_key=idempotency_key)
    session.add(exp)
    session.flush()
    return exp.id


def get_experiment(*, session: Session, experiment_id: int) -> Experiment | None:
    return session.get(Experiment, experiment_id)


def experiment_by_key(*, session: Session, idempotency_key: str) -> int | None:
    return session.scalar(select(Experiment.id).where(Experiment.idempotency_key == idempotency_key))


def pending_experiments(*, session: Session) -> list[Experiment]:
    """Experiments submitting, queued or running, oldest first."""
    return list(session.scalars(select(Experiment).where(Experiment.status.in_(PENDING)).order_by(Experiment.id)))


def serialize(*, session: Session, name: str) -> None:
    """Hold the database's lock named ``name`` until the caller's transaction ends, so that what it
    reads and then writes is not interleaved with another process doing the same (PostgreSQL: an
    advisory lock; SQLite: the write lock, taken by a write that changes nothing)."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy import text

        key = int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "big") & 0x7FFFFFFFFFFFFFFF
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
    else:
        session.execute(update(Experiment).where(Experiment.id == -1).values(stage=None))


def list_experiments(*, session: Session, offset: int, limit: int) -> tuple[list[Experiment], int]:
    """A page of experiments, newest first, and how many there are."""
    from sqlalchemy import func

    total = session.scalar(select(func.count()).select_from(Experiment))
    rows = session.scalars(select(Experiment).order_by(Experiment.id.desc()).offset(offset).limit(limit))
    return list(rows), int(total)


def latest_experiment_id(*, session: Session, status: str | None = SUCCEEDED) -> int | None:
    q = select(Experiment.id).order_by(Experiment.id.desc()).limit(1)
    if status is not None:
        q = q.where(Experiment.status == status)
    return session.scalar(q)


def update_experiment(*, session: Session, experiment_id: int, **values: Any) -> None:
    session.execute(update(Experiment).where(Experiment.id == experiment_id).values(**values))


def record_timing(*, session: Session, experiment_id: int, stage: str, seconds: float) -> None:
    exp = session.get(Experiment, experiment_id, with_for_update=True)
    exp.timings = {**(exp.timings or {}), stage: round(seconds, 3)}


# ---------------------------------------------------------------- models


def get_or_create_model(*, session: Session, experiment_id: int, name: str) -> ModelRow:
    def find():
        return session.scalar(select(ModelRow).where(ModelRow.experiment_id == experiment_id, ModelRow.name == name))

    row = find()
    if row is None:
        row = _insert_or_find(session, ModelRow(experiment_id=experiment_id, name=name, epochs_done=0, losses=[]),
                              find)
    return row


def list_models(*, session: Session, experiment_id: int) -> list[ModelRow]:
    return list(session.scalars(select(ModelRow).where(ModelRow.experiment_id == experiment_id)
                                .order_by(ModelRow.id)))


def save_checkpoint(*, session: Session, model_id: int, epoch: int, losses: list[float],
                    checkpoint: bytes) -> None:
    """The epoch's checkpoint, its loss history and progress, in the caller's one transaction."""
    session.execute(update(ModelRow).where(ModelRow.id == model_id).values(
        epochs_done=epoch, losses=list(losses), checkpoint=checkpoint))


def _f4(codes: np.ndarray | None) -> bytes | None:
    return None if codes is None else np.asarray(codes).astype("<f4").tobytes()


def save_trained(*, session: Session, model_id: int, weights: bytes, recon_ids: list[int],
                 recon_epoch: int | None, reconstructions: np.ndarray | None, codes: np.ndarray,
                 seconds: float | None, test_codes: np.ndarray | None = None) -> None:
    """A trained model: its weights, reconstructions and codes (and the held-out test split's, when studied)."""
    session.execute(update(ModelRow).where(ModelRow.id == model_id).values(
        weights=weights, recon_ids=recon_ids, recon_epoch=recon_epoch, reconstructions=_f4(reconstructions),
        codes=_f4(codes), seconds=seconds, test_codes=_f4(test_codes)))


def save_map(*, session: Session, model_id: int, codes: np.ndarray, seconds: float,
             test_codes: np.ndarray | None = None) -> None:
    """A reference map's codes (common/compute/references.py): fitted once, so its one "epoch" is done; the
    held-out test split's placed by its transform, when studied."""
    session.execute(update(ModelRow).where(ModelRow.id == model_id).values(
        epochs_done=1, codes=_f4(codes), seconds=seconds, test_codes=_f4(test_codes)))


def waiting_uploads(*, session: Session, before: dt.datetime) -> list[int]:
    """Uploaded embeddings still queued that were stored before ``before`` (their message may be lost)."""
    return list(session.scalars(select(ModelRow.id).where(ModelRow.source == "uploaded", ModelRow.state == "queued",
                                                          ModelRow.created_at < before)))


def model_test_codes(row: ModelRow) -> np.ndarray | None:
    """The held-out test split's codes (n_test, 2) float32, or None (the study scores its training split only)."""
    return None if row.test_codes is None else np.frombuffer(row.test_codes, "<f4").reshape(-1, 2)


def model_codes(row: ModelRow) -> np.ndarray:
    """A model's codes: (n, 2) float32, or an upload's (n, m) float64 as the user gave them."""
    if row.code_dim is None:
        return np.frombuffer(row.codes, "<f4").reshape(-1, 2)
    return np.frombuffer(row.codes, "<f8").reshape(-1, row.code_dim)


# ---------------------------------------------------------------- neighbour tables


def table_key(*, dataset_id: int, space: str, model_id: int | None, distance: str, k: int) -> str:
    owner = f"dataset={dataset_id}" if model_id is None else f"model={model_id}"
    return f"{space}:{owner}:{distance}:K={k}"


def get_or_create_table(*, session: Session, dataset_id: int, space: str, model_id: int | None,
                        distance: str, k: int, n: int, chunk_size: int) -> TableRow:
    """The table with this key; a new one is planned with ``chunk_size`` rows per chunk."""
    key = table_key(dataset_id=dataset_id, space=space, model_id=model_id, distance=distance, k=k)

    def find():
        return session.scalar(select(TableRow).where(TableRow.key == key))

    row = find()
    if row is None:
        row = _insert_or_find(session, TableRow(key=key, dataset_id=dataset_id, model_id=model_id, space=space,
                                                distance=distance, k=k, n=n, chunk_size=chunk_size, complete=False),
                              find)
    return row


def get_table(*, session: Session, table_id: int) -> TableRow | None:
    return session.get(TableRow, table_id)


def table_chunks(table: TableRow) -> list[tuple[int, int]]:
    """The (start, stop) query rows of every chunk of a table."""
    return [(s, min(table.n, s + table.chunk_size)) for s in range(0, table.n, table.chunk_size)]


def done_chunks(*, session: Session, table_id: int) -> set[int]:
    """The starts of the chunks whose rows are stored."""
    return set(session.scalars(select(ChunkRow.start).where(ChunkRow.table_id == table_id)))


def save_chunk(*, session: Session, table_id: int, start: int, ids: np.ndarray, worker: str | None = None,
               path: str | None = None, seconds: float | None = None, work: float | None = None) -> bool:
    """A chunk's rows and its done-mark, in the caller's transaction. False when it was already done.

    Two deliveries of the same chunk racing each other: the second one's commit fails on the primary
    key (IntegrityError), its transaction rolls back, and exactly one copy stays.
    """
    if session.get(ChunkRow, (table_id, start)) is not None:
        return False
    session.add(ChunkRow(table_id=table_id, start=start, stop=start + int(ids.shape[0]), worker=worker, path=path,
                         seconds=seconds, work=work))
    save_neighbors(session=session, table_id=table_id, start=start, ids=ids)
    return True


def mark_table_complete(*, session: Session, table_id: int, seconds: float | None) -> None:
    """Complete, with how its chunks were computed: their paths, compute seconds and work, summed."""
    chunks = session.execute(select(ChunkRow.path, ChunkRow.seconds, ChunkRow.work)
                             .where(ChunkRow.table_id == table_id)).all()
    paths = sorted({c.path for c in chunks if c.path})
    secs = [c.seconds for c in chunks if c.seconds is not None]
    work = [c.work for c in chunks if c.work is not None]
    session.execute(update(TableRow).where(TableRow.id == table_id).values(
        complete=True, seconds=seconds, path="+".join(paths) or None,
        compute_seconds=sum(secs) if len(secs) == len(chunks) else None,
        work=sum(work) if work and len(work) == len(chunks) else None))


def _driver_sql(session: Session, sql: str, params):
    """``sql`` (written with ``?`` marks) run by the driver itself in the session's transaction, with the
    driver's own marks (``%s`` outside SQLite): no ORM statement to build or compile."""
    conn = session.connection()
    return conn.exec_driver_sql(sql if conn.dialect.name == "sqlite" else sql.replace("?", "%s"), params)


ID_BYTES = 3  # a stored id's bytes while every id is below 2^24 (16.7 million samples)


def pack_ids(ids: np.ndarray) -> list[bytes]:
    """Each row of ``ids`` (rows, K) as stored: 3 bytes an id (little-endian) when all are below 2^24, else
    4 (int32)."""
    ids = np.ascontiguousarray(ids, "<i4")
    if ids.size and int(ids.max()) >= 1 << (8 * ID_BYTES):
        return [row.tobytes() for row in ids]
    packed = ids.view(np.uint8).reshape(ids.shape[0], -1, 4)[:, :, :ID_BYTES]
    return [row.tobytes() for row in packed]


def unpack_ids(blob: bytes, k: int, cols: int | None = None) -> np.ndarray:
    """The first ``cols`` (default all K) ids of a stored row, int32: its length says how it was packed."""
    cols = k if cols is None else cols
    if len(blob) == 4 * k:
        return np.frombuffer(blob, "<i4", count=cols)
    if len(blob) != ID_BYTES * k:
        raise ValueError(f"a neighbour row of {len(blob)} bytes holds no {k} ids")
    out = np.zeros((cols, 4), np.uint8)
    out[:, :ID_BYTES] = np.frombuffer(blob, np.uint8, count=ID_BYTES * cols).reshape(cols, ID_BYTES)
    return out.view("<i4").reshape(cols)


def unpack_rows(blobs: Sequence[bytes], k: int, cols: int) -> np.ndarray:
    """unpack_ids of many stored rows, (len, cols) int32: rows packed alike are joined and read as one array."""
    if not blobs:
        return np.empty((0, cols), np.int32)
    sizes = {len(b) for b in blobs}
    if sizes == {ID_BYTES * k}:
        raw = np.frombuffer(b"".join(blobs), np.uint8).reshape(len(blobs), k, ID_BYTES)
        out = np.zeros((len(blobs), cols, 4), np.uint8)
        out[:, :, :ID_BYTES] = raw[:, :cols]
        return out.view("<i4").reshape(len(blobs), cols)
    if sizes == {4 * k}:
        return np.frombuffer(b"".join(blobs), "<i4").reshape(len(blobs), k)[:, :cols]
    return np.stack([unpack_ids(b, k, cols) for b in blobs])  # packed both ways, or a bad row (named there)


_INSERT_NEIGHBORS = (f"INSERT INTO {NeighborRow.__tablename__} (table_id, sample_id, ids, labels, distances) "
                     "VALUES (?, ?, ?, ?, ?)")


def save_neighbors(*, session: Session, table_id: int, start: int, ids: np.ndarray) -> None:
    """Rows start..start+len(ids) of a table, their ids alone (see NeighborRow)."""
    rows = [(table_id, start + r, blob, b"", b"") for r, blob in enumerate(pack_ids(ids))]
    # The driver's own executemany, in the session's transaction: the ORM's bulk insert spent 1.7 s of
    # SQLAlchemy bookkeeping on a 60,000-row table that the driver stores in 0.5 to 0.8 s (SQLite).
    _driver_sql(session, _INSERT_NEIGHBORS, rows)


def find_table(*, session: Session, experiment_id: int, space: str, distance: str) -> TableRow | None:
    """The complete table of an experiment for a space ("original" or a model name) and distance."""
    exp = session.get(Experiment, experiment_id)
    if exp is None or exp.dataset_id is None:
        return None
    q = select(TableRow).where(TableRow.dataset_id == exp.dataset_id, TableRow.space == space,
                               TableRow.distance == distance, TableRow.complete.is_(True),
                               TableRow.k == int(exp.config["k"]))
    if space != ORIGINAL:
        q = q.join(ModelRow, ModelRow.id == TableRow.model_id).where(ModelRow.experiment_id == experiment_id)
    else:
        q = q.where(TableRow.model_id.is_(None))
    return session.scalar(q)


def experiment_tables(*, session: Session, experiment_id: int) -> list[TableRow]:
    """The tables an experiment uses: the pixel-space ones of its data set and those of its models."""
    exp = session.get(Experiment, experiment_id)
    if exp is None or exp.dataset_id is None:
        return []
    k = int(exp.config["k"])
    distances = list(exp.config["distances"])
    original = session.scalars(select(TableRow).where(
        TableRow.dataset_id == exp.dataset_id, TableRow.model_id.is_(None), TableRow.k == k,
        TableRow.distance.in_(distances)).order_by(TableRow.id))
    coded = session.scalars(select(TableRow).join(ModelRow, ModelRow.id == TableRow.model_id).where(
        ModelRow.experiment_id == experiment_id, TableRow.distance.in_(distances)).order_by(TableRow.id))
    return [*original, *coded]


_SELECT_NEIGHBORS = (f"SELECT ids, labels, distances FROM {NeighborRow.__tablename__} "
                     "WHERE table_id = ? AND sample_id = ?")


def sample_neighbors(*, session: Session, table_id: int, sample_id: int, k: int
                     ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None] | None:
    """One sample's stored (ids, labels, distances), nearest first, from a table of K = ``k``; labels and
    distances None where the row does not keep them (the reads layer makes them: common/study/reads.py).
    One indexed read, through the driver (the API's hot path: building and compiling the ORM statement cost
    more than the read itself)."""
    row = _driver_sql(session, _SELECT_NEIGHBORS, (table_id, sample_id)).first()
    if row is None:
        return None
    if not row[1]:
        return unpack_ids(row[0], k), None, None
    return (np.frombuffer(row[0], "<i4"), np.frombuffer(row[1], np.uint8), np.frombuffer(row[2], "<f4"))


def load_table_ids(*, session: Session, table_id: int, n: int, k: int, cols: int | None = None) -> np.ndarray:
    """The (n, k) id table, for metrics; only its first ``cols`` columns (the nearest) when given."""
    cols = k if cols is None else cols
    if not 0 < cols <= k:
        raise ValueError(f"cols must be in 1..{k} (the table's K), got {cols}")
    out = np.empty((n, cols), np.int32)
    seen = 0
    res = session.connection().execute(select(NeighborRow.sample_id, NeighborRow.ids)  # Core rows, no ORM
                                       .where(NeighborRow.table_id == table_id)
                                       .execution_options(yield_per=5000))
    for part in res.partitions():  # 5,000 rows at once: one at a time, through the ORM, took 0.45 s of 60,000
        out[np.fromiter((r[0] for r in part), np.int64, len(part))] = unpack_rows([r[1] for r in part], k, cols)
        seen += len(part)
    if seen != n:
        raise RuntimeError(f"neighbour table {table_id} holds {seen} rows, expected {n}")
    return out


# ---------------------------------------------------------------- metrics


def save_metrics(*, session: Session, experiment_id: int, values: Sequence[dict[str, Any]],
                 space: str | None = None, metrics: Sequence[str] | None = None) -> None:
    """Replace the experiment's metric values (those of one ``space`` only, and of the ``metrics`` named
    only, when given) with ``values`` (metric, space, distance, k, label, value)."""
    which = MetricValue.experiment_id == experiment_id
    if space is not None:
        which = which & (MetricValue.space == space)
    if metrics is not None:
        which = which & MetricValue.metric.in_(list(metrics))
    session.execute(delete(MetricValue).where(which))
    if values:
        session.execute(insert(MetricValue), [{"experiment_id": experiment_id, "label": -1, **v}
                                              for v in values])


def experiments_missing_k(*, session: Session) -> list[int]:
    """Succeeded experiments whose metrics are stored at their config's ks only (made before every k was)."""
    return list(session.scalars(select(Experiment.id).where(Experiment.status == SUCCEEDED,
                                                            Experiment.metrics_all_k.is_(False))
                                .order_by(Experiment.id)))


def get_plot(*, session: Session, experiment_id: int, name: str, model: str) -> bytes | None:
    return session.scalar(select(PlotRow.png).where(PlotRow.experiment_id == experiment_id, PlotRow.name == name,
                                                    PlotRow.model == model))


def save_plot(*, session: Session, experiment_id: int, name: str, model: str, png: bytes) -> None:
    """Store a rendered plot unless another process stored it first."""
    if get_plot(session=session, experiment_id=experiment_id, name=name, model=model) is None:
        session.add(PlotRow(experiment_id=experiment_id, name=name, model=model, png=png))


def stored_ks(*, session: Session, experiment_id: int) -> set[int]:
    """The k at which score@k is stored for the experiment."""
    return set(session.scalars(select(MetricValue.k).where(MetricValue.experiment_id == experiment_id,
                                                            MetricValue.metric == "score_at_k").distinct()))


def load_metrics(*, session: Session, experiment_id: int, metric: str | None = None,
                 ks: Sequence[int] | None = None) -> list[MetricValue]:
    q = select(MetricValue).where(MetricValue.experiment_id == experiment_id)
    if metric is not None:
        q = q.where(MetricValue.metric == metric)
    if ks is not None:
        q = q.where(MetricValue.k.in_(list(ks)))
    return list(session.scalars(q.order_by(MetricValue.id)))


# ---------------------------------------------------------------- work items (the Celery path)

DONE = "done"
CLOSED = (DONE, FAILED, CANCELLED)  # a work item's endings; each sets finished_at


def item_key(*, experiment_id: int, kind: str, table_id: int | None = None, start: int | None = None) -> str:
    return f"{experiment_id}:{kind}:{'' if table_id is None else table_id}:{'' if start is None else start}"


def get_item(*, session: Session, experiment_id: int, kind: str, table_id: int | None = None,
             start: int | None = None) -> WorkItem | None:
    key = item_key(experiment_id=experiment_id, kind=kind, table_id=table_id, start=start)
    return session.scalar(select(WorkItem).where(WorkItem.key == key))


def add_item(*, session: Session, experiment_id: int, kind: str, table_id: int | None = None,
             start: int | None = None) -> WorkItem:
    item = WorkItem(experiment_id=experiment_id, kind=kind, table_id=table_id, start=start, state=QUEUED,
                    key=item_key(experiment_id=experiment_id, kind=kind, table_id=table_id, start=start),
                    attempts=0, enqueued_at=utcnow())
    session.add(item)
    session.flush()
    return item


def close_items(*, session: Session, experiment_id: int, reason: str, states: tuple[str, ...] = (QUEUED,),
                beat_before: dt.datetime | None = None) -> int:
    """Close an experiment's open items in ``states`` as cancelled, naming ``reason`` (for running items,
    only those whose heartbeat is older than ``beat_before``: their worker is gone). Returns how many."""
    from sqlalchemy import or_

    cond = [WorkItem.experiment_id == experiment_id, WorkItem.state.in_(states)]
    if beat_before is not None:
        cond.append(or_(WorkItem.heartbeat_at.is_(None), WorkItem.heartbeat_at < beat_before))
    return session.execute(update(WorkItem).where(*cond).values(state=CANCELLED, finished_at=utcnow(),
                                                                error=reason)).rowcount


def open_items_of_stopped(*, session: Session) -> list[int]:
    """Experiments that stopped (failed or cancelled) with a work item still open."""
    return list(session.scalars(select(WorkItem.experiment_id).join(Experiment)
                                .where(Experiment.status.in_([FAILED, CANCELLED]),
                                       WorkItem.state.in_([QUEUED, RUNNING])).distinct()))


def items_of(*, session: Session, experiment_id: int) -> list[WorkItem]:
    return list(session.scalars(select(WorkItem).where(WorkItem.experiment_id == experiment_id)
                                .order_by(WorkItem.id)))


def active_experiment_ids(*, session: Session, submitting_before: dt.datetime | None = None) -> list[int]:
    """Queued or running experiments, and those still "submitting" since before ``submitting_before``
    (their submitter died between recording them and sending their first task)."""
    from sqlalchemy import and_, or_

    cond = Experiment.status.in_([QUEUED, RUNNING])
    if submitting_before is not None:
        cond = or_(cond, and_(Experiment.status == SUBMITTING, Experiment.created_at < submitting_before))
    return list(session.scalars(select(Experiment.id).where(cond).order_by(Experiment.id)))

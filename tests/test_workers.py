"""The Celery path against the machine's real Redis and PostgreSQL, with real worker processes.

Each test plays one of RELIABILITY.md's scenarios for real and compares the outcome with the
in-process run of the same config (the foundation's `aeknn run`), byte for byte.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import redis
from sqlalchemy import delete, func, select

from common.compute.names import MODEL_NAMES
from common.compute.sizes import DEFAULT_MEMORY_BUDGET
from common.settings import get_settings
from common.store import db as db
from common.study.config import StudyConfig
from tests.services import REDIS_START, TcpProxy, Worker, fresh_database, wait_for

pytestmark = pytest.mark.workers
REDIS_URL = "redis://127.0.0.1:6379/15"
SMALL = {"limit": 1000, "epochs": 3}
# the study's four, relu_keep and the reference maps, its held-out test split placed by each and scored too
EVERY = {**SMALL, "models": list(MODEL_NAMES), "split": "all"}


# ---------------------------------------------------------------- helpers


def snapshot(factory, experiment_id: int) -> dict:
    """Everything an experiment produced, in a form two databases can be compared by."""
    with factory() as s:
        exp = db.get_experiment(session=s, experiment_id=experiment_id)
        out = {"status": exp.status,
               "metrics": {(v.metric, v.space, v.distance, v.k, v.label): v.value
                           for v in db.load_metrics(session=s, experiment_id=experiment_id)},
               "models": {m.name: (m.losses, m.codes, m.weights, m.test_codes)
                          for m in db.list_models(session=s, experiment_id=experiment_id)},
               "tables": {}}
        for t in db.experiment_tables(session=s, experiment_id=experiment_id):
            rows = s.execute(select(db.NeighborRow.sample_id, db.NeighborRow.ids, db.NeighborRow.labels,
                                       db.NeighborRow.distances).where(db.NeighborRow.table_id == t.id)
                             .order_by(db.NeighborRow.sample_id)).all()
            out["tables"][(t.space, t.distance)] = [tuple(r) for r in rows]
    return out


_references: dict[str, dict] = {}


def reference(tmp_path_factory, data_dir, **fields) -> dict:
    """The same study run in one process (SQLite), once per config."""
    from common.study.run import run_experiment
    from common.study.runtime import Runtime
    from common.study.stages import record_experiment

    cfg = StudyConfig(**fields)
    key = repr(sorted(cfg.as_json().items()))
    if key not in _references:
        engine = db.make_engine(f"sqlite:///{tmp_path_factory.mktemp('ref') / 'ref.db'}")
        db.init_db(engine)
        f = db.session_factory(engine)
        eid = record_experiment(f, cfg)
        run_experiment(Runtime(factory=f, data_dir=data_dir, cache_dir=tmp_path_factory.mktemp("cache"),
                               device="cpu"), eid)
        _references[key] = snapshot(f, eid)
        engine.dispose()
    return _references[key]


class Stack:
    """A fresh database, a clean Redis queue database, and the workers started on them."""

    def __init__(self, tmp_path, data_dir, db_url: str, **env) -> None:
        self.tmp = tmp_path
        self.db_url = db_url
        self.env = {"AEKNN_DATABASE_URL": db_url, "AEKNN_BROKER_URL": REDIS_URL,
                    "AEKNN_DATA_DIR": str(data_dir), "AEKNN_CACHE_DIR": str(tmp_path / "cache"),
                    "AEKNN_MEMORY_BUDGET": "4000000",  # ~13 chunks per table: work spreads over workers
                    **{k: str(v) for k, v in env.items()}}
        self.engine = db.make_engine(db_url)  # the test reads PostgreSQL directly
        db.init_db(self.engine)
        self.factory = db.session_factory(self.engine)
        self.workers: list[Worker] = []

    def worker(self, name: str, **kw) -> Worker:
        w = Worker(name, self.env, self.tmp, **kw)
        self.workers.append(w)
        return w

    def aeknn(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {**__import__("os").environ, **self.env}
        proc = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                              env=env, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"aeknn {args} failed: {proc.stderr[-2000:]}")
        return proc

    def submit(self, **fields) -> int:
        args = []
        for k, v in fields.items():
            args += [f"--{k.replace('_', '-')}", ",".join(map(str, v)) if isinstance(v, list) else str(v)]
        return int(self.aeknn("submit", *args).stdout.strip())

    def experiment(self, eid: int) -> db.Experiment:
        with self.factory() as s:
            return db.get_experiment(session=s, experiment_id=eid)

    def wait(self, eid: int, timeout: float = 240, status: str = db.SUCCEEDED) -> db.Experiment:
        def done():
            exp = self.experiment(eid)
            return exp if exp.status in (db.SUCCEEDED, db.FAILED, db.CANCELLED) else None

        try:
            exp = wait_for(done, timeout, f"experiment {eid}")
        except AssertionError:
            logs = "\n".join(w.text()[-3000:] for w in self.workers)
            raise AssertionError(f"experiment {eid} did not finish: {self.experiment(eid).__dict__}\n{logs}") from None
        assert exp.status == status, (exp.status, exp.error)
        return exp

    def items(self, eid: int, kind: str | None = None) -> list[db.WorkItem]:
        with self.factory() as s:
            return [i for i in db.items_of(session=s, experiment_id=eid) if kind is None or i.kind == kind]

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.engine.dispose()


@pytest.fixture
def stack(tmp_path, data_dir):
    redis.Redis.from_url(REDIS_URL).flushdb()
    get_settings.cache_clear()
    st = Stack(tmp_path, data_dir, fresh_database("aeknn_workers"))
    yield st
    st.close()


def assert_same_results(got: dict, want: dict) -> None:
    assert got["status"] == want["status"] == db.SUCCEEDED
    assert got["models"].keys() == want["models"].keys()
    for name in want["models"]:
        assert got["models"][name][0] == want["models"][name][0], f"{name}: loss history differs"
        assert got["models"][name][1] == want["models"][name][1], f"{name}: codes differ"
        assert got["models"][name][3] == want["models"][name][3], f"{name}: the test split's codes differ"
    assert got["tables"].keys() == want["tables"].keys()
    for key in want["tables"]:
        assert got["tables"][key] == want["tables"][key], f"table {key} differs"
    assert got["metrics"] == want["metrics"]


# ---------------------------------------------------------------- the scenarios


def test_two_workers_share_the_job_and_match_the_in_process_run(stack, tmp_path_factory, data_dir):
    # every model: relu_keep's training is its own task, sent once the pixel tables are stored, and the
    # reference maps are fitted by theirs (seeded, so a worker fits the in-process run's bits)
    stack.worker("w1")
    stack.worker("w2")
    eid = stack.submit(**EVERY)
    exp = stack.wait(eid)
    with stack.factory() as s:
        by = {w for (w,) in s.execute(select(db.ChunkRow.worker))}
        n_chunks = s.scalar(select(func.count()).select_from(db.ChunkRow))
    assert {w.split("@")[0] for w in by} == {"w1", "w2"}, by  # both workers computed chunks
    assert n_chunks > 20
    assert exp.attempts == 1
    got = snapshot(stack.factory, eid)
    assert_same_results(got, reference(tmp_path_factory, data_dir, **EVERY))
    assert all(m[3] is not None for m in got["models"].values())  # every model placed the test split
    assert {k[0] for k in got["metrics"]} >= {"test_score_at_k", "test_knn_accuracy", "score_at_k", "trustworthiness"}
    with stack.factory() as s:
        assert {i.kind for i in db.items_of(session=s, experiment_id=eid)} == {"data", "train", "keep", "maps",
                                                                                "chunk", "metrics"}
    status = stack.aeknn("status", str(eid)).stdout
    assert f"experiment {eid}: succeeded" in status and "epoch 3/3" in status and "complete" in status


def test_worker_killed_during_training_resumes_from_its_checkpoint(stack, tmp_path_factory, data_dir):
    cfg = {"limit": 3000, "epochs": 25, "models": ["linear_mse", "relu_mse"], "distances": ["l2"]}
    w = stack.worker("w1")
    eid = stack.submit(**cfg)

    def mid_training():
        with stack.factory() as s:
            done = [m.epochs_done for m in db.list_models(session=s, experiment_id=eid)]
        return done and 3 <= min(done) < 20

    wait_for(mid_training, 120, "training to pass epoch 3")
    w.kill_child()
    exp = stack.wait(eid)
    (train,) = stack.items(eid, "train")
    assert train.attempts == 2 and exp.attempts == 2  # delivered again after the worker was lost
    assert "resuming ['linear_mse', 'relu_mse'] from epoch" in w.text()
    assert_same_results(snapshot(stack.factory, eid), reference(tmp_path_factory, data_dir, **cfg))


def test_worker_killed_among_the_chunks_loses_and_repeats_nothing(stack, tmp_path_factory, data_dir):
    cfg = {"limit": 1000, "epochs": 2, "models": ["relu_mse"]}
    stack.env["AEKNN_MEMORY_BUDGET"] = "1000000"  # 13 chunks per pixel table, 23 per code table
    w = stack.worker("w1")
    eid = stack.submit(**cfg)

    def some_chunks():
        with stack.factory() as s:
            return s.scalar(select(func.count()).select_from(db.ChunkRow)) >= 10

    wait_for(some_chunks, 120, "ten chunks")
    w.kill_child()
    stack.wait(eid)
    with stack.factory() as s:
        for t in db.experiment_tables(session=s, experiment_id=eid):
            rows = s.scalar(select(func.count()).select_from(db.NeighborRow)
                            .where(db.NeighborRow.table_id == t.id))
            assert rows == t.n and len(db.done_chunks(session=s, table_id=t.id)) == len(db.table_chunks(t))
    assert "signal 9 (SIGKILL)" in w.text()
    # the task the child was running (a chunk, or the advance between two chunks) was delivered again
    assert any(i.attempts == 2 for i in stack.items(eid)) or "aeknn.advance" in w.text().split("SIGKILL")[0][-3000:]
    assert_same_results(snapshot(stack.factory, eid), reference(tmp_path_factory, data_dir, **cfg))


def test_the_same_chunk_twice_at_once_leaves_one_copy(stack, data_dir):
    """Two deliveries of one chunk racing on PostgreSQL: one commits, the other skips; same via Celery."""
    from common.compute.neighbors import prepare
    from common.study.tables import build_chunk, table_points

    stack.worker("w1")
    eid = stack.submit(**SMALL)
    stack.wait(eid)
    with stack.factory() as s:
        table = db.find_table(session=s, experiment_id=eid, space="original", distance="l2")
        points = table_points(s, table)
        first_rows = s.scalar(select(db.NeighborRow.ids).where(db.NeighborRow.table_id == table.id,
                                                                    db.NeighborRow.sample_id == 0))
        # forget chunk 0, as if it had never been written
        s.execute(delete(db.NeighborRow).where(db.NeighborRow.table_id == table.id,
                                                  db.NeighborRow.sample_id < table.chunk_size))
        s.execute(delete(db.ChunkRow).where(db.ChunkRow.table_id == table.id, db.ChunkRow.start == 0))
        s.commit()
    space = prepare(points, "l2")
    results, barrier = [], threading.Barrier(2)

    def deliver():
        barrier.wait()
        results.append(build_chunk(stack.factory, table, space, 0, worker="racer",
                                   memory_budget=DEFAULT_MEMORY_BUDGET))

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(results) == [False, True]
    with stack.factory() as s:
        count = s.scalar(select(func.count()).select_from(db.NeighborRow)
                         .where(db.NeighborRow.table_id == table.id))
        assert count == table.n
        assert s.scalar(select(db.NeighborRow.ids).where(db.NeighborRow.table_id == table.id,
                                                            db.NeighborRow.sample_id == 0)) == first_rows
    # and through the broker: a chunk item sent twice more after it is done changes nothing
    (item,) = [i for i in stack.items(eid, "chunk") if i.table_id == table.id and i.start == 0]
    from common.study import jobs

    app = jobs.broker_client(get_settings().model_copy(update={"broker_url": REDIS_URL}))
    jobs.send(app, jobs.CHUNK, item.id)
    jobs.send(app, jobs.CHUNK, item.id)
    time.sleep(3)
    with stack.factory() as s:
        assert s.scalar(select(func.count()).select_from(db.NeighborRow)
                        .where(db.NeighborRow.table_id == table.id)) == table.n


def test_a_job_that_fails_every_time_is_failed_with_its_reason_and_others_go_on(stack, tmp_path, data_dir):
    bad = tmp_path / "bad-data"
    (bad / "mnist").mkdir(parents=True)
    for f in (data_dir / "mnist").glob("*.gz"):
        (bad / "mnist" / f.name).write_bytes(f.read_bytes())
    (bad / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b broken")
    stack.env["AEKNN_DATA_DIR"] = str(bad)
    stack.worker("w1")
    eid = stack.submit(**SMALL)
    exp = stack.wait(eid, status=db.FAILED)
    assert "train-labels-idx1-ubyte.gz" in exp.error and "corrupt" in exp.error
    (item,) = stack.items(eid, "data")
    assert item.attempts == 1 and item.state == db.FAILED  # no retry loop
    status = stack.aeknn("status", str(eid)).stdout
    assert "failed" in status and "train-labels-idx1-ubyte.gz" in status
    # the same worker goes on with another job (its data is stored already by then: reuse the good files)
    stack.workers[0].stop()
    stack.env["AEKNN_DATA_DIR"] = str(data_dir)
    stack.worker("w2")
    stack.wait(stack.submit(**SMALL))


def test_attempts_are_bounded_when_the_worker_is_lost_every_time(stack):
    """A delivery that never finishes (state left 'running') counts; past max_attempts the job FAILS."""
    from worker import pipeline

    settings = get_settings().model_copy(update={"max_attempts": 3})
    with db.transaction(stack.factory) as s:
        eid = db.create_experiment(session=s, config=StudyConfig(**SMALL).as_json())
        item = db.add_item(session=s, experiment_id=eid, kind="data")
    ran = []
    for _ in range(3):  # three deliveries, each "killed" (the body never returns normally)
        with pytest.raises(KeyboardInterrupt):
            pipeline.run_item(stack.factory, settings, item.id, lambda it: (ran.append(1), _raise()))
    assert pipeline.run_item(stack.factory, settings, item.id, lambda it: ran.append(1)) is None
    exp = stack.experiment(eid)
    assert len(ran) == 3 and exp.status == db.FAILED and "gave up after 3 attempts" in exp.error


def _raise():
    raise KeyboardInterrupt  # stands for SIGKILL: the body does not come back


def test_redis_restarted_with_jobs_queued_still_finishes(stack):
    eid = stack.submit(**SMALL)  # queued, no worker yet
    r = redis.Redis.from_url(REDIS_URL)
    assert r.llen("control") == 1
    try:
        r.execute_command("SHUTDOWN", "NOSAVE")  # this Redis keeps nothing on disk: the message is gone
    except redis.exceptions.ConnectionError:
        pass  # the server closes the connection as it goes
    subprocess.run(REDIS_START, shell=True, check=True)
    wait_for(lambda: _ping(r), 30, "Redis to come back")
    assert r.llen("control") == 0
    stack.env.update({"AEKNN_STALE_AFTER": "2", "AEKNN_SWEEP_EVERY": "1"})
    stack.worker("w1", beat=True)  # the sweeper sends again what was lost
    stack.wait(eid)


def _ping(r) -> bool:
    try:
        return bool(r.ping())
    except redis.exceptions.ConnectionError:
        return False


def test_redis_down_at_submit_is_a_clear_error_and_keeps_nothing(stack):
    proc = stack.aeknn("submit", "--limit", "2000", "--broker", "redis://127.0.0.1:1/0", check=False)
    assert proc.returncode == 2 and "unreachable" in proc.stderr and "Traceback" not in proc.stderr
    with stack.factory() as s:
        assert s.scalar(select(func.count()).select_from(db.Experiment)) == 0


def test_postgres_cut_during_writes_rolls_back_retries_and_completes(stack, tmp_path_factory, data_dir):
    proxy = TcpProxy()
    try:
        stack.env["AEKNN_DATABASE_URL"] = proxy.url("aeknn_workers")
        stack.env["AEKNN_MEMORY_BUDGET"] = "1000000"
        cfg = {"limit": 1000, "epochs": 2, "models": ["relu_mse"]}
        stack.worker("w1")
        eid = stack.submit(**cfg)

        def some_chunks():
            with stack.factory() as s:  # the test reads PostgreSQL directly, not through the proxy
                return s.scalar(select(func.count()).select_from(db.ChunkRow)) >= 5

        wait_for(some_chunks, 120, "five chunks")
        proxy.cut(4)  # every connection dropped mid-write, and none possible for 4 s
        stack.wait(eid)
        log = stack.workers[0].text()
        assert "Retry in" in log  # the task was retried with backoff, not failed
        assert_same_results(snapshot(stack.factory, eid), reference(tmp_path_factory, data_dir, **cfg))
    finally:
        proxy.close()


def test_an_interrupted_checkpoint_write_leaves_the_previous_checkpoint(stack, data_dir, mnist):
    """The checkpoint transaction is cut before it commits: the stored one is the previous epoch's, it
    loads (torch.load weights_only) and training resumed from it equals training never interrupted."""
    from common.compute.training import Checkpoint, TrainConfig, train_group

    proxy = TcpProxy()
    try:
        eng = db.make_engine(proxy.url("aeknn_workers"))
        f = db.session_factory(eng)
        with db.transaction(f) as s:
            eid = db.create_experiment(session=s, config=StudyConfig(**SMALL).as_json())
            row = db.get_or_create_model(session=s, experiment_id=eid, name="relu_mse")
        x = mnist.scaled()[:500]
        cfg = TrainConfig(epochs=3)
        full = train_group(["relu_mse"], x, cfg, recon_ids=[0])["relu_mse"]
        epochs_seen = []

        def save(cks):
            ck = cks["relu_mse"]
            epochs_seen.append(ck.epoch)
            with db.transaction(f) as s:
                db.save_checkpoint(session=s, model_id=row.id, epoch=ck.epoch, losses=ck.losses,
                                   checkpoint=ck.to_bytes())
                if ck.epoch == 2:
                    s.flush()  # the new checkpoint is written, not committed ...
                    proxy.cut(1)  # ... when the connection dies

        with pytest.raises(Exception):  # noqa: B017 - psycopg's OperationalError, through SQLAlchemy
            train_group(["relu_mse"], x, cfg, recon_ids=[0], on_epoch_end=save)
        assert epochs_seen == [1, 2]
        with stack.factory() as s:
            stored = db.list_models(session=s, experiment_id=eid)[0]
            assert stored.epochs_done == 1
            ck = Checkpoint.from_bytes(stored.checkpoint)
        assert ck.epoch == 1 and len(ck.losses) == 1
        resumed = train_group(["relu_mse"], x, cfg, recon_ids=[0], resume={"relu_mse": ck})["relu_mse"]
        assert resumed.losses == full.losses
        eng.dispose()
    finally:
        proxy.close()


def test_cancel_stops_within_one_task_and_keeps_the_database_consistent(stack):
    w = stack.worker("w1")
    eid = stack.submit(limit=6000, epochs=200, models="relu_mse", distances="l2")

    def training():
        with stack.factory() as s:
            return any(m.epochs_done >= 2 for m in db.list_models(session=s, experiment_id=eid))

    wait_for(training, 120, "training to start")
    assert "cancelled" in stack.aeknn("cancel", str(eid)).stdout
    wait_for(lambda: "stopped: " in w.text(), 30, "the training task to stop")
    with stack.factory() as s:
        (m,) = db.list_models(session=s, experiment_id=eid)
        epochs = m.epochs_done
        assert m.codes is None and len(m.losses) == epochs and Checkpoint_epoch(m) == epochs
    time.sleep(2)
    with stack.factory() as s:
        assert db.list_models(session=s, experiment_id=eid)[0].epochs_done == epochs  # nothing runs on
    assert stack.experiment(eid).status == db.CANCELLED
    assert_every_item_closed(stack, eid)
    (train,) = stack.items(eid, "train")  # the one that was running: closed by its worker as it stopped
    assert train.state == db.CANCELLED and train.error == "stopped: experiment cancelled"
    assert "cancelled" in stack.aeknn("status", str(eid)).stdout
    assert stack.aeknn("cancel", str(eid)).stdout.strip() == f"experiment {eid}: cancelled"  # idempotent
    done = stack.submit(**SMALL)
    stack.wait(done)  # the worker is free for the next job
    late = stack.aeknn("cancel", str(done), check=False)
    assert late.returncode == 1 and "succeeded" in late.stdout  # a finished job is not cancelled


def assert_every_item_closed(stack, eid: int) -> None:
    """No work item of the experiment is left queued or running, and each closed one says when."""
    wait_for(lambda: all(i.state in db.CLOSED for i in stack.items(eid)), 30, "every work item to close")
    items = stack.items(eid)
    assert items and all(i.finished_at is not None for i in items), [(i.key, i.state) for i in items]


@pytest.mark.parametrize("space", ["original", "relu_mse"])
def test_a_cancel_among_the_chunks_closes_every_work_item(stack, space):
    """Cancelled while the pixel tables' chunks (original) or the code tables' chunks run: the queued
    chunks close at once, the running one when it ends, and a chunk delivered later runs nothing."""
    from common.study import submissions

    stack.env["AEKNN_MEMORY_BUDGET"] = "1000000"  # 112 pixel chunks, 69 code chunks
    stack.worker("w1")
    eid = stack.submit(limit=3000, epochs=1, models="relu_mse", distances="l2")

    def chunks_of_space_done() -> bool:
        with stack.factory() as s:
            tables = {t.id: t.space for t in db.experiment_tables(session=s, experiment_id=eid)}
        done = [i for i in stack.items(eid, "chunk") if tables.get(i.table_id) == space and i.state == db.DONE]
        return len(done) >= 2

    wait_for(chunks_of_space_done, 180, f"the {space} table's chunks to run", every=0.05)
    assert submissions.cancel(stack.factory, eid) == db.CANCELLED  # what `aeknn cancel` and the API call
    assert_every_item_closed(stack, eid)
    states = {i.state for i in stack.items(eid, "chunk")}
    assert db.CANCELLED in states and db.DONE in states, states  # some ran, the rest were closed unrun
    with stack.factory() as s:  # a chunk is whole or absent: its rows and its done-mark commit together
        for t in db.experiment_tables(session=s, experiment_id=eid):
            rows = s.scalar(select(func.count()).select_from(db.NeighborRow).where(db.NeighborRow.table_id == t.id))
            done = db.done_chunks(session=s, table_id=t.id)
            assert rows == sum(stop - start for start, stop in db.table_chunks(t) if start in done)


def Checkpoint_epoch(m) -> int:  # noqa: N802
    from common.compute.training import Checkpoint

    return Checkpoint.from_bytes(m.checkpoint).epoch


def test_postgres_cut_again_and_again_delays_the_study_but_uses_no_attempts(stack, tmp_path_factory, data_dir):
    """The workers' database connections dropped every 2 s for about 14 s, through training and the
    chunks: the study finishes, equal to the in-process run, and no task spent an attempt on it."""
    proxy = TcpProxy()
    try:
        stack.env.update({"AEKNN_DATABASE_URL": proxy.url("aeknn_workers"), "AEKNN_MEMORY_BUDGET": "1000000",
                          "AEKNN_MAX_ATTEMPTS": "2"})
        cfg = {"limit": 2000, "epochs": 8, "models": ["linear_mse", "relu_mse"], "distances": ["l2"]}
        stack.worker("w1")
        eid = stack.submit(**cfg)

        def training():
            with stack.factory() as s:
                return any(m.epochs_done >= 1 for m in db.list_models(session=s, experiment_id=eid))

        wait_for(training, 120, "training to start")
        for _ in range(7):
            proxy.cut(1.0)
            time.sleep(2)
        exp = stack.wait(eid, timeout=300)
        assert exp.attempts == 1 and all(i.attempts == 1 for i in stack.items(eid)), \
            [(i.key, i.attempts) for i in stack.items(eid)]
        assert "Retry in" in stack.workers[0].text()
        assert_same_results(snapshot(stack.factory, eid), reference(tmp_path_factory, data_dir, **cfg))
    finally:
        proxy.close()


def test_a_whole_worker_lost_mid_training_and_mid_chunk_is_replaced_within_minutes(stack, tmp_path_factory,
                                                                                     data_dir):
    """A worker's main process, pool and beat all SIGKILLed (a lost machine), twice: once in training,
    once among the chunks. Its messages stay unacknowledged in Redis (for the 4-hour visibility
    timeout), but its items' heartbeats stop: the next worker's sweeper sends them again, and the study
    ends equal to an uninterrupted run."""
    cfg = {"limit": 3000, "epochs": 12, "models": ["linear_mse", "relu_mse"], "distances": ["l2"]}
    # The product's timeouts scaled down to the test's: a running item is lost after AEKNN_LOST_AFTER with no
    # heartbeat; a queued one is sent again after AEKNN_STALE_AFTER (600 s by default). The second applies
    # when the kill lands between a message's receipt and its start, or between an advance creating an
    # item and sending it: the item stays queued, its message held by the dead worker or never sent.
    stack.env.update({"AEKNN_LOST_AFTER": "6", "AEKNN_STALE_AFTER": "20", "AEKNN_HEARTBEAT_EVERY": "1",
                      "AEKNN_SWEEP_EVERY": "2", "AEKNN_MEMORY_BUDGET": "1000000"})
    first = stack.worker("a", beat=True)
    eid = stack.submit(**cfg)

    def epochs() -> int:
        with stack.factory() as s:
            return min([m.epochs_done for m in db.list_models(session=s, experiment_id=eid)] or [0])

    wait_for(lambda: 2 <= epochs() < 10, 120, "training to pass epoch 2")
    first.stop()  # SIGKILL to the whole process group
    t_lost = time.monotonic()
    second = stack.worker("b", beat=True)

    def code_chunks() -> bool:
        with stack.factory() as s:
            return s.scalar(select(func.count()).select_from(db.ChunkRow).join(
                db.TableRow, db.TableRow.id == db.ChunkRow.table_id).where(db.TableRow.model_id.isnot(None))) >= 1

    wait_for(code_chunks, 240, "the code tables to start")
    resumed = time.monotonic() - t_lost
    second.stop()
    stack.worker("c", beat=True)
    exp = stack.wait(eid, timeout=300)
    (train,) = stack.items(eid, "train")
    assert train.attempts == 2 and "looks lost" in second.text()
    assert resumed < 240 and exp.attempts >= 2
    assert_same_results(snapshot(stack.factory, eid), reference(tmp_path_factory, data_dir, **cfg))


def test_a_sweep_queued_for_the_workers_runs_every_point_and_shares_the_pixel_tables(stack):
    stack.worker("w1")
    stack.worker("w2")
    out = stack.aeknn("sweep", "--submit", "--limit", "1500", "--epochs", "1", "--models", "relu_mse",
                      "--distances", "l2", "--seeds", "0,1", "--weight-decay", "1e-3,0").stdout
    assert "sweep 1: 4 grid points, 4 new experiments (0 reused), queued for the workers" in out
    from common.study import sweeps

    def done():
        with stack.factory() as s:
            return sweeps.describe(s, 1)["status"] == "succeeded"

    wait_for(done, 240, "the sweep to succeed")
    with stack.factory() as s:
        info = sweeps.describe(s, 1)
        assert info["done"] == 4
        originals = s.query(db.TableRow).filter(db.TableRow.model_id.is_(None)).all()
        assert len(originals) == 1  # one pixel table (l2) for the four experiments
        rows = sweeps.aggregate(s, 1, "score_at_k", [5])
        assert len(rows) == 2 and all(r["n"] == 2 for r in rows)
    printed = stack.aeknn("metrics", "--sweep", "1").stdout
    assert "score_at_k" in printed and " ± " in printed


def test_your_data_runs_on_the_workers_as_in_process_and_an_unreadable_path_fails_naming_it(stack, tmp_path,
                                                                                             tmp_path_factory,
                                                                                             data_dir):
    """A CIFAR-10 folder (3,072 values a sample) submitted by path: the workers read it, store it, and give
    the in-process run's bits; a path the workers cannot read fails the experiment with that reason, once."""
    from tests.test_sources import classes, write_cifar

    rgb, y = classes(500, 3072, 10, 7)
    write_cifar(tmp_path / "cifar", rgb.reshape(-1, 32, 32, 3), y)
    fields = {"data": str(tmp_path / "cifar"), "epochs": 2, "k": 30, "ks": [5, 10],
              "models": ["linear_mse", "relu_mse"]}
    stack.worker("w1")
    eid = stack.submit(**fields)
    stack.wait(eid)
    assert_same_results(snapshot(stack.factory, eid), reference(tmp_path_factory, data_dir, **fields))
    with stack.factory() as s:
        row = s.get(db.DatasetRow, stack.experiment(eid).dataset_id)
        assert row.n == 500 and row.shape == [32, 32, 3] and row.name.startswith("cifar-")
    gone = stack.submit(**{**fields, "data": str(tmp_path / "elsewhere.npz")})
    exp = stack.wait(gone, status=db.FAILED)
    assert "elsewhere.npz" in exp.error and "no such file" in exp.error
    (item,) = stack.items(gone, "data")
    assert item.attempts == 1


def test_a_data_set_uploaded_over_rest_runs_on_the_workers_and_its_neighbours_are_served(stack, tmp_path):
    """POST /datasets with an .npz, POST /experiments naming it (with a limit: its first rows), the real
    workers read it from PostgreSQL; the neighbours served equal a brute force over the uploaded rows."""
    import io

    import numpy as np
    from fastapi.testclient import TestClient

    from api.main import create_app
    from common.settings import Settings
    from tests.test_neighbors import brute_force
    from tests.test_sources import classes

    x, y = classes(700, 20 * 15, 6, 11)
    buf = io.BytesIO()
    np.savez(buf, X=x.reshape(-1, 20, 15), y=y)
    stack.worker("w1")
    with TestClient(create_app(Settings(database_url=stack.db_url, broker_url=REDIS_URL))) as api:
        up = api.post("/datasets?name=lab-scans", content=buf.getvalue())
        assert up.status_code == 201, up.text
        r = api.post("/experiments", json={"dataset": "lab-scans", "limit": 600, "epochs": 2, "k": 40,
                                           "ks": [5, 10], "models": ["relu_mse"]})
        assert r.status_code in (201, 202), r.text
        eid = r.json()["id"]
        stack.wait(eid)
        want = brute_force(x[:600], 40, "l2")[0]
        for i in (0, 6, 599):
            got = api.get(f"/samples/{i}/neighbors?experiment={eid}&space=original&distance=l2&k=40").json()
            assert [nb["id"] for nb in got["neighbors"]] == list(want[i])
            assert [nb["label"] for nb in got["neighbors"]] == list(y[want[i]])
        assert api.get(f"/metrics/score_at_k?experiment={eid}").status_code == 200
    with stack.factory() as s:
        row = s.get(db.DatasetRow, stack.experiment(eid).dataset_id)
        assert (row.name, row.n, row.shape, row.sha256) == ("lab-scans", 600, [20, 15], None)  # its first 600

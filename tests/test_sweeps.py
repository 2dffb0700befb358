"""Sweeps: the grid expanded and checked before anything is stored, points that already ran reused, the
pixel tables computed once, and the aggregates over seeds equal to what the experiments stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from common.errors import Invalid
from common.settings import Settings
from common.store import db
from common.study import sweeps
from common.study.config import StudyConfig

BASE = {"limit": 700, "models": ["linear_mse", "relu_mse"], "k": 20, "ks": [5, 10], "epochs": 1, "split": "all"}
GRID = {"weight_decay": [1e-3, 0.0], "seed": [0, 1]}
REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.mark.parametrize("base, grid, words", [
    (BASE, {}, "grid: empty"),
    (BASE, {"colour": ["red"]}, "grid.colour: not a field a sweep varies"),
    (BASE, {"seed": []}, "grid.seed: give a non-empty list"),
    (BASE, {"seed": [0, 0]}, "grid.seed: a value is repeated"),
    (BASE, {"seed": list(range(17)), "lr": [1e-3 * (i + 1) for i in range(16)]}, "grid: 272 points, more than the 256"),
    (BASE, {"lr": [1e-3, -1.0]}, 'grid point {"lr": -1.0}: lr: Input should be greater than 0'),
    (BASE, {"epochs": [1, True]}, 'grid point {"epochs": true}: epochs: must be a number, not a boolean'),
    ({**BASE, "k": 5000}, {"seed": [0]}, "base.k: Input should be less than or equal to 1000"),
])
def test_a_bad_grid_is_refused_whole_naming_the_field_and_value(base, grid, words):
    with pytest.raises(Invalid) as info:
        sweeps.expand(base, grid)
    assert words in str(info.value)


def test_a_grid_expands_in_order_with_the_base_behind_every_point():
    configs = sweeps.expand(BASE, GRID)
    assert [(c.weight_decay, c.seed) for c in configs] == [(1e-3, 0), (1e-3, 1), (0.0, 0), (0.0, 1)]
    assert all(c.limit == 700 and c.k == 20 for c in configs)


@pytest.fixture(scope="module")
def ran(tmp_path_factory, data_dir):
    """A 2 x 2 sweep run in one process, then the same sweep again (everything reused)."""
    from common.study.run import run_experiments
    from common.study.runtime import Runtime

    url = f"sqlite:///{tmp_path_factory.mktemp('sweep') / 's.db'}"
    engine = db.make_engine(url)
    db.init_db(engine)
    f = db.session_factory(engine)
    settings = Settings(database_url=url, broker_url=REDIS_URL)
    sweep_id, new = sweeps.create(f, settings, BASE, GRID, queue=False)
    rt = Runtime(factory=f, data_dir=data_dir, cache_dir=tmp_path_factory.mktemp("c"), device="cpu")
    run_experiments(rt, new)  # as `aeknn sweep` runs them: each one's tables beside the next one's training
    again, new_again = sweeps.create(f, settings, BASE, GRID, queue=False)
    yield {"url": url, "factory": f, "id": sweep_id, "new": new, "again": again, "new_again": new_again}
    engine.dispose()


def test_a_sweep_runs_as_ordinary_experiments_sharing_the_pixel_tables(ran):
    f = ran["factory"]
    assert len(ran["new"]) == 4 and ran["new_again"] == []  # the second sweep reused all four
    with f() as s:
        info = sweeps.describe(s, ran["id"])
        assert info["status"] == "succeeded" and info["done"] == info["total"] == 4
        assert [g["point"] for g in info["groups"]] == [{"weight_decay": 1e-3}, {"weight_decay": 0.0}]
        again = sweeps.describe(s, ran["again"])
        assert all(p["reused"] for p in again["points"]) and [p["experiment"] for p in again["points"]] == ran["new"]
        originals = s.query(db.TableRow).filter(db.TableRow.model_id.is_(None)).all()
        assert len(originals) == 2  # one pixel table per distance, for all four experiments
        for eid in ran["new"]:
            assert db.find_table(session=s, experiment_id=eid, space="original", distance="l2").id in {
                t.id for t in originals}


def _stored(factory, eid: int) -> tuple[dict, dict]:
    """An experiment's neighbour ids of every table and its metric values, by name."""
    with factory() as s:
        tables = {(t.space, t.distance): db.load_table_ids(session=s, table_id=t.id, n=t.n, k=t.k)
                  for t in s.query(db.TableRow).all()
                  if t.model_id is None or s.get(db.ModelRow, t.model_id).experiment_id == eid}
        metrics = {(m.metric, m.space, m.distance, m.k, m.label): m.value
                   for m in s.query(db.MetricValue).filter_by(experiment_id=eid)}
    return tables, metrics


def test_overlapping_the_tables_with_the_next_training_changes_no_result(ran, tmp_path, data_dir):
    """The last grid point run alone, one stage after another, stores exactly what the sweep stored."""
    from common.study.run import run_experiment
    from common.study.runtime import Runtime
    from common.study.stages import record_experiment

    last = ran["new"][-1]
    with ran["factory"]() as s:
        config = db.get_experiment(session=s, experiment_id=last).config
    engine = db.make_engine(f"sqlite:///{tmp_path / 'alone.db'}")
    db.init_db(engine)
    f = db.session_factory(engine)
    eid = record_experiment(f, StudyConfig.model_validate(config))
    run_experiment(Runtime(factory=f, data_dir=data_dir, cache_dir=tmp_path / "c", device="cpu"), eid)
    (t_sweep, m_sweep), (t_alone, m_alone) = _stored(ran["factory"], last), _stored(f, eid)
    assert t_sweep.keys() == t_alone.keys() and len(t_sweep) == 2 + 2 * 2  # pixel + two models, two distances
    assert all(np.array_equal(t_sweep[key], t_alone[key]) for key in t_sweep)
    assert m_sweep == m_alone and m_sweep
    engine.dispose()


def test_a_tail_process_that_dies_stops_the_sweep_and_marks_the_experiment_beside_it(tmp_path, data_dir,
                                                                                    monkeypatch):
    """Experiment 1's tables-and-metrics process is SIGKILLed (as the out-of-memory killer would) while
    experiment 2 trains: both end failed, saying why, and a resume finishes both from what is stored."""
    import signal

    from common.study import run as stages
    from common.study.run import run_experiments
    from common.study.runtime import Runtime
    from common.study.stages import record_experiment

    engine = db.make_engine(f"sqlite:///{tmp_path / 'f.db'}")
    db.init_db(engine)
    f = db.session_factory(engine)
    one, two = (record_experiment(f, StudyConfig.model_validate({**BASE, "limit": 300, "seed": seed}))
                for seed in (0, 1))
    rt = Runtime(factory=f, data_dir=data_dir, cache_dir=tmp_path / "c", device="cpu")
    real = stages._start_tail
    started = []

    def killed(rt_, eid, elapsed):
        proc = real(rt_, eid, elapsed)
        os.kill(proc.pid, signal.SIGKILL)
        started.append(eid)
        return proc

    monkeypatch.setattr(stages, "_start_tail", killed)
    with pytest.raises(RuntimeError, match=f"experiment {one} failed: its tables and metrics process ended with "
                                           "signal 9"):
        run_experiments(rt, [one, two])
    assert started == [one]
    with f() as s:
        first, second = (db.get_experiment(session=s, experiment_id=e) for e in (one, two))
        assert (first.status, first.error) == (db.FAILED, "its tables and metrics process ended with signal 9")
        assert second.status == db.FAILED
        assert second.error.startswith(f"stopped after training: experiment {one} failed")
        trained = s.query(db.ModelRow).filter_by(experiment_id=two).all()
        assert len(trained) == 2 and all(m.epochs_done == 1 and m.weights for m in trained)  # its training is kept
    monkeypatch.setattr(stages, "_start_tail", real)
    run_experiments(rt, [one, two])
    with f() as s:
        assert [db.get_experiment(session=s, experiment_id=e).status for e in (one, two)] == [db.SUCCEEDED] * 2
    engine.dispose()


def test_the_aggregates_are_the_mean_and_spread_of_what_each_seed_stored(ran):
    with ran["factory"]() as s:
        rows = sweeps.aggregate(s, ran["id"], "score_at_k", [5, 10])
        info = sweeps.describe(s, ran["id"])
        for g in info["groups"]:
            for space in ("linear_mse", "relu_mse"):
                per_seed = [next(v.value for v in db.load_metrics(session=s, experiment_id=e, metric="score_at_k",
                                                                    ks=[10]) if v.space == space and v.distance == "l2")
                            for e in g["experiments"]]
                (row,) = [r for r in rows if r["point"] == g["point"] and r["space"] == space and r["distance"] == "l2"
                          and r["k"] == 10]
                assert row["n"] == 2 and row["seeds"] == [0, 1]
                assert row["mean"] == pytest.approx(np.mean(per_seed), abs=1e-15)
                assert row["sd"] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-15)
                assert (row["min"], row["max"]) == (min(per_seed), max(per_seed))
        by = sweeps.aggregate(s, ran["id"], "score_at_k_by_label", [10], label_k=10)
        assert {r["label"] for r in by} == set(range(10)) and all(r["k"] == 10 for r in by)
        held = sweeps.aggregate(s, ran["id"], "test_score_at_k", [10])  # the held-out test split's (split all)
        for g in info["groups"]:
            stored = [db.load_metrics(session=s, experiment_id=e, metric="test_score_at_k", ks=[10])
                      for e in g["experiments"]]
            per_seed = [next(v.value for v in vs if (v.space, v.distance) == ("relu_mse", "l2")) for vs in stored]
            (row,) = [r for r in held if r["point"] == g["point"] and (r["space"], r["distance"]) == ("relu_mse", "l2")]
            assert row["n"] == 2 and row["mean"] == pytest.approx(np.mean(per_seed), abs=1e-15)
        assert {r["label"] for r in sweeps.aggregate(s, ran["id"], "test_score_at_k_by_label", [10], label_k=10)} \
            == set(range(10))
        with pytest.raises(Invalid, match="metric: 'nope' is not one of"):
            sweeps.aggregate(s, ran["id"], "nope", [5])


def test_the_sweep_api_reads_and_refuses(ran):
    from api.main import create_app

    r0 = redis.Redis.from_url(REDIS_URL)
    r0.flushdb()
    c = TestClient(create_app(Settings(database_url=ran["url"], broker_url=REDIS_URL)))
    body = c.get(f"/sweeps/{ran['id']}").json()
    assert body["status"] == "succeeded" and body["total"] == 4 and body["links"]["self"] == f"/sweeps/{ran['id']}"
    assert [s["id"] for s in c.get("/sweeps").json()][:2] == [ran["again"], ran["id"]]
    t = c.get(f"/sweeps/{ran['id']}/metrics/score_at_k", params={"k": "5,10"}).json()
    assert t["k"] == [5, 10] and len(t["rows"]) == 2 * 2 * 2 * 2  # points x models x distances x k
    text = c.get(f"/sweeps/{ran['id']}/metrics/knn_accuracy?k=5&format=csv").text
    assert text.splitlines()[0] == "weight_decay,space,distance,k,label,mean,sd,min,max,n"
    assert c.get("/sweeps/999").status_code == 404
    assert c.get(f"/sweeps/{ran['id']}/metrics/nope").status_code == 422
    # a new sweep over the workers' queue: only its new points are queued; a bad one stores nothing
    before = c.get("/experiments").json()["total"]
    bad = c.post("/sweeps", json={"base": BASE, "grid": {"lr": [1e-3, 50.0]}})
    assert bad.status_code == 422 and "grid.lr.1: Input should be less than or equal to 10" in bad.json()["message"]
    assert c.post("/sweeps", json={"base": BASE, "grid": {}}).status_code == 422
    assert c.get("/experiments").json()["total"] == before and r0.llen("control") == 0
    ok = c.post("/sweeps", json={"base": BASE, "grid": {"weight_decay": [1e-3, 1e-5], "seed": [0, 1]}})
    assert ok.status_code == 202, ok.text
    assert sum(p["reused"] for p in ok.json()["points"]) == 2  # wd 1e-3 ran before
    assert r0.llen("control") == 2 and c.get("/experiments").json()["total"] == before + 2
    cancelled = c.post(f"/sweeps/{ok.json()['id']}/cancel").json()
    assert {p["status"] for p in cancelled["points"] if not p["reused"]} == {"cancelled"}
    r0.flushdb()


def test_aeknn_metrics_prints_a_sweeps_mean_and_spread(ran):
    out = subprocess.run([sys.executable, "-m", "cli", "metrics", "--sweep", str(ran["id"]), "--db", ran["url"]],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "score_at_k" in out.stdout and "weight_decay" in out.stdout and " ± " in out.stdout
    data = json.loads(subprocess.run([sys.executable, "-m", "cli", "metrics", "--sweep", str(ran["id"]), "--format",
                                      "json", "--db", ran["url"]], capture_output=True, text=True).stdout)
    assert data["sweep"]["total"] == 4 and data["k"] == [5, 10]
    assert {"score_at_k", "test_score_at_k", "test_knn_accuracy"} <= set(data["tables"])  # the base: split all
    assert all(data["tables"]["test_score_at_k"]) and "test_knn_accuracy" in out.stdout


def test_one_seed_has_no_spread_to_report(ran):
    """A sweep of one seed (here reusing what ran) reports sd as null and prints a dash, never 0."""
    settings = Settings(database_url=ran["url"], broker_url=REDIS_URL)
    one, new = sweeps.create(ran["factory"], settings, BASE, {"weight_decay": [0.0], "seed": [1]}, queue=False)
    assert new == []
    with ran["factory"]() as s:
        rows = sweeps.aggregate(s, one, "score_at_k", [5])
    assert rows and all(r["n"] == 1 and r["sd"] is None and r["min"] == r["mean"] == r["max"] for r in rows)
    from api.main import create_app

    with TestClient(create_app(settings)) as client:
        got = client.get(f"/sweeps/{one}/metrics/score_at_k", params={"k": "5"})
        assert got.status_code == 200 and all(r["sd"] is None for r in got.json()["rows"])
    out = subprocess.run([sys.executable, "-m", "cli", "metrics", "--sweep", str(one), "--db", ran["url"]],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert " ± -" in out.stdout and " ± 0.0000" not in out.stdout

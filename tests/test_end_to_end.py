"""`aeknn run` on real MNIST, checked against brute force; resume; the CLI's read commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from common.compute.neighbors import PIXEL_UNIT
from common.store import db as db
from common.study import reads
from common.study.config import StudyConfig

pytestmark = pytest.mark.slow
LIMIT, EPOCHS = 2000, 2


def aeknn(*args: str, env_db: str, data_dir=None, check=True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cli", *args, "--db", env_db]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def study(tmp_path_factory, data_dir):
    url = f"sqlite:///{tmp_path_factory.mktemp('e2e') / 'aeknn.db'}"
    proc = aeknn("run", "--limit", str(LIMIT), "--epochs", str(EPOCHS), env_db=url, data_dir=data_dir)
    engine = db.make_engine(url)
    factory = db.session_factory(engine)
    with factory() as s:
        experiment_id = db.latest_experiment_id(session=s)
    yield {"url": url, "factory": factory, "id": experiment_id, "stdout": proc.stdout, "stderr": proc.stderr}
    engine.dispose()


def brute_rows(points: np.ndarray, queries: np.ndarray, k: int, distance: str):
    d = cdist(points[queries].astype(np.float64), points.astype(np.float64),
              "cityblock" if distance == "l1" else "euclidean")
    d[np.arange(len(queries)), queries] = np.inf
    order = np.lexsort((np.broadcast_to(np.arange(len(points)), d.shape), d), axis=1)[:, :k]
    return order, np.take_along_axis(d, order, axis=1)


def test_run_prints_the_tables_and_succeeds(study):
    out = study["stdout"]
    for title in ("score@k", "score@20 by label", "same-label rate", "kNN accuracy@k", "R_NX(k)"):
        assert title in out
    with study["factory"]() as s:
        exp = db.get_experiment(session=s, experiment_id=study["id"])
        assert exp.status == db.SUCCEEDED and exp.attempts == 1
        assert {"data", "table original l1", "table original l2", "train", "metrics",
                "total"} <= set(exp.timings)
        models = db.list_models(session=s, experiment_id=study["id"])
        assert [m.name for m in models] == ["linear_l1", "linear_mse", "relu_l1", "relu_mse"]
        assert all(m.epochs_done == EPOCHS and len(m.losses) == EPOCHS and m.recon_epoch == EPOCHS
                   for m in models)
    # every table says how it was computed, in the output and in the database
    info = json.loads(aeknn("status", str(study["id"]), "--format", "json", env_db=study["url"]).stdout)
    for t in info["tables"]:
        line = next(x for x in study["stderr"].splitlines() if x.startswith(f"table {t['space']} {t['distance']}:"))
        assert line.startswith(f"table {t['space']} {t['distance']}: {t['path']}, ") and "rows/s" in line
        assert t["rows_per_s"] > 0
        if t["space"] == "original":
            assert t["path"] in ("int8", "f32", "f32-numpy", "sad-avx512", "sad-avx2", "sad-portable", "sparse")
            assert (t["gflops"] if t["distance"] == "l2" else t["gsads_per_s"]) > 0
            assert ("GFLOP/s" if t["distance"] == "l2" else "G pair-SADs/s") in line
        else:
            assert t["path"] == "kdtree" and t["gflops"] is None


def test_stored_neighbors_equal_brute_force(study, mnist):
    images, labels = mnist.images[:LIMIT], mnist.labels[:LIMIT]
    queries = np.random.default_rng(0).choice(LIMIT, 40, replace=False)
    with study["factory"]() as s:
        spaces = {"original": images}
        for m in db.list_models(session=s, experiment_id=study["id"]):
            spaces[m.name] = db.model_codes(m)
        for space, points in spaces.items():
            for distance in ("l1", "l2"):
                table = db.find_table(session=s, experiment_id=study["id"], space=space, distance=distance)
                assert table is not None and table.n == LIMIT and table.k == 200
                want_ids, want_d = brute_rows(points, queries, 200, distance)
                unit = PIXEL_UNIT if space == "original" else 1.0
                for q, wi, wd in zip(queries, want_ids, want_d, strict=True):
                    ids, lab, dist = reads.stored_neighbors(s, table, table.dataset_id, int(q))
                    np.testing.assert_array_equal(ids, wi, err_msg=f"{space}/{distance} sample {q}")
                    np.testing.assert_array_equal(lab, labels[wi])
                    np.testing.assert_allclose(dist, wd * unit, rtol=1e-5, atol=1e-6)


def test_stored_metrics_equal_metrics_recomputed_from_stored_tables(study):
    from common.study.scoring import compute_metrics, rank_sums_of

    with study["factory"]() as s:
        exp = db.get_experiment(session=s, experiment_id=study["id"])
        cfg = StudyConfig.model_validate(exp.config)
        labels = db.dataset_labels(session=s, dataset_id=exp.dataset_id)

        def ids(space, d):
            t = db.find_table(session=s, experiment_id=study["id"], space=space, distance=d)
            return db.load_table_ids(session=s, table_id=t.id, n=t.n, k=t.k)

        orig = {d: ids("original", d) for d in ("l1", "l2")}
        enc = {(m, d): ids(m, d) for m in cfg.models for d in ("l1", "l2")}
        stored = {(v.metric, v.space, v.distance, v.k, v.label): v.value
                  for v in db.load_metrics(session=s, experiment_id=study["id"])}
        ranks = rank_sums_of(s, study["id"], cfg, [m.value for m in cfg.models])  # from the stored points
    again = {(v["metric"], v["space"], v["distance"], v["k"], v["label"]): v["value"]
             for v in compute_metrics(cfg, labels, orig, enc, ranks)}
    assert stored == again
    # every table of STUDY.md is there at every k = 1..K: 4 models x 2 distances x 200 k, by label for 10
    # labels, kNN accuracy of the 5 spaces
    assert sum(1 for key in stored if key[0] == "score_at_k") == 8 * 200
    assert sum(1 for key in stored if key[0] == "score_at_k_by_label") == 8 * 200 * 10
    assert sum(1 for key in stored if key[0] == "knn_accuracy") == 10 * 200
    for metric in ("trustworthiness", "continuity", "mrre_false", "mrre_missing", "lcmc"):  # item 6
        assert sum(1 for key in stored if key[0] == metric) == 8 * 200, metric
    assert sum(1 for key in stored if key[0] == "auc_rnx") == 8
    assert {key[3] for key in stored} == set(range(1, 201))


def test_metrics_command_formats(study, tmp_path):
    table = aeknn("metrics", env_db=study["url"]).stdout
    assert "score@k" in table and "relu_mse" in table and "k=50" in table and "k=7 " not in table
    csv_out = aeknn("metrics", "--format", "csv", "--table", "score_at_k", env_db=study["url"]).stdout
    assert csv_out.splitlines()[0] == "model,distance,k=5,k=10,k=20,k=50" and len(csv_out.splitlines()) == 9
    picked = aeknn("metrics", "--k", "3,7-8", "--table", "knn_accuracy", "--format", "csv", env_db=study["url"]).stdout
    assert picked.splitlines()[0] == "space,distance,k=3,k=7,k=8" and picked.splitlines()[1].startswith("original,l1,")
    done = aeknn("metrics", "--format", "csv", "--out", str(tmp_path / "csv"), env_db=study["url"])
    files = sorted(p.name for p in (tmp_path / "csv").iterdir())
    assert files == ["auc_rnx.csv", "continuity.csv", "knn_accuracy.csv", "label_agreement.csv", "lcmc.csv",
                     "mrre.csv", "r_nx.csv", "score_at_k.csv", "score_at_k_by_label.csv",
                     "trustworthiness.csv"] and "10 tables written" in done.stdout
    assert (tmp_path / "csv" / "label_agreement.csv").read_text().startswith("model,distance,k,original_rate")
    mixed = aeknn("metrics", "--format", "csv", env_db=study["url"], check=False)
    assert mixed.returncode == 2 and "--table" in mixed.stderr and "Traceback" not in mixed.stderr
    data = json.loads(aeknn("metrics", "--format", "json", env_db=study["url"]).stdout)
    score = next(t for t in data["tables"] if t["name"] == "score_at_k")
    with study["factory"]() as s:
        (v,) = [x for x in db.load_metrics(session=s, experiment_id=study["id"], metric="score_at_k")
                if x.space == "relu_mse" and x.distance == "l2" and x.k == 20]
    row = next(r for r in score["rows"] if r[:2] == ["relu_mse", "l2"])
    assert row[2 + score["columns"][2:].index("k=20")] == v.value


def test_neighbors_command(study, mnist):
    out = aeknn("neighbors", "7", "--space", "original", "--distance", "l1", "--k", "5",
                env_db=study["url"]).stdout.splitlines()
    assert out[0].startswith(f"experiment {study['id']}  sample 7 (label {mnist.labels[7]})")
    rows = [line.split() for line in out[2:]]
    want, _ = brute_rows(mnist.images[:LIMIT], np.array([7]), 5, "l1")
    assert [int(r[1]) for r in rows] == list(want[0])
    assert [int(r[2]) for r in rows] == list(mnist.labels[want[0]])
    enc = aeknn("neighbors", "7", "--space", "encoded", "--model", "relu_l1", env_db=study["url"]).stdout
    assert len(enc.splitlines()) == 2 + 20
    # distances keep their significant digits, however small (a collapsed model's codes are close)
    with study["factory"]() as s:
        t = db.find_table(session=s, experiment_id=study["id"], space="linear_l1", distance="l2")
        first = float(reads.stored_neighbors(s, t, t.dataset_id, 7)[2][0])
    row = aeknn("neighbors", "7", "--space", "encoded", "--model", "linear_l1", env_db=study["url"]).stdout
    shown = float(row.splitlines()[2].split()[3])
    assert shown == pytest.approx(first, rel=1e-5) and (first == 0 or shown != 0)


@pytest.mark.parametrize("args, code, msg", [
    (["neighbors", "7", "--space", "original", "--k", "201"], 2, "k: must be in 1..200"),
    (["neighbors", "2000", "--space", "original"], 1, "sample 2000 is not in experiment"),
    (["neighbors", "7", "--space", "encoded", "--model", "vae"], 1, "has no model 'vae' (its models: linear_l1"),
    (["metrics", "--experiment", "999"], 1, "no experiment 999"),
    (["metrics", "--k", "0,5"], 2, "--k: [0] must each be in 1..200"),
    (["metrics", "--k", "5,abc"], 2, "'abc' is not a whole number"),
    (["metrics", "--table", "nope", "--format", "csv"], 2, "no table 'nope'"),
    (["metrics", "--colour", "red"], 2, "unrecognized arguments: --colour"),
])
def test_read_commands_refuse_bad_input(study, args, code, msg):
    proc = aeknn(*args, env_db=study["url"], check=False)
    assert proc.returncode == code and msg in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 2


def test_read_commands_never_create_a_database(tmp_path):
    for args in (["metrics"], ["neighbors", "1", "--space", "original"], ["status", "1"]):
        proc = subprocess.run([sys.executable, "-m", "cli", *args, "--db", str(tmp_path / "no_such.db")],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert proc.returncode == 2 and f"no database at {tmp_path / 'no_such.db'}" in proc.stderr, proc.stderr
        assert not (tmp_path / "no_such.db").exists() and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "cli", "metrics"], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)  # no --db, in a folder without aeknn.db
    assert proc.returncode == 2 and "no database at aeknn.db" in proc.stderr and not (tmp_path / "aeknn.db").exists()
    bad = subprocess.run([sys.executable, "-m", "cli", "metrics", "--db", "postgresql://[::1"], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert bad.returncode == 2 and "not a database URL or a path" in bad.stderr and "Traceback" not in bad.stderr


def test_a_reader_that_goes_away_gets_no_traceback(study):
    """`aeknn metrics --k 1-200 | head -1`: the pipe closes while the tables are still being written."""
    cmd = [sys.executable, "-m", "cli", "metrics", "--k", "1-200", "--db", study["url"]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader goes away after one line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and first.strip() and err == "", err


def test_a_plain_path_is_a_sqlite_database(study):
    path = study["url"].removeprefix("sqlite:///")
    out = aeknn("metrics", "--table", "score_at_k", "--format", "csv", env_db=path).stdout
    assert out.startswith("model,distance,k=5")


def test_every_option_of_the_read_commands_says_what_it_is():
    for cmd in ("neighbors", "metrics"):
        text = subprocess.run([sys.executable, "-m", "cli", cmd, "--help"], capture_output=True, text=True).stdout
        for option in ("--db", "--experiment", *(("--space", "--model", "--k", "--distance") if cmd == "neighbors"
                                                  else ("--k", "--format", "--table", "--out"))):
            line = next(x for x in text.splitlines() if x.strip().startswith(option))
            assert len(line.split(option, 1)[1].strip()) > 3 or option in text.split("\n", 1)[1], (cmd, option)
        assert "default" in text


@pytest.mark.parametrize("args, msg", [
    (["--limit", "150"], "K=200 must be below the number of samples N=150"),
    (["--models", "relu_mse,vae"], "invalid models.1"),
    (["--distances", "cosine"], "invalid distances.0"),
    (["--epochs", "0"], "invalid epochs"),
    (["--lr", "nan"], "invalid lr"),
    (["--batch-size", "-5"], "invalid batch_size"),
    (["--dataset", "cifar"], "no uploaded data set 'cifar'"),
    (["--dataset", "not a name"], "invalid dataset"),
])
def test_run_refuses_bad_input_before_any_work(tmp_path, args, msg):
    url = f"sqlite:///{tmp_path / 'bad.db'}"
    proc = aeknn("run", *args, env_db=url, check=False)
    assert proc.returncode == 2 and msg in proc.stderr, proc.stderr
    assert not (tmp_path / "bad.db").exists()  # nothing was written


def test_run_without_a_maps_library_names_it_and_how_to_go_on(tmp_path, data_dir):
    (tmp_path / "site").mkdir()  # umap-learn as good as uninstalled: `import umap` fails, find_spec says None
    (tmp_path / "site" / "sitecustomize.py").write_text("import sys\nsys.modules['umap'] = None\n")
    url = f"sqlite:///{tmp_path / 'maps.db'}"
    cmd = [sys.executable, "-m", "cli", "run", "--limit", "300", "--epochs", "1", "--k", "20", "--ks", "5",
           "--models", "relu_mse,umap", "--db", url, "--data-dir", str(data_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{os.getcwd()}"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "umap needs umap-learn, not installed here: pip install 'aeknn[maps]'" in proc.stderr
    assert "`aeknn resume ID` continues the experiment" in proc.stderr
    status = aeknn("status", "1", env_db=url).stdout
    assert "experiment 1: failed" in status and "umap needs umap-learn" in status


def in_process(tmp_path, data_dir):
    """A SQLite database in tmp_path and a function that makes a Runtime over it (with an epoch hook)."""
    from common.study.runtime import Runtime

    engine = db.make_engine(f"sqlite:///{tmp_path / 'r.db'}")
    db.init_db(engine)
    f = db.session_factory(engine)
    return f, lambda hook=None: Runtime(factory=f, data_dir=data_dir, cache_dir=tmp_path / "cache", device="cpu",
                                        on_epoch_end=hook)


def stop_at(model: str, epoch: int):
    """An epoch hook that interrupts the run once ``model`` has finished ``epoch``."""
    def stop(name, ck):
        if name == model and ck.epoch == epoch:
            raise KeyboardInterrupt
    return stop


def test_interrupted_run_resumes_to_the_same_result(tmp_path, data_dir):
    """Stopped after the first epoch, resumed: equal to a run that never stopped."""
    from common.study.run import run_experiment
    from common.study.stages import record_experiment

    f, runtime = in_process(tmp_path, data_dir)
    cfg = StudyConfig(limit=1000, epochs=3, models=["linear_mse", "relu_mse"], k=50, ks=[5, 20])
    stop = stop_at("relu_mse", 1)

    stopped = record_experiment(f, cfg)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(runtime(stop), stopped)
    with f() as s:
        exp = db.get_experiment(session=s, experiment_id=stopped)
        assert exp.status == db.FAILED and exp.error == "interrupted"
        done = {m.name: m.epochs_done for m in db.list_models(session=s, experiment_id=stopped)}
        assert done == {"linear_mse": 1, "relu_mse": 1}  # trained side by side: one epoch each
    run_experiment(runtime(), stopped)  # what `aeknn resume ID` does
    clean = record_experiment(f, cfg)
    run_experiment(runtime(), clean)

    with f() as s:
        a, b = (db.get_experiment(session=s, experiment_id=i) for i in (stopped, clean))
        assert a.status == b.status == db.SUCCEEDED and a.attempts == 2 and b.attempts == 1
        ma, mb = (db.list_models(session=s, experiment_id=i) for i in (stopped, clean))
        for x, y in zip(ma, mb, strict=True):
            assert x.losses == y.losses and x.codes == y.codes and x.weights == y.weights
        va, vb = ({(v.metric, v.space, v.distance, v.k, v.label): v.value
                   for v in db.load_metrics(session=s, experiment_id=i)} for i in (stopped, clean))
        assert va == vb
        # the pixel-space tables were computed once and shared
        assert db.find_table(session=s, experiment_id=stopped, space="original", distance="l2").id == \
            db.find_table(session=s, experiment_id=clean, space="original", distance="l2").id


def test_relu_keep_trains_on_the_stored_pixel_table_resumes_and_its_tables_are_exact(tmp_path, data_dir, mnist):
    """relu_keep beside an autoencoder: trained after the pixel tables, stopped after its first epoch and
    resumed to the same bits as a run that never stopped; its code tables equal brute force."""
    import io

    import torch

    from common.compute.training import encode, load_trained
    from common.study.run import run_experiment
    from common.study.stages import record_experiment

    f, runtime = in_process(tmp_path, data_dir)
    cfg = StudyConfig(limit=1000, epochs=5, models=["relu_mse", "relu_keep"], k=50, ks=[5, 20], distances=["l2"])
    stop = stop_at("relu_keep", 1)

    stopped = record_experiment(f, cfg)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(runtime(stop), stopped)
    with f() as s:
        done = {m.name: m.epochs_done for m in db.list_models(session=s, experiment_id=stopped)}
        assert done == {"relu_mse": 5, "relu_keep": 1}  # the autoencoder was stored before relu_keep began
    run_experiment(runtime(), stopped)
    clean = record_experiment(f, cfg)
    run_experiment(runtime(), clean)
    with f() as s:
        a, b = (db.get_experiment(session=s, experiment_id=i) for i in (stopped, clean))
        assert a.status == b.status == db.SUCCEEDED and "train relu_keep" in b.timings
        (ka,), (kb,) = ([m for m in db.list_models(session=s, experiment_id=i) if m.name == "relu_keep"]
                        for i in (stopped, clean))
        assert ka.losses == kb.losses and ka.codes == kb.codes and ka.weights == kb.weights
        assert len(kb.losses) == 2 and kb.reconstructions is None  # 0.3 of 5 epochs; nothing to reconstruct
        codes = db.model_codes(kb)
        # the stored codes are the encoder's map refined, not the encoder's own codes
        encoder = load_trained("relu_keep", torch.load(io.BytesIO(kb.weights), weights_only=True))
        own = encode(encoder, mnist.scaled()[:1000]).numpy()
        assert codes.shape == own.shape and not np.array_equal(codes, own)
        table = db.find_table(session=s, experiment_id=clean, space="relu_keep", distance="l2")
        queries = np.random.default_rng(3).choice(1000, 20, replace=False)
        want_ids, want_d = brute_rows(codes, queries, 50, "l2")
        for q, wi, wd in zip(queries, want_ids, want_d, strict=True):
            ids, lab, dist = reads.stored_neighbors(s, table, table.dataset_id, int(q))
            np.testing.assert_array_equal(ids, wi)
            np.testing.assert_allclose(dist, wd, rtol=1e-5, atol=1e-6)
        score = {v.k: v.value for v in db.load_metrics(session=s, experiment_id=clean, metric="score_at_k")
                 if v.space == "relu_keep"}
        assert set(score) == set(range(1, 51)) and 0 < score[20] <= 1


def test_reference_maps_are_stored_as_read_only_models_and_scored_like_the_others(tmp_path, data_dir, monkeypatch):
    """PCA, UMAP and t-SNE beside an autoencoder: fitted first, seeded by the study's seed (the codes of a
    second experiment are the same bits), stored with no weights, and their tables equal brute force; a
    missing library fails the experiment before anything is trained, naming the package to install, and
    once it is there the experiment resumes to the same result."""
    from common.compute import references
    from common.errors import MissingExtra
    from common.study.run import run_experiment
    from common.study.stages import record_experiment, stage_data

    f, runtime = in_process(tmp_path, data_dir)
    cfg = StudyConfig(limit=1000, epochs=2, models=["relu_mse", "pca", "umap", "tsne"], k=50, ks=[5, 20],
                      distances=["l2"], seed=3)
    a, b = record_experiment(f, cfg), record_experiment(f, cfg)
    for eid in (a, b):
        run_experiment(runtime(), eid)
    x = stage_data(runtime(), a, cfg).scaled().numpy()
    with f() as s:
        assert db.get_experiment(session=s, experiment_id=a).status == db.SUCCEEDED
        rows = {m.name: m for m in db.list_models(session=s, experiment_id=a)}
        again = {m.name: m.codes for m in db.list_models(session=s, experiment_id=b)}
        assert set(rows) == {"relu_mse", "pca", "umap", "tsne"}
        for name in ("pca", "umap", "tsne"):
            row = rows[name]
            assert row.weights is None and row.losses == [] and row.epochs_done == 1 and row.seconds > 0
            assert row.codes == again[name]
            np.testing.assert_array_equal(db.model_codes(row), references.fit_map(name, x, seed=3)[0])
            table = db.find_table(session=s, experiment_id=a, space=name, distance="l2")
            queries = np.random.default_rng(5).choice(1000, 10, replace=False)
            want_ids, want_d = brute_rows(db.model_codes(row), queries, 50, "l2")
            for q, wi, wd in zip(queries, want_ids, want_d, strict=True):
                ids, _, dist = reads.stored_neighbors(s, table, table.dataset_id, int(q))
                np.testing.assert_array_equal(ids, wi)
                np.testing.assert_allclose(dist, wd, rtol=1e-5, atol=1e-6)
        score = {(v.space, v.k): v.value for v in db.load_metrics(session=s, experiment_id=a, metric="score_at_k")}
        assert score[("tsne", 5)] > score[("umap", 5)] > score[("pca", 5)] > 0  # as on full MNIST (0.56/0.44/0.09)

    monkeypatch.setitem(references.EXTRA, "umap", ("aeknn_no_such_module", "umap-learn"))
    failed = record_experiment(f, cfg)
    with pytest.raises(MissingExtra):
        run_experiment(runtime(), failed)
    with f() as s:
        exp = db.get_experiment(session=s, experiment_id=failed)
        assert exp.status == db.FAILED and "umap needs umap-learn" in exp.error and "aeknn[maps]" in exp.error
        models = {m.name: m for m in db.list_models(session=s, experiment_id=failed)}
        assert models["pca"].codes is None and "relu_mse" not in models  # nothing fitted, nothing trained
    monkeypatch.undo()
    run_experiment(runtime(), failed)
    with f() as s:
        assert db.get_experiment(session=s, experiment_id=failed).status == db.SUCCEEDED
        assert {m.name: m.codes for m in db.list_models(session=s, experiment_id=failed)} == \
            {m.name: m.codes for m in db.list_models(session=s, experiment_id=a)}

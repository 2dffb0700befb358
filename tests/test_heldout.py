"""The held-out test split ("split": "test" or "all"): each test image placed by every model, and its k nearest
training images in pixel space against its k nearest training codes, as score@k, kNN accuracy and label
agreement. Real MNIST test images, every table checked against a brute force, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient

from common.compute import metrics as M
from common.compute.placing import (
    Pixels,
    block_sums,
    code_cross_table,
    cross_table,
    float_sums,
    pixel_cross_table,
    smallest,
    unseen_neighbors,
)
from common.settings import Settings
from common.store import db as db
from common.study.config import StudyConfig
from common.study.scoring import heldout_metrics
from tests.services import fresh_database, study_in_process

LIMIT, K = 1000, 30
CFG = StudyConfig(limit=LIMIT, epochs=1, k=K, ks=[5, 10], split="all", models=["relu_mse", "relu_keep", "pca", "tsne"])


def brute_top(sums: np.ndarray, k: int) -> np.ndarray:
    """Each row's k smallest, ties to the lower id, by a full sort."""
    ids = np.broadcast_to(np.arange(sums.shape[1]), sums.shape)
    return np.lexsort((ids, sums), axis=1)[:, :k]


def pixel_sums(train: np.ndarray, test: np.ndarray, distance: str) -> np.ndarray:
    d = test[:, None, :].astype(np.int64) - train[None, :, :].astype(np.int64)
    return np.abs(d).sum(2) if distance == "l1" else (d * d).sum(2)


# ---------------------------------------------------------------- the pieces, on small cases


def test_smallest_keeps_the_lower_ids_among_ties_beyond_k():
    rng = np.random.default_rng(0)
    for dtype, high in ((np.int64, 4), (np.float64, 3)):
        sums = rng.integers(0, high, (300, 57)).astype(dtype)  # few values: every row is full of ties
        for k in (1, 5, 56, 57):
            assert np.array_equal(smallest(sums, k), brute_top(sums, k))
    assert smallest(np.array([[2, 1, 1, 0, 1]]), 3).tolist() == [[3, 1, 2]]  # worked by hand


def test_block_sums_are_the_tables_formula_to_the_last_bit():
    """Each row's sums: float64, coordinate by coordinate in order, |q - x| or (q - x)^2, as CodeSpace sums."""
    rng = np.random.default_rng(1)
    x, q = rng.normal(size=(500, 3)).astype(np.float32), rng.normal(size=(7, 3)).astype(np.float32)
    x64, q64 = x.astype(np.float64), q.astype(np.float64)
    for d in ("l1", "l2"):
        got = block_sums(x, q, d)
        for i in range(len(q)):
            t = [q64[i, j] - x64[:, j] for j in range(3)]
            t = [np.abs(v) if d == "l1" else v * v for v in t]
            assert np.array_equal(got[i], (t[0] + t[1]) + t[2])
            assert np.array_equal(float_sums(x, q[i], d), got[i])


def test_pixel_cross_tables_equal_a_brute_force_on_every_path_here_with_duplicates(mnist):
    from common.compute.neighbors import pixel_paths

    train = mnist.images[:3000]
    test = np.concatenate([mnist.images[5000:5150], train[[7, 7, 2999]]])  # copies of training images: ties at 0
    for d in ("l1", "l2"):
        want = brute_top(pixel_sums(train, test, d), 40)
        for path in pixel_paths(d, train.shape[1]):  # int8 and float32 GEMMs, each SAD kernel, torch's
            assert np.array_equal(pixel_cross_table(train, test, d, 40, kernel=path, block=64), want), (d, path)
        pixels = Pixels(train)  # the new images' path, one kernel pass a row
        assert np.array_equal(cross_table(lambda q, d=d, p=pixels: p.sums(q, d), test, 40), want), d
    floats = train[:800].astype(np.float32) / 7  # float data: the tables' float64 formula
    want = brute_top(np.stack([float_sums(floats, r, "l2") for r in test / np.float32(7)]), 20)
    assert np.array_equal(pixel_cross_table(floats, test.astype(np.float32) / 7, "l2", 20), want)


def test_code_cross_tables_equal_a_brute_force_with_ties_across_the_cut():
    rng = np.random.default_rng(2)
    codes = np.round(rng.normal(size=(4000, 2)), 1).astype(np.float32)  # a grid: many codes share a distance
    queries = np.concatenate([np.round(rng.normal(size=(300, 2)), 1), codes[:5]]).astype(np.float32)
    for d in ("l1", "l2"):
        want = brute_top(np.stack([float_sums(codes, q, d) for q in queries]), 30)
        for pad in (0, 4, 32):  # no spare candidate: every row with a tie at the cut is searched whole
            assert np.array_equal(code_cross_table(codes, queries, d, 30, pad=pad), want), (d, pad)
    assert code_cross_table(codes[:20], queries, "l2", 5).shape == (len(queries), 5)  # k + pad past N: whole


def test_an_unseen_sample_is_left_out_of_its_own_neighbours(mnist):
    train, test = mnist.images[:500], np.concatenate([mnist.images[600:640], mnist.images[:2]])
    both = np.concatenate([train, test])
    got = unseen_neighbors(train, test, "l2", 10)
    sums = pixel_sums(both, test, "l2")
    sums[np.arange(len(test)), 500 + np.arange(len(test))] = np.iinfo(np.int64).max  # itself: never
    assert np.array_equal(got, brute_top(sums, 10))
    assert got[-2, 0] == 0 and got[-1, 0] == 1  # a copy of a training image finds that image first


def test_heldout_metrics_worked_by_hand():
    """Four training samples (labels 0 0 1 1), two test samples (labels 0 1), K = 2:
    pixel space: test 0 -> [0, 2], test 1 -> [3, 1]; code space: test 0 -> [0, 1], test 1 -> [0, 3].
    score@1 = (1 + 0) / 2 = 0.5, score@2 = (1 + 1) / (2 * 2) = 0.5; by label: label 0 1, 0.5; label 1 0, 0.5.
    kNN: pixel space right at k = 1 and 2 (a 1-1 tie goes to the nearest); codes: test 1 voted 0 (wrong).
    Same-label rate: pixels 1, 0.5; codes (1 + 0) / 2 = 0.5, (1 + 0.5) / 2 = 0.75; change -0.5, 0.25;
    mean |change| 0.5, 0.25."""
    cfg = StudyConfig(k=2, ks=[1, 2])
    orig = {"l2": np.array([[0, 2], [3, 1]])}
    enc = [(("m", "l2"), np.array([[0, 1], [0, 3]]))]
    got = {(v["metric"], v["space"], v["k"], v["label"]): v["value"]
           for v in heldout_metrics(cfg, 4, np.array([0, 0, 1, 1], np.uint8), np.array([0, 1], np.uint8), orig, enc)}
    want = {("test_score_at_k", "m", 1, -1): 0.5, ("test_score_at_k", "m", 2, -1): 0.5,
            ("test_score_at_k_by_label", "m", 1, 0): 1.0, ("test_score_at_k_by_label", "m", 2, 0): 0.5,
            ("test_score_at_k_by_label", "m", 1, 1): 0.0, ("test_score_at_k_by_label", "m", 2, 1): 0.5,
            ("test_knn_accuracy", "original", 1, -1): 1.0, ("test_knn_accuracy", "original", 2, -1): 1.0,
            ("test_knn_accuracy", "m", 1, -1): 0.5, ("test_knn_accuracy", "m", 2, -1): 0.5,
            ("test_same_label_rate", "original", 1, -1): 1.0, ("test_same_label_rate", "original", 2, -1): 0.5,
            ("test_same_label_rate", "m", 1, -1): 0.5, ("test_same_label_rate", "m", 2, -1): 0.75,
            ("test_label_agreement_change", "m", 1, -1): -0.5, ("test_label_agreement_change", "m", 2, -1): 0.25,
            ("test_label_agreement_distance", "m", 1, -1): 0.5,
            ("test_label_agreement_distance", "m", 2, -1): 0.25}
    assert got == want


def test_the_split_is_validated_where_it_can_be():
    assert StudyConfig(split="all").scores_test and not StudyConfig().scores_test
    assert "split" not in StudyConfig().as_json() and StudyConfig(split="test").as_json()["split"] == "test"
    with pytest.raises(ValueError, match="split: an uploaded data set has no test split"):
        StudyConfig(dataset="mine", split="test")
    with pytest.raises(ValueError, match="split"):
        StudyConfig(split="validation")


# ---------------------------------------------------------------- a study that scores its test split


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def study(request, tmp_path_factory, data_dir):
    pytest.importorskip("openTSNE")
    from api.main import create_app

    url = (f"sqlite:///{tmp_path_factory.mktemp('heldout') / 'h.db'}" if request.param == "sqlite"
           else fresh_database("aeknn_heldout"))
    eid, f = study_in_process(url, CFG, data_dir, tmp_path_factory.mktemp("c"))
    yield {"url": url, "factory": f, "id": eid, "api": TestClient(create_app(Settings(database_url=url)))}
    f.kw["bind"].dispose()


@pytest.fixture(scope="module")
def mnist_test(data_dir, tmp_path_factory):
    from common.compute.data import load_dataset

    return load_dataset("mnist", data_dir, tmp_path_factory.mktemp("cache"), LIMIT, split="test")


def test_the_test_split_is_stored_and_placed_by_every_model(study, mnist, mnist_test):
    import torch

    from common.compute.training import encode, load_trained

    with study["factory"]() as s:
        exp = db.get_experiment(session=s, experiment_id=study["id"])
        test = s.get(db.DatasetRow, exp.test_dataset_id)
        assert (test.name, test.n) == ("mnist/test", LIMIT)
        assert np.array_equal(db.dataset_values(test), mnist_test.images)
        assert np.array_equal(np.frombuffer(test.labels, np.uint8), mnist_test.labels)
        rows = {m.name: m for m in db.list_models(session=s, experiment_id=study["id"])}
        for m in CFG.models:
            placed = db.model_test_codes(rows[m.value])
            assert placed.shape == (LIMIT, 2) and np.isfinite(placed).all(), m
        weights = torch.load(io.BytesIO(rows["relu_mse"].weights), weights_only=True)
        x = torch.from_numpy(mnist_test.images).float().div_(255.0).mul_(2.0).sub_(1.0)
        model = load_trained("relu_mse", weights)
        assert np.array_equal(db.model_test_codes(rows["relu_mse"]), encode(model, x).numpy())


def test_heldout_metrics_over_http_equal_a_brute_force(study, mnist, mnist_test):
    api, train, labels = study["api"], mnist.images[:LIMIT], mnist.labels[:LIMIT]
    own = mnist_test.labels
    with study["factory"]() as s:
        rows = {m.name: m for m in db.list_models(session=s, experiment_id=study["id"])}
        codes = {m: (db.model_codes(r).copy(), db.model_test_codes(r).copy()) for m, r in rows.items()}
    score = api.get("/metrics/score_at_k", params={"split": "test", "k": "1,5,10,30"})
    knn = api.get("/metrics/knn_accuracy", params={"split": "test", "k": "5,10"})
    agree = api.get("/metrics/label_agreement", params={"split": "test", "k": "10"})
    by_label = api.get("/metrics/score_at_k/by_label", params={"split": "test", "k": 10})
    for r in (score, knn, agree, by_label):
        assert r.status_code == 200, r.text
        assert r.json()["split"] == "test"
    score, knn, agree, by_label = (r.json()["rows"] for r in (score, knn, agree, by_label))
    assert [(r["model"], r["distance"]) for r in score] == [(m.value, d) for m in CFG.models for d in ("l1", "l2")]
    for d in ("l1", "l2"):
        pix = brute_top(pixel_sums(train, mnist_test.images, d), K)
        row = next(r for r in knn if (r["space"], r["distance"]) == ("original", d))
        for k in (5, 10):
            assert row["values"][str(k)] == pytest.approx((M.knn_predict(pix, labels, k) == own).mean(), abs=1e-12)
        for m in CFG.models:
            train_codes, test_codes = codes[m.value]
            enc = brute_top(np.stack([float_sums(train_codes, c, d) for c in test_codes]), K)
            got = next(r for r in score if (r["model"], r["distance"]) == (m.value, d))["values"]
            for k in (1, 5, 10, 30):
                assert got[str(k)] == pytest.approx(M.overlap(pix, enc, k).mean() / k, abs=1e-12), (m, d, k)
            got = next(r for r in knn if (r["space"], r["distance"]) == (m.value, d))["values"]
            for k in (5, 10):
                assert got[str(k)] == pytest.approx((M.knn_predict(enc, labels, k) == own).mean(), abs=1e-12)
            a = next(r for r in agree if (r["model"], r["distance"], r["k"]) == (m.value, d, 10))
            ro = (labels[pix[:, :10]] == own[:, None]).mean(1)
            re = (labels[enc[:, :10]] == own[:, None]).mean(1)
            assert (a["original_rate"], a["encoded_rate"], a["change"], a["abs_change"]) == pytest.approx(
                (ro.mean(), re.mean(), (re - ro).mean(), np.abs(re - ro).mean()), abs=1e-12)
            per = M.overlap(pix, enc, 10) / 10
            got = next(r for r in by_label if (r["model"], r["distance"]) == (m.value, d))["by_label"]
            assert got == pytest.approx({str(c): per[own == c].mean() for c in np.unique(own)}, abs=1e-12)


def test_both_splits_are_served_and_a_test_split_asks_only_what_it_has(study):
    api = study["api"]
    train = api.get("/metrics/score_at_k", params={"k": "5"}).json()
    test = api.get("/metrics/score_at_k", params={"k": "5", "split": "test"}).json()
    assert train["split"] == "train" and train["rows"] != test["rows"]
    csv = api.get("/metrics/knn_accuracy", params={"k": "5", "split": "test", "format": "csv"})
    assert csv.status_code == 200 and csv.text.splitlines()[0] == "space,distance,k=5"
    for route in ("r_nx", "trustworthiness", "mrre", "auc_rnx", "lcmc"):
        r = api.get(f"/metrics/{route}", params={"split": "test"})
        assert r.status_code == 404 and "held-out test split is scored by" in r.json()["message"], route
    r = api.get("/metrics/score_at_k", params={"split": "validation"})
    assert r.status_code == 422 and "split" in r.text


def test_a_test_split_study_from_the_cli_prints_its_tables_and_refuses_the_training_ones(tmp_path, data_dir):
    from api.main import create_app

    url = f"sqlite:///{tmp_path / 'a.db'}"
    cmd = [sys.executable, "-m", "cli", "run", "--limit", "700", "--epochs", "1", "--models", "relu_mse", "--k", "20",
           "--ks", "5,10", "--split", "test", "--db", url, "--data-dir", str(data_dir)]
    env = {**os.environ, "AEKNN_CACHE_DIR": str(tmp_path / "c")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out test split" in proc.stdout and "R_NX" not in proc.stdout
    api = TestClient(create_app(Settings(database_url=url)))
    r = api.get("/metrics/score_at_k")
    assert r.status_code == 404 and "scored its held-out test split only" in r.json()["message"]
    assert api.get("/metrics/score_at_k", params={"split": "test"}).status_code == 200
    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (300, 8, 8), dtype=np.uint8))
    r = subprocess.run([sys.executable, "-m", "cli", "run", "--data", str(tmp_path / "x.npy"), "--split", "test",
                        "--models", "pca", "--k", "10", "--ks", "5", "--db", url], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 1 and "has no test split that aeknn reads" in r.stderr, r.stderr[-2000:]


def test_a_study_of_the_training_split_has_no_test_split_to_serve(tmp_path, data_dir):
    from api.main import create_app

    url = f"sqlite:///{tmp_path / 'b.db'}"
    eid, f = study_in_process(url, StudyConfig(limit=300, epochs=1, k=10, ks=[5], models=["pca"]), data_dir,
                              tmp_path / "c")
    with f() as s:
        assert db.get_experiment(session=s, experiment_id=eid).test_dataset_id is None
        assert all(m.test_codes is None for m in db.list_models(session=s, experiment_id=eid))
    r = TestClient(create_app(Settings(database_url=url))).get("/metrics/score_at_k", params={"split": "test"})
    assert r.status_code == 404 and "scored its training split only" in r.json()["message"]
    f.kw["bind"].dispose()


def test_a_cifar_folder_brings_its_test_batch_and_a_folder_without_one_fails_naming_it(tmp_path, data_dir):
    import pickle

    from common.errors import DataError
    from tests.test_sources import classes, write_cifar

    x, y = classes(400, 32 * 32 * 3, 4, 3)
    xt, yt = classes(90, 32 * 32 * 3, 4, 4)
    rgb, rgb_t = x.reshape(-1, 32, 32, 3), xt.reshape(-1, 32, 32, 3)
    write_cifar(tmp_path / "cifar", rgb, y)
    with open(tmp_path / "cifar" / "test_batch", "wb") as f:  # channels first, as published
        pickle.dump({b"data": rgb_t.transpose(0, 3, 1, 2).reshape(90, -1), b"labels": [int(v) for v in yt]}, f)
    cfg = StudyConfig(data=str(tmp_path / "cifar"), split="all", models=["pca"], epochs=1, k=12, ks=[5])
    eid, f = study_in_process(f"sqlite:///{tmp_path / 'c.db'}", cfg, data_dir, tmp_path / "cache")
    with f() as s:
        exp = db.get_experiment(session=s, experiment_id=eid)
        test = s.get(db.DatasetRow, exp.test_dataset_id)
        assert np.array_equal(db.dataset_values(test), rgb_t.reshape(90, -1))
        assert np.array_equal(np.frombuffer(test.labels, np.uint8), yt)
        train = db.dataset_values(s.get(db.DatasetRow, exp.dataset_id))
        (pca,) = db.list_models(session=s, experiment_id=eid)
        codes, placed = db.model_codes(pca), db.model_test_codes(pca)
        got = {(v.k, v.distance): v.value for v in db.load_metrics(session=s, experiment_id=eid,
                                                                   metric="test_score_at_k", ks=[5, 12])}
    for d in ("l1", "l2"):
        pix = brute_top(pixel_sums(train, rgb_t.reshape(90, -1), d), 12)
        enc = brute_top(np.stack([float_sums(codes, c, d) for c in placed]), 12)
        for k in (5, 12):
            assert got[(k, d)] == pytest.approx(M.overlap(pix, enc, k).mean() / k, abs=1e-12)
    f.kw["bind"].dispose()
    (tmp_path / "cifar" / "test_batch").unlink()
    cfg = StudyConfig(data=str(tmp_path / "cifar"), split="test", models=["pca"], epochs=1, k=12, ks=[5])
    with pytest.raises(DataError, match="test_batch"):
        study_in_process(f"sqlite:///{tmp_path / 'd.db'}", cfg, data_dir, tmp_path / "cache")

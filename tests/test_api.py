"""The REST API over an experiment really computed by the pipeline, on SQLite and on PostgreSQL."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from scipy.spatial.distance import cdist

from common.compute.neighbors import PIXEL_UNIT
from common.settings import Settings
from common.store import db as db
from common.study.config import StudyConfig
from tests.services import fresh_database

CFG = StudyConfig(limit=800, epochs=2, k=50, ks=[5, 10, 20])
REDIS_URL = "redis://127.0.0.1:6379/15"
DOWN = "redis://127.0.0.1:1/0"  # nothing listens there


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def study(request, tmp_path_factory, data_dir):
    from common.study.run import run_experiment
    from common.study.runtime import Runtime
    from common.study.stages import record_experiment

    url = (f"sqlite:///{tmp_path_factory.mktemp('api') / 'api.db'}" if request.param == "sqlite"
           else fresh_database("aeknn_api"))
    engine = db.make_engine(url)
    db.init_db(engine)
    f = db.session_factory(engine)
    eid = record_experiment(f, CFG)
    run_experiment(Runtime(factory=f, data_dir=data_dir, cache_dir=tmp_path_factory.mktemp("c"), device="cpu"), eid)
    yield {"url": url, "factory": f, "id": eid}
    engine.dispose()


def client(study, broker: str = REDIS_URL) -> TestClient:
    from api.main import create_app

    return TestClient(create_app(Settings(database_url=study["url"], broker_url=broker)))


@pytest.fixture
def api(study):
    return client(study)


@pytest.fixture
def queue():
    r = redis.Redis.from_url(REDIS_URL)
    r.flushdb()
    return r


def brute(points: np.ndarray, i: int, k: int, distance: str) -> np.ndarray:
    d = cdist(points[i : i + 1].astype(np.float64), points.astype(np.float64),
              "cityblock" if distance == "l1" else "euclidean")[0]
    d[i] = np.inf
    return np.lexsort((np.arange(len(points)), d))[:k]


def test_neighbors_over_http_equal_brute_force(api, study, mnist):
    images, labels = mnist.images[:800], mnist.labels[:800]
    with study["factory"]() as s:
        codes = {m.name: db.model_codes(m) for m in db.list_models(session=s, experiment_id=study["id"])}
    for i in (0, 7, 123, 799):
        for distance in ("l1", "l2"):
            r = api.get(f"/samples/{i}/neighbors", params={"space": "original", "distance": distance, "k": 50})
            assert r.status_code == 200, r.text
            body = r.json()
            want = brute(images, i, 50, distance)
            assert [n["id"] for n in body["neighbors"]] == list(want)
            assert [n["label"] for n in body["neighbors"]] == list(labels[want])
            assert [n["rank"] for n in body["neighbors"]] == list(range(1, 51))
            assert body["sample"] == {"id": i, "label": int(labels[i])} and body["model"] is None
            d = cdist(images[i : i + 1].astype(float), images[want].astype(float),
                      "cityblock" if distance == "l1" else "euclidean")[0] * PIXEL_UNIT
            np.testing.assert_allclose([n["distance"] for n in body["neighbors"]], d, rtol=1e-5)
            for model, c in codes.items():
                r = api.get(f"/samples/{i}/neighbors", params={"model": model, "distance": distance, "k": 20})
                assert [n["id"] for n in r.json()["neighbors"]] == list(brute(c, i, 20, distance))
                assert r.json()["model"] == model and r.json()["space"] == "encoded"


@pytest.mark.parametrize("path, query, want", [
    ("/samples/3/neighbors", b"", {"sample_id": 3, "space": "encoded", "model": None, "distance": "l2",
                                   "k": 20, "experiment": None}),  # the model: the experiment's default
    ("/samples/0/neighbors", b"space=original&distance=l1&k=50&experiment=2",
     {"sample_id": 0, "space": "original", "model": None, "distance": "l1", "k": 50, "experiment": 2}),
    ("/samples/12/neighbors", b"model=linear_l1", {"sample_id": 12, "space": "encoded", "model": "linear_l1",
                                                   "distance": "l2", "k": 20, "experiment": None}),
])
def test_hot_path_reads_plain_requests(path, query, want):
    from api.hotpath import parse

    assert parse(path, query) == want


@pytest.mark.parametrize("path, query", [
    ("/samples/3/neighbors/", b""), ("/samples/-1/neighbors", b""), ("/samples/3.0/neighbors", b""),
    ("/samples/\u0663/neighbors", b""), ("/samples/1234567890/neighbors", b""), ("/samples/3", b""),
    ("/samples/3/neighbors", b"k=0"), ("/samples/3/neighbors", b"k=2.0"), ("/samples/3/neighbors", b"k="),
    ("/samples/3/neighbors", b"k=5&k=6"), ("/samples/3/neighbors", b"model=a,b"),
    ("/samples/3/neighbors", b"space=latent"), ("/samples/3/neighbors", b"distance=cosine"),
    ("/samples/3/neighbors", b"experiment=0"), ("/samples/3/neighbors", b"experiment="),
    ("/samples/3/neighbors", b"colour=red"), ("/samples/3/neighbors", b"k=%32"), ("/samples/3/neighbors", b"k"),
])
def test_hot_path_leaves_anything_else_to_the_route(path, query):
    from api.hotpath import parse

    assert parse(path, query) is None


def test_hot_path_answers_exactly_as_the_route(study):
    """Every plain request answered below the framework gets the route's status, body, ETag and
    Cache-Control; a plain request never reaches FastAPI's dependencies, anything else does."""
    from api.deps import get_read_factory
    from api.hotpath import NeighborsHotPath
    from api.main import create_app

    hot = create_app(Settings(database_url=study["url"], broker_url=REDIS_URL))
    plain = create_app(Settings(database_url=study["url"], broker_url=REDIS_URL))
    plain.user_middleware = [m for m in plain.user_middleware if m.cls is not NeighborsHotPath]
    queries = ["/samples/3/neighbors", "/samples/799/neighbors?space=original&distance=l1&k=50",
               f"/samples/7/neighbors?model=linear_l1&k=5&experiment={study['id']}", "/samples/800/neighbors",
               "/samples/3/neighbors?k=51", "/samples/3/neighbors?experiment=999", "/samples/3/neighbors?k=0"]
    with TestClient(hot) as a, TestClient(plain) as b:
        for q in queries:
            ra, rb = a.get(q), b.get(q)
            assert (ra.status_code, ra.content) == (rb.status_code, rb.content), q
            for h in ("etag", "cache-control", "content-type"):
                assert ra.headers.get(h) == rb.headers.get(h), (q, h)
            tag = ra.headers.get("etag")
            if tag:
                assert a.get(q, headers={"If-None-Match": tag}).status_code == 304
        assert any(a.get(q).status_code == 200 for q in queries)

        def refuse():
            raise AssertionError("FastAPI's dependencies were resolved")

        hot.dependency_overrides[get_read_factory] = refuse
        assert a.get("/samples/3/neighbors?k=5").status_code == 200  # below the framework
        with pytest.raises(AssertionError, match="dependencies were resolved"):
            a.get("/samples/3/neighbors?k=5&colour=red")  # an unknown parameter: the route's


def test_default_neighbors_call_of_the_design_card(api, study):
    body = api.get("/samples/3/neighbors?space=encoded&k=20").json()
    assert body["experiment"] == study["id"] and body["model"] == "relu_mse" and body["distance"] == "l2"
    assert len(body["neighbors"]) == 20


def test_experiments_list_detail_and_loss(api, study):
    page = api.get("/experiments").json()
    assert page["total"] >= 1 and page["items"][0]["id"] == study["id"] and page["page"] == 1
    detail = api.get(f"/experiments/{study['id']}").json()
    assert detail["status"] == "succeeded" and detail["config"]["limit"] == 800
    assert {m["name"]: m["epochs_done"] for m in detail["models"]} == dict.fromkeys(CFG.models, 2)
    assert detail["chunks_done"] == detail["chunks_total"] > 0 and "metrics" in detail["timings"]
    loss = api.get(f"/experiments/{study['id']}/loss").json()["losses"]
    assert set(loss) == set(CFG.models) and all(len(v) == 2 for v in loss.values())


def test_metric_tables_are_the_stored_values(api, study):
    with study["factory"]() as s:
        stored = {(v.metric, v.space, v.distance, v.k, v.label): v.value
                  for v in db.load_metrics(session=s, experiment_id=study["id"])}
    t1 = api.get("/metrics/score_at_k", params={"k": "5,10,20"}).json()
    assert t1["k"] == [5, 10, 20] and len(t1["rows"]) == 8
    for row in t1["rows"]:
        for k, v in row["values"].items():
            assert v == stored[("score_at_k", row["model"], row["distance"], int(k), -1)]
    t2 = api.get("/metrics/score_at_k/by_label").json()
    assert t2["k"] == 20 and t2["rows"][0]["by_label"]["3"] == stored[
        ("score_at_k_by_label", t2["rows"][0]["model"], t2["rows"][0]["distance"], 20, 3)]
    t3 = api.get("/metrics/label_agreement", params={"k": 10}).json()
    row = t3["rows"][0]
    assert row["change"] == stored[("label_agreement_change", row["model"], row["distance"], 10, -1)]
    assert row["original_rate"] == stored[("same_label_rate", "original", row["distance"], 10, -1)]
    acc = api.get("/metrics/knn_accuracy", params={"k": 5}).json()
    assert acc["rows"][0]["space"] == "original" and len(acc["rows"]) == 10
    rnx = api.get("/metrics/r_nx", params={"k": 5}).json()
    assert rnx["rows"][0]["values"]["5"] == stored[("r_nx", rnx["rows"][0]["model"], rnx["rows"][0]["distance"], 5, -1)]


def test_rank_measures_are_served_and_agree_with_scikit_learn(api, study):
    """trustworthiness, continuity, MRRE (both ways), LCMC and the AUC of R_NX come from the metrics stage of
    the real pipeline for every model and distance; trustworthiness equals scikit-learn's on the stored
    pixels and codes (the pixels' ties broken by the lower id, as ours: precomputed), every k up to N/2 is
    stored (none beyond), and each route answers CSV too."""
    from sklearn.manifold import trustworthiness

    with study["factory"]() as s:
        exp = db.get_experiment(session=s, experiment_id=study["id"])
        ds = s.get(db.DatasetRow, exp.dataset_id)
        x = np.frombuffer(ds.images, np.uint8).reshape(ds.n, -1).astype(np.float64)
        codes = {r.name: db.model_codes(r).astype(np.float64)
                 for r in db.list_models(session=s, experiment_id=study["id"])}
        stored_k = {v.k for v in db.load_metrics(session=s, experiment_id=study["id"], metric="trustworthiness")}
    assert stored_k == set(range(1, 51))  # K = 50 < N / 2 = 400
    t = api.get("/metrics/trustworthiness", params={"k": "1,10,50"}).json()
    assert t["k"] == [1, 10, 50] and len(t["rows"]) == 8
    d2 = cdist(x, x, "sqeuclidean") + np.arange(len(x))[None, :] / (2.0 * len(x))
    for row in t["rows"]:
        if row["distance"] != "l2":
            continue
        for k in (1, 10, 50):
            want = trustworthiness(d2, codes[row["model"]], n_neighbors=k, metric="precomputed")
            assert row["values"][str(k)] == pytest.approx(want, abs=1e-12), (row["model"], k)
    c = api.get("/metrics/continuity", params={"k": 10}).json()
    assert all(0.0 < r["values"]["10"] <= 1.0 for r in c["rows"])
    m = api.get("/metrics/mrre", params={"k": "5,20"}).json()
    assert len(m["rows"]) == 16 and {r["direction"] for r in m["rows"]} == {"false", "missing"}
    assert all(r["values"]["5"] <= 1.0 for r in m["rows"])
    score = api.get("/metrics/score_at_k", params={"k": 20}).json()
    lcmc = api.get("/metrics/lcmc", params={"k": 20}).json()
    for a, b in zip(score["rows"], lcmc["rows"], strict=True):
        assert b["values"]["20"] == pytest.approx(a["values"]["20"] - 20 / 799, abs=1e-15)
    rnx = api.get("/metrics/r_nx", params={"k": "all"}).json()
    auc = api.get("/metrics/auc_rnx").json()
    w = 1.0 / np.arange(1, 51)
    for a, b in zip(rnx["rows"], auc["rows"], strict=True):
        curve = np.array([a["values"][str(k)] for k in range(1, 51)])
        assert b["k_max"] == 50 and b["value"] == pytest.approx((curve * w).sum() / w.sum(), abs=1e-12)
    for route in ("trustworthiness", "continuity", "mrre", "lcmc", "auc_rnx"):
        r = api.get(f"/metrics/{route}", params={"format": "csv"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv"), route
        assert len(r.text.splitlines()) == (17 if route == "mrre" else 9), route


def test_every_k_is_stored_so_a_read_is_a_lookup(api, study):
    """Any k up to K is answered from stored values (equal to the one-k function on the stored tables),
    and reading it writes nothing."""
    from common.compute import metrics as M

    with study["factory"]() as s:
        before = s.query(db.MetricValue).count()
        assert db.stored_ks(session=s, experiment_id=study["id"]) == set(range(1, 51))
        o = db.find_table(session=s, experiment_id=study["id"], space="original", distance="l2")
        e = db.find_table(session=s, experiment_id=study["id"], space="relu_mse", distance="l2")
        orig, enc = (db.load_table_ids(session=s, table_id=t.id, n=800, k=50) for t in (o, e))
    body = api.get("/metrics/score_at_k", params={"k": "7,33"}).json()
    row = next(r for r in body["rows"] if r["model"] == "relu_mse" and r["distance"] == "l2")
    assert row["values"]["7"] == pytest.approx(M.score_at_k(orig, enc, 7), abs=1e-15)
    assert row["values"]["33"] == pytest.approx(M.score_at_k(orig, enc, 33), abs=1e-15)
    by = api.get("/metrics/score_at_k/by_label", params={"k": 9}).json()
    assert by["k"] == 9 and len(by["rows"][0]["by_label"]) == 10
    with study["factory"]() as s:
        assert s.query(db.MetricValue).count() == before


def test_concurrent_first_reads_of_many_k_all_answer_from_stored_values(api, study):
    """Sixteen clients at once, each asking for k values nobody asked for before: every one answers
    200 at once, and neighbour reads meanwhile stay fast."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    def metrics(i: int):
        t0 = time.perf_counter()
        r = api.get("/metrics/label_agreement", params={"k": f"{i + 1},{i + 17},{i + 30}"})
        return r.status_code, time.perf_counter() - t0

    def neighbours(i: int):
        t0 = time.perf_counter()
        r = api.get(f"/samples/{i}/neighbors", params={"k": 20})
        return r.status_code, time.perf_counter() - t0

    with ThreadPoolExecutor(16) as pool:
        m = list(pool.map(metrics, range(16)))
        n = list(pool.map(neighbours, range(64)))
    assert all(code == 200 for code, _ in m + n)
    assert max(t for _, t in m) < 5 and sorted(t for _, t in n)[-2] < 2


def test_an_experiment_stored_before_every_k_is_filled_by_a_worker_not_by_a_read(study, tmp_path):
    """Only its config's ks stored (as before): a read of another k is 409, not computed; the sweeper
    hands it to a worker, and the backfill stores every k (the same values as a fresh metrics stage)."""
    from worker import pipeline

    with study["factory"]() as s:
        full = {(v.metric, v.space, v.distance, v.k, v.label): v.value
                for v in db.load_metrics(session=s, experiment_id=study["id"])}
        old = [{"metric": m, "space": sp, "distance": d, "k": k, "label": lab, "value": v}
               for (m, sp, d, k, lab), v in full.items() if k in CFG.ks]
    with db.transaction(study["factory"]) as s:
        db.save_metrics(session=s, experiment_id=study["id"], values=old)
        db.update_experiment(session=s, experiment_id=study["id"], metrics_all_k=False)
    from common.study import reads

    reads.forget()  # as a process that starts now would see it (a stored experiment never goes back)
    try:
        api = client(study)
        assert api.get("/metrics/score_at_k", params={"k": "5,10"}).status_code == 200
        r = api.get("/metrics/score_at_k", params={"k": "7"})
        assert r.status_code == 409 and "aeknn metrics --backfill" in r.json()["message"]
        sent = []
        pipeline.sweep(study["factory"], Settings(database_url=study["url"]), lambda *a: sent.append(a))
        assert ("aeknn.backfill_metrics", study["id"]) in sent
        pipeline.backfill(study["factory"], study["id"])  # what that task runs
        reads.forget()
        assert api.get("/metrics/score_at_k", params={"k": "7"}).status_code == 200
    finally:
        from common.study.scoring import store_metrics

        store_metrics(study["factory"], study["id"])
    with study["factory"]() as s:
        again = {(v.metric, v.space, v.distance, v.k, v.label): v.value
                 for v in db.load_metrics(session=s, experiment_id=study["id"])}
        assert again == full and db.get_experiment(session=s, experiment_id=study["id"]).metrics_all_k


def test_csv_by_accept_header_or_format(api):
    r = api.get("/metrics/score_at_k", headers={"Accept": "text/csv"})
    assert r.headers["content-type"].startswith("text/csv")
    assert r.text.splitlines()[0] == "model,distance,k=5,k=10,k=20"  # the experiment's own ks
    assert api.get("/metrics/label_agreement?format=csv&k=5").text.startswith("model,distance,k,original_rate")


def test_sample_codes_image_and_plots(api, study, mnist):
    s = api.get("/samples/11").json()
    assert s["label"] == int(mnist.labels[11]) and set(s["codes"]) == set(CFG.models)
    codes = api.get(f"/experiments/{study['id']}/codes", params={"model": "relu_l1"}).json()
    assert len(codes["ids"]) == len(codes["labels"]) == len(codes["codes"]) == 800
    assert codes["codes"][11] == pytest.approx(s["codes"]["relu_l1"], abs=1e-5)
    for path in ("/samples/11/image.png", f"/experiments/{study['id']}/plots/loss.png",
                 f"/experiments/{study['id']}/plots/latent.png?model=relu_mse",
                 f"/experiments/{study['id']}/plots/reconstructions.png"):
        r = api.get(path)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"
    import io

    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(api.get("/samples/11/image.png?scale=1").content)))
    np.testing.assert_array_equal(img, mnist.images[11].reshape(28, 28))


def test_a_sprite_holds_the_asked_digits_in_order_twenty_to_a_row(api, mnist):
    import io

    from PIL import Image

    ids = [5, 0, 799, 5, *range(100, 120)]  # 24 ids, one twice: two rows, the second of four
    r = api.get("/samples/sprite.png", params={"ids": ",".join(map(str, ids)), "scale": 1})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    sheet = np.asarray(Image.open(io.BytesIO(r.content)))
    assert sheet.shape == (2 * 28, 20 * 28)
    for i, sample in enumerate(ids):
        row, col = divmod(i, 20)
        np.testing.assert_array_equal(sheet[28 * row:28 * row + 28, 28 * col:28 * col + 28],
                                      mnist.images[sample].reshape(28, 28))
    assert not sheet[28:, 4 * 28:].any()  # the rest of the last row is black
    assert np.asarray(Image.open(io.BytesIO(api.get("/samples/sprite.png?ids=3&scale=2").content))).shape == (56, 56)
    for query, status, words in (("ids=3,800", 404, "sample 800 is not in experiment"),
                                 ("ids=3,,4", 422, "ids"), ("ids=" + ",".join(["1"] * 2001), 422, "ids"),
                                 ("ids=3&scale=5", 422, "scale")):
        r = api.get(f"/samples/sprite.png?{query}")
        assert r.status_code == status and words in r.json()["message"], (query, r.text)


def test_relu_keeps_progress_counts_its_encoders_epochs_and_names_its_phases(tmp_path, data_dir):
    from common.compute.names import keep_encoder_epochs
    from common.study.run import run_experiment
    from common.study.runtime import Runtime
    from common.study.stages import record_experiment

    url = f"sqlite:///{tmp_path / 'keep.db'}"
    engine = db.make_engine(url)
    db.init_db(engine)
    f = db.session_factory(engine)
    eid = record_experiment(f, StudyConfig(limit=300, epochs=5, k=20, ks=[5], models=["relu_keep", "pca"]))
    run_experiment(Runtime(factory=f, data_dir=data_dir, cache_dir=tmp_path / "c", device="cpu"), eid)
    m = {x["name"]: x for x in client({"url": url}).get(f"/experiments/{eid}").json()["models"]}
    engine.dispose()
    assert keep_encoder_epochs(5) == 2 and m["relu_keep"]["epochs_done"] == m["relu_keep"]["epochs"] == 2
    assert m["relu_keep"]["phases"].startswith("its encoder trains 2 epochs, then its map of the training codes "
                                               "is refined under t-SNE's objective, 850 iterations")
    assert m["pca"]["epochs"] == 1 and m["pca"]["phases"] is None


@pytest.mark.parametrize("path, status, words", [
    ("/experiments/999", 404, "no experiment 999"),
    ("/samples/800/neighbors", 404, "sample 800 is not in experiment"),
    ("/samples/-1/neighbors", 404, "sample -1"),
    ("/samples/3/neighbors?model=vae", 404, "has no model 'vae' (its models: linear_l1, linear_mse, relu_l1, "
                                            "relu_mse)"),
    ("/samples/3/neighbors?model=a,b", 422, "model: 'a,b' is not a model's name"),
    ("/samples/3/neighbors?space=latent", 422, "space"),
    ("/samples/3/neighbors?distance=cosine", 422, "distance"),
    ("/samples/3/neighbors?k=0", 422, "k"),
    ("/samples/3/neighbors?k=51", 422, "k: must be in 1..50 (the table's K)"),
    ("/samples/3/neighbors?experiment=999", 404, "no experiment 999"),
    ("/metrics/score_at_k?k=0", 422, "k"),
    ("/metrics/score_at_k?k=abc", 422, "k: 'abc' is not a whole number, a comma list such as 5,10,20"),
    ("/metrics/score_at_k?k=51", 422, "must each be in 1..50"),
    ("/metrics/score_at_k/by_label?k=51", 422, "k: [51] must each be in 1..50"),
    ("/metrics/score_at_k/by_label?k=9223372036854775808", 422, "k: Input should be less than or equal to 1000"),
    ("/experiments/1/plots/latent.png?model=vae", 404, "has no model 'vae'"),
    ("/nowhere", 404, "Not Found"),
])
def test_bad_reads_get_the_error_shape(api, path, status, words):
    r = api.get(path)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"code", "message"} and words in r.json()["message"]


@pytest.mark.parametrize("body, words", [
    ({"models": ["vae"]}, "models.0"),
    ({"distances": ["cosine"]}, "distances.0"),
    ({"k": 0}, "k"),
    ({"limit": 100}, "K=200 must be below"),
    ({"lr": -0.001}, "lr"),
    ({"epochs": 100000}, "epochs"),
    ({"colour": "red"}, "colour: Extra inputs are not permitted"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_submissions_are_422_and_enqueue_nothing(api, study, queue, body, words):
    before = api.get("/experiments").json()["total"]
    r = api.post("/experiments", json=body)
    assert r.status_code == 422 and r.json()["code"] == "invalid" and words in r.json()["message"], r.text
    assert queue.llen("control") == 0 and api.get("/experiments").json()["total"] == before


def test_nan_non_json_and_oversized_bodies(api, queue):
    r = api.post("/experiments", content=b'{"lr": NaN}', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "lr" in r.json()["message"]
    r = api.post("/experiments", content=b"epochs=3", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["message"]
    r = api.post("/experiments", content=b"{" + b" " * (10 << 20) + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == "too_large"
    assert queue.llen("control") == 0


def test_submit_enqueues_once_per_idempotency_key(api, study, queue):
    first = api.post("/experiments", json={"limit": 1000, "epochs": 1}, headers={"Idempotency-Key": "abc-1"})
    assert first.status_code == 202, first.text
    body = first.json()
    assert body["status"] == "queued" and body["links"]["self"] == f"/experiments/{body['id']}"
    again = api.post("/experiments", json={"limit": 1000, "epochs": 1}, headers={"Idempotency-Key": "abc-1"})
    assert again.status_code == 202 and again.json()["id"] == body["id"]
    assert queue.llen("control") == 1  # one job enqueued
    same = api.post("/experiments", json={"limit": 1000, "epochs": 1})  # the same study, still pending
    assert same.status_code == 202 and same.json()["id"] == body["id"] and queue.llen("control") == 1
    other = api.post("/experiments", json={"limit": 1000, "epochs": 2})
    assert other.json()["id"] != body["id"] and queue.llen("control") == 2
    api.post(f"/experiments/{other.json()['id']}/cancel")
    # a queued experiment has no tables yet: 409; it can be cancelled once
    assert api.get(f"/samples/1/neighbors?experiment={body['id']}").status_code == 409
    assert api.get(f"/metrics/score_at_k?experiment={body['id']}").status_code == 409
    cancelled = api.post(f"/experiments/{body['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert api.post(f"/experiments/{body['id']}/cancel").json()["status"] == "cancelled"  # idempotent
    done = api.get("/experiments").json()["items"][-1]["id"]  # the succeeded study
    assert api.post(f"/experiments/{done}/cancel").status_code == 409
    assert api.post("/experiments/999/cancel").status_code == 404


def test_broker_down_at_submit_is_503_and_keeps_nothing(study):
    down = client(study, broker=DOWN)
    before = down.get("/experiments").json()["total"]
    r = down.post("/experiments", json={"limit": 1000})
    assert r.status_code == 503 and r.json()["code"] == "unavailable" and "unreachable" in r.json()["message"]
    assert down.get("/experiments").json()["total"] == before
    health = down.get("/health")
    assert health.status_code == 503 and health.json()["database"] == "ok" and "unreachable" in health.json()["broker"]


def test_any_failure_to_send_the_first_task_keeps_nothing(study, monkeypatch):
    """Not only an unreachable broker: whatever stops the first task being sent (here an error the code
    does not expect) leaves no experiment behind holding a pending place."""
    from common.study import jobs

    def broken(app, name, *args):
        raise RuntimeError("injected: the client could not be made")

    monkeypatch.setattr(jobs, "send", broken)
    from api.main import create_app

    c = TestClient(create_app(Settings(database_url=study["url"], broker_url=REDIS_URL)), raise_server_exceptions=False)
    before = c.get("/experiments").json()["total"]
    r = c.post("/experiments", json={"limit": 1000, "seed": 77})
    assert r.status_code == 500 and "injected" not in r.text  # no internals in the answer
    assert c.get("/experiments").json()["total"] == before


def test_threads_making_their_first_broker_clients_at_once_all_succeed():
    """Celery's package is half made while first imported; 16 threads asking for a client at once in a
    fresh process used to get "cannot import name 'Celery'" (4 fresh processes in 6). Eight tries."""
    code = ("import threading\nfrom common.settings import Settings\nfrom common.study import jobs\n"
            "s = Settings(broker_url='redis://127.0.0.1:6379/13')\nerrors = []\nbarrier = threading.Barrier(16)\n"
            "def go():\n    barrier.wait()\n    try:\n        jobs.broker_client(s)\n"
            "    except Exception as e:\n        errors.append(repr(e))\n"
            "ts = [threading.Thread(target=go) for _ in range(16)]\n[t.start() for t in ts]\n[t.join() for t in ts]\n"
            "assert not errors, errors[0]\n")
    for _ in range(8):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr[-1000:]


def test_health(api):
    assert api.get("/health").json() == {"database": "ok", "broker": "ok"}


def test_web_process_never_imports_torch(study):
    code = ("import sys\nfrom fastapi.testclient import TestClient\nfrom api.main import create_app\n"
            "from common.settings import Settings\n"
            f"c = TestClient(create_app(Settings(database_url={study['url']!r})))\n"
            "assert c.get('/metrics/score_at_k').status_code == 200\n"
            "assert c.get('/samples/3/neighbors').status_code == 200\n"
            "assert c.get('/experiments/1/plots/latent.png').status_code == 200\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ---------------------------------------------------------------- hardening (RELIABILITY.md 15-22)


def test_a_password_in_the_broker_url_reaches_no_answer_and_no_log_line(study, caplog):
    import logging

    secret = "s3cret-Broker-PW"
    caplog.set_level(logging.DEBUG)
    c = TestClient(create_app_with(study, broker_url=f"redis://:{secret}@127.0.0.1:1/0"))
    r = c.post("/experiments", json={"limit": 1000, "seed": 77})
    assert r.status_code == 503 and "redis://:***@127.0.0.1:1/0 is unreachable" in r.json()["message"]
    health = c.get("/health")
    texts = [r.text, health.text, caplog.text, *(rec.getMessage() for rec in caplog.records)]
    assert caplog.records and not [t for t in texts if secret in t]


def create_app_with(study, **settings):
    from api.main import create_app

    return create_app(Settings(database_url=study["url"], broker_url=settings.pop("broker_url", REDIS_URL),
                               **settings))


def test_writes_need_the_api_key_and_reads_stay_open(study, queue):
    c = TestClient(create_app_with(study, api_key="k-writes-123"))
    r = c.post("/experiments", json={"limit": 1000, "seed": 5})
    assert r.status_code == 401 and r.json()["code"] == "unauthorized" and r.headers["www-authenticate"]
    assert c.post("/experiments", json={"limit": 1000, "seed": 5},
                  headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.post(f"/experiments/{study['id']}/cancel").status_code == 401
    assert queue.llen("control") == 0
    ok = c.post("/experiments", json={"limit": 1000, "seed": 5}, headers={"Authorization": "Bearer k-writes-123"})
    assert ok.status_code == 202
    assert c.post(f"/experiments/{ok.json()['id']}/cancel",
                  headers={"Authorization": "Bearer k-writes-123"}).json()["status"] == "cancelled"
    assert c.get("/metrics/score_at_k").status_code == 200 and c.get("/samples/3/neighbors").status_code == 200


def test_a_read_key_closes_reads_too(study):
    c = TestClient(create_app_with(study, api_key="k-writes-123", read_key="k-reads-456"))
    for path in ("/metrics/score_at_k", "/samples/3/neighbors", "/experiments", f"/experiments/{study['id']}/codes"):
        assert c.get(path).status_code == 401, path
        assert c.get(path, headers={"Authorization": "Bearer k-reads-456"}).status_code == 200, path
        assert c.get(path, headers={"Authorization": "Bearer k-writes-123"}).status_code == 200, path
    assert c.get("/health").status_code == 200 and c.get("/").status_code == 200  # the page itself loads
    r = c.get("/samples/3/neighbors", headers={"Authorization": "Bearer k-reads-456"})
    assert r.headers["cache-control"].startswith("private")


def test_a_flood_of_submits_is_capped_and_the_rest_get_429(study, queue):
    from concurrent.futures import ThreadPoolExecutor

    c = TestClient(create_app_with(study, max_pending=3))
    with study["factory"]() as s:
        before = s.query(db.Experiment).count()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: c.post("/experiments", json={"limit": 1000, "seed": 100 + i}), range(30)))
    codes = sorted(a.status_code for a in answers)
    assert codes.count(202) == 3 and codes.count(429) == 27, codes
    assert all(a.headers["retry-after"] == "30" and a.json()["code"] == "too_many" for a in answers
               if a.status_code == 429)
    with study["factory"]() as s:
        pending = db.pending_experiments(session=s)
        assert len(pending) == 3 and s.query(db.Experiment).count() == before + 3
    assert queue.llen("control") == 3
    for e in pending:
        c.post(f"/experiments/{e.id}/cancel")


def test_broker_down_with_one_key_many_clients_all_get_the_truth(study):
    from concurrent.futures import ThreadPoolExecutor

    c = TestClient(create_app_with(study, broker_url=DOWN))
    with study["factory"]() as s:
        before = s.query(db.Experiment).count()
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: c.post("/experiments", json={"limit": 1000, "seed": 9},
                                                 headers={"Idempotency-Key": "one-key"}), range(24)))
    assert {a.status_code for a in answers} == {503}, [a.text for a in answers if a.status_code != 503]
    with study["factory"]() as s:
        assert s.query(db.Experiment).count() == before


def test_a_key_reused_for_another_study_is_422(api, queue):
    first = api.post("/experiments", json={"limit": 1000, "seed": 31}, headers={"Idempotency-Key": "k-31"})
    assert first.status_code == 202
    r = api.post("/experiments", json={"limit": 1000, "seed": 32}, headers={"Idempotency-Key": "k-31"})
    assert r.status_code == 422 and "Idempotency-Key" in r.json()["message"] and "another study" in r.json()["message"]
    assert queue.llen("control") == 1
    api.post(f"/experiments/{first.json()['id']}/cancel")


@pytest.mark.parametrize("body, words", [
    ({"k": 59999}, "k: Input should be less than or equal to 1000"),
    ({"ks": list(range(1, 40))}, "ks: List should have at most 32 items"),
    ({"lr": 1e308}, "lr: Input should be less than or equal to 10"),
    ({"weight_decay": 5}, "weight_decay: Input should be less than or equal to 1"),
    ({"epochs": True}, "epochs: must be a number, not a boolean"),
    ({"lr": True}, "lr: Input should be a valid number"),
    ({"k": "20"}, "k: must be a number, not a string"),
    ({"epochs": 2.5}, "epochs: Input should be a valid integer, got a number with a fractional part"),
])
def test_absurd_sizes_are_refused_naming_the_field(api, queue, body, words):
    r = api.post("/experiments", json=body)
    assert r.status_code == 422 and words in r.json()["message"], r.text
    assert queue.llen("control") == 0


def test_a_chunked_body_over_the_limit_is_413(api, queue):
    def chunks():
        for _ in range(64):
            yield b" " * 32768

    r = api.post("/experiments", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == "too_large"
    small = api.post("/experiments", content=iter([b'{"limit": 1000, ', b'"seed": 44}']),
                     headers={"content-type": "application/json"})
    assert small.status_code == 202, small.text  # a chunked body within the limit goes through
    api.post(f"/experiments/{small.json()['id']}/cancel")


def test_codes_are_every_float32_exactly_in_its_shortest_form(api, study):
    import json

    with study["factory"]() as s:
        stored = {m.name: db.model_codes(m) for m in db.list_models(session=s, experiment_id=study["id"])}
    for model, want in stored.items():
        r = api.get(f"/experiments/{study['id']}/codes", params={"model": model})
        got = np.array(r.json()["codes"], dtype=np.float32)
        np.testing.assert_array_equal(got, want)  # bit for bit, collapsed models too
        text = json.loads(r.text, parse_float=str)["codes"]
        assert all(len(t) <= len(str(np.float32(v))) for row, wrow in zip(text[:50], want[:50], strict=True)
                   for t, v in zip(row, wrow, strict=True))


def test_finished_answers_carry_an_etag_and_revalidate_to_304(api, study):
    eid = study["id"]
    # a space's answers never change; those about all its spaces grow with an upload: revalidated
    for path, kept in ((f"/samples/3/neighbors?experiment={eid}", "immutable"),
                       (f"/experiments/{eid}/codes.bin?model=relu_l1", "immutable"),
                       (f"/metrics/score_at_k?experiment={eid}", "no-cache"),
                       (f"/experiments/{eid}/plots/loss.png", "no-cache")):
        r = api.get(path)
        assert r.status_code == 200 and r.headers["etag"] and kept in r.headers["cache-control"], path
        again = api.get(path, headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304 and again.content == b"", path
    latest = api.get("/samples/3/neighbors")  # "the latest experiment" may change: revalidate each time
    assert latest.headers["cache-control"].endswith("no-cache") and latest.headers["etag"]
    csv_r = api.get(f"/metrics/score_at_k?experiment={eid}&format=csv")
    assert csv_r.headers["etag"] != api.get(f"/metrics/score_at_k?experiment={eid}").headers["etag"]


def test_a_plot_is_drawn_once_per_process_and_a_get_writes_nothing(api, study):
    from api.routes import plots

    eid = study["id"]
    with study["factory"]() as s:
        rows_before = s.query(db.PlotRow).count()
    first = api.get(f"/experiments/{eid}/plots/latent.png?model=relu_mse")
    assert first.status_code == 200 and first.content[:4] == b"\x89PNG"
    key = next(k for k in plots._drawn if k[1] == eid and k[3:] == ("latent", "relu_mse"))  # (url, id, revision, ...)
    plots._drawn[key] = b"\x89PNG kept"  # the second read is served from the process's cache, not drawn again
    assert api.get(f"/experiments/{eid}/plots/latent.png?model=relu_mse").content == b"\x89PNG kept"
    del plots._drawn[key]
    with study["factory"]() as s:
        assert s.query(db.PlotRow).count() == rows_before  # no GET wrote to the database


def test_a_failed_experiments_error_shows_no_sql():
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    from worker.pipeline import describe_error

    engine = create_engine("sqlite://")
    with pytest.raises(OperationalError) as info, engine.connect() as c:
        c.execute(text("SELECT secret_column FROM no_such_table WHERE id = :id"), {"id": 12345})
    words = describe_error(info.value)
    assert words == "OperationalError (OperationalError): no such table: no_such_table"
    assert "SELECT" not in words and "12345" not in words


API_KEY, READ_KEY = "k-writes-123", "k-reads-456"


def test_writes_take_the_bearer_api_key_and_nothing_else_whatever_cookies_come_along(study, queue):
    """Every write route, every header scheme x key, every cookie: only `Bearer <API key>` passes (a
    passing request is then refused for its body or state, so nothing is queued)."""
    from api.deps import READ_COOKIE, read_token

    c = TestClient(create_app_with(study, api_key=API_KEY, read_key=READ_KEY))
    writes = [("/experiments", {"limit": 100}, 422), (f"/experiments/{study['id']}/cancel", None, 409),
              ("/sweeps", {"grid": {}}, 422), ("/sweeps/999/cancel", None, 404)]
    headers = [None] + [f"{scheme} {key}" for scheme in ("Bearer", "bearer", "Token", "Basic")
                        for key in (API_KEY, READ_KEY, "wrong")]
    cookies = [{}, {READ_COOKIE: read_token(READ_KEY)}, {READ_COOKIE: API_KEY}, {"aeknn_key": API_KEY},
               {"aeknn_key": READ_KEY}]
    seen = 0
    for path, body, passed in writes:
        for header in headers:
            for jar in cookies:
                c.cookies.clear()
                for name, value in jar.items():
                    c.cookies.set(name, value)
                r = c.post(path, json=body, headers={"Authorization": header} if header else {})
                opens = header is not None and header.lower() == f"bearer {API_KEY}".lower() \
                    and header.split()[1] == API_KEY
                assert r.status_code == (passed if opens else 401), (path, header, jar, r.text)
                seen += 1
    assert seen == 4 * 13 * 5 and queue.llen("control") == 0


def test_the_read_cookie_is_httponly_strict_and_opens_reads_only(study, queue):
    c = TestClient(create_app_with(study, api_key=API_KEY, read_key=READ_KEY))
    assert c.post("/session").status_code == 401
    assert c.post("/session", headers={"Authorization": "Basic " + READ_KEY}).status_code == 401
    r = c.post("/session", headers={"Authorization": f"Bearer {READ_KEY}"})
    assert r.status_code == 204
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and "Path=/" in cookie
    value = cookie.split(";")[0].split("=", 1)[1]
    assert value not in (READ_KEY, API_KEY)  # the cookie holds no key
    assert c.get("/samples/3/image.png").status_code == 200  # an <img> sends the cookie, not a header
    assert c.get("/metrics/score_at_k").status_code == 200
    assert c.post("/experiments", json={"limit": 1000, "seed": 3}).status_code == 401  # writes: the header only
    assert c.post(f"/experiments/{study['id']}/cancel").status_code == 401
    assert c.delete("/session").status_code == 204
    c.cookies.clear()
    assert c.get("/metrics/score_at_k").status_code == 401
    assert queue.llen("control") == 0


@pytest.mark.parametrize("body, words", [
    (b'{"lr": NaN}', "lr: NaN is not a finite number"),
    (b'{"weight_decay": -Infinity}', "weight_decay: -Infinity is not a finite number"),
    (b'{"lr": 1e999}', "lr: Infinity is not a finite number"),
    (b'{"base": {"lr": NaN}, "grid": {"seed": [0]}}', "base.lr: NaN is not a finite number"),
    (b'{"lr": 0.001, "lr": 0.002}', "the key 'lr' appears twice"),
    (b'{"seed": "\xff"}', "not UTF-8 text"),
    (b'{"seed": ' + b"9" * 5000 + b"}", "a number of 5000 digits"),
    (b"[" * 100_000, "nested too deeply"),
    (b"{", "not valid JSON: Expecting property name"),
    (b"epochs=3", "not valid JSON: Expecting value"),
])
def test_every_unparseable_body_is_one_422_saying_why(api, queue, body, words):
    paths = ("/experiments", "/sweeps")  # a body neither can parse
    if "is not a finite number" in words:  # these name a field of one route's body
        paths = ("/sweeps",) if b"grid" in body else ("/experiments",)
    for path in paths:
        r = api.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json() == {"code": "invalid", "message": r.json()["message"]}, r.text
        assert words in r.json()["message"] and "body: body" not in r.json()["message"], r.text
    assert queue.llen("control") == 0


def test_a_nan_from_a_client_that_writes_it_as_a_number_is_named(study):
    from pydantic import ValidationError

    from common.study.config import StudyConfig

    with pytest.raises(ValidationError, match="finite number"):
        StudyConfig(lr=float("nan"))


def test_405_names_every_allowed_method_and_head_answers_where_get_does(api, study):
    r = api.delete("/experiments")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD, POST" and r.json()["code"] == "http_405"
    assert api.put(f"/experiments/{study['id']}/cancel").headers["allow"] == "POST"
    assert api.request("TRACE", "/metrics/score_at_k").headers["allow"] == "GET, HEAD"
    for path in ("/metrics/score_at_k", f"/experiments/{study['id']}/plots/loss.png", "/samples/3/neighbors",
                 "/samples/3/image.png", "/health", "/"):
        get, head = api.get(path), api.head(path)
        assert head.status_code == get.status_code == 200 and head.content == b"", path
        assert head.headers["content-type"] == get.headers["content-type"], path
        assert head.headers.get("etag") == get.headers.get("etag"), path
    assert api.head("/experiments/999").status_code == 404


def test_a_model_or_distance_the_experiment_lacks_is_404_naming_what_it_has(api):
    r = api.get("/samples/3/neighbors", params={"model": "tsne"})
    assert r.status_code == 404 and "has no model 'tsne'" in r.json()["message"]
    assert "linear_l1, linear_mse, relu_l1, relu_mse" in r.json()["message"]
    assert api.get("/experiments/1/codes?model=relu_keep").status_code in (404,)


def test_metric_tables_default_to_the_experiments_own_ks(api, study):
    assert api.get("/metrics/score_at_k").json()["k"] == CFG.ks
    assert api.get("/metrics/score_at_k?k=20-5").json()["k"] == list(range(5, 21))  # a range either way


def test_a_submission_stalled_behind_another_says_not_submitted_once(study, queue, monkeypatch):
    from common.study import submissions

    monkeypatch.setattr(submissions, "WAIT_FOR_SUBMITTER", 0.3)
    body = StudyConfig(limit=1000, seed=77).as_json()
    with db.transaction(study["factory"]) as s:  # another request's submission, still sending its task
        stalled = db.create_experiment(session=s, config=body, idempotency_key="stalled", status=db.SUBMITTING)
    r = client(study).post("/experiments", json={"limit": 1000, "seed": 77}, headers={"Idempotency-Key": "stalled"})
    assert r.status_code == 503 and r.json()["message"].count("not submitted") == 1, r.text
    assert f"experiment {stalled} is still being submitted" in r.json()["message"]
    with db.transaction(study["factory"]) as s:
        s.delete(db.get_experiment(session=s, experiment_id=stalled))


def test_every_default_follows_the_experiment_it_reads(tmp_path, data_dir):
    """The design card's own call, GET /samples/<id>/neighbors?space=encoded&k=20, on a database whose
    latest experiment trained other models than relu_mse: its first model in the study's order, not a 422."""
    from tests.services import study_in_process

    url = f"sqlite:///{tmp_path / 'other.db'}"
    eid, factory = study_in_process(url, StudyConfig(limit=300, epochs=1, k=20, ks=[5], models=["pca", "linear_mse"]),
                                    data_dir, tmp_path / "c")
    factory.kw["bind"].dispose()
    c = TestClient(create_app_with({"url": url}))
    r = c.get("/samples/3/neighbors?space=encoded&k=20")
    assert r.status_code == 200 and r.json()["model"] == "linear_mse" and r.json()["experiment"] == eid, r.text
    assert c.get(f"/experiments/{eid}/codes").json()["model"] == "linear_mse"
    assert c.get(f"/experiments/{eid}/codes.bin").status_code == 200
    nope = c.get("/samples/3/neighbors?model=relu_mse")
    assert nope.status_code == 404 and "its models: linear_mse, pca" in nope.json()["message"]

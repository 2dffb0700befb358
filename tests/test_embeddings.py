"""Your embedding: a user's codes, uploaded over REST and scored by real Celery workers on PostgreSQL (or
scored by `aeknn evaluate`), give exactly the tables of a float64 brute force over those codes and the
metrics computed independently from the pixel table; every bad upload is refused with its status and a
message that names the problem, and nothing of it is stored."""

from __future__ import annotations

import io
import subprocess
import sys

import httpx
import numpy as np
import pytest
import redis

from common.store import db as db
from common.study import reads
from common.study.config import StudyConfig
from tests.services import ROOT, ApiServer, Worker, fresh_database, study_in_process, wait_for

BROKER = "redis://127.0.0.1:6379/13"
CFG = StudyConfig(limit=600, epochs=1, k=30, ks=[5, 10], models=["relu_mse", "pca"])
KEY = "k-writes-42"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp("embeddings")
    url = fresh_database("aeknn_embeddings")
    eid, factory = study_in_process(url, CFG, data_dir, folder / "cache")
    redis.Redis.from_url(BROKER).flushdb()
    env = {"AEKNN_DATABASE_URL": url, "AEKNN_BROKER_URL": BROKER, "AEKNN_DATA_DIR": str(data_dir),
           "AEKNN_CACHE_DIR": str(folder / "cache"), "AEKNN_MEMORY_BUDGET": "2000000"}  # several chunks a table
    api = ApiServer({**env, "AEKNN_API_KEY": KEY, "AEKNN_MAX_UPLOAD": "1M"}, folder)
    worker = Worker("embeddings", env, folder, queues="control,neighbors")
    with factory() as s:
        pixels = np.frombuffer(s.get(db.DatasetRow, db.get_experiment(session=s, experiment_id=eid).dataset_id)
                               .images, np.uint8).reshape(CFG.limit, -1)
    yield {"url": api.url, "id": eid, "factory": factory, "db": url, "env": env, "pixels": pixels, "dir": folder}
    worker.stop()
    api.stop()
    factory.kw["bind"].dispose()


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def pca(pixels: np.ndarray, m: int) -> np.ndarray:
    """PCA codes with numpy alone (the SVD of the centred pixels)."""
    x = pixels.astype(np.float64)
    x -= x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:m].T


def brute(codes: np.ndarray, distance: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every row's k nearest others in float64, the sum over coordinates in their order, ties to the lower id."""
    n = len(codes)
    ids, dists = np.empty((n, k), np.int64), np.empty((n, k))
    for i in range(n):
        v = np.zeros(n)
        for j in range(codes.shape[1]):
            diff = codes[i, j] - codes[:, j]
            v = v + (np.abs(diff) if distance == "l1" else diff * diff)
        v[i] = np.inf
        order = np.lexsort((np.arange(n), v))[:k]
        ids[i], dists[i] = order, v[order] if distance == "l1" else np.sqrt(v[order])
    return ids, dists


def stored(factory, eid: int, space: str, distance: str) -> tuple[np.ndarray, np.ndarray]:
    with factory() as s:
        t = db.find_table(session=s, experiment_id=eid, space=space, distance=distance)
        got = [reads.stored_neighbors(s, t, t.dataset_id, i) for i in range(t.n)]
    return np.stack([g[0] for g in got]), np.stack([g[2] for g in got])


def overlap_score(orig: np.ndarray, enc: np.ndarray, k: int) -> float:
    """score@k from two id tables: the mean share of the k pixel-space neighbours kept among the k coded."""
    return float(np.mean([len(set(a[:k]) & set(b[:k])) for a, b in zip(orig, enc, strict=True)]) / k)


def wait_ready(stack, name: str) -> dict:
    def ready():
        r = httpx.get(f"{stack['url']}/experiments/{stack['id']}/embeddings/{name}").json()
        assert r["state"] != "failed", r
        return r if r["state"] == "ready" else None

    return wait_for(ready, 180, f"the embedding {name} to be scored")


def wait_ranks(stack, name: str) -> dict:
    """The upload's rank measures, which follow its readiness (null until they are stored)."""
    def stored():
        t = httpx.get(f"{stack['url']}/metrics/trustworthiness", params={"experiment": stack["id"], "k": 10}).json()
        rows = [r for r in t["rows"] if r["model"] == name]
        return t if rows and all(r["values"]["10"] is not None for r in rows) else None

    return wait_for(stored, 180, f"the rank measures of {name}")


def test_pca_codes_uploaded_on_workers_are_exact_and_scored_as_computed_independently(stack):
    url, eid, factory = stack["url"], stack["id"], stack["factory"]
    etag = httpx.get(f"{url}/metrics/score_at_k", params={"experiment": eid}).headers["etag"]
    for m in (2, 12):  # the KD-tree path, and the float32 GEMM path with its exact re-ranking
        name = f"pca{m}"
        codes = pca(stack["pixels"], m)
        r = httpx.post(f"{url}/experiments/{eid}/embeddings", params={"name": name}, content=npy(codes),
                       headers=AUTH)
        assert r.status_code == 202 and r.json()["state"] in ("queued", "scoring", "ready"), r.text
        assert wait_ready(stack, name)["dim"] == m
        wait_ranks(stack, name)
        for d in ("l1", "l2"):
            want_ids, want_d = brute(codes, d, CFG.k)
            ids, dists = stored(factory, eid, name, d)
            np.testing.assert_array_equal(ids, want_ids)  # every row, every rank
            np.testing.assert_allclose(dists, want_d, rtol=1e-6)
            orig, _ = stored(factory, eid, db.ORIGINAL, d)
            score = httpx.get(f"{url}/metrics/score_at_k", params={"experiment": eid, "k": "1,5,10,30"}).json()
            row = next(x for x in score["rows"] if x["model"] == name and x["distance"] == d)
            for k in (1, 5, 10, 30):
                assert row["values"][str(k)] == pytest.approx(overlap_score(orig, want_ids, k), abs=1e-12)
            served = httpx.get(f"{url}/samples/7/neighbors", params={"experiment": eid, "model": name,
                                                                     "distance": d, "k": 10}).json()
            assert [x["id"] for x in served["neighbors"]] == want_ids[7, :10].tolist()
    info = httpx.get(f"{url}/experiments/{eid}").json()
    kinds = {s["name"]: (s["kind"], s["dim"], s["state"]) for s in info["spaces"]}
    assert kinds["pca2"] == ("uploaded", 2, "ready") and kinds["pca12"] == ("uploaded", 12, "ready")
    assert kinds["pca"][0] == "reference map" and kinds["relu_mse"][0] == "trained"
    assert all(s["created_at"] for s in info["spaces"] if s["kind"] == "uploaded")
    # the answers about every space were revalidated into new ones; the map draws 12-D codes by 2 components
    assert httpx.get(f"{url}/metrics/score_at_k", params={"experiment": eid}).headers["etag"] != etag
    r = httpx.get(f"{url}/experiments/{eid}/codes.bin", params={"model": "pca12"})
    assert r.status_code == 200 and len(r.content) == 9 * CFG.limit and "principal components" in r.headers["x-map"]
    full = httpx.get(f"{url}/experiments/{eid}/codes", params={"model": "pca12"}).json()["codes"]
    np.testing.assert_array_equal(np.array(full), codes)  # as given, float64
    # the same file through `aeknn evaluate` stores the same bits
    path = stack["dir"] / "pca12.npy"
    path.write_bytes(npy(codes))
    out = subprocess.run([sys.executable, "-m", "cli", "evaluate", "--db", stack["db"], "--codes", str(path),
                          "--name", "cli12", "--experiment", str(eid)], cwd=ROOT, capture_output=True, text=True,
                         env={**__import__("os").environ, **stack["env"]}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "cli12" in out.stdout and "score@k" in out.stdout
    for d in ("l1", "l2"):
        a, b = stored(factory, eid, "pca12", d), stored(factory, eid, "cli12", d)
        assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    with factory() as s:
        vals = {(v.metric, v.distance, v.k, v.label): v.value for v in s.scalars(db.select(db.MetricValue).where(
            db.MetricValue.experiment_id == eid, db.MetricValue.space.in_(["pca12", "cli12"])))
            if v.space == "pca12"}
        again = {(v.metric, v.distance, v.k, v.label): v.value for v in s.scalars(db.select(db.MetricValue).where(
            db.MetricValue.experiment_id == eid, db.MetricValue.space == "cli12"))}
    assert vals == again and len(vals) > 100


def metric_values(factory, eid: int, space: str) -> dict:
    with factory() as s:
        return {(v.metric, v.distance, v.k, v.label): v.value for v in s.scalars(db.select(db.MetricValue).where(
            db.MetricValue.experiment_id == eid, db.MetricValue.space == space))}


def test_several_maps_in_one_evaluate_share_the_pixel_pass_and_score_as_each_alone(stack):
    """`aeknn evaluate` with two maps: both stored at once, their rank measures from one pass over the pixels
    per distance (its log line names both), every metric equal, bit for bit, to the same codes uploaded
    alone; a --codes without its --name, and a name given twice, refused in one line with nothing stored."""
    url, eid, factory = stack["url"], stack["id"], stack["factory"]
    if httpx.get(f"{url}/experiments/{eid}/embeddings/pca12").status_code != 200:
        pytest.skip("needs the uploads of the test above")
    paths = {}
    for m in (2, 12):
        paths[m] = stack["dir"] / f"both{m}.npy"
        paths[m].write_bytes(npy(pca(stack["pixels"], m)))

    def evaluate(*args):
        return subprocess.run([sys.executable, "-m", "cli", "evaluate", "--db", stack["db"], "--experiment", str(eid),
                               *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env={**__import__("os").environ, **stack["env"]})

    with factory() as s:
        before = sorted(m.name for m in db.list_models(session=s, experiment_id=eid))
    for args, words in ((("--codes", paths[2], "--codes", paths[12], "--name", "x1"),
                         "each --codes needs its --name: 2 --codes and 1 --name given"),
                        (("--codes", paths[2], "--name", "x2", "--codes", paths[12], "--name", "x2"),
                         "a name is given twice")):
        out = evaluate(*args)
        assert out.returncode in (1, 2) and words in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    with factory() as s:
        assert sorted(m.name for m in db.list_models(session=s, experiment_id=eid)) == before
    out = evaluate("--codes", paths[2], "--name", "both2", "--codes", paths[12], "--name", "both12")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "both2" in out.stdout and "both12" in out.stdout
    passes = [line for line in out.stderr.splitlines() if "exact ranks:" in line]
    assert passes, out.stderr[-2000:]
    assert passes[-1].count("ranks original l1") == 1 and passes[-1].count("ranks original l2") == 1
    assert all(f"ranks {name} {d}" in passes[-1] for name in ("both2", "both12") for d in ("l1", "l2"))
    for alone, both in (("pca2", "both2"), ("pca12", "both12")):
        want = metric_values(factory, eid, alone)
        assert any(m == "trustworthiness" for m, *_ in want) and metric_values(factory, eid, both) == want
    timings = httpx.get(f"{url}/experiments/{eid}").json()["timings"]
    assert {"embedding both2 rank measures", "embedding both12 rank measures"} <= set(timings)


def test_two_spaces_compared_share_what_their_tables_share(stack):
    url, eid = stack["url"], stack["id"]
    if httpx.get(f"{url}/experiments/{eid}/embeddings/pca2").status_code != 200:
        pytest.skip("needs the upload of the test above")
    r = httpx.get(f"{url}/experiments/{eid}/compare", params={"models": "relu_mse,pca2", "k": 10})
    assert r.status_code == 200, r.text
    got = r.json()
    a, _ = stored(stack["factory"], eid, "relu_mse", "l2")
    b, _ = stored(stack["factory"], eid, "pca2", "l2")
    share = np.array([len(set(x[:10]) & set(y[:10])) / 10 for x, y in zip(a, b, strict=True)])
    assert got["agreement"] == pytest.approx(share.mean(), abs=1e-12)
    worst = [d["id"] for d in got["differ_most"]]
    assert worst == np.lexsort((np.arange(len(share)), share))[:20].tolist()
    lab = np.array(httpx.get(f"{url}/experiments/{eid}/codes", params={"model": "pca"}).json()["labels"])
    for label, v in got["by_label"].items():
        assert v == pytest.approx(share[lab == int(label)].mean(), abs=1e-12)
    same = httpx.get(f"{url}/experiments/{eid}/compare", params={"models": "pca2,pca2", "k": 10}).json()
    assert same["agreement"] == 1.0  # a space against itself
    for bad, words in (({"models": "pca2"}, "models"), ({"models": "pca2,nope"}, "has no model 'nope'"),
                       ({"models": "pca2,pca", "k": 31}, "k")):
        r = httpx.get(f"{url}/experiments/{eid}/compare", params=bad)
        assert r.status_code in (404, 422) and words in r.json()["message"], (bad, r.text)


def test_every_bad_upload_is_refused_with_its_status_and_nothing_is_stored(stack):
    url, eid, factory = stack["url"], stack["id"], stack["factory"]
    good = pca(stack["pixels"], 3)
    with_nan, with_inf = good.copy(), good.copy()
    with_nan[5, 1], with_inf[9, 0] = np.nan, np.inf
    with factory() as s:  # an experiment still queued: its pixel tables are not there yet
        queued = db.create_experiment(session=s, config=CFG.as_json(), idempotency_key=None, status=db.QUEUED)
        s.commit()
    body = npy(good)

    def chunked():  # no Content-Length: the cap is met while the body streams in
        for _ in range(20):
            yield b"\x93NUMPY" + b"\0" * (100_000 - 6)

    cases = [
        ("no key", {"name": "a1"}, body, {}, 401, "needs the API key"),
        ("wrong N", {"name": "a2"}, npy(good[:-1]), AUTH, 422, "599 rows; the experiment has 600 samples"),
        ("NaN", {"name": "a3"}, npy(with_nan), AUTH, 422, "NaN or infinite values (rows 5)"),
        ("infinite", {"name": "a4"}, npy(with_inf), AUTH, 422, "NaN or infinite values (rows 9)"),
        ("m = 0", {"name": "a5"}, npy(np.zeros((600, 0))), AUTH, 422, "m = 0 columns"),
        ("3-D", {"name": "a6"}, npy(np.zeros((600, 2, 2))), AUTH, 422, "expected N x m"),
        ("strings", {"name": "a7"}, npy(np.array(["x"] * 600)), AUTH, 422, "expected real numbers"),
        ("pickled objects", {"name": "a8"}, npy(np.array([{}] * 600, dtype=object)), AUTH, 422, "not a readable"),
        ("not .npy", {"name": "a9"}, b'{"codes": [[1, 2]]}', AUTH, 422, "not a .npy or .npz file"),
        ("empty", {"name": "a10"}, b"", AUTH, 422, "is empty"),
        ("truncated", {"name": "a11"}, body[:-100], AUTH, 422, "not a readable"),
        ("npz without codes", {"name": "a12"}, (lambda b: (np.savez(b, X=good), b.getvalue())[1])(io.BytesIO()),
         AUTH, 422, "without an array named 'codes'"),
        ("a study model's name", {"name": "relu_mse"}, body, AUTH, 422, "name of a study model"),
        ("a bad name", {"name": "no spaces"}, body, AUTH, 422, "name"),
        ("over the cap", {"name": "a13"}, b"\x93NUMPY" + b"\0" * 1_100_000, AUTH, 413, "AEKNN_MAX_UPLOAD"),
        ("over the cap, streamed", {"name": "a14"}, chunked(), AUTH, 413, "AEKNN_MAX_UPLOAD"),
        ("not finished", {"name": "a15"}, body, AUTH, 409, f"experiment {queued} is queued"),
    ]
    with factory() as s:
        before = sorted(m.name for m in db.list_models(session=s, experiment_id=eid))
    for what, params, content, headers, status, words in cases:
        exp = queued if what == "not finished" else eid
        r = httpx.post(f"{url}/experiments/{exp}/embeddings", params=params, content=content, headers=headers)
        assert r.status_code == status and words in r.json()["message"], (what, r.status_code, r.text)
    r = httpx.post(f"{url}/experiments/99999/embeddings", params={"name": "a16"}, content=body, headers=AUTH)
    assert r.status_code == 404 and "no experiment 99999" in r.json()["message"]
    # a name taken by an upload: 409; the same name with the same codes again is the same upload (202)
    assert httpx.post(f"{url}/experiments/{eid}/embeddings", params={"name": "taken"}, content=body,
                      headers=AUTH).status_code == 202
    r = httpx.post(f"{url}/experiments/{eid}/embeddings", params={"name": "taken"}, content=npy(good * 2),
                   headers=AUTH)
    assert r.status_code == 409 and "already a space of this experiment" in r.json()["message"], r.text
    assert httpx.post(f"{url}/experiments/{eid}/embeddings", params={"name": "taken"}, content=body,
                      headers=AUTH).status_code == 202
    with factory() as s:
        after = sorted(m.name for m in db.list_models(session=s, experiment_id=eid))
        assert db.list_models(session=s, experiment_id=queued) == []
    assert after == sorted([*before, "taken"])  # nothing of any refused upload
    wait_ready(stack, "taken")
    # the command line says the same, in one line, exit 2
    bad, fine = stack["dir"] / "bad.npy", stack["dir"] / "fine.npy"
    bad.write_bytes(npy(with_nan))
    fine.write_bytes(body)
    for args, words in ((["--codes", str(bad), "--name", "c1"], f"--codes {bad} hold 1 NaN or infinite values"),
                        (["--codes", str(stack["dir"] / "missing.npy"), "--name", "c2"], "cannot read --codes"),
                        (["--codes", str(fine), "--name", "pca"], "name of a study model"),
                        (["--codes", str(fine), "--name", "taken2", "--experiment", str(queued)], "is queued")):
        which = [] if "--experiment" in args else ["--experiment", str(eid)]
        out = subprocess.run([sys.executable, "-m", "cli", "evaluate", "--db", stack["db"], *which, *args], cwd=ROOT,
                             capture_output=True, text=True, timeout=120,
                             env={**__import__("os").environ, **stack["env"]})
        assert out.returncode in (1, 2) and words in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr

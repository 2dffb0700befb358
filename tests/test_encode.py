"""New images (POST /experiments/{id}/encode): MNIST's format made by hand, exact neighbours of new rows, and
the route end to end against the real encoder process over the machine's Redis, on a study of real MNIST."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from common.compute import placing
from common.errors import DataError
from common.study import jobs
from tests.services import Encoder

REDIS_URL = "redis://127.0.0.1:6379/14"  # a database of its own: no other test's encoder answers here


# ---------------------------------------------------------------- the format, by hand


def test_a_drawing_is_made_into_mnists_format_and_mnists_own_images_come_back_unchanged():
    """A dark 10 x 5 bar on a white 100 x 100 page: inverted (MNIST's ink is light on black), its box scaled to
    20 x 10 (the longer side to 20), centred by mass: rows 4..23, columns 9..18 of 28 x 28."""
    page = np.full((100, 100), 255, np.uint8)
    page[30:40, 60:65] = 0  # 10 rows, 5 columns of full ink
    out = placing.mnist_format(page.astype(np.float64), "the image")
    assert out.shape == (28, 28) and out.dtype == np.uint8
    rows, cols = np.flatnonzero(out.any(1)), np.flatnonzero(out.any(0))
    assert (rows[0], rows[-1], cols[0], cols[-1]) == (4, 23, 9, 18)
    assert out[4:24, 9:19].min() == 255 and out.sum() == 255 * 200  # a full box, nothing outside
    digit = np.zeros((28, 28), np.uint8)
    digit[5:20, 10:14] = np.arange(60, dtype=np.uint8).reshape(15, 4) + 100
    np.testing.assert_array_equal(placing.mnist_format(digit.astype(np.float64), "x"), digit)
    with pytest.raises(DataError, match="the image: a blank image"):
        placing.mnist_format(np.full((40, 40), 255.0), "the image")
    # a drawing pad's light strokes on a transparent ground
    rgba = np.zeros((50, 50, 4), np.uint8)
    rgba[10:40, 24:27] = (255, 255, 255, 255)
    got = placing.prepare(Image.fromarray(rgba, "RGBA"), (28, 28), "the pad")
    assert got.reshape(28, 28)[4:24].max() == 255 and got.reshape(28, 28)[:, :5].max() == 0


def test_new_rows_get_the_same_neighbours_as_a_brute_force_ties_to_the_lower_id():
    """Bytes through every kernel this CPU runs (AVX-512, AVX2, plain C), 2-D codes and float data, against
    brute forces with ties and duplicates."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (500, 150), dtype=np.uint8) // 64 * 85  # four values: many ties; 150: a padded row
    x[100:110] = x[7]  # duplicates
    q = np.vstack([x[7], rng.integers(0, 256, (5, 150), dtype=np.uint8), np.full((1, 150), 255, np.uint8)])
    from common.compute import _l1

    pix = placing.Pixels(x)
    for isa, distance in [(isa, d) for isa in _l1.supported() for d in ("l1", "l2")]:  # every kernel this CPU runs
        pix.isa = isa
        for row, (ids, dist) in zip(q, pix.neighbors(q, distance, 30), strict=True):
            d = x.astype(np.int64) - row
            exact = (d * d).sum(1) if distance == "l2" else np.abs(d).sum(1)
            want = np.lexsort((np.arange(len(x)), exact))[:30]
            np.testing.assert_array_equal(ids, want)
            served = (np.sqrt(exact[want]) if distance == "l2" else exact[want]) * 2 / 255
            np.testing.assert_array_equal(dist, served.astype(np.float32))
    codes = np.round(rng.normal(size=(400, 2)), 1).astype(np.float32)  # rounded: ties
    for distance in ("l1", "l2"):
        ids, _ = placing.code_neighbors(codes, codes[3], distance, 25)
        c = codes.astype(np.float64) - codes[3].astype(np.float64)
        exact = np.abs(c).sum(1) if distance == "l1" else (c * c).sum(1)
        np.testing.assert_array_equal(ids, np.lexsort((np.arange(400), exact))[:25])
    floats = rng.normal(size=(300, 6))
    ids, _ = placing.Pixels(floats).neighbors(floats[:1] + 1e-3, "l2", 10)[0]
    exact = ((floats - (floats[0] + 1e-3)) ** 2).sum(1)
    np.testing.assert_array_equal(ids, np.lexsort((np.arange(300), exact))[:10])


# ---------------------------------------------------------------- the route, for real


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def placed(tmp_path_factory, data_dir):
    """A finished study of the first 2,000 MNIST images (SQLite), the API over it, and the encoder process."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from common.compute.data import load_dataset
    from common.settings import Settings
    from tests.test_sources import run_in_process

    folder = tmp_path_factory.mktemp("encode")
    factory, eid = run_in_process(folder, data_dir, limit=2000, epochs=1, k=50, ks=[5, 10],
                                  models=["linear_mse", "relu_mse", "relu_keep", "pca", "umap"])
    url = str(factory.kw["bind"].url)
    encoder = Encoder(url, REDIS_URL, folder)
    test = load_dataset("mnist", data_dir, folder / "cache", split="test")
    with TestClient(create_app(Settings(database_url=url, broker_url=REDIS_URL))) as api:
        yield {"api": api, "id": eid, "factory": factory, "test": test, "encoder": encoder,
               "train": load_dataset("mnist", data_dir, folder / "cache", limit=2000)}
    encoder.stop()


def test_mnist_test_images_as_png_get_their_exact_neighbours_in_pixel_space_and_on_every_map(placed):
    """Three MNIST test images as PNGs: the pixel-space lists equal a brute force over the experiment's
    training images, each model's list a brute force over its served codes around the returned code, the
    overlap their shared share; each autoencoder's code is its encoder's; UMAP says why it cannot place."""
    api, eid, test, train = placed["api"], placed["id"], placed["test"], placed["train"]
    pngs = [base64.b64encode(_png(test.images[i].reshape(28, 28))).decode() for i in range(3)]
    r = api.post(f"/experiments/{eid}/encode?k=15", json={"images": pngs})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["k"] == 15 and body["shape"] == [28, 28] and len(body["images"]) == 3
    served = {m: np.asarray(api.get(f"/experiments/{eid}/codes?model={m}").json()["codes"], np.float64)
              for m in ("linear_mse", "relu_mse", "relu_keep", "pca")}
    for i, item in enumerate(body["images"]):
        np.testing.assert_array_equal(item["prepared"], test.images[i])  # already MNIST's format: as it is
        assert item["picture"].startswith("data:image/png;base64,")
        for distance in ("l1", "l2"):
            d = train.images.astype(np.int64) - test.images[i].astype(np.int64)
            exact = (d * d).sum(1) if distance == "l2" else np.abs(d).sum(1)
            want = np.lexsort((np.arange(2000), exact))[:15]
            got = item["pixel"][distance]
            assert [n["id"] for n in got] == want.tolist()
            assert [n["label"] for n in got] == train.labels[want].tolist()
            for m, codes in served.items():
                res = item["models"][m]
                assert res["placed"], res
                c = codes - np.asarray(res["code"], np.float32).astype(np.float64)
                dm = np.abs(c).sum(1) if distance == "l1" else (c * c).sum(1)
                near = np.lexsort((np.arange(2000), dm))[:15]
                assert [n["id"] for n in res["neighbors"][distance]] == near.tolist(), (m, distance)
                assert res["overlap"][distance] == len(set(near) & set(want)) / 15
        assert item["models"]["umap"] == {"placed": False, "why": item["models"]["umap"]["why"]}
        assert "UMAP" in item["models"]["umap"]["why"]
    # each autoencoder's code is its encoder's of that image alone (whatever else the request holds)
    import torch

    from common.compute.training import encode, load_trained
    from common.store import db

    with placed["factory"]() as s:
        row = s.query(db.ModelRow).filter_by(experiment_id=eid, name="relu_mse").one()
        model = load_trained("relu_mse", torch.load(io.BytesIO(row.weights), weights_only=True))
    x = torch.from_numpy(test.images[:3]).float().div_(255.0).mul_(2.0).sub_(1.0)
    np.testing.assert_array_equal(np.asarray([it["models"]["relu_mse"]["code"] for it in body["images"]], np.float32),
                                  np.vstack([encode(model, x[i:i + 1]).numpy() for i in range(3)]))
    # one PNG as the body, and the same image as an .npy and as JSON arrays: one answer
    one = api.post(f"/experiments/{eid}/encode?k=15&models=relu_mse,pca", content=_png(test.images[0].reshape(28, 28)),
                   headers={"Content-Type": "image/png"}).json()["images"][0]
    buf = io.BytesIO()
    np.save(buf, test.images[0].reshape(28, 28))
    npy = api.post(f"/experiments/{eid}/encode?k=15&models=relu_mse,pca", content=buf.getvalue(),
                   headers={"Content-Type": "application/octet-stream"}).json()["images"][0]
    arr = api.post(f"/experiments/{eid}/encode?k=15&models=relu_mse,pca",
                   json={"arrays": [test.images[0].reshape(28, 28).tolist()]}).json()["images"][0]
    assert one == npy == arr and list(one["models"]) == ["relu_mse", "pca"]
    assert one["models"]["relu_mse"] == body["images"][0]["models"]["relu_mse"]


def test_a_drawn_digit_of_another_size_is_brought_to_mnists_format_and_shown(placed):
    api, eid = placed["api"], placed["id"]
    page = np.full((300, 200), 255, np.uint8)
    page[40:260, 90:110] = 0  # a long stroke: a 1
    r = api.post(f"/experiments/{eid}/encode?models=relu_mse", content=_png(page),
                 headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    item = r.json()["images"][0]
    prepared = np.asarray(item["prepared"], np.uint8).reshape(28, 28)
    np.testing.assert_array_equal(prepared, placing.mnist_format(page.astype(np.float64), "x"))
    assert np.flatnonzero(prepared.any(1)).tolist() == list(range(4, 24))  # 20 rows tall
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(item["picture"].split(",")[1]))))
    np.testing.assert_array_equal(shown, prepared)
    assert sum(n["label"] == 1 for n in item["pixel"]["l2"]) >= 10  # its nearest images are mostly 1s


@pytest.mark.parametrize("body, headers, status, says", [
    (b"not an image at all", {"Content-Type": "image/png"}, 422, "the image: not a readable PNG or JPEG"),
    (b"\x89PNG" + bytes(5 * 1024 * 1024), {"Content-Type": "image/png"}, 413, "at most 4194304 bytes"),
    ("wide", {"Content-Type": "image/png"}, 422, "4097 x 1 pixels; at most 4096"),
    ("blank", {"Content-Type": "image/png"}, 422, "a blank image"),
    ("gif", {"Content-Type": "image/png"}, 422, "a GIF image; expected PNG or JPEG"),
    ({"arrays": [[1, 2, 3]]}, {}, 422, "arrays: shape (1, 3); expected (28, 28)"),
    ({"arrays": [np.full((28, 28), 300).tolist()]}, {}, 422, "whole numbers in 0..255"),
    ({"arrays": [[[0] * 28] * 28] * 257}, {}, 422, "257 samples; at most 256"),
    ({"images": ["@@@"]}, {}, 422, "images[0]: not base64"),
    ({"pictures": []}, {}, 422, 'expected {"images"'),
    (b"x,y\n1,2", {"Content-Type": "text/csv"}, 422, "Content-Type text/csv: expected image/png"),
    (b"\x93NUMPY broken", {"Content-Type": "application/octet-stream"}, 422, "not an .npy file"),
])
def test_bad_input_is_refused_naming_the_problem_and_nothing_is_stored(placed, body, headers, status, says):
    from sqlalchemy import func, select

    from common.store import db

    api, eid = placed["api"], placed["id"]
    if body == "wide":
        body = _png(np.zeros((1, 4097), np.uint8))
    elif body == "blank":
        body = _png(np.full((50, 50), 255, np.uint8))
    elif body == "gif":
        buf = io.BytesIO()
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(buf, "GIF")
        body = buf.getvalue()
    with placed["factory"]() as s:
        before = [s.scalar(select(func.count()).select_from(t)) for t in (db.ModelRow, db.TableRow, db.Experiment)]
    kw = {"json": body} if isinstance(body, dict) else {"content": body}
    r = api.post(f"/experiments/{eid}/encode", headers=headers, **kw)
    assert r.status_code == status and says in r.json()["message"], r.text
    with placed["factory"]() as s:
        assert [s.scalar(select(func.count()).select_from(t)) for t in (db.ModelRow, db.TableRow, db.Experiment)] == \
            before


def test_unknown_models_and_experiments_and_a_stopped_encoder_are_named(placed):
    api, eid, test = placed["api"], placed["id"], placed["test"]
    png = _png(test.images[0].reshape(28, 28))
    r = api.post(f"/experiments/{eid}/encode?models=relu_l1", content=png, headers={"Content-Type": "image/png"})
    assert r.status_code == 404 and "no model relu_l1" in r.json()["message"]
    r = api.post(f"/experiments/{eid}/encode?k=1001", content=png, headers={"Content-Type": "image/png"})
    assert r.status_code == 422 and "k" in r.json()["message"]
    r = api.post("/experiments/99/encode", content=png, headers={"Content-Type": "image/png"})
    assert r.status_code == 404
    placed["encoder"].stop()
    assert not placed["encoder"].redis.exists(jobs.ENCODER_ALIVE)  # a stopped encoder takes its mark away
    r = api.post(f"/experiments/{eid}/encode", content=png, headers={"Content-Type": "image/png"})
    assert r.status_code == 503 and "no encoder is running: start `aeknn encoder`" in r.json()["message"]

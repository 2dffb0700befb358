"""Your data (common/compute/sources.py, ``aeknn run --data``): every source read exactly as written, the
whole study on it with exact tables, the same answer as the named data set for the same bytes, and every
bad input a clear error that names the file and stores nothing."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from common.compute.sources import MAX_DIM, locate, read_source
from common.store import db
from common.study.config import StudyConfig
from tests.test_neighbors import _sequential_brute, brute_force

ROOT = Path(__file__).resolve().parents[1]


def classes(n: int, dim: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bytes around one random centre per class (some duplicates): labels and neighbours that mean something."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    centres = rng.integers(30, 226, (n_classes, dim))
    x = np.clip(centres[y] + rng.integers(-30, 31, (n, dim)), 0, 255).astype(np.uint8)
    x[5:8] = x[2]  # copies: exact ties
    return x, y


def write_idx(path: Path, a: np.ndarray, code: int = 0x08) -> None:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}i", *a.shape))
        f.write(a.astype(">u1" if code == 0x08 else a.dtype.newbyteorder(">")).tobytes())


def write_cifar(folder: Path, x: np.ndarray, y: np.ndarray, fine: bool = False) -> None:
    """``x`` (N, 32, 32, 3) in CIFAR's python format: CIFAR-10's five training batches, or CIFAR-100's one."""
    folder.mkdir(parents=True)
    data = x.transpose(0, 3, 1, 2).reshape(len(x), -1)  # channels first, as published
    if fine:
        with open(folder / "train", "wb") as f:
            pickle.dump({b"data": data, b"fine_labels": [int(v) for v in y], b"coarse_labels": [0] * len(y)}, f)
        return
    for b, part in enumerate(np.array_split(np.arange(len(x)), 5), start=1):
        with open(folder / f"data_batch_{b}", "wb") as f:
            pickle.dump({b"data": data[part], b"labels": [int(v) for v in y[part]], b"batch_label": b"x"}, f)


def write_folder(folder: Path, x: np.ndarray, y: np.ndarray, suffix: str = ".png") -> None:
    for i, (img, c) in enumerate(zip(x, y, strict=True)):
        (folder / f"class{c}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"class{c}" / f"{i:04d}{suffix}")


# ---------------------------------------------------------------- reading


def test_every_format_reads_the_bytes_and_labels_as_written(tmp_path):
    x, y = classes(60, 5 * 7, 4, 0)
    cube = x.reshape(60, 5, 7)
    np.save(tmp_path / "x.npy", cube)
    np.save(tmp_path / "y.npy", y)
    np.savez(tmp_path / "d.npz", X=x, y=y)
    write_idx(tmp_path / "x-idx3-ubyte.gz", cube)
    write_idx(tmp_path / "y-idx1-ubyte", y.astype(np.uint8))
    for ds in (read_source(tmp_path / "x.npy", tmp_path / "y.npy"), read_source(tmp_path / "d.npz"),
               read_source(tmp_path / "x-idx3-ubyte.gz", tmp_path / "y-idx1-ubyte")):
        np.testing.assert_array_equal(ds.images, x)
        np.testing.assert_array_equal(ds.labels, y)
    assert read_source(tmp_path / "x.npy", tmp_path / "y.npy").shape == (5, 7)
    assert read_source(tmp_path / "d.npz").shape == (35,)
    # the same content is one name; other content another
    assert read_source(tmp_path / "x.npy", tmp_path / "y.npy").name == read_source(tmp_path / "x.npy",
                                                                                  tmp_path / "y.npy").name
    np.savez(tmp_path / "e.npz", X=x, y=(y + 1) % 4)
    assert read_source(tmp_path / "e.npz").name != read_source(tmp_path / "d.npz").name
    # whole numbers in 0..255 of any dtype are taken exactly, as bytes (the exact integer paths)
    np.savez(tmp_path / "f.npz", X=x.astype(np.float64), y=y.astype(np.float32))
    assert read_source(tmp_path / "f.npz").images.dtype == np.uint8
    np.testing.assert_array_equal(read_source(tmp_path / "f.npz").images, x)
    # any other numbers as float: float32 stays float32, the rest float64, every value as written
    for data, dtype in ((x / 7.0, np.float64), ((x / 7.0).astype(np.float32), np.float32),
                        (x.astype(np.int16) * 300 - 9000, np.float64)):
        np.savez(tmp_path / "g.npz", X=data, y=y)
        got = read_source(tmp_path / "g.npz").images
        assert got.dtype == dtype and (got == data).all()


def test_cifar_asked_by_name_is_found_in_the_data_directory_or_downloaded_only_where_there_is_a_network(
        tmp_path, monkeypatch):
    """``--data cifar10``: the python folder under the data directory (or data_dir/cifar100/ for CIFAR-100) is
    read as its path would be; nowhere there, torchvision downloads it, and where that fails (here: every
    request sent to a closed port) the error names the folder, where it was looked for and why."""
    from common.errors import DataError
    from common.study.datasets import read_data

    rng = np.random.default_rng(2)
    rgb, y = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), np.arange(40) % 4
    data, cache = tmp_path / "data", tmp_path / "cache"
    write_cifar(data / "cifar-10-batches-py", rgb, y)
    write_cifar(data / "cifar100" / "cifar-100-python", rgb, y + 50, fine=True)
    assert locate("cifar10", data, cache) == data / "cifar-10-batches-py"
    assert locate("cifar100", data, cache) == data / "cifar100" / "cifar-100-python"
    got = read_data(StudyConfig(data="cifar10", k=10, ks=[5], models=["pca"]), data, cache)
    want = read_source(data / "cifar-10-batches-py")
    assert got.name == want.name and got.shape == (32, 32, 3)
    np.testing.assert_array_equal(got.images, rgb.reshape(40, -1))
    np.testing.assert_array_equal(got.labels, y)
    assert locate("elsewhere/x.npy", data, cache) == Path("elsewhere/x.npy")  # any other name is a path
    monkeypatch.chdir(tmp_path)
    write_cifar(tmp_path / "cifar10", rgb, y)  # a folder that is called cifar10 is that folder
    assert locate("cifar10", tmp_path / "empty", cache) == Path("cifar10")
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # nothing listens there: the download fails at once
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(DataError) as err:
        locate("cifar100", tmp_path / "empty", cache)
    assert f"cifar100: its python folder cifar-100-python is not in {tmp_path / 'empty' / 'cifar-100-python'}" in str(
        err.value) and "could not be downloaded" in str(err.value)
    assert not (cache / "cifar-100-python").exists()


def test_image_folders_and_cifar_folders_read_in_order(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    y = np.arange(30) % 3
    write_cifar(tmp_path / "c10" / "cifar-10-batches-py", rgb, y)
    ds = read_source(tmp_path / "c10")  # the folder holding the batches' folder, as the archive unpacks
    assert ds.shape == (32, 32, 3)
    np.testing.assert_array_equal(ds.images, rgb.reshape(30, -1))
    np.testing.assert_array_equal(ds.labels, y)
    write_cifar(tmp_path / "c100", rgb, y + 90, fine=True)
    np.testing.assert_array_equal(read_source(tmp_path / "c100").labels, y + 90)

    grey = rng.integers(0, 256, (12, 9, 6), dtype=np.uint8)
    write_folder(tmp_path / "grey", grey, np.arange(12) % 2)
    ds = read_source(tmp_path / "grey")
    order = np.concatenate([np.arange(0, 12, 2), np.arange(1, 12, 2)])  # class by class, then by name
    assert ds.shape == (9, 6)
    np.testing.assert_array_equal(ds.images, grey[order].reshape(12, -1))
    np.testing.assert_array_equal(ds.labels, np.arange(12)[order] % 2)
    write_folder(tmp_path / "colour", rgb[:6], np.zeros(6, int))
    assert read_source(tmp_path / "colour").shape == (32, 32, 3)


def bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """Each bad input: the CLI's data options, and words its error must hold."""
    x, y = classes(40, 12, 3, 2)
    np.save(tmp / "x.npy", x)
    np.save(tmp / "y.npy", y)
    np.save(tmp / "flat.npy", x.ravel())
    np.save(tmp / "y-short.npy", y[:-1])
    nan = x.astype(np.float32)
    nan[3, 4] = np.nan
    np.save(tmp / "nan.npy", nan)
    np.save(tmp / "words.npy", np.array([["a", "b"]] * 40))
    np.save(tmp / "wide.npy", np.zeros((3, MAX_DIM + 1), np.uint8))
    raw = (tmp / "x.npy").read_bytes()
    (tmp / "cut.npy").write_bytes(raw[: len(raw) // 2])
    np.savez(tmp / "noX.npz", data=x, y=y)
    np.savez(tmp / "bigy.npz", X=x, y=y + 300)
    mixed = tmp / "mixed"
    write_folder(mixed, np.zeros((4, 8, 8), np.uint8), np.array([0, 0, 1, 1]))
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(mixed / "class1" / "9999.png")
    (tmp / "notimg" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp / "notimg" / "a" / "1.png")
    (tmp / "notimg" / "a" / "2.png").write_text("not a picture")
    evil = tmp / "evil"
    evil.mkdir()
    (evil / "data_batch_1").write_bytes(pickle.dumps({b"data": os.system}))  # a pickle that would run code
    (tmp / "plain.txt").write_text("1,2,3\n")
    return {
        "flat": ([str(tmp / "flat.npy"), "--labels", str(tmp / "y.npy")], "expected N x D"),
        "labels of another length": ([str(tmp / "x.npy"), "--labels", str(tmp / "y-short.npy")],
                                     "one label per sample"),
        "NaN": ([str(tmp / "nan.npy"), "--labels", str(tmp / "y.npy")], "must be finite"),
        "not numbers": ([str(tmp / "words.npy"), "--labels", str(tmp / "y.npy")], "expected numbers"),
        "too wide": ([str(tmp / "wide.npy"), "--labels", str(tmp / "y.npy")], f"at most {MAX_DIM}"),
        "truncated .npy": ([str(tmp / "cut.npy"), "--labels", str(tmp / "y.npy")], "truncated"),
        "no X": ([str(tmp / "noX.npz")], "expected the data as 'X'"),
        "labels past a byte": ([str(tmp / "bigy.npz")], "whole numbers 0..255"),
        "mixed sizes": ([str(mixed)], "every image must be of one size"),
        "not an image": ([str(tmp / "notimg")], "not a readable PNG/JPEG"),
        "a pickle that runs code": ([str(evil)], "not a readable CIFAR batch"),
        "not a data file": ([str(tmp / "plain.txt")], "not a .npy, .npz or IDX file"),
        "missing": ([str(tmp / "nowhere.npz")], "no such file"),
        "too few for K": ([str(tmp / "x.npy"), "--labels", str(tmp / "y.npy"), "--k", "40"], "must be below"),
    }


def test_every_bad_input_is_one_clear_error_naming_the_file_and_stores_nothing(tmp_path):
    """Through the real command: exit 1, one line naming the file and the problem, no traceback, and the
    database (which already holds an experiment) keeps only what it had."""
    cases = bad_inputs(tmp_path)
    url = f"sqlite:///{tmp_path / 'kept.db'}"
    engine = db.make_engine(url)
    db.init_db(engine)
    with db.transaction(db.session_factory(engine)) as s:
        db.create_experiment(session=s, config=StudyConfig(limit=300).as_json())
    env = {k: v for k, v in os.environ.items() if not k.startswith("AEKNN_")}
    for what, (data, words) in cases.items():
        p = subprocess.run([sys.executable, "-m", "cli", "run", "--db", url, "--epochs", "1", "--k", "20",
                            "--ks", "5", "--data", *data], capture_output=True, text=True, env=env, cwd=ROOT,
                           timeout=120)
        out = p.stdout + p.stderr
        assert p.returncode == 1 and "Traceback" not in out, (what, out)
        lines = [line for line in p.stderr.splitlines() if line.strip()]
        named = any(Path(a).name in lines[0] for a in data if "/" in a)  # the data's file, or its labels'
        assert len(lines) == 1 and words in lines[0] and named, (what, lines)
    with db.session_factory(engine)() as s:
        assert s.scalar(select(func.count()).select_from(db.Experiment)) == 1
        assert s.scalar(select(func.count()).select_from(db.DatasetRow)) == 0
    engine.dispose()


def test_the_config_takes_data_or_a_named_data_set_not_both():
    with pytest.raises(ValueError, match="not both"):
        StudyConfig(dataset="mnist", data="/x.npz")
    with pytest.raises(ValueError, match="labels: only with data"):
        StudyConfig(labels="/y.npy")
    with pytest.raises(ValueError, match="ks"):
        StudyConfig(data="/x.npz", k=20, ks=[30])
    cfg = StudyConfig(data="/x.npz", limit=70_000)  # your data may be larger than MNIST
    assert "dataset" not in cfg.as_json() and StudyConfig.model_validate(cfg.as_json()) == cfg


# ---------------------------------------------------------------- the study on your data


def run_in_process(tmp_path: Path, data_dir: Path, **fields) -> tuple[db.sessionmaker, int]:
    from common.study.datasets import read_data
    from common.study.run import run_experiment
    from common.study.runtime import Runtime
    from common.study.stages import record_experiment

    engine = db.make_engine(f"sqlite:///{tmp_path / 'study.db'}")
    db.init_db(engine)
    factory = db.session_factory(engine)
    cfg = StudyConfig(**fields)
    eid = record_experiment(factory, cfg)
    cache = tmp_path / "cache"
    run_experiment(Runtime(factory=factory, data_dir=data_dir, cache_dir=cache, device="cpu"), eid,
                   read_data(cfg, data_dir, cache) if cfg.data else None)
    return factory, eid


def test_an_npz_of_mnist_gives_the_named_data_sets_answer_bit_for_bit(tmp_path, data_dir, mnist):
    """``--data mnist5000.npz`` against ``--limit 5000``: every table, code, loss and metric identical."""
    from tests.test_workers import snapshot

    np.savez(tmp_path / "mnist5000.npz", X=mnist.images[:5000].reshape(-1, 28, 28), y=mnist.labels[:5000])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    fa, ea = run_in_process(tmp_path / "a", data_dir, limit=5000, epochs=1)
    fb, eb = run_in_process(tmp_path / "b", data_dir, data=str(tmp_path / "mnist5000.npz"), epochs=1)
    want, got = snapshot(fa, ea), snapshot(fb, eb)
    assert got["status"] == db.SUCCEEDED and len(got["tables"]) == 10 and len(got["metrics"]) > 1000
    assert got == want


@pytest.mark.parametrize("source", ["cifar", "folder", "vectors", "floats"])
def test_the_whole_study_runs_on_your_data_with_exact_tables_and_serves_its_pictures(source, tmp_path, data_dir):
    """A CIFAR-10 folder (3,072 values a sample), a folder of grey PNGs and plain vectors with labels: every
    model (UMAP and t-SNE too, on the CIFAR folder and the float vectors), both distances, the pixel tables
    equal to a float64 brute force, the codes' tables to one over the stored codes, and the API draws each
    sample as what it is."""
    from fastapi.testclient import TestClient

    from common.study import reads

    if source == "cifar":
        rgb, y = classes(400, 3072, 10, 3)
        write_cifar(tmp_path / "cifar", rgb.reshape(-1, 32, 32, 3), y)
        data, extra, size = tmp_path / "cifar", {}, (64, 64)
    elif source == "folder":
        grey, y = classes(300, 12 * 10, 3, 4)
        write_folder(tmp_path / "folder", grey.reshape(-1, 12, 10), y)
        data, extra, size = tmp_path / "folder", {}, (20, 24)
    elif source == "floats":  # feature vectors: float64, near ties, a constant column
        vec, y = classes(300, 40, 4, 6)
        vec = vec / 3.0 + 1000.0
        vec[:, 4] = 0.5
        vec[40:50] = vec[30] + np.random.default_rng(0).normal(size=(10, 40)) * 1e-12
        np.savez(tmp_path / "f.npz", X=vec, y=y)
        data, extra, size = tmp_path / "f.npz", {}, (14, 14)  # 40 -> 7 x 7
    else:
        vec, y = classes(300, 50, 4, 5)
        np.save(tmp_path / "v.npy", vec)
        np.save(tmp_path / "vy.npy", y)
        data, extra, size = tmp_path / "v.npy", {"labels": str(tmp_path / "vy.npy")}, (16, 16)  # 50 -> 8 x 8
    models = ["relu_mse", "linear_l1", "relu_keep", "pca"]
    if source in ("cifar", "floats"):  # the libraries' maps on wide colour images and on float vectors too
        models += ["umap", "tsne"]
    factory, eid = run_in_process(tmp_path, data_dir, data=str(data), epochs=2, k=30, ks=[5, 10], models=models,
                                  **extra)
    ds = read_source(data, extra.get("labels"))
    with factory() as s:
        exp = db.get_experiment(session=s, experiment_id=eid)
        assert exp.status == db.SUCCEEDED, exp.error
        n = len(ds.labels)
        for t in db.experiment_tables(session=s, experiment_id=eid):
            ids = db.load_table_ids(session=s, table_id=t.id, n=n, k=30, cols=30)
            if t.space == db.ORIGINAL and source == "floats":  # the float engine's one formula, in float64
                np.testing.assert_array_equal(ids, _sequential_brute(ds.images, t.distance, 30))
            elif t.space == db.ORIGINAL:
                np.testing.assert_array_equal(ids, brute_force(ds.images, 30, t.distance)[0])
            else:
                codes = reads.map_codes(s.get(db.ModelRow, t.model_id)).astype(np.float64)
                np.testing.assert_array_equal(ids, brute_force(codes, 30, t.distance)[0])
        assert len(db.experiment_tables(session=s, experiment_id=eid)) == 2 + 2 * len(models)
    from api.main import create_app
    from common.settings import Settings

    with TestClient(create_app(Settings(database_url=str(factory.kw["bind"].url)))) as client:
        r = client.get(f"/samples/7/image.png?experiment={eid}&scale=2")
        assert r.status_code == 200, r.text
        img = Image.open(io.BytesIO(r.content))
        assert img.size == size and img.mode == ("RGB" if source == "cifar" else "L")
        r = client.get(f"/samples/sprite.png?experiment={eid}&ids=1,2,3&scale=1")
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (3 * size[0] // 2, size[1] // 2)
        assert client.get(f"/experiments/{eid}/plots/reconstructions.png").status_code == 200
        same = (ds.images[:, None, :] == ds.images[None, :20, :]).all(axis=2)  # (N, 20): copies of the first 20
        i = int(np.flatnonzero(same.sum(axis=0) == 4)[0])  # a sample with three copies (a folder reorders them)
        r = client.get(f"/samples/{i}/neighbors?experiment={eid}&space=original&k=3")
        assert r.status_code == 200
        assert [nb["id"] for nb in r.json()["neighbors"]] == [j for j in np.flatnonzero(same[:, i]) if j != i]


# ---------------------------------------------------------------- uploads over REST


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.fixture
def uploads(engine):
    """The API on a fresh database (SQLite and PostgreSQL), with a small upload cap."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from common.settings import Settings

    settings = Settings(database_url=str(engine.url.render_as_string(hide_password=False)), max_upload=2_000_000)
    with TestClient(create_app(settings)) as client:
        yield client, db.session_factory(engine)


def test_an_uploaded_data_set_is_stored_once_listed_and_read_back(uploads):
    client, factory = uploads
    x, y = classes(120, 6 * 5, 3, 8)
    body = npz_bytes(X=x.reshape(-1, 6, 5), y=y)
    r = client.post("/datasets?name=my-cells", content=body)
    assert r.status_code == 201, r.text
    got = r.json()
    assert (got["name"], got["n"], got["shape"], got["classes"]) == ("my-cells", 120, [6, 5], 3)
    assert got["sha256"] == __import__("hashlib").sha256(body).hexdigest()
    again = client.post("/datasets?name=other-name", content=body)  # the same bytes: the same data set
    assert again.status_code == 200 and again.json()["id"] == got["id"] and again.json()["name"] == "my-cells"
    taken = client.post("/datasets?name=my-cells", content=npz_bytes(X=x, y=(y + 1) % 3))
    assert taken.status_code == 409 and "my-cells" in taken.json()["message"]
    assert [d["name"] for d in client.get("/datasets").json()] == ["my-cells"]
    assert client.get(f"/datasets/{got['id']}").json() == got == client.get("/datasets/my-cells").json()
    assert client.get("/datasets/nothing").status_code == 404
    from common.study.datasets import uploaded

    ds = uploaded(factory, "my-cells")
    np.testing.assert_array_equal(ds.images, x)
    np.testing.assert_array_equal(ds.labels, y)
    # a .npy alone: data without labels (every label metric of its studies absent)
    r = client.post("/datasets?name=unlabelled", content=_npy(x / 3.0))
    assert r.status_code == 201 and r.json()["classes"] is None and r.json()["shape"] == [30]
    assert uploaded(factory, "unlabelled").labelled is False


def test_every_bad_upload_is_a_clear_error_and_stores_nothing(uploads):
    client, factory = uploads
    x, y = classes(50, 12, 3, 9)
    nan = x.astype(np.float32)
    nan[1, 1] = np.nan
    full = npz_bytes(X=x, y=y)
    cases = {
        "NaN": (npz_bytes(X=nan, y=y), 422, "must be finite"),
        "wrong shape": (npz_bytes(X=x.ravel(), y=y), 422, "expected N x D"),
        "labels of another length": (npz_bytes(X=x, y=y[:-3]), 422, "one label per sample"),
        "truncated": (full[: len(full) // 2], 422, "not a readable .npz"),
        "not a file of arrays": (b"hello", 422, "not a .npy or .npz"),
        "empty": (b"", 422, "empty"),
        "past the cap": (b"\0" * 2_000_001, 413, "AEKNN_MAX_UPLOAD"),
    }
    for what, (body, status, words) in cases.items():
        r = client.post("/datasets?name=bad", content=body)
        assert r.status_code == status and words in r.json()["message"], (what, r.status_code, r.text)
    # a gigabyte streamed without a length (chunked): 413 once the cap is passed; nothing of it is kept
    def gigabyte():
        for _ in range(1024):
            yield b"\0" * (1 << 20)

    r = client.post("/datasets?name=huge", content=gigabyte())
    assert r.status_code == 413 and "AEKNN_MAX_UPLOAD" in r.json()["message"]
    for name, status in (("mnist", 422), ("no spaces", 422)):
        assert client.post(f"/datasets?name={name}", content=full).status_code == status
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(db.DatasetRow)) == 0
    # an experiment naming an upload that is not there, or too small for K: 422, nothing recorded
    r = client.post("/experiments", json={"dataset": "not-there", "epochs": 1})
    assert r.status_code == 422 and "not-there" in r.json()["message"], r.text
    assert client.post("/datasets?name=small", content=full).status_code == 201
    r = client.post("/experiments", json={"dataset": "small", "epochs": 1})  # K = 200 > N = 50
    assert r.status_code == 422 and "N=50" in r.json()["message"], r.text
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(db.Experiment)) == 0


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


# ---------------------------------------------------------------- float data, exact


@pytest.mark.parametrize("distance", ["l1", "l2"])
def test_float_data_tables_equal_a_float64_brute_force_with_near_ties(distance, tmp_path):
    """3,000 float vectors read as your data, full of near ties (pairs whose distances differ far below
    float32's resolution), copies and a constant column: every row of the table equals a float64 brute
    force (the sum over coordinates in order), and the near ties were really there."""
    from common.compute.neighbors import exact_knn

    rng = np.random.default_rng(12)
    x = rng.normal(size=(3000, 24)) + 50.0
    x[:, 5] = -3.25  # constant
    x[100:112] = x[7]  # copies
    for c in range(0, 3000, 150):  # near ties: a point and 9 neighbours nudged by 1e-11 around it
        x[c + 1:c + 10] = x[c] + rng.normal(size=(9, 24)) * 1e-11
    np.savez(tmp_path / "near.npz", X=x, y=np.arange(3000) % 5)
    ds = read_source(tmp_path / "near.npz")
    assert ds.images.dtype == np.float64
    got = exact_knn(ds.images, k=30, distance=distance)
    want = _sequential_brute(ds.images, distance, 30)
    np.testing.assert_array_equal(got.ids, want)
    d = np.sort(np.abs(x[:, None] - x[None, 0:3000:150]).sum(-1) if distance == "l1"
                else ((x[:, None] - x[None, 0:3000:150]) ** 2).sum(-1), axis=0)
    near = int((np.diff(d[1:11], axis=0) < 1e-9).sum())
    print(f"{distance}: {near} near ties among the first ten neighbours of 20 rows")
    assert near >= 150


def test_mnist_scaled_to_float_has_exact_rows_at_full_size(mnist):
    """All 60,000 MNIST images as float32 in [0, 1] (the float engine, not the byte paths): 200 random rows
    of the L2 and L1 tables against a float64 brute force over all 60,000."""
    from common.compute.neighbors import knn_rows, prepare

    x = (mnist.images / np.float32(255)).astype(np.float32)
    rows = np.sort(np.random.default_rng(3).choice(len(x), 200, replace=False))
    xd = x.astype(np.float64)
    for distance in ("l2", "l1"):
        space = prepare(x, distance)
        assert space.path == "f32+exact"
        got = np.concatenate([knn_rows(space, int(r), int(r) + 1, 50).ids for r in rows])
        for block in range(0, 200, 50):
            q = rows[block:block + 50]
            v = np.zeros((len(q), len(x)))
            xq = xd[q]
            for c0 in range(0, len(x), 2048):  # a few columns at a time, held in the cache over the coordinates
                xc, vc = xd[c0:c0 + 2048].T.copy(), v[:, c0:c0 + 2048]
                for j in range(x.shape[1]):  # the engine's one formula: coordinates in order, in float64
                    diff = xq[:, j, None] - xc[j]
                    vc += np.abs(diff) if distance == "l1" else diff * diff
            v[np.arange(len(q)), q] = np.inf
            want = np.lexsort((np.broadcast_to(np.arange(len(x)), v.shape), v), axis=1)[:, :50]
            np.testing.assert_array_equal(got[block:block + 50], want)


# ---------------------------------------------------------------- data without labels


def test_data_without_labels_runs_whole_and_every_label_metric_is_absent(tmp_path, data_dir):
    """An .npz without y: tables, codes and every metric that needs no label, exactly as with labels; no
    label-based metric is stored (none reads 0); the API says so by name (404), a sample's label is null,
    `aeknn metrics` prints the tables without the label ones, and the page draws it without a label table."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from common.settings import Settings
    from tests.test_workers import snapshot

    x, y = classes(300, 30, 3, 14)
    np.savez(tmp_path / "with.npz", X=x, y=y)
    np.savez(tmp_path / "without.npz", X=x)
    fields = {"epochs": 1, "k": 30, "ks": [5, 10], "models": ["relu_mse", "pca"]}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    fa, ea = run_in_process(tmp_path / "a", data_dir, data=str(tmp_path / "with.npz"), **fields)
    fb, eb = run_in_process(tmp_path / "b", data_dir, data=str(tmp_path / "without.npz"), **fields)
    want, got = snapshot(fa, ea), snapshot(fb, eb)
    label_metrics = {"knn_accuracy", "same_label_rate", "label_agreement_change", "label_agreement_distance",
                     "score_at_k_by_label"}
    assert got["status"] == db.SUCCEEDED
    assert got["tables"].keys() == want["tables"].keys()
    for key in want["tables"]:  # ids and distances as with labels; every stored label 0
        assert [(r[0], r[1], r[3]) for r in got["tables"][key]] == [(r[0], r[1], r[3]) for r in want["tables"][key]]
    assert got["models"] == want["models"]
    assert not {m for m, *_ in got["metrics"]} & label_metrics
    assert got["metrics"] == {key: v for key, v in want["metrics"].items() if key[0] not in label_metrics}
    with TestClient(create_app(Settings(database_url=str(fb.kw["bind"].url)))) as client:
        for route in ("knn_accuracy", "label_agreement", "score_at_k/by_label"):
            r = client.get(f"/metrics/{route}?experiment={eb}")
            assert r.status_code == 404 and "without labels" in r.json()["message"], (route, r.text)
        assert client.get(f"/metrics/score_at_k?experiment={eb}").status_code == 200
        assert client.get(f"/samples/3?experiment={eb}").json()["label"] is None
        nbrs = client.get(f"/samples/3/neighbors?experiment={eb}&space=original&k=5").json()
        assert nbrs["sample"]["label"] is None and {n["label"] for n in nbrs["neighbors"]} == {None}
        codes = client.get(f"/experiments/{eb}/codes?model=pca").json()
        assert codes["labels"] is None and len(codes["codes"]) == 300
        packed = client.get(f"/experiments/{eb}/codes.bin?model=pca")
        assert packed.headers["X-Labelled"] == "false" and len(packed.content) == 300 * 9
        both = client.get(f"/experiments/{eb}/compare?models=relu_mse,pca&k=5").json()
        assert both["by_label"] == {} and {d["label"] for d in both["differ_most"]} == {None}
    p = subprocess.run([sys.executable, "-m", "cli", "metrics", "--db", str(fb.kw["bind"].url)], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "score@k" in p.stdout and "trustworthiness" in p.stdout
    assert "kNN accuracy" not in p.stdout and "by label" not in p.stdout and "same-label" not in p.stdout

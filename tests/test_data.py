"""The loader against the facts in shared/data/mnist/SOURCE.md, and bad data directories."""

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from common.compute.data import load_dataset, reconstruction_ids
from common.errors import DataError

FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_mnist_matches_source_facts(mnist):
    assert mnist.images.shape == (60_000, 784) and mnist.images.dtype == np.uint8
    assert mnist.labels.shape == (60_000,)
    counts = np.bincount(mnist.labels)
    assert list(counts) == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert list(mnist.labels[:10]) == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist.images.mean() == pytest.approx(33.3184, abs=1e-4)
    assert mnist.images.std() == pytest.approx(78.5675, abs=1e-4)


def test_scaled_inputs_are_in_minus_one_one(mnist):
    x = mnist.scaled()[:100]
    assert x.min() == -1.0 and x.max() == 1.0
    assert float(x[0, 0]) == -1.0  # a 0 pixel


def test_limit_takes_the_first_samples(data_dir, tmp_path):
    ds = load_dataset("mnist", data_dir, tmp_path, limit=10)
    assert ds.n == 10 and list(ds.labels) == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    # first of each label present, in label order: 0 at id 1, 1 at 3, 2 at 5, 3 at 7, 4 at 2, 5 at 0, 9 at 4
    assert reconstruction_ids(ds.labels) == [1, 3, 5, 7, 2, 0, 4]


def test_test_split_matches_source_facts(data_dir, tmp_path):
    ds = load_dataset("mnist", data_dir, tmp_path, split="test")
    assert ds.images.shape == (10_000, 784) and ds.n == 10_000
    assert list(np.bincount(ds.labels)) == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert list(ds.labels[:10]) == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        load_dataset("mnist", data_dir, tmp_path, split="valid")


def _copy(data_dir, tmp_path):
    src = data_dir / "mnist" if (data_dir / "mnist").is_dir() else data_dir
    dst = tmp_path / "data"
    dst.mkdir()
    for f in FILES:
        shutil.copy(src / f, dst / f)
    return dst


def test_truncated_file_is_named(data_dir, tmp_path):
    d = _copy(data_dir, tmp_path)
    raw = (d / FILES[1]).read_bytes()
    (d / FILES[1]).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz.*(truncated|corrupt)"):
        load_dataset("mnist", d, tmp_path / "cache")


def test_short_payload_is_named(data_dir, tmp_path):
    d = _copy(data_dir, tmp_path)
    labels = gzip.decompress((d / FILES[1]).read_bytes())
    (d / FILES[1]).write_bytes(gzip.compress(labels[:-7]))  # a valid gzip, 7 labels short
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: 59993 data bytes .* expected 60000"):
        load_dataset("mnist", d, tmp_path / "cache")


def test_wrong_magic_is_named(data_dir, tmp_path):
    d = _copy(data_dir, tmp_path)
    images = bytearray(gzip.decompress((d / FILES[0]).read_bytes()))
    images[2:4] = (2049).to_bytes(2, "big")  # a label file's magic on the image file
    (d / FILES[0]).write_bytes(gzip.compress(bytes(images), compresslevel=1))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: wrong magic number 2049; expected .*2051"):
        load_dataset("mnist", d, tmp_path / "cache")


def test_garbage_file_is_named(data_dir, tmp_path):
    d = _copy(data_dir, tmp_path)
    (d / FILES[2]).write_bytes(b"not a gzip file at all")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist", d, tmp_path / "cache")


def test_missing_files_offline_name_them_and_where_to_put_them(data_dir, tmp_path):
    d = _copy(data_dir, tmp_path)
    (d / FILES[0]).unlink()
    with pytest.raises(DataError) as err:
        load_dataset("mnist", d, tmp_path / "cache")
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz" in msg and "AEKNN_DATA_DIR" in msg
    assert "train-labels" not in msg  # only what is missing


def test_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match="unknown data set 'cifar'"):
        load_dataset("cifar", tmp_path, tmp_path)


def test_files_in_a_flat_folder_are_found(data_dir, tmp_path):
    d = _copy(data_dir, tmp_path)  # flat: <dir>/train-images-idx3-ubyte.gz
    ds = load_dataset("mnist", d, tmp_path / "cache", limit=5)
    assert list(ds.labels) == [5, 0, 4, 1, 9]


FASHION = Path("/usr/share/datasets")  # Debian's dataset-fashion-mnist (.ci/run installs it)


@pytest.mark.skipif(not (FASHION / "fashion-mnist").is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_from_the_debian_package(tmp_path):
    ds = load_dataset("fashion-mnist", FASHION, tmp_path)
    assert ds.images.shape == (60_000, 784) and ds.name == "fashion-mnist"
    assert list(np.bincount(ds.labels)) == [6000] * 10  # Fashion-MNIST's training split is balanced


def test_staging_the_same_files_from_many_processes_at_once_is_safe(data_dir, tmp_path):
    """Two workers preparing two experiments stage the same files into one cache at the same moment."""
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from common.compute.data import load_dataset; "
            "ds = load_dataset('mnist', Path(sys.argv[1]), Path(sys.argv[2]), 500); print(ds.labels[:3].tolist())")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(data_dir), str(tmp_path / "cache")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-500:] for _, e in outs]
    assert {o.strip() for o, _ in outs} == {"[5, 0, 4]"}
    assert not list((tmp_path / "cache").rglob("*.tmp"))

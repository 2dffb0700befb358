"""The data sets: MNIST and Fashion-MNIST training splits.

Files are looked for in the data directory first (offline) and read directly; torchvision downloads
them only when they are nowhere to be found. Every file is checked against the IDX format (magic number, shape,
length) before use, so a truncated or corrupt file is reported by name instead of failing deep
inside torchvision. Imports numpy; torch for scaled(), torchvision for a download.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.compute.names import DATASETS
from common.errors import DataError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049
SIDE = 28
DIM = SIDE * SIDE



@dataclass(frozen=True)
class IdxSpec:
    """What one IDX file must hold."""

    name: str  # file name without .gz, as torchvision expects it
    magic: int
    shape: tuple[int, ...]


def idx_specs(dataset: str) -> list[IdxSpec]:
    _, n_train, n_test = DATASETS[dataset]
    return [
        IdxSpec("train-images-idx3-ubyte", IMAGE_MAGIC, (n_train, SIDE, SIDE)),
        IdxSpec("train-labels-idx1-ubyte", LABEL_MAGIC, (n_train,)),
        IdxSpec("t10k-images-idx3-ubyte", IMAGE_MAGIC, (n_test, SIDE, SIDE)),
        IdxSpec("t10k-labels-idx1-ubyte", LABEL_MAGIC, (n_test,)),
    ]


@dataclass(frozen=True)
class Dataset:
    """A training split: pixels as bytes (exact integer distances) and labels."""

    name: str
    images: np.ndarray  # (N, D) uint8: (N, 784) for MNIST; float32 or float64 for your float data
    labels: np.ndarray  # (N,) uint8
    shape: tuple[int, ...] = (SIDE, SIDE)  # one sample's: (H, W) grey, (H, W, C) colour, or (D,) values
    labelled: bool = True  # False: your data came without labels (labels all 0, every label metric absent)

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    def scaled(self) -> torch.Tensor:
        """Inputs scaled to [-1, 1], the range of the tanh decoder: bytes as x/255*2-1, float data by their
        smallest and largest value. (N, D) float32."""
        import torch  # here: reading and checking data (the API's uploads) needs numpy only

        if self.images.dtype == np.uint8:
            return torch.from_numpy(self.images).float().div_(255.0).mul_(2.0).sub_(1.0)
        from common.compute.pictures import unit_scaled

        return torch.from_numpy(unit_scaled(self.images, self.images))


def check_idx_file(path: Path, spec: IdxSpec) -> None:
    """Raise DataError unless ``path`` (raw or .gz) is a complete IDX file as ``spec`` describes."""
    opener = gzip.open if path.suffix == ".gz" else open
    expected = f"an IDX file with magic {spec.magic} and shape {'x'.join(map(str, spec.shape))}"
    try:
        with opener(path, "rb") as f:
            header = f.read(4)
            if len(header) < 4:
                raise DataError(f"{path}: file is empty or truncated; expected {expected}")
            magic = struct.unpack(">i", header)[0]
            if magic != spec.magic:
                raise DataError(f"{path}: wrong magic number {magic}; expected {expected}")
            ndim = header[3]
            dims = struct.unpack(f">{ndim}i", f.read(4 * ndim))
            if tuple(dims) != spec.shape:
                raise DataError(f"{path}: shape {dims}; expected {expected}")
            want = int(np.prod(spec.shape))
            got = 0
            while chunk := f.read(1 << 22):
                got += len(chunk)
    except DataError:
        raise
    except (OSError, EOFError, zlib.error, struct.error) as exc:
        raise DataError(f"{path}: unreadable, truncated or corrupt ({exc}); expected {expected}") from exc
    if got != want:
        raise DataError(f"{path}: {got} data bytes after the header, expected {want} ({expected}); "
                        "the file is truncated or padded")


def _find(data_dir: Path, dataset: str, name: str) -> Path | None:
    """A data file by its torchvision name, raw or gzipped, in the usual places under data_dir."""
    cls = DATASETS[dataset][0]
    for folder in (data_dir / cls / "raw", data_dir / dataset, data_dir):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def stage_files(dataset: str, data_dir: Path, cache_dir: Path) -> Path:
    """Put the data set's files found under data_dir into a torchvision root inside cache_dir.

    Returns the torchvision root. Each file found is validated (DataError names a bad one) and
    staged uncompressed, so torchvision uses it as it is: its MD5 list knows only the original
    archives, and a recompressed but identical file (Debian's Fashion-MNIST) would send it to the
    network. Files not found are left for torchvision to download.
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown data set {dataset!r}; expected one of {sorted(DATASETS)}")
    raw = cache_dir / DATASETS[dataset][0] / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for spec in idx_specs(dataset):
        src = _find(data_dir, dataset, spec.name)
        if src is None:
            continue
        check_idx_file(src, spec)
        dst = raw / spec.name
        # every write goes to a name of its own and is renamed into place (atomic): two processes staging
        # the same files at once (two workers preparing two experiments) never trip over each other
        tmp = raw / f".{spec.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        if src.suffix != ".gz":
            if dst.resolve() != src.resolve():
                tmp.unlink(missing_ok=True)
                os.symlink(src.resolve(), tmp)
                os.replace(tmp, dst)
            continue
        if dst.is_file() and not dst.is_symlink() and dst.stat().st_mtime >= src.stat().st_mtime:
            continue  # extracted before from this file
        with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(1 << 22):
                fout.write(chunk)
        os.replace(tmp, dst)  # a half-written file is never taken for the data
    return cache_dir


def load_dataset(dataset: str, data_dir: Path, cache_dir: Path, limit: int | None = None,
                 split: str = "train") -> Dataset:
    """The training split of ``dataset`` (first ``limit`` samples), or with ``split="test"`` its test split.

    Files found under data_dir are validated, staged and read directly (no torchvision import: it
    costs a process about 170 MB); torchvision downloads whatever is missing."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    root = stage_files(dataset, data_dir, cache_dir)
    raw = root / DATASETS[dataset][0] / "raw"
    train = idx_specs(dataset)[:2] if split == "train" else idx_specs(dataset)[2:]  # images, labels
    if not all((raw / spec.name).is_file() for spec in train):
        _download(dataset, data_dir, root)
        for spec in train:
            check_idx_file(raw / spec.name, spec)
    images = _read_idx(raw / train[0].name, train[0]).reshape(-1, DIM)
    labels = _read_idx(raw / train[1].name, train[1])
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return Dataset(dataset, np.ascontiguousarray(images), np.ascontiguousarray(labels))


def _read_idx(path: Path, spec: IdxSpec) -> np.ndarray:
    """The data of a validated, uncompressed IDX file (big-endian header, then bytes)."""
    return np.fromfile(path, dtype=np.uint8, offset=4 + 4 * len(spec.shape)).reshape(spec.shape)


def _download(dataset: str, data_dir: Path, root: Path) -> None:
    """torchvision's download of the files not found (it skips those already staged)."""
    from torchvision import datasets as tv  # heavy import, only when something is missing

    cls = getattr(tv, DATASETS[dataset][0])
    try:
        cls(str(root), train=True, download=True)
    except Exception as exc:  # torchvision raises bare RuntimeError / URLError when offline
        missing = [s.name + ".gz" for s in idx_specs(dataset) if _find(data_dir, dataset, s.name) is None]
        raise DataError(
            f"{dataset}: files {missing} are not in {data_dir} (looked in {data_dir}, "
            f"{data_dir / dataset} and {data_dir / DATASETS[dataset][0] / 'raw'}) and could not be "
            f"downloaded ({exc}). Put the four IDX .gz files in {data_dir / dataset} or set "
            "AEKNN_DATA_DIR / --data-dir to the folder that holds them."
        ) from exc


def reconstruction_ids(labels: np.ndarray) -> list[int]:
    """The fixed samples whose reconstructions are kept: the first of each label present."""
    return [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)]

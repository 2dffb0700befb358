"""Your data: a data set read from a file or folder on disk (``aeknn run --data PATH``, the config's "data").

What is read, each into a :class:`~common.compute.data.Dataset` of (N, D) bytes and (N,) labels:

- ``.npy``: N x D, N x H x W or N x H x W x C, labels from a second ``.npy`` (``labels``);
- ``.npz``: arrays ``X`` and ``y``;
- an IDX file of any shape (raw or ``.gz``), labels from a second IDX file;
- a folder of PNG/JPEG images with one subfolder per class (labels: the classes in name order), all of
  one size;
- a CIFAR-10 or CIFAR-100 folder in the published python format (``data_batch_1..5``/``test_batch``, or
  ``train``/``test``), or the folder holding it; or asked for by name (``cifar10``, ``cifar100``): found in
  the data directory or downloaded there by torchvision (:func:`locate`).

Whole numbers in 0..255 (of any integer or float type) are taken as bytes, whose distances the exact integer
engines compute; any other finite numbers (feature vectors, profiles) as float64 (float32 data as float32),
whose tables the float engine makes exact: a float32 pass with a proven error bound, then float64.
Everything is checked before any work starts and a bad file is a DataError naming it and what was expected.
A data set is named by its file's name and a hash of its content, so the same data read twice is one data set.
Imports only numpy (and Pillow for image folders): the API reads uploads with it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from common.compute.data import Dataset
from common.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_CLASSES = 256  # labels are stored as bytes
# CIFAR asked for by name (--data cifar10): torchvision's class and the folder its archive unpacks to
CIFAR_NAMES = {"cifar10": ("CIFAR10", "cifar-10-batches-py"), "cifar100": ("CIFAR100", "cifar-100-python")}
CIFAR_TRAIN = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
NAME_LENGTH = 32  # the database's data set names
# values per sample: an L2 score |b|^2 - 2 a.b of bytes shifted to -128..127 stays an exact int32 below this
MAX_DIM = (2**31 - 1) // (3 * 128 * 128)


def read_upload(f: BinaryIO, name: str, what: str = "the body") -> Dataset:
    """An uploaded ``.npz`` (arrays ``X`` and ``y``) or ``.npy`` file (a binary file at its start), checked as a
    file on disk is; DataError says what is wrong, naming ``what``. Never unpickles."""
    head = f.read(6)
    f.seek(0)
    label = Path(what)
    if head[:4] == b"PK\x03\x04":
        x, y = _read_npz(f, what)
    elif head == b"\x93NUMPY":
        x, y = _read_npy(f, what), None
    else:
        raise DataError(f"{what}: not a .npy or .npz file (an .npz of arrays X and y: numpy.savez)" if head
                        else f"{what}: empty; expected an .npz of arrays X and y")
    images, shape = _as_values(x, label)
    if y is None:  # no labels: every label-based metric is absent, the rest as with them
        return Dataset(name=name, images=images, labels=np.zeros(len(images), np.uint8), shape=shape,
                       labelled=False)
    return Dataset(name=name, images=images, labels=_as_labels(y, label, len(images)), shape=shape)


def locate(data: str, data_dir: Path, cache_dir: Path) -> Path:
    """The path ``data`` names: itself, or for ``cifar10``/``cifar100`` (when no such path exists) the
    published python folder, looked for in ``data_dir``, ``data_dir/<name>`` and ``cache_dir``, and
    downloaded into ``cache_dir`` by torchvision (which checks the archive's MD5) when it is in none."""
    if data not in CIFAR_NAMES or Path(data).exists():
        return Path(data)
    cls, folder = CIFAR_NAMES[data]
    places = [data_dir / folder, data_dir / data / folder, cache_dir / folder]
    for p in places:
        if _cifar_folder(p) is not None:
            return p
    try:
        from torchvision import datasets as tv  # heavy import, only for a download

        cache_dir.mkdir(parents=True, exist_ok=True)
        getattr(tv, cls)(str(cache_dir), train=True, download=True)
    except Exception as exc:  # torchvision raises bare RuntimeError / URLError when offline
        raise DataError(f"{data}: its python folder {folder} is not in {', '.join(map(str, places[:2]))} and "
                        f"could not be downloaded ({exc}). Unpack {folder}.tar.gz's archive into "
                        f"{data_dir} or give --data the folder's path") from exc
    return cache_dir / folder


def read_source(path: Path | str, labels: Path | str | None = None, split: str = "train") -> Dataset:
    """The data set at ``path`` (with ``labels`` from a second file for ``.npy`` and IDX data); ``split``
    picks a CIFAR folder's training or test batches."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; expected a .npy, .npz or IDX file, a folder of "
                        "images with one subfolder per class, or a CIFAR-10/100 python folder")
    if path.is_dir():
        if labels is not None:
            raise DataError(f"{path}: a folder brings its own labels; --labels is for .npy and IDX files")
        cifar = _cifar_folder(path)
        x, y = (_read_cifar(cifar, split) if cifar is not None else _read_image_folder(path))
    elif path.suffix == ".npz":
        if labels is not None:
            raise DataError(f"{path}: an .npz brings its labels as its array 'y'; --labels is for .npy and "
                            "IDX files")
        x, y = _read_npz(path)
    elif path.suffix == ".npy":
        x, y = _read_npy(path, "the data"), None
        if labels is not None:
            y = _read_npy(Path(labels), "the labels")
    elif _is_idx(path):
        x, y = _read_idx_any(path), None
        if labels is not None:
            y = _read_idx_any(Path(labels))
    else:
        raise DataError(f"{path}: not a .npy, .npz or IDX file; expected one of those, a folder of images "
                        "with one subfolder per class, or a CIFAR-10/100 python folder")
    images, shape = _as_values(x, path)
    if y is None:  # no labels: every label-based metric is absent, the rest as with them
        return Dataset(name=_name(path, images, shape, None), images=images,
                       labels=np.zeros(len(images), np.uint8), shape=shape, labelled=False)
    return Dataset(name=_name(path, images, shape, y), images=images, labels=_as_labels(y, labels or path,
                                                                                         len(images)),
                   shape=shape)


# ---------------------------------------------------------------- checks


def _as_values(x: np.ndarray, path: Path) -> tuple[np.ndarray, tuple[int, ...]]:
    """(N, D) rows and one sample's shape, or a DataError saying what is wrong. Whole numbers in 0..255 (of any
    type) become bytes, for the exact integer paths; other numbers float64 (float32 data stay float32), whose
    tables are exact through common/compute/neighbors.py's proven float pass."""
    if x.ndim not in (2, 3, 4):
        raise DataError(f"{path}: an array of shape {x.shape}; expected N x D, N x H x W or N x H x W x C")
    if x.ndim == 4 and x.shape[3] not in (1, 3, 4):
        raise DataError(f"{path}: an array of shape {x.shape}; N x H x W x C images have 1, 3 or 4 channels")
    if x.shape[0] < 2 or int(np.prod(x.shape[1:])) < 1:
        raise DataError(f"{path}: an array of shape {x.shape}; expected at least 2 samples of at least 1 value")
    if x.dtype.kind not in "uifb":
        raise DataError(f"{path}: values of type {x.dtype}; expected numbers")
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x)
        if bad.any():
            i = np.argwhere(bad)[0]
            raise DataError(f"{path}: value {x[tuple(i)]} at index {tuple(int(v) for v in i)}; every value must "
                            "be finite")
    x = np.asarray(x)
    as_bytes = x.dtype == np.uint8 or (x.min() >= 0 and x.max() <= 255 and (x.dtype.kind != "f" or bool(
        np.all(np.floor(x) == x))))
    if as_bytes and int(np.prod(x.shape[1:])) > MAX_DIM:
        raise DataError(f"{path}: {int(np.prod(x.shape[1:]))} values per sample; the exact integer engines take at "
                        f"most {MAX_DIM}")
    if x.dtype.kind in "iu" and not as_bytes and np.abs(x).max() > 2**53:
        raise DataError(f"{path}: integers up to {np.abs(x).max()}; float64 holds them exactly only to 2^53")
    dtype = np.uint8 if as_bytes else (np.float32 if x.dtype == np.float32 or x.dtype == np.float16 else np.float64)
    shape = tuple(int(v) for v in x.shape[1:])
    if len(shape) == 3 and shape[2] == 1:
        shape = shape[:2]
    images = np.ascontiguousarray(x.reshape(x.shape[0], -1).astype(dtype, copy=False))
    return images, shape


def _as_labels(y: np.ndarray, path: Path | str, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != n:
        raise DataError(f"{path}: labels of shape {y.shape}; expected one label per sample: ({n},)")
    if y.dtype.kind not in "uif" or (y.dtype.kind == "f" and not np.all(np.isfinite(y))):
        raise DataError(f"{path}: labels of type {y.dtype}; expected whole numbers 0..{MAX_CLASSES - 1}")
    if y.min() < 0 or y.max() >= MAX_CLASSES or (y.dtype.kind == "f" and not np.all(np.floor(y) == y)):
        raise DataError(f"{path}: labels from {y.min()} to {y.max()}; expected whole numbers 0..{MAX_CLASSES - 1}")
    return np.ascontiguousarray(y.astype(np.uint8))


def _name(path: Path, images: np.ndarray, shape: tuple[int, ...], labels: np.ndarray | None) -> str:
    """The file's name (cut) and 12 hex digits of the SHA-256 of the content: one name per data set."""
    h = hashlib.sha256()
    h.update(repr((shape, images.dtype.name)).encode())
    h.update(images.data)
    h.update(b"no labels" if labels is None else np.asarray(labels).astype(np.int64).tobytes())
    stem = (path.name.split(".")[0] or "data")[: NAME_LENGTH - 13]
    return f"{stem}-{h.hexdigest()[:12]}"


# ---------------------------------------------------------------- files


def _read_npy(path: Path | BinaryIO, what: str) -> np.ndarray:
    if isinstance(path, Path) and not path.is_file():
        raise DataError(f"{path}: no such file ({what})")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        where = path if isinstance(path, Path) else what
        raise DataError(f"{where}: not a readable .npy file ({exc}); expected {what} as a NumPy array "
                        "(a truncated file reads like this)") from exc


def _read_npz(path: Path | BinaryIO, what: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    what = what or str(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if "X" not in z.files:
                raise DataError(f"{what}: arrays {z.files}; expected the data as 'X' (and the labels as 'y')")
            return z["X"], (z["y"] if "y" in z.files else None)
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zlib.error, KeyError, zipfile.BadZipFile) as exc:
        raise DataError(f"{what}: not a readable .npz file ({exc}); expected arrays 'X' and 'y' "
                        "(a truncated file reads like this)") from exc


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _is_idx(path: Path) -> bool:
    try:
        with _open(path) as f:
            head = f.read(4)
    except (OSError, EOFError, zlib.error):
        return False
    return len(head) == 4 and head[:2] == b"\0\0" and head[2] in IDX_DTYPES and 1 <= head[3] <= 4


def _read_idx_any(path: Path) -> np.ndarray:
    """An IDX file of any shape and type (the header says which)."""
    try:
        with _open(path) as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in IDX_DTYPES or not 1 <= head[3] <= 4:
                raise DataError(f"{path}: not an IDX file (its first four bytes are {head!r})")
            ndim = head[3]
            dims = struct.unpack(f">{ndim}i", f.read(4 * ndim))
            dtype = np.dtype(IDX_DTYPES[head[2]])
            want = int(np.prod(dims)) * dtype.itemsize
            data = f.read()
    except DataError:
        raise
    except (OSError, EOFError, zlib.error, struct.error) as exc:
        raise DataError(f"{path}: unreadable, truncated or corrupt IDX file ({exc})") from exc
    if len(data) != want:
        raise DataError(f"{path}: {len(data)} data bytes after the header; its shape {'x'.join(map(str, dims))} "
                        f"of {dtype} needs {want} (the file is truncated or padded)")
    return np.frombuffer(data, dtype).reshape(dims)


# ---------------------------------------------------------------- folders


def _read_image_folder(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images in one subfolder per class; every image of one size (and grey unless one has colour)."""
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{path}: a folder without subfolders; expected one subfolder of PNG/JPEG images per "
                        "class (or a CIFAR-10/100 python folder)")
    if len(classes) > MAX_CLASSES:
        raise DataError(f"{path}: {len(classes)} class subfolders; at most {MAX_CLASSES}")
    files = [(f, c) for c, folder in enumerate(classes) for f in sorted(folder.iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
    if len(files) < 2:
        raise DataError(f"{path}: {len(files)} PNG/JPEG images in its class subfolders; expected at least 2")
    pictures, size, first = [], None, None
    for f, _ in files:
        try:
            with Image.open(f) as im:
                im.load()
                pictures.append(im.copy())
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{f}: not a readable PNG/JPEG image ({exc})") from exc
        if size is None:
            size, first = pictures[-1].size, f
        elif pictures[-1].size != size:
            w, h = pictures[-1].size
            raise DataError(f"{f}: {w} x {h} pixels, but {first} is {size[0]} x {size[1]}; every image must be "
                            "of one size")
    grey = all(im.mode in ("L", "1", "I;16", "I", "F") or (im.mode == "P" and _grey_palette(im))
               for im in pictures)
    mode = "L" if grey else "RGB"
    x = np.stack([np.asarray(im.convert(mode), np.uint8) for im in pictures])
    return x, np.array([c for _, c in files], np.int64)


def _grey_palette(im) -> bool:
    rgb = np.asarray(im.convert("RGB"), np.int16)
    return bool(np.all(rgb[..., 0] == rgb[..., 1]) and np.all(rgb[..., 1] == rgb[..., 2]))


def has_test_split(path: Path | str) -> bool:
    """Whether the data at ``path`` has a held-out test split that aeknn reads: a CIFAR python folder."""
    path = Path(path)
    return path.is_dir() and _cifar_folder(path) is not None


def _cifar_folder(path: Path) -> Path | None:
    """The folder holding CIFAR's python batches: ``path`` or its cifar-10-batches-py / cifar-100-python."""
    for p in (path, path / "cifar-10-batches-py", path / "cifar-100-python"):
        if (p / "data_batch_1").is_file() or (p / "test_batch").is_file() or (p / "train").is_file():
            return p
    return None


class _ArraysOnly(pickle.Unpickler):
    """CIFAR's batches are pickles: read them allowing nothing but NumPy arrays to be built (a pickle can
    run any code otherwise)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):  # type: ignore[no-untyped-def]
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def _read_cifar(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The training (or test) batches of a CIFAR-10 (``data_batch_*``) or CIFAR-100 (``train``) folder, as
    N x 32 x 32 x 3 images and their (fine) labels."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    if (folder / "train").is_file() or (folder / "test").is_file():
        names = ["train"] if split == "train" else ["test"]
    else:
        names = list(CIFAR_TRAIN) if split == "train" else ["test_batch"]
    xs, ys = [], []
    for name in names:
        f = folder / name
        if not f.is_file():
            raise DataError(f"{f}: missing; a CIFAR-10 folder holds data_batch_1..5 and test_batch, a CIFAR-100 "
                            "folder train and test")
        try:
            with open(f, "rb") as fh:
                batch = _ArraysOnly(io.BytesIO(fh.read()), encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError) as exc:
            raise DataError(f"{f}: not a readable CIFAR batch ({exc})") from exc
        if not isinstance(batch, dict):
            raise DataError(f"{f}: not a CIFAR batch (a {type(batch).__name__}, expected a dict)")
        data = batch.get(b"data")
        labels = batch.get(b"labels", batch.get(b"fine_labels"))
        if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 or labels is None:
            raise DataError(f"{f}: not a CIFAR batch (expected b'data' of N x 3072 bytes and b'labels' or "
                            "b'fine_labels')")
        if len(labels) != len(data):
            raise DataError(f"{f}: {len(labels)} labels for {len(data)} images")
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # channels last, as images are shown
        ys.append(np.asarray(labels, np.int64))
    return np.concatenate(xs), np.concatenate(ys)

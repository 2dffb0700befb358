"""New images: brought to the data's format, and their exact nearest samples in pixel space and code space.

- :func:`prepare`: an image (decoded by Pillow) made into one of the data set's samples as its own were
  made. For 28 x 28 grey data (MNIST's format): grey, light ink on a dark ground (a light ground is
  inverted), the ink's bounding box scaled to fit 20 x 20 and placed in 28 x 28 so that its centre of
  mass falls on the centre (LeCun et al.). Other images: resized to the data's size and mode. Raw arrays
  of the data's shape are taken as they are.
- :class:`Pixels`: the data set's rows, searched exactly for query rows: integer squared L2 and L1 for bytes
  (common/compute/_l1.c, AVX2 or AVX-512), float64 sums for float data; ties to the lower id, as in the tables.
- :func:`code_neighbors`: the same in a 2-D code space, with the tables' float64 formula.
- :func:`cross_table`: many query rows at once (the held-out test split against the training samples), a
  block of rows at a time: each row's k nearest ids, ties to the lower id, as the tables order them.

Imports numpy and Pillow; torch and the C kernels only when :class:`Pixels` is built (the encoder
process, never the web process).
"""

from __future__ import annotations

import io

import numpy as np

from common.compute.names import DEFAULT_K, PIXEL_UNIT
from common.errors import DataError

MAX_PIXELS = 4096  # an image's width or height at most
MAX_IMAGE_BYTES = 4 * 1024 * 1024  # an encoded image's size at most
MAX_IMAGES = 256  # per request
BOX, SIDE = 20, 28  # MNIST: the digit's box fits 20 x 20, centred by mass in 28 x 28


class TooLarge(DataError):
    """An image past MAX_IMAGE_BYTES (the API answers 413)."""


def decode(data: bytes, what: str) -> Image.Image:  # noqa: F821 (Pillow, imported here)
    """A PNG or JPEG image, or a DataError naming ``what`` and why."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > MAX_IMAGE_BYTES:
        raise TooLarge(f"{what}: {len(data)} bytes; an image is at most {MAX_IMAGE_BYTES} bytes (4 MB)")
    try:
        im = Image.open(io.BytesIO(data))
        if im.format not in ("PNG", "JPEG"):
            raise DataError(f"{what}: a {im.format} image; expected PNG or JPEG")
        if max(im.size) > MAX_PIXELS:
            raise DataError(f"{what}: {im.size[0]} x {im.size[1]} pixels; at most {MAX_PIXELS} a side")
        im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{what}: not a readable PNG or JPEG image ({exc})") from exc
    except Image.DecompressionBombError as exc:
        raise DataError(f"{what}: too many pixels ({exc})") from exc
    return im


def _grey(im) -> np.ndarray:
    """Grey values 0..255 (float64). A transparent ground is dark under light strokes (a drawing pad's) and
    light under dark ones."""
    from PIL import Image

    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"))
        strokes = np.asarray(rgba.convert("L"))[alpha > 127]
        light = strokes.size > 0 and strokes.mean() > 127
        ground = Image.new("RGBA", rgba.size, (0, 0, 0, 255) if light else (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(ground, rgba).convert("L"), np.float64)
    return np.asarray(im.convert("L"), np.float64)


def mnist_format(grey: np.ndarray, what: str) -> np.ndarray:
    """A grey image (any size, 0..255) as MNIST made its digits: (28, 28) uint8. One already 28 x 28 is
    taken as it is (inverted only if its ground is light): MNIST's own images come back unchanged."""
    from PIL import Image

    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if border.mean() > 127:
        grey = 255 - grey  # dark ink on a light ground: MNIST's digits are light on black
    ink = grey > 0.1 * 255
    if not ink.any() or grey.max() - grey.min() < 16:
        raise DataError(f"{what}: a blank image (no stroke to place)")
    if grey.shape == (SIDE, SIDE):
        return grey.round().clip(0, 255).astype(np.uint8)
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    box = grey[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
    h, w = box.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(box.clip(0, 255).astype(np.uint8)).resize(size, Image.LANCZOS),
                       np.float64)
    mass = small.sum()
    cy = (small.sum(1) * np.arange(small.shape[0])).sum() / mass
    cx = (small.sum(0) * np.arange(small.shape[1])).sum() / mass
    top = int(np.clip(round(SIDE / 2 - 0.5 - cy), 0, SIDE - small.shape[0]))
    left = int(np.clip(round(SIDE / 2 - 0.5 - cx), 0, SIDE - small.shape[1]))
    out = np.zeros((SIDE, SIDE), np.float64)
    out[top: top + small.shape[0], left: left + small.shape[1]] = small
    return out.round().clip(0, 255).astype(np.uint8)


def prepare(im, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A decoded image as one sample of data of one sample's ``shape``: (D,) uint8."""
    from PIL import Image

    if len(shape) == 1:
        raise DataError(f"{what}: this experiment's samples are vectors of {shape[0]} values, not images; send "
                        "them as arrays (JSON or .npy)")
    if shape == (SIDE, SIDE):
        return mnist_format(_grey(im), what).reshape(-1)
    h, w = shape[:2]
    if len(shape) == 2:
        grey = _grey(im)
        if grey.max() - grey.min() < 1:
            raise DataError(f"{what}: a blank image (every pixel {int(grey.max())})")
        out = Image.fromarray(grey.round().astype(np.uint8)).resize((w, h), Image.LANCZOS)
    else:
        rgb = im.convert("RGB")
        if np.ptp(np.asarray(rgb)) < 1:
            raise DataError(f"{what}: a blank image")
        out = rgb.resize((w, h), Image.LANCZOS)
    return np.asarray(out, np.uint8).reshape(-1)


def as_rows(values: np.ndarray, shape: tuple[int, ...], dtype: np.dtype, what: str) -> np.ndarray:
    """Raw samples (M, *shape) or one (*shape) as (M, D) rows of the data's type, or a DataError."""
    a = np.asarray(values)
    if a.dtype == object or a.dtype.kind not in "biuf":
        raise DataError(f"{what}: not numbers (a {a.dtype} array)")
    if tuple(a.shape) == tuple(shape):
        a = a[None]
    if a.ndim < 1 or tuple(a.shape[1:]) != tuple(shape):
        raise DataError(f"{what}: shape {tuple(a.shape)}; expected {tuple(shape)} or (M, {', '.join(map(str, shape))})")
    if len(a) == 0:
        raise DataError(f"{what}: no samples")
    if len(a) > MAX_IMAGES:
        raise DataError(f"{what}: {len(a)} samples; at most {MAX_IMAGES} a request")
    if not np.isfinite(a.astype(np.float64)).all():
        raise DataError(f"{what}: NaN or infinite values")
    rows = a.reshape(len(a), -1)
    if np.dtype(dtype) == np.uint8:
        if (rows < 0).any() or (rows > 255).any() or (rows != np.round(rows)).any():
            raise DataError(f"{what}: this experiment's samples are bytes; expected whole numbers in 0..255")
        return rows.astype(np.uint8)
    return rows.astype(dtype)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """The ids of the k smallest scores, ties to the lower id."""
    kth = np.partition(scores, k - 1)[k - 1]
    cand = np.flatnonzero(scores <= kth)
    return cand[np.lexsort((cand, scores[cand]))][:k]


class Pixels:
    """Exact pixel-space neighbours of new rows among a data set's ``x`` (N, D)."""

    def __init__(self, x: np.ndarray, kernel: str | None = None) -> None:
        """``kernel``: AEKNN_KERNEL, whose L1 path (sad-avx512, sad-avx2, sad-portable) is used when it names
        one; otherwise the fastest here."""
        self.x, self.n = x, x.shape[0]
        # bytes whose squared L2 fits int32 go through the C kernels; float data and wider rows (past 33,025
        # bytes) through code_neighbors' float64 formula, row by row (exact for integers below 2^53)
        self.bytes = x.dtype == np.uint8 and x.shape[1] * 255 * 255 < 2**31
        if self.bytes:
            from common.compute import neighbors as nb

            self.width = -(-x.shape[1] // 64) * 64  # the C kernels' rows: whole 64-byte vectors, zero padded
            self.padded = np.zeros((self.n, self.width), np.uint8)
            self.padded[:, : x.shape[1]] = x
            path = nb.choose_pixel_path(x[: min(self.n, 4096)], "l1", kernel=kernel)
            self.isa = path[len("sad-"):] if path.startswith("sad-") else nb.pixel_paths("l1", x.shape[1])[0][4:]

    def scores(self, q: np.ndarray, distance: str) -> np.ndarray:
        """(M, N) exact int64 squared L2 or L1 of byte rows ``q`` against every sample: one pass of
        common/compute/_l1.c's kernels over the samples per row (AVX2 or AVX-512; plain C elsewhere)."""
        from common.compute import _l1

        lhs = np.zeros((len(q), self.width), np.uint8)
        lhs[:, : q.shape[1]] = q
        out = np.empty((len(q), self.n), np.int32)
        kernel = _l1.ssd_block if distance == "l2" else _l1.l1_block
        kernel(lhs, self.padded, out, self.width, self.isa)
        return out.astype(np.int64)

    def sums(self, q: np.ndarray, distance: str) -> np.ndarray:
        """(M, N) exact sums of ``q``'s rows against every sample: :meth:`scores` for bytes, the float64 formula
        (:func:`block_sums`) for float data."""
        return self.scores(q, distance) if self.bytes else block_sums(self.x, q, distance)

    def neighbors(self, q: np.ndarray, distance: str, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per row of ``q``: the ids of its k nearest samples and their distances as the tables serve them
        (:func:`served`); float data by :func:`code_neighbors`."""
        if not self.bytes:
            return [code_neighbors(self.x, row, distance, k) for row in q]
        out = []
        for s in self.scores(q, distance):
            ids = _top(s, k)
            out.append((ids, served(s[ids], distance, True)))
        return out


def float_sums(x: np.ndarray, q: np.ndarray, distance: str) -> np.ndarray:
    """Sum |q - x| or (q - x)^2 over the columns of each row of ``x``, in float64, one coordinate at a time in
    order: the tables' formula for float values and codes (common/compute/neighbors.py, CodeSpace)."""
    return block_sums(x, np.asarray(q)[None], distance)[0]


def block_sums(x: np.ndarray, q: np.ndarray, distance: str) -> np.ndarray:
    """(M, N): :func:`float_sums` of every row of ``q`` (M, m) at once, one coordinate at a time in order."""
    x, q = np.asarray(x, np.float64), np.asarray(q, np.float64)
    acc = np.zeros((len(q), len(x)))
    for j in range(x.shape[1]):
        diff = q[:, j, None] - x[None, :, j]
        acc += np.abs(diff) if distance == "l1" else diff * diff
    return acc


def smallest(sums: np.ndarray, k: int) -> np.ndarray:
    """(M, k) int32: the ids of each row's k smallest ``sums`` (M, N), nearest first, ties to the lower id."""
    m, n = sums.shape
    kth = np.partition(sums, k - 1, axis=1)[:, k - 1:k]
    take = sums <= kth
    over = np.flatnonzero(take.sum(axis=1) > k)  # rows whose k-th value is tied beyond k: the lower ids stay
    if len(over):
        tied = sums[over] == kth[over]
        room = k - (sums[over] < kth[over]).sum(axis=1, keepdims=True)
        take[over] = (sums[over] < kth[over]) | (tied & (np.cumsum(tied, axis=1) <= room))
    ids = np.nonzero(take)[1].reshape(m, k)  # each row's ids ascending
    order = np.argsort(np.take_along_axis(sums, ids, axis=1), axis=1, kind="stable")
    return np.take_along_axis(ids, order, axis=1).astype(np.int32)


def cross_table(sums_of, queries: np.ndarray, k: int, block: int = 128) -> np.ndarray:
    """(M, k) int32: the k nearest ids of every row of ``queries``, ``block`` rows at a time, where
    ``sums_of(rows)`` gives their (B, N) exact sums against the samples (:meth:`Pixels.sums`, :func:`block_sums`)."""
    out = np.empty((len(queries), k), np.int32)
    for r0 in range(0, len(queries), block):
        out[r0:r0 + block] = smallest(sums_of(queries[r0:r0 + block]), k)
    return out


def pixel_cross_table(x: np.ndarray, queries: np.ndarray, distance: str, k: int, kernel: str | None = None,
                      block: int = 256, among_queries: bool = False, cache_dir: str | None = None) -> np.ndarray:
    """(M, k) int32: each query row's k nearest rows of the data ``x`` (with ``among_queries``, of the data and
    then the queries, ids continuing: a row then finds itself), exact, ties to the lower id. Bytes go through
    the tables' own engine (common/compute/neighbors.py, FusedPixels: the int8 or float32 GEMM for L2, the
    SAD kernel for L1, the fastest measured here unless ``kernel`` forces one; every core), over the data
    and the queries together, the queries' rows scored against the columns asked for (``cache_dir``: where the
    tables keep which path is fastest here). Float data: the tables' float64 formula (:func:`block_sums`)."""
    both = np.concatenate([x, queries])
    n = len(both) if among_queries else len(x)
    if x.dtype != np.uint8:
        data = both[:n]
        return cross_table(lambda q: block_sums(data, q, distance), queries, k, block)
    from common.compute import neighbors as nb

    path = nb.choose_pixel_path(both, distance, kernel=kernel, cache_dir=cache_dir)
    if path == "torch":  # no C kernels here: one row at a time through Pixels
        pixels = Pixels(both[:n], kernel)
        return cross_table(lambda q: pixels.sums(q, distance), queries, k, block)
    space = nb.FusedPixels(both, distance, path)
    del both
    try:
        return cross_table(lambda rows: space.ordered_scores(rows, 0, n), np.arange(len(x), len(x) + len(queries)), k,
                           block)
    finally:
        nb.release_scratch()


def code_cross_table(codes: np.ndarray, queries: np.ndarray, distance: str, k: int, pad: int = 32,
                     margin: float = 1e-9) -> np.ndarray:
    """(M, k) int32: each query code's k nearest ``codes``, by the tables' float64 formula (:func:`float_sums`),
    ties to the lower id. A KD-tree (scipy) proposes k + ``pad`` candidates, the formula ranks them, and the
    cut is proven as the tables prove it (every code left out is farther, by the tree's distance less a
    ``margin`` far above rounding); rows it cannot prove (ties across the cut) are searched whole."""
    from scipy.spatial import cKDTree

    x, q = np.asarray(codes, np.float64), np.asarray(queries, np.float64)
    n, m = len(x), min(k + pad, len(x))
    if m == n:
        return cross_table(lambda rows: block_sums(x, rows, distance), q, k)
    tree = cKDTree(x, balanced_tree=False)  # balanced_tree=False: as the tables' (neighbors.CodeSpace)
    out = np.empty((len(q), k), np.int32)
    for r0 in range(0, len(q), 8192):
        qb = q[r0:r0 + 8192]
        td, ti = tree.query(qb, k=m, p=1 if distance == "l1" else 2, workers=-1)
        ev = np.zeros(ti.shape)
        for j in range(x.shape[1]):  # float_sums' operations, one coordinate at a time
            diff = qb[:, j, None] - x[ti, j]
            ev += np.abs(diff) if distance == "l1" else diff * diff
        order = np.lexsort((ti, ev), axis=1)
        ids, vals = np.take_along_axis(ti, order, 1)[:, :k], np.take_along_axis(ev, order, 1)[:, k - 1]
        edge = td[:, -1] if distance == "l1" else td[:, -1] ** 2
        bad = ~(vals < edge * (1 - margin))
        if bad.any():
            ids[bad] = cross_table(lambda rows: block_sums(x, rows, distance), qb[bad], k)
        out[r0:r0 + len(qb)] = ids
    return out


def unseen_neighbors(x: np.ndarray, rows: np.ndarray, distance: str, m: int, kernel: str | None = None) -> np.ndarray:
    """(M, m) int32: the first ``m`` neighbours of each unseen row among the map's samples ``x`` and the M unseen
    ones (row i at id N + i), itself left out: keeping.place's ``nbr``."""
    ids = pixel_cross_table(x, rows, distance, m + 1, kernel, among_queries=True)
    keep = ids != (len(x) + np.arange(len(rows)))[:, None]
    keep[keep.all(axis=1), -1] = False  # itself beyond m + 1 (as many duplicates before it): drop the last
    return ids[keep].reshape(len(rows), m)


def served(sums: np.ndarray, distance: str, pixels: bool) -> np.ndarray:
    """Distances as the tables serve them, from exact sums (integers for bytes, float64 otherwise): the
    square root for L2, byte distances in units of the models' [-1, 1] inputs, rounded once to float32."""
    d = np.asarray(sums, np.float64)
    d = np.sqrt(d) if distance == "l2" else d
    return (d * PIXEL_UNIT if pixels else d).astype(np.float32)


def exact_distances(points: np.ndarray, ids: np.ndarray, sample: int, distance: str) -> np.ndarray:
    """The served distances from sample ``sample`` of ``points`` (bytes, float values or codes) to ``ids``."""
    if points.dtype == np.uint8:
        d = points[ids].astype(np.int64) - points[sample].astype(np.int64)
        return served((d * d).sum(axis=1) if distance == "l2" else np.abs(d).sum(axis=1), distance, True)
    return served(float_sums(points[ids], points[sample], distance), distance, False)


def code_neighbors(codes: np.ndarray, code: np.ndarray, distance: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest of ``codes`` (N, m) to ``code`` (m,), by the tables' float64 formula (:func:`float_sums`),
    ties to the lower id; their served distances."""
    acc = float_sums(codes, code, distance)
    ids = _top(acc, k)
    return ids, served(acc[ids], distance, False)


def check_k(k: int, n: int) -> None:
    """DataError unless 1 <= k < N (and at most 5 K)."""
    top = min(n - 1, DEFAULT_K * 5)
    if not 1 <= k <= top:
        raise DataError(f"k: {k}; expected 1..{top} (the experiment has {n} samples)")

"""How a sample is drawn: its values as the picture they are (a grey H x W image, an H x W x C colour image)
or, for plain vectors, a square of its values row by row. Imports only numpy (the web process draws)."""

from __future__ import annotations

import math

import numpy as np

MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # Pillow's image mode by channels


def unit_scaled(rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``rows`` of the data set ``values`` as the models see them, in [-1, 1], float32: bytes as x/255*2-1,
    float data by the data set's smallest and largest value."""
    if values.dtype == np.uint8:
        return rows.astype(np.float32) / 255 * 2 - 1
    lo, hi = float(values.min()), float(values.max())
    return (((rows.astype(np.float64) - lo) / (hi - lo if hi > lo else 1.0)) * 2 - 1).astype(np.float32)


def tile_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The picture of one sample of ``shape``: (H, W) or (H, W, C); a (D,) vector as a ceil(sqrt D) square."""
    if len(shape) >= 2:
        return tuple(shape)
    side = math.isqrt(shape[0] - 1) + 1 if shape[0] > 0 else 1
    return (side, side)


def mode(shape: tuple[int, ...]) -> str:
    """Pillow's mode for pictures of samples of ``shape``."""
    return MODES[tile_shape(shape)[2]] if len(tile_shape(shape)) == 3 else "L"


def pictures(rows: np.ndarray, shape: tuple[int, ...], fill: float = 0) -> np.ndarray:
    """``rows`` (B, D) as (B, H, W[, C]) pictures; a vector's square is padded with ``fill`` after its values."""
    rows = np.asarray(rows)
    tile = tile_shape(shape)
    if len(shape) >= 2:
        return rows.reshape((len(rows),) + tile)
    out = np.full((len(rows), tile[0] * tile[1]), fill, dtype=rows.dtype)
    out[:, : rows.shape[1]] = rows
    return out.reshape((len(rows),) + tile)


def sheet(rows: np.ndarray, shape: tuple[int, ...], columns: int) -> np.ndarray:
    """Pictures of ``rows`` (B, D) bytes side by side, ``columns`` a row: (rows * H, columns * W[, C])."""
    pics = pictures(rows, shape)
    h, w = pics.shape[1:3]
    n_rows, cols = -(-len(pics) // columns), min(len(pics), columns)
    out = np.zeros((n_rows * h, cols * w) + pics.shape[3:], dtype=np.uint8)
    for i, pic in enumerate(pics):
        r, c = divmod(i, columns)
        out[h * r:h * r + h, w * c:w * c + w] = pic
    return out

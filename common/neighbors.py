"""The neighbour engine: every sample's exact K nearest other samples, L1 or L2, in row chunks.

Promise: for each query row i, the K samples j != i with the smallest distance, nearest first, ties
broken by the lower id. The N x N matrix never exists: rows go in chunks sized from a memory budget.

How "exact" is kept while the bulk work runs in fast float32:
- Pixel spaces (uint8): pixels are shifted to -128..127, so every dot product is an integer below
  2^24 and a float32 GEMM computes it exactly; L1 sums of byte differences are exact in float32 too.
  Only the final combination (|a|^2 - 2 a.b, up to 5e7) can round, by at most 2.
- Code spaces (float): distances are computed in float64, one formula for every pair.
Each chunk first takes K + PAD candidates from the fast scores, re-ranks them by the exact value
and the id, and proves the cut: the K-th exact value must lie strictly below what any
non-candidate can reach (its score minus the rounding bound). Rows where ties or rounding straddle
the cut are recomputed exactly over the whole row. Imports only numpy and torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from common.names import DISTANCES

PIXEL_UNIT = 2.0 / 255.0  # pixel-space distances are reported on the [-1, 1] inputs the models see
PAD = 32  # extra candidates per row; ties wider than this fall back to an exact full row


@dataclass(frozen=True)
class NeighborTable:
    """Rows ``start..start+len`` of a table: ids (int32) and distances (float32), nearest first."""

    ids: np.ndarray  # (rows, K) int32
    distances: np.ndarray  # (rows, K) float32


class Space:
    """Points prepared for one distance. Subclasses define the fast scores and the exact values."""

    eps: float = 0.0  # |fast score - exact value| never exceeds this
    bytes_per_pair: int = 16  # working memory per (query, point) pair in one chunk

    def __init__(self, n: int) -> None:
        self.n = n

    def scores(self, start: int, stop: int) -> Tensor:
        """Fast scores of rows start..stop against all points, (c, N); may keep state for exact_*."""
        raise NotImplementedError

    def exact_at(self, start: int, cand: Tensor) -> Tensor:
        """Exact values (float64) of the last scored chunk at candidate columns ``cand`` (c, M)."""
        raise NotImplementedError

    def exact_row(self, start: int, r: int) -> Tensor:
        """Exact values (float64) of chunk row r against all N points."""
        raise NotImplementedError

    def finalize(self, start: int, values: Tensor) -> Tensor:
        """Exact values (c, K) -> the distances reported, float32."""
        raise NotImplementedError

    def release(self) -> None:
        """Drop the chunk's state."""


class PixelL2(Space):
    eps = 4.0  # two roundings of a value below 2^26 in float32 (each <= 2), doubled for safety
    bytes_per_pair = 12  # G and the scores (float32), plus topk scratch

    def __init__(self, x: np.ndarray, device: torch.device) -> None:
        super().__init__(x.shape[0])
        self.s = torch.from_numpy(x).to(device).float().sub_(128.0)  # (N, D) in -128..127
        self.sq = (self.s * self.s).sum(1)  # (N,) exact integers < 2^24
        self.g: Tensor | None = None

    def scores(self, start, stop):
        self.g = self.s[start:stop] @ self.s.T  # (c, N) exact integer dot products
        return torch.add(self.sq, self.g, alpha=-2.0)  # |b|^2 - 2 a.b: |a|^2 is the same on a row

    def exact_at(self, start, cand):
        return self.sq.double()[cand] - 2.0 * self.g.gather(1, cand).double()

    def exact_row(self, start, r):
        return self.sq.double() - 2.0 * self.g[r].double()

    def finalize(self, start, values):
        c = values.shape[0]
        d2 = values + self.sq[start : start + c].double()[:, None]  # exact integer squared distance
        return (d2.clamp_min_(0).sqrt_() * PIXEL_UNIT).float()

    def release(self):
        self.g = None


class _Dense(Space):
    """Spaces whose fast score is already the exact value: the chunk's (c, N) matrix is kept."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.d: Tensor | None = None

    def exact_at(self, start, cand):
        return self.d.gather(1, cand).double()

    def exact_row(self, start, r):
        return self.d[r].double()

    def release(self):
        self.d = None


class PixelL1(_Dense):
    """Sums of |a - b| over bytes are integers below 2^24: float32 holds them exactly."""

    bytes_per_pair = 12

    def __init__(self, x: np.ndarray, device: torch.device) -> None:
        super().__init__(x.shape[0])
        self.x = torch.from_numpy(x).to(device).float()

    def scores(self, start, stop):
        self.d = torch.cdist(self.x[start:stop], self.x, p=1.0)
        return self.d

    def finalize(self, start, values):
        return (values * PIXEL_UNIT).float()


class CodeSpace(_Dense):
    """Low-dimensional float codes: every distance in float64, one formula for every pair."""

    bytes_per_pair = 32

    def __init__(self, x: np.ndarray, distance: str, device: torch.device) -> None:
        super().__init__(x.shape[0])
        self.x = torch.from_numpy(np.asarray(x, dtype=np.float64)).to(device)
        self.l1 = distance == "l1"

    def scores(self, start, stop):
        q = self.x[start:stop]
        acc = None
        for j in range(self.x.shape[1]):  # one coordinate at a time: (c, N) temporaries only
            diff = q[:, j : j + 1] - self.x[:, j]
            term = diff.abs_() if self.l1 else diff.mul_(diff)
            acc = term if acc is None else acc.add_(term)
        self.d = acc  # L1, or the squared L2 distance
        return acc

    def finalize(self, start, values):
        return (values if self.l1 else values.sqrt()).float()


def prepare(points: np.ndarray, distance: str, device: str | torch.device = "cpu") -> Space:
    """Pixel spaces are uint8 (exact integer arithmetic); anything else is a float code space."""
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; expected one of {list(DISTANCES)}")
    dev = torch.device(device)
    if points.dtype == np.uint8:
        return PixelL2(points, dev) if distance == "l2" else PixelL1(points, dev)
    return CodeSpace(points, distance, dev)


def chunk_rows(n: int, bytes_per_pair: int, memory_budget: int) -> int:
    """Query rows per chunk so that the chunk's (rows, N) working set fits the budget."""
    return int(max(1, min(n, memory_budget // max(1, n * bytes_per_pair))))


def knn_rows(space: Space, start: int, stop: int, k: int) -> NeighborTable:
    """Exact top-k of query rows start..stop (see the module docstring for the proof of the cut)."""
    n = space.n
    if not 0 < k < n:
        raise ValueError(f"k must be in 1..{n - 1} for {n} points, got {k}")
    approx = space.scores(start, stop)
    c = stop - start
    rows = torch.arange(c, device=approx.device)
    approx[rows, rows + start] = float("inf")  # a sample is not its own neighbour
    m = min(k + PAD, n - 1)
    tv, ti = approx.topk(m, dim=1, largest=False, sorted=False)
    ev = space.exact_at(start, ti)
    # order candidates by (exact value, id): sort by id, then a stable sort by value
    ti, order = ti.sort(dim=1)
    ev = ev.gather(1, order)
    ev, order = ev.sort(dim=1, stable=True)
    ti = ti.gather(1, order)
    ids, vals = ti[:, :k].clone(), ev[:, :k].clone()
    if m < n - 1:
        bound = tv.max(dim=1).values.double() - space.eps  # no non-candidate is below this
        for r in (~(vals[:, -1] < bound)).nonzero().flatten().tolist():
            full = space.exact_row(start, r)
            full[start + r] = float("inf")
            order = torch.sort(full, stable=True).indices[:k]  # index order breaks ties by id
            ids[r], vals[r] = order, full[order]
    dist = space.finalize(start, vals)
    space.release()
    return NeighborTable(ids.cpu().numpy().astype(np.int32), dist.cpu().numpy())


def exact_knn(
    points: np.ndarray,
    *,
    k: int,
    distance: str,
    memory_budget: int = 1 << 30,
    device: str | torch.device = "cpu",
    chunk: int | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
) -> NeighborTable:
    """The full table for ``points`` ((N, D), uint8 pixels or float codes): (N, k) ids and distances."""
    space = prepare(points, distance, device)
    n = space.n
    step = chunk or chunk_rows(n, space.bytes_per_pair, memory_budget)
    ids = np.empty((n, k), np.int32)
    dist = np.empty((n, k), np.float32)
    for start in range(0, n, step):
        stop = min(n, start + step)
        part = knn_rows(space, start, stop, k)
        ids[start:stop], dist[start:stop] = part.ids, part.distances
        if on_chunk is not None:
            on_chunk(start, stop)
    return NeighborTable(ids, dist)

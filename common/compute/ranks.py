"""Exact ranks beyond the stored top K: the rank r_S(i, j) of asked ids j among the N - 1 other samples
ordered by (distance from i in space S, id), 1 = nearest, ties to the lower id as in the tables
(STUDY.md, metrics item 6). Trustworthiness needs the pixel-space rank of each code-space neighbour, which
may be 30,000; continuity the reverse.

Each query row's whole distance row is computed once, with the same exact arithmetic as the tables
(common/compute/neighbors.py: integer pixel scores from the chosen path, float64 code distances by one
formula), and every other sample is placed among the row's asked ids by common/compute/_ranks.c. No N x N
matrix: rows go in blocks sized from the memory budget. Imports only numpy and torch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from common.compute import metrics as M
from common.compute import neighbors as nb
from common.compute.sizes import DEFAULT_MEMORY_BUDGET

try:
    from common.compute import _ranks
except ImportError:  # pragma: no cover - only where the extension could not be built
    _ranks = None

MAX_BLOCK = 512  # query rows per block at most: their (rows, N) values stay in the tens of MB
# ranges of a block's rows a thread on a code pass, 64 rows each: rows of 2-D codes differ in cost, and two
# halves of a block left one thread idle for a tenth of a pass
CODE_PIECES = 8


def _need_kernel() -> None:
    if _ranks is None:
        raise RuntimeError("the exact-rank kernel (common/compute/_ranks.c) is not built: reinstall aeknn with a C "
                           "compiler (pip install -e .)")


def block_rows(n: int, memory_budget: int) -> int:
    """Query rows per block: a (rows, N) block of 8-byte values within a quarter of the budget."""
    return int(max(1, min(MAX_BLOCK, n, memory_budget // 4 // max(1, n * 8))))


# Points a cell of the rank grid holds. A row tests every cell, and compares or lists the points of the cells
# its asked distances cross: larger cells, fewer tests and more points. 96 took 8 % less than 48 over the seed
# study's eight code passes once the points of a cell crossed by a few asked distances were compared in one
# vectorised loop (docs/benchmarks.md, Rank measures).
PER_CELL = 96


def rank_grid(x: np.ndarray) -> tuple[np.ndarray, ...]:
    """The grid of 2-D codes (N, 2) float64 that a rank pass places rows by (common/compute/_ranks.c, grid): cells
    of equal counts, about PER_CELL points each: the codes sorted by their first coordinate into slabs, each slab
    by its second into cells (even cuts of the bounding box were as fast at best, and several times slower where
    a few far codes crowd the rest into a handful of cells). Each cell's points in id order, with the cell's
    tight box (any partition gives exact ranks). Returns (start (cells + 1,) int64, id (N,) int32, cell_of (N,)
    int32, xy (N, 2), box (cells, 4)). No cell is empty: there are at most N / PER_CELL of them, or one."""
    n = len(x)
    side = int(min(2048, max(1, int(np.sqrt(n / PER_CELL)))))
    ids = np.arange(n)
    cell_of = np.empty(n, np.int32)
    for s, slab in enumerate(np.array_split(np.lexsort((ids, x[:, 0])), side)):
        for c, cell in enumerate(np.array_split(slab[np.lexsort((slab, x[slab, 1]))], side)):
            cell_of[cell] = s * side + c
    counts = np.bincount(cell_of, minlength=side * side)
    order = np.lexsort((ids, cell_of)).astype(np.int32)  # cell by cell, in id order within each
    start = np.zeros(side * side + 1, np.int64)
    start[1:] = np.cumsum(counts)
    xy = np.ascontiguousarray(x[order])
    at = start[:-1]
    box = np.stack([np.minimum.reduceat(xy[:, 0], at), np.maximum.reduceat(xy[:, 0], at),
                    np.minimum.reduceat(xy[:, 1], at), np.maximum.reduceat(xy[:, 1], at)], axis=1)
    return start, order, cell_of, xy, np.ascontiguousarray(box)


def ranks_block(space: nb.Space, rows: np.ndarray, asked: np.ndarray) -> np.ndarray:
    """Ranks (len(rows), T) int64 of the ids ``asked`` (len(rows), T) from each query row ``rows``."""
    _need_kernel()
    rows = np.ascontiguousarray(rows, np.int64)
    asked = np.ascontiguousarray(asked, np.int32)
    out = np.empty(asked.shape, np.int64)
    n = space.n
    if isinstance(space, nb.CodeSpace):
        x = np.ascontiguousarray(space.x.cpu().numpy(), np.float64)
        m, l1 = x.shape[1], space.l1
        grid = getattr(space, "rank_grid", None)
        if grid is None and m == 2 and n >= 64:  # built once a space: every block of its pass shares it
            grid = space.rank_grid = rank_grid(x)

        def part(lo: int, hi: int) -> None:
            _ranks.coords(x, m, l1, rows[lo:hi], asked[lo:hi], out[lo:hi], *(grid or ()))

        nb._parallel(part, len(rows), CODE_PIECES)
        return out
    if isinstance(space, nb.FusedPixels):
        g = space._block(rows, 0, n)  # exact int32 scores, or float32 exact integers
        kind, base, a = (1 if g.dtype == np.float32 else 0), space.base, space.a
    elif isinstance(space, nb.PixelL2):  # the torch path: exact float32 dot products
        g = (space.s[torch.from_numpy(rows)] @ space.s.T).cpu().numpy()
        if g.dtype == np.float64:  # wide rows: exact integer dot products, |a.b| < 2^31 (MAX_DIM)
            g = g.astype(np.int32)
        kind, base, a = (1 if g.dtype == np.float32 else 0), space.sq.cpu().numpy().astype(np.int32), -2
    elif isinstance(space, nb.PixelL1):
        g = torch.cdist(space.x[torch.from_numpy(rows)], space.x, p=1.0).cpu().numpy()
        kind, base, a = 1, np.zeros(n, np.int32), 1
    else:  # pragma: no cover
        raise TypeError(f"no exact ranks for {type(space).__name__}")
    g = np.ascontiguousarray(g)
    base = np.ascontiguousarray(base, np.int32)

    def part(lo: int, hi: int) -> None:
        _ranks.block(g[lo:hi], kind, n, base, int(a), rows[lo:hi], asked[lo:hi], out[lo:hi])

    nb._parallel(part, len(rows))
    return out


class ErrorSums:
    """common/compute/metrics.py's rank_error_sums of one group of ``k`` columns of rank blocks, added up block by
    block in the C kernel: the same whole numbers (numpy's bincounts of them took a quarter of a code pass)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.weight, self.count = np.zeros(k + 2, np.int64), np.zeros(k + 2, np.int64)
        self.gaps = np.zeros(k, np.int64)

    def add(self, ranks: np.ndarray, c0: int = 0) -> None:
        """Columns c0..c0+k of a (rows, T) block of ranks."""
        _need_kernel()
        r = np.ascontiguousarray(ranks, np.int64)
        _ranks.error_sums(r, r.shape[1], c0, c0 + self.k, self.weight, self.count, self.gaps)

    def sums(self) -> tuple[np.ndarray, np.ndarray]:
        """(false (k,) float64, gaps (k,) int64), as rank_error_sums returns them."""
        return M.false_sums(self.weight, self.count).astype(np.float64), self.gaps.copy()


def rank_rows(space: nb.Space, asked: np.ndarray, memory_budget: int = DEFAULT_MEMORY_BUDGET,
              ) -> Iterator[tuple[int, np.ndarray]]:
    """For every sample i in order, the ranks of the ids ``asked[i]`` ((N, T) int32) from i, as
    (first row, (rows, T) int64 ranks) blocks."""
    n = space.n
    if asked.shape[0] != n:
        raise ValueError(f"asked has {asked.shape[0]} rows for {n} samples")
    step = block_rows(n, memory_budget)
    try:
        for r0 in range(0, n, step):
            r1 = min(n, r0 + step)
            yield r0, ranks_block(space, np.arange(r0, r1), asked[r0:r1])
    finally:
        nb.release_scratch()


"""The neighbour engine: every sample's exact K nearest other samples, L1 or L2, in row chunks.

Promise: for each query row i, the K samples j != i with the smallest distance, nearest first, ties
broken by the lower id. The N x N matrix never exists: rows go in blocks sized from a memory budget.

How "exact" is kept while the bulk work runs fast:
- Pixel spaces (uint8) on the CPU are integer arithmetic from end to end, then one exact selection
  (common/compute/_select.c) by the packed key (score, id): no rounding anywhere, so no proof and no fallback.
  The scores come from one of several paths, all exact, chosen by measured speed (common/kernels.py):
  L2 pixels shifted to -128..127 go through an int8 GEMM (``int8``, torch._int_mm: fast with VNNI,
  very slow without) or a float32 GEMM (``f32``: every dot product is an integer below 2^24, so
  float32 holds it exactly); L1 sums come from the SAD kernel (common/compute/_l1.c) at the widest
  instruction set that is fastest (``sad-avx512``, ``sad-avx2``, ``sad-portable``). Where most pixels
  are 0 (MNIST: 150 of 784), ``sparse`` (common/compute/_l1.c, AVX2) scores each row by its nonzero pixel
  pairs only: dot products for L2, |a| + |b| - 2 sum min(a, b) for L1. Columns that are
  the same in every sample (MNIST's empty border) add nothing to any distance and are dropped.
- A whole table (:meth:`FusedPixels.sweep`) reads each block of the distance matrix once for two row
  sets: rows i0..i1 against columns i0..N also give columns i1..N their candidates from rows i0..i1.
  Half the arithmetic; the rows finish in order, so a half-written table continues where it stopped.
- Elsewhere (a GPU, or a CPU where the C kernels are missing) pixels go through float32 GEMMs or
  cdist (``torch``), exact for the dot products; only |a|^2 - 2 a.b (up to 5e7) can round, by at most 2.
- Code spaces (float): distances are computed in float64, one formula for every pair.
On the float paths each chunk first takes K + PAD candidates from the fast scores, re-ranks them by
the exact value and the id, and proves the cut: the K-th exact value must lie strictly below what any
non-candidate can reach (its score minus the rounding bound). Rows where ties or rounding straddle
the cut are recomputed exactly over the whole row. Imports only numpy and torch.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from common.compute import kernels
from common.compute.names import DISTANCES, PIXEL_UNIT
from common.compute.sizes import DEFAULT_MEMORY_BUDGET

try:  # the compiled SAD kernel; without it the portable path gives the same integers
    from common.compute import _l1
except ImportError:  # pragma: no cover - only where the extension could not be built
    _l1 = None
try:  # the compiled exact top-K over integer scores; without it the float paths give the same table
    from common.compute import _select
except ImportError:  # pragma: no cover
    _select = None

PAD = 32  # extra candidates per row; ties wider than this fall back to an exact full row
BLOCK = 256  # query rows per block of a chunk on the fused paths: its (rows, N) scores stay near the caches
PANEL = 1024  # query rows per block of a whole-table sweep: a wider GEMM runs nearer the CPU's peak
# what a sweep holds beside its state, its copy of the points and its block, measured on MNIST: the BLAS
# library's buffers after its first GEMM (33 MiB) and each panel's temporaries (up to 17 MiB)
SWEEP_RESERVE = 56 << 20
# the points a path's probe block is scored against: 16,384 MNIST images (12 MB), as a table's, are more than
# the L2 caches hold. Against 8,192 sad-avx2 won 2 probes of 18 over sad-avx512, whose full rows it computes 1.5
# times slower; against 16,384 it lost 11 of 11 (docs/benchmarks.md, Rank measures)
PROBE_POINTS = 16384
# the sparse path's widest rows: its scores |b|^2 - 2 a.b (L2: 2 a.b <= 2 * 255^2 D) and |a| + |b| (L1) in int32
SPARSE_DIM = {"l2": (2**31 - 1) // (2 * 255 * 255), "l1": (2**31 - 1) // 510}
F32_EXACT_DIM = 1024  # shifted pixels: |a.b| <= 128 * 128 * D < 2^24 for D <= 1024, so float32 is exact


def _gemm_exact(dim: int, dtype: torch.dtype) -> bool:
    """Whether a GEMM of ``dtype`` rows of ``dim`` values in -128..127 gives exact integer dot products
    here (checked once on the worst cases: all -128, all 127, and random rows)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (24, dim), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (40, dim), generator=g, dtype=torch.int8)
    a[:4], a[4:8], b[:4], b[4:8] = -128, 127, -128, 127
    try:
        got = torch._int_mm(a, b.T) if dtype == torch.int8 else a.float() @ b.float().T
    except (RuntimeError, NotImplementedError):
        return False
    return bool(torch.equal(got.double(), a.double() @ b.double().T))


@functools.lru_cache(maxsize=8)
def int8_gemm_exact(dim: int) -> bool:
    """Whether torch._int_mm runs here and is exact for rows of ``dim`` (a CPU without VNNI might
    saturate 16-bit intermediates)."""
    return hasattr(torch, "_int_mm") and _gemm_exact(dim, torch.int8)


@functools.lru_cache(maxsize=8)
def f32_gemm_exact(dim: int) -> bool:
    """Whether a float32 GEMM is exact for shifted pixel rows of ``dim``: provably so up to 1024 values
    (every partial sum is an integer below 2^24), and checked once in case the BLAS rounds lower."""
    return dim <= F32_EXACT_DIM and _gemm_exact(dim, torch.float32)


_scratch = threading.local()


def _buffer(shape: tuple[int, int], dtype: type) -> np.ndarray:
    """A C-contiguous scratch array, carved from one per-thread block reused while it is big enough
    (a fresh 100 MB array per block costs its page faults every time: a third of a GEMM's time). One
    per thread, since two deliveries of a chunk may share a space at once."""
    need = shape[0] * shape[1] * np.dtype(dtype).itemsize
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.nbytes < need:
        _scratch.buf = buf = None  # drop the old one before allocating the new
        _scratch.buf = buf = np.empty(need, np.uint8)
    return buf[:need].view(dtype).reshape(shape)


def release_scratch() -> None:
    """Free this thread's scratch array (after a table)."""
    _scratch.buf = None


def _ranges(count: int, parts: int) -> list[tuple[int, int]]:
    """``count`` items in at most ``parts`` contiguous (lo, hi) ranges, none empty."""
    parts = max(1, min(parts, count))
    bounds = [count * p // parts for p in range(parts + 1)]
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:], strict=False) if hi > lo]


def _parallel(fn: Callable[[int, int], None], count: int, pieces: int = 1) -> None:
    """fn(lo, hi) over ``count`` items in ``pieces`` ranges per torch thread, each range taken by the first thread
    free (the C kernels release the GIL); more than one a thread evens out items of unequal cost."""
    ranges = _ranges(count, torch.get_num_threads() * pieces)
    if len(ranges) == 1:
        fn(*ranges[0])
        return
    list(_threads().map(lambda r: fn(*r), ranges))


@dataclass(frozen=True)
class NeighborTable:
    """Rows ``start..start+len`` of a table: ids (int32) and distances (float32), nearest first."""

    ids: np.ndarray  # (rows, K) int32
    distances: np.ndarray  # (rows, K) float32


class Space:
    """Points prepared for one distance. Subclasses define the fast scores and the exact values."""

    eps: float = 0.0  # |fast score - exact value| never exceeds this
    bytes_per_pair: int = 16  # working memory per (query, point) pair in one chunk
    path: str = "torch"  # how the scores are computed (common/kernels.py names them)

    def __init__(self, n: int, dim: int, distance: str, device: torch.device, pixels: bool) -> None:
        self.n, self.dim, self.distance, self.device, self.pixels = n, dim, distance, device, pixels

    def scores(self, rows: Tensor) -> Tensor:
        """Fast scores of query ``rows`` (c,) against all points, (c, N); may keep state for exact_*."""
        raise NotImplementedError

    def exact_at(self, rows: Tensor, cand: Tensor) -> Tensor:
        """Exact values (float64) of the last scored chunk at candidate columns ``cand`` (c, M)."""
        raise NotImplementedError

    def exact_row(self, rows: Tensor, r: int) -> Tensor:
        """Exact values (float64) of chunk row r against all N points."""
        raise NotImplementedError

    def finalize(self, rows: Tensor, values: Tensor) -> Tensor:
        """Exact values (c, K) -> the distances reported, float32."""
        raise NotImplementedError

    def release(self) -> None:
        """Drop the chunk's state."""

    pair_work: float | None = None  # units of work per (query, point) pair: GEMM flops, or 1 sum of bytes

    def work_of(self, rows: int, cols: int) -> float | None:
        """Billions of the path's units of work for ``rows`` queries against ``cols`` points (None: not
        counted, as on the KD-tree)."""
        return None if self.pair_work is None else rows * cols * self.pair_work / 1e9

    def chunk(self, k: int, memory_budget: int) -> int:
        """Query rows per chunk so that a chunk's working set fits the budget (:func:`plan_chunk`)."""
        return plan_chunk(self.n, self.dim, k, self.distance, pixels=self.pixels, memory_budget=memory_budget,
                          device=self.device)

    @staticmethod
    def uses_tree(device: torch.device, dim: int) -> bool:
        return device.type == "cpu" and dim <= 8

    def knn(self, rows: Tensor, k: int) -> NeighborTable:
        """Exact top-k of the query ``rows`` (int64 indices)."""
        return knn_of(self, rows, k)

    def sweep_panel(self, k: int, memory_budget: int, start: int = 0) -> int | None:
        """Rows per block of :meth:`sweep` within the budget, or None where this space has no sweep."""
        return None

    def sweep(self, k: int, memory_budget: int, start: int = 0) -> Iterator[tuple[int, NeighborTable]]:
        """Rows start..N of the whole table, in order, as (first row, rows) blocks."""
        raise NotImplementedError


class _TopK:
    """The running state of many rows' exact top-k in common/compute/_select.c: kept keys, count, threshold."""

    def __init__(self, rows: int, k: int) -> None:
        self.k = k
        self.buf = np.empty((rows, self.cap(k)), np.int64)
        self.cnt = np.zeros(rows, np.int64)
        self.thr = np.full(rows, np.iinfo(np.int64).max, np.int64)
        self.lim = np.full(rows, np.iinfo(np.int32).max, np.int32)

    @staticmethod
    def cap(k: int) -> int:
        return k + max(64, k // 2)  # a full buffer is shrunk to k: every shrink drops at least 64 keys

    @classmethod
    def nbytes(cls, rows: int, k: int) -> int:
        return rows * (cls.cap(k) * 8 + 20)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.buf, self.cnt, self.thr, self.lim

    def finish(self, srow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores) of the state rows ``srow``, (len, k) int32, nearest first."""
        ids = np.empty((len(srow), self.k), np.int32)
        vals = np.empty((len(srow), self.k), np.int32)
        _select.finish(np.ascontiguousarray(srow, np.int64), self.k, *self.arrays(), vals, ids)
        return ids, vals


class FusedPixels(Space):
    """Pixel tables on the CPU: exact integer scores from one path (int8 or float32 GEMM for L2, the
    SAD kernel for L1), each block selected at once by common/compute/_select.c. No rounding, no proof."""

    bytes_per_pair = 12  # as the torch paths: a chunk plan does not depend on the path

    def __init__(self, x: np.ndarray, distance: str, path: str) -> None:
        super().__init__(x.shape[0], x.shape[1], distance, torch.device("cpu"), pixels=True)
        self.path, self.l2 = path, distance == "l2"
        keep = varying_columns(x)  # columns that differ somewhere: the others add 0 to every distance
        xs = np.ascontiguousarray(x[:, keep] if keep.any() else x[:, :1])  # a copy (boolean indexing)
        self.kept = xs.shape[1]
        self.pair_work = 2.0 * self.kept if self.l2 else 1.0  # a dot product's flops, or one sum of bytes
        if path == "sparse":
            self._sparse(xs)
        elif self.l2:
            xs ^= np.uint8(0x80)  # in place: no second copy of the points at once
            s8 = xs.view(np.int8)  # v ^ 0x80 read as int8 is v - 128
            self.base = _row_norms(s8)  # (N,) |x|^2, exact integers < 2^24
            self.a = -2  # score = |b|^2 - 2 a.b: |a|^2 is the same along a row
            if path == "int8":
                self.s8 = torch.from_numpy(np.ascontiguousarray(s8))  # (N, D): a quarter of a float32 copy
            elif path in ("f32", "f32-numpy"):
                self.sf = torch.from_numpy(s8).float()  # (N, D) exact small integers
            else:
                raise ValueError(f"path {path!r} is not an L2 pixel path")
        else:
            if not path.startswith("sad-"):
                raise ValueError(f"path {path!r} is not an L1 pixel path")
            self.isa = path[len("sad-"):]
            self.width = -(-self.kept // 64) * 64  # rows padded with zero bytes to whole 64-byte vectors
            self.padded = np.zeros((self.n, self.width), np.uint8)
            self.padded[:, : self.kept] = xs
            self.base = np.zeros(self.n, np.int32)
            self.a = 1
        # this space's own copy of the points: part of the memory a table's sweep is budgeted for
        copy = "cols" if path == "sparse" else ("s8" if path == "int8" else "sf") if self.l2 else "padded"
        self.own = getattr(self, copy).nbytes + self.base.nbytes + getattr(self, "norms", self.base[:0]).nbytes

    def _sparse(self, xs: np.ndarray) -> None:
        """The points as common/compute/_l1.c's sparse kernels read them: pixel pairs (two int16 for L2's dot
        products, two bytes for L1's minimums), in chunks of SPARSE_CHUNK points side by side, zeros after the
        last; the scores are those of the other paths (L2: |b|^2 - 2 a.b, here of the unshifted bytes)."""
        js, n = _l1.SPARSE_CHUNK, self.n
        pairs = -(-self.kept // 2)
        chunks = -(-n // js)
        x = np.zeros((chunks * js, 2 * pairs), np.int16 if self.l2 else np.uint8)
        x[:n, : self.kept] = xs
        rows = x.view(np.uint32 if self.l2 else np.uint16)  # (chunks * js, pairs)
        self.pairs = pairs
        self.cols = np.ascontiguousarray(rows.reshape(chunks, js, pairs).transpose(0, 2, 1))
        sums = np.zeros(chunks * js, np.int64)
        for r0 in range(0, n, 8192):  # a few thousand rows at a time: no full wide copy
            b = xs[r0:r0 + 8192].astype(np.int32)
            sums[r0:r0 + len(b)] = (b * b).sum(1) if self.l2 else b.sum(1)
        if self.l2:
            self.base, self.a = sums[:n].astype(np.int32), -2  # |b|^2 <= 255^2 D: int32 within SPARSE_DIM
        else:
            self.norms, self.base, self.a = sums.astype(np.int32), np.zeros(n, np.int32), 1

    # ------------------------------------------------------------ blocks of exact scores

    def _block(self, q: np.ndarray | slice, c0: int, c1: int) -> np.ndarray:
        """Exact values of query rows ``q`` against points c0..c1: int32 dot products / SAD sums, or
        float32 dot products (exact integers); one reused buffer."""
        if self.path == "sparse":
            return self._sparse_block(q, c0, c1)
        if self.l2:
            a = self.s8 if self.path == "int8" else self.sf
            lhs = a[torch.from_numpy(q)] if isinstance(q, np.ndarray) else a[q]
            out = _buffer((lhs.shape[0], c1 - c0), np.int32 if self.path == "int8" else np.float32)
            if self.path == "int8":
                torch._int_mm(lhs, a[c0:c1].T, out=torch.from_numpy(out))
            elif self.path == "f32":
                torch.mm(lhs, a[c0:c1].T, out=torch.from_numpy(out))  # torch's BLAS (MKL on x86)
            else:
                np.matmul(lhs.numpy(), a[c0:c1].numpy().T, out=out)  # numpy's BLAS (OpenBLAS in its wheels)
            return out
        lhs = self.padded[q]
        out = _buffer((lhs.shape[0], c1 - c0), np.int32)
        rhs = self.padded[c0:c1]

        def part(lo: int, hi: int) -> None:  # the kernel releases the GIL: one slice of query rows per thread
            _l1.l1_block(lhs[lo:hi], rhs, out[lo:hi], self.width, self.isa)

        _parallel(part, lhs.shape[0])
        return out

    def _sparse_block(self, q: np.ndarray | slice, c0: int, c1: int) -> np.ndarray:
        ids = np.arange(self.n)[q] if isinstance(q, slice) else np.asarray(q)
        js = _l1.SPARSE_CHUNK
        lhs = np.ascontiguousarray(self.cols[ids // js, :, ids % js])  # (rows, pairs): the rows' own pairs
        out = _buffer((len(ids), c1 - c0), np.int32)
        qn = self.norms[ids] if not self.l2 else None

        def part(lo: int, hi: int) -> None:  # the kernel releases the GIL: one slice of query rows per thread
            if self.l2:
                _l1.dot_sparse(lhs[lo:hi], self.cols, out[lo:hi], self.pairs, c0, c1)
            else:
                _l1.min_sparse(lhs[lo:hi], self.cols, qn[lo:hi], self.norms, out[lo:hi], self.pairs, c0, c1)

        _parallel(part, len(ids))
        return out

    def ordered_scores(self, q: np.ndarray, c0: int, c1: int) -> np.ndarray:
        """(len(q), c1 - c0) int64 scores of query rows ``q`` against points c0..c1 in the order of their exact
        distances, ties kept: the L1 sums, or the squared L2 distances less each query row's own |a|^2."""
        return self.base[c0:c1].astype(np.int64) + self.a * self._block(q, c0, c1).astype(np.int64)

    def _update_rows(self, g: np.ndarray, c0: int, rows: np.ndarray, srow: np.ndarray, st: _TopK) -> None:
        """Block ``g`` (len(rows), m) scored against columns c0..c0+m, into the rows' own states."""
        m, f32 = g.shape[1], g.dtype == np.float32

        def part(lo: int, hi: int) -> None:
            _select.update_rows(g, lo * m, m, f32, hi - lo, m, c0, self.base, self.a, rows[lo:hi], srow[lo:hi],
                                st.k, *st.arrays())

        _parallel(part, len(rows))

    def probe(self, rows: int = 256) -> None:
        """One block of scores, ``rows`` against every point, as the path computes them (common/kernels.py
        times it)."""
        self._block(slice(0, min(rows, self.n)), 0, self.n)

    def distances(self, rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self.l2:
            d2 = scores.astype(np.float64) + self.base[rows][:, None]  # exact squared distances
            return (np.sqrt(d2) * PIXEL_UNIT).astype(np.float32)
        return (scores.astype(np.float64) * PIXEL_UNIT).astype(np.float32)

    # ------------------------------------------------------------ query rows against every point

    def knn(self, rows: Tensor, k: int) -> NeighborTable:
        _check_k(k, self.n)
        r = rows.numpy().astype(np.int64)
        ids = np.empty((len(r), k), np.int32)
        vals = np.empty((len(r), k), np.int32)
        for b0 in range(0, len(r), BLOCK):
            part = r[b0:b0 + BLOCK]
            st = _TopK(len(part), k)
            srow = np.arange(len(part), dtype=np.int64)
            self._update_rows(self._block(part, 0, self.n), 0, part, srow, st)
            ids[b0:b0 + BLOCK], vals[b0:b0 + BLOCK] = st.finish(srow)
        return NeighborTable(ids, self.distances(r, vals))

    # ------------------------------------------------------------ the whole table, each block read twice

    def sweep_panel(self, k: int, memory_budget: int, start: int = 0) -> int | None:
        """Rows per panel: the state of every unfinished row, this space's own copy of the points, the
        reserve for the rest (SWEEP_RESERVE) and one (panel, N) block within the budget; None when those
        leave no room for 64 rows (then the table goes chunk by chunk)."""
        free = memory_budget - _TopK.nbytes(self.n - start, k) - self.own - SWEEP_RESERVE
        panel = min(PANEL, free // (self.n * 4)) if free > 0 else 0
        return int(panel) if panel >= 64 or panel >= self.n - start else None

    def sweep(self, k: int, memory_budget: int, start: int = 0) -> Iterator[tuple[int, NeighborTable]]:
        """Rows start..N in order. Panel rows i0..i1 are scored against columns i0..N once: those scores
        are the rows' own candidates and, read down the columns, columns i1..N's candidates from rows
        i0..i1. Every row thus sees every column exactly once, and a row is final once its own panel
        is done. Columns before ``start`` (rows stored earlier) are scored directly."""
        _check_k(k, self.n)
        panel = self.sweep_panel(k, memory_budget, start) or 64
        n = self.n
        st = _TopK(n - start, k)
        for i0 in range(start, n, panel):
            i1 = min(n, i0 + panel)
            rows = np.arange(i0, i1, dtype=np.int64)
            srow = rows - start
            if start:
                self._update_rows(self._block(slice(i0, i1), 0, start), 0, rows, srow, st)
            g = self._block(slice(i0, i1), i0, n)  # (b, n - i0)
            self._update_rows(g, i0, rows, srow, st)
            if i1 < n:
                m, f32 = n - i0, g.dtype == np.float32

                def cols(lo: int, hi: int, g=g, m=m, f32=f32, i0=i0, i1=i1, rows=rows) -> None:
                    _select.update_cols(g, i1 - i0, m, f32, i1 - i0, n - i1, i1, self.base, self.a, rows, start,
                                        lo, hi, k, *st.arrays())

                _parallel(cols, n - i1)
            ids, vals = st.finish(srow)
            yield i0, NeighborTable(ids, self.distances(rows, vals))


def varying_columns(x: np.ndarray, rows: int = 8192) -> np.ndarray:
    """Which columns of ``x`` differ from its first row somewhere, a few thousand rows at a time (no
    (N, D) boolean matrix at once: 45 MiB over MNIST)."""
    keep = np.zeros(x.shape[1], bool)
    for i in range(0, len(x), rows):
        keep |= (x[i:i + rows] != x[:1]).any(axis=0)
    return keep


def _row_norms(s8: np.ndarray) -> np.ndarray:
    """|x|^2 of each int8 row as int32, a few thousand rows at a time (no full int32 copy)."""
    out = np.empty(len(s8), np.int32)
    for i in range(0, len(s8), 8192):
        p = s8[i:i + 8192].astype(np.int32)
        out[i:i + 8192] = np.einsum("ij,ij->i", p, p)
    return out


class PixelL2(Space):
    """Pixel L2 through float32 GEMMs (the ``torch`` path: a GPU's, or a CPU's without the C kernels); rows
    of more than F32_EXACT_DIM values through float64 GEMMs, whose integer dot products stay exact."""

    eps = 4.0  # two roundings of a value below 2^26 in float32 (each <= 2), doubled for safety
    bytes_per_pair = 12  # G and the scores (float32), plus topk scratch

    def __init__(self, x: np.ndarray, device: torch.device) -> None:
        super().__init__(x.shape[0], x.shape[1], "l2", device, pixels=True)
        self.g: Tensor | None = None
        dtype = torch.float32 if x.shape[1] <= F32_EXACT_DIM else torch.float64
        if dtype == torch.float64:
            self.bytes_per_pair = 24
        self.s = torch.from_numpy(x).to(device).to(dtype).sub_(128.0)  # (N, D) in -128..127
        self.sq = (self.s * self.s).sum(1)  # (N,) exact integers
        self.pair_work = 2.0 * x.shape[1]

    def scores(self, rows):
        self.g = self.s[rows] @ self.s.T  # (c, N) exact integer dot products
        return torch.add(self.sq, self.g, alpha=-2.0)  # |b|^2 - 2 a.b: |a|^2 is the same on a row

    def exact_at(self, rows, cand):
        return self.sq.double()[cand] - 2.0 * self.g.gather(1, cand).double()

    def exact_row(self, rows, r):
        return self.sq.double() - 2.0 * self.g[r].double()

    def finalize(self, rows, values):
        d2 = values + self.sq[rows].double()[:, None]  # exact integer squared distance
        return (d2.clamp_min_(0).sqrt_() * PIXEL_UNIT).float()

    def release(self):
        self.g = None


class _Dense(Space):
    """Spaces whose fast score is already the exact value: the chunk's (c, N) matrix is kept."""

    def __init__(self, n: int, dim: int, distance: str, device: torch.device, pixels: bool) -> None:
        super().__init__(n, dim, distance, device, pixels)
        self.d: Tensor | None = None

    def exact_at(self, rows, cand):
        return self.d.gather(1, cand).double()

    def exact_row(self, rows, r):
        return self.d[r].double()

    def release(self):
        self.d = None


class PixelL1(_Dense):
    """Pixel L1 through torch.cdist in float32 (the ``torch`` path): sums of |a - b| over bytes are
    integers below 2^24, exact there too."""

    bytes_per_pair = 12
    pair_work = 1.0

    def __init__(self, x: np.ndarray, device: torch.device) -> None:
        super().__init__(x.shape[0], x.shape[1], "l1", device, pixels=True)
        self.x = torch.from_numpy(x).to(device).float()

    def scores(self, rows):
        self.d = torch.cdist(self.x[rows], self.x, p=1.0)
        return self.d

    def finalize(self, rows, values):
        return (values * PIXEL_UNIT).float()


class CodeSpace(_Dense):
    """Low-dimensional float codes: every distance in float64, one formula for every pair.

    On the CPU a KD-tree (scipy) proposes the candidates and the same float64 formula re-ranks them;
    the cut is proven as above (the tree's own distances differ from ours by rounding only), and rows
    that cannot be proven go through the brute-force chunk path.
    """

    bytes_per_pair = 32
    path = "torch"  # or "kdtree", on the CPU
    TREE_MARGIN = 1e-9  # relative: far above any rounding difference between scipy's sums and ours

    def __init__(self, x: np.ndarray, distance: str, device: torch.device) -> None:
        super().__init__(x.shape[0], x.shape[1], distance, device, pixels=False)
        xd = np.asarray(x, dtype=np.float64)
        if not np.isfinite(xd).all():
            raise ValueError(f"{int((~np.isfinite(xd)).any(axis=1).sum())} codes are NaN or infinite")
        self.x = torch.from_numpy(xd).to(device)
        self.l1 = distance == "l1"
        self.tree = None
        if self.uses_tree(device, xd.shape[1]):
            from scipy.spatial import cKDTree

            # balanced_tree=False: scipy 1.17's default (median) build segfaults on duplicate points
            # when subnormals are flushed to zero, which training sets for the whole process
            self.tree = cKDTree(xd, balanced_tree=False)
            self.path = "kdtree"
        elif xd.shape[1] > 2:
            self._fast(xd)

    def _fast(self, xd: np.ndarray) -> None:
        """Wider codes (an uploaded embedding, say 64-D) without the tree: float32 scores, a GEMM for L2
        and cdist for L1, on the centred codes (distances do not move; the bound shrinks), proven against
        the float64 values by ``eps``. With u = 2^-24, m coordinates and R the largest centred norm (L2)
        or L1 norm (L1), rounding the inputs, the products, the norms and the sums moves a squared L2
        distance by at most (m + 6) u (2R)^2 and an L1 distance by at most (m + 2) u 2R; eps doubles both."""
        m, u = xd.shape[1], 2.0 ** -24
        c = xd - xd.mean(axis=0)
        self.xf = torch.from_numpy(c.astype(np.float32)).to(self.device)
        if self.l1:
            self.eps = 2.0 * (m + 2) * u * 2.0 * float(np.abs(c).sum(axis=1).max())
        else:
            self.sqf = (self.xf * self.xf).sum(1)
            self.eps = 2.0 * (m + 6) * u * (2.0 * float(np.sqrt((c * c).sum(axis=1)).max())) ** 2
        self.path = "f32+exact"

    def _exact(self, q: Tensor, x: Tensor) -> Tensor:
        """sum over coordinates of |q - x| or (q - x)^2, broadcasting; one coordinate at a time."""
        acc = None
        for j in range(self.x.shape[1]):
            diff = q[..., j] - x[..., j]
            term = diff.abs_() if self.l1 else diff.mul_(diff)
            acc = term if acc is None else acc.add_(term)
        return acc

    def scores(self, rows):
        if self.path == "f32+exact":  # fast scores; the exact values of the candidates come from exact_at
            q = self.xf[rows]
            if self.l1:
                return torch.cdist(q, self.xf, p=1.0)
            return (self.sqf[rows][:, None] + self.sqf[None, :]).sub_(q @ self.xf.T, alpha=2.0)
        self.d = self._exact(self.x[rows][:, None, :], self.x[None, :, :])  # L1, or squared L2
        return self.d

    def exact_at(self, rows, cand):
        if self.path != "f32+exact":
            return super().exact_at(rows, cand)
        q, acc = self.x[rows], None  # one coordinate at a time: (c, M) temporaries, never (c, M, m)
        for j in range(self.x.shape[1]):
            diff = q[:, j:j + 1] - self.x[:, j][cand]
            term = diff.abs_() if self.l1 else diff.mul_(diff)
            acc = term if acc is None else acc.add_(term)
        return acc

    def exact_row(self, rows, r):
        if self.path != "f32+exact":
            return super().exact_row(rows, r)
        return self._exact(self.x[rows[r]][None, :], self.x)[0]

    def finalize(self, rows, values):
        return (values if self.l1 else values.sqrt()).float()

    def chunk(self, k: int, memory_budget: int) -> int:
        return plan_chunk(self.n, self.dim, k, self.distance, pixels=False, memory_budget=memory_budget,
                          device=self.device, tree=self.tree is not None)

    TREE_BLOCK = 8192  # query rows per KD-tree pass: its ~100 bytes per candidate stay near 200 MB

    def knn(self, rows: Tensor, k: int) -> NeighborTable:
        if self.tree is None:
            return super().knn(rows, k)
        _check_k(k, self.n)
        if len(rows) > self.TREE_BLOCK:  # the same rows, in blocks: less memory, the same answer
            parts = [self.knn(rows[i:i + self.TREE_BLOCK], k) for i in range(0, len(rows), self.TREE_BLOCK)]
            return NeighborTable(np.concatenate([p.ids for p in parts]), np.concatenate([p.distances for p in parts]))
        r = rows.numpy()
        m = min(k + 1 + PAD, self.n)
        td, ti = self.tree.query(self.x.numpy()[r], k=m, p=1 if self.l1 else 2, workers=-1)
        ti = torch.from_numpy(ti.reshape(len(r), m))
        ev = self._exact(self.x[r][:, None, :], self.x[ti])  # (c, m) float64, our formula
        ev[ti == rows[:, None]] = torch.inf  # the sample itself
        ti, order = ti.sort(dim=1)
        ev, order2 = ev.gather(1, order).sort(dim=1, stable=True)  # by (value, id)
        ti = ti.gather(1, order2)
        ids, vals = ti[:, :k], ev[:, :k]
        bad = torch.zeros(len(r), dtype=torch.bool)
        if m < self.n:
            edge = torch.from_numpy(td.reshape(len(r), m)[:, -1])
            bound = (edge if self.l1 else edge * edge) * (1 - self.TREE_MARGIN)
            bad = ~(vals[:, -1] < bound)
        ids_np = ids.numpy().astype(np.int32)
        dist_np = self.finalize(rows, vals).numpy()
        if bad.any():  # ties or near-ties across the cut: the exact brute-force path
            redo = super().knn(rows[bad], k)
            ids_np[bad.numpy()], dist_np[bad.numpy()] = redo.ids, redo.distances
        return NeighborTable(ids_np, dist_np)


_pool: ThreadPoolExecutor | None = None


def _threads() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max(1, torch.get_num_threads()), thread_name_prefix="aeknn-knn")
    return _pool


def pixel_paths(distance: str, dim: int, device: str | torch.device = "cpu") -> list[str]:
    """The exact paths that run here for pixel rows of ``dim`` values, the C-selection ones first;
    ``torch`` is always last (and the only one on a GPU)."""
    if torch.device(device).type != "cpu" or _select is None:
        return ["torch"]
    if distance == "l2":
        fused = ["int8"] if int8_gemm_exact(dim) else []
        fused += ["f32", "f32-numpy"] if f32_gemm_exact(dim) else []  # the same float32 GEMM, two BLAS
    else:
        fused = [f"sad-{isa}" for isa in (_l1.supported() if _l1 is not None else ())]
    if _l1 is not None and "avx2" in _l1.supported() and dim <= SPARSE_DIM[distance]:
        fused.append("sparse")
    return [*fused, "torch"]


def choose_pixel_path(x: np.ndarray, distance: str, device: str | torch.device = "cpu", *, kernel: str | None = None,
                      cache_dir: str | None = None) -> str:
    """The path for a pixel table: the one ``kernel`` forces, else the fastest C-selection path here
    (timed on a small block of ``x`` by common/kernels.py), else ``torch``."""
    dim = max(1, int(varying_columns(x).sum()))
    here = pixel_paths(distance, dim, device)
    forced = kernels.forced_path(kernel, distance)
    if forced is not None:
        if forced not in here:
            raise ValueError(f"kernel {forced!r} does not run here (device {torch.device(device).type}); "
                             f"the exact {distance} paths that do: {', '.join(here)}")
        return forced
    fused = [p for p in here if p != "torch"]
    if not fused:
        return "torch"
    try:
        return kernels.choose(distance, dim, fused, pixel_probe(x, distance), cache_dir=cache_dir)
    finally:
        release_scratch()


def pixel_probe(x: np.ndarray, distance: str) -> Callable[[str], None]:
    """What the chooser times: one block of scores, 256 rows against the first PROBE_POINTS of ``x``, by the path
    named (each path's space built on first use). Call release_scratch() after timing."""
    probe_points = np.ascontiguousarray(x[: min(len(x), PROBE_POINTS)])
    spaces: dict[str, FusedPixels] = {}

    def probe(path: str) -> None:
        if path not in spaces:
            spaces[path] = FusedPixels(probe_points, distance, path)
        spaces[path].probe()

    return probe


def prepare(points: np.ndarray, distance: str, device: str | torch.device = "cpu", *, kernel: str | None = None,
            cache_dir: str | None = None) -> Space:
    """Pixel spaces are uint8 (exact integer arithmetic); anything else is a float code space.

    ``kernel``: ``auto`` / None chooses the pixel path by measured speed (timings cached in
    ``cache_dir``); a path name (or a comma-separated list, as ``AEKNN_KERNEL``) forces one.
    """
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; expected one of {list(DISTANCES)}")
    dev = torch.device(device)
    if points.dtype != np.uint8:
        return CodeSpace(points, distance, dev)
    path = choose_pixel_path(points, distance, dev, kernel=kernel, cache_dir=cache_dir)
    if path != "torch":
        return FusedPixels(points, distance, path)
    return PixelL2(points, dev) if distance == "l2" else PixelL1(points, dev)


def chunk_rows(n: int, bytes_per_pair: int, memory_budget: int) -> int:
    """Query rows per chunk so that the chunk's (rows, N) working set fits the budget."""
    return int(max(1, min(n, memory_budget // max(1, n * bytes_per_pair))))


def tree_chunk_rows(n: int, k: int, memory_budget: int) -> int:
    """Query rows per chunk on the KD-tree path: (rows, K + PAD) candidates and their temporaries."""
    return int(max(1, min(n, memory_budget // (min(k + 1 + PAD, n) * 96))))


def plan_chunk(n: int, dim: int, k: int, distance: str, *, pixels: bool, memory_budget: int,
               device: str | torch.device = "cpu", tree: bool | None = None) -> int:
    """The one rule for query rows per chunk: what a table is planned with (before any worker loads its
    points: its chunks are fixed then) and what a space computes at once (``Space.chunk``). ``tree``:
    whether the KD-tree path is taken (default: where it would be, a CPU and at most 8 dimensions)."""
    if pixels:
        return chunk_rows(n, PixelL2.bytes_per_pair, memory_budget)  # every pixel path's is the same
    if CodeSpace.uses_tree(torch.device(device), dim) if tree is None else tree:
        return tree_chunk_rows(n, k, memory_budget)
    return chunk_rows(n, CodeSpace.bytes_per_pair, memory_budget)


def knn_rows(space: Space, start: int, stop: int, k: int, memory_budget: int | None = None) -> NeighborTable:
    """Exact top-k of query rows start..stop (see the module docstring for the proof of the cut).

    With ``memory_budget``, rows go in blocks that this space, on its own device, sizes to the budget:
    a chunk planned elsewhere (say, for a CPU's KD-tree: 48,003 rows of a code table) keeps its working
    set within the budget on a GPU's dense path too. The rows are the same either way."""
    step = stop - start if memory_budget is None else max(1, space.chunk(k, memory_budget))
    if stop - start <= step:
        return space.knn(torch.arange(start, stop), k)
    parts = [space.knn(torch.arange(s, min(stop, s + step)), k) for s in range(start, stop, step)]
    return NeighborTable(np.concatenate([p.ids for p in parts]), np.concatenate([p.distances for p in parts]))


def _check_k(k: int, n: int) -> None:
    if not 0 < k < n:
        raise ValueError(f"k must be in 1..{n - 1} for {n} points, got {k}")


def knn_of(space: Space, rows: Tensor, k: int) -> NeighborTable:
    """Brute force over all points for the query ``rows``, with the proven cut."""
    n = space.n
    _check_k(k, n)
    approx = space.scores(rows)
    c = rows.shape[0]
    local = torch.arange(c)
    big = torch.inf if approx.is_floating_point() else torch.iinfo(approx.dtype).max
    approx[local.to(approx.device), rows.to(approx.device)] = big  # a sample is not its own neighbour
    m = min(k + PAD, n - 1)
    tv, ti = approx.topk(m, dim=1, largest=False, sorted=False)
    ev = space.exact_at(rows, ti)
    # order candidates by (exact value, id): sort by id, then a stable sort by value
    ti, order = ti.sort(dim=1)
    ev = ev.gather(1, order)
    ev, order = ev.sort(dim=1, stable=True)
    ti = ti.gather(1, order)
    ids, vals = ti[:, :k].clone(), ev[:, :k].clone()
    if m < n - 1:
        bound = tv.max(dim=1).values.double() - space.eps  # no non-candidate is below this
        for r in (~(vals[:, -1] < bound)).nonzero().flatten().tolist():
            full = space.exact_row(rows, r)
            full[int(rows[r])] = torch.inf
            order = torch.sort(full, stable=True).indices[:k]  # index order breaks ties by id
            ids[r], vals[r] = order, full[order]
    dist = space.finalize(rows.to(vals.device), vals)
    space.release()
    return NeighborTable(ids.cpu().numpy().astype(np.int32), dist.cpu().numpy())


def table_rows(space: Space, k: int, memory_budget: int, chunks: list[tuple[int, int]], *, sweep: bool = True
               ) -> Iterator[tuple[int, NeighborTable, float, float | None]]:
    """The one way to compute a table's rows: the ``(start, stop)`` chunks asked for, in order, each as
    (start, its rows, compute seconds, billions of units of work or None).

    One sweep from the first chunk on where the space has a whole-table sweep whose state fits the budget
    and the last chunk ends the table (each block of the distance matrix is read once for two row sets;
    rows of chunks not asked for in between are computed and dropped); otherwise chunk by chunk, each in
    blocks the budget allows on this space's device. The rows are the same either way (exact);
    ``sweep=False`` forces the chunks (the tests compare the two)."""
    if not chunks:
        return
    n = space.n
    if sweep and chunks[-1][1] == n and space.sweep_panel(k, memory_budget, chunks[0][0]) is not None:
        yield from _swept(space, k, memory_budget, chunks)
        return
    for start, stop in chunks:
        t0 = time.perf_counter()
        part = knn_rows(space, start, stop, k, memory_budget)
        yield start, part, time.perf_counter() - t0, space.work_of(stop - start, n)


def _swept(space: Space, k: int, memory_budget: int, chunks: list[tuple[int, int]]
           ) -> Iterator[tuple[int, NeighborTable, float, float | None]]:
    """The chunks (in order, the last ending the table) cut from one sweep's blocks, each block's time and
    work shared among its rows."""
    n, start = space.n, chunks[0][0]
    ids, dist = np.empty((0, k), np.int32), np.empty((0, k), np.float32)
    secs, work = np.empty(0), np.empty(0)  # per pending row: its share of its block's time and work
    pos = start  # the row that ids[0] holds
    blocks = space.sweep(k, memory_budget, start)
    for c0, c1 in chunks:
        while pos + len(ids) < c1:
            t0 = time.perf_counter()
            i0, part = next(blocks)
            b = len(part.ids)
            w = space.work_of(b, n - i0 + start)  # the sweep scores these rows against i0..N and 0..start
            secs = np.concatenate([secs, np.full(b, (time.perf_counter() - t0) / b)])
            work = np.concatenate([work, np.full(b, np.nan if w is None else w / b)])
            ids, dist = np.concatenate([ids, part.ids]), np.concatenate([dist, part.distances])
        skip, r = c0 - pos, c1 - c0  # rows of chunks not asked for, then this chunk's
        ids, dist, secs, work = ids[skip:], dist[skip:], secs[skip:], work[skip:]
        w = float(work[:r].sum())
        yield c0, NeighborTable(ids[:r], dist[:r]), float(secs[:r].sum()), None if np.isnan(w) else w
        ids, dist, secs, work, pos = ids[r:], dist[r:], secs[r:], work[r:], c1


def exact_knn(
    points: np.ndarray,
    *,
    k: int,
    distance: str,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    device: str | torch.device = "cpu",
    chunk: int | None = None,
    kernel: str | None = None,
    cache_dir: str | None = None,
) -> NeighborTable:
    """The full table for ``points`` ((N, D), uint8 pixels or float codes): (N, k) ids and distances, by
    :func:`table_rows` (``chunk`` given: chunks of that many rows, no sweep)."""
    space = prepare(points, distance, device, kernel=kernel, cache_dir=cache_dir)
    n = space.n
    _check_k(k, n)
    step = chunk or space.chunk(k, memory_budget)
    ids = np.empty((n, k), np.int32)
    dist = np.empty((n, k), np.float32)
    for start, part, _, _ in table_rows(space, k, memory_budget, [(s, min(n, s + step)) for s in range(0, n, step)],
                                        sweep=chunk is None):
        ids[start:start + len(part.ids)], dist[start:start + len(part.ids)] = part.ids, part.distances
    release_scratch()
    return NeighborTable(ids, dist)

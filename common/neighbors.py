"""The neighbour engine: every sample's exact K nearest other samples, L1 or L2, in row chunks.

Promise: for each query row i, the K samples j != i with the smallest distance, nearest first, ties
broken by the lower id. The N x N matrix never exists: rows go in chunks sized from a memory budget.

How "exact" is kept while the bulk work runs fast:
- Pixel spaces (uint8) on the CPU are integer arithmetic from end to end. L2: pixels shifted to
  -128..127 are int8, an int8 GEMM (torch._int_mm, VNNI where the CPU has it) gives the exact int32
  dot products, and a C kernel (common/_select.c) fuses the score |b|^2 - 2 a.b with an exact top-K
  by (score, id). L1: the SAD kernel (common/_l1.c) gives exact integer sums, the same selection
  follows. No rounding anywhere, so no proof and no fallback is needed.
- Elsewhere (a GPU, or a CPU where the int8 GEMM or the kernels are missing) pixels go through float32
  GEMMs, where every dot product is an integer below 2^24 and so exact; only the final combination
  (|a|^2 - 2 a.b, up to 5e7) can round, by at most 2.
- Code spaces (float): distances are computed in float64, one formula for every pair.
On the float paths each chunk first takes K + PAD candidates from the fast scores, re-ranks them by
the exact value and the id, and proves the cut: the K-th exact value must lie strictly below what any
non-candidate can reach (its score minus the rounding bound). Rows where ties or rounding straddle
the cut are recomputed exactly over the whole row. Imports only numpy and torch.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from common.names import DISTANCES

try:  # the compiled SAD kernel; without it the portable path gives the same integers
    from common import _l1
except ImportError:  # pragma: no cover - only where the extension could not be built
    _l1 = None
try:  # the compiled exact top-K over integer scores; without it the float paths give the same table
    from common import _select
except ImportError:  # pragma: no cover
    _select = None

PIXEL_UNIT = 2.0 / 255.0  # pixel-space distances are reported on the [-1, 1] inputs the models see
PAD = 32  # extra candidates per row; ties wider than this fall back to an exact full row
INT_BLOCK = 256  # query rows per integer block: its (rows, N) int32 scores stay near the caches


@functools.lru_cache(maxsize=8)
def int8_gemm_exact(dim: int) -> bool:
    """Whether torch._int_mm runs here and gives exact int32 dot products of int8 rows of ``dim``
    (checked once on the worst cases: all -128, all 127, and random rows; a CPU without VNNI might
    saturate 16-bit intermediates)."""
    if not hasattr(torch, "_int_mm"):
        return False
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (24, dim), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (40, dim), generator=g, dtype=torch.int8)
    a[:4], a[4:8], b[:4], b[4:8] = -128, 127, -128, 127
    try:
        got = torch._int_mm(a, b.T)
    except (RuntimeError, NotImplementedError):
        return False
    return bool(torch.equal(got.double(), a.double() @ b.double().T))


_scratch = threading.local()


def _buffer(rows: int, n: int) -> np.ndarray:
    """A (rows, n) int32 scratch array, reused while it is big enough: one per thread, since two
    deliveries of a chunk may share a space at once."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.shape[0] < rows or buf.shape[1] != n:
        _scratch.buf = buf = None  # drop the old one before allocating the new
        _scratch.buf = buf = np.empty((rows, n), np.int32)
    return buf[:rows]


def release_scratch() -> None:
    """Free this thread's scratch array (after a table)."""
    _scratch.buf = None


def _row_norms(s8: np.ndarray) -> np.ndarray:
    """|x|^2 of each int8 row as int32, a few thousand rows at a time (no full int32 copy)."""
    out = np.empty(len(s8), np.int32)
    for i in range(0, len(s8), 8192):
        p = s8[i:i + 8192].astype(np.int32)
        out[i:i + 8192] = np.einsum("ij,ij->i", p, p)
    return out


def _smallest(block: np.ndarray, base: np.ndarray, a: int, rows: np.ndarray, k: int,
              vals: np.ndarray, ids: np.ndarray) -> None:
    """The k smallest base[j] + a * block[i, j] of each row, by (score, id), the row's own id skipped:
    common/_select.c, one slice of rows per thread (it releases the GIL)."""
    n = block.shape[1]
    parts = np.array_split(np.arange(len(rows)), max(1, min(torch.get_num_threads(), len(rows))))
    list(_threads().map(lambda p: _select.smallest(block[p[0]:p[-1] + 1], base, a, rows[p[0]:p[-1] + 1], n, k,
                                                   vals[p[0]:p[-1] + 1], ids[p[0]:p[-1] + 1]),
                        [p for p in parts if len(p)]))


def integer_knn(block: Callable[[np.ndarray], np.ndarray], base: np.ndarray, a: int, rows: Tensor,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by (score, id) where score = base[j] + a * block(rows)[i, j] in int32; query rows go
    INT_BLOCK at a time. Returns (ids, scores), both (c, k) int32, nearest first."""
    r = rows.numpy().astype(np.int64)
    ids = np.empty((len(r), k), np.int32)
    vals = np.empty((len(r), k), np.int32)
    for b0 in range(0, len(r), INT_BLOCK):
        part = r[b0:b0 + INT_BLOCK]
        _smallest(block(part), base, a, part, k, vals[b0:b0 + INT_BLOCK], ids[b0:b0 + INT_BLOCK])
    return ids, vals


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

    def chunk(self, k: int, memory_budget: int) -> int:
        """Query rows per chunk so that a chunk's working set fits the budget."""
        return chunk_rows(self.n, self.bytes_per_pair, memory_budget)

    @staticmethod
    def uses_tree(device: torch.device, dim: int) -> bool:
        return device.type == "cpu" and dim <= 8

    def knn(self, rows: Tensor, k: int) -> NeighborTable:
        """Exact top-k of the query ``rows`` (int64 indices)."""
        return knn_of(self, rows, k)


class PixelL2(Space):
    eps = 4.0  # two roundings of a value below 2^26 in float32 (each <= 2), doubled for safety
    bytes_per_pair = 12  # G and the scores (float32), plus topk scratch

    def __init__(self, x: np.ndarray, device: torch.device, integer: bool = True) -> None:
        super().__init__(x.shape[0])
        self.integer = (integer and device.type == "cpu" and _select is not None
                        and int8_gemm_exact(x.shape[1]))
        self.g: Tensor | None = None
        if self.integer:
            s8 = np.ascontiguousarray(x ^ np.uint8(0x80)).view(np.int8)  # v ^ 0x80 read as int8 is v - 128
            self.s8 = torch.from_numpy(s8)  # (N, D): a quarter of a float32 copy
            self.sq_np = _row_norms(s8)  # (N,) exact integers < 2^24
            return
        self.s = torch.from_numpy(x).to(device).float().sub_(128.0)  # (N, D) in -128..127
        self.sq = (self.s * self.s).sum(1)  # (N,) exact integers < 2^24

    def knn(self, rows: Tensor, k: int) -> NeighborTable:
        if not self.integer:
            return super().knn(rows, k)
        _check_k(k, self.n)
        ids, scores = integer_knn(self._dots, self.sq_np, -2, rows, k)
        d2 = scores.astype(np.float64) + self.sq_np[rows.numpy()][:, None]  # exact squared distances
        return NeighborTable(ids, (np.sqrt(d2) * PIXEL_UNIT).astype(np.float32))

    def scores(self, rows):
        self.g = self.s[rows] @ self.s.T  # (c, N) exact integer dot products
        return torch.add(self.sq, self.g, alpha=-2.0)  # |b|^2 - 2 a.b: |a|^2 is the same on a row

    def exact_at(self, rows, cand):
        return self.sq.double()[cand] - 2.0 * self.g.gather(1, cand).double()

    def exact_row(self, rows, r):
        return self.sq.double() - 2.0 * self.g[r].double()

    def _dots(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), N) exact int32 dot products, into one reused buffer (a fresh 100 MB array per
        block costs its page faults every time: a third of the GEMM's time)."""
        out = _buffer(len(rows), self.n)
        torch._int_mm(self.s8[torch.from_numpy(rows)], self.s8.T, out=torch.from_numpy(out))
        return out

    def finalize(self, rows, values):
        d2 = values + self.sq[rows].double()[:, None]  # exact integer squared distance
        return (d2.clamp_min_(0).sqrt_() * PIXEL_UNIT).float()

    def release(self):
        self.g = None


class _Dense(Space):
    """Spaces whose fast score is already the exact value: the chunk's (c, N) matrix is kept."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.d: Tensor | None = None

    def exact_at(self, rows, cand):
        return self.d.gather(1, cand).double()

    def exact_row(self, rows, r):
        return self.d[r].double()

    def release(self):
        self.d = None


class PixelL1(_Dense):
    """Sums of |a - b| over bytes: exact integers, from the SAD kernel (common/_l1.c) on the CPU, or
    from torch.cdist in float32 elsewhere (integers below 2^24 are exact there too)."""

    bytes_per_pair = 12

    def __init__(self, x: np.ndarray, device: torch.device, use_kernel: bool = True) -> None:
        super().__init__(x.shape[0])
        self.kernel = _l1 if device.type == "cpu" and use_kernel else None
        if self.kernel is not None:
            width = -(-x.shape[1] // 64) * 64  # rows padded with zero bytes to whole 64-byte vectors
            self.padded = np.zeros((x.shape[0], width), np.uint8)
            self.padded[:, : x.shape[1]] = x
        else:
            self.x = torch.from_numpy(x).to(device).float()

    def knn(self, rows: Tensor, k: int) -> NeighborTable:
        if self.kernel is None or _select is None:
            return super().knn(rows, k)
        _check_k(k, self.n)
        ids, sums = integer_knn(self._sad, np.zeros(self.n, np.int32), 1, rows, k)
        return NeighborTable(ids, (sums.astype(np.float64) * PIXEL_UNIT).astype(np.float32))

    def scores(self, rows):
        if self.kernel is None:
            self.d = torch.cdist(self.x[rows], self.x, p=1.0)
            return self.d
        self.d = torch.from_numpy(self._sad(rows.numpy()))
        return self.d

    def _sad(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), N) exact int32 L1 sums from the SAD kernel."""
        q = self.padded[rows]
        out = _buffer(q.shape[0], self.n)
        # the kernel releases the GIL: one slice of query rows per thread
        parts = np.array_split(np.arange(q.shape[0]), max(1, min(torch.get_num_threads(), q.shape[0])))
        width = self.padded.shape[1]
        list(_threads().map(lambda p: self.kernel.l1_block(q[p[0]:p[-1] + 1], self.padded,
                                                           out[p[0]:p[-1] + 1], width), parts))
        return out

    def finalize(self, rows, values):
        return (values * PIXEL_UNIT).float()


class CodeSpace(_Dense):
    """Low-dimensional float codes: every distance in float64, one formula for every pair.

    On the CPU a KD-tree (scipy) proposes the candidates and the same float64 formula re-ranks them;
    the cut is proven as above (the tree's own distances differ from ours by rounding only), and rows
    that cannot be proven go through the brute-force chunk path.
    """

    bytes_per_pair = 32
    TREE_MARGIN = 1e-9  # relative: far above any rounding difference between scipy's sums and ours

    def __init__(self, x: np.ndarray, distance: str, device: torch.device) -> None:
        super().__init__(x.shape[0])
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

    def _exact(self, q: Tensor, x: Tensor) -> Tensor:
        """sum over coordinates of |q - x| or (q - x)^2, broadcasting; one coordinate at a time."""
        acc = None
        for j in range(self.x.shape[1]):
            diff = q[..., j] - x[..., j]
            term = diff.abs_() if self.l1 else diff.mul_(diff)
            acc = term if acc is None else acc.add_(term)
        return acc

    def scores(self, rows):
        self.d = self._exact(self.x[rows][:, None, :], self.x[None, :, :])  # L1, or squared L2
        return self.d

    def finalize(self, rows, values):
        return (values if self.l1 else values.sqrt()).float()

    def chunk(self, k: int, memory_budget: int) -> int:
        if self.tree is None:
            return super().chunk(k, memory_budget)
        return tree_chunk_rows(self.n, k, memory_budget)

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
        _pool = ThreadPoolExecutor(max(1, torch.get_num_threads()), thread_name_prefix="aeknn-l1")
    return _pool


def prepare(points: np.ndarray, distance: str, device: str | torch.device = "cpu", *,
            l1_kernel: bool = True, integer: bool = True) -> Space:
    """Pixel spaces are uint8 (exact integer arithmetic); anything else is a float code space.

    ``l1_kernel=False`` takes the portable pixel-L1 path even where the SAD kernel is built;
    ``integer=False`` takes the float32 pixel-L2 path (a GPU's) even where the int8 GEMM runs.
    """
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; expected one of {list(DISTANCES)}")
    dev = torch.device(device)
    if points.dtype == np.uint8:
        return PixelL2(points, dev, integer) if distance == "l2" else PixelL1(points, dev, l1_kernel)
    return CodeSpace(points, distance, dev)


def chunk_rows(n: int, bytes_per_pair: int, memory_budget: int) -> int:
    """Query rows per chunk so that the chunk's (rows, N) working set fits the budget."""
    return int(max(1, min(n, memory_budget // max(1, n * bytes_per_pair))))


def tree_chunk_rows(n: int, k: int, memory_budget: int) -> int:
    """Query rows per chunk on the KD-tree path: (rows, K + PAD) candidates and their temporaries."""
    return int(max(1, min(n, memory_budget // (min(k + 1 + PAD, n) * 96))))


def plan_chunk(n: int, dim: int, k: int, distance: str, *, pixels: bool, memory_budget: int,
               device: str | torch.device = "cpu") -> int:
    """The rows per chunk that ``prepare(points, distance, device).chunk(k, budget)`` would choose,
    without the points: a table's chunks are fixed when it is planned, before any worker loads data."""
    if pixels:
        cls = PixelL2 if distance == "l2" else PixelL1
        return chunk_rows(n, cls.bytes_per_pair, memory_budget)
    if CodeSpace.uses_tree(torch.device(device), dim):
        return tree_chunk_rows(n, k, memory_budget)
    return chunk_rows(n, CodeSpace.bytes_per_pair, memory_budget)


def knn_rows(space: Space, start: int, stop: int, k: int) -> NeighborTable:
    """Exact top-k of query rows start..stop (see the module docstring for the proof of the cut)."""
    return space.knn(torch.arange(start, stop), k)


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
    step = chunk or space.chunk(k, memory_budget)
    ids = np.empty((n, k), np.int32)
    dist = np.empty((n, k), np.float32)
    for start in range(0, n, step):
        stop = min(n, start + step)
        part = knn_rows(space, start, stop, k)
        ids[start:stop], dist[start:stop] = part.ids, part.distances
        if on_chunk is not None:
            on_chunk(start, stop)
    release_scratch()
    return NeighborTable(ids, dist)

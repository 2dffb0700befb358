"""relu_keep's map, refined under t-SNE's objective on the study's exact neighbour table.

The encoder lays out the clusters and puts each image near its place; the refinement moves every training
image's code, as a free 2-D point, to where t-SNE's loss (the Kullback-Leibler divergence between the
pixel-space affinities P and the map's Cauchy similarities) puts it. What differs from openTSNE is where the
affinities come from and how the gradient is computed, not what is minimised:

- **P from the exact table.** Each image's first 3 x perplexity neighbours are the stored exact table's
  (openTSNE searches approximately); their distances are computed again exactly (:func:`neighbour_distances`);
  the Gaussian bandwidth of each row is found by bisection to the perplexity, and P is symmetrised and
  normalised as t-SNE's.
- **The gradient in full, every iteration.** Attraction over P's edges exactly (common/compute/_embed.c,
  attract); repulsion through a particle-mesh: the points spread bilinearly onto a grid of ``SPACING``, the
  grid convolved with the Cauchy kernel and its gradient by FFT (float32: three times faster than float64,
  its rounding far below the grid's), read back bilinearly (:class:`Repulsion`, as FIt-SNE interpolates).
- **t-SNE's schedule.** Early exaggeration (12 for ``EARLY`` iterations, momentum 0.5, learning rate
  N / 12), then ``LATE`` iterations at exaggeration 1 (momentum 0.8, learning rate N), with
  delta-bar-delta gains; the map is re-centred each iteration.

Deterministic: the attraction sums each row's edges in order however rows are split between threads, the
FFTs are numpy's (one thread), the spreading is serial. Imports only numpy, scipy (a fast FFT length) and torch
(the thread pool).
Chosen by measurement: docs/keeping.md, "t-SNE's objective, optimised in full".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.fft import next_fast_len

from common.compute import neighbors as nb
from common.compute.names import KEEP_EARLY_ITERATIONS, KEEP_LATE_ITERATIONS

try:
    from common.compute import _embed
except ImportError:  # pragma: no cover - only where the extension could not be built
    _embed = None

PERPLEXITY = 35.0  # chosen by measurement: docs/keeping.md
EXAGGERATION = 12.0  # t-SNE's early exaggeration
EARLY = KEEP_EARLY_ITERATIONS  # at EXAGGERATION, as t-SNE; chosen by measurement: docs/keeping.md
LATE = KEEP_LATE_ITERATIONS  # then at 1; chosen by measurement: docs/keeping.md
SPACING = 0.5  # the repulsion grid's spacing, in map units (the Cauchy kernel's width is 1)
MAX_DIM = 33_000  # uint8 rows: a squared L2 distance below 255^2 * MAX_DIM fits int32


def _need_kernel() -> None:
    if _embed is None:
        raise RuntimeError("relu_keep's refinement kernel (common/compute/_embed.c) is not built: reinstall aeknn "
                           "with a C compiler (pip install -e .)")


@dataclass(frozen=True)
class Graph:
    """P as a symmetric sparse matrix in rows (CSR): row i's edges are cols[ptr[i]:ptr[i + 1]], weights w."""

    ptr: np.ndarray  # (N + 1,) int64
    cols: np.ndarray  # (E,) int32
    w: np.ndarray  # (E,) float64, summing to 1


def neighbour_distances(points: np.ndarray, nbr: np.ndarray, distance: str) -> np.ndarray:
    """(N, k) float64: each row's distance to its listed neighbours ``nbr`` (N, k), in ``distance`` (l1 or l2;
    for l2 the squared distance). Bytes exactly (whole numbers), other data in float64."""
    nbr = np.ascontiguousarray(nbr, np.int32)
    n, k = nbr.shape
    if points.dtype == np.uint8 and points.shape[1] <= MAX_DIM:
        _need_kernel()
        x = np.ascontiguousarray(points)
        out = np.empty((n, k), np.int64)
        nb._parallel(lambda lo, hi: _embed.sqdist(x, x.shape[1], nbr, k, distance == "l1", lo, hi, out), n)
        return out.astype(np.float64)
    out = np.empty((n, k))
    step = max(1, 2**24 // max(1, k * points.shape[1]))
    for lo in range(0, n, step):  # float64 differences: a few hundred MB at most
        hi = min(n, lo + step)
        diff = points[nbr[lo:hi]].astype(np.float64) - points[lo:hi, None, :].astype(np.float64)
        out[lo:hi] = np.abs(diff).sum(-1) if distance == "l1" else np.square(diff).sum(-1)
    return out


def conditional(dist: np.ndarray, perplexity: float) -> np.ndarray:
    """t-SNE's conditional P: row i's weights exp(-beta_i dist) over its listed neighbours, normalised, beta_i
    found by bisection (64 halvings) so that the row's entropy is log(perplexity). ``dist`` (N, k): squared
    L2 distances (or L1 distances), nearest first. A row whose ties at its nearest outnumber the perplexity
    ends as uniform over them."""
    if not 1 <= perplexity < dist.shape[1]:
        raise ValueError(f"perplexity must be in [1, {dist.shape[1]}) (the neighbours listed), got {perplexity}")
    d = dist - dist[:, :1]  # the nearest at 0: no underflow, the same P
    target = np.log(perplexity)
    lo, hi = np.zeros(len(d)), np.full(len(d), np.inf)
    mean = d.mean(1)
    beta = 1.0 / np.where(mean > 0, mean, 1.0)  # a row of ties is uniform at any beta: at most 2^64 times this
    for _ in range(64):
        p = np.exp(-d * beta[:, None])
        s = p.sum(1)
        entropy = np.log(s) + beta * (d * p).sum(1) / s
        wide = entropy > target  # too flat: a larger beta
        lo, hi = np.where(wide, beta, lo), np.where(wide, hi, beta)
        beta = np.where(np.isinf(hi), beta * 2, (lo + hi) / 2)
    p = np.exp(-d * beta[:, None])
    return p / p.sum(1, keepdims=True)


def joint(nbr: np.ndarray, p: np.ndarray) -> Graph:
    """t-SNE's joint P from the conditional ``p`` over ``nbr`` (N, k): (p_j|i + p_i|j) / 2N, each pair once a row."""
    n, k = nbr.shape
    i = np.repeat(np.arange(n, dtype=np.int64), k)
    j = np.asarray(nbr, np.int64).ravel()
    key = np.concatenate([i * n + j, j * n + i])
    w = np.concatenate([p.ravel(), p.ravel()])
    order = np.argsort(key, kind="stable")
    key, w = key[order], w[order]
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    w, key = np.add.reduceat(w, first) / (2 * n), key[first]
    ptr = np.zeros(n + 1, np.int64)
    ptr[1:] = np.cumsum(np.bincount(key // n, minlength=n))
    return Graph(ptr, (key % n).astype(np.int32), w)


def affinities(points: np.ndarray, nbr: np.ndarray, distance: str, perplexity: float = PERPLEXITY) -> Graph:
    """The joint P of ``points`` from their exact neighbour table ``nbr`` (N, >= 3 x perplexity ids, nearest
    first; fewer columns: the perplexity is cut to a third of them)."""
    k = min(nbr.shape[1], refine_columns(perplexity))
    perplexity = min(perplexity, k / 3)
    near = np.ascontiguousarray(nbr[:, :k], np.int32)
    return joint(near, conditional(neighbour_distances(points, near, distance), perplexity))


def refine_columns(perplexity: float = PERPLEXITY) -> int:
    """How many of each sample's nearest neighbours the refinement's P is made of (a table with fewer: the
    perplexity is cut to a third of them)."""
    return int(3 * perplexity)


class Repulsion:
    """For points y (N, 2): sum over j of q_ij (q = 1 / (1 + |y_i - y_j|^2)) and of q_ij^2 (y_i - y_j), each i,
    through a grid of ``spacing``: the points spread bilinearly, the grid convolved (zero-padded FFT) with
    q and with q^2 times the offset, read back bilinearly; each point's own term, as the grid computes it,
    taken out of the sum of q (on a sparse map the grid's ~0.9 for it, where the true term is 1, would
    bias the total by a fraction of N: seen to blow a map of 300 points apart)."""

    def __init__(self, spacing: float = SPACING) -> None:
        self.h, self._shape, self._kernels = spacing, None, None

    def kernels(self, shape: tuple[int, int]) -> np.ndarray:
        if self._shape != shape:
            h = self.h
            dx = np.fft.fftfreq(shape[0], 1.0 / shape[0]) * h
            dy = np.fft.fftfreq(shape[1], 1.0 / shape[1]) * h
            x, y = np.meshgrid(dx, dy, indexing="ij")
            q = 1.0 / (1.0 + x * x + y * y)
            self._kernels = np.stack([np.fft.rfft2(k) for k in (q, x * q * q, y * q * q)]).astype(np.complex64)
            self._shape = shape
        return self._kernels

    def __call__(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _need_kernel()
        h = self.h
        lo = y.min(0) - h
        nx, ny = (((y.max(0) - lo) / h).astype(np.int64) + 2).tolist()
        shape = (next_fast_len(2 * nx, real=True), next_fast_len(2 * ny, real=True))  # twice the span: no wrap
        kernels = self.kernels(shape)
        rho = np.zeros(shape)
        _embed.spread(y, float(lo[0]), float(lo[1]), h, nx, shape[1], rho)
        phi = np.ascontiguousarray(np.fft.irfft2(np.fft.rfft2(rho.astype(np.float32))[None] * kernels, s=shape))
        out = np.empty((len(y), 3))
        nb._parallel(lambda a, b: _embed.read(phi, 3, shape[0] * shape[1], y, float(lo[0]), float(lo[1]), h,
                                              shape[1], a, b, out), len(y))
        return out[:, 0] - self._own(y, lo), out[:, 1:]

    def _own(self, y: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """Each point's own term in the sum of q as the grid computes it (spread to its four nodes, read
        back from them): sum over node pairs of w w' q(node - node'); its own push is 0 (the pairs cancel)."""
        h = self.h
        f = (y - lo) / h
        a, b = f[:, 0] - np.floor(f[:, 0]), f[:, 1] - np.floor(f[:, 1])
        wa, wb = (1 - a) ** 2 + a * a, (1 - b) ** 2 + b * b  # pairs on the same node along each axis
        side, diagonal = 1 / (1 + h * h), 1 / (1 + 2 * h * h)
        return wa * wb + side * (wa * (1 - wb) + (1 - wa) * wb) + diagonal * (1 - wa) * (1 - wb)


def attraction(y: np.ndarray, graph: Graph) -> np.ndarray:
    """(N, 2): sum over row i's edges of w_ij q_ij (y_i - y_j), exact."""
    _need_kernel()
    out = np.empty_like(y)
    nb._parallel(lambda lo, hi: _embed.attract(y, graph.ptr, graph.cols, graph.w, lo, hi, out), len(y))
    return out


def optimise(y0: np.ndarray, graph: Graph, *, early: int = EARLY, late: int = LATE,
             exaggeration: float = EXAGGERATION, spacing: float = SPACING) -> np.ndarray:
    """t-SNE's gradient descent from ``y0`` (N, 2), rescaled to a standard deviation of 1e-4 in its first
    coordinate as openTSNE starts: ``early`` iterations at ``exaggeration`` (momentum 0.5, learning rate
    N / exaggeration), then ``late`` at 1 (momentum 0.8, learning rate N); gains as delta-bar-delta (+0.2 on a
    sign change, x0.8 otherwise, at least 0.01). Returns (N, 2) float64."""
    n = len(y0)
    y = np.array(y0, np.float64)
    y -= y.mean(0)
    y *= 1e-4 / max(float(y[:, 0].std()), 1e-300)
    step, gains, repulsion = np.zeros_like(y), np.ones_like(y), Repulsion(spacing)
    for iterations, ex, momentum in ((early, exaggeration, 0.5), (late, 1.0, 0.8)):
        rate = max(200.0, n / ex)
        for _ in range(iterations):
            sums, push = repulsion(y)
            grad = 4.0 * (ex * attraction(y, graph) - push / sums.sum())
            gains = np.maximum(np.where(np.sign(grad) != np.sign(step), gains + 0.2, gains * 0.8), 0.01)
            step = momentum * step - rate * gains * grad
            y += step
            y -= y.mean(0)
    return y


def refine_map(codes: np.ndarray, points: np.ndarray, nbr: np.ndarray, distance: str, *,
               perplexity: float = PERPLEXITY, early: int = EARLY, late: int = LATE) -> np.ndarray:
    """The encoder's ``codes`` (N, 2) of ``points`` (N, D), moved to where t-SNE's objective over the exact
    table ``nbr`` (N, >= 3 x perplexity) puts them. (N, 2) float32."""
    if len(codes) < 2:
        return np.asarray(codes, np.float32)
    graph = affinities(points, nbr, distance, perplexity)
    return optimise(codes, graph, early=early, late=late).astype(np.float32)


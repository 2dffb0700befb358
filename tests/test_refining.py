"""relu_keep's map refinement under t-SNE's objective (common/compute/refining.py): P on cases worked out by
hand, the exact distances and attraction against numpy, the particle-mesh repulsion against the direct sum,
and the optimisation's determinism and result on separable data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.compute import refining as R


def test_joint_by_hand():
    # three samples, one listed neighbour each: 0 -> 1, 1 -> 0, 2 -> 0, each conditional weight 1.
    # P_01 = (1 + 1) / 6 = 1/3 both ways; P_02 = P_20 = (0 + 1) / 6 = 1/6; P sums to 1.
    g = R.joint(np.array([[1], [0], [0]]), np.ones((3, 1)))
    assert g.ptr.tolist() == [0, 2, 3, 4]
    assert g.cols.tolist() == [1, 2, 0, 0]
    assert np.allclose(g.w, [1 / 3, 1 / 6, 1 / 3, 1 / 6], rtol=0, atol=1e-15)
    assert g.w.sum() == pytest.approx(1.0, abs=1e-15)


def test_conditional_by_hand_and_perplexity():
    # two neighbours at the same distance: any bandwidth gives 1/2 each, whose perplexity is 2
    assert np.allclose(R.conditional(np.array([[4.0, 4.0, 4.0]]), 2.0)[0, :2].sum(), 2 / 3)
    rng = np.random.default_rng(0)
    d = np.sort(rng.uniform(1, 50, size=(50, 30)), axis=1)
    p = R.conditional(d, 10.0)
    assert np.allclose(p.sum(1), 1.0)
    entropy = -(p * np.log(np.where(p > 0, p, 1))).sum(1)
    assert np.allclose(entropy, np.log(10.0), atol=1e-9)  # each row's perplexity is the one asked
    assert (np.diff(p, axis=1) <= 1e-15).all()  # nearer, heavier
    with pytest.raises(ValueError, match="perplexity must be in"):
        R.conditional(d, 30.0)


def test_neighbour_distances_exact():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(300, 784), dtype=np.uint8)
    nbr = rng.integers(0, 300, size=(300, 12)).astype(np.int32)
    want = ((x[nbr].astype(np.int64) - x[:, None, :].astype(np.int64)) ** 2).sum(-1)
    assert np.array_equal(R.neighbour_distances(x, nbr, "l2"), want.astype(np.float64))
    l1 = np.abs(x[nbr].astype(np.int64) - x[:, None, :].astype(np.int64)).sum(-1)
    assert np.array_equal(R.neighbour_distances(x, nbr, "l1"), l1.astype(np.float64))
    f = x.astype(np.float64) / 7
    assert np.allclose(R.neighbour_distances(f, nbr, "l2"), want / 49, rtol=1e-12)


def test_attraction_against_numpy():
    rng = np.random.default_rng(2)
    y = rng.normal(size=(200, 2)) * 3
    g = R.joint(rng.integers(0, 200, size=(200, 7)), rng.dirichlet(np.ones(7), size=200))
    rows = np.repeat(np.arange(200), np.diff(g.ptr))
    d = y[rows] - y[g.cols]
    want = np.zeros_like(y)
    np.add.at(want, rows, d * (g.w / (1 + (d * d).sum(1)))[:, None])
    assert np.allclose(R.attraction(y, g), want, rtol=1e-12, atol=1e-18)


@pytest.mark.parametrize("spread", [3.0, 20.0])
def test_repulsion_against_the_direct_sum(spread):
    """The mesh's sums against the O(N^2) sums: Z within 1 %, the push within 6 % (norm over the points) at
    spacing 0.25, and the default spacing's Z within 4 % (its measured errors; docs/keeping.md)."""
    rng = np.random.default_rng(3)
    y = rng.normal(size=(1500, 2)) * spread
    d = y[:, None] - y[None]
    q = 1 / (1 + (d * d).sum(-1))
    z, push = q.sum() - len(y), ((q * q)[..., None] * d).sum(1)
    s, p = R.Repulsion(0.25)(y)
    assert abs(s.sum() - z) / z < 0.01
    assert np.linalg.norm(p - push) / np.linalg.norm(push) < 0.06
    s, p = R.Repulsion()(y)
    assert abs(s.sum() - z) / z < 0.04


def _blobs(n=300, seed=4):
    rng = np.random.default_rng(seed)
    centres = np.array([[40, 40], [200, 200], [40, 200]])
    lab = np.arange(n) % 3
    x = np.zeros((n, 64), np.uint8)
    x[:, :2] = np.clip(centres[lab] + rng.normal(0, 8, size=(n, 2)), 0, 255).astype(np.uint8)
    x[:, 2:] = rng.integers(0, 20, size=(n, 62), dtype=np.uint8)
    d = ((x[:, None, :].astype(np.int64) - x[None].astype(np.int64)) ** 2).sum(-1)
    np.fill_diagonal(d, np.iinfo(np.int64).max)
    nbr = np.lexsort((np.broadcast_to(np.arange(n), d.shape), d), axis=1)[:, :60].astype(np.int32)
    return x, lab, nbr


def test_refine_separates_clusters_and_is_deterministic():
    x, lab, nbr = _blobs()
    start = np.random.default_rng(5).normal(size=(len(x), 2)).astype(np.float32)
    a = R.refine_map(start, x, nbr, "l2", perplexity=15, early=250, late=500)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        b = R.refine_map(start, x, nbr, "l2", perplexity=15, early=250, late=500)
    finally:
        torch.set_num_threads(threads)
    assert a.dtype == np.float32 and a.shape == (len(x), 2)
    assert np.array_equal(a, b)  # the same bits on one thread as on every core
    d = ((a[:, None] - a[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (lab[d.argmin(1)] == lab).all()  # every point's nearest on the map is of its own blob
    centres = np.stack([a[lab == c].mean(0) for c in range(3)])
    spread = max(np.linalg.norm(a[lab == c] - centres[c], axis=1).mean() for c in range(3))
    assert min(np.linalg.norm(centres[i] - centres[j]) for i in range(3) for j in range(i)) > 3 * spread


def test_refine_cuts_perplexity_to_the_table():
    x, _, nbr = _blobs(90)
    out = R.refine_map(np.zeros((90, 2), np.float32) + np.arange(90)[:, None] * [1e-3, 2e-3], x, nbr[:, :12], "l2",
                       early=5, late=5)
    assert np.isfinite(out).all()  # 12 columns: perplexity 4, not 40


def test_map_start_by_hand():
    """An unseen sample starts at the median of its map neighbours' codes; one with none there at its nearest
    unseen neighbour's start."""
    from common.compute.keeping import map_start

    ref = np.array([[0, 0], [2, 0], [4, 4], [10, 10]], np.float32)  # the map: ids 0..3; unseen from 4 on
    nbr = np.array([[0, 1, 2], [4, 5, 3], [5, 4, 4]])
    start = map_start(ref, nbr, positives=3)
    # row 0: median of (0, 0), (2, 0), (4, 4) = (2, 0); row 1: its one map neighbour, (10, 10);
    # row 2: no map neighbour; its nearest unseen one is row 1 (id 5)
    assert start.tolist() == [[2, 0], [10, 10], [10, 10]]
    assert map_start(ref, np.array([[4, 4, 4]]), positives=3).tolist() == [[3, 2]]  # none anywhere: the map's median


def test_keep_config_refuses_an_unknown_refiner_and_the_tsne_refiner_needs_the_samples():
    from common.compute.keeping import KeepConfig, initial_encoder, keep_map

    with pytest.raises(ValueError, match="unknown refiner 'umap'"):
        KeepConfig(refiner="umap")
    x, _, nbr = _blobs(60)
    with pytest.raises(ValueError, match="needs the samples"):
        keep_map(initial_encoder(0, 64).eval(), torch.from_numpy(x).float(), nbr, KeepConfig(refine_epochs=1))

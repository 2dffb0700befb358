"""Trustworthiness, continuity, MRRE, LCMC and the AUC of R_NX (STUDY.md, metrics item 6): exact ranks
against a brute force, one case worked out by hand, and the peers (scikit-learn, ZADU) on 2,000 real
MNIST images, duplicates included."""

from __future__ import annotations

import numpy as np
import pytest

from common.compute import metrics as M
from common.compute.neighbors import exact_knn, prepare
from common.compute.ranks import rank_rows
from common.study.ranking import rank_sums

N = 2000


def brute_ranks(points: np.ndarray, distance: str) -> np.ndarray:
    """r[i, j] for every pair ((N, N); r[i, i] = 0): float64 values summed one coordinate at a time (the
    pixels' exact integers), ordered by (value, id) with a stable sort."""
    x = points.astype(np.float64)
    d = None
    for j in range(x.shape[1]):
        diff = x[:, None, j] - x[None, :, j]
        t = np.abs(diff) if distance == "l1" else diff * diff
        d = t if d is None else d + t
    np.fill_diagonal(d, -np.inf)
    order = np.argsort(d, axis=1, kind="stable")
    r = np.empty_like(order)
    r[np.arange(len(x))[:, None], order] = np.arange(len(x))[None, :]
    return r


@pytest.fixture(scope="module")
def pixels(mnist) -> np.ndarray:
    """2,000 MNIST images, four of them copies of others (ties at distance 0)."""
    x = mnist.images[:N].copy()
    x[[11, 12, 900]] = x[10]
    x[1999] = x[3]
    return x


def codes_of(pixels: np.ndarray, ties: bool) -> np.ndarray:
    """A 2-D linear map of the pixels (fixed random directions); ``ties``: rounded coarsely, so that many
    codes share values and distances."""
    w = np.random.default_rng(7).normal(size=(pixels.shape[1], 2))
    c = (pixels.astype(np.float64) - 128.0) @ w / 1000.0
    return np.round(c) if ties else c


def curves(pixels, codes, d_orig: str, d_enc: str, top: int) -> dict[str, np.ndarray]:
    """Every rank measure at k = 1..top through the stage's own path (common/study/ranking.py)."""
    orig = exact_knn(pixels, k=top, distance=d_orig).ids
    enc = exact_knn(codes, k=top, distance=d_enc).ids
    if d_orig == d_enc:
        r = rank_sums(pixels, {"m": codes}, {d_orig: orig}, {("m", d_enc): enc}, top)[("m", d_enc)]
        false, rel_false, missing, rel_missing = r.false, r.relative_false, r.missing, r.relative_missing
    else:  # scikit-learn's "manhattan": L1 in pixel space, L2 between the codes
        asked_p = np.concatenate([b for _, b in rank_rows(prepare(pixels, d_orig), enc)])
        asked_c = np.concatenate([b for _, b in rank_rows(prepare(codes, d_enc), orig)])
        false, rel_false = M.rank_error_sums(asked_p)
        missing, rel_missing = M.rank_error_sums(asked_c)
    n = len(pixels)
    kr = len(M.rank_measure_ks(n, top))  # k < N / 2
    q = M.overlap_sums(orig, enc)[0] / n / np.arange(1, top + 1)
    return {"trustworthiness": M.trustworthiness_curve(false[:kr], n),
            "continuity": M.trustworthiness_curve(missing[:kr], n),
            "mrre_false": M.mrre_curve(rel_false[:kr], n), "mrre_missing": M.mrre_curve(rel_missing[:kr], n),
            "lcmc": M.lcmc_curve(q, n)}


# ---------------------------------------------------------------- the ranks themselves


@pytest.mark.parametrize("distance", ["l1", "l2"])
@pytest.mark.parametrize("kind", ["pixels", "pixels-torch", "codes-2d-ties", "codes-2d-skewed", "codes-16d"])
def test_ranks_equal_a_brute_force(pixels, kind, distance):
    """Every asked rank, far beyond any K, equals the brute force's; ties (duplicate images, rounded codes)
    go to the lower id. Pixels on the chosen C path and on the portable torch path; 16-D codes on the float32
    path with its exact re-ranking."""
    n = 1500
    rng = np.random.default_rng(1)
    if kind.startswith("pixels"):
        pts = pixels[:n]
    elif kind == "codes-2d-ties":
        pts = codes_of(pixels[:n], ties=True)
    elif kind == "codes-2d-skewed":  # most codes in one small cluster, a few far off (linear_l1's shape), copies
        pts = np.round(rng.normal(size=(n, 2)) * 1e-3, 5)
        pts[:20] *= 1e4
        pts[50:60] = pts[40]
    else:
        pts = np.round(rng.normal(size=(n, 16)), 1)
        pts[:, 3] = 0.5  # a constant column
        pts[100] = pts[7]
    space = prepare(pts, distance, kernel="torch" if kind == "pixels-torch" else None)
    asked = rng.integers(0, n, (n, 50)).astype(np.int32)
    asked[:, -1] = (np.arange(n) + 1) % n  # the sample after each: nobody asks for itself
    asked[asked == np.arange(n)[:, None]] = ((np.arange(n) + 2) % n)[np.nonzero(asked == np.arange(n)[:, None])[0]]
    got = np.concatenate([b for _, b in rank_rows(space, asked, memory_budget=64 << 20)])
    want = brute_ranks(pts, distance)[np.arange(n)[:, None], asked]
    assert got.min() >= 1 and (got == want).all()


@pytest.mark.parametrize("distance", ["l1", "l2"])
def test_ranks_where_many_asked_ids_share_one_value(pixels, distance):
    """Twenty copies of one image asked of every row, two of them twice: a row's bucket holding them holds
    more than the four thresholds the kernel compares at once, and more than the 16 its insertion sort
    takes; ties go to the lower id."""
    n = 600
    x = pixels[:n].copy()
    copies = np.arange(100, 120)
    x[copies] = x[5]
    rng = np.random.default_rng(4)
    asked = np.concatenate([np.tile(copies, (n, 1)), np.tile(copies[[0, 3]], (n, 1)),
                            rng.integers(0, n, (n, 20))], axis=1).astype(np.int32)
    own = asked == np.arange(n)[:, None]
    asked[own] = ((np.arange(n) + 1) % n)[np.nonzero(own)[0]]
    for pts in (x, codes_of(x, ties=False)):
        got = np.concatenate([b for _, b in rank_rows(prepare(pts, distance), asked)])
        want = brute_ranks(pts, distance)[np.arange(n)[:, None], asked]
        assert (got == want).all()


@pytest.mark.parametrize("far", [1.0, 1e5])
def test_the_rank_grid_cuts_by_counts_each_cell_inside_its_box(far):
    from common.compute.ranks import PER_CELL, rank_grid

    rng = np.random.default_rng(3)
    x = np.round(rng.normal(size=(5000, 2)), 4)
    x[:10] *= far  # far codes: even cuts of the bounding box would leave the rest in a few cells
    start, ids, cell_of, xy, box = rank_grid(x)
    counts = np.diff(start)
    side = int(np.sqrt(5000 / PER_CELL))  # 7 for 96 a cell
    assert len(counts) == side * side and np.array_equal(np.sort(ids), np.arange(5000)) and np.array_equal(xy, x[ids])
    # equal counts however the codes spread: 5000 / side^2 a cell, give or take the rounding of the splits
    slab_most = -(-5000 // side)  # a slab's points, rounded up, then a cell's
    assert counts.min() >= 5000 // side // side and counts.max() <= -(-slab_most // side)
    for c in np.flatnonzero(counts):
        part = ids[start[c]:start[c + 1]]
        assert (np.diff(part) > 0).all() and (cell_of[part] == c).all()  # id order within a cell
        assert np.array_equal(box[c], [x[part, 0].min(), x[part, 0].max(), x[part, 1].min(), x[part, 1].max()])
    s0 = cell_of[np.argsort(x[:, 0], kind="stable")] // side  # slabs follow the first coordinate
    assert (np.diff(s0) >= 0).all()


def test_ranks_of_the_table_itself_are_its_columns(pixels):
    """The stored top K asked of its own space: ranks 1..K in order."""
    t = exact_knn(pixels[:800], k=40, distance="l2").ids
    got = np.concatenate([b for _, b in rank_rows(prepare(pixels[:800], "l2"), t)])
    assert (got == np.arange(1, 41)).all()


# ---------------------------------------------------------------- by hand


def test_rank_error_sums_by_hand():
    # one row, K = 3; its neighbours here at p = 1, 2, 3 sit at q = 1, 5, 2 in the other space.
    # false: p=2, q=5 is false for k = 2..4: adds 5-2 at k=2, 5-3 at k=3; p=3, q=2 never (q <= k at k=3)
    # gaps |q - p|: 0, 3, 1 (MRRE divides each by its p: |1-1|/1, then + 3/2 = 1.5, then + 1/3)
    false, gaps = M.rank_error_sums(np.array([[1, 5, 2]]))
    assert false.tolist() == [0, 3, 2] and gaps.tolist() == [0, 3, 1]
    n = 6  # c_k = |6 - 2 + 1| / 1 = 5, then + |6 - 4 + 1| / 2 = 6.5, then + |6 - 6 + 1| / 3
    assert M.mrre_curve(gaps, n) == pytest.approx(1 - np.array([0, 1.5, 1.5 + 1 / 3]) / n / [5, 6.5, 6.5 + 1 / 3])


def test_rank_sums_do_not_depend_on_how_the_rows_are_split():
    """Whole-number sums: two halves added give the same bits as all the rows at once."""
    other = np.random.default_rng(5).integers(1, 5000, (300, 40))
    whole = M.rank_error_sums(other)
    halves = [a + b for a, b in zip(M.rank_error_sums(other[:113]), M.rank_error_sums(other[113:]), strict=True)]
    assert all(np.array_equal(w, h) for w, h in zip(whole, halves, strict=True))


def test_the_kernels_error_sums_equal_the_definitions_block_by_block_and_group_by_group():
    """What the rank passes add up in C (ErrorSums) equals rank_error_sums, to the bit and in its dtypes, for
    ranks below, at and above each p, past K + 1, and far beyond (60,000), over blocks and column groups."""
    from common.compute.ranks import ErrorSums

    r = np.random.default_rng(6).integers(1, 60, (500, 90))
    r[::7, 3] = 60_000
    r[:, 0] = 1
    for lo, hi in ((0, 40), (40, 90)):
        acc = ErrorSums(hi - lo)
        for b0 in range(0, 500, 128):
            acc.add(r[b0:b0 + 128], lo)
        got, want = acc.sums(), M.rank_error_sums(r[:, lo:hi])
        assert all(g.dtype == w.dtype and np.array_equal(g, w) for g, w in zip(got, want, strict=True))
    with pytest.raises(ValueError, match="error_sums"):
        ErrorSums(100).add(r, 0)


def test_measures_by_hand_on_five_points():
    """Five samples on a line, x = 0..4 (pixel space); the map swaps the middle two: y = 0, 2, 1, 3, 4.
    Ties go to the lower id. k = 1 (N = 5, so k < N/2 means k = 1, 2):

    false neighbours (code-space nearest, its pixel rank): 0 -> 2 (rank 2), 1 -> 2 (x-distances 1, 1 to
    samples 0 and 2: rank 2), 2 -> 0 (samples 1, 3 at 1 come first: rank 3), 3 -> 1 (2 and 4 at 1 first:
    rank 3), 4 -> 3 (rank 1, not false). Sum of (rank - k) = 1 + 1 + 2 + 2 = 6, so
    T(1) = 1 - 2 / (5 * 1 * (10 - 3 - 1)) * 6 = 0.6.
    missed neighbours (pixel-space nearest, its code rank): 0 -> 1 (2), 1 -> 0 (3), 2 -> 1 (2), 3 -> 2 (3),
    4 -> 3 (1): C(1) = 1 - 2 / 30 * (1 + 2 + 1 + 2) = 0.6.
    MRRE_false(1): sum over the code neighbours of |r_orig - r_enc| / r_enc = 1 + 1 + 2 + 2 + 0 = 6, and
    c_1 = |5 - 2 + 1| / 1 = 4: 1 - 6 / (5 * 4) = 0.7. MRRE_missing(1): 1 + 2 + 1 + 2 + 0 = 6: also 0.7.
    score@1 = 1/5 (only sample 4 keeps its nearest): LCMC(1) = 0.2 - 1/4 = -0.05."""
    x = np.arange(5, dtype=np.uint8)[:, None]
    y = np.array([[0.0], [2.0], [1.0], [3.0], [4.0]])
    for d in ("l1", "l2"):
        c = curves(x, y, d, d, top=3)
        assert c["trustworthiness"][0] == pytest.approx(0.6, abs=1e-15)
        assert c["continuity"][0] == pytest.approx(0.6, abs=1e-15)
        assert c["mrre_false"][0] == pytest.approx(0.7, abs=1e-15)
        assert c["mrre_missing"][0] == pytest.approx(0.7, abs=1e-15)
        assert c["lcmc"][0] == pytest.approx(-0.05, abs=1e-15)
    assert M.rank_measure_ks(5, 3).tolist() == [1, 2]


def test_auc_of_r_nx_by_hand():
    # R_NX = 0.5, 0.2, 0.8 at k = 1, 2, 3: (0.5 + 0.1 + 0.8/3) / (1 + 1/2 + 1/3)
    assert M.auc_rnx(np.array([0.5, 0.2, 0.8])) == pytest.approx((0.5 + 0.1 + 0.8 / 3) / (11 / 6))


# ---------------------------------------------------------------- the peers


@pytest.mark.parametrize("metric", ["euclidean", "manhattan"])
def test_trustworthiness_and_continuity_match_scikit_learn(pixels, metric):
    """scikit-learn's trustworthiness (its ``metric`` in pixel space, euclidean between the codes), to
    1e-12 at several k; continuity is trustworthiness with the two spaces swapped. Its order among equal
    distances is its sort's, so the pixels carry a small jitter here (no ties), and our float engine
    reads them as given. Swapped, the codes are its "original" space, whose distances it takes by
    |a|^2 + |b|^2 - 2 a.b (rounding apart near ties): they are given to it computed exactly, precomputed."""
    sk = pytest.importorskip("sklearn.manifold")
    rng = np.random.default_rng(3)
    x = pixels.astype(np.float64) + rng.uniform(0, 1e-3, pixels.shape)
    x[[11, 12, 900, 1999]] += rng.uniform(0, 1e-3, (4, x.shape[1]))  # the copies are ties otherwise
    codes = codes_of(x, ties=False)  # the copies' codes too
    d = "l2" if metric == "euclidean" else "l1"
    c = curves(x, codes, d, "l2", top=60)
    for k in (1, 5, 20, 60):
        want_t = sk.trustworthiness(x, codes, n_neighbors=k, metric=metric)
        assert c["trustworthiness"][k - 1] == pytest.approx(want_t, abs=1e-12)
        if metric == "euclidean":
            exact = np.sqrt((codes[:, None, 0] - codes[None, :, 0]) ** 2 + (codes[:, None, 1] - codes[None, :, 1]) ** 2)
            want_c = sk.trustworthiness(exact, x, n_neighbors=k, metric="precomputed")
            assert c["continuity"][k - 1] == pytest.approx(want_c, abs=1e-12)


@pytest.mark.parametrize("distance", ["l1", "l2"])
def test_trustworthiness_with_ties_matches_scikit_learn_given_our_order(pixels, distance):
    """With duplicate images, scikit-learn given the pixel distances with their ties broken by the lower id
    (half a unit over N added per id: the integer distances never reorder) agrees to 1e-12 (its embedding
    side is euclidean: the codes' L2, where the copies are told apart by a tiny shift)."""
    sk = pytest.importorskip("sklearn.manifold")
    codes = codes_of(pixels, ties=False)
    codes[[11, 12, 900, 1999]] += 1e-6 * np.arange(1, 5)[:, None]
    c = curves(pixels, codes, distance, "l2", top=50)
    from scipy.spatial.distance import cdist

    x = pixels.astype(np.float64)  # sums of integers below 2^53: exact
    dist = cdist(x, x, "cityblock" if distance == "l1" else "sqeuclidean")
    dist += np.arange(N)[None, :] / (2.0 * N)
    for k in (1, 10, 50):
        want = sk.trustworthiness(dist, codes, n_neighbors=k, metric="precomputed")
        assert c["trustworthiness"][k - 1] == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("distance", ["l1", "l2"])
def test_zadu_agrees_with_ties(pixels, distance):
    """ZADU (its stable order: ties to the lower index, as ours) for trustworthiness, continuity, MRRE both
    ways and LCMC at several k,
    on the images with their copies and coarsely rounded (tied) codes, to 1e-12. Euclidean through ZADU's own
    distances; L1 through its ranking of the cityblock matrices."""
    zadu_mrre = pytest.importorskip("zadu.measures.mean_relative_rank_error")
    zadu_lcmc = pytest.importorskip("zadu.measures.local_continuity_meta_criteria")
    zadu_tnc = pytest.importorskip("zadu.measures.trustworthiness_continuity")
    from zadu.measures.utils import knn as zknn

    codes = codes_of(pixels, ties=True)
    c = curves(pixels, codes, distance, distance, top=100)
    x = pixels.astype(np.float64)
    if distance == "l1":
        from scipy.spatial.distance import cdist

        dx, dc = cdist(x, x, "cityblock"), cdist(codes, codes, "cityblock")  # exact: integers, and two terms
    for k in (1, 30, 100):
        if distance == "l2":
            mrre = zadu_mrre.measure(x, codes, k=k)
            lcmc = zadu_lcmc.measure(x, codes, k=k)["lcmc"]
            tnc = zadu_tnc.measure(x, codes, k=k)
        else:
            oi, orank = zknn.knn_with_ranking(x, k, distance_matrix=dx)
            ei, erank = zknn.knn_with_ranking(codes, k, distance_matrix=dc)
            mrre = zadu_mrre.measure(x, codes, k=k, knn_ranking_info=(oi, orank, ei, erank))
            lcmc = zadu_lcmc.measure(x, codes, k=k, knn_info=(oi, ei))["lcmc"]
            tnc = zadu_tnc.measure(x, codes, k=k, knn_ranking_info=(oi, orank, ei, erank))
        assert c["trustworthiness"][k - 1] == pytest.approx(tnc["trustworthiness"], abs=1e-12)
        assert c["continuity"][k - 1] == pytest.approx(tnc["continuity"], abs=1e-12)
        assert c["mrre_false"][k - 1] == pytest.approx(mrre["mrre_false"], abs=1e-12)
        assert c["mrre_missing"][k - 1] == pytest.approx(mrre["mrre_missing"], abs=1e-12)
        assert c["lcmc"][k - 1] == pytest.approx(lcmc, abs=1e-12)

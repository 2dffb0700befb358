"""The neighbour engine against brute force, on data full of duplicates and exact ties."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from common.neighbors import PAD, PIXEL_UNIT, chunk_rows, exact_knn


def brute_force(x: np.ndarray, k: int, distance: str) -> tuple[np.ndarray, np.ndarray]:
    """Full float64 distance matrix; order by (distance, id); the sample itself excluded."""
    xf = x.astype(np.float64)
    d = cdist(xf, xf, "cityblock" if distance == "l1" else "euclidean")
    np.fill_diagonal(d, np.inf)
    n = len(x)
    order = np.lexsort((np.broadcast_to(np.arange(n), d.shape), d), axis=1)[:, :k]
    return order, np.take_along_axis(d, order, axis=1)


def tied_pixels(n: int, seed: int) -> np.ndarray:
    """Bytes in a narrow range (many equal distances) with groups of identical rows."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, (n, 24)).astype(np.uint8) * 60
    x[10:20] = x[3]  # ten duplicates of sample 3
    x[100:100 + PAD + 20] = x[7]  # more duplicates than the candidate pad: the exact fallback runs
    return x


def tied_codes(n: int, seed: int) -> np.ndarray:
    """2-D float codes on a coarse grid (exact ties), some duplicates, some large values."""
    rng = np.random.default_rng(seed)
    x = (rng.integers(-5, 6, (n, 2)) * 0.25).astype(np.float32)
    x[50:60] = x[0]
    x[100:100 + PAD + 30] = x[1]  # more duplicates than the pad: the tree's cut cannot be proven there
    x[-5:] *= 1000
    return x


@pytest.mark.parametrize("distance", ["l1", "l2"])
@pytest.mark.parametrize("chunk", [1, 7, 64, 333, None])
def test_pixels_match_brute_force(distance, chunk):
    x = tied_pixels(333, 0)
    ids, dist = brute_force(x, 40, distance)
    t = exact_knn(x, k=40, distance=distance, chunk=chunk)
    np.testing.assert_array_equal(t.ids, ids)
    np.testing.assert_allclose(t.distances, dist * PIXEL_UNIT, rtol=1e-6)


@pytest.mark.parametrize("distance", ["l1", "l2"])
@pytest.mark.parametrize("chunk", [1, 13, 250, None])
@pytest.mark.parametrize("tree", [True, False])
def test_codes_match_brute_force(distance, chunk, tree):
    from common.neighbors import knn_rows, prepare

    x = tied_codes(250, 1)
    ids, dist = brute_force(x, 30, distance)
    space = prepare(x, distance)
    assert space.tree is not None
    if not tree:
        space.tree = None  # the brute-force path, as on a GPU
    step = chunk or space.chunk(30, 1 << 30)
    parts = [knn_rows(space, s, min(250, s + step), 30) for s in range(0, 250, step)]
    np.testing.assert_array_equal(np.concatenate([p.ids for p in parts]), ids)
    np.testing.assert_allclose(np.concatenate([p.distances for p in parts]), dist, rtol=1e-6)


def test_nan_codes_are_refused():
    x = np.zeros((10, 2), np.float32)
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="1 codes are NaN or infinite"):
        exact_knn(x, k=3, distance="l2")


def test_real_mnist_rows_match_brute_force(mnist):
    x = mnist.images[:1500]
    for distance in ("l1", "l2"):
        ids, _ = brute_force(x, 200, distance)
        t = exact_knn(x, k=200, distance=distance, memory_budget=1_000_000)  # many small chunks
        np.testing.assert_array_equal(t.ids, ids)


def test_full_pixel_range_l2_is_exact_where_float32_would_round():
    # rows of 0 and 255 make squared distances up to 784 * 255^2 = 5.1e7 > 2^24: float32 sums would round
    rng = np.random.default_rng(3)
    x = (rng.integers(0, 2, (120, 784)) * 255).astype(np.uint8)
    x[60:70] = x[5]
    ids, _ = brute_force(x, 50, "l2")
    np.testing.assert_array_equal(exact_knn(x, k=50, distance="l2", chunk=17).ids, ids)


def test_self_is_excluded_and_ties_go_to_the_lower_id():
    x = np.zeros((6, 3), np.uint8)  # six identical points: all distances 0
    t = exact_knn(x, k=5, distance="l2")
    for i in range(6):
        assert list(t.ids[i]) == [j for j in range(6) if j != i]
    assert (t.distances == 0).all()


def test_k_must_leave_room():
    with pytest.raises(ValueError, match="k must be in 1..4"):
        exact_knn(np.zeros((5, 2), np.float32), k=5, distance="l1")
    with pytest.raises(ValueError, match="unknown distance"):
        exact_knn(np.zeros((5, 2), np.float32), k=2, distance="cosine")


def test_chunk_rows_follow_the_budget():
    assert chunk_rows(60_000, 12, 1 << 30) == (1 << 30) // (60_000 * 12)
    assert chunk_rows(60_000, 12, 1) == 1  # never zero
    assert chunk_rows(100, 12, 1 << 30) == 100  # never more than N


def test_l1_kernel_is_built_on_x86_64():
    import platform

    from common import neighbors

    if platform.machine() in ("x86_64", "AMD64"):
        assert neighbors._l1 is not None, "common/_l1.c was not compiled: `pip install -e .` needs gcc"
        assert neighbors._l1.isa() in ("avx512", "avx2")


@pytest.mark.parametrize("isa", ["best", "avx2", "portable"])
def test_l1_kernel_every_instruction_set_gives_the_exact_integers(isa):
    from common import neighbors

    if neighbors._l1 is None:
        pytest.skip("no compiled kernel on this platform; the torch path is tested above")
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (37, 784)).astype(np.uint8)  # odd sizes: the 4x4 / 4x2 tiles' remainders
    b = rng.integers(0, 256, (103, 784)).astype(np.uint8)
    pad = lambda x: np.pad(x, ((0, 0), (0, 832 - 784)))  # noqa: E731
    out = np.empty((37, 103), np.int32)
    try:
        neighbors._l1.use(isa)
        neighbors._l1.l1_block(pad(a), pad(b), out, 832)
    finally:
        neighbors._l1.use("best")
    np.testing.assert_array_equal(out, cdist(a.astype(np.float64), b.astype(np.float64), "cityblock"))
    with pytest.raises(ValueError, match="multiple of 64"):
        neighbors._l1.l1_block(a, b, out, 784)


def test_kernel_and_portable_l1_tables_are_identical(mnist):
    from common.neighbors import knn_rows, prepare

    x = mnist.images[:3000]
    fast = knn_rows(prepare(x, "l1"), 0, 3000, 100)
    slow = knn_rows(prepare(x, "l1", l1_kernel=False), 0, 3000, 100)
    np.testing.assert_array_equal(fast.ids, slow.ids)
    np.testing.assert_array_equal(fast.distances, slow.distances)


def test_select_kernel_keeps_the_k_smallest_by_score_then_id():
    from common import neighbors

    if neighbors._select is None:
        pytest.skip("no compiled selection kernel on this platform; the float paths are tested above")
    rng = np.random.default_rng(11)
    for _ in range(300):
        b, n = int(rng.integers(1, 6)), int(rng.integers(2, 700))
        k = int(rng.integers(1, n))
        g = rng.integers(-4, 4, (b, n)).astype(np.int32)  # few values: ties everywhere
        base = rng.integers(-3, 3, n).astype(np.int32)
        a = int(rng.choice([-2, 1]))
        rows = rng.integers(-1, n, b).astype(np.int64)  # -1: no row to skip
        k = min(k, n - 1)
        vals, ids = np.empty((b, k), np.int32), np.empty((b, k), np.int32)
        neighbors._select.smallest(g, base, a, rows, n, k, vals, ids)
        for i in range(b):
            j = np.arange(n)[np.arange(n) != rows[i]]
            score = (base + a * g[i])[j]
            order = np.lexsort((j, score))[:k]
            np.testing.assert_array_equal(ids[i], j[order])
            np.testing.assert_array_equal(vals[i], score[order])
    with pytest.raises(ValueError, match="buffer sizes"):
        neighbors._select.smallest(g, base, a, rows, n + 1, k, vals, ids)


def test_int8_gemm_self_check_and_integer_l2_equal_the_float_path(mnist):
    from common.neighbors import int8_gemm_exact, knn_rows, prepare

    assert int8_gemm_exact(784), "torch._int_mm is missing or inexact here: pixel L2 takes the float path"
    x = mnist.images[:3000]
    fast, slow = prepare(x, "l2"), prepare(x, "l2", integer=False)
    assert fast.integer and not slow.integer
    a, b = knn_rows(fast, 0, 3000, 100), knn_rows(slow, 0, 3000, 100)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.distances, b.distances)


@pytest.mark.parametrize("distance", ["l1", "l2"])
def test_float_pixel_paths_match_brute_force(distance):
    from common.neighbors import knn_rows, prepare

    x = tied_pixels(333, 2)
    ids, _ = brute_force(x, 40, distance)
    space = prepare(x, distance, l1_kernel=False, integer=False)
    got = np.concatenate([knn_rows(space, s, min(333, s + 50), 40).ids for s in range(0, 333, 50)])
    np.testing.assert_array_equal(got, ids)


def test_one_space_shared_by_two_threads_gives_each_its_own_rows(mnist):
    import threading

    from common.neighbors import knn_rows, prepare

    x = mnist.images[:2000]
    for distance in ("l1", "l2"):
        space = prepare(x, distance)
        want = [knn_rows(space, s, s + 500, 50).ids for s in (0, 500)]
        got: dict[int, np.ndarray] = {}
        barrier = threading.Barrier(2)

        def run(s, space=space, got=got, barrier=barrier):
            barrier.wait()
            for _ in range(3):
                got[s] = knn_rows(space, s, s + 500, 50).ids

        threads = [threading.Thread(target=run, args=(s,)) for s in (0, 500)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[500], want[1])


def test_tree_path_in_blocks_gives_the_same_rows():
    from common.neighbors import knn_rows, prepare

    x = tied_codes(250, 4)
    ids, _ = brute_force(x, 30, "l2")
    space = prepare(x, "l2")
    space.TREE_BLOCK = 17  # 250 query rows in 15 blocks
    np.testing.assert_array_equal(knn_rows(space, 0, 250, 30).ids, ids)

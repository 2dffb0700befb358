"""The neighbour engine against brute force, on data full of duplicates and exact ties."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from common.compute.neighbors import PAD, PIXEL_UNIT, chunk_rows, exact_knn


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
    from common.compute.neighbors import knn_rows, prepare

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

    from common.compute import neighbors

    if platform.machine() in ("x86_64", "AMD64"):
        assert neighbors._l1 is not None, "common/compute/_l1.c was not compiled: `pip install -e .` needs gcc"
        assert neighbors._l1.isa() in ("avx512", "avx2")
        assert neighbors._l1.supported()[0] == neighbors._l1.isa() and "portable" in neighbors._l1.supported()


def _isas():
    from common.compute import neighbors

    return list(neighbors._l1.supported()) if neighbors._l1 is not None else []


@pytest.mark.parametrize("isa", ["best", *_isas()])
def test_l1_kernel_every_instruction_set_gives_the_exact_integers(isa):
    from common.compute import neighbors

    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (37, 784)).astype(np.uint8)  # odd sizes: the 4x4 / 4x2 tiles' remainders
    b = rng.integers(0, 256, (103, 784)).astype(np.uint8)
    pad = lambda x: np.pad(x, ((0, 0), (0, 832 - 784)))  # noqa: E731
    out = np.empty((37, 103), np.int32)
    neighbors._l1.l1_block(pad(a), pad(b), out, 832, isa)
    np.testing.assert_array_equal(out, cdist(a.astype(np.float64), b.astype(np.float64), "cityblock"))
    with pytest.raises(ValueError, match="multiple of 64"):
        neighbors._l1.l1_block(a, b, out, 784, isa)


@pytest.mark.parametrize("isa", _isas())
def test_l1_kernel_sums_the_widest_rows_it_takes_exactly_and_refuses_wider(isa):
    """The AVX-512 kernel adds two tiles' sums in one 64-bit lane: at the widest row it takes (255 * d just
    below 2^31) the sum is still exact, and a row 64 bytes wider is refused."""
    from common.compute import neighbors

    d = (2**31 - 1) // 255 // 64 * 64
    a = np.full((5, d), 255, np.uint8)  # 5 x 4: a whole 4 x 4 tile and the remainders
    b = np.zeros((4, d), np.uint8)
    b[1, :64] = 255
    out = np.empty((5, 4), np.int32)
    neighbors._l1.l1_block(a, b, out, d, isa)
    want = np.full((5, 4), 255 * d, np.int64)
    want[:, 1] -= 255 * 64
    np.testing.assert_array_equal(out, want)
    wide = np.zeros(d + 64, np.uint8)
    with pytest.raises(ValueError, match="at most 8421504 bytes"):
        neighbors._l1.l1_block(wide, wide, np.empty((1, 1), np.int32), d + 64, isa)


def _sparse_layout(x: np.ndarray, l2: bool):
    """Rows of bytes as common/compute/_l1.c's sparse kernels take them: (rows, pairs) and the chunked columns."""
    from common.compute import neighbors

    js, (n, d) = neighbors._l1.SPARSE_CHUNK, x.shape
    pairs, chunks = -(-d // 2), -(-n // js)
    wide = np.zeros((chunks * js, 2 * pairs), np.int16 if l2 else np.uint8)
    wide[:n, :d] = x
    rows = wide.view(np.uint32 if l2 else np.uint16)
    cols = np.ascontiguousarray(rows.reshape(chunks, js, pairs).transpose(0, 2, 1))
    norms = wide.astype(np.int32).sum(1).astype(np.int32)
    return np.ascontiguousarray(rows[:n]), cols, norms, pairs


@pytest.mark.parametrize("isa", ["best", "avx2", "portable"])
def test_sparse_kernels_give_the_exact_integers_from_any_column_to_any_other(isa):
    """The sparse path's kernels (dot products for L2, |a| + |b| - 2 sum min(a, b) for L1): mostly-zero rows,
    dense rows, rows of 255 (the L1 minimums' 16-bit sums widened every 128 pairs), an empty row, an odd width,
    and column ranges that start and end inside a chunk."""
    from common.compute import neighbors

    if neighbors._l1 is None or (isa == "avx2" and "avx2" not in neighbors._l1.supported()):
        pytest.skip("no AVX2 here")
    rng = np.random.default_rng(11)
    x = rng.integers(0, 256, (150, 785)).astype(np.uint8)
    x[rng.random(x.shape) < 0.8] = 0
    x[:3] = 255
    x[3] = 0
    x[4:8] = rng.integers(1, 256, (4, 785))
    xi = x.astype(np.int64)
    for c0, c1 in ((0, 150), (5, 77), (33, 33), (31, 150), (64, 96)):
        q = np.r_[0:10, 140:150]
        rows, cols, norms, pairs = _sparse_layout(x, True)
        out = np.empty((len(q), c1 - c0), np.int32)
        neighbors._l1.dot_sparse(rows[q], cols, out, pairs, c0, c1, isa)
        np.testing.assert_array_equal(out, xi[q] @ xi[c0:c1].T)
        rows, cols, norms, pairs = _sparse_layout(x, False)
        neighbors._l1.min_sparse(rows[q], cols, norms[q], norms, out, pairs, c0, c1, isa)
        np.testing.assert_array_equal(out, np.abs(xi[q][:, None] - xi[None, c0:c1]).sum(-1))
    row = np.empty((1, 4), np.int32)  # 255 everywhere against 255 and against an empty row
    neighbors._l1.min_sparse(rows[:1], cols, norms[:1], norms, row, pairs, 0, 4, isa)
    assert row[0, 1] == 0 and row[0, 3] == 255 * 785


def test_sparse_kernels_refuse_rows_whose_sums_could_pass_int32_and_a_bad_layout():
    from common.compute import neighbors

    if neighbors._l1 is None:
        pytest.skip("no compiled kernel on this platform")
    js, out = neighbors._l1.SPARSE_CHUNK, np.empty((1, 1), np.int32)
    wide = (2**31 - 1) // 130050 + 1  # pairs of 255 * 255 products that could pass 2^31
    with pytest.raises(ValueError, match="P at most 16512"):
        neighbors._l1.dot_sparse(np.zeros(wide, np.uint32), np.zeros(wide * js, np.uint32), out, wide, 0, 1)
    with pytest.raises(ValueError, match="cols"):  # columns that are not whole chunks
        neighbors._l1.dot_sparse(np.zeros(4, np.uint32), np.zeros(4 * js - 4, np.uint32), out, 4, 0, 1)
    with pytest.raises(ValueError, match="c0 <= c1"):
        neighbors._l1.min_sparse(np.zeros(4, np.uint16), np.zeros(4 * js, np.uint16), np.zeros(1, np.int32),
                                 np.zeros(js, np.int32), out, 4, 0, js + 1)
    with pytest.raises(ValueError, match="instruction set sse9 is unknown"):
        neighbors._l1.dot_sparse(np.zeros(4, np.uint32), np.zeros(4 * js, np.uint32), out, 4, 0, 1, "sse9")


def test_the_sparse_path_is_offered_where_avx2_runs_and_loses_the_probe_on_dense_rows(tmp_path):
    """pixel_paths offers ``sparse`` for both distances on an AVX2 CPU, up to the widths whose sums fit int32;
    on rows with no zero the probe takes a dense path (BLAS or the SAD kernel), here by a wide margin."""
    from common.compute.neighbors import SPARSE_DIM, _l1, choose_pixel_path, pixel_paths

    if _l1 is None or "avx2" not in _l1.supported():
        pytest.skip("no AVX2 here")
    assert "sparse" in pixel_paths("l1", 784) and "sparse" in pixel_paths("l2", 784)
    assert "sparse" not in pixel_paths("l2", SPARSE_DIM["l2"] + 1)
    dense = np.random.default_rng(3).integers(1, 256, (20000, 784)).astype(np.uint8)
    for distance in ("l1", "l2"):
        assert choose_pixel_path(dense, distance, cache_dir=str(tmp_path)) != "sparse"


def test_l1_kernel_refuses_an_instruction_set_it_does_not_know():
    from common.compute import neighbors

    if neighbors._l1 is None:
        pytest.skip("no compiled kernel on this platform")
    out = np.empty((1, 1), np.int32)
    with pytest.raises(ValueError, match="instruction set sse9 is unknown"):
        neighbors._l1.l1_block(np.zeros(64, np.uint8), np.zeros(64, np.uint8), out, 64, "sse9")


def _paths(distance: str) -> list[str]:
    from common.compute.neighbors import pixel_paths

    return pixel_paths(distance, 784)


@pytest.mark.parametrize("path", [*(("l1", p) for p in _paths("l1")), *(("l2", p) for p in _paths("l2"))],
                         ids=lambda p: f"{p[0]}-{p[1]}")
def test_every_pixel_path_that_runs_here_matches_brute_force(path, mnist):
    """Each exact path this machine runs, forced, on tied toy data and on real MNIST rows, chunk by chunk
    and as a whole-table sweep (also resumed from a later row): the same ids and distances."""
    from common.compute.neighbors import knn_rows, prepare

    distance, name = path
    for x, k in ((tied_pixels(333, 6), 40), (mnist.images[:1200], 100)):
        ids, dist = brute_force(x, k, distance)
        space = prepare(x, distance, kernel=name)
        assert space.path == name
        got = np.concatenate([knn_rows(space, s, min(len(x), s + 97), k).ids for s in range(0, len(x), 97)])
        np.testing.assert_array_equal(got, ids)
        t = exact_knn(x, k=k, distance=distance, kernel=name)
        np.testing.assert_array_equal(t.ids, ids)
        np.testing.assert_allclose(t.distances, dist * PIXEL_UNIT, rtol=1e-6)
        if space.sweep_panel(k, 1 << 30) is not None:
            for start in (0, 1, 250):
                parts = list(space.sweep(k, 1 << 30, start))
                assert parts[0][0] == start and sum(len(p.ids) for _, p in parts) == len(x) - start
                np.testing.assert_array_equal(np.concatenate([p.ids for _, p in parts]), ids[start:])


def test_the_sweep_fits_the_budget_or_steps_aside():
    from common.compute.neighbors import PANEL, SWEEP_RESERVE, prepare

    x = tied_pixels(2000, 7)
    space = prepare(x, "l2", kernel="f32")
    assert space.sweep_panel(50, 1 << 30) == PANEL
    # the state of every row, the space's own float32 copy of the points with their norms, the reserve
    state = 2000 * ((50 + 64) * 8 + 20) + 2000 * space.kept * 4 + 2000 * 4 + SWEEP_RESERVE
    assert space.sweep_panel(50, state + 64 * 2000 * 4) == 64
    assert space.sweep_panel(50, state + 63 * 2000 * 4) is None  # the chunk path then
    t = exact_knn(x, k=50, distance="l2", kernel="f32", memory_budget=state + 63 * 2000 * 4)
    np.testing.assert_array_equal(t.ids, brute_force(x, 50, "l2")[0])


def test_constant_columns_are_dropped_without_changing_a_distance():
    from common.compute.neighbors import prepare

    x = tied_pixels(200, 8)
    wide = np.zeros((200, 100), np.uint8)
    wide[:, 10:34] = x
    wide[:, 50] = 255  # the same in every sample
    for distance, path in (("l2", "f32"), ("l1", "sad-portable")):
        space = prepare(wide, distance, kernel=path)
        assert space.kept == 24
        t, want = exact_knn(wide, k=30, distance=distance, kernel=path), brute_force(wide, 30, distance)
        np.testing.assert_array_equal(t.ids, want[0])
        np.testing.assert_allclose(t.distances, want[1] * PIXEL_UNIT, rtol=1e-6)


def test_a_forced_path_this_machine_lacks_is_refused_by_name():
    from common.compute import kernels
    from common.compute.neighbors import prepare

    x = tied_pixels(50, 9)
    with pytest.raises(ValueError, match="kernel 'f32' does not run here.*exact l2 paths that do: torch"):
        prepare(x, "l2", "meta", kernel="f32")
    with pytest.raises(ValueError, match="unknown kernel 'fast'"):
        kernels.parse_spec("f32,fast")
    assert kernels.forced_path("f32,sad-avx2", "l1") == "sad-avx2"
    assert kernels.forced_path("f32,sad-avx2", "l2") == "f32"
    assert kernels.forced_path("auto", "l2") is None


def test_the_fastest_path_is_chosen_by_its_timing_and_cached(tmp_path):
    from common.compute import kernels

    probed = []

    def fake(timings):
        def timer(candidates, probe):
            probed.append(list(candidates))
            return {c: timings[c] for c in candidates}
        return timer

    # a CPU without VNNI: the int8 GEMM runs (and is exact) but is 30x slower than float32
    slow_int8 = fake({"int8": 0.9, "f32": 0.03, "f32-numpy": 0.04})
    assert kernels.choose("l2", 717, ["int8", "f32", "f32-numpy"], None, cache_dir=tmp_path, timer=slow_int8) == "f32"
    assert probed == [["int8", "f32", "f32-numpy"]]
    # the next process reads the cache and probes nothing, even with other (fake) timings
    other = fake({"int8": 0.001, "f32": 1.0, "f32-numpy": 1.0})
    assert kernels.choose("l2", 717, ["int8", "f32", "f32-numpy"], None, cache_dir=tmp_path, timer=other) == "f32"
    assert len(probed) == 1
    # another width is another entry; one candidate needs no probe at all
    assert kernels.choose("l2", 100, ["int8", "f32"], None, cache_dir=tmp_path, timer=other) == "int8"
    assert kernels.choose("l1", 717, ["sad-portable"], None, cache_dir=tmp_path, timer=None) == "sad-portable"
    assert len(probed) == 2
    assert len(__import__("json").loads((tmp_path / "kernels.json").read_text())) == 2


def _sleepy_probe(calls: list, slow: str, seconds: float):
    """A probe that records each path it runs and takes ``seconds`` on the path ``slow``, none on the others."""
    import time

    def probe(path):
        calls.append(path)
        if path == slow:
            time.sleep(seconds)

    return probe


def test_the_probe_takes_the_paths_in_turn_and_a_slow_one_once():
    """After a warm-up of each, a round times every path once, so a slow spell of the machine falls on all of
    them alike; a path over 0.1 s a run is timed once."""
    from common.compute import kernels

    calls = []
    t = kernels.time_paths(["a", "b", "slow"], _sleepy_probe(calls, "slow", 0.11), repeat=3)
    assert calls == ["a", "b", "slow"] * 2 + ["a", "b"] * 2
    assert t["slow"] > 0.1 > max(t["a"], t["b"])


def test_a_path_whose_warm_up_is_long_enough_is_not_run_again(monkeypatch):
    """The warm-up is timed too: one over WARM_UP_ENOUGH (the int8 GEMM without VNNI) is that path's time,
    and the others are timed as before."""
    from common.compute import kernels

    monkeypatch.setattr(kernels, "WARM_UP_ENOUGH", 0.2)
    calls = []
    probe = _sleepy_probe(calls, "glacial", 0.25)
    t = kernels.time_paths(["a", "glacial", "b"], probe, repeat=3)
    assert calls == ["a", "glacial", "b"] + ["a", "b"] * 3
    assert t["glacial"] > 0.2 > max(t["a"], t["b"])
    assert kernels.choose("l2", 7, ["glacial", "a"], probe) == "a"


def test_the_probe_times_real_blocks_and_the_choice_is_one_that_runs(tmp_path, mnist):
    from common.compute.neighbors import choose_pixel_path, pixel_paths

    for distance in ("l1", "l2"):
        path = choose_pixel_path(mnist.images[:3000], distance, cache_dir=str(tmp_path))
        assert path in pixel_paths(distance, 784) and path != "torch"
    cached = __import__("json").loads((tmp_path / "kernels.json").read_text())
    assert all(v > 0 for entry in cached.values() for v in entry.values())


def test_select_kernel_keeps_the_k_smallest_by_score_then_id():
    from common.compute import neighbors

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


@pytest.mark.parametrize("f32", [False, True])
def test_select_state_read_down_columns_equals_the_rows_read_across(f32):
    """update_cols hands each column one candidate per block row; with update_rows over the rest, every
    row ends with the exact top-k of its whole (symmetric) score row, on int32 and float32 blocks."""
    from common.compute import neighbors
    from common.compute.neighbors import _TopK

    if neighbors._select is None:
        pytest.skip("no compiled selection kernel on this platform")
    sel = neighbors._select
    rng = np.random.default_rng(12)
    for _ in range(40):
        n, k = int(rng.integers(3, 300)), 0
        k = int(rng.integers(1, n))
        v = rng.integers(-3, 3, (n, 4)).astype(np.int32)
        full = (v @ v.T).astype(np.float32 if f32 else np.int32)  # symmetric, ties everywhere
        base = (v * v).sum(1).astype(np.int32)
        st = _TopK(n, k)
        panel = int(rng.integers(1, n + 1))
        for i0 in range(0, n, panel):
            i1 = min(n, i0 + panel)
            rows = np.arange(i0, i1, dtype=np.int64)
            g = np.ascontiguousarray(full[i0:i1, i0:])
            sel.update_rows(g, 0, n - i0, f32, i1 - i0, n - i0, i0, base, -2, rows, rows, k, *st.arrays())
            if i1 < n:
                sel.update_cols(g, i1 - i0, n - i0, f32, i1 - i0, n - i1, i0 + (i1 - i0), base, -2, rows, 0,
                                0, n - i1, k, *st.arrays())
        ids, vals = st.finish(np.arange(n, dtype=np.int64))
        for i in range(n):
            j = np.arange(n)[np.arange(n) != i]
            score = (base[j] - 2 * full[i, j].astype(np.int64))
            order = np.lexsort((j, score))[:k]
            np.testing.assert_array_equal(ids[i], j[order])
            np.testing.assert_array_equal(vals[i], score[order])
    with pytest.raises(ValueError, match="update_cols: rows needs"):
        sel.update_cols(g, 0, n - i0, f32, i1 - i0, n - i0, i0, base, -2, rows, 0, 0, n, k, *st.arrays())


def test_int8_gemm_self_check_and_integer_l2_equal_the_float_path(mnist):
    from common.compute.neighbors import int8_gemm_exact, knn_rows, prepare

    if not int8_gemm_exact(784):
        pytest.skip("torch._int_mm is missing or inexact here: pixel L2 takes a float32 path")
    x = mnist.images[:3000]
    fast, slow = prepare(x, "l2", kernel="int8"), prepare(x, "l2", kernel="torch")
    a, b = knn_rows(fast, 0, 3000, 100), knn_rows(slow, 0, 3000, 100)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.distances, b.distances)


@pytest.mark.parametrize("distance", ["l1", "l2"])
def test_float_pixel_paths_match_brute_force(distance):
    from common.compute.neighbors import knn_rows, prepare

    x = tied_pixels(333, 2)
    ids, _ = brute_force(x, 40, distance)
    space = prepare(x, distance, kernel="torch")
    got = np.concatenate([knn_rows(space, s, min(333, s + 50), 40).ids for s in range(0, 333, 50)])
    np.testing.assert_array_equal(got, ids)


def test_one_space_shared_by_two_threads_gives_each_its_own_rows(mnist):
    import threading

    from common.compute.neighbors import knn_rows, prepare

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
    from common.compute.neighbors import knn_rows, prepare

    x = tied_codes(250, 4)
    ids, _ = brute_force(x, 30, "l2")
    space = prepare(x, "l2")
    space.TREE_BLOCK = 17  # 250 query rows in 15 blocks
    np.testing.assert_array_equal(knn_rows(space, 0, 250, 30).ids, ids)


def test_a_chunk_planned_for_a_cpu_stays_within_a_gpu_workers_budget():
    """Chunks are planned once (by whoever advances the job, on a CPU: KD-tree sized); a worker whose
    device takes the dense path computes such a chunk in blocks sized by its own budget."""
    from common.compute.neighbors import CodeSpace, knn_rows, plan_chunk, prepare, tree_chunk_rows

    n, k, budget = 60_000, 200, 1 << 30
    cpu = plan_chunk(n, 2, k, "l2", pixels=False, memory_budget=budget, device="cpu")
    gpu = plan_chunk(n, 2, k, "l2", pixels=False, memory_budget=budget, device="cuda")
    assert cpu == tree_chunk_rows(n, k, budget) == 48_003
    assert gpu == budget // (n * CodeSpace.bytes_per_pair) == 559
    # the same on a small table: a CPU-sized chunk, run on the dense path under a small budget
    x = tied_codes(900, 5)
    small = 900 * CodeSpace.bytes_per_pair * 40  # room for 40 rows at once on the dense path
    space = prepare(x, "l2")
    planned = plan_chunk(900, 2, 30, "l2", pixels=False, memory_budget=small, device="cpu")
    space.tree = None  # what a GPU worker has: the brute-force path
    seen: list[int] = []
    knn = space.knn
    space.knn = lambda rows, kk: (seen.append(len(rows)), knn(rows, kk))[1]
    got = knn_rows(space, 0, planned, 30, memory_budget=small)
    assert planned == 190 and max(seen) == 40 and sum(seen) == planned
    assert max(seen) * 900 * CodeSpace.bytes_per_pair <= small  # the working set the budget allows
    np.testing.assert_array_equal(got.ids, brute_force(x, 30, "l2")[0][:planned])


def _sequential_brute(x: np.ndarray, distance: str, k: int) -> np.ndarray:
    """float64, the sum over coordinates in their order (the engine's one formula), ties to the lower id."""
    out = np.empty((len(x), k), np.int64)
    for i in range(len(x)):
        v = np.zeros(len(x))
        for j in range(x.shape[1]):
            diff = x[i, j] - x[:, j]
            v = v + (np.abs(diff) if distance == "l1" else diff * diff)
        v[i] = np.inf
        out[i] = np.lexsort((np.arange(len(x)), v))[:k]
    return out


@pytest.mark.parametrize("distance", ["l1", "l2"])
def test_wide_float_codes_are_exact_with_near_ties_duplicates_and_constant_columns(distance):
    """Codes of 16 dimensions (an uploaded embedding's, say) take the float32 path with its proven bound and
    the exact float64 re-ranking: every row equals a float64 brute force, ties and near ties included."""
    from common.compute.neighbors import knn_rows, prepare

    rng = np.random.default_rng(5)
    x = rng.normal(size=(3000, 16)) * 3 + 1000.0  # far from the origin: the bound works on centred codes
    x[100:110] = x[5]  # duplicates: distance 0, ties broken by id
    x[200:400] = np.round(x[200:400], 1)  # a grid: many exact ties
    x[:, 3] = 7.0  # a constant column
    x[500:520] = x[600] + rng.normal(size=(20, 16)) * 1e-12  # near ties far below float32's resolution
    k = 40
    space = prepare(x, distance)
    assert space.path == "f32+exact"
    got = knn_rows(space, 0, len(x), k, memory_budget=32 << 20)
    want = _sequential_brute(x, distance, k)
    np.testing.assert_array_equal(got.ids, want)
    v = np.sort(np.abs(x[:, None, :] - x[None, 600:601, :]).sum(-1) if distance == "l1"
                else ((x[:, None, :] - x[None, 600:601, :]) ** 2).sum(-1), axis=0)
    assert (np.diff(v[:25, 0]) < 1e-9).sum() >= 15  # the near ties were really there


@pytest.mark.parametrize("dim", [7, 3072])
@pytest.mark.parametrize("distance", ["l1", "l2"])
def test_every_pixel_path_is_exact_at_other_dimensions(dim, distance):
    """Your data's widths (common/compute/sources.py): 7 values, and CIFAR's 3,072, where float32 would no
    longer hold an L2 dot product (the torch path goes to float64 there). Every path that runs here, full
    byte range, copies and ties, against a float64 brute force; and the exact ranks beyond K."""
    from common.compute.neighbors import pixel_paths, prepare
    from common.compute.ranks import rank_rows

    rng = np.random.default_rng(dim)
    x = rng.integers(0, 256, (260, dim), dtype=np.uint8)
    x[:, 0] = 0 if dim > 7 else x[:, 0]
    x[:12, : dim // 2] = 255  # near ties
    x[20:25] = x[3]  # copies
    ids, _ = brute_force(x, 30, distance)
    d = cdist(x.astype(np.float64), x.astype(np.float64), "cityblock" if distance == "l1" else "euclidean")
    np.fill_diagonal(d, -1)
    want_rank = np.argsort(np.lexsort((np.broadcast_to(np.arange(260), d.shape), d), axis=1), axis=1)
    asked = ((np.arange(260)[:, None] + np.array([1, 50, 259])) % 260).astype(np.int32)
    for path in pixel_paths(distance, dim):
        t = exact_knn(x, k=30, distance=distance, kernel=path)
        np.testing.assert_array_equal(t.ids, ids, err_msg=path)
        got = np.concatenate([r for _, r in rank_rows(prepare(x, distance, kernel=path), asked)])
        np.testing.assert_array_equal(got, np.take_along_axis(want_rank, asked, axis=1), err_msg=path)

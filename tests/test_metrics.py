"""Each metric on a tiny case worked out by hand (see the comments for the arithmetic)."""

import numpy as np
import pytest

from common.compute import metrics as M

# 4 samples, labels 0 0 1 1, K = 3
LABELS = np.array([0, 0, 1, 1], np.uint8)
ORIG = np.array([[1, 2, 3], [0, 2, 3], [3, 0, 1], [2, 1, 0]])
ENC = np.array([[2, 1, 3], [2, 0, 3], [0, 3, 1], [0, 1, 2]])


def test_score_at_k_by_hand():
    # k=1: {1}v{2}, {0}v{2}, {3}v{0}, {2}v{0}: no overlap
    assert M.score_at_k(ORIG, ENC, 1) == 0.0
    # k=2: overlaps 2, 2, 2, 1 -> 7 / (4 * 2)
    assert M.score_at_k(ORIG, ENC, 2) == pytest.approx(7 / 8)
    # k=3 = N-1: every other sample in both
    assert M.score_at_k(ORIG, ENC, 3) == 1.0
    assert list(M.overlap(ORIG, ENC, 2)) == [2, 2, 2, 1]


def test_score_at_k_by_label_by_hand():
    # k=2: label 0 -> rows 0,1: (2/2 + 2/2) / 2; label 1 -> rows 2,3: (2/2 + 1/2) / 2
    assert M.score_at_k_by_label(ORIG, ENC, LABELS, 2) == {0: 1.0, 1: 0.75}


def test_same_label_rate_and_label_agreement_by_hand():
    # k=2 original: every row has one same-label neighbour of two -> 0.5 each
    assert list(M.same_label_rate(ORIG, LABELS, 2)) == [0.5, 0.5, 0.5, 0.5]
    # k=2 encoded: rows 0-2 have one of two; row 3 (label 1) has 0, 1 (labels 0, 0) -> 0
    assert list(M.same_label_rate(ENC, LABELS, 2)) == [0.5, 0.5, 0.5, 0.0]
    la = M.label_agreement(ORIG, ENC, LABELS, 2)
    assert la == {"original_rate": 0.5, "encoded_rate": 0.375, "change": -0.125, "abs_change": 0.125}
    # k=1: the nearest is always same-label in ORIG, never in ENC -> change -1
    la1 = M.label_agreement(ORIG, ENC, LABELS, 1)
    assert la1 == {"original_rate": 1.0, "encoded_rate": 0.0, "change": -1.0, "abs_change": 1.0}


def test_abs_change_differs_from_change_when_signs_mix():
    # row 0 gains (0 -> 1), row 1 loses (1 -> 0): change 0, distance 1
    labels = np.array([0, 0, 1], np.uint8)
    orig = np.array([[2], [0], [0]])
    enc = np.array([[1], [2], [0]])
    la = M.label_agreement(orig, enc, labels, 1)
    assert la["change"] == 0.0 and la["abs_change"] == pytest.approx(2 / 3)


def test_knn_accuracy_by_hand_with_ties_to_the_nearest():
    # k=3: every row's vote goes to the other label (2 of 3) -> accuracy 0
    assert M.knn_accuracy(ORIG, LABELS, 3) == 0.0
    # k=2: every row's vote is a 1-1 tie, won by the nearest, which is same-label -> accuracy 1
    assert list(M.knn_predict(ORIG, LABELS, 2)) == [0, 0, 1, 1]
    assert M.knn_accuracy(ORIG, LABELS, 2) == 1.0


def test_knn_predict_tie_between_two_labels_goes_to_first_seen():
    labels = np.array([0, 1, 2, 0, 1, 2], np.uint8)
    # row 0's neighbours: labels 2, 1, 1, 2, 0 -> at k=4: 2 twice, 1 twice, 2 came first -> 2
    table = np.array([[2, 1, 4, 5, 3]] + [[0, 1, 2, 3, 4]] * 5)
    table[1:] = [[0, 2, 3, 4, 5], [0, 1, 3, 4, 5], [0, 1, 2, 4, 5], [0, 1, 2, 3, 5], [0, 1, 2, 3, 4]]
    assert M.knn_predict(table, labels, 4)[0] == 2
    assert M.knn_predict(table, labels, 5)[0] == 2  # 2:2, 1:2, 0:1 -> tie, 2 first
    assert M.knn_predict(table, labels, 1)[0] == 2


def test_r_nx_by_hand():
    # N=4, k=1, Q=0: (3*0 - 1) / (4-1-1) = -0.5 ; k=2, Q=7/8: (3*7/8 - 2) / 1 = 0.625
    assert M.r_nx(0.0, 4, 1) == -0.5
    assert M.r_nx(7 / 8, 4, 2) == pytest.approx(0.625)
    assert M.r_nx(1.0, 100, 10) == pytest.approx(1.0)


@pytest.mark.parametrize("k", [0, 4, -1])
def test_k_out_of_range_is_refused(k):
    with pytest.raises(ValueError, match="k must be in 1..3"):
        M.score_at_k(ORIG, ENC, k)


def test_every_k_at_once_by_hand():
    # ORIG/ENC above: shared neighbours per row at (p, q): row 0: 1@(0,1) 2@(1,0) 3@(2,2) -> max 1, 1, 2
    # row 1: 0@(0,1) 2@(1,0) 3@(2,2); row 2: 3@(0,1) 0@(1,0) 1@(2,2); row 3: 2@(0,2) 1@(1,1) 0@(2,0)
    # -> max ranks: rows 0-2: 1,1,2; row 3: 2,1,2. Sums at k=1: 0; k=2: 2+2+2+1 = 7; k=3: 12
    assert M.overlap_sums(ORIG, ENC).tolist() == [[0, 7, 12]]
    by = M.overlap_sums(ORIG, ENC, LABELS, 2)  # label 0: rows 0,1; label 1: rows 2,3
    assert by.tolist() == [[0, 4, 6], [0, 3, 6]]
    c = M.same_label_curves(ORIG, ENC, LABELS)
    assert c["original_rate"].tolist() == [1.0, 0.5, pytest.approx(1 / 3)]
    assert c["encoded_rate"].tolist() == [0.0, 0.375, pytest.approx(1 / 3)]
    assert c["change"].tolist() == [-1.0, -0.125, 0.0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_k_at_once_equals_each_k_alone(seed):
    """On random tables with few labels (ties in every vote), blocks smaller than N: the curves are the
    one-k functions at every k."""
    rng = np.random.default_rng(seed)
    n, k = 300, 40
    orig = np.stack([rng.permutation(np.delete(np.arange(n), i))[:k] for i in range(n)])
    # the encoded table shares part of each row, reordered
    enc = np.stack([np.concatenate([rng.permutation(o[:k // 2]), rng.permutation(np.setdiff1d(
        np.delete(np.arange(n), i), o))[:k - k // 2]]) for i, o in enumerate(orig)])
    labels = rng.integers(0, 3, n).astype(np.uint8)
    old = M.ROWS
    M.ROWS = 37
    try:
        sums = M.overlap_sums(orig, enc)[0]
        by = M.overlap_sums(orig, enc, labels, 3)
        curves = M.same_label_curves(orig, enc, labels)
        acc = M.knn_accuracy_curve(enc, labels)
    finally:
        M.ROWS = old
    for kk in range(1, k + 1):
        assert sums[kk - 1] / (n * kk) == pytest.approx(M.score_at_k(orig, enc, kk), abs=1e-15)
        for lab, v in M.score_at_k_by_label(orig, enc, labels, kk).items():
            assert by[lab, kk - 1] / (kk * (labels == lab).sum()) == pytest.approx(v, abs=1e-15)
        la = M.label_agreement(orig, enc, labels, kk)
        for key in ("original_rate", "encoded_rate", "change", "abs_change"):
            assert curves[key][kk - 1] == pytest.approx(la[key], abs=1e-12)
        assert acc[kk - 1] == M.knn_accuracy(enc, labels, kk)

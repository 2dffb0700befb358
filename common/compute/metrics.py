"""The study's metrics (STUDY.md, "Metrics"), from neighbour id tables. Imports only numpy.

Notation: N samples, nbr_k(i) = the first k ids of row i (nearest first, self excluded).
"""

from __future__ import annotations

import numpy as np

from common.compute.names import BY_LABEL_K, DEFAULT_KS  # noqa: F401  (re-exported)


def _check_k(table: np.ndarray, k: int) -> None:
    if not 0 < k <= table.shape[1]:
        raise ValueError(f"k must be in 1..{table.shape[1]} (the table's K), got {k}")


def overlap(orig: np.ndarray, enc: np.ndarray, k: int) -> np.ndarray:
    """|nbr_k^orig(i) ∩ nbr_k^enc(i)| for every i, (N,) int. Ids within a row are distinct."""
    _check_k(orig, k)
    _check_k(enc, k)
    both = np.sort(np.concatenate([orig[:, :k], enc[:, :k]], axis=1), axis=1)
    return (both[:, 1:] == both[:, :-1]).sum(axis=1)


def score_at_k(orig: np.ndarray, enc: np.ndarray, k: int) -> float:
    """score@k = Q_NX(k): mean over i of |nbr_k^orig(i) ∩ nbr_k^enc(i)| / k."""
    return float(overlap(orig, enc, k).mean() / k)


def score_at_k_by_label(orig: np.ndarray, enc: np.ndarray, labels: np.ndarray, k: int) -> dict[int, float]:
    """score@k averaged over the samples of each label present."""
    per = overlap(orig, enc, k) / k
    return {int(c): float(per[labels == c].mean()) for c in np.unique(labels)}


def same_label_rate(table: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """rate_k(i) = fraction of nbr_k(i) whose label equals sample i's label, (N,) float."""
    _check_k(table, k)
    return (labels[table[:, :k]] == labels[:, None]).mean(axis=1)


def label_agreement(orig: np.ndarray, enc: np.ndarray, labels: np.ndarray, k: int) -> dict[str, float]:
    """Both mean same-label rates, their change (encoded - original) and its mean absolute value."""
    ro = same_label_rate(orig, labels, k)
    re = same_label_rate(enc, labels, k)
    return {
        "original_rate": float(ro.mean()),
        "encoded_rate": float(re.mean()),
        "change": float((re - ro).mean()),
        "abs_change": float(np.abs(re - ro).mean()),
    }


def knn_predict(table: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Leave-one-out majority vote of nbr_k(i)'s labels; a tie goes to the label met first (nearest)."""
    _check_k(table, k)
    nl = labels[table[:, :k]].astype(np.int64)  # (N, k)
    n_classes = int(labels.max()) + 1
    rows = np.arange(nl.shape[0])[:, None]
    counts = np.zeros((nl.shape[0], n_classes), np.int64)
    np.add.at(counts, (rows, nl), 1)
    first = np.full((nl.shape[0], n_classes), k, np.int64)  # first rank at which each label occurs
    np.minimum.at(first, (rows, nl), np.broadcast_to(np.arange(k), nl.shape))
    # highest count wins; among equal counts, the smallest first rank
    score = counts * (k + 1) - first
    return score.argmax(axis=1)


def knn_accuracy(table: np.ndarray, labels: np.ndarray, k: int) -> float:
    return float((knn_predict(table, labels, k) == labels).mean())


def r_nx(q: float, n: int, k: int) -> float:
    """R_NX(k) = ((N-1) Q_NX(k) - k) / (N-1-k): score@k corrected for chance (0 = random, 1 = perfect)."""
    if not 0 < k < n - 1:
        raise ValueError(f"R_NX needs 0 < k < N-1, got k={k}, N={n}")
    return ((n - 1) * q - k) / (n - 1 - k)


# ---------------------------------------------------------------- every k at once (k = 1..K)
# One pass over the tables gives each metric at every k, so that every k is stored and a read is a
# lookup. Each equals its one-k function above (tested on tables full of ties).

ROWS = 8192  # rows per block: the (rows, K) temporaries stay in the tens of MB


def overlap_sums(orig: np.ndarray, enc: np.ndarray, groups: np.ndarray | None = None,
                 n_groups: int = 1) -> np.ndarray:
    """S[g, k-1] = sum over the rows i of group g of |nbr_k^orig(i) ∩ nbr_k^enc(i)|, for k = 1..K.

    A neighbour at rank p in one table and q in the other is shared by every k > max(p, q): the sums
    are a cumulative count of max(p, q) over the shared neighbours. Each row's two lists go into one
    sorted row of keys (id, table, rank), so a shared id is two neighbouring keys; small keys (int32)
    make that sort fast."""
    n, k = orig.shape
    _check_k(enc, k)
    groups = np.zeros(n, np.int64) if groups is None else groups.astype(np.int64)
    bits = max(1, int(k - 1).bit_length())  # the rank's bits; one more tells the tables apart
    top = max(int(orig.max(initial=0)), int(enc.max(initial=0))) + 1
    dtype = np.int32 if top < 2 ** (30 - bits) else np.int64
    rank = np.arange(k, dtype=dtype)
    mask = (1 << bits) - 1
    hist = np.zeros(n_groups * k, np.int64)
    for r0 in range(0, n, ROWS):
        o, e = orig[r0:r0 + ROWS].astype(dtype), enc[r0:r0 + ROWS].astype(dtype)
        both = np.concatenate([(o << (bits + 1)) | rank, (e << (bits + 1)) | (1 << bits) | rank], axis=1)
        both.sort(axis=1)
        rows, cols = np.nonzero((both[:, 1:] >> (bits + 1)) == (both[:, :-1] >> (bits + 1)))
        shared = np.maximum(both[rows, cols] & mask, both[rows, cols + 1] & mask).astype(np.int64)
        hist += np.bincount(groups[r0:r0 + ROWS][rows] * k + shared, minlength=n_groups * k)
    return np.cumsum(hist.reshape(n_groups, k), axis=1)


def same_label_curves(orig: np.ndarray, enc: np.ndarray | None, labels: np.ndarray,
                      own: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """For k = 1..K: the mean same-label rate of ``orig`` (and of ``enc``), and with ``enc`` the mean change
    (encoded - original) and the mean |change|, each (K,) float. ``own``: the rows' own labels, where the rows
    are not the samples the ids point to (held-out rows against ``labels``, the samples'); default ``labels``."""
    n, k = orig.shape
    own = labels if own is None else own
    ks = np.arange(1, k + 1)
    sums = {"original_rate": np.zeros(k), "encoded_rate": np.zeros(k), "change": np.zeros(k),
            "abs_change": np.zeros(k)}
    for r0 in range(0, n, ROWS):
        lab = own[r0:r0 + ROWS, None]
        so = np.cumsum(labels[orig[r0:r0 + ROWS]] == lab, axis=1, dtype=np.int32)  # same-label count in the first k
        sums["original_rate"] += so.sum(axis=0)
        if enc is not None:
            se = np.cumsum(labels[enc[r0:r0 + ROWS]] == lab, axis=1, dtype=np.int32)
            sums["encoded_rate"] += se.sum(axis=0)
            sums["change"] += (se - so).sum(axis=0)
            sums["abs_change"] += np.abs(se - so).sum(axis=0)
    out = {key: v / (n * ks) for key, v in sums.items()}
    return out if enc is not None else {"original_rate": out["original_rate"]}


def knn_accuracy_curve(table: np.ndarray, labels: np.ndarray, own: np.ndarray | None = None) -> np.ndarray:
    """kNN accuracy@k for k = 1..K, (K,) float: the vote of :func:`knn_predict` grown one rank at a time.
    ``own``: the rows' true labels where they are not the samples voting (held-out rows); default ``labels``.

    The score of a label is its votes * (K + 1) minus the rank it was first met at, so the highest
    score is the majority with ties to the nearest; one rank adds one vote (and a first rank) per row.
    Two labels never tie (their first ranks differ by less than K + 1), and a vote raises one label's
    score only, so each row's winner is tracked as it changes instead of searched for at every rank."""
    n, k = table.shape
    own = labels if own is None else own
    n_classes = int(labels.max()) + 1
    right = np.zeros(k, np.int64)
    for r0 in range(0, n, ROWS):
        nl = labels[table[r0:r0 + ROWS]].astype(np.intp)  # (rows, K)
        rows = np.arange(len(nl))
        score = np.full((len(nl), n_classes), -k, np.int64)  # no vote yet, met "at rank K"
        best = np.zeros(len(nl), np.intp)  # each row's winning label so far
        best_score = np.full(len(nl), -k - 1, np.int64)  # below any score: the first vote wins
        truth = own[r0:r0 + ROWS]
        for r in range(k):
            c = nl[:, r]
            s = score[rows, c]
            s = np.where(s < 0, k + 1 - r, s + (k + 1))  # a first vote also sets the first rank to r
            score[rows, c] = s
            win = s > best_score
            best = np.where(win, c, best)
            best_score = np.where(win, s, best_score)
            right[r] += int(np.count_nonzero(best == truth))
    return right / n


# ---------------------------------------------------------------- rank-based measures (STUDY.md, item 6)
# Each sample's neighbours in one space, with their exact ranks in the other (common/compute/ranks.py),
# give trustworthiness and MRRE at every k in one pass; continuity and the other MRRE are the same sums
# with the two spaces' roles swapped.


def rank_error_sums(other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows whose neighbours at ranks p = 1..K in one space have ranks ``other[i, p-1]`` (exact, any size)
    in the other space, summed over the rows (each (K,), whole numbers, so that sums over any split of
    the rows agree to the last bit):

    - false[k-1] = sum over i of sum over the j in the first k here but not in the other space's first k of
      (r_other(i, j) - k): j at rank p here and q there is such a j for p <= k < q, adding q - k;
    - gaps[p-1] = sum over i of |q - p| for the neighbour at rank p (MRRE divides by p: mrre_curve)."""
    b, k = other.shape
    q = other.astype(np.int64)
    p = np.broadcast_to(np.arange(1, k + 1), q.shape)
    live = q > p  # j counts for k = p .. min(q, K + 1) - 1
    start, stop, qq = p[live], np.minimum(q[live], k + 1), q[live]
    weight = np.bincount(start, qq, minlength=k + 2) - np.bincount(stop, qq, minlength=k + 2)  # exact below 2^53
    count = np.bincount(start, minlength=k + 2) - np.bincount(stop, minlength=k + 2)
    gaps = np.abs(q - p).sum(axis=0)
    return false_sums(weight, count), gaps


def false_sums(weight: np.ndarray, count: np.ndarray) -> np.ndarray:
    """rank_error_sums' ``false`` (K,) from its per-p differences (K + 2,): at k, the sum of q over the false
    neighbours less k times their count."""
    k = len(weight) - 2
    return (np.cumsum(weight) - np.arange(k + 2) * np.cumsum(count))[1:k + 1]


def rank_measure_ks(n: int, top: int) -> np.ndarray:
    """The ks at which the rank measures are defined: 1 <= k < N / 2, up to ``top``."""
    return np.arange(1, min(top, (n - 1) // 2) + 1)


def trustworthiness_curve(false_sums: np.ndarray, n: int) -> np.ndarray:
    """T(k) (or C(k), from the other direction's sums) for k = 1..len: 1 - 2 / (N k (2N - 3k - 1)) * sums."""
    ks = np.arange(1, len(false_sums) + 1, dtype=np.float64)
    return 1.0 - 2.0 / (n * ks * (2.0 * n - 3.0 * ks - 1.0)) * false_sums


def mrre_curve(gaps: np.ndarray, n: int) -> np.ndarray:
    """MRRE(k) as ZADU reports it (higher is better): 1 - (1/N) sum_i sum_{p<=k} |q - p| / p over c_k, with
    c_k = sum_{l<=k} |N - 2l + 1| / l, from rank_error_sums' ``gaps`` (the sums of |q - p| at each p)."""
    ls = np.arange(1, len(gaps) + 1, dtype=np.float64)
    c = np.cumsum(np.abs(n - 2.0 * ls + 1.0) / ls)
    return 1.0 - np.cumsum(gaps / ls) / n / c


def lcmc_curve(score: np.ndarray, n: int) -> np.ndarray:
    """LCMC(k) = score@k - k / (N - 1), for k = 1..len(score)."""
    return score - np.arange(1, len(score) + 1) / (n - 1)


def auc_rnx(rnx: np.ndarray) -> float:
    """Area under R_NX with log-k weights over k = 1..len: sum R_NX(k) / k divided by sum 1 / k."""
    w = 1.0 / np.arange(1, len(rnx) + 1)
    return float((rnx * w).sum() / w.sum())

"""The study's metrics (STUDY.md, "Metrics"), from neighbour id tables. Imports only numpy.

Notation: N samples, nbr_k(i) = the first k ids of row i (nearest first, self excluded).
"""

from __future__ import annotations

import numpy as np

from common.names import BY_LABEL_K, DEFAULT_KS  # noqa: F401  (re-exported)


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

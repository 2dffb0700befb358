"""Reference maps: 2-D maps of the same samples drawn by well-kept methods, not trained here, stored as
read-only models of an experiment (codes, no weights) so that every table, metric and the page put them
beside the trained ones.

- ``pca``: the first two principal components (exact, numpy; no extra needed).
- ``umap``: umap-learn, 2-D, its defaults (``pip install 'aeknn[maps]'``).
- ``tsne``: openTSNE, 2-D, its defaults (the same extra).

With a seed a map is the same on every run on one machine, whatever its thread count (see fit_map).
Imports numpy only; each library when its map is asked for.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable, Iterable

import numpy as np

from common.compute.names import REFERENCE_MAPS
from common.errors import MissingExtra

EXTRA = {"umap": ("umap", "umap-learn"), "tsne": ("openTSNE", "openTSNE")}  # module, package (the "maps" extra)
MIN_SAMPLES = {"umap": 4}  # fewer: its spectral start fails (measured: 3 fail, 4 and up fit)
Transform = Callable[[np.ndarray], np.ndarray]  # unseen rows -> their 2-D codes


def pca(x: np.ndarray) -> tuple[np.ndarray, Transform]:
    """Each row less the mean, onto the covariance's two leading eigenvectors, each signed so that its
    largest entry is positive (an eigenvector's sign is arbitrary; this one does not depend on LAPACK)."""
    xs = np.asarray(x, np.float64)
    mean = xs.mean(0)
    centred = xs - mean
    _, vecs = np.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    axes = vecs[:, ::-1][:, :2].copy()
    axes *= np.sign(axes[np.abs(axes).argmax(0), [0, 1]])

    def transform(rows: np.ndarray) -> np.ndarray:
        return ((np.asarray(rows, np.float64) - mean) @ axes).astype(np.float32)

    return transform(xs), transform


def check_available(names: Iterable[str]) -> None:
    """MissingExtra naming every map of ``names`` whose library is not installed here."""
    missing = [f"{n} needs {EXTRA[n][1]}" for n in names
               if n in EXTRA and importlib.util.find_spec(EXTRA[n][0]) is None]
    if missing:
        raise MissingExtra(f"reference maps: {'; '.join(missing)}, not installed here: pip install 'aeknn[maps]'")


def fit_map(name: str, x: np.ndarray, *, seed: int | None) -> tuple[np.ndarray, Transform]:
    """The reference map ``name`` of the rows of ``x`` (N, D): their (N, 2) float32 codes, and how it maps
    unseen rows (its library's transform; openTSNE's places them on the map held still). Seeded, UMAP and t-SNE
    run on one thread: both lay out in parallel in an order that moves their result with the thread
    count (t-SNE, 5,000 MNIST images: other codes on 2 threads than on 1). ``seed`` None: the
    libraries' defaults, on every core, not reproducible."""
    if name not in REFERENCE_MAPS:
        raise ValueError(f"unknown reference map {name!r}; expected one of {list(REFERENCE_MAPS)}")
    if name == "pca":
        return pca(x)
    check_available([name])
    lib = importlib.import_module(EXTRA[name][0])
    xs = np.ascontiguousarray(x, np.float32)
    jobs = -1 if seed is None else 1
    if name == "umap":
        um = lib.UMAP(n_components=2, random_state=seed, n_jobs=jobs)
        return np.asarray(um.fit_transform(xs), np.float32), lambda rows: np.asarray(um.transform(rows), np.float32)
    logging.getLogger("openTSNE").setLevel(logging.WARNING)  # not a line per phase among the study's own
    emb = lib.TSNE(n_jobs=jobs, random_state=0 if seed is None else seed).fit(xs)
    return np.asarray(emb, np.float32), lambda rows: np.asarray(emb.transform(np.ascontiguousarray(rows, np.float32)),
                                                                np.float32)

"""Reference maps (common/compute/references.py): PCA on cases worked out by hand, UMAP and t-SNE on two
well-separated clusters, seeded runs repeated, and the errors a user meets."""

from __future__ import annotations

import numpy as np
import pytest

from common.compute import references
from common.compute.models import build_model, is_autoencoder
from common.compute.references import check_available, fit_map
from common.errors import MissingExtra
from common.study.config import StudyConfig

# rows (a, b, 0) + 5: variance 10/6 along the first axis, 2/6 along the second, none along the third
ROWS = np.array([[-2, 0, 0], [-1, 0, 0], [1, 0, 0], [2, 0, 0], [0, -1, 0], [0, 1, 0]], np.float32) + 5


def test_pca_is_the_two_leading_axes_of_the_centred_rows():
    codes, transform = fit_map("pca", ROWS, seed=0)
    assert codes.dtype == np.float32 and codes.shape == (6, 2)
    np.testing.assert_allclose(codes, ROWS[:, :2] - 5, atol=1e-6)  # axes (1,0,0) and (0,1,0), each signed +
    np.testing.assert_allclose(transform(np.array([[8, 9, 12]])), [[3, 4]], atol=1e-6)  # unseen: the same map


def test_pca_signs_each_axis_by_its_largest_entry():
    flipped, _ = fit_map("pca", 10 - ROWS, seed=0)  # the rows mirrored: the same axes, so the codes mirror
    np.testing.assert_allclose(flipped, -(ROWS[:, :2] - 5), atol=1e-6)


def two_clusters(n: int = 100) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2 * n, 30)).astype(np.float32)
    x[n:, 0] += 40  # far apart on one axis
    return x, np.repeat([0, 1], n)


@pytest.mark.parametrize("name", ["pca", "umap", "tsne"])
def test_a_map_keeps_two_separated_clusters_apart_and_a_seeded_one_repeats(name):
    pytest.importorskip({"umap": "umap", "tsne": "openTSNE"}.get(name, "numpy"))
    x, label = two_clusters()
    codes, transform = fit_map(name, x, seed=7)
    assert codes.shape == (200, 2) and np.isfinite(codes).all()
    d = np.linalg.norm(codes[:, None] - codes[None], axis=2)
    np.fill_diagonal(d, np.inf)
    assert (label[d.argmin(1)] == label).all()  # every point's nearest point is of its own cluster
    assert np.array_equal(fit_map(name, x, seed=7)[0], codes)  # seeded: the same codes again
    placed = transform(x[:5] + 0.01)  # unseen rows, placed by the library's transform (openTSNE's for t-SNE)
    assert placed.shape == (5, 2) and placed.dtype == np.float32 and np.isfinite(placed).all()
    near = np.linalg.norm(placed[:, None] - codes[None], axis=2).argmin(1)
    assert (label[near] == label[:5]).all()  # each lands beside its own cluster


def test_a_missing_library_is_named_with_the_command_that_installs_it(monkeypatch):
    monkeypatch.setitem(references.EXTRA, "umap", ("aeknn_no_such_module", "umap-learn"))
    monkeypatch.setitem(references.EXTRA, "tsne", ("aeknn_no_such_module", "openTSNE"))
    check_available(["pca"])  # numpy only
    with pytest.raises(MissingExtra, match=r"umap needs umap-learn; tsne needs openTSNE.*pip install 'aeknn\[maps\]'"):
        check_available(["pca", "umap", "tsne"])
    with pytest.raises(MissingExtra, match="umap needs umap-learn"):
        fit_map("umap", ROWS, seed=0)


def test_an_unknown_map_and_a_map_as_a_network_are_refused():
    with pytest.raises(ValueError, match="unknown reference map 'mds'"):
        fit_map("mds", ROWS, seed=0)
    assert not any(is_autoencoder(n) for n in ("pca", "umap", "tsne", "relu_keep"))
    with pytest.raises(ValueError, match="umap is a reference map"):
        build_model("umap")


def test_umap_on_too_few_samples_is_refused_when_submitted():
    with pytest.raises(ValueError, match="models: umap needs at least 4 samples, got N=3"):
        StudyConfig(limit=3, k=1, ks=[1], models=["pca", "umap"])
    StudyConfig(limit=4, k=1, ks=[1], models=["umap"])
    StudyConfig(limit=3, k=1, ks=[1], models=["pca", "tsne"])

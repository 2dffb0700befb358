"""The study's plots as PNG (matplotlib, Agg): the training loss, the 2-D codes, the reconstructions.
No torch. Drawing is serialised (pyplot is not thread-safe); the API stores what it draws for a finished
experiment, so each plot is drawn once."""

from __future__ import annotations

import io
import threading

import numpy as np

from common.compute import pictures

_lock = threading.Lock()
TAB10 = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
                  [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]], np.uint8)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def loss(experiment_id: int, losses: dict[str, list[float]]) -> bytes:
    """One panel per loss (L1 and MSE are not on one scale), a curve per model."""
    with _lock:
        plt = _pyplot()
        kinds = sorted({name.rsplit("_", 1)[-1] for name in losses}) or ["mse"]
        fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 3.6), squeeze=False)
        for ax, kind in zip(axes[0], kinds, strict=True):
            for name, values in losses.items():
                if name.rsplit("_", 1)[-1] == kind:
                    ax.plot(range(1, len(values) + 1), values, label=name)
            ax.set_xlabel("epoch")
            ax.set_ylabel(f"mean training loss ({kind.upper()})")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle(f"experiment {experiment_id}: training loss")
        return _png(fig)


def raster(codes: np.ndarray, labels: np.ndarray, size: int = 480) -> tuple[np.ndarray, list[float]]:
    """All points drawn into one (size, size, 3) image coloured by label, later points on top, and its
    extent [x0, x1, y0, y1]: a scatter of 60,000 points in milliseconds instead of seconds."""
    lo, hi = codes.min(axis=0), codes.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    lo, span = lo - 0.02 * span, span * 1.04
    ij = np.clip(((codes - lo) / span * (size - 1)).round().astype(np.int64), 0, size - 1)
    img = np.full((size, size, 3), 255, np.uint8)
    img[size - 1 - ij[:, 1], ij[:, 0]] = TAB10[labels % 10]
    return img, [float(lo[0]), float(lo[0] + span[0]), float(lo[1]), float(lo[1] + span[1])]


def latent(panels: list[tuple[str, np.ndarray]], labels: np.ndarray) -> bytes:
    """The 2-D codes of all samples coloured by label, one panel per model, with axes."""
    with _lock:
        plt = _pyplot()
        fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.6), squeeze=False)
        for ax, (name, codes) in zip(axes[0], panels, strict=True):
            img, extent = raster(codes, labels)
            ax.imshow(img, extent=extent, aspect="auto", interpolation="nearest")
            ax.set_title(name)
            ax.set_xlabel("code 1")
            ax.set_ylabel("code 2")
        handles = [plt.Line2D([], [], marker="s", ls="", color=TAB10[c] / 255, label=str(c)) for c in range(10)]
        fig.legend(handles=handles, loc="center right", title="label", frameon=False)
        fig.subplots_adjust(right=0.9)
        return _png(fig)


def reconstructions(shape: tuple[int, ...], grids: list[tuple[str, np.ndarray]]) -> bytes:
    """Rows of samples of ``shape`` (28 x 28 digits for MNIST) in [-1, 1]: the originals first, then each
    model's reconstructions."""
    with _lock:
        plt = _pyplot()
        cols = len(grids[0][1])
        fig, axes = plt.subplots(len(grids), cols, figsize=(cols * 0.9, len(grids) * 1.0), squeeze=False)
        for r, (title, imgs) in enumerate(grids):
            pics = pictures.pictures(np.clip(imgs, -1, 1), shape, fill=-1)
            for c in range(cols):
                ax = axes[r][c]
                if pics.ndim == 4:  # colour: [-1, 1] to [0, 1]
                    ax.imshow((pics[c] + 1) / 2)
                else:
                    ax.imshow(pics[c], cmap="gray", vmin=-1, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
            axes[r][0].set_ylabel(title, rotation=0, ha="right", fontsize=7)
        return _png(fig)

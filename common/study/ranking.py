"""The exact ranks that the rank-based measures need (STUDY.md, metrics item 6), summed as they are found.

For each distance, one pass over the pixel space gives every model's code-space neighbours their pixel-space
ranks (trustworthiness, MRRE of false neighbours); one pass over each model's code space gives the pixel
neighbours their code-space ranks (continuity, MRRE of missed neighbours). The ranks are exact and not
capped (common/compute/ranks.py); only their sums over the samples are kept, per k, so memory stays at the
tables being read, and the sums are whole numbers: the same to the last bit however the rows are split
(a worker's chunks or one process). The metrics stage calls this (common/study/scoring.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.compute.ranks import ErrorSums, rank_rows
from common.compute.sizes import DEFAULT_MEMORY_BUDGET
from common.study.tables import prepare_space

log = logging.getLogger(__name__)


@dataclass
class RankSums:
    """One model and distance: the per-k sums (k = 1..top) of each direction."""

    false: np.ndarray  # trustworthiness: sum of (r_orig - k) over false neighbours, per k
    relative_false: np.ndarray  # MRRE_false: sum of |r_orig - r_enc| over the code neighbours, per r_enc
    missing: np.ndarray  # continuity: sum of (r_enc - k) over missed neighbours, per k
    relative_missing: np.ndarray  # MRRE_missing: sum of |r_enc - r_orig| over the pixel neighbours, per r_orig


@dataclass
class RankSettings:
    """Where the passes run: as the tables' (Runtime's) settings."""

    device: str = "cpu"
    kernel: str = "auto"
    cache_dir: Path | str = ".aeknn-cache"
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    seconds: dict[str, float] = field(default_factory=dict)  # filled: time per pass

    @classmethod
    def of(cls, where) -> RankSettings:
        """From anything that says where the tables run: a Runtime or the Settings."""
        return cls(device=where.device, kernel=where.kernel, cache_dir=where.cache_dir,
                   memory_budget=where.memory_budget)


def _sums(space, asked: np.ndarray, budget: int, splits: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """rank_error_sums of each column group of ``asked`` (split at ``splits``), over every row."""
    bounds = [0, *splits, asked.shape[1]]
    groups = [(c0, ErrorSums(c1 - c0)) for c0, c1 in zip(bounds, bounds[1:], strict=False)]
    for _, r in rank_rows(space, asked, budget):
        for c0, acc in groups:
            acc.add(r, c0)
    return [acc.sums() for _, acc in groups]


def rank_sums(pixels: np.ndarray, codes: Mapping[str, np.ndarray], orig: Mapping[str, np.ndarray],
              enc: Mapping[tuple[str, str], np.ndarray], top: int, settings: RankSettings | None = None
              ) -> dict[tuple[str, str], RankSums]:
    """The sums for every (model, distance) of ``enc`` (tables cut to ``top`` columns): ``pixels`` (N, D)
    uint8, ``codes[model]`` (N, m), ``orig[distance]`` the pixel table."""
    st = settings or RankSettings()
    out: dict[tuple[str, str], RankSums] = {}
    for d in sorted({d for _, d in enc}):
        names = [m for m, dd in enc if dd == d]
        t0 = time.perf_counter()
        space = prepare_space(pixels, d, device=st.device, kernel=st.kernel, cache_dir=st.cache_dir)
        asked = np.concatenate([enc[(m, d)][:, :top] for m in names], axis=1)
        false = _sums(space, asked, st.memory_budget, [top * i for i in range(1, len(names))])
        del asked, space
        st.seconds[f"ranks original {d}"] = time.perf_counter() - t0
        for m, (f, rel) in zip(names, false, strict=True):
            t0 = time.perf_counter()
            cspace = prepare_space(codes[m], d, device=st.device, kernel=st.kernel, cache_dir=st.cache_dir)
            [(miss, rel_miss)] = _sums(cspace, np.ascontiguousarray(orig[d][:, :top]), st.memory_budget, [])
            st.seconds[f"ranks {m} {d}"] = time.perf_counter() - t0
            out[(m, d)] = RankSums(f, rel, miss, rel_miss)
    log.info("exact ranks: %s", ", ".join(f"{k} {v:.1f} s" for k, v in st.seconds.items()))
    return out

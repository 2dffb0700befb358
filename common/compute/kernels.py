"""Which exact path computes a pixel table here: chosen by measured speed, not by what the CPU claims.

Every path named here gives the same exact table; they differ only in speed, and the speed depends on
the machine (an int8 GEMM is 4x a float32 GEMM with AVX-512 VNNI and 30x slower without it). The
first time a process needs a table of a given distance and width, each path that runs here is timed
on a small block of the real points and the fastest is kept; the timings are cached per machine,
torch version and width in ``<cache_dir>/kernels.json``, so later processes skip the probe.

``AEKNN_KERNEL`` (a comma-separated list of path names, or ``auto``) forces a path for tests and
benchmarks: each distance takes the first name that is one of its paths. Imports only the standard
library and torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

# Every path by distance. The C-selection paths come first; "torch" is the portable path (a GPU's, or a
# CPU's where the C kernels are not built): float32 scores, top-k with a pad, a proven cut.
PATHS = {
    "l2": ("int8", "f32", "f32-numpy", "sparse", "torch"),
    "l1": ("sad-avx512", "sad-avx2", "sad-portable", "sparse", "torch"),
}
ALL_PATHS = tuple(dict.fromkeys(p for ps in PATHS.values() for p in ps))


def parse_spec(spec: str | None) -> list[str]:
    """``auto`` (or empty) -> []; otherwise the names, each checked. Raises ValueError naming a bad one."""
    if spec is None or spec.strip() in ("", "auto"):
        return []
    names = [p.strip() for p in spec.split(",") if p.strip()]
    bad = [p for p in names if p not in ALL_PATHS]
    if bad:
        raise ValueError(f"unknown kernel {bad[0]!r} in AEKNN_KERNEL; expected 'auto' or a comma-separated list "
                         f"of {', '.join(ALL_PATHS)}")
    return names


def forced_path(spec: str | None, distance: str) -> str | None:
    """The path ``spec`` forces for ``distance``, or None (choose by speed)."""
    return next((p for p in parse_spec(spec) if p in PATHS[distance]), None)


def machine_id() -> str:
    """The processor's model and a digest of its feature flags (what decides the fastest path)."""
    model, flags = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = value.strip()
    except OSError:
        pass
    return f"{model} [{hashlib.sha1(flags.encode()).hexdigest()[:10]}] x{os.cpu_count()}"


def cpu_flags(wanted: tuple[str, ...] = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
                                         "amx_int8", "neon", "asimd")) -> list[str]:
    """The flags among ``wanted`` that this CPU reports (for reports: which paths can be fast here)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    have = set(value.split())
                    return [w for w in wanted if w in have]
    except OSError:
        pass
    return []


def _cache_key(distance: str, dim: int) -> str:
    import torch

    return f"{machine_id()} | torch {torch.__version__} | {distance} d={dim}"


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _save(path: Path, data: dict) -> None:
    """Atomic write; a cache that cannot be written only costs the next process a probe."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".kernels.")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("kernel cache not written: %s", exc)


# a warm-up (the path's copy of the points built, then one block) longer than this is the path's time
WARM_UP_ENOUGH = 1.0


def time_paths(candidates: list[str], probe: Callable[[str], None], repeat: int = 5) -> dict[str, float]:
    """Seconds of one probe block per path: the best of ``repeat`` rounds after one warm-up of each (which
    builds the path's copy of the points), every path once a round, in turn. A slow spell of a shared machine
    then falls on every path alike; timed one path after the other, a spell during one path's runs picked the
    slower path (sad-avx2 over sad-avx512 on a Zen 4, whose full rows it computes 1.5 times slower). A path
    whose run takes over 0.1 s is timed once: it is far from the fastest, and need not be timed closely. One
    whose warm-up took over WARM_UP_ENOUGH s is not run again: that warm-up is its time (the int8 GEMM without
    VNNI, 1.6 s a probe block on a Zen 3, where the fastest path took 37 ms)."""
    best = dict.fromkeys(candidates, float("inf"))
    for path in candidates:
        t0 = time.perf_counter()
        probe(path)
        took = time.perf_counter() - t0
        if took > WARM_UP_ENOUGH:
            best[path] = took
    for _ in range(repeat):
        for path in candidates:
            if 0.1 < best[path] < float("inf"):
                continue
            t0 = time.perf_counter()
            probe(path)
            best[path] = min(best[path], time.perf_counter() - t0)
    return best


def choose(distance: str, dim: int, candidates: list[str], probe: Callable[[str], None], *,
           cache_dir: str | Path | None = None, timer: Callable[..., dict[str, float]] = time_paths) -> str:
    """The fastest of ``candidates`` (paths that run here and are exact), by the probe's time.

    One candidate needs no probe. Timings are read from and added to ``<cache_dir>/kernels.json``.
    ``timer`` is the measurement (tests pass fake timings to check that the slow path is never chosen).
    """
    if not candidates:
        raise ValueError(f"no exact {distance} path runs here")
    if len(candidates) == 1:
        return candidates[0]
    path = Path(cache_dir) / "kernels.json" if cache_dir is not None else None
    key = _cache_key(distance, dim)
    cached = _load(path).get(key, {}) if path is not None else {}
    missing = [c for c in candidates if c not in cached]
    if missing:
        measured = timer(missing, probe)
        cached = {**cached, **measured}
        log.info("kernel probe (%s, d=%d): %s", distance, dim,
                 ", ".join(f"{p} {s * 1e3:.2f} ms" for p, s in measured.items()))
        if path is not None:
            data = _load(path)
            data[key] = {**data.get(key, {}), **measured}
            _save(path, data)
    return min(candidates, key=lambda c: cached[c])


def throughput(path: str | None, distance: str, rows: int, seconds: float | None,
               work: float | None) -> dict[str, float | str | None]:
    """How fast a table was computed: its path, rows per second, and GFLOP/s (the GEMM paths: L2
    pixels) or billions of pair-SADs per second (L1 pixels). Code tables (KD-tree) have rows/s only."""
    out: dict[str, float | str | None] = {"path": path, "rows_per_s": None, "gflops": None, "gsads_per_s": None}
    if not seconds or seconds <= 0:
        return out
    out["rows_per_s"] = round(rows / seconds, 1)
    if work is not None:
        out["gflops" if distance == "l2" else "gsads_per_s"] = round(work / seconds, 2)
    return out


def describe_rate(info: dict) -> str:
    """One line of :func:`throughput`: "f32, 2,975 rows/s, 130.2 GFLOP/s"."""
    parts = [str(info.get("path") or "?")]
    if info.get("rows_per_s") is not None:
        parts.append(f"{info['rows_per_s']:,.0f} rows/s")
    if info.get("gflops") is not None:
        parts.append(f"{info['gflops']:,.1f} GFLOP/s")
    if info.get("gsads_per_s") is not None:
        parts.append(f"{info['gsads_per_s']:,.2f} G pair-SADs/s")
    return ", ".join(parts)

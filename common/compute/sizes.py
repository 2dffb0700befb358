"""Memory sizes: the neighbour engine's default working memory, and sizes written as ``256M`` or ``1G``.
No dependencies: the CLI, the settings, the engine and the GPU box's bench scripts all read them here."""

from __future__ import annotations

DEFAULT_MEMORY_BUDGET = 1 << 30  # working memory for one chunk of neighbour rows: 1 GiB
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str | int) -> int:
    """Bytes from ``1073741824``, ``256M``, ``1G``, ``1.5GiB`` (binary units); ValueError naming the text
    when it is not a positive size."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        t = str(text).strip().upper().removesuffix("IB").removesuffix("B")
        try:
            value = int(float(t[:-1]) * _UNITS[t[-1]]) if t[-1:] in _UNITS else int(t)
        except (ValueError, IndexError):
            raise ValueError(f"not a size: {text!r} (use bytes, or e.g. 256M, 1G)") from None
    if value <= 0:
        raise ValueError(f"a size must be positive, got {text!r}")
    return value

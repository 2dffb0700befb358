"""The study's tables, built from stored metric values, as text, CSV or JSON. No torch here."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from common.compute.names import MODEL_NAMES


class Value(Protocol):
    metric: str
    space: str
    distance: str
    k: int
    label: int
    value: float


@dataclass
class Table:
    name: str
    title: str
    columns: list[str]
    rows: list[list[Any]]


def _order(space: str) -> tuple[int, str]:
    return (MODEL_NAMES.index(space) + 1 if space in MODEL_NAMES else 0, space)


def study_tables(values: Iterable[Value], ks: list[int] | None = None, by_label_k: int | None = None) -> list[Table]:
    """The study's tables from stored values: the k columns ``ks`` (default: every k stored) and score@k
    by label at ``by_label_k`` (default: every k it is stored at)."""
    v = {(x.metric, x.space, x.distance, x.k, x.label): x.value for x in values}
    keys = list(v)

    def axis(metric: str, pos: int, models_only: bool = True) -> list:
        found = {key[pos] for key in keys if key[0] == metric}
        return sorted(found, key=_order) if pos == 1 else sorted(found)

    tables: list[Table] = []
    ks = axis("score_at_k", 3) if ks is None else sorted(ks)
    pairs = [(m, d) for m in axis("score_at_k", 1) for d in axis("score_at_k", 2)]
    tables.append(Table(
        "score_at_k", "score@k: share of each pixel-space k-neighbourhood kept in the code space",
        ["model", "distance", *[f"k={k}" for k in ks]],
        [[m, d, *[v.get(("score_at_k", m, d, k, -1)) for k in ks]] for m, d in pairs]))
    bl = axis("score_at_k_by_label", 3) if by_label_k is None else [by_label_k]
    labels = sorted({key[4] for key in keys if key[0] == "score_at_k_by_label"})
    for k in bl:
        tables.append(Table(
            "score_at_k_by_label", f"score@{k} by label",
            ["model", "distance", *[str(c) for c in labels]],
            [[m, d, *[v.get(("score_at_k_by_label", m, d, k, c)) for c in labels]] for m, d in pairs]))
    tables.append(Table(
        "label_agreement",
        "same-label rate of the k neighbours: original, encoded, change (enc - orig), mean |change|",
        ["model", "distance", "k", "original_rate", "encoded_rate", "change", "abs_change"],
        [[m, d, k, v.get(("same_label_rate", "original", d, k, -1)), v.get(("same_label_rate", m, d, k, -1)),
          v.get(("label_agreement_change", m, d, k, -1)), v.get(("label_agreement_distance", m, d, k, -1))]
         for m, d in pairs for k in ks]))
    spaces = axis("knn_accuracy", 1)
    tables.append(Table(
        "knn_accuracy", "kNN accuracy@k (leave-one-out majority vote, ties to the nearest)",
        ["space", "distance", *[f"k={k}" for k in ks]],
        [[s, d, *[v.get(("knn_accuracy", s, d, k, -1)) for k in ks]]
         for s in spaces for d in axis("knn_accuracy", 2)]))
    tables.append(Table(
        "r_nx", "R_NX(k): score@k corrected for chance",
        ["model", "distance", *[f"k={k}" for k in ks]],
        [[m, d, *[v.get(("r_nx", m, d, k, -1)) for k in ks]] for m, d in pairs]))
    return tables


def _cell(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4f}"
    return str(x)


def render_text(tables: list[Table]) -> str:
    out = []
    for t in tables:
        cells = [t.columns, *[[_cell(c) for c in r] for r in t.rows]]
        widths = [max(len(row[i]) for row in cells) for i in range(len(t.columns))]
        out.append(t.title)
        for j, row in enumerate(cells):
            out.append("  ".join(c.rjust(w) if j and i > 1 else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip())
            if j == 0:
                out.append("  ".join("-" * w for w in widths))
        out.append("")
    return "\n".join(out)


def render_csv(tables: list[Table]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for t in tables:
        w.writerow(["table", *t.columns])
        for r in t.rows:
            w.writerow([t.name, *["" if c is None else c for c in r]])
    return buf.getvalue()


def as_dicts(tables: list[Table]) -> list[dict[str, Any]]:
    return [asdict(t) for t in tables]

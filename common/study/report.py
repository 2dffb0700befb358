"""The study's tables of a finished experiment, read through common/reads.py, as text, CSV or JSON. No torch."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Table:
    name: str
    title: str
    columns: list[str]
    rows: list[list[Any]]


def study_tables(session, exp, ks: list[int], by_label_k: int) -> list[Table]:
    """The study's tables of a finished experiment (common/reads.py), at the k columns ``ks`` and score@k
    by label at ``by_label_k``: the same rows the API serves."""
    from common.study import reads

    kcols = [f"k={k}" for k in ks]

    def rows(metric: str) -> list[list[Any]]:
        return [[r["space"], r["distance"], *r["values"].values()] for r in reads.value_rows(session, exp, metric, ks)]

    tables: list[Table] = []
    tables.append(Table("score_at_k", "score@k: share of each pixel-space k-neighbourhood kept in the code space",
                        ["model", "distance", *kcols], rows("score_at_k")))
    by = reads.by_label_rows(session, exp, by_label_k)
    labels = sorted({lab for r in by for lab in r["by_label"]}, key=int)
    tables.append(Table("score_at_k_by_label", f"score@{by_label_k} by label", ["model", "distance", *labels],
                        [[r["model"], r["distance"], *[r["by_label"].get(lab) for lab in labels]] for r in by]))
    tables.append(Table(
        "label_agreement", "same-label rate of the k neighbours: original, encoded, change (enc - orig), mean |change|",
        ["model", "distance", "k", "original_rate", "encoded_rate", "change", "abs_change"],
        [[r["model"], r["distance"], r["k"], r["original_rate"], r["encoded_rate"], r["change"], r["abs_change"]]
         for r in reads.agreement_rows(session, exp, ks)]))
    tables.append(Table("knn_accuracy", "kNN accuracy@k (leave-one-out majority vote, ties to the nearest)",
                        ["space", "distance", *kcols], rows("knn_accuracy")))
    tables.append(Table("r_nx", "R_NX(k): score@k corrected for chance", ["model", "distance", *kcols], rows("r_nx")))
    return tables


def csv_of(table: Table) -> str:
    """One table as CSV: its columns, then its rows (empty where a value is missing)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(table.columns)
    w.writerows([["" if c is None else c for c in r] for r in table.rows])
    return buf.getvalue()


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


def as_dicts(tables: list[Table]) -> list[dict[str, Any]]:
    return [asdict(t) for t in tables]
